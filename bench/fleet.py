"""Fleet: one enforcement pass over 10,000 accounts x 20 positions, against the rate-limit bound.

The accounts are spread over ``--brokers`` paper brokers; every raw call takes ``--latency``
seconds (really slept: 20 ms, like a nearby exchange) and each broker admits at most
``--rate`` raw calls per second (brokerguard's per-broker limiter, shared by its accounts).
A compliant account costs two raw calls per pass (positions, then one batched price call), so
no scheduler can finish a pass sooner than ``max over brokers of (2 x accounts) / rate``: the
bound. We build the accounts through :class:`GuardService` (the production wiring: a SQLite
store, shared breakers, the bounded thread pool), run passes, and report the pass time against
the bound and the resident memory the accounts added, per account.

Run: ``.venv/bin/python bench/fleet.py [--accounts 10000] [--positions 20] [--brokers 10]
[--rate 100] [--latency 0.02] [--concurrency 64] [--passes 2]``
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from brokerguard.config import parse_config
from brokerguard.service import GuardService


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def fleet_config(args: argparse.Namespace, store_url: str) -> dict[str, object]:
    symbols = [f"C{i:03d}/USD" for i in range(args.positions)]
    prices = {s: str(10 + i) for i, s in enumerate(symbols)}
    latency = dict.fromkeys(("fetch_positions", "fetch_prices", "fetch_order"), args.latency)
    brokers = {
        f"paper-{b}": {
            "kind": "paper",
            "seed": b,
            "prices": prices,
            "max_calls_per_s": args.rate,
            "burst": 1,
            "faults": {"latency_s": latency},
        }
        for b in range(args.brokers)
    }
    positions = dict.fromkeys(symbols, "1")
    accounts = [
        {
            "id": f"acct-{n:05d}",
            "broker": f"paper-{n % args.brokers}",
            "max_positions": args.positions + 5,
            "positions": positions,
        }
        for n in range(args.accounts)
    ]
    return {
        "store": {"url": store_url},
        "enforcement": {"interval_s": 3600, "max_concurrency": args.concurrency},
        "alerts": [],
        "brokers": brokers,
        "accounts": accounts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--positions", type=int, default=20)
    parser.add_argument("--brokers", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="raw calls/s per broker")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per raw call")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    per_broker = -(-args.accounts // args.brokers)
    bound = 2 * per_broker / args.rate
    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        before = rss_bytes()
        config = parse_config(fleet_config(args, f"sqlite:///{Path(tmp) / 'state.db'}"))
        service = GuardService(config)
        built = time.perf_counter()  # wall-clock-ok: a benchmark
        print(
            f"{args.accounts:,} accounts x {args.positions} positions on {args.brokers} brokers "
            f"({per_broker:,} each), {args.rate:g} calls/s per broker, "
            f"{args.latency * 1000:g} ms per call, {args.concurrency} threads\n"
            f"rate-limit bound for one pass: 2 calls x {per_broker:,} / {args.rate:g} per s "
            f"= {bound:.1f} s\n"
        )
        print("| pass | seconds | vs bound | accounts compliant |")
        print("|---:|---:|---:|---:|")
        for n in range(1, args.passes + 1):
            started = time.perf_counter()  # wall-clock-ok
            results = service.tick()
            seconds = time.perf_counter() - started  # wall-clock-ok
            compliant = sum(1 for r in results.values() if r.get("status") == "compliant")
            print(f"| {n} | {seconds:.1f} | {seconds / bound:.2f}x | {compliant:,} |")
        gc.collect()
        after = rss_bytes()
        del built
        per_account = (after - before) / args.accounts
        print(
            f"\nresident memory added by the fleet: {(after - before) / 2**20:,.0f} MiB, "
            f"{per_account / 1024:.1f} KiB per account (config, broker state, enforcer, gate, "
            "valuator, last results)"
        )
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
