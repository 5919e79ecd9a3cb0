"""A circuit breaker whose state is the fleet's: one circuit per (broker, scope) in Redis.

:class:`SharedCircuitBreaker` is a :class:`BrokerCircuitBreaker` (same constructor, same
status, same retry shell, same listeners) whose decisions are taken by Redis scripts instead of
in-process. Every call asks Redis once before it starts (one round trip, atomic): a circuit
opened by any process rejects this process's next call, and half-open admits at most
``success_threshold`` probes across the fleet. The local state is a mirror of the last answer,
kept for the status report and the listeners, which fire in every process that *sees* a change.

Redis unreachable: every call raises :class:`CoordinationUnavailableError` (a
:class:`BlockedError`: nothing reached the broker; :class:`NotAdmittedError`, which says so to
the order lifecycle, so an order refused this way is never taken for one that may have been
placed) and ``is_trading_allowed()`` is False. The fleet cannot agree on the circuit, so no
process acts alone. Redis failing *after* a call ran does not hide the call's outcome: its
result is returned, or its own exception raised, and the lost bookkeeping is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, ParamSpec, TypeVar

from brokerguard.coordination.redis_coordinator import RedisCoordinator, SharedBreakerState
from brokerguard.errors import CircuitOpenError, CoordinationUnavailableError, FatalBrokerError
from brokerguard.resilience.breaker import BrokerCircuitBreaker, is_breaking_enabled
from brokerguard.resilience.classify import Outcome
from brokerguard.resilience.state import BrokerHealthState, CircuitState

__all__ = ["NotAdmittedError", "SharedCircuitBreaker"]

log = logging.getLogger("brokerguard.coordination")

P = ParamSpec("P")
T = TypeVar("T")


class NotAdmittedError(CoordinationUnavailableError):
    """Redis could not say whether the fleet's circuit admits the call: it was not made."""

    not_processed = True
    """Nothing reached the broker: an order refused this way was certainly not placed."""


_STATES = {
    "closed": CircuitState.CLOSED,
    "open": CircuitState.OPEN,
    "forced": CircuitState.OPEN,
    "half_open": CircuitState.HALF_OPEN,
}


