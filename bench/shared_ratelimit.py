"""A fleet's rate budget per API key: N worker processes, local limiters against the shared one.

Part 1, the price per call on the loopback Redis: a local :class:`RateLimiter` acquire, a
Redis PING (the floor), and a :class:`SharedRateLimiter` acquire (one Lua script), all with a
budget too large to ever wait.

Part 2, the budget: N worker *processes* call as fast as their limiter lets them for a few
seconds, all on one API key configured at ``rate`` calls/s with ``burst``. With a local
limiter each (what a fleet had before), the venue sees about N times the budget; with the
shared bucket it sees at most ``burst + rate x seconds``. Calls are counted by the times they
were made (wall clock, real sleeping: this is a benchmark, not a test).

Run: ``.venv/bin/python bench/shared_ratelimit.py [--workers 4] [--seconds 5] [--rate 20]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import uuid
from collections.abc import Callable

from brokerguard.coordination import RedisCoordinator, SharedRateLimiter, bucket_fingerprint
from brokerguard.resilience import RateLimiter

KEY = "bench-api-key-not-a-secret"


def per_call_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Best-of-`repeats` mean microseconds per call."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()  # wall-clock-ok: a benchmark
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)  # wall-clock-ok
    return min(runs)


def worker(job: tuple[str, str, str, float, int, float, float]) -> list[float]:
    """One worker process: call as often as the limiter allows until `end`; return call times."""
    kind, url, namespace, rate, burst, start, end = job
    limiter: RateLimiter
    if kind == "shared":
        coordinator = RedisCoordinator(url, namespace=namespace, timeout=2)
        limiter = SharedRateLimiter(
            coordinator, bucket_fingerprint("bench", KEY), rate, burst, max_wait_s=60
        )
    else:
        limiter = RateLimiter(rate, burst)
    late = time.time() > start  # wall-clock-ok
    while time.time() < start:  # wall-clock-ok: every process starts together
        time.sleep(0.001)  # wall-clock-ok
    if late:
        print(f"a worker started {time.time() - start:.2f}s late: raise --warmup")  # wall-clock-ok
    calls = []
    while True:
        limiter.acquire()
        now = time.time()  # wall-clock-ok
        if now >= end:
            return calls
        if now >= start:  # a process that started late wasted nothing: the budget waits
            calls.append(now)


def fleet_calls(kind: str, args: argparse.Namespace, namespace: str) -> tuple[int, float]:
    """Calls the whole fleet made in the window, and the worst second-by-second peak."""
    start = time.time() + args.warmup  # wall-clock-ok: time for the processes to start
    end = start + args.seconds
    jobs = [(kind, args.redis, namespace, args.rate, args.burst, start, end)] * args.workers
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        times = sorted(t for calls in pool.map(worker, jobs) for t in calls)
    peak = max(
        sum(1 for t in times if s <= t < s + 1.0) for s in times if s + 1.0 <= end
    )  # the busiest one-second window
    return len(times), float(peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds to start processes")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    namespace = f"bg-bench-{uuid.uuid4().hex[:8]}"
    coordinator = RedisCoordinator(args.redis, namespace=namespace, timeout=2)
    try:
        local = RateLimiter(1e9, 1000)
        shared = SharedRateLimiter(coordinator, bucket_fingerprint("bench", "per-call"), 1e9, 1000)
        print(f"per call, best of 5 x {args.calls} (us):")
        for label, fn in (
            ("local RateLimiter.acquire (no wait)", local.acquire),
            ("Redis PING round trip (the floor)", coordinator.ping),
            ("SharedRateLimiter.acquire (no wait)", shared.acquire),
        ):
            print(f"  {label:<40} {per_call_us(fn, args.calls):8.1f}")
        bound = args.burst + args.rate * args.seconds
        print(
            f"\n{args.workers} worker processes on one key, {args.rate:g} calls/s, burst "
            f"{args.burst}, {args.seconds:g} s: the budget is {bound:g} calls "
            f"(peak second: {args.burst + args.rate:g})"
        )
        for kind in ("local", "shared"):
            total, peak = fleet_calls(kind, args, namespace)
            print(
                f"  {kind:<7} limiter per worker: {total:5d} calls ({total / bound:.2f}x the "
                f"budget), busiest second {peak:g}"
            )
    finally:
        keys = list(coordinator.client.scan_iter(match=f"{namespace}:*"))
        if keys:
            coordinator.client.delete(*keys)
        coordinator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
