"""The Coinbase emulator behaves like Advanced Trade where brokerguard depends on it.

Every test drives the real ``ccxt.coinbase`` 4.5.90 client (one drives ``ccxt.async_support``)
against the emulator on 127.0.0.1; time is a :class:`~brokerguard.testing.FakeClock` the tests
step. The exception each fault surfaces as is ccxt's mapping, pinned here for the adapter.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal

import ccxt
import ccxt.async_support
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from brokerguard.sim.coinbase import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    CoinbaseEmulator,
    CoinbaseProduct,
    running_coinbase,
)
from brokerguard.testing import FakeClock

START = 1_800_000_000.0
# ADA increments and minimums as ccxt recorded them for ADA-USDT (markets/coinbase.json).
ADA = CoinbaseProduct(
    "ADA-USD",
    "ADA",
    "USD",
    Decimal("0.8026"),
    Decimal("0.8027"),
    base_increment=Decimal("0.01"),
    quote_increment=Decimal("0.0001"),
    price_increment=Decimal("0.0001"),
    base_min_size=Decimal("0.01"),
    base_max_size=Decimal(30_224_000),
    quote_max_size=Decimal(10_000_000),
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=START)


@pytest.fixture
def coinbase(clock):
    with running_coinbase(balances={"USD": "10000", "BTC": "0.5"}, time_source=clock.time) as cb:
        yield cb


def connect(emulator: CoinbaseEmulator, **config) -> ccxt.coinbase:
    exchange = ccxt.coinbase(
        {
            "apiKey": config.pop("apiKey", DEFAULT_API_KEY),
            "secret": config.pop("secret", DEFAULT_API_SECRET),
            "enableRateLimit": False,
            "timeout": 2000,
            **config,
        }
    )
    exchange.urls["api"] = {"rest": emulator.url}
    exchange.load_markets()
    return exchange


@pytest.fixture
def client(coinbase) -> ccxt.coinbase:
    return connect(coinbase)


def cid(value: str) -> dict[str, str]:
    """The params that set Coinbase's client_order_id (ccxt 4.5.90 drops ``clientOrderId``)."""
    return {"client_order_id": value}


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


