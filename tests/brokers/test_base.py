"""BaseBroker: guarded reads, validated payloads, probes that are never orders, writes once."""

from __future__ import annotations

import logging
import random
from decimal import Decimal

import pytest

from brokerguard import (
    BrokerRejection,
    CircuitOpenError,
    CircuitState,
    FatalBrokerError,
    InvalidBrokerData,
    Side,
    TransientBrokerError,
    get_circuit_breaker,
)
from brokerguard.brokers import OrderUnconfirmedError
from brokerguard.models import Order, OrderStatus, PriceProblem, Quote
from brokerguard.testing import FakeClock

from .helpers import FakeAdapter, position


@pytest.fixture
def broker(clock: FakeClock) -> FakeAdapter:
    return FakeAdapter("kraken", clock=clock)


def trip(breaker, clock: FakeClock) -> None:
    """Open a breaker the way an outage would, then let its recovery time pass."""
    breaker.force_open("test outage")
    breaker.force_closed()
    for _ in range(breaker.failure_threshold):
        with pytest.raises(TimeoutError):
            breaker.call(_raise_timeout)
    assert breaker.state is CircuitState.OPEN
    clock.advance(breaker.next_probe_in())


def _raise_timeout() -> None:
    raise TimeoutError


# --------------------------------------------------------------------------- identity


def test_account_id_is_derived_from_broker_type_and_user(clock):
    """Halts are keyed by a stable account id; it is derived unless given."""
    assert FakeAdapter("kraken", clock=clock).account_id == "kraken:master"
    assert FakeAdapter("kraken", "sub", "u42", clock=clock).account_id == "kraken:sub:u42"
    assert FakeAdapter("kraken", clock=clock, account_id="acct-7").account_id == "acct-7"


def test_accounts_on_one_broker_share_its_breakers(clock):
    """When Kraken is down for one account it is down for all of them."""
    a = FakeAdapter("kraken", "master", clock=clock)
    b = FakeAdapter("kraken", "sub", "u1", clock=clock)
    assert a.read_breaker is b.read_breaker is get_circuit_breaker("kraken", "read")
    assert a.write_breaker is b.write_breaker is get_circuit_breaker("kraken", "write")
    assert a.read_breaker is not a.write_breaker


# --------------------------------------------------------------------------- positions


def test_positions_are_validated_and_zero_quantities_dropped(broker):
    """Only real exposure is returned, and the snapshot remembers when it was taken."""
    broker.positions = [position("BTC/USD", "0.5"), position("DOGE/USD", "0")]
    assert broker.get_positions() == [position("BTC/USD", "0.5")]
    snapshot = broker.last_position_snapshot()
    assert snapshot is not None
    assert snapshot.count == 1
    assert snapshot.fetched_at == 1000.0


def test_a_failed_position_fetch_raises_and_never_answers_none(broker, clock):
    """Unknown is not zero: after the retries, the error propagates."""
    broker.faults["fetch_positions"] = [TimeoutError(), TimeoutError(), TimeoutError()]
    with pytest.raises(TimeoutError):
        broker.get_positions()
    assert broker.last_position_snapshot() is None
    assert broker.calls.count("fetch_positions") == 3
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("BTC/USD", "not_a_list"),
        ({"BTC/USD": 1}, "not_a_list"),
        ([{"symbol": "BTC/USD", "quantity": 1}], "not_a_position"),
        ([position("BTC/USD", "1"), position("BTC/USD", "2")], "duplicate_symbol"),
    ],
)
def test_a_garbled_position_payload_counts_once_as_a_failure(broker, payload, reason):
    """An unparseable payload is InvalidBrokerData: one breaker failure, not retried, counted."""
    broker.positions_payload = payload
    with pytest.raises(InvalidBrokerData) as info:
        broker.get_positions()
    assert info.value.reason == reason
    assert broker.calls.count("fetch_positions") == 1
    assert broker.read_breaker.get_status()["failure_count"] == 1
    assert broker.data_quality() == {f"positions.{reason}": 1}


