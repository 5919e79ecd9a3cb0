"""The Kraken emulator behaves like Kraken where brokerguard depends on it."""

from __future__ import annotations

import base64
import json
import urllib.request
from decimal import Decimal

import ccxt
import pytest

from brokerguard.sim.kraken import DEFAULT_API_KEY, DEFAULT_API_SECRET, running_kraken


@pytest.fixture
def kraken():
    with running_kraken(balances={"ZUSD": "1000", "XXBT": "0.1"}) as emulator:
        yield emulator


@pytest.fixture
def client(kraken) -> ccxt.kraken:
    exchange = ccxt.kraken(
        {"apiKey": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET, "enableRateLimit": False}
    )
    exchange.urls["api"] = {"public": kraken.url, "private": kraken.url}
    exchange.load_markets()
    return exchange


def test_markets_and_currencies_load_into_unified_symbols(client):
    """Kraken's X/Z asset ids come out as ccxt's BTC/USD, ETH/USD, SOL/USD."""
    assert {"BTC/USD", "ETH/USD", "SOL/USD"} <= set(client.markets)
    assert client.markets["BTC/USD"]["id"] == "XXBTZUSD"


def test_ticker_reports_prices_as_strings_in_kraken_shape(client, kraken):
    """Prices travel as strings; ccxt parses 'c' (last trade) into `last`."""
    kraken.set_price("XXBTZUSD", "70000.5")
    assert client.fetch_ticker("BTC/USD")["last"] == 70000.5


def test_open_orders_stay_open_and_can_be_cancelled(client, kraken):
    """With fills off, a market order rests open, shows in OpenOrders and cancels."""
    kraken.set_fill_market_orders(fill=False)
    placed = client.create_order("BTC/USD", "market", "sell", "0.05", None, {"clientOrderId": "c1"})
    assert client.fetch_open_orders(params={"clientOrderId": "c1"})[0]["id"] == placed["id"]
    assert client.fetch_order(placed["id"])["status"] == "open"
    client.cancel_order(placed["id"])
    assert client.fetch_open_orders() == []
    assert client.fetch_closed_orders()[0]["status"] == "canceled"


def test_cl_ord_id_is_unique_only_among_open_orders(client, kraken):
    """Like Kraken: a duplicate open cl_ord_id is refused; once closed, the id can be reused."""
    kraken.set_fill_market_orders(fill=False)
    client.create_order("BTC/USD", "market", "buy", "0.001", None, {"clientOrderId": "dup"})
    with pytest.raises(ccxt.ExchangeError, match="Duplicate order"):
        client.create_order("BTC/USD", "market", "buy", "0.001", None, {"clientOrderId": "dup"})
    kraken.set_fill_market_orders(fill=True)
    open_order = client.fetch_open_orders()[0]
    client.cancel_order(open_order["id"])
    client.create_order("BTC/USD", "market", "buy", "0.001", None, {"clientOrderId": "dup"})
    assert [o["cl_ord_id"] for o in kraken.orders()] == ["dup", "dup"]


def test_fills_move_balances_and_funds_are_checked(client, kraken):
    """A buy spends quote currency; one beyond the free balance is refused."""
    client.create_order("SOL/USD", "market", "buy", "2", None, {"clientOrderId": "b"})
    assert kraken.balances()["SOL"] == Decimal(2)
    assert kraken.balances()["ZUSD"] == Decimal(700)
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order("BTC/USD", "market", "buy", "1", None, {"clientOrderId": "big"})
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order("BTC/USD", "market", "sell", "1", None, {"clientOrderId": "short"})


def test_a_replayed_nonce_is_refused(client):
    """Nonces must increase per key: replaying one is EAPI:Invalid nonce."""
    client.incrementing_nonce = lambda: 5  # bypass ccxt's own per-instance counter
    client.fetch_balance()
    with pytest.raises(ccxt.InvalidNonce):
        client.fetch_balance()