def http(
    url: str,
    headers: dict[str, str] | None = None,
    *,
    method: str = "GET",
    data: bytes | None = None,
) -> tuple[int, bytes]:
    """One plain HTTP request to the emulator: (status, body), the response always closed."""
    request = urllib.request.Request(  # noqa: S310 (loopback only)
        url, headers=headers or {}, method=method, data=data
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def raw_order(exchange: ccxt.coinbase, client_order_id: str, product: str, side: str, **config):
    """POST brokerage/orders through ccxt's implicit API, with one order configuration."""
    ((kind, settings),) = config.items()
    return exchange.v3PrivatePostBrokerageOrders(
        {
            "client_order_id": client_order_id,
            "product_id": product,
            "side": side,
            "order_configuration": {kind: settings},
        }
    )


# --------------------------------------------------------------------------- markets and reads


def test_load_markets_reads_products_with_their_increments_and_minimums(client, coinbase):
    """load_markets: v2 currencies and rates, v3 products (SPOT, then FUTURE) and the fee tier."""
    assert set(client.markets) == {"BTC/USD", "ETH/USD", "SOL/USD"}
    btc = client.market("BTC/USD")
    assert (btc["id"], btc["active"], btc["precision"]) == (
        "BTC-USD",
        True,
        {"amount": 1e-8, "price": 0.01},
    )
    assert btc["limits"]["amount"] == {"min": 1e-8, "max": 3400}
    assert btc["limits"]["cost"] == {"min": 1, "max": 150_000_000}
    assert (btc["taker"], btc["maker"]) == (0.012, 0.006)
    assert client.currencies["USD"]["name"] == "United States Dollar"
    for endpoint in (
        "currencies",
        "currencies/crypto",
        "exchange-rates",
        "brokerage/market/products",
        "brokerage/transaction_summary",
    ):
        assert coinbase.count(endpoint) >= 1, endpoint
    futures = [r for r in coinbase.requests if r.params.get("product_type") == "FUTURE"]
    assert len(futures) == 1


def test_default_fetch_balance_reads_v2_totals_and_cannot_see_holds(client, coinbase):
    """The default fetch_balance reads v2 accounts: free == total even while an order holds."""
    client.create_order("BTC/USD", "limit", "buy", 0.01, 60000, cid("rest"))
    v2 = client.fetch_balance()
    assert (v2["total"]["USD"], v2["free"]["USD"], v2["used"]["USD"]) == (10000, 10000, 0)
    v3 = client.fetch_balance({"v3": True})
    assert (v3["total"]["USD"], v3["free"]["USD"], v3["used"]["USD"]) == (10000, 9400, 600)
    account = next(a for a in v3["info"]["accounts"] if a["currency"] == "USD")
    assert account["available_balance"] == {"value": "9400", "currency": "USD"}
    assert account["hold"] == {"value": "600", "currency": "USD"}
    assert coinbase.holds() == {"USD": Decimal(600)}


def test_v3_balance_follows_the_has_next_cursor_pages(clock):
    """List Accounts pages with has_next/cursor; ccxt's v3 fetch_balance walks every page."""
    balances = {"USD": "1", "BTC": "2", "ETH": "3", "SOL": "4", "USDC": "5"}
    with running_coinbase(balances=balances, accounts_page_size=2, time_source=clock.time) as cb:
        exchange = connect(cb)
        total = exchange.fetch_balance({"v3": True})["total"]
        assert total == {"BTC": 2, "ETH": 3, "SOL": 4, "USD": 1, "USDC": 5}
        assert cb.count("brokerage/accounts") == 3
        first = exchange.v3PrivateGetBrokerageAccounts({"limit": 250})
        assert (first["has_next"], first["cursor"], first["size"]) == (True, "2", 2)
        last = exchange.v3PrivateGetBrokerageAccounts({"limit": 250, "cursor": "4"})
        assert (last["has_next"], last["cursor"], len(last["accounts"])) == (False, "", 1)


def test_default_v2_balance_reads_only_its_first_page(clock):
    """The default (v2) fetch_balance never follows next_starting_after: accounts go missing."""
    balances = {"USD": "1", "BTC": "2", "ETH": "3", "SOL": "4"}
    with running_coinbase(balances=balances, accounts_page_size=2, time_source=clock.time) as cb:
        exchange = connect(cb)
        balance = exchange.fetch_balance()
        assert balance["total"] == {"BTC": 2, "ETH": 3}
        pagination = balance["info"]["pagination"]
        assert pagination["next_starting_after"] == balance["info"]["data"][-1]["id"]
        rest = exchange.v2PrivateGetAccounts(
            {"limit": 2, "starting_after": pagination["next_starting_after"]}
        )
        assert [a["currency"]["code"] for a in rest["data"]] == ["SOL", "USD"]
        assert rest["pagination"]["next_starting_after"] is None


def test_ticker_reports_book_top_and_last_trade(client, coinbase, clock):
    """market/products/{id}/ticker: best_bid/best_ask and the last trade, timed by the clock."""
    clock.advance(5)
    coinbase.set_price("BTC-USD", "70000.00", "70000.50")
    ticker = client.fetch_ticker("BTC/USD")
    assert (ticker["bid"], ticker["ask"], ticker["last"]) == (70000.0, 70000.5, 70000.25)
    assert ticker["timestamp"] == int((START + 5) * 1000)
    tickers = client.fetch_tickers(["BTC/USD", "SOL/USD"])
    assert (set(tickers), tickers["SOL/USD"]["last"]) == ({"BTC/USD", "SOL/USD"}, 149.99)
    books = client.fetch_bids_asks(["BTC/USD"])
    assert (books["BTC/USD"]["bid"], books["BTC/USD"]["ask"]) == (70000.0, 70000.5)
    with pytest.raises(ValueError, match="below the bid"):
        coinbase.set_price("BTC-USD", "2", "1")


def test_fetch_time_reads_v2_or_v3(client):
    """fetch_time: v2 time by default, v3 brokerage/time on request; both the emulator's clock."""
    assert client.fetch_time() == START * 1000
    assert client.fetch_time({"method": "v3PublicGetBrokerageTime"}) == START * 1000


# --------------------------------------------------------------------------- orders


def test_a_market_buy_spends_its_quote_size_at_the_ask(client, coinbase):
    """A market buy sends amount * price as quote_size and fills at the ask at once."""
    placed = client.create_order("SOL/USD", "market", "buy", 2, 150, cid("m1"))
    assert placed["clientOrderId"] == "m1"
    (request,) = [r for r in coinbase.requests if r.endpoint == "brokerage/orders"]
    assert request.params["order_configuration"] == {"market_market_ioc": {"quote_size": "300"}}
    order = client.fetch_order(placed["id"])
    assert (order["status"], order["filled"], order["average"], order["cost"]) == (
        "closed",
        2,
        150,
        300,
    )
    assert order["info"]["completion_percentage"] == "100.00"
    assert order["info"]["size_in_quote"] is True
    assert order["timestamp"] == START * 1000
    assert coinbase.balances()["SOL"] == 2
    assert coinbase.balances()["USD"] == 9700


def test_ccxt_sends_its_own_client_order_id_unless_given_client_order_id(client, coinbase):
    """The unified ``clientOrderId`` is dropped; only a raw ``client_order_id`` reaches Coinbase."""
    ignored = client.create_order("SOL/USD", "market", "buy", 1, 150, {"clientOrderId": "mine"})
    assert ignored["clientOrderId"].startswith("ccxt-")
    kept = client.create_order("SOL/USD", "market", "buy", 1, 150, cid("mine"))
    assert kept["clientOrderId"] == "mine"


def test_a_market_sell_fills_at_the_bid(client, coinbase):
    """A base-sized sell executes at the bid and moves both balances."""
    placed = client.create_order("BTC/USD", "market", "sell", 0.1, None, cid("s1"))
    order = client.fetch_order(placed["id"])
    assert (order["status"], order["average"]) == ("closed", 64999.99)
    assert coinbase.balances()["BTC"] == Decimal("0.4")
    assert coinbase.balances()["USD"] == Decimal("16499.999")


def test_a_limit_order_rests_until_the_price_crosses_then_fills_at_its_limit(client, coinbase):
    """A resting (maker) buy fills at its own limit price once the ask comes down to it."""
    placed = client.create_order("BTC/USD", "limit", "buy", 0.01, 60000, cid("l1"))
    (listed,) = client.fetch_open_orders()
    assert (listed["id"], listed["price"], listed["amount"]) == (placed["id"], 60000, 0.01)
    coinbase.set_price("BTC-USD", "60500", "60500.01")
    assert client.fetch_order(placed["id"])["status"] == "open"
    coinbase.set_price("BTC-USD", "59000", "59500")
    order = client.fetch_order(placed["id"])
    assert (order["status"], order["average"], order["filled"]) == ("closed", 60000, 0.01)
    assert client.fetch_open_orders() == []
    assert coinbase.balances()["USD"] == 9400


def test_a_limit_order_that_crosses_on_arrival_fills_at_the_touch(client, coinbase):
    """A marketable limit buy is a taker: it pays the ask, not its limit."""
    placed = client.create_order("BTC/USD", "limit", "buy", 0.01, 66000, cid("t1"))
    order = client.fetch_order(placed["id"])
    assert (order["status"], order["average"], order["price"]) == ("closed", 65000, 66000)


def test_orders_fill_in_parts_over_emulator_time(clock):
    """fill_parts: filled_size, completion_percentage and number_of_fills grow while OPEN."""
    with running_coinbase(
        balances={"USD": "1000"}, fill_delay=1, fill_parts=4, time_source=clock.time
    ) as cb:
        exchange = connect(cb)
        placed = exchange.create_order("SOL/USD", "market", "buy", 2, 150, cid("p"))
        assert exchange.fetch_order(placed["id"])["filled"] == 0
        clock.advance(1)
        order = exchange.fetch_order(placed["id"])
        assert (order["status"], order["filled"]) == ("open", 0.5)
        assert order["info"]["completion_percentage"] == "25.00"
        assert order["info"]["outstanding_hold_amount"] == "225"
        clock.advance(3)
        order = exchange.fetch_order(placed["id"])
        assert (order["status"], order["filled"], order["cost"]) == ("closed", 2, 300)
        assert order["info"]["number_of_fills"] == "4"
        assert order["info"]["last_fill_time"] == rfc3339(START + 4).replace("Z", ".000Z")


def test_a_limit_order_fills_in_parts_only_while_the_price_stays_crossed(clock):
    """A partly filled limit order waits, OPEN, when the price moves away, then completes."""
    with running_coinbase(
        balances={"USD": "1000"}, fill_delay=1, fill_parts=2, time_source=clock.time
    ) as cb:
        exchange = connect(cb)
        placed = exchange.create_order("SOL/USD", "limit", "buy", 2, 140, cid("lp"))
        cb.set_price("SOL-USD", "139", "139.5")
        clock.advance(1)
        cb.set_price("SOL-USD", "145", "146")
        clock.advance(5)
        order = exchange.fetch_order(placed["id"])
        assert (order["status"], order["filled"], order["remaining"]) == ("open", 1, 1)
        cb.set_price("SOL-USD", "138", "139")
        clock.advance(1)
        order = exchange.fetch_order(placed["id"])
        assert (order["status"], order["filled"], order["average"]) == ("closed", 2, 140)


def test_pending_orders_are_invisible_to_fetch_open_orders(clock):
    """pending_delay: a PENDING order is not OPEN (ccxt passes the status through raw)."""
    with running_coinbase(balances={"USD": "1000"}, pending_delay=2, time_source=clock.time) as cb:
        exchange = connect(cb)
        placed = exchange.create_order("SOL/USD", "limit", "buy", 1, 100, cid("pd"))
        assert exchange.fetch_open_orders() == []
        assert exchange.fetch_order(placed["id"])["status"] == "PENDING"
        clock.advance(2)
        assert [o["id"] for o in exchange.fetch_open_orders()] == [placed["id"]]


def test_cancel_releases_the_hold_and_refusals_raise_bad_request(client, coinbase):
    """batch_cancel: success per order; a refused cancel is BadRequest in ccxt, whatever why."""
    placed = client.create_order("BTC/USD", "limit", "buy", 0.01, 50000, cid("c1"))
    assert coinbase.holds() == {"USD": Decimal(500)}
    answer = client.cancel_order(placed["id"])
    assert (answer["id"], answer["info"]["success"]) == (placed["id"], True)
    order = client.fetch_order(placed["id"])
    assert (order["status"], order["info"]["cancel_message"]) == (
        "canceled",
        "User requested cancel",
    )
    assert coinbase.holds() == {}
    filled = client.create_order("SOL/USD", "market", "buy", 1, 150, cid("c2"))
    for order_id in (placed["id"], filled["id"], "no-such-order"):
        with pytest.raises(ccxt.BadRequest, match="cancelOrders"):
            client.cancel_order(order_id)
    raw = client.v3PrivatePostBrokerageOrdersBatchCancel({"order_ids": [placed["id"], "nope"]})
    assert [r["failure_reason"] for r in raw["results"]] == [
        "DUPLICATE_CANCEL_REQUEST",
        "UNKNOWN_CANCEL_ORDER",
    ]
    assert coinbase.refusals()["ORDER_IS_FULLY_FILLED"] == 1
    with pytest.raises(ccxt.BadRequest, match="INVALID_ARGUMENT"):
        client.v3PrivatePostBrokerageOrdersBatchCancel({"order_ids": []})


def test_a_cancel_takes_cancel_delay_and_fills_due_before_it_still_happen(clock):
    """cancel_delay: pending_cancel is true and the order OPEN until the cancel lands."""
    with running_coinbase(
        balances={"USD": "1000"}, cancel_delay=2, fill_delay=1, time_source=clock.time
    ) as cb:
        exchange = connect(cb)
        placed = exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("cd"))
        exchange.cancel_order(placed["id"])
        order = exchange.fetch_order(placed["id"])
        assert (order["status"], order["info"]["pending_cancel"]) == ("open", True)
        with pytest.raises(ccxt.BadRequest):  # DUPLICATE_CANCEL_REQUEST
            exchange.cancel_order(placed["id"])
        clock.advance(2)
        order = exchange.fetch_order(placed["id"])
        assert (order["status"], order["filled"]) == ("closed", 1)  # the fill beat the cancel


