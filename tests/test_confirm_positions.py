"""A loss no evidence explains waits for an operator: the service, the CLI and HTTP confirm it.

Positions vanish from a successful read with no sell of ours and nothing in the trade history:
no count of agreeing reads is believed (a glitch can last as long), so new entries stay refused
and status says what it waits for, until an operator who checked the exchange confirms it.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from brokerguard.brokers.paper import FaultPlan, PaperBroker
from brokerguard.brokers.plausibility import POSITIONS_CONFIRMED
from brokerguard.cli import main
from brokerguard.errors import ConfigurationError, PositionsImplausibleError
from brokerguard.risk.gate import POSITIONS_IMPLAUSIBLE, TradingGate
from brokerguard.server import create_app
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.store import open_store
from brokerguard.testing import FakeClock

TOKEN = "test-control-token-0123456789"  # noqa: S105 (a test value)
ACCOUNT = "paper-main"


@pytest.fixture
def service(tmp_path):
    svc = GuardService(embedded_default_config(tmp_path), clock=FakeClock(start=1_795_000_000.0))
    yield svc
    svc.close()


def hold_and_vanish(service: GuardService) -> tuple[PaperBroker, set[str]]:
    """Buy two coins, believe them held, then make every position read answer []."""
    runtime = service.accounts[ACCOUNT]
    broker = runtime.broker
    assert isinstance(broker, PaperBroker)
    for symbol in ("BTC/USD", "ETH/USD"):
        broker.place_market_order(symbol, "buy", "0.01")
    service.clock.advance(5)
    held = {p.symbol for p in broker.get_positions()}
    assert held >= {"BTC/USD", "ETH/USD"}
    broker.set_fault_plan(FaultPlan(empty_positions_rate=1.0))
    return broker, held


def test_an_unexplained_loss_is_refused_for_an_hour_and_status_says_what_it_waits_for(service):
    """An hour of empty reads: still refused, and status names the evidence it waits for."""
    broker, held = hold_and_vanish(service)
    for _ in range(120):
        service.clock.advance(30)
        with pytest.raises(PositionsImplausibleError):
            broker.get_positions()
    gate = service.accounts[ACCOUNT].gate
    assert gate.check_entry("SOL/USD").code == POSITIONS_IMPLAUSIBLE
    suspect = service.status()["accounts"][ACCOUNT]["positions_suspect"]
    assert set(suspect["missing"]) == held
    assert suspect["needed_reads"] is None  # no count of reads will do
    assert "a sell in the trade history" in suspect["waiting_for"]
    assert f"brokerguard confirm-positions {ACCOUNT}" in suspect["waiting_for"]


def test_an_operator_confirmation_through_the_service_is_audited_and_believed(service):
    """Confirmed gone: the next read lacking them is believed, and the record is in the log."""
    broker, held = hold_and_vanish(service)
    with pytest.raises(PositionsImplausibleError):
        broker.get_positions()
    assert service.confirm_positions(ACCOUNT, sorted(held), "alice", "sold on the website") == (
        sorted(held)
    )
    assert broker.get_positions() == []
    assert service.accounts[ACCOUNT].gate.check_entry("SOL/USD").allowed
    record = service.store.audit_log(ACCOUNT, limit=1)[0]
    assert (record.action, record.actor) == (POSITIONS_CONFIRMED, "operator:alice")
    assert record.details == {"symbols": sorted(held)}


def test_confirming_one_symbol_does_not_explain_another(service):
    """Only what the operator named is believed gone; the rest keeps the read suspect."""
    broker, _ = hold_and_vanish(service)
    service.confirm_positions(ACCOUNT, ["btc/usd"], "alice", "sold BTC by hand")
    with pytest.raises(PositionsImplausibleError, match="ETH/USD"):
        broker.get_positions()


def test_a_confirmation_is_forgotten_once_the_position_is_seen_again(service):
    """Confirmed gone, then held again (a glitch after all): a later loss needs new evidence."""
    broker, held = hold_and_vanish(service)
    service.confirm_positions(ACCOUNT, sorted(held), "alice", "checked")
    broker.set_fault_plan(FaultPlan())
    assert {p.symbol for p in broker.get_positions()} == held  # they were there after all
    broker.set_fault_plan(FaultPlan(empty_positions_rate=1.0))
    with pytest.raises(PositionsImplausibleError):
        broker.get_positions()


def test_the_cli_confirmation_reaches_the_running_service_through_the_audit_log(
    service, tmp_path, capsys
):
    """Another process writes the record; the service applies it at its next look."""
    broker, held = hold_and_vanish(service)
    args = [f"--symbol={s}" for s in sorted(held)]
    who = ["--operator", "bob", "--reason", "withdrawn"]
    code = main(["confirm-positions", ACCOUNT, *args, *who, "--data-dir", str(tmp_path), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["confirmed"] == sorted(held)
    with pytest.raises(PositionsImplausibleError):
        broker.get_positions()  # not applied until the service looks at the log
    service.watch_operator_actions()
    assert broker.get_positions() == []


def test_the_cli_refuses_an_unknown_account_and_a_missing_symbol(tmp_path, capsys):
    """Usage errors exit 2 and write nothing."""
    data = ["--data-dir", str(tmp_path), "--operator", "bob", "--reason", "x"]
    assert main(["confirm-positions", "ghost", "--symbol", "BTC/USD", *data]) == 2
    assert main(["confirm-positions", ACCOUNT, *data]) == 2
    capsys.readouterr()


def test_the_http_confirmation_needs_the_control_token(service):
    """401 without the token (nothing recorded), 200 with it, 404 for an unknown account."""
    broker, held = hold_and_vanish(service)
    client = TestClient(create_app(service, control_token=TOKEN))
    body = {"account_id": ACCOUNT, "symbols": sorted(held), "operator": "o", "reason": "r"}
    assert client.post("/positions/confirm", json=body).status_code == 401
    assert not [r for r in service.store.audit_log() if r.action == POSITIONS_CONFIRMED]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    unknown = client.post("/positions/confirm", json={**body, "account_id": "ghost"}, headers=auth)
    assert unknown.status_code == 404
    assert (
        client.post("/positions/confirm", json={**body, "symbols": []}, headers=auth).status_code
        == 422
    )
    answer = client.post("/positions/confirm", json=body, headers=auth)
    assert (answer.status_code, answer.json()["confirmed"]) == (200, sorted(held))
    assert broker.get_positions() == []


def test_the_service_refuses_an_empty_confirmation(service):
    """Confirming nothing (or a malformed symbol) is a mistake, not a blanket pass."""
    for symbols in ([], ["a b"]):
        with pytest.raises(ConfigurationError):
            service.confirm_positions(ACCOUNT, symbols, "alice", "?")


def test_a_restart_during_an_empty_read_glitch_frees_no_slot(tmp_path):
    """The holdings believed before a restart are the baseline after it.

    A first read that lacks them is suspect, not the truth (before: believed, and the cap gave
    slots away).
    """
    clock = FakeClock(start=1_795_000_000.0)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    coins = {f"C{i}/USD": "10" for i in range(6)}
    held = dict.fromkeys(list(coins)[:3], "1")

    def run(plan: FaultPlan) -> TradingGate:
        broker = PaperBroker(
            "restart", clock=clock, prices=coins, positions=held, fault_plan=plan, settle_delay=0
        )
        return TradingGate(broker, 3, store=open_store(url, clock=clock))

    first = run(FaultPlan())
    assert first.check_entry("C5/USD").code == "POSITION_CAP_REACHED"
    clock.advance(60)
    second = run(FaultPlan(empty_positions_rate=1.0))  # restarted while reads answer []
    assert second.check_entry("C5/USD").code == POSITIONS_IMPLAUSIBLE
