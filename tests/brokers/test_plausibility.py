"""Whether a successful position read is believed: losses wait for agreeing reads over time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokerguard import ConfigurationError
from brokerguard.brokers.plausibility import PlausibilityPolicy, PositionPlausibility

SYMBOLS = ["A/USD", "B/USD", "C/USD", "D/USD"]


def test_the_first_read_is_believed():
    """Nothing to compare with: the first read is the baseline (empty included)."""
    judge = PositionPlausibility()
    assert judge.observe([], 0.0).believed


def test_an_empty_read_after_a_full_one_is_suspect():
    """The incident's other door: three positions, then none, with no sell to explain it."""
    judge = PositionPlausibility()
    judge.observe(SYMBOLS[:3], 0.0)
    verdict = judge.observe([], 1.0)
    assert not verdict.believed
    assert verdict.suspicion is not None
    assert verdict.suspicion.missing == ("A/USD", "B/USD", "C/USD")
    assert judge.believed == frozenset(SYMBOLS[:3])


def test_a_loss_is_believed_after_agreeing_reads_spanning_the_wait():
    """Three identical reads, 30 s from the first to the last: the loss is real."""
    policy = PlausibilityPolicy(believe_reads=True, confirm_reads=3, confirm_after_s=30)
    judge = PositionPlausibility(policy)
    judge.observe(SYMBOLS[:2], 0.0)
    assert not judge.observe(["A/USD"], 1.0).believed
    assert not judge.observe(["A/USD"], 2.0).believed  # three reads, but only 1 s apart
    assert not judge.observe(["A/USD"], 30.0).believed  # 29 s after the first
    verdict = judge.observe(["A/USD"], 31.0)
    assert verdict.believed
    assert verdict.confirmed_loss == ("B/USD",)


def test_a_different_read_restarts_the_count():
    """Reads that disagree with each other confirm nothing."""
    policy = PlausibilityPolicy(believe_reads=True, confirm_reads=2, confirm_after_s=0)
    judge = PositionPlausibility(policy)
    judge.observe(SYMBOLS[:3], 0.0)
    assert not judge.observe(["A/USD"], 1.0).believed
    assert not judge.observe(["B/USD"], 2.0).believed
    assert judge.observe(["B/USD"], 3.0).believed


def test_a_sell_of_ours_explains_a_loss():
    """A symbol we sold may vanish at once."""
    judge = PositionPlausibility()
    judge.observe(SYMBOLS[:2], 0.0)
    assert judge.observe(["A/USD"], 1.0, explained=["B/USD"]).believed


@pytest.mark.parametrize(
    "kwargs", [{"confirm_reads": 0}, {"confirm_reads": True}, {"confirm_after_s": -1.0}]
)
def test_a_policy_that_would_believe_anything_is_refused(kwargs):
    """confirm_reads >= 1 and a finite wait >= 0, or the policy is not built."""
    with pytest.raises(ConfigurationError):
        PlausibilityPolicy(**kwargs)


reads = st.lists(
    st.tuples(
        st.frozensets(st.sampled_from(SYMBOLS)),
        st.floats(min_value=0.0, max_value=20.0),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    sequence=reads,
    confirm_reads=st.integers(min_value=1, max_value=5),
    confirm_after_s=st.floats(min_value=0.0, max_value=60.0),
    believe_reads=st.booleans(),
)
def test_no_loss_is_believed_without_enough_agreeing_reads_over_enough_time(
    sequence, confirm_reads, confirm_after_s, believe_reads
):
    """Whatever the reads: a loss is believed from reads alone only under an opt-in policy.

    And then only after `confirm_reads` identical reads over the wait.
    """
    judge = PositionPlausibility(
        PlausibilityPolicy(
            believe_reads=believe_reads,
            confirm_reads=confirm_reads,
            confirm_after_s=confirm_after_s,
        )
    )
    now = 0.0
    history: list[tuple[frozenset[str], float]] = []
    for shown, step in sequence:
        now += step
        before = judge.believed
        verdict = judge.observe(shown, now)
        history.append((shown, now))
        if verdict.believed:
            assert judge.believed == shown
            assert judge.suspicion is None
            if before is not None and before - shown:
                assert believe_reads, "reads alone confirmed a loss under the default policy"
                tail = []
                for read, at in reversed(history):
                    if read != shown:
                        break
                    tail.append(at)
                assert len(tail) >= confirm_reads
                assert now - min(tail) >= confirm_after_s
        else:
            assert judge.believed == before  # nothing thinner was believed
            assert before is not None
            assert before - shown


def test_a_venue_that_glitched_must_be_quiet_before_a_loss_is_believed():
    """A thin read proven wrong: three agreeing thin reads soon after are still not believed."""
    policy = PlausibilityPolicy(
        believe_reads=True, confirm_reads=3, confirm_after_s=30, quiet_after_glitch_s=300
    )
    judge = PositionPlausibility(policy)
    judge.observe(SYMBOLS[:3], 0.0)
    assert not judge.observe([], 10.0).believed
    assert judge.observe(SYMBOLS[:3], 20.0).believed  # the glitch is proven: it came back
    for at in (30.0, 60.0, 90.0, 120.0):
        assert not judge.observe([], at).believed
    assert not judge.observe([], 310.0).believed  # quiet only since 20 + 300 = 320
    assert judge.observe([], 330.0).believed
