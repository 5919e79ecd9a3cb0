"""CcxtBroker through the real ccxt.kraken client, against the Kraken emulator on 127.0.0.1."""

from __future__ import annotations

import threading
from decimal import Decimal

import ccxt
import pytest

from brokerguard import (
    BrokerCircuitBreaker,
    BrokerRejection,
    CircuitOpenError,
    CircuitState,
    FatalBrokerError,
    InvalidBrokerData,
    OrderStatus,
    OrderUnconfirmedError,
    Position,
    RateLimitedError,
    TransientBrokerError,
)
from brokerguard.brokers.ccxt import (
    CcxtBroker,
    InvalidNonceError,
    NonceSource,
    nonce_source_for,
    translate_ccxt_error,
)
from brokerguard.sim.kraken import DEFAULT_API_KEY, DEFAULT_API_SECRET, running_kraken


@pytest.fixture
def kraken(clock):
    # The emulator keeps the test's time: order deadlines are read on the same clock.
    with running_kraken(
        balances={"ZUSD": "100000", "XXBT": "0.5", "XETH": "0"}, time_source=clock.time
    ) as emulator:
        yield emulator


def exchange_for(emulator, *, timeout_ms: int = 2000) -> ccxt.kraken:
    exchange = ccxt.kraken(
        {
            "apiKey": DEFAULT_API_KEY,
            "secret": DEFAULT_API_SECRET,
            "enableRateLimit": False,  # Kraken's default spacing is ~3 s between private calls
            "timeout": timeout_ms,
        }
    )
    exchange.urls["api"] = {"public": emulator.url, "private": emulator.url}
    return exchange


@pytest.fixture
def broker(kraken, clock) -> CcxtBroker:
    return CcxtBroker(exchange_for(kraken), clock=clock, nonce_source=NonceSource(clock))


# --------------------------------------------------------------------------- the happy path


def test_positions_are_the_non_quote_balances(broker):
    """Spot positions: every non-USD balance above zero, as a Decimal."""
    assert broker.get_positions() == [Position("BTC/USD", Decimal("0.5"))]


def test_prices_come_from_one_batched_ticker_call(broker, kraken):
    """All symbols in one Ticker request; an unknown symbol is missing, never invented."""
    prices = broker.get_prices(["BTC/USD", "ETH/USD", "SOL/USD", "NOPE/USD"])
    assert prices == {
        "BTC/USD": Decimal("65000.0"),
        "ETH/USD": Decimal("3200.0"),
        "SOL/USD": Decimal("150.0"),
        "NOPE/USD": None,
    }
    assert kraken.count("Ticker") == 1
    ticker = next(r for r in kraken.requests if r.endpoint == "Ticker")
    assert ticker.params["pair"] == "XXBTZUSD,XETHZUSD,SOLUSD"


def test_orders_carry_our_client_order_id_and_are_found_after_filling(broker, kraken):
    """AddOrder gets cl_ord_id; the filled (closed) order is found by it; unknown ids are None."""
    order = broker.place_market_order("BTC/USD", "buy", "0.01", client_order_id="bg-1")
    assert (order.client_order_id, order.symbol, order.quantity) == (
        "bg-1",
        "BTC/USD",
        Decimal("0.01"),
    )
    add = next(r for r in kraken.requests if r.endpoint == "AddOrder")
    assert add.params["cl_ord_id"] == "bg-1"
    assert add.params["ordertype"] == "market"
    found = broker.get_order("bg-1")
    assert found.status is OrderStatus.FILLED
    assert found.filled_quantity == Decimal("0.01")
    assert broker.get_order("bg-404") is None


def test_ping_is_the_public_time_call(broker, kraken):
    """The probe is a cheap public read."""
    assert broker.ping() > 0
    assert kraken.count("Time") == 1


