"""A shared exchange and broker objects on it: the world the kept-orders tests run in.

One :class:`Exchange` is the venue every process sees; each :class:`VenueBroker` is one
process's broker object on it (a restart is a new object, usually with a new store object on
the same database). The venue never refuses a client order id it has seen (the limit of
Kraken, which checks ``cl_ord_id`` against open orders only) and refuses a request past its
deadline, as the brokers say it does (``enforces_order_deadline``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from brokerguard import BrokerCircuitBreaker, Order, OrderRequest, OrderStatus, Position
from brokerguard.brokers.base import BaseBroker
from brokerguard.errors import BrokerRejection, RateLimitedError
from brokerguard.testing import FakeClock

__all__ = ["Crash", "Exchange", "VenueBroker"]


class Exchange:
    """One venue shared by every broker object: fills what it accepts, never refuses a seen id.

    A venue such as Kraken checks ``cl_ord_id`` against open orders only, so a market order sent
    twice executes twice; this one is the limit of that (it never refuses a seen id).
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock  # the venue's own clock: it refuses a request past its deadline
        self.orders: dict[str, list[Order]] = {}
        self.lock = threading.Lock()
        self.lose_answers = 0  # accept, then the answer is lost (a timeout)
        self.drop_requests = 0  # the request dies on the way: a timeout, nothing placed
        self.hidden = False  # every lookup answers "not found" (a lagging listing)

    def accept(self, request: OrderRequest) -> Order:
        if request.deadline is not None and self.clock.time() > request.deadline:
            raise BrokerRejection("EGeneral:Invalid arguments:deadline elapsed")
        with self.lock:
            order = Order(
                request.client_order_id,
                request.symbol,
                request.side,
                request.quantity,
                request.quantity,
                OrderStatus.FILLED,
                f"V{sum(map(len, self.orders.values())) + 1}",
            )
            self.orders.setdefault(request.client_order_id, []).append(order)
        return order

    def executed(self, cid: str | None = None) -> int:
        if cid is None:
            return sum(map(len, self.orders.values()))
        return len(self.orders.get(cid, ()))


class Crash(BaseException):
    """The process dies mid-call (a BaseException: nothing in brokerguard may swallow it)."""


class VenueBroker(BaseBroker):
    """One process's broker object on the shared exchange."""

    enforces_order_deadline = True

    def __init__(
        self,
        exchange: Exchange,
        clock: FakeClock,
        *,
        account_id: str = "acct-kept",
        name: str = "kept",
    ) -> None:
        super().__init__(
            name,
            clock=clock,
            account_id=account_id,
            read_breaker=BrokerCircuitBreaker(name, scope="read", clock=clock),
            write_breaker=BrokerCircuitBreaker(
                name, scope="write", clock=clock, failure_threshold=1000
            ),
        )
        self.exchange = exchange
        self.crash_before_venue = False
        self.crash_after_accept = False
        self.refused_at_the_door = 0  # rate-limited sends: never processed, resent

    def fetch_positions(self) -> Sequence[Position]:
        return [Position("BTC/USD", "1")]

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        return dict.fromkeys(symbols, "100")

    def submit_order(self, order: OrderRequest) -> Order:
        if self.crash_before_venue:
            raise Crash("the process died before the request left")
        if self.refused_at_the_door:
            self.refused_at_the_door -= 1
            raise RateLimitedError("EAPI:Rate limit exceeded", retry_after=1.0)
        if self.exchange.drop_requests:
            self.exchange.drop_requests -= 1
            raise TimeoutError("connect timed out")
        placed = self.exchange.accept(order)
        if self.crash_after_accept:
            raise Crash("the process died before the answer arrived")
        if self.exchange.lose_answers:
            self.exchange.lose_answers -= 1
            raise TimeoutError("read timed out")
        return placed

    def fetch_order(self, client_order_id: str) -> Order | None:
        if self.exchange.hidden:
            return None
        found = self.exchange.orders.get(client_order_id)
        return found[-1] if found else None
