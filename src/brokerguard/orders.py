"""The life of an order: its states, the evidence that moves it, and when it may be sent.

Every write brokerguard makes follows one model, as a transition table (pure: no I/O, no
clock)::

                 sent                  venue's answer / lookup finds it
    INTENT ─────────────▶ SENT ─────────────────────────────────────▶ OPEN / PARTIALLY_FILLED
      │                    │ │ │                                        / FILLED / CANCELED
      │ not sent           │ │ └─ rejected (the venue said so) ──────▶ REJECTED
      │ (circuit open,     │ └─── duplicate id ───▶ EXISTS ── found ─▶ (its state)
      │  rate limited,     │
      │  bad nonce)        └─ ambiguous (timeout, transient, unknown error, garbled answer)
      ▼                            ▼
    NOT_PLACED ◀── absence ──────── UNRESOLVED ◀─┐ absent before the deadline, absent once
        │          confirmed after     │  └──────┘ after it (unconfirmed), or the lookup
        │          the deadline        │           itself failed
        │                              └── found ──▶ (its state)
        └─ may be sent again (the first attempt can no longer be accepted)

The rule the table encodes: **absence is evidence only after the order's deadline, and only
when it is confirmed**. A venue such as Kraken may accept an order seconds after the request
timed out; a lookup made at once finds nothing, and a client that resends then gets two
executions (Kraken checks ``cl_ord_id`` only against *open* orders). So an ambiguous failure
leads to UNRESOLVED. One lookup after the deadline that finds nothing is not enough either: a
real venue's listing can omit a just-filled order from one answer (Kraken's ClosedOrders). So
UNRESOLVED leads to NOT_PLACED only when :data:`ABSENT_LOOKUPS_REQUIRED` lookups, each of which
*started* after the deadline (the venue's own ``deadline`` where it has one, plus a margin for
clock skew), found the order neither open nor closed, the first and the last at least
:data:`ABSENT_LOOKUP_SPAN_S` apart, with no answer that found it in between
(:class:`Absences`, :func:`weigh_lookup`). A failed lookup proves nothing and changes nothing.
A duplicate-id answer proves the order exists: EXISTS leaves only when the order is found.

While an order is live (:data:`LIVE_STATES`) nothing is resent for it, its slot stays taken
and its symbol is not traded again. An order may be sent only from INTENT or NOT_PLACED
(:func:`may_send`).

An OPEN order that a later lookup cannot find any more (neither open nor among the recent
closed orders) has closed long ago: it becomes VANISHED, and the next position fetch tells what
it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from brokerguard.errors import BrokerGuardError
from brokerguard.models import Order, OrderStatus

__all__ = [
    "ABSENT_LOOKUPS_REQUIRED",
    "ABSENT_LOOKUP_SPAN_S",
    "FINAL_STATES",
    "LIVE_STATES",
    "NO_ABSENCES",
    "TRANSITIONS",
    "Absences",
    "Evidence",
    "IllegalTransitionError",
    "LookupVerdict",
    "OrderState",
    "evidence_from_lookup",
    "journal_state",
    "may_send",
    "next_state",
    "weigh_lookup",
]

ABSENT_LOOKUPS_REQUIRED: Final = 2
"""How many lookups after the deadline must find nothing before an order is proven NOT_PLACED.

One is not enough: a venue's listing can omit a just-filled order from one answer (Kraken's
ClosedOrders / QueryOrders), and a resend on that one answer executes twice."""

ABSENT_LOOKUP_SPAN_S: Final = 2.0
"""Seconds from the first to the last of those agreeing lookups (by when each *started*).

Two lookups made at once can share one stale view of the venue (one cache, one replica);
lookups seconds apart see the order once the venue has listed it. ``BaseBroker.resolve_order``
waits for it on the injected clock and makes the confirming lookup itself (one wait, at most
two lookups per call), so no caller's loop can spin on a clock that does not move."""


