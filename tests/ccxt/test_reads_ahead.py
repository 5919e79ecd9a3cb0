"""Reads ahead through the real ``ccxt.async_support`` client: one loop reads every account.

A service whose Kraken and Coinbase entries set ``async_reads`` builds their exchanges from
``ccxt.async_support`` on its reads loop. What must hold: a pass awaits every account's balance
on that loop (not in the pool's threads), all in flight at once; the enforcement is what it was
(compliant stays compliant, an account over its cap is sold down, with the order sent from a
pool thread through the same loop); nonces reach the venue strictly increasing per API key
while async reads and sync calls interleave; a failed, refused or empty balance fails the
account closed exactly as the sync path does; the async reads answer exactly what the sync
ones answer; and closing the service closes every session (pytest runs with ``-W error``: an
unclosed aiohttp session fails the test).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ccxt
import ccxt.async_support
import pytest

from brokerguard.brokers.ccxt import CcxtBroker, InvalidNonceError
from brokerguard.brokers.nonces import NonceSource
from brokerguard.config import parse_config
from brokerguard.errors import BrokerGuardError, ConfigurationError
from brokerguard.models import OrderRequest, Side
from brokerguard.risk.reads import ReadsAhead
from brokerguard.service import GuardService
from brokerguard.sim import coinbase as cb
from brokerguard.sim._http import LoopbackServer
from brokerguard.sim.kraken import DEFAULT_API_SECRET, KrakenEmulator
from brokerguard.testing import FakeClock
from tests.ccxt.conftest import START
from tests.sim.test_kraken_fixtures import RECORDED

BALANCE_ENDPOINTS = ("BalanceEx", "Balance")
"""Kraken's balance endpoints (ccxt 4.5.90 reads BalanceEx; a fault goes to both)."""
VENUE_ENDPOINTS = {
    # venue: (balance endpoints, order endpoint); Coinbase's are ccxt's path templates
    "kraken": (BALANCE_ENDPOINTS, "AddOrder"),
    "coinbase": (("brokerage/accounts", "accounts"), "brokerage/orders"),
}
_keys = itertools.count()


@dataclass
class Account:
    """One account (Kraken or Coinbase): its emulator, served through a recording front door."""

    name: str
    venue: str
    emulator: Any  # KrakenEmulator or CoinbaseEmulator
    server: LoopbackServer
    api_key: str
    cap: int
    balance_threads: list[str] = field(default_factory=list)
    """The thread of each raw balance call, in call (for Kraken: arrival) order."""
    ahead: list[bool] = field(default_factory=list)
    """For each raw balance call: whether it was the async read (``afetch_positions``)."""
    barrier_passed: list[bool] = field(default_factory=list)

    def nonces(self) -> list[int]:
        """The nonces of the private requests the venue received, in arrival order."""
        return [int(r.params["nonce"]) for r in self.emulator.requests if "nonce" in r.params]

    def count(self, endpoint: str) -> int:
        return self.emulator.count(endpoint)

    def balance_reads(self) -> int:
        return sum(self.count(e) for e in VENUE_ENDPOINTS[self.venue][0])

    def orders_sent(self) -> int:
        return self.count(VENUE_ENDPOINTS[self.venue][1])

    def fail_balance(self, fault: str, times: int = 1) -> None:
        for endpoint in VENUE_ENDPOINTS[self.venue][0]:
            self.emulator.inject(fault, endpoint=endpoint, times=times)


