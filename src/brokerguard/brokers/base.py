"""The broker boundary: four raw methods in, guarded and validated calls out.

An adapter (paper, ccxt, your own) implements four raw methods and nothing else: no retries,
no breaker, no validation. :class:`BaseBroker` wraps them:

- every read goes through the broker's shared ``"read"`` breaker, with retries and backoff;
- every write goes through the shared ``"write"`` breaker, **once**: a write that failed in a
  way that may have reached the broker is looked up by its client order id, and resent only
  when the broker proves it absent;
- when a breaker's recovery time has come, the broker is probed with the adapter's cheap
  read-only ``ping()`` (or a position fetch) before any real call: an order is never the probe;
- every payload is validated; a payload that cannot be parsed at all counts once as a breaker
  failure, while a single bad price inside a good payload only makes that price unusable
  (``None``, logged CRITICAL, counted in the data-quality counters) and never becomes a number.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from brokerguard._validation import seconds_problem
from brokerguard.brokers.plausibility import PlausibilityPolicy, PositionPlausibility, Suspicion
from brokerguard.brokers.prices import Received, SharedPrices
from brokerguard.clock import SYSTEM_CLOCK, Clock, SystemClock
from brokerguard.errors import (
    BlockedError,
    BrokerGuardError,
    BrokerRejection,
    CircuitOpenError,
    ConfigurationError,
    DuplicateOrderError,
    FatalBrokerError,
    InvalidBrokerData,
    OrderUnconfirmedError,
    PositionsImplausibleError,
    RateLimitedError,
    TransientBrokerError,
)
from brokerguard.logs import log_context
from brokerguard.models import (
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    PriceProblem,
    Quote,
    Side,
    TimeInForce,
    canonical_symbols,
    parse_decimal,
    parse_price,
    parse_side,
    parse_symbol,
)
from brokerguard.orders import (
    ABSENT_LOOKUP_SPAN_S,
    ABSENT_LOOKUPS_REQUIRED,
    NO_ABSENCES,
    Absences,
    Evidence,
    OrderState,
    next_state,
    weigh_lookup,
)
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.classify import CALLING_KEY
from brokerguard.resilience.ratelimit import RateLimiter
from brokerguard.resilience.registry import get_circuit_breaker
from brokerguard.resilience.retry import RetryPolicy
from brokerguard.resilience.state import BrokerHealthState, CircuitState

__all__ = [
    "BaseBroker",
    "OrderMinimums",
    "OrderUnconfirmedError",
    "PositionSnapshot",
    "PriceCheck",
    "UnresolvedOrder",
]

log = logging.getLogger("brokerguard.broker")

T = TypeVar("T")

_HEALTH_RANK = {
    BrokerHealthState.HEALTHY: 0,
    BrokerHealthState.DEGRADED: 1,
    BrokerHealthState.OFFLINE: 2,
}
CallObserver = Callable[[str, str, str, float, str], object]
"""Called as ``observer(broker, scope, method, seconds, outcome)`` after each guarded call;
outcome is ``success``, ``error``, ``refused`` (a business rejection) or ``rejected`` (an open
circuit: nothing was sent)."""

_REMEMBERED_ORDER_IDS = 100_000
"""Final orders' client order ids remembered at most, so a caller's retry is looked up first.

Only ids of final orders (filled, canceled, rejected, not placed, vanished) are ever forgotten:
an id whose outcome is unknown, or whose order is (or may be) open, is kept whatever the count.
"""

FINAL_ORDER_MEMORY_S = 3600.0
"""Seconds a final order's client order id is remembered after it was first seen final.

A caller's retry of that id within this time is answered from memory (never resent); after it,
the id counts as new. An hour is far beyond any retry loop (seconds) and than the venue's own
duplicate protection (Kraken refuses an id only while its order is open). Memory is bounded
by the orders that end in an hour, and at most :data:`_REMEMBERED_ORDER_IDS`.
"""

_FORGETTABLE = frozenset(
    {
        OrderState.FILLED,
        OrderState.CANCELED,
        OrderState.REJECTED,
        OrderState.NOT_PLACED,
        OrderState.VANISHED,
    }
)
"""The states whose ids may be forgotten: the order's outcome is known and final."""

_KEPT_UNRESOLVED = frozenset(
    {OrderState.INTENT, OrderState.SENT, OrderState.UNRESOLVED, OrderState.EXISTS}
)
"""Kept states whose outcome is unknown: a process that died while sending leaves ``sent``."""


KEPT_REFRESH_S = 1.0
"""Seconds a gate's view of the orders other processes keep for its account may be old: an
unresolved entry another process kept is refused here within this bound (an order this process
sends reads them first, at once)."""


def _new_token() -> str:
    """A fresh claim token for a kept order's row (random: two claims never share one)."""
    return uuid.uuid4().hex


LOCAL_DEADLINE_FLOOR_S = 60.0
"""Where a venue does not enforce an order deadline, absence proves nothing before this many
seconds after the send: a queued request is not known to be dead any sooner."""

_RECENT_SENDS = 8
"""Sends remembered per symbol and side, for the gate's question "did this entry send?"."""

_ABSENCE_MEMORY = 10_000
"""Orders whose unconfirmed absences (one lookup after the deadline found nothing) are kept at
most, oldest dropped first: a dropped one only needs its lookups again, never concludes sooner."""

_SELL_EXPLAINS_S = 600.0
"""A sell we sent explains a position's disappearance for this long (monotonic seconds)."""
_SALE_SKEW_S = 2.0
"""Seconds after a read's end within which a sale in the trade history may be in the read."""
_RECENT_FILLS = 10_000
"""Orders whose fills (when, and what a final buy bought) are remembered at most, oldest first."""
_ZERO = Decimal(0)  # (a Decimal compares with a Decimal twice as fast as with an int)


@dataclass(frozen=True, slots=True)
class PositionSnapshot:
    """The positions of an account as last fetched successfully, and when (monotonic seconds).

    ``fetched_at`` is when the fetch started, so the content is at least that recent.
    """

    positions: tuple[Position, ...]
    fetched_at: float

    @property
    def count(self) -> int:
        """Number of open positions."""
        return len(self.positions)

    def age(self, now: float) -> float:
        """Seconds since the snapshot was fetched."""
        return max(0.0, now - self.fetched_at)


@dataclass(frozen=True, slots=True)
class PriceCheck:
    """The outcome of one batched price fetch: usable quotes, and why the others are not."""

    quotes: Mapping[str, Quote]
    problems: Mapping[str, PriceProblem] = field(default_factory=dict)

    def price(self, symbol: str) -> Decimal | None:
        """Return the usable price of `symbol`, or None (never a substitute)."""
        quote = self.quotes.get(symbol)
        return None if quote is None else quote.price


@dataclass(frozen=True, slots=True)
class OrderMinimums:
    """The smallest order a venue takes for a symbol (quantity and value; None: no minimum)."""

    quantity: Decimal | None = None
    value: Decimal | None = None
    """In the quote currency."""


@dataclass(frozen=True, slots=True)
class UnresolvedOrder:
    """An order whose outcome is unknown: nothing is resent for it until it is resolved.

    ``absent_after`` (epoch seconds) is when a lookup that finds nothing proves it was not
    placed: its deadline plus the broker's margin; None when only finding it resolves it (the
    venue said it exists).
    """

    request: OrderRequest
    state: OrderState
    since: float
    absent_after: float | None
    reason: str

    @property
    def client_order_id(self) -> str:
        """The order's client order id."""
        return self.request.client_order_id

    @property
    def symbol(self) -> str:
        """The order's symbol."""
        return self.request.symbol

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view for status pages."""
        return {
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "side": self.request.side.value,
            "quantity": str(self.request.quantity),
            "state": self.state.value,
            "since": self.since,
            "absent_after": self.absent_after,
            "reason": self.reason,
        }


class HoldingsStore(Protocol):
    """Where a broker keeps its believed holdings across restarts (the state store)."""

    def save_holdings(
        self, account_id: str, holdings: Mapping[str, Decimal], seen_at: float
    ) -> None:
        """Replace the account's believed holdings."""

    def holdings(self, account_id: str) -> tuple[dict[str, Decimal], float] | None:
        """Return the account's last believed holdings and when they were read."""


class KeptOrder(Protocol):
    """A sent order as a :class:`SentOrderStore` gives it back."""

    @property
    def request(self) -> OrderRequest: ...

    @property
    def state(self) -> str: ...

    @property
    def absent_after(self) -> float | None: ...

    @property
    def sent_at(self) -> float: ...

    @property
    def token(self) -> str: ...


class SentOrderStore(Protocol):
    """Where a broker keeps the orders it sent across restarts and broker objects (the store).

    :meth:`claim_sent_order` is atomic across processes: of two broker objects sending one
    client order id, one gets it and the other the row that holds it.
    """

    def claim_sent_order(
        self,
        account_id: str,
        request: OrderRequest,
        *,
        token: str,
        state: str = "sent",
        absent_after: float | None = None,
    ) -> KeptOrder | None:
        """Keep `request` as sent under `token`: None when kept, else the order holding its id."""

    def save_sent_order(
        self,
        account_id: str,
        request: OrderRequest,
        state: str,
        *,
        token: str,
        absent_after: float | None = None,
    ) -> bool:
        """Record `request` in `state` on the row `token` holds (False: no such row)."""

    def settle_sent_order(
        self,
        account_id: str,
        client_order_id: str,
        state: str,
        *,
        token: str,
        proven_after: float | None = None,
    ) -> bool:
        """Record the fate of the row `token` holds (a never-placed one is forgotten).

        `proven_after`: proven absent by lookups after it; a row resent since is kept.
        """

    def sent_orders(self, account_id: str) -> Sequence[KeptOrder]:
        """Every order kept for `account_id`."""

    def unsettled_sent_orders(self, account_id: str) -> Sequence[KeptOrder]:
        """The kept orders of `account_id` that may still execute."""


