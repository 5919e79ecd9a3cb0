"""Many threads, one breaker: no lost counts, no extra probes, and no lock held across calls."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from brokerguard import BrokerCircuitBreaker, CircuitOpenError, CircuitState
from brokerguard.testing import FakeClock

THREADS = 8
CALLS = 10_000


@pytest.fixture(autouse=True)
def _switch_threads_often() -> Iterator[None]:
    # Make the interpreter switch threads every microsecond so that a lost update, if the code
    # had one, shows up in these tests instead of once a month in production.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def run_threads(target: Callable[[int], None], n: int = THREADS) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_counts_are_exact_under_eight_threads():
    """8 threads x 10,000 calls (a third failing): every call and failure is counted once."""
    breaker = BrokerCircuitBreaker("kraken", failure_threshold=10**9, clock=FakeClock())

    def ok() -> int:
        return 1

    def bad() -> int:
        raise ConnectionError

    def work(_: int) -> None:
        for i in range(CALLS):
            if i % 3 == 0:
                with pytest.raises(ConnectionError):
                    breaker.call(bad)
            else:
                breaker.call(ok)

    run_threads(work)
    snap = breaker.snapshot()
    failures_per_thread = len(range(0, CALLS, 3))
    assert snap.total_calls == THREADS * CALLS
    assert snap.total_failures == THREADS * failures_per_thread
    assert snap.total_successes == THREADS * (CALLS - failures_per_thread)
    assert snap.circuit_state is CircuitState.CLOSED


def test_rejections_are_exact_under_eight_threads():
    """Every rejection by an open circuit is counted, and none reaches the broker."""
    breaker = BrokerCircuitBreaker("kraken", clock=FakeClock())
    breaker.force_open("test")
    reached = []

    def work(_: int) -> None:
        for _ in range(CALLS):
            with pytest.raises(CircuitOpenError):
                breaker.call(reached.append, 1)

    run_threads(work)
    assert reached == []
    assert breaker.snapshot().total_rejected == THREADS * CALLS


@pytest.mark.parametrize("success_threshold", [1, 2, 3])
def test_half_open_admits_no_extra_probes(success_threshold):
    """32 threads arrive at probe time: exactly success_threshold probes run, the rest fail fast."""
    clock = FakeClock()
    breaker = BrokerCircuitBreaker(
        "kraken", failure_threshold=1, success_threshold=success_threshold, clock=clock
    )
    with pytest.raises(ConnectionError):
        breaker.call(_raise_connection_error)
    clock.advance(60.0)
    n = 32
    lock = threading.Lock()
    release = threading.Event()
    arrived = threading.Condition(lock)
    tally = {"admitted": 0, "rejected": 0, "max_in_flight": 0, "in_flight": 0}

    def probe() -> str:
        with arrived:
            tally["admitted"] += 1
            tally["in_flight"] += 1
            tally["max_in_flight"] = max(tally["max_in_flight"], tally["in_flight"])
            arrived.notify_all()
        release.wait(timeout=10)
        with lock:
            tally["in_flight"] -= 1
        return "ok"

    def work(_: int) -> None:
        try:
            breaker.call(probe)
        except CircuitOpenError:
            with arrived:
                tally["rejected"] += 1
                arrived.notify_all()

    def release_when_all_decided() -> None:
        with arrived:
            arrived.wait_for(lambda: tally["admitted"] + tally["rejected"] == n, timeout=10)
        release.set()

    releaser = threading.Thread(target=release_when_all_decided)
    releaser.start()
    run_threads(work, n)
    releaser.join()
    assert tally["admitted"] == success_threshold
    assert tally["max_in_flight"] == success_threshold
    assert tally["rejected"] == n - success_threshold
    assert breaker.state is CircuitState.CLOSED


def test_no_lock_is_held_across_the_wrapped_call():
    """Eight calls through one closed breaker are all inside the broker at the same time."""
    breaker = BrokerCircuitBreaker("kraken", clock=FakeClock())
    barrier = threading.Barrier(THREADS, timeout=10)

    def meet() -> int:
        # Would raise BrokenBarrierError if the breaker serialised calls.
        return barrier.wait()

    run_threads(lambda _: breaker.call(meet))
    assert breaker.snapshot().total_calls == THREADS


def test_transitions_under_contention_keep_counts_consistent():
    """Mixed outcomes racing through open/half-open/closed: every call is counted exactly once."""
    clock = FakeClock()
    breaker = BrokerCircuitBreaker(
        "kraken", failure_threshold=3, recovery_timeout=0.001, success_threshold=2, clock=clock
    )
    ran = {"ok": 0, "bad": 0}
    rejected = [0]
    lock = threading.Lock()

    def ok() -> None:
        with lock:
            ran["ok"] += 1

    def bad() -> None:
        with lock:
            ran["bad"] += 1
        raise TimeoutError

    def work(seed: int) -> None:
        for i in range(2_000):
            func = bad if (i * 7 + seed) % 5 < 2 else ok
            try:
                breaker.call(func)
            except TimeoutError:
                pass
            except CircuitOpenError:
                with lock:
                    rejected[0] += 1
            if i % 50 == 0:
                clock.advance(0.001)

    run_threads(work)
    snap = breaker.snapshot()
    assert snap.total_successes == ran["ok"]
    assert snap.total_failures == ran["bad"]
    assert snap.total_rejected == rejected[0]
    assert snap.probes_in_flight == 0


def _raise_connection_error() -> None:
    raise ConnectionError
