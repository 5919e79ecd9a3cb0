"""PaperBroker: a deterministic exchange whose every documented fault can be switched on."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import pytest

from brokerguard import (
    BrokerError,
    BrokerRejection,
    CircuitOpenError,
    CircuitState,
    ConfigurationError,
    OrderStatus,
    OrderUnconfirmedError,
    Position,
    RateLimitedError,
    Side,
    TransientBrokerError,
    clear_registry,
)
from brokerguard.brokers import MISSING, FaultPlan, OutageWindow, PaperBroker
from brokerguard.errors import DuplicateOrderError, PositionsImplausibleError
from brokerguard.models import OrderRequest
from brokerguard.testing import FakeClock


def paper(clock: FakeClock, **kwargs) -> PaperBroker:
    kwargs.setdefault("prices", {"BTC/USD": "60000", "ETH/USD": "3000", "SOL/USD": "150"})
    return PaperBroker("paper", clock=clock, **kwargs)


def request(cid: str, side: str = "buy", qty: str = "1", symbol: str = "BTC/USD") -> OrderRequest:
    return OrderRequest(symbol, side, qty, cid)


# --------------------------------------------------------------------------- prices


def test_prices_walk_deterministically_from_the_seed(clock):
    """Same seed and same calls: same prices. Another seed: another path."""

    def path(seed: int) -> list[dict]:
        clear_registry()  # each path is its own world, with its own clock and breakers
        c = FakeClock(start=1000.0)
        broker = paper(c, seed=seed, volatility=0.01)
        out = []
        for _ in range(5):
            c.advance(60)
            out.append(broker.get_prices(["BTC/USD", "ETH/USD"]))
        return out

    assert path(1) == path(1)
    assert path(1) != path(2)
    assert all(isinstance(p, Decimal) and p > 0 for step in path(1) for p in step.values())


def test_a_fault_plan_does_not_change_the_price_path(clock):
    """Faults and prices use separate dice: switching faults on replays the same prices."""

    def path(plan: FaultPlan) -> list:
        clear_registry()
        c = FakeClock()
        broker = paper(c, seed=5, volatility=0.01, fault_plan=plan)
        out = []
        for _ in range(5):
            c.advance(10)
            out.append(broker.fetch_prices(["BTC/USD"]))
        return out

    assert path(FaultPlan()) == path(FaultPlan(error_rate={"ping": 0.5}))


def test_bad_prices_from_the_plan_reach_the_guard_as_none(clock):
    """Missing, zero and NaN prices are reported raw and come out of the guard as None."""
    plan = FaultPlan(bad_prices={"ETH/USD": "NaN", "SOL/USD": 0, "BTC/USD": MISSING})
    broker = paper(clock, fault_plan=plan)
    assert broker.fetch_prices(["BTC/USD", "ETH/USD", "SOL/USD"]) == {
        "ETH/USD": "NaN",
        "SOL/USD": 0,
    }
    assert broker.get_prices(["BTC/USD", "ETH/USD", "SOL/USD"]) == {
        "BTC/USD": None,
        "ETH/USD": None,
        "SOL/USD": None,
    }


# --------------------------------------------------------------------------- orders


def test_market_orders_settle_after_the_delay(clock):
    """An order is open until settle_delay has passed, then filled, and the position exists."""
    broker = paper(clock, settle_delay=2.0)
    order = broker.place_market_order("BTC/USD", "buy", "0.5", client_order_id="b1")
    assert order.status is OrderStatus.OPEN
    assert broker.get_positions() == []
    clock.advance(2.0)
    assert broker.get_order("b1").status is OrderStatus.FILLED
    assert broker.get_positions() == [Position("BTC/USD", Decimal("0.5"))]


def test_partial_fills_come_in_two_halves(clock):
    """With partial fills, half fills at the delay and the rest one delay later."""
    broker = paper(clock, settle_delay=1.0, partial_fills=True)
    broker.place_market_order("ETH/USD", "buy", "3", client_order_id="b1")
    clock.advance(1.0)
    order = broker.get_order("b1")
    assert (order.status, order.filled_quantity) == (OrderStatus.PARTIALLY_FILLED, Decimal("1.5"))
    clock.advance(1.0)
    order = broker.get_order("b1")
    assert (order.status, order.filled_quantity) == (OrderStatus.FILLED, Decimal(3))


def test_sells_reduce_and_close_positions(clock):
    """Selling the whole holding removes the position."""
    broker = paper(clock, positions={"SOL/USD": "4"}, settle_delay=0)
    broker.place_market_order("SOL/USD", Side.SELL, "1")
    assert broker.true_positions() == {"SOL/USD": Decimal(3)}
    broker.close_position("SOL/USD")
    assert broker.true_positions() == {}


def test_selling_more_than_held_is_rejected_counting_pending_sells(clock):
    """A sell beyond the holding not already being sold is a business rejection."""
    broker = paper(clock, positions={"BTC/USD": "1"}, settle_delay=10)
    broker.place_market_order("BTC/USD", "sell", "0.6")
    with pytest.raises(BrokerRejection, match="insufficient position"):
        broker.place_market_order("BTC/USD", "sell", "0.6")


def test_unknown_symbols_are_rejected(clock):
    """Like an exchange: no such market is a business refusal."""
    broker = paper(clock)
    with pytest.raises(BrokerRejection, match="unknown symbol"):
        broker.submit_order(request("x", symbol="NOPE/USD"))
    assert broker.all_orders() == []


def test_an_open_orders_id_is_answered_as_a_duplicate_not_a_rejection(clock):
    """A client order id an open order carries gets Kraken's duplicate answer, with the id."""
    broker = paper(clock, settle_delay=5)
    broker.submit_order(request("dup"))
    with pytest.raises(DuplicateOrderError, match="EOrder:Duplicate order") as info:
        broker.submit_order(request("dup"))
    assert not isinstance(info.value, BrokerRejection)
    assert info.value.client_order_id == "dup"
    assert [o.client_order_id for o in broker.all_orders()] == ["dup"]
    assert broker.calls[-1].outcome == "duplicate"


