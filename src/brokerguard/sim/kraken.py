"""A Kraken REST emulator on 127.0.0.1, for driving the real ``ccxt.kraken`` client in tests.

It speaks enough of Kraken's spot REST API for brokerguard's adapter: public ``Time``,
``Assets``, ``AssetPairs`` and ``Ticker``; private ``Balance``, ``BalanceEx``, ``OpenOrders``,
``ClosedOrders``, ``QueryOrders``, ``AddOrder`` (with ``cl_ord_id``, ``userref``, ``deadline``,
``expiretm`` and ``validate``) and ``CancelOrder`` (by ``txid`` or ``cl_ord_id``), all in the
``{"error": [...], "result": ...}`` envelope, with ``API-Key`` / ``API-Sign`` checked and nonces
required to increase per key, as Kraken does.

Payload shapes follow Kraken's recorded responses (ccxt's ``ts/src/test/static/response/
kraken.json``; ``tests/sim/fixtures/kraken_recorded.json`` keeps the excerpts a test compares
against). On the wire Kraken sends order times (``opentm``, ``closetm``, ``starttm``,
``expiretm``) and ``userref`` as JSON numbers (``userref`` is ``null`` when the order carries a
``cl_ord_id``) and every amount and price as a string; ccxt's TypeScript recorder quotes JSON
numbers, which is why its fixtures show times as strings. Balances carry each asset's own
decimals (``ZUSD`` 4, ``XXBT`` 10), and suffixed assets such as ``XBT.F`` (Kraken Rewards),
``ETH2.S`` (staked), ``USDC.M``, ``SOL.B`` are separate, read-only balances
(``balances={"XBT.F": "0.2"}``) that ``Assets`` lists too.

Faults are injected per endpoint (or for every endpoint) and consumed in order:

================================  ==================================================================
``"EService:Unavailable"``        any Kraken error string, returned in the envelope (also
                                  ``"EService:Deadline elapsed"``, which ccxt 4.5.90's REST table
                                  lacks, so ccxt raises a plain ``ExchangeError``)
``"http:503"``                    an HTTP status with an HTML body, like a load balancer
``"slow:1.5"``                    answer ``EService:Busy`` after that many (real) seconds
``"malformed"``                   a 200 whose body is not JSON
``"empty_result"``                a successful, empty answer: ``{"error": [], "result": {}}``;
                                  nothing is executed
``"omit:XXBT,XETH"``              serve the request, then drop those keys from the result (a
                                  pair from ``Ticker``, assets from ``Balance``/``BalanceEx``, a
                                  txid from ``QueryOrders``/``OpenOrders``/``ClosedOrders``)
``"accept_then:http:504"``        AddOrder executes the order, then answers with the fault
``"delayed_accept:1.5"``          AddOrder is queued in the engine: it answers
                                  ``EService:Unavailable`` now, and the order is accepted (and,
                                  if due, filled) 1.5 s of emulator time later, invisible to every
                                  lookup until then
``"delayed_accept:1.5:slow:3"``   the same with any answer fault (here: the client times out);
                                  on another endpoint only the answer fault is served
================================  ==================================================================

Every delay (``fill_delay``, ``accept_delay``, ``pending_delay``, ``delayed_accept:``,
``expiretm``, ``deadline``) is measured with ``time_source`` (default ``time.time``), so a test
steps time instead of sleeping; only ``slow:`` sleeps in real seconds. Time moves lazily: queued
orders are accepted, orders fill and expire when the next request (or :meth:`orders`,
:meth:`balances`) looks.

The engine queue is how Kraken produces duplicate orders: AddOrder answers a timeout or an
``EService`` error, a lookup made at once finds nothing, the client resends, and the first order
is accepted seconds later. ``deadline`` (RFC 3339, from now + 2 s to now + 60 s, as Kraken
documents it) bounds that: an order whose deadline has passed when the engine would accept it is
dropped and never appears (``EService:Deadline elapsed`` if it was not queued). Orders can also
fill in parts (``fill_parts``), rest ``pending`` (``pending_delay``), expire (``expiretm``) or be
given any status (:meth:`KrakenEmulator.set_order_status`); a pair can be put in ``cancel_only``,
``post_only``, ``limit_only``, ``reduce_only``, ``maintenance`` or ``delisted``
(:meth:`KrakenEmulator.set_pair_status`): new market orders on it are refused as Kraken refuses
them and nothing on it fills until it is ``online`` again.

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
import dataclasses
import hashlib
import hmac
import json
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import parse_qs

from brokerguard.sim._http import LoopbackServer, Served, serve_until_terminated

__all__ = ["KrakenEmulator", "KrakenPair", "RecordedRequest", "running_kraken"]

DEFAULT_API_KEY: Final = "brokerguard-emulator-key"
DEFAULT_API_SECRET: Final = base64.b64encode(
    b"brokerguard emulator secret, not a real one"
).decode()

DEADLINE_MIN_AHEAD: Final = 2.0
"""Kraken's AddOrder reference: ``deadline`` at least now + 2 seconds (older text: 5) ..."""
DEADLINE_MAX_AHEAD: Final = 60.0
"""... and at most now + 60 seconds."""
DEADLINE_ELAPSED: Final = "EService:Deadline elapsed"
INVALID_ARGUMENTS: Final = "EGeneral:Invalid arguments"
DELAYED_ANSWER: Final = "EService:Unavailable"
"""What a queued AddOrder answers when the fault or constructor names no other answer."""

