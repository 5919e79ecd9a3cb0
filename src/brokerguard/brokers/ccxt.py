"""Real exchanges through ccxt: the raw SPI, and ccxt's errors translated at one seam.

:class:`CcxtBroker` wraps a ccxt exchange instance (synchronous, or ``ccxt.async_support``
on a home event loop or driven through :func:`brokerguard.ccxt.guard`, see "Async exchanges"
below). Spot positions are the account's non-quote balances; prices come from one batched
``fetch_tickers`` call; orders (market or limit: GTC, IOC, FOK, GTD, post-only) carry our
client order id; open orders are listed for every symbol, and cancels are verified by a lookup.

What differs between venues is in one table, :data:`VENUE_RULES` (docs/ccxt.md shows it):

- **Kraken**: the client id travels as ``cl_ord_id`` and is unique only among *open* orders (not
  an idempotency key); an order is looked up among open **and** recently closed orders by that
  id; AddOrder takes a ``deadline`` (RFC 3339) after which the engine rejects it, so a lookup
  after it that finds nothing proves the order was never placed; GTD is ``expiretm``; spot has
  no FOK and no reduce-only (``reduce_only`` reduces margin positions). Private calls need
  strictly increasing nonces (:class:`NonceSource`).
- **Coinbase Advanced Trade**: ccxt 4.5.90 ignores ``clientOrderId``, so the id is sent as the
  raw ``client_order_id``; a reused id returns the order it names (a true idempotency key);
  there is no lookup by client id, so List Orders is scanned page by page (an incomplete scan
  proves nothing); no deadline parameter (absence waits for the local bound); a market buy is
  sent by ``base_size`` (ccxt would turn it into a ``quote_size`` and need a price); GTD is
  ``end_time``; no reduce-only on spot; balances are read from v3 ``brokerage/accounts`` (every
  page, with holds), not ccxt's default v2 (first page only).

ccxt's own retry loop (``maxRetriesOnFailure``) is forced to 0: it would resend orders blindly.
brokerguard owns retries.

Every ccxt exception becomes a brokerguard one in :func:`translate_ccxt_error`, re-raised
``from`` the original; nothing above this module (and :mod:`brokerguard.ccxt`, the bot-facing
door that hands ccxt errors back) imports ccxt. For Kraken the error string decides first
(:mod:`brokerguard.brokers.kraken_errors`: ``EService:Deadline elapsed`` is transient,
``EOrder:Duplicate order`` means the order exists, an unknown ``E...`` string leaves a write
unresolved), then ccxt's exception type, most specific first. A client library that crashes on
a hostile payload (``TypeError``, ``KeyError``) produced no data: it is invalid data too.

Holdings under suffixed Kraken asset codes (``XBT.F`` flexible/Earn, ``.S`` staked, ``.M``,
``.B``, ``.P``) are holdings of their base asset and count toward the cap; ``ignore_assets``
opts out explicitly. A ticker's own timestamp becomes the quote's time, so ``max_quote_age``
sees an old quote; a ticker without one (Kraken's REST Ticker has none) is stamped on receipt
and says so (``Quote.stamped_on_receipt``).

**Raw calls.** When the exchange is a guarded one (:func:`brokerguard.ccxt.guard` subclasses
its class), the adapter calls the *unguarded* methods of the exchange's own class, and marks
the call (:func:`in_raw_call`) so that ccxt methods which call other public methods of the
exchange internally (Coinbase's ``cancel_order`` calls ``cancel_orders``) reach the unguarded
ones too.

**Async exchanges.** Driven through the guard: the guarded broker is synchronous; the guard
runs it in a worker thread and each raw coroutine is run on the caller's event loop
(:func:`driving_loop`). On a home loop (``CcxtBroker(..., loop=)``, the service's
``async_reads``): :meth:`CcxtBroker.afetch_positions` and :meth:`CcxtBroker.afetch_prices`
await the raw coroutines on that loop (an enforcement pass reads every account there at once),
and every synchronous call runs its coroutine there from the calling thread. Both paths share
the parsers, the error translation and the nonce rule (:meth:`CcxtBroker._failed_attempt`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, TypeVar

import ccxt

from brokerguard.brokers.base import BaseBroker, OrderMinimums
from brokerguard.brokers.kraken_errors import KrakenErrorClass, classify_kraken_error
from brokerguard.brokers.nonces import NonceSource, nonce_source_for
from brokerguard.clock import Clock
from brokerguard.errors import (
    BrokerError,
    BrokerGuardError,
    BrokerRejection,
    ConfigurationError,
    DuplicateOrderError,
    FatalBrokerError,
    InvalidBrokerData,
    RateLimitedError,
    TransientBrokerError,
)
from brokerguard.models import (
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Quote,
    Side,
    TimeInForce,
    parse_decimal,
    parse_price,
    parse_side,
    parse_symbol,
)
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.ratelimit import RateLimiter

__all__ = [
    "COINBASE",
    "GENERIC",
    "KRAKEN",
    "VENUE_RULES",
    "CcxtBroker",
    "InvalidNonceError",
    "NonceSource",
    "VenueRules",
    "driving_loop",
    "in_raw_call",
    "nonce_source_for",
    "strict_json_loads",
    "translate_ccxt_error",
    "venue_rules",
]

log = logging.getLogger("brokerguard.broker.ccxt")

T = TypeVar("T")

LOCKOUT_SECONDS = 900.0
"""Kraken's temporary lockout after repeated bad nonces or signatures lasts about 15 minutes."""


class InvalidNonceError(TransientBrokerError):
    """The exchange refused our nonce (it saw a larger one for this API key).

    Authentication comes before anything else: a refused nonce proves the request was not
    processed, so an order refused this way may be sent again.
    """

    not_processed = True


def _rate_limited(message: str) -> BrokerGuardError:
    lockout = "Temporary lockout" in message
    return RateLimitedError(message, retry_after=LOCKOUT_SECONDS if lockout else None)


def _unparseable(message: str) -> BrokerGuardError:
    return InvalidBrokerData("response", message, "unparseable")


_TRANSLATIONS: tuple[tuple[tuple[type[BaseException], ...], Callable[[str], BrokerGuardError]], ...]
_TRANSLATIONS = (
    # Most specific first: ccxt puts rate limits, nonces, timeouts and maintenance all under
    # NetworkError, and permission problems under AuthenticationError.
    ((ccxt.InvalidNonce,), InvalidNonceError),
    ((ccxt.RateLimitExceeded, ccxt.DDoSProtection), _rate_limited),
    ((ccxt.NetworkError,), TransientBrokerError),
    ((ccxt.AuthenticationError,), FatalBrokerError),
    ((ccxt.InsufficientFunds, ccxt.InvalidOrder, ccxt.BadSymbol, ccxt.BadRequest), BrokerRejection),
    ((ccxt.BadResponse,), _unparseable),
)
_MARKERS: tuple[tuple[str, Callable[[str], BrokerGuardError]], ...] = (
    # Where ccxt is too coarse (a plain ExchangeError) and the exchange is not Kraken (whose
    # strings are all classified in kraken_errors), these strings decide.
    ("EAPI:Invalid key", FatalBrokerError),
    ("EAPI:Invalid signature", FatalBrokerError),
    ("EGeneral:Permission denied", FatalBrokerError),
    ("EOrder:Duplicate order", DuplicateOrderError),
    ("EOrder:Unknown order", BrokerRejection),
    ("EQuery:Unknown asset", BrokerRejection),
    # Coinbase: a reused client id in "reject" mode proves the order exists; Get Order's 404
    # for an id it never had is a plain ExchangeError in ccxt 4.5.90.
    ("DUPLICATE_CLIENT_ORDER_ID", DuplicateOrderError),
    ("order with this orderID was not found", BrokerRejection),
)