def test_a_final_orders_id_is_accepted_again_as_a_new_order(clock):
    """Like Kraken, an id whose order filled is accepted again: a blind resend executes twice."""
    broker = paper(clock, settle_delay=1)
    first = broker.submit_order(request("again", qty="0.5"))
    clock.advance(1)
    second = broker.submit_order(request("again", qty="0.5"))
    assert first.broker_order_id != second.broker_order_id
    assert [o.client_order_id for o in broker.all_orders()] == ["again", "again"]
    assert broker.fetch_order("again").broker_order_id == second.broker_order_id  # the newest
    clock.advance(1)
    assert [o.status for o in broker.all_orders()] == [OrderStatus.FILLED] * 2
    assert broker.true_positions() == {"BTC/USD": Decimal(1)}  # executed twice


def test_sells_under_one_id_settle_and_count_against_the_holding_separately(clock):
    """Several orders per id: each sell settles once and the holding is never oversold."""
    broker = paper(clock, positions={"SOL/USD": "2"}, settle_delay=1)
    broker.submit_order(request("s", "sell", "1", "SOL/USD"))
    with pytest.raises(DuplicateOrderError):
        broker.submit_order(request("s", "sell", "1", "SOL/USD"))
    clock.advance(1)
    broker.submit_order(request("s", "sell", "1", "SOL/USD"))
    with pytest.raises(BrokerRejection, match="insufficient position"):
        broker.submit_order(request("other", "sell", "0.5", "SOL/USD"))
    clock.advance(1)
    assert broker.true_positions() == {}
    assert [(o.client_order_id, o.filled_quantity) for o in broker.all_orders()] == [
        ("s", Decimal(1)),
        ("s", Decimal(1)),
    ]


def test_orders_are_found_open_or_closed_and_unknown_ids_are_absent(clock):
    """fetch_order looks at every order, filled ones included; unknown means None."""
    broker = paper(clock, settle_delay=0)
    broker.submit_order(request("filled-at-once"))
    assert broker.fetch_order("filled-at-once").status is OrderStatus.FILLED
    assert broker.fetch_order("never-sent") is None


# --------------------------------------------------------------------------- faults


def test_error_rate_one_fails_every_call_of_that_method_only(clock):
    """A per-method error rate hits that method and leaves the others alone."""
    broker = paper(clock, fault_plan=FaultPlan(error_rate={"fetch_positions": 1.0}))
    with pytest.raises(TransientBrokerError):
        broker.fetch_positions()
    assert broker.fetch_prices(["BTC/USD"])
    assert [c.outcome for c in broker.calls] == ["error", "ok"]


