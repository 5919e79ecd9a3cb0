"""Capped exponential backoff with jitter.

The default schedule is the one brokerguard's users asked for: 2 s, 4 s, 8 s, 16 s, then 30 s
forever, each stretched by up to 30 % of jitter but never past the cap. The three variants from
the AWS Architecture Blog's "Exponential Backoff And Jitter" (Marc Brooker, 2015) are available
too, with that article's formulas, where ``d`` is the capped exponential delay of the attempt:

=================  =================================================================
``proportional``   ``uniform(d, min(cap, d * (1 + jitter)))`` (our default)
``full``           ``uniform(0, d)``
``equal``          ``d / 2 + uniform(0, d / 2)``
``decorrelated``   ``min(cap, uniform(base, previous * 3))``, ``previous`` starting at base
=================  =================================================================

A broker's own ``retry_after`` hint raises the delay to at least the hint. The hint may exceed
the cap: a broker that says "wait 60 s" is obeyed, because calling it sooner only extends a
rate-limit lockout.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

from brokerguard.errors import ConfigurationError

__all__ = ["DECORRELATED_MULTIPLIER", "BackoffKind", "BackoffPolicy"]

DECORRELATED_MULTIPLIER = 3.0
"""The AWS article's growth factor for decorrelated jitter (``previous * 3``)."""

_RNG = random.Random()  # noqa: S311 (jitter spreads retries; it is not a secret)
"""Used only when a caller passes no RNG; components always pass their injected one."""


class BackoffKind(StrEnum):
    """How jitter is applied to the capped exponential delay."""

    PROPORTIONAL = "proportional"
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"


@dataclass(frozen=True, slots=True, kw_only=False)
class BackoffPolicy:
    """A capped exponential backoff schedule with jitter.

    Args:
        base: delay of the first retry, in seconds.
        factor: growth per attempt (``base * factor ** (attempt - 1)``).
        max_delay: the cap, in seconds; no computed delay exceeds it.
        jitter: for ``proportional`` only, the largest stretch as a fraction of the delay.
        kind: one of :class:`BackoffKind` (or its string value).
    """

    base: float = 2.0
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.3
    kind: BackoffKind | str = BackoffKind.PROPORTIONAL

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.base) and self.base > 0):
            problems.append(f"base must be a finite number > 0, got {self.base!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            problems.append(f"factor must be a finite number >= 1, got {self.factor!r}")
        if not (math.isfinite(self.max_delay) and self.max_delay >= self.base):
            problems.append(f"max_delay must be finite and >= base, got {self.max_delay!r}")
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            problems.append(f"jitter must be a finite number >= 0, got {self.jitter!r}")
        try:
            kind = BackoffKind(self.kind)
        except ValueError:
            choices = ", ".join(k.value for k in BackoffKind)
            problems.append(f"kind must be one of {choices}, got {self.kind!r}")
        else:
            object.__setattr__(self, "kind", kind)
        if problems:
            raise ConfigurationError("invalid BackoffPolicy: " + "; ".join(problems))

    def capped(self, attempt: int) -> float:
        """Return the un-jittered delay of `attempt` (1-based): ``min(max_delay, base*factor**(attempt-1))``."""  # noqa: E501 (the formula reads best on one line)
        if attempt < 1:
            raise ConfigurationError(f"attempt is 1-based, got {attempt!r}")
        # Compare exponents instead of computing factor ** (attempt - 1) outright: attempt 2000
        # would overflow a float long after the cap was reached.
        if self.factor == 1 or (attempt - 1) * math.log(self.factor) < math.log(
            self.max_delay / self.base
        ):
            return min(self.max_delay, self.base * self.factor ** (attempt - 1))
        return self.max_delay

    def delay(
        self,
        attempt: int,
        rng: random.Random | None = None,
        *,
        retry_after: float | None = None,
        previous: float | None = None,
    ) -> float:
        """Return the seconds to wait after the `attempt`-th failure (1-based).

        Args:
            attempt: how many attempts have failed so far.
            rng: the source of jitter; pass a seeded one to replay a run exactly.
            retry_after: the broker's own hint; the delay is at least this long, even past
                the cap.
            previous: for ``decorrelated`` only, the delay chosen for the previous attempt.
                When omitted, the un-jittered delay of the previous attempt stands in for it
                (``base`` for the first attempt), so a stateless caller still backs off.
        """
        d = self.capped(attempt)
        r = _RNG if rng is None else rng
        kind = self.kind
        if kind is BackoffKind.PROPORTIONAL:
            value = (
                d if self.jitter == 0 else r.uniform(d, min(self.max_delay, d * (1 + self.jitter)))
            )
        elif kind is BackoffKind.FULL:
            value = r.uniform(0.0, d)
        elif kind is BackoffKind.EQUAL:
            value = d / 2 + r.uniform(0.0, d / 2)
        else:
            if previous is None:
                previous = self.base if attempt == 1 else self.capped(attempt - 1)
            upper = max(self.base, previous * DECORRELATED_MULTIPLIER)
            value = min(self.max_delay, r.uniform(self.base, upper))
        # uniform(a, b) may return b + ulp through rounding; the cap is a promise.
        value = min(value, self.max_delay)
        if retry_after is not None and retry_after > value:
            return float(retry_after)
        return value
