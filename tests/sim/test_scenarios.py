"""`brokerguard simulate`: the naive bot breaks the rules the guarded one keeps, same world."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from brokerguard.brokers.paper import FaultPlan, PaperBroker
from brokerguard.cli import main
from brokerguard.models import Order, OrderStatus, Side
from brokerguard.orders import OrderState
from brokerguard.sim.scenarios import (
    SCENARIOS,
    UNIVERSE,
    GuardedBot,
    NaiveBot,
    Scenario,
    intent_of,
    orders_per_intent,
    simulate,
)
from brokerguard.testing import FakeClock

FIELDS = {
    "max_positions",
    "cap",
    "cap_violations",
    "orders_sent",
    "fallback_priced_orders",
    "duplicate_orders",
    "halts",
    "broker_calls_during_outage",
}


@pytest.fixture(scope="module")
def runs():
    return {name: simulate(name, seed=3) for name in SCENARIOS}


def test_the_incident_naive_ends_far_over_the_cap_guarded_never_exceeds_it(runs):
    """The seed's incident: failed fetches read as zero send the naive bot to several times 8."""
    naive, guarded = runs["incident"]["naive"], runs["incident"]["guarded"]
    assert naive.max_positions >= 3 * naive.cap
    assert naive.timeline[-1][1] > 2 * naive.cap  # it ends far over, not just spikes
    assert guarded.max_positions <= guarded.cap
    assert guarded.cap_violations == 0


def test_an_outage_is_spared_by_the_breaker(runs):
    """During a 10-minute outage the naive loop hammers the broker; the guard probes sparsely."""
    naive, guarded = runs["outage"]["naive"], runs["outage"]["guarded"]
    assert guarded.broker_calls_during_outage * 20 < naive.broker_calls_during_outage
    assert guarded.broker_calls_during_outage <= 15


def test_missing_prices_make_the_naive_bot_invent_them_never_the_guard(runs):
    """The naive bot sizes orders at $1.00; the guarded one never has a made-up price."""
    for name in ("no-prices", "outage"):
        assert runs[name]["naive"].fallback_priced_orders > 0, name
        assert runs[name]["guarded"].fallback_priced_orders == 0, name


def test_lost_confirmations_duplicate_naive_orders_never_guarded_ones(runs):
    """Blind retries of writes send orders twice; lookups before resending never do."""
    assert runs["flaky"]["naive"].duplicate_orders > 0
    assert runs["flaky"]["guarded"].duplicate_orders == 0
    assert runs["flaky"]["guarded"].max_positions <= runs["flaky"]["guarded"].cap


def test_sells_that_never_settle_end_in_a_halt_for_the_guard(runs):
    """The guard halts after its cycles; the naive bot keeps 'cleaning' and drifting up."""
    naive, guarded = runs["unsettled"]["naive"], runs["unsettled"]["guarded"]
    assert guarded.halts == 1
    assert naive.halts == 0
    assert naive.max_positions > guarded.max_positions


def test_every_field_is_reported_for_both_runs(runs):
    """Both runs report the documented fields."""
    for result in runs.values():
        assert set(result) == {"naive", "guarded"}
        for stats in result.values():
            assert set(stats.summary()) == FIELDS


def test_a_seed_replays_exactly():
    """Same seed, same story."""
    first = {k: v.summary() for k, v in simulate("flaky", seed=11).items()}
    again = {k: v.summary() for k, v in simulate("flaky", seed=11).items()}
    assert first == again


