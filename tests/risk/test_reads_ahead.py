"""Reads ahead: a pass makes every account's reads on one event loop, then steps the accounts.

What must hold: the reads wait together (not one after the other, not a thread each); each step
judges the read made for it exactly as a read of its own (the same evidence rules, the time the
read started); a failed read fails its step closed without a second call; a read made ahead
serves its own pass only; accounts whose steps need the venue are stepped in the pool while the
others are stepped in the calling thread; and nothing an adapter does to its reads is bypassed.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal

import pytest

from brokerguard import BrokerCircuitBreaker, CircuitState
from brokerguard.brokers import FaultPlan, PaperBroker
from brokerguard.brokers.prices import SharedPrices
from brokerguard.clock import SystemClock
from brokerguard.config import parse_config
from brokerguard.models import Position
from brokerguard.resilience import RateLimiter
from brokerguard.risk import ContinuousExitEnforcer, PositionCapEnforcer
from brokerguard.risk.reads import PrimedPass, ReadsAhead
from brokerguard.service import GuardService
from brokerguard.store import open_store
from brokerguard.testing import FakeClock

from .worlds import coins

LATENCY = 0.05


class ThreadedPaper(PaperBroker):
    """A paper broker noting the thread of every position read (both twins, so it reads ahead)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.read_threads: list[str] = []

    def fetch_positions(self) -> Sequence[Position]:
        self.read_threads.append(threading.current_thread().name)
        return super().fetch_positions()

    async def afetch_positions(self) -> Sequence[Position]:
        self.read_threads.append(threading.current_thread().name)
        return await super().afetch_positions()


class CheckedPaper(PaperBroker):
    """Overrides the sync read only (it checks every answer): it must never be read ahead."""

    checked = 0

    def fetch_positions(self) -> Sequence[Position]:
        CheckedPaper.checked += 1
        return super().fetch_positions()


def paper(
    clock: FakeClock,
    name: str,
    held: int,
    *,
    cls: type[PaperBroker] = ThreadedPaper,
    plan: FaultPlan | None = None,
    board: SharedPrices | None = None,
    limiter: RateLimiter | None = None,
) -> PaperBroker:
    prices = coins(20)
    plan = plan or FaultPlan(
        latency={"fetch_positions": LATENCY, "fetch_prices": LATENCY, "fetch_order": LATENCY}
    )
    broker = cls(
        "paper",
        clock=clock,
        account_id=name,
        prices=prices,
        positions=dict.fromkeys(list(prices)[:held], "1"),
        fault_plan=plan,
        settle_delay=0.5,
        volatility=0,
        read_breaker=BrokerCircuitBreaker(f"paper-{name}", scope="read", clock=clock),
        write_breaker=BrokerCircuitBreaker(f"paper-{name}", scope="write", clock=clock),
        rate_limiter=limiter,
    )
    if board is not None:
        broker.share_prices(board)
    return broker


@pytest.fixture
def reads():
    ahead = ReadsAhead(max_in_flight=64)
    yield ahead
    ahead.close()


@pytest.fixture
def store(clock):
    return open_store("sqlite://", clock=clock)


def fleet(clock, store, reads, n: int, held: int = 3, **kwargs):
    board = SharedPrices(clock, max_age=5.0)
    enforcers = [
        PositionCapEnforcer(paper(clock, f"acct-{i}", held, board=board, **kwargs), 8, store=store)
        for i in range(n)
    ]
    return enforcers, board


def test_a_pass_reads_every_account_at_once_on_the_reads_thread(clock, store, reads):
    """40 accounts whose reads take 50 ms each: the pass waits about one read, not forty."""
    enforcers, board = fleet(clock, store, reads, 40)
    loop = ContinuousExitEnforcer(enforcers, max_concurrency=8, reads_ahead=reads)
    started = clock.monotonic()
    results = loop.tick()
    assert {r["status"] for r in results.values()} == {"compliant"}
    # One round of position reads and one batched price read, on the fake clock.
    assert clock.monotonic() - started == pytest.approx(2 * LATENCY)
    assert loop.last_primed == PrimedPass(read=40, failed=0, skipped=0, venues_priced=1)
    assert board.fetches == 1
    for enforcer in enforcers:
        assert enforcer.broker.read_threads == ["brokerguard-reads"]  # type: ignore[attr-defined]


