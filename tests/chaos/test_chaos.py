"""The chaos suite in CI: 300 seeded worlds keep every invariant; the naive bot cannot.

The 300 interleaved seeds run on fresh processes, one per core (``BROKERGUARD_CHAOS_WORKERS``,
default: up to two, what CI has): each seed is a whole world of its own, and outside the test
process they also run without the coverage tracer, which otherwise more than doubles their
time. The threaded seeds stay in the test process, on threads, as they test exactly that.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from brokerguard.chaos import INVARIANTS, ChaosReport, main, run_chaos

SEEDS = int(os.environ.get("BROKERGUARD_CHAOS_SEEDS", "300"))
BATCH = 25
WORKERS = int(os.environ.get("BROKERGUARD_CHAOS_WORKERS", str(min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="module")
def reports() -> dict[int, ChaosReport]:
    """Every CI seed's report, computed once, on `WORKERS` fresh processes."""
    seeds = range(SEEDS)
    if WORKERS <= 1:
        return {seed: run_chaos(seed) for seed in seeds}
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited tracer
    with ProcessPoolExecutor(
        WORKERS, mp_context=spawn, initializer=logging.disable, initargs=(logging.CRITICAL,)
    ) as pool:
        return dict(zip(seeds, pool.map(run_chaos, seeds, chunksize=5), strict=True))


@pytest.mark.parametrize("first", range(0, SEEDS, BATCH))
def test_every_invariant_holds_on_every_seed(first, reports):
    """Each batch of seeds: every invariant at every step, or the replay command is shown."""
    failures = []
    for seed in range(first, min(first + BATCH, SEEDS)):
        report = reports[seed]
        if not report.ok:
            v = report.violations[0]
            failures.append(
                f"{v.invariant} at step {v.step} ({v.detail}): {report.replay_command()}"
            )
    assert failures == []


def test_the_checks_can_fail_the_naive_bot_breaks_one_to_three():
    """On the same worlds the naive bot violates the cap, prices and duplicates invariants."""
    broken: set[str] = set()
    for seed in range(5):
        broken |= run_chaos(seed, naive=True, steps=150).broken
    assert {"cap_respected", "no_fallback_price", "no_duplicate_orders"} <= broken


def test_a_seed_replays_exactly():
    """The same seed gives the same violations (the naive bot has plenty to compare)."""
    first = run_chaos(7, naive=True, steps=120).violations
    again = run_chaos(7, naive=True, steps=120).violations
    assert first == again
    assert first


def test_the_command_prints_the_replay_line_for_failures(capsys):
    """`python -m brokerguard.chaos --naive` exits 1 and says how to replay each seed."""
    assert main(["--runs", "2", "--steps", "100", "--naive"]) == 1
    out = capsys.readouterr().out
    assert "replay: python -m brokerguard.chaos --seed 0 --runs 1 --steps 100 --naive" in out
    assert main(["--runs", "2", "--steps", "60"]) == 0


def test_the_invariants_are_the_six_named_ones():
    """The names the reports use."""
    assert INVARIANTS == (
        "cap_respected",
        "no_fallback_price",
        "no_duplicate_orders",
        "open_circuit_sends_nothing",
        "halts_are_durable",
        "guard_loop_survives",
    )


THREADED_SEEDS = int(os.environ.get("BROKERGUARD_CHAOS_THREADED_SEEDS", "40"))


@pytest.mark.parametrize("first", range(0, THREADED_SEEDS, 10))
def test_concurrent_entries_keep_every_invariant(first):
    """Four entry attempts per account per step, on threads at once, with every fault mixed."""
    failures = []
    for seed in range(first, min(first + 10, THREADED_SEEDS)):
        report = run_chaos(seed, steps=150, threads=4)
        if not report.ok:
            v = report.violations[0]
            failures.append(
                f"{v.invariant} at step {v.step} ({v.detail}): {report.replay_command()}"
            )
    assert failures == []


def test_concurrent_entries_break_the_naive_bot_and_replay_says_threads():
    """The naive bot racing itself blows through the cap; the replay line keeps --threads."""
    report = run_chaos(1, naive=True, steps=100, threads=4)
    assert "cap_respected" in report.broken
    assert report.replay_command().endswith("--naive --threads 4")