@dataclass
class Gate:
    """The first `waiting` balance requests (one per account in a pass) wait for one another."""

    barrier: threading.Barrier
    waiting: int
    """Balance requests still to be held at the barrier."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        with self.lock:
            self.waiting -= 1
            return self.waiting >= 0


def front_door(
    emulator: Any, account: list[Account], gate: Gate | None
) -> Callable[[str, str, str, Mapping[str, str], bytes], tuple[int, bytes]]:
    """The emulator's own ``handle``; with a gate, the first balance request waits for the others.

    Balance requests that are all in flight at once pass the barrier together; requests made
    one after the other break it (its timeout), and the break is recorded.
    """

    def respond(
        method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes]:
        endpoint = path.rsplit("/", 1)[-1]
        if gate is not None and endpoint in {"BalanceEx", "Balance", "accounts"} and gate.take():
            barrier = gate.barrier
            try:
                barrier.wait()
                account[0].barrier_passed.append(True)
            except threading.BrokenBarrierError:
                account[0].barrier_passed.append(False)
        return emulator.handle(method, path, query, headers, body)

    return respond


@dataclass
class World:
    clock: FakeClock
    accounts: list[Account]
    service: GuardService

    def broker(self, name: str) -> CcxtBroker:
        broker = self.service.accounts[name].broker
        assert isinstance(broker, CcxtBroker)
        return broker

    def account(self, name: str) -> Account:
        return next(a for a in self.accounts if a.name == name)


_IN_ASYNC_READ: ContextVar[bool] = ContextVar("in_async_read", default=False)


def spy_on_balance_reads(broker: CcxtBroker, account: Account) -> None:
    """Note the thread of every raw ``fetch_balance``, and whether the async read made it.

    Both are instance attributes (the exchange's method, the broker's async read), which the
    adapter and the base class call; the class, and so ``has_async_reads``, is unchanged.
    """
    original = broker.exchange.fetch_balance
    afetch = broker.afetch_positions

    async def fetch_balance(params: Any = None) -> Any:
        account.balance_threads.append(threading.current_thread().name)
        account.ahead.append(_IN_ASYNC_READ.get())
        return await original(params or {})

    async def afetch_positions() -> Any:
        _IN_ASYNC_READ.set(True)  # this task's context only
        return await afetch()

    broker.exchange.fetch_balance = fetch_balance
    broker.afetch_positions = afetch_positions  # type: ignore[method-assign]


HOLDINGS = {
    # name: (venue, balances by the venue's asset codes, cap)
    "fine": ("kraken", {"ZUSD": "100000", "XXBT": "0.5"}, 2),
    "over": ("kraken", {"ZUSD": "100000", "XXBT": "0.5", "XETH": "2", "SOL": "30"}, 2),
    "empty-ish": ("kraken", {"ZUSD": "5000"}, 1),
    "two": ("kraken", {"ZUSD": "100000", "XETH": "1", "SOL": "10"}, 2),
}
BOTH_VENUES = {
    "k-over": ("kraken", {"ZUSD": "100000", "XXBT": "0.5", "XETH": "2", "SOL": "30"}, 2),
    "cb-over": ("coinbase", {"USD": "100000", "BTC": "0.5", "ETH": "2", "SOL": "30"}, 2),
    "cb-fine": ("coinbase", {"USD": "1000", "BTC": "0.1"}, 1),
}


def build_world(
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    *,
    barrier_timeout_s: float | None = None,
    holdings: Mapping[str, tuple[str, Mapping[str, str], int]] = HOLDINGS,
) -> Iterator[World]:
    """A service with one async_reads entry (own key, own emulator) per account; closed after.

    With `barrier_timeout_s`, the pass's balance requests must all be in flight together.
    """
    gate = (
        Gate(threading.Barrier(len(holdings), timeout=barrier_timeout_s), len(holdings))
        if barrier_timeout_s is not None
        else None
    )
    accounts: list[Account] = []
    brokers: dict[str, Any] = {}
    for name, (venue, balances, cap) in holdings.items():
        key = f"bg-reads-ahead-{next(_keys)}"
        emulator_class, secret = (
            (KrakenEmulator, DEFAULT_API_SECRET)
            if venue == "kraken"
            else (cb.CoinbaseEmulator, cb.DEFAULT_API_SECRET)
        )
        emulator = emulator_class(balances=balances, api_key=key, time_source=clock.time)
        holder: list[Account] = []
        server = LoopbackServer(front_door(emulator, holder, gate), name=f"{venue}-{name}")
        server.start()
        account = Account(name, venue, emulator, server, key, cap)
        holder.append(account)
        accounts.append(account)
        env = f"BG_TEST_READS_{name.upper().replace('-', '_')}"
        monkeypatch.setenv(f"{env}_KEY", key)
        monkeypatch.setenv(f"{env}_SECRET", secret)
        brokers[f"broker-{name}"] = {
            "kind": "ccxt",
            "exchange": venue,
            "api_url": server.url,
            "api_key_env": f"{env}_KEY",
            "api_secret_env": f"{env}_SECRET",
            "async_reads": True,
            "timeout_s": 10,
            # brokerguard's limiter (on the test's clock), not ccxt's (real sleeps, ~3 s)
            "max_calls_per_s": 1000,
            "burst": 100,
        }
    config = parse_config(
        {
            "store": {"url": "sqlite://"},
            "enforcement": {
                "reads_ahead": True,
                "max_concurrency": 4,
                "read_timeout_s": READ_TIMEOUT_S,
            },
            "brokers": brokers,
            "accounts": [
                {"id": a.name, "broker": f"broker-{a.name}", "max_positions": a.cap}
                for a in accounts
            ],
        }
    )
    service = GuardService(config, clock=clock)
    world = World(clock, accounts, service)
    for account in accounts:
        spy_on_balance_reads(world.broker(account.name), account)
    try:
        yield world
    finally:
        service.close()
        for account in accounts:
            account.server.stop()


READ_TIMEOUT_S = 600.0
"""The pass's abandon timer for a read made ahead (``enforcement.read_timeout_s``, at most)."""


