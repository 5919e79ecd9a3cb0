"""The clock is injected everywhere; FakeClock must behave like time that never waits."""

import asyncio
import math
import threading

import pytest

from brokerguard import Clock, ConfigurationError, SystemClock
from brokerguard.testing import FakeClock


def test_fake_clock_starts_where_told_and_moves_only_when_told():
    """Reading the fake clock never moves it; advance and sleep do, by exactly the amount."""
    clock = FakeClock(start=5.0)
    assert clock.monotonic() == clock.time() == 5.0
    assert clock.monotonic() == 5.0
    assert clock.advance(2.5) == 7.5
    clock.sleep(0.5)
    assert clock.monotonic() == 8.0
    assert clock.sleeps == [0.5]


def test_fake_clock_asleep_advances_and_yields():
    """`asleep` advances time instantly and lets other tasks run like a real sleep."""
    clock = FakeClock()
    order: list[str] = []

    async def sleeper() -> None:
        await clock.asleep(3.0)
        order.append("sleeper")

    async def other() -> None:
        order.append("other")

    async def main() -> None:
        await asyncio.gather(sleeper(), other())

    asyncio.run(main())
    assert clock.monotonic() == 3.0
    assert order == ["other", "sleeper"]


def test_concurrent_async_sleepers_wake_at_their_own_times_not_the_sum():
    """Ten tasks sleeping 1 s together wake 1 s later; staggered sleeps wake in their order."""
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.asleep(seconds)
        woke.append((name, clock.monotonic()))

    async def together() -> None:
        await asyncio.gather(*(sleeper(f"t{i}", 1.0) for i in range(10)))

    asyncio.run(together())
    assert clock.monotonic() == 1.0
    assert {t for _, t in woke} == {1.0}

    woke.clear()

    async def staggered() -> None:
        await asyncio.gather(sleeper("late", 0.8), sleeper("early", 0.2), sleeper("mid", 0.4))

    asyncio.run(staggered())
    assert woke == [("early", 1.2), ("mid", 1.4), ("late", 1.8)]
    assert clock.monotonic() == 1.8


def test_a_cancelled_async_sleeper_does_not_hold_the_time_back():
    """A sleeper cancelled before its wake-up leaves the queue: the next one still wakes."""
    clock = FakeClock()

    async def main() -> float:
        early = asyncio.ensure_future(clock.asleep(1.0))
        await asyncio.sleep(0)
        early.cancel()
        await clock.asleep(5.0)
        return clock.monotonic()

    assert asyncio.run(main()) == 5.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_fake_clock_refuses_to_go_backwards_or_nowhere(bad):
    """Negative, NaN or infinite durations are bugs and raise instead of corrupting time."""
    clock = FakeClock()
    with pytest.raises(ConfigurationError):
        clock.advance(bad)
    with pytest.raises(ConfigurationError):
        clock.sleep(bad)
    assert clock.monotonic() == 0.0


def test_fake_clock_loses_no_advance_under_threads():
    """Concurrent sleeps from many threads all land: time is the exact sum."""
    clock = FakeClock()

    def work() -> None:
        for _ in range(1000):
            clock.sleep(0.25)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.monotonic() == 8 * 1000 * 0.25
    assert len(clock.sleeps) == 8000


def test_both_clocks_satisfy_the_protocol():
    """SystemClock and FakeClock are both Clocks."""
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)


def test_system_clock_is_real_time():
    """SystemClock reads the real clocks: monotonic never goes back, time is an epoch."""
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.monotonic() >= first
    assert clock.time() > 1_700_000_000  # after November 2023
    clock.sleep(0)
    asyncio.run(clock.asleep(0))
