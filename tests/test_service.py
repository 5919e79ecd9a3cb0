"""The guard service: config in, shared breakers, every account enforced, status without secrets."""

from __future__ import annotations

import json
import threading

import pytest

from brokerguard import BrokerGuardError, ConfigurationError, PaperBroker
from brokerguard.brokers.ccxt import CcxtBroker
from brokerguard.config import parse_config
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.sim.kraken import DEFAULT_API_KEY, DEFAULT_API_SECRET, running_kraken
from brokerguard.testing import FakeClock


@pytest.fixture
def service(tmp_path):
    clock = FakeClock(start=1_795_000_000.0)
    svc = GuardService(embedded_default_config(tmp_path), clock=clock, seed=3)
    yield svc
    svc.close()


def test_the_embedded_default_is_a_paper_broker_on_sqlite(service, tmp_path):
    """Two paper accounts on one broker, sharing its two breakers; the store is a file."""
    assert set(service.accounts) == {"paper-main", "paper-small"}
    main, small = service.accounts["paper-main"], service.accounts["paper-small"]
    assert isinstance(main.broker, PaperBroker)
    assert main.broker.read_breaker is small.broker.read_breaker
    assert main.broker.write_breaker is small.broker.write_breaker
    assert main.broker.market is small.broker.market  # one exchange, one price per symbol
    assert main.broker.fault_plan is small.broker.fault_plan
    assert (tmp_path / "state.db").exists()


def test_the_demo_strategy_is_held_at_the_cap_by_gate_and_enforcer(service):
    """Entries stop at the cap; rogue entries past it are liquidated by the next pass."""
    outcomes = []
    for step in range(40):
        outcomes.extend(service.strategy_step(account_id) for account_id in service.accounts)
        if step % 4 == 3:
            service.tick()
        service.clock.advance(2.0)
    # The demo's fault plan has outages: a pass inside one sends nothing (unverified, closed);
    # the first pass that can see the positions brings every account back to its cap.
    for _ in range(20):
        results = service.tick()
        if all(r["status"] != "unverified" for r in results.values()):
            break
        service.clock.advance(10.0)
    assert all(r["status"] != "unverified" for r in results.values()), results
    assert any("POSITION_CAP_REACHED" in o for o in outcomes)
    for account_id, runtime in service.accounts.items():
        held = runtime.broker.true_positions()
        assert len(held) <= runtime.config.max_positions, account_id
    assert all(not o.endswith("entered") or "DOGE" not in o for o in outcomes)  # NaN price


def test_status_reports_everything_and_is_json(service):
    """Brokers, accounts, halts and events; JSON-serialisable."""
    service.tick()
    status = json.loads(json.dumps(service.status()))
    assert status["service"]["store_ok"] is True
    assert status["brokers"]["paper"]["health_state"] in {"healthy", "degraded"}
    assert set(status["brokers"]["paper"]["breakers"]) == {"read", "write"}
    account = status["accounts"]["paper-main"]
    assert account["max_positions"] == 8
    assert account["last_enforcement"]["status"] == "compliant"
    assert account["trading_state"] == "active"


def test_operators_halt_and_resume_through_the_service(service):
    """A manual halt is audited with the operator; unknown accounts are a clear error."""
    service.halt("paper-main", "suspicious fills", "alice")
    assert service.status()["accounts"]["paper-main"]["halt"]["source"] == "operator:alice"
    assert service.accounts["paper-main"].gate.check_entry("BTC/USD").code == "ACCOUNT_HALTED"
    assert service.resume("paper-main", "alice", "checked")
    assert service.status()["halts"] == []
    with pytest.raises(ConfigurationError, match="no account"):
        service.halt("nope", "x", "alice")


def test_readiness_fails_while_a_broker_is_offline(service):
    """Not ready while a circuit is open, and says why."""
    assert service.ready() == (True, [])
    service.breakers["paper"]["read"].force_open("drill")
    ready, reasons = service.ready()
    assert not ready
    assert reasons == ["broker paper offline (read circuit open)"]


