"""The two HTTP clients of the freqtrade integration keep their contracts, byte for byte.

``GuardClient`` against the guard service's real ``/v1`` app (FastAPI's TestClient as the
transport) and against the contract in memory; ``FreqtradeSupervisor`` against freqtrade's
REST API shapes (2026.9: ``rpc/api_server/api_trading.py``); ``urllib_transport`` against a
loopback server. The settings read the ``brokerguard`` section and refuse what they do not know.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from brokerguard.config import parse_config
from brokerguard.errors import ConfigurationError
from brokerguard.integrations import freqtrade as integration
from brokerguard.integrations.freqtrade import (
    LOCK_REASON_PREFIX,
    UNTIL_RESUMED,
    FreqtradeAPIError,
    FreqtradeSupervisor,
    GuardAPIError,
    GuardClient,
    GuardSettings,
    urllib_transport,
)
from brokerguard.risk.gate import TradingState
from brokerguard.server import create_app
from brokerguard.service import GuardService
from brokerguard.sim._http import LoopbackServer
from brokerguard.testing import FakeClock
from tests.integrations.fakes import ACCOUNT, BOT_TOKEN, FakeFreqtradeAPI, FakeGuard

CONTROL = "control-token-0123456789-abcdefghijk"
FT_USER, FT_PASS = "ft-user", "ft-pass"
WRONG = "wrong"


def test_the_public_surface_is_pinned():
    """Adding to the integration's surface is deliberate."""
    assert integration.__all__ == [
        "DEFAULT_TOKEN_ENV",
        "EXIT_TAG",
        "LOCK_REASON_PREFIX",
        "UNTIL_RESUMED",
        "AccountState",
        "BrokerguardMixin",
        "EntryReservation",
        "FreqtradeAPIError",
        "FreqtradeLock",
        "FreqtradeSupervisor",
        "FreqtradeTrade",
        "GateAnswer",
        "GuardAPIError",
        "GuardClient",
        "GuardSettings",
        "Transport",
        "urllib_transport",
    ]


# ---------------------------------------------------------------------------------- settings


def test_settings_read_the_section_and_the_token_from_its_variable():
    """The url and account come from the section; the token from the variable token_env names."""
    settings = GuardSettings.from_config(
        {
            "brokerguard": {
                "url": "http://127.0.0.1:8080",
                "account_id": "k1",
                "token_env": "MY_TOKEN",
                "timeout_s": 0.5,
            }
        },
        {"MY_TOKEN": "t0k"},
    )
    assert (settings.url, settings.account_id, settings.token, settings.timeout_s) == (
        "http://127.0.0.1:8080",
        "k1",
        "t0k",
        0.5,
    )
    assert "t0k" not in repr(settings)


def test_settings_fall_back_to_the_environment():
    """No section: BROKERGUARD_URL, BROKERGUARD_ACCOUNT_ID, BROKERGUARD_BOT_TOKEN."""
    settings = GuardSettings.from_config(
        {},
        {
            "BROKERGUARD_URL": "http://guard:8080",
            "BROKERGUARD_ACCOUNT_ID": "k2",
            "BROKERGUARD_BOT_TOKEN": "t",
        },
    )
    assert (settings.url, settings.account_id, settings.timeout_s) == (
        "http://guard:8080",
        "k2",
        2.0,
    )