class NetworkClock(FakeClock):
    """A fake clock for a world of real network I/O: no fake timer abandons a real request.

    The pass races each read made ahead against ``clock.asleep(read_timeout_s)``. A fake
    sleeper moves the time once the loop is quiet, and a loop waiting on a socket is quiet:
    the timer would win every race against the real emulator at once. Here that one timer
    never fires (it is cancelled when the answer lands); the client's own timeout (real time)
    bounds a request, and every other sleep (backoff, rate limits) is fake as usual.
    """

    async def asleep(self, seconds: float) -> None:
        if seconds >= READ_TIMEOUT_S:
            await asyncio.Event().wait()  # until cancelled: the answer landed
        await super().asleep(seconds)


@pytest.fixture
def clock() -> FakeClock:
    """The test's time: the emulators, the service and its backoff read it; nobody sleeps."""
    return NetworkClock(start=START)


@pytest.fixture
def world(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Four Kraken accounts on the async client (no barrier)."""
    yield from build_world(clock, monkeypatch)


# --------------------------------------------------------------------------- one pass


def test_a_pass_reads_every_account_at_once_on_the_reads_loop_and_enforces_each(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every balance is read on the reads loop, all in flight together; each cap is enforced."""
    # Arrange: the balance requests wait for one another (5 s): one at a time would break it.
    world = build_world(clock, monkeypatch, barrier_timeout_s=5.0)
    w = next(world)
    try:
        for account in w.accounts:
            assert w.broker(account.name).has_async_reads
        # Act
        results = w.service.tick()
        primed = w.service.exits.last_primed
        # Assert: read ahead, concurrently, on the loop's thread
        assert primed is not None
        assert (primed.read, primed.skipped) == (4, 0)
        for account in w.accounts:
            assert account.barrier_passed[:1] == [True], account.name
            assert account.balance_threads[0] == "brokerguard-reads", account.name
            assert account.ahead[0], account.name  # the pass's async read, not a step's
        # ... and enforced as before: the account over its cap sold one position
        assert {n: r["status"] for n, r in results.items()} == dict.fromkeys(HOLDINGS, "compliant")
        over = results["over"]
        assert over["initial_position_count"] == 3
        assert over["position_count"] == 2
        assert len(over["liquidated"]) == 1
        assert w.account("over").orders_sent() == 1
        assert sum(w.account(n).orders_sent() for n in ("fine", "empty-ish", "two")) == 0
        assert results["fine"]["position_count"] == 1
        assert results["empty-ish"]["position_count"] == 0
        # the order and its checks were made by the pool, through the same loop
        after_first = w.account("over").balance_threads[1:]
        assert after_first
        assert set(after_first) == {"brokerguard-reads"}
    finally:
        world.close()


def test_kraken_and_coinbase_accounts_are_read_ahead_together_and_enforced(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both venues' async clients in one pass: read at once on the loop, each cap enforced."""
    world_iter = build_world(clock, monkeypatch, barrier_timeout_s=5.0, holdings=BOTH_VENUES)
    w = next(world_iter)
    try:
        # Act
        results = w.service.tick()
        # Assert
        for account in w.accounts:
            assert account.barrier_passed[:1] == [True], account.name
            assert set(account.balance_threads) == {"brokerguard-reads"}, account.name
            assert results[account.name]["status"] == "compliant", results[account.name]
        for name in ("k-over", "cb-over"):
            assert results[name]["initial_position_count"] == 3
            assert results[name]["position_count"] == 2
            assert w.account(name).orders_sent() == 1
        assert results["cb-fine"]["position_count"] == 1
        assert w.account("cb-fine").orders_sent() == 0
        # Coinbase's complete balance (v3 accounts, every page) on the async path too
        assert w.account("cb-fine").count("brokerage/accounts") >= 1
        assert w.account("cb-fine").count("accounts") == 0
    finally:
        world_iter.close()


def test_the_async_read_runs_on_the_loop_while_the_sync_callers_wait_in_their_threads(
    world: World,
) -> None:
    """A sync call made from another thread runs its coroutine on the home loop."""
    broker = world.broker("fine")
    seen = world.account("fine").balance_threads
    # Act: a synchronous read from this (non-loop) thread
    positions = broker.fetch_positions()
    # Assert
    assert [p.symbol for p in positions] == ["BTC/USD"]
    assert seen == ["brokerguard-reads"]
    assert broker.last_balance() is not None  # the sync read keeps this thread's balance


def test_a_sync_call_on_the_home_loop_thread_fails_loudly_instead_of_deadlocking(
    world: World,
) -> None:
    """Calling a sync method from the loop's own thread raises at once, sending nothing."""
    broker = world.broker("fine")
    loop = broker.home_loop
    assert loop is not None

    async def sync_call_on_the_loop() -> object:
        return broker.fetch_positions()

    # Act
    future = asyncio.run_coroutine_threadsafe(sync_call_on_the_loop(), loop)
    # Assert
    with pytest.raises(ConfigurationError, match="own event loop"):
        future.result(timeout=5)
    assert world.account("fine").balance_reads() == 0


def test_an_async_read_off_the_home_loop_is_refused(world: World) -> None:
    """Awaiting the async read on another loop raises: the session lives on its home loop."""
    broker = world.broker("fine")
    with pytest.raises(ConfigurationError, match="home event loop"):
        asyncio.run(broker.afetch_positions())
    assert world.account("fine").balance_reads() == 0


async def _cancel_the_other_tasks() -> None:
    """What closing the reads loop does to the calls under way on it."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("interruption", ["loop stopped", "calls cancelled"])
def test_a_caller_whose_call_the_loop_drops_gets_an_unknown_outcome_not_a_hang(
    clock: FakeClock, interruption: str
) -> None:
    """The home loop stops, or cancels its tasks, under a sync call: the caller is told."""
    emulator = KrakenEmulator(time_source=clock.time).start()
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="home-loop")
    runner.start()
    exchange = ccxt.async_support.kraken(
        {
            "apiKey": emulator.api_key,
            "secret": emulator.api_secret,
            "enableRateLimit": False,
            "asyncio_loop": loop,
        }
    )
    exchange.urls["api"] = {"public": emulator.url, "private": emulator.url}
    broker = CcxtBroker(exchange, clock=clock, nonce_source=NonceSource(clock), loop=loop)
    emulator.inject("slow:1.0", endpoint="OpenOrders")  # answers after a real second
    raised: list[BaseException] = []

    def call() -> None:
        try:
            broker.fetch_open_orders()
        except BrokerGuardError as exc:
            raised.append(exc)

    caller = threading.Thread(target=call)
    try:
        caller.start()
        for _ in range(500):  # until the request is at the venue (real I/O: a brief wait)
            if emulator.count("OpenOrders"):
                break
            threading.Event().wait(0.01)
        assert emulator.count("OpenOrders") == 1
        # Act: the loop drops the call under way
        if interruption == "loop stopped":
            loop.call_soon_threadsafe(loop.stop)
            runner.join(timeout=5)
        else:
            asyncio.run_coroutine_threadsafe(_cancel_the_other_tasks(), loop).result(timeout=5)
        caller.join(timeout=5)
        # Assert
        assert not caller.is_alive()
        assert [type(e).__name__ for e in raised] == ["TransientBrokerError"]
        assert "outcome is unknown" in str(raised[0])
    finally:
        if not runner.is_alive():  # the loop runs again to close the session it holds
            runner = threading.Thread(target=loop.run_forever, name="home-loop")
            runner.start()
        asyncio.run_coroutine_threadsafe(broker.aclose(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(timeout=5)
        loop.close()
        emulator.stop()


# --------------------------------------------------------------------------- nonces


def test_nonces_increase_per_key_across_async_reads_and_sync_calls_interleaved(
    world: World,
) -> None:
    """Pool-thread sync calls hammering a key during passes never reach Kraken out of order."""
    broker = world.broker("over")
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer(call: Callable[[], object]) -> None:
        while not stop.is_set():
            try:
                call()  # private: a nonce each
            except BrokerGuardError as exc:  # pragma: no cover (the assertion says why)
                errors.append(exc)

    calls: list[Callable[[], object]] = [
        broker.fetch_open_orders,
        broker.fetch_open_orders,
        lambda: broker.submit_cancel_all_after(60),  # a write: arms the dead man's switch
    ]
    threads = [
        threading.Thread(target=hammer, args=(call,), name=f"pool-{i}")
        for i, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    try:
        # Act: two passes (async reads, then the sync sell and its checks) while they run
        world.service.tick()
        world.service.tick()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    # Assert
    assert errors == []
    for account in world.accounts:
        nonces = account.nonces()
        assert nonces, account.name
        assert all(a < b for a, b in itertools.pairwise(nonces)), account.name
        assert "EAPI:Invalid nonce" not in account.emulator.refusals()
        assert account.count("AssetPairs") == 1, account.name  # markets loaded once
    over = world.account("over")
    assert over.count("OpenOrders") > 2  # the hammering really interleaved
    assert over.count("CancelAllOrdersAfter") > 1
    arrived = [r.endpoint for r in over.emulator.requests]
    balance_at = [i for i, e in enumerate(arrived) if e in BALANCE_ENDPOINTS]
    hammered_at = [i for i, e in enumerate(arrived) if e in {"OpenOrders", "CancelAllOrdersAfter"}]
    # an async balance read made with sync calls before and after it on the same key
    assert len(balance_at) == len(over.ahead)
    assert any(
        min(hammered_at) < at < max(hammered_at)
        for at, ahead in zip(balance_at, over.ahead, strict=True)
        if ahead
    )
    assert over.balance_reads() >= 2
    assert broker.get_status()["nonce_collisions"] == 0


def test_a_refused_nonce_on_an_async_read_is_resynced_and_retried(world: World) -> None:
    """``EAPI:Invalid nonce`` on the pass's balance read: re-synced, retried, believed."""
    account = world.account("fine")
    account.fail_balance("EAPI:Invalid nonce")
    # Act
    results = world.service.tick()
    # Assert
    assert results["fine"]["status"] == "compliant"
    assert results["fine"]["position_count"] == 1
    assert world.broker("fine").get_status()["nonce_collisions"] == 1
    assert account.balance_reads() == 2  # the refused one, and the retry
    assert account.balance_threads == ["brokerguard-reads", "brokerguard-reads"]
    assert account.ahead == [True, True]  # retried within the async read
    nonces = account.nonces()
    assert all(a < b for a, b in itertools.pairwise(nonces))


def test_an_order_refused_for_its_nonce_on_the_home_loop_is_not_resent_by_the_adapter(
    world: World,
) -> None:
    """As on the sync path: the adapter never resends an order; the refusal is raised."""
    broker = world.broker("fine")
    account = world.account("fine")
    broker.fetch_positions()  # markets loaded
    account.emulator.inject("EAPI:Invalid nonce", endpoint="AddOrder")
    order = OrderRequest("BTC/USD", Side.SELL, Decimal("0.01"), "bg-nonce-1", deadline=START + 10)
    # Act
    with pytest.raises(InvalidNonceError):
        broker.submit_order(order)
    # Assert: sent once, re-synced (the next nonce clears the mark), counted
    assert account.orders_sent() == 1
    assert broker.get_status()["nonce_collisions"] == 1
    assert account.emulator.orders() == []


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("http:503", "TransientBrokerError"),
        ("EService:Unavailable", "TransientBrokerError"),
        ("empty_result", "empty"),
        ("malformed", "unparseable"),
    ],
)
def test_a_failed_or_empty_balance_read_ahead_fails_the_account_closed(
    world: World, fault: str, reason: str
) -> None:
    """A 5xx, an error envelope, an empty or garbled balance: unverified, nothing sold."""
    account = world.account("over")
    read_breaker = world.service.breakers["broker-over"]["read"]
    failures_before = read_breaker.snapshot().total_failures
    account.fail_balance(fault, times=10)
    # Act
    results = world.service.tick()
    # Assert: fails closed (no order), the read breaker counted it, the others unaffected
    assert results["over"]["status"] == "unverified"
    assert reason in results["over"]["reason"]
    assert account.orders_sent() == 0
    assert read_breaker.snapshot().total_failures > failures_before
    assert set(account.balance_threads) == {"brokerguard-reads"}
    assert account.ahead[0]  # the pass's async read failed, and failed the step closed
    assert results["fine"]["status"] == "compliant"
    primed = world.service.exits.last_primed
    assert primed is not None
    assert (primed.read, primed.skipped) == (4, 0)  # made ahead (and failed), not skipped


