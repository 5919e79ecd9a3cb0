"""The default classifier sorts errors by what the breaker and the retry loop should do."""

import pytest

from brokerguard import (
    BrokerRejection,
    CircuitOpenError,
    FatalBrokerError,
    Outcome,
    RateLimitedError,
    TransientBrokerError,
    default_classifier,
)


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (BrokerRejection("insufficient funds"), Outcome.IGNORED),
        (FatalBrokerError("invalid key"), Outcome.FATAL),
        (TransientBrokerError("503"), Outcome.TRANSIENT),
        (RateLimitedError("slow down", retry_after=1), Outcome.TRANSIENT),
        (ConnectionResetError(), Outcome.TRANSIENT),
        (TimeoutError(), Outcome.TRANSIENT),
        (OSError("network unreachable"), Outcome.TRANSIENT),
        (ValueError("garbled payload"), Outcome.FAILURE),
        (KeyError("price"), Outcome.FAILURE),
        (CircuitOpenError("inner", 1.0), Outcome.FAILURE),
    ],
)
def test_default_classification(exc, outcome):
    """Rejections are ignored, fatal is fatal, network trouble is transient, the rest fails."""
    assert default_classifier(exc) is outcome
