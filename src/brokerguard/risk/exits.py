"""Keep enforcing: the cap enforcer (and its valuation sweep) on every account, every interval.

:class:`ContinuousExitEnforcer` runs :meth:`PositionCapEnforcer.enforce_cap` for each account
once per ``interval`` seconds on the clock, and tells listeners what happened as frozen,
past-tense events (a cap violation detected, positions liquidated, trading halted, symbols that
became unvaluable or valuable again, a cap restored, an enforcement left unverified). One
account failing, even with a bug, never stops the others; a failing listener never stops the
loop. :meth:`stop` lets the current enforcement step finish.

In a fleet each step runs under the account's lease (:meth:`AccountLeases.enforcing`): fenced
in the store as it was taken, renewed before every order, never handed over mid-step. A step
whose lease is lost sends nothing more (``status: "lease_lost"``); a store or Redis that cannot
answer makes the step ``unverified``; tokens refused pass after pass are a
:class:`FencingLockout`, announced once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brokerguard._validation import int_problem, seconds_problem
from brokerguard.brokers.base import BaseBroker
from brokerguard.clock import Clock
from brokerguard.errors import (
    ConfigurationError,
    CoordinationUnavailableError,
    LeaseLostError,
    StoreUnavailableError,
)
from brokerguard.risk.cap import PositionCapEnforcer
from brokerguard.risk.reads import PrimedPass, ReadsAhead
from brokerguard.store.state import StateStore

if TYPE_CHECKING:  # the fleet's leases are optional (they need redis)
    from brokerguard.coordination.leases import AccountLeases

__all__ = [
    "CapRestored",
    "CapViolationDetected",
    "ContinuousExitEnforcer",
    "EnforcementCrashed",
    "EnforcementEvent",
    "EnforcementUnverified",
    "EventListener",
    "FencingLockout",
    "OrdersUnresolved",
    "PositionsImplausible",
    "PositionsLiquidated",
    "SymbolsRevalued",
    "SymbolsUnvaluable",
    "TradingHalted",
    "TradingResumed",
]

log = logging.getLogger("brokerguard.exits")

_SLEEP_STEP = 0.5
"""The loop sleeps in steps this long (on the clock) so stop() is honoured promptly."""


@dataclass(frozen=True, slots=True)
class EnforcementEvent:
    """Something that happened to an account, at a wall-clock time (epoch seconds)."""

    account_id: str
    at: float


@dataclass(frozen=True, slots=True)
class CapViolationDetected(EnforcementEvent):
    """The account held more positions than its cap."""

    position_count: int
    max_positions: int


@dataclass(frozen=True, slots=True)
class PositionsLiquidated(EnforcementEvent):
    """Liquidation orders were sent."""

    symbols: tuple[str, ...]
    client_order_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TradingHalted(EnforcementEvent):
    """The account is halted until an operator resumes it."""

    reason: str


@dataclass(frozen=True, slots=True)
class TradingResumed(EnforcementEvent):
    """An operator lifted the account's halt."""

    operator: str
    reason: str


@dataclass(frozen=True, slots=True)
class CapRestored(EnforcementEvent):
    """The account is back within its cap after a violation or an unverified step."""

    position_count: int


@dataclass(frozen=True, slots=True)
class SymbolsUnvaluable(EnforcementEvent):
    """These symbols became unvaluable (and were paused)."""

    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SymbolsRevalued(EnforcementEvent):
    """These symbols have a valid price again."""

    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EnforcementUnverified(EnforcementEvent):
    """The positions could not be known; nothing was sent and entries stay blocked."""

    reason: str


@dataclass(frozen=True, slots=True)
class OrdersUnresolved(EnforcementEvent):
    """Orders of the account have unknown outcomes: never resent, their symbols left alone.

    Each stays so until it is found or proven absent after its deadline.
    """

    client_order_ids: tuple[str, ...]
    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PositionsImplausible(EnforcementEvent):
    """A successful position read lost positions that nothing explains: not believed yet."""

    missing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EnforcementCrashed(EnforcementEvent):
    """The enforcement step raised unexpectedly; the other accounts carried on."""

    error: str


@dataclass(frozen=True, slots=True)
class FencingLockout(EnforcementCrashed):
    """This worker's fencing tokens for the account were refused pass after pass.

    The account is not enforced (no worker acts on it) until a token is accepted again; it is
    reported not held, and the worker not ready, meanwhile. An EnforcementCrashed, so every
    sink hears it as critical.
    """


