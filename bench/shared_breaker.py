"""The fleet's price per call: a breaker whose state lives in Redis, against a local one.

Every call through a :class:`SharedCircuitBreaker` runs one Lua script on Redis before it
starts (and one more after a failure, or after a success that ends a failure streak). This
measures, on the loopback Redis, the cost per call of: a local breaker (closed), the shared
breaker (closed, success), the shared breaker rejecting (open), a bare Redis PING for the floor,
and one request to the Kraken emulator through ccxt for scale (what a broker call costs before
any network distance).

Run: ``.venv/bin/python bench/shared_breaker.py [--calls 5000] [--redis redis://127.0.0.1:6379/0]``
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from collections.abc import Callable

import ccxt

from brokerguard import BrokerCircuitBreaker
from brokerguard.coordination import RedisCoordinator, SharedCircuitBreaker
from brokerguard.errors import CircuitOpenError
from brokerguard.sim.kraken import running_kraken


def per_call_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Best-of-`repeats` mean microseconds per call."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()  # wall-clock-ok: a benchmark
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)  # wall-clock-ok
    return min(runs)


def rejected(breaker: SharedCircuitBreaker) -> Callable[[], None]:
    def attempt() -> None:
        with contextlib.suppress(CircuitOpenError):
            breaker.call(lambda: None)

    return attempt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    namespace = f"bg-bench-{uuid.uuid4().hex[:8]}"
    coordinator = RedisCoordinator(args.redis, namespace=namespace, timeout=2)
    try:
        local = BrokerCircuitBreaker("bench", scope="local")
        closed = SharedCircuitBreaker("bench", scope="closed", coordinator=coordinator)
        opened = SharedCircuitBreaker("bench", scope="open", coordinator=coordinator)
        opened.force_open("benchmark: always open")
        rows = [
            ("local breaker, closed, success", per_call_us(lambda: local.call(int), args.calls)),
            ("Redis PING round trip (the floor)", per_call_us(coordinator.ping, args.calls)),
            ("shared breaker, closed, success", per_call_us(lambda: closed.call(int), args.calls)),
            ("shared breaker, open, rejection", per_call_us(rejected(opened), args.calls)),
        ]
        with running_kraken() as kraken:
            exchange = ccxt.kraken({"enableRateLimit": False})
            exchange.urls["api"] = {"public": kraken.url, "private": kraken.url}
            rows.append(
                (
                    "one Kraken-emulator request through ccxt (fetch_time)",
                    per_call_us(exchange.fetch_time, max(200, args.calls // 10)),
                )
            )
    finally:
        keys = list(coordinator._redis.scan_iter(match=f"{namespace}:*"))  # noqa: SLF001
        if keys:
            coordinator._redis.delete(*keys)  # noqa: SLF001
        coordinator.close()
    base = rows[0][1]
    print(f"{args.calls:,} calls per measurement, best of 5, loopback Redis\n")
    print("| path | µs per call | added over the local breaker |")
    print("|---|---:|---:|")
    for name, us in rows:
        print(f"| {name} | {us:,.1f} | {us - base:+,.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
