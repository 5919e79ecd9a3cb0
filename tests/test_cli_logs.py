"""The CLI's logs and tables: quiet, JSON on request, an 80x24 live view, uncut when piped.

Measured before the collapsing and the edge-triggered logs (issue 15): ``demo`` wrote 78 log
lines (75 of them the same CRITICAL), ``simulate --scenario unsettled`` 407 (104 "TRADING
HALTED" for one halt). The budgets below are what a reader can take in, not those figures.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
import textwrap

import pytest
from rich.console import Console

from brokerguard.cli import _hoist_log_format, _view_from, main


def brokerguard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our interpreter, our module)
        [sys.executable, "-m", "brokerguard", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **(env or {})},
    )


def longest_consecutive_run(lines: list[str]) -> int:
    return max((len(list(group)) for _, group in itertools.groupby(lines)), default=0)


def test_demo_logs_a_few_lines_not_one_per_poll():
    """The NaN price is said once, not on each of 75 polls; no line repeats back to back."""
    done = brokerguard("demo")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert sum("is unusable" in line for line in lines) <= 2
    assert len(lines) <= 10, done.stderr
    assert longest_consecutive_run(lines) <= 1
    assert "read circuit closed -> open" in done.stdout  # the story itself is untouched


def test_simulate_unsettled_announces_its_halt_once():
    """One halt: "TRADING HALTED" at most twice (the line and a summary), not once a pass."""
    done = brokerguard("simulate", "--scenario", "unsettled")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    halts = [line for line in lines if "TRADING HALTED" in line]
    assert 1 <= len(halts) <= 2, done.stderr
    assert len(lines) <= 20, done.stderr
    assert longest_consecutive_run(lines) <= 1


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_run_with_json_logs_writes_only_json_on_stderr(tmp_path, where):
    """``--log-format json``, wherever given: every stderr line is one JSON object.

    Before or after the command, or from BROKERGUARD_LOG_FORMAT; each with ts, level, logger, msg.
    """
    run = ["run", "--duration", "2", "--data-dir", str(tmp_path), "--port", "0"]
    args = {
        "before": ["--log-format", "json", *run],
        "after": [*run, "--log-format", "json"],
        "env": run,
    }[where]
    done = brokerguard(*args, env={"BROKERGUARD_LOG_FORMAT": "json"} if where == "env" else None)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines
    records = [json.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    said = " ".join(r["msg"] for r in records)
    assert "status page http://127.0.0.1:" in said
    assert "stopped after" in said


def test_log_format_after_the_command_is_moved_before_it():
    """The group reads --log-format; given after the command it is moved, nothing else is."""
    assert _hoist_log_format(["run", "--port", "0", "--log-format", "json"]) == [
        "--log-format",
        "json",
        "run",
        "--port",
        "0",
    ]
    assert _hoist_log_format(["demo", "--log-format=json", "--", "--log-format", "x"]) == [
        "--log-format=json",
        "demo",
        "--",
        "--log-format",
        "x",
    ]


def test_an_unknown_log_format_is_a_usage_error(capsys):
    """Exit 2 and the choices named."""
    assert main(["--log-format", "yaml", "demo", "--duration", "10"]) == 2
    assert "json" in capsys.readouterr().err


def _status(brokers: int, accounts: int, events: int) -> dict:
    breaker = {"circuit_state": "half_open", "next_probe_in_seconds": 27.4}
    broker = {
        "health_state": "degraded",
        "trading_allowed": False,
        "breakers": {"read": breaker, "write": {**breaker, "circuit_state": "closed"}},
    }
    account = {
        "trading_state": "halted",
        "max_positions": 8,
        "positions": 12,
        "paused_symbols": {"DOGE/USD": "price nan", "ETH/USD": "price stale"},
        "last_enforcement": {
            "status": "failed_enforcement",
            "reason": "still over the position cap of 8 after 3 cycle(s): 12 open, 12 valued",
        },
    }
    return {
        "brokers": {f"kraken-{i}": copy.deepcopy(broker) for i in range(brokers)},
        "accounts": {
            f"kraken-{i % brokers}:strategy-{i}": copy.deepcopy(account) for i in range(accounts)
        },
        "events": [
            {"kind": "circuit_opened", "at": 1.0, "broker": "kraken-0", "reason": "x" * 120}
            for _ in range(events)
        ],
    }


def _render(status: dict, width: int = 80, height: int = 24) -> list[str]:
    console = Console(width=width, height=height, record=True, color_system=None)
    with console.capture() as capture:
        console.print(_view_from(status, width=width, height=height))
    return capture.get().splitlines()


@pytest.mark.parametrize(("brokers", "accounts", "events"), [(3, 5, 8), (1, 2, 0), (3, 40, 8)])
def test_the_live_view_fits_an_80_by_24_terminal(brokers, accounts, events):
    """No line wider than 80 columns, no more than 24 lines, whatever the fleet's size."""
    lines = _render(_status(brokers, accounts, events))
    assert max(len(line) for line in lines) <= 80
    assert len(lines) <= 24, "\n".join(lines)


def test_the_live_view_says_what_did_not_fit():
    """Forty accounts on 24 lines: the rest is counted, "+N more accounts", not dropped."""
    lines = _render(_status(3, 40, 8))
    shown = sum("strategy-" in line for line in lines)
    more = next(line for line in lines if "more accounts" in line)
    assert int(more.split("+")[1].split()[0]) == 40 - shown


def test_a_typical_live_view_shows_every_broker_and_account():
    """3 brokers and 5 accounts fit entirely on an 80x24 terminal."""
    text = "\n".join(_render(_status(3, 5, 8)))
    assert all(f"kraken-{i}" in text for i in range(3))
    assert all(f"strategy-{i}" in text for i in range(5))
    assert "more" not in text


def test_piped_tables_are_not_cut_at_80_columns(capsys, tmp_path):
    """`status` into a pipe: a long account id and its broker appear whole."""
    long_id = "acct-" + "very-long-account-identifier-" * 4 + "end"
    config = tmp_path / "long.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [store]
            url = "sqlite:///{tmp_path / "state.db"}"
            [server]
            port = 1
            [brokers.paper]
            kind = "paper"
            [[accounts]]
            id = "{long_id}"
            broker = "paper"
            max_positions = 8
            """
        )
    )
    code = main(["status", "--config", str(config)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert long_id in out
    assert len(long_id) > 80
