"""Bounded memory over long runs: what is forgotten, when, and what never is.

The bounds (issue 16): a guarded broker forgets a *final* order's client order id
``FINAL_ORDER_MEMORY_S`` after it was first seen final (and keeps at most
``_REMEMBERED_ORDER_IDS`` final ids); it never forgets an id whose outcome is unknown or whose
order is open. A paper venue forgets final orders, fills, dropped requests, recorded calls and
position snapshots ``history_s`` after they ended. Memory is inspected through the private
containers on purpose: the size of memory is what these tests are about.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from brokerguard.brokers import PaperBroker
from brokerguard.brokers.base import FINAL_ORDER_MEMORY_S
from brokerguard.brokers.paper import HISTORY_BOUNDS, FaultPlan
from brokerguard.errors import (
    BrokerGuardError,
    ConfigurationError,
    OrderUnconfirmedError,
    TransientBrokerError,
)
from brokerguard.models import Order, OrderRequest, OrderType, Side, TimeInForce
from brokerguard.orders import OrderState
from brokerguard.testing import FakeClock

HOUR = 3600.0


def paper(clock: FakeClock, **kwargs: object) -> PaperBroker:
    prices = {"BTC/USD": "50000", "ETH/USD": "3000", "SOL/USD": "100"}
    return PaperBroker(prices=prices, clock=clock, settle_delay=0.5, **kwargs)  # type: ignore[arg-type]


class LosingPaper(PaperBroker):
    """A paper venue whose lookups of ``lost-*`` ids time out: their outcome stays unknown."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.submitted: Counter[str] = Counter()  # client order id -> sends that reached us

    def submit_order(self, order: OrderRequest) -> Order:
        self.submitted[order.client_order_id] += 1
        return super().submit_order(order)

    def fetch_order(self, client_order_id: str) -> Order | None:
        if client_order_id.startswith("lost-"):
            raise TransientBrokerError("paper: fetch_order timed out")
        return super().fetch_order(client_order_id)


def losing(clock: FakeClock) -> LosingPaper:
    """A broker whose first order is accepted, its answer lost, and every lookup of it fails."""
    prices = {"BTC/USD": "50000", "ETH/USD": "3000", "SOL/USD": "100"}
    return LosingPaper(prices=prices, clock=clock, settle_delay=0.5)


def trade_for(broker: PaperBroker, clock: FakeClock, seconds: float, every: float = 10.0) -> int:
    """Buy and sell a little ETH every `every` seconds for `seconds`; return orders sent.

    Open orders are listed after each order, as the gate and the enforcer do every pass: that
    is how the guard learns that an order it saw open has ended.
    """
    sent = 0
    elapsed = 0.0
    while elapsed < seconds:
        side = Side.BUY if sent % 2 == 0 else Side.SELL
        broker.place_market_order("ETH/USD", side, Decimal("0.01"))
        sent += 1
        clock.advance(every)
        elapsed += every
        broker.get_open_orders()
    broker.get_positions()  # a call: the venue settles and prunes up to now
    return sent


def test_final_order_ids_are_forgotten_after_the_horizon_so_memory_stays_flat(clock):
    """Ids of filled orders leave memory after the horizon: day two holds no more than hour two."""
    broker = paper(clock)
    broker.get_positions()

    trade_for(broker, clock, 2 * HOUR)
    after_two_hours = len(broker._bg_sent)
    trade_for(broker, clock, 22 * HOUR)

    per_horizon = FINAL_ORDER_MEMORY_S * 1.125 / 10.0 + 50  # sent within a horizon, plus slack
    assert len(broker._bg_sent) <= per_horizon
    assert len(broker._bg_sent) <= after_two_hours * 1.1
    assert len(broker._bg_final_seen) <= len(broker._bg_sent)


def test_a_retry_within_the_horizon_is_answered_from_memory_not_resent(clock):
    """A caller retrying a filled order's id 50 minutes later gets the order, not a second one."""
    broker = paper(clock)
    first = broker.place_market_order("ETH/USD", Side.BUY, "0.5", client_order_id="keep-1")
    trade_for(broker, clock, 50 * 60)

    again = broker.place_market_order("ETH/USD", Side.BUY, "0.5", client_order_id="keep-1")

    assert again.broker_order_id == first.broker_order_id
    assert [o.client_order_id for o in broker.all_orders()].count("keep-1") == 1