@pytest.mark.parametrize(
    ("section", "environ", "problem"),
    [
        ({"url": "http://g", "account_id": "a", "tokn_env": "X"}, {}, "unknown keys"),
        ({"account_id": "a"}, {"BROKERGUARD_BOT_TOKEN": "t"}, "url"),
        ({"url": "ftp://g", "account_id": "a"}, {"BROKERGUARD_BOT_TOKEN": "t"}, "url"),
        ({"url": "http://g"}, {"BROKERGUARD_BOT_TOKEN": "t"}, "account_id"),
        ({"url": "http://g", "account_id": "a"}, {}, "BROKERGUARD_BOT_TOKEN"),
        (
            {"url": "http://g", "account_id": "a", "timeout_s": 0},
            {"BROKERGUARD_BOT_TOKEN": "t"},
            "timeout_s",
        ),
        ("not an object", {}, "object"),
    ],
)
def test_settings_refuse_what_is_missing_or_unknown(section, environ, problem):
    """A typo, a missing url, account or token, or a bad timeout is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=problem):
        GuardSettings.from_config({"brokerguard": section}, environ)


def test_a_client_refuses_a_url_that_is_not_http():
    """The guard is reached over http(s) only."""
    with pytest.raises(ConfigurationError):
        GuardClient("file:///etc/passwd", token=WRONG)
    with pytest.raises(ConfigurationError):
        GuardClient("http://g", token=WRONG, timeout_s=0)
    with pytest.raises(ConfigurationError):
        FreqtradeSupervisor("127.0.0.1:8080", username=FT_USER, password=FT_PASS)


# ---------------------------------------------------------------------------------- the real /v1


def _service_config(tmp_path):
    return parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
            "brokers": {
                "paper": {
                    "kind": "paper",
                    "settle_delay_s": 0,
                    "prices": {f"C{i}/USD": "10" for i in range(4)},
                }
            },
            "accounts": [{"id": ACCOUNT, "broker": "paper", "max_positions": 2}],
        }
    )


def via_testclient(client: TestClient) -> integration.Transport:
    """Send the client's requests through FastAPI's TestClient (no socket)."""

    def send(method, url, headers, body, timeout_s):
        split = urlsplit(url)
        target = split.path + (f"?{split.query}" if split.query else "")
        response = client.request(method, target, headers=dict(headers), content=body)
        return response.status_code, response.content

    return send


@pytest.fixture
def service(tmp_path):
    svc = GuardService(_service_config(tmp_path), clock=FakeClock(start=1_795_000_000.0))
    yield svc
    svc.close()


@pytest.fixture
def real_guard(service):
    app = create_app(service, control_token=CONTROL, bot_token=BOT_TOKEN)
    return GuardClient(
        "http://testserver", token=BOT_TOKEN, transport=via_testclient(TestClient(app))
    )


def test_against_the_real_api_reservations_hold_the_cap(real_guard):
    """Two reservations at a cap of two; the third is refused with the gate's code."""
    first = real_guard.reserve_entry(ACCOUNT, "C1/USD")
    second = real_guard.reserve_entry(ACCOUNT, "C2/USD")
    third = real_guard.reserve_entry(ACCOUNT, "C3/USD")
    assert first.allowed
    assert second.allowed
    assert first.reservation_id != second.reservation_id
    assert first.expires_at is not None
    assert first.expires_at > 1_795_000_000.0
    assert not third.allowed
    assert third.reservation_id is None
    assert third.decision.code == "POSITION_CAP_REACHED"


def test_against_the_real_api_a_release_frees_the_slot_and_placed_keeps_it(real_guard):
    """DELETE (checked with the broker: no order) frees a slot; placed keeps its slot."""
    kept = real_guard.reserve_entry(ACCOUNT, "C1/USD")
    freed = real_guard.reserve_entry(ACCOUNT, "C2/USD")
    assert kept.reservation_id is not None
    assert freed.reservation_id is not None
    real_guard.report_placed(ACCOUNT, kept.reservation_id, "O-1")
    real_guard.release(ACCOUNT, freed.reservation_id)
    assert real_guard.reserve_entry(ACCOUNT, "C3/USD").allowed
    assert not real_guard.reserve_entry(ACCOUNT, "C0/USD").allowed


def test_against_the_real_api_the_idempotency_key_is_the_client_order_id(real_guard):
    """A resent reservation with the same client order id reserves once."""
    one = real_guard.reserve_entry(ACCOUNT, "C1/USD", client_order_id="ft-same")
    two = real_guard.reserve_entry(ACCOUNT, "C1/USD", client_order_id="ft-same")
    assert one.reservation_id == two.reservation_id
    assert real_guard.reserve_entry(ACCOUNT, "C2/USD").allowed


def test_against_the_real_api_gate_and_account(real_guard, service):
    """The gate answers without reserving; the account says its state and cap."""
    answer = real_guard.gate(ACCOUNT, "C1/USD")
    assert answer.decision.allowed
    assert answer.trading_state is TradingState.ACTIVE
    account = real_guard.account(ACCOUNT)
    assert (account.account_id, account.max_positions, account.exit_symbols) == (ACCOUNT, 2, ())
    service.halt(ACCOUNT, "operator stop", "ops")
    assert real_guard.account(ACCOUNT).trading_state is TradingState.HALTED
    refused = real_guard.reserve_entry(ACCOUNT, "C1/USD")
    assert refused.decision.code == "ACCOUNT_HALTED"


def test_against_the_real_api_errors_carry_their_status(real_guard):
    """An unknown account is a GuardAPIError with status 404; an unknown reservation too."""
    with pytest.raises(GuardAPIError) as raised:
        real_guard.account("ghost")
    assert raised.value.status == 404
    with pytest.raises(GuardAPIError) as raised:
        real_guard.release(ACCOUNT, "nope")
    assert raised.value.status == 404


