"""The pre-trade gate in process: check_entry and reserve_entry, alone and in a fleet on Redis.

A bot asks the gate before every entry, so its cost sits on the order path. This times the
in-process calls (no HTTP: ``bench/pretrade.py`` measures the API around them) one after the
other on one thread, with the real clock:

- ``check_entry``: a decision, no slot;
- ``reserve_entry``: the whole ``with gate.reserve_entry(symbol)`` block, cancelled inside
  (the slot is taken and given back, so the cap never fills).

Layouts:

- ``embedded``: the embedded default's store (SQLite in a temporary directory, its halt and
  pause cache) and a paper broker without a fault plan (the plan's latency and errors are the
  broker's cost, not the gate's); the breakers are in-process;
- ``fleet``: the same, plus the fleet's shared circuits and slots on Redis
  (``SharedCircuitBreaker`` and ``SharedSlots`` on one ``RedisCoordinator``): one script checks
  both circuits and takes the slot, the release is the second round trip;
- ``fleet, long way``: the fleet as it decided before the single script (the slots on another
  coordinator, so the gate reads both circuits and the read circuit's health separately): the
  comparison in the same run.

Round trips per call are counted on the coordinator's client. Positions and open orders are
fetched once before timing; they stay fresh for the run (``max_position_age`` 30 s).

The layouts run in turn, ``--repeat`` times (default 3), so a busy machine slows them all
alike; each cell is the median over the repetitions.

Run:  python bench/gate.py [--calls 20000] [--repeat 3] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brokerguard import BrokerCircuitBreaker
from brokerguard.brokers import PaperBroker
from brokerguard.risk import TradingGate
from brokerguard.store import open_store

PRICES = {f"C{i:02d}/USD": str(i) for i in range(1, 21)}
HELD = {"C01/USD": "1", "C02/USD": "1"}


class RoundTrips:
    """Count the round trips (commands and scripts) of the Redis clients of a layout."""

    def __init__(self, *clients: Any) -> None:
        self.count = 0
        for client in clients:
            self._count(client)

    def _count(self, client: Any) -> None:
        command = client.execute_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return command(*args, **kwargs)

        client.execute_command = counted  # the instance's attribute shadows the method


def percentile(samples: list[int], fraction: float) -> float:
    """The `fraction` percentile of `samples` (nearest rank, ns), in microseconds."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index] / 1000


