"""call_with_circuit_breaker: bounded retries of transient failures, on the clock, never blind."""

from __future__ import annotations

import asyncio
import random

import pytest

from brokerguard import (
    BackoffPolicy,
    BrokerCircuitBreaker,
    BrokerRejection,
    CircuitOpenError,
    CircuitState,
    FatalBrokerError,
    Outcome,
    RateLimitedError,
    RetryPolicy,
    TransientBrokerError,
)
from brokerguard.testing import FakeClock

from .helpers import Scripted


def make(clock: FakeClock, **kwargs) -> BrokerCircuitBreaker:
    kwargs.setdefault("failure_threshold", 10)
    kwargs.setdefault("backoff", BackoffPolicy(jitter=0))
    return BrokerCircuitBreaker("kraken", clock=clock, **kwargs)


def test_a_transient_failure_is_retried_after_the_backoff_delay(clock):
    """After the k-th failed transient attempt the loop sleeps backoff.delay(k) on the clock."""
    breaker = make(clock)
    func = Scripted([TimeoutError(), ConnectionError(), "filled"])
    assert breaker.call_with_circuit_breaker(func) == "filled"
    assert func.calls == 3
    assert clock.sleeps == [2.0, 4.0]


def test_the_last_error_is_raised_when_attempts_run_out(clock):
    """max_attempts attempts are made, then the last error propagates."""
    breaker = make(clock, max_attempts=3)
    errors = [TransientBrokerError(f"503 #{i}") for i in range(5)]
    func = Scripted(errors)
    with pytest.raises(TransientBrokerError) as info:
        breaker.call_with_circuit_breaker(func)
    assert info.value is errors[2]
    assert func.calls == 3
    assert clock.sleeps == [2.0, 4.0]


def test_jittered_sleeps_come_from_the_injected_rng(clock):
    """The sleeps are exactly what the policy computes from the breaker's seeded RNG."""
    breaker = BrokerCircuitBreaker("kraken", clock=clock, rng=random.Random(3))
    with pytest.raises(TransientBrokerError):
        breaker.call_with_circuit_breaker(Scripted([TransientBrokerError("x")] * 3))
    expected_rng = random.Random(3)
    policy = BackoffPolicy()
    assert clock.sleeps == [policy.delay(1, expected_rng), policy.delay(2, expected_rng)]
    assert 2.0 <= clock.sleeps[0] <= 2.6


@pytest.mark.parametrize(
    "error",
    [BrokerRejection("insufficient funds"), FatalBrokerError("bad key"), ValueError("garbled")],
)
def test_non_transient_errors_are_not_retried(clock, error):
    """Rejections, fatal errors and bugs are raised at once: retrying cannot help."""
    breaker = make(clock)
    func = Scripted([error, "ok"])
    with pytest.raises(type(error)):
        breaker.call_with_circuit_breaker(func)
    assert func.calls == 1
    assert clock.sleeps == []


def test_retries_stop_at_once_when_the_circuit_opens(clock):
    """A failure that opens the circuit ends the loop: no sleep, no further attempt."""
    breaker = make(clock, failure_threshold=2, max_attempts=5)
    func = Scripted([TimeoutError("a"), TimeoutError("b"), "ok"])
    with pytest.raises(TimeoutError, match="b"):
        breaker.call_with_circuit_breaker(func)
    assert func.calls == 2
    assert clock.sleeps == [2.0]
    assert breaker.state is CircuitState.OPEN


def test_an_open_circuit_rejects_before_the_first_attempt(clock):
    """With the circuit open, the retrying call is rejected without calling the broker."""
    breaker = make(clock)
    breaker.force_open("test")
    func = Scripted(["ok"])
    with pytest.raises(CircuitOpenError):
        breaker.call_with_circuit_breaker(func)
    assert func.calls == 0
    assert clock.sleeps == []


def test_retry_after_from_the_broker_is_obeyed(clock):
    """A rate-limit hint lengthens the sleep, even past the backoff cap."""
    breaker = make(clock, max_total_delay=120.0)
    func = Scripted([RateLimitedError("EAPI:Rate limit exceeded", retry_after=45.0), "ok"])
    assert breaker.call_with_circuit_breaker(func) == "ok"
    assert clock.sleeps == [45.0]


