"""Absence is not evidence until it is confirmed: two agreeing lookups after the deadline.

A venue's listing can omit a just-filled order from one answer (Kraken's ClosedOrders): one
lookup after the deadline that finds nothing must never get the order resent. NOT_PLACED
needs ABSENT_LOOKUPS_REQUIRED answers that found nothing, one lookup starting at least
ABSENT_LOOKUP_SPAN_S after another's answer, all after the deadline, none found in between.
One call after the deadline decides: it waits (on the injected clock, at most the span) and
makes the confirming lookup itself, so no resolve loop spins on a clock that does not move; at
most two lookups and one wait per call, never a loop.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerguard import BrokerCircuitBreaker, OrderUnconfirmedError, clear_registry
from brokerguard.models import Order, OrderStatus
from brokerguard.orders import (
    ABSENT_LOOKUP_SPAN_S,
    ABSENT_LOOKUPS_REQUIRED,
    NO_ABSENCES,
    Absences,
    Evidence,
    OrderState,
    next_state,
    weigh_lookup,
)
from brokerguard.testing import FakeClock

from .helpers import FakeAdapter

FILLED = Order("c1", "BTC/USD", "buy", Decimal(1), Decimal(1), OrderStatus.FILLED)


class ScriptedLookups(FakeAdapter):
    """A venue whose lookups answer from a script: "found", "absent" or "error" (garbled).

    Every answer is recorded with the (fake) time it was given, so a test can judge what the
    broker concluded against what it was actually told. With the script empty it answers the
    truth (the order if it was submitted).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.script: list[str] = []
        self.answers: list[tuple[float, str]] = []

    def fetch_order(self, client_order_id: str) -> Order | None:
        self._maybe_fail("fetch_order")
        answer = self.script.pop(0) if self.script else "truth"
        self.answers.append((self.clock.time(), answer))
        if answer == "found":
            return replace(FILLED, client_order_id=client_order_id)
        if answer == "error":
            return "garbled"  # type: ignore[return-value]  # InvalidBrokerData: no retry
        if answer == "absent":
            return None
        return self.orders.get(client_order_id)


def unresolved_broker(clock: FakeClock) -> tuple[ScriptedLookups, float]:
    """A broker holding order c1 unresolved (its send timed out, it never reached the venue).

    Returns the broker and the time after which a lookup that finds nothing counts.
    """
    read = BrokerCircuitBreaker("scripted", scope="read", clock=clock, failure_threshold=10_000)
    broker = ScriptedLookups("scripted", clock=clock, read_breaker=read)
    broker.faults["submit_order"] = [ConnectionError("reset")]
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert info.value.deadline is not None
    broker.answers.clear()
    return broker, info.value.deadline


# --------------------------------------------------------------------------- the pure core


def test_the_rule_is_two_lookups_two_seconds_apart():
    """The documented rule: 2 agreeing absent answers, 2 s apart."""
    assert ABSENT_LOOKUPS_REQUIRED == 2
    assert ABSENT_LOOKUP_SPAN_S == 2.0


def test_one_absent_lookup_after_the_deadline_leaves_the_order_unresolved():
    """A single answer that omits the order proves nothing yet."""
    verdict = weigh_lookup(None, looked_at=200.0, absent_after=100.0)
    assert verdict.evidence is Evidence.ABSENT_AFTER_DEADLINE
    assert next_state(OrderState.UNRESOLVED, verdict.evidence) is OrderState.UNRESOLVED
    assert next_state(OrderState.INTENT, verdict.evidence) is OrderState.UNRESOLVED


def test_two_absent_lookups_the_span_apart_prove_it_not_placed():
    """The second agreeing answer, ABSENT_LOOKUP_SPAN_S after the first, confirms absence."""
    first = weigh_lookup(None, looked_at=100.0, absent_after=100.0)
    second = weigh_lookup(
        None, looked_at=100.0 + ABSENT_LOOKUP_SPAN_S, absent_after=100.0, absences=first.absences
    )
    assert second.evidence is Evidence.ABSENCE_CONFIRMED
    assert next_state(OrderState.UNRESOLVED, second.evidence) is OrderState.NOT_PLACED
    assert next_state(OrderState.EXISTS, second.evidence) is OrderState.EXISTS


def test_two_absent_lookups_closer_than_the_span_prove_nothing():
    """Two answers 1.9 s apart may share one stale view: still unresolved."""
    first = weigh_lookup(None, looked_at=100.0, absent_after=100.0)
    second = weigh_lookup(None, looked_at=101.9, absent_after=100.0, absences=first.absences)
    assert second.evidence is Evidence.ABSENT_AFTER_DEADLINE


def test_the_span_runs_from_an_answers_arrival_not_its_request():
    """A slow first lookup (answered 1 s after it started) needs a second 2 s after its answer."""
    first = weigh_lookup(None, looked_at=100.0, absent_after=100.0, answered_at=101.0)
    early = weigh_lookup(None, looked_at=102.5, absent_after=100.0, absences=first.absences)
    assert early.evidence is Evidence.ABSENT_AFTER_DEADLINE
    assert first.absences.confirmable_after(100.0) == 103.0


