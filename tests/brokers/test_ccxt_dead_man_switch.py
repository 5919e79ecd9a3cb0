"""The dead man's switch on Kraken through the real ccxt client: armed, refreshed, fired."""

from __future__ import annotations

import pytest

from brokerguard.brokers.ccxt import CcxtBroker, NonceSource
from brokerguard.models import OrderStatus
from brokerguard.sim.kraken import running_kraken

from .test_order_truth import client


@pytest.fixture
def kraken(clock):
    balances = {"ZUSD": "10000", "XXBT": "0.5"}
    with running_kraken(balances=balances, time_source=clock.time) as emulator:
        yield emulator


def test_kraken_cancels_resting_orders_when_the_switch_is_not_refreshed(kraken, clock):
    """Armed for 60 s through CancelAllOrdersAfter; refreshed it holds; left alone it fires."""
    broker = CcxtBroker(client(kraken), clock=clock, nonce_source=NonceSource(clock))
    assert broker.has_dead_man_switch
    price = broker.get_current_price("BTC/USD")
    broker.place_order(
        "BTC/USD", "buy", "0.01", order_type="limit", price=price / 2, client_order_id="rest-1"
    )
    trigger = broker.arm_dead_man_switch(60)
    assert trigger == pytest.approx(clock.time() + 60, abs=1.5)
    assert kraken.dead_man_switch.armed
    clock.advance(50)
    broker.arm_dead_man_switch(60)
    clock.advance(50)
    assert broker.get_order("rest-1").status is OrderStatus.OPEN
    clock.advance(15)
    assert broker.get_order("rest-1").status is OrderStatus.CANCELED
    assert broker.arm_dead_man_switch(0) is None
    assert not kraken.dead_man_switch.armed