def test_a_balance_read_timing_out_fails_the_account_closed(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The venue answers later than the client waits: unverified, counted, nothing sold."""
    holdings = {"over": HOLDINGS["over"]}
    world_iter = build_world(clock, monkeypatch, holdings=holdings)
    w = next(world_iter)
    try:
        broker = w.broker("over")
        broker.exchange.timeout = 200  # ms: the emulator's "slow:" waits real seconds
        account = w.account("over")
        account.fail_balance("slow:0.6", times=3)
        read_breaker = w.service.breakers["broker-over"]["read"]
        # Act
        results = w.service.tick()
        # Assert
        assert results["over"]["status"] == "unverified"
        assert "TransientBrokerError" in results["over"]["reason"]
        assert account.orders_sent() == 0
        assert read_breaker.snapshot().total_failures >= 1
    finally:
        world_iter.close()


# --------------------------------------------------------------------------- parity

_RECORDED_BALANCE = {
    code: str(entry["balance"]) for code, entry in RECORDED["docs"]["BalanceEx"].items()
}

_KRAKEN = {"ZUSD": "1000", "XXBT": "0.1"}
_COINBASE = {"USD": "1000", "BTC": "0.1"}
PARITY_WORLDS: Mapping[str, tuple[str, Mapping[str, str], str | None, str | None]] = {
    # name: (venue, balances, fault, the endpoint it is injected on: None = the balance's)
    "kraken, recorded BalanceEx": ("kraken", _RECORDED_BALANCE, None, None),
    "kraken, suffixed holdings": (
        "kraken",
        {"ZUSD": "1000", "XXBT": "0.1", "XBT.F": "0.2", "ETH2.S": "1.5", "SOL.B": "3"},
        None,
        None,
    ),
    "kraken, cash only": ("kraken", {"ZUSD": "1000"}, None, None),
    "kraken, an asset dropped": ("kraken", _KRAKEN, "omit:XXBT", None),
    "kraken, error envelope": ("kraken", _KRAKEN, "EService:Unavailable", None),
    "kraken, no assets at all": ("kraken", _KRAKEN, "empty_result", None),
    "kraken, not json": ("kraken", _KRAKEN, "malformed", None),
    "kraken, load balancer 503": ("kraken", _KRAKEN, "http:503", None),
    "kraken, unknown error string": ("kraken", _KRAKEN, "EGeneral:Something new", None),
    "kraken, permission denied": ("kraken", _KRAKEN, "EGeneral:Permission denied", None),
    "kraken, a refused nonce": ("kraken", _KRAKEN, "EAPI:Invalid nonce", None),
    "kraken, a pair dropped from the tickers": ("kraken", _KRAKEN, "omit:XETHZUSD", "Ticker"),
    "kraken, tickers not json": ("kraken", _KRAKEN, "malformed", "Ticker"),
    "coinbase, holdings": ("coinbase", {"USD": "10", "BTC": "0.1", "ETH": "2"}, None, None),
    "coinbase, cash only": ("coinbase", {"USD": "1000"}, None, None),
    "coinbase, an asset dropped": ("coinbase", _COINBASE, "omit:BTC", None),
    "coinbase, no accounts at all": ("coinbase", _COINBASE, "empty_result", None),
    "coinbase, not json": ("coinbase", _COINBASE, "malformed", None),
    "coinbase, load balancer 503": ("coinbase", _COINBASE, "http:503", None),
    "coinbase, rate limited": ("coinbase", _COINBASE, "error:429:rate_limit_exceeded", None),
    "coinbase, unauthorized": ("coinbase", _COINBASE, "unauthorized", None),
}


def outcome(read: Callable[[], Any]) -> object:
    """What a read gives: its answer, or its error's type and reason (never its text)."""
    try:
        return read()
    except BrokerGuardError as exc:
        return (type(exc).__name__, getattr(exc, "reason", None))


@dataclass
class Twins:
    """One venue's account behind a sync client and an async one on a home loop."""

    emulator: Any
    sync: CcxtBroker
    asynchronous: CcxtBroker
    loop: asyncio.AbstractEventLoop

    def on_loop(self, make: Callable[[], Any]) -> Any:
        """Await ``make()`` on the home loop, from this thread."""

        async def call() -> Any:
            return await make()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=10)

    def reads(self, symbols: list[str]) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
        """Each client's (positions read, prices read)."""
        sync, asynchronous = self.sync, self.asynchronous
        return {
            "sync": (sync.fetch_positions, lambda: sync.fetch_prices(symbols)),
            "async": (
                lambda: self.on_loop(asynchronous.afetch_positions),
                lambda: self.on_loop(lambda: asynchronous.afetch_prices(symbols)),
            ),
        }


