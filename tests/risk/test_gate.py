"""The pre-trade gate: unknown means deny, and 8 slots are 8 slots however many threads race."""

from __future__ import annotations

import random
import threading

import pytest

from brokerguard import (
    BrokerGuardError,
    BrokerRejection,
    ConfigurationError,
    OrderUnconfirmedError,
    StoreUnavailableError,
    TransientBrokerError,
)
from brokerguard.brokers import FaultPlan
from brokerguard.risk import (
    ACCOUNT_HALTED,
    BROKER_OFFLINE,
    POSITION_CAP_REACHED,
    POSITIONS_UNKNOWN,
    STORE_UNAVAILABLE,
    SYMBOL_PAUSED,
    Decision,
    EntryDenied,
    TradingGate,
    TradingState,
)
from brokerguard.store import open_store

from .worlds import coins, paper_account


@pytest.fixture
def store(clock):
    return open_store("sqlite://", clock=clock)


def account(clock, held: int = 0, **kwargs):
    prices = coins(20)
    held_positions = dict.fromkeys(list(prices)[:held], "1")
    return paper_account(clock, prices=prices, positions=held_positions, **kwargs)


def test_an_entry_is_allowed_with_its_counts(clock, store):
    """Below the cap the answer is yes, with the numbers it was based on."""
    gate = TradingGate(account(clock, held=3), 8, store=store)
    decision = gate.check_entry("C10/USD")
    assert decision.allowed
    assert bool(decision)
    assert decision.reason == "ALLOWED: open=3 reserved=0 cap=8"


def test_at_the_cap_the_refusal_is_data_with_a_stable_code(clock, store):
    """The documented text: POSITION_CAP_REACHED: open=8 reserved=0 cap=8."""
    gate = TradingGate(account(clock, held=8), 8, store=store)
    decision = gate.check_entry("C10/USD")
    assert not decision
    assert decision.reason == "POSITION_CAP_REACHED: open=8 reserved=0 cap=8"
    assert decision.code == POSITION_CAP_REACHED
    assert decision.details == {"open": 8, "reserved": 0, "cap": 8}


def test_adding_to_a_held_symbol_takes_no_new_slot(clock, store):
    """The cap counts positions: buying more of a held coin does not open a new one."""
    gate = TradingGate(account(clock, held=8), 8, store=store)
    assert gate.check_entry("C01/USD").allowed


def test_a_halted_account_refuses_entries_but_allows_exits(clock, store):
    """A halt blocks new risk; risk-reducing orders stay allowed."""
    broker = account(clock, held=2)
    store.halt(broker.account_id, "over cap", "position_cap_enforcer")
    gate = TradingGate(broker, 8, store=store)
    decision = gate.check_entry("C10/USD")
    assert decision.code == ACCOUNT_HALTED
    assert decision.details["source"] == "position_cap_enforcer"
    assert gate.check_exit("C01/USD").allowed
    assert gate.trading_state() is TradingState.HALTED


def test_an_unstable_broker_refuses_entries(clock, store):
    """While a breaker is not closed, no new risk."""
    broker = account(clock)
    broker.read_breaker.force_open("outage")
    decision = TradingGate(broker, 8, store=store).check_entry("C10/USD")
    assert decision.code == BROKER_OFFLINE
    assert decision.details == {"broker": "paper", "health": "offline"}


def test_a_paused_symbol_refuses_entries_and_management(clock, store):
    """No new entries and no position management in a symbol that cannot be valued."""
    broker = account(clock, held=1)
    store.pause_symbol(broker.account_id, "C01/USD", "unvaluable: nan")
    gate = TradingGate(broker, 8, store=store)
    assert gate.check_entry("C01/USD").code == SYMBOL_PAUSED
    assert gate.check_exit("C01/USD").code == SYMBOL_PAUSED
    assert gate.check_entry("C02/USD").allowed


def test_unknown_positions_refuse_entries(clock, store):
    """No snapshot and a failing fetch: refuse. Never read it as zero positions."""
    broker = account(clock, plan=FaultPlan(error_rate={"fetch_positions": 1.0}))
    decision = TradingGate(broker, 8, store=store).check_entry("C10/USD")
    assert decision.code == POSITIONS_UNKNOWN
    assert broker.all_orders() == []


