"""A short demo: a bot polling a paper broker through an outage, on simulated time.

Run with ``python -m brokerguard``. The paper broker goes down for three minutes, times out now
and then, and reports ``NaN`` for one coin's price. The demo prints every circuit state change,
what trading permission says, how many calls reached the broker during the outage (against how
many polls the bot made), and the broker's final status. Time is a
:class:`~brokerguard.testing.FakeClock`, so ten simulated minutes take milliseconds and the
same seed always prints the same story.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Sequence

from brokerguard.brokers.paper import FaultPlan, OutageWindow, PaperBroker
from brokerguard.errors import BrokerGuardError, CircuitOpenError
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.state import CircuitState
from brokerguard.testing import FakeClock

__all__ = ["main", "run_demo"]

OUTAGE = (60.0, 240.0)
"""The simulated broker is down between these seconds of simulated time."""

EPOCH = 1_795_000_000.0
"""Where simulated time starts (November 2026), so the status shows plausible timestamps."""

SYMBOLS = ("BTC/USD", "ETH/USD", "DOGE/USD")


def run_demo(seed: int = 7, duration: float = 600.0, step: float = 5.0) -> list[str]:
    """Run the demo and return the lines it prints."""
    clock = FakeClock(start=EPOCH)
    plan = FaultPlan(
        outages=[OutageWindow(EPOCH + OUTAGE[0], EPOCH + OUTAGE[1])],
        error_rate={"fetch_positions": 0.05},
        bad_prices={"DOGE/USD": "NaN"},
    )
    # Breakers of its own, not the process registry's: each run is a world of its own.
    # Jitter comes from the seed too, or retry timing (and so the price walk) would wander.
    rng = random.Random(seed)  # noqa: S311 (a reproducible demo, not a secret)
    read = BrokerCircuitBreaker(
        "paper", failure_threshold=3, recovery_timeout=30.0, scope="read", clock=clock, rng=rng
    )
    write = BrokerCircuitBreaker("paper", scope="write", clock=clock, rng=rng)
    broker = PaperBroker(
        "paper",
        seed=seed,
        clock=clock,
        positions={"BTC/USD": "0.25", "ETH/USD": "3"},
        fault_plan=plan,
        read_breaker=read,
        write_breaker=write,
    )
    lines: list[str] = []

    def on_change(b: BrokerCircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        lines.append(
            f"t={clock.monotonic() - EPOCH:6.1f}s  {b.scope} circuit {old.value} -> "
            f"{new.value}  health={broker.get_broker_health_state()}  "
            f"trading_allowed={broker.is_trading_allowed()}"
        )

    read.add_listener(on_change)
    lines.append(
        f"demo: paper broker down from t={OUTAGE[0]:g}s to t={OUTAGE[1]:g}s, 5% timeouts, "
        f"DOGE/USD priced NaN (seed {seed}); the bot polls every {step:g}s"
    )
    polls = rejected = failed = 0
    priced: dict[str, object] = {}
    while clock.monotonic() - EPOCH < duration:
        polls += 1
        try:
            broker.get_positions()
            priced = {
                s: str(p) if p is not None else None for s, p in broker.get_prices(SYMBOLS).items()
            }
        except CircuitOpenError:
            rejected += 1
        except BrokerGuardError:
            failed += 1
        clock.sleep(step)
    reached = len(broker.calls_between(EPOCH + OUTAGE[0], EPOCH + OUTAGE[1]))
    outage_polls = int((OUTAGE[1] - OUTAGE[0]) / step)
    lines.append(
        f"done: {polls} polls; {failed} failed after retries; {rejected} refused by the open "
        f"circuit without calling the broker; during the outage {reached} call(s) reached the "
        f"broker for {outage_polls} polls"
    )
    lines.append(f"last prices: {json.dumps(priced)}  (NaN became null: no fallback price)")
    lines.append("status: " + json.dumps(broker.get_status(), sort_keys=True))
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
