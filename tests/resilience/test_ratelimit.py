"""The shared rate limiter: never more than `burst` + `rate` x seconds calls, however asked."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerguard import ConfigurationError
from brokerguard.resilience import RateLimiter
from brokerguard.testing import FakeClock


def test_a_burst_goes_at_once_then_calls_are_spaced():
    """Burst 3 at 2/s: three calls now, then one every half second."""
    clock = FakeClock()
    limiter = RateLimiter(2, burst=3, clock=clock)
    times = []
    for _ in range(7):
        limiter.acquire()
        times.append(clock.monotonic())
    assert times == [0, 0, 0, 0.5, 1.0, 1.5, 2.0]
    assert limiter.waited == pytest.approx(2.0)


def test_idle_time_refills_up_to_the_burst_only():
    """Ten idle seconds refill at most `burst` tokens."""
    clock = FakeClock()
    limiter = RateLimiter(1, burst=2, clock=clock)
    limiter.acquire()
    limiter.acquire()
    clock.advance(10)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, 1.0]


@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    burst=st.integers(1, 6),
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.05, 0.3, 2.0]), min_size=1, max_size=60),
)
def test_no_window_ever_holds_more_than_burst_plus_rate(rate, burst, gaps):
    """Whatever the arrival pattern, any window of w seconds holds <= burst + rate*w calls."""
    clock = FakeClock()
    limiter = RateLimiter(rate, burst=burst, clock=clock)
    times = []
    for gap in gaps:
        clock.advance(gap)
        limiter.acquire()
        times.append(clock.monotonic())
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - start
            assert j - i + 1 <= burst + rate * window + 1e-9


def test_threads_share_one_budget():
    """8 threads x 20 calls at 10/s with burst 4: the whole lot takes >= (160 - 4) / 10 s."""
    clock = FakeClock()
    limiter = RateLimiter(10, burst=4, clock=clock)

    def work() -> None:
        for _ in range(20):
            limiter.acquire()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.monotonic() >= (160 - 4) / 10 - 1e-9


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": -1}, {"rate": 1, "burst": 0}])
def test_invalid_limits_are_refused(kwargs):
    """A limiter that cannot let anything through is a configuration error."""
    with pytest.raises(ConfigurationError):
        RateLimiter(**kwargs)
