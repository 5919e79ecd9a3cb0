"""What a failed call means for the breaker and for the retry loop.

One function, :func:`default_classifier`, maps an exception to an :class:`Outcome`; breakers
take any callable with the same shape, so an adapter can teach them a broker's quirks without
subclassing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from brokerguard.errors import (
    BrokerRejection,
    DuplicateOrderError,
    FatalBrokerError,
    TransientBrokerError,
)

__all__ = ["Classifier", "Outcome", "default_classifier", "venue_classifier"]


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