def test_run_stops_cleanly_after_the_current_pass(service):
    """run() returns once stop() is called; the pass in progress completes."""
    passes = []
    service.exits.add_listener(lambda event: None)
    original = service.tick

    def tick():
        result = original()
        passes.append(result)
        if len(passes) == 3:
            service.stop()
        return result

    service.tick = tick  # type: ignore[method-assign]
    runner = threading.Thread(target=service.run, kwargs={"demo_strategy": True})
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert len(passes) == 3
    assert all(set(p) == {"paper-main", "paper-small"} for p in passes)


def test_a_ccxt_broker_takes_its_keys_from_the_environment_only(tmp_path, monkeypatch):
    """Keys come from the named variables; the status never shows them."""
    monkeypatch.setenv("BG_TEST_KRAKEN_KEY", DEFAULT_API_KEY)
    monkeypatch.setenv("BG_TEST_KRAKEN_SECRET", DEFAULT_API_SECRET)
    config = parse_config(
        {
            "store": {"url": "sqlite://"},
            "brokers": {
                "kraken": {
                    "kind": "ccxt",
                    "exchange": "kraken",
                    "api_key_env": "BG_TEST_KRAKEN_KEY",
                    "api_secret_env": "BG_TEST_KRAKEN_SECRET",
                }
            },
            "accounts": [{"id": "kraken-1", "broker": "kraken", "max_positions": 2}],
        }
    )
    with running_kraken(balances={"ZUSD": "1000", "XXBT": "0.1"}) as kraken:
        service = GuardService(config, clock=FakeClock(start=1_795_000_000.0))
        broker = service.accounts["kraken-1"].broker
        assert isinstance(broker, CcxtBroker)
        broker.exchange.urls["api"] = {"public": kraken.url, "private": kraken.url}
        broker.exchange.enableRateLimit = False
        results = service.tick()
        assert results["kraken-1"]["status"] == "compliant"
        assert results["kraken-1"]["position_count"] == 1
        text = json.dumps(service.status())
        assert DEFAULT_API_SECRET not in text
        assert DEFAULT_API_KEY not in text
        service.close()


def test_many_accounts_on_one_broker_stay_within_its_rate_limit(tmp_path):
    """Six accounts share one paper broker limited to 5 calls/s (burst 2): a pass obeys it."""
    config = parse_config(
        {
            "store": {"url": "sqlite://"},
            "enforcement": {"max_concurrency": 1},
            "brokers": {"paper": {"kind": "paper", "max_calls_per_s": 5, "burst": 2}},
            "accounts": [
                {
                    "id": f"acct-{i}",
                    "broker": "paper",
                    "max_positions": 2,
                    "positions": {"BTC/USD": "0.01", "ETH/USD": "0.1", "SOL/USD": "1"},
                }
                for i in range(6)
            ],
        }
    )
    clock = FakeClock(start=1_795_000_000.0)
    service = GuardService(config, clock=clock)
    service.tick()
    times = sorted(
        call.at for runtime in service.accounts.values() for call in runtime.broker.calls
    )
    assert len(times) > 20
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 1.0)
        assert in_window <= 2 + 5, (start, in_window)
    assert service.status()["brokers"]["paper"]["rate_limit"]["waited_s"] > 0
    service.close()


def test_status_shows_unresolved_orders_from_the_broker_and_the_journal(service):
    """An order of unknown outcome is visible (and counted in metrics) until it is resolved."""
    from brokerguard.metrics import ServiceMetrics  # noqa: PLC0415 (only this test scrapes)
    from brokerguard.models import OrderRequest  # noqa: PLC0415

    runtime = service.accounts["paper-main"]
    service.store.record_order_intent(
        "paper-main",
        OrderRequest("BTC/USD", "sell", "1", "journaled-1", service.clock.time() + 10),
        purpose="cap_liquidation",
    )
    service.store.record_order_status("journaled-1", "unresolved")
    runtime.broker.set_fault_plan(type(runtime.broker.fault_plan)(error_rate={"submit_order": 1.0}))
    with pytest.raises(BrokerGuardError):
        runtime.broker.place_market_order("ETH/USD", "buy", "0.01", client_order_id="sent-1")

    account = json.loads(json.dumps(service.status()))["accounts"]["paper-main"]
    scrape = ServiceMetrics(service).render().decode()

    assert {o["client_order_id"] for o in account["unresolved_orders"]} == {
        "sent-1",
        "journaled-1",
    }
    assert account["positions_suspect"] is None
    assert 'brokerguard_orders_unresolved{account="paper-main"} 2.0' in scrape
    assert 'brokerguard_positions_implausible{account="paper-main"} 0.0' in scrape


