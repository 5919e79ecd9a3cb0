"""GuardService as a fleet worker: leases decide who enforces, and Redis gone means blocked."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from brokerguard.config import parse_config
from brokerguard.coordination import RedisCoordinator
from brokerguard.errors import ConfigurationError
from brokerguard.risk import COORDINATION_UNAVAILABLE
from brokerguard.server import create_app
from brokerguard.service import GuardService
from brokerguard.store import open_store
from tests.conftest import REDIS_URL

from .proxy import TcpProxy

PRICES = {f"C{i:02d}/USD": str(i) for i in range(1, 13)}


def fleet_config(coordination_url: str, namespace: str, state_url: str) -> dict:
    return {
        "state_url": state_url,
        "coordination_url": coordination_url,
        "coordination": {"namespace": namespace, "lease_ttl_s": 30, "timeout_s": 0.3},
        "alerts": [],
        "brokers": {"paper": {"kind": "paper", "prices": PRICES, "settle_delay_s": 0}},
        "accounts": [
            {
                "id": f"acct-{n}",
                "broker": "paper",
                "max_positions": 4,
                "positions": dict.fromkeys(list(PRICES)[: 6 + n], "1"),
            }
            for n in range(3)
        ],
    }


def test_one_worker_enforces_each_account_and_a_clean_exit_hands_them_over(redis_namespace, pg_url):
    """Worker A takes every account; B skips them; A leaves; B enforces with newer tokens."""
    config = parse_config(fleet_config(REDIS_URL, redis_namespace, pg_url))
    a, b = GuardService(config), GuardService(config)
    first = a.tick()
    assert {r["status"] for r in first.values()} == {"compliant"}  # liquidated to the cap
    assert {r["status"] for r in b.tick().values()} == {"held_elsewhere"}
    assert b.accounts["acct-0"].broker.all_orders() == []  # B sent nothing
    tokens = {acct: a.store.fence_token(acct, namespace=redis_namespace) for acct in first}
    status = a.status()["service"]["coordination"]
    assert status["mode"] == "redis"
    assert status["accounts_held"] == ["acct-0", "acct-1", "acct-2"]
    scrape = TestClient(create_app(a, control_token=None)).get("/metrics").text
    assert "brokerguard_coordination_up 1.0" in scrape
    assert 'brokerguard_account_lease_held{account="acct-2"} 1.0' in scrape
    a.close()  # releases the leases

    second = b.tick()
    assert set(second) == set(first)
    assert {r["status"] for r in second.values()} == {"compliant"}
    assert all(
        b.store.fence_token(acct, namespace=redis_namespace) > tokens[acct] for acct in second
    )
    b.close()


def test_redis_gone_mid_run_blocks_trading_and_enforcement_until_it_returns(
    redis_namespace, tmp_path
):
    """Cut the link to Redis: no lease, no entry, not ready; restore it: all resume."""
    proxy = TcpProxy(("127.0.0.1", int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])))
    proxy.restore()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    config = parse_config(fleet_config(url, redis_namespace, f"sqlite:///{tmp_path / 's.db'}"))
    service = GuardService(config)
    try:
        assert {r["status"] for r in service.tick().values()} == {"compliant"}
        gate = service.accounts["acct-0"].gate
        assert gate.check_entry("C12/USD").code == "POSITION_CAP_REACHED"  # a known count
        assert service.ready()[0]

        proxy.cut()
        results = service.tick()
        assert {r["status"] for r in results.values()} == {"unverified"}
        assert all("unreachable" in r["reason"] for r in results.values())
        decision = gate.check_entry("C12/USD")
        assert decision.code == COORDINATION_UNAVAILABLE
        ready, reasons = service.ready()
        assert not ready
        assert any("coordination store unreachable" in r for r in reasons)
        http = TestClient(create_app(service, control_token=None))
        answer = http.get("/readyz")
        assert answer.status_code == 503
        assert any("coordination" in r for r in answer.json()["reasons"])
        assert service.status()["service"]["coordination"]["reachable"] is False

        proxy.restore()
        assert {r["status"] for r in service.tick().values()} == {"compliant"}
        assert service.ready()[0]
        assert http.get("/readyz").status_code == 200
        assert gate.check_entry("C12/USD").code == "POSITION_CAP_REACHED"  # decided again
    finally:
        proxy.cut()
        service.close()


def test_a_fleet_config_names_redis_and_refuses_passwords():
    """coordination_url: redis only, no inline password; state_url is the store's URL."""
    base = fleet_config(REDIS_URL, "ns", "sqlite:///x.db")
    assert parse_config(base).store.url == "sqlite:///x.db"
    for bad in ("http://127.0.0.1:6379", "redis://:hunter2@127.0.0.1:6379/0"):
        with pytest.raises(Exception, match="coordination_url") as info:
            parse_config({**base, "coordination_url": bad})
        assert "hunter2" not in str(info.value)
    with pytest.raises(Exception, match="two different stores"):
        parse_config({**base, "store": {"url": "sqlite:///y.db"}})


