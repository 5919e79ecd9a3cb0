"""An enforcement pass's reads, made ahead: every account's in flight at once on one event loop.

A compliant account costs a pass one position read and a share of its venue's price read, and
nearly all of that is waiting: for the rate limiter's slot, then for the exchange. With a
thread per waiting account, 10,000 accounts needed 64 threads woken by every limiter slot and
every answer, and the interpreter's hand-offs between them cost more CPU than the work (370-620
µs per account, 142 µs on one thread). :class:`ReadsAhead` makes those waits on one event loop
instead, in a thread of its own: every account's position read
(:meth:`BaseBroker.aprime_positions`), at most ``max_in_flight`` waiting at once, each through
its account's read breaker and rate limiter; and, when an account's read lands and its venue's
shared answer (:class:`~brokerguard.brokers.prices.SharedPrices`) does not hold its symbols yet,
one batched price read for the venue (:meth:`BaseBroker.aprime_prices`), shared by every
account landing while it is under way.

:meth:`ReadsAhead.stream` hands each account over as soon as its read (and the prices it needs)
landed, so the pass steps it while the other reads still wait: a slow or throttled venue holds
up its own accounts only. Each step judges the read made for it exactly as a read it had just
made (the same evidence rules, the time the read really started), so reading ahead changes when
the calls are made, never what is believed. What cannot be read ahead (an adapter without async
reads, a read circuit that is not closed, a read that failed) is read by the step itself, as
without this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from brokerguard._validation import int_problem, seconds_problem
from brokerguard.brokers.base import BaseBroker
from brokerguard.brokers.prices import SharedPrices
from brokerguard.errors import ConfigurationError

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "DEFAULT_READ_TIMEOUT_S", "PrimedPass", "ReadsAhead"]

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 512
"""Reads waiting at once (on the limiter or the exchange) in one pass, by default."""

DEFAULT_READ_TIMEOUT_S = 30.0
"""The longest one attempt of a read made ahead waits for its venue, by default."""


@dataclass(frozen=True, slots=True)
class PrimedPass:
    """What a pass read ahead."""

    read: int
    """Accounts whose position read was made (successful or not)."""
    failed: int
    """Of those, reads that failed (their steps raise the error, unverified)."""
    skipped: int
    """Accounts not read ahead (no async reads, read circuit not closed): their steps read."""
    venues_priced: int
    """Venues whose shared prices are held for the pass (fetched ahead in one batched call)."""


class ReadsAhead:
    """Makes a pass's reads on an event loop of its own (a daemon thread, started lazily).

    Args:
        max_in_flight: position reads waiting at once (a crew of this many readers takes the
            accounts in order; the limiters still decide when each is sent). Price reads, one
            per venue at a time, come on top.
        read_timeout_s: the longest one attempt of a read waits for the venue (after its
            rate-limit slot); a venue that never answers costs the pass this long (times the
            read breaker's attempts), never forever. Adapters keep their own timeouts too.
    """

    def __init__(
        self,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        problems = [
            *int_problem("max_in_flight", max_in_flight, minimum=1),
            *seconds_problem("read_timeout_s", read_timeout_s, allow_zero=False),
        ]
        if problems:
            raise ConfigurationError("invalid ReadsAhead: " + "; ".join(problems))
        self.max_in_flight = max_in_flight
        self.read_timeout_s = float(read_timeout_s)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pending: set[Future[PrimedPass]] = set()  # passes waiting for their reads
        self._reading: set[asyncio.Future[Any]] = set()  # its crews and waits (the loop thread)

    def prime(
        self, brokers: Iterable[BaseBroker], *, stop: Callable[[], bool] | None = None
    ) -> PrimedPass:
        """Read `brokers` ahead; block until every read has landed; say what was read."""
        reading = self.stream(brokers, stop=stop)
        for _ in reading:
            pass
        return reading.summary

    def stream(
        self, brokers: Iterable[BaseBroker], *, stop: Callable[[], bool] | None = None
    ) -> Stream:
        """Read `brokers` ahead; yield each one as its read (and the prices it needs) lands.

        Every broker is yielded exactly once, those not read ahead too (the step reads for
        itself); once the stream is exhausted, its ``summary`` says what was read. `stop`
        (the pass's stop request) is asked before each read waits for its turn, and
        :meth:`interrupt` cancels the reads still waiting. After :meth:`close` (or when it
        cuts a pass short) nothing is read ahead: every account is ``skipped``. Iterate it
        from a thread other than the loop's own (the loop would wait for itself).
        """
        listed = list(brokers)
        with self._lock:
            closed = self._closed
            loop = self._loop
        if loop is not None and self._thread is threading.current_thread():
            raise RuntimeError("ReadsAhead.stream() called from its own loop's thread")
        if closed or not listed:
            return Stream(listed, None, self)
        try:
            running = self._running_loop()
        except RuntimeError:  # closed since the look above
            return Stream(listed, None, self)
        landed: queue.SimpleQueue[list[BaseBroker]] = queue.SimpleQueue()
        future: Future[PrimedPass] = asyncio.run_coroutine_threadsafe(
            self._stream(listed, stop or _never, landed.put), running
        )
        with self._lock:
            self._pending.add(future)
        return Stream(listed, (future, landed), self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The reads' running event loop (started now if need be): async exchanges live on it."""
        return self._running_loop()

    @property
    def running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop if it runs (None: never started, or closed), without starting one."""
        with self._lock:
            return self._loop

    def close(self) -> None:
        """Stop the loop and its thread for good (idempotent).

        A pass waiting for its reads gets none (its steps read for themselves); the reads in
        flight are cancelled and awaited on the loop before it stops. Any other call on the
        loop (a pool thread's, on an async exchange's home loop: an order, maybe) is given
        :data:`_CLOSE_GRACE_S` to end before it is cancelled.
        """
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            pending = list(self._pending)
        for future in pending:
            future.cancel()
        if loop is None or thread is None:
            return
        if thread is not threading.current_thread():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(
                    _end_the_rest(self._reading, _CLOSE_GRACE_S), loop
                ).result(timeout=_CLOSE_GRACE_S + 5)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(timeout=5)
            if not thread.is_alive():
                loop.close()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("ReadsAhead is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_until_stopped, args=(loop,), name="brokerguard-reads", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _forget(self, future: Future[PrimedPass]) -> None:
        with self._lock:
            self._pending.discard(future)

    def interrupt(self) -> None:
        """Cancel the reads of the pass under way that have not landed (a stop request).

        Safe from any thread, the loop's own included (an adapter's read may be what asks);
        the cancelled accounts are ``skipped``: nothing is kept for them.
        """
        with self._lock:
            loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._cancel_reads)

    def _cancel_reads(self) -> None:
        for task in self._reading:
            task.cancel()

    async def _stream(
        self,
        brokers: Sequence[BaseBroker],
        stop: Callable[[], bool],
        hand_over: Callable[[list[BaseBroker]], None],
    ) -> PrimedPass:
        run = _Pass(self, brokers, stop, hand_over, asyncio.get_running_loop())
        # A fixed crew of `max_in_flight` readers takes the accounts in order (a task per
        # account and a semaphore cost a third of a read's CPU). An account whose prices are
        # not in hand yet waits for them in a task of its own, off the crew: a venue whose
        # price read hangs never holds up the other venues' reads.
        crew = [
            run.loop.create_task(run.reader()) for _ in range(min(self.max_in_flight, len(brokers)))
        ]
        self._reading.update(crew)
        try:
            # Every read ends here, whatever the others did: none lands after the pass.
            await asyncio.gather(*crew, return_exceptions=True)
            while run.waiting:
                await asyncio.gather(*run.waiting, return_exceptions=True)
        finally:
            self._reading.difference_update(crew)
            for task in run.waiting:
                task.cancel()
            for broker in brokers:  # never read (stopped, cancelled): handed over all the same
                run.land(broker)
            run.finish()  # before the pass's future is done: the stream reads that as the end
        return PrimedPass(
            read=run.read,
            failed=run.failed,
            skipped=len(brokers) - run.read,
            venues_priced=sum(1 for v in run.venues.values() if v.priced),
        )

    @staticmethod
    def _prices_in_hand(broker: BaseBroker, venues: dict[int, _VenuePrices]) -> bool:
        """Whether `broker`'s step needs no price read made ahead (or can have none)."""
        board = broker.shared_prices
        if board is None:
            return True
        symbols = broker.primed_symbols()
        if not symbols or board.holds(symbols, for_s=_lead(board)):
            return True
        venue = venues.get(id(board))
        return venue is not None and venue.failed

    async def _priced(
        self,
        broker: BaseBroker,
        venues: dict[int, _VenuePrices],
        stop: Callable[[], bool],
    ) -> None:
        """Wait until the venue's shared answer holds `broker`'s symbols (one flight at once).

        A flight is started when none is under way and the answer does not hold them (it asks
        for them and every symbol the venue answered before); one that fails ends the venue's
        price reads for the pass (its steps ask for themselves, and fail closed on their own).
        """
        board = broker.shared_prices
        symbols = broker.primed_symbols()
        if board is None or not symbols:
            return
        venue = venues.setdefault(id(board), _VenuePrices())
        for _ in range(2):  # a flight begun before this read landed may not ask for its symbols
            if board.holds(symbols, for_s=_lead(board)) or venue.failed:
                return
            flight = venue.flight
            if flight is None or flight.done():
                flight = venue.flight = asyncio.ensure_future(
                    self._price(broker, set(symbols), stop)
                )
                self._reading.add(flight)
                flight.add_done_callback(self._reading.discard)
            ok = await asyncio.shield(flight)
            venue.priced |= ok
            venue.failed |= not ok

    async def _read(self, broker: BaseBroker, stop: Callable[[], bool]) -> bool:
        if stop():
            return False
        try:
            return await broker.aprime_positions(answer_within_s=self.read_timeout_s)
        except Exception:  # a bug in an adapter: that account's step reads itself
            log.exception("reading account %s ahead failed", broker.account_id)
        except asyncio.CancelledError:
            if _cancelling():
                broker.discard_primed()
                raise  # the pass itself is cancelled (stop, close): this read ends
            log.error("reading account %s ahead was cancelled by its adapter", broker)
        except BaseException:  # see _ADAPTER_EXIT
            log.critical(_ADAPTER_EXIT, "reading account", broker.account_id, exc_info=True)
        broker.discard_primed()
        return False

    async def _price(
        self,
        broker: BaseBroker,
        symbols: set[str],
        stop: Callable[[], bool],
    ) -> bool:
        if stop():
            return False
        try:
            board = broker.shared_prices
            return await broker.aprime_prices(
                sorted(symbols),
                answer_within_s=self.read_timeout_s,
                for_s=0.0 if board is None else _lead(board),
            )
        except Exception:
            log.exception("reading prices ahead through %s failed", broker.account_id)
        except asyncio.CancelledError:
            if _cancelling():
                raise
            log.error("reading prices ahead through %s was cancelled", broker)
        except BaseException:  # see _ADAPTER_EXIT
            log.critical(_ADAPTER_EXIT, "reading prices through", broker.account_id, exc_info=True)
        return False


def _run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """Run the reads' loop until :meth:`ReadsAhead.close` stops it, whatever a task raises.

    A task that raises SystemExit or KeyboardInterrupt (an adapter's bug: on this thread no
    signal sends them) makes ``run_forever`` raise, which would end the thread and leave every
    later pass waiting for reads that no loop makes. The task ends with it (its awaiter gets
    the error, a failed read); the loop runs on.
    """
    while True:
        try:
            loop.run_forever()
        except BaseException:
            log.critical(
                "a task on the reads loop raised out of it; the loop runs on", exc_info=True
            )
            if not loop.is_closed():
                continue
        return


async def _end_the_rest(reading: set[asyncio.Future[Any]], grace_s: float) -> None:
    """End every other task of the running loop: the reads at once, the others after a grace.

    The others are calls that pool threads make on the loop, an async exchange's home (a ccxt
    order among them): cancelled, a write's outcome is unknown and it stays unresolved, so one
    that ends within `grace_s` is let end.
    """
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        if task in reading:
            task.cancel()
    others = [t for t in tasks if t not in reading]
    if others:
        _, late = await asyncio.wait(others, timeout=grace_s)
        for task in late:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _never() -> bool:
    return False


class _Pass:
    """One pass's reads made ahead (the loop's thread only): its crew's work and its tally."""

    def __init__(
        self,
        owner: ReadsAhead,
        brokers: Sequence[BaseBroker],
        stop: Callable[[], bool],
        hand_over: Callable[[list[BaseBroker]], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.owner = owner
        self.stop = stop
        self.loop = loop
        self.venues: dict[int, _VenuePrices] = {}
        self.waiting: set[asyncio.Task[None]] = set()  # accounts waiting for their prices
        self.read = 0  # counted as they land: a step may take its read before the pass ends
        self.failed = 0
        self._hand_over = hand_over
        self._queue = iter(brokers)
        self._landed: set[int] = set()
        # The accounts landing within _HAND_OVER_S are handed over together: one wake-up of
        # the pass's thread for many (a wake-up per account cost more than the account).
        self._batch: list[BaseBroker] = []
        self._handed_at = -_HAND_OVER_S  # the loop's time of the last hand-over

    def land(self, broker: BaseBroker) -> None:
        """Hand `broker` over to the pass's thread (once, whatever happened to its read)."""
        if id(broker) in self._landed:
            return
        self._landed.add(id(broker))
        if not self._batch:
            # At once after a quiet spell (a pass of a few accounts waits for nothing); while
            # accounts keep landing, at most one hand-over per _HAND_OVER_S.
            wait = self._handed_at + _HAND_OVER_S - self.loop.time()
            if wait > 0:
                self.loop.call_later(wait, self._flush)
            else:
                self.loop.call_soon(self._flush)
        self._batch.append(broker)

    def _flush(self) -> None:
        if not self._batch:
            return  # handed over already (the pass's end does not wait for the timer)
        self._handed_at = self.loop.time()
        self._hand_over(self._batch.copy())
        self._batch.clear()

    def finish(self) -> None:
        """Hand over what waits for the timer now: the pass ends (its stream stops looking)."""
        self._flush()

    async def reader(self) -> None:
        """Read the next account not taken yet, until none is left."""
        owner = self.owner
        for broker in self._queue:
            if not await owner._read(broker, self.stop):  # noqa: SLF001 (its owner's)
                self.land(broker)  # its step reads for itself
                continue
            self.read += 1
            if broker.primed_count is None:
                self.failed += 1  # its step raises the error (and makes no second call)
                self.land(broker)
            elif owner._prices_in_hand(broker, self.venues):  # noqa: SLF001
                self.land(broker)
            else:
                task = self.loop.create_task(self._priced_then_land(broker))
                self.waiting.add(task)
                owner._reading.add(task)  # noqa: SLF001 (interrupt() cancels it)
                task.add_done_callback(self.waiting.discard)
                task.add_done_callback(owner._reading.discard)  # noqa: SLF001

    async def _priced_then_land(self, broker: BaseBroker) -> None:
        try:
            await self.owner._priced(broker, self.venues, self.stop)  # noqa: SLF001
        finally:
            self.land(broker)


@dataclass(slots=True)
class _VenuePrices:
    """A venue's price reads in one pass (on the loop's thread only)."""

    flight: asyncio.Future[bool] | None = None
    priced: bool = False
    failed: bool = False


@dataclass(slots=True)
class Stream:
    """The accounts of one pass, each handed over once its read made ahead has landed."""

    brokers: list[BaseBroker]
    _source: tuple[Future[PrimedPass], queue.SimpleQueue[list[BaseBroker]]] | None
    _owner: ReadsAhead
    summary: PrimedPass = field(init=False)
    """What the pass read (complete once the stream is exhausted)."""

    def __post_init__(self) -> None:
        self.summary = PrimedPass(0, 0, len(self.brokers), 0)

    def __iter__(self) -> Iterator[BaseBroker]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[BaseBroker]]:
        """The accounts in the batches they landed in (those landing within _HAND_OVER_S)."""
        if self._source is None:
            if self.brokers:
                yield list(self.brokers)
            return
        future, landed = self._source
        given: set[int] = set()
        try:
            while len(given) < len(self.brokers):
                try:
                    brokers = landed.get(timeout=_POLL_S)
                except queue.Empty:
                    if future.done() and landed.empty():
                        break  # cancelled (closed) before handing every account over
                    continue
                given.update(id(broker) for broker in brokers)
                yield brokers
            self.summary = _summary(future, self.brokers)
        finally:
            self._owner._forget(future)  # noqa: SLF001 (the stream's own pass)
        never = [broker for broker in self.brokers if id(broker) not in given]
        for broker in never:  # never handed over: closed under the pass
            broker.discard_primed()
        if never:
            yield never


def _lead(board: SharedPrices) -> float:
    """How long a venue's answer must still be fresh when an account lands on it.

    The pass's thread steps the account a moment after it landed, and values it then: an
    answer about to expire would send that step to the venue itself (in the pool), so a new
    one is fetched ahead a little before (a second, or a quarter of ``share_prices_s``).
    """
    return min(_PRICES_LEAD_S, board.max_age / 4)


_PRICES_LEAD_S = 1.0

_HAND_OVER_S = 0.01
"""How long the accounts that land are gathered before the pass's thread is woken for them
(the loop's own clock: it paces wake-ups, it decides nothing).

Paced by a rate limiter, reads land one at a time, a millisecond apart: a wake-up of the
pass's thread for each (and the interpreter's hand-over between the two threads) cost a
quarter of a compliant account's CPU. A step made 10 ms later changes nothing it decides."""


_ADAPTER_EXIT = (
    "%s %s ahead raised SystemExit or KeyboardInterrupt: an adapter's bug (on the reads' "
    "thread they come from no signal); taken as a read that failed, so the loop lives on"
)
"""Raised on the loop's thread, either would end it, and every later pass would wait for reads
that no loop makes: the step reads for itself instead."""

_CLOSE_GRACE_S = 5.0
"""Seconds :meth:`ReadsAhead.close` lets a call that is not a read (a pool thread's order on an
async exchange's home loop) end before cancelling it (real seconds: the service is stopping)."""

_POLL_S = 0.05
"""How often a waiting stream looks whether its pass was cancelled (seconds)."""


def _summary(future: Future[PrimedPass], brokers: list[BaseBroker]) -> PrimedPass:
    try:
        return future.result(timeout=5)
    except Exception:  # noqa: BLE001 (cancelled when closed, or broken: nothing counts as read ahead)
        for broker in brokers:
            broker.discard_primed()
        return PrimedPass(0, 0, len(brokers), 0)


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled (not a callee raising the error)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
