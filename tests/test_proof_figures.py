"""docs/proof.md publishes what its commands print, byte for byte.

The incident's seed 0 was once published as 39 positions and 1,784 steps over the cap while
``brokerguard simulate --scenario incident`` printed 37 and 1,752. The cheap figures (every
scenario at seed 0, the first 20 seeds of each chaos run) are generated blocks now: these tests
run the same commands through ``bench/proof_figures.py`` and compare. On a mismatch, run
``python bench/proof_figures.py --write`` and review the diff. The 5,000-seed run (30 min)
keeps its published numbers; the tests pin that the doc states its exact commands and commit,
and that the generated slice of it agrees with them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.bench.loader import load_bench
from tests.test_docs_commands import _commands_in

REPO = Path(__file__).resolve().parents[1]
PROOF = REPO / "docs" / "proof.md"
PUBLISHED_COMMIT = "381021c"


@pytest.fixture(scope="module")
def figures() -> ModuleType:
    return load_bench("proof_figures")


@pytest.fixture(scope="module")
def printed_simulate(figures) -> str:
    """The simulate tables as the commands print them today (about 8 s: run once)."""
    return figures.simulate_block()


def _proof() -> str:
    return PROOF.read_text(encoding="utf-8")


def test_the_simulate_tables_are_what_the_commands_print(figures, printed_simulate):
    """Every scenario's figures in docs/proof.md are the ones `simulate --seed 0 --json` prints."""
    assert figures.published(_proof(), "simulate") == printed_simulate, (
        f"docs/proof.md's simulate figures differ from the commands: run {figures.REGENERATE}"
    )


def test_the_incident_at_seed_0_is_published_as_printed(figures, printed_simulate):
    """The issue's mismatch, by name: the published incident row carries today's numbers."""
    row = next(
        line for line in printed_simulate.splitlines() if line.startswith("| `incident` | naive")
    )
    assert row in figures.published(_proof(), "simulate")
    assert "39 positions" not in _proof()
    assert "1,784" not in _proof()


def test_the_chaos_slice_is_what_the_commands_print(figures):
    """The first 20 seeds of each chaos run, as `python -m brokerguard.chaos` prints them."""
    assert figures.published(_proof(), "chaos-slice") == figures.chaos_slice_block(), (
        f"docs/proof.md's chaos slice differs from the commands: run {figures.REGENERATE}"
    )


def _slice_line(figures: ModuleType, command: str) -> str:
    lines = figures.published(_proof(), "chaos-slice").splitlines()
    return lines[lines.index(f"$ {command}") + 1]


def test_the_published_5000_seed_run_states_its_commands_and_commit():
    """The expensive figures name the exact commands (seeds 0-4999 once each) and the commit."""
    text = _proof()
    assert f"commit {PUBLISHED_COMMIT}" in text
    assert "| brokerguard, every fault | **5,000 / 5,000** | none |" in text
    seeds: list[int] = []
    for command in _commands_in(text):
        found = re.fullmatch(r"python -m brokerguard\.chaos --seed (\d+) --runs (\d+)", command)
        if found:
            first, runs = int(found.group(1)), int(found.group(2))
            seeds.extend(range(first, first + runs))
    assert sorted(seeds) == list(range(5000))


def test_the_published_commit_exists():
    """The commit the 5,000-seed figures were measured at is in this repository's history."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the commit cannot be looked up")
    done = subprocess.run(  # noqa: S603 (a fixed git command)
        ["git", "cat-file", "-e", f"{PUBLISHED_COMMIT}^{{commit}}"],  # noqa: S607 (git on PATH)
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, f"docs/proof.md names commit {PUBLISHED_COMMIT}: not found"


def test_the_slice_agrees_with_the_published_run(figures):
    """Where the published run says every seed, the slice of it must say so too."""
    guarded, naive, _kraken = figures.CHAOS_SLICE
    assert _slice_line(figures, guarded) == (
        "brokerguard: 20/20 seeds kept every invariant; broken: none"
    )  # published: 5,000 / 5,000, none
    line = _slice_line(figures, naive)  # published: 0 / 300, each of the three on 300
    assert line.startswith("naive bot: 0/20 seeds kept every invariant")
    for invariant in ("cap_respected", "no_fallback_price", "no_duplicate_orders"):
        assert f"'{invariant}': 20" in line


def test_the_check_fails_and_names_the_fix_when_a_figure_drifts(
    figures, printed_simulate, tmp_path, monkeypatch, capsys
):
    """A doc carrying the old incident figures fails the check, which says how to regenerate."""
    drifted = printed_simulate.replace("37", "39").replace("1,752", "1,784")
    assert drifted != printed_simulate
    doc = tmp_path / "proof.md"
    doc.write_text(figures.splice(_proof(), "simulate", drifted), encoding="utf-8")
    monkeypatch.setattr(figures, "PROOF", doc)
    monkeypatch.setitem(figures.BLOCKS, "simulate", lambda: printed_simulate)

    assert figures.main(["--only", "simulate"]) == 1
    out = capsys.readouterr().out
    assert "-| `incident` | naive | 39 |" in out
    assert figures.REGENERATE in out

    assert figures.main(["--only", "simulate", "--write"]) == 0
    assert figures.published(doc.read_text(encoding="utf-8"), "simulate") == printed_simulate
    assert figures.main(["--only", "simulate"]) == 0


def test_splice_replaces_only_its_block_and_refuses_a_missing_one(figures):
    """The markers stay; the text around the block is untouched; an unknown block is an error."""
    text = (
        "before\n<!-- begin generated: x (cmd) -->\nold\n<!-- end generated: x -->\nafter\n"
        "<!-- begin generated: y (cmd) -->\nkeep\n<!-- end generated: y -->\n"
    )
    assert figures.splice(text, "x", "new\nlines") == text.replace("old", "new\nlines")
    assert figures.published(text, "y") == "keep"
    with pytest.raises(LookupError):
        figures.splice(text, "z", "anything")
