"""The brokerguard command: exit codes that mean something, --json for machines, clean stops."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from brokerguard.cli import main
from tests.processes import wait_until_serving

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "paper.toml"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def over_cap_config(tmp_path) -> pathlib.Path:
    """A paper account holding 10 positions for a cap of 8, stored under tmp_path."""
    path = tmp_path / "over.toml"
    coins = {f"C{i:02d}/USD": str(i) for i in range(1, 11)}
    path.write_text(
        textwrap.dedent(
            f"""
            [store]
            url = "sqlite:///{tmp_path / "state.db"}"
            [brokers.paper]
            kind = "paper"
            settle_delay_s = 0
            prices = {json.dumps(coins).replace(":", " =")}
            [[accounts]]
            id = "acct"
            broker = "paper"
            max_positions = 8
            positions = {json.dumps(dict.fromkeys(coins, "1")).replace(":", " =")}
            """
        )
    )
    return path


def test_check_config_accepts_the_example(capsys):
    """A valid file: exit 0 and a one-line summary."""
    code, out, _ = run_cli(capsys, "check-config", str(EXAMPLE))
    assert code == 0
    assert "valid" in out
    code, out, _ = run_cli(capsys, "check-config", str(EXAMPLE), "--json")
    assert json.loads(out)["accounts"] == ["paper-main"]


def test_check_config_lists_every_problem_and_exits_2(capsys, tmp_path):
    """An invalid file: exit 2, every problem by field, no traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[[accounts]]\nid = "a"\nbroker = "nope"\nmax_positions = -1\n[brokers]\n')
    code, _, err = run_cli(capsys, "check-config", str(bad))
    assert code == 2
    assert "accounts[0].max_positions" in err
    assert "Traceback" not in err


def test_halt_status_resume_and_audit_round_trip(capsys, tmp_path):
    """Halt (0), status shows it (1), resume (0), resume again (1), all audited."""
    data = ["--data-dir", str(tmp_path)]
    assert (
        run_cli(capsys, "halt", "paper-main", "--reason", "drill", "--operator", "bob", *data)[0]
        == 0
    )
    code, out, _ = run_cli(capsys, "status", "--json", *data)
    assert code == 1
    status = json.loads(out)
    assert status["accounts"]["paper-main"]["halted"] is True
    assert status["halts"][0]["source"] == "operator:bob"
    code, out, _ = run_cli(
        capsys, "resume", "paper-main", "--operator", "bob", "--reason", "ok", *data
    )
    assert (code, "resumed" in out) == (0, True)
    assert (
        run_cli(capsys, "resume", "paper-main", "--operator", "bob", "--reason", "ok", *data)[0]
        == 1
    )
    assert run_cli(capsys, "status", *data)[0] == 0
    code, out, _ = run_cli(capsys, "audit", "paper-main", "--json", *data)
    assert [r["action"] for r in json.loads(out)] == ["resume_not_halted", "resume", "halt"]


def test_resume_needs_operator_and_reason(capsys, tmp_path):
    """Missing options are a usage error (exit 2)."""
    assert (
        run_cli(capsys, "resume", "paper-main", "--reason", "x", "--data-dir", str(tmp_path))[0]
        == 2
    )


def test_unknown_accounts_are_a_usage_error(capsys, tmp_path):
    """Exit 2 with the known accounts named."""
    code, _, err = run_cli(capsys, "halt", "ghost", "--reason", "x", "--data-dir", str(tmp_path))
    assert code == 2
    assert "paper-main" in err


def test_enforce_dry_run_lists_and_sends_nothing_then_enforce_sells(capsys, over_cap_config):
    """--dry-run prints the two smallest and exits 1; a real run liquidates them and exits 0."""
    code, out, _ = run_cli(capsys, "enforce", "acct", "--dry-run", "--config", str(over_cap_config))
    assert code == 1
    assert "would sell 1 C01/USD" in out
    assert "would sell 1 C02/USD" in out
    code, out, _ = run_cli(capsys, "audit", "--json", "--config", str(over_cap_config))
    assert json.loads(out) == []  # the dry run sent and recorded nothing
    code, out, _ = run_cli(capsys, "enforce", "acct", "--json", "--config", str(over_cap_config))
    assert code == 0
    assert sorted(json.loads(out)["liquidated"]) == ["C01/USD", "C02/USD"]


