"""Output that tells the truth (issue 15): what a command looked at, what failed, and one rule."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from brokerguard.cli import main
from tests.processes import wait_until_serving


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _closed_port() -> int:
    """A port nothing listens on (bound for a moment, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------- enforce --dry-run


def test_enforce_dry_run_says_it_looked_at_a_fresh_broker_of_its_own(capsys, tmp_path):
    """On the embedded default it says plainly it built its own paper broker; reason is set."""
    data = ["--data-dir", str(tmp_path)]
    code, out, _ = run_cli(capsys, "enforce", "paper-main", "--dry-run", "--json", *data)
    result = json.loads(out)
    assert "a fresh broker built by this command" in result["looked_at"]
    assert "not the running service's" in result["looked_at"]
    assert "paper broker lives in memory" in result["looked_at"]
    assert result["reason"]  # never empty, compliant or not
    assert code == (0 if result["status"] == "compliant" else 1)
    code, out, _ = run_cli(capsys, "enforce", "paper-main", "--dry-run", *data)
    assert out.startswith("looked at: a fresh broker built by this command")


def test_enforce_reason_is_said_even_when_compliant(capsys, tmp_path):
    """A compliant result says why in words, from its figures."""
    config = tmp_path / "small.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "s.db"}"\n'
        '[brokers.paper]\nkind = "paper"\nsettle_delay_s = 0\nprices = { "BTC/USD" = "1" }\n'
        '[[accounts]]\nid = "acct"\nbroker = "paper"\nmax_positions = 8\n'
        'positions = { "BTC/USD" = "1" }\n'
    )
    code, out, _ = run_cli(
        capsys, "enforce", "acct", "--dry-run", "--json", "--config", str(config)
    )
    result = json.loads(out)
    assert (code, result["status"]) == (0, "compliant")
    assert result["reason"] == "1 position(s), within the cap of 8"
    assert str(config) in result["looked_at"]


# ---------------------------------------------------------------- status --url


def test_status_url_with_no_service_says_so_and_exits_1(capsys, tmp_path):
    """Asked for the live view and nobody answers: stderr says so, the store view is flagged."""
    url = f"http://127.0.0.1:{_closed_port()}"
    code, out, err = run_cli(capsys, "status", "--url", url, "--data-dir", str(tmp_path))
    assert code == 1
    assert f"no running service answered at {url}" in err
    assert "store's view" in err
    assert "paper-main" in out  # the store's view is still printed
    code, out, _ = run_cli(capsys, "status", "--json", "--url", url, "--data-dir", str(tmp_path))
    data = json.loads(out)
    assert code == 1
    assert data["live"] is False
    assert data["service_url"] == url
    assert data["service_error"]


# ---------------------------------------------------------------- audit ACCOUNT


def test_audit_of_an_unknown_account_is_exit_2_like_halt(capsys, tmp_path):
    """One rule for all: an account not in the configuration is a usage error, named."""
    data = ["--data-dir", str(tmp_path)]
    code, out, err = run_cli(capsys, "audit", "nosuch", *data)
    assert code == 2
    assert "no account 'nosuch'" in err
    assert "paper-main" in err
    assert run_cli(capsys, "audit", "paper-main", *data)[0] == 0
    code, out, _ = run_cli(capsys, "audit", "--json", *data)
    assert (code, json.loads(out)) == (0, [])


# ---------------------------------------------------------------- --json errors


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["halt", "ghost", "--reason", "x"], "no account 'ghost'"),
        (["audit", "ghost"], "no account 'ghost'"),
        (["enforce", "ghost", "--dry-run"], "no account 'ghost'"),
        (["resume", "paper-main", "--reason", "x"], "--operator"),  # a usage error
        (["status", "--url", "ftp://nowhere"], "--url must be http(s)"),
        (["demo", "--duration", "-1"], "--duration"),
        (["run", "--port", "99999"], "port"),
    ],
)
def test_every_error_is_json_on_stdout_under_json(capsys, tmp_path, args, needle):
    """Under --json a machine reads the error from stdout: {"error", "exit_code": 2}."""
    code, out, _ = run_cli(capsys, *args, "--json", "--data-dir", str(tmp_path))
    if args[0] == "demo":  # demo keeps no data
        code, out, _ = run_cli(capsys, *args, "--json")
    assert code == 2
    error = json.loads(out)
    assert error["exit_code"] == 2
    assert needle in error["error"]


def test_a_configuration_error_is_json_under_json(capsys, tmp_path):
    """A broken config file under --json: the problem as JSON on stdout, exit 2."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe not toml")
    code, out, _ = run_cli(capsys, "status", "--json", "--config", str(bad))
    assert code == 2
    assert "not UTF-8" in json.loads(out)["error"]


def test_errors_without_json_print_nothing_on_stdout(capsys, tmp_path):
    """Without --json an error stays a human message on stderr."""
    code, out, err = run_cli(capsys, "audit", "ghost", "--data-dir", str(tmp_path))
    assert (code, out) == (2, "")
    assert "ghost" in err


def test_demo_json_prints_one_summary(capsys):
    """`demo --json`: one JSON object, the story's lines and the broker's final status."""
    code, out, _ = run_cli(capsys, "demo", "--duration", "300", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["seed"] == 7
    assert any("closed -> open" in line for line in summary["lines"])
    assert summary["broker_status"]["broker"] == "paper"


# ---------------------------------------------------------------- run: the exit code on a stop


def _run_then_signal(tmp_path, sig: signal.Signals) -> tuple[int, str, str]:
    """Halt paper-main, start `run --json`, send `sig` after it started; return code, out, err."""
    assert main(["halt", "paper-main", "--reason", "drill", "--data-dir", str(tmp_path)]) == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(  # noqa: S603 (our interpreter, our module)
        [
            sys.executable,
            "-m",
            "brokerguard",
            "run",
            "--json",
            "--data-dir",
            str(tmp_path),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        started = wait_until_serving(proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        err = started + err
    return proc.returncode, out, err


def test_ctrl_c_with_problems_outstanding_exits_1_with_a_json_summary(capsys, tmp_path):
    """Ctrl-C while an account is halted: "1 problem(s) outstanding" and exit 1, not 0."""
    code, out, err = _run_then_signal(tmp_path, signal.SIGINT)
    assert "problem(s) outstanding" in err
    assert code == 1, err
    summary = json.loads(out)
    assert summary["stopped_by"] == "SIGINT"
    assert summary["exit_code"] == 1
    assert any("paper-main halted" in p for p in summary["problems"])


def test_sigterm_stays_an_orderly_stop_even_with_problems(capsys, tmp_path):
    """A service manager's SIGTERM exits 0 (the unit is not failed); the problems are listed."""
    code, out, err = _run_then_signal(tmp_path, signal.SIGTERM)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["stopped_by"] == "SIGTERM"
    assert summary["problems"]