def twins(venue: str, balances: Mapping[str, str], clock: FakeClock) -> Iterator[Twins]:
    """Run the venue's emulator with `balances`, and both clients on it (closed after)."""
    if venue == "kraken":
        emulator: Any = KrakenEmulator(balances=balances, time_source=clock.time).start()
        urls: dict[str, str] = {"public": emulator.url, "private": emulator.url}
    else:
        emulator = cb.CoinbaseEmulator(balances=balances, time_source=clock.time).start()
        urls = {"rest": emulator.url}
    reads = ReadsAhead()
    nonces = NonceSource(clock)
    config = {"apiKey": emulator.api_key, "secret": emulator.api_secret, "enableRateLimit": False}

    def pointed(exchange: Any) -> Any:
        exchange.urls["api"] = dict(urls)
        return exchange

    sync = CcxtBroker(pointed(getattr(ccxt, venue)(dict(config))), clock=clock, nonce_source=nonces)
    loop = reads.loop
    async_exchange = pointed(getattr(ccxt.async_support, venue)({**config, "asyncio_loop": loop}))
    asynchronous = CcxtBroker(async_exchange, clock=clock, nonce_source=nonces, loop=loop)
    try:
        yield Twins(emulator, sync, asynchronous, loop)
    finally:
        asynchronous.close()
        reads.close()
        emulator.stop()


