"""Adversarial tests: a hostile exchange and a careless bot against the order lifecycle.

Odd corners: memory limits, time limits, careless bot code, hostile client-library crashes,
holdings the venue will not let us sell, nonce refusals.
"""

from __future__ import annotations

from contextlib import suppress

import pytest

from brokerguard import OrderUnconfirmedError, PositionCapEnforcer, TradingGate
from brokerguard.brokers.ccxt import CcxtBroker, NonceSource
from brokerguard.errors import BrokerGuardError
from brokerguard.risk import ORDER_UNRESOLVED
from brokerguard.sim.kraken import running_kraken
from brokerguard.store import open_store


def test_an_unresolved_order_is_never_forgotten_to_make_room(
    broker, kraken, clock, executed, monkeypatch
):
    """An order of unknown outcome is never evicted from the bounded memory of sent ids.

    Shown with the memory shrunk from 100 000 to 3 ids: the gate keeps its symbol blocked and
    the same id is not resent.
    """
    monkeypatch.setattr("brokerguard.brokers.base._REMEMBERED_ORDER_IDS", 3)
    broker.get_positions()
    gate = TradingGate(broker, 10, store=open_store("sqlite://", clock=clock))
    kraken.inject("delayed_accept:5:EService:Unavailable", endpoint="AddOrder")
    with pytest.raises(OrderUnconfirmedError):
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="rt-evict-1")
    for i in range(3):  # ordinary traffic
        broker.place_market_order("ETH/USD", "buy", "0.01", client_order_id=f"rt-evict-x{i}")

    decision = gate.check_entry("SOL/USD")
    with suppress(BrokerGuardError):  # the bot's retry with the same id
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="rt-evict-1")
    clock.advance(6)
    assert executed("rt-evict-1") == 1, "the forgotten order was resent and both executed"
    assert decision.code == ORDER_UNRESOLVED, decision.reason


def test_a_live_entry_order_keeps_its_slot_past_the_ttl(client_factory, clock):
    """An entry whose order still rests open at the venue keeps its slot past pending_entry_ttl."""
    with running_kraken(balances={"ZUSD": "100000", "XXBT": "0.5"}, time_source=clock.time) as k:
        broker = CcxtBroker(client_factory(k), clock=clock, nonce_source=NonceSource(clock))
        gate = TradingGate(broker, 2, store=open_store("sqlite://", clock=clock))
        k.set_fill_market_orders(fill=False)
        with gate.reserve_entry("SOL/USD"):
            order = broker.place_market_order("SOL/USD", "buy", "1", client_order_id="rt-ttl-1")
        clock.advance(601)
        assert broker.get_order("rt-ttl-1").status.value == "open"  # still live
        decision = gate.check_entry("ETH/USD")
    assert order.status.value == "open"
    assert not decision.allowed, decision.reason


def test_a_bug_in_the_bot_before_any_order_leaks_the_slot_for_the_ttl(broker, clock):
    """A plain exception in the block before any order keeps the slot for pending_entry_ttl.

    Fail-closed, though surprising: nothing was sent, yet the slot is held as if an order had
    filled, for 600 s.
    """
    broker.get_positions()  # BTC, ETH, SOL held
    gate = TradingGate(broker, 4, store=open_store("sqlite://", clock=clock))
    with suppress(ValueError), gate.reserve_entry("DOGE/USD"):
        raise ValueError("bug in the bot's sizing code")
    assert gate.check_entry("ADA/USD").code == "POSITION_CAP_REACHED"
    clock.advance(601)
    assert gate.check_entry("ADA/USD").allowed


def test_a_client_library_crash_in_the_gate_never_allows_an_entry(broker, clock):
    """A plain TypeError from ccxt on a hostile balance payload never yields an allowed entry.

    Surprising: check_entry raises the raw TypeError instead of answering POSITIONS_UNKNOWN
    (TradingGate._fresh_snapshot catches only BrokerGuardError).
    """
    gate = TradingGate(broker, 5, store=open_store("sqlite://", clock=clock))

    def boom(*args, **kwargs):
        raise TypeError("'NoneType' object is not subscriptable")

    broker.exchange.fetch_balance = boom
    try:
        decision = gate.check_entry("DOGE/USD")
    except TypeError:
        return  # the bot gets the raw TypeError
    assert not decision.allowed


def test_suffixed_holdings_the_venue_cannot_sell_end_in_a_halt(client_factory, clock):
    """Holdings the venue refuses to sell (staked BTC summed into BTC/USD) end in a halt.

    Fail-closed, though surprising: Earn/staked BTC (XBT.F) counts toward the cap and is summed
    into BTC/USD; the enforcer sells the SUM, which Kraken refuses (only the spot part is free),
    every cycle, although selling the spot part or another position would restore the cap.
    """
    balances = {"ZUSD": "100000", "XXBT": "0.001", "XBT.F": "0.002", "XETH": "2", "SOL": "10"}
    with running_kraken(balances=balances, time_source=clock.time) as k:
        broker = CcxtBroker(client_factory(k), clock=clock, nonce_source=NonceSource(clock))
        ok, result = PositionCapEnforcer(
            broker, 2, store=open_store("sqlite://", clock=clock), settle_timeout=0.5
        ).enforce_cap()
        refusals = k.refusals()
    assert not ok
    assert result["trading_halted"]
    assert refusals.get("EOrder:Insufficient funds", 0) == 3


def test_a_burst_of_nonce_refusals_leads_our_nonces_by_at_most_a_minute(broker, kraken, nonces):
    """Twenty refused nonces in a row push our nonces at most a minute ahead, not hours."""
    kraken.inject("EAPI:Invalid nonce", times=20)
    with suppress(BrokerGuardError):
        broker.get_positions()
    with suppress(BrokerGuardError):
        broker.get_positions()
    kraken.clear_faults()
    broker.read_breaker.force_closed()
    broker.get_positions()  # our own calls work again

    assert nonces.offset_ms <= nonces.max_offset_ms == 32_000  # the 5 re-syncs' reach


def test_a_burst_of_nonce_refusals_does_not_lock_other_clients_out_of_the_key(
    broker, kraken, nonces, client_factory
):
    """After a burst of refused nonces, a client on the key a minute ahead is still accepted."""
    kraken.inject("EAPI:Invalid nonce", times=20)
    with suppress(BrokerGuardError):
        broker.get_positions()
    with suppress(BrokerGuardError):
        broker.get_positions()
    kraken.clear_faults()
    broker.read_breaker.force_closed()
    broker.get_positions()  # our own calls work again
    other = client_factory(kraken)  # the bot's plain ccxt client on the same key
    other.nonce = lambda: int(broker.clock.time() * 1000) + 60_000  # even a minute ahead

    assert nonces.offset_ms < 3_600_000, f"our nonces run {nonces.offset_ms / 3.6e6:.0f} h ahead"
    other.fetch_balance()
