"""The order lifecycle: every transition, and no duplicate in any world a venue can make."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerguard.models import Order, OrderStatus
from brokerguard.orders import (
    FINAL_STATES,
    LIVE_STATES,
    TRANSITIONS,
    Evidence,
    IllegalTransitionError,
    OrderState,
    evidence_from_lookup,
    journal_state,
    may_send,
    next_state,
    weigh_lookup,
)

S, E = OrderState, Evidence


@pytest.mark.parametrize(("pair", "target"), sorted(TRANSITIONS.items()))
def test_every_row_of_the_table_is_a_legal_transition(pair, target):
    """Each (state, evidence) row leads where the table says, and nowhere out of a final state."""
    state, evidence = pair
    assert next_state(state, evidence) is target
    if state in FINAL_STATES:
        assert target is state


def test_evidence_the_table_does_not_name_is_refused():
    """An illegal trigger raises: a bug must not silently move an order."""
    with pytest.raises(IllegalTransitionError):
        next_state(S.FILLED, E.ABSENT_AFTER_DEADLINE)
    with pytest.raises(IllegalTransitionError):
        next_state(S.UNRESOLVED, E.SENT)


@pytest.mark.parametrize("state", sorted(OrderState))
def test_only_an_intent_or_a_proven_absence_may_be_sent(state):
    """may_send holds for INTENT and NOT_PLACED only; live states are never sent again."""
    assert may_send(state) is (state in {S.INTENT, S.NOT_PLACED})
    if state in LIVE_STATES - {S.INTENT}:
        assert not may_send(state)


def test_absence_before_the_deadline_proves_nothing():
    """UNRESOLVED leaves for NOT_PLACED only on a lookup that started after the deadline."""
    assert evidence_from_lookup(None, looked_at=99.9, absent_after=100.0) is (
        E.ABSENT_BEFORE_DEADLINE
    )
    assert evidence_from_lookup(None, looked_at=100.0, absent_after=100.0) is (
        E.ABSENT_AFTER_DEADLINE
    )
    assert evidence_from_lookup(None, looked_at=1e12, absent_after=None) is (
        E.ABSENT_BEFORE_DEADLINE
    )
    assert next_state(S.UNRESOLVED, E.ABSENT_BEFORE_DEADLINE) is S.UNRESOLVED
    assert next_state(S.UNRESOLVED, E.ABSENT_AFTER_DEADLINE) is S.UNRESOLVED  # not confirmed
    assert next_state(S.UNRESOLVED, E.ABSENCE_CONFIRMED) is S.NOT_PLACED


def test_a_duplicate_id_answer_is_resolved_only_by_finding_the_order():
    """EXISTS stays EXISTS through any absence; finding the order adopts its state."""
    state = next_state(S.SENT, E.DUPLICATE_ID)
    for evidence in (E.ABSENT_BEFORE_DEADLINE, E.ABSENT_AFTER_DEADLINE, E.AMBIGUOUS):
        state = next_state(state, evidence)
        assert state is S.EXISTS
    assert next_state(state, E.FOUND_OPEN) is S.OPEN


@pytest.mark.parametrize(
    ("status", "state"),
    [("unconfirmed", S.UNRESOLVED), ("failed", S.UNRESOLVED), ("not_sent", S.NOT_PLACED)]
    + [(s.value, s) for s in OrderState],
)
def test_journal_statuses_of_every_version_have_a_state(status, state):
    """Statuses written before the lifecycle had names map to the fail-closed state."""
    assert journal_state(status) is state


# --------------------------------------------------------------------------- a venue's worlds


@dataclass
class Venue:
    """A venue that may accept a request later, but never after the request's deadline."""

    accepted_at: list[float] = field(default_factory=list)

    def has_at(self, now: float) -> bool:
        return any(at <= now for at in self.accepted_at)


attempt = st.fixed_dictionaries(
    {
        # What became of the request at the venue ...
        "fate": st.sampled_from(["accepted", "late", "never", "rejected", "not_processed"]),
        "delay": st.floats(min_value=0.0, max_value=60.0),
        # ... what the client heard ...
        "answer_lost": st.booleans(),
        # ... and how long it waits between lookups.
        "waits": st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=1, max_size=6),
        "lookup_fails": st.lists(st.booleans(), min_size=6, max_size=6),
    }
)


