"""The continuous exit enforcer: every account, every interval, events out, failures isolated."""

from __future__ import annotations

import threading
import time

import pytest

from brokerguard import ConfigurationError
from brokerguard.alerts import AlertLevel, alert_for
from brokerguard.brokers import FaultPlan
from brokerguard.risk import (
    CapRestored,
    CapViolationDetected,
    ContinuousExitEnforcer,
    EnforcementCrashed,
    EnforcementUnverified,
    OrdersUnresolved,
    PositionCapEnforcer,
    PositionsImplausible,
    PositionsLiquidated,
    SymbolsRevalued,
    SymbolsUnvaluable,
    TradingHalted,
)
from brokerguard.store import open_store
from brokerguard.testing import FakeClock

from .worlds import coins, paper_account


@pytest.fixture
def store(clock):
    return open_store("sqlite://", clock=clock)


def enforcer_for(clock, store, name: str, held: int, **broker_kwargs) -> PositionCapEnforcer:
    prices = coins(20)
    broker = paper_account(
        clock,
        prices=prices,
        positions=dict.fromkeys(list(prices)[:held], "1"),
        name=name,
        **broker_kwargs,
    )
    return PositionCapEnforcer(broker, 8, store=store)


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def test_a_pass_enforces_every_account_and_announces_what_happened(clock, store):
    """Over-cap accounts are liquidated and announced; compliant ones stay quiet."""
    over = enforcer_for(clock, store, "over", held=10)
    fine = enforcer_for(clock, store, "fine", held=3)
    loop = ContinuousExitEnforcer([over, fine], interval=5)
    events = []
    loop.add_listener(events.append)
    results = loop.tick()
    assert {k: r["status"] for k, r in results.items()} == {
        "over:master": "compliant",
        "fine:master": "compliant",
    }
    assert kinds(events) == ["CapViolationDetected", "PositionsLiquidated", "CapRestored"]
    violation, liquidated, restored = events
    assert isinstance(violation, CapViolationDetected)
    assert (violation.account_id, violation.position_count) == ("over:master", 10)
    assert isinstance(liquidated, PositionsLiquidated)
    assert liquidated.symbols == ("C01/USD", "C02/USD")
    assert isinstance(restored, CapRestored)
    assert restored.position_count == 8
    assert loop.last_results["fine:master"]["position_count"] == 3


def test_a_halt_and_unvaluable_symbols_are_announced(clock, store):
    """Unsettled sells end in TradingHalted; a NaN price in SymbolsUnvaluable, then Revalued."""
    halted = enforcer_for(clock, store, "stuck", held=10, plan=FaultPlan(unsettled_sells=True))
    nan = enforcer_for(clock, store, "nan", held=2, plan=FaultPlan(bad_prices={"C01/USD": "NaN"}))
    loop = ContinuousExitEnforcer([halted, nan])
    events = []
    loop.add_listener(events.append)
    loop.tick()
    assert any(isinstance(e, TradingHalted) and e.account_id == "stuck:master" for e in events)
    [unvaluable] = [e for e in events if isinstance(e, SymbolsUnvaluable)]
    assert (unvaluable.account_id, unvaluable.symbols) == ("nan:master", ("C01/USD",))
    events.clear()
    loop.tick()
    assert not any(isinstance(e, SymbolsUnvaluable) for e in events)  # announced once
    nan.broker.set_fault_plan(FaultPlan())
    loop.tick()
    assert any(isinstance(e, SymbolsRevalued) and e.symbols == ("C01/USD",) for e in events)


def test_one_broken_account_never_stops_the_others(clock, store):
    """A crashing and an unverifiable account; the healthy one is still enforced."""
    broken = enforcer_for(clock, store, "broken", held=10)
    broken.enforce_cap = lambda: 1 / 0  # type: ignore[assignment,method-assign]
    blind = enforcer_for(
        clock, store, "blind", held=10, plan=FaultPlan(error_rate={"fetch_positions": 1.0})
    )
    healthy = enforcer_for(clock, store, "healthy", held=10)
    loop = ContinuousExitEnforcer([broken, blind, healthy])
    events = []
    loop.add_listener(events.append)
    results = loop.tick()
    assert results["broken:master"]["status"] == "error"
    assert results["blind:master"]["status"] == "unverified"
    assert results["healthy:master"]["status"] == "compliant"
    assert any(isinstance(e, EnforcementCrashed) for e in events)
    assert any(isinstance(e, EnforcementUnverified) for e in events)
    assert len(healthy.broker.true_positions()) == 8


def test_a_failing_listener_does_not_stop_enforcement(clock, store):
    """A broken alert sink is logged; the other listeners still hear everything."""
    loop = ContinuousExitEnforcer(enforcer_for(clock, store, "over", held=10))
    heard = []

    def broken(_event):
        raise RuntimeError("webhook down")

    loop.add_listener(broken)
    loop.add_listener(heard.append)
    loop.tick()
    assert len(heard) == 3


