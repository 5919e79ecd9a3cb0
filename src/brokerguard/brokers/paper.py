"""An in-memory exchange for demos, tests and simulations, with a plan of what goes wrong.

:class:`PaperBroker` is deterministic from a seed and a clock: prices follow a seeded random
walk, market orders settle after a delay (optionally in two partial fills), and a
:class:`FaultPlan` injects the failures real brokers produce — errors per method, outage
windows, latency, missing/zero/NaN prices, stale position snapshots, sells that never settle,
rate limiting with ``retry_after``, and orders that are accepted but whose confirmation is lost.
On a :class:`~brokerguard.testing.FakeClock` nothing really sleeps, so hours of trading run in
seconds and a seed replays exactly.

It also produces the faults by which Kraken makes a blind retry execute twice, because those
are the ones a guard must survive:

- **delayed acceptance**: AddOrder times out, a lookup made at once finds nothing, and the
  engine accepts the order seconds later, unless its ``deadline`` passed first;
- **empty reads**: a successful, well-formed position read that says "nothing held";
- **unknown error strings** (``EGeneral:Unexpected condition``), after which the order may or
  may not exist;
- **duplicate-id answers** the way Kraken gives them: a client order id is refused
  (``EOrder:Duplicate order``) only while an order with it is *open*; once that order is
  final the same id is accepted again, as a new order. So the broker keeps every order, not
  one per id.

Every raw call is recorded in :attr:`PaperBroker.calls` with its time, which is how the chaos
suite proves that nothing reached the broker while its circuit was open.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from brokerguard.brokers.base import BaseBroker
from brokerguard.clock import Clock
from brokerguard.errors import (
    BrokerError,
    BrokerRejection,
    ConfigurationError,
    DuplicateOrderError,
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
    Side,
    TimeInForce,
    parse_decimal,
    parse_price,
    parse_symbol,
)
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.ratelimit import RateLimiter

__all__ = [
    "DUPLICATE_ORDER",
    "HISTORY_BOUNDS",
    "MISSING",
    "RAW_METHODS",
    "UNKNOWN_ERROR",
    "FaultPlan",
    "OutageWindow",
    "PaperBroker",
    "PaperMarket",
    "RecordedCall",
]

RAW_METHODS: Final = (
    "fetch_positions",
    "fetch_prices",
    "submit_order",
    "fetch_order",
    "ping",
    "fetch_fills",
    "submit_cancel",
    "fetch_open_orders",
    "submit_cancel_all_after",
)
"""The calls a fault plan can target."""

HISTORY_BOUNDS: Final = MappingProxyType(
    {"fills": 10_000, "dropped": 1_000, "position_snapshots": 1_000}
)
"""The most a paper broker keeps of each history, whatever its ``history_s``: fills (the trade
history), requests the engine dropped, and position snapshots (for stale reads)."""

UNKNOWN_ERROR: Final = "EGeneral:Unexpected condition"
"""The error string of an unknown-error fault: Kraken's shape, in no table of known strings, so
a guard cannot tell from it whether the order was placed."""

DUPLICATE_ORDER: Final = "EOrder:Duplicate order"
"""Kraken's answer to a client order id that an open order already carries."""


class _Missing:
    """Sentinel: leave the symbol out of the price payload altogether."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""Use as a bad price in a :class:`FaultPlan` to omit the symbol from the payload."""

DEFAULT_PRICES: Final[Mapping[str, str]] = {
    "BTC/USD": "65000",
    "ETH/USD": "3200",
    "SOL/USD": "150",
    "XRP/USD": "0.55",
    "ADA/USD": "0.45",
    "DOGE/USD": "0.12",
    "AVAX/USD": "35",
    "DOT/USD": "7.2",
    "LINK/USD": "14.5",
    "LTC/USD": "80",
    "ATOM/USD": "9.1",
    "UNI/USD": "8.3",
}


