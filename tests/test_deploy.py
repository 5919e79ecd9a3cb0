"""deploy/: the Grafana dashboard and the Prometheus rules match what the service exports.

The reference is a real scrape: ``brokerguard run`` started as a process, its ``/metrics``
read over HTTP and parsed with prometheus_client's parser. Every metric a rule, a rule test
or a panel names must be in it, with the labels and label values they select on, so a rename
fails here instead of leaving a dead panel or an alert that can never fire.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

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
    "brokerguard_data_quality_issues_total",
    "brokerguard_build_info",
    "brokerguard_last_enforcement_timestamp_seconds",
}
RENAMED = {"brokerguard_up", "brokerguard_data_quality"}
SELECTOR = re.compile(r"\b(brokerguard_[a-z_]+)\s*\{([^}]*)\}")
ENUMS = frozenset({"state", "status", "scope", "outcome"})
"""Labels whose values are a fixed set: a rule test may invent accounts, not states."""
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


@dataclass
class Scrape:
    """One ``/metrics`` body: its text and, per sample name, the label sets seen."""

    text: str
    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls(text)
        for family in text_string_to_metric_families(text):
            scrape.names.add(family.name)  # declared even before its first sample
            if family.type == "counter":
                scrape.names.add(f"{family.name}_total")
            for sample in family.samples:
                scrape.names.add(sample.name)
                scrape.samples.setdefault(sample.name, []).append(dict(sample.labels))
        return scrape


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (our own local server)
        return str(answer.read().decode())


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[str]:
    """`brokerguard run` on the embedded default, as an operator starts it; its base URL."""
    data = tmp_path_factory.mktemp("run")
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BROKERGUARD")}
    brokerguard = pathlib.Path(sys.executable).parent / "brokerguard"
    with (data / "stderr.log").open("w") as log:
        process = subprocess.Popen(  # noqa: S603 (this venv's own entry point)
            [str(brokerguard), "run", "--data-dir", str(data), "--port", str(port)],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, (data / "stderr.log").read_text()[-3000:]
                try:
                    get(f"{base}/healthz")
                    break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        pytest.fail("brokerguard run did not answer /healthz in 60 s")
                    time.sleep(0.3)
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def exposed(running) -> Scrape:
    """A scrape of the running service once every account has completed an enforcement."""
    deadline = time.monotonic() + 60
    while True:
        scrape = Scrape.parse(get(f"{running}/metrics"))
        stamps = scrape.samples.get("brokerguard_last_enforcement_timestamp_seconds", [])
        positions = scrape.samples.get("brokerguard_positions", [])
        if stamps and len(stamps) == len(positions):
            return scrape
        if time.monotonic() > deadline:
            pytest.fail("no completed enforcement on every account in 60 s")
        time.sleep(0.5)


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(brokerguard_[a-z_]+)\b", expression))


def selections(expression: str) -> Iterator[tuple[str, str, str, str]]:
    """``(metric, label, operator, value)`` for each label matcher on a brokerguard metric."""
    for metric, matchers in SELECTOR.findall(expression):
        for label, operator, value in MATCHER.findall(matchers):
            yield metric, label, operator, value


def assert_selects_what_exists(
    expression: str, scrape: Scrape, where: str, values_of: frozenset[str] | None = None
) -> None:
    """Each metric is exported, each label it filters on exists, each ``=`` value occurs.

    `values_of` limits the value check to those labels (made-up accounts in a rule test are
    fine; a made-up state is not).
    """
    names = metric_names(expression)
    assert names, where
    assert names <= scrape.names, f"{where}: {names - scrape.names}"
    for metric, label, operator, value in selections(expression):
        seen = scrape.samples.get(metric, [])
        if label == "instance" or not seen:
            continue  # Prometheus adds instance; a family without samples has no labels yet
        assert any(label in labels for labels in seen), f"{where}: {metric} has no {label}"
        if operator == "=" and (values_of is None or label in values_of):
            values = {labels.get(label) for labels in seen}
            assert value in values, f"{where}: {metric}{{{label}}} is one of {values}"


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def rules() -> dict[str, list[dict[str, str]]]:
    return {g["name"]: g["rules"] for g in yaml.safe_load(RULES.read_text())["groups"]}


def test_the_contract_metrics_are_exported(exposed):
    """The metric names the issue promises are all in a real scrape, the renamed ones gone."""
    assert exposed.names >= CONTRACT
    assert not exposed.names & RENAMED


def test_every_state_is_a_label_with_one_state_at_1(exposed):
    """Circuit, broker health and trading state: every state exported, one of them 1."""
    families = {f.name: f for f in text_string_to_metric_families(exposed.text)}
    for name, key in (
        ("brokerguard_circuit_state", ("broker", "scope")),
        ("brokerguard_broker_health", ("broker",)),
        ("brokerguard_trading_state", ("account",)),
    ):
        by_owner: dict[tuple[str, ...], dict[str, float]] = {}
        for sample in families[name].samples:
            owner = tuple(sample.labels[k] for k in key)
            by_owner.setdefault(owner, {})[sample.labels["state"]] = sample.value
        assert by_owner, name
        for owner, states in by_owner.items():
            assert len(states) == 3, (name, owner, states)
            assert sorted(states.values()) == [0, 0, 1], (name, owner, states)


def test_promtool_check_metrics_is_clean_on_a_real_scrape(exposed):
    """`promtool check metrics` (Prometheus's naming lint) finds nothing to say."""
    done = _promtool("check", "metrics", stdin=exposed.text)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""
    assert done.stderr.strip() == ""


def test_every_dashboard_panel_queries_an_exported_metric(exposed):
    """No dead panel: each expression names metrics and label values the service exposes."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "brokerguard-overview"
    for title, expression in dashboard_expressions():
        if title.startswith("Fleet:"):
            continue  # checked against a fleet worker's scrape below
        assert_selects_what_exists(expression, exposed, title)


def test_every_alert_rule_queries_an_exported_metric(exposed):
    """The seed's five alerts, the order truth's two, stalled and down, on exported metrics."""
    group = rules()["brokerguard"]
    assert {r["alert"] for r in group} == {
        "BrokerguardBrokerOffline",
        "BrokerguardDown",
        "BrokerguardTradingHalted",
        "BrokerguardEnforcementFailed",
        "BrokerguardEnforcementStalled",
        "BrokerguardPositionsLackingPrices",
        "BrokerguardCapExceeded",
        "BrokerguardOrdersUnresolved",
        "BrokerguardPositionsImplausible",
    }
    for rule in group:
        if rule["alert"] == "BrokerguardDown":
            continue  # Prometheus's own `up`: checked against the scrape config below
        assert_selects_what_exists(rule["expr"], exposed, rule["alert"])


def test_the_down_alert_watches_the_scrape_job_of_the_shipped_config():
    """`up{job=...}` names the job deploy/prometheus/prometheus.yml scrapes the workers with."""
    (rule,) = [r for r in rules()["brokerguard"] if r["alert"] == "BrokerguardDown"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (job,) = re.findall(r'^up\{job="([^"]+)"\} == 0$', rule["expr"])
    assert jobs[job]["dns_sd_configs"][0]["names"] == ["worker"]


def test_the_rule_tests_feed_series_shaped_like_the_scrape(exposed):
    """The rule tests' input series have exported names, labels and states: real data."""
    fleet_only = {"brokerguard_coordination_up", "brokerguard_account_lease_held"}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for series in group["input_series"]:
            name = series["series"].split("{")[0]
            if name in fleet_only or name == "up":
                continue  # a fleet worker's metrics, checked below; Prometheus's own `up`
            assert_selects_what_exists(series["series"], exposed, series["series"], ENUMS)
            labels = {label for _, label, _, _ in selections(series["series"])} - {"instance"}
            exported = {label for seen in exposed.samples[name] for label in seen}
            assert labels == exported, f"{series['series']}: the scrape has {exported}"


def test_the_fleet_rules_and_panels_query_what_a_fleet_worker_exports(redis_namespace, tmp_path):
    """The fleet rules and dashboard panels name only metrics a worker on Redis exposes."""
    from fastapi.testclient import TestClient  # noqa: PLC0415

    from brokerguard.config import parse_config  # noqa: PLC0415
    from brokerguard.server.app import create_app  # noqa: PLC0415
    from brokerguard.service import GuardService  # noqa: PLC0415
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
    try:
        service.tick()
        scrape = Scrape.parse(
            TestClient(create_app(service, control_token=None)).get("/metrics").text
        )
    finally:
        service.close()
    assert {r["alert"] for r in rules()["brokerguard-fleet"]} == {
        "BrokerguardCoordinationDown",
        "BrokerguardAccountUnenforced",
    }
    for rule in rules()["brokerguard-fleet"]:
        assert_selects_what_exists(rule["expr"], scrape, rule["alert"])
    fleet_panels = [(t, e) for t, e in dashboard_expressions() if t.startswith("Fleet:")]
    assert len(fleet_panels) == 2
    for title, expression in fleet_panels:
        assert_selects_what_exists(expression, scrape, title)


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        require_service("promtool", "Debian's prometheus package is not installed (see .ci/run)")
    return subprocess.run(  # noqa: S603 (a fixed tool on our own files)
        [str(promtool), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_promtool_checks_the_rules():
    """`promtool check rules` accepts the file."""
    done = _promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_promtool_unit_tests_pass():
    """`promtool test rules`: each alert fires when it should, and only then."""
    done = _promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """Each panel's expression parses (promtool checks them as recording rules)."""
    recording = [
        {"record": f"dashboard:panel_{i}", "expr": expression}
        for i, (_, expression) in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    done = _promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(recording)} rules found" in done.stdout
