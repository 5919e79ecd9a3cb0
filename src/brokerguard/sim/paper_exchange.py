"""A paper exchange for fleets: many paper accounts behind one loopback HTTP server.

A :class:`~brokerguard.brokers.PaperBroker` lives inside the process that made it, so several
worker processes cannot share its accounts. :class:`PaperExchange` holds the accounts in its
own process (one :class:`PaperMarket`, one paper broker per account) and serves them over a
small JSON API; :class:`~brokerguard.brokers.paper_exchange.PaperExchangeBroker` is the
adapter the workers use. Its state outlives every worker, so a worker can be killed and
another take over the same accounts, and the exchange can judge what the fleet did: every
order it accepted, every refusal and why.

API (JSON; ``{id}`` an account id)::

    GET  /time                           the exchange's clock (the breaker probe)
    GET  /accounts/{id}/positions        [{"symbol", "quantity"}]
    POST /accounts/{id}/prices           {"symbols": [...]} -> {symbol: "price"}
    POST /accounts/{id}/orders           {"symbol", "side", "quantity", "client_order_id"}
                                         -> the order; 409 a live order has the id, 422 refused
    GET  /accounts/{id}/orders/{cid}     the order, or 404
    GET  /admin/accounts/{id}            true positions and every order (for tests)
    GET  /admin/stats                    orders and refusals by reason
    GET  /admin/positions                how many positions each account holds

Run on its own: ``python -m brokerguard.sim.paper_exchange --accounts 1000 --positions 6``
prints its URL.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from brokerguard.brokers.paper import PaperBroker, PaperMarket
from brokerguard.clock import SYSTEM_CLOCK, Clock
from brokerguard.errors import BrokerGuardError, BrokerRejection, DuplicateOrderError
from brokerguard.models import Order, OrderRequest, parse_decimal, parse_side, parse_symbol
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.sim._http import LoopbackServer, Served, serve_until_terminated

__all__ = ["PaperExchange", "order_to_json"]


def order_to_json(order: Order) -> dict[str, Any]:
    """An order as the exchange's API shows it (Decimals as strings)."""
    return {
        "client_order_id": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "quantity": str(order.quantity),
        "filled": str(order.filled_quantity),
        "status": order.status.value,
        "broker_order_id": order.broker_order_id,
    }


