"""Red team against issue 16's speed paths: the store's hot cache, shared prices, venues, parsing.

Each test is an attack by a hostile operator, a hostile exchange or bad timing on something
added for speed. A test that passes pins a defence; a strict xfail pins a gap through which the
guard fails open (a halt read late, a price that is wrong, a setting silently ignored) until
the owner closes it — the xfail then fails, and the marker is removed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from brokerguard import (
    BrokerGuardError,
    ConfigurationError,
    FatalBrokerError,
    PriceProblem,
    RateLimitedError,
    StoreUnavailableError,
    models,
)
from brokerguard.brokers.paper import PaperBroker
from brokerguard.brokers.prices import SharedPrices
from brokerguard.config import parse_config
from brokerguard.models import MAX_MAGNITUDE, Quote, parse_decimal, parse_symbol
from brokerguard.risk.gate import EntryDenied, TradingGate
from brokerguard.risk.valuation import Valuator
from brokerguard.service import GuardService
from brokerguard.store import StateStore, open_store
from brokerguard.store.state import LIVE_ORDER_STATUSES
from brokerguard.testing import FakeClock
from tests.conftest import REDIS_URL
from tests.coordination.proxy import TcpProxy

START = 1_795_000_000.0


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch) -> Iterator[None]:
    """Every store a test opens is closed after it."""
    opened: list[StateStore] = []
    real_init = StateStore.__init__

    def tracking_init(self: StateStore, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(StateStore, "__init__", tracking_init)
    yield
    for store in opened:
        store.close()


def _in_another_process(url: str, code: str) -> None:
    """Run `code` against a store `s` at `url` in a separate Python process (cache off)."""
    script = (
        "from brokerguard.store import open_store\n"
        f"s = open_store({url!r}, cache_s=0)\n"
        f"{code}\n"
        "s.close()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)  # noqa: S603 (ours)


# ---------------------------------------------------------------- 1. the store's hot cache


def test_a_halt_written_by_another_process_is_seen_by_the_next_read(tmp_path, clock):
    """A real second process (the CLI), not a second store object: PRAGMA data_version holds."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ours = open_store(url, clock=clock, cache_s=3600)
    assert ours.get_halt("a") is None  # cached, and the clock never moves
    _in_another_process(url, "s.halt('a', 'operator', 'cli')")
    assert ours.get_halt("a") is not None
    assert ours.account_state("a").halt is not None


def test_a_halt_survives_a_wal_checkpoint_by_a_third_connection(tmp_path, clock):
    """A checkpoint moves the halt from the WAL into the file: the cache must not lose it."""
    path = tmp_path / "state.db"
    url = f"sqlite:///{path}"
    ours = open_store(url, clock=clock, cache_s=3600)
    assert ours.get_halt("a") is None
    _in_another_process(url, "s.halt('a', 'operator', 'cli')")
    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert ours.get_halt("a") is not None
    _in_another_process(url, "s.pause_symbol('a', 'ETH/USD', 'operator')")
    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert ours.paused_symbols("a") == {"ETH/USD"}


@pytest.mark.parametrize("form", ["query", "percent"])
def test_another_processs_halt_is_seen_at_once_whatever_the_sqlite_url_form(tmp_path, clock, form):
    url = (
        f"sqlite:///{tmp_path / 'state.db'}?timeout=5"
        if form == "query"
        else f"sqlite:///{tmp_path}/my%20state.db"
    )
    ours = open_store(url, clock=clock, cache_s=3600)
    assert ours.get_halt("a") is None
    _in_another_process(url, "s.halt('a', 'operator', 'cli')")
    assert ours.get_halt("a") is not None  # the clock has not moved: only the counter tells