def test_a_reused_client_order_id_returns_the_existing_order(client, coinbase):
    """Coinbase: a non-unique client_order_id creates nothing and returns the order it names."""
    first = client.create_order("SOL/USD", "market", "buy", 1, 150, cid("same"))
    again = client.create_order("BTC/USD", "limit", "sell", 0.2, 99000, cid("same"))
    assert again["id"] == first["id"]
    assert (again["symbol"], again["side"]) == ("SOL/USD", "buy")  # the first order's
    assert len(coinbase.orders()) == 1
    assert coinbase.balances()["SOL"] == 1


def test_the_reject_mode_answers_duplicate_client_order_id(clock):
    """duplicate_client_order_id='reject': the enum's DUPLICATE_CLIENT_ORDER_ID, a plain error."""
    with running_coinbase(duplicate_client_order_id="reject", time_source=clock.time) as cb:
        exchange = connect(cb)
        exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("once"))
        with pytest.raises(ccxt.ExchangeError, match="DUPLICATE_CLIENT_ORDER_ID") as caught:
            exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("once"))
        assert type(caught.value) is ccxt.ExchangeError
        assert cb.refusals() == {"DUPLICATE_CLIENT_ORDER_ID": 1}
    with pytest.raises(ValueError, match="duplicate_client_order_id"):
        CoinbaseEmulator(duplicate_client_order_id="ignore")


def test_a_gtd_order_expires_at_its_end_time(client, coinbase, clock):
    """limit_limit_gtd: EXPIRED at end_time (ccxt: 'canceled'); an end_time past is refused."""
    params = {**cid("g1"), "timeInForce": "GTD", "end_time": rfc3339(START + 60)}
    placed = client.create_order("BTC/USD", "limit", "buy", 0.01, 50000, params)
    assert client.fetch_order(placed["id"])["timeInForce"] == "GTD"
    clock.advance(60)
    order = client.fetch_order(placed["id"])
    assert (order["status"], order["info"]["status"]) == ("canceled", "EXPIRED")
    assert coinbase.holds() == {}
    stale = {**cid("g2"), "timeInForce": "GTD", "end_time": rfc3339(START)}
    with pytest.raises(ccxt.ExchangeError, match="PREVIEW_END_TIME_IS_IN_THE_PAST"):
        client.create_order("BTC/USD", "limit", "buy", 0.01, 50000, stale)
    with pytest.raises(ccxt.ExchangeError, match="PREVIEW_GTD_ORDERS_MUST_HAVE_END_TIME"):
        raw_order(client, "g3", "BTC-USD", "BUY", limit_limit_gtd={"base_size": "0.01",
                  "limit_price": "50000"})  # fmt: skip


def test_ioc_and_fok_orders_fill_at_once_or_are_cancelled(client, coinbase):
    """sor_limit_ioc and limit_limit_fok never rest: filled now, or CANCELLED with nothing."""
    missed = client.create_order(
        "SOL/USD", "limit", "buy", 1, 100, {**cid("i1"), "timeInForce": "IOC"}
    )
    order = client.fetch_order(missed["id"])
    assert (order["status"], order["filled"], order["timeInForce"]) == ("canceled", 0, "IOC")
    hit = client.create_order(
        "SOL/USD", "limit", "buy", 1, 151, {**cid("f1"), "timeInForce": "FOK"}
    )
    order = client.fetch_order(hit["id"])
    assert (order["info"]["status"], order["filled"], order["timeInForce"]) == ("FILLED", 1, "FOK")
    assert order["price"] is None  # ccxt 4.5.90 reads no limit_price from limit_limit_fok


def test_a_post_only_order_that_would_take_is_refused(client, coinbase):
    """post_only: crossing on arrival is PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY (ExchangeError)."""
    with pytest.raises(ccxt.ExchangeError, match="PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY"):
        client.create_order("SOL/USD", "limit", "buy", 1, 150, {**cid("po1"), "postOnly": True})
    resting = client.create_order(
        "SOL/USD", "limit", "buy", 1, 149, {**cid("po2"), "postOnly": True}
    )
    order = client.fetch_order(resting["id"])
    assert (order["status"], order["postOnly"]) == ("open", True)


