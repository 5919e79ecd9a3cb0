"""A fleet's reservation asks Redis once, and decides exactly as the long way would.

In a fleet the gate's breakers and slots live in Redis. A reservation used to ask five times
(trading allowed for the read and the write circuit, the read circuit's health, the slot, its
release). :class:`SharedSlots` now checks both circuits and takes the slot in one script; the
end of the entry (filled or released) is the second and last round trip.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokerguard import CircuitState
from brokerguard.brokers import PaperBroker
from brokerguard.coordination import RedisCoordinator, SharedCircuitBreaker, SharedSlots
from brokerguard.risk import EntryDenied, TradingGate
from brokerguard.risk.gate import (
    ALLOWED,
    BROKER_OFFLINE,
    COORDINATION_UNAVAILABLE,
    POSITION_CAP_REACHED,
)
from brokerguard.testing import FakeClock
from tests.conftest import REDIS_URL
from tests.risk.worlds import coins

from .proxy import TcpProxy

PRICES = coins(40)


@pytest.fixture
def connect(redis_namespace: str) -> Iterator[Callable[[], RedisCoordinator]]:
    """Open a process's view of the fleet (its own connections), closed after the test."""
    opened: list[RedisCoordinator] = []

    def open_one() -> RedisCoordinator:
        opened.append(RedisCoordinator(REDIS_URL, namespace=redis_namespace))
        return opened[-1]

    yield open_one
    for coordinator in opened:
        coordinator.close()


class RoundTrips:
    """Count the round trips a Redis client makes (commands, scripts, pipelines)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        command = client.execute_command
        pipeline = client.pipeline

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return command(*args, **kwargs)

        def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            def counted_execute(*a: Any, **k: Any) -> Any:
                self.count += 1
                return execute(*a, **k)

            pipe.execute = counted_execute
            return pipe

        client.execute_command = counted  # the instance's own attribute shadows the method
        client.pipeline = counted_pipeline


def breakers(
    clock: FakeClock, coordinator: RedisCoordinator, name: str
) -> tuple[SharedCircuitBreaker, SharedCircuitBreaker]:
    settings = {"failure_threshold": 3, "recovery_timeout": 30.0, "success_threshold": 1}
    return (
        SharedCircuitBreaker(name, scope="read", clock=clock, coordinator=coordinator, **settings),
        SharedCircuitBreaker(name, scope="write", clock=clock, coordinator=coordinator, **settings),
    )


def fleet_gate(
    clock: FakeClock,
    coordinator: RedisCoordinator,
    *,
    name: str = "paper",
    slots: RedisCoordinator | None = None,
    cap: int = 4,
    refetch_when_degraded: bool = True,
    account_id: str = "paper-acct",
) -> TradingGate:
    """A fleet's gate: shared circuits and slots; positions and orders fetched just now."""
    read, write = breakers(clock, coordinator, name)
    broker = PaperBroker(
        name,
        account_id=account_id,
        clock=clock,
        prices=PRICES,
        positions={"C01/USD": "1"},
        settle_delay=0,
        volatility=0,
        read_breaker=read,
        write_breaker=write,
    )
    gate = TradingGate(
        broker,
        cap,
        clock=clock,
        slots=SharedSlots(slots or coordinator),
        refetch_when_degraded=refetch_when_degraded,
    )
    broker.get_open_orders()
    broker.get_positions()
    return gate


def entered(gate: TradingGate, symbol: str) -> None:
    """Reserve `symbol` and let the entry end as cancelled (the slot is given back)."""
    with gate.reserve_entry(symbol) as reservation:
        reservation.cancel()


def code_of(action: Callable[[], object]) -> str:
    try:
        action()
    except EntryDenied as denied:
        return denied.decision.code
    return ALLOWED


def test_a_fleet_reservation_is_one_round_trip_and_its_end_one_more(clock, connect):
    """Circuits checked and slot taken in one script; filled (or released) is the second trip."""
    coordinator = connect()
    gate = fleet_gate(clock, coordinator)
    entered(gate, "C02/USD")  # scripts loaded once, as in any long-running process
    others = SharedSlots(connect())
    trips = RoundTrips(coordinator.client)

    with gate.reserve_entry("C03/USD"):
        during = trips.count
        assert others.occupied(gate.account_id) == ["C03/USD"]  # taken fleet-wide

    assert during == 1
    assert trips.count == 2
    assert others.occupied(gate.account_id) == ["C03/USD"]  # filled: kept until a snapshot


