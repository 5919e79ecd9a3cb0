"""`brokerguard simulate`: the naive bot breaks the rules the guarded one keeps, same world."""

from __future__ import annotations

import json

import pytest

from brokerguard.cli import main
from brokerguard.sim.scenarios import SCENARIOS, simulate

FIELDS = {
    "max_positions",
    "cap",
    "cap_violations",
    "orders_sent",
    "fallback_priced_orders",
    "duplicate_orders",
    "halts",
    "broker_calls_during_outage",
}


@pytest.fixture(scope="module")
def runs():
    return {name: simulate(name, seed=3) for name in SCENARIOS}


def test_the_incident_naive_ends_far_over_the_cap_guarded_never_exceeds_it(runs):
    """The seed's incident: failed fetches read as zero send the naive bot to several times 8."""
    naive, guarded = runs["incident"]["naive"], runs["incident"]["guarded"]
    assert naive.max_positions >= 3 * naive.cap
    assert naive.timeline[-1][1] > 2 * naive.cap  # it ends far over, not just spikes
    assert guarded.max_positions <= guarded.cap
    assert guarded.cap_violations == 0


def test_an_outage_is_spared_by_the_breaker(runs):
    """During a 10-minute outage the naive loop hammers the broker; the guard probes sparsely."""
    naive, guarded = runs["outage"]["naive"], runs["outage"]["guarded"]
    assert guarded.broker_calls_during_outage * 20 < naive.broker_calls_during_outage
    assert guarded.broker_calls_during_outage <= 15


def test_missing_prices_make_the_naive_bot_invent_them_never_the_guard(runs):
    """The naive bot sizes orders at $1.00; the guarded one never has a made-up price."""
    for name in ("no-prices", "outage"):
        assert runs[name]["naive"].fallback_priced_orders > 0, name
        assert runs[name]["guarded"].fallback_priced_orders == 0, name


def test_lost_confirmations_duplicate_naive_orders_never_guarded_ones(runs):
    """Blind retries of writes send orders twice; lookups before resending never do."""
    assert runs["flaky"]["naive"].duplicate_orders > 0
    assert runs["flaky"]["guarded"].duplicate_orders == 0
    assert runs["flaky"]["guarded"].max_positions <= runs["flaky"]["guarded"].cap


def test_sells_that_never_settle_end_in_a_halt_for_the_guard(runs):
    """The guard halts after its cycles; the naive bot keeps 'cleaning' and drifting up."""
    naive, guarded = runs["unsettled"]["naive"], runs["unsettled"]["guarded"]
    assert guarded.halts == 1
    assert naive.halts == 0
    assert naive.max_positions > guarded.max_positions


def test_every_field_is_reported_for_both_runs(runs):
    """Both runs report the documented fields."""
    for result in runs.values():
        assert set(result) == {"naive", "guarded"}
        for stats in result.values():
            assert set(stats.summary()) == FIELDS


def test_a_seed_replays_exactly():
    """Same seed, same story."""
    first = {k: v.summary() for k, v in simulate("flaky", seed=11).items()}
    again = {k: v.summary() for k, v in simulate("flaky", seed=11).items()}
    assert first == again


def test_the_command_prints_json_and_draws_the_plot(capsys, tmp_path):
    """--json holds naive and guarded with every field; --plot writes a PNG."""
    plot = tmp_path / "incident.png"
    code = main(
        ["simulate", "--scenario", "incident", "--seed", "1", "--json", "--plot", str(plot)]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(data) == {"naive", "guarded"}
    assert set(data["naive"]) == FIELDS
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_scenario_is_a_usage_error(capsys):
    """Exit 2 and the known names."""
    assert main(["simulate", "--scenario", "meteor"]) == 2