@pytest.mark.parametrize(
    ("configuration", "reason"),
    [
        ({"limit_limit_gtc": {"base_size": "0.005", "limit_price": "1"}}, "SIZE_PRECISION"),
        ({"limit_limit_gtc": {"base_size": "10", "limit_price": "0.80001"}}, "PRICE_PRECISION"),
        ({"market_market_ioc": {"base_size": "0.001"}}, "SIZE_PRECISION"),
        ({"market_market_ioc": {"quote_size": "0.5"}}, "QUOTE_SIZE_TOO_SMALL"),
        ({"market_market_ioc": {"quote_size": "1.00001"}}, "QUOTE_SIZE_PRECISION"),
        ({"market_market_ioc": {"quote_size": "20000000"}}, "QUOTE_SIZE_TOO_LARGE"),
        ({"market_market_ioc": {"base_size": "40000000"}}, "BASE_SIZE_TOO_LARGE"),
        ({"limit_limit_gtc": {"base_size": "1", "limit_price": "0.5"}}, "QUOTE_SIZE_TOO_SMALL"),
        ({"market_market_ioc": {"base_size": "lots"}}, "NON_NUMERIC_ORDER_SIZE"),
        ({"stop_limit_stop_limit_gtc": {"base_size": "1"}}, "INVALID_ORDER_CONFIG"),
        ({"market_market_ioc": {"base_size": "1", "quote_size": "1"}}, "INVALID_ORDER_CONFIG"),
        ({"limit_limit_gtc": {"base_size": "10"}}, "INVALID_LIMIT_PRICE"),
    ],
)
def test_product_increments_and_minimums_are_enforced_with_coinbases_reasons(
    clock, configuration, reason
):
    """Coinbase refuses off-grid or out-of-range sizes (never rounds): success false, HTTP 200."""
    with running_coinbase(
        products=(ADA,), balances={"USD": "100000000"}, time_source=clock.time
    ) as cb:
        exchange = connect(cb)
        with pytest.raises(ccxt.ExchangeError, match=f"PREVIEW_INVALID_{reason}|PREVIEW_{reason}"):
            raw_order(exchange, "r", "ADA-USD", "BUY", **configuration)
        assert cb.orders() == []
        assert sum(cb.refusals().values()) == 1


def test_a_base_size_below_the_minimum_is_refused_through_ccxt(clock):
    """The unified create_order truncates to the increment but sends sizes below the minimum."""
    small = CoinbaseProduct(
        "ADA-USD", "ADA", "USD", Decimal("0.8026"), Decimal("0.8027"),
        base_increment=Decimal("0.01"), price_increment=Decimal("0.0001"),
        base_min_size=Decimal(2), quote_min_size=Decimal("0.1"),
    )  # fmt: skip
    with running_coinbase(products=(small,), time_source=clock.time) as cb:
        exchange = connect(cb)
        with pytest.raises(ccxt.ExchangeError, match="PREVIEW_INVALID_BASE_SIZE_TOO_SMALL"):
            exchange.create_order("ADA/USD", "limit", "buy", 1.999, 0.8, cid("tiny"))
        (request,) = [r for r in cb.requests if r.endpoint == "brokerage/orders"]
        assert request.params["order_configuration"]["limit_limit_gtc"]["base_size"] == "1.99"


def test_orders_beyond_the_funds_are_refused_as_insufficient_funds(client, coinbase):
    """PREVIEW_INSUFFICIENT_FUND is the one order refusal ccxt maps to InsufficientFunds."""
    with pytest.raises(ccxt.InsufficientFunds, match="Insufficient balance in source account"):
        client.create_order("BTC/USD", "market", "buy", 1, 65000, cid("rich"))
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order("BTC/USD", "market", "sell", 0.6, None, cid("short"))
    client.create_order("BTC/USD", "limit", "sell", 0.5, 90000, cid("all"))
    with pytest.raises(ccxt.InsufficientFunds):  # the resting sell holds every BTC
        client.create_order("BTC/USD", "market", "sell", 0.1, None, cid("more"))
    coinbase.credit("BTC", "0.1")
    client.create_order("BTC/USD", "market", "sell", 0.1, None, cid("more2"))
    assert coinbase.refusals() == {"PREVIEW_INSUFFICIENT_FUND": 3}


def test_unknown_products_sides_and_missing_client_ids_are_refused(client):
    """PREVIEW_INVALID_PRODUCT_ID / _SIDE are plain ExchangeErrors; no client id is BadRequest."""
    market = {"market_market_ioc": {"base_size": "1"}}
    with pytest.raises(ccxt.ExchangeError, match="PREVIEW_INVALID_PRODUCT_ID"):
        raw_order(client, "u1", "DOGE-USD", "BUY", **market)
    with pytest.raises(ccxt.ExchangeError, match="PREVIEW_INVALID_SIDE"):
        raw_order(client, "u2", "SOL-USD", "HOLD", **market)
    with pytest.raises(ccxt.ExchangeError, match="PREVIEW_INVALID_ORDER_CONFIG"):
        raw_order(client, "u3", "SOL-USD", "SELL", market_market_ioc={"quote_size": "10"})
    with pytest.raises(ccxt.ExchangeError, match="PREVIEW_INVALID_ORDER_CONFIG"):
        raw_order(client, "u4", "SOL-USD", "BUY", limit_limit_gtc={"quote_size": "10"})
    with pytest.raises(ccxt.ExchangeError, match="PREVIEW_INVALID_ORDER_CONFIG"):
        raw_order(client, "u5", "SOL-USD", "BUY", limit_limit_gtc="not an object")
    with pytest.raises(ccxt.BadRequest, match="client_order_id is required"):
        client.v3PrivatePostBrokerageOrders(
            {"product_id": "SOL-USD", "side": "BUY", "order_configuration": market}
        )


@pytest.mark.parametrize(
    ("status", "market_error", "limit_error"),
    [
        ("cancel_only", "PREVIEW_TRADING_DISABLED", "PREVIEW_TRADING_DISABLED"),
        ("trading_disabled", "PREVIEW_TRADING_DISABLED", "PREVIEW_TRADING_DISABLED"),
        ("limit_only", "PREVIEW_NOT_ALLOWED_BY_MARKET_STATE", None),
        ("post_only", "PREVIEW_NOT_ALLOWED_BY_MARKET_STATE", "PREVIEW_NOT_ALLOWED_BY_MARKET_STATE"),
    ],
)
def test_a_product_mode_refuses_the_orders_coinbase_refuses(
    client, coinbase, status, market_error, limit_error
):
    """set_product_status: the products list shows the mode; forbidden orders are refused."""
    coinbase.set_product_status("SOL-USD", status)
    client.load_markets(reload=True)
    market = client.market("SOL/USD")
    assert market["info"][status] is True
    assert market["active"] is (status != "trading_disabled")
    with pytest.raises(ccxt.ExchangeError, match=market_error):
        client.create_order("SOL/USD", "market", "buy", 1, 150, cid("mm"))
    if limit_error is None:
        client.create_order("SOL/USD", "limit", "buy", 1, 140, cid("ll"))
    else:
        with pytest.raises(ccxt.ExchangeError, match=limit_error):
            client.create_order("SOL/USD", "limit", "buy", 1, 140, cid("ll"))
    with pytest.raises(ValueError, match="not a Coinbase product status"):
        coinbase.set_product_status("SOL-USD", "halted")


def test_nothing_fills_while_a_product_is_cancel_only(clock):
    """A resting market order waits out cancel_only, then fills when the product is online."""
    with running_coinbase(balances={"USD": "1000"}, fill_delay=1, time_source=clock.time) as cb:
        exchange = connect(cb)
        placed = exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("w"))
        cb.set_product_status("SOL-USD", "cancel_only")
        clock.advance(5)
        assert exchange.fetch_order(placed["id"])["filled"] == 0
        cb.set_product_status("SOL-USD", "online")
        assert exchange.fetch_order(placed["id"])["status"] == "closed"