def test_the_gate_refuses_an_entry_at_once_after_another_processs_halt_and_pause(tmp_path):
    """The whole point of the bound: a bot's next entry check sees the CLI's halt (SQLite)."""
    clock = FakeClock(start=START)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = open_store(url, clock=clock, cache_s=30)
    broker = PaperBroker(account_id="a", clock=clock, positions={"BTC/USD": "1"})
    gate = TradingGate(broker, 5, store=store, clock=clock)
    assert gate.check_entry("ETH/USD").allowed  # warms every cache; the clock never moves
    _in_another_process(url, "s.pause_symbol('a', 'ETH/USD', 'operator')")
    assert not gate.check_entry("ETH/USD").allowed
    assert gate.check_entry("SOL/USD").allowed
    _in_another_process(url, "s.halt('a', 'operator', 'cli')")
    decision = gate.check_entry("SOL/USD")
    assert not decision.allowed
    with pytest.raises(EntryDenied), gate.reserve_entry("SOL/USD"):
        pass


def test_a_backup_restored_into_the_live_file_is_seen_by_the_next_read(tmp_path, clock):
    """Restoring with SQLite's backup API (sqlite3 .restore) writes through a connection."""
    backup = tmp_path / "backup.db"
    _in_another_process(f"sqlite:///{backup}", "s.halt('a', 'operator', 'before the backup')")
    live = tmp_path / "state.db"
    ours = open_store(f"sqlite:///{live}", clock=clock, cache_s=3600)
    assert ours.get_halt("a") is None
    with (
        contextlib.closing(sqlite3.connect(backup)) as source,
        contextlib.closing(sqlite3.connect(live)) as target,
    ):
        source.backup(target)
    assert ours.get_halt("a") is not None


def test_a_pinned_step_still_sees_another_processs_halt_within_cache_s(tmp_path, clock):
    """Pinning reads the counter once per step, but never stretches the cache_s bound."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ours = open_store(url, clock=clock, cache_s=1.0)
    with ours.pinned():
        assert ours.get_halt("a") is None
        _in_another_process(url, "s.halt('a', 'operator', 'cli')")
        clock.advance(1.001)
        assert ours.get_halt("a") is not None
    with ours.pinned():  # a new step reads the counter again at once
        _in_another_process(url, "s.resume('a', 'ops', 'checked')")
        assert ours.get_halt("a") is None


def test_a_pinned_step_on_another_thread_does_not_pin_an_entry_check(tmp_path, clock):
    """An entry check (another thread) sees another process's halt while a step is pinned."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ours = open_store(url, clock=clock, cache_s=3600)
    in_step, step_done = threading.Event(), threading.Event()

    def step() -> None:
        with ours.pinned():
            ours.get_halt("a")
            in_step.set()
            step_done.wait(30)

    worker = threading.Thread(target=step)
    worker.start()
    try:
        assert in_step.wait(30)
        _in_another_process(url, "s.halt('a', 'operator', 'cli')")
        assert ours.account_state("a").halt is not None
    finally:
        step_done.set()
        worker.join(30)


def test_a_write_whose_answer_is_lost_after_commit_is_read_back(tmp_path, clock, monkeypatch):
    """The commit landed, the caller got an error: the cache must not keep the state before it."""
    ours = open_store(f"sqlite:///{tmp_path / 'state.db'}", clock=clock, cache_s=3600)
    assert ours.get_halt("a") is None
    real = ours._transaction

    def commit_then_fail(work: Any) -> Any:
        real(work)
        raise StoreUnavailableError("the answer to COMMIT was lost")

    monkeypatch.setattr(ours, "_transaction", commit_then_fail)
    with pytest.raises(StoreUnavailableError):
        ours.halt("a", "over cap", "enforcer")
    monkeypatch.undo()
    assert ours.get_halt("a") is not None


