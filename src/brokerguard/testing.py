"""Test helpers shipped with the package, so users can test their bots the way we test ours.

:class:`FakeClock` is a :class:`~brokerguard.clock.Clock` whose time moves only when told to:
``sleep`` and ``asleep`` return at once after advancing it, so retry loops, recovery windows
and settlement timeouts run in microseconds and always the same way.
"""

from __future__ import annotations

import asyncio
import math
import threading

from brokerguard.errors import ConfigurationError

__all__ = ["FakeClock"]


class FakeClock:
    """A deterministic clock for tests and simulations.

    ``monotonic()`` and ``time()`` both return the current fake time, which starts at `start`
    and moves forward only through :meth:`advance`, :meth:`sleep` or :meth:`asleep`. Every
    sleep is recorded in :attr:`sleeps`, so a test can assert the exact backoff a loop chose.

    Safe to share between threads: time only ever moves forward, under a lock.
    """

    __slots__ = ("_lock", "_now", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        self._now = _check_seconds("start", start, allow_negative=True)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []
        """Every duration passed to sleep/asleep, in order."""

    def monotonic(self) -> float:
        """Return the fake time."""
        return self._now

    def time(self) -> float:
        """Return the fake time, read as epoch seconds."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` and return the new time."""
        seconds = _check_seconds("seconds", seconds)
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """Advance time by `seconds` at once instead of blocking."""
        seconds = _check_seconds("seconds", seconds)
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        """Advance time by `seconds`, then yield once to the event loop like a real sleep."""
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


def _check_seconds(name: str, seconds: float, *, allow_negative: bool = False) -> float:
    seconds = float(seconds)
    if math.isnan(seconds) or math.isinf(seconds) or (seconds < 0 and not allow_negative):
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
    return seconds
