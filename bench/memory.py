"""Memory over a long run: a 24-hour simulated run must stay flat (within 10 %) after warm-up.

Two worlds, both driven by :meth:`GuardService.run` (the loop ``brokerguard run`` runs) on a
:class:`~brokerguard.testing.FakeClock`, so a simulated day takes minutes and never sleeps:

- ``embedded``: the embedded default (``brokerguard run`` without a config): a paper broker with
  its fault plan (errors, outages, rate limits, a NaN price), SQLite, two accounts and the demo
  strategy that tries to open a position every 2 s (one try in seven bypasses the gate, so the
  enforcer really sells);
- ``fleet``: ``--accounts`` compliant accounts (default 1,000) over ``--brokers`` paper brokers,
  SQLite, an enforcement pass every ``--interval`` simulated seconds (the cheaper layout of
  ``bench/fleet.py``: no latency, no rate limit, so a pass costs CPU only).

Every ``--sample`` simulated seconds the run is paused (on the service's own loop thread),
garbage is collected, and the Python heap (``tracemalloc``, exact and immune to allocator
fragmentation) and the resident set size are read. The verdict compares the heap after
``--warmup`` with its end and its peak: flat means ``end / warm`` and ``peak / warm`` within
1.10. ``--top N`` prints the N source lines whose allocations grew most between the warm-up
sample and the end: where to look when a run is not flat.

Run: ``.venv/bin/python bench/memory.py [--world embedded|fleet|both] [--hours 24]
[--accounts 1000] [--brokers 10] [--interval 300] [--sample 3600] [--warmup 7200] [--top 0]``
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from brokerguard.config import parse_config
from brokerguard.service import GuardService, embedded_default_config, tune_gc
from brokerguard.testing import FakeClock

MIB = 2**20


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class SteppingClock(FakeClock):
    """A FakeClock that calls `on_sleep` after each sleep of the thread that runs the service.

    FakeClock records every sleep (what a unit test asserts on); over a simulated day that list
    would be the largest thing in the process, so this clock does not keep it.
    """

    __slots__ = ("_loop_thread", "on_sleep")

    def __init__(self, start: float) -> None:
        super().__init__(start=start)
        self.on_sleep: Callable[[], None] = lambda: None
        self._loop_thread: int | None = None

    def bind_to_current_thread(self) -> None:
        """Only sleeps of this thread (the service loop) call `on_sleep`; workers just advance."""
        self._loop_thread = threading.get_ident()

    def sleep(self, seconds: float) -> None:
        """Advance by `seconds` (not recorded); on the loop thread, then call `on_sleep`."""
        self.advance(seconds)
        if threading.get_ident() == self._loop_thread:
            self.on_sleep()

    async def asleep(self, seconds: float) -> None:
        """FakeClock's async sleep, not recorded either (reads ahead race one per read)."""
        try:
            await super().asleep(seconds)
        finally:
            self.sleeps.clear()


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading: simulated seconds since the start, heap and resident set in bytes."""

    at_s: float
    heap: int
    rss: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The run's summary: the heap at warm-up, end and peak, and whether it stayed flat."""

    world: str
    warm: Sample
    end: Sample
    peak_heap: int
    peak_rss: int
    passes: int
    wall_s: float

    @property
    def end_ratio(self) -> float:
        """Heap at the end over heap after warm-up."""
        return self.end.heap / self.warm.heap

    @property
    def peak_ratio(self) -> float:
        """Peak heap after warm-up over heap after warm-up."""
        return self.peak_heap / self.warm.heap

    @property
    def flat(self) -> bool:
        """Within 10 % either way (the target of issue 16)."""
        return 0.9 <= self.end_ratio <= 1.1 and self.peak_ratio <= 1.1


def embedded_service(data_dir: Path, clock: FakeClock) -> tuple[GuardService, bool]:
    """The embedded default, as ``brokerguard run`` builds it (with the demo strategy)."""
    return GuardService(embedded_default_config(data_dir), clock=clock), True


def fleet_service(
    data_dir: Path, clock: FakeClock, *, accounts: int, brokers: int, interval: float
) -> tuple[GuardService, bool]:
    """`accounts` compliant accounts over `brokers` paper brokers, one pass per `interval`."""
    symbols = [f"C{i:03d}/USD" for i in range(5)]
    prices = {s: str(10 + i) for i, s in enumerate(symbols)}
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{data_dir / 'state.db'}"},
            "enforcement": {"interval_s": interval, "max_concurrency": 8},
            "alerts": [],
            "brokers": {
                f"paper-{b}": {"kind": "paper", "seed": b, "prices": prices} for b in range(brokers)
            },
            "accounts": [
                {
                    "id": f"acct-{n:05d}",
                    "broker": f"paper-{n % brokers}",
                    "max_positions": len(symbols) + 2,
                    "positions": dict.fromkeys(symbols, "1"),
                }
                for n in range(accounts)
            ],
        }
    )
    return GuardService(config, clock=clock), False


