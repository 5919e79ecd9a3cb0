"""The paper exchange for fleets, through its adapter: the BaseBroker contract over HTTP."""

from __future__ import annotations

from decimal import Decimal

import pytest

from brokerguard import BrokerCircuitBreaker
from brokerguard.brokers.paper_exchange import PaperExchangeBroker
from brokerguard.errors import (
    BrokerRejection,
    ConfigurationError,
    DuplicateOrderError,
    FatalBrokerError,
    TransientBrokerError,
)
from brokerguard.models import OrderRequest, OrderStatus, Side
from brokerguard.sim.paper_exchange import PaperExchange

PRICES = {"AAA/USD": "2", "BBB/USD": "5"}


@pytest.fixture
def exchange():
    accounts = {"acct-1": {"AAA/USD": "3", "BBB/USD": "1"}, "acct 2/x": {"BBB/USD": "2"}}
    with PaperExchange(accounts, prices=PRICES, settle_delay=0) as running:
        yield running


@pytest.fixture
def client(exchange):
    made = []

    def make(account="acct-1", url=None) -> PaperExchangeBroker:
        broker = PaperExchangeBroker(
            url or exchange.url,
            account_id=account,
            read_breaker=BrokerCircuitBreaker("px", scope="read"),
            write_breaker=BrokerCircuitBreaker("px", scope="write"),
        )
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def test_positions_prices_and_orders_round_trip_as_decimals(exchange, client):
    """What the exchange holds arrives as Decimal positions, prices and orders."""
    broker = client()
    assert {p.symbol: p.quantity for p in broker.get_positions()} == {
        "AAA/USD": Decimal(3),
        "BBB/USD": Decimal(1),
    }
    assert broker.get_prices(["AAA/USD", "ZZZ/USD"]) == {"AAA/USD": Decimal(2), "ZZZ/USD": None}
    order = broker.place_market_order("AAA/USD", Side.SELL, "3", client_order_id="sell-1")
    assert (order.status, order.filled_quantity) == (OrderStatus.FILLED, Decimal(3))
    assert broker.get_order("sell-1") == order
    assert broker.get_order("never-sent") is None
    assert exchange.account("acct-1").true_positions() == {"BBB/USD": Decimal(1)}
    assert exchange.stats() == {"orders": 1}


def test_a_live_duplicate_is_evidence_and_an_oversell_a_rejection(client):
    """409 (a live order has the id) is DuplicateOrderError; 422 is BrokerRejection."""
    accounts = {"acct-1": {"AAA/USD": "5"}}
    with PaperExchange(accounts, prices=PRICES, settle_delay=60) as slow:
        broker = client(url=slow.url)
        broker.submit_order(OrderRequest("AAA/USD", Side.SELL, Decimal(1), "dup"))
        with pytest.raises(DuplicateOrderError):
            broker.submit_order(OrderRequest("AAA/USD", Side.SELL, Decimal(1), "dup"))
        with pytest.raises(BrokerRejection, match="insufficient"):
            broker.submit_order(OrderRequest("AAA/USD", Side.SELL, Decimal(99), "too-much"))
        assert slow.stats() == {"orders": 1, "refused:duplicate": 1, "refused:refused": 1}


def test_accounts_are_separate_and_ids_are_escaped(client):
    """An account id with a space and a slash reaches its own account; no account is fatal."""
    other = client("acct 2/x")
    assert [p.symbol for p in other.get_positions()] == ["BBB/USD"]
    with pytest.raises(FatalBrokerError, match="no account 'nobody'"):
        client("nobody").submit_order(OrderRequest("AAA/USD", Side.BUY, Decimal(1), "x"))


def test_a_dead_exchange_is_transient_and_bad_urls_are_refused(exchange):
    """No server: a transient error (the breaker counts it); a non-http URL: refused at once."""
    url = exchange.url
    exchange.stop()
    broker = PaperExchangeBroker(
        url,
        account_id="acct-1",
        timeout=0.5,
        read_breaker=BrokerCircuitBreaker("px", scope="read", max_attempts=1),
        write_breaker=BrokerCircuitBreaker("px", scope="write"),
    )
    with pytest.raises(TransientBrokerError):
        broker.get_positions()
    with pytest.raises(ConfigurationError):
        PaperExchangeBroker("ftp://127.0.0.1:1", account_id="a")
