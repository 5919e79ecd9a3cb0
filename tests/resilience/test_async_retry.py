"""acall_with_circuit_breaker: the async retry path decides exactly like the sync one."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerguard import (
    BackoffPolicy,
    BrokerCircuitBreaker,
    BrokerRejection,
    CircuitOpenError,
    CircuitState,
    FatalBrokerError,
    RateLimitedError,
    RetryPolicy,
    TransientBrokerError,
)
from brokerguard.resilience.classify import default_classifier
from brokerguard.resilience.retry import acall_with_retries
from brokerguard.testing import FakeClock

from .helpers import Scripted


def make(clock: FakeClock, **kwargs: object) -> BrokerCircuitBreaker:
    kwargs.setdefault("failure_threshold", 10)
    kwargs.setdefault("backoff", BackoffPolicy(jitter=0))
    return BrokerCircuitBreaker("kraken", clock=clock, **kwargs)  # type: ignore[arg-type]


class AsyncScripted(Scripted):
    """The async form of :class:`Scripted`: the same script, awaited."""

    async def run(self) -> object:
        return self()


def test_async_retrying_counts_every_attempt_once(clock):
    """A failed first attempt and a successful retry are two calls, one failure, no streak."""
    breaker = make(clock)
    scripted = AsyncScripted([TimeoutError(), "ok"])

    assert asyncio.run(breaker.acall_with_circuit_breaker(scripted.run)) == "ok"

    status = breaker.get_status()
    assert scripted.calls == 2
    assert (status["total_calls"], status["total_failures"], status["failure_count"]) == (2, 1, 0)


def test_a_given_first_error_is_not_attempted_again_before_the_backoff(clock):
    """`first_error` means the first attempt was made: the loop sleeps, then makes attempt 2."""
    scripted = AsyncScripted(["second"])

    result = asyncio.run(
        acall_with_retries(
            scripted.run,
            RetryPolicy(backoff=BackoffPolicy(jitter=0)),
            classify=default_classifier,
            clock=clock,
            rng=None,
            stop=lambda: False,
            first_error=TimeoutError(),
        )
    )

    assert result == "second"
    assert scripted.calls == 1
    assert clock.sleeps == [2.0]


def test_a_non_transient_first_error_is_raised_without_another_attempt(clock):
    """A fatal first error ends the loop at once, as the very same exception object."""
    error = FatalBrokerError("bad key")
    scripted = AsyncScripted([])

    with pytest.raises(FatalBrokerError) as raised:
        asyncio.run(
            acall_with_retries(
                scripted.run,
                RetryPolicy(),
                classify=default_classifier,
                clock=clock,
                rng=None,
                stop=lambda: False,
                first_error=error,
            )
        )

    assert raised.value is error
    assert scripted.calls == 0
    assert clock.sleeps == []


def test_a_cancelled_first_attempt_is_neither_retried_nor_counted(clock):
    """Cancellation is not an outcome: it propagates, and the breaker's counts do not move."""
    breaker = make(clock)
    calls = []

    async def hang() -> str:
        calls.append(1)
        await asyncio.sleep(3600)
        return "never"

    async def main() -> None:
        task = asyncio.create_task(breaker.acall_with_circuit_breaker(hang))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert calls == [1]
    assert breaker.get_status()["total_calls"] == 0
    assert clock.sleeps == []


def test_retries_through_an_open_circuit_wait_for_the_probe_time(clock):
    """An open circuit rejects the async retry path before any attempt reaches the broker."""
    breaker = make(clock, failure_threshold=1, max_attempts=1)
    scripted = AsyncScripted([TimeoutError()])
    with pytest.raises(TimeoutError):
        asyncio.run(breaker.acall_with_circuit_breaker(scripted.run))
    assert breaker.state is CircuitState.OPEN

    with pytest.raises(CircuitOpenError):
        asyncio.run(breaker.acall_with_circuit_breaker(scripted.run))
    assert scripted.calls == 1


STEPS = st.sampled_from(
    [
        "ok",
        TimeoutError,
        ConnectionError,
        TransientBrokerError,
        RateLimitedError,
        FatalBrokerError,
        BrokerRejection,
        ValueError,
    ]
)


def _instantiate(step: object) -> object:
    if isinstance(step, type):
        if step is RateLimitedError:
            return RateLimitedError("slow down", retry_after=1.5)
        return step("scripted")
    return step


@settings(max_examples=150, deadline=None)
@given(
    script=st.lists(STEPS, min_size=1, max_size=8),
    calls=st.integers(min_value=1, max_value=4),
    threshold=st.integers(min_value=1, max_value=4),
    attempts=st.integers(min_value=1, max_value=4),
)
def test_the_async_retry_path_matches_the_sync_one(script, calls, threshold, attempts):
    """For any script of outcomes, both shells make the same attempts, sleeps and status."""

    def run(use_async: bool) -> tuple[object, ...]:
        clock = FakeClock(start=1000.0)
        breaker = BrokerCircuitBreaker(
            "kraken",
            failure_threshold=threshold,
            max_attempts=attempts,
            recovery_timeout=1.0,
            clock=clock,
            rng=random.Random(7),
        )
        scripted = AsyncScripted([_instantiate(step) for step in script])
        results: list[str] = []
        for _ in range(calls):
            try:
                if use_async:
                    value = asyncio.run(breaker.acall_with_circuit_breaker(scripted.run))
                else:
                    value = breaker.call_with_circuit_breaker(scripted)
                results.append(repr(value))
            except Exception as exc:
                results.append(type(exc).__name__)
        snap = breaker.snapshot()
        return (
            results,
            scripted.calls,
            clock.sleeps,
            snap.circuit_state,
            snap.consecutive_failures,
            snap.total_calls,
            snap.total_failures,
            snap.total_rejected,
        )

    assert run(use_async=True) == run(use_async=False)