class OrderState(StrEnum):
    """Where an order is in its life (the journal stores the value)."""

    INTENT = "intent"
    """Decided and journaled, client order id fixed; not sent yet."""
    SENT = "sent"
    """The request left; no answer yet."""
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    """The venue refused it: it was never placed."""
    UNRESOLVED = "unresolved"
    """The outcome is unknown: it may have been accepted, or may still be."""
    EXISTS = "exists"
    """The venue said an order with this id exists; its state is not known yet."""
    NOT_PLACED = "not_placed"
    """Proven absent: not sent, or not found by a lookup made after its deadline."""
    VANISHED = "vanished"
    """Seen live before, then found neither open nor closed: it closed long ago."""


class Evidence(StrEnum):
    """What was learned about an order: the triggers of the transition table."""

    SENT = "sent"
    NOT_SENT = "not_sent"
    """Refused before the venue processed it: circuit open, rate limited, nonce refused."""
    REJECTED = "rejected"
    """A definite business refusal from the venue."""
    AMBIGUOUS = "ambiguous"
    """Timeout, transient or unknown error, garbled answer, or a lookup that failed."""
    DUPLICATE_ID = "duplicate_id"
    FOUND_OPEN = "found_open"
    FOUND_PARTIALLY_FILLED = "found_partially_filled"
    FOUND_FILLED = "found_filled"
    FOUND_CANCELED = "found_canceled"
    FOUND_REJECTED = "found_rejected"
    ABSENT_BEFORE_DEADLINE = "absent_before_deadline"
    """A lookup found nothing, but the order could still be accepted: proves nothing."""
    ABSENT_AFTER_DEADLINE = "absent_after_deadline"
    """A lookup that started after the deadline (plus margin) found nothing, not yet confirmed
    by :data:`ABSENT_LOOKUPS_REQUIRED` such lookups over :data:`ABSENT_LOOKUP_SPAN_S`: one
    answer can omit an order that exists, so it proves nothing yet."""
    ABSENCE_CONFIRMED = "absence_confirmed"
    """Enough lookups after the deadline, far enough apart, found nothing: not placed."""


class IllegalTransitionError(BrokerGuardError):
    """Evidence that cannot apply to an order in its state (a bug, never a broker fault)."""


_FOUND: Final[Mapping[Evidence, OrderState]] = {
    Evidence.FOUND_OPEN: OrderState.OPEN,
    Evidence.FOUND_PARTIALLY_FILLED: OrderState.PARTIALLY_FILLED,
    Evidence.FOUND_FILLED: OrderState.FILLED,
    Evidence.FOUND_CANCELED: OrderState.CANCELED,
    Evidence.FOUND_REJECTED: OrderState.REJECTED,
}
_ABSENT: Final = (
    Evidence.ABSENT_BEFORE_DEADLINE,
    Evidence.ABSENT_AFTER_DEADLINE,
    Evidence.ABSENCE_CONFIRMED,
)


def _table() -> dict[tuple[OrderState, Evidence], OrderState]:
    s, e = OrderState, Evidence
    table: dict[tuple[OrderState, Evidence], OrderState] = {
        (s.INTENT, e.SENT): s.SENT,
        (s.INTENT, e.NOT_SENT): s.NOT_PLACED,
        # Reconciling a journal after a crash: the intent may or may not have been sent.
        (s.INTENT, e.AMBIGUOUS): s.UNRESOLVED,
        (s.INTENT, e.ABSENT_BEFORE_DEADLINE): s.UNRESOLVED,
        (s.INTENT, e.ABSENT_AFTER_DEADLINE): s.UNRESOLVED,  # one answer can omit it
        (s.INTENT, e.ABSENCE_CONFIRMED): s.NOT_PLACED,
        (s.INTENT, e.DUPLICATE_ID): s.EXISTS,
        (s.SENT, e.NOT_SENT): s.NOT_PLACED,
        (s.SENT, e.REJECTED): s.REJECTED,
        (s.SENT, e.AMBIGUOUS): s.UNRESOLVED,
        (s.SENT, e.DUPLICATE_ID): s.EXISTS,
        (s.UNRESOLVED, e.AMBIGUOUS): s.UNRESOLVED,
        (s.UNRESOLVED, e.ABSENT_BEFORE_DEADLINE): s.UNRESOLVED,
        (s.UNRESOLVED, e.ABSENT_AFTER_DEADLINE): s.UNRESOLVED,  # not confirmed yet
        (s.UNRESOLVED, e.ABSENCE_CONFIRMED): s.NOT_PLACED,
        (s.UNRESOLVED, e.DUPLICATE_ID): s.EXISTS,
        (s.EXISTS, e.AMBIGUOUS): s.EXISTS,
        (s.EXISTS, e.DUPLICATE_ID): s.EXISTS,
        (s.EXISTS, e.ABSENT_BEFORE_DEADLINE): s.EXISTS,
        (s.EXISTS, e.ABSENT_AFTER_DEADLINE): s.EXISTS,  # it exists: only finding it resolves
        (s.EXISTS, e.ABSENCE_CONFIRMED): s.EXISTS,
        (s.NOT_PLACED, e.SENT): s.SENT,  # the first attempt can no longer be accepted
        (s.OPEN, e.AMBIGUOUS): s.OPEN,
        (s.PARTIALLY_FILLED, e.AMBIGUOUS): s.PARTIALLY_FILLED,
    }
    for evidence, found in _FOUND.items():
        for state in (s.INTENT, s.SENT, s.UNRESOLVED, s.EXISTS):
            table[state, evidence] = found
    for state in (s.OPEN, s.PARTIALLY_FILLED):
        for evidence, found in _FOUND.items():
            if found is not s.REJECTED:
                table[state, evidence] = found
        for evidence in _ABSENT:
            table[state, evidence] = s.VANISHED
    # A final order looked up again is found as it was.
    for final in (s.FILLED, s.CANCELED, s.REJECTED):
        for evidence, found in _FOUND.items():
            if found is final:
                table[final, evidence] = final
    return table