def test_a_wrong_signature_or_key_is_refused(kraken):
    """Private calls need the right API-Key and a valid API-Sign."""
    wrong = ccxt.kraken(
        {
            "apiKey": DEFAULT_API_KEY,
            "secret": base64.b64encode(b"not the secret").decode(),
            "enableRateLimit": False,
        }
    )
    wrong.urls["api"] = {"public": kraken.url, "private": kraken.url}
    wrong.load_markets()
    with pytest.raises(ccxt.ExchangeError, match="Invalid signature"):
        wrong.fetch_balance()
    other = ccxt.kraken({"apiKey": "nope", "secret": DEFAULT_API_SECRET, "enableRateLimit": False})
    other.urls["api"] = {"public": kraken.url, "private": kraken.url}
    other.load_markets()
    with pytest.raises(ccxt.AuthenticationError):
        other.fetch_balance()
    assert kraken.count("BalanceEx") == 0  # refused before being served


def test_faults_target_one_endpoint_and_are_consumed(client, kraken):
    """An injected fault hits the next call to its endpoint only, then is gone."""
    kraken.inject("EService:Busy", endpoint="Ticker", times=2)
    client.fetch_balance()
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            client.fetch_ticker("BTC/USD")
    client.fetch_ticker("BTC/USD")
    kraken.inject("EService:Unavailable")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_time()
    kraken.inject("EService:Unavailable", times=3)
    kraken.clear_faults()
    client.fetch_time()


def test_unknown_paths_answer_in_the_envelope(kraken):
    """Anything outside the API answers with a Kraken error, never a crash."""
    with urllib.request.urlopen(f"{kraken.url}/0/public/Nope") as response:  # noqa: S310 (loopback)
        assert json.loads(response.read()) == {"error": ["EGeneral:Unknown method"]}
    with urllib.request.urlopen(f"{kraken.url}/elsewhere") as response:  # noqa: S310
        assert json.loads(response.read())["error"] == ["EGeneral:Unknown method"]


def test_the_url_needs_a_running_server():
    """Asking a stopped emulator for its URL is a clear error."""
    from brokerguard.sim.kraken import KrakenEmulator  # noqa: PLC0415

    with pytest.raises(RuntimeError, match="not running"):
        _ = KrakenEmulator().url


def test_with_a_fill_delay_an_order_rests_open_then_fills_and_refusals_are_counted():
    """fill_delay: open until that much (emulator) time passed; refusals are tallied."""
    now = [1_800_000_000.0]
    with running_kraken(
        balances={"ZUSD": "1000", "XXBT": "0.1"}, fill_delay=2.0, time_source=lambda: now[0]
    ) as kraken:
        exchange = ccxt.kraken(
            {"apiKey": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET, "enableRateLimit": False}
        )
        exchange.urls["api"] = {"public": kraken.url, "private": kraken.url}
        exchange.load_markets()
        exchange.create_order("BTC/USD", "market", "sell", "0.1", None, {"clientOrderId": "s1"})
        assert exchange.fetch_open_orders(params={"clientOrderId": "s1"})[0]["status"] == "open"
        with pytest.raises(ccxt.InsufficientFunds):  # the open sell holds the whole balance
            exchange.create_order("BTC/USD", "market", "sell", "0.1", None, {})
        now[0] += 2.0
        assert exchange.fetch_closed_orders(params={"clientOrderId": "s1"})[0]["filled"] == 0.1
        assert kraken.balances()["XXBT"] == 0
        kraken.credit("XXBT", "0.25")
        assert exchange.fetch_balance()["total"]["BTC"] == 0.25
        assert kraken.refusals() == {"EOrder:Insufficient funds": 1}


def test_as_its_own_process_it_goes_down_and_up_on_the_admin_api():
    """`python -m brokerguard.sim --admin`: one URL line, then 503s while down, counted."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    process = subprocess.Popen(
        [sys.executable, "-m", "brokerguard.sim", "--port", "0", "--admin"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        def call(path: str, method: str = "GET") -> tuple[int, bytes]:
            request = urllib.request.Request(  # noqa: S310 (loopback)
                url + path, method=method, data=b"" if method == "POST" else None
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
                    return answer.status, answer.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert call("/0/public/Time")[0] == 200
        call("/admin/down", "POST")
        assert [call("/0/public/Time")[0] for _ in range(3)] == [503, 503, 503]
        call("/admin/up", "POST")
        assert call("/0/public/Time")[0] == 200
        stats = json.loads(call("/admin/stats")[1])
        assert stats == {"down": False, "requests": 5, "while_down": 3}
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()
