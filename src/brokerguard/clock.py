"""Time, injected.

Every component that waits, times out or stamps an event asks a `Clock` instead of the
`time` module, so that tests (and the simulator) can run hours of trading in milliseconds
with :class:`brokerguard.testing.FakeClock`, and so that no decision ever depends on when the
test machine happened to be scheduled.
"""

from __future__ import annotations

import asyncio
import time as _time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """The four things brokerguard needs from time.

    `monotonic` measures intervals (timeouts, recovery windows); `time` is epoch seconds, used
    only to stamp records for humans; `sleep`/`asleep` wait.
    """

    def monotonic(self) -> float:
        """Return seconds from an arbitrary origin that never goes backwards."""
        ...

    def time(self) -> float:
        """Return the wall-clock time in epoch seconds."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for `seconds`."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds`."""
        ...


class SystemClock:
    """The real clock.

    The methods are the C functions themselves (not Python wrappers) because a breaker reads
    the clock on every call it records: one Python frame less per call is measurable.
    """

    __slots__ = ()

    monotonic = staticmethod(_time.monotonic)
    time = staticmethod(_time.time)
    sleep = staticmethod(_time.sleep)

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` on the running event loop."""
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
"""The process-wide real clock, used when a component is given no clock."""