# --------------------------------------------------------------------------- prices


def test_prices_come_from_one_batched_call(broker):
    """All symbols are priced by a single fetch_prices call."""
    broker.prices = {"BTC/USD": "65000", "ETH/USD": Decimal("3000.5")}
    assert broker.get_prices(["BTC/USD", "ETH/USD"]) == {
        "BTC/USD": Decimal(65000),
        "ETH/USD": Decimal("3000.5"),
    }
    assert broker.calls.count("fetch_prices") == 1


def test_a_bad_price_is_none_logged_and_counted_never_a_number(broker, caplog):
    """Missing, zero, negative, NaN and non-numeric prices become None, with a CRITICAL line."""
    broker.prices = {
        "BTC/USD": "65000",
        "ZERO/USD": 0,
        "NEG/USD": "-3",
        "NAN/USD": float("nan"),
        "TXT/USD": "N/A",
    }
    symbols = ["BTC/USD", "ZERO/USD", "NEG/USD", "NAN/USD", "TXT/USD", "GONE/USD"]
    with caplog.at_level(logging.CRITICAL, logger="brokerguard.broker"):
        prices = broker.get_prices(symbols)
    assert prices == {
        "BTC/USD": Decimal(65000),
        "ZERO/USD": None,
        "NEG/USD": None,
        "NAN/USD": None,
        "TXT/USD": None,
        "GONE/USD": None,
    }
    for symbol in symbols[1:]:
        assert symbol in caplog.text
    assert "no fallback price" in caplog.text
    assert broker.data_quality() == {
        "price.zero": 1,
        "price.negative": 1,
        "price.nan": 1,
        "price.non_numeric": 1,
        "price.missing": 1,
    }


def test_a_bad_price_inside_a_good_payload_does_not_trip_the_breaker(broker):
    """The broker answered; one bad number is a data problem, not an outage."""
    broker.prices = {"NAN/USD": "NaN"}
    for _ in range(20):
        assert broker.get_current_price("NAN/USD") is None
    assert broker.read_breaker.state is CircuitState.CLOSED
    assert broker.read_breaker.get_status()["failure_count"] == 0


def test_check_prices_reports_reasons_and_keeps_broker_timestamps(broker, clock):
    """The valuation layer gets the reason for every unusable price, and quote timestamps."""
    broker.prices = {"BTC/USD": Quote("BTC/USD", "64000", 900.0), "ETH/USD": 0}
    check = broker.check_prices(["BTC/USD", "ETH/USD", "BTC/USD"])
    assert check.quotes["BTC/USD"].timestamp == 900.0
    assert check.problems == {"ETH/USD": PriceProblem.ZERO}
    broker.prices = {"ETH/USD": "3000"}
    assert broker.check_prices(["ETH/USD"]).quotes["ETH/USD"].timestamp == clock.time()


def test_a_non_mapping_price_payload_is_a_breaker_failure(broker):
    """A payload that cannot be read at all counts once as a failure."""
    broker.prices_payload = ["65000"]
    with pytest.raises(InvalidBrokerData):
        broker.get_prices(["BTC/USD"])
    assert broker.read_breaker.get_status()["failure_count"] == 1
    assert broker.data_quality() == {"prices.not_a_mapping": 1}


def test_no_symbols_means_no_call(broker):
    """Pricing nothing sends nothing."""
    assert broker.get_prices([]) == {}
    assert broker.calls == []


# --------------------------------------------------------------------------- probes


def test_reads_probe_with_ping_before_the_real_call(broker, clock):
    """When the recovery time has come, ping() probes; the real call runs once closed."""
    broker.prices = {"BTC/USD": "1"}
    trip(broker.read_breaker, clock)
    assert broker.get_current_price("BTC/USD") == Decimal(1)
    assert broker.calls == ["ping", "ping", "fetch_prices"]
    assert broker.read_breaker.state is CircuitState.CLOSED


