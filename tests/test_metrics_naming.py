"""/metrics follows Prometheus's naming practice.

Cumulative counts are ``_total`` counters, states are one label per state (every state
exported, the current one 1), the build is ``brokerguard_build_info``, the last completed
enforcement is a ``_timestamp_seconds`` gauge, and Prometheus's own ``up`` is not duplicated.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import brokerguard
from brokerguard.brokers.paper import FaultPlan
from brokerguard.metrics import ServiceMetrics
from brokerguard.resilience.state import BrokerHealthState, CircuitState
from brokerguard.risk.gate import TradingState
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.testing import FakeClock

START = 1_700_000_000.0


@pytest.fixture
def service(tmp_path: Path) -> Iterator[GuardService]:
    built = GuardService(embedded_default_config(tmp_path), clock=FakeClock(start=START))
    yield built
    built.close()


def scrape(metrics: ServiceMetrics) -> dict[str, list[Sample]]:
    """Samples by family name, as Prometheus's own parser reads the exposition."""
    families = text_string_to_metric_families(metrics.render().decode())
    return {family.name: list(family.samples) for family in families}


def types(metrics: ServiceMetrics) -> dict[str, str]:
    families = text_string_to_metric_families(metrics.render().decode())
    return {family.name: family.type for family in families}


def states_of(samples: list[Sample], **match: str) -> dict[str, float]:
    """``{state: value}`` of the samples whose labels include `match`."""
    return {
        s.labels["state"]: s.value
        for s in samples
        if all(s.labels.get(k) == v for k, v in match.items())
    }


def test_no_brokerguard_up_since_prometheus_records_up_itself(service):
    """A scrape that answers is Prometheus's ``up``; a gauge that is always 1 adds nothing."""
    assert "brokerguard_up" not in scrape(ServiceMetrics(service))


def test_build_info_carries_the_package_and_python_versions(service):
    """``brokerguard_build_info{version,python} 1``: which build runs, joinable on instance."""
    (sample,) = scrape(ServiceMetrics(service))["brokerguard_build_info"]
    assert sample.labels == {
        "version": brokerguard.__version__,
        "python": platform.python_version(),
    }
    assert sample.value == 1


def test_circuit_state_exports_every_state_with_the_current_one_at_1(service):
    """A forced-open read circuit: state="open" 1, closed and half_open 0; write closed."""
    metrics = ServiceMetrics(service)
    service.breakers["paper"]["read"].force_open("drill")

    samples = scrape(metrics)["brokerguard_circuit_state"]

    expected = {state.value: 0.0 for state in CircuitState}
    assert states_of(samples, broker="paper", scope="read") == {**expected, "open": 1.0}
    assert states_of(samples, broker="paper", scope="write") == {**expected, "closed": 1.0}


def test_broker_health_exports_every_state_with_the_current_one_at_1(service):
    """An open circuit makes the broker offline: state="offline" 1 and the others 0."""
    metrics = ServiceMetrics(service)
    before = states_of(scrape(metrics)["brokerguard_broker_health"], broker="paper")
    service.breakers["paper"]["read"].force_open("drill")

    after = states_of(scrape(metrics)["brokerguard_broker_health"], broker="paper")

    zero = {state.value: 0.0 for state in BrokerHealthState}
    assert before == {**zero, "healthy": 1.0}
    assert after == {**zero, "offline": 1.0}


def test_trading_state_exports_every_state_so_equals_1_queries_work(service):
    """A halted account has state="halted" 1 and active, reducing 0 (not a missing series)."""
    metrics = ServiceMetrics(service)
    service.tick()
    service.store.halt("paper-main", "drill", "operator:alice")

    samples = scrape(metrics)["brokerguard_trading_state"]

    zero = {state.value: 0.0 for state in TradingState}
    assert states_of(samples, account="paper-main") == {**zero, "halted": 1.0}
    assert states_of(samples, account="paper-small") == {**zero, "active": 1.0}