def test_error_rates_are_seeded(clock):
    """The same seed fails the same calls."""

    def outcomes(seed: int) -> list[str]:
        clear_registry()
        broker = paper(FakeClock(), seed=seed, fault_plan=FaultPlan(error_rate={"ping": 0.5}))
        for _ in range(40):
            with contextlib.suppress(TransientBrokerError):
                broker.ping()
        return [c.outcome for c in broker.calls]

    assert outcomes(3) == outcomes(3)
    assert outcomes(3) != outcomes(4)
    assert 5 < outcomes(3).count("error") < 35


def test_outage_windows_refuse_calls_inside_them_only(clock):
    """Inside the window the broker answers 503; before and after, it works."""
    window = OutageWindow(1010.0, 1020.0, methods=frozenset({"fetch_prices"}))
    broker = paper(clock, fault_plan=FaultPlan(outages=[window]))
    broker.fetch_prices(["BTC/USD"])
    clock.advance(10)
    with pytest.raises(TransientBrokerError, match="503"):
        broker.fetch_prices(["BTC/USD"])
    broker.fetch_positions()  # not named by the window
    clock.advance(10)
    broker.fetch_prices(["BTC/USD"])


def test_latency_is_spent_on_the_clock(clock):
    """A slow method advances the (fake) clock by its latency."""
    broker = paper(clock, fault_plan=FaultPlan(latency={"fetch_order": 2.5}))
    broker.fetch_order("x")
    assert clock.monotonic() == 1002.5
    assert broker.calls[0].at == 1002.5


def test_stale_snapshots_return_an_older_state(clock):
    """A stale position fetch shows the account as it was stale_positions_age ago."""
    broker = paper(clock, settle_delay=0)
    clock.advance(60)
    broker.submit_order(request("b1"))
    broker.set_fault_plan(FaultPlan(stale_positions_rate=1.0, stale_positions_age=30))
    assert broker.fetch_positions() == []
    assert broker.true_positions() == {"BTC/USD": Decimal(1)}
    clock.advance(31)
    assert broker.fetch_positions() == [Position("BTC/USD", Decimal(1))]


def test_unsettled_sells_never_fill(clock):
    """Under the plan, sells of the named symbols stay open forever; buys still fill."""
    plan = FaultPlan(unsettled_sells=frozenset({"ETH/USD"}))
    broker = paper(clock, positions={"ETH/USD": "2"}, settle_delay=1, fault_plan=plan)
    broker.submit_order(request("s1", "sell", "2", "ETH/USD"))
    broker.submit_order(request("b1", "buy", "1", "BTC/USD"))
    clock.advance(3600)
    assert broker.fetch_order("s1").status is OrderStatus.OPEN
    assert broker.fetch_order("b1").status is OrderStatus.FILLED
    assert broker.true_positions()["ETH/USD"] == Decimal(2)


def test_rate_limits_carry_retry_after_and_the_guard_obeys_it(clock):
    """A rate-limited call says how long to wait, and the guarded read waits that long."""
    plan = FaultPlan(rate_limit_rate=1.0, rate_limit_retry_after=7.0)
    broker = paper(clock, fault_plan=plan)
    with pytest.raises(RateLimitedError) as info:
        broker.fetch_positions()
    assert info.value.retry_after == 7.0
    with pytest.raises(RateLimitedError):
        broker.get_positions()
    assert clock.sleeps == [7.0, 7.0]


def test_lost_confirmations_leave_the_order_at_the_broker(clock):
    """Accepted then lost: the raw call fails, the order exists, the guard returns it once."""
    broker = paper(clock, fault_plan=FaultPlan(fail_after_accept_rate=1.0))
    with pytest.raises(TransientBrokerError, match="confirmation was lost"):
        broker.submit_order(request("raw"))
    assert broker.fetch_order("raw") is not None
    order = broker.place_market_order("BTC/USD", "buy", 1, client_order_id="guarded")
    assert order.client_order_id == "guarded"
    assert [o.client_order_id for o in broker.all_orders()] == ["raw", "guarded"]