@dataclass(frozen=True, slots=True)
class OutageWindow:
    """The broker is down from `start` to `end` (clock.monotonic() seconds) for `methods`."""

    start: float
    end: float
    methods: frozenset[str] | None = None
    """The raw methods affected; None means every call."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end) and self.end > self.start):
            raise ConfigurationError(f"outage window needs start < end, got {self}")
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(_check_methods(self.methods)))

    def covers(self, method: str, now: float) -> bool:
        """Return whether `method` is down at `now`."""
        return self.start <= now < self.end and (self.methods is None or method in self.methods)


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """What goes wrong with a :class:`PaperBroker`. Every field defaults to "nothing".

    Args:
        error_rate: per raw method, the probability of a transient error (a timeout).
        outages: windows in which the broker answers 503 to the methods they name.
        latency: per raw method, seconds each call takes (slept on the broker's clock).
        bad_prices: per symbol, the raw value to report instead of its price (``None``, ``0``,
            ``"NaN"``, ``-1``, :data:`MISSING` to omit it).
        stale_positions_rate: probability that a position fetch returns an older state.
        stale_positions_age: how old (seconds) that state is.
        unsettled_sells: symbols whose sell orders never settle (``True``: every symbol).
        rate_limit_rate: probability that a call is refused as rate limited.
        rate_limit_retry_after: the ``retry_after`` such a refusal carries, in seconds.
        fail_after_accept_rate: probability that a submitted order is accepted but its
            confirmation is lost (the call raises a transient error).
        delayed_accept_rate: probability that a submitted order is queued in the engine: the
            call raises a transient error (a timeout) and the order is invisible to every
            lookup until it is accepted `accept_delay` seconds later (on the broker's clock),
            from when on it executes and settles like any other. If its
            ``OrderRequest.deadline`` (epoch seconds) passes first it is never accepted, like
            Kraken's AddOrder ``deadline``; nor is it if, by then, an open order carries its
            client order id or (a sell) the position is no longer there. This is how a lookup
            made at once finds nothing and a resend executes twice.
        accept_delay: seconds from the send to that acceptance: a number, or a ``(min, max)``
            range drawn uniformly per order. The default, 1 to 15 s, lands most acceptances
            after the guard's immediate lookup and before brokerguard's default 10 s order
            deadline, and some after it (those are never accepted).
        empty_positions_rate: probability that a position fetch succeeds with a well-formed,
            empty answer although positions are held (Kraken answering ``{"error": [],
            "result": {}}``): the read that says "nothing held" without failing.
        unknown_error_rate: probability that a submit answers an error string nobody knows
            (:data:`UNKNOWN_ERROR`, a plain :class:`~brokerguard.errors.BrokerError`); half of
            those orders were accepted before the answer, half were not, and the answer does
            not say which.
    """

    error_rate: Mapping[str, float] = field(default_factory=dict)
    outages: Sequence[OutageWindow] = ()
    latency: Mapping[str, float] = field(default_factory=dict)
    bad_prices: Mapping[str, object] = field(default_factory=dict)
    stale_positions_rate: float = 0.0
    stale_positions_age: float = 30.0
    unsettled_sells: bool | frozenset[str] = False
    rate_limit_rate: float = 0.0
    rate_limit_retry_after: float = 5.0
    fail_after_accept_rate: float = 0.0
    delayed_accept_rate: float = 0.0
    accept_delay: float | tuple[float, float] = (1.0, 15.0)
    empty_positions_rate: float = 0.0
    unknown_error_rate: float = 0.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name, mapping in (("error_rate", self.error_rate), ("latency", self.latency)):
            unknown = set(mapping) - set(RAW_METHODS)
            if unknown:
                problems.append(f"{name} names unknown methods {sorted(unknown)}")
        for method, p in self.error_rate.items():
            _check_probability(f"error_rate[{method}]", p, problems)
        for method, seconds in self.latency.items():
            if not (math.isfinite(seconds) and seconds >= 0):
                problems.append(f"latency[{method}] must be >= 0 seconds, got {seconds!r}")
        for name in (
            "stale_positions_rate",
            "rate_limit_rate",
            "fail_after_accept_rate",
            "delayed_accept_rate",
            "empty_positions_rate",
            "unknown_error_rate",
        ):
            _check_probability(name, getattr(self, name), problems)
        for name in ("stale_positions_age", "rate_limit_retry_after"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be >= 0 seconds, got {value!r}")
        problems.extend(_delay_problems(self.accept_delay))
        if problems:
            raise ConfigurationError("invalid FaultPlan: " + "; ".join(problems))

    @property
    def accept_delay_range(self) -> tuple[float, float]:
        """The ``(min, max)`` seconds an order queued by ``delayed_accept_rate`` waits."""
        if isinstance(self.accept_delay, tuple):
            low, high = self.accept_delay
            return float(low), float(high)
        return float(self.accept_delay), float(self.accept_delay)

    def sell_never_settles(self, symbol: str) -> bool:
        """Return whether sells of `symbol` stay open forever under this plan."""
        if isinstance(self.unsettled_sells, bool):
            return self.unsettled_sells
        return symbol in self.unsettled_sells


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One raw call that reached the paper broker, and how it ended."""

    at: float
    method: str
    outcome: str
    """``"ok"`` or the name of the injected fault (``"outage"``, ``"error"`` ...)."""


@dataclass(slots=True)
class _PaperOrder:
    request: OrderRequest
    broker_order_id: str
    submitted_at: float
    filled: Decimal = Decimal(0)
    status: OrderStatus = OrderStatus.OPEN
    shown: Order | None = None
    """The last view, kept until a fill changes the order: building (and validating) an Order
    for every order on every look made the book the chaos suite's hot spot."""
    final_seen: float | None = None
    """When a prune first saw it final (monotonic): its age in the bounded history."""

    def view(self) -> Order:
        if self.shown is None:
            r = self.request
            self.shown = Order(
                r.client_order_id, r.symbol, r.side, r.quantity, self.filled, self.status,
                self.broker_order_id, r.order_type, r.price,
            )  # fmt: skip
        return self.shown


@dataclass(frozen=True, slots=True)
class _QueuedOrder:
    """An order the engine has received but not accepted yet (invisible to every lookup)."""

    request: OrderRequest
    due: float
    """When the engine reaches it (the clock's monotonic seconds)."""
    due_epoch: float
    """The same moment in epoch seconds, compared with the order's deadline."""


class PaperMarket:
    """The prices of one simulated exchange: a seeded random walk, shared by its accounts.

    Every account trading on one exchange sees the same price for a symbol; sharing one market
    also keeps a fleet of paper accounts small (one walk and one RNG per exchange, not per
    account). Thread-safe. A :class:`PaperBroker` given no market makes its own.

    Args:
        prices: starting price per symbol (default: a dozen crypto pairs).
        seed: seeds the walk.
        volatility: standard deviation of the walk per square-root second (0: prices stay).
        start: the monotonic time the walk starts from (the clock's ``monotonic()``).
    """

    def __init__(
        self,
        prices: Mapping[str, object] | None = None,
        *,
        seed: int = 0,
        volatility: float = 0.0005,
        start: float = 0.0,
    ) -> None:
        if not (math.isfinite(volatility) and volatility >= 0):
            raise ConfigurationError(f"volatility must be >= 0, got {volatility!r}")
        self.volatility = volatility
        self._lock = threading.Lock()
        self._rng = random.Random(f"{seed}:prices")  # noqa: S311 (a simulation)
        source = prices if prices is not None else DEFAULT_PRICES
        self._prices: dict[str, Decimal] = {
            parse_symbol(s): parse_price(p, symbol=s) for s, p in source.items()
        }
        self._at = start

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._prices

    def quotes(self, symbols: Iterable[str], now: float) -> dict[str, Decimal]:
        """Walk the prices up to `now` (monotonic) and return those of the known `symbols`."""
        with self._lock:
            self._walk(now)
            return {s: self._prices[s] for s in symbols if s in self._prices}

    def set_price(self, symbol: str, price: object) -> None:
        """Move a symbol's price by hand (valid prices only)."""
        with self._lock:
            self._prices[parse_symbol(symbol)] = parse_price(price, symbol=symbol)

    def _walk(self, now: float) -> None:
        elapsed = now - self._at
        if elapsed <= 0 or not self.volatility:
            self._at = max(self._at, now)
            return
        scale = self.volatility * math.sqrt(elapsed)
        for symbol in sorted(self._prices):
            shock = Decimal(repr(math.exp(self._rng.gauss(0.0, scale))))
            price = (self._prices[symbol] * shock).quantize(Decimal("1e-8"))
            # Quantizing a tiny price could reach zero: keep it positive.
            self._prices[symbol] = price if price > 0 else Decimal("1e-8")
        self._at = now


class PaperBroker(BaseBroker):
    """A deterministic in-memory broker with injectable faults (the embedded default).

    Args:
        broker_name: name of this simulated broker (breakers are shared by name).
        account_type, user_id, account_id, read_breaker, write_breaker: as for BaseBroker.
        prices: starting price per symbol (default: a dozen crypto pairs); not with `market`.
        positions: starting positions per symbol.
        seed: seeds the price walk and the fault dice (separately: a fault plan does not
            change the price path).
        clock: the clock (a FakeClock makes runs instant and replayable).
        settle_delay: seconds between a market order's submission and its fill.
        partial_fills: fill in two halves, `settle_delay` apart.
        volatility: standard deviation of the price walk per square-root second.
        fault_plan: what goes wrong.
        market: the exchange's prices, shared with other accounts (default: a market of its
            own, from `prices`, `seed` and `volatility`).
        recorded_calls: how many raw calls :attr:`calls` keeps (the newest), so a paper broker
            running for days does not grow without bound.
        history_s: how long the venue remembers what is over: final orders (as a real venue
            stops listing closed orders), fills, dropped requests, recorded calls and position
            snapshots older than this many seconds are forgotten (open and queued orders never
            are); None keeps them up to the count bounds (:data:`HISTORY_BOUNDS`). Default one
            hour: far longer than any lookup brokerguard makes (an unresolved order is looked up
            within its deadline and margin, seconds) and than the default
            ``stale_positions_age``; a lookup of an order forgotten since answers "not found"
            like a venue that purged it.

    Like Kraken's AddOrder ``deadline``, an order is never accepted after its
    ``OrderRequest.deadline`` (:attr:`enforces_order_deadline`).
    """

    enforces_order_deadline = True

    def __init__(
        self,
        broker_name: str = "paper",
        account_type: str = "master",
        user_id: str | None = None,
        *,
        account_id: str | None = None,
        prices: Mapping[str, object] | None = None,
        positions: Mapping[str, object] | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        settle_delay: float = 0.5,
        partial_fills: bool = False,
        volatility: float = 0.0005,
        fault_plan: FaultPlan | None = None,
        read_breaker: BrokerCircuitBreaker | None = None,
        write_breaker: BrokerCircuitBreaker | None = None,
        rate_limiter: RateLimiter | None = None,
        recorded_calls: int = 100_000,
        market: PaperMarket | None = None,
        history_s: float | None = 3600.0,
    ) -> None:
        super().__init__(
            broker_name,
            account_type,
            user_id,
            account_id=account_id,
            clock=clock,
            read_breaker=read_breaker,
            write_breaker=write_breaker,
            rate_limiter=rate_limiter,
        )
        if not (math.isfinite(settle_delay) and settle_delay >= 0):
            raise ConfigurationError(f"settle_delay must be >= 0 seconds, got {settle_delay!r}")
        if history_s is not None and not (math.isfinite(history_s) and history_s > 0):
            raise ConfigurationError(f"history_s must be > 0 seconds or None, got {history_s!r}")
        self.history_s = None if history_s is None else float(history_s)
        if market is not None and prices is not None:
            raise ConfigurationError("give a PaperBroker its prices or a market, not both")
        self.fault_plan = fault_plan or FaultPlan()
        self.settle_delay = float(settle_delay)
        self.partial_fills = partial_fills
        self.market = market or PaperMarket(
            prices, seed=seed, volatility=volatility, start=self.clock.monotonic()
        )
        self._lock = threading.RLock()
        self._seed = seed
        self._fault_dice: random.Random | None = None  # made on first use: 2.5 KB each
        self._positions: dict[str, Decimal] = {}
        self._made_positions: dict[str, Position] = {}  # symbol -> last Position answered
        self._answered: tuple[Position, ...] | None = (
            None  # the holdings' answer, until they change
        )
        for symbol, quantity in (positions or {}).items():
            qty = parse_decimal(quantity, field="quantity", symbol=symbol)
            if qty > 0:
                self._positions[parse_symbol(symbol)] = qty
        # Every accepted order, in acceptance order: Kraken refuses a client order id only
        # while an order with it is open, so one id may name several orders over time.
        self._orders: list[_PaperOrder] = []
        self._newest: dict[str, _PaperOrder] = {}  # client order id -> its latest order
        self._live: list[_PaperOrder] = []  # orders not final yet, in acceptance order
        self._queue: list[_QueuedOrder] = []  # received, not accepted yet (delayed acceptance)
        self._dropped: deque[tuple[float, OrderRequest, str]] = deque(
            maxlen=HISTORY_BOUNDS["dropped"]
        )  # (monotonic time dropped, request, why), oldest first
        self._fills: deque[Fill] = deque(maxlen=HISTORY_BOUNDS["fills"])  # oldest first
        self._switch_at: float | None = None  # the dead man's switch's trigger (monotonic)
        self.switch_fired = 0  # how many times the dead man's switch cancelled the book
        self._next_order_number = 1
        now = self.clock.monotonic()
        self._history: list[tuple[float, dict[str, Decimal]]] = [(now, dict(self._positions))]
        self._calls: deque[RecordedCall] = deque(maxlen=recorded_calls)
        self._prune_at = now if self.history_s is None else now + self.history_s / 8

    # ------------------------------------------------------------------ the four raw methods

    def fetch_positions(self) -> Sequence[Position]:
        """Return the positions (or, under the plan, nothing at all or an older snapshot)."""
        return self._positions_at(self._enter("fetch_positions"))

    async def afetch_positions(self) -> Sequence[Position]:
        """:meth:`fetch_positions` with its latency awaited (``clock.asleep``), not slept."""
        return self._positions_at(await self._aenter("fetch_positions"))

    def _positions_at(self, now: float) -> list[Position]:
        with self._lock:
            self._settle(now)
            plan = self.fault_plan
            if self._roll(plan.empty_positions_rate):
                state: dict[str, Decimal] = {}  # a successful, well-formed, empty answer
                self._record(now, "fetch_positions", "empty")
            elif self._roll(plan.stale_positions_rate):
                state = self._state_at(now - plan.stale_positions_age)
                self._record(now, "fetch_positions", "stale")
            else:
                self._record(now, "fetch_positions", "ok")
                if self._answered is None:
                    self._answered = tuple(
                        self._position(symbol, qty)
                        for symbol, qty in sorted(self._positions.items())
                    )
                return list(self._answered)
        return [self._position(symbol, qty) for symbol, qty in sorted(state.items())]

    def _position(self, symbol: str, quantity: Decimal) -> Position:
        """The position value for a holding: the last one made for it, while it is unchanged.

        An exchange's answer is parsed anew each time, but this emulator's own state was
        validated when it was set; re-validating twenty unchanged holdings on every read was
        most of a read's cost. Bounded by the symbols it has held (its market's).
        """
        made = self._made_positions.get(symbol)
        if made is None or made.quantity != quantity:
            made = self._made_positions[symbol] = Position(symbol, quantity)
        return made

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        """Return the current walk price of each known symbol, with the plan's bad values."""
        return self._prices_at(self._enter("fetch_prices"), symbols)

    async def afetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        """:meth:`fetch_prices` with its latency awaited (``clock.asleep``), not slept."""
        return self._prices_at(await self._aenter("fetch_prices"), symbols)

    def _prices_at(self, now: float, symbols: Sequence[str]) -> dict[str, object]:
        with self._lock:
            quotes = self.market.quotes(symbols, now)
            payload: dict[str, object] = {}
            for symbol in symbols:
                if symbol in self.fault_plan.bad_prices:
                    bad = self.fault_plan.bad_prices[symbol]
                    if bad is not MISSING:
                        payload[symbol] = bad
                elif symbol in quotes:
                    payload[symbol] = quotes[symbol]
            self._record(now, "fetch_prices", "ok")
        return payload

    def submit_order(self, order: OrderRequest) -> Order:
        """Accept a market order; it fills after `settle_delay` (sells may never, per plan).

        A client order id that an open order carries is answered
        :class:`~brokerguard.errors.DuplicateOrderError`; one whose orders are all final is
        accepted again, as a new order (Kraken checks ``cl_ord_id`` only against open orders).
        """
        now = self._enter("submit_order")
        with self._lock:
            self._settle(now)
            cid = order.client_order_id
            if self._open_order(cid) is not None:
                self._record(now, "submit_order", "duplicate")
                raise DuplicateOrderError(
                    f"{DUPLICATE_ORDER}: an open order has client order id {cid}",
                    client_order_id=cid,
                )
            if order.deadline is not None and self.clock.time() > order.deadline:
                self._record(now, "submit_order", "rejected")
                raise BrokerRejection(f"deadline elapsed for {cid}")
            if order.symbol not in self.market:
                self._record(now, "submit_order", "rejected")
                raise BrokerRejection(f"unknown symbol {order.symbol}")
            refusal = self._refusal(order)
            if refusal is not None:
                self._record(now, "submit_order", "rejected")
                raise BrokerRejection(refusal)
            plan = self.fault_plan
            if self._roll(plan.delayed_accept_rate):
                low, high = plan.accept_delay_range
                delay = self._dice().uniform(low, high)
                self._queue.append(_QueuedOrder(order, now + delay, self.clock.time() + delay))
                self._record(now, "submit_order", "queued")
                raise TransientBrokerError(
                    "paper: submit_order timed out (EService:Unavailable); the order may still "
                    "be accepted"
                )
            if self._roll(plan.unknown_error_rate):
                accepted = self._roll(0.5)
                if accepted:
                    self._accept(order, now)
                self._record(
                    now, "submit_order", "accepted_then_unknown" if accepted else "unknown"
                )
                raise BrokerError(UNKNOWN_ERROR)
            placed = self._accept(order, now)
            lost = self._roll(plan.fail_after_accept_rate)
            self._record(now, "submit_order", "accepted_then_lost" if lost else "ok")
            view = placed.view()
        if lost:
            raise TransientBrokerError("paper: order accepted but the confirmation was lost")
        return view

    def fetch_order(self, client_order_id: str) -> Order | None:
        """Return the newest order (open or closed) with this client order id, or None.

        An order still queued in the engine (delayed acceptance) is not found: nothing shows it
        until it is accepted.
        """
        now = self._enter("fetch_order")
        with self._lock:
            self._settle(now)
            placed = self._newest.get(client_order_id)
            self._record(now, "fetch_order", "ok")
            return None if placed is None else placed.view()

    def submit_cancel(self, order: Order) -> Order | None:
        """Cancel the newest order with this client order id; a final one is returned as is."""
        now = self._enter("submit_cancel")
        with self._lock:
            self._settle(now)
            placed = self._newest.get(order.client_order_id)
            if placed is None:
                self._record(now, "submit_cancel", "unknown")
                return None
            if not placed.status.is_final:
                placed.status, placed.shown = OrderStatus.CANCELED, None
                self._live = [p for p in self._live if p is not placed]
            self._record(now, "submit_cancel", "ok")
            return placed.view()

    def submit_cancel_all_after(self, seconds: float) -> float | None:
        """Cancel every open order in `seconds` unless armed again (0 disarms), as Kraken."""
        now = self._enter("submit_cancel_all_after")
        with self._lock:
            self._settle(now)
            self._switch_at = now + seconds if seconds else None
            self._record(now, "submit_cancel_all_after", "ok")
            return None if self._switch_at is None else self._wall(self._switch_at)

    def fetch_open_orders(self) -> Sequence[Order]:
        """Return every order not final yet (resting limit orders, unsettled market orders)."""
        now = self._enter("fetch_open_orders")
        with self._lock:
            self._settle(now)
            self._record(now, "fetch_open_orders", "ok")
            return [placed.view() for placed in self._live]

    def fetch_fills(self, since: float) -> Sequence[Fill]:
        """Return the executions since `since` (epoch seconds), oldest first: the trade history.

        It holds the fills of this broker's orders and the sales made "by hand"
        (:meth:`sell_by_hand`); it is never faked by the plan's empty reads.
        """
        now = self._enter("fetch_fills")
        with self._lock:
            self._settle(now)
            self._record(now, "fetch_fills", "ok")
            return [fill for fill in self._fills if fill.timestamp >= since]

    def ping(self) -> object:
        """Return the broker's time (a cheap read-only call, used as the breaker probe)."""
        now = self._enter("ping")
        with self._lock:
            self._record(now, "ping", "ok")
        return self.clock.time()

    # ------------------------------------------------------------------ test and demo controls

    def set_fault_plan(self, plan: FaultPlan) -> None:
        """Replace the fault plan (a scenario's next phase)."""
        with self._lock:
            self.fault_plan = plan

    def set_price(self, symbol: str, price: object) -> None:
        """Move a symbol's price by hand (valid prices only: bad ones go in the fault plan)."""
        self.market.set_price(symbol, price)

    def sell_by_hand(self, symbol: str, quantity: object | None = None) -> None:
        """Sell a holding outside brokerguard (its owner on the venue's website, say).

        The trade history shows the sale, as a venue's would; no order of ours explains it.
        Sells everything when `quantity` is None.
        """
        symbol = parse_symbol(symbol)
        with self._lock:
            now = self.clock.monotonic()
            self._settle(now)
            held = self._positions.get(symbol, Decimal(0))
            amount = held if quantity is None else parse_decimal(quantity, field="quantity")
            if not 0 < amount <= held:
                raise ConfigurationError(f"cannot sell {amount} {symbol} by hand: {held} held")
            self._positions[symbol] = held - amount
            if self._positions[symbol] == 0:
                del self._positions[symbol]
            self._answered = None
            self._fills.append(
                Fill(symbol, Side.SELL, amount, self._wall(now), f"HAND-{len(self._fills) + 1}")
            )
            self._history.append((now, dict(self._positions)))

    def _wall(self, monotonic: float) -> float:
        """The wall time of a monotonic instant (the venue's clock, for the trade history)."""
        return self.clock.time() - (self.clock.monotonic() - monotonic)

    def true_positions(self) -> dict[str, Decimal]:
        """Return the broker's real positions, bypassing faults (for tests and invariants)."""
        with self._lock:
            self._settle(self.clock.monotonic())
            return dict(self._positions)

    def all_orders(self) -> list[Order]:
        """Return every order accepted and not yet forgotten, in acceptance order (no faults).

        Open orders are always here; final ones for ``history_s`` after they ended.

        One client order id may appear several times: an id whose order was final was accepted
        again (how a blind resend executes twice).
        """
        with self._lock:
            self._settle(self.clock.monotonic())
            return [placed.view() for placed in self._orders]

    def queued_orders(self) -> list[OrderRequest]:
        """Return the orders received but not accepted yet (delayed acceptance), oldest first."""
        with self._lock:
            self._settle(self.clock.monotonic())
            return [queued.request for queued in self._queue]

    def dropped_orders(self) -> list[tuple[OrderRequest, str]]:
        """Return the queued orders the engine never accepted, with why (deadline ...)."""
        with self._lock:
            self._settle(self.clock.monotonic())
            return [(request, reason) for _, request, reason in self._dropped]

    @property
    def calls(self) -> list[RecordedCall]:
        """The raw calls that reached this broker, in order (the newest `recorded_calls`)."""
        with self._lock:
            return list(self._calls)

    def calls_between(self, start: float, end: float) -> list[RecordedCall]:
        """Return the recorded calls with ``start <= at < end``."""
        with self._lock:
            return [call for call in self._calls if start <= call.at < end]

    # ------------------------------------------------------------------ internals

    def _enter(self, method: str) -> float:
        """Apply latency and the plan's refusals for one call; return the time it lands."""
        latency = self.fault_plan.latency.get(method, 0.0)
        if latency:
            self.clock.sleep(latency)
        return self._land(method)

    async def _aenter(self, method: str) -> float:
        """:meth:`_enter` for an async read: the latency awaited on the clock."""
        latency = self.fault_plan.latency.get(method, 0.0)
        if latency:
            await self.clock.asleep(latency)
        return self._land(method)

    def _land(self, method: str) -> float:
        """The call arrives: the plan's refusals for it; return the time it lands."""
        now = self.clock.monotonic()
        with self._lock:
            plan = self.fault_plan
            if any(window.covers(method, now) for window in plan.outages):
                self._record(now, method, "outage")
                raise TransientBrokerError("paper: 503 service unavailable (outage)")
            if self._roll(plan.rate_limit_rate):
                self._record(now, method, "rate_limited")
                raise RateLimitedError(
                    "paper: rate limit exceeded", retry_after=plan.rate_limit_retry_after
                )
            if self._roll(plan.error_rate.get(method, 0.0)):
                self._record(now, method, "error")
                raise TransientBrokerError(f"paper: {method} timed out")
        return now

    def _roll(self, probability: float) -> bool:
        # No draw for a fault that is off: switching a new fault on never changes the dice of
        # the others, and plans without it replay exactly as before it existed.
        if not probability:
            return False
        return self._dice().random() < probability

    def _dice(self) -> random.Random:
        if self._fault_dice is None:
            self._fault_dice = random.Random(f"{self._seed}:faults")  # noqa: S311 (a simulation)
        return self._fault_dice

    def _record(self, now: float, method: str, outcome: str) -> None:
        self._calls.append(RecordedCall(now, method, outcome))

    def _open_order(self, client_order_id: str) -> _PaperOrder | None:
        """The open (not final) order with this client order id, if any (caller holds the lock).

        An id is accepted only while no open order carries it, so only its newest order can be
        open.
        """
        placed = self._newest.get(client_order_id)
        return None if placed is None or placed.status.is_final else placed

    def _refusal(self, order: OrderRequest) -> str | None:
        """Why the engine refuses `order` now, or None.

        A sell of more than is held, or a post-only order that would take liquidity.
        """
        if order.side is Side.SELL and order.quantity > self._sellable(order.symbol):
            return (
                f"insufficient position: selling {order.quantity} {order.symbol}, "
                f"holding {self._sellable(order.symbol)} not already being sold"
            )
        if order.reduce_only and order.side is Side.BUY:
            return "reduce only: no short position to reduce (spot)"  # as Kraken refuses it
        if order.post_only and self._marketable(order, self.clock.monotonic()):
            return f"post only order would take liquidity: {order.side.value} {order.symbol}"
        return None

    def _marketable(self, order: OrderRequest, now: float) -> bool:
        """Whether `order` would trade at the price of `now` (market orders always do)."""
        if order.order_type is OrderType.MARKET or order.price is None:
            return True
        price = self.market.quotes([order.symbol], now).get(order.symbol)
        if price is None:
            return False
        return price <= order.price if order.side is Side.BUY else price >= order.price

    def _accept(self, order: OrderRequest, at: float) -> _PaperOrder:
        """Put `order` in the book at `at` (monotonic); it settles from then on."""
        placed = _PaperOrder(order, f"P-{self._next_order_number}", at)
        self._next_order_number += 1
        self._orders.append(placed)
        self._newest[order.client_order_id] = placed
        self._live.append(placed)
        self._fill(at)
        return placed

    def _sellable(self, symbol: str) -> Decimal:
        pending = sum(
            (
                p.request.quantity - p.filled
                for p in self._live
                if p.request.symbol == symbol and p.request.side is Side.SELL
            ),
            Decimal(0),
        )
        return self._positions.get(symbol, Decimal(0)) - pending

    def _settle(self, now: float) -> None:
        """Bring the book up to `now`: accept the queued orders that are due, in order, and fill.

        Fills are applied up to each acceptance first, so a queued sell is judged against the
        position as it was when the engine reached it.
        """
        while self._queue:
            first = min(self._queue, key=lambda queued: queued.due)
            if first.due > now:
                break
            self._queue.remove(first)
            self._fill(first.due)
            self._accept_queued(first)
        if self._switch_at is not None and now >= self._switch_at:
            self._fill(self._switch_at)  # what filled before the switch fired stays filled
            for placed in self._live:
                placed.status, placed.shown = OrderStatus.CANCELED, None
            self._live = []
            self._switch_at = None
            self.switch_fired += 1
        self._fill(now)
        if self.history_s is not None and now >= self._prune_at:
            self._prune(now, self.history_s)

    def _prune(self, now: float, keep: float) -> None:
        """Forget what ended more than `keep` seconds ago (caller holds the lock).

        Runs at most every ``keep / 8`` seconds, so its cost (one walk of the book) is spread
        over thousands of calls. An order's age counts from the first prune that saw it final,
        so a final order is forgotten between `keep` and ``1.125 * keep`` seconds after it
        ended, never sooner; open orders and queued requests are never forgotten.
        """
        self._prune_at = now + keep / 8
        horizon = now - keep
        kept: list[_PaperOrder] = []
        for placed in self._orders:
            if placed.status.is_final:
                if placed.final_seen is None:
                    placed.final_seen = now
                elif placed.final_seen <= horizon:
                    cid = placed.request.client_order_id
                    if self._newest.get(cid) is placed:
                        del self._newest[cid]
                    continue
            kept.append(placed)
        self._orders = kept
        wall_horizon = self._wall(horizon)
        while self._fills and self._fills[0].timestamp < wall_horizon:
            self._fills.popleft()
        while self._dropped and self._dropped[0][0] < horizon:
            self._dropped.popleft()
        while self._calls and self._calls[0].at < horizon:
            self._calls.popleft()
        # Keep the newest snapshot from before the horizon: the state as it was at the horizon.
        older = sum(1 for at, _ in self._history if at <= horizon)
        if older > 1:
            del self._history[: older - 1]

    def _accept_queued(self, queued: _QueuedOrder) -> None:
        """The engine reaches a queued order: accept it, or drop it as Kraken would."""
        request = queued.request
        reason: str | None = None
        if request.deadline is not None and queued.due_epoch > request.deadline:
            reason = "deadline elapsed"  # Kraken's AddOrder deadline: never accepted
        elif self._open_order(request.client_order_id) is not None:
            reason = "duplicate order"  # an open order took the id meanwhile
        else:
            reason = self._refusal(request)
        if reason is not None:
            self._dropped.append((queued.due, request, reason))
            return
        self._accept(request, queued.due)

    def _fill(self, now: float) -> None:  # noqa: C901 (one rule per order kind)
        changed = False
        for placed in self._live:
            request = placed.request
            if request.expire_at is not None and self._wall(now) >= request.expire_at:
                placed.status, placed.shown, changed = OrderStatus.CANCELED, None, True
                continue  # GTD: expired (what filled stays filled)
            if not self._marketable(request, now):
                if request.tif in {TimeInForce.IOC, TimeInForce.FOK}:
                    placed.status, placed.shown, changed = OrderStatus.CANCELED, None, True
                continue  # a limit order rests until the price reaches it
            if request.side is Side.SELL and self.fault_plan.sell_never_settles(request.symbol):
                continue
            due = placed.submitted_at + self.settle_delay
            if now < due:
                continue
            target = request.quantity
            if self.partial_fills and now < due + self.settle_delay:
                target = (request.quantity / 2).quantize(Decimal("1e-8"))
            fill = target - placed.filled
            if fill <= 0:
                continue
            sign = 1 if request.side is Side.BUY else -1
            held = self._positions.get(request.symbol, Decimal(0)) + sign * fill
            if held > 0:
                self._positions[request.symbol] = held
            else:
                self._positions.pop(request.symbol, None)
            self._answered = None
            self._fills.append(
                Fill(request.symbol, request.side, fill, self._wall(now), placed.broker_order_id)
            )
            placed.filled = target
            placed.status = (
                OrderStatus.FILLED if target == request.quantity else OrderStatus.PARTIALLY_FILLED
            )
            placed.shown = None
            changed = True
        if changed:
            self._live = [placed for placed in self._live if not placed.status.is_final]
            self._history.append((now, dict(self._positions)))
            del self._history[: -HISTORY_BOUNDS["position_snapshots"]]

    def _state_at(self, when: float) -> dict[str, Decimal]:
        state = self._history[0][1]
        for at, snapshot in self._history:
            if at > when:
                break
            state = snapshot
        return dict(state)

    def __repr__(self) -> str:
        return (
            f"PaperBroker({self.broker_name!r}, account_id={self.account_id!r}, "
            f"positions={len(self._positions)}, orders={len(self._orders)})"
        )


def _check_methods(methods: Iterable[str]) -> Iterable[str]:
    unknown = set(methods) - set(RAW_METHODS)
    if unknown:
        raise ConfigurationError(f"unknown raw methods {sorted(unknown)}; known: {RAW_METHODS}")
    return methods


def _delay_problems(delay: object) -> list[str]:
    """What is wrong with an ``accept_delay`` (a number, or a (min, max) range of seconds)."""
    values = delay if isinstance(delay, tuple) else (delay,)
    if isinstance(delay, tuple) and len(delay) != 2:  # noqa: PLR2004 (a (min, max) pair)
        return [f"accept_delay must be seconds or a (min, max) pair, got {delay!r}"]
    if not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in values
    ):
        return [f"accept_delay must be >= 0 seconds, got {delay!r}"]
    if values[0] > values[-1]:
        return [f"accept_delay range must be (min, max) with min <= max, got {delay!r}"]
    return []


def _check_probability(name: str, value: Any, problems: list[str]) -> None:
    if not (isinstance(value, int | float) and 0 <= value <= 1):
        problems.append(f"{name} must be a probability in [0, 1], got {value!r}")
