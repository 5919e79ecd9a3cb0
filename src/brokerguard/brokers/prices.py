"""One exchange's prices, fetched in one batched call and read by every account trading on it.

Ten thousand accounts on one exchange hold mostly the same coins; fetching the same tickers
once per account spent the exchange's rate limit and our CPU on copies of one answer. A
:class:`SharedPrices` is kept per venue by the service: the first account that needs prices
fetches every symbol any account has asked for on the venue (one call), and the accounts after
it read that answer until it is ``max_age`` seconds old (or the next enforcement pass starts).

What is shared is the exchange's *raw answer and the time it was received*; every account
still judges each value itself (a missing, zero, NaN or stale price is unvaluable for it, and
a value stamped on receipt carries the time it was received, not the time it was read from
here), so sharing can make no price look fresher or better than it was. A failed fetch is
not remembered: each account asking after it tries (through its breaker) and fails closed
on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from brokerguard._validation import seconds_problem
from brokerguard.clock import Clock
from brokerguard.errors import (
    BrokerRejection,
    ConfigurationError,
    FatalBrokerError,
    RateLimitedError,
)
from brokerguard.models import Quote

__all__ = ["MAX_SHARED_SYMBOLS", "Received", "SharedPrices"]

MAX_SHARED_SYMBOLS: Final = 2_000
"""Symbols a venue's shared fetch asks for at most (the rest are fetched by their accounts)."""


@dataclass(slots=True)
class Received:
    """One symbol's value as the exchange gave it, and when it was received (wall seconds)."""

    value: object
    received_at: float
    quote: Quote | None = None
    """The usable quote the first account to judge `value` made of it (the same for every
    account: same value, same stamp); None until then, and for an unusable value."""


