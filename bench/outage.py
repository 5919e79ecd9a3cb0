"""Outage: 100 clients against the Kraken emulator while it is down for 60 s, then back.

Each client polls a price once a second through the real ``ccxt.kraken`` client. The emulator
runs in its own process (``python -m brokerguard.sim --admin``) and counts the requests
it receives while down. For each strategy we report the broker calls made during the outage
and the seconds from recovery to each client's first success (first, median, last client).

Strategies:
- ``naive``: the seed's previous behaviour: on failure, retry at once, unbounded.
- ``pybreaker+tenacity``: tenacity retries network errors (3 attempts, exponential jitter from
  2 s, cap 30 s) around a pybreaker breaker (5 failures, reset after 60 s); open-circuit errors
  are not retried.
- ``brokerguard``: a ``CcxtBroker`` with the service defaults (5 failures, 60 s recovery,
  3 attempts, full jitter, a ``fetch_time`` probe).
Both breakers run in two layouts: one breaker per client (100 processes, one account each), and
one breaker shared by the 100 clients (one process guarding 100 accounts on one broker, which
is how ``GuardService`` wires them).

Run: ``.venv/bin/python bench/outage.py [--clients 100] [--outage 60] [--only NAME ...]``
(about 2 minutes per strategy; loopback only).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import ccxt
import pybreaker
import tenacity

from brokerguard import BrokerCircuitBreaker
from brokerguard.brokers.ccxt import CcxtBroker
from brokerguard.config import BackoffConfig
from brokerguard.errors import BrokerGuardError

SYMBOL = "BTC/USD"
POLL_INTERVAL = 1.0


@dataclass
class Client:
    """One polling client: its poll function and when it first succeeded after recovery."""

    poll: Callable[[], object]
    recovered_at: float | None = None
    errors: int = 0
    successes: int = 0


@dataclass
class Outcome:
    """What one strategy did through the outage."""

    name: str
    calls_during_outage: int
    recovery_first: float | None
    recovery_median: float | None
    recovery_last: float | None
    recovered_clients: int
    clients: int
    notes: list[str] = field(default_factory=list)


def exchange(url: str) -> ccxt.kraken:
    """A ccxt.kraken client on the emulator; ccxt's own throttle off (strategies pace)."""
    client = ccxt.kraken({"enableRateLimit": False, "timeout": 2000})
    client.urls["api"] = {"public": url, "private": url}
    client.load_markets()
    return client


def naive(url: str, clients: int, _recovery_timeout: float) -> list[Client]:
    """Retry at once until it works: the loop that hammers an exchange in an outage."""

    def make() -> Callable[[], object]:
        ex = exchange(url)

        def poll() -> object:
            while True:
                try:
                    return ex.fetch_ticker(SYMBOL)
                except ccxt.NetworkError:
                    continue

        return poll

    return [Client(make()) for _ in range(clients)]


def pybreaker_tenacity(
    url: str, clients: int, recovery_timeout: float, *, shared: bool
) -> list[Client]:
    """Tenacity around pybreaker: the common way to combine the two."""
    one = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=recovery_timeout)

    def make() -> Callable[[], object]:
        ex = exchange(url)
        breaker = (
            one if shared else pybreaker.CircuitBreaker(fail_max=5, reset_timeout=recovery_timeout)
        )
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_exponential_jitter(multiplier=2, max=30),
            retry=tenacity.retry_if_exception_type(ccxt.NetworkError),
            reraise=True,
        )

        def poll() -> object:
            return retrying(breaker.call, ex.fetch_ticker, SYMBOL)

        return poll

    return [Client(make()) for _ in range(clients)]


def brokerguard(url: str, clients: int, recovery_timeout: float, *, shared: bool) -> list[Client]:
    """CcxtBroker with the service's default breaker and backoff."""
    policy = BackoffConfig().policy()

    def breaker(name: str, scope: str) -> BrokerCircuitBreaker:
        return BrokerCircuitBreaker(
            name,
            5,
            recovery_timeout,
            2,
            max_attempts=3,
            backoff=policy,
            scope=scope,
            rng=random.Random(f"{name}:{scope}"),
        )

    read, write = breaker("kraken", "read"), breaker("kraken", "write")

    def make(index: int) -> Callable[[], object]:
        name = "kraken" if shared else f"kraken-{index}"
        broker = CcxtBroker(
            exchange(url),
            name,
            account_id=f"acct-{index}",
            read_breaker=read if shared else breaker(name, "read"),
            write_breaker=write if shared else breaker(name, "write"),
        )
        return lambda: broker.get_prices([SYMBOL])

    return [Client(make(i)) for i in range(clients)]


