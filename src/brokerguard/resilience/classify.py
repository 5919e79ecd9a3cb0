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

__all__ = ["Classifier", "Outcome", "default_classifier"]


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
