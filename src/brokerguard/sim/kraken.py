"""A Kraken REST emulator on 127.0.0.1, for driving the real ``ccxt.kraken`` client in tests.

It speaks enough of Kraken's spot REST API for brokerguard's adapter and for a freqtrade bot:
public ``Time``, ``SystemStatus``, ``Assets``, ``AssetPairs``, ``Ticker``, ``OHLC`` (candles
of the prices :meth:`KrakenEmulator.set_price` set, see :data:`MARKET_VOLUME`), ``Depth`` (one
level each side: the Ticker's ask and bid) and ``Trades`` (the account's own executions);
private ``Balance``, ``BalanceEx`` (``hold_trade``: what open orders reserve), ``OpenOrders``,
``ClosedOrders``, ``QueryOrders``, ``AddOrder``, ``CancelOrder`` (by ``txid``, ``userref`` or
``cl_ord_id``), ``CancelOrderBatch``, ``CancelAll``, ``CancelAllOrdersAfter`` and
``TradesHistory`` (every execution, newest first, 50 a page), all in the ``{"error": [...],
"result": ...}`` envelope, with ``API-Key`` / ``API-Sign`` checked and nonces required to
increase per key, as Kraken does.

AddOrder takes ``market`` and ``limit`` orders (``price`` on the pair's tick) with ``cl_ord_id``,
``userref``, ``deadline``, ``expiretm``, ``validate``, ``timeinforce`` (``GTC``, ``IOC``, ``GTD``
with an ``expiretm``; anything else, ``FOK`` included, is ``EGeneral:Invalid arguments:
timeinforce``), ``oflags`` (``post``: refused with ``EOrder:Post only order`` when it would take
liquidity) and ``reduce_only`` (a spot account has no margin position to reduce: ``true`` is
``EOrder:Reduce only:No position exists``). Limit orders match against the Ticker's ask and bid
(the pair's price plus and minus 0.01 %): a marketable one fills at once at the ask or bid, a
resting one (status ``open``, its quote or base held) fills at its own price when
:meth:`KrakenEmulator.set_price` moves the touch to it; ``IOC`` fills at once or is ``canceled``.
Market orders fill at the pair's price. ``CancelAllOrdersAfter`` arms Kraken's dead man's switch:
when its timer runs out every open order is cancelled and the switch disarms
(:attr:`KrakenEmulator.dead_man_switch` shows it).

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
``"accept_then:http:504"``        the request is served (AddOrder places, CancelOrder cancels, a
                                  limit order may fill), then answered with the fault
``"delayed_accept:1.5"``          AddOrder (market or limit) is queued in the engine: it answers
                                  ``EService:Unavailable`` now, and the order is accepted (and,
                                  if due, filled) 1.5 s of emulator time later, invisible to every
                                  lookup until then
``"delayed_accept:1.5:slow:3"``   the same with any answer fault (here: the client times out);
                                  on another endpoint only the answer fault is served
================================  ==================================================================

Every delay (``fill_delay``, ``accept_delay``, ``pending_delay``, ``delayed_accept:``,
``expiretm``, ``deadline``, the dead man's switch) is measured with ``time_source`` (default
``time.time``), so a test steps time instead of sleeping; only ``slow:`` sleeps in real seconds.
Time moves lazily: queued orders are accepted, orders fill and expire, and the switch fires when
the next request (or :meth:`orders`, :meth:`balances`, :attr:`dead_man_switch`) looks; each
event is stamped with the moment it was due, in order, so an order the switch cancelled at its
trigger time cannot fill after it.

Cancelling an order that is no longer open answers ``EOrder:Unknown order`` when it was
cancelled or expired (ccxt issue 7338; ccxt raises ``OrderNotFound``) and ``{"count": 0}`` when
it filled; a ``cl_ord_id`` is known only among open orders.

The engine queue is how Kraken produces duplicate orders: AddOrder answers a timeout or an
``EService`` error, a lookup made at once finds nothing, the client resends, and the first order
is accepted seconds later. ``deadline`` (RFC 3339, from now + 2 s to now + 60 s, as Kraken
documents it) bounds that: an order whose deadline has passed when the engine would accept it is
dropped and never appears (``EService:Deadline elapsed`` if it was not queued). Orders can also
fill in parts (``fill_parts``), rest ``pending`` (``pending_delay``), expire (``expiretm``) or be
given any status (:meth:`KrakenEmulator.set_order_status`); a pair can be put in ``cancel_only``,
``post_only``, ``limit_only``, ``reduce_only``, ``maintenance`` or ``delisted``
(:meth:`KrakenEmulator.set_pair_status`): new orders on it are refused as Kraken refuses them
(``post_only`` still takes post-only limit orders, ``limit_only`` limit orders) and nothing on it
fills until it is ``online`` again.

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
import math
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

__all__ = ["DeadManSwitch", "KrakenEmulator", "KrakenPair", "RecordedRequest", "running_kraken"]

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
UNKNOWN_ORDER: Final = "EOrder:Unknown order"
INSUFFICIENT_FUNDS: Final = "EOrder:Insufficient funds"
POST_ONLY_REFUSED: Final = "EOrder:Post only order"
"""Kraken's refusal of a post-only limit order that would take liquidity (ccxt: ExchangeError)."""
NO_POSITION: Final = "EOrder:Reduce only:No position exists"
"""Kraken's answer to ``reduce_only=true`` "for a market that has no open positions" (its Spot
Error Messages guide): a spot account never has a margin position to reduce."""
TICK_SIZE_FAILED: Final = "EOrder:Tick size check failed"