def test_a_cancelled_fleet_reservation_gives_its_slot_back_in_the_second_trip(clock, connect):
    """The release of a cancelled entry is the second round trip, and the slot is free again."""
    coordinator = connect()
    gate = fleet_gate(clock, coordinator)
    entered(gate, "C02/USD")
    trips = RoundTrips(coordinator.client)

    entered(gate, "C03/USD")

    assert trips.count == 2
    assert SharedSlots(coordinator).occupied(gate.account_id) == []


def test_a_fleet_check_is_one_round_trip(clock, connect):
    """check_entry reads the circuits and the fleet's reservations in one script."""
    coordinator = connect()
    gate = fleet_gate(clock, coordinator, cap=2)
    assert gate.check_entry("C02/USD").allowed  # scripts loaded
    theirs = SharedSlots(connect())
    trips = RoundTrips(coordinator.client)

    assert gate.check_entry("C02/USD").allowed
    assert trips.count == 1
    assert theirs.reserve(gate.account_id, "C03/USD", 2, ["C01/USD"]) is not None
    decision = gate.check_entry("C02/USD")  # the other process took the last slot

    assert decision.code == POSITION_CAP_REACHED
    assert trips.count == 2


def test_a_circuit_opened_by_another_process_refuses_and_takes_no_slot(clock, connect):
    """Another process forces the write circuit open: BROKER_OFFLINE, and no slot is held."""
    coordinator = connect()
    gate = fleet_gate(clock, coordinator)
    entered(gate, "C02/USD")
    _, theirs = breakers(clock, connect(), "paper")
    theirs.force_open("operator")

    with pytest.raises(EntryDenied) as denied:
        entered(gate, "C03/USD")

    assert denied.value.decision.code == BROKER_OFFLINE
    assert gate.broker.write_breaker.state is CircuitState.OPEN  # the mirror learnt it
    assert SharedSlots(coordinator).occupied(gate.account_id) == []


def test_a_circuit_closed_by_another_process_is_learnt_in_the_one_trip(clock, connect):
    """The mirror said open; the script read it closed: allowed, and the listeners are told."""
    coordinator = connect()
    gate = fleet_gate(clock, coordinator)
    entered(gate, "C02/USD")
    _, theirs = breakers(clock, connect(), "paper")
    theirs.force_open("operator")
    assert code_of(lambda: entered(gate, "C03/USD")) == BROKER_OFFLINE
    seen = []
    gate.broker.write_breaker.add_listener(lambda *event: seen.append(event))
    theirs.force_closed()
    trips = RoundTrips(coordinator.client)

    assert code_of(lambda: entered(gate, "C03/USD")) == ALLOWED
    assert trips.count == 2  # learnt in the reservation's own script
    assert gate.broker.write_breaker.state is CircuitState.CLOSED
    assert [event[1:3] for event in seen] == [(CircuitState.OPEN, CircuitState.CLOSED)]


def test_a_fleet_at_its_cap_refuses_in_the_one_trip(clock, connect):
    """Another process holds the last slot: POSITION_CAP_REACHED from the single script."""
    coordinator = connect()
    gate = fleet_gate(clock, coordinator, cap=2)
    entered(gate, "C02/USD")
    theirs = SharedSlots(connect())
    assert theirs.reserve(gate.account_id, "C05/USD", 2, ["C01/USD"]) is not None
    trips = RoundTrips(coordinator.client)

    with pytest.raises(EntryDenied) as denied:
        entered(gate, "C03/USD")

    assert denied.value.decision.code == POSITION_CAP_REACHED
    assert denied.value.decision.details["fleet"] == "yes"
    assert trips.count == 1


def test_a_degraded_shared_read_circuit_makes_the_gate_fetch_positions_afresh(clock, connect):
    """A read failure anywhere in the fleet: the cached snapshot is not trusted, as before."""
    coordinator = connect()
    gate = fleet_gate(clock, coordinator)
    entered(gate, "C02/USD")
    cached = gate.broker.last_position_snapshot()
    assert cached is not None
    clock.advance(1.0)
    entered(gate, "C03/USD")
    assert gate.broker.last_position_snapshot() is cached  # healthy: the cache is used
    theirs, _ = breakers(clock, connect(), "paper")
    with pytest.raises(TimeoutError):
        theirs.call(_timeout)

    entered(gate, "C04/USD")

    fresh = gate.broker.last_position_snapshot()
    assert fresh is not None
    assert fresh.fetched_at == clock.monotonic()  # fetched for this entry


def _timeout() -> None:
    raise TimeoutError("exchange timed out")