def test_data_quality_is_a_counter_named_total(service):
    """Bad broker data is a cumulative count: a ``_total`` counter, no gauge of that name."""
    metrics = ServiceMetrics(service)
    broker = service.accounts["paper-main"].broker
    broker.set_fault_plan(FaultPlan(bad_prices={"BTC/USD": "NaN"}))

    for _ in range(2):
        broker.get_prices(["BTC/USD"])
    exposed, kinds = scrape(metrics), types(metrics)

    assert "brokerguard_data_quality" not in exposed
    assert kinds["brokerguard_data_quality_issues"] == "counter"
    (sample,) = [
        s for s in exposed["brokerguard_data_quality_issues"] if s.labels["account"] == "paper-main"
    ]
    assert sample.name == "brokerguard_data_quality_issues_total"
    assert sample.labels["kind"].startswith("price")
    assert sample.value == 2


def stamps(metrics: ServiceMetrics) -> dict[str, float]:
    samples = scrape(metrics)["brokerguard_last_enforcement_timestamp_seconds"]
    return {s.labels["account"]: s.value for s in samples}


def test_last_enforcement_timestamp_is_the_wall_time_of_the_last_completed_step(service):
    """Absent before any step; the clock's time when each step completed; moves with each one.

    The paper broker's latency runs on the fake clock, so a step ends after it started.
    """
    metrics = ServiceMetrics(service)
    assert stamps(metrics) == {}

    service.tick()
    first, first_done = stamps(metrics), service.clock.time()
    service.clock.advance(30)  # type: ignore[attr-defined]
    second_started = service.clock.time()
    service.tick()
    second, second_done = stamps(metrics), service.clock.time()

    assert set(first) == set(second) == {"paper-main", "paper-small"}
    assert START < first["paper-main"] <= first["paper-small"] == first_done
    assert second_started <= second["paper-main"] <= second["paper-small"] == second_done


def test_an_unverified_step_does_not_move_the_last_enforcement_timestamp(service):
    """Positions unreadable is not a completed enforcement: the timestamp stays, so it ages."""
    metrics = ServiceMetrics(service)
    service.tick()
    before = stamps(metrics)
    service.breakers["paper"]["read"].force_open("drill")
    service.clock.advance(60)  # type: ignore[attr-defined]

    results = service.tick()

    assert {r["status"] for r in results.values()} == {"unverified"}
    assert stamps(metrics) == before
    assert all(stamp <= service.clock.time() - 60 for stamp in before.values())


def test_every_counter_ends_in_total_and_no_other_type_does(service):
    """The exposition's own types: counters are ``_total``; gauges never claim to be."""
    metrics = ServiceMetrics(service)
    service.tick()
    service.accounts["paper-main"].gate.check_entry("BTC/USD")

    text = metrics.render().decode()

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name.endswith("_total"), sample.name
            if family.type != "counter":
                assert not sample.name.endswith("_total"), sample.name


@st.composite
def drills(draw: st.DrawFn) -> list[tuple[str, str]]:
    actions = st.sampled_from(["force_open", "force_closed", "reset"])
    return draw(st.lists(st.tuples(st.sampled_from(["read", "write"]), actions), max_size=8))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=drills())
def test_exactly_one_circuit_state_is_1_per_breaker_after_any_operator_drill(
    tmp_path_factory, steps
):
    """Whatever the operator does, each breaker has one state at 1: its real state."""
    service = GuardService(
        embedded_default_config(tmp_path_factory.mktemp("drill")), clock=FakeClock(start=START)
    )
    try:
        metrics = ServiceMetrics(service)
        for scope, action in steps:
            breaker = service.breakers["paper"][scope]
            if action == "force_open":
                breaker.force_open("drill")
            else:
                getattr(breaker, action)()

        samples = scrape(metrics)["brokerguard_circuit_state"]

        for scope, breaker in service.breakers["paper"].items():
            states = states_of(samples, broker="paper", scope=scope)
            assert set(states) == {state.value for state in CircuitState}
            assert [s for s, v in states.items() if v == 1] == [breaker.state.value]
            assert sum(states.values()) == 1
    finally:
        service.close()
