"""An in-memory adapter whose every raw method can be told to fail, for BaseBroker's tests."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from decimal import Decimal

from brokerguard.brokers import BaseBroker
from brokerguard.models import Order, OrderRequest, OrderStatus, Position


class FakeAdapter(BaseBroker):
    """Positions, prices and orders in dicts; ``faults[method]`` is a queue of errors to raise.

    ``accept_then_fail`` is a queue too: a True entry makes the next submit record the order
    and then raise, like a broker whose confirmation got lost on the way back.
    """

    def __init__(self, *args: object, with_ping: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.positions: list[object] = []
        self.prices: dict[str, object] = {}
        self.orders: dict[str, Order] = {}
        self.submissions: dict[str, int] = defaultdict(int)
        self.faults: dict[str, list[BaseException]] = defaultdict(list)
        self.accept_then_fail: list[BaseException | None] = []
        self.calls: list[str] = []
        self.with_ping = with_ping
        self.positions_payload: object | None = None
        self.prices_payload: object | None = None

    def _maybe_fail(self, method: str) -> None:
        self.calls.append(method)
        if self.faults[method]:
            raise self.faults[method].pop(0)

    def fetch_positions(self) -> Sequence[Position]:
        self._maybe_fail("fetch_positions")
        if self.positions_payload is not None:
            return self.positions_payload  # type: ignore[return-value]
        return list(self.positions)  # type: ignore[arg-type]

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        self._maybe_fail("fetch_prices")
        if self.prices_payload is not None:
            return self.prices_payload  # type: ignore[return-value]
        return {s: self.prices[s] for s in symbols if s in self.prices}

    def submit_order(self, order: OrderRequest) -> Order:
        self._maybe_fail("submit_order")
        self.submissions[order.client_order_id] += 1
        placed = Order(
            order.client_order_id,
            order.symbol,
            order.side,
            order.quantity,
            order.quantity,
            OrderStatus.FILLED,
            broker_order_id=f"B-{len(self.orders) + 1}",
        )
        self.orders[order.client_order_id] = placed
        if self.accept_then_fail:
            failure = self.accept_then_fail.pop(0)
            if failure is not None:
                raise failure
        return placed

    def fetch_order(self, client_order_id: str) -> Order | None:
        self._maybe_fail("fetch_order")
        return self.orders.get(client_order_id)

    def ping(self) -> object:
        if not self.with_ping:
            raise AssertionError("ping called on an adapter without one")
        self._maybe_fail("ping")
        return "pong"

    @property
    def has_ping(self) -> bool:
        return self.with_ping


def position(symbol: str, quantity: str) -> Position:
    return Position(symbol, Decimal(quantity))