def test_an_unknown_order_id_is_a_plain_exchange_error_not_order_not_found(client):
    """Get Order answers 404 {"error": "unknown"}; ccxt 4.5.90's broad match never fires."""
    with pytest.raises(ccxt.ExchangeError, match="order with this orderID was not found") as caught:
        client.fetch_order("00000000-0000-0000-0000-000000000000")
    assert type(caught.value) is ccxt.ExchangeError


def test_orders_are_listed_newest_first_with_filters_but_not_by_client_id(client, coinbase, clock):
    """List Orders filters by ids, product, status, side, dates; a client id must be scanned for."""
    a = client.create_order("SOL/USD", "market", "buy", 1, 150, cid("a"))
    clock.advance(1)
    b = client.create_order("BTC/USD", "limit", "buy", 0.01, 50000, cid("b"))
    assert [o["id"] for o in client.fetch_orders()] == [a["id"], b["id"]]  # ccxt sorts by time
    assert [o["id"] for o in client.fetch_orders("SOL/USD")] == [a["id"]]
    assert [o["id"] for o in client.fetch_closed_orders()] == [a["id"]]
    raw = client.v3PrivateGetBrokerageOrdersHistoricalBatch({"order_ids": [a["id"], b["id"]]})
    assert [o["client_order_id"] for o in raw["orders"]] == ["b", "a"]
    sells = client.v3PrivateGetBrokerageOrdersHistoricalBatch({"order_side": "SELL"})
    assert sells["orders"] == []
    after = client.v3PrivateGetBrokerageOrdersHistoricalBatch({"start_date": rfc3339(START + 0.5)})
    assert [o["client_order_id"] for o in after["orders"]] == ["b"]
    before = client.v3PrivateGetBrokerageOrdersHistoricalBatch({"end_date": rfc3339(START + 0.5)})
    assert [o["client_order_id"] for o in before["orders"]] == ["a"]
    paged = client.v3PrivateGetBrokerageOrdersHistoricalBatch({"limit": 1})
    assert (paged["has_next"], paged["cursor"]) == (True, "1")
    ignored = client.v3PrivateGetBrokerageOrdersHistoricalBatch({"client_order_id": "a"})
    assert len(ignored["orders"]) == 2  # no such filter on Coinbase: scan client_order_id
    with pytest.raises(ccxt.BadRequest, match="INVALID_ARGUMENT"):
        client.v3PrivateGetBrokerageOrdersHistoricalBatch({"order_status": "DONE"})


def test_any_order_status_can_be_forced(client, coinbase, clock):
    """set_order_status: FAILED (ccxt: 'canceled') or PENDING forever, by id or client id."""
    placed = client.create_order("SOL/USD", "limit", "buy", 1, 100, cid("forced"))
    coinbase.set_order_status("forced", "FAILED")
    assert client.fetch_order(placed["id"])["status"] == "canceled"
    coinbase.set_order_status(placed["id"], "PENDING")
    clock.advance(100)
    assert client.fetch_order(placed["id"])["status"] == "PENDING"
    with pytest.raises(ValueError, match="not a Coinbase order status"):
        coinbase.set_order_status("forced", "DONE")
    with pytest.raises(KeyError):
        coinbase.set_order_status("nobody", "OPEN")


def test_market_orders_can_be_left_resting(client, coinbase):
    """set_fill_market_orders(False): new market orders stay OPEN and hold their funds."""
    coinbase.set_fill_market_orders(fill=False)
    placed = client.create_order("SOL/USD", "market", "buy", 2, 150, cid("rest"))
    assert client.fetch_open_orders()[0]["id"] == placed["id"]
    assert coinbase.holds() == {"USD": Decimal(300)}


# --------------------------------------------------------------------------- authentication


def test_a_wrong_secret_or_key_is_refused_with_401(coinbase):
    """HMAC: CB-ACCESS-SIGN over timestamp+method+path+body; a 401 is an AuthenticationError."""
    for config in ({"secret": "not-the-secret"}, {"apiKey": "someone-else"}):
        exchange = ccxt.coinbase({**config, "enableRateLimit": False})
        exchange.apiKey = config.get("apiKey", DEFAULT_API_KEY)
        exchange.secret = config.get("secret", DEFAULT_API_SECRET)
        exchange.urls["api"] = {"rest": coinbase.url}
        with pytest.raises(ccxt.AuthenticationError, match="401 Unauthorized"):
            exchange.load_markets()  # the signed fee-tier call fails, so load_markets does
        with pytest.raises(ccxt.AuthenticationError, match="authentication_error"):
            exchange.v2PrivateGetAccounts()  # v2 answers in its own error shape
    assert coinbase.count("brokerage/transaction_summary") == 0
    assert coinbase.refusals() == {"UNAUTHORIZED": 4}


def _es256_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def _ed25519_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(seed + public).decode()  # 88 characters: ccxt signs EdDSA


@pytest.mark.parametrize(
    ("api_key", "make_secret", "scheme"),
    [
        ("organizations/org-1/apiKeys/key-1", _es256_key, "es256"),
        ("5c1f9f7e-cdp-key-id", _ed25519_key, "eddsa"),
    ],
)
def test_cdp_jwt_keys_are_verified(clock, api_key, make_secret, scheme):
    """CDP keys: a Bearer JWT naming this request, signed by the configured key, is accepted."""
    secret = make_secret()
    with running_coinbase(api_key=api_key, api_secret=secret, time_source=clock.time) as cb:
        assert cb.scheme == scheme
        exchange = connect(cb, apiKey=api_key, secret=secret)
        placed = exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("jwt"))
        assert exchange.fetch_order(placed["id"])["status"] == "closed"
        impostor = ccxt.coinbase({"apiKey": api_key, "secret": make_secret()})
        impostor.urls["api"] = {"rest": cb.url}
        with pytest.raises(ccxt.AuthenticationError):
            impostor.fetch_balance({"v3": True})
        assert cb.refusals() == {"UNAUTHORIZED": 1}


def test_a_jwt_is_refused_for_another_request_or_without_a_bearer(clock):
    """The token's uri names method and path; a token replayed elsewhere is refused."""
    api_key, secret = "organizations/org-1/apiKeys/key-1", _es256_key()
    with running_coinbase(api_key=api_key, api_secret=secret, time_source=clock.time) as cb:
        exchange = connect(cb, apiKey=api_key, secret=secret)
        token = exchange.create_auth_token(
            int(time.time()), "GET", cb.url + "/api/v3/brokerage/time"
        )
        for headers in (
            {"Authorization": f"Bearer {token}"},
            {"Authorization": "Bearer not.a.jwt"},
            {"Authorization": "Basic abc"},
        ):
            answer = http(cb.url + "/api/v3/brokerage/accounts", headers)
            assert answer == (401, b"Unauthorized\n")
    other_curve = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="P-256"):
        CoinbaseEmulator(api_key=api_key, api_secret=other_curve.decode())