def test_ccxt_never_retries_by_itself(kraken, clock):
    """Ccxt's own retry loop is forced off (maxRetriesOnFailure=0): it would resend orders."""
    exchange = exchange_for(kraken)
    exchange.options["maxRetriesOnFailure"] = 3
    CcxtBroker(exchange, clock=clock, nonce_source=NonceSource(clock))
    assert exchange.options["maxRetriesOnFailure"] == 0


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("fault", "expected", "retry_after"),
    [
        ("EService:Unavailable", TransientBrokerError, None),
        ("EService:Busy", TransientBrokerError, None),
        ("EAPI:Rate limit exceeded", RateLimitedError, None),
        ("EGeneral:Temporary lockout", RateLimitedError, 900.0),
        ("http:429", RateLimitedError, None),
        ("http:500", TransientBrokerError, None),
        ("http:502", TransientBrokerError, None),
        ("http:503", TransientBrokerError, None),
        ("http:504", TransientBrokerError, None),
        ("EAPI:Invalid key", FatalBrokerError, None),
        ("EAPI:Invalid signature", FatalBrokerError, None),
        ("EGeneral:Permission denied", FatalBrokerError, None),
        ("EOrder:Insufficient funds", BrokerRejection, None),
        ("malformed", InvalidBrokerData, None),
    ],
)
def test_every_failure_class_is_translated(broker, kraken, fault, expected, retry_after):
    """Each Kraken error and HTTP failure becomes the brokerguard error that means it."""
    broker.get_positions()  # markets loaded, so the fault hits the private call
    kraken.inject(fault, endpoint="BalanceEx")
    with pytest.raises(expected) as info:
        broker.fetch_positions()
    assert isinstance(info.value.__cause__, ccxt.BaseError)
    if expected is RateLimitedError:
        assert info.value.retry_after == retry_after


def test_a_slow_response_is_a_transient_timeout(kraken, clock):
    """A response slower than the client's timeout is a transient failure."""
    broker = CcxtBroker(
        exchange_for(kraken, timeout_ms=200), clock=clock, nonce_source=NonceSource(clock)
    )
    broker.get_positions()
    kraken.inject("slow:0.6", endpoint="BalanceEx")
    with pytest.raises(TransientBrokerError) as info:
        broker.fetch_positions()
    assert isinstance(info.value.__cause__, ccxt.RequestTimeout)


def test_a_malformed_balance_is_never_read_as_no_positions(broker, kraken):
    """An unparseable body is an error, not the empty balance plain ccxt would make of it."""
    broker.get_positions()
    kraken.inject("malformed", endpoint="BalanceEx")
    with pytest.raises(InvalidBrokerData):
        broker.get_positions()
    assert broker.read_breaker.get_status()["failure_count"] == 1
    assert broker.last_position_snapshot().count == 1  # the last good one, not an empty one


def test_translation_falls_back_sensibly():
    """Transport errors are transient; an unknown exchange error is a plain broker error."""
    assert isinstance(translate_ccxt_error(ConnectionResetError()), TransientBrokerError)
    plain = translate_ccxt_error(ccxt.ExchangeError("kraken {'error': ['EGeneral:Odd']}"))
    assert type(plain).__name__ == "BrokerError"
    assert isinstance(translate_ccxt_error(ccxt.OnMaintenance("x")), TransientBrokerError)
    assert isinstance(translate_ccxt_error(ccxt.AccountSuspended("x")), FatalBrokerError)
    assert isinstance(translate_ccxt_error(ccxt.OrderNotFound("x")), BrokerRejection)
    assert isinstance(translate_ccxt_error(ccxt.InvalidNonce("x")), InvalidNonceError)


# --------------------------------------------------------------------------- the breaker


def test_the_breaker_opens_on_an_outage_and_recovers_through_time_probes(kraken, clock):
    """5 failed balance fetches open the read circuit; nothing is sent while open; Time probes."""
    read = BrokerCircuitBreaker("kraken", scope="read", clock=clock, max_attempts=1)
    broker = CcxtBroker(
        exchange_for(kraken), clock=clock, nonce_source=NonceSource(clock), read_breaker=read
    )
    broker.get_positions()
    kraken.inject("EService:Unavailable", endpoint="BalanceEx", times=5)
    for _ in range(5):
        with pytest.raises(TransientBrokerError):
            broker.get_positions()
    assert read.state is CircuitState.OPEN
    before = len(kraken.requests)
    with pytest.raises(CircuitOpenError):
        broker.get_positions()
    assert len(kraken.requests) == before
    clock.advance(60.0)
    assert broker.get_positions() == [Position("BTC/USD", Decimal("0.5"))]
    assert [r.endpoint for r in kraken.requests[before:]] == ["Time", "Time", "BalanceEx"]
    assert read.state is CircuitState.CLOSED


# --------------------------------------------------------------------------- no duplicates


def test_a_lost_add_order_answer_is_looked_up_not_resent(broker, kraken):
    """AddOrder executes, the answer is a 504: the order is found by cl_ord_id, sent once."""
    broker.get_positions()
    kraken.inject("accept_then:http:504", endpoint="AddOrder")
    order = broker.place_market_order("ETH/USD", "buy", "1", client_order_id="bg-lost")
    assert order.client_order_id == "bg-lost"
    assert kraken.count("AddOrder") == 1
    assert len(kraken.orders()) == 1