def run_world(
    world: str,
    *,
    hours: float,
    sample_s: float,
    warmup_s: float,
    accounts: int,
    brokers: int,
    interval: float,
    top: int,
) -> tuple[Verdict, list[Sample]]:
    """Run one world for `hours` simulated hours; return its verdict and every sample."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        return _run_world(
            world,
            hours=hours,
            sample_s=sample_s,
            warmup_s=warmup_s,
            accounts=accounts,
            brokers=brokers,
            interval=interval,
            top=top,
        )
    finally:
        if not tracing:
            tracemalloc.stop()


def _run_world(
    world: str,
    *,
    hours: float,
    sample_s: float,
    warmup_s: float,
    accounts: int,
    brokers: int,
    interval: float,
    top: int,
) -> tuple[Verdict, list[Sample]]:
    clock = SteppingClock(start=1_000_000.0)
    started = clock.monotonic()
    end_at = started + hours * 3600
    samples: list[Sample] = []
    snapshots: dict[str, tracemalloc.Snapshot] = {}
    next_sample = started  # the first sample is taken at the first sleep
    with tempfile.TemporaryDirectory() as tmp:
        if world == "embedded":
            service, demo = embedded_service(Path(tmp), clock)
        else:
            service, demo = fleet_service(
                Path(tmp), clock, accounts=accounts, brokers=brokers, interval=interval
            )

        def on_sleep() -> None:
            nonlocal next_sample
            now = clock.monotonic()
            if now < next_sample and now < end_at:
                return
            gc.collect()
            heap, _ = tracemalloc.get_traced_memory()
            samples.append(Sample(now - started, heap, rss_bytes()))
            if top and not snapshots.get("warm") and now - started >= warmup_s:
                snapshots["warm"] = tracemalloc.take_snapshot()
            next_sample = now + sample_s
            if now >= end_at:
                if top:
                    snapshots["end"] = tracemalloc.take_snapshot()
                service.stop()

        clock.on_sleep = on_sleep
        clock.bind_to_current_thread()
        restore_gc = tune_gc()  # as `brokerguard run` does once the service is built
        wall = time.perf_counter()  # wall-clock-ok: how long the bench itself took
        try:
            service.run(demo_strategy=demo)
        finally:
            restore_gc()
        wall = time.perf_counter() - wall  # wall-clock-ok
        passes = service.exits.ticks
        service.close()
    warm = next((s for s in samples if s.at_s >= warmup_s), samples[-1])
    after = [s for s in samples if s.at_s >= warm.at_s]
    verdict = Verdict(
        world=world,
        warm=warm,
        end=samples[-1],
        peak_heap=max(s.heap for s in after),
        peak_rss=max(s.rss for s in after),
        passes=passes,
        wall_s=wall,
    )
    if top and "warm" in snapshots and "end" in snapshots:
        print(f"\ngrowth in {world} between warm-up and end (top {top} lines):")
        for stat in snapshots["end"].compare_to(snapshots["warm"], "lineno")[:top]:
            print(f"  {stat}")
    return verdict, samples


def markdown(verdicts: list[Verdict], samples: dict[str, list[Sample]], hours: float) -> str:
    """The published tables: the summary, then each world's heap hour by hour."""
    header = (
        "| world | simulated | passes | heap after warm-up | heap at end | peak heap "
        "| end / warm | peak / warm | RSS after warm-up | RSS at end | flat (±10 %) | wall |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    lines += [
        f"| {v.world} | {hours:g} h | {v.passes:,} | {v.warm.heap / MIB:.1f} MiB "
        f"| {v.end.heap / MIB:.1f} MiB | {v.peak_heap / MIB:.1f} MiB | {v.end_ratio:.3f} "
        f"| {v.peak_ratio:.3f} | {v.warm.rss / MIB:.0f} MiB | {v.end.rss / MIB:.0f} MiB "
        f"| {'yes' if v.flat else 'NO'} | {v.wall_s:.0f} s |"
        for v in verdicts
    ]
    for world, rows in samples.items():
        lines += ["", f"{world}: heap by simulated hour", "", "| hour | heap | RSS |"]
        lines.append("|---:|---:|---:|")
        lines += [
            f"| {s.at_s / 3600:.1f} | {s.heap / MIB:.2f} MiB | {s.rss / MIB:.0f} MiB |"
            for s in rows
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=("embedded", "fleet", "both"), default="both")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours")
    parser.add_argument("--sample", type=float, default=3600.0, help="simulated s per sample")
    parser.add_argument("--warmup", type=float, default=7200.0, help="simulated s of warm-up")
    parser.add_argument("--accounts", type=int, default=1000, help="fleet accounts")
    parser.add_argument("--brokers", type=int, default=10, help="fleet paper brokers")
    parser.add_argument("--interval", type=float, default=300.0, help="fleet pass interval, s")
    parser.add_argument("--top", type=int, default=0, help="print the N lines that grew most")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the fault plan makes the service log a lot
    worlds = ["embedded", "fleet"] if args.world == "both" else [args.world]
    verdicts, samples = [], {}
    try:
        for world in worlds:
            verdict, rows = run_world(
                world,
                hours=args.hours,
                sample_s=args.sample,
                warmup_s=args.warmup,
                accounts=args.accounts,
                brokers=args.brokers,
                interval=args.interval,
                top=args.top,
            )
            verdicts.append(verdict)
            samples[world] = rows
    finally:
        logging.disable(logging.NOTSET)
    print(markdown(verdicts, samples, args.hours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
