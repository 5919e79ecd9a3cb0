"""The guard on ``ccxt.async_support`` exchanges: the same rules, awaited.

The guarded coroutines run brokerguard's logic in a worker thread and await each raw call on
the test's event loop; these tests drive the real async clients against both emulators.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import ccxt
import ccxt.async_support
import pytest

from brokerguard.ccxt import CircuitOpen, EntryRefused, OrderUnresolved, guard
from brokerguard.errors import ConfigurationError
from brokerguard.risk.gate import ORDER_UNRESOLVED, POSITION_CAP_REACHED, POSITIONS_UNKNOWN
from tests.ccxt.conftest import Venue, run


def guarded_async(venue: Venue, **options: Any) -> Any:
    options.setdefault("nonce_source", venue.nonces)
    options.setdefault("max_positions", 8)
    return guard(venue.bare_async(), state_url="sqlite://", clock=venue.clock, **options)


def test_a_guarded_async_exchange_is_its_class_with_coroutine_methods(venue):
    """An instance of the async class; guarded methods and their aliases are coroutines."""

    async def scenario() -> None:
        g = guarded_async(venue)
        try:
            assert isinstance(g, getattr(ccxt.async_support, venue.name))
            assert type(g).createOrder is type(g).create_order
            assert inspect.iscoroutinefunction(g.create_order)
            assert inspect.iscoroutinefunction(g.fetchBalance)
        finally:
            await g.close()

    run(scenario)


def test_reads_writes_and_cancels_work_awaited(venue):
    """Balance, tickers, a market and a limit order, open orders, a verified cancel."""

    async def scenario() -> None:
        g = guarded_async(venue)
        try:
            balance = await g.fetch_balance()
            assert balance["total"]["BTC"] == 0.5
            assert set(await g.fetchTickers(["BTC/USD", "ETH/USD"])) == {"BTC/USD", "ETH/USD"}
            assert (await g.fetch_positions())[0]["symbol"] == "BTC/USD"
            bought = await g.createOrder("SOL/USD", "market", "buy", 1, 150)
            assert (await g.fetch_order(bought["id"], "SOL/USD"))["status"] == "closed"
            resting = await g.create_limit_buy_order("ETH/USD", 0.1, 3000, {"clientOrderId": "a1"})
            assert [o["clientOrderId"] for o in await g.fetch_open_orders()] == ["a1"]
            cancelled = await g.cancel_order(resting["id"], "ETH/USD")
            assert cancelled["status"] == "canceled"
            assert await g.fetchOpenOrders() == []
        finally:
            await g.close()

    run(scenario)
    assert [o["status"] for o in venue.orders()] == ["closed", "canceled"]


def test_the_gate_refuses_awaited_entries_at_the_cap(venue):
    """EntryRefused (an InvalidOrder) from an awaited create_order; nothing sent."""

    async def scenario() -> None:
        g = guarded_async(venue, max_positions=2)
        try:
            await g.create_order("ETH/USD", "market", "buy", 0.1, 3200)
            with pytest.raises(ccxt.InvalidOrder) as caught:
                await g.create_order("SOL/USD", "market", "buy", 1, 150)
            assert isinstance(caught.value, EntryRefused)
            assert caught.value.decision.code == POSITION_CAP_REACHED
        finally:
            await g.close()

    run(scenario)
    assert len(venue.requests_to(venue.order_endpoint)) == 1


def test_concurrent_awaited_entries_never_pass_the_cap(venue):
    """Ten entries gathered at once, ETH and SOL, on a cap of 2 with BTC held: one symbol wins.

    The reservation is atomic across the worker threads: only one of the two new symbols can
    take the last slot (more buys of the winner only add to it).
    """

    async def scenario() -> list[Any]:
        g = guarded_async(venue, max_positions=2)
        try:
            await g.fetch_balance()
            symbols = ["ETH/USD", "SOL/USD"] * 5
            return await asyncio.gather(
                *(g.create_order(s, "market", "buy", 0.01, 3200, {"clientOrderId": f"c{i}"})
                  for i, s in enumerate(symbols)),
                return_exceptions=True,
            )  # fmt: skip
        finally:
            await g.close()

    outcomes = run(scenario)
    placed = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, EntryRefused)]
    assert len(placed) + len(refused) == len(outcomes)
    assert len({o["symbol"] for o in placed}) == 1
    assert {o.decision.code for o in refused} <= {POSITION_CAP_REACHED}
    assert len(venue.orders()) == len(placed)
    assert len(venue.holdings()) == 2


def test_failed_reads_raise_awaited_and_the_circuit_opens(venue):
    """A failing balance raises ccxt's error, then CircuitOpen; entries are refused meanwhile."""

    async def scenario() -> None:
        g = guarded_async(venue)
        try:
            venue.fail_balance(venue.unavailable, times=1000)
            with pytest.raises(EntryRefused) as refused:
                await g.create_order("ETH/USD", "market", "buy", 0.1, 3200)
            assert refused.value.decision.code == POSITIONS_UNKNOWN
            errors = []
            for _ in range(8):
                try:
                    await g.fetch_balance()
                except ccxt.NetworkError as exc:
                    errors.append(exc)
            assert isinstance(errors[-1], CircuitOpen)
        finally:
            await g.close()

    run(scenario)
    assert venue.requests_to(venue.order_endpoint) == []


def test_an_awaited_unresolved_order_is_not_resent(venue, clock):
    """delayed_accept: OrderUnresolved (not a NetworkError); the symbol waits; then adopted."""

    async def scenario() -> None:
        g = guarded_async(venue)
        try:
            venue.emulator.inject("delayed_accept:3", endpoint=venue.order_endpoint)
            with pytest.raises(OrderUnresolved) as caught:
                await g.create_order("ETH/USD", "market", "buy", 0.1, 3200)
            assert not isinstance(caught.value, ccxt.NetworkError)
            with pytest.raises(EntryRefused) as refused:
                await g.create_order("ETH/USD", "market", "buy", 0.1, 3200)
            assert refused.value.decision.code == ORDER_UNRESOLVED
            clock.advance(3)
            placed = await g.create_order("SOL/USD", "market", "buy", 1, 150)
            assert placed["id"]
            assert g.brokerguard.broker.unresolved_orders() == []
        finally:
            await g.close()

    run(scenario)
    assert len(venue.orders()) == 2


def test_coinbase_cancel_calls_cancel_orders_inside_the_raw_call(coinbase):
    """Coinbase's cancel_order calls self.cancel_orders: inside a raw call, it is unguarded."""

    async def scenario() -> None:
        g = guarded_async(coinbase)
        try:
            resting = await g.create_limit_buy_order("ETH/USD", 0.1, 3000)
            assert (await g.cancel_order(resting["id"]))["status"] == "canceled"
        finally:
            await g.close()

    run(scenario)
    assert coinbase.emulator.count("brokerage/orders/batch_cancel") == 1


def test_the_async_broker_refuses_to_run_without_the_guard(venue):
    """A CcxtBroker alone cannot drive an async exchange: a clear error, not a hang."""
    from brokerguard.brokers.ccxt import CcxtBroker  # noqa: PLC0415 (this test only)

    async def scenario() -> None:
        exchange = venue.bare_async()
        try:
            broker = CcxtBroker(exchange, clock=venue.clock, nonce_source=venue.nonces)
            with pytest.raises(ConfigurationError, match="guard"):
                broker.get_positions()
        finally:
            await exchange.close()

    run(scenario)
