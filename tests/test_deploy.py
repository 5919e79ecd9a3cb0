"""deploy/: the Grafana dashboard and the Prometheus rules match what the service exports."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from brokerguard.metrics import ServiceMetrics
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.testing import FakeClock
from tests.conftest import require_service

DEPLOY = pathlib.Path(__file__).parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "brokerguard.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
CONTRACT = {
    "brokerguard_circuit_state",
    "brokerguard_broker_calls_total",
    "brokerguard_broker_call_seconds_bucket",
    "brokerguard_positions",
    "brokerguard_position_cap",
    "brokerguard_trading_halted",
    "brokerguard_unvalued_positions",
    "brokerguard_enforcement_cycles_total",
    "brokerguard_liquidations_total",
}


@pytest.fixture(scope="module")
def exposed(tmp_path_factory) -> set[str]:
    """Every metric (family and sample) name one real scrape shows."""
    service = GuardService(
        embedded_default_config(tmp_path_factory.mktemp("deploy")), clock=FakeClock(start=1e9)
    )
    metrics = ServiceMetrics(service)
    service.tick()
    service.accounts["paper-main"].gate.check_entry("BTC/USD")
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        names.add(family.name)  # declared even before its first sample
        if family.type == "counter":
            names.add(f"{family.name}_total")
        names.update(sample.name for sample in family.samples)
    service.close()
    return names


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(brokerguard_[a-z_]+)\b", expression))


def test_the_contract_metrics_are_exported(exposed):
    """The metric names the issue promises are all in a real scrape."""
    assert exposed >= CONTRACT


def test_every_dashboard_panel_queries_an_exported_metric(exposed):
    """No dead panel: each expression names metrics the service really exposes."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "brokerguard-overview"
    for panel in dashboard["panels"]:
        if panel["title"].startswith("Fleet:"):
            continue  # checked against a fleet worker's scrape below
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, panel["title"]
            assert names <= exposed, f"{panel['title']}: {names - exposed}"


def test_every_alert_rule_queries_an_exported_metric(exposed):
    """The rules cover the seed's five alerts and the order truth's two, on exported metrics."""
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {
        "BrokerguardBrokerOffline",
        "BrokerguardTradingHalted",
        "BrokerguardEnforcementFailed",
        "BrokerguardPositionsLackingPrices",
        "BrokerguardCapExceeded",
        "BrokerguardOrdersUnresolved",
        "BrokerguardPositionsImplausible",
    }
    for rule in rules:
        assert metric_names(rule["expr"]) <= exposed, rule["alert"]


def test_the_fleet_rules_and_panels_query_what_a_fleet_worker_exports(redis_namespace, tmp_path):
    """The fleet rules and dashboard panels name only metrics a worker on Redis exposes."""
    from brokerguard.config import parse_config  # noqa: PLC0415
    from tests.conftest import REDIS_URL  # noqa: PLC0415

    config = parse_config(
        {
            "state_url": f"sqlite:///{tmp_path / 'state.db'}",
            "coordination_url": REDIS_URL,
            "coordination": {"namespace": redis_namespace},
            "alerts": [],
            "brokers": {"paper": {"kind": "paper"}},
            "accounts": [{"id": "acct-1", "broker": "paper"}],
        }
    )
    service = GuardService(config)
    metrics = ServiceMetrics(service)
    service.tick()
    names = {f.name for f in text_string_to_metric_families(metrics.render().decode())}
    service.close()
    groups = {g["name"]: g["rules"] for g in yaml.safe_load(RULES.read_text())["groups"]}
    assert {r["alert"] for r in groups["brokerguard-fleet"]} == {
        "BrokerguardCoordinationDown",
        "BrokerguardAccountUnenforced",
    }
    for rule in groups["brokerguard-fleet"]:
        assert metric_names(rule["expr"]) <= names, rule["alert"]
    fleet_panels = [
        p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"].startswith("Fleet:")
    ]
    assert len(fleet_panels) == 2
    for panel in fleet_panels:
        for target in panel["targets"]:
            assert metric_names(target["expr"]) <= names, panel["title"]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        require_service("promtool", "Debian's prometheus package is not installed (see .ci/run)")
    return subprocess.run(  # noqa: S603 (a fixed tool on our own files)
        [str(promtool), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules():
    """`promtool check rules` accepts the file."""
    done = _promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout


def test_promtool_unit_tests_pass():
    """`promtool test rules`: each alert fires when it should, and only then."""
    done = _promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
