"""The /v1 pre-trade API: a bot in another process reserves, reports, and is held to the cap.

Every slot is given back only on evidence: the bot's "not placed" is checked with the broker,
and a reservation never reported is looked up when it expires, never assumed unplaced.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from brokerguard.config import parse_config
from brokerguard.server import create_app
from brokerguard.service import GuardService
from brokerguard.testing import FakeClock

BOT = "bot-token-0123456789-abcdefghijklmnop"
CONTROL = "control-token-0123456789-abcdefghijk"
ACCOUNT = "bot-1"
START = 1_795_000_000.0


def config(tmp_path):
    return parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
            "brokers": {
                "paper": {
                    "kind": "paper",
                    "settle_delay_s": 0,
                    "prices": {f"C{i}/USD": "10" for i in range(6)},
                }
            },
            "accounts": [{"id": ACCOUNT, "broker": "paper", "max_positions": 2}],
        }
    )


@pytest.fixture
def clock():
    return FakeClock(start=START)


@pytest.fixture
def service(tmp_path, clock):
    svc = GuardService(config(tmp_path), clock=clock)
    yield svc
    svc.close()


@pytest.fixture
def api(service):
    return TestClient(create_app(service, control_token=CONTROL, bot_token=BOT))


def auth(token: str = BOT) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def reserve(api, symbol: str, cid: str, **headers: str):
    return api.post(
        f"/v1/accounts/{ACCOUNT}/entries",
        json={"symbol": symbol, "side": "buy", "client_order_id": cid},
        headers={**auth(), **headers},
    )


def test_the_bot_token_is_needed_and_is_not_the_control_token(service, api):
    """No token 401; the control token cannot reserve; the bot token cannot halt."""
    body = {"symbol": "C1/USD", "side": "buy", "client_order_id": "a"}
    assert api.post(f"/v1/accounts/{ACCOUNT}/entries", json=body).status_code == 401
    control = api.post(f"/v1/accounts/{ACCOUNT}/entries", json=body, headers=auth(CONTROL))
    assert control.status_code == 401
    halt = {"account_id": ACCOUNT, "reason": "x", "operator": "bot"}
    assert api.post("/halt", json=halt, headers=auth(BOT)).status_code == 401
    disabled = TestClient(create_app(service, control_token=CONTROL, bot_token=None))
    assert disabled.get(f"/v1/accounts/{ACCOUNT}", headers=auth()).status_code == 403


def test_reservations_hold_the_cap_and_a_refusal_says_why(api):
    """Cap 2: two reservations, the third is 409 POSITION_CAP_REACHED; unknown account 404."""
    first = reserve(api, "C1/USD", "o-1")
    assert first.status_code == 201
    assert first.json()["decision"]["allowed"] is True
    assert first.json()["expires_at"] > START
    assert reserve(api, "C2/USD", "o-2").status_code == 201
    refused = reserve(api, "C3/USD", "o-3")
    assert refused.status_code == 409
    assert refused.json()["decision"]["code"] == "POSITION_CAP_REACHED"
    assert refused.json()["decision"]["allowed"] is False
    ghost = api.post(
        "/v1/accounts/ghost/entries",
        json={"symbol": "C1/USD", "side": "buy", "client_order_id": "x"},
        headers=auth(),
    )
    assert ghost.status_code == 404


def test_an_idempotency_key_replays_the_first_answer_without_a_second_slot(api):
    """The same key twice: the same reservation, and the cap still has a free slot."""
    one = reserve(api, "C1/USD", "o-1", **{"Idempotency-Key": "k-1"})
    two = reserve(api, "C1/USD", "o-1", **{"Idempotency-Key": "k-1"})
    assert one.json()["reservation_id"] == two.json()["reservation_id"]
    assert reserve(api, "C2/USD", "o-2").status_code == 201  # one slot was taken, not two


def test_a_placed_entry_keeps_its_slot(api):
    """Reported placed: the slot stays although no position shows yet."""
    rid = reserve(api, "C1/USD", "o-1").json()["reservation_id"]
    placed = api.post(
        f"/v1/accounts/{ACCOUNT}/entries/{rid}/placed", json={"order_id": "X1"}, headers=auth()
    )
    assert (placed.status_code, placed.json()["state"]) == (200, "placed")
    reserve(api, "C2/USD", "o-2")
    assert reserve(api, "C3/USD", "o-3").status_code == 409


def test_not_placed_is_checked_with_the_broker(service, api):
    """The bot says not placed: an order the broker knows keeps the slot; none frees it."""
    broker = service.accounts[ACCOUNT].broker
    lying = reserve(api, "C1/USD", "sent-1").json()["reservation_id"]
    broker.place_market_order("C1/USD", "buy", "1", client_order_id="sent-1")
    honest = reserve(api, "C2/USD", "never-sent").json()["reservation_id"]
    url = f"/v1/accounts/{ACCOUNT}/entries/"
    assert api.delete(url + lying, headers=auth()).json()["state"] == "placed"
    assert api.delete(url + honest, headers=auth()).json()["state"] == "released"
    assert reserve(api, "C3/USD", "o-3").status_code == 201  # the honest slot came back
    assert api.delete(url + "nope", headers=auth()).status_code == 404


def test_an_unreported_reservation_is_looked_up_never_assumed_unplaced(service, api, clock):
    """Never reported: unresolved (slot kept) until a lookup after the deadline floor."""
    rid = reserve(api, "C1/USD", "silent").json()["reservation_id"]
    clock.advance(61)  # past the reservation's TTL, inside the 60 s floor + margin
    service.sweep_entries()
    entries = service.accounts[ACCOUNT].entries
    assert entries.get(rid).state.value == "unresolved"
    reserve(api, "C2/USD", "o-2")
    assert reserve(api, "C3/USD", "o-3").status_code == 409  # the silent one still counts
    clock.advance(10)
    service.sweep_entries()
    assert entries.get(rid).state.value == "released"


def test_an_unreported_reservation_whose_order_exists_is_placed(service, api, clock):
    """The bot crashed after sending: the lookup finds its order, the slot stays."""
    rid = reserve(api, "C1/USD", "crashed-after-send").json()["reservation_id"]
    broker = service.accounts[ACCOUNT].broker
    broker.place_market_order("C1/USD", "buy", "1", client_order_id="crashed-after-send")
    clock.advance(61)
    service.sweep_entries()
    assert service.accounts[ACCOUNT].entries.get(rid).state.value == "placed"


def test_open_reservations_keep_their_slots_across_a_restart(tmp_path, service, api, clock):
    """Restarted with two open reservations at a cap of 2: a third entry is still refused."""
    reserve(api, "C1/USD", "o-1")
    reserve(api, "C2/USD", "o-2")
    again = GuardService(config(tmp_path), clock=clock)
    try:
        decision = again.accounts[ACCOUNT].gate.check_entry("C3/USD")
        assert decision.code == "POSITION_CAP_REACHED"
        assert len(again.accounts[ACCOUNT].entries.open_entries()) == 2
    finally:
        again.close()


def test_gate_and_account_answer_without_reserving(api):
    """GET gate decides without a slot; GET account says the state and the cap."""
    for _ in range(3):
        answer = api.get(
            f"/v1/accounts/{ACCOUNT}/gate", params={"symbol": "C1/USD"}, headers=auth()
        )
        assert answer.json()["decision"]["allowed"] is True
    assert answer.json()["trading_state"] == "active"
    account = api.get(f"/v1/accounts/{ACCOUNT}", headers=auth()).json()
    assert (account["max_positions"], account["exit_symbols"]) == (2, [])


def test_a_sell_is_let_through_without_a_slot(api):
    """Risk reducing: allowed (RISK_REDUCING), and it takes none of the two slots."""
    sell = api.post(
        f"/v1/accounts/{ACCOUNT}/entries",
        json={"symbol": "C1/USD", "side": "sell", "client_order_id": "s-1"},
        headers=auth(),
    )
    assert sell.status_code == 201
    assert sell.json()["decision"]["code"] == "RISK_REDUCING"
    assert reserve(api, "C2/USD", "o-2").status_code == 201
    assert reserve(api, "C3/USD", "o-3").status_code == 201


def test_a_halted_account_refuses_entries_with_its_reason(service, api):
    """Halted by an operator: 409 ACCOUNT_HALTED."""
    service.halt(ACCOUNT, "operator stop", "ops")
    refused = reserve(api, "C1/USD", "o-1")
    assert (refused.status_code, refused.json()["decision"]["code"]) == (409, "ACCOUNT_HALTED")


def test_malformed_requests_are_refused_before_anything_is_reserved(api):
    """Bad JSON 400, a wrong field 422, an oversized body 413: nothing reserved."""
    url = f"/v1/accounts/{ACCOUNT}/entries"
    assert api.post(url, content=b"{", headers=auth()).status_code == 400
    bad = {"symbol": "C1/USD", "side": "short", "client_order_id": "x"}
    assert api.post(url, json=bad, headers=auth()).status_code == 422
    huge = {"symbol": "C1/USD", "side": "buy", "client_order_id": "x" * 10_000}
    assert api.post(url, json=huge, headers=auth()).status_code == 413
    assert reserve(api, "C1/USD", "o-1").status_code == 201
    assert reserve(api, "C2/USD", "o-2").status_code == 201


def test_a_second_entry_while_the_first_is_unreported_is_refused(api):
    """A retry under a new id after a timeout would buy twice: 409 ENTRY_PENDING.

    The same id asked again is the same reservation.
    """
    first = reserve(api, "C1/USD", "try-1").json()
    again = reserve(api, "C1/USD", "try-1").json()
    assert again["reservation_id"] == first["reservation_id"]
    second = reserve(api, "C1/USD", "try-2")
    assert second.status_code == 409
    assert second.json()["decision"]["code"] == "ENTRY_PENDING"
    assert second.json()["decision"]["details"]["reservation_id"] == first["reservation_id"]
    api.post(
        f"/v1/accounts/{ACCOUNT}/entries/{first['reservation_id']}/placed",
        json={"order_id": "X"},
        headers=auth(),
    )
    assert reserve(api, "C1/USD", "add-1").status_code == 201  # reported: adding is the gate's
