"""The guard service supervising a freqtrade bot through its REST API (a stand-in here).

The proof against a live, unmodified freqtrade is tests/integrations/test_freqtrade_proof.py.

A halt is the bot's lock on every pair and is lifted on resume; an excess is exited through the
bot first for the trades it knows, the enforcer selling the rest (and, after the grace, what
the bot did not exit); positions the bot does not know are reported.
"""

from __future__ import annotations

import base64

import pytest

from brokerguard.config import parse_config
from brokerguard.integrations.freqtrade import FreqtradeSupervisor
from brokerguard.service import GuardService
from brokerguard.testing import FakeClock

from .fakes import FakeFreqtradeAPI

ACCOUNT = "ft-1"
URL = "http://127.0.0.1:8081"
PRICES = {f"C{i}/USD": str(i) for i in range(1, 7)}


def service_with_bot(tmp_path, monkeypatch, *, held: int, cap: int, trades: list[str]):
    monkeypatch.setenv("FREQTRADE__API_SERVER__USERNAME", "ft")
    monkeypatch.setenv("FREQTRADE__API_SERVER__PASSWORD", "secret-pass")
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
            "brokers": {"paper": {"kind": "paper", "settle_delay_s": 0, "prices": PRICES}},
            "accounts": [
                {
                    "id": ACCOUNT,
                    "broker": "paper",
                    "max_positions": cap,
                    "settle_timeout_s": 0.0,
                    "positions": {f"C{i}/USD": "1" for i in range(1, held + 1)},
                    "supervise": {"url": URL, "exit_grace_s": 60.0},
                }
            ],
        }
    )
    service = GuardService(config, clock=FakeClock(start=1_795_000_000.0))
    auth = "Basic " + base64.b64encode(b"ft:secret-pass").decode()
    bot = FakeFreqtradeAPI(
        authorization=auth,
        trades=[
            {"trade_id": n, "pair": pair, "amount": 1.0, "is_open": True, "has_open_orders": False}
            for n, pair in enumerate(trades, start=1)
        ],
    )
    runtime = service.accounts[ACCOUNT]
    assert isinstance(runtime.supervisor, FreqtradeSupervisor)  # built from the config
    runtime.supervisor = FreqtradeSupervisor(
        URL,
        username="ft",
        password="secret-pass",  # noqa: S106 (a test value)
        transport=bot,
    )
    return service, bot


def test_a_halt_locks_the_bot_on_every_pair_and_resume_lifts_it(tmp_path, monkeypatch):
    """The lock is freqtrade's own (pair '*', in its database); it follows the halt."""
    service, bot = service_with_bot(tmp_path, monkeypatch, held=1, cap=3, trades=["C1/USD"])
    service.tick()
    assert [lock for lock in bot.locks if lock["active"]] == []
    service.halt(ACCOUNT, "operator says stop", "alice")
    service.tick()
    active = [lock for lock in bot.locks if lock["active"]]
    assert [(lock["pair"], lock["reason"].startswith("brokerguard: ")) for lock in active] == [
        ("*", True)
    ]
    service.tick()  # idempotent: no second lock
    assert len([lock for lock in bot.locks if lock["active"]]) == 1
    service.resume(ACCOUNT, "alice", "checked")
    service.tick()
    assert [lock for lock in bot.locks if lock["active"]] == []
    assert service.status()["accounts"][ACCOUNT]["supervision"]["locked"] is False
    service.close()


def test_an_excess_is_exited_through_the_bot_first_then_by_the_enforcer(tmp_path, monkeypatch):
    """Cap 2, 4 held, the bot knows C1: C1 goes through forceexit, C2 is sold by the enforcer.

    C1 is sold by the enforcer only after the grace, because the bot never exited it.
    """
    service, bot = service_with_bot(
        tmp_path, monkeypatch, held=4, cap=2, trades=["C1/USD", "C4/USD"]
    )
    broker = service.accounts[ACCOUNT].broker
    broker.get_positions()
    service.tick()
    assert bot.exited == ["1"]  # C1's trade, the smallest position
    sold = [o.symbol for o in broker.all_orders() if o.side.value == "sell"]
    assert sold == ["C2/USD"]
    records = [r for r in service.store.audit_log(ACCOUNT) if r.action == "bot_exit_requested"]
    assert records[0].details["symbol"] == "C1/USD"
    assert service.status()["accounts"][ACCOUNT]["supervision"]["delegated"] == ["C1/USD"]
    assert not service.store.is_halted(ACCOUNT)  # waiting for the bot is not a failure
    service.clock.advance(61)
    service.tick()
    sold = [o.symbol for o in broker.all_orders() if o.side.value == "sell"]
    assert sorted(sold) == ["C1/USD", "C2/USD"]
    assert len(broker.true_positions()) == 2
    service.close()


def test_positions_the_bot_does_not_know_are_reported(tmp_path, monkeypatch):
    """The exchange holds C2 and C3 that freqtrade's database lacks: reported, and counted."""
    service, _ = service_with_bot(tmp_path, monkeypatch, held=3, cap=3, trades=["C1/USD"])
    service.accounts[ACCOUNT].broker.get_positions()
    service.tick()
    supervision = service.status()["accounts"][ACCOUNT]["supervision"]
    assert supervision["untracked"] == ["C2/USD", "C3/USD"]
    assert service.accounts[ACCOUNT].gate.check_entry("C5/USD").code == "POSITION_CAP_REACHED"
    service.close()


def test_a_bot_that_cannot_be_reached_is_reported_and_enforcement_goes_on(tmp_path, monkeypatch):
    """The bot's API is down: status says so; the cap is still enforced by brokerguard."""
    service, bot = service_with_bot(tmp_path, monkeypatch, held=3, cap=2, trades=[])
    bot.authorization = "Basic wrong"  # every call is refused
    service.accounts[ACCOUNT].broker.get_positions()
    service.tick()
    assert service.status()["accounts"][ACCOUNT]["supervision"]["error"]
    assert len(service.accounts[ACCOUNT].broker.true_positions()) == 2
    service.close()


def test_supervision_without_credentials_is_a_configuration_error(tmp_path, monkeypatch):
    """The bot's credentials come from the environment only; missing, the start fails."""
    monkeypatch.delenv("FREQTRADE__API_SERVER__USERNAME", raising=False)
    monkeypatch.delenv("FREQTRADE__API_SERVER__PASSWORD", raising=False)
    config = parse_config(
        {
            "store": {"url": "sqlite://"},
            "brokers": {"paper": {"kind": "paper"}},
            "accounts": [{"id": ACCOUNT, "broker": "paper", "supervise": {"url": URL}}],
        }
    )
    with pytest.raises(Exception, match="FREQTRADE__API_SERVER__USERNAME"):
        GuardService(config, clock=FakeClock(start=1_795_000_000.0))


def test_an_excess_that_appears_between_passes_is_still_exited_through_the_bot(
    tmp_path, monkeypatch
):
    """Compliant at one pass, over the cap at the next: the bot's trade goes by forceexit.

    Not by the enforcer: the supervision reads afresh, not the last pass's positions.
    """
    service, bot = service_with_bot(tmp_path, monkeypatch, held=2, cap=2, trades=["C1/USD"])
    broker = service.accounts[ACCOUNT].broker
    service.tick()
    assert bot.exited == []
    broker.place_market_order("C6/USD", "buy", "1")  # a deposit, a bot outside the gate ...
    service.tick()
    assert bot.exited == ["1"]
    assert not [o for o in broker.all_orders() if o.side.value == "sell"]
    service.close()
