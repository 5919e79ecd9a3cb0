"""The alert router's memory is bounded over a long run, and still suppresses repeats."""

from __future__ import annotations

from brokerguard.alerts import RECENT_ALERTS, Alert, AlertLevel, AlertRouter
from brokerguard.risk.exits import TradingHalted
from brokerguard.testing import FakeClock


class Keep:
    """A sink that accepts every alert and counts them."""

    min_level = AlertLevel.INFO

    def __init__(self) -> None:
        self.sent = 0

    def send(self, alert: Alert) -> None:
        self.sent += 1


def test_a_day_of_distinct_alerts_keeps_only_the_recent_ones_in_memory():
    """Alerts whose text carries ids (one key each) are forgotten once they cannot repeat."""
    clock = FakeClock(start=1000.0)
    sink = Keep()
    router = AlertRouter([sink], clock=clock, repeat_after=60.0, background=False)

    for n in range(24 * 360):  # one distinct alert every 10 s for a day
        router(TradingHalted("acct", clock.time(), f"order o-{n} unresolved"))
        clock.advance(10.0)

    assert sink.sent == 24 * 360
    assert len(router._last) <= 2 * 60 // 10 + 1  # at most two repeat windows of keys
    assert len(router.delivered) == RECENT_ALERTS
    assert router.delivered[-1].message.startswith("order o-8639")


def test_a_repeat_within_the_window_is_still_suppressed_after_sweeps():
    """Sweeping old keys never lets an alert repeat sooner than repeat_after."""
    clock = FakeClock(start=1000.0)
    sink = Keep()
    router = AlertRouter([sink], clock=clock, repeat_after=60.0, background=False)

    for _ in range(100):  # the same alert every 50 s: each is 50 s after the last *sent* one
        router(TradingHalted("acct", clock.time(), "same"))
        clock.advance(50.0)

    # Sent at 0, then suppressed at 50, sent at 100 (100 >= 60 after the last routing at 0)...
    # every second one is suppressed, sweeps or not.
    assert sink.sent == 50
