"""Paper-broker worlds for the risk tests: many coins, a position in each, a store."""

from __future__ import annotations

from decimal import Decimal

from brokerguard import BrokerCircuitBreaker
from brokerguard.brokers import FaultPlan, PaperBroker
from brokerguard.testing import FakeClock


def coins(n: int) -> dict[str, str]:
    """N symbols priced 1..N dollars, so values are easy to rank by hand."""
    return {f"C{i:02d}/USD": str(i) for i in range(1, n + 1)}


def paper_account(
    clock: FakeClock,
    *,
    prices: dict[str, str],
    positions: dict[str, str],
    plan: FaultPlan | None = None,
    settle_delay: float = 0.5,
    name: str = "paper",
) -> PaperBroker:
    """A paper broker with breakers of its own on the clock (no registry sharing across tests)."""
    return PaperBroker(
        name,
        clock=clock,
        prices=prices,
        positions=positions,
        fault_plan=plan,
        settle_delay=settle_delay,
        volatility=0,
        read_breaker=BrokerCircuitBreaker(name, scope="read", clock=clock),
        write_breaker=BrokerCircuitBreaker(name, scope="write", clock=clock),
    )


def sell_orders(broker: PaperBroker) -> list[tuple[str, Decimal]]:
    return [(o.symbol, o.quantity) for o in broker.all_orders() if o.side.value == "sell"]