def _jwt(secret: str, header: dict, claims: dict) -> str:
    """A JWT signed with the ES256 key in `secret` (as ccxt signs: r || s, base64url)."""
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: PLC0415
        decode_dss_signature,
    )

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(claims).encode())}"
    key = serialization.load_pem_private_key(secret.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{part(r.to_bytes(32) + s.to_bytes(32))}"


CDP_KEY = "organizations/org-1/apiKeys/key-1"
GOOD_HEADER = {"alg": "ES256", "typ": "JWT", "kid": CDP_KEY, "nonce": "n0nce"}
GOOD_CLAIMS = {
    "aud": ["retail_rest_api_proxy"],
    "iss": "coinbase-cloud",
    "sub": CDP_KEY,
    "uri": "GET api.coinbase.com/api/v3/brokerage/accounts",
}


@pytest.mark.parametrize(
    ("header", "claims", "accepted"),
    [
        ({}, {}, True),
        ({"alg": "HS256"}, {}, False),
        ({"kid": "someone-else"}, {}, False),
        ({"nonce": ""}, {}, False),
        ({}, {"sub": "someone-else"}, False),
        ({}, {"iss": "cdp"}, False),
        ({}, {"aud": ["cdp_service"]}, False),
        ({}, {"uri": "POST api.coinbase.com/api/v3/brokerage/accounts"}, False),
        ({}, {"uri": None}, False),
    ],
)
def test_each_jwt_header_and_claim_is_checked(clock, header, claims, accepted):
    """alg, kid, nonce, sub, iss, aud and uri must be what ccxt writes for this request."""
    secret = _es256_key()
    with running_coinbase(api_key=CDP_KEY, api_secret=secret, time_source=clock.time) as cb:
        token = _jwt(secret, {**GOOD_HEADER, **header}, {**GOOD_CLAIMS, **claims})
        status, _ = http(
            cb.url + "/api/v3/brokerage/accounts", {"Authorization": f"Bearer {token}"}
        )
        assert status == (200 if accepted else 401)


def test_a_token_without_a_validity_window_fails_a_skew_check(clock):
    """With max_clock_skew_s set, a JWT must carry numeric nbf and exp."""
    secret = _es256_key()
    with running_coinbase(
        api_key=CDP_KEY, api_secret=secret, max_clock_skew_s=30, time_source=clock.time
    ) as cb:
        for claims, status in (
            (GOOD_CLAIMS, 401),
            ({**GOOD_CLAIMS, "nbf": START, "exp": START + 120}, 200),
        ):
            token = _jwt(secret, GOOD_HEADER, claims)
            answer = http(
                cb.url + "/api/v3/brokerage/accounts", {"Authorization": f"Bearer {token}"}
            )
            assert answer[0] == status


def test_hmac_requests_need_the_key_a_timestamp_and_the_signature(coinbase):
    """A request without a CB-ACCESS-TIMESTAMP, or without a CB-ACCESS-SIGN, is refused."""
    for headers in (
        {"CB-ACCESS-KEY": DEFAULT_API_KEY},
        {"CB-ACCESS-KEY": DEFAULT_API_KEY, "CB-ACCESS-TIMESTAMP": "1"},
    ):
        assert http(coinbase.url + "/api/v3/brokerage/accounts", headers)[0] == 401
    assert coinbase.refusals() == {"UNAUTHORIZED": 2}
    assert coinbase.requests == []


def test_signature_times_are_checked_when_a_skew_is_set():
    """max_clock_skew_s: an HMAC timestamp or a JWT outside the window is refused."""
    clock = FakeClock(start=time.time())  # wall-clock-ok: ccxt signs with the wall clock
    with running_coinbase(max_clock_skew_s=30, time_source=clock.time) as cb:
        exchange = connect(cb)
        exchange.fetch_balance({"v3": True})
        clock.advance(60)
        with pytest.raises(ccxt.AuthenticationError):
            exchange.fetch_balance({"v3": True})
    api_key, secret = "organizations/org-1/apiKeys/key-1", _es256_key()
    clock = FakeClock(start=time.time())  # wall-clock-ok: as above
    with running_coinbase(
        api_key=api_key, api_secret=secret, max_clock_skew_s=5, time_source=clock.time
    ) as cb:
        exchange = connect(cb, apiKey=api_key, secret=secret)
        clock.advance(200)  # past exp (iat + 120)
        with pytest.raises(ccxt.AuthenticationError):
            exchange.fetch_balance({"v3": True})


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "raised"),
    [
        ("http:503", ccxt.ExchangeNotAvailable),
        ("http:500", ccxt.ExchangeNotAvailable),  # an HTML 500: ccxt's HTTP-status table
        ("http:429", ccxt.RateLimitExceeded),
        ("http:504", ccxt.RequestTimeout),
        ("unauthorized", ccxt.AuthenticationError),
        ("error:429:rate_limit_exceeded", ccxt.RateLimitExceeded),
        ("error:429:RESOURCE_EXHAUSTED", ccxt.ExchangeError),  # ccxt matches lower case only
        ("error:500:internal_server_error", ccxt.ExchangeError),  # JSON 500: not a NetworkError
        ("error:503:UNAVAILABLE", ccxt.ExchangeError),
        ("error:401:unauthorized", ccxt.AuthenticationError),
        ("error:403:PERMISSION_DENIED", ccxt.PermissionDenied),
        ("error:400:INVALID_ARGUMENT", ccxt.BadRequest),
        ("errors:429:rate_limit_exceeded", ccxt.RateLimitExceeded),
        ("errors:401:authentication_error:request timestamp expired", ccxt.AuthenticationError),
    ],
)
def test_each_fault_surfaces_as_the_ccxt_exception_ccxt_maps_it_to(client, coinbase, fault, raised):
    """A JSON error body is read before the HTTP status: the body decides the ccxt class."""
    coinbase.inject(fault, endpoint="brokerage/accounts")
    with pytest.raises(raised) as caught:
        client.fetch_balance({"v3": True})
    assert type(caught.value) is raised
    assert client.fetch_balance({"v3": True})["total"]["BTC"] == 0.5  # consumed


def test_faults_target_one_endpoint_or_any_and_can_be_cleared(client, coinbase):
    """An injected fault hits its endpoint (or the next request) `times` times, then is gone."""
    coinbase.inject("http:503", endpoint="brokerage/market/products/{product_id}/ticker", times=2)
    client.fetch_balance()
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            client.fetch_ticker("BTC/USD")
    client.fetch_ticker("BTC/USD")
    coinbase.inject("http:502")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_time()
    coinbase.inject("http:502", times=3)
    coinbase.clear_faults()
    client.fetch_time()


def test_a_slow_answer_times_the_client_out_then_serves_normally(clock):
    """slow:<s> sleeps in real seconds, then answers normally (or with the fault that follows)."""
    with running_coinbase(time_source=clock.time) as cb:
        exchange = connect(cb, timeout=200)
        cb.inject("slow:0.5", endpoint="brokerage/accounts")
        with pytest.raises(ccxt.RequestTimeout):
            exchange.fetch_balance({"v3": True})
        cb.inject("slow:0.01", endpoint="brokerage/accounts")
        assert exchange.fetch_balance({"v3": True})["total"]["USD"] == 100000
        cb.inject("slow:0.01:http:502", endpoint="brokerage/accounts")
        with pytest.raises(ccxt.ExchangeNotAvailable):
            exchange.fetch_balance({"v3": True})


