"""The domain's values: positions, quotes, orders and balances, with money as `Decimal`.

Every constructor validates what it is given, because these values are built from broker
payloads and a single bad number (NaN, infinity, a negative quantity, "N/A") must stop at the
boundary instead of flowing into a sizing or valuation decision. Constructors accept ``int``,
``str`` and ``Decimal``; a ``float`` is converted through ``str`` (so ``0.1`` is
``Decimal("0.1")``, not the binary approximation). ``bool`` is refused even though Python
calls it an ``int``: a broker that sends ``true`` as a quantity sent garbage.

Bad values raise :class:`~brokerguard.errors.InvalidBrokerData` naming the field, the value
and a stable reason code. Nothing here ever substitutes a value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Final, TypeVar

from brokerguard.errors import InvalidBrokerData

__all__ = [
    "CURRENCY_ALIASES",
    "MAX_MAGNITUDE",
    "Balance",
    "Fill",
    "Order",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "Position",
    "PriceProblem",
    "Quote",
    "Side",
    "TimeInForce",
    "canonical_symbols",
    "parse_decimal",
    "parse_price",
    "parse_side",
    "parse_symbol",
]

MAX_MAGNITUDE: Final = Decimal(10) ** 18
"""No real price or quantity reaches a quintillion; a value beyond it is a garbled payload."""


class Side(StrEnum):
    """Direction of an order."""

    BUY = "buy"
    SELL = "sell"


class OrderStatus(StrEnum):
    """Where an order is in its life."""

    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        """Return whether the order can no longer change (filled, canceled or rejected)."""
        return self in _FINAL_STATUSES


_FINAL_STATUSES: Final = frozenset({OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED})


class OrderType(StrEnum):
    """How an order is priced."""

    MARKET = "market"
    LIMIT = "limit"


class TimeInForce(StrEnum):
    """How long a limit order may rest.

    GTC rests until cancelled; IOC fills what it can at once and cancels the rest; FOK fills
    whole at once or not at all; GTD rests until ``expire_at``.
    """

    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    GTD = "GTD"


class PriceProblem(StrEnum):
    """Why a price is not usable; the value is the stable reason code."""

    MISSING = "missing"
    ZERO = "zero"
    NEGATIVE = "negative"
    NAN = "nan"
    INFINITE = "infinite"
    NON_NUMERIC = "non_numeric"
    ABSURD = "absurd"
    STALE = "stale"


def parse_decimal(
    value: object,
    *,
    field: str,
    allow_negative: bool = False,
    allow_zero: bool = True,
    symbol: str | None = None,
) -> Decimal:
    """Turn a broker's number into a finite `Decimal`, or raise `InvalidBrokerData`.

    The reason codes are those of :class:`PriceProblem` (``missing``, ``zero``, ``negative``,
    ``nan``, ``infinite``, ``non_numeric``, ``absurd``).
    """
    if type(value) is Decimal and value.is_finite() and 0 < value <= MAX_MAGNITUDE:
        return value  # the common case, every check passed in one line
    number = _to_decimal(value, field=field, symbol=symbol)
    if number.is_nan():
        raise InvalidBrokerData(field, value, PriceProblem.NAN, symbol=symbol)
    if number.is_infinite():
        raise InvalidBrokerData(field, value, PriceProblem.INFINITE, symbol=symbol)
    if number.copy_abs() > MAX_MAGNITUDE:  # exact: abs() rounds, and overflows on 1E+1000000
        raise InvalidBrokerData(field, value, PriceProblem.ABSURD, symbol=symbol)
    if number < 0 and not allow_negative:
        raise InvalidBrokerData(field, value, PriceProblem.NEGATIVE, symbol=symbol)
    if number == 0:
        if not allow_zero:
            raise InvalidBrokerData(field, value, PriceProblem.ZERO, symbol=symbol)
        return Decimal(0)  # also folds -0 into 0
    return number


def parse_price(value: object, *, symbol: str | None = None) -> Decimal:
    """Return `value` as a strictly positive, finite price, or raise `InvalidBrokerData`."""
    return parse_decimal(value, field="price", allow_zero=False, symbol=symbol)


CURRENCY_ALIASES: Final[Mapping[str, str]] = {
    # Kraken's own codes for assets everyone else names otherwise (ccxt maps them the same way).
    "XBT": "BTC",
    "XDG": "DOGE",
}
"""Currency codes that name the same asset as their target: one asset, one symbol."""


def parse_symbol(value: object, *, field: str = "symbol") -> str:
    """Return `value` as a non-empty, stripped identifier, or raise `InvalidBrokerData`.

    A trading symbol (``field="symbol"``, the default) is also put in its one canonical form,
    the one the gate compares and the broker trades: upper case, no whitespace around its
    parts, and exchange aliases mapped (``xbt/usd `` is ``BTC/USD``). Otherwise
    ``"DOGE/USD "`` would pass a gate that paused ``DOGE/USD`` and still be traded as it.
    Other identifiers (client order ids, broker names) are only stripped.
    """
    if value is None:
        raise InvalidBrokerData(field, value, PriceProblem.MISSING)
    if not isinstance(value, str):
        raise InvalidBrokerData(field, value, "not_a_string")
    text = value.strip()
    if not text:
        raise InvalidBrokerData(field, value, "empty")
    if field != "symbol":
        return text
    return _canonical_symbol(text, value)


_CANONICAL: dict[str, str] = {}
_CANONICAL_MAX: Final = 4096
"""Symbols already put in canonical form (a pure function of the text, called for every quote
and position of every pass): at most this many, then the rest are computed each time."""


def canonical_symbols(symbols: Iterable[object]) -> list[str]:
    """Each symbol in canonical form (:func:`parse_symbol`), once each, in their order.

    A symbol already seen in canonical form costs one dictionary look-up: an enforcement
    step asks this for every symbol it values, every pass.
    """
    known = _CANONICAL.get
    out: dict[str, None] = {}
    for value in symbols:
        canonical = known(value) if type(value) is str else None
        out[canonical if canonical is not None else parse_symbol(value)] = None
    return list(out)


def _canonical_symbol(text: str, value: object) -> str:
    known = _CANONICAL.get(text)
    if known is not None:
        return known
    parts = re.split(r"([/:])", text.upper())
    codes = parts[::2]
    if any(not code.strip() or any(c.isspace() for c in code.strip()) for code in codes):
        raise InvalidBrokerData("symbol", value, "malformed")
    parts[::2] = [CURRENCY_ALIASES.get(code.strip(), code.strip()) for code in codes]
    canonical = "".join(parts)
    if type(text) is str and len(_CANONICAL) < _CANONICAL_MAX:  # never a str subclass's word
        _CANONICAL[text] = canonical
    return canonical


def _to_decimal(value: object, *, field: str, symbol: str | None) -> Decimal:
    if value is None:
        raise InvalidBrokerData(field, value, PriceProblem.MISSING, symbol=symbol)
    if isinstance(value, bool):
        raise InvalidBrokerData(field, value, PriceProblem.NON_NUMERIC, symbol=symbol)
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise InvalidBrokerData(field, value, PriceProblem.NAN, symbol=symbol)
        if math.isinf(value):
            raise InvalidBrokerData(field, value, PriceProblem.INFINITE, symbol=symbol)
        return Decimal(repr(value))  # the shortest repr: 0.1 -> Decimal("0.1")
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise InvalidBrokerData(field, value, PriceProblem.NON_NUMERIC, symbol=symbol) from None
    raise InvalidBrokerData(field, value, PriceProblem.NON_NUMERIC, symbol=symbol)


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class Position:
    """An open holding in one instrument, as the broker reported it."""

    symbol: str
    quantity: Decimal

    def __post_init__(self) -> None:
        symbol = parse_symbol(self.symbol)
        _set(self, "symbol", symbol)
        _set(self, "quantity", parse_decimal(self.quantity, field="quantity", symbol=symbol))


@dataclass(frozen=True, slots=True)
class Quote:
    """A usable price for a symbol at a time (epoch seconds). A quote is never zero or NaN.

    ``timestamp`` is the venue's own time for the price when it sent one. When it did not
    (Kraken's REST Ticker has none), the quote is stamped when it was received and
    ``stamped_on_receipt`` says so: its age then says nothing about how old the price is.
    """

    symbol: str
    price: Decimal
    timestamp: float
    stamped_on_receipt: bool = False

    def __post_init__(self) -> None:
        symbol = parse_symbol(self.symbol)
        _set(self, "symbol", symbol)
        _set(self, "price", parse_price(self.price, symbol=symbol))
        stamp = parse_decimal(self.timestamp, field="timestamp", symbol=symbol)
        _set(self, "timestamp", float(stamp))


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """What we ask a broker to do; the client order id makes the request idempotent.

    ``deadline`` (epoch seconds) is when the venue must stop accepting the request: Kraken
    takes it as AddOrder's ``deadline``. It bounds how long an order whose answer was lost can
    still appear, so that a lookup after it can prove the order absent (see
    :mod:`brokerguard.orders`). None: the broker sets one when it sends.
    """

    symbol: str
    side: Side
    quantity: Decimal
    client_order_id: str
    deadline: float | None = None
    order_type: OrderType = OrderType.MARKET
    price: Decimal | None = None
    """The limit price (limit orders only)."""
    time_in_force: TimeInForce | None = None
    """Limit orders only (default GTC)."""
    post_only: bool = False
    """Limit orders only: refused rather than filled at once (it must add liquidity)."""
    reduce_only: bool = False
    """May only reduce a position (let through while an account is REDUCING or HALTED)."""
    expire_at: float | None = None
    """GTD only: when the venue cancels it (epoch seconds)."""

    def __post_init__(self) -> None:
        symbol = parse_symbol(self.symbol)
        _set(self, "symbol", symbol)
        _set(self, "side", parse_side(self.side))
        _set(
            self,
            "quantity",
            parse_decimal(self.quantity, field="quantity", allow_zero=False, symbol=symbol),
        )
        _set(self, "client_order_id", parse_symbol(self.client_order_id, field="client_order_id"))
        if self.deadline is not None:
            stamp = parse_decimal(self.deadline, field="deadline", allow_zero=False)
            _set(self, "deadline", float(stamp))
        order_type = _parse_enum(
            OrderType, self.order_type, field="order_type", reason="unknown_order_type"
        )
        _set(self, "order_type", order_type)
        if self.price is not None:
            _set(self, "price", parse_price(self.price, symbol=symbol))
        if self.time_in_force is not None:
            tif = _parse_enum(
                TimeInForce, self.time_in_force, field="time_in_force", reason="unknown_tif"
            )
            _set(self, "time_in_force", tif)
        if self.expire_at is not None:
            stamp = parse_decimal(self.expire_at, field="expire_at", allow_zero=False)
            _set(self, "expire_at", float(stamp))
        for flag in ("post_only", "reduce_only"):
            value: object = getattr(self, flag)
            if type(value) is not bool:  # "false" is truthy: never guess a flag
                raise InvalidBrokerData(flag, value, "not_a_bool")
        problem = self._shape_problem()
        if problem:
            raise InvalidBrokerData("order", self.client_order_id, problem)

    def _shape_problem(self) -> str | None:
        """What makes this combination impossible to send, or None."""
        if self.order_type is OrderType.MARKET:
            if self.price is not None or self.time_in_force is not None or self.post_only:
                return "market_order_with_limit_terms"
            return "expire_at_without_gtd" if self.expire_at is not None else None
        if self.price is None:
            return "limit_order_without_price"
        gtd = self.time_in_force is TimeInForce.GTD
        if gtd != (self.expire_at is not None):
            return "gtd_needs_expire_at" if gtd else "expire_at_without_gtd"
        if self.post_only and self.time_in_force in {TimeInForce.IOC, TimeInForce.FOK}:
            return "post_only_cannot_be_immediate"
        return None

    @property
    def tif(self) -> TimeInForce | None:
        """The effective time in force: GTC for a limit order that named none."""
        if self.order_type is OrderType.MARKET:
            return None
        return self.time_in_force or TimeInForce.GTC

    @property
    def increases_risk(self) -> bool:
        """Whether filling it could open or grow a position.

        On spot every buy does: there is no short for a reduce-only buy to reduce, and a venue
        that ignores the flag (as a paper book may) would open a position with it.
        """
        return self.side is Side.BUY


@dataclass(frozen=True, slots=True)
class Order:
    """An order as the broker knows it."""

    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    filled_quantity: Decimal
    status: OrderStatus
    broker_order_id: str | None = None
    order_type: OrderType = OrderType.MARKET
    price: Decimal | None = None
    """The limit price, for a limit order."""

    def __post_init__(self) -> None:
        symbol = parse_symbol(self.symbol)
        _set(self, "symbol", symbol)
        _set(self, "client_order_id", parse_symbol(self.client_order_id, field="client_order_id"))
        _set(self, "side", parse_side(self.side))
        quantity = parse_decimal(self.quantity, field="quantity", symbol=symbol)
        filled = parse_decimal(self.filled_quantity, field="filled_quantity", symbol=symbol)
        if filled > quantity:
            raise InvalidBrokerData("filled_quantity", self.filled_quantity, "exceeds_quantity")
        _set(self, "quantity", quantity)
        _set(self, "filled_quantity", filled)
        status = _parse_enum(OrderStatus, self.status, field="status", reason="unknown_status")
        _set(self, "status", status)
        if self.broker_order_id is not None:
            _set(
                self, "broker_order_id", parse_symbol(self.broker_order_id, field="broker_order_id")
            )
        order_type = _parse_enum(
            OrderType, self.order_type, field="order_type", reason="unknown_order_type"
        )
        _set(self, "order_type", order_type)
        if self.price is not None:
            _set(self, "price", parse_price(self.price, symbol=symbol))

    @property
    def remaining_quantity(self) -> Decimal:
        """Quantity not filled yet."""
        return self.quantity - self.filled_quantity

    @property
    def is_final(self) -> bool:
        """Return whether the order can no longer change."""
        return self.status.is_final


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution in the account's trade history, as the venue reported it.

    The evidence that a position really was sold: a read that merely lacks a position may be a
    glitch; a sell of it executed after it was last seen held could not be.
    """

    symbol: str
    side: Side
    quantity: Decimal
    timestamp: float
    """When it executed, epoch seconds on the venue's clock."""
    order_id: str | None = None

    def __post_init__(self) -> None:
        symbol = parse_symbol(self.symbol)
        _set(self, "symbol", symbol)
        _set(self, "side", parse_side(self.side))
        _set(
            self,
            "quantity",
            parse_decimal(self.quantity, field="quantity", allow_zero=False, symbol=symbol),
        )
        stamp = parse_decimal(self.timestamp, field="timestamp", symbol=symbol)
        _set(self, "timestamp", float(stamp))
        if self.order_id is not None:
            _set(self, "order_id", parse_symbol(self.order_id, field="order_id"))


@dataclass(frozen=True, slots=True)
class Balance:
    """Holdings of one asset: what is free to trade and what is held by open orders."""

    asset: str
    free: Decimal
    used: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        asset = parse_symbol(self.asset, field="asset")
        _set(self, "asset", asset)
        _set(self, "free", parse_decimal(self.free, field="free", symbol=asset))
        _set(self, "used", parse_decimal(self.used, field="used", symbol=asset))

    @property
    def total(self) -> Decimal:
        """Free plus used."""
        return self.free + self.used


E = TypeVar("E", bound=StrEnum)


def _parse_enum(kind: type[E], value: object, *, field: str, reason: str) -> E:
    # Only strings (StrEnum members are strings) can name a member: 1 is not "buy".
    if not isinstance(value, str):
        raise InvalidBrokerData(field, value, reason)
    try:
        return kind(value)
    except ValueError:
        raise InvalidBrokerData(field, value, reason) from None


def parse_side(value: object) -> Side:
    """Return `value` as a :class:`Side`, or raise `InvalidBrokerData`."""
    return _parse_enum(Side, value, field="side", reason="unknown_side")
