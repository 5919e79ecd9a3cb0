"""Real exchanges through ccxt: the four raw methods, and ccxt's errors translated at one seam.

:class:`CcxtBroker` wraps a *synchronous* ``ccxt`` exchange instance. Spot positions are the
account's non-quote balances; prices come from one batched ``fetch_tickers`` call; orders are
market orders carrying our client order id (Kraken's ``cl_ord_id``); an order is looked up among
open **and** recently closed orders by that id, because Kraken checks ``cl_ord_id`` for
uniqueness only against open orders.

ccxt's own retry loop (``maxRetriesOnFailure``) is forced to 0: it would resend orders blindly.
brokerguard owns retries.

Every ccxt exception becomes a brokerguard one in :func:`translate_ccxt_error`, re-raised
``from`` the original; nothing above this module imports ccxt. For Kraken the error string
decides first (:mod:`brokerguard.brokers.kraken_errors`: ``EService:Deadline elapsed`` is
transient, ``EOrder:Duplicate order`` means the order exists, an unknown ``E...`` string leaves
a write unresolved), then ccxt's exception type, most specific first.

Orders sent to Kraken carry AddOrder's ``deadline`` (RFC 3339): after it the engine rejects the
request, so a lookup made after it that finds nothing proves the order was never placed.

Holdings under suffixed Kraken asset codes (``XBT.F`` flexible/Earn, ``.S`` staked, ``.M``,
``.B``, ``.P``) are holdings of their base asset and count toward the cap; ``ignore_assets``
opts out explicitly. A ticker's own timestamp becomes the quote's time, so ``max_quote_age``
sees an old quote; a ticker without one (Kraken's REST Ticker has none) is stamped on receipt
and says so (``Quote.stamped_on_receipt``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import ccxt

from brokerguard.brokers.base import BaseBroker, OrderMinimums
from brokerguard.brokers.kraken_errors import KrakenErrorClass, classify_kraken_error
from brokerguard.clock import SYSTEM_CLOCK, Clock
from brokerguard.errors import (
    BrokerError,
    BrokerGuardError,
    BrokerRejection,
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
    Position,
    Quote,
    parse_decimal,
    parse_side,
    parse_symbol,
)
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.ratelimit import RateLimiter

__all__ = [
    "CcxtBroker",
    "InvalidNonceError",
    "NonceSource",
    "nonce_source_for",
    "strict_json_loads",
    "translate_ccxt_error",
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


class NonceSource:
    """Strictly increasing nonces (milliseconds) for one API key, shared by every thread.

    Kraken rejects a nonce that is not larger than the last one it saw for the key. ccxt's own
    counter is per exchange instance, so two instances (or threads with their own instances)
    on one key can collide; one shared source per key cannot. Another writer on the same key
    that we do not share a source with (a second host, a hand-run script) can still be ahead of
    us, and Kraken never says by how much. So after a refusal :meth:`resync` moves the source
    *ahead of its own clock* by a learned offset that doubles with each consecutive refusal
    (1 s, then 2 s, 4 s ... past the last nonce handed out) and **keeps** that offset for
    every later nonce: a writer 10 s ahead is cleared after four refusals (1 + 2 + 4 + 8 s),
    and stays cleared while it keeps writing, instead of overtaking us again a second later.
    :meth:`accepted` ends a streak of refusals.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        resync_jump_ms: int = 1000,
        max_offset_ms: int = 32_000,
    ) -> None:
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self.max_offset_ms = max_offset_ms
        """The lead is never learned past this: a burst of refusals (a hostile or broken
        answer) cannot push our nonces hours ahead and lock every other client out of the key."""
        self._lock = threading.Lock()
        self._last = 0
        self._offset_ms = 0
        self._streak = 0
        self.resync_jump_ms = resync_jump_ms
        self.call_lock = threading.RLock()
        """Held across each private call: increasing nonces must also *arrive* in order."""
        self.collisions = 0
        """How many times the exchange refused one of our nonces."""

    def next(self) -> int:
        """Return a nonce larger than every nonce returned before (and than the learned mark)."""
        with self._lock:
            self._last = max(self._last + 1, int(self._clock.time() * 1000) + self._offset_ms)
            return self._last

    def resync(self) -> None:
        """Record a refused nonce and jump ahead so the next one clears the exchange's mark."""
        with self._lock:
            self.collisions += 1
            self._streak += 1
            jump = self.resync_jump_ms * 2 ** min(self._streak - 1, 16)
            now_ms = int(self._clock.time() * 1000)
            self._offset_ms = min(
                max(self._offset_ms, self._last - now_ms) + jump, self.max_offset_ms
            )
            self._last = max(self._last, now_ms + self._offset_ms - 1)

    def accepted(self) -> None:
        """Record that the exchange accepted a nonce: the next refusal starts a new streak."""
        with self._lock:
            self._streak = 0

    @property
    def last(self) -> int:
        """The last nonce handed out."""
        return self._last

    @property
    def offset_ms(self) -> int:
        """How far ahead of the clock the source runs, learned from refusals (milliseconds)."""
        return self._offset_ms


