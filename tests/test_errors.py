"""One exception tree, two families, context carried as attributes."""

import math
import pickle

import pytest

from brokerguard import (
    BlockedError,
    BrokerError,
    BrokerGuardError,
    BrokerRejection,
    CircuitOpenError,
    ConfigurationError,
    FatalBrokerError,
    RateLimitedError,
    TransientBrokerError,
)


@pytest.mark.parametrize(
    ("cls", "family"),
    [
        (CircuitOpenError, BlockedError),
        (TransientBrokerError, BrokerError),
        (RateLimitedError, TransientBrokerError),
        (BrokerRejection, BrokerError),
        (FatalBrokerError, BrokerError),
        (ConfigurationError, BrokerGuardError),
        (BlockedError, BrokerGuardError),
        (BrokerError, BrokerGuardError),
    ],
)
def test_every_error_sits_in_its_family(cls, family):
    """Each error derives from the family that tells the caller what to do."""
    assert issubclass(cls, family)
    assert issubclass(cls, BrokerGuardError)


def test_configuration_error_is_also_a_value_error():
    """Code that catches ValueError for bad settings keeps working."""
    assert issubclass(ConfigurationError, ValueError)


def test_circuit_open_error_carries_broker_scope_and_wait():
    """An open-circuit error names the broker, the scope and the seconds to the next probe."""
    exc = CircuitOpenError("kraken", 12.5, "read")
    assert exc.broker == "kraken"
    assert exc.scope == "read"
    assert exc.next_probe_in == 12.5
    assert exc.retry_after == 12.5
    assert "kraken" in str(exc)
    assert "12.5s" in str(exc)


def test_circuit_open_error_forced_open_has_no_probe_time():
    """A circuit an operator forced open has no automatic probe, and says so."""
    exc = CircuitOpenError("kraken", None)
    assert exc.next_probe_in is None
    assert exc.scope == "default"
    assert "operator" in str(exc)


def test_transient_error_carries_retry_after():
    """A transient error remembers how long the broker asked us to wait."""
    exc = RateLimitedError("slow down", retry_after=7.0)
    assert exc.retry_after == 7.0
    assert TransientBrokerError("timeout").retry_after is None


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_transient_error_refuses_a_nonsense_retry_after(bad):
    """A negative or NaN wait is never stored: it would become a bogus sleep."""
    with pytest.raises(ConfigurationError):
        TransientBrokerError("x", retry_after=bad)


def test_errors_survive_pickling_with_their_context():
    """Errors cross process boundaries (fleets) without losing their attributes."""
    rate = pickle.loads(pickle.dumps(RateLimitedError("slow", retry_after=3.0)))  # noqa: S301
    assert type(rate) is RateLimitedError
    assert rate.retry_after == 3.0
    assert str(rate) == "slow"
    opened = pickle.loads(pickle.dumps(CircuitOpenError("kraken", 4.0, "write")))  # noqa: S301
    assert (opened.broker, opened.next_probe_in, opened.scope) == ("kraken", 4.0, "write")
