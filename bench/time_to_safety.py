"""Time to safety, in simulated seconds (FakeClock: exact and reproducible).

Two measurements, against the seed's design:

1. From the first failing broker call to trading blocked (``is_trading_allowed()`` false), for
   a bot polling positions every second through brokerguard, for a few breaker settings. The
   naive bot has no breaker: it never blocks. Also: how many entries the pre-trade gate still
   allows after the first failed read, with and without ``refetch_when_degraded``.
2. From a cap breach (12 positions, cap 8) to compliance, for brokerguard's enforcer (polls
   its sells until they are final) and for the seed's design (sell, sleep 3 s blindly, re-fetch,
   at most 3 cycles), over several settlement delays.

Run:  python bench/time_to_safety.py
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from decimal import Decimal

from brokerguard import BrokerCircuitBreaker
from brokerguard.brokers import FaultPlan, OutageWindow, PaperBroker
from brokerguard.errors import BrokerGuardError
from brokerguard.models import OrderRequest, Side
from brokerguard.risk import PositionCapEnforcer, TradingGate
from brokerguard.store import open_store
from brokerguard.testing import FakeClock

START = 1_795_000_000.0
OUTAGE_AT = 100.0


def _broker(
    clock: FakeClock, *, settle: float, plan: FaultPlan | None = None, **breaker
) -> PaperBroker:
    prices = {f"C{i:02d}/USD": str(i) for i in range(1, 13)}
    return PaperBroker(
        "bench",
        clock=clock,
        prices=prices,
        positions=dict.fromkeys(prices, "1"),
        settle_delay=settle,
        volatility=0,
        fault_plan=plan,
        read_breaker=BrokerCircuitBreaker(
            "bench", scope="read", clock=clock, rng=random.Random(0), **breaker
        ),
        write_breaker=BrokerCircuitBreaker(
            "bench", scope="write", clock=clock, rng=random.Random(0), **breaker
        ),
    )


def time_to_block(**breaker: object) -> float:
    """Seconds from the outage's start to trading blocked, polling once a second."""
    clock = FakeClock(start=START)
    plan = FaultPlan(outages=[OutageWindow(START + OUTAGE_AT, START + 10_000)])
    broker = _broker(clock, settle=0.5, plan=plan, **breaker)
    while broker.is_trading_allowed():
        with contextlib.suppress(BrokerGuardError):
            broker.get_positions()
        if broker.is_trading_allowed():
            clock.sleep(1.0)
    return clock.monotonic() - (START + OUTAGE_AT)


def entries_allowed_in_outage(*, refetch: bool) -> tuple[int, float]:
    """A bot that asks the gate for an entry every second and syncs positions every 10 s.

    Returns how many entries the gate allowed after the first failed read, and the seconds
    from that failure to the first refusal (the refusal includes the gate's own retries).
    """
    clock = FakeClock(start=START)
    plan = FaultPlan(outages=[OutageWindow(START + OUTAGE_AT, START + 10_000)])
    broker = _broker(clock, settle=0.5, plan=plan)
    gate = TradingGate(broker, 100, clock=clock, refetch_when_degraded=refetch)
    failed_at: float | None = None
    allowed = 0
    for second in range(10_000):
        if clock.monotonic() < START + second:
            clock.advance(START + second - clock.monotonic())
        decision = gate.check_entry("NEW/USD")
        if failed_at is not None:
            if not decision.allowed:
                return allowed, clock.monotonic() - failed_at
            allowed += 1
        if second % 10 == 0:
            began = clock.monotonic()
            try:
                broker.get_positions()
            except BrokerGuardError:
                failed_at = began if failed_at is None else failed_at
    raise AssertionError("the gate never refused")


def time_to_compliance_brokerguard(settle: float) -> tuple[float, str]:
    clock = FakeClock(start=START)
    broker = _broker(clock, settle=settle)
    enforcer = PositionCapEnforcer(broker, 8, store=open_store("sqlite://", clock=clock))
    ok, result = enforcer.enforce_cap()
    outcome = "compliant" if ok else result["status"]
    return clock.monotonic() - START, f"{outcome}, {result['cycles']} cycle(s)"


def time_to_compliance_seed(settle: float) -> tuple[float, str]:
    """The seed's design: sell the excess, sleep 3 s blindly, re-fetch; 3 cycles at most."""
    clock = FakeClock(start=START)
    broker = _broker(clock, settle=settle)
    for cycle in range(1, 4):
        positions = broker.fetch_positions()
        if len(positions) <= 8:
            return clock.monotonic() - START, f"compliant, {cycle - 1} cycle(s)"
        prices = broker.fetch_prices([p.symbol for p in positions])
        ranked = sorted(positions, key=lambda p: p.quantity * Decimal(str(prices[p.symbol])))
        for n, position in enumerate(ranked[: len(positions) - 8]):
            try:
                broker.submit_order(
                    OrderRequest(position.symbol, Side.SELL, position.quantity, f"s{cycle}-{n}")
                )
            except BrokerGuardError:
                continue  # already being sold: the seed had no memory of it
        clock.sleep(3.0)  # the blind sleep
    if len(broker.fetch_positions()) <= 8:
        return clock.monotonic() - START, "compliant, 3 cycle(s)"
    return clock.monotonic() - START, "still over the cap: halt"


def main() -> int:
    logging.disable(logging.CRITICAL)
    print("## First failure to trading blocked (poll every 1 s; simulated seconds)\n")
    print("| breaker | seconds |")
    print("|---|---:|")
    for threshold, attempts in ((5, 3), (5, 1), (3, 3), (3, 1)):
        seconds = time_to_block(failure_threshold=threshold, max_attempts=attempts)
        print(f"| failure_threshold={threshold}, max_attempts={attempts} | {seconds:.1f} |")
    print("| naive bot (no breaker) | never |\n")
    print("Entries the gate still allows once reads fail (default breaker; a bot asking the gate")
    print("every second and syncing positions every 10 s; the refusal returns after the gate's")
    print("own fetch and its retries):\n")
    print("| gate | entries allowed after the first failed read | failure to first refusal |")
    print("|---|---:|---:|")
    for refetch in (True, False):
        allowed, seconds = entries_allowed_in_outage(refetch=refetch)
        print(f"| refetch_when_degraded={refetch} | {allowed} | {seconds:.1f} s |")
    print()
    print("## Cap breach (12 positions, cap 8) to compliance (simulated seconds)\n")
    print("| settlement delay | brokerguard | seed's design (3 s blind sleeps, 3 cycles) |")
    print("|---:|---|---|")
    for settle in (0.2, 1.0, 2.5, 5.0, 12.0):
        ours, our_note = time_to_compliance_brokerguard(settle)
        seed, seed_note = time_to_compliance_seed(settle)
        print(f"| {settle:g} s | {ours:.2f} s ({our_note}) | {seed:.2f} s ({seed_note}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
