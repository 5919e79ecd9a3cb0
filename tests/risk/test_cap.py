"""The position cap enforcer on the paper broker: the seed's scenarios, end to end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal

import pytest

from brokerguard import CircuitState, ConfigurationError
from brokerguard.brokers import MISSING, FaultPlan
from brokerguard.risk import PositionCapEnforcer
from brokerguard.store import open_store

from .worlds import coins, paper_account, sell_orders

RESULT_KEYS = {
    "status",
    "trading_halted",
    "position_count",
    "valued_count",
    "max_positions",
    "cycles",
    "liquidated",
    "unvalued_symbols",
    "orders",
}


@pytest.fixture
def store(tmp_path, clock):
    return open_store(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)


def test_59_positions_with_a_cap_of_8_are_compliant_after_one_cycle(clock, store):
    """The seed's incident: 51 smallest sold in one cycle, verified by a fresh fetch."""
    prices = coins(59)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()
    assert ok
    assert set(result) >= RESULT_KEYS
    assert (result["status"], result["cycles"], result["position_count"]) == ("compliant", 1, 8)
    assert sorted(result["liquidated"]) == sorted(f"C{i:02d}/USD" for i in range(1, 52))
    assert sorted(broker.true_positions()) == [f"C{i:02d}/USD" for i in range(52, 60)]
    assert len(result["orders"]) == 51
    assert result["trading_halted"] is False
    assert not store.is_halted(broker.account_id)


def test_the_smallest_by_value_go_first_not_by_quantity(clock, store):
    """Ranking is quantity x price: 100 coins at $0.01 go before 1 coin at $50."""
    broker = paper_account(
        clock,
        prices={"BIG/USD": "50", "DUST/USD": "0.01", "MID/USD": "5"},
        positions={"BIG/USD": "1", "DUST/USD": "100", "MID/USD": "2"},
    )
    ok, result = PositionCapEnforcer(broker, 2, store=store).enforce_cap()
    assert ok
    assert result["liquidated"] == ["DUST/USD"]


def test_within_the_cap_nothing_is_sent(clock, store):
    """A compliant account gets zero cycles and zero orders."""
    broker = paper_account(clock, prices=coins(3), positions=dict.fromkeys(coins(3), "1"))
    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()
    assert ok
    assert (result["cycles"], result["orders"], result["position_count"]) == (0, [], 3)
    assert broker.all_orders() == []


