"""Latency of the /v1 pre-trade API on the embedded default (paper broker + SQLite).

A bot asks before every entry, so the reservation sits on its order path. This runs the guard
service exactly as ``brokerguard run`` does with no config (the embedded default: a paper broker
with its realistic fault plan, SQLite in a temporary directory), serves it with uvicorn on
127.0.0.1, and times each call of one bot over a keep-alive HTTP connection:

- ``reserve``: ``POST /v1/accounts/{id}/entries`` (the gate's decision and a slot);
- ``release``: ``DELETE .../entries/{rid}`` (the broker is asked about the client order id);
- ``gate``: ``GET /v1/accounts/{id}/gate`` (a decision, no slot).

Each round reserves and releases one symbol (so the cap never fills); the answers are counted
by status and reason, because the fault plan makes some reads fail: a position read that fails
makes the gate refuse (409), and a DELETE whose lookup fails leaves its reservation unresolved,
after which the symbol's entries are refused (``ENTRY_PENDING``) until the service's sweep, which
this benchmark does not run. Both are the right answers; the 201s and the 409s are also timed
apart. Percentiles over all rounds.

Run:  python bench/pretrade.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from brokerguard.server import StatusServer, create_app
from brokerguard.service import GuardService, embedded_default_config

ACCOUNT = "paper-main"
TOKEN = "bench-bot-token-0123456789abcdefghijkl"  # noqa: S105 (a benchmark value)


class Http:
    """One keep-alive connection, as a bot's HTTP client keeps one."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
        self._headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """One request; (status, parsed JSON)."""
        data = None if body is None else json.dumps(body).encode()
        self._conn.request(method, path, body=data, headers=self._headers)
        response = self._conn.getresponse()
        return response.status, json.loads(response.read() or b"null")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def percentile(samples: list[float], fraction: float) -> float:
    """The `fraction` percentile of `samples` (nearest rank), in milliseconds."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index] * 1000


def measure(rounds: int) -> dict[str, tuple[list[float], Counter[Any]]]:
    """Run `rounds` reserve/release/gate rounds; samples (seconds) and status counts per call."""
    quiet = logging.getLogger("brokerguard")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the fault plan's warnings are expected; restored below
    try:
        return _measure(rounds)
    finally:
        quiet.setLevel(level)


def _measure(rounds: int) -> dict[str, tuple[list[float], Counter[Any]]]:
    with tempfile.TemporaryDirectory() as data:
        service = GuardService(embedded_default_config(data))
        server = StatusServer(create_app(service, control_token=None, bot_token=TOKEN), port=0)
        server.start()
        results: dict[str, tuple[list[float], Counter[Any]]] = {
            name: ([], Counter())
            for name in ("reserve", "reserve: 201 only", "reserve: 409 only", "release", "gate")
        }
        try:
            http = Http(server.url)
            base = f"/v1/accounts/{ACCOUNT}"
            for n in range(rounds + 50):  # the first 50 warm up and are not counted
                counted = n >= 50
                started = time.perf_counter()
                status, answer = http.call(
                    "POST",
                    f"{base}/entries",
                    {"symbol": "ETH/USD", "side": "buy", "client_order_id": f"b-{n}"},
                )
                took = time.perf_counter() - started
                if counted:
                    code = answer["decision"]["code"] if status == 409 else ""
                    for row in ("reserve", f"reserve: {status} only"):
                        results[row][0].append(took)
                        results[row][1][f"{status} {code}".strip()] += 1
                if status == 201:
                    started = time.perf_counter()
                    released, _ = http.call("DELETE", f"{base}/entries/{answer['reservation_id']}")
                    if counted:
                        results["release"][0].append(time.perf_counter() - started)
                        results["release"][1][released] += 1
                started = time.perf_counter()
                decided, _ = http.call("GET", f"{base}/gate?symbol=SOL/USD")
                if counted:
                    results["gate"][0].append(time.perf_counter() - started)
                    results["gate"][1][decided] += 1
            http.close()
        finally:
            server.stop()
            service.close()
    return results


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000, help="timed rounds (default 2000)")
    args = parser.parse_args(argv)
    results = measure(args.rounds)
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.rounds} rounds, one bot, keep-alive HTTP on 127.0.0.1\n\n"
        "| call | calls | p50 ms | p90 ms | p99 ms | max ms | mean ms | answers |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|"
    )
    for name, (samples, statuses) in results.items():
        if not samples:
            continue
        answers = ", ".join(f"{code}: {count}" for code, count in sorted(statuses.items()))
        print(
            f"| {name} | {len(samples):,} | {percentile(samples, 0.5):.2f} | "
            f"{percentile(samples, 0.9):.2f} | {percentile(samples, 0.99):.2f} | "
            f"{max(samples) * 1000:.2f} | {statistics.fmean(samples) * 1000:.2f} | {answers} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