def _weigh(found, now, horizon, absences, believe_absence_at_once):
    """One lookup's evidence; the old rule (believe_absence_at_once) took one answer as proof."""
    verdict = weigh_lookup(found, looked_at=now, absent_after=horizon, absences=absences)
    if believe_absence_at_once and verdict.evidence is E.ABSENT_AFTER_DEADLINE:
        return E.ABSENCE_CONFIRMED, verdict.absences
    return verdict.evidence, verdict.absences


def run_world(
    attempts: list[dict], deadline_s: float, margin_s: float, *, believe_absence_at_once: bool
) -> tuple[Venue, OrderState]:
    """Play the attempts against a venue; return it and the client's final state."""
    venue = Venue()
    now = 1000.0
    state = S.INTENT
    for step in attempts:
        if not may_send(state):
            break
        state = next_state(state, E.SENT)
        absences = weigh_lookup(None, looked_at=0.0, absent_after=None).absences  # none yet
        deadline = now + deadline_s
        fate = step["fate"]
        if fate == "accepted" or (fate == "late" and now + step["delay"] <= deadline):
            venue.accepted_at.append(now if fate == "accepted" else now + step["delay"])
        if fate == "rejected":
            state = next_state(state, E.REJECTED)
            break
        if fate == "not_processed":
            state = next_state(state, E.NOT_SENT)
            continue
        if fate == "accepted" and not step["answer_lost"]:
            state = next_state(state, E.FOUND_FILLED)
            break
        state = next_state(state, E.AMBIGUOUS)
        for wait, fails in zip(step["waits"], step["lookup_fails"], strict=False):
            now += wait
            if fails:
                state = next_state(state, E.AMBIGUOUS)
                continue
            found = (
                Order("cid", "BTC/USD", "buy", 1, 1, OrderStatus.FILLED)
                if venue.has_at(now)
                else None
            )
            horizon = now if believe_absence_at_once else deadline + margin_s
            evidence, absences = _weigh(found, now, horizon, absences, believe_absence_at_once)
            state = next_state(state, evidence)
            if state is not S.UNRESOLVED:
                break
        now += 1.0
    return venue, state


@settings(max_examples=400, deadline=None)
@given(
    attempts=st.lists(attempt, min_size=1, max_size=6),
    deadline_s=st.floats(min_value=2.0, max_value=60.0),
    margin_s=st.floats(min_value=0.0, max_value=10.0),
)
def test_a_client_that_follows_the_lifecycle_never_executes_an_order_twice(
    attempts, deadline_s, margin_s
):
    """Whatever the venue does within its deadline, following the table executes at most once.

    Each attempt's request may be accepted at once, late (a delay, never past its deadline),
    never, rejected or refused unprocessed; its answer may be lost; lookups may fail. The
    client sends only when may_send() says so, and looks up between waits.
    """
    venue, state = run_world(attempts, deadline_s, margin_s, believe_absence_at_once=False)
    assert len(venue.accepted_at) <= 1, (venue.accepted_at, state)
    if state is S.NOT_PLACED:
        assert venue.accepted_at == []
    if state is S.FILLED:
        assert len(venue.accepted_at) == 1


def test_the_control_believing_absence_at_once_executes_twice():
    """The old rule in the same world: a lookup right after a timeout 'proves' absence; twice."""
    late = {
        "fate": "late",
        "delay": 1.5,
        "answer_lost": True,
        "waits": [0.1],
        "lookup_fails": [False] * 6,
    }
    again = {**late, "fate": "accepted", "answer_lost": False}
    venue, _ = run_world([late, again], 10.0, 5.0, believe_absence_at_once=True)
    assert len(venue.accepted_at) == 2
    venue, state = run_world([late, again], 10.0, 5.0, believe_absence_at_once=False)
    assert len(venue.accepted_at) == 1
    assert state is S.UNRESOLVED
