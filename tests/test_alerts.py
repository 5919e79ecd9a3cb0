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
    AppriseAlertSink,
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
    TradingResumed,
)
from brokerguard.service import BreakerTransitioned
from brokerguard.testing import FakeClock


@pytest.fixture
def receiver():
    """A webhook receiver on 127.0.0.1 recording every JSON body; `statuses` scripts answers."""
    bodies: list[dict] = []
    state: dict = {"status": 200, "statuses": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status = state["statuses"].pop(0) if state["statuses"] else state["status"]
            self.send_response(status)
            self.send_header("Content-Length", "0")
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
    assert router.flush()
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
        background=False,
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
    sink = WebhookAlertSink("BG_TEST_WEBHOOK", clock=FakeClock())
    router = AlertRouter([sink], clock=FakeClock(), background=False)
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


def test_the_webhook_retries_a_failed_post_a_bounded_number_of_times(receiver, monkeypatch):
    """Two 503s then a 200: delivered on the third POST, after backoff sleeps on its clock."""
    url, bodies, state = receiver
    state["statuses"] = [503, 503]
    monkeypatch.setenv("BG_TEST_WEBHOOK", url)
    clock = FakeClock()
    sink = WebhookAlertSink("BG_TEST_WEBHOOK", clock=clock, attempts=3)
    AlertRouter([sink], clock=FakeClock(), background=False)(TradingHalted("a", 1.0, "x"))
    assert len(bodies) == 3
    assert clock.sleeps == [0.5, 1.0]
    state["statuses"] = [500, 500, 500]
    with pytest.raises(RuntimeError, match="HTTP 500"):
        sink.send(alert_for(TradingHalted("b", 1.0, "y")))
    assert len(bodies) == 6  # exactly three more attempts, then it gave up


def test_apprise_urls_deliver_through_apprise(receiver, monkeypatch):
    """An apprise json:// URL (any apprise scheme works the same) receives the alert."""
    url, bodies, _ = receiver
    monkeypatch.setenv("BG_TEST_APPRISE", url.replace("http://", "json://"))
    router = AlertRouter([AppriseAlertSink("BG_TEST_APPRISE")], clock=FakeClock(), background=False)
    router(SymbolsUnvaluable("acct", 1.0, ("ETH/USD",)))
    [body] = bodies
    assert body["title"] == "no valid price on acct"
    assert "ETH/USD" in body["message"]
    assert router.delivered[0].kind == "symbols_unvaluable"


def test_a_slow_sink_never_blocks_the_caller():
    """Delivery is on a background thread: routing returns at once; flush waits for it."""
    release = threading.Event()

    class Slow:
        min_level = AlertLevel.INFO

        def send(self, alert):
            release.wait(5)

    router = AlertRouter([Slow()], clock=FakeClock())
    started = threading.Event()

    def route():
        router(TradingHalted("acct", 1.0, "x"))
        started.set()

    worker = threading.Thread(target=route)
    worker.start()
    assert started.wait(2)  # returned while the sink is still blocked
    assert router.delivered == []
    release.set()
    assert router.flush()
    assert len(router.delivered) == 1
    router.close()


def test_an_operators_resume_is_announced(tmp_path):
    """Resuming through the service raises a TradingResumed alert naming the operator."""
    from brokerguard.service import GuardService, embedded_default_config  # noqa: PLC0415

    service = GuardService(embedded_default_config(tmp_path), clock=FakeClock(start=1e9))
    service.halt("paper-main", "drill", "bob")
    service.resume("paper-main", "alice", "checked")
    assert service.alerts.flush()
    kinds = [a.kind for a in service.alerts.delivered]
    assert kinds == ["trading_halted", "trading_resumed"]
    assert "alice" in service.alerts.delivered[1].message
    assert isinstance(service.recent_events()[0], TradingResumed)
    # A halt written by another process (the CLI) is announced on the next pass, once.
    service.store.halt("paper-small", "from the cli", "operator:carol")
    service.tick()
    service.tick()
    assert service.alerts.flush()
    assert [a.kind for a in service.alerts.delivered] == [
        "trading_halted",
        "trading_resumed",
        "trading_halted",
    ]
    assert "carol" in service.alerts.delivered[2].message
    service.close()