def test_a_stale_snapshot_is_refreshed_and_a_failed_refresh_refuses(clock, store):
    """Older than max_position_age: the gate fetches; if that fails, it refuses."""
    broker = account(clock, held=2)
    gate = TradingGate(broker, 8, store=store, max_position_age=30)
    assert gate.check_entry("C10/USD").allowed
    fetches = [c.method for c in broker.calls].count("fetch_positions")
    clock.advance(10)
    assert gate.check_entry("C10/USD").allowed
    assert [c.method for c in broker.calls].count("fetch_positions") == fetches  # still fresh
    clock.advance(30)
    broker.set_fault_plan(FaultPlan(error_rate={"fetch_positions": 1.0}))
    assert gate.check_entry("C10/USD").code == POSITIONS_UNKNOWN


@pytest.mark.parametrize("refetch", [True, False])
def test_a_degraded_broker_is_not_trusted_with_a_cached_count(clock, store, refetch):
    """After a failed read the gate refetches instead of trusting a cached count.

    The circuit is still closed then; refetch_when_degraded=False shows the old, permissive
    answer.
    """
    broker = account(clock, held=2)
    gate = TradingGate(broker, 8, store=store, refetch_when_degraded=refetch)
    assert gate.check_entry("C10/USD").allowed  # snapshot taken now
    broker.set_fault_plan(FaultPlan(error_rate={"fetch_positions": 1.0}))
    with pytest.raises(BrokerGuardError):
        broker.get_positions()  # the outage begins: reads fail, the circuit is not open yet
    assert broker.is_trading_allowed()
    assert broker.read_breaker.get_broker_health_state().value == "degraded"

    decision = gate.check_entry("C10/USD")

    if refetch:
        assert decision.code == POSITIONS_UNKNOWN
    else:
        assert decision.allowed  # a 6-second-old count, through a failing broker
    assert broker.all_orders() == []


def _times_out() -> None:
    raise TimeoutError("one timeout")


def test_a_blip_is_cleared_by_the_gates_own_refetch(clock, store):
    """One failed read, then the broker answers: the refetch succeeds and the entry goes."""
    broker = account(clock, held=2)
    gate = TradingGate(broker, 8, store=store)
    assert gate.check_entry("C10/USD").allowed
    with pytest.raises(TimeoutError):
        broker.read_breaker.call(_times_out)  # one failed read, counted by the breaker
    assert broker.read_breaker.get_broker_health_state().value == "degraded"
    fetches = [c.method for c in broker.calls].count("fetch_positions")

    assert gate.check_entry("C10/USD").allowed

    assert [c.method for c in broker.calls].count("fetch_positions") == fetches + 1
    assert broker.read_breaker.get_broker_health_state().value == "healthy"


def test_an_unreachable_store_refuses(clock, store):
    """If the store cannot say whether the account is halted, the answer is no."""
    broker = account(clock)

    def broken(*_args):
        raise StoreUnavailableError("database down")

    store.get_halt = broken  # type: ignore[method-assign]
    store.account_state = broken  # type: ignore[method-assign]
    gate = TradingGate(broker, 8, store=store)
    assert gate.check_entry("C10/USD").code == STORE_UNAVAILABLE
    assert gate.trading_state() is TradingState.HALTED


def test_reservations_take_slots_and_rejected_entries_give_them_back(clock, store):
    """A held reservation counts; an entry the broker rejected releases its slot."""
    gate = TradingGate(account(clock, held=7), 8, store=store)
    seen = []

    def rejected_entry() -> None:
        with gate.reserve_entry("C10/USD"):
            seen.append(gate.check_entry("C11/USD").reason)
            raise BrokerRejection("insufficient funds")

    with pytest.raises(BrokerRejection):
        rejected_entry()
    assert seen == ["POSITION_CAP_REACHED: open=7 reserved=1 cap=8"]
    with gate.reserve_entry("C11/USD"):  # C10's slot came back
        pass
    assert gate.check_entry("C12/USD").reason == "POSITION_CAP_REACHED: open=8 reserved=0 cap=8"


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("the bot's own bug after sending"),
        OrderUnconfirmedError("timed out", client_order_id="c-1", deadline=2000.0),
        TransientBrokerError("read timeout"),
    ],
)
def test_an_entry_with_an_unknown_outcome_keeps_its_slot(clock, store, error):
    """Anything but proof that nothing was placed keeps the slot: unknown is not zero."""
    gate = TradingGate(account(clock, held=7), 8, store=store)
    with pytest.raises(type(error)), gate.reserve_entry("C10/USD"):
        raise error
    assert gate.check_entry("C11/USD").code == "POSITION_CAP_REACHED"


def test_a_cancelled_reservation_gives_its_slot_back(clock, store):
    """An entry that did not fill (cancelled) frees the slot."""
    gate = TradingGate(account(clock, held=7), 8, store=store)
    with gate.reserve_entry("C10/USD") as reservation:
        reservation.cancel()
    assert gate.check_entry("C11/USD").allowed