def test_a_failed_ping_probe_sends_no_real_call(broker, clock):
    """If the probe fails the circuit reopens and the real call is not made."""
    trip(broker.read_breaker, clock)
    broker.faults["ping"] = [TimeoutError()]
    with pytest.raises(TimeoutError):
        broker.get_prices(["BTC/USD"])
    assert broker.calls == ["ping"]
    assert broker.read_breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        broker.get_prices(["BTC/USD"])
    assert broker.calls == ["ping"]


def test_without_ping_a_position_fetch_is_the_probe(clock):
    """No ping(): a price read is preceded by position fetches as probes."""
    broker = FakeAdapter("kraken", clock=clock, with_ping=False)
    broker.prices = {"BTC/USD": "2"}
    trip(broker.read_breaker, clock)
    assert broker.get_current_price("BTC/USD") == Decimal(2)
    assert broker.calls == ["fetch_positions", "fetch_positions", "fetch_prices"]


def test_without_ping_a_position_read_probes_itself(clock):
    """A position fetch needs no separate probe: it is the probe."""
    broker = FakeAdapter("kraken", clock=clock, with_ping=False)
    trip(broker.read_breaker, clock)
    broker.get_positions()
    assert broker.calls == ["fetch_positions"]


def test_an_order_is_never_the_probe(broker, clock):
    """With the write circuit due for a probe, ping() probes it and only then is the order sent."""
    trip(broker.write_breaker, clock)
    broker.place_market_order("BTC/USD", "buy", "0.1", client_order_id="c1")
    assert broker.calls == ["ping", "ping", "submit_order"]
    assert broker.write_breaker.state is CircuitState.CLOSED


def test_an_order_waits_for_a_failed_probe(broker, clock):
    """If the write probe fails, the order is not sent at all."""
    trip(broker.write_breaker, clock)
    broker.faults["ping"] = [TimeoutError()]
    with pytest.raises(TimeoutError):
        broker.place_market_order("BTC/USD", "buy", "0.1", client_order_id="c1")
    assert "submit_order" not in broker.calls
    assert broker.submissions == {}


def test_an_open_write_circuit_sends_no_order(broker):
    """An open write breaker rejects the order without calling the broker."""
    broker.write_breaker.force_open("maintenance")
    with pytest.raises(CircuitOpenError):
        broker.place_market_order("BTC/USD", "buy", "0.1")
    assert broker.calls == []


# --------------------------------------------------------------------------- writes


def test_an_order_carries_a_generated_client_order_id(broker):
    """Every order has a client order id; a given one is passed through."""
    generated = broker.place_market_order("BTC/USD", Side.BUY, 1)
    assert generated.client_order_id
    assert generated.client_order_id in broker.orders
    given = broker.place_market_order("BTC/USD", "sell", "0.5", client_order_id="mine-1")
    assert given.client_order_id == "mine-1"
    assert given.quantity == Decimal("0.5")


def test_a_lost_confirmation_returns_the_order_the_broker_has(broker):
    """Submit accepted, answer lost: the lookup finds it and nothing is resent."""
    broker.accept_then_fail = [TransientBrokerError("read timeout")]
    order = broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert order.client_order_id == "c1"
    assert broker.submissions == {"c1": 1}
    assert broker.calls == ["submit_order", "fetch_order"]


def test_an_order_not_found_right_after_a_failed_send_is_unresolved_not_resent(broker, clock):
    """Absence right after an ambiguous failure proves nothing: no resend until the deadline."""
    broker.faults["submit_order"] = [ConnectionError("reset")]
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert info.value.deadline is not None
    assert broker.calls == ["submit_order", "fetch_order"]
    assert [o.client_order_id for o in broker.unresolved_orders()] == ["c1"]
    # A retry before the deadline looks it up again and still sends nothing.
    clock.advance(5.0)
    with pytest.raises(OrderUnconfirmedError):
        broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert broker.submissions == {}