def test_redis_unreachable_refuses_with_coordination_unavailable(clock, redis_namespace):
    """The one script cannot be run: COORDINATION_UNAVAILABLE, as when the circuits were read."""
    host, port = REDIS_URL.removeprefix("redis://").split("/")[0].split(":")
    proxy = TcpProxy((host, int(port)))
    proxy.restore()
    coordinator = RedisCoordinator(
        f"redis://127.0.0.1:{proxy.port}/0", namespace=redis_namespace, timeout=0.3
    )
    try:
        gate = fleet_gate(clock, coordinator)
        entered(gate, "C02/USD")
        proxy.cut()

        assert code_of(lambda: entered(gate, "C03/USD")) == COORDINATION_UNAVAILABLE
        assert gate.check_entry("C03/USD").code == COORDINATION_UNAVAILABLE
    finally:
        proxy.cut()
        coordinator.close()


# The fleet's circuit as another process may have left it: (state, failures, probe due?).
CIRCUITS = st.one_of(
    st.just(None),  # never written: closed
    st.tuples(st.just("closed"), st.integers(0, 2), st.just(value=False)),
    st.tuples(st.sampled_from(["open", "forced", "half_open"]), st.integers(0, 5), st.booleans()),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    read=CIRCUITS,
    write=CIRCUITS,
    refetch=st.booleans(),
    held_elsewhere=st.integers(0, 3),
    reserve=st.booleans(),
)
def test_one_trip_decides_as_the_circuit_reads_did(  # noqa: PLR0917 (hypothesis fills them)
    redis_namespace, read, write, refetch, held_elsewhere, reserve
):
    """Whatever state the fleet left the circuits in, one trip and the long way agree.

    The decision (reserve_entry or check_entry), whether positions were fetched afresh, and
    what each breaker's mirror learnt.
    """
    clock = FakeClock(start=1000.0)
    name = f"paper-{uuid.uuid4().hex[:8]}"
    coordinator = RedisCoordinator(REDIS_URL, namespace=redis_namespace)
    client = coordinator.client

    def arrange() -> None:
        for scope, circuit in (("read", read), ("write", write)):
            key = coordinator.key("breaker", name, scope)
            client.delete(key)
            if circuit is not None:
                state, failures, due = circuit
                (now_s, now_us) = client.time()
                now_ms = int(now_s) * 1000 + int(now_us) // 1000
                client.hset(
                    key,
                    mapping={
                        "state": state,
                        "failures": failures,
                        "open_until": now_ms + (-1000 if due else 60_000),
                        "rt": 30_000,
                        "probes": 0,
                        "gen": 7,
                    },
                )
        slots = coordinator.key("slots", "paper-acct")
        client.delete(slots)
        for n in range(held_elsewhere):
            SharedSlots(coordinator).reserve("paper-acct", f"C0{5 + n}/USD", 9, [])

    def decide(gate: TradingGate) -> tuple[object, ...]:
        arrange()
        if reserve:
            code = code_of(lambda: entered(gate, "C02/USD"))
        else:
            code = gate.check_entry("C02/USD").code
        snapshot = gate.broker.last_position_snapshot()
        refetched = snapshot is not None and snapshot.fetched_at == clock.monotonic()
        mirrors = [
            (b.state, b.snapshot().consecutive_failures, b.snapshot().recovery_timeout_seconds)
            for b in (gate.broker.read_breaker, gate.broker.write_breaker)
        ]
        return code, refetched, *mirrors

    one_trip = fleet_gate(clock, coordinator, name=name, refetch_when_degraded=refetch)
    elsewhere = RedisCoordinator(REDIS_URL, namespace=redis_namespace)
    long_way = fleet_gate(
        clock,
        coordinator,
        name=name,
        slots=elsewhere,  # another client: the circuits cannot be read in the slots' script
        refetch_when_degraded=refetch,
    )
    clock.advance(1.0)  # the cached snapshots are 1 s old: fresh, unless a circuit says not

    try:
        assert decide(one_trip) == decide(long_way)
    finally:
        coordinator.close()
        elsewhere.close()


def test_two_gates_racing_through_the_one_trip_never_exceed_the_cap(clock, connect):
    """32 threads through two gates of one account (shared circuits): exactly 8 entries."""
    coordinator = connect()
    first = fleet_gate(clock, coordinator, cap=8)
    broker = first.broker
    second = TradingGate(broker, 8, clock=clock, slots=SharedSlots(coordinator))
    symbols = [s for s in PRICES if s != "C01/USD"]
    start = threading.Barrier(32)

    def enter(n: int) -> None:
        gate = (first, second)[n % 2]
        start.wait()
        with contextlib.suppress(EntryDenied), gate.reserve_entry(symbols[n]):
            time.sleep(0.01)  # wall-clock-ok: the order is in flight while others race
            broker.place_market_order(symbols[n], "buy", 1, client_order_id=f"e{n}")

    threads = [threading.Thread(target=enter, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(broker.true_positions()) == 8  # C01 held, and 7 of the 32 entries
