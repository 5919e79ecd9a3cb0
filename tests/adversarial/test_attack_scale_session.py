"""Adversarial tests: the scale session's performance changes (830accb..1d60cee).

Under attack: the fixed crew of readers and the batched hand-over (``risk/reads.py``), the
price answer's lead (``_lead``, ``SharedPrices.holds/aprime(for_s=)``), a run of steps under
one ``store.pinned()`` (``risk/exits.py``), the lock-free ``HotState.get``, the
``canonical_symbols`` memo, believed holdings with one stamp per read (``brokers/base.py``)
and the paper broker's cached holdings answer.

A test that passes pins a defence. ``xfail(strict=True)`` marks a gap: it passes once fixed.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import pytest

from brokerguard.brokers import FaultPlan, PaperBroker
from brokerguard.brokers.prices import SharedPrices
from brokerguard.errors import InvalidBrokerData, PositionsImplausibleError
from brokerguard.models import Position, canonical_symbols, parse_symbol
from brokerguard.risk import ContinuousExitEnforcer, PositionCapEnforcer
from brokerguard.risk.gate import TradingGate
from brokerguard.risk.reads import ReadsAhead
from brokerguard.store import open_store
from brokerguard.store.hot import HotSnapshot, HotState
from brokerguard.testing import FakeClock

from .test_attack_reads_ahead import CAP, LATENCY, paper

# The red team's paper accounts (20 coins, C01 the cheapest), as in the reads-ahead attacks.


def reads_calls(broker: PaperBroker) -> int:
    return sum(1 for c in broker.calls if c.method == "fetch_positions")


def price_calls(brokers: Sequence[PaperBroker]) -> int:
    return sum(1 for b in brokers for c in b.calls if c.method == "fetch_prices")


@pytest.fixture
def reads() -> Iterator[ReadsAhead]:
    ahead = ReadsAhead(max_in_flight=64)
    yield ahead
    ahead.close()


def drain(stream: Any, budget_s: float = 4.0) -> Counter[int]:
    """Every broker the stream hands over, counted by identity (within a wall-time budget)."""
    started = time.monotonic()
    seen: Counter[int] = Counter()
    for broker in stream:
        seen[id(broker)] += 1
        assert time.monotonic() - started < budget_s, "the stream hangs"
    return seen


# ============================================================ the crew: exactly once, whatever


def test_interrupt_from_an_adapter_mid_crew_hands_every_account_over_once(clock):
    """interrupt() fired from inside the 5th read: 40 accounts, a crew of 3, each yielded once."""
    ahead = ReadsAhead(max_in_flight=3)
    started = [0]

    class Interrupting(PaperBroker):
        async def afetch_positions(self) -> Sequence[Position]:
            started[0] += 1
            if started[0] == 5:
                ahead.interrupt()  # safe from the loop's own thread, says the doc
            return await super().afetch_positions()

    brokers = [paper(clock, f"a{i}", 2, cls=Interrupting) for i in range(40)]
    try:
        stream = ahead.stream(brokers)
        seen = drain(stream)
    finally:
        ahead.close()
    assert set(seen) == {id(b) for b in brokers}
    assert set(seen.values()) == {1}
    summary = stream.summary
    assert summary.read + summary.skipped == 40
    assert summary.read < 40  # the interrupt did cut the crew short
    # An account not read ahead keeps nothing made ahead: its step reads for itself.
    unread = [b for b in brokers if b.primed_count is None]
    assert len(unread) >= 40 - summary.read


def test_close_while_the_crew_waits_on_a_hung_venue_yields_everyone_once_and_returns(clock):
    """One venue never answers; close() from another thread: every account yielded once, fast."""
    hang = asyncio.Event()  # never set (bound to the reads' loop when awaited)

    class Hung(PaperBroker):
        async def afetch_positions(self) -> Sequence[Position]:
            await asyncio.wait_for(hang.wait(), timeout=30)  # real time: never, in this test
            return []

    ahead = ReadsAhead(max_in_flight=2, read_timeout_s=60)
    brokers = [paper(clock, "hung", 2, cls=Hung)] + [paper(clock, f"a{i}", 2) for i in range(9)]
    timer = threading.Timer(0.3, ahead.close)
    timer.start()
    try:
        stream = ahead.stream(brokers)
        seen = drain(stream)
    finally:
        timer.cancel()
        ahead.close()
    assert set(seen) == {id(b) for b in brokers}
    assert set(seen.values()) == {1}
    assert brokers[0].primed_count is None  # the hung read keeps nothing


def test_a_bug_outside_the_read_kills_crew_members_but_every_account_is_still_handed_over(
    clock, reads
):
    """primed_symbols() raises after each read (a subclass bug): the crew dies, nobody is lost."""

    class Buggy(PaperBroker):
        def primed_symbols(self) -> list[str]:
            raise RuntimeError("adapter bug in primed_symbols")

    board = SharedPrices(clock, max_age=5.0)
    brokers = [paper(clock, f"b{i}", 2, cls=Buggy, board=board) for i in range(12)]
    ahead = ReadsAhead(max_in_flight=2)
    try:
        stream = ahead.stream(brokers)
        seen = drain(stream)
    finally:
        ahead.close()
    assert set(seen) == {id(b) for b in brokers}
    assert set(seen.values()) == {1}
    assert stream.summary.read + stream.summary.skipped == 12


def test_a_stop_request_mid_pass_reads_no_more_and_hands_each_over_once(clock):
    """stop() turns true after 4 reads: no 5th read is sent; all 20 are yielded exactly once."""
    reads_sent = [0]

    class Counted(PaperBroker):
        async def afetch_positions(self) -> Sequence[Position]:
            reads_sent[0] += 1
            return await super().afetch_positions()

    brokers = [paper(clock, f"s{i}", 2, cls=Counted) for i in range(20)]
    ahead = ReadsAhead(max_in_flight=1)
    try:
        stream = ahead.stream(brokers, stop=lambda: reads_sent[0] >= 4)
        seen = drain(stream)
    finally:
        ahead.close()
    assert reads_sent[0] == 4
    assert set(seen.values()) == {1}
    assert len(seen) == 20
    assert stream.summary.read == 4
    assert stream.summary.skipped == 16


def test_interrupt_while_accounts_wait_for_a_hung_price_read_lands_each_once(clock):
    """Every account waits off the crew for a price read that never answers; interrupt()."""
    never = asyncio.Event()

    class HungPrices(PaperBroker):
        async def afetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
            await asyncio.wait_for(never.wait(), timeout=30)
            return {}

    board = SharedPrices(clock, max_age=5.0)
    brokers = [paper(clock, f"p{i}", 3, cls=HungPrices, board=board) for i in range(8)]
    ahead = ReadsAhead(max_in_flight=2, read_timeout_s=60)
    timer = threading.Timer(0.3, ahead.interrupt)
    timer.start()
    try:
        stream = ahead.stream(brokers)
        seen = drain(stream)
    finally:
        timer.cancel()
        ahead.close()
    assert set(seen) == {id(b) for b in brokers}
    assert set(seen.values()) == {1}
    assert stream.summary.read == 8  # their position reads landed; only prices were cut
    assert not board.holds(["C01/USD"])  # no price was invented for them


def test_an_enforcer_pass_with_a_crew_smaller_than_the_fleet_steps_every_account_once(clock):
    """30 accounts (5 over the cap), a crew of 4: one result each, every excess sold once."""
    store = open_store("sqlite://", clock=clock)
    board = SharedPrices(clock, max_age=5.0)
    enforcers = [
        PositionCapEnforcer(
            paper(clock, f"e{i:02d}", 10 if i % 6 == 0 else 3, board=board), CAP, store=store
        )
        for i in range(30)
    ]
    ahead = ReadsAhead(max_in_flight=4)
    try:
        results = ContinuousExitEnforcer(enforcers, max_concurrency=4, reads_ahead=ahead).tick()
    finally:
        ahead.close()
    assert list(results) == [e.account_id for e in enforcers]
    for enforcer in enforcers:
        broker = enforcer.broker
        assert isinstance(broker, PaperBroker)
        sold = Counter(o.client_order_id for o in broker.all_orders() if o.side.value == "sell")
        assert all(n == 1 for n in sold.values())  # zero duplicate orders
        held = len(broker.true_positions())
        assert held <= CAP, (enforcer.account_id, results[enforcer.account_id]["status"])


def test_the_last_batch_is_handed_over_with_its_reads_made_ahead():
    """A read landing just before the stream's 50 ms poll times out: its read is thrown away.

    Not a safety break (each account is still yielded once, its step reads for itself), but
    the pass's last accounts cost a second position read each in ~1 pass out of 5 (measured:
    16-27 of 100 single-account passes with a read of 0-100 ms; 0 of 100 before af2d042).
    """

    class Slow(PaperBroker):
        delay = 0.0

        async def afetch_positions(self) -> Sequence[Position]:
            await asyncio.sleep(self.delay)  # real time: the venue's answer
            return await super().afetch_positions()

    ahead = ReadsAhead()
    discarded = []
    try:
        for i in range(12):
            broker = Slow(
                "paper",
                account_id=f"r{i}",
                prices={"C01/USD": "1"},
                positions={"C01/USD": "1"},
                fault_plan=FaultPlan(),
                volatility=0,
            )
            broker.delay = 0.040 + i * 0.001  # lands in the 10 ms before the poll's timeout
            discarded += [g.account_id for g in ahead.stream([broker]) if g.primed_count is None]
    finally:
        ahead.close()
    assert discarded == []


# ============================================================ the price answer's lead


def test_an_answer_with_less_than_its_lead_to_live_is_fetched_again_and_one_with_more_is_not(
    clock, reads
):
    """max_age 4 s, lead 1 s: at 2.9 s old the answer serves; at 3.1 s it is fetched again."""
    board = SharedPrices(clock, max_age=4.0)
    brokers = [paper(clock, f"l{i}", 3, board=board) for i in range(3)]
    board.new_pass()
    reads.prime(brokers[:1])
    assert board.fetches == 1
    clock.advance(2.9 - LATENCY)
    brokers[1].discard_primed()
    reads.prime(brokers[1:2])
    assert board.fetches == 1  # still fresh for more than its lead: not asked again
    clock.advance(0.2)
    reads.prime(brokers[2:3])
    assert board.fetches == 2  # 3.1 s old: less than the lead to live, fetched before landing
    assert board.holds(["C01/USD"], for_s=1.0)


def test_the_lead_never_makes_an_expired_answer_count_as_held(clock):
    """holds(for_s=) is never more permissive than holds(): a lead cannot extend an answer."""
    board = SharedPrices(clock, max_age=2.0)

    async def fetch(symbols: list[str]) -> Mapping[str, object]:
        return dict.fromkeys(symbols, "1")

    assert asyncio.run(board.aprime(["X/USD"], fetch, for_s=0.5))
    clock.advance(2.01)
    assert not board.holds(["X/USD"])
    assert not board.holds(["X/USD"], for_s=0.5)
    calls = []

    async def counted(symbols: list[str]) -> Mapping[str, object]:
        calls.append(symbols)
        return dict.fromkeys(symbols, "1")

    assert asyncio.run(board.aprime(["X/USD"], counted, for_s=0.5))
    assert len(calls) == 1  # expired: fetched, never served


def test_an_answer_just_fetched_for_the_pass_is_not_fetched_again_at_once(clock, reads):
    board = SharedPrices(clock, max_age=1.0)  # lead 0.25 s
    plan = FaultPlan(latency={"fetch_positions": LATENCY, "fetch_prices": 0.8})
    brokers = [paper(clock, f"w{i}", 3, board=board, plan=plan) for i in range(20)]
    board.new_pass()
    began = clock.monotonic()
    reads.prime(brokers)
    assert price_calls(brokers) == 1
    assert clock.monotonic() - began < 1.0


# ============================================================ a run of steps under one pin


def shared_sqlite(tmp_path: Any, clock: FakeClock, **kwargs: Any) -> tuple[Any, Any]:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    return open_store(url, clock=clock, **kwargs), open_store(url, clock=clock, **kwargs)


def two_local_accounts(clock: FakeClock, store: Any) -> list[PositionCapEnforcer]:
    board = SharedPrices(clock, max_age=5.0)
    return [PositionCapEnforcer(paper(clock, n, 3, board=board), CAP, store=store) for n in "AB"]


def test_a_halt_from_another_process_in_a_run_is_obeyed_once_cache_s_has_passed(clock, tmp_path):
    """A's step ends; another process halts B; cache_s passes; B's step (same run) sees it."""
    ours, theirs = shared_sqlite(tmp_path, clock, cache_s=1.0)
    enforcers = two_local_accounts(clock, ours)
    ahead = ReadsAhead()
    loop = ContinuousExitEnforcer(enforcers, max_concurrency=2, reads_ahead=ahead)

    def after_a(account: str, _result: dict[str, Any]) -> None:
        if account == "A":
            theirs.halt("B", "operator: stop B", source="operator")
            clock.advance(1.01)  # just past cache_s

    loop.add_result_listener(after_a)
    try:
        results = loop.tick()
    finally:
        ahead.close()
    assert results["B"]["trading_halted"] is True


def test_an_entry_check_in_another_thread_is_not_pinned_by_the_pass(clock, tmp_path):
    """While the pass's thread is in a pinned run, a bot thread's gate sees a halt at once."""
    ours, theirs = shared_sqlite(tmp_path, clock, cache_s=30.0)
    enforcers = two_local_accounts(clock, ours)
    gate = TradingGate(enforcers[1].broker, CAP, store=ours, clock=clock)
    ahead = ReadsAhead()
    loop = ContinuousExitEnforcer(enforcers, max_concurrency=2, reads_ahead=ahead)
    decisions: list[Any] = []

    def after_a(account: str, _result: dict[str, Any]) -> None:
        if account != "A":
            return
        ours.is_halted("B")  # the pinned run holds its snapshot (not halted)
        theirs.halt("B", "operator: stop B", source="operator")
        bot = threading.Thread(target=lambda: decisions.append(gate.check_entry("C10/USD")))
        bot.start()
        bot.join(5)

    loop.add_result_listener(after_a)
    try:
        loop.tick()
    finally:
        ahead.close()
    assert len(decisions) == 1
    assert not decisions[0].allowed
    assert "halt" in decisions[0].reason.lower()


def test_an_entry_check_made_by_a_listener_of_the_next_step_is_not_pinned_by_the_run(
    clock, tmp_path
):
    ours, theirs = shared_sqlite(tmp_path, clock, cache_s=30.0)
    enforcers = two_local_accounts(clock, ours)
    gate = TradingGate(enforcers[1].broker, CAP, store=ours, clock=clock)
    ahead = ReadsAhead()
    loop = ContinuousExitEnforcer(enforcers, max_concurrency=2, reads_ahead=ahead)
    decisions: list[Any] = []

    def listener(account: str, _result: dict[str, Any]) -> None:
        if account == "A":
            theirs.halt("B", "operator: stop B", source="operator")
        else:  # B's step is done: the bot (a listener) asks whether it may enter on B
            decisions.append(gate.check_entry("C10/USD"))

    loop.add_result_listener(listener)
    try:
        results = loop.tick()
    finally:
        ahead.close()
    assert list(results) == ["A", "B"]
    assert len(decisions) == 1
    assert not decisions[0].allowed, decisions[0]


def test_a_write_of_our_own_inside_a_pinned_run_is_seen_at_once(clock, tmp_path):
    """Pinned or not, the process never reads its own halt late."""
    ours, _theirs = shared_sqlite(tmp_path, clock, cache_s=30.0)
    with ours.pinned():
        assert not ours.is_halted("A")
        ours.halt("A", "enforcer: over the cap", source="enforcer")
        assert ours.is_halted("A")
        assert ours.resume("A", "alice", "checked")
        assert not ours.is_halted("A")


def test_a_pinned_snapshot_is_reloaded_once_older_than_cache_s(clock, tmp_path):
    """Inside one long pin, another process's halt is served at most cache_s late."""
    ours, theirs = shared_sqlite(tmp_path, clock, cache_s=1.0)
    with ours.pinned():
        assert not ours.is_halted("X")
        theirs.halt("X", "operator", source="operator")
        clock.advance(0.5)
        ours.is_halted("X")  # within the bound: may be stale (documented)
        clock.advance(0.51)
        assert ours.is_halted("X")  # older than cache_s: reloaded
    assert ours.is_halted("X")  # unpinned: the counter is read at once