class BaseBroker(abc.ABC):
    """Base class of every broker adapter; subclasses implement the four raw methods.

    Args:
        broker_name: the broker (``"kraken"``, ``"paper"``); breakers are shared by name.
        account_type: ``"master"`` or a sub-account kind; part of the derived account id.
        user_id: the account's owner, when one broker connection serves several users.
        account_id: a stable id for the account; derived from the three above when omitted.
            Halts and audit records are keyed by it.
        clock: the time source (default: the system clock).
        read_breaker: the breaker for reads (default: the registry's ``(broker_name, "read")``).
        write_breaker: the breaker for writes (default: the registry's
            ``(broker_name, "write")``).
        client_order_id_factory: makes client order ids (default: a random UUID).
        rate_limiter: a budget of raw calls shared with the other accounts on this broker;
            every raw call (probes included) waits for its slot.
        order_deadline_s: seconds after the send when the venue must stop accepting an order
            (sent as the order's deadline where the venue enforces one, see
            :attr:`enforces_order_deadline`; otherwise absence proves nothing before
            :data:`LOCAL_DEADLINE_FLOOR_S`).
        resolution_margin_s: seconds added to a deadline before absence counts as evidence
            (clock skew between us and the venue, and the venue's own processing).
        plausibility: when a successful position read that lost positions is believed.
    """

    call_weights: Mapping[str, float] = MappingProxyType({})
    """Tokens each raw call takes from the rate limiter, by SPI method name (1 if absent):
    venues price endpoints differently (Kraken's trade history costs 2 on its REST counter)."""

    api_key_name: str | None = None
    """The API key this broker calls with, by a name that is not the key (the service's broker
    entry). Set, a venue's breaker shared by several keys can tell one key's rate limit from
    the venue's (:class:`~brokerguard.resilience.classify.VenueClassifier`)."""

    enforces_order_deadline: bool = False
    """Whether the venue rejects an order it would accept after ``OrderRequest.deadline``.
    Adapters that pass the deadline to such a venue (Kraken's AddOrder ``deadline``) say so."""

    def __init__(
        self,
        broker_name: str,
        account_type: str = "master",
        user_id: str | None = None,
        *,
        account_id: str | None = None,
        clock: Clock | None = None,
        read_breaker: BrokerCircuitBreaker | None = None,
        write_breaker: BrokerCircuitBreaker | None = None,
        client_order_id_factory: Callable[[], str] | None = None,
        rate_limiter: RateLimiter | None = None,
        order_deadline_s: float = 10.0,
        resolution_margin_s: float = 5.0,
        plausibility: PlausibilityPolicy | None = None,
    ) -> None:
        self.broker_name = parse_symbol(broker_name, field="broker_name")
        problems = [
            *seconds_problem("order_deadline_s", order_deadline_s, allow_zero=False),
            *seconds_problem("resolution_margin_s", resolution_margin_s),
        ]
        if problems:
            raise ConfigurationError(f"invalid broker {broker_name!r}: " + "; ".join(problems))
        self.order_deadline_s = float(order_deadline_s)
        self.resolution_margin_s = float(resolution_margin_s)
        self.account_type = account_type
        self.user_id = user_id
        self.account_id = account_id or ":".join(
            part for part in (self.broker_name, account_type, user_id) if part
        )
        # BaseBroker's own state lives under "_bg_" so that an adapter's natural names
        # (_lock, _clock, _positions ...) can never overwrite it.
        self._bg_clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        shared: dict[str, Any] = {} if clock is None else {"clock": clock}
        self._bg_read = read_breaker or get_circuit_breaker(broker_name, "read", **shared)
        self._bg_write = write_breaker or get_circuit_breaker(broker_name, "write", **shared)
        self._bg_new_cid = client_order_id_factory or _uuid_client_order_id
        self._bg_lock = threading.Lock()
        self._bg_data_quality: Counter[str] = Counter()
        # Every client order id this process sent, with the state its order is known to be in.
        self._bg_sent: OrderedDict[str, OrderState] = OrderedDict()
        self._bg_final_seen: dict[str, float] = {}  # cid -> when a sweep first saw it final
        self._bg_sweep_at = self._bg_clock.monotonic() + FINAL_ORDER_MEMORY_S / 8
        self._bg_unresolved: dict[str, UnresolvedOrder] = {}
        # cid -> the lookups after its deadline that found nothing since it was last sent or
        # found (orders.Absences): one omission is not proof; bounded by _ABSENCE_MEMORY.
        self._bg_absences: OrderedDict[str, Absences] = OrderedDict()
        # symbol -> (monotonic time of our last sell of it whole, its client order id or None
        # for a journaled one): it explains the symbol's disappearance once it is filled.
        self._bg_sells: dict[str, tuple[float, str | None]] = {}
        self._bg_filled_at: dict[str, float] = {}  # sell cid -> monotonic time seen filled
        self._bg_final_fill: dict[str, Decimal] = {}  # buy cid -> what it filled, seen final
        # (symbol, side) -> the last few sends (monotonic time, client order id)
        self._bg_recent_sends: dict[tuple[str, Side], list[tuple[float, str]]] = {}
        self._bg_plausibility = PositionPlausibility(plausibility)
        # symbol -> quantity held by the last believed read, and the wall times that read
        # started and ended (a symbol known from the stored holdings only: its own): a sell in
        # the trade history must be newer than the read's end (one inside the read may be in
        # it already), and must account for the quantity. (One stamp for the read: a tuple
        # per symbol was most of what a pass left for the collector to walk.)
        self._bg_held: dict[str, Decimal] = {}
        self._bg_held_at: tuple[float, float] = (0.0, 0.0)
        self._bg_held_own_at: dict[str, tuple[float, float]] = {}
        self._bg_holdings_pending = False  # the stored holdings could not be read yet
        self._bg_saving = False  # a thread is writing believed holdings to the store
        self._bg_save_next: tuple[dict[str, Decimal], float] | None = None  # newest to write
        self._bg_saved_at = float("-inf")
        self._bg_accepted_losses: set[str] = set()  # confirmed gone by an operator
        # Symbols whose last price was unusable: logged once on entering, once on leaving.
        self._bg_unusable_prices: set[str] = set()
        self._bg_prices: SharedPrices | None = None  # the venue's shared answer (service)
        self._bg_live: dict[str, Order] = {}  # our orders last seen not final (resting ones)
        self._bg_listing: tuple[Order, ...] = ()  # the venue's last open-order listing
        self._bg_listed_at: float | None = None  # when it started (monotonic)
        self._bg_holdings_store: HoldingsStore | None = None
        self._bg_orders_store: SentOrderStore | None = None
        self._bg_orders_pending = False  # the kept orders could not be read yet
        self._bg_kept: dict[str, str] = {}  # cid -> the token of its row in the store
        self._bg_adopted: set[str] = set()  # ids known from the store only (another's sends)
        self._bg_kept_read_at = float("-inf")  # when the store's unsettled orders were read
        self._bg_saved_holdings: dict[str, Decimal] | None = None
        self._bg_last_positions: PositionSnapshot | None = None
        self._bg_observers: list[CallObserver] = []
        self._bg_limiter = rate_limiter
        self._bg_primed: _PrimedRead | None = None  # a pass's read made ahead (aprime_positions)

    # ------------------------------------------------------------------ the adapter's SPI

    @abc.abstractmethod
    def fetch_positions(self) -> Sequence[Position]:
        """Return the account's open positions (raw: no retries, no breaker)."""

    @abc.abstractmethod
    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        """Return raw prices for `symbols` in one call (numbers, strings, Quotes or garbage)."""

    @abc.abstractmethod
    def submit_order(self, order: OrderRequest) -> Order:
        """Send `order` to the broker, passing its client order id through."""

    @abc.abstractmethod
    def fetch_order(self, client_order_id: str) -> Order | None:
        """Return the order with this client order id, or None only if the broker proves it absent.

        Look among open **and recently closed** orders: an order that filled at once is no
        longer open, and answering None for it would get it sent twice.
        """

    def submit_cancel(self, order: Order) -> Order | None:
        """Ask the venue to cancel `order` (raw); return its state after, or None if unknown.

        Cancelling an order that is already final must not fail: answer its final state (or
        None, and the guarded broker looks it up). Override where the venue has limit orders.
        """
        raise NotImplementedError

    def fetch_open_orders(self) -> Sequence[Order]:
        """Return the account's open orders (raw); override where the venue has limit orders.

        An order placed without our client order id (by hand) gets the venue's id as its
        client order id.
        """
        raise NotImplementedError

    def submit_cancel_all_after(self, seconds: float) -> float | None:
        """Arm the venue's dead man's switch (raw); return its trigger time, or None.

        The venue cancels every open order in `seconds` unless armed again; 0 disarms.
        Override where the venue has one (Kraken ``CancelAllOrdersAfter``).
        """
        raise NotImplementedError

    def fetch_fills(self, since: float) -> Sequence[Fill]:
        """Return the account's executions since `since` (epoch seconds): its trade history.

        Override where the venue has one (ccxt's ``fetch_my_trades``): it is the evidence that
        lets a position read that lost a position be believed at once. Without it a loss not
        explained by a sell of ours waits for an operator.
        """
        raise NotImplementedError

    async def afetch_positions(self) -> Sequence[Position]:
        """Optional: :meth:`fetch_positions` without blocking a thread (on the running loop).

        An adapter that implements it (and :meth:`afetch_prices`) lets an enforcement pass
        make every account's reads in flight at once on one event loop (:meth:`aprime_positions`)
        instead of a thread per waiting account. The same payload rules apply.
        """
        raise NotImplementedError(f"{type(self).__name__} has no async reads")

    async def afetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        """Optional: :meth:`fetch_prices` on the running loop (as :meth:`afetch_positions`)."""
        raise NotImplementedError(f"{type(self).__name__} has no async reads")

    def ping(self) -> object:
        """Make a cheap read-only call (server time, say); override when the broker has one."""
        raise NotImplementedError

    def order_minimums(self, symbol: str) -> OrderMinimums | None:
        """Return the venue's minimum order for `symbol`, or None when it is not known.

        Override where the venue publishes them (ccxt markets' ``limits``): a position below
        them cannot be sold, and the cap enforcer must not pick it.
        """
        del symbol
        return None

    def is_dust(self, symbol: str, quantity: Decimal, price: Decimal | None = None) -> bool:
        """Return whether a holding is below the venue's minimum order (it cannot be sold).

        Unknown minimums are never dust; the value rule applies only with a usable price.
        """
        minimums = self.order_minimums(symbol)
        if minimums is None:
            return False
        if minimums.quantity is not None and quantity < minimums.quantity:
            return True
        return (
            minimums.value is not None and price is not None and quantity * price < minimums.value
        )

    @property
    def has_async_reads(self) -> bool:
        """Whether the adapter reads positions and prices on an event loop (``afetch_*``).

        Only when each async read is the twin of the sync read beside it: a subclass that
        overrides ``fetch_positions`` (to check, record or alter what it answers) and inherits
        an ``afetch_positions`` written for its parent has none, nor has an instance whose
        ``fetch_positions`` was replaced on the instance: nothing done to its reads is ever
        bypassed.
        """
        own = getattr(self, "__dict__", {})  # a read wrapped on the instance itself
        return (
            "fetch_positions" not in own
            and "fetch_prices" not in own
            and _async_twin(type(self), "fetch_positions")
            and _async_twin(type(self), "fetch_prices")
        )

    @property
    def has_ping(self) -> bool:
        """Whether the adapter provides :meth:`ping`."""
        return type(self).ping is not BaseBroker.ping

    @property
    def has_order_book(self) -> bool:
        """Whether the adapter lists open orders and cancels (limit orders can rest)."""
        return (
            type(self).fetch_open_orders is not BaseBroker.fetch_open_orders
            and type(self).submit_cancel is not BaseBroker.submit_cancel
        )

    @property
    def has_dead_man_switch(self) -> bool:
        """Whether the adapter provides :meth:`submit_cancel_all_after`."""
        return type(self).submit_cancel_all_after is not BaseBroker.submit_cancel_all_after

    def arm_dead_man_switch(self, seconds: float) -> float | None:
        """Arm (or, with 0, disarm) the venue's dead man's switch; return its trigger time.

        If brokerguard stops refreshing it (the process died, the network to the venue is
        gone), the venue cancels every open order when it fires: resting orders never outlive
        their guard by more than `seconds`. A write through the write breaker, never retried
        here: the next refresh is the retry.
        """
        if not self.has_dead_man_switch:
            raise BrokerRejection(f"broker {self.broker_name!r} has no dead man's switch")
        problems = seconds_problem("seconds", seconds)
        if problems:
            raise ConfigurationError("; ".join(problems))
        with self._observed("write", "arm_dead_man_switch"):
            self._probe_if_due(self._bg_write, real_call_is_probe=False)
            return self._bg_write.call(self._arm_checked, float(seconds))

    def _arm_checked(self, seconds: float) -> float | None:
        self._throttle("submit_cancel_all_after")
        trigger: object = self.submit_cancel_all_after(seconds)
        if trigger is None:
            return None
        return float(parse_decimal(trigger, field="trigger_time"))

    @property
    def has_trade_history(self) -> bool:
        """Whether the adapter provides :meth:`fetch_fills`."""
        return type(self).fetch_fills is not BaseBroker.fetch_fills

    # ------------------------------------------------------------------ guarded reads

    def get_positions(self) -> list[Position]:
        """Fetch and validate the open positions; raise rather than ever answer 'none' on failure.

        Zero-quantity entries are dropped (they are not exposure); a duplicated symbol or a
        non-position in the payload makes the whole payload invalid.
        """
        positions, started, wall_started, wall_ended = self._read_positions()
        if self._bg_holdings_pending:
            self._seed_from_store()  # raises while the last run's holdings stay unreadable
        snapshot = PositionSnapshot(tuple(positions), started)
        shown = [p.symbol for p in positions]
        with self._bg_lock:
            lost = self._bg_plausibility.unexplained(shown, self._explained_losses(started))
        if lost and self._look_up_own_sells(lost, started):
            with self._bg_lock:  # a sell of ours turned out filled: it explains its symbol
                lost = self._bg_plausibility.unexplained(shown, self._explained_losses(started))
        # Read the trade history outside the lock (it is a broker call), only when a read lost
        # positions that nothing explains yet.
        sold = self._sold_evidence(lost) if lost and self.has_trade_history else set()
        with self._bg_lock:
            last = self._bg_last_positions
            if last is not None and last.fetched_at > started:
                # A slower read that started earlier: a newer one was judged already, and it is
                # the better answer (this one may be thin and is not judged).
                return list(last.positions)
            verdict = self._bg_plausibility.observe(
                shown, started, explained=self._explained_losses(started) | sold
            )
            if verdict.believed:
                self._bg_last_positions = snapshot
                self._remember_held(positions, wall_started, wall_ended)
                self._forget_rebought(shown, started)
        if verdict.believed:
            self._persist_holdings(positions, wall_started)
        if sold & set(lost):
            log.warning(
                "account %s on broker %r: positions %s are gone and the trade history shows "
                "them sold; believing the read",
                self.account_id,
                self.broker_name,
                ", ".join(sorted(sold & set(lost))),
            )
        if verdict.confirmed_loss:
            log.warning(
                "account %s on broker %r: positions %s are gone and %d agreeing reads over %.0fs "
                "confirm it; believing the read",
                self.account_id,
                self.broker_name,
                ", ".join(verdict.confirmed_loss),
                self._bg_plausibility.policy.confirm_reads,
                self._bg_plausibility.policy.confirm_after_s,
            )
        suspicion = verdict.suspicion
        if not verdict.believed and suspicion is not None:
            raise self._implausible(suspicion)
        return list(positions)

    def _read_positions(self) -> tuple[list[Position], float, float, float]:
        """The raw read: (positions, monotonic start, wall start, wall end); raises on failure.

        The pass's read made ahead when one waits and the caller is the account's enforcement
        step (:func:`step_reads`): the gate, a bot or an operator asking meanwhile gets a read
        of its own, never one made up to a pass earlier. Otherwise a read now.
        """
        primed = None
        if _STEP_READS_AHEAD.get():  # only an enforcement step takes the read made for it
            with self._bg_lock:  # judged once
                primed, self._bg_primed = self._bg_primed, None
        if primed is None:
            # Stamped with the time the fetch *started*: its content is at least that new,
            # and a slower concurrent fetch that started earlier never replaces a newer one.
            started = self._bg_clock.monotonic()
            wall_started = self._bg_clock.time()
            with self._observed("read", "get_positions"):
                self._probe_if_due(self._bg_read, real_call_is_probe=True)
                try:
                    positions = self._bg_read.call_with_circuit_breaker(
                        self._fetch_positions_checked
                    )
                except BaseException:
                    with self._bg_lock:
                        self._bg_plausibility.interrupt()  # a gap: agreeing reads start again
                    raise
            wall_ended = self._bg_clock.time()
        else:
            # The pass read it ahead (aprime_positions): judged here exactly as a read made now
            # would be, with the times it was really made.
            started, wall_started, wall_ended = primed.started, primed.wall_started, primed.ended
            if primed.error is not None:
                with self._bg_lock:
                    self._bg_plausibility.interrupt()
                raise primed.error
            positions = primed.positions
        return positions, started, wall_started, wall_ended

    async def aprime_positions(self, *, answer_within_s: float | None = None) -> bool:
        """Read the positions now, on the running loop, for this account's next `get_positions`.

        An enforcement pass reads every account ahead, all in flight on one event loop, and
        then steps the accounts: the step's :meth:`get_positions` judges this read (the
        plausibility rule, the stored holdings, the snapshot stamped with the time the read
        *started*) as if it had just made it, and raises its error if it failed. The read goes
        through the same read breaker (with its retries, sleeping on ``clock.asleep``), rate
        limiter and payload checks as a synchronous one. Returns False, reading nothing, when
        the adapter has no async reads or the read breaker is not closed (a half-open probe
        and an open circuit stay the synchronous path's business). `answer_within_s` bounds each
        attempt's wait for the venue (after its rate-limit slot): an attempt that takes longer
        is abandoned as a transient failure, which the breaker counts.
        """
        breaker = self._bg_read
        if not self.has_async_reads or breaker.state is not CircuitState.CLOSED:
            return False
        clock = self._bg_clock
        started, wall_started = clock.monotonic(), clock.time()
        # The first attempt's rate-limit slot is waited for before the breaker is asked: a
        # circuit that opened meanwhile (hundreds of reads may be waiting) sends nothing.
        await self._athrottle("fetch_positions")
        if not _closed(breaker):
            return False  # the step reads: its breaker refuses it without a call
        error: BaseException | None = None
        positions: list[Position] = []
        attempt = _Attempts(self, "fetch_positions")
        try:
            with self._observed("read", "get_positions"):
                positions = await breaker.acall_with_circuit_breaker(
                    attempt.positions, answer_within_s
                )
        except Exception as exc:  # noqa: BLE001 (kept, and raised by get_positions)
            error = exc
        self._bg_primed = _PrimedRead(started, wall_started, clock.time(), positions, error)
        return True

    def discard_primed(self) -> None:
        """Forget a read made ahead that no step used (the pass ended without this account)."""
        self._bg_primed = None

    @property
    def primed(self) -> bool:
        """Whether a read made ahead waits for this account's next :meth:`get_positions`."""
        return self._bg_primed is not None

    @property
    def primed_count(self) -> int | None:
        """The positions the read made ahead showed (None: none waiting, or it failed)."""
        primed = self._bg_primed
        return None if primed is None or primed.error is not None else len(primed.positions)

    def primed_symbols(self) -> list[str]:
        """The symbols of the successful read made ahead (empty when there is none)."""
        primed = self._bg_primed
        if primed is None or primed.error is not None:
            return []
        return [p.symbol for p in primed.positions]

    @property
    def shared_prices(self) -> SharedPrices | None:
        """The venue's shared price answer this account reads (None: its own calls)."""
        return self._bg_prices

    async def aprime_prices(
        self,
        symbols: Sequence[str],
        *,
        answer_within_s: float | None = None,
        for_s: float = 0.0,
    ) -> bool:
        """Fetch the venue's shared prices for `symbols` on the running loop, through this key.

        The answer lands in the venue's :class:`SharedPrices` for every account of this pass
        (each still judges every value itself). Returns whether the board now holds an answer
        for all of `symbols`; a failure is not kept (each account then asks for itself, and
        fails closed on its own). Nothing is fetched while the board holds one still fresh
        `for_s` seconds from now.
        """
        board = self._bg_prices
        if board is None or not self.has_async_reads:
            return False
        if self._bg_read.state is not CircuitState.CLOSED:
            return False

        async def fetch(asked: list[str]) -> Mapping[str, object]:
            await self._athrottle("fetch_prices")  # before the breaker, as for positions
            if not _closed(self._bg_read):
                raise _NotSent
            attempt = _Attempts(self, "fetch_prices")
            with self._observed("read", "get_prices"):
                return await self._bg_read.acall_with_circuit_breaker(
                    attempt.prices, asked, answer_within_s
                )

        try:
            return await board.aprime(list(symbols), fetch, for_s=for_s)
        except _NotSent:
            return False

    @property
    def plausibility_policy(self) -> PlausibilityPolicy:
        """When a successful position read that lost positions is believed."""
        return self._bg_plausibility.policy

    @plausibility_policy.setter
    def plausibility_policy(self, policy: PlausibilityPolicy) -> None:
        with self._bg_lock:
            self._bg_plausibility.policy = policy

    def position_suspicion(self) -> Suspicion | None:
        """Return the pending suspicion about the positions (a read lost some), if any."""
        with self._bg_lock:
            return self._bg_plausibility.suspicion

    def _implausible(self, suspicion: Suspicion) -> PositionsImplausibleError:
        self._count_bad_data("positions", "implausible")
        policy = self._bg_plausibility.policy
        needed = policy.confirm_reads if policy.believe_reads else 0
        waiting = self.awaited_evidence()
        # Loud once per suspicion; the reads that merely repeat it are counted, not shouted.
        log.log(
            logging.CRITICAL if suspicion.agreeing <= 1 else logging.DEBUG,
            "account %s on broker %r: a successful position read lost %s with no sell of ours "
            "to explain it (%d agreeing reads); not believed: no new entries while waiting for %s",
            self.account_id,
            self.broker_name,
            ", ".join(suspicion.missing),
            suspicion.agreeing,
            waiting,
        )
        return PositionsImplausibleError(
            f"positions of account {self.account_id} on {self.broker_name!r} implausible: "
            f"{', '.join(suspicion.missing)} vanished with no sell to explain it "
            f"({suspicion.agreeing} agreeing reads); waiting for {waiting}",
            missing=suspicion.missing,
            agreeing=suspicion.agreeing,
            needed=needed,
        )

    def share_prices(self, prices: SharedPrices | None) -> None:
        """Read prices through `prices`, the venue's shared batched answer (None: alone).

        Every account of a venue then costs the exchange one price call per pass between
        them, not one each (:mod:`brokerguard.brokers.prices`); each still judges every value.
        """
        self._bg_prices = prices

    def keep_holdings_in(self, store: HoldingsStore) -> None:
        """Persist every believed read's holdings in `store`; start from the stored ones.

        Without it the first read after a restart is believed whatever it lacks, so a restart
        during a thin-read glitch would free cap slots. With it, a read that lacks stored
        holdings is judged like any other (it needs a sell, the trade history or an operator to
        be believed). Stored holdings are merged into a belief formed before the store was
        given. While the store cannot be read, position reads raise (fail closed). The gate
        and the enforcer call it with their store; the first store given is kept.
        """
        with self._bg_lock:
            if self._bg_holdings_store is not None:
                return
            self._bg_holdings_store = store
            self._bg_holdings_pending = True
        with contextlib.suppress(BrokerGuardError):
            self._seed_from_store()  # a failure is retried (and raised) by the next read

    def keep_orders_in(self, store: SentOrderStore) -> None:
        """Keep every order this broker sends in `store`, and take the ones kept there.

        Without it, what this object sent lives in its memory only: a restarted process, or a
        second broker object on the same account, would find a bot's retry of an order of
        unknown outcome unknown and send it again (a venue such as Kraken then executes both),
        and a restarted gate would neither block its symbol nor count its slot. With it, an
        order is claimed in the store before it is sent (atomically: one sender per client
        order id across processes) and recorded as sent, with its deadline, before it leaves;
        its fate is recorded after, on that claim's row only. The kept orders of unknown
        outcome are unresolved here too (looked up, never resent before the evidence rule
        allows), other processes' included (:meth:`refresh_kept_orders`). While the store
        cannot be written, orders are not sent (fail closed). The gate and the enforcer call it
        with their store; the first store given is kept.
        """
        with self._bg_lock:
            if self._bg_orders_store is not None:
                return
            self._bg_orders_store = store
            self._bg_orders_pending = True
        with contextlib.suppress(BrokerGuardError):
            self._load_kept_orders()  # a failure is retried by the next order or check

    def _load_kept_orders(self) -> None:
        """Take the store's kept orders into memory and keep this object's unresolved ones there.

        An order this object holds unresolved from before it was given the store is written
        too (a restart must hold it as well). Raises while either cannot be done; the next
        order or check tries again, and nothing is sent until it succeeds.
        """
        store = self._bg_orders_store
        if store is None:
            return
        try:
            kept = store.sent_orders(self.account_id)
            with self._bg_lock:
                for order in kept:
                    self._adopt_kept(order)
                own = [e for c, e in self._bg_unresolved.items() if c not in self._bg_kept]
            for entry in own:
                token = _new_token()
                held = store.claim_sent_order(
                    self.account_id,
                    entry.request,
                    token=token,
                    state=entry.state.value,
                    absent_after=entry.absent_after,
                )
                with self._bg_lock:
                    if held is None:
                        self._bg_kept[entry.client_order_id] = token
                    else:  # another's row holds the id: it is that order (its later deadline)
                        self._bg_sent.pop(entry.client_order_id, None)
                        self._bg_unresolved.pop(entry.client_order_id, None)
                        self._adopt_kept(held)
        except BrokerGuardError as exc:
            log.error(
                "account %s: the orders it sent cannot be read from or kept in the store (%s): "
                "orders are not sent until they can",
                self.account_id,
                exc,
            )
            raise
        with self._bg_lock:
            self._bg_orders_pending = False

    def _adopt_kept(self, order: KeptOrder) -> None:
        """Take one kept order into memory unless this object knows its id (caller holds the lock).

        What this object knows first-hand stands (its own row may be on its way out: a send it
        refused); a caller that learnt the row is another order drops the id first.
        """
        cid = order.request.client_order_id
        if cid in self._bg_sent:
            return
        state = OrderState(order.state)
        self._bg_sent[cid] = state
        self._bg_sent.move_to_end(cid)
        self._bg_kept[cid] = order.token
        self._bg_adopted.add(cid)
        if state in {OrderState.OPEN, OrderState.PARTIALLY_FILLED}:
            # Resting at the venue when last heard of: exposure (a slot) until seen final, even
            # if a listing omits it (get_open_orders looks it up).
            request = order.request
            self._bg_live.setdefault(
                cid,
                Order(
                    cid,
                    request.symbol,
                    request.side,
                    request.quantity,
                    Decimal(0),
                    OrderStatus(state.value),
                    order_type=request.order_type,
                    price=request.price,
                ),
            )
        if state in _KEPT_UNRESOLVED:
            held = OrderState.EXISTS if state is OrderState.EXISTS else OrderState.UNRESOLVED
            self._bg_unresolved[cid] = UnresolvedOrder(
                order.request,
                held,
                order.sent_at,
                None if held is OrderState.EXISTS else order.absent_after,
                "sent by another process or broker object, outcome unknown",
            )

    def refresh_kept_orders(self, max_age_s: float = KEPT_REFRESH_S) -> None:
        """See the orders other processes keep for this account, read at most `max_age_s` ago.

        A new unresolved one blocks its symbol and side here too (and a buy counts its slot at
        the gate); one its owner settled since leaves (its fate is in the store, and a retry of
        its id finds it there). The gate calls it for every decision (so another process's
        unresolved entry is seen within ``KEPT_REFRESH_S``), and an order for it before its
        claim (with 0: at once). Raises when the store cannot be read (the caller fails closed).
        """
        store = self._bg_orders_store
        if store is None:
            return
        now = self._bg_clock.monotonic()
        if now - self._bg_kept_read_at < max_age_s and not self._bg_orders_pending:
            return
        if self._bg_orders_pending:
            self._load_kept_orders()
        rows = {r.request.client_order_id: r for r in store.unsettled_sent_orders(self.account_id)}
        with self._bg_lock:
            self._bg_kept_read_at = now
            for cid in [c for c in self._bg_adopted if c not in rows]:
                self._forget_adopted(cid)  # settled by its owner: the store has its fate
            for cid, row in rows.items():
                if cid in self._bg_adopted:
                    held = self._bg_unresolved.get(cid)
                    if row.token != self._bg_kept.get(cid):
                        self._forget_adopted(cid)  # claimed again since: that order now
                    elif held is not None and held.absent_after != row.absent_after:
                        # Resent since with a new deadline: lookups before prove nothing of it.
                        self._bg_absences.pop(cid, None)
                if cid in self._bg_adopted or cid not in self._bg_sent:
                    self._bg_sent.pop(cid, None)
                    self._adopt_kept(row)

    def _forget_adopted(self, cid: str) -> None:
        """Drop what this object copied of another's kept order (caller holds the lock)."""
        self._bg_adopted.discard(cid)
        self._bg_unresolved.pop(cid, None)
        self._bg_absences.pop(cid, None)
        self._bg_live.pop(cid, None)
        self._bg_sent.pop(cid, None)
        self._bg_kept.pop(cid, None)

    def _claim_kept(self, request: OrderRequest, absent_after: float) -> bool:
        """Keep `request` in the store as sent: False when another sender's row holds its id.

        Called after this object's own claim, before anything is sent. The row another sender
        holds is taken into memory as that order (its lookup decides); a store that cannot be
        reached sends nothing.
        """
        store = self._bg_orders_store
        if store is None:
            return True
        cid = request.client_order_id
        token = _new_token()
        try:
            self.refresh_kept_orders(0.0)  # another's unresolved order in this symbol counts
            held = store.claim_sent_order(
                self.account_id, request, token=token, absent_after=absent_after
            )
        except BrokerGuardError as exc:
            self._unclaim(cid)
            raise BlockedError(
                f"order {cid} on broker {self.broker_name!r} (account {self.account_id}) was "
                f"not sent: the store that keeps sent orders cannot be written ({exc}); a send "
                "it does not hold could be sent again after a restart"
            ) from exc
        with self._bg_lock:
            if held is None:
                self._bg_kept[cid] = token
                return True
            self._bg_sent.pop(cid, None)  # this object's claim: the kept order decides
            self._adopt_kept(held)
        return False

    def _unclaim(self, cid: str) -> None:
        """Give back this object's claim of an id it did not send (nothing is written)."""
        with self._bg_lock:
            if self._bg_sent.get(cid) is OrderState.SENT and cid not in self._bg_unresolved:
                del self._bg_sent[cid]
                self._bg_kept.pop(cid, None)

    def _keep_sent(
        self, request: OrderRequest, state: OrderState, absent_after: float | None
    ) -> None:
        """Record on this object's row that `request` is (about to be) resent, or unresolved.

        Raises BlockedError when the store cannot be written, or the row is no longer this
        object's (another process proved the order absent, and may have sent the id again):
        the caller sends nothing.
        """
        store = self._bg_orders_store
        cid = request.client_order_id
        with self._bg_lock:
            token = self._bg_kept.get(cid)
        if store is None or token is None:
            return
        try:
            ours = store.save_sent_order(
                self.account_id, request, state.value, token=token, absent_after=absent_after
            )
        except BrokerGuardError as exc:
            raise BlockedError(
                f"order {cid} on broker {self.broker_name!r} (account {self.account_id}) was "
                f"not sent: the store that keeps sent orders cannot be written ({exc})"
            ) from exc
        if not ours:
            with self._bg_lock:
                self._bg_kept.pop(cid, None)
            raise BlockedError(
                f"order {cid} on broker {self.broker_name!r} (account {self.account_id}) was "
                "not sent: the store's record of the id is no longer this object's (another "
                "process proved it absent, and may have sent it since); retry to find it"
            )

    def _keep_state(
        self, cid: str, state: OrderState, *, proven_after: float | None = None
    ) -> None:
        """Record an order's fate on its kept row; a failure leaves its more cautious state.

        `proven_after`: the horizon after which lookups proved it absent (the row is kept if
        its owner resent it since with a later one: the next claim meets it again).
        """
        store = self._bg_orders_store
        if store is None:
            return  # nothing kept: no lock taken on an order's path
        with self._bg_lock:
            token = self._bg_kept.get(cid)
            if state in {OrderState.NOT_PLACED, OrderState.REJECTED}:
                self._bg_kept.pop(cid, None)  # its row goes: a new send is a new claim
        if token is None:
            return
        try:
            store.settle_sent_order(
                self.account_id, cid, state.value, token=token, proven_after=proven_after
            )
        except BrokerGuardError as exc:
            log.warning(
                "order %s on broker %r (account %s) is %s, but the store kept its earlier state "
                "(%s): after a restart it is looked up, not resent",
                cid,
                self.broker_name,
                self.account_id,
                state.value,
                exc,
            )

    def _seed_from_store(self) -> None:
        """Take the stored holdings as (part of) the belief; raise if they cannot be read."""
        store = self._bg_holdings_store
        if store is None:
            return
        try:
            saved = store.holdings(self.account_id)
        except BrokerGuardError as exc:
            log.warning(
                "account %s on broker %r: the believed holdings of the last run cannot be read "
                "(%s); no position read is believed until they can",
                self.account_id,
                self.broker_name,
                _reason(exc),
            )
            raise
        with self._bg_lock:
            self._bg_holdings_pending = False
            if saved is None:
                return
            held, seen_at = saved
            believed = self._bg_plausibility.believed
            if believed is None:
                self._bg_plausibility.seed(held)
                self._bg_held = dict(held)
                self._bg_held_at = (seen_at, seen_at)
                self._bg_held_own_at = {}
                self._bg_saved_holdings = dict(held)
            else:  # a read was believed before the store was given: stored ones still count
                extra = set(held) - believed
                self._bg_plausibility.widen(extra)
                for symbol in extra:
                    self._bg_held[symbol] = held[symbol]
                    self._bg_held_own_at[symbol] = (seen_at, seen_at)
                if extra:
                    self._bg_last_positions = None  # that read lacked them: read again
        log.info(
            "account %s on broker %r: starting from %d holding(s) believed at %.0f",
            self.account_id,
            self.broker_name,
            len(held),
            seen_at,
        )

    def _persist_holdings(self, positions: Sequence[Position], wall: float) -> None:
        """Save a believed read's holdings when they changed (best effort, logged).

        One save runs at a time, and a read older than the newest one given is never saved
        after it: a read finding a save under way leaves its holdings for that saver (which
        writes the newest it was given once its own write ends) and returns at once, so a
        slow store holds up one read, never the reads after it.
        """
        store = self._bg_holdings_store
        if store is None:
            return
        holdings = {p.symbol: p.quantity for p in positions}
        with self._bg_lock:
            waiting = self._bg_save_next
            if waiting is None or wall >= waiting[1]:
                self._bg_save_next = (holdings, wall)
            if self._bg_saving:
                return  # the saver under way writes the newest given, this one or later
            self._bg_saving = True
        try:
            while True:
                with self._bg_lock:
                    given, self._bg_save_next = self._bg_save_next, None
                    if given is None:
                        self._bg_saving = False
                        return
                    if given[0] == self._bg_saved_holdings or given[1] < self._bg_saved_at:
                        continue
                try:
                    store.save_holdings(self.account_id, given[0], given[1])
                except BrokerGuardError as exc:
                    log.warning(
                        "account %s on broker %r: believed holdings not saved (%s)",
                        self.account_id,
                        self.broker_name,
                        _reason(exc),
                    )
                    continue
                with self._bg_lock:
                    self._bg_saved_holdings, self._bg_saved_at = given
        except BaseException:
            with self._bg_lock:
                self._bg_saving = False
            raise

    def awaited_evidence(self) -> str:
        """Say what would explain a pending loss of positions (for errors, status and alerts)."""
        policy = self._bg_plausibility.policy
        ways = ["the positions to come back"]
        if self.has_trade_history:
            ways.append("a sell in the trade history")
        if policy.believe_reads:
            ways.append(f"{policy.confirm_reads} agreeing reads over {policy.confirm_after_s:.0f}s")
        ways.append(f"an operator (brokerguard confirm-positions {self.account_id})")
        return ", ".join(ways[:-1]) + " or " + ways[-1]

    def accept_position_loss(self, symbols: Iterable[str]) -> tuple[str, ...]:
        """An operator confirms that `symbols` are really gone (sold by hand, withdrawn).

        The next read that lacks them is believed (if nothing else is missing). The
        confirmation lasts until a believed read shows the symbol held again. Returns the
        canonical symbols accepted.
        """
        accepted = tuple(sorted({parse_symbol(s) for s in symbols}))
        with self._bg_lock:
            self._bg_accepted_losses.update(accepted)
        log.warning(
            "account %s on broker %r: an operator confirmed %s gone",
            self.account_id,
            self.broker_name,
            ", ".join(accepted),
        )
        return accepted

    def _sold_evidence(self, lost: Iterable[str]) -> set[str]:
        """The `lost` symbols the trade history shows sold since they were last seen held.

        A sell counts only if it executed after the end of the last believed read that showed
        the symbol (plus a margin for the venue's clock: an execution during the read may be in
        it already, and then explains nothing), and the sells (less any buys) since leave at
        most dust. A
        history that cannot be read, or shows nothing, explains nothing: absence of a sell is
        not evidence either way.
        """
        with self._bg_lock:
            held = {
                s: (self._bg_held[s], *self._bg_held_own_at.get(s, self._bg_held_at))
                for s in lost
                if s in self._bg_held
            }
        if not held:
            return set()
        since = min(at for _, at, _ in held.values())
        try:
            fills = self.get_fills(since)
        except BrokerGuardError as exc:
            log.warning(
                "account %s on broker %r: the trade history could not be read (%s); the lost "
                "positions stay unexplained",
                self.account_id,
                self.broker_name,
                _reason(exc),
            )
            return set()
        sold: set[str] = set()
        for symbol, (quantity, at, ended) in held.items():
            mine = [f for f in fills if f.symbol == symbol and f.timestamp >= at]
            if any(f.timestamp <= ended + _SALE_SKEW_S for f in mine):
                continue  # executed while (or just after) the read ran: it may be in it
            remaining = quantity
            for fill in mine:
                remaining += fill.quantity if fill.side is Side.BUY else -fill.quantity
            if remaining <= 0 or self.is_dust(symbol, remaining):
                sold.add(symbol)
        return sold

    def get_fills(self, since: float) -> list[Fill]:
        """Read the trade history since `since` through the read breaker, validated."""
        with self._observed("read", "get_fills"):
            self._probe_if_due(self._bg_read, real_call_is_probe=True)
            return self._bg_read.call_with_circuit_breaker(self._fetch_fills_checked, since)

    def _fetch_fills_checked(self, since: float) -> list[Fill]:
        self._throttle("fetch_fills")
        raw: object = self.fetch_fills(since)
        if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
            raise self._bad_payload("fills", raw, "not_a_list")
        for item in raw:
            if not isinstance(item, Fill):
                raise self._bad_payload("fills", item, "not_a_fill")
        return list(raw)

    def _remember_held(self, positions: Iterable[Position], wall: float, ended: float) -> None:
        """After a believed read (caller holds the lock): what it held, and when it was read."""
        self._bg_held = {p.symbol: p.quantity for p in positions}
        self._bg_held_at = (wall, ended)
        if self._bg_held_own_at:
            self._bg_held_own_at = {}
        if self._bg_accepted_losses:
            self._bg_accepted_losses.difference_update(self._bg_held)

    def note_sell(self, symbol: str, client_order_id: str | None = None) -> None:
        """Record a sell of `symbol` this process did not send (a journal entry of an earlier run).

        Its position may then vanish without the read being suspect: the journal explains it.
        """
        with self._bg_lock:
            self._bg_sells[parse_symbol(symbol)] = (self._bg_clock.monotonic(), client_order_id)

    def _explained_losses(self, now: float) -> set[str]:
        """Symbols a sell of ours explains the disappearance of (caller holds the lock)."""
        sells = {
            s
            for s, (at, cid) in self._bg_sells.items()
            if now - at <= _SELL_EXPLAINS_S
            # ours explains it once filled; a journaled one (no id here) was looked up already
            and (cid is None or self._bg_sent.get(cid) is OrderState.FILLED)
        }
        return sells | self._bg_accepted_losses

    def last_position_snapshot(self) -> PositionSnapshot | None:
        """Return the latest successful position fetch, or None if there never was one."""
        return self._bg_last_positions

    def check_prices(self, symbols: Iterable[str]) -> PriceCheck:
        """Fetch prices for `symbols` in one batched call and sort them into usable or not.

        A symbol whose price is missing, zero, negative, NaN, non-numeric or absurd gets no
        quote, a reason in ``problems``, a CRITICAL log line and a data-quality count. Nothing
        is ever substituted for it.
        """
        wanted = canonical_symbols(symbols)
        if not wanted:
            return PriceCheck({}, {})
        with self._observed("read", "check_prices"):
            self._probe_if_due(self._bg_read, real_call_is_probe=False)
            answer = self._fetch_prices_shared(wanted)
        quotes: dict[str, Quote] = {}
        problems: dict[str, PriceProblem] = {}
        for symbol in wanted:
            received = answer.get(symbol)
            value = None if received is None else received.value
            if received is not None and received.quote is not None:
                quotes[symbol] = received.quote  # another account of the venue parsed it
                continue
            try:
                quotes[symbol] = _quote_of(symbol, received)
            except InvalidBrokerData as exc:
                problems[symbol] = PriceProblem(exc.reason)
                self._count_bad_data("price", exc.reason)
                entered = symbol not in self._bg_unusable_prices
                self._bg_unusable_prices.add(symbol)
                log.log(
                    logging.CRITICAL if entered else logging.DEBUG,
                    "price for %s from broker %r (account %s) is unusable: %s (got %r); no "
                    "fallback price is used, the symbol cannot be valued until a valid price "
                    "arrives",
                    symbol,
                    self.broker_name,
                    self.account_id,
                    exc.reason,
                    value,
                    extra=log_context(
                        account=self.account_id,
                        broker=self.broker_name,
                        symbol=symbol,
                        reason=str(exc.reason),
                        state="entered" if entered else None,
                    ),
                )
        for symbol in sorted(self._bg_unusable_prices.intersection(quotes)):
            self._bg_unusable_prices.discard(symbol)
            log.warning(
                "price for %s from broker %r (account %s) is usable again",
                symbol,
                self.broker_name,
                self.account_id,
                extra=log_context(
                    account=self.account_id, broker=self.broker_name, symbol=symbol, state="left"
                ),
            )
        return PriceCheck(quotes, problems)

    def get_prices(self, symbols: Iterable[str]) -> dict[str, Decimal | None]:
        """Return each symbol's usable price, or None where the broker gave no usable one."""
        wanted = canonical_symbols(symbols)  # request order, once each
        check = self.check_prices(wanted)
        return {symbol: check.price(symbol) for symbol in wanted}

    def get_current_price(self, symbol: str) -> Decimal | None:
        """Return the usable price of one symbol, or None (never a fallback)."""
        return self.check_prices([symbol]).price(parse_symbol(symbol))

    def get_order(self, client_order_id: str) -> Order | None:
        """Look an order up by its client order id (reads breaker, with retries).

        What it finds is remembered: an open order is exposure until seen final, and a final
        one settles the state this broker knew it in.
        """
        client_order_id = parse_symbol(client_order_id, field="client_order_id")
        with self._observed("read", "get_order"):
            self._probe_if_due(self._bg_read, real_call_is_probe=False)
            found = self._bg_read.call_with_circuit_breaker(
                self._fetch_order_checked, client_order_id
            )
        if found is not None:
            self._track_live(found)
        return found

    # ------------------------------------------------------------------ guarded writes

    def place_market_order(
        self,
        symbol: str,
        side: Side | str,
        quantity: Decimal | int | str,
        *,
        client_order_id: str | None = None,
        deadline: float | None = None,
    ) -> Order:
        """Send a market order at most once per client order id (see :mod:`brokerguard.orders`).

        The id is generated when not given; `deadline` (epoch seconds) is when the venue must
        stop accepting it (default: now plus ``order_deadline_s``). A failure that may have
        reached the venue (timeout, transient or unknown error, garbled answer) is looked up at
        once: found, it is adopted; not found, the order is UNRESOLVED and
        :class:`OrderUnconfirmedError` is raised — it is *not* resent, because the venue may
        still accept it. Call again with the same id (or :meth:`resolve_order`) after the
        error's ``deadline``: lookups then that find nothing (two, 2 s apart, both made by that
        call) prove it was not placed, and only then is it sent again. A duplicate-id answer
        means the order exists: it is looked up and adopted. Refusals that prove nothing was
        processed (rate limit, bad nonce) are retried with backoff within the deadline.
        """
        with self._observed("write", "place_market_order"):
            return self._place(
                self._bg_request(symbol, side, quantity, client_order_id, deadline=deadline)
            )

    def place_order(
        self,
        symbol: str,
        side: Side | str,
        quantity: Decimal | int | str,
        *,
        order_type: OrderType | str = OrderType.MARKET,
        price: Decimal | int | str | None = None,
        time_in_force: TimeInForce | str | None = None,
        post_only: bool = False,
        reduce_only: bool = False,
        expire_at: float | None = None,
        client_order_id: str | None = None,
        deadline: float | None = None,
    ) -> Order:
        """Send any order (market or limit) at most once per client order id.

        The same rules as :meth:`place_market_order`: a limit order that may have reached the
        venue is looked up, and unresolved (never resent) until two lookups after its deadline,
        2 s apart, find nothing. A resting limit order is tracked until it is final: it is exposure
        (:meth:`get_open_orders` lists it even if a venue's listing omits it).
        """
        with self._observed("write", "place_order"):
            return self._place(
                self._bg_request(
                    symbol,
                    side,
                    quantity,
                    client_order_id,
                    deadline=deadline,
                    order_type=order_type,
                    price=price,
                    time_in_force=time_in_force,
                    post_only=post_only,
                    reduce_only=reduce_only,
                    expire_at=expire_at,
                )
            )

    def _bg_request(
        self,
        symbol: str,
        side: Side | str,
        quantity: Decimal | int | str,
        client_order_id: str | None,
        **terms: Any,
    ) -> OrderRequest:
        symbol = parse_symbol(symbol)
        return OrderRequest(
            symbol,
            parse_side(side),
            parse_decimal(quantity, field="quantity", allow_zero=False, symbol=symbol),
            client_order_id or self._bg_new_cid(),
            **terms,
        )

    def _place(self, request: OrderRequest) -> Order:
        """The body of :meth:`place_order` (observed by the wrappers)."""
        if request.order_type is not OrderType.MARKET and not self.has_order_book:
            raise BrokerRejection(
                f"broker {self.broker_name!r} takes market orders only: a limit order would "
                "rest where nothing lists or cancels it; nothing was sent"
            )
        cid = request.client_order_id
        to_send, absent_after = self._with_deadline(request)
        # With a store, the claim keeps the first send's record: written before it leaves.
        existing = self._claim_or_resolve(to_send, absent_after)
        if existing is not None:
            return existing
        attempt = 0
        policy = self._bg_write.retry_policy
        slept = 0.0
        while True:
            attempt += 1
            if attempt > 1:
                to_send, absent_after = self._resending(request)
            try:
                self._probe_if_due(self._bg_write, real_call_is_probe=False)
            except BaseException:
                self._set_sent_state(cid, OrderState.NOT_PLACED)  # the probe failed: not sent
                raise
            self._record_send(to_send)
            try:
                order = self._bg_write.call(self._submit_checked, to_send)
            except DuplicateOrderError as exc:
                return self._adopt_or_unresolved(
                    to_send, Evidence.DUPLICATE_ID, None, cause=exc, reason="duplicate_id"
                )
            except Exception as exc:  # noqa: BLE001 (every failure is sorted: landed or not)
                if not isinstance(exc, CircuitOpenError | BrokerRejection | FatalBrokerError) and (
                    not _not_processed(exc)
                ):
                    # The venue may have processed it: the outcome is unknown.
                    return self._adopt_or_unresolved(
                        to_send, Evidence.AMBIGUOUS, absent_after, cause=exc, reason=_reason(exc)
                    )
                # Refused before the venue processed it, or a definite business refusal.
                delay = self._resend_delay(request, exc, attempt, slept, policy)
                # "Not processed" is the venue's word; a lookup costs one read and settles it.
                existing = self._look_before_resending(to_send, exc)
                if existing is not None:
                    return existing
                log.warning(
                    "order %s on broker %r refused before processing (%s): resending in %.1fs",
                    cid,
                    self.broker_name,
                    exc,
                    delay,
                )
                self._bg_clock.sleep(delay)
                slept += delay
                continue
            self._set_sent_state(cid, OrderState(order.status.value))
            self._note_own_sell(request)
            self._track_live(order)
            return order

    def cancel_order(self, client_order_id: str) -> Order:
        """Cancel an order, at most once, and return its state as the venue then shows it.

        Idempotent: an order already final is returned as it is (nothing is sent). The cancel
        is a write and follows the order-truth rules: a cancel whose answer was lost is not
        resent blindly; the order is looked up, and its state returned. Raises
        :class:`OrderUnconfirmedError` when the order cannot be found at all (it may be
        unresolved), never reports a cancel it could not verify as done: the caller checks
        ``is_final`` on the answer.
        """
        cid = parse_symbol(client_order_id, field="client_order_id")
        with self._observed("write", "cancel_order"):
            if not self.has_order_book:
                raise BrokerRejection(f"broker {self.broker_name!r} has no cancels")
            current = self.get_order(cid)
            if current is None:
                raise OrderUnconfirmedError(
                    f"order {cid} on broker {self.broker_name!r} is not found: nothing to "
                    "cancel, and it may still appear (resolve it first)",
                    client_order_id=cid,
                )
            if current.is_final:
                self._track_live(current)
                return current
            self._probe_if_due(self._bg_write, real_call_is_probe=False)
            try:
                answered = self._bg_write.call(self._cancel_checked, current)
            except (BrokerRejection, CircuitOpenError, FatalBrokerError):
                raise
            except Exception as exc:  # noqa: BLE001 (a lost answer: the lookup decides)
                log.warning(
                    "cancel of %s on broker %r: no usable answer (%s); looking it up",
                    cid,
                    self.broker_name,
                    _reason(exc),
                )
                answered = None
            after = answered if answered is not None and answered.is_final else self.get_order(cid)
            if after is None:
                raise OrderUnconfirmedError(
                    f"order {cid} on broker {self.broker_name!r} vanished from lookups after a "
                    "cancel: its state is unknown",
                    client_order_id=cid,
                )
            self._set_sent_state(cid, OrderState(after.status.value))
            self._track_live(after)
            return after

    def get_open_orders(self) -> list[Order]:
        """The account's open orders: the venue's listing, plus ours it omitted (reads breaker).

        Absence is not evidence: an order this process placed and saw open (or left
        unresolved) stays listed until a lookup shows it final, even if a listing omits it.
        """
        started = self._bg_clock.monotonic()
        with self._observed("read", "get_open_orders"):
            if not self.has_order_book:
                return []
            self._probe_if_due(self._bg_read, real_call_is_probe=True)
            listed = self._bg_read.call_with_circuit_breaker(self._fetch_open_orders_checked)
        seen = {o.client_order_id for o in listed}
        with self._bg_lock:
            # Absence from one listing is no proof: ours and those an earlier listing showed
            # are looked up before they are forgotten.
            earlier = {o.client_order_id: o for o in self._bg_listing}
            earlier.update(self._bg_live)
            missing = [o for cid, o in earlier.items() if cid not in seen]
            self._bg_listing = tuple(listed)
            self._bg_listed_at = started
        for known in missing:
            try:
                current = self.get_order(known.client_order_id)
            except BrokerGuardError:
                current = known  # cannot tell: it stays exposure
            if current is None:
                current = known
            self._track_live(current)
            if not current.is_final:
                listed.append(current)
                with self._bg_lock:
                    self._bg_listing = (*self._bg_listing, current)
        return listed

    def open_orders_age(self, now: float) -> float | None:
        """Seconds since the last successful open-order listing started (None: never)."""
        with self._bg_lock:
            return None if self._bg_listed_at is None else now - self._bg_listed_at

    def _look_up_own_sells(self, lost: Iterable[str], now: float) -> bool:
        """Look up our recent sells of `lost` symbols not known filled; True if one was found.

        A sell whose answer said "open" (Kraken answers AddOrder before it fills) explains its
        symbol's loss only once it is seen filled.
        """
        with self._bg_lock:
            pending = [
                cid
                for s in lost
                if s in self._bg_sells
                and now - self._bg_sells[s][0] <= _SELL_EXPLAINS_S
                and (cid := self._bg_sells[s][1]) is not None
                and self._bg_sent.get(cid) is not OrderState.FILLED
            ]
        filled = False
        for cid in pending:
            try:
                found = self.get_order(cid)
            except BrokerGuardError:
                continue  # unknown: it explains nothing yet
            filled = filled or (found is not None and found.status is OrderStatus.FILLED)
        return filled

    def _forget_rebought(self, shown: Iterable[str], started: float) -> None:
        """Drop the explanation of sells a later believed read contradicts (caller holds the lock).

        A read made after our sell filled that still shows the symbol: bought again, or the
        sell did not close it. That sell no longer explains a later loss.
        """
        for symbol in set(shown) & set(self._bg_sells):
            _, cid = self._bg_sells[symbol]
            filled_at = None if cid is None else self._bg_filled_at.get(cid)
            if filled_at is not None and filled_at <= started:
                del self._bg_sells[symbol]

    def known_open_orders(self) -> list[Order]:
        """Open orders as last known, without a call: the last listing plus ours still live.

        What the gate counts between listings (an order placed through this broker is known
        at once; one placed elsewhere, from the next :meth:`get_open_orders`).
        """
        with self._bg_lock:
            known = {o.client_order_id: o for o in self._bg_listing}
            known.update(self._bg_live)
            return [o for o in known.values() if not o.is_final]

    def _track_live(self, order: Order) -> None:
        """Remember a non-final order (until seen final): it is exposure.

        Seeing an order of ours final also records its state (a venue's own cancel, a GTD
        expiry, a fill), so its slot and its sell's explanation follow the venue.
        """
        if order.is_final:
            self._saw_final(order)
        with self._bg_lock:
            if order.is_final:
                self._bg_live.pop(order.client_order_id, None)
                self._bg_listing = tuple(
                    o for o in self._bg_listing if o.client_order_id != order.client_order_id
                )
            else:
                self._bg_live[order.client_order_id] = order

    def _saw_final(self, order: Order) -> None:
        cid = order.client_order_id
        state = OrderState(order.status.value)
        with self._bg_lock:
            known = self._bg_sent.get(cid)
            unresolved = cid in self._bg_unresolved
            changed = known is not None and known is not state and not unresolved
            if changed:
                self._bg_sent[cid] = state
            if state is OrderState.FILLED and cid not in self._bg_filled_at:
                self._bg_filled_at[cid] = self._bg_clock.monotonic()
                while len(self._bg_filled_at) > _RECENT_FILLS:
                    del self._bg_filled_at[next(iter(self._bg_filled_at))]
            if order.side is Side.BUY and order.filled_quantity > 0 and known is not None:
                self._bg_final_fill[cid] = order.filled_quantity  # an entry that bought
                while len(self._bg_final_fill) > _RECENT_FILLS:
                    del self._bg_final_fill[next(iter(self._bg_final_fill))]
        if unresolved:
            self._settle_unresolved(cid, state, order)
        elif changed:
            self._keep_state(cid, state)

    def _cancel_checked(self, order: Order) -> Order | None:
        self._throttle("submit_cancel")
        answer: object = self.submit_cancel(order)
        if answer is None:
            return None
        if not isinstance(answer, Order) or answer.client_order_id != order.client_order_id:
            raise self._bad_payload("cancel", answer, "not_the_order")
        return answer

    def _fetch_open_orders_checked(self) -> list[Order]:
        self._throttle("fetch_open_orders")
        raw: object = self.fetch_open_orders()
        if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
            raise self._bad_payload("open_orders", raw, "not_a_list")
        orders: list[Order] = []
        for item in raw:
            if not isinstance(item, Order):
                raise self._bad_payload("open_orders", item, "not_an_order")
            if not item.is_final:
                orders.append(item)
        return orders

    def _resend_delay(
        self,
        request: OrderRequest,
        exc: Exception,
        attempt: int,
        slept: float,
        policy: RetryPolicy,
    ) -> float:
        """The wait before resending an order the venue did not process; raise `exc` if none."""
        final = OrderState.REJECTED if isinstance(exc, BrokerRejection) else None
        delay = (
            None
            if final is not None
            or isinstance(exc, CircuitOpenError | FatalBrokerError)
            or not _not_processed(exc)
            else policy.next_delay(attempt, self._bg_write.classify(exc), exc, slept=slept)
        )
        if delay is None or (
            request.deadline is not None and self._bg_clock.time() + delay >= request.deadline
        ):
            self._set_sent_state(request.client_order_id, final or OrderState.NOT_PLACED)
            raise exc
        return delay

    def _with_deadline(self, request: OrderRequest) -> tuple[OrderRequest, float]:
        """The request as sent now, and when lookups that find nothing prove it never placed.

        Its deadline is the caller's, or now plus ``order_deadline_s``.
        """
        now = self._bg_clock.time()
        to_send = replace(request, deadline=request.deadline or now + self.order_deadline_s)
        return to_send, self._absent_after(to_send, now)

    def _resending(self, request: OrderRequest) -> tuple[OrderRequest, float]:
        """A resend after a refusal: a new deadline, kept in the store before it leaves.

        Raises (the order marked not placed: nothing was sent) when it cannot be kept.
        """
        to_send, absent_after = self._with_deadline(request)
        try:
            self._keep_sent(to_send, OrderState.SENT, absent_after)
        except BaseException:
            self._set_sent_state(request.client_order_id, OrderState.NOT_PLACED)
            raise
        return to_send, absent_after

    def _claim_or_resolve(self, request: OrderRequest, absent_after: float) -> Order | None:
        """Take the right to send the request, or return the order its id already names.

        Raises OrderUnconfirmedError while an earlier send of the id is unresolved, and
        BlockedError when the request may not be sent (see :meth:`_refuse_a_second_unresolved`).
        """
        cid = request.client_order_id
        if not (self._claim(cid) and self._claim_kept(request, absent_after)):
            # Sent before (by this process, or one whose orders the store keeps): the venue's
            # answer decides, never a second send.
            existing = self.resolve_order(cid)  # raises while the order is unresolved
            if existing is not None:
                return self._same_order(existing, request)
            if not (self._claim(cid) and self._claim_kept(request, absent_after)):
                # proven absent, but another caller is sending it now
                raise self._unresolved_error(cid, None, None, cause=None)
        try:
            self._refuse_a_second_unresolved(request)
        except BlockedError:
            self._set_sent_state(cid, OrderState.NOT_PLACED)
            raise
        return None

    def sent_since(self, symbol: str, side: Side | str, since: float) -> list[str]:
        """Client order ids sent for `symbol` and `side` since `since` (monotonic), oldest first.

        Only orders not proven unplaced are listed: what the gate must treat as possibly filled.
        """
        key = (parse_symbol(symbol), parse_side(side))
        with self._bg_lock:
            return [
                cid
                for at, cid in self._bg_recent_sends.get(key, ())
                if at >= since
                and self._bg_sent.get(cid) not in {OrderState.NOT_PLACED, OrderState.REJECTED}
            ]

    def _record_send(self, request: OrderRequest) -> None:
        key = (request.symbol, request.side)
        with self._bg_lock:
            # A new send may be accepted: absences seen before it prove nothing about it.
            self._bg_absences.pop(request.client_order_id, None)
            recent = self._bg_recent_sends.setdefault(key, [])
            recent.append((self._bg_clock.monotonic(), request.client_order_id))
            del recent[:-_RECENT_SENDS]

    def _claim(self, cid: str) -> bool:
        """Atomically take the right to send `cid`: only if it was never sent or proven absent."""
        with self._bg_lock:
            state = self._bg_sent.get(cid)
            if state is not None and state not in {OrderState.NOT_PLACED, OrderState.REJECTED}:
                return False
            self._bg_sent[cid] = OrderState.SENT
            self._bg_sent.move_to_end(cid)
            self._forget_oldest()
            return True

    def _same_order(self, found: Order, request: OrderRequest) -> Order:
        """A client order id names one order: reusing it for another is refused, never sent."""
        if (found.symbol, found.side) != (request.symbol, request.side):
            raise BlockedError(
                f"client order id {request.client_order_id} on broker {self.broker_name!r} "
                f"names {found.side.value} {found.symbol} already; refusing to reuse it for "
                f"{request.side.value} {request.symbol}: nothing was sent"
            )
        return found

    def _refuse_a_second_unresolved(self, request: OrderRequest) -> None:
        """Refuse an order in a symbol and side whose last one is unresolved: it may have filled.

        A bot that catches OrderUnconfirmedError and retries under a new id would otherwise
        execute twice.
        """
        with self._bg_lock:
            blocking = next(
                (
                    o
                    for o in self._bg_unresolved.values()
                    if o.symbol == request.symbol
                    and o.request.side is request.side
                    and o.client_order_id != request.client_order_id
                ),
                None,
            )
        if blocking is not None:
            raise BlockedError(
                f"{request.side.value} {request.symbol} on broker {self.broker_name!r} refused: "
                f"order {blocking.client_order_id} for it is unresolved (it may have filled); "
                "nothing was sent until it is found or proven absent"
            )

    def _look_before_resending(self, request: OrderRequest, cause: Exception) -> Order | None:
        """Look the order up before a resend; an order found is adopted, a failed lookup stops."""
        try:
            found = self.get_order(request.client_order_id)
        except Exception:  # noqa: BLE001 (whatever stopped the lookup, the fate is unknown)
            return self._adopt_or_unresolved(
                request,
                Evidence.AMBIGUOUS,
                self._absent_after(request, self._bg_clock.time()),
                cause=cause,
                reason=_reason(cause),
            )
        if found is not None:
            self._set_sent_state(request.client_order_id, OrderState(found.status.value))
            self._note_own_sell(request)
        return found

    def _note_own_sell(self, request: OrderRequest) -> None:
        """A sell of the whole believed position explains that position's disappearance."""
        if request.side is not Side.SELL:
            return
        with self._bg_lock:
            snapshot = self._bg_last_positions
            held = None
            if snapshot is not None:
                held = next(
                    (p.quantity for p in snapshot.positions if p.symbol == request.symbol), None
                )
            if held is None or request.quantity >= held:
                self._bg_sells[request.symbol] = (
                    self._bg_clock.monotonic(),
                    request.client_order_id,
                )

    def resolve_order(
        self, client_order_id: str, *, absent_after: float | None = None
    ) -> Order | None:
        """Look an order of unknown outcome up and apply the evidence rule.

        Returns the order when it is found (its state is adopted), or None when its absence is
        confirmed: :data:`~brokerguard.orders.ABSENT_LOOKUPS_REQUIRED` lookups, each started
        after its deadline (plus margin), found nothing, one of them starting
        :data:`~brokerguard.orders.ABSENT_LOOKUP_SPAN_S` after another's answer (one venue
        answer can omit an order that exists). When a lookup here is the first to find nothing
        after the deadline, the call waits on the injected clock until the confirming lookup
        may start (at most the span) and makes it: one call after the deadline decides, with
        at most two lookups and one wait, and never loops. Raises
        :class:`OrderUnconfirmedError` while the order stays unresolved (not found before the
        deadline, a lookup failed, or the order was settled or resent meanwhile by another
        caller); the error's ``deadline`` is when a lookup can next decide. `absent_after`
        (epoch seconds) is for orders this process did not send (a journal entry after a
        restart); the later of it and the process's own is used. An order this process does
        not know and that has no `absent_after` can only be resolved by finding it.
        """
        cid = parse_symbol(client_order_id, field="client_order_id")
        with self._bg_lock:
            entry = self._bg_unresolved.get(cid)
        state = entry.state if entry is not None else OrderState.UNRESOLVED
        horizon: float | None = None
        if state is not OrderState.EXISTS:
            own = None if entry is None else entry.absent_after
            known = [h for h in (absent_after, own) if h is not None]
            horizon = max(known) if known else None
        outcome = self._look_once(cid, entry, state, horizon)
        if isinstance(outcome, _StillUnresolved) and outcome.confirm:
            # One answer that omits the order proves nothing yet: look once more, late enough
            # that the two answers cannot share one moment's view of the venue.
            due = outcome.deadline
            wait = 0.0 if due is None else due - self._bg_clock.time()
            self._bg_clock.sleep(min(max(wait, 0.0), ABSENT_LOOKUP_SPAN_S))
            outcome = self._look_once(cid, entry, state, horizon)
        if isinstance(outcome, _StillUnresolved):
            raise self._unresolved_error(cid, entry, outcome.deadline, cause=None)
        return outcome

    def _look_once(
        self,
        cid: str,
        entry: UnresolvedOrder | None,
        state: OrderState,
        horizon: float | None,
    ) -> Order | _StillUnresolved | None:
        """Make one lookup for :meth:`resolve_order` and weigh it with the absences seen so far.

        Returns the order found (adopted), None when absence is now confirmed (NOT_PLACED), or
        what is still awaited; raises OrderUnconfirmedError when the lookup itself failed.
        """
        started = self._bg_clock.time()
        try:
            found = self.get_order(cid)
        except Exception as exc:
            # A failed lookup has no answer: the absences seen so far stand, nothing is added.
            with self._bg_lock:
                seen = self._bg_absences.get(cid, NO_ABSENCES)
            raise self._unresolved_error(
                cid, entry, seen.confirmable_after(horizon), cause=exc
            ) from exc
        answered = self._bg_clock.time()
        if found is not None:
            self._settle_unresolved(cid, OrderState(found.status.value), found)
            return found
        with self._bg_lock:
            # Weigh the answer against the absences as they are now (concurrent lookups of the
            # same order all count), and only while the order is still the one looked up: an
            # answer that arrives after another caller found, settled or resent it is stale.
            current = self._bg_unresolved.get(cid) is entry and (
                entry is not None
                or self._bg_sent.get(cid) in {None, OrderState.UNRESOLVED, OrderState.NOT_PLACED}
            )
            before = self._bg_absences.get(cid, NO_ABSENCES) if current else NO_ABSENCES
            verdict = weigh_lookup(
                None,
                looked_at=started,
                absent_after=horizon,
                absences=before,
                answered_at=answered,
            )
            if current and verdict.absences != before:
                self._bg_absences[cid] = verdict.absences
                self._bg_absences.move_to_end(cid)
                while len(self._bg_absences) > _ABSENCE_MEMORY:
                    # Forgetting an absence only delays a conclusion: never a wrong one.
                    self._bg_absences.popitem(last=False)
        if not current:
            return _StillUnresolved(horizon, confirm=False)
        if next_state(state, verdict.evidence) is OrderState.NOT_PLACED:
            self._settle_unresolved(cid, OrderState.NOT_PLACED, None, proven_after=horizon)
            return None
        return _StillUnresolved(
            verdict.absences.confirmable_after(horizon),
            confirm=verdict.evidence is Evidence.ABSENT_AFTER_DEADLINE,
        )

    def resolve_unresolved(self) -> dict[str, str]:
        """Try to resolve every unresolved order; return client order id -> state now.

        The state is ``unresolved`` or ``exists`` for those still unknown (the lookup found
        nothing yet or could not be made).
        """
        outcome: dict[str, str] = {}
        for entry in self.unresolved_orders():
            try:
                found = self.resolve_order(entry.client_order_id)
            except OrderUnconfirmedError:
                with self._bg_lock:
                    still = self._bg_unresolved.get(entry.client_order_id)
                outcome[entry.client_order_id] = (still or entry).state.value
                continue
            outcome[entry.client_order_id] = (
                OrderState.NOT_PLACED.value if found is None else found.status.value
            )
        return outcome

    def unresolved_orders(self) -> list[UnresolvedOrder]:
        """Return the orders this process sent whose outcome is still unknown, oldest first.

        With :meth:`keep_orders_in`, the kept ones of other processes and objects too (read once
        the store answers).
        """
        if self._bg_orders_pending:
            with contextlib.suppress(BrokerGuardError):
                self._load_kept_orders()
        with self._bg_lock:
            return sorted(self._bg_unresolved.values(), key=lambda e: e.since)

    def order_state(self, client_order_id: str) -> OrderState | None:
        """Return what this process knows of an order it sent (None: never sent from here)."""
        return self._sent_state(client_order_id)

    def final_fill(self, client_order_id: str) -> Decimal | None:
        """What a buy of ours had filled when it was seen final (None: nothing, or not seen).

        A cancelled limit buy may have filled in part first: what it bought is a position.
        Remembered as long as the order itself (``FINAL_ORDER_MEMORY_S`` after it ended, at
        most the newest ``_RECENT_FILLS``).
        """
        with self._bg_lock:
            return self._bg_final_fill.get(client_order_id)

    def order_deadline(self, now: float | None = None) -> float:
        """Return the deadline (epoch seconds) an order sent `now` would carry."""
        return (self._bg_clock.time() if now is None else now) + self.order_deadline_s

    def absent_after(self, deadline: float, sent_at: float) -> float:
        """Return when a lookup that finds nothing proves an order with `deadline` absent."""
        if self.enforces_order_deadline:
            return deadline + self.resolution_margin_s
        return max(deadline, sent_at + LOCAL_DEADLINE_FLOOR_S) + self.resolution_margin_s

    def _absent_after(self, request: OrderRequest, now: float) -> float:
        deadline = request.deadline if request.deadline is not None else self.order_deadline(now)
        return self.absent_after(deadline, now)

    def _adopt_or_unresolved(
        self,
        request: OrderRequest,
        evidence: Evidence,
        absent_after: float | None,
        *,
        cause: Exception,
        reason: str,
    ) -> Order:
        """After an ambiguous send: adopt the order if the venue has it, else hold it unresolved."""
        cid = request.client_order_id
        state = next_state(OrderState.SENT, evidence)
        entry = UnresolvedOrder(
            request,
            state,
            self._bg_clock.time(),
            None if state is OrderState.EXISTS else absent_after,
            reason,
        )
        with self._bg_lock:
            self._bg_unresolved[cid] = entry
            self._bg_sent[cid] = state
        with contextlib.suppress(BlockedError):  # it stays "sent" there: as cautious
            self._keep_sent(request, state, entry.absent_after)
        try:
            found = self.get_order(cid)
        except Exception as exc:  # noqa: BLE001 (whatever stopped the lookup, the fate is unknown)
            raise self._unresolved_error(
                cid, entry, entry.absent_after, cause=exc, announce=True
            ) from cause
        self._note_own_sell(request)  # it may have sold: its position may vanish
        if found is not None:
            self._settle_unresolved(cid, OrderState(found.status.value), found)
            log.warning(
                "order %s (%s %s %s) on broker %r failed to confirm (%s) but the broker has it: "
                "adopting it, not resending",
                cid,
                request.side.value,
                request.quantity,
                request.symbol,
                self.broker_name,
                cause,
            )
            return found
        # Found nowhere right after the send: that proves nothing (the venue may accept it later).
        raise self._unresolved_error(
            cid, entry, entry.absent_after, cause=cause, announce=True
        ) from cause

    def _unresolved_error(
        self,
        cid: str,
        entry: UnresolvedOrder | None,
        horizon: float | None,
        *,
        cause: BaseException | None,
        announce: bool = False,
    ) -> OrderUnconfirmedError:
        exists = entry is not None and entry.state is OrderState.EXISTS
        what = (
            f"{entry.request.side.value} {entry.request.quantity} {entry.request.symbol}"
            if entry is not None
            else "journaled order"
        )
        if exists:
            wait = "the venue says it exists: it is resolved only by finding it"
        elif horizon is None:
            wait = "its deadline is not known here: it is resolved by finding it or by reconciling"
        else:
            wait = (
                f"look again after {horizon:.0f} (epoch s): {ABSENT_LOOKUPS_REQUIRED} lookups "
                f"after its deadline that find nothing, {ABSENT_LOOKUP_SPAN_S:g} s apart, "
                "prove it absent"
            )
        log.log(
            logging.CRITICAL if announce else logging.INFO,
            "order %s (%s) on broker %r (account %s) is %s (%s): not resent; %s",
            cid,
            what,
            self.broker_name,
            self.account_id,
            "UNRESOLVED" if announce else "still unresolved",
            cause or "not found yet",
            wait,
        )
        return OrderUnconfirmedError(
            f"order {cid} ({what}) on broker {self.broker_name!r} (account {self.account_id}) is "
            f"unresolved ({cause or 'not found yet'}); it will not be resent: {wait}",
            client_order_id=cid,
            deadline=None if exists else horizon,
            exists=exists,
        )

    def _settle_unresolved(
        self,
        cid: str,
        state: OrderState,
        found: Order | None,
        *,
        proven_after: float | None = None,
    ) -> None:
        with self._bg_lock:
            entry = self._bg_unresolved.pop(cid, None)
            self._bg_absences.pop(cid, None)  # found or proven absent: start again from nothing
            self._bg_adopted.discard(cid)  # what it became is known here first-hand now
            self._bg_sent[cid] = state
            if found is not None and not found.is_final:
                self._bg_live[cid] = found  # adopted and live: exposure until seen final
        self._keep_state(cid, state, proven_after=proven_after)
        if entry is not None:
            log.warning(
                "order %s on broker %r (account %s) resolved: %s",
                cid,
                self.broker_name,
                self.account_id,
                state.value if found is None else f"found {found.status.value}",
            )

    def _sent_state(self, cid: str) -> OrderState | None:
        with self._bg_lock:
            return self._bg_sent.get(cid)

    def _set_sent_state(self, cid: str, state: OrderState) -> None:
        with self._bg_lock:
            self._bg_sent[cid] = state
            self._bg_sent.move_to_end(cid)
            self._forget_oldest()
        self._keep_state(cid, state)

    def _forgettable(self, cid: str, state: OrderState) -> bool:
        """Whether `cid` may leave memory: final, not unresolved, not tracked live."""
        return state in _FORGETTABLE and cid not in self._bg_unresolved and cid not in self._bg_live

    def _forget_oldest(self) -> None:
        """Keep the memory bounded (caller holds the lock), by age and by count.

        Never forgets an order whose outcome is unknown or that is (or may be) open: only
        final ones, first those older than :data:`FINAL_ORDER_MEMORY_S`, then the oldest
        beyond :data:`_REMEMBERED_ORDER_IDS`.
        """
        now = self._bg_clock.monotonic()
        if now >= self._bg_sweep_at:
            self._sweep_final(now)
        overflow = len(self._bg_sent) - _REMEMBERED_ORDER_IDS
        if overflow <= 0:
            return
        for cid, state in list(self._bg_sent.items()):
            if overflow <= 0:
                break
            if self._forgettable(cid, state):
                del self._bg_sent[cid]
                self._bg_final_seen.pop(cid, None)
                self._bg_kept.pop(cid, None)
                self._bg_adopted.discard(cid)
                overflow -= 1

    def _sweep_final(self, now: float) -> None:
        """Forget final orders seen final more than FINAL_ORDER_MEMORY_S ago (lock held).

        Runs at most every eighth of that horizon, so its one walk over the ids is spread over
        many sends; an id is forgotten between 1 and 1.125 horizons after it was first seen
        final, never sooner. Fill times of sells no longer explaining anything go too.
        """
        self._bg_sweep_at = now + FINAL_ORDER_MEMORY_S / 8
        horizon = now - FINAL_ORDER_MEMORY_S
        seen = self._bg_final_seen
        for cid, state in list(self._bg_sent.items()):
            if not self._forgettable(cid, state):
                seen.pop(cid, None)
            elif seen.setdefault(cid, now) <= horizon:
                del self._bg_sent[cid]
                del seen[cid]
                self._bg_kept.pop(cid, None)
                self._bg_adopted.discard(cid)
        explaining = {cid for _, cid in self._bg_sells.values()}
        for cid, at in list(self._bg_filled_at.items()):
            if at <= horizon and cid not in explaining:
                del self._bg_filled_at[cid]
        for cid in [c for c in self._bg_final_fill if c not in self._bg_sent]:
            del self._bg_final_fill[cid]  # forgotten with its order

    def close_position(self, symbol: str) -> Order:
        """Sell the whole position in `symbol` at market (a risk-reducing order)."""
        symbol = parse_symbol(symbol)
        for position in self.get_positions():
            if position.symbol == symbol:
                return self.place_market_order(symbol, Side.SELL, position.quantity)
        raise BrokerRejection(f"no open position in {symbol} on account {self.account_id}")

    # ------------------------------------------------------------------ health and status

    def _call_with_circuit_breaker(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read-only call through the read breaker, with retries (the seed's hook)."""
        return self._bg_read.call_with_circuit_breaker(func, *args, **kwargs)

    @property
    def clock(self) -> Clock:
        """The clock this broker (and its adapter) reads."""
        return self._bg_clock

    @property
    def read_breaker(self) -> BrokerCircuitBreaker:
        """The shared breaker guarding this broker's reads."""
        return self._bg_read

    @property
    def write_breaker(self) -> BrokerCircuitBreaker:
        """The shared breaker guarding this broker's writes."""
        return self._bg_write

    def get_broker_health_state(self) -> str | None:
        """Return the worse of the read and write breakers' health, as its string value."""
        worst = max(
            (
                self._bg_read.get_broker_health_state(),
                self._bg_write.get_broker_health_state(),
            ),
            key=_HEALTH_RANK.__getitem__,
        )
        return worst.value

    def is_trading_allowed(self) -> bool:
        """Return whether new risk may be taken: both breakers must be closed."""
        return self._bg_read.is_trading_allowed() and self._bg_write.is_trading_allowed()

    def add_call_observer(self, observer: CallObserver) -> None:
        """Observe every guarded call's duration and outcome (latency metrics)."""
        self._bg_observers.append(observer)

    @contextmanager
    def _observed(self, scope: str, method: str) -> Iterator[None]:
        """Time a guarded call for the observers; name its API key for the venue's breaker."""
        key = self.api_key_name  # the venue's breaker learns whose answer it judges
        token = None if key is None else CALLING_KEY.set(key)
        try:
            if not self._bg_observers:
                yield
                return
            with self._timed(scope, method):
                yield
        finally:
            if token is not None:
                CALLING_KEY.reset(token)

    @contextmanager
    def _timed(self, scope: str, method: str) -> Iterator[None]:
        started = self._bg_clock.monotonic()
        outcome = "success"
        try:
            yield
        except CircuitOpenError:
            outcome = "rejected"
            raise
        except BrokerRejection:
            outcome = "refused"
            raise
        except BaseException:  # an error, or a read made ahead cancelled on its way
            outcome = "error"
            raise
        finally:
            elapsed = self._bg_clock.monotonic() - started
            for observer in tuple(self._bg_observers):
                try:
                    observer(self.broker_name, scope, method, elapsed, outcome)
                except Exception:
                    log.exception("call observer %r failed", observer)

    def data_quality(self) -> dict[str, int]:
        """Return the counts of bad data received, by ``"<what>.<reason>"``."""
        with self._bg_lock:
            return dict(self._bg_data_quality)

    def get_status(self) -> dict[str, Any]:
        """Return this broker's status: health, trading permission, breakers and data quality."""
        snapshot = self._bg_last_positions
        return {
            "broker": self.broker_name,
            "account_id": self.account_id,
            "health_state": self.get_broker_health_state(),
            "trading_allowed": self.is_trading_allowed(),
            "breakers": {
                "read": self._bg_read.get_status(),
                "write": self._bg_write.get_status(),
            },
            "data_quality": self.data_quality(),
            "positions_age_seconds": (
                None if snapshot is None else snapshot.age(self._bg_clock.monotonic())
            ),
        }

    # ------------------------------------------------------------------ internals

    def _probe_if_due(self, breaker: BrokerCircuitBreaker, *, real_call_is_probe: bool) -> None:
        """Let a cheap read-only call be the half-open probe, never the real call (or an order).

        Without a ``ping()``, a position fetch probes; for a position fetch that is the real
        call itself, so nothing extra is sent.
        """
        if not self.has_ping and real_call_is_probe:
            return
        probe: Callable[[], object] = (
            self._ping_throttled if self.has_ping else self._fetch_positions_checked
        )
        for _ in range(breaker.success_threshold):
            if not breaker.probe_due():
                return
            breaker.call(probe)

    def _throttle(self, call: str) -> None:
        if self._bg_limiter is not None:
            self._bg_limiter.acquire(self.call_weights.get(call, 1.0))

    def _ping_throttled(self) -> object:
        self._throttle("ping")
        return self.ping()

    def _fetch_positions_checked(self) -> list[Position]:
        self._throttle("fetch_positions")
        return self._checked_positions(self.fetch_positions())

    def _checked_positions(self, raw: object) -> list[Position]:
        """The held positions of a raw answer (typed object: adapters may send anything)."""
        if type(raw) is not list and (
            isinstance(raw, str | bytes) or not isinstance(raw, Sequence)
        ):
            raise self._bad_payload("positions", raw, "not_a_list")
        positions: list[Position] = []
        seen: set[str] = set()
        for item in raw:
            if not isinstance(item, Position):
                raise self._bad_payload("positions", item, "not_a_position")
            symbol = item.symbol
            if symbol in seen:
                raise self._bad_payload("positions", item, "duplicate_symbol")
            seen.add(symbol)
            if item.quantity > _ZERO:
                positions.append(item)
        return positions

    async def _athrottle(self, call: str) -> None:
        if self._bg_limiter is not None:
            await self._bg_limiter.aacquire(self.call_weights.get(call, 1.0))

    async def _afetch_positions_raw(self, answer_within_s: float | None) -> list[Position]:
        clock = self._bg_clock
        raw: object = await _within(
            self.afetch_positions(), answer_within_s, "a position read", clock
        )
        return self._checked_positions(raw)

    async def _afetch_prices_raw(
        self, symbols: list[str], answer_within_s: float | None
    ) -> Mapping[str, object]:
        clock = self._bg_clock
        raw: object = await _within(
            self.afetch_prices(symbols), answer_within_s, "a price read", clock
        )
        if not isinstance(raw, Mapping):
            raise self._bad_payload("prices", raw, "not_a_mapping")
        return raw

    def _fetch_prices_shared(self, wanted: list[str]) -> Mapping[str, Received]:
        """The venue's answer for `wanted`: each value as given, and when it arrived.

        Shared by the venue's accounts when the service gave a board; otherwise this account's
        own call, stamped now. A symbol absent from it got no value.
        """
        board = self._bg_prices
        if board is None:
            raw = self._bg_read.call_with_circuit_breaker(self._fetch_prices_checked, wanted)
            now = self._bg_clock.time()
            return {s: Received(raw[s], now) for s in wanted if s in raw}
        return board.get(
            wanted,
            lambda asked: self._bg_read.call_with_circuit_breaker(
                self._fetch_prices_checked, asked
            ),
        )

    def _fetch_prices_checked(self, symbols: list[str]) -> Mapping[str, object]:
        self._throttle("fetch_prices")
        raw: object = self.fetch_prices(symbols)
        if not isinstance(raw, Mapping):
            raise self._bad_payload("prices", raw, "not_a_mapping")
        return raw

    def _fetch_order_checked(self, client_order_id: str) -> Order | None:
        self._throttle("fetch_order")
        order: object = self.fetch_order(client_order_id)
        if order is None:
            return None
        if not isinstance(order, Order):
            raise self._bad_payload("order", order, "not_an_order")
        if order.client_order_id != client_order_id:
            raise self._bad_payload("order", order, "client_order_id_mismatch")
        return order

    def _submit_checked(self, request: OrderRequest) -> Order:
        self._throttle("submit_order")
        order: object = self.submit_order(request)
        if not isinstance(order, Order):
            raise self._bad_payload("order", order, "not_an_order")
        if (order.client_order_id, order.symbol, order.side) != (
            request.client_order_id,
            request.symbol,
            request.side,
        ):
            raise self._bad_payload("order", order, "does_not_match_request")
        return order

    def _bad_payload(self, what: str, value: object, reason: str) -> InvalidBrokerData:
        self._count_bad_data(what, reason)
        log.error(
            "broker %r (account %s) sent an invalid %s payload (%s): %r; the call counts as "
            "failed and nothing from it is used",
            self.broker_name,
            self.account_id,
            what,
            reason,
            value,
        )
        return InvalidBrokerData(what, value, reason)

    def _count_bad_data(self, what: str, reason: str) -> None:
        with self._bg_lock:
            self._bg_data_quality[f"{what}.{reason}"] += 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.broker_name!r}, account_id={self.account_id!r})"


