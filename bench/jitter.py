"""Jitter: the AWS "Exponential Backoff And Jitter" contention experiment, with our policies.

The experiment (Marc Brooker, AWS Architecture Blog, 2015): N clients each want to update one
row guarded by optimistic concurrency. A client reads the row's version, then writes with that
version; the write fails if anyone wrote in between, and the client backs off and starts over.
Every network hop takes ``|Normal(10, 2)|`` time units; backoff is ``base 5, cap 2000`` in the
article's formulas (first retry ``min(cap, 2**1 * 5) = 10``). Each configuration is averaged
over 100 independent runs, like the article's simulator; we report write calls (the work the
contended resource sees) and the time until the last client is done.

This is our own event simulation of that model. The rows marked "article formula" implement
the article's five formulas directly, to calibrate the simulator against the published numbers
(at 100 clients: 796 calls / 4.9 s full jitter, 1,846 calls / 63.3 s plain exponential); the
other rows run brokerguard's :class:`BackoffPolicy` kinds with the equivalent parameters
(``base=10, factor=2, max_delay=2000``; the first delay equals the article's).

Run: ``.venv/bin/python bench/jitter.py [--runs 100] [--clients 100 190] [--json]``
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

from brokerguard.resilience.backoff import BackoffKind, BackoffPolicy

Delay = Callable[[int], float]
"""A client's backoff: attempt number (1-based) -> delay. One instance per client."""

ARTICLE_BASE, ARTICLE_CAP = 5.0, 2000.0


def article(kind: str, rng: random.Random) -> Delay:
    """The article's formulas, verbatim in meaning, as a per-client closure."""
    sleep = [ARTICLE_BASE]

    def expo(n: int) -> float:
        return min(ARTICLE_CAP, 2.0**n * ARTICLE_BASE)

    def delay(n: int) -> float:
        if kind == "none":
            return 0.0
        if kind == "exponential":
            return expo(n)
        if kind == "equal":
            return expo(n) / 2 + rng.uniform(0, expo(n) / 2)
        if kind == "full":
            return rng.uniform(0, expo(n))
        sleep[0] = min(ARTICLE_CAP, rng.uniform(ARTICLE_BASE, sleep[0] * 3))  # decorrelated
        return sleep[0]

    return delay


def ours(policy: BackoffPolicy, rng: random.Random) -> Delay:
    """A brokerguard policy as a per-client closure (decorrelated carries its previous delay)."""
    previous: list[float | None] = [None]

    def delay(n: int) -> float:
        value = policy.delay(n, rng, previous=previous[0])
        previous[0] = value
        return value

    return delay


def _ours(kind: BackoffKind, jitter: float = 0.3) -> Callable[[random.Random], Delay]:
    policy = BackoffPolicy(base=10.0, factor=2.0, max_delay=ARTICLE_CAP, jitter=jitter, kind=kind)
    return lambda rng: ours(policy, rng)


STRATEGIES: dict[str, Callable[[random.Random], Delay]] = {
    "article formula: no backoff": lambda rng: article("none", rng),
    "article formula: exponential": lambda rng: article("exponential", rng),
    "article formula: equal jitter": lambda rng: article("equal", rng),
    "article formula: full jitter": lambda rng: article("full", rng),
    "article formula: decorrelated": lambda rng: article("decorrelated", rng),
    "brokerguard proportional, jitter 0 (= plain exponential)": _ours(
        BackoffKind.PROPORTIONAL, jitter=0.0
    ),
    "brokerguard proportional, jitter 0.3 (the seed's, our default)": _ours(
        BackoffKind.PROPORTIONAL
    ),
    "brokerguard full": _ours(BackoffKind.FULL),
    "brokerguard equal": _ours(BackoffKind.EQUAL),
    "brokerguard decorrelated": _ours(BackoffKind.DECORRELATED),
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """Means over the runs: write calls, and time until the last client finished."""

    calls: float
    completion: float


def simulate_once(
    clients: int, make: Callable[[random.Random], Delay], rng: random.Random
) -> tuple[int, float]:
    """One run of the OCC experiment; return (write calls, time the last client finished)."""

    def hop() -> float:
        return abs(rng.normalvariate(10.0, 2.0))

    version = 0
    calls = 0
    backoffs = [make(rng) for _ in range(clients)]
    attempts = [0] * clients
    # Events: (time, sequence, client, kind, payload). kind: "read" reaches the server, "rrsp"
    # the read's answer reaches the client, "write" reaches the server, "wrsp" its answer.
    queue: list[tuple[float, int, int, str, int]] = []
    seq = 0
    for client in range(clients):
        heapq.heappush(queue, (hop(), seq, client, "read", 0))
        seq += 1
    now = 0.0
    while queue:
        now, _, client, kind, payload = heapq.heappop(queue)
        if kind == "read":
            event, value, at = "rrsp", version, now + hop()
        elif kind == "rrsp":
            event, value, at = "write", payload, now + hop()
        elif kind == "write":
            calls += 1
            ok = payload == version
            if ok:
                version += 1
            event, value, at = "wrsp", int(ok), now + hop()
        else:  # "wrsp"
            if payload:
                continue  # this client is done
            attempts[client] += 1
            event, value, at = "read", 0, now + hop() + backoffs[client](attempts[client])
        heapq.heappush(queue, (at, seq, client, event, value))
        seq += 1
    return calls, now


def measure(clients: int, name: str, runs: int, seed: int) -> Outcome:
    rng = random.Random(f"{seed}:{clients}:{name}")
    results = [simulate_once(clients, STRATEGIES[name], rng) for _ in range(runs)]
    return Outcome(statistics.fmean(c for c, _ in results), statistics.fmean(t for _, t in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 190])
    parser.add_argument("--seed", type=int, default=2015)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    table = {
        clients: {name: measure(clients, name, args.runs, args.seed) for name in STRATEGIES}
        for clients in args.clients
    }
    if args.json:
        print(
            json.dumps(
                {
                    str(c): {
                        n: {"calls": o.calls, "completion": o.completion} for n, o in row.items()
                    }
                    for c, row in table.items()
                },
                indent=2,
            )
        )
        return 0
    for clients, row in table.items():
        print(f"\n{clients} clients, mean of {args.runs} runs (time in the article's units, ~ms)")
        print(f"| {'strategy':<62} | {'write calls':>11} | {'completion':>10} |")
        print(f"|{'-' * 64}|{'-' * 13}:|{'-' * 11}:|")
        for name, outcome in row.items():
            print(f"| {name:<62} | {outcome.calls:>11,.0f} | {outcome.completion:>10,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
