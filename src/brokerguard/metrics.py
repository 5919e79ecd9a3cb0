"""Prometheus metrics for a guard service, on a registry of its own.

Gauges are read from :meth:`GuardService.status` when Prometheus scrapes (so they can never
drift from what the status page shows); counters are fed by the service's events and the
gates' decisions. Refusal codes (``POSITION_CAP_REACHED`` ...) are label values, the same
strings the CLI prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from brokerguard.risk.exits import EnforcementEvent
from brokerguard.risk.gate import Decision

if TYPE_CHECKING:
    from brokerguard.service import GuardService

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}
_HEALTH = {"healthy": 0, "degraded": 1, "offline": 2}


class ServiceMetrics:
    """The metrics of one :class:`GuardService`; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, service: GuardService) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "brokerguard_events",
            "Enforcement and breaker events, by kind and account (or broker).",
            ["kind", "account"],
            registry=self.registry,
        )
        self.gate_decisions = Counter(
            "brokerguard_gate_decisions",
            "Pre-trade gate decisions, by account and reason code.",
            ["account", "code"],
            registry=self.registry,
        )
        self.registry.register(_StatusCollector(service))
        service.add_listener(self._on_event)
        for runtime in service.accounts.values():
            runtime.gate.add_listener(self._on_decision)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    def _on_event(self, event: EnforcementEvent) -> None:
        self.events.labels(type(event).__name__, event.account_id).inc()

    def _on_decision(self, account_id: str, decision: Decision) -> None:
        self.gate_decisions.labels(account_id, decision.code).inc()


class _StatusCollector(Collector):
    def __init__(self, service: GuardService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        status = self._service.status()
        service = status["service"]
        yield _gauge("brokerguard_up", "1 while the service runs.", [], [([], 1)])
        yield _gauge(
            "brokerguard_ready",
            "1 when ready (no broker offline, store up).",
            [],
            [([], int(service["ready"]))],
        )
        yield _gauge(
            "brokerguard_store_up",
            "1 when the state store answers.",
            [],
            [([], int(service["store_ok"]))],
        )
        breaker_rows = [
            (name, scope, report)
            for name, broker in status["brokers"].items()
            for scope, report in broker["breakers"].items()
        ]
        yield _gauge(
            "brokerguard_breaker_state",
            "Circuit state: 0 closed, 1 half-open, 2 open.",
            ["broker", "scope"],
            [([n, s], _CIRCUIT[r["circuit_state"]]) for n, s, r in breaker_rows],
        )
        yield _gauge(
            "brokerguard_breaker_consecutive_failures",
            "Current streak of consecutive failures.",
            ["broker", "scope"],
            [([n, s], r["failure_count"]) for n, s, r in breaker_rows],
        )
        yield _gauge(
            "brokerguard_breaker_calls",
            "Calls that reached the broker since start.",
            ["broker", "scope"],
            [([n, s], r["total_calls"]) for n, s, r in breaker_rows],
        )
        yield _gauge(
            "brokerguard_breaker_failures",
            "Counted failures since start.",
            ["broker", "scope"],
            [([n, s], r["total_failures"]) for n, s, r in breaker_rows],
        )
        yield _gauge(
            "brokerguard_broker_health",
            "Broker health: 0 healthy, 1 degraded, 2 offline.",
            ["broker"],
            [([n], _HEALTH[b["health_state"]]) for n, b in status["brokers"].items()],
        )
        accounts = status["accounts"].items()
        yield _gauge(
            "brokerguard_account_positions",
            "Open positions in the last snapshot (absent when unknown).",
            ["account"],
            [([a], s["positions"]) for a, s in accounts if s["positions"] is not None],
        )
        yield _gauge(
            "brokerguard_account_max_positions",
            "The account's position cap.",
            ["account"],
            [([a], s["max_positions"]) for a, s in accounts],
        )
        yield _gauge(
            "brokerguard_account_halted",
            "1 while the account is halted.",
            ["account"],
            [([a], int(s["halt"] is not None)) for a, s in accounts],
        )
        yield _gauge(
            "brokerguard_account_paused_symbols",
            "Symbols paused for the account.",
            ["account"],
            [([a], len(s["paused_symbols"] or {})) for a, s in accounts],
        )
        yield _gauge(
            "brokerguard_account_trading_state",
            "1 for the account's current trading state.",
            ["account", "state"],
            [([a, s["trading_state"]], 1) for a, s in accounts],
        )
        yield _gauge(
            "brokerguard_account_enforcement_status",
            "1 for the status of the account's last enforcement.",
            ["account", "status"],
            [
                ([a, s["last_enforcement"]["status"]], 1)
                for a, s in accounts
                if s["last_enforcement"]
            ],
        )
        yield _gauge(
            "brokerguard_data_quality",
            "Bad data received from the broker, by kind.",
            ["account", "kind"],
            [([a, kind], n) for a, s in accounts for kind, n in s["data_quality"].items()],
        )


def _gauge(
    name: str, documentation: str, labels: list[str], rows: list[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family