def test_the_order_truth_settings_reach_every_broker(tmp_path):
    """order_deadline_s, the margin, the plausibility policy and ignore_assets are applied."""
    config = parse_config(
        {
            "store": {"url": "sqlite://"},
            "brokers": {
                "paper": {
                    "kind": "paper",
                    "order_deadline_s": 20,
                    "resolution_margin_s": 2,
                    "positions_confirm_reads": 5,
                    "positions_confirm_after_s": 90,
                },
                "kraken": {"kind": "ccxt", "exchange": "kraken", "ignore_assets": ["KFEE"]},
            },
            "accounts": [
                {"id": "p-1", "broker": "paper", "max_positions": 2},
                {"id": "k-1", "broker": "kraken", "max_positions": 2},
            ],
        }
    )
    service = GuardService(config, clock=FakeClock(start=1_795_000_000.0))
    paper = service.accounts["p-1"].broker
    kraken = service.accounts["k-1"].broker
    assert (paper.order_deadline_s, paper.resolution_margin_s) == (20.0, 2.0)
    assert paper.plausibility_policy.confirm_reads == 5
    assert paper.plausibility_policy.confirm_after_s == 90
    assert isinstance(kraken, CcxtBroker)
    assert kraken.ignore_assets == frozenset({"KFEE"})
    assert kraken.order_deadline_s == 10.0
    service.close()


@pytest.mark.parametrize("deadline", [0, 1.5, 61])
def test_an_order_deadline_kraken_would_refuse_is_a_configuration_error(deadline):
    """Kraken takes a deadline 2 to 60 seconds ahead: anything else is refused at load."""
    with pytest.raises(ConfigurationError):
        parse_config(
            {
                "brokers": {"paper": {"kind": "paper", "order_deadline_s": deadline}},
                "accounts": [{"id": "p-1", "broker": "paper", "max_positions": 2}],
            }
        )


def test_the_service_refreshes_a_configured_dead_man_switch_every_pass(tmp_path):
    """Each pass re-arms it (status shows the trigger); when passes stop, resting orders go."""
    config = parse_config(
        {
            "store": {"url": f"sqlite:///{tmp_path / 's.db'}"},
            "brokers": {"paper": {"kind": "paper", "dead_man_switch_s": 60, "settle_delay_s": 0}},
            "accounts": [{"id": "p-1", "broker": "paper", "max_positions": 3}],
        }
    )
    clock = FakeClock(start=1_795_000_000.0)
    service = GuardService(config, clock=clock)
    broker = service.accounts["p-1"].broker
    price = broker.get_current_price("BTC/USD")
    broker.place_order(
        "BTC/USD", "buy", "0.01", order_type="limit", price=price / 2, client_order_id="rest"
    )
    for _ in range(5):
        service.tick()
        clock.advance(30)
    switch = service.status()["accounts"]["p-1"]["dead_man_switch"]
    assert switch["error"] is None
    assert switch["trigger_at"] == pytest.approx(clock.time() - 30 + 60)
    assert broker.get_order("rest").status.value == "open"
    clock.advance(61)  # the service stopped: no refresh
    assert broker.get_order("rest").status.value == "canceled"
    service.close()


def test_a_dead_man_switch_shorter_than_15_s_is_refused():
    """A switch that fires between two refreshes would cancel every resting order."""
    with pytest.raises(ConfigurationError):
        parse_config(
            {
                "brokers": {"paper": {"kind": "paper", "dead_man_switch_s": 5}},
                "accounts": [{"id": "p-1", "broker": "paper", "max_positions": 3}],
            }
        )