def test_readers_racing_another_connections_halt_never_read_it_back_out(tmp_path, clock):
    """Once the other connection's halt() returned, no read of any thread says "not halted"."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ours = open_store(url, clock=clock, cache_s=3600)
    theirs = open_store(url, clock=clock, cache_s=0)
    halted = threading.Event()
    wrong: list[str] = []

    def reader() -> None:
        for _ in range(200):
            done = halted.is_set()
            if ours.get_halt("a") is None and done:
                wrong.append("not halted after halt() returned")

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    theirs.halt("a", "operator", "cli")
    halted.set()
    for t in threads:
        t.join(60)
    assert wrong == []
    assert ours.get_halt("a") is not None


def test_on_postgresql_a_pinned_step_keeps_the_cache_s_bound(pg_url):
    clock = FakeClock()
    ours = open_store(pg_url, clock=clock, cache_s=1.0)
    theirs = open_store(pg_url, clock=clock, cache_s=0)
    with ours.pinned():
        assert ours.get_halt("a") is None
        theirs.halt("a", "operator", "cli")
        clock.advance(1.001)
        assert ours.get_halt("a") is not None
        theirs.record_order_intent(
            "a",
            models.OrderRequest("BTC/USD", models.Side.BUY, Decimal(1), "c1"),
            purpose="entry",
        )
        clock.advance(1.001)
        live = ours.journal("a", statuses=set(LIVE_ORDER_STATUSES))
        assert [e.client_order_id for e in live] == ["c1"]


@pytest.mark.parametrize("failure", ["cut", "black_hole"])
def test_on_postgresql_a_lost_database_fails_reads_closed_once_cache_s_has_passed(pg_url, failure):
    """A warm cache may answer within its bound; past it, a dead database is STORE_UNAVAILABLE."""
    host = pg_url.split("@", 1)[1].split("/", 1)[0]
    name, port = host.rsplit(":", 1)
    proxy = TcpProxy((name, int(port)))
    proxy.restore()
    clock = FakeClock(start=START)
    try:
        ours = open_store(
            pg_url.replace(host, f"127.0.0.1:{proxy.port}"), clock=clock, timeout=1, cache_s=1
        )
        assert ours.get_halt("a") is None
        getattr(proxy, failure)()
        clock.advance(1.001)
        with pytest.raises(StoreUnavailableError):
            ours.get_halt("a")
        with pytest.raises(StoreUnavailableError):
            ours.account_state("a")
    finally:
        proxy.cut()


def test_cache_s_zero_reads_every_time_even_inside_a_pinned_step(pg_url):
    clock = FakeClock()
    ours = open_store(pg_url, clock=clock, cache_s=0)
    theirs = open_store(pg_url, clock=clock, cache_s=0)
    with ours.pinned():
        assert ours.get_halt("a") is None
        theirs.halt("a", "operator", "cli")
        assert ours.get_halt("a") is not None


# ---------------------------------------------------------------- 2. shared prices


class HostileBroker(PaperBroker):
    """A paper account whose venue answers whatever the test puts in `answer`."""

    def __init__(self, answer: dict[str, object], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answer = answer
        self.price_calls = 0

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        self.price_calls += 1
        return {s: self.answer[s] for s in symbols if s in self.answer}


def _accounts(
    answer: dict[str, object], clock: FakeClock, n: int, *, max_age: float = 5.0
) -> tuple[SharedPrices, list[HostileBroker]]:
    board = SharedPrices(clock, max_age=max_age)
    brokers = [HostileBroker(answer, account_id=f"a{i}", clock=clock) for i in range(n)]
    for broker in brokers:
        broker.share_prices(board)
    return board, brokers


def test_an_answer_in_flight_when_a_pass_starts_is_not_the_new_passs_answer():
    clock = FakeClock(start=START)
    board = SharedPrices(clock, max_age=60)
    started, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    def slow(symbols: list[str]) -> dict[str, object]:
        calls.append(symbols)
        if len(calls) == 1:
            started.set()
            release.wait(30)
        return dict.fromkeys(symbols, Decimal(len(calls)))

    old = threading.Thread(target=board.get, args=(["BTC/USD"], slow))
    old.start()
    assert started.wait(30)
    board.new_pass()  # the service's next tick (a gate's fetch was still in flight)
    release.set()
    old.join(30)
    board.get(["BTC/USD"], slow)
    assert len(calls) == 2  # the new pass fetched prices of its own


def test_many_accounts_at_once_get_exactly_what_the_venue_said_and_nothing_else():
    """32 threads asking overlapping symbols: no invented, substituted or swapped price."""
    clock = FakeClock(start=START)
    answer: dict[str, object] = {f"C{i}/USD": Decimal(i + 1) for i in range(40)}
    answer["BAD/USD"] = "NaN"
    answer["ZERO/USD"] = Decimal(0)
    _, brokers = _accounts(answer, clock, 32)
    universe = [*answer, "GONE/USD"]  # GONE: the venue has no price for it
    wrong: list[str] = []

    def account(i: int, broker: HostileBroker) -> None:
        wanted = universe[i % 7 :: 3]
        check = broker.check_prices(wanted)
        for symbol in wanted:
            value = answer.get(symbol)
            quote = check.quotes.get(symbol)
            if isinstance(value, Decimal) and value > 0:
                if quote is None or quote.price != value or quote.symbol != symbol:
                    wrong.append(f"{broker.account_id} {symbol}: {quote}")
            elif quote is not None or symbol not in check.problems:
                wrong.append(f"{broker.account_id} {symbol} priced: {quote}")
        if set(check.quotes) - set(wanted):
            wrong.append(f"{broker.account_id} got symbols it did not ask for")

    threads = [threading.Thread(target=account, args=(i, b)) for i, b in enumerate(brokers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert wrong == []
    assert sum(b.price_calls for b in brokers) < len(brokers)  # and it was shared


def test_a_shared_exchange_timestamp_is_judged_by_each_accounts_own_max_quote_age():
    """A venue Quote older than one account's limit is stale for it, fresh for a laxer one."""
    clock = FakeClock(start=START)
    answer: dict[str, object] = {"BTC/USD": Quote("BTC/USD", Decimal(100), START - 10)}
    _, (lax, strict) = _accounts(answer, clock, 2)
    lax_check = lax.check_prices(["BTC/USD"])
    assert lax_check.quotes["BTC/USD"].timestamp == START - 10
    lax_report = Valuator(lax, clock=clock, max_quote_age=60).value(
        [models.Position("BTC/USD", Decimal(1))]
    )
    strict_report = Valuator(strict, clock=clock, max_quote_age=5).value(
        [models.Position("BTC/USD", Decimal(1))]
    )
    assert lax_report.valuations[0].price == Decimal(100)
    assert strict_report.valuations[0].price is None
    assert strict_report.valuations[0].problem is PriceProblem.STALE
    assert sum(b.price_calls for b in (lax, strict)) == 1