class SharedPrices:
    """The latest batched price answer of one venue, shared by its accounts.

    Args:
        clock: the time source (monotonic for the age, wall for the receipt stamp).
        max_age: seconds an answer is served to other accounts (0: never shared).
    """

    def __init__(self, clock: Clock, *, max_age: float = 5.0) -> None:
        problems = seconds_problem("max_age", max_age)
        if problems:
            raise ConfigurationError("invalid SharedPrices: " + "; ".join(problems))
        self.clock = clock
        self.max_age = float(max_age)
        self.fetches = 0
        """Batched calls made (for benchmarks and status)."""
        self._lock = threading.Lock()  # one fetch at a time: the others then read its answer
        # Symbols the venue answered with a value, asked again with every fetch; pruned each
        # pass to those someone asked for in the pass before. A symbol never answered is
        # asked only by its own account's fetch: a pair the venue refuses (a whole batch
        # refused) blinds no other account.
        self._symbols: dict[str, None] = {}
        self._asked_in_pass: set[str] = set()
        self._answer: dict[str, Received] = {}
        self._asked: frozenset[str] = frozenset()  # what the latest fetch asked for
        self._fetched_at: float | None = None  # monotonic start of the fetch it holds
        self._arrived_at = 0.0  # monotonic time that answer arrived
        self._flight: _Flight | None = None
        self._pass = 0  # a fetch begun in an earlier pass never answers a later one

    def new_pass(self) -> None:
        """Forget the answer: an enforcement pass starts with prices of its own."""
        with self._lock:
            self._pass += 1
            self._symbols = {s: None for s in self._symbols if s in self._asked_in_pass}
            self._asked_in_pass = set()
            self._fetched_at = None
            self._answer = {}
            self._asked = frozenset()
            self._flight = None  # its waiters still get its answer; nobody else does

    def get(
        self, wanted: Iterable[str], fetch: Callable[[list[str]], Mapping[str, object]]
    ) -> dict[str, Received]:
        """Return the venue's answer for `wanted` (absent: the exchange gave no value).

        Fetches (one call, through `fetch`, the asking account's breaker) when the answer is
        older than ``max_age`` or did not ask for one of `wanted`; raises what `fetch` raises.
        Accounts asking while a fetch is under way wait for it rather than call too, and share
        its failure: an exchange that is down costs one failed call, not one per account.
        """
        wanted = list(dict.fromkeys(wanted))
        while True:
            with self._lock:
                answer = self._fresh(wanted)
                if answer is not None:
                    return answer
                flight, leading = self._flight_for(wanted)
            if leading:
                return self._fly(flight, fetch, wanted)
            flight.done.wait()
            if flight.asked.issuperset(wanted):
                if flight.error is None:
                    return flight.subset(wanted)
                if not flight.untested and _venue_wide(flight.error):
                    raise flight.error  # only proven symbols asked: the venue itself failed
            # That fetch did not ask for all of ours, failed on another account's untested
            # symbol, or on its key (revoked, rate-limited): look again (and lead the next one).

    def holds(self, symbols: Iterable[str], *, for_s: float = 0.0) -> bool:
        """Whether a fresh answer that asked for every one of `symbols` is held.

        With `for_s`, only one that will still be fresh `for_s` seconds from now, or that
        arrived less than `for_s` seconds ago. A negative `for_s` is taken as 0.
        """
        with self._lock:
            return self._covers(symbols, max(for_s, 0.0))

    def _covers(self, wanted: Iterable[str], for_s: float = 0.0) -> bool:
        fetched_at = self._fetched_at
        if self.max_age <= 0 or fetched_at is None or not self._asked.issuperset(wanted):
            return False
        now = self.clock.monotonic()
        age = now - fetched_at  # from the fetch's start: the data is at least this fresh
        if age > self.max_age:
            return False
        # One that just arrived counts however little it has left (a venue slower than
        # max_age - for_s would otherwise be asked again at once, and again).
        return age <= self.max_age - for_s or now - self._arrived_at < for_s

    def _fresh(self, wanted: list[str]) -> dict[str, Received] | None:
        """The held answer for `wanted`, if it is young enough and asked for all of it."""
        if self._covers(wanted):
            return {s: self._answer[s] for s in wanted if s in self._answer}
        return None

    def _flight_for(self, wanted: list[str]) -> tuple[_Flight, bool]:
        """The fetch under way, or a new one asking for `wanted` and every known symbol."""
        self._asked_in_pass.update(wanted)
        if self._flight is not None:
            return self._flight, False
        asked = frozenset([*wanted, *self._symbols])
        untested = frozenset(s for s in wanted if s not in self._symbols)
        self._flight = _Flight(asked, self.clock.monotonic(), self._pass, untested)
        return self._flight, True

    def _fly(
        self,
        flight: _Flight,
        fetch: Callable[[list[str]], Mapping[str, object]],
        wanted: list[str],
    ) -> dict[str, Received]:
        try:
            flight.receive(fetch(sorted(flight.asked)), self.clock.time())
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            self._land(flight)
        return flight.subset(wanted)

    async def aprime(
        self,
        wanted: Iterable[str],
        fetch: Callable[[list[str]], Awaitable[Mapping[str, object]]],
        *,
        for_s: float = 0.0,
    ) -> bool:
        """Fetch the answer for `wanted` on the running loop, ahead of this pass's accounts.

        One call through `fetch` (asking for `wanted` and every known symbol) unless a fresh
        answer holds them already (one still fresh `for_s` seconds from now); none when
        another fetch is under way (its thread's waiters have it; the accounts then read it,
        or fetch, as they would without this).
        Returns whether the held answer now covers `wanted`. A failure is not kept: each
        account asking afterwards fetches (and fails closed) on its own.
        """
        wanted = list(dict.fromkeys(wanted))
        with self._lock:
            if self._covers(wanted, max(for_s, 0.0)):
                return True
            flight, leading = self._flight_for(wanted)
        if not leading:
            return False
        try:
            flight.receive(await fetch(sorted(flight.asked)), self.clock.time())
        except BaseException as exc:
            flight.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._land(flight)
        with self._lock:
            return self._covers(wanted)

    def _land(self, flight: _Flight) -> None:
        """End `flight`: keep its answer (when it is this pass's) and wake its waiters."""
        with self._lock:
            if self._flight is flight:
                self._flight = None
            if flight.error is None:
                for symbol in flight.answer:
                    if len(self._symbols) < MAX_SHARED_SYMBOLS:
                        self._symbols[symbol] = None
            if flight.error is None and flight.pass_number == self._pass:
                self.fetches += 1
                self._answer = flight.answer
                self._asked = flight.asked
                self._fetched_at = flight.started
                self._arrived_at = self.clock.monotonic()
        flight.done.set()


def _venue_wide(error: BaseException) -> bool:
    """Whether a failed fetch says the venue failed, not the leading account's key.

    A revoked key, a key's own rate limit or a refusal of that account's request would fail
    only that account's fetch: its waiters, with keys of their own, fetch for themselves. A
    fetch cancelled (a pass closed under it) said nothing about the venue either.
    """
    return isinstance(error, Exception) and not isinstance(
        error, FatalBrokerError | RateLimitedError | BrokerRejection
    )


@dataclass(slots=True)
class _Flight:
    """One fetch under way: what it asks for, and what waits for it."""

    asked: frozenset[str]
    started: float
    pass_number: int
    untested: frozenset[str] = frozenset()
    """Symbols in it that the venue never answered before (its failure may be theirs)."""
    done: threading.Event = field(default_factory=threading.Event)
    answer: dict[str, Received] = field(default_factory=dict)
    error: BaseException | None = None

    def receive(self, raw: Mapping[str, object], received_at: float) -> None:
        """Keep the venue's answer to what this flight asked, stamped when it arrived."""
        self.answer = {s: Received(raw[s], received_at) for s in self.asked if s in raw}

    def subset(self, wanted: list[str]) -> dict[str, Received]:
        return {s: self.answer[s] for s in wanted if s in self.answer}