@pytest.mark.parametrize("world_name", sorted(PARITY_WORLDS))
def test_the_async_reads_answer_exactly_what_the_sync_reads_answer(
    clock: FakeClock, world_name: str
) -> None:
    """One account read through the sync and the async ccxt client: the same answer or error."""
    venue, balances, fault, endpoint = PARITY_WORLDS[world_name]
    fault_endpoints = VENUE_ENDPOINTS[venue][0] if endpoint is None else (endpoint,)
    pair_iter = twins(venue, balances, clock)
    pair = next(pair_iter)
    try:
        assert not pair.sync.has_async_reads
        assert pair.asynchronous.has_async_reads
        # Act: each client reads the markets first (no fault), then positions and prices with
        # the same fault waiting before each read
        answers: dict[str, list[object]] = {}
        for client, (positions, prices) in pair.reads(
            ["BTC/USD", "ETH/USD", "SOL/USD", "X/USD"]
        ).items():
            outcome(prices)
            answers[client] = []
            for read in (positions, prices):
                for name in fault_endpoints if fault is not None else ():
                    pair.emulator.inject(fault, endpoint=name)
                answers[client].append(outcome(read))
                pair.emulator.clear_faults()
        # Assert: the same answers, and the world is not vacuous
        assert answers["sync"] == answers["async"]
        read_positions, read_prices = answers["sync"]
        if fault is None:
            assert isinstance(read_positions, list)
            assert isinstance(read_prices, Mapping)
            assert set(read_prices) == {"BTC/USD", "ETH/USD", "SOL/USD"}
        elif not fault.startswith(("omit:", "EAPI:Invalid nonce")):  # those still answer
            assert isinstance(read_positions if endpoint is None else read_prices, tuple)
    finally:
        pair_iter.close()


