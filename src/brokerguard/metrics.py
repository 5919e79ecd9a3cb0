"""Prometheus metrics for a guard service, on a registry of its own.

Gauges are read from :meth:`GuardService.status` when Prometheus scrapes (so they can never
drift from what the status page shows); counters are fed by the service's events and the
gates' decisions. Refusal codes (``POSITION_CAP_REACHED`` ...) are label values, the same
strings the CLI prints.

Naming follows Prometheus's practice, so that queries stay simple and ``promtool check
metrics`` is clean: every cumulative count is a ``_total`` counter (``rate()`` and
``increase()`` handle its resets); every state is one series per possible state with a
``state`` label, 1 for the current one and 0 for the others (``== 1`` selects it, and a state
nobody is in is a 0, not a missing series); times are ``_timestamp_seconds`` of the wall
clock; and there is no ``brokerguard_up``, since a scrape that answers is Prometheus's own
``up``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from brokerguard import __version__
from brokerguard.resilience.state import BrokerHealthState, CircuitState
from brokerguard.risk.exits import EnforcementEvent
from brokerguard.risk.gate import Decision, TradingState

if TYPE_CHECKING:
    from brokerguard.service import GuardService

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServiceMetrics:
    """The metrics of one :class:`GuardService`; :meth:`render` is the ``/metrics`` body.

    Contract names: ``brokerguard_circuit_state{broker,scope,state}``,
    ``brokerguard_broker_calls_total{broker,scope,outcome}``,
    ``brokerguard_broker_call_seconds{broker,scope}`` (histogram), ``brokerguard_positions``,
    ``brokerguard_position_cap``, ``brokerguard_trading_halted``,
    ``brokerguard_unvalued_positions``, ``brokerguard_last_enforcement_timestamp_seconds``
    (all ``{account}``), ``brokerguard_enforcement_cycles_total{account,status}``,
    ``brokerguard_liquidations_total{account}``,
    ``brokerguard_data_quality_issues_total{account,kind}`` and
    ``brokerguard_build_info{version,python}``; plus readiness, broker health and trading
    state (a label per state), gate decisions by reason code, events by kind and paused
    symbols.
    """

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
        self.enforcement_cycles = Counter(
            "brokerguard_enforcement_cycles",
            "Enforcement steps, by account and resulting status.",
            ["account", "status"],
            registry=self.registry,
        )
        self.liquidations = Counter(
            "brokerguard_liquidations",
            "Liquidation orders sent by the cap enforcer.",
            ["account"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "brokerguard_broker_call_seconds",
            "Duration of guarded broker calls (retries included), by broker and scope.",
            ["broker", "scope"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.registry.register(_StatusCollector(service))
        service.add_listener(self._on_event)
        service.exits.add_result_listener(self._on_result)
        for account_id, runtime in service.accounts.items():
            runtime.gate.add_listener(self._on_decision)
            runtime.broker.add_call_observer(self._on_call)
            for status in ("compliant", "unverified", "failed_enforcement", "error"):
                self.enforcement_cycles.labels(account_id, status)  # every series exists at 0
            self.liquidations.labels(account_id)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    def _on_event(self, event: EnforcementEvent) -> None:
        self.events.labels(type(event).__name__, event.account_id).inc()

    def _on_decision(self, account_id: str, decision: Decision) -> None:
        self.gate_decisions.labels(account_id, decision.code).inc()

    def _on_result(self, account_id: str, result: dict[str, Any]) -> None:
        self.enforcement_cycles.labels(account_id, str(result.get("status"))).inc()
        self.liquidations.labels(account_id).inc(len(result.get("orders") or ()))

    def _on_call(
        self, broker: str, scope: str, _method: str, seconds: float, _outcome: str
    ) -> None:
        self.call_seconds.labels(broker, scope).observe(seconds)


class _StatusCollector(Collector):
    def __init__(self, service: GuardService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        status = self._service.status()
        service = status["service"]
        yield _gauge(
            "brokerguard_build_info",
            "Always 1; the labels say which brokerguard and Python this process runs.",
            ["version", "python"],
            [([__version__, platform.python_version()], 1)],
        )
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
        coordination = service["coordination"]
        if coordination["mode"] == "redis":
            yield _gauge(
                "brokerguard_coordination_up",
                "1 when the fleet's Redis answers (0: trading blocked fleet-wide).",
                [],
                [([], int(coordination["reachable"]))],
            )
            yield _gauge(
                "brokerguard_account_lease_held",
                "1 for each account whose lease this worker holds (it enforces it).",
                ["account"],
                [([a], 1) for a in coordination["accounts_held"]],
            )
        breaker_rows = [
            (name, scope, report)
            for name, broker in status["brokers"].items()
            for scope, report in broker["breakers"].items()
        ]
        yield _states(
            "brokerguard_circuit_state",
            "1 for the breaker's current circuit state (closed, half_open, open), 0 for the "
            "others.",
            ["broker", "scope"],
            CircuitState,
            [([n, s], r["circuit_state"]) for n, s, r in breaker_rows],
        )
        calls = CounterMetricFamily(
            "brokerguard_broker_calls",
            "Calls through a breaker by outcome: success, failure, ignored (a business "
            "rejection) and rejected (refused by the open circuit, never sent).",
            labels=["broker", "scope", "outcome"],
        )
        for name, breakers in self._service.breakers.items():
            for scope, breaker in breakers.items():
                snap = breaker.snapshot()
                for outcome, value in (
                    ("success", snap.total_successes),
                    ("failure", snap.total_failures),
                    ("ignored", snap.total_ignored),
                    ("rejected", snap.total_rejected),
                ):
                    calls.add_metric([name, scope, outcome], value)
        yield calls
        yield _gauge(
            "brokerguard_breaker_consecutive_failures",
            "Current streak of consecutive failures.",
            ["broker", "scope"],
            [([n, s], r["failure_count"]) for n, s, r in breaker_rows],
        )
        yield _states(
            "brokerguard_broker_health",
            "1 for the broker's current health (healthy, degraded, offline), 0 for the others.",
            ["broker"],
            BrokerHealthState,
            [([n], b["health_state"]) for n, b in status["brokers"].items()],
        )
        accounts = status["accounts"].items()
        yield _gauge(
            "brokerguard_positions",
            "Open positions in the last snapshot (absent while unknown).",
            ["account"],
            [([a], s["positions"]) for a, s in accounts if s["positions"] is not None],
        )
        yield _gauge(
            "brokerguard_position_cap",
            "The account's position cap.",
            ["account"],
            [([a], s["max_positions"]) for a, s in accounts],
        )
        yield _gauge(
            "brokerguard_trading_halted",
            "1 while the account is halted.",
            ["account"],
            [([a], int(s["halt"] is not None)) for a, s in accounts],
        )
        yield _gauge(
            "brokerguard_unvalued_positions",
            "Positions without a usable price at the last enforcement.",
            ["account"],
            [
                ([a], len((s["last_enforcement"] or {}).get("unvalued_symbols") or ()))
                for a, s in accounts
            ],
        )
        yield _gauge(
            "brokerguard_paused_symbols",
            "Symbols paused for the account.",
            ["account"],
            [([a], len(s["paused_symbols"] or {})) for a, s in accounts],
        )
        yield _states(
            "brokerguard_trading_state",
            "1 for the account's current trading state (active, reducing, halted), 0 for the "
            "others.",
            ["account"],
            TradingState,
            [([a], s["trading_state"]) for a, s in accounts],
        )
        yield _gauge(
            "brokerguard_last_enforcement_timestamp_seconds",
            "Wall time (unix seconds) of the account's last completed enforcement step "
            "(compliant or failed_enforcement); absent until the first.",
            ["account"],
            [
                ([a], s["last_enforcement_completed_at"])
                for a, s in accounts
                if s["last_enforcement_completed_at"] is not None
            ],
        )
        yield _gauge(
            "brokerguard_orders_unresolved",
            "Orders whose outcome is unknown (not resent; their symbols not traded again).",
            ["account"],
            [([a], len(s["unresolved_orders"])) for a, s in accounts],
        )
        yield _gauge(
            "brokerguard_positions_implausible",
            "1 while a position read that lost positions is not believed (entries refused).",
            ["account"],
            [([a], int(s["positions_suspect"] is not None)) for a, s in accounts],
        )
        quality = CounterMetricFamily(
            "brokerguard_data_quality_issues",
            "Invalid payloads received from the broker (nothing from them is used), by "
            "account and kind (what.reason).",
            labels=["account", "kind"],
        )
        for account_id, account in accounts:
            for kind, count in sorted(account["data_quality"].items()):
                quality.add_metric([account_id, kind], count)
        yield quality


def _states(
    name: str,
    documentation: str,
    labels: list[str],
    states: type[StrEnum],
    rows: Iterable[tuple[list[str], str]],
) -> GaugeMetricFamily:
    """One series per possible state, 1 for `current` and 0 for the rest.

    Every state is exported so that a state nobody is in reads 0 (an alert on
    ``{state="open"} == 1`` resolves instead of its series going stale) and a new state in the
    enum appears without editing this module.
    """
    family = GaugeMetricFamily(name, documentation, labels=[*labels, "state"])
    for values, current in rows:
        for state in states:
            family.add_metric([*values, state.value], int(state.value == current))
    return family


def _gauge(
    name: str, documentation: str, labels: list[str], rows: list[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family
