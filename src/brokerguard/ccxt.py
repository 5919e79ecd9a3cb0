"""Guard a ccxt exchange in one line: ``exchange = guard(ccxt.kraken({...}), max_positions=8)``.

:func:`guard` returns an instance of a subclass of the exchange's own class (``isinstance(g,
ccxt.kraken)`` holds; ccxt binds its camelCase aliases on the class and calls its snake_case
methods internally, so a proxy would miss paths). Every ccxt method keeps its name, signature
and return shape; these go through brokerguard, under both names (``create_order`` and
``createOrder``):

- reads: ``fetch_balance``, ``fetch_positions``, ``fetch_ticker(s)``, ``fetch_order(s)``,
  ``fetch_open_orders``, ``fetch_closed_orders`` go through the read breaker with retries. A
  failed or implausible balance or position read raises (never an empty answer); a ticker's
  unusable price (0, negative, NaN, stale) is removed, never replaced, and the symbol is paused
  as unvaluable until a valid price returns.
- writes: ``create_order`` (and every ccxt helper that calls it: ``create_limit_buy_order``,
  ``create_market_sell_order`` ...) fixes a client order id, passes risk-increasing orders
  through the gate (the slot stays taken until the order is resolved), lets reductions through
  while the account is REDUCING or HALTED, and sends each order at most once (ccxt's own
  ``maxRetriesOnFailure`` is forced to 0). ``cancel_order``, ``cancel_orders`` and
  ``cancel_all_orders`` cancel through the guarded broker and verify by a lookup.
  ``create_orders`` and ``edit_order`` are refused (``ccxt.NotSupported``): a batch or an amend
  would bypass the per-order checks.

Exceptions are ccxt's kind, so a bot's existing ``except`` clauses do the right thing; each is
also the brokerguard error it stands for::

    ccxt.BaseError
    ├── ccxt.ExchangeError
    │   ├── ccxt.InvalidOrder
    │   │   └── OrderRefused           brokerguard refused the order: nothing was sent
    │   │       │                      (also BlockedError; .decision when the gate said no)
    │   │       └── EntryRefused       the gate refused a risk-increasing order (also
    │   │                              EntryDenied): .decision.reason, .decision.code
    │   ├── OrderUnresolved            the order's outcome is unknown: never resend it (also
    │   │                              OrderUnconfirmedError; NOT a NetworkError, so no retry
    │   │                              loop resends it)
    │   └── PositionsImplausible       a balance read lost positions nothing explains (also
    │                                  PositionsImplausibleError)
    └── ccxt.OperationFailed
        ├── ccxt.NetworkError
        │   └── ccxt.ExchangeNotAvailable
        │       └── CircuitOpen        the circuit is open: nothing was sent (also
        │                              CircuitOpenError; .next_probe_in)
        └── ccxt.BadResponse
            └── InvalidResponse        the venue answered something that is not data (also
                                       InvalidBrokerData)

Any other failure is ccxt's own exception, as the exchange raised it (after brokerguard's
retries for reads).

The guarded broker (``g.brokerguard.broker``) is a :class:`~brokerguard.brokers.ccxt.CcxtBroker`
over the same instance; its raw calls go to the exchange class's unguarded methods. A
``ccxt.async_support`` exchange is guarded the same way: its guarded methods are coroutines that
run the same (synchronous) logic in a worker thread, each raw call awaited on the caller's
event loop, so the at-most-once rules are one implementation for both.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, NoReturn

import ccxt

from brokerguard.brokers.ccxt import COINBASE, CcxtBroker, driving_loop, in_raw_call
from brokerguard.clock import Clock
from brokerguard.errors import (
    BlockedError,
    BrokerGuardError,
    BrokerRejection,
    CircuitOpenError,
    ConfigurationError,
    FatalBrokerError,
    InvalidBrokerData,
    OrderUnconfirmedError,
    PositionsImplausibleError,
    RateLimitedError,
    TransientBrokerError,
)
from brokerguard.models import (
    Order,
    OrderRequest,
    OrderType,
    Position,
    PriceProblem,
    Side,
    TimeInForce,
    parse_price,
)
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.risk.cap import PositionCapEnforcer
from brokerguard.risk.gate import Decision, EntryDenied, TradingGate
from brokerguard.risk.valuation import PAUSE_PREFIX
from brokerguard.store.state import StateStore, open_store

__all__ = [
    "CircuitOpen",
    "EntryRefused",
    "Guard",
    "InvalidResponse",
    "OrderRefused",
    "OrderUnresolved",
    "PositionsImplausible",
    "as_ccxt_error",
    "guard",
    "guarded_class",
]

log = logging.getLogger("brokerguard.ccxt")

GUARD_ACTOR: Final = "ccxt-guard"
_CCXT_ERROR: Final[type[BaseException]] = ccxt.BaseError
"""The actor named in the pauses the guard writes (unvaluable tickers)."""


# --------------------------------------------------------------------------- exceptions


# ccxt is untyped (its classes are Any to mypy), and names its errors without an Error suffix.
class CircuitOpen(ccxt.ExchangeNotAvailable, CircuitOpenError):  # type: ignore[misc]  # noqa: N818
    """The broker's circuit is open: the call was rejected and nothing was sent.

    A ``ccxt.NetworkError``: a bot's retry loop may call again later (``next_probe_in``
    seconds until the breaker probes the venue).
    """

    def __str__(self) -> str:
        return CircuitOpenError.__str__(self)


class OrderRefused(ccxt.InvalidOrder, BlockedError):  # type: ignore[misc]  # noqa: N818 (ccxt)
    """brokerguard refused the order before sending it (nothing reached the venue).

    ``decision`` is the gate's answer when the gate refused (a paused symbol for an exit), else
    None (a term the venue does not take, an order below its minimum, an unresolved order in
    the same symbol and side).
    """

    def __init__(self, message: str, *, decision: Decision | None = None) -> None:
        Exception.__init__(self, message)
        self.decision = decision

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_refused, (type(self), str(self), self.decision))


class EntryRefused(OrderRefused, EntryDenied):
    """The gate refused a risk-increasing order; ``decision`` says why (nothing was sent).

    The reason code (``POSITION_CAP_REACHED``, ``POSITIONS_UNKNOWN``, ``ACCOUNT_HALTED`` ...) is
    ``decision.code`` and in the message.
    """

    decision: Decision  # never None here

    def __init__(self, decision: Decision, *, account_id: str, symbol: str) -> None:
        EntryDenied.__init__(self, decision, account_id=account_id, symbol=symbol)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_entry, (self.decision, self.account_id, self.symbol))


class OrderUnresolved(ccxt.ExchangeError, OrderUnconfirmedError):  # type: ignore[misc]  # noqa: N818
    """The order may have reached the venue and its outcome is unknown: never resend it.

    Deliberately not a ``ccxt.NetworkError``: client libraries (ccxt itself, freqtrade's
    retrier) resend on those. The order stays unresolved until it is found or a lookup after
    ``deadline`` proves it absent; meanwhile its slot stays taken and its symbol is not
    entered again. Attributes as for :class:`~brokerguard.errors.OrderUnconfirmedError`.
    """

    def __init__(
        self,
        message: str,
        *,
        client_order_id: str,
        deadline: float | None = None,
        exists: bool = False,
    ) -> None:
        OrderUnconfirmedError.__init__(
            self, message, client_order_id=client_order_id, deadline=deadline, exists=exists
        )


class PositionsImplausible(ccxt.ExchangeError, PositionsImplausibleError):  # type: ignore[misc]  # noqa: N818
    """A successful balance read lost positions that nothing explains: it is not believed."""

    def __init__(
        self, message: str, *, missing: tuple[str, ...], agreeing: int, needed: int
    ) -> None:
        PositionsImplausibleError.__init__(
            self, message, missing=missing, agreeing=agreeing, needed=needed
        )


class InvalidResponse(ccxt.BadResponse, InvalidBrokerData):  # type: ignore[misc]
    """The venue answered with something that is not data (``field``, ``value``, ``reason``)."""

    def __init__(
        self, field: str, value: object, reason: str, *, symbol: str | None = None
    ) -> None:
        InvalidBrokerData.__init__(self, field, value, reason, symbol=symbol)


def _rebuild_refused(
    cls: type[OrderRefused], message: str, decision: Decision | None
) -> OrderRefused:
    return cls(message, decision=decision)


def _rebuild_entry(decision: Decision, account_id: str, symbol: str) -> EntryRefused:
    return EntryRefused(decision, account_id=account_id, symbol=symbol)


def as_ccxt_error(exc: BaseException) -> BaseException:  # noqa: PLR0911 (one answer per kind)
    """Return the ccxt-kind exception a guarded exchange raises for `exc` (the one seam back).

    brokerguard's own decisions become the classes above; a failure that came from ccxt is
    handed back as ccxt raised it (brokerguard's translation is only its ``__context__``);
    anything else keeps its type.
    """
    if isinstance(exc, _CCXT_ERROR):
        return exc
    if isinstance(exc, EntryDenied):
        return EntryRefused(exc.decision, account_id=exc.account_id, symbol=exc.symbol)
    if isinstance(exc, CircuitOpenError):
        return CircuitOpen(exc.broker, exc.next_probe_in, exc.scope)
    if isinstance(exc, OrderUnconfirmedError):
        return OrderUnresolved(
            str(exc),
            client_order_id=exc.client_order_id,
            deadline=exc.deadline,
            exists=exc.exists,
        )
    if isinstance(exc, PositionsImplausibleError):
        return PositionsImplausible(
            str(exc), missing=exc.missing, agreeing=exc.agreeing, needed=exc.needed
        )
    if isinstance(exc, BlockedError):
        return OrderRefused(str(exc))
    cause = exc.__cause__
    if isinstance(exc, BrokerGuardError) and isinstance(cause, _CCXT_ERROR):
        return cause
    return _without_ccxt_cause(exc)


def _without_ccxt_cause(exc: BaseException) -> BaseException:
    if isinstance(exc, InvalidBrokerData):
        return InvalidResponse(exc.field, exc.value, exc.reason, symbol=exc.symbol)
    if isinstance(exc, BrokerRejection):
        return OrderRefused(str(exc))  # refused by the adapter before sending
    kinds: tuple[tuple[type[BrokerGuardError], type[BaseException]], ...] = (
        (RateLimitedError, ccxt.RateLimitExceeded),
        (TransientBrokerError, ccxt.ExchangeNotAvailable),
        (FatalBrokerError, ccxt.AuthenticationError),
    )
    for ours, theirs in kinds:
        if isinstance(exc, ours):
            return theirs(str(exc))
    if isinstance(exc, BrokerGuardError):
        plain: BaseException = ccxt.ExchangeError(str(exc))
        return plain
    return exc


@contextmanager
def _ccxt_errors() -> Iterator[None]:
    """Raise what escapes the block as :func:`as_ccxt_error` says."""
    try:
        yield
    except Exception as exc:
        translated = as_ccxt_error(exc)
        if translated is exc:
            raise
        if isinstance(translated, ccxt.BaseError) and translated is exc.__cause__:
            raise translated from None
        raise translated from exc


# --------------------------------------------------------------------------- the guard


_CLIENT_ID_KEYS: Final = ("clientOrderId", "client_order_id", "cl_ord_id")
_RETRY_KEYS: Final = ("maxRetriesOnFailure", "defaultMaxRetriesOnFailure")
_TERM_KEYS: Final = frozenset(
    {
        *_CLIENT_ID_KEYS,
        *_RETRY_KEYS,
        "timeInForce",
        "timeinforce",
        "postOnly",
        "post_only",
        "reduceOnly",
        "reduce_only",
        "expiretm",
        "end_time",
        "deadline",
    }
)
"""ccxt params brokerguard reads into the order (the rest travel with it unchanged)."""
_COST_KEYS: Final = ("cost", "quoteOrderQty")
_PRICE_FIELDS: Final = ("last", "close", "bid", "ask")


class Guard:
    """What guards one exchange: ``g.brokerguard``.

    Attributes:
        broker: the guarded :class:`~brokerguard.brokers.ccxt.CcxtBroker` over the exchange.
        gate: the :class:`~brokerguard.risk.gate.TradingGate` every entry passes.
        enforcer: the :class:`~brokerguard.risk.cap.PositionCapEnforcer` (run it with
            :meth:`enforce`, e.g. every minute, or run the brokerguard service).
        store: where halts, pauses and audit records live.
        max_quote_age: seconds after which a ticker with a timestamp is stale.
    """

    def __init__(
        self,
        exchange: Any,
        *,
        broker: CcxtBroker,
        gate: TradingGate,
        enforcer: PositionCapEnforcer,
        store: StateStore,
        max_quote_age: float,
    ) -> None:
        self.exchange = exchange
        self.broker = broker
        self.gate = gate
        self.enforcer = enforcer
        self.store = store
        self.max_quote_age = max_quote_age

    # ------------------------------------------------------------------ the surface

    @property
    def breakers(self) -> Mapping[str, BrokerCircuitBreaker]:
        """The broker's read and write breakers, by scope."""
        return {"read": self.broker.read_breaker, "write": self.broker.write_breaker}

    @property
    def account_id(self) -> str:
        """The account this guard protects."""
        return self.broker.account_id

    @property
    def clock(self) -> Clock:
        """The clock the guard reads."""
        return self.broker.clock

    def status(self) -> dict[str, Any]:
        """Return the account's state: trading state, cap, breakers, unresolved orders, pauses.

        Read from memory and the store only: nothing is sent to the venue.
        """
        snapshot = self.broker.last_position_snapshot()
        try:
            paused: dict[str, str] | None = self.store.paused_symbol_reasons(self.account_id)
            halt = self.store.get_halt(self.account_id)
            halted: dict[str, Any] | None = (
                None if halt is None else {"reason": halt.reason, "source": halt.source}
            )
            store_ok = True
        except BrokerGuardError:
            paused, halted, store_ok = None, None, False
        return {
            "account_id": self.account_id,
            "trading_state": self.gate.trading_state().value,
            "max_positions": self.gate.max_positions,
            "positions": None if snapshot is None else [p.symbol for p in snapshot.positions],
            "open_orders": [o.client_order_id for o in self.broker.known_open_orders()],
            "unresolved_orders": [o.as_dict() for o in self.broker.unresolved_orders()],
            "paused_symbols": paused,
            "halt": halted,
            "store_available": store_ok,
            "broker": self.broker.get_status(),
        }

    def enforce(self) -> tuple[bool, dict[str, Any]]:
        """Run one cap enforcement (see :meth:`PositionCapEnforcer.enforce_cap`)."""
        return self.enforcer.enforce_cap()

    def resolve(self) -> dict[str, str]:
        """Look up every order of unknown outcome; return client order id -> state now."""
        return self.broker.resolve_unresolved()

    # ------------------------------------------------------------------ reads

    def fetch_balance(self, params: Mapping[str, Any] | None = None) -> Any:
        """Return ccxt's balance, judged as the account's positions (raises if not believed)."""
        with _ccxt_errors(), self.broker.balance_params(dict(params or {})):
            self.broker.get_positions()
            balance = self.broker.last_balance()
            if balance is None:  # pragma: no cover (a believed read always stores its balance)
                raise InvalidBrokerData("balance", None, "missing")
            return balance

    def fetch_positions(
        self, symbols: Sequence[str] | None = None, params: Mapping[str, Any] | None = None
    ) -> list[Any]:
        """Return the spot holdings brokerguard counts as ccxt positions (long, in base units).

        Never empty on failure: a failed or implausible read raises.
        """
        del params  # the holdings come from the balance, which takes none here
        with _ccxt_errors():
            positions = self.broker.get_positions()
            wanted = None if symbols is None else {str(s) for s in symbols}
            return [self._position(p) for p in positions if wanted is None or p.symbol in wanted]

    def _position(self, position: Position) -> Any:
        now_ms = int(self.clock.time() * 1000)
        return self.exchange.safe_position(
            {
                "info": {"symbol": position.symbol, "quantity": str(position.quantity)},
                "id": None,
                "symbol": position.symbol,
                "timestamp": now_ms,
                "datetime": self.exchange.iso8601(now_ms),
                "side": "long",
                "contracts": float(position.quantity),  # ccxt's shape; exact in info
                "contractSize": 1,
                "marginMode": None,
                "hedged": False,
            }
        )

    def fetch_ticker(self, symbol: str, params: Mapping[str, Any] | None = None) -> Any:
        """Return ccxt's ticker with every unusable price set to None (and the symbol paused)."""
        with _ccxt_errors():
            ticker = self.broker.read("fetch_ticker", symbol, dict(params or {}), private=False)
            if not isinstance(ticker, Mapping):
                raise InvalidBrokerData("ticker", ticker, "not_a_mapping")
            cleaned, problem = self._judge(symbol, ticker)
            self._sync_pauses({symbol: problem}, {symbol: cleaned.get("last")})
            return cleaned

    def fetch_tickers(
        self, symbols: Sequence[str] | None = None, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Return ccxt's tickers less those with an unusable price (their symbols are paused)."""
        with _ccxt_errors():
            raw = self.broker.read("fetch_tickers", symbols, dict(params or {}), private=False)
            if not isinstance(raw, Mapping):
                raise InvalidBrokerData("tickers", raw, "not_a_mapping")
            kept: dict[str, Any] = {}
            problems: dict[str, str | None] = {}
            prices: dict[str, Any] = {}
            for symbol, ticker in raw.items():
                if not isinstance(ticker, Mapping):
                    problems[str(symbol)] = PriceProblem.MISSING.value
                    continue
                cleaned, problem = self._judge(str(symbol), ticker)
                problems[str(symbol)] = problem
                prices[str(symbol)] = cleaned.get("last")
                if problem is None:
                    kept[str(symbol)] = cleaned
            self._sync_pauses(problems, prices)
            return kept

    def _judge(self, symbol: str, ticker: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The ticker with unusable prices removed, and why its last price is unusable."""
        cleaned = dict(ticker)
        problems: dict[str, str] = {}
        for key in _PRICE_FIELDS:
            value = cleaned.get(key)
            if value is None:
                continue
            reason = _price_problem(value)
            if reason is not None:
                problems[key] = reason
                cleaned[key] = None
        stamp = cleaned.get("timestamp")
        age = None
        if isinstance(stamp, int | float) and not isinstance(stamp, bool) and math.isfinite(stamp):
            age = self.clock.time() - stamp / 1000
        if age is not None and age > self.max_quote_age:
            for key in _PRICE_FIELDS:
                if cleaned.get(key) is not None:
                    problems.setdefault(key, PriceProblem.STALE.value)
                cleaned[key] = None
        if cleaned.get("last") is None:
            problems.setdefault("last", PriceProblem.MISSING.value)  # ccxt reads 0 as None
        for key, reason in problems.items():
            self.broker.note_unusable_price(symbol, reason, ticker.get(key))
        return cleaned, problems.get("last")

    def _sync_pauses(self, problems: Mapping[str, str | None], prices: Mapping[str, Any]) -> None:
        """Pause the symbols without a usable price; lift the guard's own pauses on recovery.

        The pauses carry the valuator's prefix: either lifts the other's when a price returns.
        """
        account = self.account_id
        own = {
            s: r
            for s, r in self.store.paused_symbol_reasons(account).items()
            if r.startswith(PAUSE_PREFIX)
        }
        for symbol, problem in sorted(problems.items()):
            if problem is not None and symbol not in own:
                if self.store.pause_symbol(
                    account, symbol, f"{PAUSE_PREFIX}{problem}", actor=GUARD_ACTOR
                ):
                    log.critical(
                        "trading PAUSED for %s on account %s: ticker price %s; no new entries "
                        "and no position management until a valid price arrives",
                        symbol,
                        account,
                        problem,
                    )
            elif problem is None and symbol in own:
                price = prices.get(symbol)
                if self.store.unpause_symbol(
                    account, symbol, f"valid price {price} returned", actor=GUARD_ACTOR
                ):
                    log.warning(
                        "trading unpaused for %s on account %s: a valid price (%s) returned",
                        symbol,
                        account,
                        price,
                    )

    def fetch_order(
        self,
        id: str,  # noqa: A002 (ccxt's parameter name: callers may pass it by keyword)
        symbol: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call ccxt's ``fetch_order`` through the read breaker with retries."""
        with _ccxt_errors():
            return self.broker.read("fetch_order", id, symbol, dict(params or {}))

    def fetch_orders(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call ccxt's ``fetch_orders`` through the read breaker with retries."""
        with _ccxt_errors():
            return self._list("fetch_orders", symbol, since, limit, params)

    def fetch_closed_orders(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call ccxt's ``fetch_closed_orders`` through the read breaker with retries."""
        with _ccxt_errors():
            return self._list("fetch_closed_orders", symbol, since, limit, params)

    def _list(
        self,
        name: str,
        symbol: str | None,
        since: int | None,
        limit: int | None,
        params: Mapping[str, Any] | None,
    ) -> Any:
        # A limit left out keeps ccxt's own default (Coinbase's fetch_orders: 100).
        args: list[Any] = [symbol, since]
        if limit is not None or params:
            args.append(limit)
        if params:
            args.append(dict(params))
        return self.broker.read(name, *args)

    def fetch_open_orders(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        """Return the open orders of every symbol (then filtered), ours even if a listing omits one.

        The listing is the guarded broker's, so the gate counts resting buys from it. With
        venue-specific ``params`` the venue's own listing is returned (through the breaker).
        """
        with _ccxt_errors():
            if params:
                found: list[Any] = self.broker.read(
                    "fetch_open_orders", symbol, since, limit, dict(params)
                )
                return found
            orders = self.broker.get_open_orders()
            shaped = [self.broker.ccxt_order(o) for o in orders]
            filtered: list[Any] = self.exchange.filter_by_symbol_since_limit(
                shaped, symbol, since, limit
            )
            return filtered

    # ------------------------------------------------------------------ writes

    def create_order(  # noqa: PLR0917 (ccxt's signature, positional as ccxt has it)
        self,
        symbol: str,
        type: str,  # noqa: A002 (ccxt's parameter name: callers may pass it by keyword)
        side: str,
        amount: Any,
        price: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Place an order under brokerguard's rules; return ccxt's order structure for it."""
        with _ccxt_errors():
            self.broker.force_no_ccxt_retries()
            terms, extras = self._terms(
                symbol=symbol,
                kind=type,
                side=side,
                amount=amount,
                price=price,
                params=dict(params or {}),
            )
            cid = terms["client_order_id"]
            with self.broker.ccxt_params(cid, extras):
                order = self._place(terms)
            return self.broker.ccxt_order(order)

    def _place(self, terms: dict[str, Any]) -> Order:
        symbol: str = terms["symbol"]
        if terms["side"] is Side.BUY and not terms["reduce_only"]:
            if self.broker.unresolved_orders():
                self.broker.resolve_unresolved()  # a resolved order frees its slot and symbol
            with self.gate.reserve_entry(symbol):
                return self.broker.place_order(**terms)
        decision = self.gate.check_exit(symbol)
        if not decision:
            raise OrderRefused(
                f"{terms['side'].value} {symbol} on account {self.account_id} refused: "
                f"{decision.reason}",
                decision=decision,
            )
        return self.broker.place_order(**terms)

    def _terms(
        self,
        *,
        symbol: str,
        kind: str,
        side: str,
        amount: Any,
        price: Any,
        params: dict[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The order brokerguard records (keywords of ``place_order``), and the other params."""
        order_type = str(kind).lower()
        if order_type not in {"market", "limit"}:
            raise ccxt.NotSupported(
                f"brokerguard guards market and limit orders; {kind!r} was not sent (trigger "
                "orders: type 'market' or 'limit' with ccxt's stopLossPrice/triggerPrice params)"
            )
        if any(params.get(k) is not None for k in _COST_KEYS) or "viqc" in str(
            params.get("oflags", "")
        ):
            raise ccxt.NotSupported(
                "brokerguard needs the base quantity of an order: a cost-sized order was not "
                "sent (pass an amount)"
            )
        if (
            self.broker.rules is COINBASE
            and order_type == "market"
            and str(side).lower() == "buy"
            and not self.exchange.handle_option(
                "createOrder",
                "createMarketBuyOrderRequiresPrice",
                params.get("createMarketBuyOrderRequiresPrice", True),
            )
        ):
            raise ccxt.NotSupported(
                "createMarketBuyOrderRequiresPrice=False makes the amount a cost: brokerguard "
                "needs the base quantity; nothing was sent"
            )
        cid = next((str(params[k]) for k in _CLIENT_ID_KEYS if params.get(k)), None)
        tif_raw = params.get("timeInForce", params.get("timeinforce"))
        post_only = _truthy(params.get("postOnly", params.get("post_only")))
        tif: TimeInForce | None = None
        if tif_raw is not None and str(tif_raw).upper() == "PO":
            post_only = True
        elif tif_raw is not None:
            tif = _time_in_force(tif_raw)
        expire_at = self._expiry(params)
        if expire_at is not None and tif is None:
            tif = TimeInForce.GTD
        reduce_only = _truthy(params.get("reduceOnly", params.get("reduce_only")))
        try:
            quantity = _number(amount, "amount")
            limit = None if order_type == "market" else _number(price, "price")
            quantity, limit = self.broker.precise(str(symbol), quantity, limit)
        except BrokerRejection as exc:
            raise ccxt.InvalidOrder(str(exc)) from exc
        terms: dict[str, Any] = {
            "symbol": str(symbol),
            "side": _side(side),
            "quantity": quantity,
            "order_type": OrderType(order_type),
            "price": limit,
            "time_in_force": None if order_type == "market" else tif,
            "post_only": post_only,
            "reduce_only": reduce_only,
            "expire_at": expire_at if tif is TimeInForce.GTD else None,
            "client_order_id": cid or self.broker.new_client_order_id(),
        }
        _check_shape(terms)
        extras = {k: v for k, v in params.items() if k not in _TERM_KEYS}
        return terms, extras

    def _expiry(self, params: Mapping[str, Any]) -> float | None:
        """A GTD order's expiry (epoch seconds) from Kraken's ``expiretm`` or ``end_time``."""
        raw = params.get("expiretm")
        if raw is not None and str(raw) not in {"", "0"}:
            text = str(raw)
            try:
                seconds = float(text.removeprefix("+"))
            except ValueError:
                raise ccxt.InvalidOrder(f"expiretm {raw!r} is not a time") from None
            return self.clock.time() + seconds if text.startswith("+") else seconds
        end = params.get("end_time")
        if end is not None:
            try:
                moment = datetime.fromisoformat(str(end))
            except ValueError:
                raise ccxt.InvalidOrder(f"end_time {end!r} is not an RFC 3339 time") from None
            if moment.tzinfo is None:
                raise ccxt.InvalidOrder(f"end_time {end!r} has no time zone")
            return moment.timestamp()
        return None

    def cancel_order(
        self,
        id: str,  # noqa: A002 (ccxt's parameter name: callers may pass it by keyword)
        symbol: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Cancel through the guarded broker: idempotent, verified by a lookup.

        The answer is the order as the venue then shows it (``status`` ``"canceled"``, or
        ``"closed"`` if it filled first; ``"open"`` while a venue's cancel is still pending).
        """
        with _ccxt_errors():
            params = dict(params or {})
            cid = next((str(params[k]) for k in _CLIENT_ID_KEYS if params.get(k)), None)
            if cid is None:
                cid = self._client_order_id_for(str(id), symbol)
            order = self.broker.cancel_order(cid)
            return self.broker.ccxt_order(order)

    def _client_order_id_for(self, venue_id: str, symbol: str | None) -> str:
        try:
            return str(
                self.broker.read_breaker.call_with_circuit_breaker(
                    self.broker.client_order_id_for, venue_id, symbol
                )
            )
        except BrokerRejection as exc:
            raise ccxt.OrderNotFound(
                f"{self.broker.broker_name} order {venue_id} not found: {exc}"
            ) from exc

    def cancel_orders(
        self, ids: Sequence[str], symbol: str | None = None, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Cancel each order through :meth:`cancel_order` (each verified)."""
        return [self.cancel_order(i, symbol, params) for i in ids]

    def cancel_all_orders(
        self, symbol: str | None = None, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Cancel every open order (of `symbol`, if given), each verified by a lookup."""
        del params
        with _ccxt_errors():
            orders = self.broker.get_open_orders()
            return [
                self.broker.ccxt_order(self.broker.cancel_order(o.client_order_id))
                for o in orders
                if symbol is None or o.symbol == symbol
            ]

    def create_orders(self, orders: Any, params: Mapping[str, Any] | None = None) -> NoReturn:
        """Refused: a batch would bypass the per-order checks (place orders one by one)."""
        del orders, params
        raise ccxt.NotSupported(
            "brokerguard: create_orders sends a batch past the per-order checks; nothing was "
            "sent (call create_order for each order)"
        )

    def edit_order(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: an amend can add risk past the gate (cancel, then create)."""
        del args, kwargs
        raise ccxt.NotSupported(
            "brokerguard: edit_order can add risk past the gate; nothing was sent (cancel the "
            "order, then create a new one)"
        )


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def _time_in_force(value: object) -> TimeInForce:
    try:
        return TimeInForce(str(value).upper())
    except ValueError:
        raise ccxt.InvalidOrder(
            f"time in force {value!r} is not one of GTC, IOC, FOK, GTD, PO"
        ) from None


def _side(value: object) -> Side:
    try:
        return Side(str(value).lower())
    except ValueError:
        raise ccxt.InvalidOrder(f"side {value!r} is neither 'buy' nor 'sell'") from None


def _number(value: object, name: str) -> Decimal:
    if value is None:
        raise ccxt.ArgumentsRequired(f"an order needs its {name}")
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        raise ccxt.InvalidOrder(f"{name} {value!r} is not a number") from None
    if not number.is_finite() or number <= 0:
        raise ccxt.InvalidOrder(f"{name} {value!r} must be a positive number")
    return number


def _price_problem(value: object) -> str | None:
    """Why a ticker price is unusable, or None (the reason codes of PriceProblem)."""
    try:
        parse_price(value)
    except InvalidBrokerData as exc:
        return exc.reason
    return None


def _check_shape(terms: Mapping[str, Any]) -> None:
    """Refuse impossible combinations as ccxt would (InvalidOrder), before anything else."""
    try:
        OrderRequest(
            terms["symbol"],
            terms["side"],
            terms["quantity"],
            terms["client_order_id"],
            order_type=terms["order_type"],
            price=terms["price"],
            time_in_force=terms["time_in_force"],
            post_only=terms["post_only"],
            reduce_only=terms["reduce_only"],
            expire_at=terms["expire_at"],
        )
    except InvalidBrokerData as exc:
        raise ccxt.InvalidOrder(
            f"order {terms['side'].value} {terms['quantity']} {terms['symbol']}: {exc.reason}"
        ) from exc


# --------------------------------------------------------------------------- the subclass


_GUARDED: Final = (
    "fetch_balance",
    "fetch_positions",
    "fetch_ticker",
    "fetch_tickers",
    "fetch_order",
    "fetch_orders",
    "fetch_open_orders",
    "fetch_closed_orders",
    "create_order",
    "create_orders",
    "edit_order",
    "cancel_order",
    "cancel_orders",
    "cancel_all_orders",
)
"""The exchange methods a guarded exchange answers through :class:`Guard`."""

_CAMEL_EXCEPTIONS: Final = {"ohlcv": "OHLCV", "le": "LE", "be": "BE", "adl": "ADL"}

_classes: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()
_classes_lock = threading.Lock()


def _camel_case(name: str) -> str:
    """Return ccxt's camelCase alias of a method name (``fetch_ohlcv`` -> ``fetchOHLCV``)."""
    first, *rest = name.split("_")
    return first + "".join(_CAMEL_EXCEPTIONS.get(p, p[:1].upper() + p[1:]) for p in rest)


def guarded_class(cls: type) -> type:
    """Return the guarded subclass of the ccxt exchange class `cls` (made once per class)."""
    base = getattr(cls, "_brokerguard_base", None)
    if base is not None:
        return cls  # already guarded
    with _classes_lock:
        made = _classes.get(cls)
        if made is None:
            made = _classes[cls] = _make_class(cls)
        return made


def _make_class(cls: type) -> type:
    asynchronous = not getattr(cls, "synchronous", True)
    namespace: dict[str, Any] = {
        "_brokerguard_base": cls,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": f"{cls.__doc__ or cls.__name__}\n\nGuarded by brokerguard.ccxt.",
    }
    for name in _GUARDED:
        method = _async_method(cls, name) if asynchronous else _sync_method(cls, name)
        namespace[name] = method
        namespace[_camel_case(name)] = method  # ccxt's alias, re-pointed at the guarded method
    return type(cls.__name__, (cls,), namespace)


def _sync_method(cls: type, name: str) -> Callable[..., Any]:
    unguarded = getattr(cls, name)
    guarded = getattr(Guard, name)

    @functools.wraps(unguarded)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if in_raw_call():
            return unguarded(self, *args, **kwargs)  # ccxt calling itself inside a raw call
        return guarded(self.brokerguard, *args, **kwargs)

    return method


def _async_method(cls: type, name: str) -> Callable[..., Any]:
    unguarded = getattr(cls, name)
    guarded = getattr(Guard, name)

    @functools.wraps(unguarded)
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if in_raw_call():
            return await unguarded(self, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(_on_loop, loop, guarded, self.brokerguard, args, kwargs)

    return method


def _on_loop(
    loop: asyncio.AbstractEventLoop,
    func: Callable[..., Any],
    handle: Guard,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> Any:
    with driving_loop(loop):
        return func(handle, *args, **kwargs)


# --------------------------------------------------------------------------- the entry point


_BROKER_OPTIONS: Final = frozenset(
    {
        "broker_name",
        "account_type",
        "user_id",
        "ignore_assets",
        "nonce_source",
        "nonce_resyncs",
        "read_breaker",
        "write_breaker",
        "client_order_id_factory",
        "rate_limiter",
        "order_deadline_s",
    }
)
_GATE_OPTIONS: Final = frozenset(
    {
        "max_position_age",
        "pending_entry_ttl",
        "position_memory",
        "refetch_when_degraded",
        "slots",
        "count_dust",
    }
)
_ENFORCER_OPTIONS: Final = frozenset(
    {"max_cycles", "settle_timeout", "count_unpriced", "poll_interval", "order_id_factory"}
)
_GUARD_OPTIONS: Final = frozenset({"max_quote_age", "plausibility"})


def guard(
    exchange: Any,
    *,
    max_positions: int,
    state_url: str = "sqlite:///brokerguard.db",
    account_id: str | None = None,
    quote_currency: str = "USD",
    clock: Clock | None = None,
    **options: Any,
) -> Any:
    """Return `exchange` guarded by brokerguard: an instance of a subclass of its own class.

    The returned object carries the instance's state (its ``__dict__``: keys, options, markets,
    session); use it instead of `exchange` from here on. Its methods keep ccxt's names,
    signatures and return shapes (see the module docstring for what is guarded), and
    ``g.brokerguard`` (a :class:`Guard`) exposes the gate, enforcer, broker, breakers and
    ``status()``.

    Args:
        exchange: a ccxt exchange instance (``ccxt`` or ``ccxt.async_support``).
        max_positions: the cap of open positions (held, reserved and resting buys).
        state_url: the store of halts, pauses and audit records (``sqlite://`` in memory).
        account_id: halts and audit records are keyed by it (default ``"<exchange id>:master"``).
        quote_currency: positions are the holdings of every other asset.
        clock: the time source (tests pass a :class:`~brokerguard.testing.FakeClock`).
        options: for the broker (``order_deadline_s``, ``ignore_assets``, ``read_breaker``,
            ``write_breaker``, ``rate_limiter``, ``nonce_source``, ``client_order_id_factory``
            ...), the gate (``max_position_age``, ``pending_entry_ttl``, ``position_memory``,
            ``count_dust`` ...), the enforcer (``max_cycles``, ``settle_timeout`` ...),
            ``max_quote_age`` (seconds, default 60) and ``plausibility`` (a
            :class:`~brokerguard.brokers.plausibility.PlausibilityPolicy`). An unknown option is
            a :class:`~brokerguard.errors.ConfigurationError`.
    """
    known = _BROKER_OPTIONS | _GATE_OPTIONS | _ENFORCER_OPTIONS | _GUARD_OPTIONS
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigurationError(
            f"unknown guard option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if getattr(type(exchange), "_brokerguard_base", None) is not None:
        raise ConfigurationError(f"{exchange!r} is guarded already")
    cls = guarded_class(type(exchange))
    guarded: Any = object.__new__(cls)  # no __init__: the instance's own state is copied in
    guarded.__dict__.update(exchange.__dict__)
    broker = CcxtBroker(
        guarded,
        quote_currency=quote_currency,
        account_id=account_id,
        clock=clock,
        **{k: v for k, v in options.items() if k in _BROKER_OPTIONS},
    )
    if options.get("plausibility") is not None:
        broker.plausibility_policy = options["plausibility"]
    store = open_store(state_url, clock=broker.clock)
    gate = TradingGate(
        broker,
        max_positions,
        store=store,
        clock=broker.clock,
        **{k: v for k, v in options.items() if k in _GATE_OPTIONS},
    )
    enforcer = PositionCapEnforcer(
        broker,
        max_positions,
        store=store,
        clock=broker.clock,
        **{k: v for k, v in options.items() if k in _ENFORCER_OPTIONS},
    )
    max_quote_age = float(options.get("max_quote_age", 60.0))
    if not max_quote_age > 0:
        raise ConfigurationError(f"max_quote_age must be > 0 seconds, got {max_quote_age!r}")
    guarded.brokerguard = Guard(
        guarded,
        broker=broker,
        gate=gate,
        enforcer=enforcer,
        store=store,
        max_quote_age=max_quote_age,
    )
    log.info(
        "exchange %r guarded: account %s, at most %d positions",
        guarded.id,
        broker.account_id,
        max_positions,
    )
    return guarded