def test_against_the_real_api_a_wrong_token_is_401(service):
    """A wrong bot token: 401, as an error (the mixin turns it into a refusal)."""
    app = create_app(service, control_token=CONTROL, bot_token=BOT_TOKEN)
    client = GuardClient(
        "http://testserver", token=WRONG, transport=via_testclient(TestClient(app))
    )
    with pytest.raises(GuardAPIError) as raised:
        client.reserve_entry(ACCOUNT, "C1/USD")
    assert raised.value.status == 401


def test_the_client_validates_account_answers():
    """A malformed account answer is an error, never a default state."""
    guard = FakeGuard()
    client = GuardClient("http://g.invalid", token=BOT_TOKEN, transport=guard)
    for body in (
        {"account_id": ACCOUNT, "trading_state": "sideways", "max_positions": 2},
        {"account_id": ACCOUNT, "trading_state": "active", "max_positions": "2"},
        {"account_id": ACCOUNT, "trading_state": "active", "max_positions": 2, "positions": -1},
        {"account_id": ACCOUNT, "trading_state": "active", "max_positions": 2, "exit_symbols": 3},
        [],
    ):
        guard.answer = (200, json.dumps(body).encode())
        with pytest.raises(GuardAPIError):
            client.account(ACCOUNT)


def test_unknown_positions_are_not_zero():
    """A null positions count is unknown, and never over the cap by arithmetic on nothing."""
    guard = FakeGuard()
    body = {"account_id": ACCOUNT, "trading_state": "reducing", "max_positions": 2}
    guard.answer = (200, json.dumps({**body, "positions": None}).encode())
    account = GuardClient("http://g.invalid", token=BOT_TOKEN, transport=guard).account(ACCOUNT)
    assert account.positions is None
    assert not account.over_cap


# ---------------------------------------------------------------------------------- supervisor


@pytest.fixture
def freqtrade_api():
    auth = "Basic " + base64.b64encode(b"ft-user:ft-pass").decode()
    return FakeFreqtradeAPI(authorization=auth)


@pytest.fixture
def supervisor(freqtrade_api):
    return FreqtradeSupervisor(
        "http://127.0.0.1:8081/api/v1",
        username=FT_USER,
        password=FT_PASS,
        transport=freqtrade_api,
    )


def test_lock_all_posts_a_star_lock_until_resumed(supervisor, freqtrade_api):
    """A halt is a lock on "*" for both sides, its reason marked as brokerguard's."""
    lock = supervisor.lock_all("account kraken-main halted: cap breach")
    call = freqtrade_api.calls[-1]
    assert (call.method, call.path) == ("POST", "/api/v1/locks")
    assert call.body == [
        {
            "pair": "*",
            "side": "*",
            "until": UNTIL_RESUMED.isoformat(),
            "reason": LOCK_REASON_PREFIX + "account kraken-main halted: cap breach",
        }
    ]
    assert lock.pair == "*"
    assert lock.active
    assert lock.by_brokerguard
    assert lock.until_ms == int(UNTIL_RESUMED.timestamp() * 1000)


def test_lock_all_twice_is_one_lock(supervisor, freqtrade_api):
    """The same halt announced each pass stays one lock."""
    first = supervisor.lock_all("halted")
    second = supervisor.lock_all(LOCK_REASON_PREFIX + "halted")
    assert first.lock_id == second.lock_id
    assert len(supervisor.locks()) == 1


def test_unlock_ends_only_brokerguards_locks(supervisor, freqtrade_api):
    """A resume lifts brokerguard's locks and leaves the bot's own (a protection) alone."""
    freqtrade_api.locks.append(
        {
            "id": 99,
            "pair": "ETH/USD",
            "side": "*",
            "reason": "StoplossGuard",
            "active": True,
            "lock_end_timestamp": 0,
        }
    )
    mine = supervisor.lock_all("halted")
    assert supervisor.unlock_brokerguard() == [mine.lock_id]
    assert [lock.lock_id for lock in supervisor.locks()] == [99]
    supervisor.unlock(99)
    assert supervisor.locks() == []


def test_lock_all_refuses_a_naive_until(supervisor):
    """A lock's end must be timezone-aware (freqtrade needs it)."""
    with pytest.raises(ValueError, match="aware"):
        supervisor.lock_all("x", until=datetime(2100, 1, 1))  # noqa: DTZ001 (the point of the test)