def test_a_denied_reservation_raises_with_the_decision(clock, store):
    """EntryDenied carries the Decision, account and symbol."""
    broker = account(clock, held=8)
    gate = TradingGate(broker, 8, store=store)
    with pytest.raises(EntryDenied) as info, gate.reserve_entry("C10/USD"):
        pytest.fail("the block must not run")
    assert isinstance(info.value.decision, Decision)
    assert info.value.decision.code == POSITION_CAP_REACHED
    assert (info.value.account_id, info.value.symbol) == (broker.account_id, "C10/USD")


def test_a_stale_snapshot_never_frees_a_filled_entrys_slot(clock, store):
    """A snapshot older than the fill (or showing an older state) keeps the slot taken."""
    broker = account(clock, held=7, settle_delay=5.0)
    gate = TradingGate(broker, 8, store=store, max_position_age=1.0)
    with gate.reserve_entry("C10/USD"):
        broker.place_market_order("C10/USD", "buy", 1)
    clock.advance(2.0)  # snapshot stale -> refreshed, but the buy has not settled yet
    assert gate.check_entry("C11/USD").code == POSITION_CAP_REACHED
    broker.set_fault_plan(FaultPlan(stale_positions_rate=1.0, stale_positions_age=60))
    clock.advance(10.0)  # settled now, but every snapshot shows the state of a minute ago
    assert gate.check_entry("C11/USD").code == POSITION_CAP_REACHED
    broker.set_fault_plan(FaultPlan())
    clock.advance(2.0)  # a true snapshot taken after the fill shows C10: it counts from there
    assert gate.check_entry("C11/USD").reason == "POSITION_CAP_REACHED: open=8 reserved=0 cap=8"


def test_trading_state_reports_reducing_when_over_the_cap(clock, store):
    """Over the cap (or unknown): REDUCING; within it: ACTIVE."""
    broker = account(clock, held=9)
    gate = TradingGate(broker, 8, store=store)
    assert gate.trading_state() is TradingState.REDUCING  # no snapshot yet: unknown
    broker.get_positions()
    assert gate.trading_state() is TradingState.REDUCING
    assert TradingGate(account(clock, held=2, name="other"), 8, store=store)


@pytest.mark.parametrize(
    "kwargs", [{"max_positions": -1}, {"max_position_age": 0}, {"pending_entry_ttl": -5}]
)
def test_invalid_settings_are_refused(clock, kwargs):
    """A gate that cannot keep its promise is refused at construction."""
    kwargs.setdefault("max_positions", 8)
    with pytest.raises(ConfigurationError):
        TradingGate(account(clock), **kwargs)


def test_64_threads_racing_for_8_slots_never_exceed_8_positions(clock, store):
    """Intermittent and stale position fetches, delayed fills, 64 racers: at most 8 positions."""
    prices = {f"R{i:02d}/USD": "1" for i in range(64)}
    broker = paper_account(
        clock,
        prices=prices,
        positions={},
        settle_delay=0.5,
        plan=FaultPlan(
            error_rate={"fetch_positions": 0.3},
            stale_positions_rate=0.3,
            stale_positions_age=5.0,
        ),
    )
    broker.read_breaker.failure_threshold = 10**6  # keep the race on, not the breaker
    # The racers move the shared fake clock by up to 0.3 s an attempt, thousands of times a
    # wall second: while one racer's order waits for the store (its sent orders are kept there,
    # on the one connection of the in-memory store), the others would carry the clock past a
    # 10 s order deadline and the venue would refuse the order. The race is about slots.
    broker.order_deadline_s = 3600.0
    gate = TradingGate(broker, 8, store=store, max_position_age=0.2)
    start = threading.Barrier(64)
    outcomes: dict[str, int] = {"entered": 0, "denied": 0}
    lock = threading.Lock()

    def racer(i: int) -> None:
        rng = random.Random(i)
        symbol = f"R{i:02d}/USD"
        start.wait()
        # Stale reads that lack a fresh fill are suspect (POSITIONS_IMPLAUSIBLE) until a full
        # read comes: enough attempts that every slot is still taken under heavy load.
        for _ in range(50):
            clock.advance(rng.choice([0.0, 0.05, 0.3]))
            try:
                with gate.reserve_entry(symbol):
                    broker.place_market_order(symbol, "buy", 1)
            except EntryDenied:
                with lock:
                    outcomes["denied"] += 1
                continue
            with lock:
                outcomes["entered"] += 1
            return

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    clock.advance(10)
    held = broker.true_positions()
    assert len(held) <= 8
    assert outcomes["entered"] == len(held) == 8
    assert outcomes["denied"] > 0