class SharedCircuitBreaker(BrokerCircuitBreaker):
    """A breaker shared through Redis by every process guarding (broker_name, scope).

    Args:
        coordinator: the fleet's :class:`RedisCoordinator`.
        Other arguments: as for :class:`BrokerCircuitBreaker`; every process of the fleet must
        use the same thresholds for one (broker, scope).
    """

    def __init__(
        self, broker_name: str, *args: Any, coordinator: RedisCoordinator, **kwargs: Any
    ) -> None:
        self._coordinator = coordinator
        super().__init__(broker_name, *args, **kwargs)
        self._key = coordinator.key("breaker", broker_name, self.scope)
        self._ms = (
            str(round(self.recovery_timeout * 1000)),
            str(round(self.max_recovery_timeout * 1000)),
        )

    @property
    def coordinator(self) -> RedisCoordinator:
        """Where this breaker's state lives."""
        return self._coordinator

    # ------------------------------------------------------------------ the call shells

    def call(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """One attempt under the fleet's circuit (see :meth:`BrokerCircuitBreaker.call`)."""
        if not is_breaking_enabled():
            return super().call(func, *args, **kwargs)
        ticket = self._admit_shared()
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            self._after_call(partial(self._failure_shared, exc, ticket))
            raise
        except BaseException:
            self._after_call(partial(self._abandon_shared, ticket))
            raise
        self._after_call(partial(self._success_shared, ticket))
        return result

    async def acall(
        self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Async twin of :meth:`call` (the Redis round trips are short and blocking)."""
        if not is_breaking_enabled():
            return await super().acall(func, *args, **kwargs)
        ticket = self._admit_shared()
        try:
            result = await func(*args, **kwargs)
        except Exception as exc:
            self._after_call(partial(self._failure_shared, exc, ticket))
            raise
        except BaseException:
            self._after_call(partial(self._abandon_shared, ticket))
            raise
        self._after_call(partial(self._success_shared, ticket))
        return result

    @property
    def state_key(self) -> str:
        """The Redis hash holding the fleet's circuit (for scripts that read it in their trip)."""
        return self._key

    def adopt(self, answer: SharedBreakerState) -> None:
        """Mirror the circuit as another script read it (SharedSlots checks it with the slot)."""
        self._adopt(answer)

    # ------------------------------------------------------------------ status and operators

    def is_trading_allowed(self) -> bool:
        """Ask the fleet's circuit; False when it is not closed or Redis cannot be asked."""
        if not is_breaking_enabled():
            return True
        try:
            self._adopt(
                self._coordinator.breaker(
                    "read", self._key, str(self.success_threshold), self._ms[0]
                )
            )
        except CoordinationUnavailableError:
            return False
        return self._state is CircuitState.CLOSED

    def get_broker_health_state(self) -> BrokerHealthState:
        """The fleet's health for this broker; OFFLINE when Redis cannot be asked."""
        if not self.is_trading_allowed() and not self._coordinator.reachable:
            return BrokerHealthState.OFFLINE
        return super().get_broker_health_state()

    def reset(self) -> None:
        """Close the fleet's circuit and clear its streak (and this process's counters)."""
        super().reset()
        self._adopt(self._coordinator.breaker("force", self._key, "closed", self._ms[0]))

    def force_open(self, reason: str) -> None:
        """Open the circuit for the whole fleet until an operator closes it."""
        super().force_open(reason)
        self._adopt(self._coordinator.breaker("force", self._key, "open", self._ms[0]))

    def force_closed(self) -> None:
        """Close the circuit for the whole fleet."""
        super().force_closed()
        self._adopt(self._coordinator.breaker("force", self._key, "closed", self._ms[0]))

    # ------------------------------------------------------------------ internals

    def _refresh_fast_path(self) -> None:
        # Never the lock-free local path: every call must see the fleet's circuit.
        self._admit_fast = False

    def _after_call(self, record: Callable[[], object]) -> None:
        """Tell the fleet how a call went; if Redis is gone now, the call's outcome stands."""
        try:
            record()
        except CoordinationUnavailableError as exc:
            log.warning(
                "%s/%s: the call's outcome was not recorded in the fleet's circuit: %s",
                self.broker_name,
                self.scope,
                exc,
            )

    def _admit_shared(self) -> SharedBreakerState:
        try:
            answer = self._coordinator.breaker(
                "admit", self._key, str(self.success_threshold), self._ms[0]
            )
        except CoordinationUnavailableError as exc:
            raise NotAdmittedError(str(exc)) from exc
        self._adopt(answer)
        if not answer.allowed:
            next(self._rejections)
            raise CircuitOpenError(self.broker_name, answer.remaining, self.scope)
        return answer

    def _success_shared(self, ticket: SharedBreakerState) -> None:
        self._last_success = self._mono()
        next(self._successes)
        if ticket.probe or ticket.failures:
            self._adopt(
                self._coordinator.breaker(
                    "success",
                    self._key,
                    str(ticket.generation),
                    "1" if ticket.probe else "0",
                    str(self.success_threshold),
                    self._ms[0],
                )
            )

    def _failure_shared(self, exc: Exception, ticket: SharedBreakerState) -> None:
        outcome = self._classify(exc)
        with self._lock:
            if outcome is Outcome.IGNORED:
                self._ignored += 1
            else:
                self._failures += 1
                self._last_failure = self._mono()
        if outcome is Outcome.IGNORED:
            if ticket.probe:
                self._abandon_shared(ticket)
            return
        fatal = outcome is Outcome.FATAL or isinstance(exc, FatalBrokerError)
        self._adopt(
            self._coordinator.breaker(
                "failure",
                self._key,
                str(ticket.generation),
                "1" if ticket.probe else "0",
                "1" if fatal else "0",
                str(self.failure_threshold),
                self._ms[0],
                self._ms[1],
            ),
            reason=f"{type(exc).__name__}: {exc}",
        )

    def _abandon_shared(self, ticket: SharedBreakerState) -> None:
        self._coordinator.breaker(
            "abandon", self._key, str(ticket.generation), "1" if ticket.probe else "0"
        )

    def _adopt(self, answer: SharedBreakerState, *, reason: str = "") -> None:
        """Mirror the fleet's circuit locally; announce a change this process sees."""
        new = _STATES[answer.state]
        with self._lock:
            now = self._mono()
            old = self._state
            self._consecutive_failures = answer.failures
            self._recovery_timeout_now = answer.recovery_timeout
            self._forced = answer.state == "forced"
            if new is CircuitState.OPEN:
                remaining = answer.remaining
                self._open_until = math.inf if remaining is None else now + remaining
            elif new is CircuitState.CLOSED:
                self._open_until = -math.inf
            change = None
            if new is not old:
                self._state = new
                self._state_since = now
                self._generation += 1
                why = reason or f"the fleet's circuit is {answer.state}"
                self._last_reason = f"shared: {why}"
                change = (old, new, why)
        if change is not None:
            self._notify(*change)
