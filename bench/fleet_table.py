"""The Fleet table of docs/benchmarks.md: bench/fleet.py over accounts x latency x store x layout.

Each row is one ``bench/fleet.py`` process of ``PASSES`` passes: the first (which also writes
every account's believed holdings once) is shown apart, and the row gives the median of the
others (the steady state) with their CPU range, and the accounts left unenforced in any pass.
The rows run one after the other, so run it on a machine doing nothing else (the CPU figures
are the process's own, the seconds are wall time). About 12 minutes.

Run: ``.venv/bin/python bench/fleet_table.py [--quick]`` (``--quick``: the 1,000-account rows
only, about 2 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

FLEET = Path(__file__).with_name("fleet.py")
PASSES = 5

# accounts, latency (s), store, layout, reads ahead, threads
ROWS: list[tuple[int, float, str, str, bool, int]] = [
    (10_000, 0.02, "sqlite", "shared", True, 32),
    (10_000, 0.02, "postgresql", "shared", True, 32),
    (10_000, 0.02, "sqlite", "per-key", True, 32),
    (10_000, 0.02, "postgresql", "per-key", True, 32),
    (10_000, 0.1, "sqlite", "shared", True, 32),
    (10_000, 0.1, "sqlite", "per-key", True, 32),
    (1_000, 0.02, "sqlite", "shared", True, 32),
    (1_000, 0.1, "sqlite", "shared", True, 32),
    (1_000, 0.02, "sqlite", "per-key", True, 32),
    (1_000, 0.1, "sqlite", "per-key", True, 32),
    (1_000, 0.02, "postgresql", "shared", True, 32),
    (1_000, 0.02, "postgresql", "per-key", True, 32),
    # The same without reads ahead: a thread per waiting account.
    (10_000, 0.02, "sqlite", "shared", False, 64),
    (10_000, 0.02, "sqlite", "per-key", False, 64),
]


def run(row: tuple[int, float, str, str, bool, int], passes: int = PASSES) -> str:
    accounts, latency, store, layout, ahead, threads = row
    command = [
        sys.executable,
        str(FLEET),
        "--accounts",
        str(accounts),
        "--latency",
        str(latency),
        "--store",
        store,
        "--layout",
        layout,
        "--concurrency",
        str(threads),
        "--passes",
        str(passes),
        *([] if ahead else ["--no-reads-ahead"]),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout  # noqa: S603
    bound_line = next(line for line in out.splitlines() if line.startswith("bound"))
    bound = float(bound_line.rsplit(":", 1)[1].strip().removesuffix(" s"))
    passes_out = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ]
    first, steady = passes_out[0], passes_out[1:] or passes_out
    seconds = statistics.median(float(p[1]) for p in steady)
    cpu_s = statistics.median(float(p[3]) for p in steady)
    cpu_us = [int(p[5].replace(",", "")) for p in steady]
    unenforced = max(int(p[7].replace(",", "")) for p in passes_out)
    return (
        f"| {accounts:,} | {latency * 1000:g} ms | "
        f"{'SQLite' if store == 'sqlite' else 'PostgreSQL'} | {layout} | "
        f"{'ahead' if ahead else f'{threads} threads'} | {seconds:.2f} | {bound:.2f} s "
        f"| {seconds / bound:.2f}x | {seconds / max(bound, cpu_s):.2f}x "
        f"| {statistics.median(cpu_us):.0f} | {min(cpu_us)}-{max(cpu_us)} | {first[5]} "
        f"| {unenforced} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 1,000-account rows only")
    args = parser.parse_args(argv)
    rows = [r for r in ROWS if r[0] == 1_000] if args.quick else ROWS
    print(
        "| accounts | latency | store | layout | reads | pass seconds | bound | vs bound "
        "| vs floor | CPU µs / account | range | first pass µs | unenforced |"
    )
    print("|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(run(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
