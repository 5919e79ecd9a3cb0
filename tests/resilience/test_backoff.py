"""Capped exponential backoff: the exact schedule, the jitter bounds and the broker's hint."""

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerguard import BackoffKind, BackoffPolicy, ConfigurationError

ATTEMPTS = st.integers(min_value=1, max_value=5000)
SEEDS = st.integers(min_value=0, max_value=2**32)


def test_without_jitter_the_schedule_is_exactly_2_4_8_16_then_30():
    """The documented schedule: 2 s, 4 s, 8 s, 16 s, then the 30 s cap forever."""
    policy = BackoffPolicy(jitter=0)
    assert [policy.delay(k) for k in range(1, 9)] == [2, 4, 8, 16, 30, 30, 30, 30]


def test_huge_attempt_numbers_stay_at_the_cap():
    """Attempt 10,000 neither overflows nor exceeds the cap."""
    assert BackoffPolicy(jitter=0).delay(10_000) == 30.0


@given(attempt=ATTEMPTS, seed=SEEDS, jitter=st.floats(0, 2))
def test_proportional_jitter_stays_within_d_and_the_cap(attempt, seed, jitter):
    """With jitter j the delay lies in [d, min(max_delay, d*(1+j))]: the cap always holds."""
    policy = BackoffPolicy(jitter=jitter)
    d = min(30.0, 2.0 * 2.0 ** min(attempt - 1, 64))
    value = policy.delay(attempt, random.Random(seed))
    assert d <= value <= min(30.0, d * (1 + jitter))


@given(attempt=ATTEMPTS, seed=SEEDS)
def test_full_jitter_is_between_zero_and_d(attempt, seed):
    """AWS full jitter: uniform(0, d)."""
    policy = BackoffPolicy(kind="full")
    value = policy.delay(attempt, random.Random(seed))
    assert 0.0 <= value <= policy.capped(attempt)


@given(attempt=ATTEMPTS, seed=SEEDS)
def test_equal_jitter_is_between_half_d_and_d(attempt, seed):
    """AWS equal jitter: d/2 + uniform(0, d/2)."""
    policy = BackoffPolicy(kind="equal")
    value = policy.delay(attempt, random.Random(seed))
    d = policy.capped(attempt)
    assert d / 2 <= value <= d


@given(seed=SEEDS, steps=st.integers(1, 60))
def test_decorrelated_jitter_follows_its_chain(seed, steps):
    """AWS decorrelated jitter: each delay is in [base, min(cap, 3 * previous)]."""
    policy = BackoffPolicy(kind=BackoffKind.DECORRELATED)
    rng = random.Random(seed)
    previous = policy.base
    for attempt in range(1, steps + 1):
        value = policy.delay(attempt, rng, previous=previous)
        assert policy.base <= value <= min(policy.max_delay, 3 * previous)
        previous = value


def test_decorrelated_without_previous_uses_the_unjittered_schedule():
    """A stateless caller still backs off: the previous delay defaults to the plain schedule."""
    policy = BackoffPolicy(kind="decorrelated")

    class Top(random.Random):
        def uniform(self, a, b):
            return b

    assert policy.delay(1, Top()) == 6.0  # uniform(2, 2*3) at its top
    assert policy.delay(3, Top()) == 12.0  # previous = capped(2) = 4
    assert policy.delay(9, Top()) == 30.0


def test_a_seeded_rng_replays_the_same_delays():
    """Jitter comes from the injected RNG, so a seed replays a run exactly."""
    policy = BackoffPolicy()
    first = [policy.delay(k, random.Random(42)) for k in range(1, 10)]
    again = [policy.delay(k, random.Random(42)) for k in range(1, 10)]
    assert first == again


def test_retry_after_raises_the_delay_but_not_past_the_cap_when_smaller():
    """A hint inside the cap lifts the delay to at least the hint."""
    policy = BackoffPolicy(jitter=0)
    assert policy.delay(1, retry_after=10.0) == 10.0
    assert policy.delay(4, retry_after=10.0) == 16.0  # the schedule is already longer


def test_retry_after_larger_than_the_cap_wins():
    """A broker that says 'wait 60 s' is obeyed even though the cap is 30 s."""
    assert BackoffPolicy(jitter=0).delay(1, retry_after=60.0) == 60.0
    assert BackoffPolicy(kind="full").delay(9, random.Random(1), retry_after=45.0) == 45.0


@given(attempt=ATTEMPTS, seed=SEEDS, hint=st.floats(0, 1000))
def test_delay_is_never_below_the_hint(attempt, seed, hint):
    """Whatever the kind, the delay is at least the broker's hint."""
    for kind in BackoffKind:
        assert (
            BackoffPolicy(kind=kind).delay(attempt, random.Random(seed), retry_after=hint) >= hint
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0},
        {"base": -1},
        {"base": math.nan},
        {"factor": 0.5},
        {"max_delay": 1.0},  # below base
        {"max_delay": math.inf},
        {"jitter": -0.1},
        {"kind": "linear"},
    ],
)
def test_invalid_settings_are_refused_when_built(kwargs):
    """A policy that cannot keep its promises is refused at construction."""
    with pytest.raises(ConfigurationError):
        BackoffPolicy(**kwargs)


def test_attempts_are_one_based():
    """Attempt 0 is a caller bug, not the first retry."""
    with pytest.raises(ConfigurationError):
        BackoffPolicy().delay(0)


def test_kind_accepts_the_string_value_and_stores_the_enum():
    """Configs spell kinds as strings; the policy normalises them."""
    assert BackoffPolicy(kind="equal").kind is BackoffKind.EQUAL
