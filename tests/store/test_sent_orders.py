"""The store's sent orders: one sender per client order id across processes, exact, bounded."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from brokerguard import OrderRequest
from brokerguard.store import open_store
from brokerguard.store.schema import SCHEMA_VERSION
from brokerguard.store.state import (
    SENT_INTENT_STALE_S,
    SENT_ORDER_MEMORY_S,
    SENT_RESTING_MEMORY_S,
)
from brokerguard.testing import FakeClock


@pytest.fixture(params=["sqlite-file", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(url, clock):
    opened = open_store(url, clock=clock)
    yield opened
    opened.close()


def buy(cid: str, symbol: str = "SOL/USD") -> OrderRequest:
    return OrderRequest(symbol, "buy", "1.5", cid, deadline=1010.0)


def test_of_two_claims_of_one_id_the_second_gets_the_first_back(store, url, clock):
    other_process = open_store(url, clock=clock)
    assert store.claim_sent_order("acct", buy("c1")) is None
    held = other_process.claim_sent_order("acct", buy("c1"))
    assert held is not None
    assert (held.state, held.request.client_order_id, held.sent_at) == ("intent", "c1", 1000.0)
    assert other_process.claim_sent_order("other-acct", buy("c1")) is None  # per account
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
    store.save_sent_order("acct", request, "unresolved", absent_after=1015.5)
    [kept] = store.sent_orders("acct")
    assert kept.request == request
    assert kept.request.price == Decimal("2999.123456789")
    assert (kept.state, kept.absent_after) == ("unresolved", 1015.5)
    assert store.sent_order("acct", "c-limit") == kept
    assert store.sent_order("acct", "nope") is None


@pytest.mark.parametrize("state", ["not_placed", "rejected"])
def test_an_order_never_placed_is_forgotten_and_its_id_may_be_claimed_again(store, state):
    store.claim_sent_order("acct", buy("c1"))
    store.save_sent_order("acct", buy("c1"), "sent", absent_after=1015.0)
    store.settle_sent_order("acct", "c1", state)
    assert store.sent_orders("acct") == []
    assert store.claim_sent_order("acct", buy("c1")) is None


@pytest.mark.parametrize("state", ["sent", "unresolved", "exists", "open", "filled", "canceled"])
def test_an_order_that_may_have_executed_keeps_its_id(store, state):
    store.claim_sent_order("acct", buy("c1"))
    store.save_sent_order("acct", buy("c1"), "sent", absent_after=1015.0)
    store.settle_sent_order("acct", "c1", state)
    held = store.claim_sent_order("acct", buy("c1"))
    assert held is not None
    assert held.state == state


def test_a_claim_that_never_became_a_send_is_held_until_it_is_stale(store, clock):
    store.claim_sent_order("acct", buy("c1"))  # its process dies before it sends
    clock.advance(SENT_INTENT_STALE_S - 1)
    assert store.claim_sent_order("acct", buy("c1")) is not None  # maybe sending right now
    clock.advance(2)
    assert store.claim_sent_order("acct", buy("c1")) is None  # stale: taken over


def test_final_orders_are_forgotten_after_an_hour_resting_after_30_days_unknown_never(store, clock):
    for cid, state in [
        ("c-filled", "filled"),
        ("c-open", "open"),
        ("c-unresolved", "unresolved"),
        ("c-sent", "sent"),
        ("c-exists", "exists"),
    ]:
        store.save_sent_order("acct", buy(cid), "sent", absent_after=1015.0)
        store.settle_sent_order("acct", cid, state)
    store.save_sent_order("other", buy("c-other"), "filled")

    clock.advance(SENT_ORDER_MEMORY_S + 1)
    store.settle_sent_order("acct", "c-new", "filled")  # any settle sweeps the account
    assert {o.request.client_order_id for o in store.sent_orders("acct")} == {
        "c-open",
        "c-unresolved",
        "c-sent",
        "c-exists",
    }
    assert len(store.sent_orders("other")) == 1  # another account's are its own to sweep

    clock.advance(SENT_RESTING_MEMORY_S)
    store.settle_sent_order("acct", "c-new", "filled")
    assert {o.request.client_order_id for o in store.sent_orders("acct")} == {
        "c-unresolved",
        "c-sent",
        "c-exists",
    }


def test_a_store_of_schema_6_gains_the_sent_orders_on_open(url, clock):
    opened = open_store(url, clock=clock)
    with opened._engine.begin() as conn:
        conn.execute(text("DROP TABLE bg_sent_orders"))
        conn.execute(text("UPDATE bg_schema_version SET version = 6"))
    opened.close()

    reopened = open_store(url, clock=clock)
    assert reopened.schema_version() == SCHEMA_VERSION == 7
    assert reopened.claim_sent_order("acct", buy("c1")) is None
    reopened.close()


OPS = st.lists(
    st.tuples(
        st.sampled_from(["claim", "send", "settle", "wait"]),
        st.sampled_from(["c1", "c2"]),
        st.sampled_from(
            ["not_placed", "rejected", "unresolved", "open", "filled", "canceled", "exists"]
        ),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_a_claim_is_granted_exactly_when_nothing_that_may_have_executed_holds_the_id(ops):
    """A model of the rule, against the store, for any sequence of claims, sends and fates."""
    clock = FakeClock(1000.0)
    store = open_store("sqlite://", clock=clock)
    model: dict[str, tuple[str, float]] = {}  # cid -> (state, updated_at)
    for op, cid, state in ops:
        now = clock.time()
        if op == "wait":
            clock.advance(SENT_INTENT_STALE_S / 2)
        elif op == "claim":
            held = model.get(cid)
            free = held is None or (held[0] == "intent" and held[1] < now - SENT_INTENT_STALE_S)
            answer = store.claim_sent_order("acct", buy(cid))
            assert (answer is None) == free, (op, cid, held)
            if free:
                model[cid] = ("intent", now)
            else:
                assert answer is not None
                assert held is not None
                assert answer.state == held[0]
        elif op == "send":
            store.save_sent_order("acct", buy(cid), "sent", absent_after=now + 15)
            model[cid] = ("sent", now)
        elif cid in model:
            store.settle_sent_order("acct", cid, state)
            if state in {"not_placed", "rejected"}:
                del model[cid]
            else:
                model[cid] = (state, now)
    assert {o.request.client_order_id: o.state for o in store.sent_orders("acct")} == {
        cid: state for cid, (state, _) in model.items()
    }
    store.close()