ORDER_MIN: Final = Decimal("0.0001")
"""Every pair's ``ordermin`` (the smallest volume AddOrder takes)."""
COST_MIN: Final = Decimal("0.5")
"""Every pair's ``costmin`` (the smallest order value, in the quote currency)."""
CL_ORD_ID_FREE_TEXT_MAX: Final = 18
"""Kraken's ``cl_ord_id``: a long or short UUID, or free ASCII text of at most 18 characters."""

_UUID_LONG: Final = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_UUID_SHORT: Final = re.compile(r"[0-9a-fA-F]{32}")
_LIVE: Final = frozenset({"pending", "open"})  # what OpenOrders lists
_ORDER_STATUSES: Final = frozenset({"pending", "open", "closed", "canceled", "expired"})
_LOT: Final = Decimal("1e-8")  # lot_decimals 8

PAIR_STATUSES: Final = frozenset(
    {
        "online",
        "cancel_only",
        "post_only",
        "limit_only",
        "reduce_only",
        "maintenance",
        "delisted",
        "work_in_progress",
    }
)
_PAIR_REFUSALS: Final[Mapping[str, str]] = {
    # Kraken's documented strings (docs.kraken.com, "Spot Error Messages") ...
    "cancel_only": "EService:Market in cancel_only mode",
    "post_only": "EService:Market in post_only mode",
    # ... and the same pattern for the modes its error table does not list (an assumption).
    "limit_only": "EService:Market in limit_only mode",
    "reduce_only": "EService:Market in reduce_only mode",
    "maintenance": "EService:Unavailable",
    "delisted": "EQuery:Unknown asset pair",
    "work_in_progress": "EQuery:Unknown asset pair",
}