def test_without_reads_ahead_each_step_reads_for_itself_in_the_pool(clock, store):
    """The same pass without reads ahead: every read made by a pool thread."""
    enforcers, _ = fleet(clock, store, None, 5)
    loop = ContinuousExitEnforcer(enforcers, max_concurrency=4)
    loop.tick()
    assert loop.last_primed is None
    threads = {t for e in enforcers for t in e.broker.read_threads}  # type: ignore[attr-defined]
    assert threads
    assert all(t.startswith("brokerguard-enforce") for t in threads)


def test_the_step_judges_the_read_made_ahead_with_the_time_it_started(clock, store, reads):
    """The snapshot the gate sees is stamped when the read started, not when it was judged."""
    enforcers, _ = fleet(clock, store, reads, 1)
    broker = enforcers[0].broker
    started = clock.monotonic()
    reads.prime([broker])
    assert broker.primed
    assert broker.primed_count == 3
    clock.advance(30)  # judged much later: the answer is still as old as the read
    ok, result = enforcers[0].enforce_cap()
    assert ok
    assert result["position_count"] == 3
    snapshot = broker.last_position_snapshot()
    assert snapshot is not None
    assert snapshot.fetched_at == started
    assert not broker.primed  # used once
    calls = [c.method for c in broker.calls]
    assert calls.count("fetch_positions") == 1  # the step made no read of its own


def test_a_failed_read_ahead_fails_the_step_closed_without_a_second_call(clock, store, reads):
    """The exchange refuses the read: the step is unverified, sends nothing, reads no more."""
    plan = FaultPlan(error_rate={"fetch_positions": 1.0})
    enforcers, _ = fleet(clock, store, reads, 1, held=12, plan=plan)
    broker = enforcers[0].broker
    reads.prime([broker])
    assert broker.primed
    assert broker.primed_count is None
    attempts = len(broker.calls)
    assert attempts >= 1  # the breaker's retries, made ahead
    ok, result = enforcers[0].enforce_cap()
    assert not ok
    assert result["status"] == "unverified"
    assert "could not be fetched" in result["reason"]
    assert result["orders"] == []
    assert not broker.all_orders()
    assert len(broker.calls) == attempts  # nothing more was asked of the venue


def test_a_read_ahead_that_loses_positions_is_not_believed_without_evidence(clock, store, reads):
    """An empty successful read made ahead is judged as one made by the step: not believed."""
    enforcers, _ = fleet(clock, store, reads, 1, held=3)
    enforcer = enforcers[0]
    broker = enforcer.broker
    assert enforcer.enforce_cap()[1]["position_count"] == 3  # believed: 3 held
    broker.fault_plan = FaultPlan(empty_positions_rate=1.0)
    reads.prime([broker])
    assert broker.primed_count == 0
    assert not enforcer.step_is_local()  # it lost symbols: the step may look orders up
    ok, result = enforcer.enforce_cap()
    assert not ok
    assert result["status"] == "unverified"
    assert "implausible" in result["reason"]


def test_over_the_cap_accounts_are_stepped_in_the_pool_the_rest_here(clock, store, reads):
    """Selling waits on the venue: that account goes to the pool; compliant ones stay local."""
    enforcers, _ = fleet(clock, store, reads, 4)
    over = PositionCapEnforcer(
        paper(clock, "over", 12, board=enforcers[0].broker.shared_prices), 8, store=store
    )
    loop = ContinuousExitEnforcer([*enforcers, over], max_concurrency=4, reads_ahead=reads)
    stepped_in: dict[str, str] = {}
    loop.add_result_listener(
        lambda account, _result: stepped_in.__setitem__(account, threading.current_thread().name)
    )
    results = loop.tick()
    assert results["over"]["status"] == "compliant"
    assert results["over"]["liquidated"]
    assert stepped_in["over"].startswith("brokerguard-enforce")
    assert {stepped_in[e.account_id] for e in enforcers} == {threading.current_thread().name}
    assert list(results) == [*(e.account_id for e in enforcers), "over"]  # the accounts' order