def test_delayed_acceptance_times_out_then_the_order_appears_later(clock):
    """Queued in the engine: the submit times out, lookups find nothing, then it is accepted."""
    plan = FaultPlan(delayed_accept_rate=1.0, accept_delay=4.0)
    broker = paper(clock, settle_delay=1, fault_plan=plan)
    with pytest.raises(TransientBrokerError, match="timed out"):
        broker.submit_order(request("late", qty="2"))
    assert broker.fetch_order("late") is None
    assert [r.client_order_id for r in broker.queued_orders()] == ["late"]
    clock.advance(3.9)
    assert broker.fetch_order("late") is None
    clock.advance(0.1)
    assert broker.fetch_order("late").status is OrderStatus.OPEN
    clock.advance(1)
    assert broker.fetch_order("late").status is OrderStatus.FILLED
    assert broker.true_positions() == {"BTC/USD": Decimal(2)}
    assert (broker.queued_orders(), broker.dropped_orders()) == ([], [])


def test_a_queued_order_whose_deadline_passes_first_is_never_accepted(clock):
    """Like Kraken's AddOrder deadline: reached after its deadline, the order is dropped."""
    plan = FaultPlan(delayed_accept_rate=1.0, accept_delay=6.0)
    broker = paper(clock, settle_delay=0, fault_plan=plan)
    on_time = OrderRequest("BTC/USD", "buy", "1", "on-time", clock.time() + 6.0)
    too_late = OrderRequest("ETH/USD", "buy", "1", "too-late", clock.time() + 5.9)
    for order in (on_time, too_late):
        with pytest.raises(TransientBrokerError):
            broker.submit_order(order)
    clock.advance(3600)
    assert [o.client_order_id for o in broker.all_orders()] == ["on-time"]
    assert broker.fetch_order("too-late") is None
    assert broker.dropped_orders() == [(too_late, "deadline elapsed")]


def test_a_resend_after_a_timeout_executes_twice_under_the_same_id(clock):
    """The resend fills before the queued original arrives, so the id is free: two executions."""
    broker = paper(clock, settle_delay=0.5)
    broker.set_fault_plan(FaultPlan(delayed_accept_rate=1.0, accept_delay=3.0))
    with pytest.raises(TransientBrokerError):
        broker.submit_order(request("x"))
    broker.set_fault_plan(FaultPlan())
    assert broker.fetch_order("x") is None  # the lookup made at once proves nothing
    broker.submit_order(request("x"))
    clock.advance(5)
    assert [(o.client_order_id, o.status) for o in broker.all_orders()] == [
        ("x", OrderStatus.FILLED),
        ("x", OrderStatus.FILLED),
    ]
    assert broker.true_positions() == {"BTC/USD": Decimal(2)}


def test_a_queued_order_meeting_an_open_order_with_its_id_is_dropped(clock):
    """If the resend is still open when the original arrives, the engine refuses the original."""
    broker = paper(clock, settle_delay=10)
    broker.set_fault_plan(FaultPlan(delayed_accept_rate=1.0, accept_delay=2.0))
    with pytest.raises(TransientBrokerError):
        broker.submit_order(request("x"))
    broker.set_fault_plan(FaultPlan())
    broker.submit_order(request("x"))
    clock.advance(20)
    assert len(broker.all_orders()) == 1
    assert [reason for _, reason in broker.dropped_orders()] == ["duplicate order"]


def test_accept_delays_are_drawn_from_the_range_per_order_and_seeded(clock):
    """A (min, max) delay is drawn per order from the seeded dice: same seed, same delays."""

    def delays(seed: int) -> list[float]:
        clear_registry()
        c = FakeClock(start=0.0)
        plan = FaultPlan(delayed_accept_rate=1.0, accept_delay=(1.0, 15.0))
        broker = paper(c, seed=seed, settle_delay=100, fault_plan=plan)
        for i in range(30):
            with pytest.raises(TransientBrokerError):
                broker.submit_order(request(f"o{i}"))
        seen: dict[str, float] = {}
        for _ in range(160):
            c.advance(0.1)
            for order in broker.all_orders():
                seen.setdefault(order.client_order_id, round(c.monotonic(), 1))
        return [seen[f"o{i}"] for i in range(30)]

    first = delays(1)
    assert first == delays(1)
    assert first != delays(2)
    assert all(1.0 <= d <= 15.1 for d in first)
    assert len(set(first)) > 10
    assert any(d < 10 for d in first)
    assert any(d > 10 for d in first)


