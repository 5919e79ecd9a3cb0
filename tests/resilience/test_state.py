"""The transition table is the state machine: every row is walked, anything else raises."""

import pytest

from brokerguard.resilience.state import (
    TRANSITIONS,
    BrokerHealthState,
    CircuitState,
    IllegalTransitionError,
    Trigger,
    health_of,
    next_state,
)

C, O, H = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

AUTOMATIC = {
    (C, Trigger.FAILURE_THRESHOLD_REACHED): O,
    (C, Trigger.FATAL_ERROR): O,
    (O, Trigger.RECOVERY_TIMEOUT_ELAPSED): H,
    (H, Trigger.PROBE_FAILED): O,
    (H, Trigger.FATAL_ERROR): O,
    (H, Trigger.PROBES_SUCCEEDED): C,
}
OPERATOR = {
    **{(s, Trigger.FORCED_OPEN): O for s in CircuitState},
    **{(s, Trigger.FORCED_CLOSED): C for s in CircuitState},
    **{(s, Trigger.RESET): C for s in CircuitState},
}


@pytest.mark.parametrize(("key", "target"), sorted({**AUTOMATIC, **OPERATOR}.items()))
def test_every_row_of_the_table(key, target):
    """Each legal (state, trigger) leads where the design says."""
    assert next_state(*key) is target


def test_the_table_has_no_row_beyond_the_design():
    """Nothing sneaks into the table without a test naming it."""
    assert dict(TRANSITIONS) == {**AUTOMATIC, **OPERATOR}


@pytest.mark.parametrize(
    "key",
    [(s, t) for s in CircuitState for t in Trigger if (s, t) not in {**AUTOMATIC, **OPERATOR}],
)
def test_every_other_pair_is_illegal(key):
    """A trigger that cannot happen in a state is a bug and raises."""
    with pytest.raises(IllegalTransitionError):
        next_state(*key)


@pytest.mark.parametrize(
    ("state", "failures", "health"),
    [
        (C, 0, BrokerHealthState.HEALTHY),
        (C, 1, BrokerHealthState.DEGRADED),
        (C, 4, BrokerHealthState.DEGRADED),
        (H, 0, BrokerHealthState.DEGRADED),
        (O, 0, BrokerHealthState.OFFLINE),
        (O, 5, BrokerHealthState.OFFLINE),
    ],
)
def test_health_is_derived_from_the_circuit(state, failures, health):
    """HEALTHY closed and clean; DEGRADED closed with failures or half-open; OFFLINE open."""
    assert health_of(state, failures) is health