async def _within(call: Awaitable[T], seconds: float | None, what: str, clock: Clock) -> T:
    """Await `call`, abandoning it after `seconds` on `clock` as a transient failure.

    On the system clock the loop's own timer does it; on another clock (a test's, a
    simulation's) the answer races ``clock.asleep(seconds)``, so a read that takes two
    simulated minutes is abandoned there too.
    """
    if seconds is None:
        return await call
    if isinstance(clock, SystemClock):
        try:
            async with asyncio.timeout(seconds):  # no task of its own (wait_for makes one)
                return await call
        except TimeoutError:
            raise _late(what, seconds) from None
    answer = asyncio.ensure_future(call)
    timer = asyncio.ensure_future(clock.asleep(seconds))
    try:
        await asyncio.wait({answer, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (timer, answer):
            if not task.done():
                task.cancel()
        await asyncio.gather(timer, answer, return_exceptions=True)
    if answer.cancelled():
        raise _late(what, seconds)
    return answer.result()


def _late(what: str, seconds: float) -> TransientBrokerError:
    return TransientBrokerError(f"{what} made ahead got no answer within {seconds:g} s: abandoned")


class _NotSent(Exception):  # noqa: N818 (a signal, not an error anyone sees)
    """A read made ahead found the circuit open after its rate-limit slot: nothing was sent."""


def _closed(breaker: BrokerCircuitBreaker) -> bool:
    """Whether the circuit is closed now (read again: a wait may have changed it)."""
    return breaker.state is CircuitState.CLOSED


class _Attempts:
    """The attempts of one read made ahead, each with its rate-limit slot.

    The first attempt's slot was taken before the breaker was asked; each retry takes its own.
    """

    __slots__ = ("_broker", "_call", "_first")

    def __init__(self, broker: BaseBroker, call: str) -> None:
        self._broker = broker
        self._call = call
        self._first = True

    async def _slot(self) -> None:
        if self._first:
            self._first = False
        else:
            await self._broker._athrottle(self._call)  # noqa: SLF001 (the broker's own)

    async def positions(self, answer_within_s: float | None) -> list[Position]:
        await self._slot()
        return await self._broker._afetch_positions_raw(answer_within_s)  # noqa: SLF001

    async def prices(
        self, symbols: list[str], answer_within_s: float | None
    ) -> Mapping[str, object]:
        await self._slot()
        return await self._broker._afetch_prices_raw(symbols, answer_within_s)  # noqa: SLF001


_STEP_READS_AHEAD: ContextVar[bool] = ContextVar("brokerguard_step_reads_ahead", default=False)


@contextmanager
def step_reads() -> Iterator[None]:
    """Mark the calls in the block as an enforcement step's: they take reads made ahead."""
    token = _STEP_READS_AHEAD.set(True)
    try:
        yield
    finally:
        _STEP_READS_AHEAD.reset(token)


@functools.cache
def _async_twin(cls: type[BaseBroker], name: str) -> bool:
    """Whether `cls` has an async ``a<name>`` defined by the class that defines its ``<name>``."""
    owner = next((k for k in cls.__mro__ if f"a{name}" in vars(k)), BaseBroker)
    return owner is not BaseBroker and getattr(cls, name) is getattr(owner, name)


@dataclass(frozen=True, slots=True)
class _PrimedRead:
    """A position read an enforcement pass made ahead, waiting for the account's step."""

    started: float
    """Monotonic time the read started (the snapshot's stamp)."""
    wall_started: float
    ended: float
    """Wall time the answer arrived."""
    positions: list[Position]
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class _StillUnresolved:
    """A lookup that settled nothing: when one can next decide, and whether to look again now.

    ``confirm`` is set when the lookup found nothing after the deadline without confirming it:
    :meth:`BaseBroker.resolve_order` then waits until ``deadline`` and looks once more.
    """

    deadline: float | None
    confirm: bool


def _uuid_client_order_id() -> str:
    return str(uuid.uuid4())


def _not_processed(exc: BaseException) -> bool:
    """Whether a send's failure proves the venue did not process it (safe to send again).

    An open circuit sent nothing; a rate-limit refusal and a refused nonce are answered at the
    venue's door, before the order is read. Errors say so with a true ``not_processed``.
    """
    return isinstance(exc, CircuitOpenError | RateLimitedError) or bool(
        getattr(exc, "not_processed", False)
    )


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _quote_of(symbol: str, received: Received | None) -> Quote:
    """The usable quote the venue's answer gives for `symbol`, or InvalidBrokerData (why).

    No answer is MISSING. A value without a venue timestamp is stamped when the answer arrived
    (a shared answer may be older than this read). The quote is kept on the answer, so the
    venue's other accounts take it as it is.
    """
    value = None if received is None else received.value
    if isinstance(value, Quote):
        if value.symbol != symbol:
            # A quote of another symbol under this one's key is garbage, not a price.
            raise InvalidBrokerData("price", value, PriceProblem.ABSURD, symbol=symbol)
        quote = value
    else:
        price = parse_price(value, symbol=symbol)  # None (no answer): MISSING
        assert received is not None  # noqa: S101 (parse_price refused None above)
        quote = Quote(symbol, price, received.received_at, stamped_on_receipt=True)
    if received is not None:
        received.quote = quote
    return quote