def test_the_guard_holds_a_delayed_order_unresolved_and_adopts_it_when_it_appears(clock):
    """Not found at once, the order is unresolved, not resent; found later, it is adopted."""
    plan = FaultPlan(delayed_accept_rate=1.0, accept_delay=4.0)
    broker = paper(clock, settle_delay=1, fault_plan=plan)
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert info.value.client_order_id == "c1"
    assert [o.client_order_id for o in broker.unresolved_orders()] == ["c1"]
    assert broker.all_orders() == []
    broker.set_fault_plan(FaultPlan())
    clock.advance(5)
    assert broker.resolve_unresolved() == {"c1": "filled"}
    assert [o.client_order_id for o in broker.all_orders()] == ["c1"]


def test_the_guard_proves_a_dropped_order_absent_only_after_its_deadline(clock):
    """A queued order dropped at its deadline is not placed, but only a later lookup says so."""
    plan = FaultPlan(delayed_accept_rate=1.0, accept_delay=12.0)
    broker = paper(clock, settle_delay=1, fault_plan=plan)
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    deadline = info.value.deadline
    assert deadline == clock.time() + broker.order_deadline_s + broker.resolution_margin_s
    clock.advance(broker.order_deadline_s)
    assert broker.resolve_unresolved() == {"c1": "unresolved"}
    clock.advance(broker.resolution_margin_s)
    assert broker.resolve_unresolved() == {"c1": "not_placed"}
    clock.advance(60)
    assert broker.all_orders() == []
    assert [reason for _, reason in broker.dropped_orders()] == ["deadline elapsed"]


def test_empty_reads_succeed_with_nothing_although_positions_are_held(clock):
    """A well-formed empty answer: the raw read says nothing is held, the guard disbelieves it."""
    broker = paper(clock, positions={"ETH/USD": "2"})
    assert broker.get_positions() == [Position("ETH/USD", Decimal(2))]
    broker.set_fault_plan(FaultPlan(empty_positions_rate=1.0))
    assert broker.fetch_positions() == []
    assert broker.calls[-1].outcome == "empty"
    assert broker.true_positions() == {"ETH/USD": Decimal(2)}
    with pytest.raises(PositionsImplausibleError) as info:
        broker.get_positions()
    assert info.value.missing == ("ETH/USD",)


def test_unknown_errors_leave_half_the_orders_accepted_and_say_nothing(clock):
    """An unknown error string is a plain BrokerError; about half of those orders exist."""
    broker = paper(clock, settle_delay=100, fault_plan=FaultPlan(unknown_error_rate=1.0))
    for i in range(200):
        with pytest.raises(BrokerError, match="EGeneral:Unexpected condition") as info:
            broker.submit_order(request(f"u{i}", qty="0.001"))
        assert type(info.value) is BrokerError
    accepted = {o.client_order_id for o in broker.all_orders()}
    assert 70 < len(accepted) < 130
    outcomes = [c.outcome for c in broker.calls if c.method == "submit_order"]
    assert outcomes.count("accepted_then_unknown") == len(accepted)
    assert outcomes.count("unknown") == 200 - len(accepted)


def test_the_guard_adopts_or_holds_an_order_answered_with_an_unknown_error(clock):
    """Accepted: adopted at once; not accepted: unresolved until after its deadline."""
    symbols = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD"]  # one order each: none waits
    prices = dict.fromkeys(symbols, "100")
    plan = FaultPlan(unknown_error_rate=1.0)
    broker = paper(clock, prices=prices, settle_delay=100, fault_plan=plan)
    adopted, unresolved = [], []
    for i, symbol in enumerate(symbols):  # fewer than the write breaker's threshold
        try:
            broker.place_market_order(symbol, "buy", "0.001", client_order_id=f"u{i}")
        except OrderUnconfirmedError as exc:
            unresolved.append(exc.client_order_id)
        else:
            adopted.append(f"u{i}")
    assert adopted
    assert unresolved
    assert sorted(o.client_order_id for o in broker.all_orders()) == sorted(adopted)
    assert sorted(o.client_order_id for o in broker.unresolved_orders()) == sorted(unresolved)


