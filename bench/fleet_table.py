"""The Fleet table of docs/benchmarks.md: bench/fleet.py over accounts x latency x store x layout.

Each row is one ``bench/fleet.py`` process (3 passes; the row is the last, the steady state);
the rows run one after the other, so run it on a machine doing nothing else (the CPU figures
are the process's own, the seconds are wall time). About 15 minutes.

Run: ``.venv/bin/python bench/fleet_table.py [--quick]`` (``--quick``: the 1,000-account rows
only, about 2 minutes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

FLEET = Path(__file__).with_name("fleet.py")

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


def run(row: tuple[int, float, str, str, bool, int]) -> str:
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
        "3",
        *([] if ahead else ["--no-reads-ahead"]),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout  # noqa: S603
    bound = next(line for line in out.splitlines() if line.startswith("bound"))
    last = next(line for line in out.splitlines() if line.startswith("| 3 |"))
    cells = [c.strip() for c in last.strip("|").split("|")]
    _, seconds, vs_bound, cpu_s, vs_floor, cpu_us, _compliant, unenforced, _prices = cells
    bound_s = bound.rsplit(":", 1)[1].strip()
    return (
        f"| {accounts:,} | {latency * 1000:g} ms | "
        f"{'SQLite' if store == 'sqlite' else 'PostgreSQL'} | {layout} | "
        f"{'ahead' if ahead else f'{threads} threads'} | {seconds} | {bound_s} | {vs_bound} "
        f"| {cpu_s} | {vs_floor} | {cpu_us} | {unenforced} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 1,000-account rows only")
    args = parser.parse_args(argv)
    rows = [r for r in ROWS if r[0] == 1_000] if args.quick else ROWS
    print(
        "| accounts | latency | store | layout | reads | pass seconds | bound | vs bound "
        "| CPU s | vs floor | CPU µs / account | unenforced |"
    )
    print("|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(run(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
