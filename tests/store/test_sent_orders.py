# A claim's token is not a password (S106).
# ruff: noqa: S106
"""The store's sent orders: one sender per client order id across processes, exact, bounded."""

from __future__ import annotations

import json
from dataclasses import fields
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from brokerguard import OrderRequest, StoreUnavailableError
from brokerguard.store import open_store
from brokerguard.store.schema import SCHEMA_VERSION
from brokerguard.store.state import (
    SENT_FOREIGN_MARGIN_S,
    SENT_ORDER_MEMORY_S,
    SENT_RESTING_MEMORY_S,
    _request_json,
)
from brokerguard.testing import FakeClock


@pytest.fixture
def url(durable_url) -> str:
    return durable_url


@pytest.fixture
def store(url, clock):
    opened = open_store(url, clock=clock)
    yield opened
    opened.close()


def buy(cid: str, symbol: str = "SOL/USD") -> OrderRequest:
    return OrderRequest(symbol, "buy", "1.5", cid, deadline=1010.0)


def test_of_two_claims_of_one_id_the_second_gets_the_first_back(store, url, clock):
    other_process = open_store(url, clock=clock)
    assert store.claim_sent_order("acct", buy("c1"), token="t1", absent_after=1015.0) is None
    held = other_process.claim_sent_order("acct", buy("c1"), token="t2", absent_after=1016.0)
    assert held is not None
    assert (held.state, held.token, held.absent_after) == ("sent", "t1", 1015.0)
    assert (held.request.client_order_id, held.sent_at) == ("c1", 1000.0)
    other = other_process.claim_sent_order("other-acct", buy("c1"), token="t3")
    assert other is None  # per account
    other_process.close()


def test_a_limit_request_comes_back_exact(store):
    request = OrderRequest(
        "ETH/USD",
        "sell",
        "0.000000019",
        "c-limit",
        deadline=1010.5,
        order_type="limit",
        price="2999.123456789",
        time_in_force="GTD",
        expire_at=2000.0,
        post_only=True,
        reduce_only=True,
    )
    store.claim_sent_order("acct", request, token="t", state="unresolved", absent_after=1015.5)
    [kept] = store.sent_orders("acct")
    assert kept.request == request
    assert kept.request.price == Decimal("2999.123456789")
    assert (kept.state, kept.absent_after, kept.token) == ("unresolved", 1015.5, "t")
    assert store.sent_order("acct", "c-limit") == kept
    assert store.sent_order("acct", "nope") is None


@pytest.mark.parametrize("state", ["not_placed", "rejected"])
def test_an_order_never_placed_is_forgotten_and_its_id_may_be_claimed_again(store, state):
    store.claim_sent_order("acct", buy("c1"), token="t1", absent_after=1015.0)
    assert store.settle_sent_order("acct", "c1", state, token="t1")
    assert store.sent_orders("acct") == []
    assert store.claim_sent_order("acct", buy("c1"), token="t2") is None


@pytest.mark.parametrize("state", ["sent", "unresolved", "exists", "open", "filled", "canceled"])
def test_an_order_that_may_have_executed_keeps_its_id(store, state):
    store.claim_sent_order("acct", buy("c1"), token="t1", absent_after=1015.0)
    assert store.settle_sent_order("acct", "c1", state, token="t1")
    held = store.claim_sent_order("acct", buy("c1"), token="t2")
    assert held is not None
    assert held.state == state


def test_only_the_claims_token_writes_its_row(store):
    """A late proof of absence from another process never frees an id claimed again since."""
    store.claim_sent_order("acct", buy("c1"), token="first", absent_after=1015.0)
    assert store.settle_sent_order("acct", "c1", "not_placed", token="first")  # proven absent
    store.claim_sent_order("acct", buy("c1"), token="again", absent_after=1030.0)  # resent
    assert store.settle_sent_order("acct", "c1", "filled", token="again")

    assert not store.settle_sent_order("acct", "c1", "not_placed", token="first")  # late
    assert not store.save_sent_order("acct", buy("c1"), "sent", token="first", absent_after=1)
    [kept] = store.sent_orders("acct")
    assert (kept.state, kept.token, kept.absent_after) == ("filled", "again", 1030.0)


def test_a_resend_moves_the_rows_deadline_on(store):
    store.claim_sent_order("acct", buy("c1"), token="t", absent_after=1015.0)
    later = OrderRequest("SOL/USD", "buy", "1.5", "c1", deadline=1020.0)
    assert store.save_sent_order("acct", later, "sent", token="t", absent_after=1025.0)
    [kept] = store.sent_orders("acct")
    assert (kept.request.deadline, kept.absent_after) == (1020.0, 1025.0)


def test_final_orders_are_forgotten_after_an_hour_resting_after_30_days_unknown_never(store, clock):
    for cid, state in [
        ("c-filled", "filled"),
        ("c-open", "open"),
        ("c-unresolved", "unresolved"),
        ("c-sent", "sent"),
        ("c-exists", "exists"),
    ]:
        store.claim_sent_order("acct", buy(cid), token=cid, absent_after=1015.0)
        store.settle_sent_order("acct", cid, state, token=cid)
    store.claim_sent_order("other", buy("c-other"), token="o", state="filled")

    clock.advance(SENT_ORDER_MEMORY_S + 1)
    store.settle_sent_order("acct", "c-new", "filled", token="x")  # any settle sweeps
    assert {o.request.client_order_id for o in store.sent_orders("acct")} == {
        "c-open",
        "c-unresolved",
        "c-sent",
        "c-exists",
    }
    assert len(store.sent_orders("other")) == 1  # another account's are its own to sweep

    clock.advance(SENT_RESTING_MEMORY_S)
    store.settle_sent_order("acct", "c-new", "filled", token="x")
    assert {o.request.client_order_id for o in store.sent_orders("acct")} == {
        "c-unresolved",
        "c-sent",
        "c-exists",
    }