def timed(calls: int, action: Callable[[int], object]) -> tuple[list[int], float]:
    """Run `action` `calls` times after a warm-up; (each call's ns, calls per second)."""
    for n in range(min(calls // 10, 500)):
        action(n)
    samples = []
    clock = time.perf_counter_ns
    started = clock()
    for n in range(calls):
        before = clock()
        action(n)
        samples.append(clock() - before)
    elapsed = (clock() - started) / 1e9
    return samples, calls / elapsed


def build(
    layout: str, data: str, redis_url: str, namespace: str
) -> tuple[TradingGate, RoundTrips | None, list[Callable[[], None]]]:
    """A gate of `layout` with a fresh snapshot; the round-trip counter in a fleet; closers."""
    Path(data).mkdir(parents=True, exist_ok=True)
    store = open_store(f"sqlite:///{data}/state-{layout.replace(' ', '-').replace(',', '')}.db")
    trips = None
    slots = None
    closers: list[Callable[[], None]] = [store.close]
    if layout == "embedded":
        read = BrokerCircuitBreaker("paper", scope="read")
        write = BrokerCircuitBreaker("paper", scope="write")
    else:
        from brokerguard.coordination import (  # noqa: PLC0415 (the fleet layouts only)
            RedisCoordinator,
            SharedCircuitBreaker,
            SharedSlots,
        )

        coordinator = RedisCoordinator(redis_url, namespace=namespace)
        read = SharedCircuitBreaker("paper", scope="read", coordinator=coordinator)
        write = SharedCircuitBreaker("paper", scope="write", coordinator=coordinator)
        # The long way: slots on another coordinator (same Redis), so no single script.
        other = RedisCoordinator(redis_url, namespace=namespace)
        slots = SharedSlots(coordinator if layout == "fleet" else other)
        trips = RoundTrips(coordinator.client, other.client)
        closers += [coordinator.close, other.close]
    broker = PaperBroker(
        "paper",
        prices=PRICES,
        positions=HELD,
        settle_delay=0,
        volatility=0,
        read_breaker=read,
        write_breaker=write,
    )
    gate = TradingGate(broker, 8, store=store, slots=slots)
    broker.get_open_orders()
    broker.get_positions()
    return gate, trips, closers


def measure(
    layout: str, calls: int, data: str, redis_url: str, namespace: str
) -> list[tuple[Any, ...]]:
    """Time check_entry and reserve_entry in `layout`; one row per call."""
    gate, trips, closers = build(layout, data, redis_url, f"{namespace}:{uuid.uuid4().hex[:8]}")
    symbols = [s for s in PRICES if s not in HELD]

    def check(n: int) -> None:
        if not gate.check_entry(symbols[n % len(symbols)]):
            raise SystemExit(f"{layout}: check_entry refused: unexpected")

    def reserve(n: int) -> None:
        with gate.reserve_entry(symbols[n % len(symbols)]) as reservation:
            reservation.cancel()

    rows = []
    actions: list[tuple[str, Callable[[int], object]]] = [
        ("check_entry", check),
        ("reserve_entry", reserve),
    ]
    if layout == "fleet":  # what one round trip costs here and now, for scale
        client = gate.broker.read_breaker.coordinator.client  # type: ignore[attr-defined]
        actions.insert(0, ("Redis PING (one round trip)", lambda _n: client.ping()))
    for name, action in actions:
        before = trips.count if trips is not None else 0
        samples, rate = timed(calls, action)
        warmup = min(calls // 10, 500)
        per_call = (trips.count - before) / (calls + warmup) if trips is not None else 0.0
        rows.append((layout, name, calls, samples, rate, per_call))
    for close in closers:
        close()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per row")
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/0", help="the fleet's Redis (fleet rows)"
    )
    parser.add_argument(
        "--namespace", default="bench-gate", help="prefix of the fleet's keys (they expire)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of every layout (median)")
    parser.add_argument("--no-fleet", action="store_true", help="only the embedded layout")
    args = parser.parse_args(argv)
    quiet = logging.getLogger("brokerguard")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the fault plan's warnings are expected; restored below
    try:
        return _run(args)
    finally:
        quiet.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    layouts = ["embedded"] if args.no_fleet else ["embedded", "fleet", "fleet, long way"]
    fleet_calls = max(1, args.calls // 4)  # a Redis round trip is ~100 us: fewer calls suffice
    cells: dict[tuple[str, str], list[tuple[int, float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as data:
        for run in range(args.repeat):
            for layout in layouts:
                calls = args.calls if layout == "embedded" else fleet_calls
                for _, name, n, samples, rate, per_call in measure(
                    layout, calls, f"{data}/{run}", args.redis, args.namespace
                ):
                    cells.setdefault((layout, name), []).append(
                        (n, percentile(samples, 0.5), percentile(samples, 0.99), rate, per_call)
                    )
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"one thread, real clock; median of {args.repeat} runs; load average "
        f"{os.getloadavg()[0]:.1f} at the end\n\n"
        "| layout | call | calls | p50 us | p99 us | calls/s | Redis round trips per call |\n"
        "|---|---|---:|---:|---:|---:|---:|"
    )
    for (layout, name), runs in cells.items():
        calls = runs[0][0]
        p50, p99, rate, per_call = (statistics.median(r[i] for r in runs) for i in range(1, 5))
        print(
            f"| {layout} | {name} | {calls:,} | {p50:.1f} | {p99:.1f} | {rate:,.0f} | "
            f"{per_call:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