def test_run_for_a_while_then_stop_by_itself(tmp_path):
    """`brokerguard run --duration` runs the embedded default and exits 0 with a summary."""
    done = subprocess.run(  # noqa: S603 (our interpreter, our module)
        [
            sys.executable,
            "-m",
            "brokerguard",
            "run",
            "--duration",
            "3",
            "--data-dir",
            str(tmp_path),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "running the embedded default" in done.stderr
    assert "status page http://127.0.0.1:" in done.stderr
    assert "control endpoints OFF" in done.stderr
    assert "stopped after" in done.stderr
    assert "level=INFO" in done.stderr  # not a terminal: structured log lines


def test_sigterm_stops_run_cleanly(tmp_path):
    """SIGTERM lets the current step finish, then run exits 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "brokerguard", "run", "--data-dir", str(tmp_path), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        started = wait_until_serving(proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        err = started + err
    assert proc.returncode == 0, err
    assert "received SIGTERM" in err
    assert "stopped after" in err


def test_the_old_demo_is_a_subcommand(capsys):
    """`brokerguard demo` still tells the outage story."""
    code, out, _ = run_cli(capsys, "demo", "--duration", "300")
    assert code == 0
    assert "read circuit closed -> open" in out


def test_status_asks_the_running_service_first(capsys, tmp_path):
    """With a service listening, status shows its live view (brokers, accounts) and problems."""
    from brokerguard.server import StatusServer, create_app  # noqa: PLC0415
    from brokerguard.service import GuardService, embedded_default_config  # noqa: PLC0415
    from brokerguard.testing import FakeClock  # noqa: PLC0415

    service = GuardService(embedded_default_config(tmp_path), clock=FakeClock(start=1e9))
    server = StatusServer(create_app(service, control_token=None), port=0)
    server.start()
    try:
        code, out, _ = run_cli(capsys, "status", "--json", "--url", server.url)
        assert code == 0
        assert set(json.loads(out)["brokers"]) == {"paper"}
        service.breakers["paper"]["read"].force_open("drill")
        code, out, _ = run_cli(capsys, "status", "--url", server.url, "--data-dir", str(tmp_path))
        assert code == 1
        assert "broker paper offline" in out
    finally:
        server.stop()
        service.close()


SECRET = "hunter2-s3cr3t"  # noqa: S105 (a fake secret that must never be printed)


@pytest.fixture
def plain_config(tmp_path) -> pathlib.Path:
    """A valid paper configuration with its store under tmp_path."""
    path = tmp_path / "plain.toml"
    path.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "state.db"}"\n'
        '[brokers.paper]\nkind = "paper"\n[[accounts]]\nid = "a"\nbroker = "paper"\n'
    )
    return path


@pytest.mark.parametrize(
    "line",
    [
        f'state_url = "postgresql://bg@db/bg?sslmode=require&password={SECRET}"',
        f'coordination_url = "redis://127.0.0.1:6379/0?password={SECRET}"',
        f'state_url = "postgresql://bg:{SECRET}@db/bg"',
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_check_config_never_prints_a_password_given_in_a_url(capsys, tmp_path, line, as_json):
    """A secret in a URL is refused (exit 2) and appears nowhere in what check-config prints."""
    path = tmp_path / "secret.toml"
    path.write_text(
        f'{line}\n[brokers.paper]\nkind = "paper"\n[[accounts]]\nid = "a"\nbroker = "paper"\n'
    )
    code, out, err = run_cli(capsys, "check-config", str(path), *(["--json"] if as_json else []))
    assert code == 2
    assert "must not contain a password" in out + err
    assert SECRET not in out + err


def test_check_config_shows_the_store_and_coordination_urls_redacted(capsys, tmp_path):
    """A valid fleet config is summarised with its URLs through redact_url."""
    path = tmp_path / "fleet.toml"
    path.write_text(
        'state_url = "postgresql://bg@db/bg?sslmode=require"\n'
        'coordination_url = "redis://bg@127.0.0.1:6379/0"\n'
        '[store]\npassword_env = "BG_PG_PASSWORD"\n'
        '[coordination]\npassword_env = "BG_REDIS_PASSWORD"\n'
        '[brokers.paper]\nkind = "paper"\n[[accounts]]\nid = "a"\nbroker = "paper"\n'
    )
    code, out, _ = run_cli(capsys, "check-config", str(path), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["store"] == "postgresql://bg@db/bg?sslmode=require"
    assert summary["coordination"] == "redis://bg@127.0.0.1:6379/0"
    assert summary["passwords_from"] == {
        "store": "BG_PG_PASSWORD",
        "coordination": "BG_REDIS_PASSWORD",
    }


@pytest.mark.parametrize("token", ["/home/bob", "x" * 40, "0123456789abcdef" * 3])
def test_run_refuses_a_weak_control_token(capsys, monkeypatch, plain_config, token):
    """Case 5 of #12.11: the server does not start with a guessable control token (exit 2)."""
    monkeypatch.setenv("BG_WEAK_TOKEN", token)
    text = plain_config.read_text() + '[server]\ncontrol_token_env = "BG_WEAK_TOKEN"\nport = 0\n'
    plain_config.write_text(text)
    code, out, err = run_cli(capsys, "run", "--config", str(plain_config), "--duration", "0.1")
    assert code == 2
    assert "server.control_token_env: the control token in BG_WEAK_TOKEN is too weak" in err
    assert token not in out + err


@pytest.mark.parametrize(
    "args",
    [["--host", "0.0.0.0"], ["--host", "10.0.0.5"], ["--port", "70000"]],  # noqa: S104
)
def test_run_validates_host_and_port_given_on_the_command_line(capsys, plain_config, args):
    """Case 10 of #12.11: `run --host 0.0.0.0` meets the same rule as the file (exit 2)."""
    code, _, err = run_cli(capsys, "run", "--config", str(plain_config), "--duration", "0.1", *args)
    assert code == 2
    assert ("server.host:" if "--host" in args else "server.port:") in err
