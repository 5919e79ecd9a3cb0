"""The complete order model: limit orders, time in force, post-only, cancels and open orders.

Driven through the paper broker (a venue with an order book). The rules of the order-truth
issue hold for every write: a cancel whose answer was lost is looked up, never reported done
unverified; an order we saw resting stays exposure even if a listing omits it.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerguard.brokers.base import BaseBroker
from brokerguard.brokers.paper import FaultPlan, PaperBroker
from brokerguard.errors import BrokerRejection, InvalidBrokerData, OrderUnconfirmedError
from brokerguard.models import OrderRequest, OrderStatus, OrderType, TimeInForce
from brokerguard.testing import FakeClock

START = 1_795_000_000.0


@pytest.fixture
def clock():
    return FakeClock(start=START)


@pytest.fixture
def broker(clock):
    return PaperBroker(
        "paper-book",
        clock=clock,
        prices={"BTC/USD": "100", "ETH/USD": "10"},
        positions={"ETH/USD": "5"},
        settle_delay=0,
    )


# ---------------------------------------------------------------- the request's shape


@settings(max_examples=300, deadline=None)
@given(
    order_type=st.sampled_from(list(OrderType)),
    price=st.none() | st.sampled_from(["1", "0", "-1", "nan"]),
    tif=st.none() | st.sampled_from(list(TimeInForce)),
    post_only=st.booleans(),
    expire_at=st.none() | st.just(START + 60),
)
def test_an_order_request_is_either_sendable_or_refused(
    order_type, price, tif, post_only, expire_at
):
    """Every combination is valid as a whole or raises InvalidBrokerData; never half-built."""
    try:
        request = OrderRequest(
            "BTC/USD",
            "buy",
            "1",
            "cid-1",
            order_type=order_type,
            price=price,
            time_in_force=tif,
            post_only=post_only,
            expire_at=expire_at,
        )
    except InvalidBrokerData:
        return
    if request.order_type is OrderType.MARKET:
        assert (request.price, request.time_in_force, request.post_only) == (None, None, False)
        assert request.tif is None
    else:
        assert request.price is not None
        assert request.price > 0
        assert request.tif is not None
        assert (request.tif is TimeInForce.GTD) == (request.expire_at is not None)
        assert not (request.post_only and request.tif in {TimeInForce.IOC, TimeInForce.FOK})


@pytest.mark.parametrize(
    ("terms", "problem"),
    [
        ({"order_type": "limit"}, "limit_order_without_price"),
        ({"price": "5"}, "market_order_with_limit_terms"),
        ({"order_type": "limit", "price": "5", "time_in_force": "GTD"}, "gtd_needs_expire_at"),
        (
            {"order_type": "limit", "price": "5", "time_in_force": "IOC", "post_only": True},
            "post_only_cannot_be_immediate",
        ),
    ],
)
def test_impossible_orders_are_refused_with_a_reason(terms, problem):
    """The reason names what is wrong."""
    with pytest.raises(InvalidBrokerData) as caught:
        OrderRequest("BTC/USD", "buy", "1", "cid-1", **terms)
    assert caught.value.reason == problem


def test_every_spot_buy_increases_risk_and_flags_must_be_booleans():
    """A buy opens or grows a position, reduce-only or not (spot has no short to reduce)."""
    assert OrderRequest("BTC/USD", "buy", "1", "a").increases_risk
    assert not OrderRequest("BTC/USD", "sell", "1", "b").increases_risk
    assert OrderRequest("BTC/USD", "buy", "1", "c", reduce_only=True).increases_risk
    with pytest.raises(InvalidBrokerData) as caught:
        OrderRequest("BTC/USD", "buy", "1", "d", reduce_only="false")
    assert caught.value.reason == "not_a_bool"


def test_a_reduce_only_buy_is_refused_on_spot(broker):
    """Nothing to reduce: refused as Kraken refuses it, nothing placed."""
    with pytest.raises(BrokerRejection, match="reduce only"):
        broker.place_order("BTC/USD", "buy", "1", reduce_only=True)
    assert broker.all_orders() == []


# ---------------------------------------------------------------- limit orders


def test_a_limit_buy_rests_until_the_price_reaches_it(broker):
    """Below the market it rests (listed as open); when the price falls to it, it fills."""
    order = broker.place_order(
        "BTC/USD", "buy", "1", order_type="limit", price="90", client_order_id="lim-1"
    )
    assert (order.status, order.order_type, order.price) == (
        OrderStatus.OPEN,
        OrderType.LIMIT,
        Decimal(90),
    )
    assert [o.client_order_id for o in broker.get_open_orders()] == ["lim-1"]
    assert "BTC/USD" not in broker.true_positions()
    broker.set_price("BTC/USD", "89")
    assert broker.get_order("lim-1").status is OrderStatus.FILLED
    assert broker.true_positions()["BTC/USD"] == 1
    assert broker.get_open_orders() == []


def test_a_post_only_order_that_would_take_liquidity_is_refused(broker):
    """A post-only buy at or above the market would trade at once: refused, nothing placed."""
    with pytest.raises(BrokerRejection, match="post only"):
        broker.place_order("BTC/USD", "buy", "1", order_type="limit", price="101", post_only=True)
    assert broker.all_orders() == []


def test_an_ioc_that_cannot_trade_is_cancelled_at_once(broker):
    """IOC below the market: nothing fills, and nothing rests."""
    order = broker.place_order(
        "BTC/USD", "buy", "1", order_type="limit", price="50", time_in_force="IOC"
    )
    assert order.status is OrderStatus.CANCELED
    assert broker.get_open_orders() == []


def test_a_gtd_order_expires(broker, clock):
    """GTD rests until its expiry, then the venue cancels it."""
    broker.place_order(
        "BTC/USD",
        "buy",
        "1",
        order_type="limit",
        price="50",
        time_in_force="GTD",
        expire_at=START + 60,
        client_order_id="gtd-1",
    )
    clock.advance(30)
    assert broker.get_order("gtd-1").status is OrderStatus.OPEN
    clock.advance(31)
    assert broker.get_order("gtd-1").status is OrderStatus.CANCELED


def test_a_venue_without_an_order_book_refuses_limit_orders(clock):
    """A market-only adapter cannot list or cancel a resting order: nothing is sent."""

    class MarketOnly(BaseBroker):
        sent = 0

        def fetch_positions(self):
            return []

        def fetch_prices(self, symbols):
            return {}

        def submit_order(self, order):
            MarketOnly.sent += 1
            raise AssertionError("must not be sent")

        def fetch_order(self, client_order_id):
            return None

    broker = MarketOnly("market-only", clock=clock)
    with pytest.raises(BrokerRejection, match="market orders only"):
        broker.place_order("BTC/USD", "buy", "1", order_type="limit", price="1")
    assert MarketOnly.sent == 0
    assert broker.get_open_orders() == []


# ---------------------------------------------------------------- cancels


def test_a_cancel_returns_the_final_state(broker):
    """An open limit order cancelled: CANCELED, and no longer listed."""
    broker.place_order("BTC/USD", "buy", "1", order_type="limit", price="90", client_order_id="c1")
    cancelled = broker.cancel_order("c1")
    assert cancelled.status is OrderStatus.CANCELED
    assert broker.get_open_orders() == []


def test_cancelling_a_filled_order_reports_it_filled_and_sends_nothing(broker):
    """Idempotent: a final order is returned as it is; no cancel reaches the venue."""
    broker.place_market_order("BTC/USD", "buy", "1", client_order_id="m1")
    assert broker.cancel_order("m1").status is OrderStatus.FILLED
    assert broker.cancel_order("m1").status is OrderStatus.FILLED
    assert not [c for c in broker.calls if c.method == "submit_cancel"]


def test_cancelling_an_unknown_order_is_not_reported_done(broker):
    """Nothing found: it may still appear (an unresolved send), so no 'cancelled' answer."""
    with pytest.raises(OrderUnconfirmedError):
        broker.cancel_order("never-seen")


def test_a_cancel_whose_answer_is_lost_is_looked_up_not_assumed(broker):
    """The cancel call fails: the lookup decides, and an order still open is reported open."""
    broker.place_order("BTC/USD", "buy", "1", order_type="limit", price="90", client_order_id="c2")
    broker.set_fault_plan(FaultPlan(error_rate={"submit_cancel": 1.0}))
    after = broker.cancel_order("c2")
    assert after.status is OrderStatus.OPEN  # not cancelled, and not claimed to be
    assert not after.is_final
    broker.set_fault_plan(FaultPlan())
    assert broker.cancel_order("c2").status is OrderStatus.CANCELED


# ---------------------------------------------------------------- open orders


def test_an_open_order_a_listing_omits_stays_exposure(clock):
    """A listing that drops our resting order does not make it go away (absence is no proof)."""

    class ForgetfulBook(PaperBroker):
        forget = False

        def fetch_open_orders(self):
            return [] if self.forget else super().fetch_open_orders()

    broker = ForgetfulBook("forgetful", clock=clock, prices={"BTC/USD": "100"}, settle_delay=0)
    broker.place_order("BTC/USD", "buy", "1", order_type="limit", price="90", client_order_id="r1")
    broker.forget = True
    assert [o.client_order_id for o in broker.get_open_orders()] == ["r1"]
    broker.cancel_order("r1")
    assert broker.get_open_orders() == []  # seen final: forgotten


# ---------------------------------------------------------------- the dead man's switch


def test_the_dead_man_switch_cancels_resting_orders_when_not_refreshed(broker, clock):
    """Armed for 60 s and refreshed: orders live on; refreshes stop: the book is cancelled."""
    rest = broker.place_order(
        "BTC/USD", "buy", "1", order_type="limit", price="90", client_order_id="dms-1"
    )
    assert broker.arm_dead_man_switch(60) == pytest.approx(START + 60)
    clock.advance(50)
    broker.arm_dead_man_switch(60)  # refreshed in time
    clock.advance(50)
    assert broker.get_order(rest.client_order_id).status is OrderStatus.OPEN
    clock.advance(11)  # 61 s since the last refresh
    assert broker.get_order(rest.client_order_id).status is OrderStatus.CANCELED
    assert broker.switch_fired == 1


def test_a_disarmed_switch_cancels_nothing(broker, clock):
    """0 disarms: no trigger time, and the order outlives the old deadline."""
    broker.place_order("BTC/USD", "buy", "1", order_type="limit", price="90", client_order_id="d2")
    broker.arm_dead_man_switch(60)
    assert broker.arm_dead_man_switch(0) is None
    clock.advance(120)
    assert broker.get_order("d2").status is OrderStatus.OPEN


def test_a_venue_without_a_switch_says_so(clock):
    """Arming where there is none is a refusal, not a silent no-op."""

    class NoSwitch(PaperBroker):
        submit_cancel_all_after = BaseBroker.submit_cancel_all_after

    broker = NoSwitch("no-switch", clock=clock, prices={"BTC/USD": "1"})
    assert not broker.has_dead_man_switch
    with pytest.raises(BrokerRejection, match="dead man"):
        broker.arm_dead_man_switch(60)
