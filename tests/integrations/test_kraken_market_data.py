"""The Kraken emulator's market data, as freqtrade reads it through the real ccxt.kraken client.

freqtrade 2026.9 needs ``OHLC`` (its candles), ``Depth`` (entry and exit prices from the order
book) and, for some features, ``Trades`` and ``SystemStatus``. The candles come from the prices
the test sets, so a strategy sees what the emulator trades at.
"""

from __future__ import annotations

import ccxt
import pytest

from brokerguard.sim.kraken import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    MARKET_VOLUME,
    OHLC_MAX,
    running_kraken,
)
from brokerguard.testing import FakeClock

START = 1_800_000_000.0  # a whole minute: candles start on it


@pytest.fixture
def clock():
    return FakeClock(start=START)


@pytest.fixture
def kraken(clock):
    with running_kraken(balances={"ZUSD": "10000"}, time_source=clock.time) as emulator:
        yield emulator


@pytest.fixture
def client(kraken) -> ccxt.kraken:
    exchange = ccxt.kraken(
        {"apiKey": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET, "enableRateLimit": False}
    )
    exchange.urls["api"] = {"public": kraken.url, "private": kraken.url}
    exchange.load_markets()
    return exchange


def test_ohlc_candles_follow_the_prices_set(client, kraken, clock):
    """A move inside a minute shows in that candle's high, low and close; the next opens there."""
    clock.advance(60 + 10)
    kraken.set_price("XXBTZUSD", "66000")
    clock.advance(20)
    kraken.set_price("XXBTZUSD", "64000")
    clock.advance(60)
    candles = client.fetch_ohlcv("BTC/USD", "1m", since=int(START * 1000))
    by_time = {int(c[0] / 1000): c[1:] for c in candles}
    assert by_time[START] == [65000.0, 65000.0, 65000.0, 65000.0, float(MARKET_VOLUME)]
    assert by_time[START + 60] == [65000.0, 66000.0, 64000.0, 64000.0, float(MARKET_VOLUME)]
    assert by_time[START + 120][0] == 64000.0  # the open candle of now
    assert max(by_time) == START + 120


def test_ohlc_volume_counts_the_accounts_own_fills(client, kraken, clock):
    """A fill adds its volume to the candle it happened in."""
    client.create_order("ETH/USD", "market", "buy", 0.5)
    candles = client.fetch_ohlcv("ETH/USD", "1m", since=int((START - 60) * 1000))
    assert candles[-1][5] == float(MARKET_VOLUME) + 0.5


def test_ohlc_answers_at_most_720_candles_and_only_kraken_intervals(client, kraken, clock):
    """Kraken keeps 720 candles per interval and refuses intervals it does not have."""
    clock.advance(2000 * 60)
    candles = client.fetch_ohlcv("SOL/USD", "1m")
    assert len(candles) == OHLC_MAX
    with pytest.raises(ccxt.ExchangeError):
        client.public_get_ohlc({"pair": "SOLUSD", "interval": 2})
    with pytest.raises(ccxt.ExchangeError):
        client.public_get_ohlc({"pair": "NOPEUSD", "interval": 1})


def test_the_order_book_is_the_tickers_ask_and_bid(client):
    """Depth shows one level each side, where the Ticker quotes them."""
    book = client.fetch_order_book("BTC/USD")
    ticker = client.fetch_ticker("BTC/USD")
    assert book["asks"][0][0] == ticker["ask"]
    assert book["bids"][0][0] == ticker["bid"]
    assert book["asks"][0][1] == 1.0
    with pytest.raises(ccxt.ExchangeError):
        client.public_get_depth({"pair": "NOPEUSD"})


def test_public_trades_are_the_accounts_executions(client, kraken, clock):
    """Trades lists this account's fills in the pair, oldest first, after `since`."""
    assert client.fetch_trades("SOL/USD") == []
    client.create_order("SOL/USD", "market", "buy", 2)
    clock.advance(5)
    client.create_order("SOL/USD", "market", "sell", 1)
    trades = client.fetch_trades("SOL/USD")
    assert [(t["side"], t["amount"], t["price"]) for t in trades] == [
        ("buy", 2.0, 150.0),
        ("sell", 1.0, 150.0),
    ]
    later = client.fetch_trades("SOL/USD", since=int((START + 1) * 1000))
    assert [t["side"] for t in later] == ["sell"]


def test_system_status_is_online_while_the_api_answers(client, kraken):
    """SystemStatus says online; a down API answers 503 before it."""
    assert client.fetch_status()["status"] == "ok"
    kraken.set_down(True)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_status()