def test_a_malformed_answer_is_silently_empty_or_not_a_ccxt_error(client, coinbase):
    """Malformed JSON: v2 balance parses as empty, v3 raises TypeError, create returns no id."""
    coinbase.inject("malformed", endpoint="accounts")
    assert client.fetch_balance()["total"] == {}
    coinbase.inject("malformed", endpoint="brokerage/accounts")
    with pytest.raises(TypeError):
        client.fetch_balance({"v3": True})
    coinbase.inject("malformed", endpoint="brokerage/orders")
    assert client.create_order("SOL/USD", "market", "buy", 1, 150, cid("mf"))["id"] is None
    assert coinbase.orders() == []


def test_an_empty_successful_answer_reads_as_nothing_held(client, coinbase):
    """empty_result: accounts [] with has_next false; create answers {} and executes nothing."""
    coinbase.inject("empty_result", endpoint="brokerage/accounts", times=2)
    raw = client.v3PrivateGetBrokerageAccounts()
    assert raw == {"accounts": [], "has_next": False, "cursor": "", "size": 0}
    assert client.fetch_balance({"v3": True})["total"] == {}
    coinbase.inject("empty_result", endpoint="brokerage/orders/historical/batch")
    assert client.fetch_open_orders() == []
    coinbase.inject("empty_result", endpoint="brokerage/orders")
    placed = client.create_order("SOL/USD", "market", "buy", 1, 150, cid("e1"))
    assert (placed["id"], placed["info"]) == (None, {})
    assert coinbase.orders() == []
    coinbase.inject("empty_result", endpoint="brokerage/orders/historical/{order_id}")
    assert client.fetch_order("anything")["id"] is None  # {} is not an error either


def test_omit_drops_accounts_orders_or_keys_from_one_answer(client, coinbase):
    """omit: the named currency's account, or a key of every order, is missing once."""
    coinbase.inject("omit:BTC", endpoint="brokerage/accounts")
    assert "BTC" not in client.fetch_balance({"v3": True})["total"]
    assert client.fetch_balance({"v3": True})["total"]["BTC"] == 0.5
    placed = client.create_order("SOL/USD", "market", "buy", 1, 150, cid("o1"))
    coinbase.inject("omit:filled_size", endpoint="brokerage/orders/historical/{order_id}")
    assert client.fetch_order(placed["id"])["filled"] is None
    coinbase.inject("omit:o1", endpoint="brokerage/orders/historical/batch")
    assert client.fetch_orders() == []
    with pytest.raises(ValueError, match="omit needs"):
        coinbase.inject("omit:")


def test_accept_then_executes_and_a_resend_with_the_same_client_id_finds_it(client, coinbase):
    """The safe retry on Coinbase: after a failed answer the same client_order_id finds it."""
    coinbase.inject("accept_then:http:504", endpoint="brokerage/orders")
    with pytest.raises(ccxt.RequestTimeout):
        client.create_order("SOL/USD", "market", "buy", 1, 150, cid("retry-me"))
    (executed,) = coinbase.orders()
    resent = client.create_order("SOL/USD", "market", "buy", 1, 150, cid("retry-me"))
    assert resent["id"] == executed["order_id"]
    assert len(coinbase.orders()) == 1
    assert coinbase.balances()["SOL"] == 1


def test_a_queued_create_is_invisible_until_the_engine_accepts_it(client, coinbase, clock):
    """delayed_accept: the create fails now; the order exists (and fills) only after the delay."""
    coinbase.inject("delayed_accept:1.5", endpoint="brokerage/orders")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.create_order("SOL/USD", "market", "buy", 1, 150, cid("late"))
    clock.advance(1.4)
    assert client.fetch_orders() == []
    assert [q["client_order_id"] for q in coinbase.queued()] == ["late"]
    clock.advance(0.1)
    (order,) = client.fetch_orders()
    assert (order["clientOrderId"], order["status"]) == ("late", "closed")
    assert order["timestamp"] == int((START + 1.5) * 1000)
    assert coinbase.queued() == []


def test_a_resend_with_the_same_client_id_makes_one_order_a_new_id_makes_two(
    client, coinbase, clock
):
    """Idempotency by client_order_id holds across the engine queue; a fresh id duplicates."""
    coinbase.inject("delayed_accept:2", endpoint="brokerage/orders", times=2)
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            client.create_order("SOL/USD", "market", "buy", 1, 150, cid("twice"))
    client.create_order("SOL/USD", "market", "buy", 1, 150, cid("twice"))
    clock.advance(2)
    assert [o["client_order_id"] for o in coinbase.orders()] == ["twice"]
    assert coinbase.refusals() == {"DUPLICATE_CLIENT_ORDER_ID": 2}
    coinbase.inject("delayed_accept:2", endpoint="brokerage/orders")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.create_order("SOL/USD", "market", "buy", 1, 150, cid("first-try"))
    client.create_order("SOL/USD", "market", "buy", 1, 150, cid("second-try"))
    clock.advance(2)
    assert coinbase.balances()["SOL"] == 3  # the blind resend bought twice


def test_a_client_timeout_in_front_of_a_queued_create(clock):
    """delayed_accept with a slow answer: the client times out, the order appears later."""
    with running_coinbase(time_source=clock.time) as cb:
        exchange = connect(cb, timeout=200)
        cb.inject("delayed_accept:3:slow:0.5", endpoint="brokerage/orders")
        with pytest.raises(ccxt.RequestTimeout):
            exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("t/o"))
        assert cb.orders() == []
        clock.advance(3)
        assert [o["client_order_id"] for o in cb.orders()] == ["t/o"]


def test_accept_delay_queues_every_create_behind_the_chosen_answer(clock):
    """The constructor form: every create waits accept_delay and answers delayed_answer."""
    with running_coinbase(
        accept_delay=2, delayed_answer="error:500:internal_server_error", time_source=clock.time
    ) as cb:
        exchange = connect(cb)
        for client_id in ("q1", "q2"):
            with pytest.raises(ccxt.ExchangeError, match="internal_server_error"):
                exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid(client_id))
        assert len(cb.queued()) == 2
        clock.advance(2)
        assert [o["client_order_id"] for o in cb.orders()] == ["q1", "q2"]


def test_a_queued_order_that_no_longer_fits_the_funds_is_dropped(clock):
    """The engine re-checks funds at acceptance; a dropped order only shows in refusals()."""
    with running_coinbase(balances={"USD": "200"}, time_source=clock.time) as cb:
        exchange = connect(cb)
        cb.inject("delayed_accept:1:empty_result", endpoint="brokerage/orders")
        assert exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("q"))["id"] is None
        exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("now"))
        clock.advance(1)
        assert [o["client_order_id"] for o in cb.orders()] == ["now"]
        assert cb.refusals() == {"PREVIEW_INSUFFICIENT_FUND": 1}