def test_an_add_order_that_never_landed_is_resent_once_after_its_deadline(broker, kraken, clock):
    """A 503 before execution: unresolved (not resent) until two lookups after the deadline."""
    broker.get_positions()
    kraken.inject("http:503", endpoint="AddOrder")
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.place_market_order("ETH/USD", "buy", "1", client_order_id="bg-retry")
    assert kraken.count("AddOrder") == 1
    assert info.value.deadline is not None
    clock.advance(info.value.deadline - clock.time())
    order = broker.place_market_order("ETH/USD", "buy", "1", client_order_id="bg-retry")
    assert order.client_order_id == "bg-retry"
    assert kraken.count("AddOrder") == 2
    assert [o["cl_ord_id"] for o in kraken.orders()] == ["bg-retry"]
    endpoints = [r.endpoint for r in kraken.requests]
    first_add = endpoints.index("AddOrder")
    assert endpoints[first_add + 1 :] == [
        "OpenOrders",
        "ClosedOrders",
        "OpenOrders",
        "ClosedOrders",
        "OpenOrders",  # the confirming lookup, 2 s later: one answer is not proof
        "ClosedOrders",
        "AddOrder",
    ]


def test_many_orders_through_random_faults_make_no_duplicate(kraken, clock):
    """120 orders with lost answers, 5xx and busy errors: every order exists exactly once."""
    write = BrokerCircuitBreaker("kraken", scope="write", clock=clock, failure_threshold=1000)
    broker = CcxtBroker(
        exchange_for(kraken), clock=clock, nonce_source=NonceSource(clock), write_breaker=write
    )
    broker.get_positions()
    faults = ["accept_then:http:504", "http:503", "EService:Busy", "accept_then:EService:Busy"]
    unresolved = 0
    for i in range(120):
        if i % 2:
            kraken.inject(faults[i % len(faults)], endpoint="AddOrder")
        while True:
            try:
                broker.place_market_order("SOL/USD", "buy", "0.1", client_order_id=f"bg-{i}")
                break
            except OrderUnconfirmedError as exc:
                unresolved += 1
                clock.advance((exc.deadline or clock.time()) - clock.time() + 1)
    ids = [o["cl_ord_id"] for o in kraken.orders()]
    assert sorted(ids) == sorted(f"bg-{i}" for i in range(120))
    assert kraken.count("AddOrder") > 120  # some were resent after proven absence
    assert unresolved >= 20


# --------------------------------------------------------------------------- nonces


def test_a_refused_nonce_is_resynced_and_retried_once(broker, kraken):
    """One EAPI:Invalid nonce: re-sync, retry, succeed, and count the collision."""
    broker.get_positions()
    kraken.inject("EAPI:Invalid nonce", endpoint="BalanceEx")
    assert broker.fetch_positions() == [Position("BTC/USD", Decimal("0.5"))]
    assert broker.get_status()["nonce_collisions"] == 1


def test_a_nonce_refused_past_the_resyncs_gives_up(broker, kraken):
    """Five re-syncs and retries per call: a sixth refusal is raised (and re-synced too)."""
    broker.get_positions()
    kraken.inject("EAPI:Invalid nonce", endpoint="BalanceEx", times=6)
    with pytest.raises(InvalidNonceError):
        broker.fetch_positions()
    assert broker.get_status()["nonce_collisions"] == 6


def test_threads_sharing_a_key_never_collide(kraken, clock):
    """Two client instances on one key, 8 threads: all private calls pass Kraken's nonce check."""
    source = NonceSource()  # real time: the emulator checks real increase
    brokers = [CcxtBroker(exchange_for(kraken), clock=clock, nonce_source=source) for _ in range(2)]
    for b in brokers:
        b.get_positions()
    errors: list[BaseException] = []

    def work(b: CcxtBroker) -> None:
        try:
            for _ in range(15):
                b.fetch_positions()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(brokers[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert source.collisions == 0
    assert kraken.count("BalanceEx") == 2 + 8 * 15


def test_without_a_shared_source_ccxt_instances_do_collide(kraken):
    """The failure the monitor exists for: two ccxt instances on one key, same millisecond."""
    a, b = exchange_for(kraken), exchange_for(kraken)
    a.load_markets()
    b.load_markets()
    a.nonce = b.nonce = lambda: 1_000_000  # two processes whose clocks read the same ms
    a.fetch_balance()
    with pytest.raises(ccxt.InvalidNonce):
        b.fetch_balance()


def test_the_nonce_source_is_shared_per_key_and_strictly_increasing(clock):
    """One source per API key (keyed by a hash); values only go up, even with time frozen."""
    source = nonce_source_for("key-a", clock)
    assert nonce_source_for("key-a") is source
    assert nonce_source_for("key-b") is not source
    values = [source.next() for _ in range(100)]
    assert values == sorted(set(values))
    source.resync()
    assert source.next() > values[-1] + 999