def test_a_memoized_quote_keeps_the_receipt_time_not_the_read_time():
    clock = FakeClock(start=START)
    _, (first, second) = _accounts({"BTC/USD": Decimal(100)}, clock, 2)
    first.check_prices(["BTC/USD"])
    clock.advance(4)
    quote = second.check_prices(["BTC/USD"]).quotes["BTC/USD"]
    assert quote.timestamp == START
    assert quote.stamped_on_receipt


def test_a_quote_for_another_symbol_is_never_the_price_of_the_one_asked():
    clock = FakeClock(start=START)
    swapped = Quote("ETH/USD", Decimal(3000), START)
    _, (first, second) = _accounts({"BTC/USD": swapped}, clock, 2)
    for broker in (first, second):
        check = broker.check_prices(["BTC/USD"])
        assert "BTC/USD" not in check.quotes


def test_a_signalling_nan_or_a_lying_decimal_is_bad_for_every_sharing_account():
    class Lying(Decimal):
        """Claims to be finite and positive whatever it holds."""

        def is_finite(self) -> bool:
            return True

    clock = FakeClock(start=START)
    answer: dict[str, object] = {
        "SNAN/USD": Decimal("sNaN"),
        "LIE/USD": Lying("NaN"),
        "NEG/USD": Decimal("-0"),
        "HUGE/USD": Decimal("1E+19"),
    }
    _, brokers = _accounts(answer, clock, 3)
    for broker in brokers:
        check = broker.check_prices(list(answer))
        assert check.quotes == {}
        assert set(check.problems) == set(answer)


