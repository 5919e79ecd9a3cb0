"""CcxtBroker's order model on both venues: limit orders, cancels, open orders, lookups.

The guarded broker (BaseBroker's rules) over the real ccxt clients; what differs per venue is
in ``CcxtBroker.rules`` and asserted here where a test is about one venue.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from brokerguard.brokers.ccxt import (
    COINBASE,
    KRAKEN,
    VENUE_RULES,
    CcxtBroker,
    translate_ccxt_error,
    venue_rules,
)
from brokerguard.errors import (
    BrokerRejection,
    DuplicateOrderError,
    InvalidBrokerData,
    OrderUnconfirmedError,
)
from brokerguard.models import OrderStatus, OrderType, TimeInForce
from tests.ccxt.conftest import Venue, make_venue


def broker_for(venue: Venue) -> CcxtBroker:
    return CcxtBroker(venue.bare(), clock=venue.clock, nonce_source=venue.nonces)


def test_the_venue_rules_say_what_differs(venue):
    """Kraken's id is no idempotency key but has a deadline; Coinbase's is, without one."""
    broker = broker_for(venue)
    assert broker.rules is VENUE_RULES[venue.name]
    assert broker.enforces_order_deadline is (venue.name == "kraken")
    assert KRAKEN.client_id_idempotent is False
    assert COINBASE.client_id_idempotent is True
    assert TimeInForce.FOK not in KRAKEN.time_in_force
    assert venue_rules("binance").venue == "ccxt"
    assert broker.has_order_book


def test_a_limit_order_rests_and_carries_its_type_and_price(venue):
    """place_order(limit): open, LIMIT, at its price; listed by get_open_orders."""
    broker = broker_for(venue)
    order = broker.place_order(
        "ETH/USD", "buy", "0.1", order_type="limit", price="3000", client_order_id="lim-1"
    )
    assert (order.status, order.order_type, order.price) == (
        OrderStatus.OPEN,
        OrderType.LIMIT,
        Decimal(3000),
    )
    found = broker.get_order("lim-1")
    assert (found.order_type, found.price, found.quantity) == (
        OrderType.LIMIT,
        Decimal(3000),
        Decimal("0.1"),
    )
    (listed,) = broker.get_open_orders()
    assert (listed.client_order_id, listed.broker_order_id) == ("lim-1", order.broker_order_id)


def test_a_market_order_is_found_filled_with_its_type(venue):
    """A market order's lookup: FILLED, MARKET, no limit price."""
    broker = broker_for(venue)
    broker.place_market_order("SOL/USD", "buy", "1", client_order_id="mkt-1")
    found = broker.get_order("mkt-1")
    assert (found.status, found.order_type, found.price) == (
        OrderStatus.FILLED,
        OrderType.MARKET,
        None,
    )


def test_a_coinbase_market_buy_is_sent_by_base_size(coinbase):
    """No price needed: the base quantity travels as base_size, exactly."""
    broker_for(coinbase).place_market_order("SOL/USD", "buy", "2", client_order_id="b-1")
    (sent,) = coinbase.requests_to("brokerage/orders")
    assert sent["order_configuration"] == {"market_market_ioc": {"base_size": "2"}}
    assert sent["client_order_id"] == "b-1"
    assert coinbase.holdings()["SOL"] == 2


def test_kraken_orders_carry_cl_ord_id_and_a_deadline(kraken):
    """AddOrder: cl_ord_id and an RFC 3339 deadline, GTD as an absolute expiretm."""
    broker = broker_for(kraken)
    expire = kraken.clock.time() + 300
    broker.place_order(
        "ETH/USD",
        "buy",
        "0.1",
        order_type="limit",
        price="3000",
        time_in_force="GTD",
        expire_at=expire,
        post_only=True,
        client_order_id="k-1",
    )
    (sent,) = kraken.requests_to("AddOrder")
    assert (sent["cl_ord_id"], sent["timeinforce"], sent["expiretm"], sent["oflags"]) == (
        "k-1",
        "GTD",
        str(int(expire)),
        "post",
    )
    assert sent["deadline"].endswith("Z")