def test_the_recorded_balance_is_read_as_its_positions(clock: FakeClock) -> None:
    """The parity world from the recording holds what the recording says (not a vacuous match)."""
    pair_iter = twins("kraken", _RECORDED_BALANCE, clock)
    pair = next(pair_iter)
    try:
        positions = pair.on_loop(pair.asynchronous.afetch_positions)
        assert [(p.symbol, p.quantity) for p in positions] == [("BTC/USD", Decimal("1.2435"))]
    finally:
        pair_iter.close()


# --------------------------------------------------------------------------- wiring, closing


def test_a_synchronous_exchange_has_no_async_reads(clock: FakeClock) -> None:
    """A ccxt.kraken broker is read by the step itself; a home loop for it is refused."""
    broker = CcxtBroker(ccxt.kraken({}), clock=clock, nonce_source=NonceSource(clock))
    assert not broker.has_async_reads
    reads = ReadsAhead()
    try:
        with pytest.raises(ConfigurationError, match="synchronous"):
            CcxtBroker(ccxt.kraken({}), clock=clock, loop=reads.loop)
    finally:
        reads.close()


def test_by_default_a_ccxt_entry_keeps_the_synchronous_client(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without async_reads the service builds ccxt.kraken: the step reads it, in the pool."""
    monkeypatch.setenv("BG_TEST_READS_SYNC_KEY", "bg-reads-ahead-sync")
    monkeypatch.setenv("BG_TEST_READS_SYNC_SECRET", DEFAULT_API_SECRET)
    config = parse_config(
        {
            "store": {"url": "sqlite://"},
            "brokers": {
                "k": {
                    "kind": "ccxt",
                    "exchange": "kraken",
                    "api_key_env": "BG_TEST_READS_SYNC_KEY",
                    "api_secret_env": "BG_TEST_READS_SYNC_SECRET",
                }
            },
            "accounts": [{"id": "a", "broker": "k", "max_positions": 1}],
        }
    )
    service = GuardService(config, clock=clock)
    try:
        broker = service.accounts["a"].broker
        assert isinstance(broker, CcxtBroker)
        assert broker.exchange.synchronous
        assert broker.home_loop is None
        assert not broker.has_async_reads
    finally:
        service.close()


def test_async_reads_without_reads_ahead_is_refused_by_the_config() -> None:
    """The async exchange's session lives on the reads loop: no loop, no async_reads."""
    with pytest.raises(ValueError, match="reads_ahead"):
        parse_config(
            {
                "store": {"url": "sqlite://"},
                "enforcement": {"reads_ahead": False},
                "brokers": {"k": {"kind": "ccxt", "exchange": "kraken", "async_reads": True}},
                "accounts": [{"id": "a", "broker": "k", "max_positions": 1}],
            }
        )
    with pytest.raises(ValueError, match="async_reads is for ccxt"):
        parse_config(
            {
                "store": {"url": "sqlite://"},
                "brokers": {"p": {"kind": "paper", "async_reads": True}},
                "accounts": [{"id": "a", "broker": "p", "max_positions": 1}],
            }
        )


def test_closing_the_service_closes_every_exchange_session_before_the_loop_stops(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After close, no session is left open (an unclosed one would warn, and fail the test)."""
    world_iter = build_world(clock, monkeypatch)
    w = next(world_iter)
    w.service.tick()  # every exchange opened its session
    exchanges = [w.broker(a.name).exchange for a in w.accounts]
    assert all(e.session is not None for e in exchanges)
    # Act
    world_iter.close()  # service.close(), then the emulators
    # Assert
    assert all(e.session is None for e in exchanges)
    w.broker("fine").close()  # idempotent: closed already, nothing to do
    assert w.service.reads_ahead is not None
    with pytest.raises(ConfigurationError, match="not running"):
        w.broker("fine").fetch_open_orders()