def test_sells_that_never_settle_halt_after_three_cycles_durably(clock, store, tmp_path):
    """Unsettled liquidations: three cycles, then a halt that a new process still sees."""
    prices = coins(10)
    broker = paper_account(
        clock,
        prices=prices,
        positions=dict.fromkeys(prices, "1"),
        plan=FaultPlan(unsettled_sells=True),
    )
    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()
    assert not ok
    assert result["status"] == "failed_enforcement"
    assert result["trading_halted"] is True
    assert result["cycles"] == 3
    # The two smallest were sold once each and never re-sold while their sells stayed open.
    assert sell_orders(broker) == [("C01/USD", Decimal(1)), ("C02/USD", Decimal(1))]
    assert len(result["orders"]) == 2  # not even attempted again: no rejected duplicates
    assert len(store.journal(broker.account_id)) == 2
    assert store.is_halted(broker.account_id)
    assert "after 3 cycle(s)" in store.get_halt(broker.account_id).reason
    # A brand-new process opening the same store sees the halt.
    probe = textwrap.dedent(
        f"""
        from brokerguard.store import open_store
        print(open_store({f"sqlite:///{tmp_path / 'state.db'}"!r}).is_halted({broker.account_id!r}))
        """
    )
    out = subprocess.run(  # noqa: S603 (our interpreter, our snippet)
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "True"


def test_a_halt_stays_until_an_operator_resumes(clock, store):
    """Re-running the enforcer on a halted account reports the halt; resume lifts it."""
    prices = coins(10)
    broker = paper_account(
        clock,
        prices=prices,
        positions=dict.fromkeys(prices, "1"),
        plan=FaultPlan(unsettled_sells=True),
    )
    enforcer = PositionCapEnforcer(broker, 8, store=store)
    enforcer.enforce_cap()
    broker.set_fault_plan(FaultPlan())  # the sells finally settle
    clock.advance(10)
    ok, result = enforcer.enforce_cap()
    assert ok
    assert result["status"] == "compliant"
    assert result["trading_halted"] is True  # compliant again, but only an operator resumes
    assert store.resume(broker.account_id, "alice", "checked the account by hand")
    assert enforcer.enforce_cap()[1]["trading_halted"] is False


def test_a_failing_position_fetch_is_unverified_and_sends_nothing(clock, store):
    """Unknown is not zero: no orders, status unverified, no halt (it is not a cap breach)."""
    prices = coins(20)
    broker = paper_account(
        clock,
        prices=prices,
        positions=dict.fromkeys(prices, "1"),
        plan=FaultPlan(error_rate={"fetch_positions": 1.0}),
    )
    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()
    assert not ok
    assert set(result) >= RESULT_KEYS
    assert result["status"] == "unverified"
    assert result["orders"] == []
    assert result["position_count"] is None
    assert broker.all_orders() == []
    assert "could not be fetched" in result["reason"]


def test_an_open_read_circuit_is_unverified(clock, store):
    """With the read breaker open the enforcer does not even ask, and sends nothing."""
    prices = coins(20)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    broker.read_breaker.force_open("exchange outage")
    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()
    assert (ok, result["status"]) == (False, "unverified")
    assert broker.calls == []


def test_missing_prices_pause_symbols_and_no_order_uses_a_made_up_price(clock, store):
    """Unpriced positions are never ranked or sold by a fallback value; they are paused."""
    prices = coins(12)
    bad = {"C01/USD": MISSING, "C02/USD": "NaN", "C03/USD": 0}
    broker = paper_account(
        clock, prices=prices, positions=dict.fromkeys(prices, "1"), plan=FaultPlan(bad_prices=bad)
    )
    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()
    assert ok
    assert result["unvalued_symbols"] == ["C01/USD", "C02/USD", "C03/USD"]
    # Every order sent is for a symbol the broker priced, for exactly the held quantity.
    assert sell_orders(broker) == [(f"C{i:02d}/USD", Decimal(1)) for i in (4, 5, 6, 7)]
    assert store.paused_symbols(broker.account_id) == set(bad)
    assert result["position_count"] == 8  # the unpriced still count (fail-closed reading)


def test_count_unpriced_true_halts_when_valued_positions_cannot_clear_the_excess(clock, store):
    """Nine unpriced positions over a cap of 8: nothing can be sold, so trading halts."""
    prices = coins(10)
    bad = {f"C{i:02d}/USD": "NaN" for i in range(1, 10)}
    broker = paper_account(
        clock, prices=prices, positions=dict.fromkeys(prices, "1"), plan=FaultPlan(bad_prices=bad)
    )
    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()
    assert not ok
    assert result["trading_halted"] is True
    assert "cannot be cleared from valued positions" in result["reason"]
    assert sell_orders(broker) == [("C10/USD", Decimal(1))]


def test_count_unpriced_false_is_the_seeds_literal_rule(clock, store):
    """Counting only valued positions, the same account is within the cap and nothing is sold."""
    prices = coins(10)
    bad = {f"C{i:02d}/USD": "NaN" for i in range(1, 10)}
    broker = paper_account(
        clock, prices=prices, positions=dict.fromkeys(prices, "1"), plan=FaultPlan(bad_prices=bad)
    )
    ok, result = PositionCapEnforcer(broker, 8, store=store, count_unpriced=False).enforce_cap()
    assert ok
    assert (result["position_count"], result["valued_count"]) == (10, 1)
    assert broker.all_orders() == []


def test_liquidations_are_journaled_and_audited_before_they_are_sent(clock, store):
    """Every liquidation has an intent in the journal and an audit record naming its id."""
    prices = coins(10)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    _, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()
    journal = store.journal(broker.account_id)
    assert [e.client_order_id for e in journal] == result["orders"]
    assert {e.status for e in journal} == {"filled"}
    audited = [r.details["client_order_id"] for r in store.audit_log(broker.account_id)]
    assert sorted(audited) == sorted(result["orders"])


def test_settlement_is_polled_on_the_clock_not_slept_blindly(clock, store):
    """The enforcer waits only until the sells are final, polling; it never exceeds the timeout."""
    prices = coins(10)
    broker = paper_account(
        clock, prices=prices, positions=dict.fromkeys(prices, "1"), settle_delay=1.0
    )
    start = clock.monotonic()
    ok, _ = PositionCapEnforcer(broker, 8, store=store, settle_timeout=3.0).enforce_cap()
    assert ok
    assert 1.0 <= clock.monotonic() - start < 3.0
    assert [c.method for c in broker.calls].count("fetch_order") >= 2


def test_an_open_write_circuit_stops_the_liquidation(clock, store):
    """With writes refused, nothing is sent; the account halts after its cycles."""
    prices = coins(10)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    broker.write_breaker.force_open("exchange refuses orders")
    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()
    assert not ok
    assert result["trading_halted"] is True
    assert broker.all_orders() == []
    assert broker.write_breaker.state is CircuitState.OPEN
    assert {e.status for e in store.journal(broker.account_id)} == {"not_placed"}


@pytest.mark.parametrize(
    "kwargs",
    [{"max_positions": -1}, {"max_cycles": 0}, {"settle_timeout": -1}, {"poll_interval": 0}],
)
def test_invalid_settings_are_refused(clock, kwargs):
    """An enforcer that cannot keep its promise is refused at construction."""
    broker = paper_account(clock, prices=coins(1), positions={})
    with pytest.raises(ConfigurationError):
        PositionCapEnforcer(broker, **kwargs)


def test_a_dry_run_says_what_it_would_sell_and_sends_nothing(clock, store):
    """plan() ranks like a real cycle, lists the sells, and places no order."""
    prices = coins(11)
    broker = paper_account(
        clock,
        prices=prices,
        positions=dict.fromkeys(prices, "2"),
        plan=FaultPlan(bad_prices={"C01/USD": "NaN"}),
    )
    enforcer = PositionCapEnforcer(broker, 8, store=store)
    plan = enforcer.plan()
    assert plan["status"] == "over_cap"
    assert plan["excess"] == 3
    assert plan["would_liquidate"] == [
        {"symbol": "C02/USD", "quantity": "2", "value": "4"},
        {"symbol": "C03/USD", "quantity": "2", "value": "6"},
        {"symbol": "C04/USD", "quantity": "2", "value": "8"},
    ]
    assert plan["unvalued_symbols"] == ["C01/USD"]
    assert broker.all_orders() == []
    assert store.journal(broker.account_id) == []