def test_coinbase_gtd_is_end_time_and_fok_is_taken(coinbase):
    """Coinbase: GTD with end_time (limit_limit_gtd), FOK as limit_limit_fok."""
    broker = broker_for(coinbase)
    expire = coinbase.clock.time() + 300
    broker.place_order(
        "ETH/USD", "buy", "0.1", order_type="limit", price="3000", time_in_force="GTD",
        expire_at=expire, client_order_id="g-1",
    )  # fmt: skip
    broker.place_order(
        "ETH/USD", "buy", "0.1", order_type="limit", price="3300", time_in_force="FOK",
        client_order_id="f-1",
    )  # fmt: skip
    gtd, fok = coinbase.requests_to("brokerage/orders")
    assert "limit_limit_gtd" in gtd["order_configuration"]
    assert "limit_limit_fok" in fok["order_configuration"]
    assert broker.get_order("f-1").status is OrderStatus.FILLED


@pytest.mark.parametrize(
    ("terms", "match"),
    [
        ({"reduce_only": True}, "reduce-only"),
        ({"quantity": "0.00001"}, "minimum"),
    ],
)
def test_what_a_venue_does_not_take_is_refused_and_not_sent(venue, terms, match):
    """Refused before sending, as a rejection (nothing reached the venue)."""
    broker = broker_for(venue)
    order = {"quantity": "0.1", "order_type": "limit", "price": "70000", **terms}
    quantity = order.pop("quantity")
    with pytest.raises(BrokerRejection, match=match):
        broker.place_order("BTC/USD", "sell", quantity, client_order_id="no-1", **order)
    assert venue.requests_to(venue.order_endpoint) == []


def test_kraken_refuses_fok_before_sending(kraken):
    """Kraken spot has no FOK: refused by the adapter, not by a round trip."""
    with pytest.raises(BrokerRejection, match="FOK"):
        broker_for(kraken).place_order(
            "BTC/USD", "sell", "0.1", order_type="limit", price="70000", time_in_force="FOK"
        )
    assert kraken.requests_to("AddOrder") == []


def test_a_cancel_is_verified_and_a_second_cancel_reports_the_final_state(venue):
    """cancel_order: CANCELED by the lookup; again: the same, nothing refused."""
    broker = broker_for(venue)
    broker.place_order("ETH/USD", "buy", "0.1", order_type="limit", price="3000",
                       client_order_id="c-1")  # fmt: skip
    assert broker.cancel_order("c-1").status is OrderStatus.CANCELED
    cancels = len(venue.requests_to(venue.cancel_endpoint))
    assert broker.cancel_order("c-1").status is OrderStatus.CANCELED
    assert len(venue.requests_to(venue.cancel_endpoint)) == cancels  # final: nothing sent


def test_the_venues_unknown_order_answer_for_a_final_order_is_looked_up(venue):
    """submit_cancel on an order the venue already cancelled answers its final state."""
    broker = broker_for(venue)
    placed = broker.place_order("ETH/USD", "buy", "0.1", order_type="limit", price="3000",
                                client_order_id="u-1")  # fmt: skip
    venue.bare().cancel_order(placed.broker_order_id, "ETH/USD")
    answer = broker.submit_cancel(placed)
    assert answer is not None
    assert (answer.client_order_id, answer.status) == ("u-1", OrderStatus.CANCELED)


def test_kraken_cancels_by_cl_ord_id_when_there_is_no_venue_id(kraken):
    """An order known only by our id is cancelled by cl_ord_id (no txid sent)."""
    broker = broker_for(kraken)
    placed = broker.place_order("ETH/USD", "buy", "0.1", order_type="limit", price="3000",
                                client_order_id="cl-1")  # fmt: skip
    from dataclasses import replace  # noqa: PLC0415 (this test only)

    assert broker.submit_cancel(replace(placed, broker_order_id=None)) is None
    (sent,) = kraken.requests_to("CancelOrder")
    assert (sent.get("cl_ord_id"), "txid" in sent) == ("cl-1", False)
    assert broker.get_order("cl-1").status is OrderStatus.CANCELED


def test_coinbase_pending_orders_are_open_orders(clock):
    """A PENDING order is live (ccxt's fetch_open_orders omits it): it is listed as open."""
    gen = make_venue("coinbase", clock, balances={"USD": "10000"}, pending_delay=5)
    venue = next(gen)
    try:
        broker = broker_for(venue)
        broker.place_order("SOL/USD", "buy", "1", order_type="limit", price="140",
                           client_order_id="p-1")  # fmt: skip
        assert venue.bare().fetch_open_orders() == []  # ccxt asks for OPEN only
        (pending,) = broker.fetch_open_orders()
        assert (pending.client_order_id, pending.status) == ("p-1", OrderStatus.OPEN)
    finally:
        gen.close()