# ============================================================ the lock-free HotState.get


class Db:
    """A 'database': a version counter and a value; load() reads both under its own lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0
        self.version = 0
        self.loads = 0

    def write(self, value: int) -> None:
        with self.lock:
            self.value = max(self.value, value)
            self.version += 1

    def load(self) -> HotSnapshot[int, int]:
        with self.lock:
            self.loads += 1
            return HotSnapshot({"v": self.value}, {}, {})

    def read_version(self) -> int:
        with self.lock:
            return self.version


@pytest.mark.parametrize("with_version", [False, True])
def test_a_writer_never_reads_a_snapshot_older_than_its_own_write_under_racing_readers(
    with_version,
):
    """12 reader threads hammer get(); 4 writers write, wrote(), and read back: never older."""
    db = Db()
    clock = FakeClock(start=1000.0)  # frozen: only a write can make a snapshot stale
    hot: HotState[int, int] = HotState(
        60.0, clock.monotonic, db.read_version if with_version else None
    )
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            hot.get(db.load)

    def writer(base: int) -> None:
        for i in range(300):
            mine = base + i * 10
            db.write(mine)
            hot.wrote()
            seen = hot.get(db.load).halts["v"]
            if seen < mine:
                problems.append(f"wrote {mine}, read {seen}")
            with hot.pinned():
                seen = hot.get(db.load).halts["v"]
                if seen < mine:
                    problems.append(f"pinned: wrote {mine}, read {seen}")

    readers = [threading.Thread(target=reader) for _ in range(12)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(1, 5)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(20)
    stop.set()
    for t in readers:
        t.join(5)
    assert problems == []


def test_another_processes_write_is_never_served_stale_to_an_unpinned_reader():
    """The change counter moves (another connection committed): the next unpinned get reloads."""
    db = Db()
    clock = FakeClock(start=1000.0)
    hot: HotState[int, int] = HotState(60.0, clock.monotonic, db.read_version)
    assert hot.get(db.load).halts["v"] == 0
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            hot.get(db.load)

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 400):
            db.write(i)  # no wrote(): another process
            assert hot.get(db.load).halts["v"] >= i
    finally:
        stop.set()
        for t in threads:
            t.join(5)


# ============================================================ canonical_symbols


class Sneaky(str):
    """A str subclass that claims to equal (and hash as) another symbol."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return str.__eq__("BTC/USD", other) if isinstance(other, str) else NotImplemented

    def __hash__(self) -> int:
        return hash("BTC/USD")