def test_plans_without_the_new_faults_draw_the_same_dice(clock):
    """A fault switched off draws nothing: the other faults hit the same calls as before."""

    def outcomes(plan: FaultPlan) -> list[str]:
        clear_registry()
        broker = paper(FakeClock(), seed=9, settle_delay=0, fault_plan=plan)
        for i in range(40):
            with contextlib.suppress(TransientBrokerError):
                broker.fetch_positions()
            with contextlib.suppress(TransientBrokerError):
                broker.submit_order(request(f"o{i}", qty="0.001"))
        return [c.outcome for c in broker.calls]

    base = {"stale_positions_rate": 0.3, "fail_after_accept_rate": 0.3}
    explicit_off = {"delayed_accept_rate": 0, "empty_positions_rate": 0, "unknown_error_rate": 0}
    assert outcomes(FaultPlan(**base)) == outcomes(FaultPlan(**base, **explicit_off))


def test_a_ten_minute_outage_opens_the_breaker_and_spares_the_broker(clock):
    """During an outage the guard stops calling after the threshold, probing only sparsely."""
    outage = OutageWindow(1000.0, 1600.0)
    broker = paper(clock, fault_plan=FaultPlan(outages=[outage]))
    results = {"rejected": 0, "failed": 0}
    while clock.monotonic() < 1600.0:
        try:
            broker.get_positions()
        except CircuitOpenError:
            results["rejected"] += 1
        except TransientBrokerError:
            results["failed"] += 1
        clock.advance(1.0)
    during = broker.calls_between(1000.0, 1600.0)
    assert broker.read_breaker.state is CircuitState.OPEN
    assert results["rejected"] > 400
    assert len(during) <= 15  # the opening failures plus a few probes, not ~600 polls
    clock.advance(600)
    broker.get_positions()
    broker.get_positions()
    assert broker.read_breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"error_rate": {"fetch_positions": 1.5}},
        {"error_rate": {"fetch_everything": 0.1}},
        {"latency": {"ping": -1}},
        {"stale_positions_rate": -0.1},
        {"rate_limit_retry_after": float("nan")},
        {"delayed_accept_rate": 1.5},
        {"empty_positions_rate": -1},
        {"unknown_error_rate": "half"},
        {"accept_delay": -1.0},
        {"accept_delay": float("inf")},
        {"accept_delay": (5.0, 1.0)},
        {"accept_delay": (1.0, 2.0, 3.0)},
        {"accept_delay": (1.0, float("nan"))},
        {"accept_delay": True},
    ],
)
def test_invalid_fault_plans_are_refused(kwargs):
    """A plan that cannot mean anything is refused when built."""
    with pytest.raises(ConfigurationError):
        FaultPlan(**kwargs)


def test_invalid_outage_windows_are_refused():
    """Windows must end after they start and name real methods."""
    with pytest.raises(ConfigurationError):
        OutageWindow(10.0, 5.0)
    with pytest.raises(ConfigurationError):
        OutageWindow(0.0, 5.0, methods=frozenset({"withdraw"}))


def test_the_call_record_is_bounded_for_long_runs(clock):
    """A paper broker running for days keeps only its newest `recorded_calls` calls."""
    broker = PaperBroker(clock=clock, recorded_calls=10)
    for _ in range(25):
        broker.fetch_positions()
        clock.advance(1)
    assert len(broker.calls) == 10
    assert broker.calls[0].at == broker.calls[-1].at - 9


def test_accounts_on_one_market_see_one_price(clock):
    """Two accounts of one paper exchange share its walk; prices and a market are exclusive."""
    from brokerguard.brokers import PaperMarket  # noqa: PLC0415 (the one test that needs it)

    market = PaperMarket({"BTC/USD": "100"}, seed=3, volatility=0.01, start=clock.monotonic())
    alice = PaperBroker(clock=clock, market=market, account_id="alice")
    bob = PaperBroker(clock=clock, market=market, account_id="bob")
    clock.advance(60)
    seen_by_alice = alice.fetch_prices(["BTC/USD"])["BTC/USD"]
    assert seen_by_alice != Decimal(100)  # it walked
    assert bob.fetch_prices(["BTC/USD"])["BTC/USD"] == seen_by_alice
    bob.set_price("BTC/USD", "250")
    assert alice.fetch_prices(["BTC/USD"]) == {"BTC/USD": Decimal(250)}
    with pytest.raises(ConfigurationError, match="prices or a market"):
        PaperBroker(clock=clock, market=market, prices={"BTC/USD": "1"})
