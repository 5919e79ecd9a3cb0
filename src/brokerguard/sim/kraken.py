"""A Kraken REST emulator on 127.0.0.1, for driving the real ``ccxt.kraken`` client in tests.

It speaks enough of Kraken's spot REST API for brokerguard's adapter: public ``Time``,
``Assets``, ``AssetPairs`` and ``Ticker``; private ``Balance``, ``BalanceEx``, ``OpenOrders``,
``ClosedOrders``, ``QueryOrders``, ``AddOrder`` (with ``cl_ord_id`` and ``userref``) and
``CancelOrder``, all in the ``{"error": [...], "result": ...}`` envelope, with ``API-Key`` /
``API-Sign`` checked and nonces required to increase per key, as Kraken does. Payload shapes
follow Kraken's recorded responses (ccxt's ``ts/src/test/static/response/kraken.json``).

Faults are injected per endpoint (or for every endpoint) and consumed in order:

==========================  ========================================================
``"EService:Unavailable"``  any Kraken error string, returned in the envelope
``"http:503"``              an HTTP status with an HTML body, like a load balancer
``"slow:1.5"``              answer after that many (real) seconds
``"malformed"``             a 200 whose body is not JSON
``"accept_then:http:504"``  AddOrder executes the order, then answers with the fault
==========================  ========================================================

``set_down(True)`` takes the whole API down (HTTP 503 on every endpoint) until
``set_down(False)``; :meth:`KrakenEmulator.stats` counts requests, and those received while
down. Run on its own (a separate process, so a load test does not share its interpreter)::

    python -m brokerguard.sim --port 0 --admin

prints its URL; with ``--admin``, ``POST /admin/down``, ``POST /admin/up`` and ``GET
/admin/stats`` control it over HTTP.

The emulator never talks to anything but its own loopback socket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final
from urllib.parse import parse_qs

from brokerguard.sim._http import LoopbackServer, Served, serve_until_terminated

__all__ = ["KrakenEmulator", "KrakenPair", "RecordedRequest", "running_kraken"]

DEFAULT_API_KEY: Final = "brokerguard-emulator-key"
DEFAULT_API_SECRET: Final = base64.b64encode(
    b"brokerguard emulator secret, not a real one"
).decode()


@dataclass(frozen=True, slots=True)
class KrakenPair:
    """One tradable pair, named the way Kraken names it."""

    pair_id: str  # "XXBTZUSD"
    altname: str  # "XBTUSD"
    base: str  # "XXBT"
    quote: str  # "ZUSD"
    price: Decimal


DEFAULT_ASSETS: Final[Mapping[str, str]] = {
    "XXBT": "XBT",
    "XETH": "ETH",
    "SOL": "SOL",
    "ZUSD": "USD",
}
DEFAULT_PAIRS: Final = (
    KrakenPair("XXBTZUSD", "XBTUSD", "XXBT", "ZUSD", Decimal("65000.0")),
    KrakenPair("XETHZUSD", "ETHUSD", "XETH", "ZUSD", Decimal("3200.00")),
    KrakenPair("SOLUSD", "SOLUSD", "SOL", "ZUSD", Decimal("150.00")),
)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the emulator received (after authentication, before faults)."""

    endpoint: str
    params: Mapping[str, str]


@dataclass
class _Order:
    txid: str
    pair: KrakenPair
    side: str
    volume: Decimal
    opentm: float
    cl_ord_id: str | None
    userref: str | None
    status: str = "open"
    vol_exec: Decimal = Decimal(0)
    price: Decimal = Decimal(0)
    closetm: float | None = None

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "refid": None,
            "userref": self.userref or "0",
            "status": self.status,
            "opentm": f"{self.opentm:.6f}",
            "starttm": "0",
            "expiretm": "0",
            "descr": {
                "pair": self.pair.altname,
                "type": self.side,
                "ordertype": "market",
                "price": "0",
                "price2": "0",
                "leverage": "none",
                "order": f"{self.side} {self.volume:.8f} {self.pair.altname} @ market",
                "close": "",
            },
            "vol": f"{self.volume:.8f}",
            "vol_exec": f"{self.vol_exec:.8f}",
            "cost": f"{self.vol_exec * self.price:.6f}",
            "fee": "0.000000",
            "price": f"{self.price:.5f}",
            "stopprice": "0.000000",
            "limitprice": "0.000000",
            "misc": "",
            "oflags": "fciq",
            "reason": None,
        }
        if self.cl_ord_id is not None:
            body["cl_ord_id"] = self.cl_ord_id
        if self.closetm is not None:
            body["closetm"] = f"{self.closetm:.7f}"
        return body