def test_a_found_answer_clears_earlier_absences():
    """Found once, an order's earlier omissions count for nothing."""
    first = weigh_lookup(None, looked_at=100.0, absent_after=100.0)
    found = weigh_lookup(FILLED, looked_at=101.0, absent_after=100.0, absences=first.absences)
    assert found.evidence is Evidence.FOUND_FILLED
    assert found.absences == NO_ABSENCES


def test_absences_before_the_deadline_do_not_count():
    """Nothing found before absent_after (or with none) changes nothing."""
    before = weigh_lookup(None, looked_at=99.0, absent_after=100.0)
    assert before.evidence is Evidence.ABSENT_BEFORE_DEADLINE
    assert before.absences == NO_ABSENCES
    unknown = weigh_lookup(None, looked_at=1e12, absent_after=None)
    assert unknown.evidence is Evidence.ABSENT_BEFORE_DEADLINE


def test_confirmable_after_names_when_the_next_lookup_can_decide():
    """Before any absence: the horizon; after one: its answer plus the span."""
    assert NO_ABSENCES.confirmable_after(100.0) == 100.0
    assert NO_ABSENCES.confirmable_after(None) is None
    assert Absences(1, 150.0, 150.0).confirmable_after(100.0) == 150.0 + ABSENT_LOOKUP_SPAN_S


ANSWERS = st.lists(
    st.one_of(
        st.tuples(st.just("lookup"), st.sampled_from(["found", "absent", "error"])),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 1.9, 2.0, 3.0, 30.0])),
    ),
    max_size=25,
)


def _oracle(absents: list[float]) -> bool:
    """Two absent answers (since the last found, after the deadline) 2 s or more apart."""
    return len(absents) >= ABSENT_LOOKUPS_REQUIRED and max(absents) - min(absents) >= 2.0


@settings(max_examples=400, deadline=None, derandomize=True)
@given(steps=ANSWERS, start=st.sampled_from([90.0, 99.5, 100.0, 105.0]))
def test_the_pure_rule_concludes_exactly_on_two_agreeing_answers_two_seconds_apart(steps, start):
    """Over any answers and clock moves: NOT_PLACED iff the confirmed-absence condition holds."""
    absent_after, now = 100.0, start
    state, absences = OrderState.UNRESOLVED, NO_ABSENCES
    since_found: list[float] = []
    for kind, value in steps:
        if kind == "advance":
            now += float(value)
            continue
        if value == "error":  # a failed lookup has no answer to weigh
            evidence = Evidence.AMBIGUOUS
        else:
            verdict = weigh_lookup(
                FILLED if value == "found" else None,
                looked_at=now,
                absent_after=absent_after,
                absences=absences,
            )
            evidence, absences = verdict.evidence, verdict.absences
        if value == "found":
            since_found = []
        elif value == "absent" and now >= absent_after:
            since_found.append(now)
        concluded = evidence is Evidence.ABSENCE_CONFIRMED
        assert concluded == (value == "absent" and _oracle(since_found)), (steps, since_found)
        if state is OrderState.UNRESOLVED:
            state = next_state(state, evidence)
            if state is OrderState.NOT_PLACED:
                return
        # Found (FILLED): the order is resolved; later answers are still weighed from nothing.


# --------------------------------------------------------------------------- the broker


def test_an_order_omitted_by_one_lookup_after_its_deadline_is_found_by_the_second(clock):
    """The retry's first lookup omits the order (the venue did take it): found 2 s later."""
    broker, horizon = unresolved_broker(clock)
    broker.orders["c1"] = FILLED  # the venue did take it, late
    clock.advance(horizon - clock.time() + 1)
    broker.script = ["absent"]
    assert broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1") == FILLED
    assert broker.submissions == {}
    assert [answer for _, answer in broker.answers] == ["absent", "truth"]
    assert broker.answers[1][0] - broker.answers[0][0] == ABSENT_LOOKUP_SPAN_S
    assert broker.unresolved_orders() == []


def test_two_absent_lookups_the_span_apart_allow_one_resend(clock):
    """Confirmed absence: the one call after the deadline looks twice, 2 s apart, then resends."""
    broker, horizon = unresolved_broker(clock)
    clock.advance(horizon - clock.time())
    order = broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
    assert order.status is OrderStatus.FILLED
    assert broker.submissions == {"c1": 1}
    times = [at for at, _ in broker.answers]
    assert times == [horizon, horizon + ABSENT_LOOKUP_SPAN_S]


def test_one_call_waits_once_and_looks_at_most_twice(clock):
    """The confirming lookup fails: unresolved, after one bounded wait and two lookups.

    The absence seen stands (a failure erases nothing): the next call decides at once.
    """
    broker, horizon = unresolved_broker(clock)
    clock.advance(horizon - clock.time())
    broker.script = ["absent", "error"]
    sleeps_before = len(clock.sleeps)
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.resolve_order("c1")
    assert len(broker.answers) == 2
    assert clock.sleeps[sleeps_before:] == [ABSENT_LOOKUP_SPAN_S]
    assert info.value.deadline == horizon + ABSENT_LOOKUP_SPAN_S <= clock.time()
    assert broker.resolve_order("c1") is None  # one more absent answer, 2 s after the first
    assert len(broker.answers) == 3
    assert clock.sleeps[sleeps_before:] == [ABSENT_LOOKUP_SPAN_S]


