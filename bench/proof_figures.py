"""Regenerate docs/proof.md's figures from the commands the doc names.

Figures typed by hand drift from what the commands print (the incident's seed 0 was published
as 39 positions and 1,784 steps over the cap while the command printed 37 and 1,752). Every
figure between ``<!-- begin generated: NAME -->`` and ``<!-- end generated: NAME -->`` in
docs/proof.md is written here, by running the documented command as a subprocess (the installed
``brokerguard`` script, ``python -m brokerguard.chaos``) and rendering what it prints.

Run:  python bench/proof_figures.py            # check: exit 1 with a diff when the doc differs
      python bench/proof_figures.py --write    # rewrite the generated blocks in place

tests/test_proof_figures.py runs the check. The 5,000-seed chaos run (30 min) is not
regenerated: the doc keeps its published numbers with the command and commit, and the first
20 seeds of each run are a generated block here.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brokerguard.sim.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parents[1]
PROOF = REPO / "docs" / "proof.md"
REGENERATE = "python bench/proof_figures.py --write"
SIMULATE = "brokerguard simulate --scenario {scenario} --seed 0 --json"
CHAOS_SLICE = (
    "python -m brokerguard.chaos --runs 20",
    "python -m brokerguard.chaos --runs 20 --naive",
    "python -m brokerguard.chaos --runs 20 --naive --faults kraken",
)
TIMEOUT_S = 600

# The story each scenario tells, as a template over `simulate --json`'s fields; the same
# template fills the naive and the guarded cell, so the two read side by side.
STORY = {
    "incident": "max {max_positions} positions, {cap_violations} steps over the cap",
    "outage": "{broker_calls_during_outage} calls during the outage, "
    "{fallback_priced_orders} orders sized at a made-up $1.00",
    "no-prices": "{fallback_priced_orders} orders sized at a made-up $1.00",
    "unsettled": "max {max_positions} positions, {cap_violations} steps over the cap, "
    "halts: {halts}",
    "flaky": "{duplicate_orders} duplicated orders, {cap_violations} steps over the cap",
}
FIELDS = (
    "max_positions",
    "cap",
    "cap_violations",
    "orders_sent",
    "fallback_priced_orders",
    "duplicate_orders",
    "halts",
    "broker_calls_during_outage",
)


def _argv(command: str) -> list[str]:
    """The documented command, its program resolved in this interpreter's environment."""
    argv = shlex.split(command)
    bin_dir = Path(sys.executable).parent
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return [str(bin_dir / argv[0]), *argv[1:]]


def run(command: str, *, codes: Sequence[int] = (0,)) -> str:
    """Run a documented command; its stdout. A code it should not exit with is an error."""
    done = subprocess.run(  # noqa: S603 (a documented command of this project)
        _argv(command), capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    if done.returncode not in codes:
        raise RuntimeError(f"{command}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return done.stdout


def _count(value: int) -> str:
    return f"{value:,}"


def render_simulate(results: dict[str, dict[str, dict[str, int]]]) -> str:
    """The scenario tables from each scenario's `simulate --json` output."""
    story = [
        "| scenario | what goes wrong | naive | guarded |",
        "|---|---|---|---|",
    ]
    every = [
        "| scenario | run | " + " | ".join(f.replace("_", " ") for f in FIELDS) + " |",
        "|---|---|" + "---:|" * len(FIELDS),
    ]
    for scenario, runs in results.items():
        cells = {
            name: STORY[scenario].format(**{k: _count(v) for k, v in runs[name].items()})
            for name in ("naive", "guarded")
        }
        story.append(
            f"| `{scenario}` | {SCENARIOS[scenario].description} "
            f"| {cells['naive']} | {cells['guarded']} |"
        )
        every.extend(
            f"| `{scenario}` | {name} | " + " | ".join(_count(runs[name][f]) for f in FIELDS) + " |"
            for name in ("naive", "guarded")
        )
    return "\n".join(
        [
            *story,
            "",
            "Every field of `--json`, for each scenario:",
            "",
            *every,
            "",
            f"Printed by `{SIMULATE.format(scenario='NAME')}`, for each NAME above.",
        ]
    )


def simulate_block() -> str:
    """Run every scenario with seed 0, as the doc states, and render the tables."""
    results: dict[str, dict[str, dict[str, int]]] = {}
    for scenario in SCENARIOS:
        data: Any = json.loads(run(SIMULATE.format(scenario=scenario)))
        results[scenario] = {name: dict(data[name]) for name in ("naive", "guarded")}
    return render_simulate(results)


def chaos_slice_block() -> str:
    """The last line each chaos command prints for the first 20 seeds (exit 1: broken)."""
    lines = ["```console"]
    for command in CHAOS_SLICE:
        summary = run(command, codes=(0, 1)).strip().splitlines()[-1]
        lines.extend([f"$ {command}", summary])
    lines.append("```")
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[], str]] = {
    "simulate": simulate_block,
    "chaos-slice": chaos_slice_block,
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- begin generated: {re.escape(name)} [^\n]*-->\n)(.*?)(<!-- end generated: "
        rf"{re.escape(name)} -->)",
        re.DOTALL,
    )


def published(text: str, name: str) -> str:
    """The block `name` as docs/proof.md publishes it (without its markers)."""
    found = _pattern(name).search(text)
    if found is None:
        raise LookupError(f"docs/proof.md has no generated block {name!r}")
    return found.group(2).removesuffix("\n")


def splice(text: str, name: str, body: str) -> str:
    """`text` with the block `name` replaced by `body`."""
    published(text, name)  # it must exist
    return _pattern(name).sub(lambda m: f"{m.group(1)}{body}\n{m.group(3)}", text, count=1)


def main(argv: Sequence[str] | None = None) -> int:
    """Check (default) or rewrite docs/proof.md's generated blocks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the blocks in place")
    parser.add_argument("--only", choices=sorted(BLOCKS), help="one block (default: all)")
    args = parser.parse_args(argv)
    shown = PROOF.relative_to(REPO) if PROOF.is_relative_to(REPO) else PROOF
    text = PROOF.read_text(encoding="utf-8")
    new = text
    for name in [args.only] if args.only else list(BLOCKS):
        new = splice(new, name, BLOCKS[name]())
    if args.write:
        PROOF.write_text(new, encoding="utf-8")
        print(f"{shown}: {'rewritten' if new != text else 'unchanged'}")
        return 0
    if new == text:
        print(f"{shown}: every generated figure matches its command")
        return 0
    sys.stdout.writelines(
        difflib.unified_diff(
            text.splitlines(keepends=True), new.splitlines(keepends=True), "published", "printed"
        )
    )
    print(f"the published figures differ from the commands: run {REGENERATE}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
