"""An enforcement pass's reads, made ahead: every account's in flight at once on one event loop.

A compliant account costs a pass one position read and a share of its venue's price read, and
nearly all of that is waiting: for the rate limiter's slot, then for the exchange. With a
thread per waiting account, 10,000 accounts needed 64 threads woken by every limiter slot and
every answer, and the interpreter's hand-offs between them cost more CPU than the work (370-620
µs per account, 142 µs on one thread). :class:`ReadsAhead` makes those waits on one event loop
instead, in a thread of its own:

1. every account's position read (:meth:`BaseBroker.aprime_positions`), at most
   ``max_in_flight`` at once, each through its account's read breaker and rate limiter;
2. then each venue's prices in one batched call (:meth:`BaseBroker.aprime_prices`) for every
   symbol its accounts hold, into the venue's :class:`~brokerguard.brokers.prices.SharedPrices`.

The pass then steps the accounts as before; each step judges the read made for it exactly as a
read it had just made (the same evidence rules, the time the read really started), so reading
ahead changes when the calls are made, never what is believed. What cannot be read ahead (an
adapter without async reads, a read circuit that is not closed, a read that failed) is read by
the step itself, as without this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass

from brokerguard._validation import int_problem, seconds_problem
from brokerguard.brokers.base import BaseBroker
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
        max_in_flight: reads waiting at once; more wait for a place (the limiters still
            decide when each is sent).
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

    def prime(self, brokers: Iterable[BaseBroker]) -> PrimedPass:
        """Read `brokers` ahead for this pass; block until every read has landed.

        After :meth:`close` (or when it cuts a pass short) nothing is read ahead: every account
        is ``skipped`` and its step reads for itself. Called from a thread other than the
        loop's own (the loop would wait for itself).
        """
        listed = list(brokers)
        with self._lock:
            closed = self._closed
            loop = self._loop
        if closed or not listed:
            return PrimedPass(0, 0, len(listed), 0)
        if loop is not None and self._thread is threading.current_thread():
            raise RuntimeError("ReadsAhead.prime() called from its own loop's thread")
        future: Future[PrimedPass] = asyncio.run_coroutine_threadsafe(
            self._prime(listed), self._running_loop()
        )
        with self._lock:
            self._pending.add(future)
        try:
            return future.result()
        except CancelledError:  # closed under it: what landed is dropped, the steps read
            for broker in listed:
                broker.discard_primed()
            return PrimedPass(0, 0, len(listed), 0)
        finally:
            with self._lock:
                self._pending.discard(future)

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
        flight are cancelled and awaited on the loop before it stops.
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
                asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result(timeout=5)
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
                    target=loop.run_forever, name="brokerguard-reads", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _prime(self, brokers: Sequence[BaseBroker]) -> PrimedPass:
        places = asyncio.Semaphore(self.max_in_flight)

        async def read(broker: BaseBroker) -> bool:
            async with places:
                try:
                    return await broker.aprime_positions(answer_within_s=self.read_timeout_s)
                except Exception:  # a bug in an adapter: that account's step reads itself
                    log.exception("reading account %s ahead failed", broker.account_id)
                    broker.discard_primed()
                    return False

        done = await asyncio.gather(*(read(b) for b in brokers))
        # One price call per venue, through the key of its first account read successfully,
        # for every symbol its accounts hold (each still judges each value itself).
        venues: dict[int, tuple[BaseBroker, set[str]]] = {}
        for broker, was_read in zip(brokers, done, strict=True):
            board = broker.shared_prices
            symbols = broker.primed_symbols() if was_read else []
            if board is None or not symbols:
                continue
            venues.setdefault(id(board), (broker, set()))[1].update(symbols)

        async def prices(broker: BaseBroker, symbols: set[str]) -> bool:
            async with places:
                try:
                    return await broker.aprime_prices(
                        sorted(symbols), answer_within_s=self.read_timeout_s
                    )
                except Exception:
                    log.exception("reading prices ahead through %s failed", broker.account_id)
                    return False

        priced = await asyncio.gather(*(prices(b, s) for b, s in venues.values()))
        return PrimedPass(
            read=sum(done),
            failed=sum(1 for b in brokers if b.primed and b.primed_count is None),
            skipped=len(brokers) - sum(done),
            venues_priced=sum(priced),
        )


async def _cancel_the_rest() -> None:
    """Cancel every other task of the running loop and wait for them to end."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
