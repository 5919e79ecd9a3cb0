"""The circuit's states, what moves it between them, and the health they imply.

The breaker is a state machine written down as a table, :data:`TRANSITIONS`: every legal
``(state, trigger)`` pair and where it leads. :func:`next_state` is the only way the breaker
changes state, so a trigger the table does not list is a bug that raises instead of silently
doing something.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from brokerguard.errors import BrokerGuardError

__all__ = [
    "TRANSITIONS",
    "BrokerHealthState",
    "CircuitState",
    "IllegalTransitionError",
    "Trigger",
    "health_of",
    "next_state",
]


class CircuitState(StrEnum):
    """Where a circuit breaker is."""

    CLOSED = "closed"
    """Calls flow; failures are counted."""
    OPEN = "open"
    """Calls are rejected without reaching the broker until the probe time."""
    HALF_OPEN = "half_open"
    """A few probe calls are let through to learn whether the broker is back."""


class BrokerHealthState(StrEnum):
    """How healthy a broker looks from its breaker."""

    HEALTHY = "healthy"
    """Circuit closed and the last call succeeded."""
    DEGRADED = "degraded"
    """Circuit closed with recent failures, or half-open and probing."""
    OFFLINE = "offline"
    """Circuit open: nothing is sent."""


class Trigger(StrEnum):
    """What can move a circuit; each is named for the fact that happened."""

    FAILURE_THRESHOLD_REACHED = "failure_threshold_reached"
    FATAL_ERROR = "fatal_error"
    RECOVERY_TIMEOUT_ELAPSED = "recovery_timeout_elapsed"
    PROBE_FAILED = "probe_failed"
    PROBES_SUCCEEDED = "probes_succeeded"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"
    RESET = "reset"


class IllegalTransitionError(BrokerGuardError):
    """A trigger arrived in a state where the table says it cannot happen (a bug)."""


_C, _O, _H = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

TRANSITIONS: Mapping[tuple[CircuitState, Trigger], CircuitState] = MappingProxyType(
    {
        (_C, Trigger.FAILURE_THRESHOLD_REACHED): _O,
        (_C, Trigger.FATAL_ERROR): _O,
        (_O, Trigger.RECOVERY_TIMEOUT_ELAPSED): _H,
        (_H, Trigger.PROBE_FAILED): _O,
        (_H, Trigger.FATAL_ERROR): _O,
        (_H, Trigger.PROBES_SUCCEEDED): _C,
        # Operators may move any state anywhere.
        **{(state, Trigger.FORCED_OPEN): _O for state in CircuitState},
        **{(state, Trigger.FORCED_CLOSED): _C for state in CircuitState},
        **{(state, Trigger.RESET): _C for state in CircuitState},
    }
)
"""Every legal transition: ``{(state, trigger): next_state}``."""


def next_state(state: CircuitState, trigger: Trigger) -> CircuitState:
    """Return where `trigger` moves a circuit in `state`; raise if the table forbids it."""
    try:
        return TRANSITIONS[state, trigger]
    except KeyError:
        raise IllegalTransitionError(
            f"trigger {trigger.value!r} cannot happen in state {state.value!r}"
        ) from None


def health_of(state: CircuitState, consecutive_failures: int) -> BrokerHealthState:
    """Derive a broker's health from its circuit: it is never stored, so it cannot drift."""
    if state is CircuitState.OPEN:
        return BrokerHealthState.OFFLINE
    if state is CircuitState.HALF_OPEN or consecutive_failures > 0:
        return BrokerHealthState.DEGRADED
    return BrokerHealthState.HEALTHY