def test_a_read_made_ahead_serves_its_own_pass_only(clock, store, reads):
    """A pass stopped before an account's step leaves no read behind for a later pass."""
    enforcers, _ = fleet(clock, store, reads, 3)
    loop = ContinuousExitEnforcer(enforcers, max_concurrency=2, reads_ahead=reads)
    original = loop._enforce_one

    def stop_after_first(enforcer):
        result = original(enforcer)
        loop._stop.set()
        return result

    loop._enforce_one = stop_after_first  # type: ignore[method-assign]
    loop.tick()
    assert not any(e.broker.primed for e in enforcers)


def test_an_adapter_that_checks_its_sync_reads_is_never_read_ahead(clock, store, reads):
    """Overriding fetch_positions alone means its async parent would bypass it: no reads ahead."""
    broker = paper(clock, "checked", 3, cls=CheckedPaper)
    assert not broker.has_async_reads
    assert paper(clock, "plain", 3, cls=PaperBroker).has_async_reads
    enforcer = PositionCapEnforcer(broker, 8, store=store)
    loop = ContinuousExitEnforcer([enforcer], max_concurrency=2, reads_ahead=reads)
    before = CheckedPaper.checked
    assert loop.tick()[enforcer.account_id]["status"] == "compliant"
    assert loop.last_primed == PrimedPass(read=0, failed=0, skipped=1, venues_priced=0)
    assert CheckedPaper.checked == before + 1  # its own read, through its check


def test_an_open_read_circuit_is_not_read_ahead(clock, store, reads):
    """The probe of a half-open circuit and the refusal of an open one stay the step's."""
    enforcers, _ = fleet(clock, store, reads, 1)
    broker = enforcers[0].broker
    broker.read_breaker.force_open("test")
    assert broker.read_breaker.state is CircuitState.OPEN
    assert reads.prime([broker]) == PrimedPass(read=0, failed=0, skipped=1, venues_priced=0)
    assert not broker.primed
    assert broker.calls == []


def test_reads_ahead_keep_to_the_shared_rate_limit(clock, store, reads):
    """Ten accounts on one key limited to 5 calls/s (burst 1): reads ahead wait their slots."""
    limiter = RateLimiter(5, 1, clock=clock)
    enforcers, _ = fleet(clock, store, reads, 10, limiter=limiter)
    ContinuousExitEnforcer(enforcers, max_concurrency=4, reads_ahead=reads).tick()
    times = sorted(c.at for e in enforcers for c in e.broker.calls if c.method == "fetch_positions")
    assert len(times) == 10
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.2 - 1e-9  # one call per 1/5 s, never two at once


def test_a_failed_shared_price_read_ahead_leaves_each_account_to_fetch(clock, store, reads):
    """The venue's price read fails ahead: no answer is kept; the steps fetch (and value)."""
    plan = FaultPlan(
        latency={"fetch_positions": LATENCY},
        error_rate={"fetch_prices": 1.0},
    )
    enforcers, board = fleet(clock, store, reads, 2, plan=plan)
    reads.prime([e.broker for e in enforcers])
    assert board.fetches == 0
    assert not board.holds(enforcers[0].broker.primed_symbols())
    assert not enforcers[0].step_is_local()
    for enforcer in enforcers:
        enforcer.broker.fault_plan = FaultPlan()
    ok, result = enforcers[0].enforce_cap()
    assert ok
    assert result["valued_count"] == 3