def test_canonical_symbols_agrees_with_parse_symbol_for_every_spelling():
    spellings = [
        "BTC/USD",
        "btc/usd",
        " xbt/usd ",
        "XBT/USD",
        "Xbt / Usd",
        "BTC/USD\u00a0",
        "xdg/usd",
    ]
    for s in spellings:
        parse_symbol(s)  # warm the memo with every spelling first
    assert canonical_symbols(spellings) == ["BTC/USD", "DOGE/USD"]
    for s in spellings:
        assert canonical_symbols([s]) == [parse_symbol(s)]


def test_canonical_symbols_ignores_the_memo_for_a_str_subclass():
    parse_symbol("BTC/USD")
    sneaky = Sneaky("eth/usd")
    assert canonical_symbols([sneaky]) == ["ETH/USD"]
    assert canonical_symbols(["BTC/USD", sneaky, "eth/usd"]) == ["BTC/USD", "ETH/USD"]
    assert parse_symbol("BTC/USD") == "BTC/USD"  # the memo was not poisoned


@pytest.mark.parametrize("bad", [None, b"BTC/USD", 7, "", "   ", "BTC USD/USD", "/USD"])
def test_canonical_symbols_refuses_what_parse_symbol_refuses(bad):
    with pytest.raises(InvalidBrokerData):
        canonical_symbols(["BTC/USD", bad])


