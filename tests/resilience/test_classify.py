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
from brokerguard.resilience.classify import VenueClassifier, calling_key
from brokerguard.testing import FakeClock


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


# ---------------------------------------------------------------- a venue's keys and 429s


def _limited() -> RateLimitedError:
    return RateLimitedError("EAPI:Rate limit exceeded", retry_after=5)


def test_one_keys_rate_limit_is_its_own_until_another_key_hits_one():
    """key-a's 429s are ignored by the venue's breaker; a 429 of key-b too makes it the venue's."""
    clock = FakeClock(start=100.0)
    classify = VenueClassifier(clock, window_s=60)
    with calling_key("key-a"):
        assert [classify(_limited()) for _ in range(5)] == [Outcome.IGNORED] * 5
    with calling_key("key-b"):
        assert classify(_limited()) is Outcome.TRANSIENT
    with calling_key("key-a"):
        assert classify(_limited()) is Outcome.TRANSIENT


def test_a_rate_limit_of_another_key_long_ago_corroborates_nothing():
    """Outside the window the other key's 429 is forgotten: the new one is one key's again."""
    clock = FakeClock(start=100.0)
    classify = VenueClassifier(clock, window_s=60)
    with calling_key("key-b"):
        assert classify(_limited()) is Outcome.IGNORED
    clock.advance(61)
    with calling_key("key-a"):
        assert classify(_limited()) is Outcome.IGNORED


def test_a_rate_limit_of_an_unnamed_key_and_other_failures_count_as_before():
    """No key named: the old rule (counted). Outages still count; a revoked key never does."""
    classify = VenueClassifier(FakeClock())
    assert classify(_limited()) is Outcome.TRANSIENT
    with calling_key("key-a"):
        assert classify(TransientBrokerError("503")) is Outcome.TRANSIENT
        assert classify(FatalBrokerError("EAPI:Invalid key")) is Outcome.IGNORED
        assert classify(BrokerRejection("EOrder:Insufficient funds")) is Outcome.IGNORED


def test_the_calling_key_is_the_innermost_blocks():
    """Nested blocks (a broker's call inside another's) restore the outer key on exit."""
    classify = VenueClassifier(FakeClock(), keys_to_corroborate=2)
    with calling_key("key-a"):
        with calling_key("key-b"):
            assert classify(_limited()) is Outcome.IGNORED
        assert classify(_limited()) is Outcome.TRANSIENT  # key-a: a second key