_KRAKEN_CLASSES: Mapping[KrakenErrorClass, Callable[[str], BrokerGuardError]] = {
    KrakenErrorClass.TRANSIENT: TransientBrokerError,
    KrakenErrorClass.RATE_LIMITED: _rate_limited,
    KrakenErrorClass.NONCE: InvalidNonceError,
    KrakenErrorClass.REJECTED: BrokerRejection,
    KrakenErrorClass.FATAL: FatalBrokerError,
    KrakenErrorClass.EXISTS: DuplicateOrderError,
    KrakenErrorClass.NOT_FOUND: BrokerRejection,
    # Never seen before: a read counts as a failure; a write is unresolved (looked up).
    KrakenErrorClass.UNKNOWN: BrokerError,
}


def translate_ccxt_error(exc: BaseException, *, exchange_id: str | None = None) -> BrokerGuardError:
    """Return the brokerguard error for a ccxt (or transport) error: the one translation seam.

    For Kraken (`exchange_id` ``"kraken"``, or a ccxt message that names it) the Kraken error
    string decides before ccxt's exception type: ccxt calls a market in ``cancel_only`` mode a
    network error and leaves ``EService:Deadline elapsed`` a plain ``ExchangeError``.
    """
    message = str(exc)
    if isinstance(exc, ccxt.BaseError) and (
        exchange_id == "kraken" or message.startswith("kraken ")
    ):
        kraken_class = classify_kraken_error(message)
        if kraken_class is not None:
            return _KRAKEN_CLASSES[kraken_class](message)
    for classes, make in _TRANSLATIONS:
        if isinstance(exc, classes):
            return make(message)
    for marker, make in _MARKERS:
        if marker in message:
            return make(message)
    if isinstance(exc, OSError):
        return TransientBrokerError(f"{type(exc).__name__}: {exc}")
    return BrokerError(
        message if isinstance(exc, ccxt.BaseError) else f"{type(exc).__name__}: {exc}"
    )


def strict_json_loads(text: str) -> Any:
    """Decode a JSON body or raise ``ccxt.BadResponse``.

    ccxt's default decoder swallows a decoding error and hands the raw text to the exchange
    class, whose parsers then read it as an *empty* result: a garbled balance response becomes
    "no positions", which is the incident brokerguard exists to prevent. Installed as the
    exchange's ``on_json_response`` (ccxt's documented hook for JSON decoding).
    """
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ccxt.BadResponse(f"unparseable JSON body: {text[:200]!r}") from exc


# --------------------------------------------------------------------------- raw calls, async


_RAW_CALL: ContextVar[bool] = ContextVar("brokerguard_raw_ccxt_call", default=False)
_LOOP: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar(
    "brokerguard_ccxt_loop", default=None
)


def in_raw_call() -> bool:
    """Return whether the current call comes from inside the adapter's own (raw) ccxt call.

    A guarded exchange's methods answer such calls with the unguarded method of the
    exchange's class: ccxt methods call other public methods internally, and those calls are
    part of the raw call, not new calls of the bot.
    """
    return _RAW_CALL.get()


