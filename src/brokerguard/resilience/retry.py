"""The retry loop: one pure policy, a sync shell and an async shell.

:meth:`RetryPolicy.next_delay` decides, from the facts of one failure, whether to try again and
after how long; it does no I/O and never sleeps. The two shells below only run the attempts,
ask the policy, and sleep on the injected clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from brokerguard.clock import Clock
from brokerguard.errors import ConfigurationError, TransientBrokerError
from brokerguard.resilience.backoff import BackoffPolicy
from brokerguard.resilience.classify import Classifier, Outcome

__all__ = ["RetryPolicy", "acall_with_retries", "call_with_retries"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try a failed call again.

    Args:
        max_attempts: attempts in all, the first included.
        max_total_delay: the budget in seconds for all backoff sleeps of one call; a sleep that
            would end past it is not started and the last error is raised instead.
        backoff: the delay schedule.
    """

    max_attempts: int = 3
    max_total_delay: float = 60.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            problems.append(f"max_attempts must be an int, got {self.max_attempts!r}")
        elif self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts!r}")
        if not (math.isfinite(self.max_total_delay) and self.max_total_delay >= 0):
            problems.append(
                f"max_total_delay must be finite and >= 0, got {self.max_total_delay!r}"
            )
        if problems:
            raise ConfigurationError("invalid retry settings: " + "; ".join(problems))

    def next_delay(
        self,
        attempt: int,
        outcome: Outcome,
        error: BaseException,
        *,
        slept: float = 0.0,
        previous: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Return the seconds to wait before attempt ``attempt + 1``, or None to give up.

        Args:
            attempt: how many attempts have been made (1-based).
            outcome: how the last error was classified; only TRANSIENT is retried.
            error: the last error; its ``retry_after`` (if a transient broker error) is obeyed.
            slept: seconds already spent sleeping for this call.
            previous: the previous delay (for decorrelated jitter).
            rng: the source of jitter.
        """
        if outcome is not Outcome.TRANSIENT or attempt >= self.max_attempts:
            return None
        hint = error.retry_after if isinstance(error, TransientBrokerError) else None
        delay = self.backoff.delay(attempt, rng, retry_after=hint, previous=previous)
        if slept + delay > self.max_total_delay:
            return None
        return delay


def call_with_retries(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    classify: Classifier,
    clock: Clock,
    rng: random.Random | None,
    stop: Callable[[], bool],
    first_error: Exception | None = None,
) -> T:
    """Run `attempt` until it succeeds or `policy` gives up; raise the last error then.

    `stop` is asked after every failure (a circuit that opened ends the loop at once).
    `first_error` says the first attempt was already made, and failed with it.
    """
    made, slept, previous = 1, 0.0, None
    error = first_error
    while True:
        if error is None:
            try:
                return attempt()
            except Exception as exc:  # noqa: BLE001 (classified just below; re-raised on give-up)
                error = exc
        delay = (
            None
            if stop()
            else policy.next_delay(
                made, classify(error), error, slept=slept, previous=previous, rng=rng
            )
        )
        if delay is None:
            raise error
        clock.sleep(delay)
        made, slept, previous, error = made + 1, slept + delay, delay, None


async def acall_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    classify: Classifier,
    clock: Clock,
    rng: random.Random | None,
    stop: Callable[[], bool],
    first_error: Exception | None = None,
) -> T:
    """Async twin of :func:`call_with_retries`; sleeps with ``clock.asleep``.

    `first_error` lets the breaker make the first attempt inline (no coroutine for this loop
    and no closure on a success) and enter here only after it failed.
    """
    made, slept, previous = 1, 0.0, None
    error = first_error
    while True:
        if error is None:
            try:
                return await attempt()
            except Exception as exc:  # noqa: BLE001 (classified just below; re-raised on give-up)
                error = exc
        delay = (
            None
            if stop()
            else policy.next_delay(
                made, classify(error), error, slept=slept, previous=previous, rng=rng
            )
        )
        if delay is None:
            raise error
        await clock.asleep(delay)
        made, slept, previous, error = made + 1, slept + delay, delay, None