def test_a_kraken_order_by_hand_is_named_by_its_venue_id(kraken):
    """No cl_ord_id: the txid stands for the client id; a lookup by it finds the order."""
    bare = kraken.bare()
    placed = bare.create_order("ETH/USD", "limit", "buy", 0.1, 3000, {"userref": 7})
    broker = broker_for(kraken)
    (listed,) = broker.get_open_orders()
    assert listed.client_order_id == listed.broker_order_id == placed["id"]
    assert broker.get_order(placed["id"]).status is OrderStatus.OPEN
    assert broker.cancel_order(placed["id"]).status is OrderStatus.CANCELED


def test_coinbase_finds_an_order_by_scanning_every_page(clock):
    """No lookup by client id on Coinbase: List Orders is read page by page until found."""
    gen = make_venue("coinbase", clock, balances={"USD": "100000"})
    venue = next(gen)
    try:
        broker = broker_for(venue)
        for i in range(260):  # more than one page of 250
            venue.bare().create_order("SOL/USD", "market", "buy", 0.01, 150,
                                      {"client_order_id": f"n-{i}"})  # fmt: skip
        found = broker.get_order("n-0")  # the oldest: on the second page (newest first)
        assert found is not None
        assert found.client_order_id == "n-0"
        assert broker.get_order("never-sent") is None
        pages = venue.requests_to("brokerage/orders/historical/batch")
        assert any("cursor" in p for p in pages)
    finally:
        gen.close()


def test_coinbase_absence_needs_a_readable_listing(coinbase):
    """A garbled List Orders answer proves nothing: the lookup raises, never "not found"."""
    broker = broker_for(coinbase)
    broker.get_positions()  # markets loaded
    coinbase.emulator.inject("malformed", endpoint="brokerage/orders/historical/batch")
    with pytest.raises(InvalidBrokerData):
        broker.fetch_order("whatever")


def test_a_coinbase_resend_after_a_lost_answer_is_one_order(coinbase, clock):
    """The id is idempotent on Coinbase: a resend after the deadline adopts the same order."""
    broker = broker_for(coinbase)
    coinbase.emulator.inject("delayed_accept:2", endpoint="brokerage/orders")
    with pytest.raises(OrderUnconfirmedError):
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="idem-1")
    clock.advance(2)
    assert broker.resolve_order("idem-1").status is OrderStatus.FILLED
    assert len(coinbase.orders()) == 1


def test_a_reused_coinbase_client_id_naming_another_order_is_refused(coinbase):
    """Coinbase answers a reused id with the order it names: never adopted for another order."""
    bare = coinbase.bare()
    bare.create_order("SOL/USD", "market", "buy", 1, 150, {"client_order_id": "taken"})
    broker = broker_for(coinbase)
    with pytest.raises(BrokerRejection, match="already names"):
        broker.place_order("ETH/USD", "buy", "0.1", order_type="limit", price="3000",
                           client_order_id="taken")  # fmt: skip
    assert len(coinbase.orders()) == 1


def test_coinbase_duplicate_rejection_is_evidence_the_order_exists():
    """DUPLICATE_CLIENT_ORDER_ID (reject mode) translates to DuplicateOrderError."""
    import ccxt  # noqa: PLC0415

    error = translate_ccxt_error(ccxt.ExchangeError("DUPLICATE_CLIENT_ORDER_ID"))
    assert isinstance(error, DuplicateOrderError)


def test_coinbase_positions_read_every_balance_page(clock):
    """v3 accounts, every page: ccxt's default v2 read would stop at the first page."""
    gen = make_venue(
        "coinbase",
        clock,
        balances={"USD": "1", "BTC": "2", "ETH": "3", "SOL": "4"},
        accounts_page_size=2,
    )
    venue = next(gen)
    try:
        symbols = [p.symbol for p in broker_for(venue).get_positions()]
        assert symbols == ["BTC/USD", "ETH/USD", "SOL/USD"]
    finally:
        gen.close()


def test_a_client_library_crash_on_a_payload_is_invalid_data(kraken):
    """A TypeError from ccxt's parser on a hostile answer produced no data: InvalidBrokerData."""
    broker = broker_for(kraken)

    def boom(*args, **kwargs):
        raise TypeError("'NoneType' object is not subscriptable")

    broker.exchange.fetch_balance = boom
    with pytest.raises(InvalidBrokerData, match="client_parse_error"):
        broker.fetch_positions()
