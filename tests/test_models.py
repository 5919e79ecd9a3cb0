"""Domain values: Decimal money, and no bad number ever gets through a constructor."""

from __future__ import annotations

import math
import pickle
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerguard.errors import BrokerError, InvalidBrokerData
from brokerguard.models import (
    MAX_MAGNITUDE,
    Balance,
    Order,
    OrderRequest,
    OrderStatus,
    Position,
    PriceProblem,
    Quote,
    Side,
    canonical_symbols,
    parse_decimal,
    parse_price,
    parse_symbol,
)

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(),
    st.sampled_from(
        ["NaN", "-nan", "sNaN", "Infinity", "-inf", "1e999", "0", "-0", " 12.5 ", "1,5"]
    ),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@given(raw=ANYTHING)
def test_parse_price_returns_a_positive_finite_decimal_or_raises_invalid_data(raw):
    """Whatever a broker sends, the parser yields a usable price or InvalidBrokerData, no else."""
    try:
        price = parse_price(raw, symbol="BTC/USD")
    except InvalidBrokerData as exc:
        assert exc.field == "price"
        assert exc.symbol == "BTC/USD"
        assert exc.value is raw
        assert exc.reason in set(PriceProblem)
    else:
        assert isinstance(price, Decimal)
        assert price.is_finite()
        assert 0 < price <= MAX_MAGNITUDE


@given(raw=ANYTHING)
def test_parse_quantity_never_lets_a_negative_or_non_finite_through(raw):
    """Quantities are finite, non-negative Decimals or InvalidBrokerData."""
    try:
        quantity = parse_decimal(raw, field="quantity")
    except InvalidBrokerData as exc:
        assert exc.field == "quantity"
    else:
        assert quantity.is_finite()
        assert 0 <= quantity <= MAX_MAGNITUDE


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "missing"),
        (0, "zero"),
        ("0.0", "zero"),
        (-1, "negative"),
        ("-0.5", "negative"),
        (math.nan, "nan"),
        ("NaN", "nan"),
        (Decimal("sNaN"), "nan"),
        (math.inf, "infinite"),
        ("-Infinity", "infinite"),
        ("N/A", "non_numeric"),
        ("", "non_numeric"),
        (True, "non_numeric"),
        ([1], "non_numeric"),
        ("1e40", "absurd"),
    ],
)
def test_each_bad_price_has_its_reason(raw, reason):
    """The reason code says exactly what was wrong, for logs, metrics and the audit."""
    with pytest.raises(InvalidBrokerData) as info:
        parse_price(raw)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(1, "1"), ("12.50", "12.50"), (Decimal("3.3"), "3.3"), (0.1, "0.1"), (" 7 ", "7")],
)
def test_good_numbers_become_exact_decimals(raw, expected):
    """Ints, strings and Decimals are exact; a float goes through its shortest repr."""
    assert parse_price(raw) == Decimal(expected)


def test_negative_zero_is_zero():
    """-0 is folded into 0 so it never prints as a negative quantity."""
    assert str(parse_decimal("-0", field="quantity")) == "0"


def test_invalid_broker_data_is_a_broker_error_carrying_its_context():
    """It belongs to the 'broker failed' family and pickles with its attributes."""
    exc = InvalidBrokerData("price", "N/A", "non_numeric", symbol="ETH/USD")
    assert isinstance(exc, BrokerError)
    assert "ETH/USD" in str(exc)
    assert "N/A" in str(exc)
    again = pickle.loads(pickle.dumps(exc))  # noqa: S301
    assert (again.field, again.value, again.reason, again.symbol) == (
        "price",
        "N/A",
        "non_numeric",
        "ETH/USD",
    )