@pytest.mark.parametrize(
    ("plan", "cap"),
    [
        (FaultPlan(), 4),
        (FaultPlan(empty_positions_rate=1.0), 4),
        (FaultPlan(error_rate={"fetch_positions": 1.0}), 4),
        # (Not prices that always fail: the venue's price read made ahead is one failure more
        # for its breaker, which then opens a step earlier; test_a_failed_shared_price_...)
        (FaultPlan(bad_prices={"C02/USD": Decimal(0)}), 4),
        # (No random faults: reading ahead changes the order of the calls, so the dice.)
    ],
    ids=[
        "clean",
        "empty-reads",
        "position-errors",
        "bad-price",
    ],
)
def test_a_service_decides_the_same_with_and_without_reads_ahead(tmp_path, plan, cap):
    """Same seeds, same faults, three passes: the same statuses, counts and unvalued symbols."""

    def run(reads_ahead: bool) -> list[dict[str, tuple[object, ...]]]:
        config = parse_config(
            {
                "store": {"url": f"sqlite:///{tmp_path / f'{reads_ahead}.db'}"},
                "enforcement": {"max_concurrency": 1, "reads_ahead": reads_ahead},
                "alerts": [],
                "brokers": {"paper": {"kind": "paper", "seed": 7, "prices": coins(6)}},
                "accounts": [
                    {
                        "id": f"acct-{i}",
                        "broker": "paper",
                        "max_positions": cap,
                        "positions": dict.fromkeys(list(coins(6))[: 2 + i], "1"),
                    }
                    for i in range(4)
                ],
            }
        )
        service = GuardService(config, clock=FakeClock(start=1_795_000_000.0))
        for runtime in service.accounts.values():
            runtime.broker.fault_plan = plan  # type: ignore[attr-defined]
        passes = []
        try:
            for _ in range(3):
                results = service.tick()
                passes.append(
                    {
                        account: (
                            r["status"],
                            r.get("position_count"),
                            tuple(r.get("unvalued_symbols", ())),
                            tuple(r.get("liquidated", ())),
                        )
                        for account, r in results.items()
                    }
                )
        finally:
            service.close()
        return passes

    assert run(reads_ahead=True) == run(reads_ahead=False)


def test_reads_ahead_is_closed_with_the_service(tmp_path):
    """The loop's thread ends when the service closes."""
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
            "alerts": [],
            "brokers": {"paper": {"kind": "paper"}},
            "accounts": [{"id": "a", "broker": "paper", "max_positions": 3}],
        }
    )
    service = GuardService(config)
    service.tick()
    assert any(t.name == "brokerguard-reads" for t in threading.enumerate())
    service.close()
    assert not any(t.name == "brokerguard-reads" for t in threading.enumerate())


def test_the_async_twins_answer_what_the_sync_reads_answer() -> None:
    """The paper broker's async reads give the same payload as its sync ones."""
    clock = FakeClock()
    broker = paper(clock, "t", 2)
    sync = broker.fetch_positions()
    prices: Mapping[str, object] = asyncio.run(broker.afetch_prices(["C01/USD"]))
    assert list(asyncio.run(broker.afetch_positions())) == list(sync)
    assert prices == broker.fetch_prices(["C01/USD"])


class HangingPaper(PaperBroker):
    """A venue that takes the connection and never answers a position read."""

    def fetch_positions(self) -> Sequence[Position]:
        return super().fetch_positions()

    async def afetch_positions(self) -> Sequence[Position]:
        await asyncio.Event().wait()  # never set
        raise AssertionError("unreachable")


def test_a_venue_that_never_answers_costs_the_pass_its_timeout_not_forever(clock, store):
    """Each attempt is abandoned after read_timeout_s (the breaker counts it).

    The step fails closed and the other accounts are enforced.
    """
    reads = ReadsAhead(read_timeout_s=0.05)
    try:
        hung = PositionCapEnforcer(paper(clock, "hung", 3, cls=HangingPaper), 8, store=store)
        fine = PositionCapEnforcer(paper(clock, "fine", 3), 8, store=store)
        loop = ContinuousExitEnforcer([hung, fine], max_concurrency=2, reads_ahead=reads)
        results = loop.tick()
    finally:
        reads.close()
    assert results["fine"]["status"] == "compliant"
    assert results["hung"]["status"] == "unverified"
    assert "no answer within 0.05 s" in results["hung"]["reason"]
    assert loop.last_primed is not None
    assert loop.last_primed.failed == 1
    assert hung.broker.read_breaker.snapshot().total_failures >= 1


