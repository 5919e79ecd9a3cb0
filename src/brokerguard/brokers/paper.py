"""An in-memory exchange for demos, tests and simulations, with a plan of what goes wrong.

:class:`PaperBroker` is deterministic from a seed and a clock: prices follow a seeded random
walk, market orders settle after a delay (optionally in two partial fills), and a
:class:`FaultPlan` injects the failures real brokers produce — errors per method, outage
windows, latency, missing/zero/NaN prices, stale position snapshots, sells that never settle,
rate limiting with ``retry_after``, and orders that are accepted but whose confirmation is lost.
On a :class:`~brokerguard.testing.FakeClock` nothing really sleeps, so hours of trading run in
seconds and a seed replays exactly.

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
from typing import Any, Final

from brokerguard.brokers.base import BaseBroker
from brokerguard.clock import Clock
from brokerguard.errors import (
    BrokerRejection,
    ConfigurationError,
    RateLimitedError,
    TransientBrokerError,
)
from brokerguard.models import (
    Order,
    OrderRequest,
    OrderStatus,
    Position,
    Side,
    parse_decimal,
    parse_price,
    parse_symbol,
)
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.ratelimit import RateLimiter

__all__ = [
    "MISSING",
    "RAW_METHODS",
    "FaultPlan",
    "OutageWindow",
    "PaperBroker",
    "PaperMarket",
    "RecordedCall",
]

RAW_METHODS: Final = ("fetch_positions", "fetch_prices", "submit_order", "fetch_order", "ping")
"""The calls a fault plan can target."""


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
        for name in ("stale_positions_rate", "rate_limit_rate", "fail_after_accept_rate"):
            _check_probability(name, getattr(self, name), problems)
        for name in ("stale_positions_age", "rate_limit_retry_after"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be >= 0 seconds, got {value!r}")
        if problems:
            raise ConfigurationError("invalid FaultPlan: " + "; ".join(problems))

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

    def view(self) -> Order:
        r = self.request
        return Order(
            r.client_order_id, r.symbol, r.side, r.quantity, self.filled, self.status,
            self.broker_order_id,
        )  # fmt: skip


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
        for symbol, quantity in (positions or {}).items():
            qty = parse_decimal(quantity, field="quantity", symbol=symbol)
            if qty > 0:
                self._positions[parse_symbol(symbol)] = qty
        self._orders: dict[str, _PaperOrder] = {}
        self._next_order_number = 1
        now = self.clock.monotonic()
        self._history: list[tuple[float, dict[str, Decimal]]] = [(now, dict(self._positions))]
        self._calls: deque[RecordedCall] = deque(maxlen=recorded_calls)

    # ------------------------------------------------------------------ the four raw methods

    def fetch_positions(self) -> Sequence[Position]:
        """Return the positions (or, under the plan, an older snapshot of them)."""
        now = self._enter("fetch_positions")
        with self._lock:
            self._settle(now)
            plan = self.fault_plan
            if self._roll(plan.stale_positions_rate):
                state = self._state_at(now - plan.stale_positions_age)
                self._record(now, "fetch_positions", "stale")
            else:
                state = dict(self._positions)
                self._record(now, "fetch_positions", "ok")
        return [Position(symbol, qty) for symbol, qty in sorted(state.items())]

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        """Return the current walk price of each known symbol, with the plan's bad values."""
        now = self._enter("fetch_prices")
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
        """Accept a market order; it fills after `settle_delay` (sells may never, per plan)."""
        now = self._enter("submit_order")
        with self._lock:
            self._settle(now)
            if order.client_order_id in self._orders:
                # Like a real exchange refusing a duplicate open cl_ord_id.
                self._record(now, "submit_order", "duplicate")
                raise BrokerRejection(f"duplicate client order id {order.client_order_id}")
            if order.deadline is not None and self.clock.time() > order.deadline:
                self._record(now, "submit_order", "rejected")
                raise BrokerRejection(f"deadline elapsed for {order.client_order_id}")
            if order.symbol not in self.market:
                self._record(now, "submit_order", "rejected")
                raise BrokerRejection(f"unknown symbol {order.symbol}")
            if order.side is Side.SELL and order.quantity > self._sellable(order.symbol):
                self._record(now, "submit_order", "rejected")
                raise BrokerRejection(
                    f"insufficient position: selling {order.quantity} {order.symbol}, "
                    f"holding {self._sellable(order.symbol)} not already being sold"
                )
            placed = _PaperOrder(order, f"P-{self._next_order_number}", now)
            self._next_order_number += 1
            self._orders[order.client_order_id] = placed
            self._settle(now)
            lost = self._roll(self.fault_plan.fail_after_accept_rate)
            self._record(now, "submit_order", "accepted_then_lost" if lost else "ok")
            view = placed.view()
        if lost:
            raise TransientBrokerError("paper: order accepted but the confirmation was lost")
        return view

    def fetch_order(self, client_order_id: str) -> Order | None:
        """Return the order (open or closed) with this client order id, or None."""
        now = self._enter("fetch_order")
        with self._lock:
            self._settle(now)
            placed = self._orders.get(client_order_id)
            self._record(now, "fetch_order", "ok")
            return None if placed is None else placed.view()

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

    def true_positions(self) -> dict[str, Decimal]:
        """Return the broker's real positions, bypassing faults (for tests and invariants)."""
        with self._lock:
            self._settle(self.clock.monotonic())
            return dict(self._positions)

    def all_orders(self) -> list[Order]:
        """Return every order ever accepted, in submission order (bypassing faults)."""
        with self._lock:
            self._settle(self.clock.monotonic())
            return [placed.view() for placed in self._orders.values()]

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
        if not probability:
            return False
        if self._fault_dice is None:
            self._fault_dice = random.Random(f"{self._seed}:faults")  # noqa: S311 (a simulation)
        return self._fault_dice.random() < probability

    def _record(self, now: float, method: str, outcome: str) -> None:
        self._calls.append(RecordedCall(now, method, outcome))

    def _sellable(self, symbol: str) -> Decimal:
        pending = sum(
            (
                p.request.quantity - p.filled
                for p in self._orders.values()
                if p.request.symbol == symbol
                and p.request.side is Side.SELL
                and not p.status.is_final
            ),
            Decimal(0),
        )
        return self._positions.get(symbol, Decimal(0)) - pending

    def _settle(self, now: float) -> None:
        changed = False
        for placed in self._orders.values():
            if placed.status.is_final:
                continue
            request = placed.request
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
            placed.filled = target
            placed.status = (
                OrderStatus.FILLED if target == request.quantity else OrderStatus.PARTIALLY_FILLED
            )
            changed = True
        if changed:
            self._history.append((now, dict(self._positions)))
            del self._history[:-1000]  # bounded: enough for any stale_positions_age

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


def _check_probability(name: str, value: Any, problems: list[str]) -> None:
    if not (isinstance(value, int | float) and 0 <= value <= 1):
        problems.append(f"{name} must be a probability in [0, 1], got {value!r}")
