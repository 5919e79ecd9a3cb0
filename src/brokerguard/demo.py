"""A short demo: a flaky broker call driven through a circuit breaker, on simulated time.

Run with ``python -m brokerguard``. The "broker" fails in bursts (an outage, then recovery);
the demo prints every state change, what the trading gate would say, and the final status.
Time is a :class:`~brokerguard.testing.FakeClock`, so ten simulated minutes take milliseconds
and the same seed always prints the same story.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Sequence

from brokerguard.errors import BrokerGuardError, CircuitOpenError, TransientBrokerError
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.state import CircuitState
from brokerguard.testing import FakeClock

__all__ = ["main", "run_demo"]

OUTAGE = (60.0, 240.0)
"""The simulated broker is down between these seconds of simulated time."""

EPOCH = 1_795_000_000.0
"""Where simulated time starts (November 2026), so the status shows plausible timestamps."""


def run_demo(seed: int = 7, duration: float = 600.0, step: float = 5.0) -> list[str]:
    """Run the demo and return the lines it prints."""
    clock = FakeClock(start=EPOCH)
    rng = random.Random(seed)  # noqa: S311 (a reproducible demo, not a secret)
    lines: list[str] = []
    breaker = BrokerCircuitBreaker(
        "paper", failure_threshold=3, recovery_timeout=30.0, clock=clock, rng=rng, scope="read"
    )

    def on_change(b: BrokerCircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        lines.append(
            f"t={clock.monotonic() - EPOCH:6.1f}s  circuit {old.value} -> {new.value}  "
            f"health={b.get_broker_health_state().value}  trading_allowed={b.is_trading_allowed()}"
        )

    breaker.add_listener(on_change)

    def fetch_positions() -> int:
        now = clock.monotonic() - EPOCH
        if OUTAGE[0] <= now < OUTAGE[1] or rng.random() < 0.05:  # noqa: PLR2004 (5% noise)
            raise TransientBrokerError("503 Service Unavailable", retry_after=None)
        return 3

    calls = rejected = failed = 0
    lines.append(
        f"demo: broker 'paper' is down from t={OUTAGE[0]:g}s to t={OUTAGE[1]:g}s "
        f"(seed {seed}); polling positions every {step:g}s"
    )
    while clock.monotonic() - EPOCH < duration:
        calls += 1
        try:
            breaker.call_with_circuit_breaker(fetch_positions)
        except CircuitOpenError:
            rejected += 1
        except BrokerGuardError:
            failed += 1
        clock.sleep(step)
    status = breaker.get_status()
    lines.append(
        f"done: {calls} polls, {failed} failed after retries, {rejected} rejected by the open "
        "circuit without calling the broker"
    )
    lines.append("status: " + json.dumps(status, sort_keys=True))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the demo; return the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m brokerguard", description=__doc__)
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--duration", type=float, default=600.0, help="simulated seconds (default 600)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for line in run_demo(seed=args.seed, duration=args.duration):
        print(line)  # noqa: T201 (the demo's output is its purpose)
    return 0
