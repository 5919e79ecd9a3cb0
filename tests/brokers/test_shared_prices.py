"""One venue, one price call per pass: shared answers that never look fresher or better.

Ten thousand accounts on one exchange used to fetch the same tickers ten thousand times a pass
(issue 16). A venue's :class:`SharedPrices` fetches once for all of them; these tests pin what
sharing must never change: each account judges every value, a shared answer keeps the time it
arrived, a failure is not remembered, and a new pass starts with prices of its own.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from brokerguard import ConfigurationError, FatalBrokerError, PriceProblem
from brokerguard.brokers.prices import MAX_SHARED_SYMBOLS, SharedPrices
from brokerguard.config import parse_config
from brokerguard.risk.valuation import Valuator
from brokerguard.service import GuardService
from brokerguard.testing import FakeClock


class Venue:
    """A fetch that records what it was asked and answers from a price table."""

    def __init__(self, prices: dict[str, object]) -> None:
        self.prices = prices
        self.asked: list[list[str]] = []
        self.fail: Exception | None = None

    def __call__(self, symbols: list[str]) -> dict[str, object]:
        self.asked.append(list(symbols))
        if self.fail is not None:
            raise self.fail
        return {s: self.prices[s] for s in symbols if s in self.prices}


def test_accounts_of_a_venue_share_one_call_and_each_gets_only_what_it_asked():
    clock = FakeClock()
    board = SharedPrices(clock, max_age=5)
    venue = Venue({"BTC/USD": Decimal(100), "ETH/USD": Decimal(10)})
    first = board.get(["BTC/USD"], venue)
    second = board.get(["BTC/USD"], venue)
    assert len(venue.asked) == 1
    assert set(first) == set(second) == {"BTC/USD"}
    board.get(["ETH/USD"], venue)  # not asked yet: one more call, for every known symbol
    assert sorted(venue.asked[-1]) == ["BTC/USD", "ETH/USD"]
    board.get(["BTC/USD", "ETH/USD"], venue)
    assert len(venue.asked) == 2


def test_a_shared_answer_keeps_the_time_it_arrived():
    clock = FakeClock(start=1_000.0)
    board = SharedPrices(clock, max_age=5)
    venue = Venue({"BTC/USD": Decimal(100)})
    board.get(["BTC/USD"], venue)
    clock.advance(4)
    (received,) = board.get(["BTC/USD"], venue).values()
    assert received.received_at == 1_000.0  # not the time it was read from the board
    clock.advance(1.001)
    board.get(["BTC/USD"], venue)
    assert len(venue.asked) == 2  # older than max_age: fetched again


def test_a_failed_fetch_is_not_remembered():
    clock = FakeClock()
    board = SharedPrices(clock, max_age=5)
    venue = Venue({"BTC/USD": Decimal(100)})
    venue.fail = TimeoutError("venue down")
    with pytest.raises(TimeoutError):
        board.get(["BTC/USD"], venue)
    venue.fail = None
    assert "BTC/USD" in board.get(["BTC/USD"], venue)
    assert len(venue.asked) == 2


def test_a_new_pass_starts_with_prices_of_its_own():
    clock = FakeClock()
    board = SharedPrices(clock, max_age=60)
    venue = Venue({"BTC/USD": Decimal(100)})
    board.get(["BTC/USD"], venue)
    board.new_pass()
    board.get(["BTC/USD"], venue)
    assert len(venue.asked) == 2


def test_max_age_zero_never_shares():
    board = SharedPrices(FakeClock(), max_age=0)
    venue = Venue({"BTC/USD": Decimal(100)})
    board.get(["BTC/USD"], venue)
    board.get(["BTC/USD"], venue)
    assert len(venue.asked) == 2
    with pytest.raises(ConfigurationError):
        SharedPrices(FakeClock(), max_age=-1)


def test_accounts_asking_during_a_fetch_wait_for_it_and_share_its_failure():
    """An exchange that is down costs one failed call, not one per account."""
    clock = FakeClock()
    board = SharedPrices(clock, max_age=5)
    board.get(["BTC/USD"], Venue({"BTC/USD": Decimal(100)}))  # the venue has answered BTC
    board.new_pass()
    started, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    def slow_failing(symbols: list[str]) -> dict[str, object]:
        calls.append(symbols)
        started.set()
        release.wait(5)
        raise TimeoutError("venue down")

    errors: list[BaseException] = []

    def account() -> None:
        try:
            board.get(["BTC/USD"], slow_failing)
        except TimeoutError as exc:
            errors.append(exc)

    leader = threading.Thread(target=account)
    leader.start()
    assert started.wait(5)
    followers = [threading.Thread(target=account) for _ in range(10)]
    for t in followers:
        t.start()
    release.set()
    for t in [leader, *followers]:
        t.join(5)
    assert len(calls) == 1
    assert len(errors) == 11


def test_a_failure_of_the_leading_accounts_key_is_not_shared_with_the_others():
    """A revoked key leads the fetch: its waiters, with keys of their own, fetch for themselves."""
    clock = FakeClock()
    board = SharedPrices(clock, max_age=5)
    board.get(["BTC/USD"], Venue({"BTC/USD": Decimal(100)}))  # the venue has answered BTC
    board.new_pass()
    started, release = threading.Event(), threading.Event()

    def revoked(symbols: list[str]) -> dict[str, object]:
        started.set()
        release.wait(5)
        raise FatalBrokerError("EAPI:Invalid key")

    healthy = Venue({"BTC/USD": Decimal(100)})
    answers: list[object] = []

    def lead() -> None:
        try:
            board.get(["BTC/USD"], revoked)
        except FatalBrokerError as exc:
            answers.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    assert started.wait(5)
    follower = threading.Thread(target=lambda: answers.append(board.get(["BTC/USD"], healthy)))
    follower.start()
    release.set()
    leader.join(5)
    follower.join(5)
    assert any(isinstance(a, FatalBrokerError) for a in answers)  # the revoked key's own
    assert {"BTC/USD"} in [set(a) for a in answers if isinstance(a, dict)]
    assert len(healthy.asked) == 1


def test_a_pair_the_venue_refuses_blinds_only_the_account_that_holds_it():
    """A delisted pair makes the whole batched call fail: it is never asked for the others."""
    board = SharedPrices(FakeClock(), max_age=5)
    prices = {"BTC/USD": Decimal(100), "ETH/USD": Decimal(10)}

    def venue(symbols: list[str]) -> dict[str, object]:
        if "GONE/USD" in symbols:
            raise RuntimeError("EQuery:Unknown asset pair")
        return {s: prices[s] for s in symbols if s in prices}

    assert set(board.get(["BTC/USD"], venue)) == {"BTC/USD"}
    board.new_pass()
    with pytest.raises(RuntimeError):
        board.get(["GONE/USD", "BTC/USD"], venue)
    assert set(board.get(["ETH/USD", "BTC/USD"], venue)) == {"ETH/USD", "BTC/USD"}
    board.new_pass()
    assert set(board.get(["BTC/USD"], venue)) == {"BTC/USD"}


def test_a_fetch_begun_in_the_previous_pass_never_answers_the_next():
    clock = FakeClock()
    board = SharedPrices(clock, max_age=60)
    entered, release = threading.Event(), threading.Event()
    values = iter([Decimal(1), Decimal(2)])

    def venue(symbols: list[str]) -> dict[str, object]:
        value = next(values)
        if value == 1:
            entered.set()
            release.wait(5)
        return dict.fromkeys(symbols, value)

    old = threading.Thread(target=board.get, args=(["BTC/USD"], venue))
    old.start()
    assert entered.wait(5)
    board.new_pass()
    release.set()
    old.join(5)
    (received,) = board.get(["BTC/USD"], venue).values()
    assert received.value == Decimal(2)


def test_the_symbols_a_venue_remembers_are_bounded():
    board = SharedPrices(FakeClock(), max_age=5)
    venue = Venue({})
    for n in range(0, MAX_SHARED_SYMBOLS + 50, 50):
        board.get([f"C{n + i}/USD" for i in range(50)], venue)
    assert len(venue.asked[-1]) <= MAX_SHARED_SYMBOLS + 50


def _venue_config(tmp_path, share_prices_s: float, **broker: object) -> dict[str, object]:
    prices = {"BTC/USD": "100", "ETH/USD": "10", "SOL/USD": "5"}
    return {
        "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "alerts": [],
        "brokers": {
            "paper": {"kind": "paper", "prices": prices, "share_prices_s": share_prices_s, **broker}
        },
        "accounts": [
            {"id": f"a{n}", "broker": "paper", "max_positions": 5, "positions": {"BTC/USD": "1"}}
            for n in range(10)
        ],
    }


@pytest.mark.parametrize(("share_prices_s", "expected"), [(5.0, 1), (0.0, 10)])
def test_a_pass_over_ten_accounts_of_a_venue_fetches_prices_once(
    tmp_path, share_prices_s, expected
):
    clock = FakeClock(start=1_795_000_000.0)
    service = GuardService(parse_config(_venue_config(tmp_path, share_prices_s)), clock=clock)
    try:
        results = service.tick()
        assert {r["status"] for r in results.values()} == {"compliant"}
        price_calls = {
            id(call): call
            for runtime in service.accounts.values()
            for call in runtime.broker.calls
            if call.method == "fetch_prices"
        }
        assert len(price_calls) == expected
    finally:
        service.close()


def test_a_shared_answer_older_than_an_accounts_max_quote_age_is_stale_for_it(tmp_path):
    """Sharing for 5 s never lets an account with a 2 s limit value at a 3 s old price."""
    clock = FakeClock(start=1_795_000_000.0)
    config = _venue_config(tmp_path, 5.0)
    service = GuardService(parse_config(config), clock=clock)
    try:
        first, second = service.accounts["a0"].broker, service.accounts["a1"].broker
        Valuator(first, clock=clock, max_quote_age=2).value(first.get_positions())
        clock.advance(3)
        report = Valuator(second, clock=clock, max_quote_age=2).value(second.get_positions())
        (valuation,) = report.valuations
        assert valuation.price is None
        assert valuation.problem is PriceProblem.STALE
    finally:
        service.close()


def test_a_bad_price_is_bad_for_every_account_and_none_is_invented(tmp_path):
    clock = FakeClock(start=1_795_000_000.0)
    config = _venue_config(tmp_path, 5.0, faults={"bad_prices": {"BTC/USD": "NaN"}})
    service = GuardService(parse_config(config), clock=clock)
    try:
        for runtime in service.accounts.values():
            check = runtime.broker.check_prices(["BTC/USD", "ETH/USD"])
            assert "BTC/USD" not in check.quotes
            assert check.problems["BTC/USD"] is PriceProblem.NAN
            assert check.quotes["ETH/USD"].price == Decimal(10)
    finally:
        service.close()


def test_entries_of_one_venue_share_outage_detection_and_prices_but_not_rate_limits(tmp_path):
    clock = FakeClock(start=1_795_000_000.0)
    prices = {"BTC/USD": "100"}
    config = {
        "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "alerts": [],
        "brokers": {
            f"key-{n}": {"kind": "paper", "prices": prices, "venue": "kraken", "max_calls_per_s": 5}
            for n in range(3)
        },
        "accounts": [
            {"id": f"a{n}", "broker": f"key-{n}", "max_positions": 5, "positions": {"BTC/USD": "1"}}
            for n in range(3)
        ],
    }
    service = GuardService(parse_config(config), clock=clock)
    try:
        brokers = [service.accounts[f"a{n}"].broker for n in range(3)]
        assert brokers[0].read_breaker is brokers[1].read_breaker is brokers[2].read_breaker
        assert brokers[0].read_breaker.broker_name == "kraken"
        assert brokers[0].market is brokers[2].market
        limiters = {id(service.rate_limiters[f"key-{n}"]) for n in range(3)}
        assert len(limiters) == 3
        assert set(service.prices) == {"kraken"}
    finally:
        service.close()


def test_a_venue_is_one_exchange():
    config = {
        "alerts": [],
        "brokers": {
            "paper-key": {"kind": "paper", "venue": "kraken"},
            "real-key": {"kind": "ccxt", "exchange": "kraken", "venue": "kraken"},
        },
        "accounts": [{"id": "a", "broker": "paper-key", "max_positions": 5}],
    }
    with pytest.raises(ConfigurationError, match="one venue is one exchange"):
        parse_config(config)