@contextmanager
def driving_loop(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Run the raw coroutines of an async ccxt exchange on `loop` (from a worker thread).

    The guarded broker is synchronous; for a ``ccxt.async_support`` exchange the guard runs it
    in a worker thread inside this block, and each raw coroutine is handed to `loop` (where the
    exchange's HTTP session lives) while the worker waits for its result.
    """
    token = _LOOP.set(loop)
    try:
        yield
    finally:
        _LOOP.reset(token)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _resolve(result: Any) -> Any:
    """The value of a raw call: an async exchange's coroutine is run on the driving loop."""
    if not inspect.isawaitable(result):
        return result
    loop = _LOOP.get()
    running = _running_loop()
    if loop is None or loop is running:
        if inspect.iscoroutine(result):
            result.close()  # never awaited: no "was never awaited" warning
        raise ConfigurationError(
            "an async ccxt exchange is driven through brokerguard.ccxt.guard (its calls run "
            "in a worker thread on the exchange's event loop); CcxtBroker alone needs a "
            "synchronous ccxt exchange"
        )
    return asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()


_LOOP_LIVENESS_S = 0.5
"""A thread waiting for its call on a home loop checks this often that the loop still runs
(a loop stopped under it would leave it waiting forever)."""

_KEY_LOCKS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[NonceSource, asyncio.Lock]
] = weakref.WeakKeyDictionary()
_KEY_LOCKS_LOCK = threading.Lock()


def _key_lock(source: NonceSource) -> asyncio.Lock:
    """The running loop's lock for the API key of `source` (one private call at a time)."""
    loop = asyncio.get_running_loop()
    with _KEY_LOCKS_LOCK:
        locks = _KEY_LOCKS.setdefault(loop, weakref.WeakKeyDictionary())
        lock = locks.get(source)
        if lock is None:
            lock = locks[source] = asyncio.Lock()
        return lock


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# --------------------------------------------------------------------------- venues


@dataclass(frozen=True, slots=True)
class VenueRules:
    """What differs between venues behind one ccxt interface (docs/ccxt.md tabulates it)."""

    venue: str
    time_in_force: frozenset[TimeInForce]
    """Times in force the venue's spot orders take; others are refused before sending."""
    client_id_param: str
    """The ccxt ``params`` key that carries our client order id to the venue."""
    client_id_idempotent: bool
    """A reused client id returns the order it names (True) or may make a second order."""
    lookup_by_client_id: bool
    """The venue filters its order lists by client id (else: List Orders is scanned)."""
    enforces_deadline: bool
    """The venue takes a deadline after which it rejects the order (Kraken's ``deadline``)."""
    cancel_by_client_id: bool
    """A cancel can name the order by its client id alone."""
    reduce_only: bool
    """``reduceOnly`` is passed through (False: refused, spot has no position to reduce)."""
    gtd_param: str | None
    """The ccxt ``params`` key of a GTD order's expiry (``expiretm``, ``end_time``)."""
    uses_nonce: bool
    """Private calls are signed with strictly increasing nonces (a shared NonceSource)."""
    balance_params: Mapping[str, Any] = field(default_factory=dict)
    """``fetch_balance`` params that make the balance complete."""


KRAKEN: Final = VenueRules(
    venue="kraken",
    time_in_force=frozenset({TimeInForce.GTC, TimeInForce.IOC, TimeInForce.GTD}),
    client_id_param="clientOrderId",
    client_id_idempotent=False,
    lookup_by_client_id=True,
    enforces_deadline=True,
    cancel_by_client_id=True,
    reduce_only=False,
    gtd_param="expiretm",
    uses_nonce=True,
)
COINBASE: Final = VenueRules(
    venue="coinbase",
    time_in_force=frozenset(TimeInForce),
    client_id_param="client_order_id",
    client_id_idempotent=True,
    lookup_by_client_id=False,
    enforces_deadline=False,
    cancel_by_client_id=False,
    reduce_only=False,
    gtd_param="end_time",
    uses_nonce=False,
    balance_params={"v3": True},
)
GENERIC: Final = VenueRules(
    venue="ccxt",
    time_in_force=frozenset({TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK}),
    client_id_param="clientOrderId",
    client_id_idempotent=False,
    lookup_by_client_id=True,
    enforces_deadline=False,
    cancel_by_client_id=False,
    reduce_only=True,
    gtd_param=None,
    uses_nonce=True,
)
"""Any other ccxt exchange: ccxt's unified parameters, nothing venue-specific assumed."""
VENUE_RULES: Final[Mapping[str, VenueRules]] = {"kraken": KRAKEN, "coinbase": COINBASE}


def venue_rules(exchange_id: str) -> VenueRules:
    """Return the rules of the venue with this ccxt id (:data:`GENERIC` when unknown)."""
    return VENUE_RULES.get(exchange_id, GENERIC)


_VENUE_TIME_RESOLUTION_S = 1.0
"""Kraken's ``Time`` answers whole seconds: the venue's clock is known to within one."""

_STAKED_ALIASES: Mapping[str, str] = {
    # Kraken's staked ether was its own asset (ETH2, ETH2.S); it is ether exposure all the same.
    "ETH2": "ETH",
}

_REMEMBERED_RAW = 10_000
"""Raw ccxt order answers kept (by client order id), to hand a bot ccxt's own shapes."""

_SCAN_PAGE = 250
_SCAN_PAGES = 20
"""Coinbase: List Orders pages read to find a client id; a longer history proves nothing."""

_SCAN_MARGIN_S = 120.0
"""Coinbase: the scan starts this long before the order was sent (clock skew, queues)."""

_CLIENT_PARSE_ERRORS = (TypeError, KeyError, IndexError)
"""What ccxt's parsers raise on a hostile payload: no data came out of it."""


def _rfc3339(epoch_seconds: float) -> str:
    """Format an epoch time the way Kraken's AddOrder ``deadline`` takes it."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _quote_or_raw(symbol: str, ticker: Mapping[str, Any]) -> object:
    """The ticker's last price as a Quote at the ticker's own time, or raw when it has none.

    A bad price stays raw: the guarded broker judges it (unusable, counted, never a number).
    """
    last = ticker["last"]
    stamp = ticker.get("timestamp")
    if stamp is None:
        return last
    try:
        return Quote(symbol, last, float(parse_decimal(stamp, field="timestamp") / 1000))
    except InvalidBrokerData:
        return last


_STATUS = {
    "open": OrderStatus.OPEN,
    "pending": OrderStatus.OPEN,
    "new": OrderStatus.OPEN,
    "queued": OrderStatus.OPEN,
    "cancel_queued": OrderStatus.OPEN,
    "closed": OrderStatus.FILLED,
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.CANCELED,
    "rejected": OrderStatus.REJECTED,
    "failed": OrderStatus.REJECTED,
}

_CCXT_STATUS = {
    OrderStatus.OPEN: "open",
    OrderStatus.PARTIALLY_FILLED: "open",
    OrderStatus.FILLED: "closed",
    OrderStatus.CANCELED: "canceled",
    OrderStatus.REJECTED: "rejected",
}


class CcxtBroker(BaseBroker):
    """A real exchange through a ccxt exchange instance.

    Args:
        exchange: a configured ``ccxt`` exchange (keys come from the caller's environment); a
            ``ccxt.async_support`` one with `loop`, or through :func:`brokerguard.ccxt.guard`.
        broker_name: defaults to the exchange id (``"kraken"``).
        quote_currency: the currency positions are valued in; its balance is cash, not a
            position.
        ignore_assets: balance codes that are not positions (other fiat, fee credits): the
            opt-out from counting a holding. A base code (``"DOT"``) ignores its suffixed
            variants too; a suffixed one (``"DOT.S"``) only itself. Suffixed holdings count
            toward the cap unless named here (fail closed).
        nonce_source: shared nonces for the API key (default: the process-wide source for the
            exchange's key, when it has one and the venue signs with nonces).
        nonce_resyncs: refused nonces re-synced and retried per call (each jump doubles: 5
            clears a writer up to 31 s ahead); a refused nonce proves nothing was processed.
        loop: for a ``ccxt.async_support`` exchange, the running event loop its HTTP session
            lives on (the service's :class:`~brokerguard.risk.reads.ReadsAhead` loop): its
            async reads are awaited there, and every synchronous call (orders, lookups,
            cancels) runs its coroutine there from the calling thread. See "Home loop" below.
        Other arguments: as for :class:`BaseBroker`.

    **Home loop.** With `loop`, the exchange belongs to that loop: :meth:`afetch_positions` and
    :meth:`afetch_prices` must be awaited on it (anywhere else they raise
    :class:`ConfigurationError`), and a synchronous call made *on* it raises
    :class:`ConfigurationError` instead of waiting for itself forever. Private calls on one
    API key are serialised on the loop (an ``asyncio.Lock`` per nonce source and loop), so a
    pool thread's order and a pass's balance reads reach the venue with increasing nonces. A
    *synchronous* exchange on the same key in the same process (the config allows one entry
    per key) is serialised by the source's ``call_lock`` instead, not against the loop: the two
    could collide, which Kraken refuses and the shared source re-syncs (a read is retried, an
    order is raised as not processed). :meth:`close` closes the session on the loop.
    """

    def __init__(
        self,
        exchange: Any,
        broker_name: str | None = None,
        account_type: str = "master",
        user_id: str | None = None,
        *,
        quote_currency: str = "USD",
        ignore_assets: Sequence[str] = (),
        nonce_source: NonceSource | None = None,
        nonce_resyncs: int = 5,
        account_id: str | None = None,
        clock: Clock | None = None,
        read_breaker: BrokerCircuitBreaker | None = None,
        write_breaker: BrokerCircuitBreaker | None = None,
        client_order_id_factory: Callable[[], str] | None = None,
        rate_limiter: RateLimiter | None = None,
        order_deadline_s: float = 10.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        asynchronous = not getattr(exchange, "synchronous", True)
        if loop is not None and not asynchronous:
            raise ConfigurationError(
                "a home event loop is for a ccxt.async_support exchange; "
                f"{type(exchange).__name__} is synchronous"
            )
        super().__init__(
            broker_name or str(exchange.id),
            account_type,
            user_id,
            account_id=account_id,
            clock=clock,
            read_breaker=read_breaker,
            write_breaker=write_breaker,
            client_order_id_factory=client_order_id_factory,
            rate_limiter=rate_limiter,
            order_deadline_s=order_deadline_s,
        )
        self.exchange = exchange
        self._exchange_id = str(exchange.id)
        self.rules = venue_rules(self._exchange_id)
        """What this venue does differently (see :data:`VENUE_RULES`)."""
        # Kraken's AddOrder takes a deadline (now + 2 s to now + 60 s) after which its engine
        # rejects the request; other venues get none, and absence waits for the local bound.
        self.enforces_order_deadline = self.rules.enforces_deadline
        self.nonce_resyncs = nonce_resyncs
        self._venue_offset_s = 0.0  # the venue's clock minus ours, measured by ping()
        self._clock_error_s = _VENUE_TIME_RESOLUTION_S
        exchange.enableLastJsonResponse = True  # the order lookups read the raw envelope
        self.quote_currency = quote_currency
        self.ignore_assets = frozenset(ignore_assets)
        self.force_no_ccxt_retries()
        exchange.on_json_response = strict_json_loads
        self._nonce: NonceSource | None = nonce_source
        if self._nonce is None and self.rules.uses_nonce and getattr(exchange, "apiKey", None):
            self._nonce = nonce_source_for(exchange.apiKey, clock)
        if self._nonce is not None:
            exchange.nonce = self._nonce.next
        self._raw_lock = threading.Lock()
        self._raw_orders: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cid_by_venue_id: OrderedDict[str, str] = OrderedDict()
        self._hand_placed: set[str] = set()  # client ids that are venue ids (no id of ours)
        self._sent_at: OrderedDict[str, float] = OrderedDict()
        self._extras: dict[str, Mapping[str, Any]] = {}
        self._local = threading.local()
        self._loop = loop
        self._closed = False

    @property
    def has_async_reads(self) -> bool:
        """Whether a pass may read this account ahead: an async exchange on its home loop.

        A synchronous exchange (or an async one driven through :func:`brokerguard.ccxt.guard`,
        which has no home loop) is read by the step itself; the base rule (the async reads
        are twins of the sync ones in use) still applies to a subclass.
        """
        return self._loop is not None and super().has_async_reads

    @property
    def home_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the exchange's session lives on (None: a synchronous exchange)."""
        return self._loop

    def close(self) -> None:
        """Close an async exchange's HTTP session on its home loop (idempotent).

        Call it before the loop stops (the service does). A synchronous exchange, or an async
        one without a home loop (its owner closes it), has nothing to close here.
        """
        if self._loop is None or self._closed:
            return
        if self._loop.is_closed():
            log.warning(
                "the event loop of %r (account %s) closed before its exchange: its HTTP session "
                "was not closed",
                self.broker_name,
                self.account_id,
            )
            return
        self._on_home_loop(self.aclose())

    async def aclose(self) -> None:
        """Close an async exchange's HTTP session (awaited on its home loop; idempotent)."""
        if self._loop is None or self._closed:
            return
        self._refuse_off_home_loop("aclose")
        self._closed = True
        await self.exchange.close()

    def force_no_ccxt_retries(self) -> None:
        """Set ccxt's ``maxRetriesOnFailure`` to 0, exchange-wide and per endpoint.

        ccxt's ``fetch2`` resends any failed request (orders included) while it is above 0;
        brokerguard owns retries and never resends a write blindly.
        """
        options = self.exchange.options
        found = {
            key: value
            for key, value in options.items()
            if key in {"maxRetriesOnFailure", "defaultMaxRetriesOnFailure"} and value
        }
        if found:
            log.warning(
                "ccxt %s was %s for %r; forcing 0: ccxt would resend orders blindly, and "
                "brokerguard owns retries",
                ", ".join(found),
                ", ".join(str(v) for v in found.values()),
                self.broker_name,
            )
        options["maxRetriesOnFailure"] = 0
        options.pop("defaultMaxRetriesOnFailure", None)
        for value in options.values():
            if isinstance(value, dict) and value.get("maxRetriesOnFailure"):
                value["maxRetriesOnFailure"] = 0  # a per-endpoint setting ("AddOrder": {...})

    # ------------------------------------------------------------------ the raw SPI

    def fetch_positions(self) -> Sequence[Position]:
        """Return every non-quote holding with a positive total as a spot position.

        Suffixed asset codes (ccxt turns Kraken's ``XBT.F`` into ``BTC.F``) are holdings of
        their base asset: they are added to it, because the cap must see all exposure. An
        answer that lists no asset at all is not evidence of an empty account (a funded account
        always lists its cash): it is refused as invalid data.
        """
        self._ensure_markets()
        params = {**self.rules.balance_params, **getattr(self._local, "balance_params", {})}
        self._local.balance = None
        balance = self._ccxt(self._raw("fetch_balance"), params, private=True)
        positions = self._positions_from(balance)
        self._local.balance = balance
        return positions

    async def afetch_positions(self) -> Sequence[Position]:
        """Return :meth:`fetch_positions`'s answer, awaited on the exchange's own event loop.

        The same balance call (the venue's ``balance_params``), nonce handling, error
        translation and parsing. Two things differ, both because no thread of a caller makes
        this read (:class:`~brokerguard.risk.reads.ReadsAhead` does, for a pass): a bot's
        per-thread ``balance_params`` (only :func:`brokerguard.ccxt.guard` sets them, and it
        reads synchronously) do not apply, and no thread's :meth:`last_balance` changes.
        """
        self._refuse_off_home_loop("afetch_positions")
        await self._aensure_markets()
        params = dict(self.rules.balance_params)
        balance = await self._acall(self._raw("fetch_balance"), (params,), private=True)
        return self._positions_from(balance)

    def _positions_from(self, balance: object) -> list[Position]:
        """The positions a ccxt balance shows (the one parser of both reads); raise if unusable."""
        totals = balance.get("total") if isinstance(balance, Mapping) else None
        info = balance.get("info") if isinstance(balance, Mapping) else None
        if not isinstance(totals, Mapping) or not isinstance(info, Mapping):
            raise InvalidBrokerData("balance", balance, "no_totals")
        if not totals:
            raise InvalidBrokerData("balance", info, "empty")
        held: dict[str, Decimal] = {}
        for code, total in sorted(totals.items()):
            base = self._base_asset(str(code))
            if base is None:
                continue
            quantity = parse_decimal(total, field="quantity", symbol=str(code))
            if quantity > 0:
                held[base] = held.get(base, Decimal(0)) + quantity
        return [
            Position(f"{base}/{self.quote_currency}", qty) for base, qty in sorted(held.items())
        ]

    def _base_asset(self, code: str) -> str | None:
        """The asset a balance code holds, or None when it is cash or explicitly ignored."""
        if code in self.ignore_assets:
            return None
        base, _, suffix = code.partition(".")
        if suffix:
            base = str(self.exchange.safe_currency_code(base))
            base = _STAKED_ALIASES.get(base, base)
        if base == self.quote_currency or base in self.ignore_assets:
            return None
        return base

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        """Return each known symbol's last trade price from one ``fetch_tickers`` call.

        A ticker with its own timestamp becomes a :class:`Quote` at that time, so an old quote
        is seen as stale; one without (Kraken's REST Ticker) is left raw and stamped on receipt.
        """
        known = [s for s in symbols if s in self._ensure_markets()]
        if not known:
            return {}
        return self._prices_from(known, self._ccxt(self._raw("fetch_tickers"), known))

    async def afetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        """Return :meth:`fetch_prices`'s answer, awaited on the exchange's own event loop."""
        self._refuse_off_home_loop("afetch_prices")
        known = [s for s in symbols if s in await self._aensure_markets()]
        if not known:
            return {}
        return self._prices_from(known, await self._acall(self._raw("fetch_tickers"), (known,)))

    @staticmethod
    def _prices_from(known: Sequence[str], tickers: object) -> dict[str, object]:
        """Each known symbol's price in a ``fetch_tickers`` answer (the one parser of both)."""
        if not isinstance(tickers, Mapping):
            raise InvalidBrokerData("tickers", tickers, "not_a_mapping")
        prices: dict[str, object] = {}
        for symbol in known:
            ticker = tickers.get(symbol)
            if isinstance(ticker, Mapping) and "last" in ticker:
                prices[symbol] = _quote_or_raw(symbol, ticker)
        return prices

    def submit_order(self, order: OrderRequest) -> Order:
        """Send `order` with our client order id, the venue's form of its terms, and deadline.

        Terms the venue does not take (Kraken's FOK, reduce-only on spot) and orders below the
        venue's minimums are refused before anything is sent. Parameters a bot passed through
        :func:`brokerguard.ccxt.guard` that brokerguard does not model (``userref``, trigger
        prices ...) travel with the order unchanged.
        """
        self._ensure_markets()
        kind, amount, price, params = self._order_args(order)
        with self._raw_lock:
            self._sent_at[order.client_order_id] = self.clock.time()
            _trim(self._sent_at)
        placed = self._ccxt(
            self._raw("create_order"),
            order.symbol,
            kind,
            order.side.value,
            amount,
            price,
            params,
            private=True,
            resend_on_nonce=False,  # the guarded broker looks the order up before any resend
        )
        if isinstance(placed, Mapping) and placed.get("id") is None:
            # A success without the venue's order id is no acknowledgement: look it up.
            raise InvalidBrokerData("order", placed.get("info"), "no_order_id")
        result = self._order_from(placed, order.client_order_id, order)
        if (result.symbol, result.side) != (order.symbol, order.side):
            # Coinbase answers a reused client id with the order it already names.
            raise BrokerRejection(
                f"client order id {order.client_order_id} on {self.broker_name!r} already names "
                f"order {result.broker_order_id} ({result.side.value} {result.symbol}); the "
                f"venue created nothing for {order.side.value} {order.symbol}"
            )
        self._remember(order.client_order_id, placed)
        return result

    def _order_args(self, order: OrderRequest) -> tuple[str, str, str | None, dict[str, Any]]:
        """(type, amount, price, params) of the ccxt ``create_order`` call for `order`."""
        self._refuse_what_the_venue_does_not_take(order)
        rules = self.rules
        amount = self._on_grid_amount(order.symbol, order.quantity)
        with self._raw_lock:
            extras = dict(self._extras.get(order.client_order_id, {}))
        params: dict[str, Any] = {**extras, rules.client_id_param: order.client_order_id}
        if rules.enforces_deadline and order.deadline is not None:
            params["deadline"] = _rfc3339(order.deadline + self._venue_offset_s)
        price: str | None = None
        if order.order_type is OrderType.LIMIT:
            price = str(order.price)
            if order.time_in_force is not None:
                params["timeInForce"] = order.time_in_force.value
            if order.time_in_force is TimeInForce.GTD and order.expire_at is not None:
                params[str(rules.gtd_param)] = self._venue_expiry(order.expire_at)
            if order.post_only:
                params["postOnly"] = True
        if order.reduce_only:
            params["reduceOnly"] = True
        if rules is COINBASE and order.order_type is OrderType.MARKET and order.side is Side.BUY:
            # ccxt would send a quote_size (and need a price to compute it): the base quantity
            # is what we mean, and Advanced Trade takes it as base_size.
            params["createMarketBuyOrderRequiresPrice"] = False
            params["order_configuration"] = {"market_market_ioc": {"base_size": amount}}
        return order.order_type.value, amount, price, params

    def _venue_expiry(self, expire_at: float) -> str:
        """A GTD order's expiry in the venue's form (on the venue's clock)."""
        venue_time = expire_at + self._venue_offset_s
        if self.rules is KRAKEN:
            return str(math.ceil(venue_time))  # expiretm: a unix timestamp (whole seconds)
        return datetime.fromtimestamp(venue_time, tz=UTC).isoformat().replace("+00:00", "Z")

    def _refuse_what_the_venue_does_not_take(self, order: OrderRequest) -> None:
        rules = self.rules
        tif = order.tif
        if tif is not None and tif not in rules.time_in_force:
            taken = ", ".join(sorted(t.value for t in rules.time_in_force))
            raise BrokerRejection(
                f"{self.broker_name!r} spot orders take time in force {taken}, not {tif.value}: "
                f"order {order.client_order_id} ({order.side.value} {order.symbol}) was not sent"
            )
        if order.reduce_only and not rules.reduce_only:
            raise BrokerRejection(
                f"{self.broker_name!r} takes reduce-only orders for margin positions only; a spot "
                f"sell reduces by itself: order {order.client_order_id} ({order.side.value} "
                f"{order.symbol}) was not sent (send it without reduce_only)"
            )
        minimums = self.order_minimums(order.symbol)
        if minimums is None:
            return
        if minimums.quantity is not None and order.quantity < minimums.quantity:
            raise BrokerRejection(
                f"{order.side.value} {order.quantity} {order.symbol} is below "
                f"{self.broker_name!r}'s minimum order of {minimums.quantity}: not sent"
            )
        if (
            minimums.value is not None
            and order.price is not None
            and order.quantity * order.price < minimums.value
        ):
            raise BrokerRejection(
                f"{order.side.value} {order.quantity} {order.symbol} at {order.price} is worth "
                f"less than {self.broker_name!r}'s minimum of {minimums.value}: not sent"
            )

    def _on_grid_amount(self, symbol: str, quantity: Decimal) -> str:
        """The quantity as ccxt sends it (truncated to the market's precision), never zero."""
        try:
            text = str(self.exchange.amount_to_precision(symbol, str(quantity)))
        except ccxt.BaseError as exc:
            raise BrokerRejection(
                f"{quantity} {symbol} cannot be sent to {self.broker_name!r}: {exc}"
            ) from exc
        sent = parse_decimal(text, field="quantity", symbol=symbol)
        if sent <= 0:
            raise BrokerRejection(
                f"{quantity} {symbol} is below {self.broker_name!r}'s amount precision: not sent"
            )
        if sent != quantity:
            log.info(
                "quantity %s %s truncated to %s, %r's amount precision (as ccxt sends it)",
                quantity,
                symbol,
                sent,
                self.broker_name,
            )
        return text

    def precise(
        self, symbol: str, quantity: Decimal, price: Decimal | None = None
    ) -> tuple[Decimal, Decimal | None]:
        """The quantity and price as ccxt would send them (the market's precision).

        ccxt truncates amounts and rounds prices to the market's grid before sending; a
        guarded bot's order is recorded with the values the venue will see.
        """
        self._ensure_markets()
        sent = parse_decimal(self._on_grid_amount(symbol, quantity), field="quantity")
        if price is None:
            return sent, None
        try:
            rounded = str(self.exchange.price_to_precision(symbol, str(price)))
        except ccxt.BaseError as exc:
            raise BrokerRejection(f"price {price} for {symbol}: {exc}") from exc
        return sent, parse_price(rounded, symbol=symbol)

    def fetch_order(self, client_order_id: str) -> Order | None:
        """Find the order by client order id among open and recently closed orders.

        Kraken filters OpenOrders and ClosedOrders by ``cl_ord_id``; Coinbase has no such
        filter, so List Orders is scanned (every page since shortly before the order was sent);
        an order placed by hand (no client id of ours: its venue id stands for it) is looked
        up by its venue id. An answer that does not hold the list asked for, or a scan that
        could not read every page, proves nothing and raises.
        """
        self._ensure_markets()
        if client_order_id in self._hand_placed:
            return self._fetch_by_venue_id(client_order_id)
        if not self.rules.lookup_by_client_id:
            return self._scan_for(client_order_id)
        params = {"clientOrderId": client_order_id}
        for name, key in (("fetch_open_orders", "open"), ("fetch_closed_orders", "closed")):
            found = self._ccxt(self._listed_orders, name, key, params, private=True)
            if not isinstance(found, list):
                raise InvalidBrokerData("orders", found, "not_a_list")
            for raw in found:
                if isinstance(raw, Mapping) and raw.get("clientOrderId") == client_order_id:
                    return self._adopt(raw, client_order_id)
        return None

    def _fetch_by_venue_id(self, venue_id: str) -> Order | None:
        try:
            raw = self._ccxt(self._raw("fetch_order"), venue_id, None, private=True)
        except BrokerRejection:
            return None  # the venue does not know the id
        if not isinstance(raw, Mapping) or raw.get("id") is None:
            raise InvalidBrokerData("order", raw, "no_order_id")
        return self._adopt(raw, venue_id)

    def _scan_for(self, client_order_id: str) -> Order | None:
        """Coinbase: page through List Orders for `client_order_id` (absence needs every page)."""
        with self._raw_lock:
            sent_at = self._sent_at.get(client_order_id)
        params: dict[str, Any] = {"limit": _SCAN_PAGE}
        if sent_at is not None:
            since = sent_at + self._venue_offset_s - _SCAN_MARGIN_S
            params["start_date"] = datetime.fromtimestamp(since, tz=UTC).isoformat()
        for raw in self._listing(params):
            if raw.get("client_order_id") == client_order_id:
                return self._adopt(self.exchange.parse_order(raw), client_order_id)
        return None

    def _listing(self, params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """Every order Coinbase's List Orders holds for `params` (all pages), or raise."""
        method = self._raw("v3PrivateGetBrokerageOrdersHistoricalBatch")
        found: list[Mapping[str, Any]] = []
        cursor: object = None
        for _ in range(_SCAN_PAGES):
            query = dict(params) if cursor is None else {**params, "cursor": cursor}
            body = self._ccxt(method, query, private=True)
            orders = body.get("orders") if isinstance(body, Mapping) else None
            if not isinstance(orders, list):
                raise InvalidBrokerData("orders", body, "no_orders_list")
            found.extend(o for o in orders if isinstance(o, Mapping))
            if not body.get("has_next"):
                return found
            cursor = body.get("cursor")
            if not cursor:
                raise InvalidBrokerData("orders", body, "no_cursor")
        raise InvalidBrokerData("orders", params, "listing_too_long")

    def fetch_open_orders(self) -> Sequence[Order]:
        """The account's open orders in every symbol (pending ones included: they are live).

        An order without a client id of ours (placed by hand) gets its venue id as client id.
        """
        self._ensure_markets()
        if self.rules is COINBASE:
            listed = [
                self.exchange.parse_order(raw)
                for raw in self._listing({"limit": _SCAN_PAGE, "order_status": ["OPEN", "PENDING"]})
            ]
        else:
            found = self._ccxt(self._listed_orders, "fetch_open_orders", "open", {}, private=True)
            if not isinstance(found, list):
                raise InvalidBrokerData("orders", found, "not_a_list")
            listed = found
        orders: list[Order] = []
        for raw in listed:
            if not isinstance(raw, Mapping):
                raise InvalidBrokerData("orders", raw, "not_a_mapping")
            venue_id = raw.get("id")
            cid = self._client_id_of(raw) or venue_id
            if not isinstance(cid, str) or not cid:
                raise InvalidBrokerData("order", raw.get("info", raw), "no_order_id")
            if cid == venue_id:
                with self._raw_lock:
                    self._hand_placed.add(cid)
            orders.append(self._adopt(raw, cid))
        return orders

    def submit_cancel(self, order: Order) -> Order | None:
        """Cancel by the venue's id (Kraken: by ``cl_ord_id`` when there is none).

        The answers say nothing of the order's final state (Kraken: a count; Coinbase: a
        success flag), so None is returned and the guarded broker looks the order up. A refusal
        because the order is already final (Kraken's ``EOrder:Unknown order`` for a cancelled
        or expired one, Coinbase's ``ORDER_IS_FULLY_FILLED``) is not a failure: the order is
        looked up and its final state returned.
        """
        self._ensure_markets()
        venue_id = order.broker_order_id
        try:
            if venue_id is None and self.rules.cancel_by_client_id:
                params = {"clientOrderId": order.client_order_id}
                self._ccxt(self._raw("cancel_order"), "", None, params, private=True)
                return None
            if venue_id is None:
                found = self.fetch_order(order.client_order_id)
                if found is None or found.is_final or found.broker_order_id is None:
                    return found
                venue_id = found.broker_order_id
            self._ccxt(self._raw("cancel_order"), venue_id, order.symbol, {}, private=True)
        except BrokerRejection:
            found = self.fetch_order(order.client_order_id)
            if found is not None and found.is_final:
                log.info(
                    "cancel of %s on %r refused: the order is already %s",
                    order.client_order_id,
                    self.broker_name,
                    found.status.value,
                )
                return found
            raise
        return None

    def submit_cancel_all_after(self, seconds: float) -> float | None:
        """Arm the venue's dead man's switch; return its trigger on our clock (None: disarmed).

        ccxt's ``cancel_all_orders_after`` (Kraken's CancelAllOrdersAfter, whole seconds).
        """
        self._ensure_markets()
        answer = self._ccxt(
            self.exchange.cancel_all_orders_after, int(seconds * 1000), private=True
        )
        result = answer.get("result") if isinstance(answer, Mapping) else None
        trigger = result.get("triggerTime") if isinstance(result, Mapping) else None
        if not seconds:
            return None
        if not isinstance(trigger, str) or trigger in {"", "0"}:
            raise InvalidBrokerData("dead_man_switch", answer, "no_trigger_time")
        try:
            venue = datetime.fromisoformat(trigger).timestamp()
        except ValueError as exc:
            raise InvalidBrokerData("dead_man_switch", answer, "bad_trigger_time") from exc
        return venue - self._venue_offset_s

    @property
    def has_dead_man_switch(self) -> bool:
        """Whether the exchange has one (ccxt ``has["cancelAllOrdersAfter"]``)."""
        return bool(self.exchange.has.get("cancelAllOrdersAfter"))

    def fetch_fills(self, since: float) -> Sequence[Fill]:
        """The account's trades since `since`, as executions of our positions on our clock.

        ccxt's ``fetch_my_trades`` (Kraken's TradesHistory). A trade of ``BTC/EUR`` changes
        the ``BTC`` holding, so it is reported on the position's symbol (``BTC/USD``); trade
        times are the venue's, moved onto our clock by the measured offset. One page is read:
        the window (since the last read that showed the position) is short, and a trade
        missing from it only leaves a loss unexplained (fail closed).
        """
        markets = self._ensure_markets()
        venue_since_ms = int((since + self._venue_offset_s) * 1000)
        trades = self._ccxt(self._raw("fetch_my_trades"), None, venue_since_ms, private=True)
        if not isinstance(trades, list):
            raise InvalidBrokerData("trades", trades, "not_a_list")
        fills: list[Fill] = []
        for trade in trades:
            if not isinstance(trade, Mapping):
                raise InvalidBrokerData("trade", trade, "not_a_mapping")
            market = markets.get(str(trade.get("symbol")))
            base = market.get("base") if isinstance(market, Mapping) else None
            stamp = trade.get("timestamp")
            if not isinstance(base, str) or not isinstance(stamp, int | float):
                raise InvalidBrokerData("trade", trade.get("info", trade), "unusable")
            base = self._base_asset(base)
            if base is None:
                continue  # cash, or an asset that is not a position
            fills.append(
                Fill(
                    f"{base}/{self.quote_currency}",
                    parse_side(trade.get("side")),
                    parse_decimal(trade.get("amount"), field="amount", symbol=base),
                    stamp / 1000 - self._venue_offset_s,
                    None if trade.get("order") is None else str(trade.get("order")),
                )
            )
        return fills

    @property
    def has_trade_history(self) -> bool:
        """Whether the exchange lists the account's own trades (ccxt ``has["fetchMyTrades"]``)."""
        return bool(self.exchange.has.get("fetchMyTrades"))

    def order_minimums(self, symbol: str) -> OrderMinimums | None:
        """The market's ``limits.amount.min`` and ``limits.cost.min`` (Kraken: ordermin/costmin)."""
        market = (self.exchange.markets or {}).get(symbol)
        if not isinstance(market, Mapping):
            return None
        limits = market.get("limits")
        if not isinstance(limits, Mapping):
            return None

        def minimum(kind: str) -> Decimal | None:
            entry = limits.get(kind)
            raw = entry.get("min") if isinstance(entry, Mapping) else None
            if raw is None:
                return None
            try:
                return parse_decimal(raw, field=f"{kind}_min", symbol=symbol)
            except InvalidBrokerData:
                return None  # a garbled minimum is no minimum: the position stays sellable

        found = OrderMinimums(minimum("amount"), minimum("cost"))
        return None if found == OrderMinimums() else found

    def ping(self) -> object:
        """Ask the exchange for its time: a cheap public read, used as the breaker probe.

        It also measures how far the exchange's clock is from ours (see :meth:`absent_after`).
        """
        return self._measure_clock()

    def absent_after(self, deadline: float, sent_at: float) -> float:
        """The base rule, plus how uncertain we are about the venue's clock.

        Deadlines are sent in the venue's time (our clock plus the measured offset), so the
        venue stops accepting an order at our ``deadline`` give or take the measurement's
        error: half the round trip of the time request plus the venue's resolution (Kraken's
        ``Time`` has whole seconds).
        """
        return super().absent_after(deadline, sent_at) + self._clock_error_s

    def _listed_orders(self, name: str, key: str, params: Mapping[str, Any]) -> object:
        """One order listing; on Kraken the raw answer must hold the list it was asked for.

        ccxt reads a missing ``result.open`` (or ``closed``) as no orders: an empty but
        successful answer would then "prove" an order absent, and a filled order would be sent
        again. Absence needs the venue to have listed its orders.
        """
        found = self._raw(name)(None, None, None, dict(params))
        if inspect.isawaitable(found):
            return self._alisted_orders(found, key)  # run (and checked) where the caller awaits
        return self._checked_listing(found, key)

    async def _alisted_orders(self, found: Awaitable[object], key: str) -> object:
        return self._checked_listing(await found, key)

    def _checked_listing(self, found: object, key: str) -> object:
        if self._exchange_id == "kraken":
            body = getattr(self.exchange, "last_json_response", None)
            result = body.get("result") if isinstance(body, Mapping) else None
            if not isinstance(result, Mapping) or not isinstance(result.get(key), Mapping):
                raise InvalidBrokerData("orders", body, f"no_{key}_list")
        return found

    def _measure_clock(self) -> object:
        before = self.clock.time()
        venue_ms = self._ccxt(self._raw("fetch_time"))
        return self._venue_time_seen(before, venue_ms, self.clock.time())

    async def _ameasure_clock(self) -> object:
        before = self.clock.time()
        venue_ms = await self._acall(self._raw("fetch_time"), ())
        return self._venue_time_seen(before, venue_ms, self.clock.time())

    def _venue_time_seen(self, before: float, venue_ms: object, after: float) -> object:
        """Note the venue's clock offset from a time answer received between before and after."""
        try:
            venue = float(parse_decimal(venue_ms, field="time")) / 1000
        except InvalidBrokerData:
            return venue_ms
        self._venue_offset_s = venue - (before + after) / 2
        self._clock_error_s = (after - before) / 2 + _VENUE_TIME_RESOLUTION_S
        return venue_ms

    # ------------------------------------------------------------------ for a guarded exchange

    def new_client_order_id(self) -> str:
        """Make a client order id the way this broker makes them."""
        return self._bg_new_cid()

    @contextmanager
    def ccxt_params(self, client_order_id: str, params: Mapping[str, Any]) -> Iterator[None]:
        """Send `params` with the order `client_order_id` (a bot's own ccxt parameters)."""
        with self._raw_lock:
            self._extras[client_order_id] = dict(params)
        try:
            yield
        finally:
            with self._raw_lock:
                self._extras.pop(client_order_id, None)

    @contextmanager
    def balance_params(self, params: Mapping[str, Any]) -> Iterator[None]:
        """Read the balance with these ccxt ``params`` (in this thread) inside the block."""
        previous = getattr(self._local, "balance_params", {})
        self._local.balance_params = {**previous, **params}
        try:
            yield
        finally:
            self._local.balance_params = previous

    def last_balance(self) -> Mapping[str, Any] | None:
        """The raw ccxt balance of this thread's last successful (synchronous) position read.

        A read made ahead on the home loop (:meth:`afetch_positions`) sets none: it is made by
        no caller's thread. Only :func:`brokerguard.ccxt.guard` asks, and it has no home loop.
        """
        balance = getattr(self._local, "balance", None)
        return balance if isinstance(balance, Mapping) else None

    def raw_order(self, client_order_id: str) -> dict[str, Any] | None:
        """A copy of the last ccxt order structure seen for this client order id, if any."""
        with self._raw_lock:
            raw = self._raw_orders.get(client_order_id)
            return None if raw is None else dict(raw)

    def ccxt_order(self, order: Order) -> dict[str, Any]:
        """The order as a ccxt order structure: ccxt's own answer when there is one."""
        raw = self.raw_order(order.client_order_id)
        if raw is not None and str(raw.get("id")) == str(order.broker_order_id or raw.get("id")):
            return raw
        remaining = order.remaining_quantity
        # ccxt's order structure carries floats (its contract with the bot); the exact Decimals
        # stay in brokerguard, and ``info`` keeps them as strings.
        built: dict[str, Any] = {
            "info": {
                "price": None if order.price is None else str(order.price),
                "amount": str(order.quantity),
                "filled": str(order.filled_quantity),
            },
            "id": order.broker_order_id,
            "clientOrderId": order.client_order_id,
            "symbol": order.symbol,
            "type": order.order_type.value,
            "side": order.side.value,
            "price": None if order.price is None else float(order.price),
            "amount": float(order.quantity),
            "filled": float(order.filled_quantity),
            "remaining": float(remaining),
            "status": _CCXT_STATUS[order.status],
        }
        return dict(self.exchange.safe_order(built))

    def client_order_id_for(self, venue_id: str, symbol: str | None = None) -> str:
        """The client order id that names the venue's order `venue_id` (looked up if unknown).

        An order without one (placed by hand) is named by its venue id. Raises
        :class:`BrokerRejection` when the venue does not know the order.
        """
        with self._raw_lock:
            known = self._cid_by_venue_id.get(venue_id)
        if known is not None:
            return known
        self._ensure_markets()
        raw = self._ccxt(self._raw("fetch_order"), venue_id, symbol, private=True)
        if not isinstance(raw, Mapping) or raw.get("id") is None:
            raise InvalidBrokerData("order", raw, "no_order_id")
        cid = self._client_id_of(raw) or venue_id
        if cid == venue_id:
            with self._raw_lock:
                self._hand_placed.add(venue_id)
        self._adopt(raw, str(cid))
        return str(cid)

    def read(self, name: str, *args: Any, private: bool = True) -> Any:
        """Call the exchange's own (unguarded) method `name` as a guarded read.

        Through the read breaker, with retries and backoff, the probe first when one is due;
        ccxt's errors are translated (the original is the ``__cause__``).
        """
        with self._observed("read", name):
            self._probe_if_due(self.read_breaker, real_call_is_probe=False)
            return self.read_breaker.call_with_circuit_breaker(self._read_once, name, args, private)

    def _read_once(self, name: str, args: tuple[Any, ...], private: bool) -> Any:
        self._throttle(name)
        self._ensure_markets()
        return self._ccxt(self._raw(name), *args, private=private)

    def note_unusable_price(self, symbol: str, reason: str, value: object) -> None:
        """Count and log a price a ticker gave that is not usable (it is never used)."""
        self._count_bad_data("price", reason)
        log.critical(
            "price for %s from broker %r (account %s) is unusable: %s (got %r); no fallback "
            "price is used, the symbol cannot be valued until a valid price arrives",
            symbol,
            self.broker_name,
            self.account_id,
            reason,
            value,
        )

    # ------------------------------------------------------------------ status

    def get_status(self) -> dict[str, Any]:
        """The broker status, plus nonce collisions when the exchange uses nonces."""
        status = super().get_status()
        if self._nonce is not None:
            status["nonce_collisions"] = self._nonce.collisions
        return status

    # ------------------------------------------------------------------ internals

    def _raw(self, name: str) -> Callable[..., Any]:
        """The exchange's own method `name`, past any guard (an instance's override first)."""
        exchange = self.exchange
        if name in vars(exchange):
            return getattr(exchange, name)  # type: ignore[no-any-return]
        base = getattr(type(exchange), "_brokerguard_base", None)
        if base is None:
            return getattr(exchange, name)  # type: ignore[no-any-return]
        return getattr(base, name).__get__(exchange, type(exchange))  # type: ignore[no-any-return]

    def _ensure_markets(self) -> Mapping[str, Any]:
        markets = self.exchange.markets
        if not markets:
            markets = self._ccxt(self._raw("load_markets"))
            if self.enforces_order_deadline:
                self._measure_clock()  # deadlines are read on the venue's clock
        return _checked_markets(markets)

    async def _aensure_markets(self) -> Mapping[str, Any]:
        markets = self.exchange.markets
        if not markets:
            # ccxt's async load_markets shares one load between concurrent callers.
            markets = await self._acall(self._raw("load_markets"), ())
            if self.enforces_order_deadline:
                await self._ameasure_clock()
        return _checked_markets(markets)

    def _client_id_of(self, raw: Mapping[str, Any]) -> str | None:
        """The order's client id, if it has one (Kraken's ``userref`` is no id: never unique)."""
        if self.rules is KRAKEN:
            info = raw.get("info")
            cid = info.get("cl_ord_id") if isinstance(info, Mapping) else None
        else:
            cid = raw.get("clientOrderId")
        return str(cid) if cid else None

    def _remember(self, client_order_id: str, raw: Mapping[str, Any]) -> None:
        kept = dict(raw)
        kept["clientOrderId"] = client_order_id  # (Kraken's parser puts a userref there)
        venue_id = kept.get("id")
        with self._raw_lock:
            self._raw_orders[client_order_id] = kept
            self._raw_orders.move_to_end(client_order_id)
            _trim(self._raw_orders)
            if isinstance(venue_id, str) and venue_id:
                self._cid_by_venue_id[venue_id] = client_order_id
                _trim(self._cid_by_venue_id)

    def _adopt(self, raw: Mapping[str, Any], client_order_id: str) -> Order:
        order = self._order_from(raw, client_order_id, None)
        self._remember(client_order_id, raw)
        return order

    def _ccxt(
        self,
        func: Callable[..., T],
        *args: Any,
        private: bool = False,
        resend_on_nonce: bool = True,
    ) -> T:
        """Call ccxt, translating its errors; a refused nonce is re-synced and retried.

        Private calls on one API key are serialised: the nonces are strictly increasing, but
        two threads' requests can still reach the exchange out of order, and Kraken rejects
        the late one. An exchange with a home loop makes the whole call there (its session
        lives there, and so does the serialisation: see the class docstring).
        """
        if self._loop is not None:
            call = self._acall(func, args, private=private, resend=resend_on_nonce)
            answer: T = self._on_home_loop(call)
            return answer
        if private and self._nonce is not None:
            with self._nonce.call_lock:
                return self._ccxt_once_more_on_nonce(func, args, resend_on_nonce)
        return self._ccxt_once_more_on_nonce(func, args, resend_on_nonce)

    def _ccxt_once_more_on_nonce(
        self, func: Callable[..., T], args: tuple[Any, ...], resend: bool = True
    ) -> T:
        for attempt in range(1, self.nonce_resyncs + 2):
            token = _RAW_CALL.set(True)
            try:
                result: T = _resolve(func(*args))
            except Exception as exc:  # judged by _failed_attempt: the one rule of both paths
                error = self._failed_attempt(exc, attempt, resend)
                if error is exc:
                    raise
                if error is not None:
                    raise error from exc
            else:
                self._accepted_attempt()
                return result
            finally:
                _RAW_CALL.reset(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _acall(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        private: bool = False,
        resend: bool = True,
    ) -> Any:
        """:meth:`_ccxt` on the home loop: the raw coroutine awaited here, the same rules."""
        if not private or self._nonce is None:
            return await self._aonce_more_on_nonce(func, args, resend)
        # Serialised on the loop, not by the source's call_lock: a thread's lock held across
        # awaits would be released by another thread if the loop ever ran on one, and held
        # for good by a task that never resumed (a loop stopped under it), locking the key's
        # synchronous callers out of it. Every call of a home-loop exchange runs here anyway.
        async with _key_lock(self._nonce):
            return await self._aonce_more_on_nonce(func, args, resend)

    async def _aonce_more_on_nonce(
        self, func: Callable[..., Any], args: tuple[Any, ...], resend: bool
    ) -> Any:
        for attempt in range(1, self.nonce_resyncs + 2):
            token = _RAW_CALL.set(True)
            try:
                result = func(*args)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:  # judged by _failed_attempt: the one rule of both paths
                error = self._failed_attempt(exc, attempt, resend)
                if error is exc:
                    raise
                if error is not None:
                    raise error from exc
            else:
                self._accepted_attempt()
                return result
            finally:
                _RAW_CALL.reset(token)
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed_attempt(self, exc: Exception, attempt: int, resend: bool) -> BaseException | None:
        """What a failed raw call raises: our error, `exc` itself, or None to try again.

        The one rule of both paths: a refused nonce re-syncs the shared source and is retried
        (up to ``nonce_resyncs`` times, and never for a call that must not be resent); any
        other ccxt error is translated; a parser crash is invalid data; anything else is ours.
        """
        if isinstance(exc, ccxt.InvalidNonce):
            if self._nonce is not None:
                self._nonce.resync()
            if not resend or attempt > self.nonce_resyncs or self._nonce is None:
                return translate_ccxt_error(exc, exchange_id=self._exchange_id)
            log.warning(
                "nonce refused by %r (%s); another writer on this key is ahead: the shared "
                "nonce source now runs %.1fs ahead of the clock; retrying (%d collision(s) "
                "so far)",
                self.broker_name,
                exc,
                self._nonce.offset_ms / 1000,
                self._nonce.collisions,
            )
            return None
        if isinstance(exc, ccxt.BaseError):
            return translate_ccxt_error(exc, exchange_id=self._exchange_id)
        if isinstance(exc, _CLIENT_PARSE_ERRORS):
            # ccxt's parser crashed on the payload: nothing usable came back.
            return InvalidBrokerData("response", repr(exc), "client_parse_error")
        return exc

    def _accepted_attempt(self) -> None:
        if self._nonce is not None:
            self._nonce.accepted()

    def _on_home_loop(self, call: Coroutine[Any, Any, T]) -> T:
        """Run `call` on the home loop from this (other) thread and wait for its result."""
        loop = self._loop
        problem = None
        if loop is None:
            problem = "it has no home event loop"
        elif _running_loop() is loop:
            problem = (
                "this is the thread of its own event loop, which would wait for itself forever "
                "(await afetch_positions/afetch_prices there; call the rest from another thread)"
            )
        elif loop.is_closed() or not loop.is_running():
            problem = "its event loop is not running (the service closed?)"
        if problem is not None or loop is None:
            call.close()  # never awaited: no "was never awaited" warning
            raise ConfigurationError(
                f"a synchronous call of {self.broker_name!r} (account {self.account_id}) on "
                f"its async exchange cannot be made: {problem}"
            )
        future = asyncio.run_coroutine_threadsafe(call, loop)
        while True:
            try:
                return future.result(timeout=_LOOP_LIVENESS_S)
            except TimeoutError:
                if future.done():
                    raise  # the call's own TimeoutError
                if loop.is_running():
                    continue  # still under way: the call's own timeouts bound it
                future.cancel()
                why = "stopped while a call was under way"
            except concurrent.futures.CancelledError:
                why = "cancelled a call under way (the service closing)"
            # Nothing says whether it reached the venue: a write stays unresolved.
            raise TransientBrokerError(
                f"the event loop of {self.broker_name!r} (account {self.account_id}) {why}: "
                "its outcome is unknown"
            ) from None

    def _refuse_off_home_loop(self, name: str) -> None:
        """Refuse an async call anywhere but on the home loop (the session lives there)."""
        if self._loop is None or _running_loop() is not self._loop:
            raise ConfigurationError(
                f"{name} of {self.broker_name!r} (account {self.account_id}) is awaited on its "
                "exchange's home event loop only (CcxtBroker(loop=...), a ccxt.async_support "
                "exchange)"
            )

    def _order_from(self, raw: object, client_order_id: str, request: OrderRequest | None) -> Order:
        if not isinstance(raw, Mapping):
            raise InvalidBrokerData("order", raw, "not_a_mapping")
        symbol = raw.get("symbol") or (request.symbol if request else None)
        side = raw.get("side") or (request.side.value if request else None)
        filled_raw = raw.get("filled")
        filled = Decimal(0) if filled_raw is None else parse_decimal(filled_raw, field="filled")
        amount = raw.get("amount")
        if amount is None:
            # A quote-sized order (Coinbase's market buy by funds) has no base amount: what
            # filled is what is known.
            amount = request.quantity if request else filled
        quantity = parse_decimal(amount, field="quantity")
        status_raw = raw.get("status")
        status = OrderStatus.OPEN if status_raw is None else _STATUS.get(str(status_raw).lower())
        if status is None:
            raise InvalidBrokerData("status", status_raw, "unknown_status")
        if status is OrderStatus.OPEN and filled > 0:
            status = OrderStatus.PARTIALLY_FILLED
        broker_id = raw.get("id")
        kind = raw.get("type")
        if kind is None:
            order_type = request.order_type if request else OrderType.MARKET
        else:
            # Anything but a market order rests at a price (stop and take-profit included).
            order_type = OrderType.MARKET if str(kind).lower() == "market" else OrderType.LIMIT
        price: Decimal | None = None
        if order_type is OrderType.LIMIT:
            price = _usable_price(raw.get("price"))
            if price is None and request is not None:
                price = request.price
        return Order(
            client_order_id,
            parse_symbol(symbol),
            side,  # type: ignore[arg-type]  # validated by Order
            quantity,
            filled,
            status,
            None if broker_id is None else str(broker_id),
            order_type,
            price,
        )


def _checked_markets(markets: object) -> Mapping[str, Any]:
    if not isinstance(markets, Mapping):
        raise InvalidBrokerData("markets", markets, "not_a_mapping")
    return markets


def _usable_price(value: object) -> Decimal | None:
    if value is None:
        return None
    try:
        return parse_price(value)
    except InvalidBrokerData:
        return None


def _trim(memory: OrderedDict[str, Any]) -> None:
    while len(memory) > _REMEMBERED_RAW:
        memory.popitem(last=False)
