"""The adapter for :mod:`brokerguard.sim.paper_exchange`: paper accounts a fleet can share.

The four raw methods are four small JSON requests over a keep-alive connection per thread.
Transport failures and 5xx answers are transient; 409 (a live order has the client order id:
it exists, looked up and adopted) and 422
(refused) are rejections; anything that is not the expected JSON is :class:`InvalidBrokerData`.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from brokerguard.brokers.base import BaseBroker
from brokerguard.clock import Clock
from brokerguard.errors import (
    BrokerRejection,
    ConfigurationError,
    DuplicateOrderError,
    FatalBrokerError,
    InvalidBrokerData,
    RateLimitedError,
    TransientBrokerError,
)
from brokerguard.models import (
    Order,
    OrderRequest,
    OrderStatus,
    Position,
    parse_decimal,
    parse_side,
    parse_symbol,
)
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.ratelimit import RateLimiter

__all__ = ["PaperExchangeBroker"]

_HTTP_TOO_MANY = 429
_HTTP_SERVER_ERROR = 500


class PaperExchangeBroker(BaseBroker):
    """One account of a paper exchange at `url` (``http://127.0.0.1:PORT``).

    Args:
        url: the exchange's base URL (loopback).
        timeout: seconds per request.
        Other arguments: as for :class:`BaseBroker`.
    """

    def __init__(
        self,
        url: str,
        broker_name: str = "paper-exchange",
        *,
        account_id: str,
        timeout: float = 5.0,
        clock: Clock | None = None,
        read_breaker: BrokerCircuitBreaker | None = None,
        write_breaker: BrokerCircuitBreaker | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__(
            broker_name,
            account_id=account_id,
            clock=clock,
            read_breaker=read_breaker,
            write_breaker=write_breaker,
            rate_limiter=rate_limiter,
        )
        split = urlsplit(url)
        if split.scheme != "http" or not split.hostname:
            raise ConfigurationError(f"a paper exchange URL is http://host:port, got {url!r}")
        self.url = url
        self._host, self._port = split.hostname, split.port or 80
        self._timeout = timeout
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._connections_lock = threading.Lock()
        self._base = f"/accounts/{quote(account_id, safe='')}"

    # ------------------------------------------------------------------ the four raw methods

    def fetch_positions(self) -> Sequence[Position]:
        """The account's positions."""
        raw = self._request("GET", f"{self._base}/positions")
        if not isinstance(raw, list):
            raise InvalidBrokerData("positions", raw, "not_a_list")
        positions = []
        for item in raw:
            if not isinstance(item, Mapping):
                raise InvalidBrokerData("position", item, "not_a_mapping")
            symbol = parse_symbol(item.get("symbol"))
            positions.append(
                Position(
                    symbol, parse_decimal(item.get("quantity"), field="quantity", symbol=symbol)
                )
            )
        return positions

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        """Raw prices (strings) of the symbols the exchange knows."""
        raw = self._request("POST", f"{self._base}/prices", {"symbols": list(symbols)})
        if not isinstance(raw, Mapping):
            raise InvalidBrokerData("prices", raw, "not_a_mapping")
        return dict(raw)

    def submit_order(self, order: OrderRequest) -> Order:
        """Send a market order carrying our client order id."""
        raw = self._request(
            "POST",
            f"{self._base}/orders",
            {
                "symbol": order.symbol,
                "side": order.side.value,
                "quantity": str(order.quantity),
                "client_order_id": order.client_order_id,
            },
        )
        return _order(raw)

    def fetch_order(self, client_order_id: str) -> Order | None:
        """The order with this client order id, or None."""
        raw = self._request(
            "GET", f"{self._base}/orders/{quote(client_order_id, safe='')}", missing_ok=True
        )
        return None if raw is None else _order(raw)

    def ping(self) -> object:
        """The exchange's time: the breaker's probe."""
        return self._request("GET", "/time")

    # ------------------------------------------------------------------ internals

    def _request(
        self, method: str, path: str, body: object = None, *, missing_ok: bool = False
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection = self._connection()
        try:
            connection.request(method, path, body=data, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self._local.connection = None
            raise TransientBrokerError(f"paper exchange {method} {path}: {exc}") from exc
        status = answer.status
        if status == 404 and b"unknown account" in payload:  # noqa: PLR2004
            raise FatalBrokerError(f"the paper exchange has no account {self.account_id!r}")
        if status == 404 and missing_ok:  # noqa: PLR2004
            return None
        if status == _HTTP_TOO_MANY:
            raise RateLimitedError(f"paper exchange: rate limited ({path})")
        if status >= _HTTP_SERVER_ERROR:
            raise TransientBrokerError(f"paper exchange answered {status} for {path}")
        try:
            decoded = json.loads(payload)
        except ValueError:
            raise InvalidBrokerData("response", payload[:200], "unparseable") from None
        message = str(decoded.get("error") if isinstance(decoded, Mapping) else decoded)
        if status == 409:  # noqa: PLR2004 (HTTP Conflict: a live order has this id)
            raise DuplicateOrderError(message)
        if status == 422:  # noqa: PLR2004 (HTTP Unprocessable: refused)
            raise BrokerRejection(message)
        if status != 200:  # noqa: PLR2004
            raise InvalidBrokerData("response", decoded, f"http_{status}")
        return decoded

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        """Close the keep-alive connections of every thread."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()


_STATUSES = {status.value: status for status in OrderStatus}


def _order(raw: object) -> Order:
    if not isinstance(raw, Mapping):
        raise InvalidBrokerData("order", raw, "not_a_mapping")
    status = _STATUSES.get(str(raw.get("status")))
    if status is None:
        raise InvalidBrokerData("status", raw.get("status"), "unknown_status")
    symbol = parse_symbol(raw.get("symbol"))
    broker_id = raw.get("broker_order_id")
    return Order(
        parse_symbol(raw.get("client_order_id"), field="client_order_id"),
        symbol,
        parse_side(raw.get("side")),
        parse_decimal(raw.get("quantity"), field="quantity", symbol=symbol),
        parse_decimal(raw.get("filled"), field="filled", symbol=symbol),
        status,
        None if broker_id is None else str(broker_id),
    )