def test_an_unresolved_order_is_never_forgotten_however_old(clock):
    """An order of unknown outcome stays in memory for days of traffic, and is never resent."""
    broker = losing(clock)
    broker.fault_plan = FaultPlan(fail_after_accept_rate=1.0)
    with pytest.raises(OrderUnconfirmedError):
        broker.place_market_order("SOL/USD", Side.BUY, "1", client_order_id="lost-1")
    broker.fault_plan = FaultPlan()

    trade_for(broker, clock, 30 * HOUR)
    with pytest.raises(BrokerGuardError):  # the bot's retry, a day later
        broker.place_market_order("SOL/USD", Side.BUY, "1", client_order_id="lost-1")

    assert broker.order_state("lost-1") is OrderState.UNRESOLVED
    assert "lost-1" in {u.request.client_order_id for u in broker.unresolved_orders()}
    assert broker.submitted["lost-1"] == 1


def test_an_open_order_is_never_forgotten_however_old(clock):
    """A limit order resting for a day stays known to the guard and listed by the venue."""
    broker = paper(clock)
    broker.place_order(
        "BTC/USD",
        Side.BUY,
        "0.01",
        order_type=OrderType.LIMIT,
        price="1",
        time_in_force=TimeInForce.GTC,
        client_order_id="rest-1",
    )

    trade_for(broker, clock, 26 * HOUR)
    retried = broker.place_order(
        "BTC/USD",
        Side.BUY,
        "0.01",
        order_type=OrderType.LIMIT,
        price="1",
        time_in_force=TimeInForce.GTC,
        client_order_id="rest-1",
    )

    assert broker.order_state("rest-1") not in {None, OrderState.FILLED, OrderState.CANCELED}
    assert retried.status.value == "open"
    assert [o.client_order_id for o in broker.all_orders()].count("rest-1") == 1


def test_the_count_bound_never_evicts_an_unresolved_or_open_order(clock, monkeypatch):
    """Shrunk to 3 ids, the memory drops final ids only: the unresolved one stays."""
    monkeypatch.setattr("brokerguard.brokers.base._REMEMBERED_ORDER_IDS", 3)
    broker = losing(clock)
    broker.fault_plan = FaultPlan(fail_after_accept_rate=1.0)
    with pytest.raises(OrderUnconfirmedError):
        broker.place_market_order("SOL/USD", Side.BUY, "1", client_order_id="lost-2")
    broker.fault_plan = FaultPlan()

    trade_for(broker, clock, 100, every=1.0)

    assert "lost-2" in broker._bg_sent
    assert len(broker._bg_sent) <= 3 + 1  # the bound, plus the order being sent


def test_the_paper_venue_forgets_what_ended_after_its_history(clock):
    """Final orders, fills, recorded calls and snapshots older than history_s are gone."""
    broker = paper(clock, history_s=HOUR)
    trade_for(broker, clock, 2 * HOUR)
    sizes_at_two_hours = (len(broker._orders), len(broker._fills), len(broker._calls))
    trade_for(broker, clock, 22 * HOUR)

    horizon_orders = HOUR * 1.125 / 10.0 + 50
    assert len(broker._orders) <= horizon_orders
    assert len(broker._fills) <= horizon_orders
    assert len(broker._history) <= HISTORY_BOUNDS["position_snapshots"]
    newest = (len(broker._orders), len(broker._fills), len(broker._calls))
    assert all(n <= then * 1.1 for n, then in zip(newest, sizes_at_two_hours, strict=True))
    wall_horizon = clock.time() - 1.125 * HOUR - 1
    assert all(f.timestamp >= wall_horizon for f in broker._fills)


def test_without_a_history_the_paper_venue_keeps_every_order(clock):
    """history_s=None keeps the whole book (what short tests and scorers count on)."""
    broker = paper(clock, history_s=None)
    sent = trade_for(broker, clock, 3 * HOUR, every=60.0)
    assert len(broker.all_orders()) == sent


def test_a_stale_read_after_pruning_still_shows_the_state_of_its_age(clock):
    """Pruning keeps the snapshot in force at the horizon, so stale reads stay truthful."""
    broker = paper(clock, history_s=HOUR)
    broker.place_market_order("SOL/USD", Side.BUY, "3")
    trade_for(broker, clock, 3 * HOUR)
    broker.fault_plan = FaultPlan(stale_positions_rate=1.0, stale_positions_age=30.0)
    stale = {p.symbol: p.quantity for p in broker.fetch_positions()}
    assert stale["SOL/USD"] == Decimal(3)


def test_history_must_be_positive_or_none():
    """A history of zero or less would forget open bookkeeping at once: refused."""
    with pytest.raises(ConfigurationError, match="history_s"):
        PaperBroker(history_s=0)