class RefusesUnknown(HostileBroker):
    """A venue that refuses a whole batch naming a pair it no longer lists.

    Kraken's ``EQuery:Unknown asset pair``; ccxt keeps the pair while its markets are cached.
    """

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        if "DELISTED/USD" in symbols:
            self.price_calls += 1
            raise models.InvalidBrokerData("prices", list(symbols), "unknown_asset_pair")
        return super().fetch_prices(symbols)


def test_one_accounts_refused_symbol_does_not_blind_the_rest_of_the_venue():
    clock = FakeClock(start=START)
    board = SharedPrices(clock, max_age=5)
    answer: dict[str, object] = {"BTC/USD": Decimal(100)}
    holder, other = (RefusesUnknown(answer, account_id=a, clock=clock) for a in ("x", "y"))
    holder.share_prices(board)
    other.share_prices(board)
    with pytest.raises(models.InvalidBrokerData):
        holder.check_prices(["DELISTED/USD", "BTC/USD"])
    clock.advance(10)
    board.new_pass()
    check = other.check_prices(["BTC/USD"])
    assert check.quotes["BTC/USD"].price == Decimal(100)


def test_a_failed_shared_fetch_is_not_remembered_and_the_next_account_fetches():
    clock = FakeClock(start=START)
    board = SharedPrices(clock, max_age=5)
    fetches: list[list[str]] = []

    def flaky(symbols: list[str]) -> dict[str, object]:
        fetches.append(symbols)
        if len(fetches) == 1:
            raise TimeoutError("venue timed out")
        return dict.fromkeys(symbols, Decimal(7))

    with pytest.raises(TimeoutError):
        board.get(["BTC/USD"], flaky)
    answer = board.get(["BTC/USD"], flaky)
    assert answer["BTC/USD"].value == Decimal(7)
    assert len(fetches) == 2


# ---------------------------------------------------------------- 3. venues


def _two_entries(tmp_path: Path, first: dict[str, object], second: dict[str, object]):
    return {
        "store": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "alerts": [],
        "brokers": {
            "key-a": {"kind": "paper", "venue": "kraken", **first},
            "key-b": {"kind": "paper", "venue": "kraken", **second},
        },
        "accounts": [
            {"id": "a", "broker": "key-a", "max_positions": 5, "positions": {"BTC/USD": "1"}},
            {"id": "b", "broker": "key-b", "max_positions": 5, "positions": {"BTC/USD": "1"}},
        ],
    }


def _service_or_refused(config: dict[str, Any]) -> GuardService | None:
    """The service, or None when the configuration was refused (a defence too)."""
    try:
        parsed = parse_config(config)
    except ConfigurationError:
        return None
    return GuardService(parsed, clock=FakeClock(start=START))


def test_an_entry_that_opts_out_of_shared_prices_fetches_its_own(tmp_path):
    config = _two_entries(tmp_path, {"share_prices_s": 5.0}, {"share_prices_s": 0.0})
    service = _service_or_refused(config)
    if service is None:
        return
    try:
        service.accounts["a"].broker.check_prices(["BTC/USD"])
        mine = service.accounts["b"].broker
        before = sum(1 for c in mine.calls if c.method == "fetch_prices")
        mine.check_prices(["BTC/USD"])
        after = sum(1 for c in mine.calls if c.method == "fetch_prices")
        assert after == before + 1  # calls are the paper market's: one more, its own
    finally:
        service.close()


def test_a_paper_entry_of_a_venue_is_never_valued_at_another_entrys_prices(tmp_path):
    config = _two_entries(
        tmp_path, {"prices": {"BTC/USD": "50000"}}, {"prices": {"BTC/USD": "100"}}
    )
    service = _service_or_refused(config)
    if service is None:
        return
    try:
        price = service.accounts["b"].broker.check_prices(["BTC/USD"]).price("BTC/USD")
        assert price is not None
        assert abs(price - Decimal(100)) < Decimal(10)  # its own market (a random walk)
    finally:
        service.close()