EventListener = Callable[[EnforcementEvent], object]
"""Called with every event, on the enforcing thread; exceptions are logged and ignored."""


class ContinuousExitEnforcer:
    """Run cap enforcement for many accounts on an interval, isolating failures.

    Args:
        enforcers: one :class:`PositionCapEnforcer` per account (or a single one); a guarded
            broker given instead gets an enforcer with `max_positions` and `store`.
        interval: seconds between the starts of two passes (on the clock).
        clock: the time source (default: the first enforcer's).
        max_concurrency: accounts enforced at once (1: one after the other).
        leases: in a fleet, this worker's :class:`~brokerguard.coordination.AccountLeases`:
            an account is enforced only under its lease, with the lease's fencing token, and
            skipped (``status: "held_elsewhere"``) while another worker holds it. Leases
            without a store get the accounts' store, where they fence each token they take.
        reads_ahead: make each pass's reads first, all in flight on one event loop
            (:class:`~brokerguard.risk.reads.ReadsAhead`); the accounts whose reads are then in
            hand are stepped one after the other in the calling thread, the others in the
            pool. None: each step reads for itself, in the pool.
    """

    def __init__(
        self,
        enforcers: PositionCapEnforcer | BaseBroker | Iterable[PositionCapEnforcer | BaseBroker],
        *,
        interval: float = 10.0,
        clock: Clock | None = None,
        max_concurrency: int = 1,
        max_positions: int = 8,
        store: StateStore | None = None,
        leases: AccountLeases | None = None,
        reads_ahead: ReadsAhead | None = None,
    ) -> None:
        given = (
            [enforcers] if isinstance(enforcers, PositionCapEnforcer | BaseBroker) else enforcers
        )
        # A bare broker gets a cap enforcer with max_positions and store (one per account).
        listed = [
            e
            if isinstance(e, PositionCapEnforcer)
            else PositionCapEnforcer(e, max_positions, store=store, clock=clock)
            for e in given
        ]
        problems = [
            *seconds_problem("interval", interval, allow_zero=False),
            *int_problem("max_concurrency", max_concurrency, minimum=1),
        ]
        if not listed:
            problems.append("at least one account's enforcer is needed")
        ids = [e.account_id for e in listed]
        if len(set(ids)) != len(ids):
            problems.append(f"each account must appear once, got {sorted(ids)}")
        if leases is not None and leases.store is None and listed:
            stores = {id(e.store) for e in listed}
            if len(stores) > 1:
                problems.append("under leases every account's enforcer needs the same store")
            else:
                leases.store = listed[0].store  # where each lease's token is fenced
        if problems:
            raise ConfigurationError("invalid ContinuousExitEnforcer: " + "; ".join(problems))
        self.enforcers = listed
        self.interval = float(interval)
        self.max_concurrency = max_concurrency
        self.leases = leases
        self.reads_ahead = reads_ahead
        self.last_primed: PrimedPass | None = None
        """What the last pass read ahead (None: it read nothing ahead)."""
        self._lock = threading.Lock()
        self.clock = clock if clock is not None else listed[0].clock
        self._listeners: list[EventListener] = []
        self._result_listeners: list[Callable[[str, dict[str, Any]], object]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._results: dict[str, dict[str, Any]] = {}
        self._unvalued: dict[str, set[str]] = {}
        self._unresolved: dict[str, set[str]] = {}
        self._suspect: dict[str, tuple[str, ...]] = {}
        self.ticks = 0

    def add_listener(self, listener: EventListener) -> None:
        """Receive every event."""
        self._listeners.append(listener)

    def add_result_listener(self, listener: Callable[[str, dict[str, Any]], object]) -> None:
        """Receive ``(account_id, result)`` after every enforcement step (metrics)."""
        self._result_listeners.append(listener)

    @property
    def last_results(self) -> Mapping[str, dict[str, Any]]:
        """The last enforcement result of each account (status page, metrics)."""
        with self._lock:
            return dict(self._results)

    # ------------------------------------------------------------------ running

    def tick(self) -> dict[str, dict[str, Any]]:
        """Enforce every account once; return each account's result."""
        self._begin_pass()
        self.last_primed = None
        try:
            if self.reads_ahead is not None and not self._stop.is_set():
                results = self._tick_reading_ahead(self.reads_ahead)
            elif self.max_concurrency == 1:
                results = {}
                for enforcer in self.enforcers:
                    if self._stop.is_set():
                        break
                    results[enforcer.account_id] = self._enforce_one(enforcer)
            else:
                with ThreadPoolExecutor(self.max_concurrency, "brokerguard-enforce") as pool:
                    futures = {
                        e.account_id: pool.submit(self._enforce_unless_stopped, e)
                        for e in self.enforcers
                    }
                results = self._in_order({a: f.result() for a, f in futures.items()})
        finally:
            for enforcer in self.enforcers:
                enforcer.broker.discard_primed()  # a read made ahead serves this pass only
        self.ticks += 1
        return results

    def _tick_reading_ahead(self, reads: ReadsAhead) -> dict[str, dict[str, Any]]:
        """Step each account as its read made ahead lands: here if local, else in the pool.

        An account whose step looks local (:meth:`PositionCapEnforcer.step_is_local`) is
        stepped in this thread at once; the others (selling, settling, looking orders up) in
        the pool meanwhile, as are the accounts not read ahead (held by another worker of the
        fleet, by all appearances). A slow venue delays its own accounts only. With
        ``max_concurrency`` 1 every step is made in this thread, one after the other.
        """
        ahead = self._to_read_ahead()
        by_broker: dict[int, list[PositionCapEnforcer]] = {}
        for enforcer in ahead:
            by_broker.setdefault(id(enforcer.broker), []).append(enforcer)
        reading = {id(e) for e in ahead}
        rest = [e for e in self.enforcers if id(e) not in reading]
        with ThreadPoolExecutor(self.max_concurrency, "brokerguard-enforce") as pool:
            steps = _Steps(self._enforce_unless_stopped, pool, alone=self.max_concurrency == 1)
            steps.elsewhere(rest)  # (one at a time: after the others)
            stream = reads.stream(
                [e.broker for e in ahead if by_broker[id(e.broker)][0] is e],
                stop=self._stop.is_set,
            )
            for landed in stream.batches():
                for run in _runs([e for b in landed for e in by_broker[id(b)]]):
                    # One look at other processes' changes for the guesses and steps of a run
                    # of accounts that landed together (never longer than the store's cache_s
                    # bound: a pinned store still reloads a snapshot that old); the listeners
                    # between the steps are not pinned.
                    with contextlib.ExitStack() as runs:
                        for store in {id(e.store): e.store for e in run}.values():
                            runs.enter_context(store.steps())
                        for enforcer in run:
                            with enforcer.store.pinned():
                                local = self._local(enforcer)
                            if local:
                                steps.here(enforcer)
                            else:
                                steps.elsewhere([enforcer])
            self.last_primed = stream.summary
        return self._in_order(steps.results())

    def _to_read_ahead(self) -> list[PositionCapEnforcer]:
        """The accounts to read ahead: in a fleet, those this worker holds or is to take."""
        if self.leases is None:
            return list(self.enforcers)
        leases = self.leases
        held = leases.held()
        return [e for e in self.enforcers if e.account_id in held or leases.prefers(e.account_id)]

    def _local(self, enforcer: PositionCapEnforcer) -> bool:
        """Whether to step `enforcer` here (its reads in hand); drop a read it must not sell on."""
        count = enforcer.broker.primed_count
        if count is not None and count > enforcer.max_positions:
            # It will sell: on a read of its own, made when its step starts, not one made up
            # to a whole pass earlier. Any other read is judged as it came (a failed one fails
            # its step closed without a second call into a failing venue).
            enforcer.broker.discard_primed()
            return False
        try:
            return enforcer.step_is_local()
        except Exception:  # a guess only: such an account is stepped in the pool
            log.exception("account %s: could not tell its step", enforcer.account_id)
            return False

    def _in_order(self, stepped: Mapping[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
        """The results of the accounts stepped, in the accounts' order."""
        return {
            e.account_id: result
            for e in self.enforcers
            if (result := stepped.get(e.account_id)) is not None
        }

    def run(self, *, max_ticks: int | None = None) -> None:
        """Tick every ``interval`` seconds until :meth:`stop` (or `max_ticks` passes)."""
        while not self._stop.is_set() and (max_ticks is None or self.ticks < max_ticks):
            started = self.clock.monotonic()
            self.tick()
            remaining = self.interval - (self.clock.monotonic() - started)
            while remaining > 0 and not self._stop.is_set():
                step = min(remaining, _SLEEP_STEP)
                self.clock.sleep(step)
                remaining -= step

    def start(self) -> None:
        """Run in a background thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the enforcer is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="brokerguard-exits", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to stop after the current enforcement step, and wait for it.

        Reads being made ahead that have not landed are cancelled: no step follows them.
        """
        self._stop.set()
        if self.reads_ahead is not None:
            self.reads_ahead.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ internals

    def _enforce_unless_stopped(self, enforcer: PositionCapEnforcer) -> dict[str, Any] | None:
        """A step not yet started when stop() came is not started (None): shutdown is prompt."""
        return None if self._stop.is_set() else self._enforce_one(enforcer)

    def _enforce_one(self, enforcer: PositionCapEnforcer) -> dict[str, Any]:
        result = self._enforce_and_announce(enforcer)
        for listener in tuple(self._result_listeners):
            try:
                listener(enforcer.account_id, result)
            except Exception:
                log.exception("result listener %r failed", listener)
        return result

    def _enforce_and_announce(self, enforcer: PositionCapEnforcer) -> dict[str, Any]:
        account = enforcer.account_id
        previous = self._results.get(account)
        try:
            stepped = self._step(enforcer)
            if isinstance(stepped, dict):  # not enforced here: another worker holds it
                with self._lock:
                    self._results[account] = stepped
                return stepped
            ok, result = stepped
        except LeaseLostError as exc:
            log.warning("account %s: lease lost (%s); nothing more sent under it", account, exc)
            return self._not_enforced(account, "lease_lost", str(exc))
        except CoordinationUnavailableError as exc:
            return self._not_enforced(account, "unverified", f"no lease: {exc}")
        except StoreUnavailableError as exc:
            return self._not_enforced(account, "unverified", f"state store unavailable: {exc}")
        except Exception as exc:
            log.exception(
                "cap enforcement for account %s crashed; the other accounts carry on and this "
                "one is retried next pass",
                account,
            )
            result = {
                "account_id": account,
                "status": "error",
                "trading_halted": None,
                "reason": f"{type(exc).__name__}: {exc}",
            }
            self._emit(EnforcementCrashed(account, self.clock.time(), result["reason"]))
            with self._lock:
                self._results[account] = result
            return result
        with self._lock:
            self._results[account] = result
        self._announce(enforcer, ok, result, previous)
        return result

    def _begin_pass(self) -> None:
        if self.leases is None:
            return
        try:
            self.leases.begin_pass([e.account_id for e in self.enforcers])
        except CoordinationUnavailableError as exc:
            log.error("no heartbeat to the fleet (%s): every account waits this pass", exc)

    def _step(self, enforcer: PositionCapEnforcer) -> tuple[bool, dict[str, Any]] | dict[str, Any]:
        """One step on the account: under its lease in a fleet, or the result of not enforcing.

        Raises LeaseLostError (the lease is gone or its token refused: nothing more was sent),
        CoordinationUnavailableError or StoreUnavailableError (unknown: nothing was decided).
        """
        leases = self.leases
        if leases is None:
            return enforcer.enforce_cap()
        account = enforcer.account_id
        with leases.enforcing(account) as lease:
            if lease is None:
                leases.settled(account)
                return _not_enforced(
                    account, "held_elsewhere", "another worker holds this account's lease"
                )
            outcome = enforcer.enforce_cap(
                fence_token=lease.token,
                fence_holder=lease.owner,
                fence_namespace=leases.namespace,
                keep_lease=lambda: leases.keep(lease),
            )
        leases.settled(account)
        return outcome

    def _not_enforced(self, account: str, status: str, reason: str) -> dict[str, Any]:
        """Record and announce a step that enforced nothing (nothing known, nothing sent)."""
        result = _not_enforced(account, status, reason)
        with self._lock:
            self._results[account] = result
        now = self.clock.time()
        if status == "unverified":
            self._emit(EnforcementUnverified(account, now, reason))
        if status == "lease_lost" and self.leases is not None and self.leases.lost(account, reason):
            lockout = self.leases.lockouts().get(account, reason)
            self._emit(FencingLockout(account, now, f"FENCING LOCK-OUT: {lockout}"))
        return result

    def _announce(
        self,
        enforcer: PositionCapEnforcer,
        ok: bool,
        result: dict[str, Any],
        previous: dict[str, Any] | None,
    ) -> None:
        account, now = enforcer.account_id, self.clock.time()
        self._announce_doubts(enforcer, result, now)
        if result["status"] == "unverified":
            self._emit(EnforcementUnverified(account, now, result["reason"]))
            return
        if result["cycles"] > 0 or not ok:
            self._emit(
                CapViolationDetected(
                    account, now, result["initial_position_count"] or 0, enforcer.max_positions
                )
            )
        if result["orders"]:
            self._emit(
                PositionsLiquidated(
                    account, now, tuple(result["liquidated"]), tuple(result["orders"])
                )
            )
        if result["status"] == "failed_enforcement":
            self._emit(TradingHalted(account, now, result["reason"]))
        was_bad = previous is not None and previous.get("status") != "compliant"
        if ok and (was_bad or result["cycles"] > 0):
            self._emit(CapRestored(account, now, result["position_count"]))
        unvalued = set(result.get("unvalued_symbols") or ())
        with self._lock:
            before = self._unvalued.get(account, set())
        if unvalued - before:
            self._emit(SymbolsUnvaluable(account, now, tuple(sorted(unvalued - before))))
        if before - unvalued:
            self._emit(SymbolsRevalued(account, now, tuple(sorted(before - unvalued))))
        with self._lock:
            self._unvalued[account] = unvalued

    def _announce_doubts(
        self, enforcer: PositionCapEnforcer, result: dict[str, Any], now: float
    ) -> None:
        """Announce orders newly unresolved and a newly implausible position read, once each."""
        account, broker = enforcer.account_id, enforcer.broker
        unresolved = {o.client_order_id: o.symbol for o in broker.unresolved_orders()}
        journal_unresolved = result.get("unresolved") or ()
        for cid in journal_unresolved:
            unresolved.setdefault(cid, "")
        suspicion = broker.position_suspicion()
        missing = () if suspicion is None else suspicion.missing
        with self._lock:
            new = set(unresolved) - self._unresolved.get(account, set())
            self._unresolved[account] = set(unresolved)
            newly_suspect = bool(missing) and missing != self._suspect.get(account)
            self._suspect[account] = missing
        if new:
            self._emit(
                OrdersUnresolved(
                    account,
                    now,
                    tuple(sorted(new)),
                    tuple(sorted({unresolved[c] for c in new if unresolved[c]})),
                )
            )
        if newly_suspect:
            self._emit(PositionsImplausible(account, now, missing))

    def _emit(self, event: EnforcementEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception(
                    "event listener %r failed on %r; enforcement goes on", listener, event
                )


_RUN = 64
"""Accounts stepped under one look at other processes' changes at most (a run of a batch)."""


def _runs(enforcers: list[PositionCapEnforcer]) -> Iterator[list[PositionCapEnforcer]]:
    for start in range(0, len(enforcers), _RUN):
        yield enforcers[start : start + _RUN]


class _Steps:
    """The steps of one pass: made here, or handed to the pool (or, one at a time, deferred)."""

    def __init__(
        self,
        run: Callable[[PositionCapEnforcer], dict[str, Any] | None],
        pool: ThreadPoolExecutor,
        *,
        alone: bool,
    ) -> None:
        self._run, self._pool, self._alone = run, pool, alone
        self._stepped: dict[str, dict[str, Any] | None] = {}
        self._futures: dict[str, Future[dict[str, Any] | None]] = {}
        self._deferred: list[PositionCapEnforcer] = []

    def here(self, enforcer: PositionCapEnforcer) -> None:
        self._stepped[enforcer.account_id] = self._run(enforcer)

    def elsewhere(self, enforcers: Iterable[PositionCapEnforcer]) -> None:
        for enforcer in enforcers:
            if self._alone:
                self._deferred.append(enforcer)  # stepped here, after the ones in hand
            else:
                self._futures[enforcer.account_id] = self._pool.submit(self._run, enforcer)

    def results(self) -> dict[str, dict[str, Any] | None]:
        for enforcer in self._deferred:
            self.here(enforcer)
        for account, future in self._futures.items():
            self._stepped[account] = future.result()
        return self._stepped


def _not_enforced(account: str, status: str, reason: str) -> dict[str, Any]:
    """The result of a step that did not enforce: nothing known, nothing sent."""
    return {
        "account_id": account,
        "status": status,
        "trading_halted": None,
        "position_count": None,
        "cycles": 0,
        "orders": [],
        "liquidated": [],
        "reason": reason,
    }
