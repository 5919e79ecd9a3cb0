"""Dust (issue 12, item 10): what no order can sell is never picked, and never halts an account."""

from __future__ import annotations

from decimal import Decimal

import ccxt
import pytest

from brokerguard import PositionCapEnforcer, TradingGate
from brokerguard.brokers.ccxt import CcxtBroker, NonceSource
from brokerguard.sim.kraken import DEFAULT_API_KEY, DEFAULT_API_SECRET, running_kraken
from brokerguard.store import open_store


@pytest.fixture
def broker(clock):
    # 1e-8 BTC is below Kraken's ordermin (0.0001): an order for it is refused.
    balances = {"ZUSD": "10000", "XXBT": "0.00000001", "XETH": "2", "SOL": "10"}
    with running_kraken(balances=balances, time_source=clock.time) as emulator:
        exchange = ccxt.kraken(
            {"apiKey": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET, "enableRateLimit": False}
        )
        exchange.urls["api"] = {"public": emulator.url, "private": emulator.url}
        yield CcxtBroker(exchange, clock=clock, nonce_source=NonceSource(clock))


def test_dust_takes_no_slot_and_is_reported(broker, clock):
    """Cap 2 with ETH, SOL and 1e-8 BTC: compliant, BTC reported as dust, nothing sold."""
    store = open_store("sqlite://", clock=clock)
    ok, result = PositionCapEnforcer(broker, 2, store=store).enforce_cap()
    assert ok, result["reason"]
    assert result["dust"] == ["BTC/USD"]
    assert result["orders"] == []
    gate = TradingGate(broker, 3, store=store)
    assert gate.check_entry("LTC/USD").allowed  # 2 real positions for a cap of 3


def test_counted_dust_is_never_picked_the_next_smallest_sellable_is(broker, clock):
    """count_dust=True: over the cap by one; SOL (sellable) is sold, not the dust, and no halt.

    The old enforcer picked the 1e-8 BTC every cycle, Kraken refused it every time
    (EOrder:Order minimum not met), and the account was halted although selling SOL would
    have cleared the excess.
    """
    store = open_store("sqlite://", clock=clock)
    enforcer = PositionCapEnforcer(broker, 2, store=store, count_dust=True)
    ok, result = enforcer.enforce_cap()
    assert result["trading_halted"] is False
    assert result["liquidated"] == ["SOL/USD"]
    assert ok, result["reason"]
    assert {p.symbol for p in broker.get_positions()} == {"BTC/USD", "ETH/USD"}


def test_the_venues_minimums_come_from_its_market_data(broker):
    """Kraken's AssetPairs ordermin and costmin, as ccxt's market limits."""
    broker.get_positions()
    minimums = broker.order_minimums("BTC/USD")
    assert minimums is not None
    assert (minimums.quantity, minimums.value) == (Decimal("0.0001"), Decimal("0.5"))
    assert broker.is_dust("BTC/USD", Decimal("0.00005"))
    assert broker.is_dust("SOL/USD", Decimal("0.001"), Decimal(150))  # worth 0.15 < 0.5
    assert not broker.is_dust("SOL/USD", Decimal(1), None)
    assert broker.order_minimums("NOPE/USD") is None