@dataclass(frozen=True, slots=True)
class KrakenPair:
    """One tradable pair, named the way Kraken names it, with its AssetPairs ``status``."""

    pair_id: str  # "XXBTZUSD"
    altname: str  # "XBTUSD"
    base: str  # "XXBT"
    quote: str  # "ZUSD"
    price: Decimal
    status: str = "online"


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
# Assets' decimals as Kraken lists them (fiat 4, stablecoins 8, the rest 10); collateral
# values only for the assets whose recorded entries carry one.
_DECIMALS: Final[Mapping[str, tuple[int, int]]] = {
    "ZUSD": (4, 2),
    "ZEUR": (4, 2),
    "ZGBP": (4, 2),
    "USD": (4, 2),
    "USDT": (8, 4),
    "USDC": (8, 4),
}
_COLLATERAL: Final[Mapping[str, float]] = {"XXBT": 1.0, "XETH": 1.0, "ZUSD": 1.0}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the emulator received (after authentication, before faults)."""

    endpoint: str
    params: Mapping[str, str]


@dataclass(frozen=True)
class _AddRequest:
    """An AddOrder request that passed validation, as the engine will see it."""

    params: Mapping[str, str]
    pair_id: str
    side: str
    volume: Decimal
    cl_ord_id: str | None
    userref: int | None
    deadline: float | None
    expire_after: float | None  # expiretm "+<n>"
    expire_at: float | None  # expiretm "<unix time>"


@dataclass
class _Queued:
    request: _AddRequest
    due: float


@dataclass
class _Order:
    txid: str
    pair: KrakenPair
    side: str
    volume: Decimal
    opentm: float
    cl_ord_id: str | None
    userref: int | None
    status: str = "open"
    vol_exec: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    closetm: float | None = None
    expiretm: float | None = None
    fills_due: list[float] = field(default_factory=list)
    parts: int = 1
    trades: list[str] = field(default_factory=list)
    reason: str | None = None
    frozen: bool = False  # a status set by a test: the engine leaves the order alone

    @property
    def remaining(self) -> Decimal:
        return self.volume - self.vol_exec

    def payload(self, *, listing: bool = False, with_trades: bool = True) -> dict[str, Any]:
        """The order as Kraken describes it (``listing``: OpenOrders, which omits ``reason``)."""
        body: dict[str, Any] = {
            "refid": None,
            # Kraken: null when cl_ord_id is set (they are mutually exclusive), else 0 or the int.
            "userref": None if self.cl_ord_id is not None else (self.userref or 0),
        }
        if self.cl_ord_id is not None:
            body["cl_ord_id"] = self.cl_ord_id
        average = self.cost / self.vol_exec if self.vol_exec else None
        body.update(
            {
                "status": self.status,
                "opentm": self.opentm,
                "starttm": 0,
                "expiretm": self.expiretm if self.expiretm is not None else 0,
                "descr": {
                    "pair": self.pair.altname,
                    "type": self.side,
                    "ordertype": "market",
                    "price": "0",
                    "price2": "0",
                    "leverage": "none",
                    "order": _describe(self.side, self.volume, self.pair),
                    "close": "",
                },
                "vol": f"{self.volume:.8f}",
                "vol_exec": f"{self.vol_exec:.8f}",
                "cost": f"{self.cost:.6f}",
                "fee": "0.000000",
                "price": "0.000000" if average is None else f"{average:.5f}",
                "stopprice": "0.000000",
                "limitprice": "0.000000",
                "misc": "",
                "oflags": "fciq",
            }
        )
        if with_trades and self.trades:
            body["trades"] = list(self.trades)
        if not listing:
            body["reason"] = self.reason
        if self.closetm is not None:
            body["closetm"] = self.closetm
        return body


@dataclass
class _State:
    balances: dict[str, Decimal]
    pairs: dict[str, KrakenPair]
    orders: dict[str, _Order] = field(default_factory=dict)
    queue: list[_Queued] = field(default_factory=list)
    last_nonce: dict[str, int] = field(default_factory=dict)
    faults: dict[str | None, list[str]] = field(default_factory=lambda: defaultdict(list))
    requests: list[RecordedRequest] = field(default_factory=list)
    next_txid: int = 1
    next_trade: int = 1
    fill_market_orders: bool = True
    fill_delay: float = 0.0
    fill_parts: int = 1
    pending_delay: float = 0.0
    accept_delay: float = 0.0
    delayed_answer: str = DELAYED_ANSWER
    refusals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    down: bool = False
    total: int = 0
    while_down: int = 0


class KrakenEmulator(Served):
    """A Kraken spot REST API on 127.0.0.1 with injectable faults (see the module docstring).

    Use it as a context manager (or :func:`running_kraken`); :attr:`url` is its base URL.

    Args:
        balances: starting balances by Kraken asset id (``{"ZUSD": "10000", "XXBT": "0.5"}``);
            suffixed ids (``"XBT.F"``, ``"DOT.S"``) are reported as Kraken reports them.
        pairs: the tradable pairs (default BTC, ETH and SOL against USD).
        api_key, api_secret: the credentials private calls must be signed with.
        fill_market_orders: fill market orders (False: they stay open).
        fill_delay: seconds a market order stays open before it fills (0: at once), like an
            exchange under load; a killed client finds it open, then closed. With
            ``fill_parts`` > 1 it is the time between parts.
        fill_parts: fill each market order in this many equal parts, ``fill_delay`` apart
            (``vol_exec`` grows while the order stays open, then it closes).
        pending_delay: seconds a new order shows ``pending`` (Kraken: "pending book entry")
            before it is ``open``; it fills only after.
        accept_delay: seconds every AddOrder waits in the engine queue (answering
            ``delayed_answer``) before the order exists; 0: accepted at once. The fault
            ``"delayed_accept:<s>"`` does this for one request.
        delayed_answer: what a queued AddOrder answers (any fault string).
        time_source: epoch seconds for order timestamps, ``Time`` and every delay (default
            ``time.time``); a test passes a clock it steps.
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
        fill_parts: int = 1,
        pending_delay: float = 0.0,
        accept_delay: float = 0.0,
        delayed_answer: str = DELAYED_ANSWER,
        time_source: Callable[[], float] = time.time,  # wall-clock-ok: a server's own time
        record_requests: bool = True,
        admin: bool = False,
    ) -> None:
        if fill_parts < 1:
            raise ValueError("fill_parts must be at least 1")
        for pair in pairs:
            _check_pair_status(pair.status)
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
            fill_parts=fill_parts,
            pending_delay=pending_delay,
            accept_delay=accept_delay,
            delayed_answer=delayed_answer,
        )
        self._http = LoopbackServer(self.handle, name="kraken-emulator")

    # ------------------------------------------------------------------ test controls

    def inject(self, fault: str, *, endpoint: str | None = None, times: int = 1) -> None:
        """Make the next `times` requests to `endpoint` (None: any endpoint) fail with `fault`."""
        if fault.startswith("delayed_accept:"):
            _split_delayed(fault.removeprefix("delayed_accept:"))  # a bad delay fails here
        with self._lock:
            self._state.faults[endpoint].extend([fault] * times)

    def clear_faults(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._state.faults.clear()

    def set_price(self, pair_id: str, price: object) -> None:
        """Move a pair's last price (resting orders fill at the price of the moment)."""
        with self._lock:
            pair = self._state.pairs[pair_id]
            self._state.pairs[pair_id] = dataclasses.replace(pair, price=Decimal(str(price)))

    def set_pair_status(self, pair_id: str, status: str) -> None:
        """Put a pair in a trading mode (``online``, ``cancel_only``, ``maintenance``, ...).

        AssetPairs reports it; new orders on a pair that is not ``online`` are refused as Kraken
        refuses them, and nothing on it fills until it is ``online`` again.
        """
        _check_pair_status(status)
        with self._lock:
            pair = self._state.pairs[pair_id]
            self._state.pairs[pair_id] = dataclasses.replace(pair, status=status)

    def set_fill_market_orders(self, fill: bool) -> None:
        """Choose whether new market orders fill (at once, or after ``fill_delay``) or rest."""
        with self._lock:
            self._state.fill_market_orders = fill

    def set_order_status(self, ref: str, status: str) -> None:
        """Force an order's status (by txid or cl_ord_id): the engine then leaves it alone.

        For statuses the engine does not reach by itself in a test (``pending`` forever, an
        ``expired`` or ``canceled`` order with fills, ...).
        """
        if status not in _ORDER_STATUSES:
            raise ValueError(f"not a Kraken order status: {status!r}")
        with self._lock:
            self._advance()
            order = self._find(ref)
            if order is None:
                raise KeyError(ref)
            order.status = status
            order.frozen = True
            if status in _LIVE:
                order.closetm = None
            elif order.closetm is None:
                order.closetm = self._now()

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
        """How many orders or requests were refused, by Kraken error string (``EOrder:...``).

        Queued AddOrders dropped when the engine reaches them (deadline passed, duplicate,
        funds) count here too, though no client ever saw that refusal.
        """
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
        """Every order the engine accepted, as Kraken would describe it (plus its ``txid``)."""
        with self._lock:
            self._advance()
            return [dict(o.payload(), txid=o.txid) for o in self._state.orders.values()]

    def queued(self) -> list[dict[str, str]]:
        """The parameters of the AddOrders still waiting in the engine queue (never visible)."""
        with self._lock:
            self._advance()
            return [dict(q.request.params) for q in self._state.queue]

    def balances(self) -> dict[str, Decimal]:
        """The account's balances by Kraken asset id."""
        with self._lock:
            self._advance()
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
            self._advance()
        fault = self._take_fault(endpoint)
        if fault is None:
            return self._call(api, endpoint, params)
        kind, _, argument = fault.partition(":")
        if kind == "accept_then":
            self._call(api, endpoint, params)
            return _apply_fault(argument)
        if kind == "delayed_accept":
            delay, answer = _split_delayed(argument)
            if api == "private" and endpoint == "AddOrder":
                return self._add_order(params, delay, answer)
            return _apply_fault(answer)
        if kind == "omit":
            status, payload = self._call(api, endpoint, params)
            return status, _omit(payload, set(argument.split(",")))
        return _apply_fault(fault)

    def _call(self, api: str, endpoint: str, params: Mapping[str, str]) -> tuple[int, bytes]:
        """Serve the endpoint itself (no fault)."""
        if api == "private" and endpoint == "AddOrder":
            with self._lock:
                delay, answer = self._state.accept_delay, self._state.delayed_answer
            return self._add_order(params, delay, answer)
        handler = getattr(self, f"_{api}_{endpoint}", None)
        if handler is None:
            return _envelope(["EGeneral:Unknown method"])
        status, payload = handler(params)
        self._count_refusals(payload)
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
            for asset in self._state.balances:
                named.setdefault(asset, asset)  # suffixed ids are their own altname
        assets = {}
        for asset_id, altname in named.items():
            decimals, display = _decimals(asset_id)
            entry: dict[str, Any] = {
                "aclass": "currency",
                "altname": altname,
                "decimals": decimals,
                "display_decimals": display,
            }
            if asset_id in _COLLATERAL:
                entry["collateral_value"] = _COLLATERAL[asset_id]
            entry["status"] = "enabled"
            assets[asset_id] = entry
        return _envelope([], assets)

    def _public_AssetPairs(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            pairs = dict(self._state.pairs)
        wanted = [x for x in params.get("pair", "").split(",") if x]
        chosen = [self._pair_named(pairs, name) for name in wanted] or list(pairs.values())
        if any(p is None for p in chosen):
            return _envelope(["EQuery:Unknown asset pair"])
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
                "ordermin": str(ORDER_MIN),
                "costmin": str(COST_MIN),
                "tick_size": "0.1",
                "status": p.status,
            }
            for p in chosen
            if p is not None
        }
        return _envelope([], result)

    def _public_Ticker(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            pairs = dict(self._state.pairs)
        wanted = [x for x in params.get("pair", "").split(",") if x] or list(pairs)
        result = {}
        for pair_id in wanted:
            pair = self._pair_named(pairs, pair_id)
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

    @staticmethod
    def _pair_named(pairs: Mapping[str, KrakenPair], name: str) -> KrakenPair | None:
        return pairs.get(name) or next((p for p in pairs.values() if p.altname == name), None)

    # ------------------------------------------------------------------ private endpoints

    def _private_Balance(self, _params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            return _envelope([], {k: _amount(k, v) for k, v in self._state.balances.items()})

    def _private_BalanceEx(self, _params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            held = self._held()
            result = {
                k: {"balance": _amount(k, v), "hold_trade": _amount(k, held.get(k, Decimal(0)))}
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
        with_trades = _truthy(params.get("trades"))
        userref = params.get("userref")
        with self._lock:
            result = {}
            for txid in params.get("txid", "").split(","):
                order = self._state.orders.get(txid)
                if order is None:
                    return _envelope(["EOrder:Invalid order"])
                if userref is not None and str(order.userref) != userref:
                    continue
                result[txid] = order.payload(with_trades=with_trades)
        return _envelope([], result)

    def _private_CancelOrder(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            cl_ord_id = params.get("cl_ord_id")
            if cl_ord_id is not None:
                # Kraken knows a cl_ord_id only among open orders.
                order = next(
                    (
                        o
                        for o in self._state.orders.values()
                        if o.cl_ord_id == cl_ord_id and o.status in _LIVE
                    ),
                    None,
                )
            else:
                order = self._find(params.get("txid", ""))
            if order is None:
                return _envelope(["EOrder:Unknown order"])
            if self._state.pairs[order.pair.pair_id].status == "maintenance":
                return _envelope([_PAIR_REFUSALS["maintenance"]])
            if order.status not in _LIVE:
                return _envelope([], {"count": 0})
            order.status = "canceled"
            order.reason = "User requested"
            order.closetm = self._now()
        return _envelope([], {"count": 1})

    # ------------------------------------------------------------------ AddOrder

    def _add_order(self, params: Mapping[str, str], delay: float, answer: str) -> tuple[int, bytes]:
        """Validate, then accept now, or queue for `delay` seconds and answer `answer`."""
        with self._lock:
            now = self._now()
            request = self._validate_add(params, now)
            if isinstance(request, str):
                return self._refuse(request)
            if _truthy(params.get("validate")):
                description = _describe(request.side, request.volume, self._pair(request))
                return _envelope([], {"descr": {"order": description}})
            accepted: _Order | str | None = None
            if delay > 0:
                self._state.queue.append(_Queued(request, now + delay))
            else:
                accepted = self._accept(request, now)
        if accepted is None:
            return _apply_fault(answer)  # outside the lock: it may be a slow answer
        if isinstance(accepted, str):
            return self._refuse(accepted)
        description = _describe(accepted.side, accepted.volume, accepted.pair)
        return _envelope([], {"txid": [accepted.txid], "descr": {"order": description}})

    def _refuse(self, error: str) -> tuple[int, bytes]:
        with self._lock:
            self._state.refusals[error] += 1
        return _envelope([error])

    def _validate_add(  # noqa: C901, PLR0911, PLR0912 (one refusal per rule Kraken checks)
        self, params: Mapping[str, str], now: float
    ) -> _AddRequest | str:
        """What Kraken checks before an order reaches the engine: the request or a refusal."""
        pair = self._pair_named(self._state.pairs, params.get("pair", ""))
        side = params.get("type")
        if pair is None:
            return "EQuery:Unknown asset pair"
        if side not in {"buy", "sell"} or params.get("ordertype") != "market":
            return INVALID_ARGUMENTS
        try:
            volume = Decimal(params.get("volume", ""))
        except ArithmeticError:
            return "EGeneral:Invalid arguments:volume"
        if not volume.is_finite() or volume <= 0:
            return "EGeneral:Invalid arguments:volume"
        # Kraken's minimums per pair (AssetPairs ``ordermin`` and ``costmin``): dust cannot be
        # sold.
        if volume < ORDER_MIN:
            return "EOrder:Order minimum not met"
        if volume * pair.price < COST_MIN:
            return "EOrder:Cost minimum not met"
        cl_ord_id = params.get("cl_ord_id")
        if cl_ord_id is not None and not _valid_cl_ord_id(cl_ord_id):
            return INVALID_ARGUMENTS
        userref: int | None = None
        if "userref" in params:
            if cl_ord_id is not None:
                return INVALID_ARGUMENTS  # Kraken: cl_ord_id and userref are mutually exclusive
            try:
                userref = int(params["userref"])
            except ValueError:
                return "EGeneral:Invalid arguments:userref"
        deadline: float | None = None
        if "deadline" in params:
            deadline = _parse_rfc3339(params["deadline"])
            if deadline is None:
                return "EGeneral:Invalid arguments:deadline"
            if deadline <= now:
                return DEADLINE_ELAPSED
            if not DEADLINE_MIN_AHEAD <= deadline - now <= DEADLINE_MAX_AHEAD:
                return "EGeneral:Invalid arguments:deadline"
        expire = _parse_expiretm(params.get("expiretm", "0"))
        if expire is None:
            return "EGeneral:Invalid arguments:expiretm"
        return _AddRequest(
            params=dict(params),
            pair_id=pair.pair_id,
            side=side,
            volume=volume,
            cl_ord_id=cl_ord_id,
            userref=userref,
            deadline=deadline,
            expire_after=expire[0],
            expire_at=expire[1],
        )

    def _accept(self, request: _AddRequest, at: float) -> _Order | str:
        """The engine takes the order at `at`: the order, or why it was refused (lock held)."""
        state = self._state
        pair = self._pair(request)
        if request.deadline is not None and at > request.deadline:
            return DEADLINE_ELAPSED
        if pair.status != "online":
            return _PAIR_REFUSALS.get(pair.status, f"EService:Market in {pair.status} mode")
        if request.cl_ord_id is not None and any(
            o.cl_ord_id == request.cl_ord_id and o.status in _LIVE for o in state.orders.values()
        ):
            # Kraken checks cl_ord_id only against *open* orders.
            return "EOrder:Duplicate order"
        if request.side == "buy" and request.volume * pair.price > self._free(pair.quote):
            return "EOrder:Insufficient funds"
        if request.side == "sell" and request.volume > self._free(pair.base):
            return "EOrder:Insufficient funds"
        txid = f"O{state.next_txid:05d}-EMU{state.next_txid % 97:02d}-BGUARD"
        state.next_txid += 1
        live_at = at + state.pending_delay
        order = _Order(
            txid,
            pair,
            request.side,
            request.volume,
            at,
            request.cl_ord_id,
            request.userref,
            status="pending" if state.pending_delay > 0 else "open",
            parts=state.fill_parts,
        )
        if request.expire_after is not None:
            order.expiretm = at + request.expire_after
        elif request.expire_at is not None:
            order.expiretm = request.expire_at
        if state.fill_market_orders:
            order.fills_due = [live_at + state.fill_delay * k for k in range(1, order.parts + 1)]
        state.orders[txid] = order
        self._advance_order(order, max(at, self._now()), live_at)
        return order

    def _pair(self, request: _AddRequest) -> KrakenPair:
        return self._state.pairs[request.pair_id]

    # ------------------------------------------------------------------ internals (lock held)

    def _advance(self) -> None:
        """Let emulator time act: accept due queued orders, then fill and expire orders."""
        state = self._state
        now = self._now()
        due = sorted((q for q in state.queue if q.due <= now), key=lambda q: q.due)
        for queued in due:
            state.queue.remove(queued)
            outcome = self._accept(queued.request, queued.due)
            if isinstance(outcome, str):  # dropped: nobody hears of it but the tally
                state.refusals[outcome] += 1
        for order in state.orders.values():
            self._advance_order(order, now, order.opentm + state.pending_delay)

    def _advance_order(self, order: _Order, now: float, live_at: float) -> None:
        if order.frozen or order.status not in _LIVE:
            return
        if order.status == "pending" and live_at <= now:
            order.status = "open"
        online = self._state.pairs[order.pair.pair_id].status == "online"
        while (
            online
            and order.status == "open"
            and order.fills_due
            and order.fills_due[0] <= now
            and (order.expiretm is None or order.fills_due[0] < order.expiretm)
        ):
            self._fill_part(order, order.fills_due.pop(0))
        if order.status in _LIVE and order.expiretm is not None and now >= order.expiretm:
            order.status = "expired"
            order.closetm = order.expiretm
            order.fills_due.clear()

    def _fill_part(self, order: _Order, at: float) -> None:
        """Execute the next part of `order` at the pair's price of the moment."""
        done = order.parts - len(order.fills_due)
        target = order.volume
        if done < order.parts:
            target = (order.volume * done / order.parts).quantize(_LOT, rounding=ROUND_DOWN)
        part = target - order.vol_exec
        price = self._state.pairs[order.pair.pair_id].price
        balances = self._state.balances
        sign = 1 if order.side == "buy" else -1
        base, quote = order.pair.base, order.pair.quote
        balances[base] = balances.get(base, Decimal(0)) + sign * part
        balances[quote] = balances.get(quote, Decimal(0)) - sign * part * price
        order.vol_exec += part
        order.cost += part * price
        order.trades.append(f"T{self._state.next_trade:05d}-EMU{self._state.next_trade % 97:02d}")
        self._state.next_trade += 1
        if order.vol_exec >= order.volume:
            order.status = "closed"
            order.closetm = at

    def _find(self, ref: str) -> _Order | None:
        """An order by txid, else the newest with that cl_ord_id, else with that userref."""
        orders = self._state.orders
        if ref in orders:
            return orders[ref]
        newest_first = list(orders.values())[::-1]
        return next((o for o in newest_first if o.cl_ord_id == ref), None) or next(
            (o for o in newest_first if o.userref is not None and str(o.userref) == ref), None
        )

    def _select(self, params: Mapping[str, str], *, closed: bool) -> dict[str, Any]:
        cl_ord_id = params.get("cl_ord_id")
        userref = params.get("userref")
        with_trades = _truthy(params.get("trades"))
        result = {}
        for order in self._state.orders.values():
            if (order.status not in _LIVE) != closed:
                continue
            if cl_ord_id is not None and order.cl_ord_id != cl_ord_id:
                continue
            if userref is not None and str(order.userref) != userref:
                continue
            result[order.txid] = order.payload(listing=not closed, with_trades=with_trades)
        return result

    def _held(self) -> dict[str, Decimal]:
        held: dict[str, Decimal] = defaultdict(Decimal)
        for order in self._state.orders.values():
            if order.status in _LIVE:
                if order.side == "buy":
                    price = self._state.pairs[order.pair.pair_id].price
                    held[order.pair.quote] += order.remaining * price
                else:
                    held[order.pair.base] += order.remaining
        return held

    def _free(self, asset: str) -> Decimal:
        return self._state.balances.get(asset, Decimal(0)) - self._held().get(asset, Decimal(0))


def _check_pair_status(status: str) -> None:
    if status not in PAIR_STATUSES:
        raise ValueError(f"not a Kraken pair status: {status!r} (one of {sorted(PAIR_STATUSES)})")


def _valid_cl_ord_id(value: str) -> bool:
    """Kraken's three formats: long UUID, short UUID (32 hex), or ASCII text of 1-18 chars."""
    if _UUID_LONG.fullmatch(value) or _UUID_SHORT.fullmatch(value):
        return True
    return 0 < len(value) <= CL_ORD_ID_FREE_TEXT_MAX and value.isascii() and value.isprintable()


def _parse_rfc3339(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 date-time with an offset (``2021-04-01T00:18:45Z``)."""
    if "T" not in text.upper():
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()


def _parse_expiretm(text: str) -> tuple[float | None, float | None] | None:
    """Kraken's ``expiretm``: ``0`` (never), ``+<n>`` (n seconds after acceptance) or a time."""
    try:
        value = Decimal(text.removeprefix("+"))
    except InvalidOperation:
        return None
    if not value.is_finite() or value < 0:
        return None
    if value == 0:
        return (None, None)
    return (float(value), None) if text.startswith("+") else (None, float(value))


def _split_delayed(argument: str) -> tuple[float, str]:
    """``"1.5"`` or ``"1.5:<answer fault>"`` -> (1.5, answer)."""
    delay, _, answer = argument.partition(":")
    seconds = float(delay)
    if not seconds >= 0:
        raise ValueError(f"delayed_accept needs a delay in seconds, not {delay!r}")
    return seconds, answer or DELAYED_ANSWER


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in {"true", "1"}


def _decimals(asset: str) -> tuple[int, int]:
    """(decimals, display_decimals) of a Kraken asset id; a suffixed id takes its base's."""
    return _DECIMALS.get(asset.partition(".")[0], (10, 5))


def _amount(asset: str, value: Decimal) -> str:
    return f"{value:.{_decimals(asset)[0]}f}"


def _describe(side: str, volume: Decimal, pair: KrakenPair) -> str:
    return f"{side} {volume:.8f} {pair.altname} @ market"


def _wsname(pair: KrakenPair) -> str:
    return (
        f"{DEFAULT_ASSETS.get(pair.base, pair.base)}/{DEFAULT_ASSETS.get(pair.quote, pair.quote)}"
    )


def _envelope(errors: list[str], result: object = None) -> tuple[int, bytes]:
    body: dict[str, Any] = {"error": errors}
    if not errors:
        body["result"] = result
    return 200, json.dumps(body).encode()


def _omit(payload: bytes, keys: set[str]) -> bytes:
    """Drop `keys` from a successful answer's result (and from its open/closed order maps)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return payload
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, dict):
        return payload
    for mapping in (result, result.get("open"), result.get("closed")):
        if isinstance(mapping, dict):
            for key in keys:
                mapping.pop(key, None)
    return json.dumps(body).encode()


def _apply_fault(fault: str) -> tuple[int, bytes]:
    if fault.startswith("http:"):
        code = int(fault.removeprefix("http:"))
        return code, f"<html><body><h1>{code}</h1>upstream trouble</body></html>".encode()
    if fault.startswith("slow:"):
        time.sleep(float(fault.removeprefix("slow:")))  # wall-clock-ok: emulating a slow server
        return _envelope(["EService:Busy"])
    if fault == "malformed":
        return 200, b'{"error": [], "result": {"unterminated'
    if fault == "empty_result":
        return _envelope([], {})
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