TRANSITIONS: Final[Mapping[tuple[OrderState, Evidence], OrderState]] = _table()
"""``{(state, evidence): next_state}``; a pair not in the table is illegal."""

LIVE_STATES: Final = frozenset(
    {
        OrderState.INTENT,
        OrderState.SENT,
        OrderState.UNRESOLVED,
        OrderState.EXISTS,
        OrderState.OPEN,
        OrderState.PARTIALLY_FILLED,
    }
)
"""States whose order is, or may still become, live at the venue."""

FINAL_STATES: Final = frozenset(OrderState) - LIVE_STATES - {OrderState.NOT_PLACED}
"""States an order never leaves (NOT_PLACED is not final: it may be sent again)."""


def next_state(state: OrderState, evidence: Evidence) -> OrderState:
    """Return the state `evidence` moves an order in `state` to; raise if it cannot apply."""
    try:
        return TRANSITIONS[state, evidence]
    except KeyError:
        raise IllegalTransitionError(
            f"evidence {evidence.value!r} cannot apply to an order in state {state.value!r}"
        ) from None


def may_send(state: OrderState) -> bool:
    """Return whether an order in `state` may be sent: only a fresh intent or a proven absence."""
    return state in {OrderState.INTENT, OrderState.NOT_PLACED}


_STATUS_EVIDENCE: Final[Mapping[OrderStatus, Evidence]] = {
    OrderStatus.OPEN: Evidence.FOUND_OPEN,
    OrderStatus.PARTIALLY_FILLED: Evidence.FOUND_PARTIALLY_FILLED,
    OrderStatus.FILLED: Evidence.FOUND_FILLED,
    OrderStatus.CANCELED: Evidence.FOUND_CANCELED,
    OrderStatus.REJECTED: Evidence.FOUND_REJECTED,
}


