"""A token bucket shared by every account on one broker, so a pass stays within its limits.

Exchanges count calls per API key or per IP, not per account: ten accounts enforced in one
pass must not send ten times the calls the exchange allows. :class:`RateLimiter` hands out
``rate`` calls per second with bursts of ``burst``; a caller over the budget *reserves* its
slot and sleeps (on the injected clock) until it comes, so concurrent callers queue fairly and
the rate holds however many threads ask.

A call may weigh more than one token (``acquire(weight)``): venues price endpoints differently
(Kraken's trade history costs 2 on its REST counter, ccxt gives each endpoint a ``cost``). A
fleet of processes on one API key shares one bucket in Redis instead:
:class:`brokerguard.coordination.SharedRateLimiter` (same constructor, same ``acquire``).
"""

from __future__ import annotations

import math
import threading

from brokerguard._validation import int_problem, seconds_problem
from brokerguard.clock import SYSTEM_CLOCK, Clock
from brokerguard.errors import ConfigurationError

__all__ = ["RateLimiter", "check_weight"]


class RateLimiter:
    """At most ``burst`` calls at once and ``rate`` calls per second on average."""

    def __init__(self, rate: float, burst: int = 1, *, clock: Clock | None = None) -> None:
        problems = [
            *seconds_problem("rate", rate, allow_zero=False),
            *int_problem("burst", burst, minimum=1),
        ]
        if problems:
            raise ConfigurationError("invalid RateLimiter: " + "; ".join(problems))
        self.rate = float(rate)
        self.burst = burst
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = self.clock.monotonic()
        self.waited = 0.0
        """Seconds callers spent waiting, in total (for the status)."""

    def acquire(self, weight: float = 1.0) -> float:
        """Take a call's `weight` in tokens, sleeping until it is due; return the seconds waited.

        A weight above ``burst`` could never fit in the bucket: it is a configuration error.
        """
        wait = self._reserve(weight)
        if wait > 0:
            self.clock.sleep(wait)
        return wait

    async def aacquire(self, weight: float = 1.0) -> float:
        """Async twin of :meth:`acquire`: the wait is ``clock.asleep`` (no thread blocked).

        Sync and async callers share one bucket: a slot reserved by either is kept.
        """
        wait = self._reserve(weight)
        if wait > 0:
            await self.clock.asleep(wait)
        return wait

    def _reserve(self, weight: float) -> float:
        """Take `weight` tokens now (going negative reserves a later slot); return the wait."""
        check_weight(weight, self.burst)
        with self._lock:
            now = self.clock.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= weight  # may go negative: a reservation for a later slot
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            self.waited += wait
        return wait


def check_weight(weight: float, burst: int) -> None:
    """Refuse a weight that is not a finite number in (0, burst]: it could never be served."""
    number: object = weight  # typed float, but callers may pass anything
    ok = (
        isinstance(number, int | float)
        and not isinstance(number, bool)
        and math.isfinite(number)
        and 0 < number <= burst
    )
    if not ok:
        raise ConfigurationError(
            f"a call's rate-limit weight must be a number in (0, burst={burst}], got {weight!r}"
        )