def test_open_trades_and_force_exit(supervisor, freqtrade_api):
    """The bot's open trades are read from /status; a known one is force-exited at market."""
    freqtrade_api.trades = [
        {"trade_id": 4, "pair": "BTC/USD", "amount": 0.0015, "is_open": True},
        {"trade_id": 5, "pair": "SOL/USD", "amount": 0.66, "has_open_orders": True},
    ]
    trades = supervisor.open_trades()
    assert [(t.trade_id, t.pair, t.amount, t.has_open_orders) for t in trades] == [
        (4, "BTC/USD", Decimal("0.0015"), False),
        (5, "SOL/USD", Decimal("0.66"), True),
    ]
    assert supervisor.force_exit(5) == "Created exit order for trade 5."
    assert freqtrade_api.calls[-1].body == {"tradeid": "5", "ordertype": "market"}
    assert supervisor.count() == (2, 3)


def test_force_exit_of_an_unknown_trade_is_an_error_with_freqtrades_status(supervisor):
    """A 502 (freqtrade's RPC refused) is a FreqtradeAPIError with that status."""
    with pytest.raises(FreqtradeAPIError) as raised:
        supervisor.force_exit(42)
    assert raised.value.status == 502
    assert "invalid argument" in raised.value.body


def test_wrong_credentials_are_an_error_and_ping_needs_none(freqtrade_api):
    """401 from freqtrade is an error; ping answers without credentials."""
    wrong = FreqtradeSupervisor(
        "http://127.0.0.1:8081", username="x", password=WRONG, transport=freqtrade_api
    )
    with pytest.raises(FreqtradeAPIError) as raised:
        wrong.locks()
    assert raised.value.status == 401
    assert wrong.ping()
    assert WRONG not in repr(wrong)


def test_the_supervisor_reads_freqtrades_own_credential_variables(freqtrade_api):
    """By default the credentials come from FREQTRADE__API_SERVER__USERNAME / __PASSWORD."""
    environ = {
        "FREQTRADE__API_SERVER__USERNAME": "ft-user",
        "FREQTRADE__API_SERVER__PASSWORD": "ft-pass",
    }
    supervisor = FreqtradeSupervisor.from_env(
        "http://127.0.0.1:8081", environ=environ, transport=freqtrade_api
    )
    assert supervisor.locks() == []
    with pytest.raises(ConfigurationError, match="FREQTRADE__API_SERVER__PASSWORD"):
        FreqtradeSupervisor.from_env("http://127.0.0.1:8081", environ={})


def test_a_malformed_freqtrade_answer_is_an_error(freqtrade_api, supervisor):
    """Trades or locks that do not parse raise; they never become an empty list."""
    freqtrade_api.trades = [{"pair": "BTC/USD"}]
    with pytest.raises(FreqtradeAPIError):
        supervisor.open_trades()
    freqtrade_api.locks.append({"id": "x", "pair": "*", "active": True})
    with pytest.raises(FreqtradeAPIError):
        supervisor.locks()


# ---------------------------------------------------------------------------------- transport


def test_urllib_transport_returns_every_status_and_raises_only_without_an_answer():
    """A 409 is an answer with its body; a closed port raises (nothing answered)."""
    seen = []

    def respond(method, path, query, headers, body):
        seen.append((method, path, query, headers.get("authorization"), body))
        if path == "/conflict":
            return 409, b'{"decision": {}}'
        return 200, b'{"ok": true}'

    server = LoopbackServer(respond, name="test-peer")
    server.start()
    try:
        status, body = urllib_transport(
            "POST", server.url + "/conflict?x=1", {"Authorization": "Bearer t"}, b"{}", 5.0
        )
        assert (status, body) == (409, b'{"decision": {}}')
        assert urllib_transport("GET", server.url + "/ok", {}, None, 5.0) == (200, b'{"ok": true}')
        assert seen[0] == ("POST", "/conflict", "x=1", "Bearer t", b"{}")
        url = server.url
    finally:
        server.stop()
    with pytest.raises(OSError):  # noqa: PT011 (refused or reset: any OSError is "no answer")
        urllib_transport("GET", url + "/ok", {}, None, 2.0)


def test_a_guard_that_is_down_is_a_guard_api_error_without_status():
    """A real closed port: GuardAPIError, status None (the mixin refuses the entry)."""
    server = LoopbackServer(lambda *_: (200, b"{}"), name="gone")
    server.start()
    url = server.url
    server.stop()
    client = GuardClient(url, token=BOT_TOKEN, timeout_s=1.0)
    with pytest.raises(GuardAPIError) as raised:
        client.reserve_entry(ACCOUNT, "BTC/USD")
    assert raised.value.status is None


def test_an_until_resumed_lock_ends_far_away():
    """The halt's lock outlives any bot: it ends only when brokerguard deletes it."""
    assert datetime(2099, 1, 1, tzinfo=UTC) < UNTIL_RESUMED