def test_get_prices_through_an_alias_asks_and_answers_the_canonical_symbol_once(clock):
    broker = PaperBroker(
        "paper",
        clock=clock,
        account_id="alias",
        prices={"BTC/USD": "50000", "DOGE/USD": "0.1"},
        fault_plan=FaultPlan(),
        volatility=0,
    )
    got = broker.get_prices([" xbt/usd", "BTC/USD", "xdg/usd ", "BTC/USD"])
    assert got == {"BTC/USD": Decimal(50000), "DOGE/USD": Decimal("0.1")}
    asked = [c for c in broker.calls if c.method == "fetch_prices"]
    assert len(asked) == 1
    check = broker.check_prices(["nope/usd"])
    assert check.price("NOPE/USD") is None  # never invented


# ============================================================ believed holdings, one stamp


HELD = {"BTC/USD": "1", "ETH/USD": "1", "SOL/USD": "10"}
PRICES = dict.fromkeys(("BTC/USD", "ETH/USD", "SOL/USD", "DOGE/USD", "ADA/USD"), "100")


class Venue(PaperBroker):
    """A paper venue whose position reads can hide symbols (a thin-read glitch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prices", PRICES)
        kwargs.setdefault("positions", HELD)
        kwargs.setdefault("volatility", 0)
        kwargs.setdefault("settle_delay", 0)
        super().__init__(*args, **kwargs)
        self.hide: set[str] = set()

    def fetch_positions(self) -> Sequence[Position]:
        return [p for p in super().fetch_positions() if p.symbol not in self.hide]


class Holdings:
    def __init__(self) -> None:
        self.saved: dict[str, tuple[dict[str, Decimal], float]] = {}

    def save_holdings(self, account_id: str, holdings: Mapping[str, Decimal], seen_at: float):
        self.saved[account_id] = (dict(holdings), seen_at)

    def holdings(self, account_id: str) -> tuple[dict[str, Decimal], float] | None:
        found = self.saved.get(account_id)
        return None if found is None else (dict(found[0]), found[1])


def shown(positions: Sequence[Position]) -> set[str]:
    return {p.symbol for p in positions}


def test_a_sale_between_two_believed_reads_explains_the_loss_but_a_glitch_of_another_does_not(
    clock,
):
    venue = Venue("v", clock=clock)
    venue.get_positions()
    clock.advance(10)
    venue.get_positions()  # a second read: the stamp moves to this one
    clock.advance(10)
    venue.sell_by_hand("SOL/USD")
    clock.advance(10)
    assert shown(venue.get_positions()) == {"BTC/USD", "ETH/USD"}
    clock.advance(10)
    venue.hide = {"ETH/USD"}  # nothing sold: a glitch
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


def test_a_sale_before_the_last_read_that_still_showed_the_symbol_explains_nothing(clock):
    """Half of SOL sold, then a read still shows SOL: that sale cannot explain SOL vanishing."""
    venue = Venue("v", clock=clock)
    venue.get_positions()
    clock.advance(10)
    venue.sell_by_hand("SOL/USD", "5")
    clock.advance(10)
    venue.sell_by_hand("SOL/USD", "5")  # then sold whole...
    venue.place_market_order("SOL/USD", "buy", "10")  # ...and bought back at once
    clock.advance(10)
    assert "SOL/USD" in shown(venue.get_positions())  # believed: SOL held
    clock.advance(10)
    venue.hide = {"SOL/USD"}
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


def test_stored_holdings_seeded_at_restart_use_their_own_stamp(clock):
    """Seeded from the store (seen at T0): a hand sale after T0 explains the first thin read."""
    store = Holdings()
    first = Venue("acct", clock=clock)
    first.keep_holdings_in(store)
    first.get_positions()
    clock.advance(60)
    restarted = Venue("acct", clock=clock)
    restarted.sell_by_hand("SOL/USD")  # while no process watched
    clock.advance(5)
    restarted.keep_holdings_in(store)
    assert shown(restarted.get_positions()) == {"BTC/USD", "ETH/USD"}


def test_a_read_symbols_stamp_is_the_reads_not_the_stored_extras(clock):
    """A SOL sale between the stored holdings' stamp and a later read showing SOL explains nothing.

    The read is made before the store is given; the store adds ADA (an extra, own old stamp).
    """
    store = Holdings()
    store.saved["acct"] = ({"ADA/USD": Decimal(1), "SOL/USD": Decimal(10)}, clock.time() - 1)
    venue = Venue("acct", clock=clock)
    venue.sell_by_hand("SOL/USD", "5")  # after the stored stamp, before the read below
    clock.advance(10)
    venue.place_market_order("SOL/USD", "buy", "5")
    clock.advance(10)
    venue.hide = {"ADA/USD"}  # (ADA is not held anyway)
    assert "SOL/USD" in shown(venue.get_positions())  # believed, before the store is given
    venue.keep_holdings_in(store)  # ADA: a stored extra, stamped with its own (old) time
    venue.accept_position_loss(["ADA/USD"])  # ADA's loss explained: only SOL is judged
    clock.advance(10)
    venue.hide = {"SOL/USD"}
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()  # the SOL sale was before the read that still showed SOL


# ============================================================ the paper broker's cached answer


def test_the_paper_brokers_cached_answer_follows_every_change_of_holdings(clock):
    venue = PaperBroker(
        "paper",
        clock=clock,
        account_id="p",
        prices=PRICES,
        positions={"BTC/USD": "1"},
        fault_plan=FaultPlan(),
        volatility=0,
        settle_delay=0.5,
    )
    first = venue.fetch_positions()
    first.clear()  # a caller mangling its list must not touch the next answer
    assert [p.symbol for p in venue.fetch_positions()] == ["BTC/USD"]
    venue.place_market_order("ETH/USD", "buy", "2")
    clock.advance(1)  # the buy settles
    assert {p.symbol: p.quantity for p in venue.fetch_positions()} == {
        "BTC/USD": Decimal(1),
        "ETH/USD": Decimal(2),
    }
    venue.sell_by_hand("BTC/USD", "0.5")
    assert {p.symbol: p.quantity for p in venue.fetch_positions()} == {
        "BTC/USD": Decimal("0.5"),
        "ETH/USD": Decimal(2),
    }
    venue.sell_by_hand("BTC/USD")
    assert [p.symbol for p in venue.fetch_positions()] == ["ETH/USD"]
    venue.fault_plan = FaultPlan(empty_positions_rate=1.0)
    assert venue.fetch_positions() == []
    venue.fault_plan = FaultPlan()
    assert [p.symbol for p in venue.fetch_positions()] == ["ETH/USD"]


def test_random_trading_keeps_the_cached_answer_equal_to_the_true_holdings(clock):
    rng = random.Random(7)
    venue = PaperBroker(
        "paper",
        clock=clock,
        account_id="r",
        prices=PRICES,
        positions={"BTC/USD": "3"},
        fault_plan=FaultPlan(),
        volatility=0,
        settle_delay=0.2,
    )
    for _ in range(120):
        symbol = rng.choice(list(PRICES))
        held = venue.true_positions().get(symbol, Decimal(0))
        if held > 0 and rng.random() < 0.5:
            venue.sell_by_hand(symbol, str(min(held, Decimal(rng.randint(1, 3)))))
        else:
            venue.place_market_order(symbol, "buy", str(rng.randint(1, 3)))
        clock.advance(rng.choice([0.0, 0.1, 0.3]))
        answer = {p.symbol: p.quantity for p in venue.fetch_positions()}
        truth = {s: q for s, q in venue.true_positions().items() if q > 0}
        assert answer == truth
