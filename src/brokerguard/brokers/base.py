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
import logging
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from brokerguard.clock import SYSTEM_CLOCK, Clock
from brokerguard.errors import (
    BrokerError,
    BrokerRejection,
    CircuitOpenError,
    FatalBrokerError,
    InvalidBrokerData,
)
from brokerguard.models import (
    Order,
    OrderRequest,
    Position,
    PriceProblem,
    Quote,
    Side,
    parse_decimal,
    parse_price,
    parse_side,
    parse_symbol,
)
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.ratelimit import RateLimiter
from brokerguard.resilience.registry import get_circuit_breaker
from brokerguard.resilience.state import BrokerHealthState

__all__ = [
    "BaseBroker",
    "OrderUnconfirmedError",
    "PositionSnapshot",
    "PriceCheck",
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
"""Client order ids this process has sent, remembered so a caller's retry is looked up first."""


class OrderUnconfirmedError(BrokerError):
    """An order may or may not be at the broker, and the broker could not be asked.

    Never resend it: reconcile with :meth:`BaseBroker.get_order` using
    :attr:`client_order_id` once the broker answers again.
    """

    def __init__(self, message: str, *, client_order_id: str) -> None:
        super().__init__(message)
        self.client_order_id = client_order_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unconfirmed, (str(self), self.client_order_id))