def test_an_order_proven_absent_after_its_deadline_is_resent_with_the_same_id(broker, clock):
    """Two lookups after the deadline (plus margin), 2 s apart, finding nothing allow a resend.

    The retry makes both: it waits ABSENT_LOOKUP_SPAN_S on the clock between them.
    """
    broker.faults["submit_order"] = [ConnectionError("reset")]
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert info.value.deadline is not None
    clock.advance(info.value.deadline - clock.time())
    order = broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert order.status is OrderStatus.FILLED
    assert broker.submissions == {"c1": 1}
    assert broker.calls == [
        "submit_order",
        "fetch_order",
        "fetch_order",
        "fetch_order",  # the confirming lookup, 2 s later
        "submit_order",
    ]
    assert broker.unresolved_orders() == []


def test_an_unconfirmable_order_is_never_resent(broker):
    """If the lookup fails too, raise OrderUnconfirmedError and send nothing more."""
    broker.accept_then_fail = [TransientBrokerError("read timeout")]
    broker.faults["fetch_order"] = [TimeoutError()] * 3
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert info.value.client_order_id == "c1"
    assert broker.submissions == {"c1": 1}
    assert broker.calls.count("submit_order") == 1


@pytest.mark.parametrize("error", [BrokerRejection("insufficient funds"), FatalBrokerError("key")])
def test_a_refused_order_is_not_looked_up_or_resent(broker, error):
    """A rejection or an authentication failure is raised as is."""
    broker.faults["submit_order"] = [error]
    with pytest.raises(type(error)):
        broker.place_market_order("BTC/USD", "buy", 1)
    assert broker.calls == ["submit_order"]


def test_a_caller_retrying_an_id_gets_the_existing_order(broker):
    """A retry with the same client order id is looked up first: no second order."""
    broker.accept_then_fail = [TransientBrokerError("timeout")]
    broker.faults["fetch_order"] = [TimeoutError()] * 3
    with pytest.raises(OrderUnconfirmedError):
        broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    again = broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert again.client_order_id == "c1"
    assert broker.submissions == {"c1": 1}


def test_a_garbled_submit_answer_is_treated_as_unknown(broker):
    """An answer that does not match the request is looked up, not trusted and not resent."""

    def wrong_answer(request):
        broker.submissions[request.client_order_id] += 1
        real = Order(request.client_order_id, request.symbol, request.side, 1, 1, "filled")
        broker.orders[request.client_order_id] = real
        return Order("someone-else", request.symbol, request.side, 1, 1, "filled")

    broker.submit_order = wrong_answer  # type: ignore[method-assign]
    order = broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert order.client_order_id == "c1"
    assert broker.submissions == {"c1": 1}
    assert broker.data_quality() == {"order.does_not_match_request": 1}


def test_ten_thousand_orders_with_lost_confirmations_make_no_duplicate(clock):
    """30 % of submits fail after acceptance, 5 % before, lookups fail half the time: no dupes.

    The caller behaves like a bot should: on an unconfirmed order or an open circuit it waits
    and retries with the same client order id.
    """
    rng = random.Random(2026)
    broker = FakeAdapter("kraken", clock=clock)
    real_fetch_order = broker.fetch_order

    def flaky_lookup(client_order_id: str) -> Order | None:
        if rng.random() < 0.5:
            raise TimeoutError("lookup timed out")
        return real_fetch_order(client_order_id)

    broker.fetch_order = flaky_lookup  # type: ignore[method-assign]
    n = 10_000
    outcomes = {"unconfirmed": 0, "circuit_open": 0}
    for i in range(n):
        roll = rng.random()
        if roll < 0.30:
            broker.accept_then_fail.append(TransientBrokerError("confirmation lost"))
        elif roll < 0.35:
            broker.faults["submit_order"].append(ConnectionError("reset before send"))
        else:
            broker.accept_then_fail.append(None)
        cid = f"order-{i}"
        while True:
            try:
                order = broker.place_market_order("BTC/USD", "buy", 1, client_order_id=cid)
                break
            except OrderUnconfirmedError:
                outcomes["unconfirmed"] += 1
                clock.advance(5.0)
            except CircuitOpenError as exc:
                outcomes["circuit_open"] += 1
                clock.advance(exc.next_probe_in or 1.0)
            except (TransientBrokerError, ConnectionError):
                pass  # proven absent and out of attempts: retrying the same id is safe
        assert broker.unresolved_orders() == []
        assert order.client_order_id == cid
    assert len(broker.orders) == n
    assert set(broker.submissions.values()) == {1}
    assert sum(broker.submissions.values()) == n
    # The run really went through the paths it claims to test.
    assert outcomes["unconfirmed"] > 1000, outcomes
    assert outcomes["circuit_open"] > 0, outcomes


