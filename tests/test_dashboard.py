"""The Grafana dashboard only queries metrics the service really exposes."""

from __future__ import annotations

import json
import pathlib
import re

from prometheus_client.parser import text_string_to_metric_families

from brokerguard.metrics import ServiceMetrics
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.testing import FakeClock

DASHBOARD = pathlib.Path(__file__).parents[1] / "dashboards" / "brokerguard.json"
FUNCTIONS = {"sum", "by", "rate", "increase", "max", "min", "avg"}


def test_every_panel_queries_an_exposed_metric(tmp_path):
    """Each expression's metric names appear in a real /metrics scrape (no dead panels)."""
    service = GuardService(embedded_default_config(tmp_path), clock=FakeClock(start=1e9))
    metrics = ServiceMetrics(service)
    service.tick()
    service.accounts["paper-main"].gate.check_entry("BTC/USD")
    service.breakers["paper"]["read"].force_open("drill")
    exposed = set()
    for family in text_string_to_metric_families(metrics.render().decode()):
        exposed.add(family.name)  # declared, even while it has no sample yet
        exposed.update(sample.name for sample in family.samples)
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "brokerguard-overview"
    assert len(dashboard["panels"]) >= 8
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = {
                n
                for n in re.findall(r"\b(brokerguard_[a-z_]+)\b", target["expr"])
                if n not in FUNCTIONS
            }
            assert names, panel["title"]
            missing = names - exposed
            assert not missing, f"{panel['title']}: {missing}"
    service.close()