USER_REQUESTED: Final = "User requested"
"""The ``reason`` of an order cancelled by CancelOrder or CancelAll (recorded by ccxt)."""
IOC_UNFILLED: Final = "Unfilled IOC"
"""The ``reason`` of an IOC limit order that found nothing to match (no Kraken document read
spells this one: an assumption, kept in one place)."""
DEAD_MAN_SWITCH_FIRED: Final = "Cancel all orders after"
"""The ``reason`` of an order the dead man's switch cancelled (an assumption, like the above)."""
DEAD_MAN_SWITCH_MAX: Final = 86400
"""CancelAllOrdersAfter's ``timeout`` "should be less than 86400 seconds" (Kraken's reference)."""
EXPIRETM_MIN_AHEAD: Final = 5
"""AddOrder's relative ``expiretm`` ``+<n>``: "minimum 5 seconds" (Kraken's reference)."""
TIME_IN_FORCE: Final = frozenset({"GTC", "IOC", "GTD"})
"""Kraken spot's ``timeinforce`` values (no FOK on spot REST)."""
ORDER_FLAGS: Final = frozenset({"post", "fcib", "fciq", "nompp", "viqc"})
BATCH_MAX: Final = 50
"""CancelOrderBatch: "maximum 50 total unique IDs/references" (Kraken's reference)."""
ASK_MARKUP: Final = Decimal("1.0001")
"""The Ticker's ask is the pair's price plus 0.01 %, its bid the price minus 0.01 %."""
BOOK_VOLUME: Final = "1.000"
"""The volume Depth shows at the ask and the bid (the Ticker's lot volume)."""
MARKET_VOLUME: Final = Decimal(1)
"""The base volume every OHLC candle carries besides the account's own executions: the rest of
the market, so a strategy that skips empty candles (``volume > 0``) still sees a live pair."""
OHLC_INTERVALS: Final = frozenset({1, 5, 15, 30, 60, 240, 1440, 10080, 21600})
"""OHLC's ``interval`` in minutes (Kraken's reference)."""
OHLC_MAX: Final = 720
"""OHLC answers at most the 720 most recent candles, whatever ``since`` asks (Kraken)."""

ORDER_MIN: Final = Decimal("0.0001")
"""Every pair's ``ordermin`` (the smallest volume AddOrder takes)."""
COST_MIN: Final = Decimal("0.5")
"""Every pair's ``costmin`` (the smallest order value, in the quote currency)."""
CL_ORD_ID_FREE_TEXT_MAX: Final = 18
"""Kraken's ``cl_ord_id``: a long or short UUID, or free ASCII text of at most 18 characters."""

_UUID_LONG: Final = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_UUID_SHORT: Final = re.compile(r"[0-9a-fA-F]{32}")
_LIVE: Final = frozenset({"pending", "open"})  # what OpenOrders lists
_GONE: Final = frozenset({"canceled", "expired"})  # CancelOrder answers EOrder:Unknown order
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