def test_closing_cuts_a_waiting_pass_short_and_nothing_is_read_ahead_after(clock, store):
    """close() while a pass waits on a venue that never answers: the pass gets no reads.

    Its steps read for themselves, the reads' thread ends, and later passes read nothing ahead.
    """
    reads = ReadsAhead(read_timeout_s=60)
    # On the real clock: the read really waits (a fake one would time it out at once).
    broker = paper(SystemClock(), "hung", 3, cls=HangingPaper)  # type: ignore[arg-type]
    outcome: list[PrimedPass] = []
    waiting = threading.Thread(target=lambda: outcome.append(reads.prime([broker])))
    waiting.start()
    deadline = 200
    while not any(t.name == "brokerguard-reads" for t in threading.enumerate()) and deadline:
        threading.Event().wait(0.01)  # the loop's thread starts with the first pass
        deadline -= 1
    reads.close()
    waiting.join(timeout=5)
    assert not waiting.is_alive()
    assert outcome == [PrimedPass(read=0, failed=0, skipped=1, venues_priced=0)]
    assert not broker.primed
    assert not any(t.name == "brokerguard-reads" for t in threading.enumerate())
    assert reads.prime([paper(clock, "later", 3)]) == PrimedPass(0, 0, 1, 0)
    assert not any(t.name == "brokerguard-reads" for t in threading.enumerate())


def test_a_symbol_paused_but_no_longer_held_sends_its_step_to_the_pool(clock, store, reads):
    """A symbol the valuator paused is priced at the step: not local unless its price is held.

    The venue's answer made ahead asks for held symbols only, so the step would fetch.
    """
    enforcers, _ = fleet(clock, store, reads, 1)
    enforcer = enforcers[0]
    store.pause_symbol(enforcer.account_id, "C19/USD", "unvaluable: missing", actor="valuator")
    reads.prime([enforcer.broker])
    assert "C19/USD" in enforcer.valuator.own_pauses()
    assert not enforcer.step_is_local()
    ok, _ = enforcer.enforce_cap()
    assert ok  # and the step values it: a valid price lifts the pause
    assert "C19/USD" not in enforcer.valuator.own_pauses()


def test_one_at_a_time_steps_every_account_in_the_calling_thread(clock, store, reads):
    """max_concurrency 1 with reads ahead: over-cap accounts too, one after the other here."""
    enforcers, _ = fleet(clock, store, reads, 3)
    over = PositionCapEnforcer(
        paper(clock, "over", 12, board=enforcers[0].broker.shared_prices), 8, store=store
    )
    loop = ContinuousExitEnforcer([*enforcers, over], max_concurrency=1, reads_ahead=reads)
    threads: set[str] = set()
    loop.add_result_listener(lambda _a, _r: threads.add(threading.current_thread().name))
    results = loop.tick()
    assert results["over"]["liquidated"]
    assert threads == {threading.current_thread().name}


class CountingPaper(PaperBroker):
    """A paper broker counting the position reads waiting on it at once (all its kind share)."""

    waiting = 0
    most = 0

    async def afetch_positions(self) -> Sequence[Position]:
        CountingPaper.waiting += 1
        CountingPaper.most = max(CountingPaper.most, CountingPaper.waiting)
        try:
            return await super().afetch_positions()
        finally:
            CountingPaper.waiting -= 1


def test_no_more_than_max_in_flight_reads_wait_at_once(clock, store):
    """Ten accounts, three places: three reads wait together, never a fourth; all are read."""
    CountingPaper.waiting = CountingPaper.most = 0
    reads = ReadsAhead(max_in_flight=3)
    try:
        enforcers, _ = fleet(clock, store, reads, 10, cls=CountingPaper)
        summary = reads.prime([e.broker for e in enforcers])
    finally:
        reads.close()
    assert CountingPaper.most == 3
    assert summary == PrimedPass(read=10, failed=0, skipped=0, venues_priced=1)


class GatedPrices(PaperBroker):
    """A paper broker whose price reads wait until the test opens the gate (real time)."""

    gate = threading.Event()

    async def afetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        while not GatedPrices.gate.is_set():  # noqa: ASYNC110 (a thread opens it)
            await asyncio.sleep(0.005)  # the real loop's sleep: not a sleeper on the fake clock
        return await super().afetch_prices(symbols)


