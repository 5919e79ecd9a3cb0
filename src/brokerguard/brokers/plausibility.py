"""Whether a successful position read may be believed: a pure policy, no I/O.

A read that *fails* is handled by the breaker. The dangerous read is the one that succeeds and
says less than before: an exchange answering ``{"error": [], "result": {}}`` for a balance, or a
position list that silently lacks half the positions. Believed, it reads as "holds nothing" and
the bot buys past its cap — the incident this project exists for, through another door.

The rule: a read that *loses* symbols (held in the last believed read, absent now) that nothing
explains is **suspect**, and a suspect read is never believed on its own say-so. Only evidence
that could not be otherwise explains a loss:

- a sell of ours (the broker records every sell it sends, and the journal's of earlier runs);
- the venue's trade history: sells of the symbol executed after it was last seen held, that
  leave at most dust (the broker reads the history when a read loses positions);
- an operator's confirmation (``brokerguard confirm-positions``, audited).

No count of agreeing reads tells a glitch from a sale: with 30 % of reads empty, three agreeing
reads over 30 s were believed on 650 of 5,000 chaos seeds, and five over 120 s with a quiet
period on 4 of 5,000; a venue whose empty answers are independent glitches produces any finite
run sooner or later. The reads-only rule survives as an opt-in (``believe_reads``) for a venue
without a trade history whose operator accepts that risk: a loss is then believed when
``confirm_reads`` consecutive reads agree on exactly the same holdings over at least
``confirm_after_s`` seconds and no thin read was proven wrong in the last
``quiet_after_glitch_s``.

Until a loss is explained the gate refuses new entries (``POSITIONS_IMPLAUSIBLE``) and the
enforcer reports ``unverified``; the suspicion says what it waits for. A read that gains symbols
is always believed: more exposure is never a reason to take more risk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from brokerguard._validation import bool_problem, int_problem, seconds_problem
from brokerguard.errors import ConfigurationError

__all__ = [
    "POSITIONS_CONFIRMED",
    "PlausibilityPolicy",
    "PositionPlausibility",
    "Suspicion",
    "Verdict",
]

POSITIONS_CONFIRMED: Final = "positions_confirmed"
"""The audit action of an operator confirming positions gone (``details["symbols"]``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlausibilityPolicy:
    """When a loss of positions is believed.

    Args:
        believe_reads: whether agreeing reads alone may confirm a loss (default False: only a
            sell of ours, the trade history or an operator explains one). Opt in only for a
            venue without a trade history, accepting that a long enough run of glitched reads
            is believed.
        confirm_reads: consecutive reads showing the same holdings needed to believe a loss
            (default 5; 1 believes every read, which is the unsafe behaviour of old). A failed
            read in between breaks the run.
        confirm_after_s: seconds that must separate the first and the last of those reads
            (default 120): a venue that answers thin reads at random is very unlikely to do so
            for two minutes on end, while a real change (a manual sale) stays.
        quiet_after_glitch_s: after a thin read was proven wrong (a later read showed the
            positions again), no loss is believed for this long (default 300). A venue that
            answers thin reads now and then will sooner or later answer three in a row: the
            chaos suite found that with 30 % of reads empty, three agreeing reads over 30 s
            were believed on 650 of 5,000 seeds and the account bought past its cap. A venue
            known to glitch must first be quiet.
    """

    believe_reads: bool = False
    confirm_reads: int = 5
    confirm_after_s: float = 120.0
    quiet_after_glitch_s: float = 300.0

    def __post_init__(self) -> None:
        problems = [
            *bool_problem("believe_reads", self.believe_reads),
            *int_problem("confirm_reads", self.confirm_reads, minimum=1),
            *seconds_problem("confirm_after_s", self.confirm_after_s),
            *seconds_problem("quiet_after_glitch_s", self.quiet_after_glitch_s),
        ]
        if problems:
            raise ConfigurationError("invalid PlausibilityPolicy: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class Suspicion:
    """A loss of positions not believed yet."""

    missing: tuple[str, ...]
    """The symbols the reads lost, sorted."""
    shown: frozenset[str]
    """What the suspect reads show."""
    since: float
    """When the first suspect read started (monotonic seconds)."""
    agreeing: int
    """How many consecutive reads showed exactly ``shown``."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's answer about one read."""

    believed: bool
    suspicion: Suspicion | None = None
    """Set when the read is not believed."""
    confirmed_loss: tuple[str, ...] = ()
    """Symbols whose loss this read confirmed (believed after agreeing reads)."""


class PositionPlausibility:
    """Remember the last believed holdings and judge each new read against them.

    Not thread-safe by itself: the broker calls it under its own lock.
    """

    def __init__(self, policy: PlausibilityPolicy | None = None) -> None:
        self.policy = policy or PlausibilityPolicy()
        self._believed: frozenset[str] | None = None
        self._suspicion: Suspicion | None = None
        self._last_glitch: float | None = None  # when a thin read was last proven wrong

    @property
    def suspicion(self) -> Suspicion | None:
        """The pending suspicion, if the last read was not believed."""
        return self._suspicion

    @property
    def believed(self) -> frozenset[str] | None:
        """The symbols of the last believed read (None before the first read)."""
        return self._believed

    def observe(
        self, shown: Iterable[str], now: float, *, explained: Iterable[str] = ()
    ) -> Verdict:
        """Judge a successful read that showed `shown` symbols, started at `now` (monotonic).

        `explained`: symbols whose disappearance a sell of ours explains.
        """
        shown = frozenset(shown)
        if self._believed is None:
            return self._believe(shown)
        missing = tuple(sorted(self._believed - shown - frozenset(explained)))
        if not missing:
            if self._suspicion is not None and set(self._suspicion.missing) & shown:
                self._last_glitch = now  # the thin read was wrong: this venue glitches
            return self._believe(shown)
        previous = self._suspicion
        if previous is not None and previous.shown == shown and previous.agreeing > 0:
            suspicion = Suspicion(missing, shown, previous.since, previous.agreeing + 1)
        else:
            suspicion = Suspicion(missing, shown, now, 1)
        quiet = self._last_glitch is None or (
            now - self._last_glitch >= self.policy.quiet_after_glitch_s
        )
        if (
            self.policy.believe_reads
            and suspicion.agreeing >= self.policy.confirm_reads
            and now - suspicion.since >= self.policy.confirm_after_s
            and quiet
        ):
            verdict = self._believe(shown)
            return Verdict(believed=True, confirmed_loss=missing, suspicion=verdict.suspicion)
        self._suspicion = suspicion
        return Verdict(believed=False, suspicion=suspicion)

    def seed(self, shown: Iterable[str]) -> bool:
        """Start from holdings believed before (a restart): only if nothing is believed yet.

        Returns whether the seed was taken.
        """
        if self._believed is not None:
            return False
        self._believed = frozenset(shown)
        return True

    def widen(self, symbols: Iterable[str]) -> None:
        """Add symbols to the belief (held before, by a record the broker trusts)."""
        if self._believed is not None:
            self._believed |= frozenset(symbols)

    def unexplained(self, shown: Iterable[str], explained: Iterable[str] = ()) -> tuple[str, ...]:
        """The symbols a read showing `shown` would lose with nothing to explain it, sorted.

        The broker asks before judging the read, to know whether the trade history is worth
        reading.
        """
        if self._believed is None:
            return ()
        return tuple(sorted(self._believed - frozenset(shown) - frozenset(explained)))

    def interrupt(self) -> None:
        """A read failed: the run of agreeing thin reads is broken (it proved nothing)."""
        if self._suspicion is not None:
            self._suspicion = replace(self._suspicion, agreeing=0)

    def _believe(self, shown: frozenset[str]) -> Verdict:
        self._believed = shown
        self._suspicion = None
        return Verdict(believed=True)