def _rebuild_unconfirmed(message: str, client_order_id: str) -> OrderUnconfirmedError:
    return OrderUnconfirmedError(message, client_order_id=client_order_id)


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
    """

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
    ) -> None:
        self.broker_name = parse_symbol(broker_name, field="broker_name")
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
        self._bg_sent_ids: OrderedDict[str, None] = OrderedDict()
        self._bg_last_positions: PositionSnapshot | None = None
        self._bg_observers: list[CallObserver] = []
        self._bg_limiter = rate_limiter

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

    def ping(self) -> object:
        """Make a cheap read-only call (server time, say); override when the broker has one."""
        raise NotImplementedError

    @property
    def has_ping(self) -> bool:
        """Whether the adapter provides :meth:`ping`."""
        return type(self).ping is not BaseBroker.ping

    # ------------------------------------------------------------------ guarded reads

    def get_positions(self) -> list[Position]:
        """Fetch and validate the open positions; raise rather than ever answer 'none' on failure.

        Zero-quantity entries are dropped (they are not exposure); a duplicated symbol or a
        non-position in the payload makes the whole payload invalid.
        """
        # Stamped with the time the fetch *started*: its content is at least that new, and a
        # slower concurrent fetch that started earlier can never replace a newer snapshot.
        started = self._bg_clock.monotonic()
        with self._observed("read", "get_positions"):
            self._probe_if_due(self._bg_read, real_call_is_probe=True)
            positions = self._bg_read.call_with_circuit_breaker(self._fetch_positions_checked)
        snapshot = PositionSnapshot(tuple(positions), started)
        with self._bg_lock:
            last = self._bg_last_positions
            if last is None or last.fetched_at <= started:
                self._bg_last_positions = snapshot
        return list(positions)

    def last_position_snapshot(self) -> PositionSnapshot | None:
        """Return the latest successful position fetch, or None if there never was one."""
        return self._bg_last_positions

    def check_prices(self, symbols: Iterable[str]) -> PriceCheck:
        """Fetch prices for `symbols` in one batched call and sort them into usable or not.

        A symbol whose price is missing, zero, negative, NaN, non-numeric or absurd gets no
        quote, a reason in ``problems``, a CRITICAL log line and a data-quality count. Nothing
        is ever substituted for it.
        """
        wanted = list(dict.fromkeys(parse_symbol(s) for s in symbols))
        if not wanted:
            return PriceCheck({}, {})
        with self._observed("read", "check_prices"):
            self._probe_if_due(self._bg_read, real_call_is_probe=False)
            raw = self._bg_read.call_with_circuit_breaker(self._fetch_prices_checked, wanted)
        now = self._bg_clock.time()
        quotes: dict[str, Quote] = {}
        problems: dict[str, PriceProblem] = {}
        for symbol in wanted:
            value = raw.get(symbol)
            try:
                quotes[symbol] = (
                    value if isinstance(value, Quote) else Quote(symbol, parse_price(value), now)
                )
            except InvalidBrokerData as exc:
                problems[symbol] = PriceProblem(exc.reason)
                self._count_bad_data("price", exc.reason)
                log.critical(
                    "price for %s from broker %r (account %s) is unusable: %s (got %r); no "
                    "fallback price is used, the symbol cannot be valued until a valid price "
                    "arrives",
                    symbol,
                    self.broker_name,
                    self.account_id,
                    exc.reason,
                    value,
                )
        return PriceCheck(quotes, problems)

    def get_prices(self, symbols: Iterable[str]) -> dict[str, Decimal | None]:
        """Return each symbol's usable price, or None where the broker gave no usable one."""
        wanted = list(dict.fromkeys(parse_symbol(s) for s in symbols))  # request order, once each
        check = self.check_prices(wanted)
        return {symbol: check.price(symbol) for symbol in wanted}

    def get_current_price(self, symbol: str) -> Decimal | None:
        """Return the usable price of one symbol, or None (never a fallback)."""
        return self.check_prices([symbol]).price(parse_symbol(symbol))

    def get_order(self, client_order_id: str) -> Order | None:
        """Look an order up by its client order id (reads breaker, with retries)."""
        client_order_id = parse_symbol(client_order_id, field="client_order_id")
        with self._observed("read", "get_order"):
            self._probe_if_due(self._bg_read, real_call_is_probe=False)
            return self._bg_read.call_with_circuit_breaker(
                self._fetch_order_checked, client_order_id
            )

    # ------------------------------------------------------------------ guarded writes

    def place_market_order(
        self,
        symbol: str,
        side: Side | str,
        quantity: Decimal | int | str,
        *,
        client_order_id: str | None = None,
    ) -> Order:
        """Send a market order at most once per client order id.

        The id is generated when not given. If this process already sent that id (a caller
        retrying), or when a submit fails in a way that may have reached the broker, the order
        is looked up first; it is (re)sent only when the broker proves it absent. If the broker
        cannot be asked, :class:`OrderUnconfirmedError` is raised: never resend then.
        """
        with self._observed("write", "place_market_order"):
            return self._place_market_order(symbol, side, quantity, client_order_id=client_order_id)

    def _place_market_order(
        self,
        symbol: str,
        side: Side | str,
        quantity: Decimal | int | str,
        *,
        client_order_id: str | None,
    ) -> Order:
        """The body of :meth:`place_market_order` (observed by the wrapper)."""
        symbol = parse_symbol(symbol)
        request = OrderRequest(
            symbol,
            parse_side(side),
            parse_decimal(quantity, field="quantity", allow_zero=False, symbol=symbol),
            client_order_id or self._bg_new_cid(),
        )
        cid = request.client_order_id
        if self._was_sent(cid):
            existing = self._lookup_after_failure(cid, cause=None)
            if existing is not None:
                return existing
        attempt = 0
        policy = self._bg_write.retry_policy
        slept = 0.0
        while True:
            attempt += 1
            self._probe_if_due(self._bg_write, real_call_is_probe=False)
            self._remember_sent(cid)
            try:
                return self._bg_write.call(self._submit_checked, request)
            except (CircuitOpenError, BrokerRejection, FatalBrokerError):
                # Not sent, refused, or refused at the door (bad key): nothing to look up.
                raise
            except Exception as exc:
                existing = self._lookup_after_failure(cid, cause=exc)
                if existing is not None:
                    log.warning(
                        "order %s (%s %s %s) on broker %r failed to confirm (%s) but the broker "
                        "has it: returning it, not resending",
                        cid,
                        request.side.value,
                        request.quantity,
                        request.symbol,
                        self.broker_name,
                        exc,
                    )
                    return existing
                outcome = self._bg_write.classify(exc)
                delay = policy.next_delay(attempt, outcome, exc, slept=slept)
                if delay is None:
                    raise
                log.warning(
                    "order %s on broker %r failed (%s) and the broker proves it absent: "
                    "resending in %.1fs",
                    cid,
                    self.broker_name,
                    exc,
                    delay,
                )
                self._bg_clock.sleep(delay)
                slept += delay

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
        if not self._bg_observers:
            yield
            return
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
        except Exception:
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

    def _throttle(self) -> None:
        if self._bg_limiter is not None:
            self._bg_limiter.acquire()

    def _ping_throttled(self) -> object:
        self._throttle()
        return self.ping()

    def _fetch_positions_checked(self) -> list[Position]:
        self._throttle()
        raw: object = self.fetch_positions()  # typed object: adapters may send anything
        if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
            raise self._bad_payload("positions", raw, "not_a_list")
        positions: list[Position] = []
        seen: set[str] = set()
        for item in raw:
            if not isinstance(item, Position):
                raise self._bad_payload("positions", item, "not_a_position")
            if item.symbol in seen:
                raise self._bad_payload("positions", item, "duplicate_symbol")
            seen.add(item.symbol)
            if item.quantity > 0:
                positions.append(item)
        return positions

    def _fetch_prices_checked(self, symbols: list[str]) -> Mapping[str, object]:
        self._throttle()
        raw: object = self.fetch_prices(symbols)
        if not isinstance(raw, Mapping):
            raise self._bad_payload("prices", raw, "not_a_mapping")
        return raw

    def _fetch_order_checked(self, client_order_id: str) -> Order | None:
        self._throttle()
        order: object = self.fetch_order(client_order_id)
        if order is None:
            return None
        if not isinstance(order, Order):
            raise self._bad_payload("order", order, "not_an_order")
        if order.client_order_id != client_order_id:
            raise self._bad_payload("order", order, "client_order_id_mismatch")
        return order

    def _submit_checked(self, request: OrderRequest) -> Order:
        self._throttle()
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

    def _lookup_after_failure(self, cid: str, *, cause: Exception | None) -> Order | None:
        try:
            return self.get_order(cid)
        except Exception as exc:  # noqa: BLE001 (whatever stopped the lookup, the fate is unknown)
            raise OrderUnconfirmedError(
                f"order {cid} on broker {self.broker_name!r} (account {self.account_id}) may "
                f"have been sent ({cause or 'sent before'}) and cannot be looked up ({exc}); "
                "it will not be resent: reconcile it with get_order() once the broker answers",
                client_order_id=cid,
            ) from (cause or exc)

    def _was_sent(self, cid: str) -> bool:
        with self._bg_lock:
            return cid in self._bg_sent_ids

    def _remember_sent(self, cid: str) -> None:
        with self._bg_lock:
            self._bg_sent_ids[cid] = None
            self._bg_sent_ids.move_to_end(cid)
            while len(self._bg_sent_ids) > _REMEMBERED_ORDER_IDS:
                self._bg_sent_ids.popitem(last=False)

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


def _uuid_client_order_id() -> str:
    return str(uuid.uuid4())