def test_a_delayed_accept_fault_on_a_read_only_answers(client, coinbase):
    """delayed_accept elsewhere than brokerage/orders serves only its answer fault."""
    coinbase.inject("delayed_accept:1:http:429", endpoint="brokerage/accounts")
    with pytest.raises(ccxt.RateLimitExceeded):
        client.fetch_balance({"v3": True})
    coinbase.inject("delayed_accept:1", endpoint="brokerage/accounts")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_balance({"v3": True})


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("delayed_accept:soon", "could not convert"),
        ("delayed_accept:-1", "needs a delay"),
        ("slow:-1", "needs a delay"),
        ("error:429", "needs a status and a code"),
        ("EService:Unavailable", "not a Coinbase emulator fault"),
        ("accept_then:teapot", "not a Coinbase emulator fault"),
    ],
)
def test_a_bad_fault_is_refused_when_injected(coinbase, fault, message):
    """inject() checks the fault string, so a typo fails in the test, not in the server."""
    with pytest.raises(ValueError, match=message):
        coinbase.inject(fault)


def test_bad_constructor_arguments_are_refused():
    """fill_parts, accounts_page_size, product status and delayed_answer are checked."""
    with pytest.raises(ValueError, match="fill_parts"):
        CoinbaseEmulator(fill_parts=0)
    with pytest.raises(ValueError, match="accounts_page_size"):
        CoinbaseEmulator(accounts_page_size=0)
    with pytest.raises(ValueError, match="not a Coinbase product status"):
        CoinbaseEmulator(
            products=(CoinbaseProduct("X-USD", "X", "USD", Decimal(1), Decimal(1), status="odd"),)
        )
    with pytest.raises(ValueError, match="not a Coinbase emulator fault"):
        CoinbaseEmulator(delayed_answer="busy")


def test_the_whole_api_goes_down_and_comes_back(client, coinbase):
    """set_down: HTML 503 everywhere (ExchangeNotAvailable), counted in stats()."""
    coinbase.set_down(True)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_balance()
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.create_order("SOL/USD", "market", "buy", 1, 150, cid("down"))
    coinbase.set_down(False)
    client.fetch_balance()
    assert coinbase.stats()["while_down"] == 2
    assert coinbase.orders() == []


def test_unknown_paths_and_bodies_answer_in_each_versions_shape(coinbase):
    """Unknown v3 paths: 404 {"error": "NOT_FOUND"}; v2: {"errors": [...]}; elsewhere too."""

    def get(path: str, data: bytes | None = None) -> tuple[int, dict]:
        status, body = http(coinbase.url + path, method="POST" if data else "GET", data=data)
        return status, json.loads(body)

    assert get("/api/v3/brokerage/nope") == (
        404,
        {"error": "NOT_FOUND", "error_details": "Not Found", "message": "Not Found"},
    )
    assert get("/v2/nope")[1] == {"errors": [{"id": "not_found", "message": "Not found"}]}
    assert get("/elsewhere")[0] == 404
    assert get("/api/v3/brokerage/market/products/DOGE-USD")[0] == 404
    assert get("/api/v3/brokerage/market/products/DOGE-USD/ticker")[0] == 404
    assert get("/api/v3/brokerage/orders", data=b"[1, 2]")[1]["error"] == "INVALID_ARGUMENT"
    assert get("/api/v3/brokerage/market/products/SOL-USD")[1]["base_increment"] == "0.00000001"


def test_private_twins_of_public_endpoints_and_single_accounts(client, coinbase):
    """brokerage/products[/{id}[/ticker]] and brokerage/accounts/{uuid} answer like the rest."""
    products = client.v3PrivateGetBrokerageProducts({"product_ids": ["SOL-USD"]})
    assert [p["product_id"] for p in products["products"]] == ["SOL-USD"]
    assert client.v3PrivateGetBrokerageProductsProductId({"product_id": "SOL-USD"})["price"]
    assert client.fetch_ticker("SOL/USD", {"usePrivate": True})["bid"] == 149.99
    accounts = client.v3PrivateGetBrokerageAccounts()["accounts"]
    btc = next(a for a in accounts if a["currency"] == "BTC")
    one = client.v3PrivateGetBrokerageAccountsAccountUuid({"account_uuid": btc["uuid"]})
    assert one["account"] == btc
    with pytest.raises(ccxt.ExchangeError, match="account not found"):
        client.v3PrivateGetBrokerageAccountsAccountUuid({"account_uuid": "nope"})
    with pytest.raises(ccxt.BadRequest):
        client.v3PrivateGetBrokerageAccounts({"limit": "many"})
    with pytest.raises(ccxt.ExchangeError, match="invalid_request"):
        client.v2PrivateGetAccounts({"limit": "0"})


def test_requests_can_go_unrecorded_and_are_still_counted(clock):
    """record_requests=False (load tests): no request list, but stats() still counts."""
    with running_coinbase(record_requests=False, time_source=clock.time) as cb:
        connect(cb).fetch_balance()
        assert cb.requests == []
        assert cb.stats()["requests"] >= 7


def test_the_url_needs_a_running_server():
    """Asking a stopped emulator for its URL is a clear error."""
    with pytest.raises(RuntimeError, match="not running"):
        _ = CoinbaseEmulator().url


def test_the_async_client_places_and_reads_orders():
    """ccxt.async_support.coinbase speaks to the same emulator."""

    async def scenario(url: str) -> tuple[dict, dict]:
        exchange = ccxt.async_support.coinbase(
            {"apiKey": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET, "enableRateLimit": False}
        )
        exchange.urls["api"] = {"rest": url}
        try:
            await exchange.load_markets()
            placed = await exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("aio"))
            again = await exchange.create_order("SOL/USD", "market", "buy", 1, 150, cid("aio"))
            assert again["id"] == placed["id"]
            return await exchange.fetch_order(placed["id"]), await exchange.fetch_balance(
                {"v3": True}
            )
        finally:
            await exchange.close()

    with running_coinbase(balances={"USD": "1000"}) as cb:
        order, balance = asyncio.run(scenario(cb.url))
    assert (order["status"], order["clientOrderId"], order["filled"]) == ("closed", "aio", 1)
    assert (balance["total"]["SOL"], balance["total"]["USD"]) == (1, 850)


def test_as_its_own_process_it_goes_down_and_up_on_the_admin_api():
    """`python -m brokerguard.sim.coinbase --admin`: one URL line, then 503s while down."""
    process = subprocess.Popen(
        [sys.executable, "-m", "brokerguard.sim.coinbase", "--port", "0", "--admin"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        def call(path: str, method: str = "GET") -> tuple[int, bytes]:
            return http(url + path, method=method, data=b"" if method == "POST" else None)

        assert call("/v2/time")[0] == 200
        call("/admin/down", "POST")
        assert [call("/api/v3/brokerage/time")[0] for _ in range(3)] == [503, 503, 503]
        call("/admin/up", "POST")
        assert call("/api/v3/brokerage/time")[0] == 200
        assert json.loads(call("/admin/stats")[1]) == {
            "down": False,
            "requests": 5,
            "while_down": 3,
        }
        assert call("/admin/other")[0] == 404
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()
