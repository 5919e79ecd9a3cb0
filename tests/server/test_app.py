"""The HTTP surface: health, readiness, status, metrics, the page, and guarded control."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from brokerguard.server import create_app
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.testing import FakeClock

TOKEN = "test-control-token-0123456789"  # noqa: S105 (a test value)


@pytest.fixture
def service(tmp_path):
    svc = GuardService(embedded_default_config(tmp_path), clock=FakeClock(start=1_795_000_000.0))
    yield svc
    svc.close()


@pytest.fixture
def client(service):
    return TestClient(create_app(service, control_token=TOKEN))


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_healthz_is_alive(client):
    """Liveness only says the process answers."""
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_503_while_a_broker_is_offline(client, service):
    """Readiness fails (503) with the reason while a circuit is open."""
    assert client.get("/readyz").status_code == 200
    service.breakers["paper"]["write"].force_open("drill")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "reasons": ["broker paper offline (write circuit open)"],
    }


def test_status_has_every_breaker_and_account(client, service):
    """The JSON status holds the breakers' reports and each account's last enforcement."""
    service.tick()
    status = client.get("/status").json()
    read = status["brokers"]["paper"]["breakers"]["read"]
    assert {"broker", "circuit_state", "failure_rate", "next_probe_in_seconds"} <= set(read)
    assert status["accounts"]["paper-main"]["last_enforcement"]["status"] == "compliant"


def test_metrics_expose_breakers_accounts_and_gate_codes(client, service):
    """Prometheus text with breaker states, caps, and refusal codes as labels."""
    service.breakers["paper"]["read"].force_open("drill")
    service.accounts["paper-main"].gate.check_entry("BTC/USD")
    body = client.get("/metrics").text
    assert 'brokerguard_circuit_state{broker="paper",scope="read",state="open"} 1.0' in body
    assert 'brokerguard_position_cap{account="paper-main"} 8.0' in body
    assert 'brokerguard_broker_calls_total{broker="paper",outcome="rejected",scope="read"}' in body
    assert (
        'brokerguard_gate_decisions_total{account="paper-main",code="BROKER_OFFLINE"} 1.0' in body
    )
    assert 'brokerguard_events_total{account="paper",kind="BreakerTransitioned"} 1.0' in body
    assert "brokerguard_ready 0.0" in body


def test_control_is_disabled_without_a_configured_token(service):
    """No token configured: 403, never open."""
    client = TestClient(create_app(service, control_token=None))
    body = {"account_id": "paper-main", "reason": "x", "operator": "alice"}
    assert client.post("/halt", json=body, headers=bearer("anything")).status_code == 403
    assert not service.store.is_halted("paper-main")


def test_control_needs_the_right_bearer_token(client, service):
    """401 without a token or with a wrong one; 200 with it, and the halt is real."""
    body = {"account_id": "paper-main", "reason": "runaway bot", "operator": "alice"}
    assert client.post("/halt", json=body).status_code == 401
    assert client.post("/halt", json=body, headers=bearer("wrong")).status_code == 401
    assert client.post("/halt", json=body, headers={"Authorization": TOKEN}).status_code == 401
    response = client.post("/halt", json=body, headers=bearer())
    assert (response.status_code, response.json()) == (
        200,
        {"account_id": "paper-main", "halted": True},
    )
    assert service.store.get_halt("paper-main").source == "operator:alice"


def test_resume_needs_operator_and_reason_and_is_audited(client, service):
    """Empty operator or reason is refused (422); a proper resume lifts the halt."""
    service.halt("paper-main", "drill", "bob")
    for bad in ({"operator": "", "reason": "ok"}, {"operator": "alice", "reason": "  "}):
        response = client.post(
            "/resume", json={"account_id": "paper-main", **bad}, headers=bearer()
        )
        assert response.status_code == 422
    response = client.post(
        "/resume",
        json={"account_id": "paper-main", "operator": "alice", "reason": "checked"},
        headers=bearer(),
    )
    assert response.json() == {"account_id": "paper-main", "resumed": True}
    assert service.store.audit_log("paper-main")[0].actor == "alice"


def test_unknown_accounts_are_404(client):
    """Control of an account that is not configured is a 404."""
    body = {"account_id": "ghost", "reason": "x", "operator": "alice"}
    assert client.post("/halt", json=body, headers=bearer()).status_code == 404


def test_the_page_shows_health_colours_halts_and_a_resume_form(client, service):
    """An open breaker shows red, a halt shows its reason and a resume form."""
    service.breakers["paper"]["read"].force_open("drill")
    service.halt("paper-small", "over cap <b>bold</b>", "bob")
    html = client.get("/").text
    assert "offline" in html
    assert "#cf222e" in html
    assert "data-halt='paper-small'" in html
    assert "over cap &lt;b&gt;bold&lt;/b&gt;" in html  # escaped, never injected
    assert "data-resume='paper-small'" in html


def test_no_secret_ever_reaches_a_response(client, service):
    """The control token appears in no status, page or metrics output."""
    service.halt("paper-main", "drill", "bob")
    for path in ("/status", "/", "/metrics", "/readyz", "/openapi.json"):
        assert TOKEN not in client.get(path).text, path