@dataclass
class _State:
    balances: dict[str, Decimal]
    pairs: dict[str, KrakenPair]
    orders: dict[str, _Order] = field(default_factory=dict)
    last_nonce: dict[str, int] = field(default_factory=dict)
    faults: dict[str | None, list[str]] = field(default_factory=lambda: defaultdict(list))
    requests: list[RecordedRequest] = field(default_factory=list)
    next_txid: int = 1
    fill_market_orders: bool = True
    fill_delay: float = 0.0
    refusals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    down: bool = False
    total: int = 0
    while_down: int = 0


class KrakenEmulator(Served):
    """A Kraken spot REST API on 127.0.0.1 with injectable faults (see the module docstring).

    Use it as a context manager (or :func:`running_kraken`); :attr:`url` is its base URL.

    Args:
        balances: starting balances by Kraken asset id (``{"ZUSD": "10000", "XXBT": "0.5"}``).
        pairs: the tradable pairs (default BTC, ETH and SOL against USD).
        api_key, api_secret: the credentials private calls must be signed with.
        fill_market_orders: fill market orders (False: they stay open).
        fill_delay: seconds a market order stays open before it fills (0: at once), like an
            exchange under load; a killed client finds it open, then closed.
        time_source: epoch seconds for order timestamps and ``Time`` (default ``time.time``).
        record_requests: keep every request for :attr:`requests` (off for load tests: the
            counters in :meth:`stats` are kept either way).
        admin: serve ``/admin/down``, ``/admin/up`` and ``/admin/stats`` (loopback tools only).
    """

    def __init__(
        self,
        *,
        balances: Mapping[str, object] | None = None,
        pairs: tuple[KrakenPair, ...] = DEFAULT_PAIRS,
        api_key: str = DEFAULT_API_KEY,
        api_secret: str = DEFAULT_API_SECRET,
        fill_market_orders: bool = True,
        fill_delay: float = 0.0,
        time_source: Callable[[], float] = time.time,  # wall-clock-ok: a server's own time
        record_requests: bool = True,
        admin: bool = False,
    ) -> None:
        self.record_requests = record_requests
        self.admin = admin
        self.api_key = api_key
        self.api_secret = api_secret
        self._secret = base64.b64decode(api_secret)
        self._now = time_source
        self._lock = threading.RLock()
        self._state = _State(
            balances={k: Decimal(str(v)) for k, v in (balances or {"ZUSD": "100000"}).items()},
            pairs={p.pair_id: p for p in pairs},
            fill_market_orders=fill_market_orders,
            fill_delay=fill_delay,
        )
        self._http = LoopbackServer(self.handle, name="kraken-emulator")

    # ------------------------------------------------------------------ test controls

    def inject(self, fault: str, *, endpoint: str | None = None, times: int = 1) -> None:
        """Make the next `times` requests to `endpoint` (None: any endpoint) fail with `fault`."""
        with self._lock:
            self._state.faults[endpoint].extend([fault] * times)

    def clear_faults(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._state.faults.clear()

    def set_price(self, pair_id: str, price: object) -> None:
        """Move a pair's last price."""
        with self._lock:
            pair = self._state.pairs[pair_id]
            self._state.pairs[pair_id] = KrakenPair(
                pair.pair_id, pair.altname, pair.base, pair.quote, Decimal(str(price))
            )

    def set_fill_market_orders(self, fill: bool) -> None:
        """Choose whether new market orders fill at once or stay open."""
        with self._lock:
            self._state.fill_market_orders = fill

    def credit(self, asset: str, amount: object) -> None:
        """Add `amount` of `asset` to the account, as a fill or deposit outside our client."""
        with self._lock:
            balances = self._state.balances
            balances[asset] = balances.get(asset, Decimal(0)) + Decimal(str(amount))

    def set_down(self, down: bool) -> None:
        """Take the whole API down (HTTP 503 everywhere) or bring it back."""
        with self._lock:
            self._state.down = down

    def stats(self) -> dict[str, int | bool]:
        """Requests received in all, and while the API was down."""
        with self._lock:
            state = self._state
            return {"down": state.down, "requests": state.total, "while_down": state.while_down}

    def refusals(self) -> dict[str, int]:
        """How many requests were refused, by Kraken error string (``EOrder:...``)."""
        with self._lock:
            return dict(self._state.refusals)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every authenticated request received, in order."""
        with self._lock:
            return list(self._state.requests)

    def count(self, endpoint: str) -> int:
        """How many requests reached `endpoint`."""
        return sum(1 for r in self.requests if r.endpoint == endpoint)

    def orders(self) -> list[dict[str, Any]]:
        """Every order ever placed, as Kraken would describe it."""
        with self._lock:
            return [dict(o.payload(), txid=o.txid) for o in self._state.orders.values()]

    def balances(self) -> dict[str, Decimal]:
        """The account's balances by Kraken asset id."""
        with self._lock:
            return dict(self._state.balances)

    # ------------------------------------------------------------------ request handling

    def _take_fault(self, endpoint: str) -> str | None:
        with self._lock:
            for key in (endpoint, None):
                queue = self._state.faults.get(key)
                if queue:
                    return queue.pop(0)
        return None

    def handle(  # noqa: PLR0911 (one early answer per way a request can go wrong)
        self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes]:
        """Answer one HTTP request (`headers` lower-cased); return (status, body)."""
        parts = path.strip("/").split("/")
        early = self._front_door(method, parts)
        if early is not None:
            return early
        if len(parts) != 3 or parts[0] != "0" or parts[1] not in {"public", "private"}:  # noqa: PLR2004
            return _envelope(["EGeneral:Unknown method"])
        api, endpoint = parts[1], parts[2]
        params = self._params(api, method, path, query, headers, body)
        if isinstance(params, tuple):
            return params
        with self._lock:
            if self.record_requests:
                self._state.requests.append(RecordedRequest(endpoint, dict(params)))
            self._settle_due()
        fault = self._take_fault(endpoint)
        after_accept = None
        if fault is not None and fault.startswith("accept_then:"):
            after_accept = fault.removeprefix("accept_then:")
            fault = None
        if fault is not None:
            return _apply_fault(fault)
        handler = getattr(self, f"_{api}_{endpoint}", None)
        if handler is None:
            return _envelope(["EGeneral:Unknown method"])
        status, payload = handler(params)
        self._count_refusals(payload)
        if after_accept is not None:
            return _apply_fault(after_accept)
        return status, payload

    def _params(  # noqa: PLR0917 (the parts of one HTTP request)
        self, api: str, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, str] | tuple[int, bytes]:
        """The request's parameters, or the refusal of an unauthenticated private call."""
        if api != "private":
            return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        if method != "POST":
            return _envelope(["EGeneral:Invalid arguments"])
        text = body.decode("utf-8", errors="replace")
        params = {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}
        problem = self._authenticate(path, headers, text, params)
        return params if problem is None else _envelope([problem])

    def _front_door(self, method: str, parts: list[str]) -> tuple[int, bytes] | None:
        """Admin requests, the counters, and the whole API being down."""
        if parts[0] == "admin" and self.admin and len(parts) == 2:  # noqa: PLR2004
            return self._admin(method, parts[1])
        with self._lock:
            self._state.total += 1
            if self._state.down:
                self._state.while_down += 1
                return _apply_fault("http:503")
        return None

    def _admin(self, method: str, action: str) -> tuple[int, bytes]:
        if method == "POST" and action in {"down", "up"}:
            self.set_down(action == "down")
        elif not (method == "GET" and action == "stats"):
            return 404, b'{"error": ["unknown admin action"]}'
        return 200, json.dumps(self.stats()).encode()

    def _count_refusals(self, payload: bytes) -> None:
        if payload.startswith(b'{"error": ["'):  # _envelope's shape of a refusal
            with self._lock:
                for error in json.loads(payload)["error"]:
                    self._state.refusals[str(error)] += 1

    def _authenticate(
        self, path: str, headers: Mapping[str, str], body: str, params: Mapping[str, str]
    ) -> str | None:
        if headers.get("api-key") != self.api_key:
            return "EAPI:Invalid key"
        nonce = params.get("nonce", "")
        if not nonce.isdigit():
            return "EAPI:Invalid nonce"
        digest = hashlib.sha256((nonce + body).encode()).digest()
        expected = base64.b64encode(
            hmac.new(self._secret, path.encode() + digest, hashlib.sha512).digest()
        ).decode()
        if not hmac.compare_digest(expected, headers.get("api-sign", "")):
            return "EAPI:Invalid signature"
        with self._lock:
            if int(nonce) <= self._state.last_nonce.get(self.api_key, 0):
                return "EAPI:Invalid nonce"
            self._state.last_nonce[self.api_key] = int(nonce)
        return None

    # ------------------------------------------------------------------ public endpoints

    def _public_Time(self, _params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802 (Kraken's name)
        now = self._now()
        rfc = time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now))
        return _envelope([], {"unixtime": int(now), "rfc1123": rfc})

    def _public_Assets(self, _params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            named = dict(DEFAULT_ASSETS)
            for pair in self._state.pairs.values():
                named.setdefault(pair.base, pair.base)
                named.setdefault(pair.quote, pair.quote)
        assets = {
            asset_id: {
                "aclass": "currency",
                "altname": altname,
                "decimals": 10 if asset_id != "ZUSD" else 4,
                "display_decimals": 5 if asset_id != "ZUSD" else 2,
                "status": "enabled",
            }
            for asset_id, altname in named.items()
        }
        return _envelope([], assets)

    def _public_AssetPairs(self, _params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            pairs = list(self._state.pairs.values())
        result = {
            p.pair_id: {
                "altname": p.altname,
                "wsname": _wsname(p),
                "aclass_base": "currency",
                "base": p.base,
                "aclass_quote": "currency",
                "quote": p.quote,
                "lot": "unit",
                "cost_decimals": 5,
                "pair_decimals": 1 if p.base == "XXBT" else 2,
                "lot_decimals": 8,
                "lot_multiplier": 1,
                "leverage_buy": [],
                "leverage_sell": [],
                "fees": [[0, 0.26], [50000, 0.24]],
                "fees_maker": [[0, 0.16], [50000, 0.14]],
                "fee_volume_currency": "ZUSD",
                "margin_call": 80,
                "margin_stop": 40,
                "ordermin": "0.0001",
                "costmin": "0.5",
                "tick_size": "0.1",
                "status": "online",
            }
            for p in pairs
        }
        return _envelope([], result)

    def _public_Ticker(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            pairs = dict(self._state.pairs)
        wanted = [x for x in params.get("pair", "").split(",") if x] or list(pairs)
        result = {}
        for pair_id in wanted:
            pair = pairs.get(pair_id) or next(
                (p for p in pairs.values() if p.altname == pair_id), None
            )
            if pair is None:
                return _envelope(["EQuery:Unknown asset pair"])
            last = f"{pair.price:.5f}"
            result[pair.pair_id] = {
                "a": [f"{pair.price * Decimal('1.0001'):.5f}", "1", "1.000"],
                "b": [f"{pair.price * Decimal('0.9999'):.5f}", "1", "1.000"],
                "c": [last, "0.01000000"],
                "v": ["100.0", "250.0"],
                "p": [last, last],
                "t": [1000, 2500],
                "l": [last, last],
                "h": [last, last],
                "o": last,
            }
        return _envelope([], result)

    # ------------------------------------------------------------------ private endpoints

    def _private_Balance(self, _params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            return _envelope([], {k: f"{v:.10f}" for k, v in self._state.balances.items()})

    def _private_BalanceEx(self, _params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            held = self._held()
            result = {
                k: {"balance": f"{v:.10f}", "hold_trade": f"{held.get(k, Decimal(0)):.10f}"}
                for k, v in self._state.balances.items()
            }
        return _envelope([], result)

    def _private_OpenOrders(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            found = self._select(params, closed=False)
        return _envelope([], {"open": found})

    def _private_ClosedOrders(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            found = self._select(params, closed=True)
        # Kraken pages closed orders 50 at a time, newest first.
        recent = dict(list(found.items())[-50:][::-1])
        return _envelope([], {"closed": recent, "count": len(found)})

    def _private_QueryOrders(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            result = {}
            for txid in params.get("txid", "").split(","):
                order = self._state.orders.get(txid)
                if order is None:
                    return _envelope(["EOrder:Invalid order"])
                result[txid] = order.payload()
        return _envelope([], result)

    def _private_AddOrder(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802, PLR0911
        with self._lock:
            state = self._state
            pair = state.pairs.get(params.get("pair", ""))
            side = params.get("type")
            if pair is None:
                return _envelope(["EQuery:Unknown asset pair"])
            if side not in {"buy", "sell"} or params.get("ordertype") != "market":
                return _envelope(["EGeneral:Invalid arguments"])
            try:
                volume = Decimal(params.get("volume", ""))
            except ArithmeticError:
                return _envelope(["EGeneral:Invalid arguments:volume"])
            if not volume.is_finite() or volume <= 0:
                return _envelope(["EGeneral:Invalid arguments:volume"])
            cl_ord_id = params.get("cl_ord_id")
            if cl_ord_id and any(
                o.cl_ord_id == cl_ord_id and o.status == "open" for o in state.orders.values()
            ):
                # Kraken checks cl_ord_id only against *open* orders.
                return _envelope(["EOrder:Duplicate order"])
            cost = volume * pair.price
            if side == "buy" and cost > self._free(pair.quote):
                return _envelope(["EOrder:Insufficient funds"])
            if side == "sell" and volume > self._free(pair.base):
                return _envelope(["EOrder:Insufficient funds"])
            txid = f"O{state.next_txid:05d}-EMU{state.next_txid % 97:02d}-BGUARD"
            state.next_txid += 1
            order = _Order(txid, pair, side, volume, self._now(), cl_ord_id, params.get("userref"))
            state.orders[txid] = order
            if state.fill_market_orders and state.fill_delay <= 0:
                self._fill(order)
            description = f"{side} {volume:.8f} {pair.altname} @ market"
        return _envelope([], {"txid": [txid], "descr": {"order": description}})

    def _private_CancelOrder(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            txid = params.get("txid", "")
            order = self._state.orders.get(txid) or next(
                (o for o in self._state.orders.values() if o.cl_ord_id == txid), None
            )
            if order is None:
                return _envelope(["EOrder:Unknown order"])
            if order.status != "open":
                return _envelope([], {"count": 0})
            order.status = "canceled"
            order.closetm = self._now()
        return _envelope([], {"count": 1})

    # ------------------------------------------------------------------ internals (lock held)

    def _select(self, params: Mapping[str, str], *, closed: bool) -> dict[str, Any]:
        cl_ord_id = params.get("cl_ord_id")
        userref = params.get("userref")
        result = {}
        for order in self._state.orders.values():
            if (order.status != "open") != closed:
                continue
            if cl_ord_id is not None and order.cl_ord_id != cl_ord_id:
                continue
            if userref is not None and order.userref != userref:
                continue
            result[order.txid] = order.payload()
        return result

    def _held(self) -> dict[str, Decimal]:
        held: dict[str, Decimal] = defaultdict(Decimal)
        for order in self._state.orders.values():
            if order.status == "open":
                if order.side == "buy":
                    held[order.pair.quote] += order.volume * order.pair.price
                else:
                    held[order.pair.base] += order.volume
        return held

    def _settle_due(self) -> None:
        state = self._state
        if not state.fill_market_orders or state.fill_delay <= 0:
            return
        due = self._now() - state.fill_delay
        for order in state.orders.values():
            if order.status == "open" and order.opentm <= due:
                self._fill(order)

    def _free(self, asset: str) -> Decimal:
        return self._state.balances.get(asset, Decimal(0)) - self._held().get(asset, Decimal(0))

    def _fill(self, order: _Order) -> None:
        balances = self._state.balances
        cost = order.volume * order.pair.price
        sign = 1 if order.side == "buy" else -1
        balances[order.pair.base] = balances.get(order.pair.base, Decimal(0)) + sign * order.volume
        balances[order.pair.quote] = balances.get(order.pair.quote, Decimal(0)) - sign * cost
        order.vol_exec = order.volume
        order.price = order.pair.price
        order.status = "closed"
        order.closetm = self._now()


def _wsname(pair: KrakenPair) -> str:
    return (
        f"{DEFAULT_ASSETS.get(pair.base, pair.base)}/{DEFAULT_ASSETS.get(pair.quote, pair.quote)}"
    )


def _envelope(errors: list[str], result: object = None) -> tuple[int, bytes]:
    body: dict[str, Any] = {"error": errors}
    if not errors:
        body["result"] = result
    return 200, json.dumps(body).encode()


def _apply_fault(fault: str) -> tuple[int, bytes]:
    if fault.startswith("http:"):
        code = int(fault.removeprefix("http:"))
        return code, f"<html><body><h1>{code}</h1>upstream trouble</body></html>".encode()
    if fault.startswith("slow:"):
        time.sleep(float(fault.removeprefix("slow:")))  # wall-clock-ok: emulating a slow server
        return _envelope(["EService:Busy"])
    if fault == "malformed":
        return 200, b'{"error": [], "result": {"unterminated'
    return _envelope([fault])


@contextmanager
def running_kraken(**kwargs: Any) -> Iterator[KrakenEmulator]:
    """Run a :class:`KrakenEmulator` for the duration of a ``with`` block."""
    emulator = KrakenEmulator(**kwargs).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve the emulator until SIGTERM; print its URL first (see the module docstring)."""
    import argparse  # noqa: PLC0415 (only the command line needs it)

    parser = argparse.ArgumentParser(description="A Kraken REST emulator on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--admin", action="store_true", help="serve /admin/down|up|stats")
    parser.add_argument("--fill-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    emulator = KrakenEmulator(
        fill_delay=args.fill_delay, record_requests=False, admin=args.admin
    ).start(port=args.port)
    return serve_until_terminated(emulator.url, emulator.stop)


if __name__ == "__main__":
    sys.exit(main())
