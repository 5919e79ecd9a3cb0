"""What a failed call means for the breaker and for the retry loop.

One function, :func:`default_classifier`, maps an exception to an :class:`Outcome`; breakers
take any callable with the same shape, so an adapter can teach them a broker's quirks without
subclassing anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import StrEnum

from brokerguard.clock import Clock
from brokerguard.errors import (
    BrokerRejection,
    DuplicateOrderError,
    FatalBrokerError,
    RateLimitedError,
    TransientBrokerError,
)

__all__ = [
    "Classifier",
    "Outcome",
    "VenueClassifier",
    "calling_key",
    "default_classifier",
    "venue_classifier",
]


class Outcome(StrEnum):
    """How a failed call counts.

    =============  =======================  ==========  =========================
    outcome        counts as breaker ...    retried     example
    =============  =======================  ==========  =========================
    ``IGNORED``    neither fail nor success  no          a business rejection
    ``TRANSIENT``  failure                  yes         timeout, 503, rate limit
    ``FAILURE``    failure                  no          a bug, a garbled payload
    ``FATAL``      opens the circuit now    no          bad API key
    =============  =======================  ==========  =========================
    """

    IGNORED = "ignored"
    TRANSIENT = "transient"
    FAILURE = "failure"
    FATAL = "fatal"


Classifier = Callable[[BaseException], Outcome]
"""Maps an exception raised by a wrapped call to its :class:`Outcome`."""


def default_classifier(exc: BaseException) -> Outcome:
    """Classify `exc` the way brokerguard's own error tree intends.

    A :class:`~brokerguard.errors.BrokerRejection` is the broker answering "no": it says
    nothing about the broker's health, so it is neither a failure nor a success and it leaves
    the failure streak as it was (resetting the streak would let a broker that alternates
    timeouts and rejections never trip). Network-level errors are transient. An error from a
    nested breaker (``CircuitOpenError``) is a plain failure: the inner breaker owns that wait.
    """
    if isinstance(exc, BrokerRejection | DuplicateOrderError):
        # A duplicate-id answer is the broker answering clearly too (the order exists).
        return Outcome.IGNORED
    if isinstance(exc, FatalBrokerError):
        return Outcome.FATAL
    # ConnectionError and TimeoutError are OSError subclasses; asyncio.TimeoutError is
    # TimeoutError since 3.11.
    if isinstance(exc, TransientBrokerError | OSError):
        return Outcome.TRANSIENT
    return Outcome.FAILURE


def venue_classifier(exc: BaseException) -> Outcome:
    """Classify like :func:`default_classifier` for a breaker several API keys share.

    The breaker of a venue (``[brokers.X] venue``) detects the *exchange's* outages for every
    key on it. A fatal error (a revoked key, a missing permission) is one key's, and says
    nothing about the exchange: counted, it would open the circuit for every key, so one bad
    key would leave every account of the venue unenforced. It is ignored here; the account
    whose key it is fails closed on its own (its reads fail: positions unknown, entries
    refused, the step unverified).
    """
    outcome = default_classifier(exc)
    return Outcome.IGNORED if outcome is Outcome.FATAL else outcome


CALLING_KEY: ContextVar[str | None] = ContextVar("brokerguard_calling_key", default=None)
"""The API key (by a name, never the key) the current call is made with: see calling_key."""


@contextmanager
def calling_key(name: str | None) -> Iterator[None]:
    """Say which API key the calls in the block are made with (for :class:`VenueClassifier`).

    Brokers wrap each guarded call in it (``BaseBroker.api_key_name``); a failure classified
    inside the block is then known to be that key's answer.
    """
    token = CALLING_KEY.set(name)
    try:
        yield
    finally:
        CALLING_KEY.reset(token)


class VenueClassifier:
    """:func:`venue_classifier`, and a rate limit counted only when more than one key hits it.

    A 429 may be one key's own budget (that key is calling too fast) or everyone's (the
    exchange's, or this machine's IP's). Counted for the venue, one busy key's 429s would open
    the circuit of every key on the exchange; ignored, a venue-wide limit would be hammered by
    every key. So a rate-limit answer counts for the venue's breaker only when at least
    `keys_to_corroborate` different keys got one within `window_s`; until then it is that
    key's alone: ignored here (not retried, the account whose key it is fails closed on its
    own this pass, its key's limiter keeps it within its budget). A failure whose key is not
    known (a call not made through a broker naming its key) counts as before.

    Args:
        clock: the time source for the window.
        window_s: how recent another key's rate limit must be to corroborate.
        keys_to_corroborate: distinct keys whose rate limits make it the venue's.
    """

    def __init__(
        self, clock: Clock, *, window_s: float = 60.0, keys_to_corroborate: int = 2
    ) -> None:
        self.clock = clock
        self.window_s = float(window_s)
        self.keys_to_corroborate = keys_to_corroborate
        self._lock = threading.Lock()
        self._limited: dict[str, float] = {}  # key -> monotonic time of its last 429

    def __call__(self, exc: BaseException) -> Outcome:
        """Classify `exc` raised by a call made with the key in :func:`calling_key`."""
        outcome = venue_classifier(exc)
        key = CALLING_KEY.get()
        if not isinstance(exc, RateLimitedError) or key is None or outcome is Outcome.IGNORED:
            return outcome
        now = self.clock.monotonic()
        with self._lock:
            self._limited[key] = now
            # Bounded by the venue's keys; the old ones are dropped on each rate limit.
            self._limited = {k: t for k, t in self._limited.items() if now - t <= self.window_s}
            corroborated = len(self._limited) >= self.keys_to_corroborate
        return outcome if corroborated else Outcome.IGNORED

    def __repr__(self) -> str:
        return f"VenueClassifier(window_s={self.window_s:g}, keys={self.keys_to_corroborate})"