def test_an_entrys_breaker_override_is_never_silently_replaced_by_its_venue_mates(tmp_path):
    config = _two_entries(
        tmp_path,
        {"breaker": {"failure_threshold": 50}},
        {"breaker": {"failure_threshold": 1}},
    )
    service = _service_or_refused(config)
    if service is None:
        return
    try:
        assert service.accounts["b"].broker.read_breaker.failure_threshold == 1
    finally:
        service.close()


@pytest.mark.parametrize(
    "error",
    [
        FatalBrokerError("EAPI:Invalid key"),
        # Closed: a rate limit counts for the venue only when another key hits one too.
        RateLimitedError("EAPI:Rate limit exceeded", retry_after=5),
    ],
    ids=["revoked_key", "rate_limited_key"],
)
def test_one_keys_own_failure_does_not_open_the_circuit_of_the_other_keys(tmp_path, error):
    config = _two_entries(tmp_path, {}, {})
    service = GuardService(parse_config(config), clock=FakeClock(start=START))
    try:
        bad, good = service.accounts["a"].broker, service.accounts["b"].broker

        def refused() -> list[models.Position]:
            raise error

        bad.fetch_positions = refused  # type: ignore[method-assign] # the venue refuses key-a
        for _ in range(10):
            with contextlib.suppress(BrokerGuardError):
                bad.get_positions()
        assert [p.symbol for p in good.get_positions()] == ["BTC/USD"]
        assert service.accounts["b"].gate.check_entry("ETH/USD").allowed
    finally:
        service.close()


def test_a_venue_named_like_another_exchanges_entry_is_refused():
    """An entry's default venue is its name: joining it means being that exchange."""
    config = {
        "alerts": [],
        "brokers": {
            "binance": {"kind": "ccxt", "exchange": "binance"},
            "my-kraken": {"kind": "ccxt", "exchange": "kraken", "venue": "binance"},
        },
        "accounts": [{"id": "a", "broker": "my-kraken", "max_positions": 5}],
    }
    with pytest.raises(ConfigurationError, match="one venue is one exchange"):
        parse_config(config)


def test_in_a_fleet_a_venue_shares_one_circuit_and_another_workers_halt_stops_entries_in_cache_s(
    redis_namespace, pg_url
):
    """Two workers, one venue of two keys: the halt worker A takes is B's within cache_s."""
    prices = {"BTC/USD": "100", "ETH/USD": "10"}
    data = {
        "store": {"url": pg_url, "cache_s": 1.0},
        "coordination_url": REDIS_URL,
        "coordination": {"namespace": redis_namespace, "lease_ttl_s": 30, "timeout_s": 0.5},
        "alerts": [],
        "brokers": {
            f"key-{n}": {"kind": "paper", "venue": "kraken", "prices": prices} for n in range(2)
        },
        "accounts": [
            {"id": f"acct-{n}", "broker": f"key-{n}", "max_positions": 4} for n in range(2)
        ],
    }
    clock = FakeClock(start=START)
    config = parse_config(data)
    a, b = GuardService(config, clock=clock), GuardService(config, clock=clock)
    try:
        ours = b.accounts["acct-1"]
        assert ours.broker.read_breaker is b.accounts["acct-0"].broker.read_breaker
        assert ours.broker.read_breaker.broker_name == "kraken"
        assert ours.gate.check_entry("BTC/USD").allowed  # B's cache is warm now
        a.halt("acct-1", "incident", "ops")
        clock.advance(1.001)
        assert not ours.gate.check_entry("BTC/USD").allowed
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- 4. parsing fast paths


def _reference_parse(value: Decimal) -> tuple[str, Decimal | str]:
    """parse_decimal's rules without the fast path, for comparison."""
    if value.is_nan():
        return ("error", PriceProblem.NAN.value)
    if value.is_infinite():
        return ("error", PriceProblem.INFINITE.value)
    if value.copy_abs() > MAX_MAGNITUDE:
        return ("error", PriceProblem.ABSURD.value)
    if value < 0:
        return ("error", PriceProblem.NEGATIVE.value)
    if value == 0:
        return ("error", PriceProblem.ZERO.value)
    return ("ok", value)


