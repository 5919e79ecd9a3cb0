"""Alerts: the right events, at the right level, to the log and to webhooks, secrets unlogged."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from brokerguard.alerts import (
    AlertLevel,
    AlertRouter,
    LogAlertSink,
    WebhookAlertSink,
    alert_for,
    sinks_from_config,
)
from brokerguard.config import AlertConfig
from brokerguard.risk.exits import (
    CapRestored,
    EnforcementUnverified,
    PositionsLiquidated,
    SymbolsUnvaluable,
    TradingHalted,
)
from brokerguard.service import BreakerTransitioned
from brokerguard.testing import FakeClock


@pytest.fixture
def receiver():
    """A webhook receiver on 127.0.0.1 recording every JSON body (or failing on demand)."""
    bodies: list[dict] = []
    state = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(state["status"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook/SECRET-TOKEN-42", bodies, state
    server.shutdown()
    server.server_close()


def test_events_map_to_alerts_of_the_right_level():
    """Halts and missing prices are critical, unknown positions a warning, recovery info."""
    assert alert_for(TradingHalted("a", 1.0, "over cap")).level is AlertLevel.CRITICAL
    assert alert_for(SymbolsUnvaluable("a", 1.0, ("ETH/USD",))).level is AlertLevel.CRITICAL
    assert alert_for(EnforcementUnverified("a", 1.0, "timeout")).level is AlertLevel.WARNING
    assert alert_for(CapRestored("a", 1.0, 8)).level is AlertLevel.INFO
    opened = alert_for(BreakerTransitioned("kraken", 1.0, "read", "closed", "open"))
    assert opened.level is AlertLevel.WARNING
    assert "OFFLINE" in opened.title
    assert alert_for(PositionsLiquidated("a", 1.0, ("X/USD",), ("id",))) is None  # routine
    assert alert_for(BreakerTransitioned("kraken", 1.0, "read", "open", "half_open")) is None


def test_a_webhook_receives_the_alert_as_json(receiver, monkeypatch):
    """The URL comes from the environment; the body says what happened and what is next."""
    url, bodies, _ = receiver
    monkeypatch.setenv("BG_TEST_WEBHOOK", url)
    router = AlertRouter([WebhookAlertSink("BG_TEST_WEBHOOK")], clock=FakeClock())
    router(TradingHalted("acct", 5.0, "still over cap after 3 cycles"))
    [body] = bodies
    assert body["level"] == "critical"
    assert body["kind"] == "trading_halted"
    assert "until an operator resumes" in body["message"]


def test_levels_filter_per_sink_and_repeats_are_dropped(receiver, monkeypatch, caplog):
    """A warning-level webhook skips info; the same alert within a minute is sent once."""
    url, bodies, _ = receiver
    monkeypatch.setenv("BG_TEST_WEBHOOK", url)
    clock = FakeClock()
    router = AlertRouter(
        [WebhookAlertSink("BG_TEST_WEBHOOK", AlertLevel.WARNING), LogAlertSink(AlertLevel.INFO)],
        clock=clock,
    )
    with caplog.at_level(logging.INFO, logger="brokerguard.alerts"):
        router(CapRestored("acct", 1.0, 8))
        router(EnforcementUnverified("acct", 1.0, "timeout"))
        router(EnforcementUnverified("acct", 2.0, "timeout"))
        clock.advance(61)
        router(EnforcementUnverified("acct", 63.0, "timeout"))
    assert [b["kind"] for b in bodies] == ["enforcement_unverified", "enforcement_unverified"]
    assert caplog.text.count("ALERT") == 3  # restored + two unverified


def test_a_failing_webhook_is_logged_without_its_url(receiver, monkeypatch, caplog):
    """A receiver answering 500 (or gone) is an error line naming the variable, never the URL."""
    url, _, state = receiver
    state["status"] = 500
    monkeypatch.setenv("BG_TEST_WEBHOOK", url)
    router = AlertRouter([WebhookAlertSink("BG_TEST_WEBHOOK")], clock=FakeClock())
    with caplog.at_level(logging.ERROR, logger="brokerguard.alerts"):
        router(TradingHalted("acct", 1.0, "x"))
        monkeypatch.setenv("BG_TEST_WEBHOOK", "http://127.0.0.1:1/hook/SECRET-TOKEN-42")
        router(TradingHalted("acct2", 1.0, "y"))
    assert "HTTP 500" in caplog.text
    assert "BG_TEST_WEBHOOK" in caplog.text
    assert "SECRET-TOKEN-42" not in caplog.text
    assert router.delivered == []


def test_sinks_are_built_from_config():
    """Log and webhook sinks with their levels."""
    sinks = sinks_from_config(
        [AlertConfig(kind="log", min_level="info"), AlertConfig(kind="webhook", url_env="HOOK")]
    )
    assert [type(s).__name__ for s in sinks] == ["LogAlertSink", "WebhookAlertSink"]
    assert [s.min_level for s in sinks] == [AlertLevel.INFO, AlertLevel.WARNING]