@dataclass(frozen=True, slots=True)
class DeadManSwitch:
    """Kraken's CancelAllOrdersAfter timer as the emulator holds it (``time_source`` seconds)."""

    trigger_at: float | None
    """When every open order will be cancelled; None: disarmed (never armed, set to 0, fired)."""
    fired_at: tuple[float, ...]
    """Every moment the timer ran out, oldest first."""
    cancelled: int
    """How many orders it cancelled in all."""

    @property
    def armed(self) -> bool:
        """Whether a timer is running."""
        return self.trigger_at is not None


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
    ordertype: str = "market"
    price: Decimal | None = None  # the limit price
    timeinforce: str = "GTC"
    oflags: tuple[str, ...] = ()
    reduce_only: bool = False

    @property
    def post_only(self) -> bool:
        return "post" in self.oflags


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
    ordertype: str = "market"
    limit_price: Decimal | None = None
    timeinforce: str = "GTC"
    oflags: tuple[str, ...] = ()
    rested: bool = False  # it sat in the book unmatched: it fills as maker, at its own price

    @property
    def remaining(self) -> Decimal:
        return self.volume - self.vol_exec

    def close(self, status: str, at: float, reason: str | None = None) -> None:
        """End the order (``canceled``, ``expired``): it leaves the book at `at`."""
        self.status = status
        self.closetm = at
        self.reason = reason
        self.fills_due.clear()

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
                    "ordertype": self.ordertype,
                    "price": "0"
                    if self.limit_price is None
                    else _price(self.pair, self.limit_price),
                    "price2": "0",
                    "leverage": "none",
                    "order": _describe(self.side, self.volume, self.pair, self.limit_price),
                    "close": "",
                },
                "vol": f"{self.volume:.8f}",
                "vol_exec": f"{self.vol_exec:.8f}",
                "cost": f"{self.cost:.6f}",
                "fee": "0.000000",
                "price": "0.000000" if average is None else f"{average:.5f}",
                "stopprice": "0.000000",
                # Kraken's limitprice is the limit of a triggered (stop/take-profit) order: a plain
                # limit order shows its limit in descr.price and "0.000000" here, as recorded.
                "limitprice": "0.000000",
                "misc": "",
                "oflags": _oflags_text(self.oflags),
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
    moved_at: dict[str, float] = field(default_factory=dict)  # a pair's last price/mode change
    switch_at: float | None = None  # the dead man's switch's trigger time
    switch_fired: list[float] = field(default_factory=list)
    switch_cancelled: int = 0
    executions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # TradesHistory
    # Every price a pair had, from its first (time -inf) on, oldest first: OHLC's candles.
    price_moves: dict[str, list[tuple[float, Decimal]]] = field(default_factory=dict)


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
            price_moves={p.pair_id: [(-math.inf, p.price)] for p in pairs},
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
        """Move a pair's last price, and with it the Ticker's ask and bid, now.

        What was due before is settled at the old price first; market orders fill at the price
        of the moment, and resting limit orders the new touch reaches fill (at their own price)
        as of now, seen by the next request.
        """
        with self._lock:
            self._advance()
            pair = self._state.pairs[pair_id]
            self._state.pairs[pair_id] = dataclasses.replace(pair, price=Decimal(str(price)))
            self._state.moved_at[pair_id] = self._now()
            self._state.price_moves[pair_id].append((self._now(), Decimal(str(price))))

    def set_pair_status(self, pair_id: str, status: str) -> None:
        """Put a pair in a trading mode (``online``, ``cancel_only``, ``maintenance``, ...).

        AssetPairs reports it; new orders on a pair that is not ``online`` are refused as Kraken
        refuses them, and nothing on it fills until it is ``online`` again.
        """
        _check_pair_status(status)
        with self._lock:
            self._advance()
            pair = self._state.pairs[pair_id]
            self._state.pairs[pair_id] = dataclasses.replace(pair, status=status)
            self._state.moved_at[pair_id] = self._now()

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
        """The account's balances by Kraken asset id (what open orders hold included)."""
        with self._lock:
            self._advance()
            return dict(self._state.balances)

    def held(self) -> dict[str, Decimal]:
        """What open orders hold, by Kraken asset id (BalanceEx's ``hold_trade``)."""
        with self._lock:
            self._advance()
            return {k: v for k, v in self._held().items() if v}

    @property
    def dead_man_switch(self) -> DeadManSwitch:
        """The CancelAllOrdersAfter timer: armed or not, when it fires, when it fired."""
        with self._lock:
            self._advance()
            state = self._state
            return DeadManSwitch(
                trigger_at=state.switch_at,
                fired_at=tuple(state.switch_fired),
                cancelled=state.switch_cancelled,
            )

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
        if headers.get("content-type", "").startswith("application/json"):
            # CancelOrderBatch (and AddOrderBatch) travel as JSON, signed the same way.
            params = _json_params(text)
            if params is None:
                return _envelope([INVALID_ARGUMENTS])
        else:
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
                "pair_decimals": _pair_decimals(p),
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
                "tick_size": str(_tick(p)),
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
                "a": [f"{_ask(pair):.5f}", "1", "1.000"],
                "b": [f"{_bid(pair):.5f}", "1", "1.000"],
                "c": [last, "0.01000000"],
                "v": ["100.0", "250.0"],
                "p": [last, last],
                "t": [1000, 2500],
                "l": [last, last],
                "h": [last, last],
                "o": last,
            }
        return _envelope([], result)

    def _public_SystemStatus(self, _params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        # While down the front door answers 503 before this: reachable means online.
        return _envelope([], {"status": "online", "timestamp": _rfc3339_seconds(self._now())})

    def _public_OHLC(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        """Candles of `interval` minutes since `since` (at most 720, the newest one still open)."""
        try:
            interval = int(params.get("interval", "1") or 1)
            since = float(params.get("since", "0") or 0)
        except ValueError:
            return _envelope(["EGeneral:Invalid arguments"])
        if interval not in OHLC_INTERVALS:
            return _envelope(["EGeneral:Invalid arguments"])
        with self._lock:
            pair = self._pair_named(self._state.pairs, params.get("pair", ""))
            if pair is None:
                return _envelope(["EQuery:Unknown asset pair"])
            now = self._now()
            step = interval * 60
            current = int(now // step) * step
            first = max(current - (OHLC_MAX - 1) * step, (int(since) // step + 1) * step)
            moves = list(self._state.price_moves[pair.pair_id])
            trades = [e for _, e in self._state.executions if e["pair"] == pair.pair_id]
        candles = [
            _candle(pair, start, start + step, moves, trades)
            for start in range(first, current + 1, step)
        ]
        return _envelope([], {pair.pair_id: candles, "last": current - step})

    def _public_Depth(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        """The book: one level each side, the Ticker's ask and bid (``count`` is accepted)."""
        with self._lock:
            pair = self._pair_named(self._state.pairs, params.get("pair", ""))
            now = int(self._now())
        if pair is None:
            return _envelope(["EQuery:Unknown asset pair"])
        book = {
            "asks": [[f"{_ask(pair):.5f}", BOOK_VOLUME, now]],
            "bids": [[f"{_bid(pair):.5f}", BOOK_VOLUME, now]],
        }
        return _envelope([], {pair.pair_id: book})

    def _public_Trades(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        """The pair's recent trades (the account's own executions), oldest first."""
        try:
            since = float(params.get("since", "0") or 0)
        except ValueError:
            return _envelope(["EGeneral:Invalid arguments"])
        if since > 1e12:  # noqa: PLR2004 (Kraken's "last" is in nanoseconds; seconds work too)
            since /= 1e9
        with self._lock:
            pair = self._pair_named(self._state.pairs, params.get("pair", ""))
            if pair is None:
                return _envelope(["EQuery:Unknown asset pair"])
            found = [
                e
                for _, e in self._state.executions
                if e["pair"] == pair.pair_id and e["time"] > since
            ][-1000:]
        rows = [
            [
                e["price"],
                e["vol"],
                e["time"],
                e["type"][0],
                e["ordertype"][0],
                "",
                e["trade_id"],
            ]
            for e in found
        ]
        last = int((found[-1]["time"] if found else since) * 1e9)
        return _envelope([], {pair.pair_id: rows, "last": str(last)})

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

    def _private_TradesHistory(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        """The account's executions, newest first, 50 a page (``start``/``end`` in seconds)."""
        try:
            start = float(params.get("start", "0") or 0)
            end = float(params.get("end", "inf") or "inf")
            offset = int(params.get("ofs", "0") or 0)
        except ValueError:
            return _envelope([INVALID_ARGUMENTS])
        with self._lock:
            found = [(t, e) for t, e in self._state.executions if start <= e["time"] <= end]
        page = found[::-1][offset : offset + 50]
        return _envelope([], {"trades": dict(page), "count": len(found)})

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
                chosen = [o for o in self._live() if o.cl_ord_id == cl_ord_id][-1:]
            else:
                chosen = self._cancel_targets(params.get("txid", ""))
            if not chosen:
                return _envelope([UNKNOWN_ORDER])
            if any(self._pair_status(o) == "maintenance" for o in chosen):
                return _envelope([_PAIR_REFUSALS["maintenance"]])
            if all(o.status not in _LIVE for o in chosen):
                # Kraken cancels open orders only: one already filled, cancelled or expired is
                # unknown to CancelOrder (ccxt issue 7338 shows the cancelled case).
                return _envelope([UNKNOWN_ORDER])
            return _envelope([], {"count": self._cancel(chosen, USER_REQUESTED)})

    def _private_CancelOrderBatch(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        refs = _batch_refs(params.get("orders"), "txid")
        cl_ord_ids = _batch_refs(params.get("cl_ord_ids"), "cl_ord_id")
        if refs is None or cl_ord_ids is None or not 0 < len(refs) + len(cl_ord_ids) <= BATCH_MAX:
            return _envelope([INVALID_ARGUMENTS])
        with self._lock:
            chosen = [o for ref in refs for o in self._cancel_targets(ref)]
            chosen += [o for o in self._live() if o.cl_ord_id in cl_ord_ids]
            chosen = [o for o in chosen if self._pair_status(o) != "maintenance"]
            return _envelope([], {"count": self._cancel(chosen, USER_REQUESTED)})

    def _private_CancelAll(self, _params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        with self._lock:
            chosen = [o for o in self._live() if self._pair_status(o) != "maintenance"]
            return _envelope([], {"count": self._cancel(chosen, USER_REQUESTED)})

    def _private_CancelAllOrdersAfter(self, params: Mapping[str, str]) -> tuple[int, bytes]:  # noqa: N802
        try:
            timeout = int(params.get("timeout", ""))
        except ValueError:
            return _envelope(["EGeneral:Invalid arguments:timeout"])
        if not 0 <= timeout < DEAD_MAN_SWITCH_MAX:
            return _envelope(["EGeneral:Invalid arguments:timeout"])
        with self._lock:
            now = self._now()
            self._state.switch_at = now + timeout if timeout else None
        # Kraken: RFC 3339 at second precision, rounded up; "0" when the timer is off.
        trigger = "0" if not timeout else _rfc3339_seconds(now + timeout)
        return _envelope([], {"currentTime": _rfc3339_seconds(now), "triggerTime": trigger})

    # ------------------------------------------------------------------ AddOrder

    def _add_order(self, params: Mapping[str, str], delay: float, answer: str) -> tuple[int, bytes]:
        """Validate, then accept now, or queue for `delay` seconds and answer `answer`."""
        with self._lock:
            now = self._now()
            request = self._validate_add(params, now)
            if isinstance(request, str):
                return self._refuse(request)
            if _truthy(params.get("validate")):
                pair = self._pair(request)
                description = _describe(request.side, request.volume, pair, request.price)
                return _envelope([], {"descr": {"order": description}})
            accepted: _Order | str | None = None
            if delay > 0:
                self._state.queue.append(_Queued(request, now + delay))
            else:
                accepted = self._accept(request, now, now)
        if accepted is None:
            return _apply_fault(answer)  # outside the lock: it may be a slow answer
        if isinstance(accepted, str):
            return self._refuse(accepted)
        description = _describe(accepted.side, accepted.volume, accepted.pair, accepted.limit_price)
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
        ordertype = params.get("ordertype", "")
        if pair is None:
            return "EQuery:Unknown asset pair"
        if side not in {"buy", "sell"} or ordertype not in {"market", "limit"}:
            return INVALID_ARGUMENTS  # nor does the emulator speak stop, trailing or iceberg orders
        volume = _positive(params.get("volume", ""))
        if volume is None:
            return "EGeneral:Invalid arguments:volume"
        price: Decimal | None = None
        if ordertype == "limit":
            price = _positive(params.get("price", ""))
            if price is None:
                return "EGeneral:Invalid arguments:price"
            if price % _tick(pair):
                return TICK_SIZE_FAILED
        # Kraken's minimums per pair (AssetPairs ``ordermin`` and ``costmin``): dust cannot be
        # sold.
        if volume < ORDER_MIN:
            return "EOrder:Order minimum not met"
        if volume * (price or pair.price) < COST_MIN:
            return "EOrder:Cost minimum not met"
        terms = _order_terms(params, ordertype)
        if isinstance(terms, str):
            return terms
        ids = _client_ids(params)
        if isinstance(ids, str):
            return ids
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
        if (
            expire is None
            or (expire[0] is not None and expire[0] < EXPIRETM_MIN_AHEAD)
            or (terms[0] == "GTD" and expire == (None, None))  # GTD "must coincide with" one
        ):
            return "EGeneral:Invalid arguments:expiretm"
        return _AddRequest(
            params=dict(params),
            pair_id=pair.pair_id,
            side=side,
            volume=volume,
            cl_ord_id=ids[0],
            userref=ids[1],
            deadline=deadline,
            expire_after=expire[0],
            expire_at=expire[1],
            ordertype=ordertype,
            price=price,
            timeinforce=terms[0],
            oflags=terms[1],
            reduce_only=terms[2],
        )

    def _accept(self, request: _AddRequest, at: float, until: float) -> _Order | str:
        """The engine takes the order at `at` and runs it to `until`: the order, or a refusal."""
        state = self._state
        pair = self._pair(request)
        if request.deadline is not None and at > request.deadline:
            return DEADLINE_ELAPSED
        refusal = self._engine_refusal(request, pair)
        if refusal is not None:
            return refusal
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
            ordertype=request.ordertype,
            limit_price=request.price,
            timeinforce=request.timeinforce,
            oflags=request.oflags,
            rested=request.post_only,  # a post-only order never takes: it fills as maker
        )
        if request.expire_after is not None:
            order.expiretm = at + request.expire_after
        elif request.expire_at is not None:
            order.expiretm = request.expire_at
        if request.ordertype == "market" and state.fill_market_orders:
            order.fills_due = [live_at + state.fill_delay * k for k in range(1, order.parts + 1)]
        state.orders[txid] = order
        self._advance_order(order, max(at, until), live_at)
        return order

    def _engine_refusal(  # noqa: PLR0911 (one refusal per rule the engine checks)
        self, request: _AddRequest, pair: KrakenPair
    ) -> str | None:
        """Why the engine refuses `request` as it arrives (mode, id, position, funds), or None."""
        mode = pair.status
        if mode != "online" and not (
            (mode == "limit_only" and request.ordertype == "limit")
            or (mode == "post_only" and request.post_only)
        ):
            return _PAIR_REFUSALS.get(mode, f"EService:Market in {mode} mode")
        if request.cl_ord_id is not None and any(
            o.cl_ord_id == request.cl_ord_id for o in self._live()
        ):
            # Kraken checks cl_ord_id only against *open* orders.
            return "EOrder:Duplicate order"
        if request.reduce_only:
            return NO_POSITION
        if request.post_only and _marketable(request.side, request.price, pair):
            return POST_ONLY_REFUSED
        if request.side == "buy":
            # What a buy holds: its volume at its limit (a market order: at the price of now).
            if request.volume * (request.price or pair.price) > self._free(pair.quote):
                return INSUFFICIENT_FUNDS
        elif request.volume > self._free(pair.base):
            return INSUFFICIENT_FUNDS
        return None

    def _pair(self, request: _AddRequest) -> KrakenPair:
        return self._state.pairs[request.pair_id]

    # ------------------------------------------------------------------ internals (lock held)

    def _advance(self) -> None:
        """Let emulator time act up to now; the dead man's switch fires at its own moment."""
        now = self._now()
        trigger = self._state.switch_at
        if trigger is not None and trigger <= now:
            self._advance_to(trigger)
            self._fire_switch(trigger)
        self._advance_to(now)

    def _advance_to(self, now: float) -> None:
        """Accept queued orders due by `now`, then fill, match and expire orders up to `now`."""
        state = self._state
        due = sorted((q for q in state.queue if q.due <= now), key=lambda q: q.due)
        for queued in due:
            state.queue.remove(queued)
            outcome = self._accept(queued.request, queued.due, now)
            if isinstance(outcome, str):  # dropped: nobody hears of it but the tally
                state.refusals[outcome] += 1
        for order in state.orders.values():
            self._advance_order(order, now, order.opentm + state.pending_delay)

    def _fire_switch(self, at: float) -> None:
        """The timer ran out at `at`: every open order is cancelled, and the switch disarms."""
        state = self._state
        state.switch_at = None
        state.switch_fired.append(at)
        state.switch_cancelled += self._cancel(self._live(), DEAD_MAN_SWITCH_FIRED, at)

    def _advance_order(self, order: _Order, now: float, live_at: float) -> None:
        if order.frozen or order.status not in _LIVE:
            return
        if order.status == "pending" and live_at <= now:
            order.status = "open"
        if order.ordertype == "limit":
            self._match_limit(order, now, live_at)
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
            order.close("expired", order.expiretm)

    def _match_limit(self, order: _Order, now: float, live_at: float) -> None:
        """Meet an open limit order with the touch: it fills, rests, or (IOC) is cancelled."""
        if order.status != "open":
            return
        pair = self._state.pairs[order.pair.pair_id]
        # Every order is looked at before each price or mode change, so the first moment it can
        # match what it sees now is when it went live or when the pair last changed.
        moment = min(now, max(live_at, self._state.moved_at.get(pair.pair_id, live_at)))
        if order.expiretm is not None and moment >= order.expiretm:
            return
        if pair.status == "online" and _marketable(order.side, order.limit_price, pair):
            # Taking liquidity on arrival it trades at the touch; resting, at its own price.
            price = order.limit_price if order.rested else _touch(order.side, pair)
            self._execute(order, order.remaining, price or pair.price, moment)
        elif order.timeinforce == "IOC":
            order.close("canceled", moment, IOC_UNFILLED)
        elif pair.status == "online":
            order.rested = True  # in the book below the touch (a halted book decides nothing)

    def _fill_part(self, order: _Order, at: float) -> None:
        """Execute the next part of a market order at the pair's price of the moment."""
        done = order.parts - len(order.fills_due)
        target = order.volume
        if done < order.parts:
            target = (order.volume * done / order.parts).quantize(_LOT, rounding=ROUND_DOWN)
        price = self._state.pairs[order.pair.pair_id].price
        self._execute(order, target - order.vol_exec, price, at)

    def _execute(self, order: _Order, part: Decimal, price: Decimal, at: float) -> None:
        """Trade `part` of `order` at `price`: balances move, and a full order closes at `at`."""
        balances = self._state.balances
        sign = 1 if order.side == "buy" else -1
        base, quote = order.pair.base, order.pair.quote
        balances[base] = balances.get(base, Decimal(0)) + sign * part
        balances[quote] = balances.get(quote, Decimal(0)) - sign * part * price
        order.vol_exec += part
        order.cost += part * price
        trade_id = f"T{self._state.next_trade:05d}-EMU{self._state.next_trade % 97:02d}"
        order.trades.append(trade_id)
        self._state.executions.append(
            (
                trade_id,
                {
                    "ordertxid": order.txid,
                    "postxid": f"P{self._state.next_trade:05d}-EMU",
                    "pair": order.pair.pair_id,
                    "time": at,
                    "type": order.side,
                    "ordertype": order.ordertype,
                    "price": _amount(quote, price),
                    "cost": _amount(quote, part * price),
                    "fee": _amount(quote, Decimal(0)),
                    "vol": f"{part:.8f}",
                    "margin": _amount(quote, Decimal(0)),
                    "misc": "",
                    "trade_id": self._state.next_trade,
                    "maker": order.rested,
                },
            )
        )
        self._state.next_trade += 1
        if order.vol_exec >= order.volume:
            order.status = "closed"
            order.closetm = at
            order.fills_due.clear()

    def _live(self) -> list[_Order]:
        """The orders OpenOrders lists (``pending`` and ``open``), oldest first."""
        return [o for o in self._state.orders.values() if o.status in _LIVE]

    def _pair_status(self, order: _Order) -> str:
        return self._state.pairs[order.pair.pair_id].status

    def _cancel_targets(self, ref: str) -> list[_Order]:
        """CancelOrder's ``txid``: one order by its txid, or every open order with a userref."""
        orders = self._state.orders
        if ref in orders:
            return [orders[ref]]
        if ref.removeprefix("-").isdigit():
            return [o for o in self._live() if o.userref == int(ref)]
        return []

    def _cancel(self, orders: list[_Order], reason: str, at: float | None = None) -> int:
        """Cancel those of `orders` still open (at `at`, default now); how many were."""
        when = self._now() if at is None else at
        live = [o for o in orders if o.status in _LIVE]
        for order in live:
            order.close("canceled", when, reason)
        return len(live)

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
        """What open orders reserve: a buy its quote at its limit, a sell its base.

        A market buy still open holds its quote at the price of now.
        """
        held: dict[str, Decimal] = defaultdict(Decimal)
        for order in self._live():
            if order.side == "buy":
                price = order.limit_price or self._state.pairs[order.pair.pair_id].price
                held[order.pair.quote] += order.remaining * price
            else:
                held[order.pair.base] += order.remaining
        return held

    def _free(self, asset: str) -> Decimal:
        return self._state.balances.get(asset, Decimal(0)) - self._held().get(asset, Decimal(0))


def _price_at(moves: list[tuple[float, Decimal]], moment: float) -> Decimal:
    """The price of the last move at or before `moment` (the first price before any)."""
    price = moves[0][1]
    for at, value in moves:
        if at > moment:
            break
        price = value
    return price


def _candle(
    pair: KrakenPair,
    start: int,
    end: float,
    moves: list[tuple[float, Decimal]],
    trades: list[dict[str, Any]],
) -> list[Any]:
    """One OHLC row ``[time, open, high, low, close, vwap, volume, count]`` for [start, end)."""
    opening = _price_at(moves, start)
    inside = [value for at, value in moves if start < at < end]
    closing = inside[-1] if inside else opening
    mine = [t for t in trades if start <= t["time"] < end]
    volume = MARKET_VOLUME + sum((Decimal(t["vol"]) for t in mine), Decimal(0))
    prices = [opening, *inside]
    return [
        start,
        _price(pair, opening),
        _price(pair, max(prices)),
        _price(pair, min(prices)),
        _price(pair, closing),
        _price(pair, closing),
        f"{volume:.8f}",
        len(mine) + 1,
    ]


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


def _describe(side: str, volume: Decimal, pair: KrakenPair, price: Decimal | None = None) -> str:
    """Kraken's ``descr.order``: ``buy 0.10000000 XBTUSD @ market`` or ``... @ limit 64000.0``."""
    kind = "market" if price is None else f"limit {_price(pair, price)}"
    return f"{side} {volume:.8f} {pair.altname} @ {kind}"


def _pair_decimals(pair: KrakenPair) -> int:
    """AssetPairs ``pair_decimals`` (Kraken: XBTUSD 1, ETHUSD and SOLUSD 2)."""
    return 1 if pair.base == "XXBT" else 2


def _tick(pair: KrakenPair) -> Decimal:
    """AssetPairs ``tick_size``: one unit of the last price decimal."""
    return Decimal(1).scaleb(-_pair_decimals(pair))


def _price(pair: KrakenPair, value: Decimal) -> str:
    return f"{value:.{_pair_decimals(pair)}f}"


def _ask(pair: KrakenPair) -> Decimal:
    return pair.price * ASK_MARKUP


def _bid(pair: KrakenPair) -> Decimal:
    return pair.price * (2 - ASK_MARKUP)


def _touch(side: str, pair: KrakenPair) -> Decimal:
    """Where an order taking liquidity trades: a buy at the ask, a sell at the bid."""
    return _ask(pair) if side == "buy" else _bid(pair)


def _marketable(side: str, limit: Decimal | None, pair: KrakenPair) -> bool:
    """Whether a limit order would take liquidity: a buy at or above the ask, a sell below the bid.

    (A sell at the bid itself takes it too.)
    """
    if limit is None:
        return False
    return _ask(pair) <= limit if side == "buy" else _bid(pair) >= limit


def _oflags_text(flags: tuple[str, ...]) -> str:
    """The ``oflags`` Kraken reports: the order's own, then ``fciq`` unless it has a fee flag.

    Recorded: ``post,fciq`` for a post-only order, ``fciq`` for one without flags.
    """
    shown = list(flags)
    if not {"fcib", "fciq"} & set(flags):
        shown.append("fciq")
    return ",".join(shown)


def _positive(text: str) -> Decimal | None:
    """A positive, finite decimal, or None."""
    try:
        value = Decimal(text)
    except ArithmeticError:
        return None
    return value if value.is_finite() and value > 0 else None


def _order_terms(
    params: Mapping[str, str], ordertype: str
) -> tuple[str, tuple[str, ...], bool] | str:
    """AddOrder's ``timeinforce``, ``oflags`` and ``reduce_only``, or Kraken's refusal."""
    timeinforce = params.get("timeinforce", "GTC")
    if timeinforce not in TIME_IN_FORCE:
        # Kraken spot: GTC, IOC or GTD; anything else (FOK, "PO") is refused with this string.
        return "EGeneral:Invalid arguments:timeinforce"
    flags = tuple(dict.fromkeys(f for f in params.get("oflags", "").split(",") if f))
    if (
        not set(flags) <= ORDER_FLAGS
        or {"fcib", "fciq"} <= set(flags)  # Kraken: mutually exclusive
        or ("post" in flags and ordertype != "limit")  # "available when ordertype = limit"
    ):
        return "EGeneral:Invalid arguments:oflags"
    reduce_only = params.get("reduce_only", "false").lower()
    if reduce_only not in {"true", "false", "1", "0"}:
        return "EGeneral:Invalid arguments:reduce_only"
    return timeinforce, flags, reduce_only in {"true", "1"}


def _client_ids(params: Mapping[str, str]) -> tuple[str | None, int | None] | str:
    """AddOrder's ``cl_ord_id`` and ``userref``, or Kraken's refusal."""
    cl_ord_id = params.get("cl_ord_id")
    if cl_ord_id is not None and not _valid_cl_ord_id(cl_ord_id):
        return INVALID_ARGUMENTS
    if "userref" not in params:
        return cl_ord_id, None
    if cl_ord_id is not None:
        return INVALID_ARGUMENTS  # Kraken: cl_ord_id and userref are mutually exclusive
    try:
        return None, int(params["userref"])
    except ValueError:
        return "EGeneral:Invalid arguments:userref"


def _json_params(text: str) -> dict[str, str] | None:
    """A JSON request body as parameters (lists and objects kept as JSON text), or None."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}


def _batch_refs(raw: str | None, key: str) -> list[str] | None:
    """CancelOrderBatch's ``orders`` / ``cl_ord_ids`` (ids or ``{key: id}``); None: malformed."""
    if raw is None:
        return []
    try:
        items = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(items, list):
        return None
    refs = []
    for item in items:
        value = item.get(key) if isinstance(item, dict) else item
        if isinstance(value, bool) or not isinstance(value, str | int):
            return None
        refs.append(str(value))
    return refs


def _rfc3339_seconds(epoch: float) -> str:
    """RFC 3339 in UTC at second precision, rounded up, as CancelAllOrdersAfter answers."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(epoch)))


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
