"""Test helpers shipped with the package, so users can test their bots the way we test ours.

:class:`FakeClock` is a :class:`~brokerguard.clock.Clock` whose time moves only when told to:
``sleep`` returns at once after advancing it and ``asleep`` as soon as the time reaches its
wake-up (the earliest sleeping task moves it), so retry loops, recovery windows, settlement
timeouts and many tasks waiting on a rate limiter run in microseconds and always the same way.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
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

    __slots__ = ("_asleep", "_lock", "_now", "_order", "_registered", "_sleepers", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        self._now = _check_seconds("start", start, allow_negative=True)
        self._lock = threading.Lock()
        # event loop id -> (wake-up time, order) of its async sleeps
        self._sleepers: dict[int, list[tuple[float, int]]] = {}
        self._asleep: set[tuple[float, int]] = set()  # those still asleep
        self._order = itertools.count()
        self._registered = 0  # async sleeps begun, ever
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
        """Suspend the task until the fake time has moved `seconds` on; the earliest moves it.

        Sleeping tasks wake in the order of their wake-up times, as on a real clock: each one
        yields to the loop until either the time has reached its wake-up (another task or a
        thread moved it) or it is the earliest sleeper of its event loop, which then moves the
        time to its own wake-up once the loop has settled. Ten tasks that each sleep one
        second therefore all wake one second later (not ten), and a rate limiter's staggered
        slots land at their own times. A task waiting on real I/O (a socket) is not asleep on
        the clock: meanwhile the earliest sleeper moves the time on, so a timeout raced
        against the clock (a read made ahead's ``read_timeout_s``) fires before the answer
        arrives; with real network I/O under a fake clock, give such timeouts room.
        """
        seconds = _check_seconds("seconds", seconds)
        # Each event loop orders its own sleepers: a loop whose thread is blocked (a sync
        # call made from async code) must not hold back the time of the others.
        loop = id(asyncio.get_running_loop())
        with self._lock:
            self.sleeps.append(seconds)
            wake = (self._now + seconds, next(self._order))
            sleepers = self._sleepers.setdefault(loop, [])
            heapq.heappush(sleepers, wake)
            self._asleep.add(wake)
            self._registered += 1
        quiet = 0  # loop turns in a row this sleeper was earliest and nobody fell asleep
        registered = -1
        try:
            while True:
                await asyncio.sleep(0)  # let every ready task run (and fall asleep) first
                with self._lock:
                    if self._now >= wake[0]:
                        return
                    while sleepers[0] not in self._asleep:
                        heapq.heappop(sleepers)  # woke (or was cancelled) already
                    if sleepers[0] != wake or self._registered != registered:
                        quiet, registered = 0, self._registered
                        continue
                    quiet += 1
                    # A task just woken may start others (wait_for, gather) that fall asleep
                    # only a few loop turns later: time moves once the loop has settled.
                    if quiet >= _SETTLE_TURNS:
                        self._now = wake[0]
                        return
        finally:
            with self._lock:
                self._asleep.discard(wake)
                if not any(w in self._asleep for w in sleepers):
                    self._sleepers.pop(loop, None)  # the loop's sleepers are all awake

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


_SETTLE_TURNS = 4
"""Loop turns the earliest async sleeper waits, with nobody else falling asleep, before it moves
the time: a woken task's new tasks (``wait_for``, ``gather``) start a turn or two later."""


def _check_seconds(name: str, seconds: float, *, allow_negative: bool = False) -> float:
    seconds = float(seconds)
    if math.isnan(seconds) or math.isinf(seconds) or (seconds < 0 and not allow_negative):
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
    return seconds