# --------------------------------------------------------------------------- close, health, status


def test_close_position_sells_the_whole_position(broker):
    """Closing sells exactly the held quantity."""
    broker.positions = [position("ETH/USD", "2.5")]
    order = broker.close_position("ETH/USD")
    assert (order.side, order.quantity, order.symbol) == (Side.SELL, Decimal("2.5"), "ETH/USD")
    with pytest.raises(BrokerRejection):
        broker.close_position("BTC/USD")


def test_health_is_the_worse_of_read_and_write(broker):
    """Trading needs both circuits closed; health reports the worse one."""
    assert broker.get_broker_health_state() == "healthy"
    assert broker.is_trading_allowed()
    broker.write_breaker.force_open("drill")
    assert broker.get_broker_health_state() == "offline"
    assert not broker.is_trading_allowed()
    broker.write_breaker.force_closed()
    with pytest.raises(TimeoutError):
        broker.read_breaker.call(_raise_timeout)
    assert broker.get_broker_health_state() == "degraded"
    assert broker.is_trading_allowed()


def test_status_shows_breakers_data_quality_and_position_age(broker, clock):
    """The broker's status has everything an operator needs, and no secrets."""
    broker.prices = {"X/USD": "nan"}
    broker.get_prices(["X/USD"])
    broker.get_positions()
    clock.advance(5)
    status = broker.get_status()
    assert status["broker"] == "kraken"
    assert status["account_id"] == "kraken:master"
    assert status["health_state"] == "healthy"
    assert status["trading_allowed"] is True
    assert set(status["breakers"]) == {"read", "write"}
    assert status["breakers"]["read"]["scope"] == "read"
    assert status["data_quality"] == {"price.nan": 1}
    assert status["positions_age_seconds"] == 5.0


def test_call_with_circuit_breaker_hook_uses_the_read_breaker(broker):
    """The seed's integration hook guards a read with retries."""
    calls = []

    def read() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError
        return "ok"

    assert broker._call_with_circuit_breaker(read) == "ok"
    assert broker.read_breaker.get_status()["total_calls"] == 2


def test_an_adapter_may_use_any_private_name_without_breaking_the_base(clock):
    """BaseBroker keeps its state under _bg_: an adapter's _lock or _clock are its own."""

    class Careless(FakeAdapter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._lock = "adapter lock"
            self._clock = "adapter clock"
            self._read_breaker = "adapter breaker"
            self._data_quality = "adapter counters"
            self._last_positions = "adapter cache"

    broker = Careless("kraken", clock=clock)
    broker.positions = [position("BTC/USD", "1")]
    broker.prices = {"BTC/USD": "nan"}
    assert broker.get_positions() == [position("BTC/USD", "1")]
    assert broker.get_current_price("BTC/USD") is None
    assert broker.data_quality() == {"price.nan": 1}
    assert broker.clock is clock
    assert broker.get_status()["positions_age_seconds"] == 0.0


def test_prices_come_back_in_the_order_asked(broker):
    """get_prices keeps the request's order, each symbol once."""
    broker.prices = {"B/USD": "2", "A/USD": "1"}
    assert list(broker.get_prices(["Z/USD", "B/USD", "A/USD", "B/USD"])) == [
        "Z/USD",
        "B/USD",
        "A/USD",
    ]