@settings(max_examples=400)
@given(
    st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True),
        st.sampled_from(
            [
                Decimal("sNaN"),
                Decimal("-sNaN"),
                Decimal("-0"),
                Decimal("0E+999999"),
                Decimal("1E+18"),
                Decimal("1.0000000000000000000000001E+18"),
                Decimal("1E-999999"),
                Decimal("9" * 60),
                Decimal("1E+999999"),
                Decimal("-1E+999999"),
            ]
        ),
    )
)
def test_the_price_fast_path_answers_exactly_as_the_full_checks(value):
    assume(
        not value.is_finite() or value.adjusted() <= _EMAX
    )  # beyond: the absurd-exponent test below
    expected = _reference_parse(value)
    try:
        got: tuple[str, Decimal | str] = (
            "ok",
            parse_decimal(value, field="price", allow_zero=False),
        )
    except models.InvalidBrokerData as exc:
        got = ("error", str(exc.reason))
    if expected[0] == "ok":
        assert got[0] == "ok"
        assert got[1] == expected[1]
        assert type(got[1]) is Decimal
    else:
        assert got == expected


_EMAX = 999_999  # the default decimal context's largest exponent


@pytest.mark.parametrize("value", ["1E+1000000", "-1E+1000000", Decimal("1E+1000000")])
def test_a_price_with_an_absurd_exponent_is_refused_as_absurd(value):
    with pytest.raises(models.InvalidBrokerData) as caught:
        models.parse_price(value)
    assert caught.value.reason == PriceProblem.ABSURD
    clock = FakeClock(start=START)
    _, (broker,) = _accounts({"BTC/USD": Decimal(100), "HUGE/USD": value}, clock, 1)
    check = broker.check_prices(["BTC/USD", "HUGE/USD"])
    assert check.quotes["BTC/USD"].price == Decimal(100)


@pytest.fixture
def fresh_symbol_cache(monkeypatch) -> dict[str, str]:
    """An empty canonical-symbol memo for the test, the process's own restored after it."""
    cache: dict[str, str] = {}
    monkeypatch.setattr(models, "_CANONICAL", cache)
    return cache


def test_a_malformed_symbol_is_refused_every_time_and_never_memoized(fresh_symbol_cache):
    for _ in range(3):
        with pytest.raises(models.InvalidBrokerData):
            parse_symbol("BTC /US D")
    assert fresh_symbol_cache == {}
    assert parse_symbol(" xbt/usd ") == parse_symbol("BTC/USD") == "BTC/USD"


def test_a_full_symbol_memo_still_canonicalizes(fresh_symbol_cache):
    for i in range(models._CANONICAL_MAX + 10):
        parse_symbol(f"junk{i}/usd")
    assert len(fresh_symbol_cache) == models._CANONICAL_MAX
    assert parse_symbol("xdg/usd") == "DOGE/USD"
    assert parse_symbol("doge/usd ") == "DOGE/USD"


class _Impostor(str):
    """A str subclass equal to (and hashed as) "BTC/USD" whose text says ETH/USD."""

    __slots__ = ()

    def strip(self, chars: str | None = None) -> str:
        return self  # a subclass instance reaches the memo as its key

    def upper(self) -> str:
        return "ETH/USD"

    def __eq__(self, other: object) -> bool:
        return other == "BTC/USD"

    def __hash__(self) -> int:
        return hash("BTC/USD")


def test_a_hostile_symbol_object_cannot_poison_the_memo_for_genuine_symbols(fresh_symbol_cache):
    with contextlib.suppress(models.InvalidBrokerData):  # refusing it is a defence too
        parse_symbol(_Impostor("BTC/USD"))
    assert parse_symbol("BTC/USD") == "BTC/USD"
