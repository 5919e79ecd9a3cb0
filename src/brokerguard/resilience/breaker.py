"""A circuit breaker per broker: stop calling a broker that is failing, probe it, come back.

The breaker is a state machine (:mod:`brokerguard.resilience.state`) driven by three facts:
a call is about to start (``_admit``), a call succeeded, a call failed. All decisions are taken
under one lock, but the lock is never held while the wrapped call runs, so calls through a
closed breaker run concurrently.

The closed success path is the hot path of every broker call, so it is written for speed: the
state it needs is precomputed into ``_admit_fast`` on a ``__slots__`` object, it takes no lock
and allocates nothing, and it counts successes with ``itertools.count`` (whose ``next`` is
atomic under the GIL). It does read the clock once, to keep ``last_success`` exact.

Results are tagged with the *generation* of the state they were admitted in. A call admitted
while closed that fails after the circuit already opened (or a probe overtaken by an operator's
``force_open``) is counted in the totals but cannot move the circuit again: only evidence
gathered in the current state decides the next one.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, ParamSpec, TypeVar

from brokerguard.clock import SYSTEM_CLOCK, Clock
from brokerguard.errors import CircuitOpenError, ConfigurationError, FatalBrokerError
from brokerguard.resilience.backoff import BackoffPolicy
from brokerguard.resilience.classify import Classifier, Outcome, default_classifier
from brokerguard.resilience.retry import RetryPolicy, acall_with_retries, call_with_retries
from brokerguard.resilience.state import (
    BrokerHealthState,
    CircuitState,
    Trigger,
    health_of,
    next_state,
)

__all__ = [
    "BreakerSnapshot",
    "BrokerCircuitBreaker",
    "StateListener",
    "is_breaking_enabled",
    "set_breaking_enabled",
]

log = logging.getLogger("brokerguard.breaker")

P = ParamSpec("P")
T = TypeVar("T")

StateListener = Callable[["BrokerCircuitBreaker", CircuitState, CircuitState], object]
"""Called as ``listener(breaker, old_state, new_state)`` after every state change."""

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_INF = math.inf

_breaking_enabled = True
_all_breakers: weakref.WeakSet[BrokerCircuitBreaker] = weakref.WeakSet()
_all_breakers_lock = threading.Lock()


def set_breaking_enabled(enabled: bool) -> None:
    """Turn circuit breaking on or off for every breaker in the process (emergency rollback).

    While disabled, no call is ever rejected and ``is_trading_allowed()`` is true: brokerguard's
    breakers behave as if they were not installed. Every outcome is still counted and the state
    machine still records what it would have done, so the status shows what was bypassed and
    the breakers resume from real data when breaking is enabled again.
    """
    global _breaking_enabled  # noqa: PLW0603 (a process-wide switch is the point)
    with _all_breakers_lock:
        changed = _breaking_enabled != bool(enabled)
        _breaking_enabled = bool(enabled)
        for breaker in list(_all_breakers):
            breaker._refresh_fast_path()  # noqa: SLF001 (module-level switch of this class)
    if not changed:
        return
    if not enabled:
        log.critical("circuit breaking DISABLED for every broker: calls pass straight through")
    else:
        log.warning("circuit breaking enabled again for every broker")


def is_breaking_enabled() -> bool:
    """Return whether circuit breaking is on (see :func:`set_breaking_enabled`)."""
    return _breaking_enabled


class _Ticket(NamedTuple):
    """What an admitted call must report back: the state generation, and whether it probes."""

    generation: int
    probe: bool


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """Everything a breaker knows at one instant; ``get_status()`` is a view of it."""

    broker: str
    scope: str
    circuit_state: CircuitState
    health_state: BrokerHealthState
    consecutive_failures: int
    total_calls: int
    total_successes: int
    total_failures: int
    total_ignored: int
    total_rejected: int
    last_success: datetime | None
    last_failure: datetime | None
    state_uptime_seconds: float
    next_probe_in_seconds: float | None
    recovery_timeout_seconds: float
    probes_in_flight: int
    forced_open: bool
    breaking_enabled: bool
    trading_allowed: bool
    last_transition_reason: str

    @property
    def failure_rate(self) -> float:
        """Failures over calls that reached the broker (0.0 before the first call)."""
        return self.total_failures / self.total_calls if self.total_calls else 0.0


class BrokerCircuitBreaker:
    """Guard the calls to one broker (and one scope, such as ``"read"`` or ``"write"``).

    Args:
        broker_name: the broker this breaker protects; shown in errors, logs and status.
        failure_threshold: consecutive counted failures that open the circuit.
        recovery_timeout: seconds the circuit stays open before the first probe.
        success_threshold: consecutive probe successes that close it again; also the most
            probes allowed in flight at once.
        max_retry_delay: cap of the default backoff, used when `backoff` is not given.
        max_attempts: attempts made by :meth:`call_with_circuit_breaker`.
        max_total_delay: retry budget in seconds; no backoff sleep starts that would end past it.
        backoff: the schedule between retries; default
            ``BackoffPolicy(max_delay=max_retry_delay)``.
        scope: which kind of calls this breaker guards; part of its identity in the registry.
        clock: the time source (default: the system clock).
        rng: the source of jitter (default: a fresh ``random.Random``).
        max_recovery_timeout: the recovery timeout doubles after each failed probe, up to this.
        classifier: maps an exception to an :class:`Outcome` (default :func:`default_classifier`).
    """

    __slots__ = (
        "__weakref__",
        "_admit_fast",
        "_classify",
        "_clock",
        "_consecutive_failures",
        "_failures",
        "_forced",
        "_generation",
        "_ignored",
        "_last_failure",
        "_last_reason",
        "_last_success",
        "_listeners",
        "_lock",
        "_mono",
        "_open_until",
        "_probe_successes",
        "_probes_in_flight",
        "_recovery_timeout_now",
        "_rejections",
        "_rng",
        "_state",
        "_state_since",
        "_successes",
        "broker_name",
        "failure_threshold",
        "max_recovery_timeout",
        "recovery_timeout",
        "retry_policy",
        "scope",
        "success_threshold",
    )

    def __init__(
        self,
        broker_name: str,
        failure_threshold: int = 5,
        recovery_timeout: float = 60.0,
        success_threshold: int = 2,
        max_retry_delay: float = 30.0,
        *,
        max_attempts: int = 3,
        max_total_delay: float = 60.0,
        backoff: BackoffPolicy | None = None,
        scope: str = "default",
        clock: Clock | None = None,
        rng: random.Random | None = None,
        max_recovery_timeout: float = 600.0,
        classifier: Classifier | None = None,
    ) -> None:
        _validate(
            broker_name=broker_name,
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            success_threshold=success_threshold,
            max_recovery_timeout=max_recovery_timeout,
            scope=scope,
        )
        self.broker_name = broker_name
        self.scope = scope
        self.failure_threshold = failure_threshold
        self.recovery_timeout = float(recovery_timeout)
        self.success_threshold = success_threshold
        self.max_recovery_timeout = float(max_recovery_timeout)
        self.retry_policy = RetryPolicy(
            max_attempts=max_attempts,
            max_total_delay=max_total_delay,
            backoff=backoff if backoff is not None else BackoffPolicy(max_delay=max_retry_delay),
        )
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._mono = self._clock.monotonic
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 (jitter only)
        self._classify: Classifier = classifier if classifier is not None else default_classifier
        self._lock = threading.Lock()
        self._listeners: list[StateListener] = []
        self._generation = 0
        self._init_state(self._mono())
        with _all_breakers_lock:
            _all_breakers.add(self)
            self._refresh_fast_path()

    def _init_state(self, now: float) -> None:
        self._state = _CLOSED
        self._state_since = now
        self._generation += 1
        self._consecutive_failures = 0
        self._recovery_timeout_now = self.recovery_timeout
        self._open_until = -_INF
        self._forced = False
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._successes = itertools.count()
        self._rejections = itertools.count()
        self._failures = 0
        self._ignored = 0
        self._last_success: float | None = None
        self._last_failure: float | None = None
        self._last_reason = "created"

    @property
    def backoff(self) -> BackoffPolicy:
        """The schedule between retries of :meth:`call_with_circuit_breaker`."""
        return self.retry_policy.backoff

    def classify(self, exc: BaseException) -> Outcome:
        """Return how this breaker counts `exc` (its classifier's verdict)."""
        return self._classify(exc)

    @property
    def clock(self) -> Clock:
        """The clock this breaker reads."""
        return self._clock

    # ------------------------------------------------------------------ call shells

    def call(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Make exactly one attempt of ``func(*args, **kwargs)`` under the breaker.

        Raises:
            CircuitOpenError: the circuit is open (or its probes are all in flight); `func`
                was not called.
            Exception: whatever `func` raised, after it was counted.
        """
        if self._admit_fast:
            generation = self._generation
            try:
                result = func(*args, **kwargs)
            except Exception as exc:
                self._record_failure(exc, generation, probe=False)
                raise
            # Inlined twin in call_with_circuit_breaker: a helper call would cost more than
            # the rest of this path.
            self._last_success = self._mono()
            next(self._successes)
            if self._consecutive_failures:
                self._record_success(generation, probe=False)
            return result
        if self._state is _OPEN:
            # Fast rejection without the lock; _admit re-checks under it when in doubt.
            remaining = self._open_until - self._mono()
            if remaining > 0:
                next(self._rejections)
                raise CircuitOpenError(
                    self.broker_name, remaining if remaining != _INF else None, self.scope
                )
        generation, probe = self._admit()
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            self._record_failure(exc, generation, probe=probe)
            raise
        except BaseException:
            self._abandon(generation, probe=probe)
            raise
        self._last_success = self._mono()
        next(self._successes)
        self._record_success(generation, probe=probe)
        return result

    async def acall(
        self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Make exactly one attempt of ``await func(*args, **kwargs)`` under the breaker.

        A cancelled probe gives its slot back without counting as a failure.
        """
        if self._admit_fast:
            generation, probe = self._generation, False
        else:
            generation, probe = self._admit()
        try:
            result = await func(*args, **kwargs)
        except Exception as exc:
            self._record_failure(exc, generation, probe=probe)
            raise
        except BaseException:
            self._abandon(generation, probe=probe)
            raise
        self._last_success = self._mono()
        next(self._successes)
        if probe or self._consecutive_failures:
            self._record_success(generation, probe=probe)
        return result

    def call_with_circuit_breaker(
        self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call ``func(*args, **kwargs)`` with retries, under the breaker.

        Up to ``max_attempts`` attempts; after the k-th failed *transient* attempt it sleeps
        ``backoff.delay(k)`` on the clock (longer if the broker sent ``retry_after``). It stops
        at once, raising the last error, when the error is not transient, when the circuit has
        opened, when attempts run out, or when the next sleep would end past
        ``max_total_delay``. Never use it for a write the broker may have executed: a write
        needs a lookup before any resend, which only the broker layer can do.
        """
        if self._admit_fast:
            generation = self._generation
            try:
                result = func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (the retry loop classifies it and re-raises)
                self._record_failure(exc, generation, probe=False)
                return self._retry(func, args, kwargs, exc)
            self._last_success = self._mono()
            next(self._successes)
            if self._consecutive_failures:
                self._record_success(generation, probe=False)
            return result
        return self._retry(func, args, kwargs, None)

    def _retry(
        self,
        func: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        first_error: Exception | None,
    ) -> T:
        # Kept out of call_with_circuit_breaker: a closure there would turn func, args and
        # kwargs into cell variables on every call, successful ones included (~90 ns).
        return call_with_retries(
            lambda: self.call(func, *args, **kwargs),
            self.retry_policy,
            classify=self._classify,
            clock=self._clock,
            rng=self._rng,
            stop=self._is_not_closed,
            first_error=first_error,
        )

    async def acall_with_circuit_breaker(
        self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Async twin of :meth:`call_with_circuit_breaker`; sleeps with ``clock.asleep``.

        Like the sync twin, the first attempt through a closed circuit is made inline: the
        retry loop's coroutine and the attempt's closure are built only after a failure
        (building them on every call made this path 3x :meth:`acall`).
        """
        if self._admit_fast:
            generation = self._generation
            try:
                result = await func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (the retry loop classifies it and re-raises)
                self._record_failure(exc, generation, probe=False)
                return await self._aretry(func, args, kwargs, exc)
            # A BaseException (cancellation) of a non-probe needs no bookkeeping: it propagates.
            self._last_success = self._mono()
            next(self._successes)
            if self._consecutive_failures:
                self._record_success(generation, probe=False)
            return result
        return await self._aretry(func, args, kwargs, None)

    async def _aretry(
        self,
        func: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        first_error: Exception | None,
    ) -> T:
        # Kept out of acall_with_circuit_breaker for the same reason as _retry.
        return await acall_with_retries(
            lambda: self.acall(func, *args, **kwargs),
            self.retry_policy,
            classify=self._classify,
            clock=self._clock,
            rng=self._rng,
            stop=self._is_not_closed,
            first_error=first_error,
        )

    # ------------------------------------------------------------------ the state machine

    def _admit(self) -> _Ticket:
        """Decide whether a call may start now; raise CircuitOpenError if not."""
        change = None
        with self._lock:
            now = self._mono()
            state = self._state
            if state is _CLOSED or not _breaking_enabled:
                return _Ticket(self._generation, probe=False)
            if state is _OPEN:
                if self._forced or now < self._open_until:
                    next(self._rejections)
                    remaining = None if self._forced else self._open_until - now
                    raise CircuitOpenError(self.broker_name, remaining, self.scope)
                change = self._transition(
                    Trigger.RECOVERY_TIMEOUT_ELAPSED,
                    now,
                    f"recovery timeout of {self._recovery_timeout_now:g}s elapsed",
                )
            if self._probes_in_flight >= self.success_threshold:
                next(self._rejections)
                raise CircuitOpenError(self.broker_name, 0.0, self.scope)
            self._probes_in_flight += 1
            ticket = _Ticket(self._generation, probe=True)
        if change is not None:
            self._notify(*change)
        return ticket

    def _record_success(self, generation: int, *, probe: bool) -> None:
        change = None
        with self._lock:
            if generation != self._generation:
                return  # admitted under an earlier state: it cannot move this one
            if probe:
                self._probes_in_flight -= 1
                self._probe_successes += 1
                if self._probe_successes >= self.success_threshold:
                    change = self._transition(
                        Trigger.PROBES_SUCCEEDED,
                        self._mono(),
                        f"{self._probe_successes} probe(s) succeeded",
                    )
            elif self._state is _CLOSED:
                self._consecutive_failures = 0
        if change is not None:
            self._notify(*change)

    def _record_failure(self, exc: Exception, generation: int, *, probe: bool) -> Outcome:
        outcome = self._classify(exc)  # user code: never under our lock
        change = None
        with self._lock:
            current = generation == self._generation
            if outcome is Outcome.IGNORED:
                # The broker answered: no failure, no success, the streak stays as it was.
                self._ignored += 1
                if probe and current:
                    self._probes_in_flight -= 1
                return outcome
            now = self._mono()
            self._failures += 1
            self._last_failure = now
            if not current:
                return outcome
            self._consecutive_failures += 1
            fatal = outcome is Outcome.FATAL or isinstance(exc, FatalBrokerError)
            what = f"{type(exc).__name__}: {exc}"
            if probe:
                self._probes_in_flight -= 1
                trigger = Trigger.FATAL_ERROR if fatal else Trigger.PROBE_FAILED
                change = self._transition(trigger, now, f"probe failed: {what}")
            elif self._state is _CLOSED:
                if fatal:
                    change = self._transition(Trigger.FATAL_ERROR, now, f"fatal error: {what}")
                elif self._consecutive_failures >= self.failure_threshold:
                    change = self._transition(
                        Trigger.FAILURE_THRESHOLD_REACHED,
                        now,
                        f"{self._consecutive_failures} consecutive failures, last {what}",
                    )
        if change is not None:
            self._notify(*change)
        return outcome

    def _abandon(self, generation: int, *, probe: bool) -> None:
        """Give back a probe slot whose call was cancelled: no evidence either way."""
        if probe:
            with self._lock:
                if generation == self._generation:
                    self._probes_in_flight -= 1

    def _transition(
        self, trigger: Trigger, now: float, reason: str
    ) -> tuple[CircuitState, CircuitState, str]:
        """Apply `trigger` (caller holds the lock) and return what to announce."""
        old = self._state
        new = next_state(old, trigger)
        if new is _OPEN:
            if old is _HALF_OPEN:
                # A broker that failed its probe gets longer to recover each time.
                self._recovery_timeout_now = min(
                    self._recovery_timeout_now * 2, self.max_recovery_timeout
                )
            self._forced = trigger is Trigger.FORCED_OPEN
            self._open_until = _INF if self._forced else now + self._recovery_timeout_now
        elif new is _CLOSED:
            self._consecutive_failures = 0
            self._recovery_timeout_now = self.recovery_timeout
            self._forced = False
            self._open_until = -_INF
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._generation += 1
        self._state = new
        self._state_since = now
        self._last_reason = f"{trigger.value}: {reason}"
        self._refresh_fast_path()
        return old, new, reason

    def _refresh_fast_path(self) -> None:
        self._admit_fast = self._state is _CLOSED or not _breaking_enabled

    def _notify(self, old: CircuitState, new: CircuitState, reason: str) -> None:
        if old is new:
            return
        _log_transition(self, new, reason)
        for listener in tuple(self._listeners):
            try:
                listener(self, old, new)
            except Exception:
                # A broken metrics or alert sink must not break the broker call that
                # triggered the transition; it is logged with its traceback instead.
                log.exception(
                    "state listener %r failed for broker %r (scope %r); the breaker goes on",
                    listener,
                    self.broker_name,
                    self.scope,
                )

    def _is_not_closed(self) -> bool:
        return self._state is not _CLOSED and _breaking_enabled

    # ------------------------------------------------------------------ operators

    def reset(self) -> None:
        """Return to a fresh CLOSED breaker: counters, streaks and timestamps cleared."""
        with self._lock:
            old = self._state
            self._init_state(self._mono())
            self._last_reason = "reset by operator"
            self._refresh_fast_path()
        self._notify(old, _CLOSED, "reset by operator")

    def force_open(self, reason: str) -> None:
        """Open the circuit until an operator closes it: no automatic probe is made."""
        if not reason or not reason.strip():
            raise ConfigurationError("force_open needs a reason, for the log and the status")
        with self._lock:
            change = self._transition(Trigger.FORCED_OPEN, self._mono(), f"operator: {reason}")
        self._notify(*change)

    def force_closed(self) -> None:
        """Close the circuit now, clearing the failure streak and the recovery backoff."""
        with self._lock:
            change = self._transition(Trigger.FORCED_CLOSED, self._mono(), "closed by operator")
        self._notify(*change)

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(breaker, old_state, new_state)`` after every state change.

        Listeners run outside the breaker's lock, on the thread that caused the change; an
        exception from a listener is logged and does not affect the breaker.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling `listener`; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ------------------------------------------------------------------ status

    @property
    def state(self) -> CircuitState:
        """The circuit state as last decided (an open circuit stays OPEN until a call probes)."""
        return self._state

    def get_broker_health_state(self) -> BrokerHealthState:
        """Return HEALTHY, DEGRADED or OFFLINE, derived from the circuit."""
        return health_of(self._state, self._consecutive_failures)

    def is_trading_allowed(self) -> bool:
        """Return whether new risk may be taken through this broker: only while CLOSED."""
        return self._state is _CLOSED or not _breaking_enabled

    def probe_due(self) -> bool:
        """Return whether the next call would be a probe (open, not forced, timeout elapsed)."""
        return (self._state is _OPEN and not self._forced and self._mono() >= self._open_until) or (
            self._state is _HALF_OPEN
        )

    def next_probe_in(self) -> float | None:
        """Return seconds until a probe is allowed: 0.0 if now, None if closed or forced open."""
        if self._state is _HALF_OPEN:
            return 0.0
        if self._state is not _OPEN or self._forced:
            return None
        return max(0.0, self._open_until - self._mono())

    def snapshot(self) -> BreakerSnapshot:
        """Return everything this breaker knows, consistently, at one instant."""
        with self._lock:
            now = self._mono()
            wall = self._clock.time()
            successes = _count_of(self._successes)
            state = self._state
            return BreakerSnapshot(
                broker=self.broker_name,
                scope=self.scope,
                circuit_state=state,
                health_state=health_of(state, self._consecutive_failures),
                consecutive_failures=self._consecutive_failures,
                total_calls=successes + self._failures + self._ignored,
                total_successes=successes,
                total_failures=self._failures,
                total_ignored=self._ignored,
                total_rejected=_count_of(self._rejections),
                last_success=_wall_time(self._last_success, now, wall),
                last_failure=_wall_time(self._last_failure, now, wall),
                state_uptime_seconds=max(0.0, now - self._state_since),
                next_probe_in_seconds=(
                    0.0
                    if state is _HALF_OPEN
                    else None
                    if state is not _OPEN or self._forced
                    else max(0.0, self._open_until - now)
                ),
                recovery_timeout_seconds=self._recovery_timeout_now,
                probes_in_flight=self._probes_in_flight,
                forced_open=self._forced,
                breaking_enabled=_breaking_enabled,
                trading_allowed=state is _CLOSED or not _breaking_enabled,
                last_transition_reason=self._last_reason,
            )

    def get_status(self) -> dict[str, Any]:
        """Return the status report of this breaker, JSON-ready.

        Keys: ``broker, health_state, circuit_state, failure_count, total_calls,
        total_failures, failure_rate, last_success, last_failure, state_uptime_seconds,
        trading_allowed, scope, next_probe_in_seconds``. States are their string values,
        timestamps ISO 8601 (UTC) or None, ``failure_count`` is the current streak of
        consecutive failures, and ``total_calls`` counts calls that reached the broker
        (rejections by an open circuit are in :meth:`snapshot`).
        """
        snap = self.snapshot()
        return {
            "broker": snap.broker,
            "health_state": snap.health_state.value,
            "circuit_state": snap.circuit_state.value,
            "failure_count": snap.consecutive_failures,
            "total_calls": snap.total_calls,
            "total_failures": snap.total_failures,
            "failure_rate": snap.failure_rate,
            "last_success": None if snap.last_success is None else snap.last_success.isoformat(),
            "last_failure": None if snap.last_failure is None else snap.last_failure.isoformat(),
            "state_uptime_seconds": snap.state_uptime_seconds,
            "trading_allowed": snap.trading_allowed,
            "scope": snap.scope,
            "next_probe_in_seconds": snap.next_probe_in_seconds,
        }

    def __repr__(self) -> str:
        return (
            f"BrokerCircuitBreaker({self.broker_name!r}, scope={self.scope!r}, "
            f"state={self._state.value})"
        )


def _count_of(counter: itertools.count[int]) -> int:
    # itertools.count has no peek; its repr is "count(N)" where N is the next value, which is
    # exactly how many times next() was called on a counter started at 0.
    return int(repr(counter)[6:-1])


def _wall_time(stamp: float | None, now_monotonic: float, now_wall: float) -> datetime | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(now_wall - (now_monotonic - stamp), tz=UTC)


def _log_transition(breaker: BrokerCircuitBreaker, new: CircuitState, reason: str) -> None:
    name, scope = breaker.broker_name, breaker.scope
    if new is _OPEN:
        wait = breaker.next_probe_in()
        then = "until an operator closes it" if wait is None else f"for {wait:g}s, then probed"
        log.warning(
            "circuit OPENED for broker %r (scope %r): %s; calls are rejected %s",
            name,
            scope,
            reason,
            then,
        )
    elif new is _HALF_OPEN:
        log.info(
            "circuit HALF-OPEN for broker %r (scope %r): %s; letting up to %d probe(s) through",
            name,
            scope,
            reason,
            breaker.success_threshold,
        )
    else:
        log.info(
            "circuit CLOSED for broker %r (scope %r): %s; calls flow again", name, scope, reason
        )


def _validate(
    *,
    broker_name: str,
    failure_threshold: int,
    recovery_timeout: float,
    success_threshold: int,
    max_recovery_timeout: float,
    scope: str,
) -> None:
    problems = []
    if _is_blank(broker_name):
        problems.append(f"broker_name must be a non-empty string, got {broker_name!r}")
    if _is_blank(scope):
        problems.append(f"scope must be a non-empty string, got {scope!r}")
    if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int):
        problems.append(f"failure_threshold must be an int, got {failure_threshold!r}")
    elif failure_threshold < 1:
        problems.append(f"failure_threshold must be >= 1, got {failure_threshold!r}")
    if isinstance(success_threshold, bool) or not isinstance(success_threshold, int):
        problems.append(f"success_threshold must be an int, got {success_threshold!r}")
    elif success_threshold < 1:
        problems.append(f"success_threshold must be >= 1, got {success_threshold!r}")
    if not (math.isfinite(recovery_timeout) and recovery_timeout > 0):
        problems.append(f"recovery_timeout must be a finite number > 0, got {recovery_timeout!r}")
    elif not (math.isfinite(max_recovery_timeout) and max_recovery_timeout >= recovery_timeout):
        problems.append(
            f"max_recovery_timeout must be finite and >= recovery_timeout, got "
            f"{max_recovery_timeout!r}"
        )
    if problems:
        raise ConfigurationError("invalid circuit breaker settings: " + "; ".join(problems))


def _is_blank(value: object) -> bool:
    # Typed `object`: configs and untyped callers can pass anything here.
    return not isinstance(value, str) or not value.strip()