def test_the_command_prints_json_and_draws_the_plot(capsys, tmp_path):
    """--json holds naive and guarded with every field; --plot writes a PNG."""
    plot = tmp_path / "incident.png"
    code = main(
        ["simulate", "--scenario", "incident", "--seed", "1", "--json", "--plot", str(plot)]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(data) == {"naive", "guarded"}
    assert set(data["naive"]) == FIELDS
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_scenario_is_a_usage_error(capsys):
    """Exit 2 and the known names."""
    assert main(["simulate", "--scenario", "meteor"]) == 2


# --------------------------------------------------------------------------- Kraken's faults


def kraken_world(plan: FaultPlan, *, settle_delay: float = 1.0) -> tuple[FakeClock, PaperBroker]:
    clock = FakeClock(start=1_795_000_000.0)
    broker = PaperBroker(
        "sim",
        clock=clock,
        prices=dict.fromkeys(UNIVERSE, "10"),
        settle_delay=settle_delay,
        fault_plan=plan,
    )
    return clock, broker


def quiet(_start: float) -> FaultPlan:
    return FaultPlan()


SCENARIO = Scenario("kraken", "one account", 600, quiet, cap=3)


def test_duplicates_are_counted_per_intent_from_the_brokers_book():
    """Retries of one intent and an id accepted twice both count as orders of that intent."""
    filled = (Decimal(1), Decimal(1), OrderStatus.FILLED)
    orders = [
        Order(cid, "A/USD", Side.BUY, *filled)
        for cid in ("intent-1-try0", "intent-1-try1", "intent-2", "intent-2", "intent-3")
    ]
    assert intent_of("intent-1-try4") == "intent-1"
    assert orders_per_intent(orders) == {"intent-1": 2, "intent-2": 2, "intent-3": 1}


def test_a_naive_resend_under_the_same_id_executes_twice_on_kraken():
    """The id does not make a resend safe: the late original is accepted after the resend filled."""
    clock, broker = kraken_world(FaultPlan(delayed_accept_rate=0.5, accept_delay=5.0))
    bot = NaiveBot(SCENARIO, broker, resend_same_id=True)
    for symbol in UNIVERSE[:6]:
        bot.try_entry(symbol)
        clock.advance(10)
    counted = orders_per_intent(broker.all_orders())
    twice = [intent for intent, n in counted.items() if n > 1]
    assert twice
    same_id = [o for o in broker.all_orders() if o.client_order_id == twice[0]]
    assert [o.status for o in same_id] == [OrderStatus.FILLED, OrderStatus.FILLED]


def test_the_guarded_bot_leaves_an_unresolved_entry_alone_until_its_cleanup_adopts_it():
    """Unresolved: slot and symbol stay taken, nothing is resent; the enforcer's tick adopts it."""
    clock, broker = kraken_world(FaultPlan(delayed_accept_rate=1.0, accept_delay=4.0))
    bot = GuardedBot(SCENARIO, broker, clock)
    bot.try_entry("COIN01/USD")
    assert bot.unresolved == ["intent-1"]
    assert bot.gate.check_entry("COIN01/USD").code == "ORDER_UNRESOLVED"
    bot.try_entry("COIN01/USD")  # refused by the gate: never a second intent for it
    assert [c.outcome for c in broker.calls if c.method == "submit_order"] == ["queued"]
    broker.set_fault_plan(FaultPlan())
    clock.advance(5)
    bot.cleanup()
    assert broker.unresolved_orders() == []
    assert [(o.client_order_id, o.status) for o in broker.all_orders()] == [
        ("intent-1", OrderStatus.FILLED)
    ]


def test_the_guarded_bot_keeps_the_slot_of_a_dropped_order_until_it_is_proven_absent():
    """An order dropped at its deadline holds its slot until a lookup after deadline + margin."""
    clock, broker = kraken_world(FaultPlan(delayed_accept_rate=1.0, accept_delay=30.0))
    scenario = Scenario("kraken", "cap of one", 600, quiet, cap=1)
    bot = GuardedBot(scenario, broker, clock)
    bot.try_entry("COIN01/USD")
    broker.set_fault_plan(FaultPlan())
    clock.advance(broker.order_deadline_s)
    bot.cleanup()
    assert bot.gate.check_entry("COIN02/USD").code == "POSITION_CAP_REACHED"
    clock.advance(broker.resolution_margin_s)
    bot.cleanup()
    assert broker.order_state("intent-1") is OrderState.NOT_PLACED
    assert bot.gate.check_entry("COIN02/USD").allowed
    clock.advance(60)
    assert broker.all_orders() == []