def test_position_converts_and_validates():
    """A position holds a stripped symbol and an exact Decimal quantity."""
    position = Position(" BTC/USD ", "0.5")
    assert position == Position("BTC/USD", Decimal("0.5"))
    assert position.quantity == Decimal("0.5")
    for bad in ("-1", math.nan, "many"):
        with pytest.raises(InvalidBrokerData):
            Position("BTC/USD", bad)
    with pytest.raises(InvalidBrokerData) as info:
        Position("  ", 1)
    assert info.value.field == "symbol"


def test_positions_are_frozen():
    """Values are values: nobody edits a position in place."""
    position = Position("BTC/USD", 1)
    with pytest.raises(AttributeError):
        position.quantity = Decimal(2)  # type: ignore[misc]


def test_quote_refuses_unusable_prices():
    """A quote is a usable price by construction: zero, negative and NaN are refused."""
    assert Quote("BTC/USD", "65000.5", 1_700_000_000).price == Decimal("65000.5")
    for bad in (0, -1, "nan", None):
        with pytest.raises(InvalidBrokerData):
            Quote("BTC/USD", bad, 1_700_000_000)


def test_order_request_needs_a_positive_quantity_a_side_and_an_id():
    """Zero-size orders, unknown sides and empty client ids are refused."""
    request = OrderRequest("BTC/USD", "sell", "0.25", "bg-1")
    assert request.side is Side.SELL
    assert request.quantity == Decimal("0.25")
    with pytest.raises(InvalidBrokerData):
        OrderRequest("BTC/USD", Side.BUY, 0, "bg-1")
    with pytest.raises(InvalidBrokerData):
        OrderRequest("BTC/USD", "hold", 1, "bg-1")
    with pytest.raises(InvalidBrokerData):
        OrderRequest("BTC/USD", Side.BUY, 1, "")


def test_order_validates_fills_and_status():
    """Fills never exceed the quantity; statuses are known; finality is derived."""
    order = Order("bg-1", "BTC/USD", "buy", "2", "0.5", "partially_filled", "K-1")
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert order.remaining_quantity == Decimal("1.5")
    assert not order.is_final
    assert Order("bg-1", "BTC/USD", "buy", 2, 2, OrderStatus.FILLED).is_final
    with pytest.raises(InvalidBrokerData) as info:
        Order("bg-1", "BTC/USD", "buy", 1, 2, "filled")
    assert info.value.reason == "exceeds_quantity"
    with pytest.raises(InvalidBrokerData) as info:
        Order("bg-1", "BTC/USD", "buy", 1, 0, "pending_cancel")
    assert info.value.reason == "unknown_status"


def test_balance_total_is_derived():
    """Total is free plus used, never stored separately (it could not disagree)."""
    balance = Balance("BTC", "1.5", "0.5")
    assert balance.total == Decimal(2)
    with pytest.raises(InvalidBrokerData):
        Balance("BTC", "-1")


def test_final_statuses():
    """Filled, canceled and rejected are final; open and partially filled are not."""
    assert {s for s in OrderStatus if s.is_final} == {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.REJECTED,
    }


SYMBOLISH = st.one_of(
    st.sampled_from(
        ["BTC/USD", "btc/usd", " xbt/usd ", "XDG/EUR", "ETH/USD:USD", "", " ", "a b/c"]
    ),
    st.text(alphabet="abXBT/: ", max_size=8),
    st.none(),
    st.integers(),
)


@given(symbols=st.lists(SYMBOLISH, max_size=8))
def test_canonical_symbols_is_parse_symbol_once_each_in_order(symbols):
    """The fast path (symbols already seen in canonical form) never answers otherwise."""
    try:
        expected = list(dict.fromkeys(parse_symbol(s) for s in symbols))
    except InvalidBrokerData as exc:
        with pytest.raises(InvalidBrokerData) as raised:
            canonical_symbols(symbols)
        assert (raised.value.field, raised.value.reason) == (exc.field, exc.reason)
        return
    assert canonical_symbols(symbols) == expected
    assert canonical_symbols(symbols) == expected  # a second time: from the memo