def test_run_ticks_on_the_interval_of_the_clock(clock, store):
    """Passes start every `interval` seconds of (fake) time."""
    loop = ContinuousExitEnforcer(enforcer_for(clock, store, "a", held=2), interval=10)
    starts = []
    loop.add_listener(lambda e: None)
    original = loop.tick

    def counted():
        starts.append(clock.monotonic())
        return original()

    loop.tick = counted  # type: ignore[method-assign]
    loop.run(max_ticks=4)
    assert [round(s - starts[0], 6) for s in starts] == [0, 10, 20, 30]


def test_stop_finishes_the_current_step_and_ends_the_loop(store):
    """start() runs in the background on the real clock; stop() ends it promptly."""
    clock = FakeClock()
    enforcer = enforcer_for(clock, store, "a", held=2)
    loop = ContinuousExitEnforcer(enforcer, interval=3600, clock=_RealSleepClock())
    loop.start()
    deadline = time.monotonic() + 10  # wall-clock-ok: bounding a real thread in a test
    while loop.ticks == 0 and time.monotonic() < deadline:  # wall-clock-ok
        time.sleep(0.01)
    loop.stop(timeout=5)
    assert loop.ticks == 1
    assert not any(t.name == "brokerguard-exits" for t in threading.enumerate())
    with pytest.raises(ConfigurationError):
        ContinuousExitEnforcer([enforcer, enforcer])


def test_invalid_settings_are_refused(clock, store):
    """No accounts, or a zero interval, is refused."""
    with pytest.raises(ConfigurationError):
        ContinuousExitEnforcer([])
    with pytest.raises(ConfigurationError):
        ContinuousExitEnforcer(enforcer_for(clock, store, "a", held=1), interval=0)


class _RealSleepClock(FakeClock):
    """Fake time, but sleeping yields for real so a background loop can be stopped."""

    def sleep(self, seconds: float) -> None:
        time.sleep(0.001)  # wall-clock-ok: let the test thread run
        super().sleep(seconds)


def test_accounts_can_be_enforced_concurrently(clock, store):
    """With max_concurrency, passes run accounts in parallel and report every result."""
    enforcers = [enforcer_for(clock, store, f"acct{i}", held=10) for i in range(6)]
    loop = ContinuousExitEnforcer(enforcers, max_concurrency=3)
    events = []
    loop.add_listener(events.append)
    results = loop.tick()
    assert {r["status"] for r in results.values()} == {"compliant"}
    assert sum(isinstance(e, PositionsLiquidated) for e in events) == 6
    with pytest.raises(ConfigurationError):
        ContinuousExitEnforcer(enforcers, max_concurrency=0)


def test_a_broker_can_be_given_directly(clock, store):
    """ContinuousExitEnforcer(broker, max_positions=..., store=...) builds the enforcer itself."""
    prices = coins(12)
    broker = paper_account(
        clock, prices=prices, positions=dict.fromkeys(prices, "1"), name="direct"
    )
    loop = ContinuousExitEnforcer(broker, max_positions=8, store=store, interval=5)
    assert loop.tick()["direct:master"]["status"] == "compliant"
    assert len(broker.true_positions()) == 8


def test_orders_with_unknown_outcomes_are_announced_once(clock, store):
    """A liquidation whose send fails is unresolved: announced once, as a critical alert."""
    enforcer = enforcer_for(
        clock, store, "doubt", held=9, plan=FaultPlan(error_rate={"submit_order": 1.0})
    )
    loop = ContinuousExitEnforcer(enforcer, interval=5)
    events = []
    loop.add_listener(events.append)
    first = loop.tick()["doubt:master"]
    loop.tick()
    announced = [e for e in events if isinstance(e, OrdersUnresolved)]

    assert first["status"] == "unverified"
    assert first["trading_halted"] is False
    assert len(announced) == 1
    assert announced[0].client_order_ids == tuple(first["unresolved"])
    alert = alert_for(announced[0])
    assert alert is not None
    assert alert.level is AlertLevel.CRITICAL
    assert alert.kind == "orders_unresolved"


def test_a_position_read_that_lost_positions_is_announced_once(clock, store):
    """Positions vanish with no sell: one PositionsImplausible event, a critical alert."""
    enforcer = enforcer_for(clock, store, "thin", held=3)
    loop = ContinuousExitEnforcer(enforcer, interval=5)
    events = []
    loop.add_listener(events.append)
    loop.tick()
    broker = enforcer.broker
    broker.set_fault_plan(FaultPlan(error_rate={}))
    with broker._lock:
        broker._positions.clear()  # gone, as an empty but successful read would say
        broker._answered = None  # (the emulator's answer, kept while its holdings are unchanged)
    loop.tick()
    loop.tick()
    announced = [e for e in events if isinstance(e, PositionsImplausible)]

    assert len(announced) == 1
    assert announced[0].missing == ("C01/USD", "C02/USD", "C03/USD")
    alert = alert_for(announced[0])
    assert alert is not None
    assert alert.kind == "positions_implausible"
    assert loop.last_results["thin:master"]["status"] == "unverified"