def test_no_sleep_starts_that_would_end_past_the_budget(clock):
    """The retry budget: when the next sleep would overrun max_total_delay, give up instead."""
    breaker = make(clock, max_attempts=10, max_total_delay=10.0)
    func = Scripted([TimeoutError()] * 10)
    with pytest.raises(TimeoutError):
        breaker.call_with_circuit_breaker(func)
    assert clock.sleeps == [2.0, 4.0]  # 2+4=6; 6+8=14 > 10
    assert func.calls == 3


def test_a_hint_beyond_the_budget_gives_up_immediately(clock):
    """'Wait 90 s' with a 60 s budget: raise now rather than sleep past the budget."""
    breaker = make(clock)
    func = Scripted([RateLimitedError("slow", retry_after=90.0), "ok"])
    with pytest.raises(RateLimitedError):
        breaker.call_with_circuit_breaker(func)
    assert func.calls == 1
    assert clock.sleeps == []


def test_retries_in_half_open_go_through_the_probe_gate(clock):
    """When the first attempt is a probe, its failure reopens the circuit and ends the loop."""
    breaker = make(clock, failure_threshold=1)
    with pytest.raises(TimeoutError):
        breaker.call(Scripted([TimeoutError()]))
    clock.advance(60.0)
    func = Scripted([TimeoutError(), "ok"])
    with pytest.raises(TimeoutError):
        breaker.call_with_circuit_breaker(func)
    assert func.calls == 1
    assert breaker.state is CircuitState.OPEN


def test_retrying_counts_every_attempt(clock):
    """Each attempt is a call in the status; the retry success clears the streak."""
    breaker = make(clock)
    breaker.call_with_circuit_breaker(Scripted([TimeoutError(), "ok"]))
    status = breaker.get_status()
    assert status["total_calls"] == 2
    assert status["total_failures"] == 1
    assert status["failure_count"] == 0


def test_async_retries_sleep_on_the_clock(clock):
    """The async shell retries with clock.asleep and the same schedule."""
    breaker = make(clock)
    attempts = []

    async def flaky() -> str:
        attempts.append(clock.monotonic())
        if len(attempts) < 3:
            raise TransientBrokerError("503")
        return "ok"

    assert asyncio.run(breaker.acall_with_circuit_breaker(flaky)) == "ok"
    assert clock.sleeps == [2.0, 4.0]
    assert attempts == [1000.0, 1002.0, 1006.0]


def test_async_retries_raise_the_last_error(clock):
    """The async shell gives up like the sync one."""
    breaker = make(clock, max_attempts=2)

    async def down() -> None:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        asyncio.run(breaker.acall_with_circuit_breaker(down))
    assert clock.sleeps == [2.0]


# --------------------------------------------------------------------------- the pure policy


def test_policy_gives_up_on_anything_but_transient():
    """Only TRANSIENT outcomes earn another attempt."""
    policy = RetryPolicy()
    for outcome in (Outcome.IGNORED, Outcome.FAILURE, Outcome.FATAL):
        assert policy.next_delay(1, outcome, RuntimeError()) is None
    assert policy.next_delay(1, Outcome.TRANSIENT, RuntimeError(), rng=random.Random(0)) is not None


def test_policy_respects_attempts_and_budget_built_by_hand():
    """The decision depends only on its inputs: attempts made and time already slept."""
    policy = RetryPolicy(max_attempts=4, max_total_delay=20.0, backoff=BackoffPolicy(jitter=0))
    error = TimeoutError()
    assert policy.next_delay(1, Outcome.TRANSIENT, error) == 2.0
    assert policy.next_delay(3, Outcome.TRANSIENT, error, slept=6.0) == 8.0
    assert policy.next_delay(3, Outcome.TRANSIENT, error, slept=13.0) is None
    assert policy.next_delay(4, Outcome.TRANSIENT, error) is None