def test_the_cli_works_the_same_on_a_fleet_config(redis_namespace, pg_url, tmp_path, capsys):
    """halt, status, enforce and resume from the CLI on a Redis + PostgreSQL config."""
    import json  # noqa: PLC0415 (as the other CLI tests do)

    from brokerguard.cli import main  # noqa: PLC0415 (the CLI only where it is tested)

    config = tmp_path / "fleet.toml"
    data = fleet_config(REDIS_URL, redis_namespace, pg_url)
    accounts = "\n".join(
        f'[[accounts]]\nid = "{a["id"]}"\nbroker = "paper"\nmax_positions = 4\n'
        f"positions = {json.dumps(a['positions']).replace(':', ' =')}\n"
        for a in data["accounts"]
    )
    config.write_text(
        f'state_url = "{pg_url}"\ncoordination_url = "{REDIS_URL}"\nalerts = []\n'
        f'[coordination]\nnamespace = "{redis_namespace}"\n'
        f'[brokers.paper]\nkind = "paper"\nsettle_delay_s = 0\n'
        f"prices = {json.dumps(PRICES).replace(':', ' =')}\n{accounts}"
    )
    args = ["--config", str(config)]
    assert main(["halt", "acct-1", "--reason", "review", "--operator", "ops", *args]) == 0
    assert main(["enforce", "acct-2", *args]) == 0  # under its lease, fenced
    store = open_store(pg_url)
    assert store.fence_token("acct-2", namespace=redis_namespace) >= 1
    worker = RedisCoordinator(REDIS_URL, namespace=redis_namespace)
    assert worker.acquire_lease("acct-0", "worker-x", 30) is not None  # a worker has it
    capsys.readouterr()
    assert main(["enforce", "acct-0", "--json", *args]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "held_elsewhere"
    assert store.fence_token("acct-0", namespace=redis_namespace) is None  # nothing done
    worker.close()
    capsys.readouterr()
    assert main(["status", "--json", *args]) == 1  # a halted account is a problem to show
    status = json.loads(capsys.readouterr().out)
    assert [h["account_id"] for h in status["halts"]] == ["acct-1"]
    assert main(["resume", "acct-1", "--operator", "ops", "--reason", "done", *args]) == 0
    assert store.halts() == []
    store.close()


def test_the_fleet_command_shows_workers_and_who_enforces_what(redis_namespace, tmp_path, capsys):
    """`brokerguard fleet`: live workers and each account's holder.

    An account nobody holds is a problem (exit 1); a configuration without coordination_url is
    a usage error (exit 2).
    """
    import json  # noqa: PLC0415 (as the other CLI tests do)

    from brokerguard.cli import main  # noqa: PLC0415 (the CLI only where it is tested)

    state_url = f"sqlite:///{tmp_path / 's.db'}"
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'state_url = "{state_url}"\ncoordination_url = "{REDIS_URL}"\nalerts = []\n'
        f'[coordination]\nnamespace = "{redis_namespace}"\n'
        '[brokers.paper]\nkind = "paper"\n'
        + "".join(f'[[accounts]]\nid = "acct-{n}"\nbroker = "paper"\n' for n in range(3))
    )
    service = GuardService(parse_config(fleet_config(REDIS_URL, redis_namespace, state_url)))
    service.tick()
    capsys.readouterr()
    assert main(["fleet", "--json", "--config", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["accounts_without_a_worker"] == []
    assert shown["workers"][service.leases.owner]["accounts"] == ["acct-0", "acct-1", "acct-2"]
    assert shown["workers"][service.leases.owner]["live"] is True
    service.close()  # gives the accounts back

    assert main(["fleet", "--json", "--config", str(config)]) == 1
    assert json.loads(capsys.readouterr().out)["accounts_without_a_worker"] == [
        "acct-0",
        "acct-1",
        "acct-2",
    ]
    plain = tmp_path / "plain.toml"
    plain.write_text('[brokers.paper]\nkind = "paper"\n[[accounts]]\nid = "a"\nbroker = "paper"\n')
    assert main(["fleet", "--config", str(plain)]) == 2


def test_passwords_come_from_the_environment_reach_both_services_and_are_never_shown(
    redis_server, pg_url, monkeypatch
):
    """password_env: Redis (requirepass) and PostgreSQL get it; status and URLs never show it."""
    import redis  # noqa: PLC0415 (only tests that need Redis import it)

    secret = "s3cret-from-the-environment-7f3a9"  # noqa: S105 (a test's own throwaway value)
    redis.Redis.from_url(redis_server.url).config_set("requirepass", secret)
    monkeypatch.setenv("BG_TEST_REDIS_PASSWORD", secret)
    monkeypatch.setenv("BG_TEST_PG_PASSWORD", secret)
    settings = fleet_config(redis_server.url, "pw-test", pg_url)
    settings["coordination"]["password_env"] = "BG_TEST_REDIS_PASSWORD"  # noqa: S105 (a name)
    settings["store"] = {"password_env": "BG_TEST_PG_PASSWORD"}
    service = GuardService(parse_config(settings))
    try:
        assert {r["status"] for r in service.tick().values()} == {"compliant"}
        assert service.ready()[0]
        assert secret not in json.dumps(service.status())
        assert secret not in service.store.safe_url + service.coordinator.safe_url
    finally:
        service.close()
    without = RedisCoordinator(redis_server.url, namespace="pw-test", timeout=0.3)
    assert not without.ping()  # no password: fail closed, not connected


def test_a_named_password_variable_that_is_not_set_refuses_to_start(pg_url, monkeypatch):
    """A password_env naming an unset variable is a configuration error, never a silent try."""
    monkeypatch.delenv("BG_TEST_UNSET_PASSWORD", raising=False)
    settings = fleet_config(REDIS_URL, "pw-unset", pg_url)
    settings["store"] = {"password_env": "BG_TEST_UNSET_PASSWORD"}
    with pytest.raises(ConfigurationError, match="BG_TEST_UNSET_PASSWORD"):
        GuardService(parse_config(settings))