def test_calls_that_never_advance_the_clock_still_conclude_after_the_deadline(clock):
    """The loop that hung: resolve again and again without moving time decides on the first.

    With the second lookup required, a caller whose clock never moved 2 s never reached it;
    the call itself now waits for it on the injected clock.
    """
    broker, horizon = unresolved_broker(clock)
    clock.advance(horizon - clock.time())
    outcomes = [broker.resolve_unresolved() for _ in range(3)]  # bounded by the test
    assert outcomes[0] == {"c1": "not_placed"}  # the first call already decides


def test_a_caller_that_waits_until_the_errors_deadline_always_gets_an_answer(clock):
    """A bot that retries at exc.deadline concludes within a bounded number of tries."""
    broker, _ = unresolved_broker(clock)
    tries = 0
    for tries in range(1, 10):  # noqa: B007 (the count is asserted after the loop)
        try:
            order = broker.place_market_order("BTC/USD", "buy", 1, client_order_id="c1")
            break
        except OrderUnconfirmedError as exc:
            assert exc.deadline is not None
            clock.advance(max(0.0, exc.deadline - clock.time()))
    else:
        pytest.fail("the retry loop never concluded")
    assert tries == 2  # before the deadline; then both lookups in one call
    assert order.status is OrderStatus.FILLED
    assert broker.submissions == {"c1": 1}


def test_absence_before_the_deadline_neither_waits_nor_counts(clock):
    """Before absent_after a call looks once and does not wait: nothing to confirm yet."""
    broker, horizon = unresolved_broker(clock)
    sleeps_before = len(clock.sleeps)
    clock.advance(horizon - clock.time() - 0.5)
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.resolve_order("c1")
    assert info.value.deadline == horizon
    assert len(broker.answers) == 1
    assert clock.sleeps[sleeps_before:] == []


def test_a_journaled_order_needs_two_absent_lookups_too(clock):
    """An order this process did not send (restart reconciliation) follows the same rule."""
    broker = ScriptedLookups("scripted", clock=clock)
    horizon = clock.time() - 1
    broker.script = ["absent", "found"]
    assert broker.resolve_order("j1", absent_after=horizon) == replace(FILLED, client_order_id="j1")
    broker.script = []
    with pytest.raises(OrderUnconfirmedError):  # unknown and no absent_after: only finding it
        broker.resolve_order("j2")
    assert broker.resolve_order("j3", absent_after=horizon) is None
    assert broker.answers[-1][0] - broker.answers[-2][0] == ABSENT_LOOKUP_SPAN_S


BROKER_STEPS = st.lists(
    st.one_of(
        st.just(("resolve", 0.0)),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 1.9, 2.0, 3.0, 30.0])),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    steps=BROKER_STEPS,
    answers=st.lists(st.sampled_from(["found", "absent", "absent", "error"]), max_size=30),
    lead=st.sampled_from([-3.0, -0.5, 0.0, 1.0]),
)
def test_the_broker_concludes_not_placed_only_on_two_agreeing_answers_two_seconds_apart(
    steps, answers, lead
):
    """Through resolve_order: NOT_PLACED only when the venue's own answers meet the rule.

    Judged against the answers the venue really gave (recorded with their times): at least two
    absent after the horizon since the last found, two seconds apart. A call whose last answer
    was such an absence concludes. A found order is adopted and never becomes NOT_PLACED.
    """
    clear_registry()  # one broker per example: fresh shared breakers on a fresh clock
    clock = FakeClock(start=1000.0)
    broker, horizon = unresolved_broker(clock)
    broker.script = [*answers, *["error"] * 30]  # then nothing but failed lookups
    clock.advance(horizon - clock.time() + lead)
    found_once = False
    for kind, value in steps:
        if kind == "advance":
            clock.advance(value)
            continue
        before = len(broker.answers)
        try:
            result: object = broker.resolve_order("c1")
        except OrderUnconfirmedError:
            result = "unresolved"
        absents = _absents_since_found(broker.answers, horizon)
        answered = broker.answers[before:]
        assert len(answered) <= 2, "one call looks at most twice"
        assert not (found_once and result is None), "an order once found was concluded absent"
        if not found_once and result is None:
            assert _oracle(absents), (steps, broker.answers)
            return
        if not found_once and answered and answered[-1][1] == "absent":
            assert not _oracle(absents), (steps, broker.answers)  # it should have concluded
        found_once = found_once or result == FILLED


def _absents_since_found(answers: list[tuple[float, str]], horizon: float) -> list[float]:
    """The times of the absent answers after `horizon` given since the last found one."""
    absents: list[float] = []
    for at, answer in answers:
        if answer == "found":
            absents = []
        elif answer == "absent" and at >= horizon:
            absents.append(at)
    return absents