def admin(url: str, action: str) -> dict[str, object]:
    method = "GET" if action == "stats" else "POST"
    request = urllib.request.Request(  # noqa: S310 (loopback)
        f"{url}/admin/{action}", method=method, data=None if method == "GET" else b""
    )
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
        return dict(json.loads(answer.read()))


def run(  # noqa: PLR0917 (one experiment's knobs)
    name: str,
    url: str,
    clients: list[Client],
    outage: float,
    warmup: float,
    recovery_timeout: float,
) -> Outcome:
    """Poll through a healthy start, the outage and the recovery; measure."""
    stop = threading.Event()
    up_at: list[float] = []

    def loop(client: Client) -> None:
        while not stop.is_set():
            started = time.monotonic()  # wall-clock-ok: a real-time load test
            try:
                client.poll()
            except (BrokerGuardError, ccxt.BaseError, pybreaker.CircuitBreakerError):
                client.errors += 1
            else:
                client.successes += 1
                if up_at and client.recovered_at is None:
                    client.recovered_at = time.monotonic() - up_at[0]  # wall-clock-ok
            stop.wait(max(0.0, POLL_INTERVAL - (time.monotonic() - started)))  # wall-clock-ok

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    time.sleep(warmup)  # wall-clock-ok
    before = admin(url, "stats")
    admin(url, "down")
    time.sleep(outage)  # wall-clock-ok
    admin(url, "up")
    up_at.append(time.monotonic())  # wall-clock-ok
    during = int(admin(url, "stats")["while_down"]) - int(before["while_down"])
    deadline = time.monotonic() + 2 * recovery_timeout + 30  # wall-clock-ok
    while time.monotonic() < deadline and any(
        c.recovered_at is None for c in clients
    ):  # wall-clock-ok
        time.sleep(0.2)  # wall-clock-ok
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    recovered = sorted(c.recovered_at for c in clients if c.recovered_at is not None)
    return Outcome(
        name,
        during,
        recovered[0] if recovered else None,
        statistics.median(recovered) if recovered else None,
        recovered[-1] if recovered else None,
        len(recovered),
        len(clients),
    )


STRATEGIES: dict[str, Callable[[str, int, float], list[Client]]] = {
    "naive retry loop": naive,
    "pybreaker+tenacity, one breaker per client": lambda u, n, r: pybreaker_tenacity(
        u, n, r, shared=False
    ),
    "pybreaker+tenacity, one shared breaker": lambda u, n, r: pybreaker_tenacity(
        u, n, r, shared=True
    ),
    "brokerguard, one breaker per client": lambda u, n, r: brokerguard(u, n, r, shared=False),
    "brokerguard, one shared breaker": lambda u, n, r: brokerguard(u, n, r, shared=True),
}


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--recovery-timeout", type=float, default=60.0)
    parser.add_argument("--only", nargs="*", default=None, help="substrings of strategy names")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)
    emulator = subprocess.Popen(
        [sys.executable, "-m", "brokerguard.sim", "--port", "0", "--admin"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if emulator.stdout is None:  # pragma: no cover (PIPE was asked for)
            raise RuntimeError("no emulator output")
        url = emulator.stdout.readline().strip()
        print(
            f"{args.clients} clients polling every {POLL_INTERVAL:g} s; emulator down for "
            f"{args.outage:g} s; recovery timeout {args.recovery_timeout:g} s\n"
        )
        print(
            "| strategy | calls during the outage | recovery to first success: first / median / "
            "last client (s) | clients recovered |"
        )
        print("|---|---:|---|---:|")
        for name, build in STRATEGIES.items():
            if args.only and not any(part in name for part in args.only):
                continue
            outcome = run(
                name,
                url,
                build(url, args.clients, args.recovery_timeout),
                args.outage,
                args.warmup,
                args.recovery_timeout,
            )
            print(
                f"| {name} | {outcome.calls_during_outage:,} | "
                f"{_seconds(outcome.recovery_first)} / {_seconds(outcome.recovery_median)} / "
                f"{_seconds(outcome.recovery_last)} | "
                f"{outcome.recovered_clients}/{outcome.clients} |",
                flush=True,
            )
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
        if emulator.stdout is not None:
            emulator.stdout.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