@dataclass(frozen=True, slots=True)
class Absences:
    """The lookups after an order's deadline that found nothing, since it was last sent or found.

    Absence is believed only when it is confirmed: :data:`ABSENT_LOOKUPS_REQUIRED` answers, and
    one of those lookups *started* :data:`ABSENT_LOOKUP_SPAN_S` or more after another one's
    answer *arrived* (so the two cannot share one moment's view of the venue, however slow the
    calls). One venue answer that omits an order can then never get it resent. Answers may
    arrive out of order (concurrent callers): the earliest arrival and the latest start are
    kept, and they come from two different lookups whenever they are ``span`` apart.
    """

    count: int = 0
    first_answered_at: float | None = None
    last_started_at: float | None = None

    def adding(self, started_at: float, answered_at: float) -> Absences:
        """Return these absences plus one from a lookup made from `started_at` to `answered_at`."""
        first = self.first_answered_at
        last = self.last_started_at
        return Absences(
            self.count + 1,
            answered_at if first is None else min(first, answered_at),
            started_at if last is None else max(last, started_at),
        )

    @property
    def confirmed(self) -> bool:
        """Whether these absences prove the order was never placed."""
        return (
            self.count >= ABSENT_LOOKUPS_REQUIRED
            and self.first_answered_at is not None
            and self.last_started_at is not None
            and self.last_started_at - self.first_answered_at >= ABSENT_LOOKUP_SPAN_S
        )

    def confirmable_after(self, absent_after: float | None) -> float | None:
        """Return the earliest start (epoch s) of a lookup that could confirm the absence.

        None when only finding the order can resolve it. With no absence seen yet it is
        `absent_after`; after one, it is the first answer's arrival plus the span, so a caller
        that waits until then before looking again makes progress instead of spinning.
        """
        if absent_after is None:
            return None
        if self.first_answered_at is None:
            return absent_after
        return max(absent_after, self.first_answered_at + ABSENT_LOOKUP_SPAN_S)


NO_ABSENCES: Final = Absences()
"""No lookup after the deadline has found nothing yet (or the order was sent or found since)."""


@dataclass(frozen=True, slots=True)
class LookupVerdict:
    """What one lookup answer proves, and the absences to weigh the next answer against."""

    evidence: Evidence
    absences: Absences


def weigh_lookup(
    found: Order | None,
    *,
    looked_at: float,
    absent_after: float | None,
    absences: Absences = NO_ABSENCES,
    answered_at: float | None = None,
) -> LookupVerdict:
    """Weigh one lookup's answer against the absences seen before it.

    An order found is evidence of its state and clears the absences (a later omission starts
    again from nothing). Nothing found before `absent_after`, or with no `absent_after`, proves
    nothing and changes nothing. Nothing found after it is one more absence: ABSENCE_CONFIRMED
    once :attr:`Absences.confirmed`, else ABSENT_AFTER_DEADLINE (the order stays unresolved).
    A lookup that failed has no answer to weigh: the caller keeps `absences` as they were.

    Args:
        found: the order the venue returned, or None when it found nothing.
        looked_at: when the lookup *started* (epoch seconds): a lookup that started before the
            deadline proves nothing even if its answer came after it.
        absent_after: when absence becomes evidence (the deadline plus a margin); None when
            nothing but finding the order can resolve it.
        absences: the earlier absent answers after the deadline for the same send.
        answered_at: when the answer arrived (epoch seconds; default `looked_at`): the span
            between lookups is measured from an answer's arrival to another lookup's start.
    """
    if found is not None:
        return LookupVerdict(_STATUS_EVIDENCE[found.status], NO_ABSENCES)
    if absent_after is None or looked_at < absent_after:
        return LookupVerdict(Evidence.ABSENT_BEFORE_DEADLINE, absences)
    seen = absences.adding(looked_at, looked_at if answered_at is None else answered_at)
    evidence = Evidence.ABSENCE_CONFIRMED if seen.confirmed else Evidence.ABSENT_AFTER_DEADLINE
    return LookupVerdict(evidence, seen)


def evidence_from_lookup(
    found: Order | None, *, looked_at: float, absent_after: float | None
) -> Evidence:
    """Turn one lookup's answer, with no earlier absence, into evidence (see :func:`weigh_lookup`).

    A single answer never proves absence: nothing found after the deadline is
    ABSENT_AFTER_DEADLINE, which leaves an unresolved order unresolved.
    """
    return weigh_lookup(found, looked_at=looked_at, absent_after=absent_after).evidence


_JOURNAL_ALIASES: Final[Mapping[str, OrderState]] = {
    # Statuses written by brokerguard before the lifecycle had names of its own.
    "unconfirmed": OrderState.UNRESOLVED,
    "failed": OrderState.UNRESOLVED,
    "not_sent": OrderState.NOT_PLACED,
}


def journal_state(status: str) -> OrderState:
    """Return the lifecycle state of a journal status (older spellings included)."""
    alias = _JOURNAL_ALIASES.get(status)
    return alias if alias is not None else OrderState(status)
