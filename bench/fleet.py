"""Fleet: one enforcement pass over 10,000 accounts x 20 positions, against the rate-limit bound.

The accounts trade on ``--brokers`` paper exchanges (venues); every raw call takes
``--latency`` seconds (really slept: 20 ms, like a nearby exchange). Two layouts:

- ``shared``: one broker entry (one API key) per venue, its accounts sharing its limiter of
  ``--rate`` raw calls per second (bench/fleet.py's original layout);
- ``per-key``: one broker entry (one API key, one limiter of ``--rate`` calls/s) per account,
  the entries of a venue sharing its outage detection and price answers (``venue = ...``).

A compliant account costs one positions call per pass; its venue's prices are fetched once
per pass (:mod:`brokerguard.brokers.prices`, once more each ``share_prices_s``). No scheduler
can finish a pass sooner than the rate-limit bound (shared: ``accounts per venue / rate``; per
key: one call per key at ``rate``, i.e. ``1 / rate``) nor sooner than one round trip: the
bound is the larger of the two. Accounts are built through :class:`GuardService` (the
production wiring: the store, shared breakers, the bounded thread pool); we report the pass
time against the bound, the process CPU per account, and the accounts the pass left
unenforced (must be 0).

A pass reads ahead by default (:mod:`brokerguard.risk.reads`: every account's read in flight
on one event loop, then the accounts stepped); ``--no-reads-ahead`` measures a thread per
waiting account instead. One interpreter runs Python on one core at a time, so a pass can
never take less wall time than the CPU time it spends either: the table also gives the pass's
CPU seconds and the ratio to the *floor*, the larger of the bound and that CPU time. Where the
floor is the CPU (the one-key-per-account layout, whose network bound is one round trip), the
pass is as fast as its CPU allows when that ratio is near 1.

Run: ``.venv/bin/python bench/fleet.py [--accounts 10000] [--positions 20] [--brokers 10]
[--rate 100] [--latency 0.02] [--concurrency 64] [--passes 2] [--layout shared|per-key]
[--store sqlite|postgresql] [--no-reads-ahead] [--max-in-flight N]``
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
from brokerguard.service import GuardService, tune_gc


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


PG_URL = os.environ.get("BROKERGUARD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def fleet_config(args: argparse.Namespace, store_url: str) -> dict[str, object]:
    symbols = [f"C{i:03d}/USD" for i in range(args.positions)]
    prices = {s: str(10 + i) for i, s in enumerate(symbols)}
    latency = dict.fromkeys(("fetch_positions", "fetch_prices", "fetch_order"), args.latency)
    layout = getattr(args, "layout", "shared")

    def venue(b: int, **extra: object) -> dict[str, object]:
        return {
            "kind": "paper",
            "seed": b,
            "prices": prices,
            "max_calls_per_s": args.rate,
            "burst": 1,
            "faults": {"latency_s": latency},
            **extra,
        }

    if layout == "per-key":
        brokers = {
            f"key-{n:05d}": venue(n % args.brokers, venue=f"paper-{n % args.brokers}")
            for n in range(args.accounts)
        }
    else:
        brokers = {f"paper-{b}": venue(b) for b in range(args.brokers)}
    positions = dict.fromkeys(symbols, "1")
    accounts = [
        {
            "id": f"acct-{n:05d}",
            "broker": f"key-{n:05d}" if layout == "per-key" else f"paper-{n % args.brokers}",
            "max_positions": args.positions + 5,
            "positions": positions,
        }
        for n in range(args.accounts)
    ]
    return {
        "store": {"url": store_url},
        "enforcement": {
            "interval_s": 3600,
            "max_concurrency": args.concurrency,
            "reads_ahead": getattr(args, "reads_ahead", True),
            **(
                {"max_in_flight": args.max_in_flight}
                if getattr(args, "max_in_flight", None)
                else {}
            ),
        },
        "alerts": [],
        "brokers": brokers,
        "accounts": accounts,
    }


def bound_seconds(args: argparse.Namespace) -> float:
    """The fastest any scheduler could finish a pass: the rate limit, or one round trip."""
    per_venue = -(-args.accounts // args.brokers)
    if args.layout == "per-key":
        return 2 * args.latency  # each key's one call, then the venue's prices: one round trip
    # One positions call per account through the venue's one key: the last is admitted after
    # per_venue / rate seconds and answers one latency later.
    return per_venue / args.rate + args.latency


def _store_url(args: argparse.Namespace, tmp: str) -> str:
    if args.store == "sqlite":
        return f"sqlite:///{Path(tmp) / 'state.db'}"
    import psycopg  # noqa: PLC0415 (only this layout needs it)

    schema = f"bg_bench_{os.getpid()}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.execute(f'CREATE SCHEMA "{schema}"')
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


def _drop_store(args: argparse.Namespace) -> None:
    if args.store == "postgresql":
        import psycopg  # noqa: PLC0415

        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "bg_bench_{os.getpid()}" CASCADE')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--positions", type=int, default=20)
    parser.add_argument("--brokers", type=int, default=10, help="venues (paper exchanges)")
    parser.add_argument("--rate", type=float, default=100.0, help="raw calls/s per API key")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per raw call")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--layout", choices=("shared", "per-key"), default="shared")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--default-gc",
        dest="tuned_gc",
        action="store_false",
        help="CPython's collector thresholds (not the service's, brokerguard.service.tune_gc)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="position reads waiting at once when reading ahead (the service's default: 512)",
    )
    parser.add_argument(
        "--no-reads-ahead",
        dest="reads_ahead",
        action="store_false",
        help="a thread per waiting account (the pool) instead of reads ahead on one loop",
    )
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    bound = bound_seconds(args)
    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        before = rss_bytes()
        config = parse_config(fleet_config(args, _store_url(args, tmp)))
        service = GuardService(config)
        # As `brokerguard run` does once the service is built (put back after: the smoke
        # tests run this in the test process).
        restore_gc = tune_gc() if args.tuned_gc else (lambda: None)
        print(
            f"{args.accounts:,} accounts x {args.positions} positions on {args.brokers} venues, "
            f"layout {args.layout}, store {args.store}, {args.rate:g} calls/s per API key, "
            f"{args.latency * 1000:g} ms per call, {args.concurrency} threads, "
            f"reads ahead {'on' if args.reads_ahead else 'off'}, "
            f"collector {'tuned' if args.tuned_gc else 'default'}\n"
            f"bound for one pass (rate limit or one round trip of two calls): {bound:.2f} s\n"
        )
        print(
            "| pass | seconds | vs bound | CPU s | vs floor | CPU µs per account "
            "| accounts compliant | unenforced | price calls |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        try:
            for n in range(1, args.passes + 1):
                fetches = sum(p.fetches for p in service.prices.values())
                cpu = time.process_time()  # wall-clock-ok: a benchmark
                started = time.perf_counter()  # wall-clock-ok
                results = service.tick()
                seconds = time.perf_counter() - started  # wall-clock-ok
                cpu_s = time.process_time() - cpu  # wall-clock-ok
                cpu_us = cpu_s / args.accounts * 1e6
                compliant = sum(1 for r in results.values() if r.get("status") == "compliant")
                unenforced = args.accounts - sum(
                    1 for r in results.values() if r.get("status") in {"compliant", "enforced"}
                )
                price_calls = sum(p.fetches for p in service.prices.values()) - fetches
                ratio = seconds / bound if bound else float("inf")
                floor = seconds / max(bound, cpu_s)
                print(
                    f"| {n} | {seconds:.2f} | {ratio:.2f}x | {cpu_s:.2f} | {floor:.2f}x "
                    f"| {cpu_us:.0f} | {compliant:,} | {unenforced:,} | {price_calls:,} |"
                )
            gc.collect()
            after = rss_bytes()
            per_account = (after - before) / args.accounts
            print(
                f"\nresident memory added by the fleet: {(after - before) / 2**20:,.0f} MiB, "
                f"{per_account / 1024:.1f} KiB per account (config, broker state, enforcer, "
                "gate, valuator, last results)"
            )
        finally:
            service.close()
            restore_gc()
            _drop_store(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