def test_another_process_forgets_a_final_order_only_a_day_later(store, url, clock):
    """The bound runs on the row's writer's clock: a host ahead by hours must not erase it."""
    store.claim_sent_order("acct", buy("c1"), token="t", absent_after=1015.0)
    store.settle_sent_order("acct", "c1", "filled", token="t")
    ahead = FakeClock(clock.time() + SENT_ORDER_MEMORY_S + 60)  # an hour ahead
    other_process = open_store(url, clock=ahead)
    other_process.settle_sent_order("acct", "c-mine", "filled", token="x")
    assert [o.request.client_order_id for o in store.sent_orders("acct")] == ["c1"]

    ahead.advance(SENT_FOREIGN_MARGIN_S)
    other_process.settle_sent_order("acct", "c-mine", "filled", token="x")
    assert store.sent_orders("acct") == []
    other_process.close()


def test_a_kept_row_that_cannot_be_read_is_a_store_failure(store):
    store.claim_sent_order("acct", buy("c1"), token="t", absent_after=1015.0)
    with store._engine.begin() as conn:
        conn.execute(text("UPDATE bg_sent_orders SET request = '{\"symbol\": 1}'"))
    with pytest.raises(StoreUnavailableError, match="cannot be read"):
        store.sent_orders("acct")


def test_a_kept_row_whose_request_names_another_order_is_a_store_failure(store):
    """A tampered row never becomes another id's order (the request's id is checked)."""
    store.claim_sent_order("acct", buy("c1"), token="t", absent_after=1015.0)
    with store._engine.begin() as conn:
        conn.execute(text("UPDATE bg_sent_orders SET request = REPLACE(request, 'c1', 'c9')"))
    with pytest.raises(StoreUnavailableError, match="names order 'c9'"):
        store.sent_orders("acct")


def test_every_field_of_a_request_is_kept(store):
    """The row keeps every field of OrderRequest: a field added later survives a restart."""
    request = OrderRequest("ETH/USD", "buy", "2", "c-all", order_type="limit", price="10.5")
    store.claim_sent_order("acct", request, token="t")
    [kept] = store.sent_orders("acct")
    assert kept.request == request
    stored = store.sent_order("acct", "c-all")
    assert stored is not None
    assert {f.name for f in fields(OrderRequest)} == set(json.loads(_request_json(request)))


def test_a_store_of_schema_6_gains_the_sent_orders_on_open(url, clock):
    opened = open_store(url, clock=clock)
    with opened._engine.begin() as conn:
        conn.execute(text("DROP TABLE bg_sent_orders"))
        conn.execute(text("UPDATE bg_schema_version SET version = 6"))
    opened.close()

    reopened = open_store(url, clock=clock)
    assert reopened.schema_version() == SCHEMA_VERSION == 7
    assert reopened.claim_sent_order("acct", buy("c1"), token="t") is None
    reopened.close()


OPS = st.lists(
    st.tuples(
        st.sampled_from(["claim", "resend", "settle"]),
        st.sampled_from(["c1", "c2"]),
        st.sampled_from(["a", "b"]),  # which of two processes acts, with the token it knows
        st.sampled_from(
            ["not_placed", "rejected", "unresolved", "open", "filled", "canceled", "exists"]
        ),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_a_claim_is_granted_exactly_when_no_row_holds_the_id_and_only_its_token_writes(ops):
    """A model of the rule, against the store, for any sequence of claims, resends and fates."""
    clock = FakeClock(1000.0)
    store = open_store("sqlite://", clock=clock)
    model: dict[str, tuple[str, str]] = {}  # cid -> (state, token)
    known: dict[tuple[str, str], str] = {}  # (process, cid) -> the token it last saw
    for n, (op, cid, who, state) in enumerate(ops):
        clock.advance(1)
        mine = known.get((who, cid), "none")
        if op == "claim":
            token = f"{who}{n}"
            answer = store.claim_sent_order("acct", buy(cid), token=token, absent_after=2e3)
            assert (answer is None) == (cid not in model)
            if answer is None:
                model[cid] = ("sent", token)
            known[who, cid] = model[cid][1]
        elif op == "resend":
            ours = cid in model and model[cid][1] == mine
            assert store.save_sent_order("acct", buy(cid), "sent", token=mine) == ours
            if ours:
                model[cid] = ("sent", mine)
        else:
            ours = cid in model and model[cid][1] == mine
            assert store.settle_sent_order("acct", cid, state, token=mine) == ours
            if ours and state in {"not_placed", "rejected"}:
                del model[cid]
            elif ours:
                model[cid] = (state, mine)
    assert {o.request.client_order_id: (o.state, o.token) for o in store.sent_orders("acct")} == (
        model
    )
    store.close()