class PaperExchange(Served):
    """Paper accounts served over HTTP on 127.0.0.1.

    Args:
        accounts: starting positions per account id (``{"acct-1": {"BTC/USD": "1"}}``).
        prices: the market's starting prices (default: a dozen pairs).
        settle_delay: seconds between an order and its fill.
        seed: seeds the market's walk.
        volatility: the walk's volatility (0: prices stay put).
        clock: the exchange's clock.
    """

    def __init__(
        self,
        accounts: Mapping[str, Mapping[str, object]],
        *,
        prices: Mapping[str, object] | None = None,
        settle_delay: float = 0.2,
        seed: int = 0,
        volatility: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or SYSTEM_CLOCK
        self.market = PaperMarket(
            prices, seed=seed, volatility=volatility, start=self.clock.monotonic()
        )
        # Server-side brokers are called raw (never through their breakers): give them private
        # breakers so they touch no process-wide registry.
        self._accounts = {
            account_id: PaperBroker(
                "paper-exchange",
                account_id=account_id,
                market=self.market,
                positions=positions,
                clock=self.clock,
                settle_delay=settle_delay,
                read_breaker=BrokerCircuitBreaker("paper-exchange", scope="server-read"),
                write_breaker=BrokerCircuitBreaker("paper-exchange", scope="server-write"),
                recorded_calls=0,
            )
            for account_id, positions in accounts.items()
        }
        self._stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._http = LoopbackServer(self._respond, name="paper exchange")

    # ------------------------------------------------------------------ for tests

    def account(self, account_id: str) -> PaperBroker:
        """The paper broker behind an account (its true state, bypassing the API)."""
        return self._accounts[account_id]

    def stats(self) -> dict[str, int]:
        """Orders accepted, and refusals by reason."""
        with self._lock:
            return dict(self._stats)

    # ------------------------------------------------------------------ the API

    def _respond(
        self, method: str, path: str, _query: str, _headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes]:
        status, payload = self.handle(method, path, body)
        return status, json.dumps(payload, default=_json_default).encode()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """Answer one request; return (HTTP status, JSON-ready body)."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        try:
            return self._route(method, parts, body)
        except DuplicateOrderError as exc:
            # The id names a live order: 409, which the client reads as "it exists".
            self._count("refused:duplicate")
            return 409, {"error": str(exc)}
        except BrokerRejection as exc:
            self._count("refused:refused")
            return 422, {"error": str(exc)}
        except (BrokerGuardError, ValueError, KeyError, TypeError) as exc:
            return 400, {"error": f"{type(exc).__name__}: {exc}"}

    def _route(self, method: str, parts: list[str], body: bytes) -> tuple[int, Any]:
        if parts == ["time"]:
            return 200, {"time": self.clock.time()}
        if parts[:1] == ["admin"]:
            return self._admin(parts[1:])
        return self._account_route(method, parts, body)

    def _admin(self, parts: list[str]) -> tuple[int, Any]:
        if parts == ["stats"]:
            return 200, self.stats()
        if parts == ["positions"]:
            return 200, {a: len(b.true_positions()) for a, b in self._accounts.items()}
        broker = self._broker(parts[1]) if len(parts) == 2 and parts[0] == "accounts" else None  # noqa: PLR2004
        if broker is None:
            return 404, {"error": "unknown admin path or account"}
        return 200, {
            "positions": {s: str(q) for s, q in broker.true_positions().items()},
            "orders": [order_to_json(o) for o in broker.all_orders()],
        }

    def _account_route(  # noqa: PLR0911 (one answer per route)
        self, method: str, parts: list[str], body: bytes
    ) -> tuple[int, Any]:
        if len(parts) < 3 or parts[0] != "accounts":  # noqa: PLR2004
            return 404, {"error": "unknown path"}
        broker = self._broker(parts[1])
        if broker is None:
            return 404, {"error": "unknown account"}
        resource = parts[2:]
        if method == "GET" and resource == ["positions"]:
            return 200, [
                {"symbol": p.symbol, "quantity": str(p.quantity)} for p in broker.fetch_positions()
            ]
        if method == "POST" and resource == ["prices"]:
            symbols = [parse_symbol(s) for s in json.loads(body)["symbols"]]
            return 200, {s: str(p) for s, p in broker.fetch_prices(symbols).items()}
        if method == "POST" and resource == ["orders"]:
            data = json.loads(body)
            request = OrderRequest(
                parse_symbol(data["symbol"]),
                parse_side(data["side"]),
                parse_decimal(data["quantity"], field="quantity", allow_zero=False),
                parse_symbol(data["client_order_id"], field="client_order_id"),
            )
            order = broker.submit_order(request)
            self._count("orders")
            return 200, order_to_json(order)
        if method == "GET" and len(resource) == 2 and resource[0] == "orders":  # noqa: PLR2004
            found = broker.fetch_order(resource[1])
            return (
                (404, {"error": "unknown order"}) if found is None else (200, order_to_json(found))
            )
        return 404, {"error": "unknown path"}

    def _broker(self, account_id: str) -> PaperBroker | None:
        return self._accounts.get(account_id)

    def _count(self, what: str) -> None:
        with self._lock:
            self._stats[what] += 1


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def main(argv: list[str] | None = None) -> int:
    """Serve N accounts holding K positions each until SIGTERM; print the URL first."""
    parser = argparse.ArgumentParser(description="A paper exchange for a fleet of workers.")
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--positions", type=int, default=6, help="positions each account holds")
    parser.add_argument("--settle-delay", type=float, default=0.2)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    prices = {f"C{i:02d}/USD": str(i) for i in range(1, 21)}
    held = dict.fromkeys(list(prices)[: args.positions], "1")
    exchange = PaperExchange(
        {f"acct-{n:04d}": held for n in range(args.accounts)},
        prices=prices,
        settle_delay=args.settle_delay,
    ).start(port=args.port)
    return serve_until_terminated(exchange.url, exchange.stop)


if __name__ == "__main__":
    sys.exit(main())