def test_a_venue_whose_price_read_hangs_holds_up_its_own_accounts_only(clock, store):
    """One place: venue A's price read hangs; venue B's accounts are handed over meanwhile.

    An account waiting for its venue's prices gives its place up: the hanging venue cannot take
    every place of the pass and starve the venues that answer.
    """
    GatedPrices.gate.clear()
    watchdog = threading.Timer(5.0, GatedPrices.gate.set)  # a starved pass fails, never hangs
    watchdog.start()
    reads = ReadsAhead(max_in_flight=1)
    try:
        a, _ = fleet(clock, store, reads, 2, cls=GatedPrices)
        b, _ = fleet(clock, store, reads, 3)
        for enforcer in b:
            enforcer.broker.account_id = "b-" + enforcer.account_id
        order = []
        for broker in reads.stream([e.broker for e in [*a, *b]]):
            order.append(broker.account_id)
            if len(order) == 3:
                GatedPrices.gate.set()  # B's three were handed over (or the watchdog fired)
    finally:
        watchdog.cancel()
        GatedPrices.gate.set()
        reads.close()
    assert sorted(order[:3]) == ["b-acct-0", "b-acct-1", "b-acct-2"]
    assert sorted(order[3:]) == ["acct-0", "acct-1"]


def test_an_answer_about_to_expire_is_fetched_again_before_the_account_lands(clock, store, reads):
    """A venue's answer with less than its lead to live (a quarter of 4 s) is not handed over.

    The account would be stepped a moment later, after the answer expired, and its step would
    call the venue itself (in the pool): the pass fetches a new answer first.
    """
    board = SharedPrices(clock, max_age=4.0)
    first, later = (
        PositionCapEnforcer(paper(clock, name, 3, board=board), 8, store=store)
        for name in ("first", "later")
    )
    reads.prime([first.broker])
    assert board.fetches == 1
    clock.advance(3.5)  # half a second left: less than the lead
    reads.prime([later.broker])
    assert board.fetches == 2
    clock.advance(0.6)  # past the first answer's age
    assert later.step_is_local()


class ExitingPaper(PaperBroker):
    """An adapter whose async read calls sys.exit(): a bug, on the reads' own thread."""

    async def afetch_positions(self) -> Sequence[Position]:
        raise SystemExit(3)


def test_an_adapter_raising_system_exit_does_not_end_the_reads_loop(clock, store, reads):
    """The account is read by its step instead; the loop (and the next pass) carries on."""
    exiting = paper(clock, "exiting", 3, cls=ExitingPaper)
    fine = paper(clock, "fine", 3)
    assert reads.prime([exiting, fine]) == PrimedPass(read=1, failed=0, skipped=1, venues_priced=0)
    assert not exiting.primed
    assert reads.prime([paper(clock, "later", 3)]).read == 1


def test_close_lets_a_call_under_way_on_the_loop_end_before_it_stops(reads):
    """A pool thread's call on the loop (an async exchange's order, say) is not cancelled.

    Cancelled, an order's outcome is unknown: it would stay unresolved. close() gives it
    _CLOSE_GRACE_S to end (the reads themselves are cancelled at once).
    """
    loop = reads.loop
    release = asyncio.Event()

    async def order_under_way() -> str:
        await release.wait()
        return "placed"

    call = asyncio.run_coroutine_threadsafe(order_under_way(), loop)
    closing = threading.Thread(target=reads.close)
    closing.start()
    closing.join(timeout=0.2)  # close() is waiting for the call, not cancelling it

    assert closing.is_alive()
    assert not call.done()
    loop.call_soon_threadsafe(release.set)
    closing.join(timeout=5)
    assert not closing.is_alive()
    assert call.result(timeout=0) == "placed"


def test_close_cancels_a_call_on_the_loop_that_outlives_the_grace(reads, monkeypatch):
    monkeypatch.setattr("brokerguard.risk.reads._CLOSE_GRACE_S", 0.05)

    async def hangs() -> None:
        await asyncio.Event().wait()

    call = asyncio.run_coroutine_threadsafe(hangs(), reads.loop)
    reads.close()

    assert call.cancelled()