_nonce_sources: dict[str, NonceSource] = {}
_nonce_lock = threading.Lock()


def nonce_source_for(api_key: str, clock: Clock | None = None) -> NonceSource:
    """Return the process-wide nonce source for `api_key` (keyed by a hash, never the key)."""
    fingerprint = hashlib.sha256(api_key.encode()).hexdigest()
    with _nonce_lock:
        source = _nonce_sources.get(fingerprint)
        if source is None:
            source = _nonce_sources[fingerprint] = NonceSource(clock)
        return source


_VENUE_TIME_RESOLUTION_S = 1.0
"""Kraken's ``Time`` answers whole seconds: the venue's clock is known to within one."""

_STAKED_ALIASES: Mapping[str, str] = {
    # Kraken's staked ether was its own asset (ETH2, ETH2.S); it is ether exposure all the same.
    "ETH2": "ETH",
}


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
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.CANCELED,
    "rejected": OrderStatus.REJECTED,
}


class CcxtBroker(BaseBroker):
    """A real exchange through a synchronous ccxt exchange instance.

    Args:
        exchange: a configured ``ccxt`` exchange (keys come from the caller's environment).
        broker_name: defaults to the exchange id (``"kraken"``).
        quote_currency: the currency positions are valued in; its balance is cash, not a
            position.
        ignore_assets: balance codes that are not positions (other fiat, fee credits): the
            opt-out from counting a holding. A base code (``"DOT"``) ignores its suffixed
            variants too; a suffixed one (``"DOT.S"``) only itself. Suffixed holdings count
            toward the cap unless named here (fail closed).
        nonce_source: shared nonces for the API key (default: the process-wide source for the
            exchange's key, when it has one).
        nonce_resyncs: refused nonces re-synced and retried per call (each jump doubles: 5
            clears a writer up to 31 s ahead); a refused nonce proves nothing was processed.
        Other arguments: as for :class:`BaseBroker`.
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
    ) -> None:
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
        # Kraken's AddOrder takes a deadline (now + 2 s to now + 60 s) after which its engine
        # rejects the request; other venues get none, and absence waits for the local bound.
        self.enforces_order_deadline = self._exchange_id == "kraken"
        self.nonce_resyncs = nonce_resyncs
        self._venue_offset_s = 0.0  # the venue's clock minus ours, measured by ping()
        self._clock_error_s = _VENUE_TIME_RESOLUTION_S
        exchange.enableLastJsonResponse = True  # the order lookups read the raw envelope
        self.quote_currency = quote_currency
        self.ignore_assets = frozenset(ignore_assets)
        if exchange.options.get("maxRetriesOnFailure", 0):
            log.warning(
                "ccxt maxRetriesOnFailure was %s for %r; forcing 0: ccxt would resend orders "
                "blindly, and brokerguard owns retries",
                exchange.options["maxRetriesOnFailure"],
                self.broker_name,
            )
        exchange.options["maxRetriesOnFailure"] = 0
        exchange.on_json_response = strict_json_loads
        self._nonce: NonceSource | None = nonce_source
        if self._nonce is None and getattr(exchange, "apiKey", None):
            self._nonce = nonce_source_for(exchange.apiKey, clock)
        if self._nonce is not None:
            exchange.nonce = self._nonce.next

    # ------------------------------------------------------------------ the four raw methods

    def fetch_positions(self) -> Sequence[Position]:
        """Return every non-quote holding with a positive total as a spot position.

        Suffixed asset codes (ccxt turns Kraken's ``XBT.F`` into ``BTC.F``) are holdings of
        their base asset: they are added to it, because the cap must see all exposure. An
        answer that lists no asset at all is not evidence of an empty account (a funded account
        always lists its cash): it is refused as invalid data.
        """
        self._ensure_markets()
        balance = self._ccxt(self.exchange.fetch_balance, private=True)
        totals = balance.get("total") if isinstance(balance, Mapping) else None
        if not isinstance(totals, Mapping) or not isinstance(balance.get("info"), Mapping):
            raise InvalidBrokerData("balance", balance, "no_totals")
        if not totals:
            raise InvalidBrokerData("balance", balance.get("info"), "empty")
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
        markets = self._ensure_markets()
        known = [s for s in symbols if s in markets]
        if not known:
            return {}
        tickers = self._ccxt(self.exchange.fetch_tickers, known)
        if not isinstance(tickers, Mapping):
            raise InvalidBrokerData("tickers", tickers, "not_a_mapping")
        prices: dict[str, object] = {}
        for symbol in known:
            ticker = tickers.get(symbol)
            if isinstance(ticker, Mapping) and "last" in ticker:
                prices[symbol] = _quote_or_raw(symbol, ticker)
        return prices

    def submit_order(self, order: OrderRequest) -> Order:
        """Send a market order with our client order id (Kraken's ``cl_ord_id``) and deadline."""
        self._ensure_markets()
        params: dict[str, Any] = {"clientOrderId": order.client_order_id}
        if self.enforces_order_deadline and order.deadline is not None:
            params["deadline"] = _rfc3339(order.deadline + self._venue_offset_s)
        placed = self._ccxt(
            self.exchange.create_order,
            order.symbol,
            "market",
            order.side.value,
            str(order.quantity),
            None,
            params,
            private=True,
            resend_on_nonce=False,  # the guarded broker looks the order up before any resend
        )
        if isinstance(placed, Mapping) and placed.get("id") is None:
            # A success without the venue's order id is no acknowledgement: look it up.
            raise InvalidBrokerData("order", placed.get("info"), "no_order_id")
        return self._order_from(placed, order.client_order_id, order)

    def fetch_order(self, client_order_id: str) -> Order | None:
        """Find the order by client order id among open, then recently closed, orders."""
        self._ensure_markets()
        params = {"clientOrderId": client_order_id}
        for fetch, key in (
            (self.exchange.fetch_open_orders, "open"),
            (self.exchange.fetch_closed_orders, "closed"),
        ):
            found = self._ccxt(self._listed_orders, fetch, key, params, private=True)
            if not isinstance(found, list):
                raise InvalidBrokerData("orders", found, "not_a_list")
            for raw in found:
                if isinstance(raw, Mapping) and raw.get("clientOrderId") == client_order_id:
                    return self._order_from(raw, client_order_id, None)
        return None

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
        trades = self._ccxt(self.exchange.fetch_my_trades, None, venue_since_ms, private=True)
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

    def _listed_orders(
        self, fetch: Callable[..., object], key: str, params: Mapping[str, Any]
    ) -> object:
        """One order listing; on Kraken the raw answer must hold the list it was asked for.

        ccxt reads a missing ``result.open`` (or ``closed``) as no orders: an empty but
        successful answer would then "prove" an order absent, and a filled order would be sent
        again. Absence needs the venue to have listed its orders.
        """
        found = fetch(None, None, None, dict(params))
        if self._exchange_id == "kraken":
            body = getattr(self.exchange, "last_json_response", None)
            result = body.get("result") if isinstance(body, Mapping) else None
            if not isinstance(result, Mapping) or not isinstance(result.get(key), Mapping):
                raise InvalidBrokerData("orders", body, f"no_{key}_list")
        return found

    def _measure_clock(self) -> object:
        before = self.clock.time()
        venue_ms = self._ccxt(self.exchange.fetch_time)
        after = self.clock.time()
        try:
            venue = float(parse_decimal(venue_ms, field="time")) / 1000
        except InvalidBrokerData:
            return venue_ms
        self._venue_offset_s = venue - (before + after) / 2
        self._clock_error_s = (after - before) / 2 + _VENUE_TIME_RESOLUTION_S
        return venue_ms

    # ------------------------------------------------------------------ status

    def get_status(self) -> dict[str, Any]:
        """The broker status, plus nonce collisions when the exchange uses nonces."""
        status = super().get_status()
        if self._nonce is not None:
            status["nonce_collisions"] = self._nonce.collisions
        return status

    # ------------------------------------------------------------------ internals

    def _ensure_markets(self) -> Mapping[str, Any]:
        markets = self.exchange.markets
        if not markets:
            markets = self._ccxt(self.exchange.load_markets)
            if self.enforces_order_deadline:
                self._measure_clock()  # deadlines are read on the venue's clock
        if not isinstance(markets, Mapping):
            raise InvalidBrokerData("markets", markets, "not_a_mapping")
        return markets

    def _ccxt(
        self,
        func: Callable[..., T],
        *args: Any,
        private: bool = False,
        resend_on_nonce: bool = True,
    ) -> T:
        """Call ccxt, translating its errors; a refused nonce is re-synced and retried once.

        Private calls on one API key are serialised: the nonces are strictly increasing, but
        two threads' requests can still reach the exchange out of order, and Kraken rejects
        the late one.
        """
        if private and self._nonce is not None:
            with self._nonce.call_lock:
                return self._ccxt_once_more_on_nonce(func, args, resend_on_nonce)
        return self._ccxt_once_more_on_nonce(func, args, resend_on_nonce)

    def _ccxt_once_more_on_nonce(
        self, func: Callable[..., T], args: tuple[Any, ...], resend: bool = True
    ) -> T:
        for attempt in range(1, self.nonce_resyncs + 2):
            try:
                result = func(*args)
            except ccxt.InvalidNonce as exc:
                if self._nonce is not None:
                    self._nonce.resync()
                if not resend or attempt > self.nonce_resyncs or self._nonce is None:
                    raise translate_ccxt_error(exc, exchange_id=self._exchange_id) from exc
                log.warning(
                    "nonce refused by %r (%s); another writer on this key is ahead: the shared "
                    "nonce source now runs %.1fs ahead of the clock; retrying (%d collision(s) "
                    "so far)",
                    self.broker_name,
                    exc,
                    self._nonce.offset_ms / 1000,
                    self._nonce.collisions,
                )
            except ccxt.BaseError as exc:
                raise translate_ccxt_error(exc, exchange_id=self._exchange_id) from exc
            else:
                if self._nonce is not None:
                    self._nonce.accepted()
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _order_from(self, raw: object, client_order_id: str, request: OrderRequest | None) -> Order:
        if not isinstance(raw, Mapping):
            raise InvalidBrokerData("order", raw, "not_a_mapping")
        symbol = raw.get("symbol") or (request.symbol if request else None)
        side = raw.get("side") or (request.side.value if request else None)
        amount = raw.get("amount")
        quantity = parse_decimal(
            amount if amount is not None else (request.quantity if request else None),
            field="quantity",
        )
        filled_raw = raw.get("filled")
        filled = Decimal(0) if filled_raw is None else parse_decimal(filled_raw, field="filled")
        status_raw = raw.get("status")
        status = OrderStatus.OPEN if status_raw is None else _STATUS.get(str(status_raw))
        if status is None:
            raise InvalidBrokerData("status", status_raw, "unknown_status")
        if status is OrderStatus.OPEN and filled > 0:
            status = OrderStatus.PARTIALLY_FILLED
        broker_id = raw.get("id")
        return Order(
            client_order_id,
            parse_symbol(symbol),
            side,  # type: ignore[arg-type]  # validated by Order
            quantity,
            filled,
            status,
            None if broker_id is None else str(broker_id),
        )
