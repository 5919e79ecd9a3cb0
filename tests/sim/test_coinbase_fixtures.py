"""The Coinbase emulator's payloads have the keys and value types of recorded Coinbase ones.

The excerpts live in ``fixtures/coinbase_recorded.json`` (sources in its ``_about``). ccxt's
recorder quotes JSON numbers, so its excerpts compare with ``quoted=True``; the examples quoted
in ccxt's Python comments keep their wire types. The comparison is the Kraken fixture tests'.
"""

from __future__ import annotations

import json
from pathlib import Path

import ccxt
import pytest

from brokerguard.sim.coinbase import DEFAULT_API_KEY, DEFAULT_API_SECRET, running_coinbase
from brokerguard.testing import FakeClock
from tests.sim.test_kraken_fixtures import shape_differences

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "coinbase_recorded.json").read_text())


@pytest.fixture(scope="module")
def world():
    """One emulator session that produced every payload kind once."""
    clock = FakeClock(start=1_800_000_000.0)
    balances = {"USD": "100000", "BTC": "1"}
    with running_coinbase(balances=balances, time_source=clock.time) as cb:
        exchange = ccxt.coinbase(
            {"apiKey": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET, "enableRateLimit": False}
        )
        exchange.urls["api"] = {"rest": cb.url}
        market = {"market_market_ioc": {"base_size": "0.01"}}
        created = exchange.v3PrivatePostBrokerageOrders(
            {
                "client_order_id": "f1",
                "product_id": "BTC-USD",
                "side": "SELL",
                "order_configuration": market,
            }
        )
        too_big = {"market_market_ioc": {"quote_size": "1000000"}}
        with pytest.raises(ccxt.InsufficientFunds):
            exchange.v3PrivatePostBrokerageOrders(
                {
                    "client_order_id": "f2",
                    "product_id": "BTC-USD",
                    "side": "BUY",
                    "order_configuration": too_big,
                }
            )
        refused = json.loads(exchange.last_http_response)
        resting = exchange.v3PrivatePostBrokerageOrders(
            {
                "client_order_id": "f3",
                "product_id": "BTC-USD",
                "side": "BUY",
                "order_configuration": {
                    "limit_limit_gtc": {
                        "base_size": "0.01",
                        "limit_price": "50000",
                        "post_only": False,
                    }
                },
            }
        )
        order_id = created["success_response"]["order_id"]
        cancelled = exchange.v3PrivatePostBrokerageOrdersBatchCancel(
            {"order_ids": [resting["success_response"]["order_id"]]}
        )
        listed = exchange.v3PrivateGetBrokerageOrdersHistoricalBatch({"order_status": "FILLED"})
        with pytest.raises(ccxt.ExchangeError):
            exchange.v3PrivateGetBrokerageOrdersHistoricalOrderId({"order_id": "nope"})
        not_found = json.loads(exchange.last_http_response)
        yield {
            "created": created,
            "refused": refused,
            "order": exchange.v3PrivateGetBrokerageOrdersHistoricalOrderId({"order_id": order_id}),
            "listed": listed,
            "cancelled": cancelled,
            "not_found": not_found,
            "ticker": exchange.v3PublicGetBrokerageMarketProductsProductIdTicker(
                {"product_id": "BTC-USD", "limit": 1}
            ),
            "products": exchange.v3PublicGetBrokerageMarketProducts(),
            "accounts": exchange.v3PrivateGetBrokerageAccounts(),
            "v2_accounts": exchange.v2PrivateGetAccounts({"limit": 2}),
            "currencies": exchange.v2PublicGetCurrencies(),
            "summary": exchange.v3PrivateGetBrokerageTransactionSummary(),
            "v3_time": exchange.v3PublicGetBrokerageTime(),
            "v2_time": exchange.v2PublicGetTime(),
        }


def test_a_filled_order_matches_the_recorded_closed_order(world):
    """Get Order / List Orders entries: exactly the recorded keys, with the recorded types."""
    recorded = RECORDED["ccxt_recorded"]["fetchClosedOrders_order"]
    assert shape_differences(recorded, world["order"]["order"], quoted=True) == []
    (listed,) = world["listed"]["orders"]
    assert shape_differences(recorded, listed, quoted=True) == []
    envelope = {k: v for k, v in world["listed"].items() if k != "orders"}
    assert (
        shape_differences(
            RECORDED["ccxt_recorded"]["fetchClosedOrders_envelope"], envelope, quoted=True
        )
        == []
    )


def test_create_order_answers_match_the_recorded_success_and_failure(world):
    """success_response with the echoed configuration; error_response with every reason key."""
    success = RECORDED["issue_recorded"]["createOrder_success"]
    created = world["created"]
    echoed = {"market_market_ioc": {"base_size": "0.01"}}  # the recording echoed an IOC limit
    assert (
        shape_differences({**success, "order_configuration": echoed}, created, quoted=False) == []
    )
    failed = RECORDED["ccxt_comments"]["createOrder_failed"]
    refused = world["refused"]
    assert set(refused) == set(failed)
    preview = RECORDED["ccxt_comments"]["handle_errors_preview_failure"]["error_response"]
    assert set(refused["error_response"]) == set(failed["error_response"]) | set(preview)
    assert refused["error_response"]["preview_failure_reason"] == "PREVIEW_INSUFFICIENT_FUND"


def test_cancel_and_not_found_answers_match_ccxts_examples(world):
    """batch_cancel results and Get Order's 404 body have the shapes ccxt quotes."""
    comments = RECORDED["ccxt_comments"]
    assert shape_differences(comments["cancelOrders"], world["cancelled"], quoted=False) == []
    assert world["not_found"] == comments["handle_errors_order_not_found"]


def test_market_data_matches_the_recorded_products_and_ticker(world):
    """Products carry the recorded keys and types; the ticker too (prices are strings)."""
    product = RECORDED["ccxt_markets"]["BTC-USDC"]
    for entry in world["products"]["products"]:
        assert shape_differences(product, entry, quoted=True) == []
    assert (
        shape_differences(RECORDED["ccxt_recorded"]["fetchTicker"], world["ticker"], quoted=True)
        == []
    )


def test_accounts_match_the_v3_example_and_the_recorded_v2_answer(world):
    """v3 accounts: available_balance and hold objects; v2: the recorded account and pagination."""
    v3 = RECORDED["ccxt_comments"]["fetchAccountsV3"]
    assert shape_differences(v3, world["accounts"], quoted=False) == []
    recorded = RECORDED["ccxt_recorded"]
    (crypto, *_) = world["v2_accounts"]["data"]
    assert shape_differences(recorded["fetchBalance_v2_account"], crypto, quoted=True) == []
    pagination = world["v2_accounts"]["pagination"]
    assert shape_differences(recorded["fetchBalance_v2_pagination"], pagination, quoted=True) == []


def test_reference_answers_match_their_examples(world):
    """Currencies, the fee tier and both time endpoints have the recorded shapes."""
    currency = RECORDED["ccxt_currencies"]["USD"]
    assert world["currencies"]["data"] == [currency]
    comments = RECORDED["ccxt_comments"]
    assert shape_differences(comments["transaction_summary"], world["summary"], quoted=True) == []
    assert shape_differences(comments["v3_time"], world["v3_time"], quoted=False) == []
    assert shape_differences(comments["v2_time"], world["v2_time"], quoted=False) == []


def test_the_documented_idempotency_text_is_kept_with_the_fixtures():
    """The behaviour the emulator copies for a reused client_order_id, in Coinbase's words."""
    text = RECORDED["docs"]["create_order_client_order_id"]
    assert "the order will not be created" in text
    assert "will be returned instead" in text
