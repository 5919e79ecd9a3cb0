"""Open orders count: a resting buy holds a cap slot, and is cancelled when the cap is broken.

An over-cap or halted account's resting buys are cancelled (and the cancels verified) before
anything is liquidated.

The failure: a bot with 8 positions and 5 resting buy orders on new symbols wakes up with 13.
"""

from __future__ import annotations

import contextlib

import pytest

from brokerguard.brokers import FaultPlan
from brokerguard.models import OrderRequest, OrderStatus, Side
from brokerguard.risk import POSITION_CAP_REACHED, EntryDenied, PositionCapEnforcer, TradingGate
from brokerguard.store import open_store

from .worlds import coins, paper_account

PRICES = coins(20)


@pytest.fixture
def store(clock):
    return open_store("sqlite://", clock=clock)


def account(clock, held: int):
    positions = {f"C{i:02d}/USD": "1" for i in range(1, held + 1)}
    broker = paper_account(clock, prices=PRICES, positions=positions, settle_delay=0)
    broker.get_positions()
    return broker


def rest_buy(broker, symbol: str, cid: str):
    """A limit buy far below the market: it rests."""
    return broker.place_order(
        symbol, "buy", "1", order_type="limit", price="0.01", client_order_id=cid
    )


def test_resting_buys_on_new_symbols_cannot_take_an_account_past_its_cap(clock, store):
    """Cap 8, 7 held, a bot placing 5 resting buys through the gate: only one is let through."""
    broker = account(clock, held=7)
    gate = TradingGate(broker, 8, store=store)
    placed = []
    for n in range(5):
        symbol = f"C{10 + n:02d}/USD"
        with contextlib.suppress(EntryDenied), gate.reserve_entry(symbol):
            rest_buy(broker, symbol, f"rest-{n}")
            placed.append(symbol)
    assert placed == ["C10/USD"]
    for symbol in PRICES:  # every resting buy fills
        broker.set_price(symbol, "0.001")
    assert len(broker.true_positions()) == 8


def test_a_resting_buy_placed_elsewhere_is_counted_from_the_next_listing(clock, store):
    """A buy placed outside this process (by hand, another bot) counts once it is listed."""
    broker = account(clock, held=1)
    gate = TradingGate(broker, 2, store=store, max_position_age=5)
    assert gate.check_entry("C05/USD").allowed
    broker.submit_order(  # straight to the venue: this broker object never sent it
        OrderRequest("C09/USD", Side.BUY, "1", "by-hand", order_type="limit", price="0.01")
    )
    clock.advance(6)  # the gate's snapshot is stale: it reads positions and open orders
    decision = gate.check_entry("C05/USD")
    assert decision.code == POSITION_CAP_REACHED


def test_a_cancelled_resting_buy_gives_its_slot_back(clock, store):
    """Cancelled (verified final, nothing filled): the slot is free again."""
    broker = account(clock, held=1)
    gate = TradingGate(broker, 2, store=store, pending_entry_ttl=30)
    rest_buy(broker, "C09/USD", "r1")
    assert gate.check_entry("C05/USD").code == POSITION_CAP_REACHED
    assert broker.cancel_order("r1").status is OrderStatus.CANCELED
    assert gate.check_entry("C05/USD").allowed


def test_the_enforcer_cancels_resting_buys_before_it_liquidates(clock, store):
    """Over the cap with a resting buy: the buy is cancelled (audited), then the excess sold."""
    broker = account(clock, held=3)
    rest_buy(broker, "C09/USD", "rest-1")
    enforcer = PositionCapEnforcer(broker, 2, store=store, settle_timeout=0)
    _, result = enforcer.enforce_cap()
    assert result["cancelled"] == ["rest-1"]
    assert result["cancel_unverified"] == []
    assert broker.get_order("rest-1").status is OrderStatus.CANCELED
    assert result["liquidated"] == ["C01/USD"]
    assert result["status"] == "compliant"
    record = next(r for r in store.audit_log(broker.account_id) if r.action == "order_cancelled")
    assert record.details["client_order_id"] == "rest-1"


def test_a_halted_account_within_its_cap_has_its_resting_buys_cancelled(clock, store):
    """Halted: no new risk, including the kind that would fill later."""
    broker = account(clock, held=1)
    rest_buy(broker, "C09/USD", "rest-1")
    store.halt(broker.account_id, "operator says stop", "operator:test")
    _, result = PositionCapEnforcer(broker, 5, store=store).enforce_cap()
    assert result["cancelled"] == ["rest-1"]
    assert broker.get_open_orders() == []


def test_a_cancel_that_cannot_be_verified_is_reported_and_the_slot_kept(clock, store):
    """Every cancel fails: reported unverified, and the gate still counts the resting buy."""
    broker = account(clock, held=3)
    rest_buy(broker, "C09/USD", "rest-1")
    broker.set_fault_plan(FaultPlan(error_rate={"submit_cancel": 1.0}))
    _, result = PositionCapEnforcer(broker, 2, store=store, settle_timeout=0).enforce_cap()
    assert "rest-1" in result["cancel_unverified"]
    assert "rest-1" not in result["cancelled"]
    broker.set_fault_plan(FaultPlan())
    gate = TradingGate(broker, 3, store=store)
    assert gate.check_entry("C05/USD").code == POSITION_CAP_REACHED  # 2 held + the resting buy
