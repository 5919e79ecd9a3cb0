"""Every failure of the brokerguard command is a message naming the fix: exit 2, no traceback.

Issue 15, "Every failure is a message, never a traceback": a missing optional dependency names
its extra, a bad --plot, --config, --port, --duration or --data-dir is refused before any work.
"""

from __future__ import annotations

import pathlib
import socket
import sys

import pytest

from brokerguard import cli
from brokerguard.cli import main

FLEET = pathlib.Path(__file__).parents[1] / "examples" / "fleet.toml"


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    output = out + err
    assert "Traceback" not in output
    return code, output


def _without(monkeypatch, *modules: str) -> None:
    """Make `modules` (and what imported them) unimportable, as on an install without them."""
    for name in list(sys.modules):
        if name in modules or name.partition(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for name in list(sys.modules):
        if name.startswith(("brokerguard.coordination", "brokerguard.store._postgres")):
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def no_simulation(monkeypatch) -> list[str]:
    """Record any simulation run: a refused --plot must be refused before one."""
    ran: list[str] = []
    monkeypatch.setattr(cli, "run_simulation", lambda scenario, **_: ran.append(scenario))
    return ran


# ---------------------------------------------------------------------- simulate --plot


def test_plot_without_matplotlib_names_the_plot_extra(capsys, monkeypatch, tmp_path, no_simulation):
    _without(monkeypatch, "matplotlib")
    code, output = run_cli(
        capsys, "simulate", "--scenario", "incident", "--plot", str(tmp_path / "incident.png")
    )
    assert code == 2
    assert "pip install 'brokerguard[plot]'" in output
    assert no_simulation == []


def test_plot_into_a_missing_folder_is_refused_before_the_run(capsys, tmp_path, no_simulation):
    code, output = run_cli(
        capsys, "simulate", "--scenario", "incident", "--plot", str(tmp_path / "nope" / "i.png")
    )
    assert code == 2
    assert "--plot" in output
    assert "does not exist" in output
    assert no_simulation == []


def test_plot_with_an_unknown_suffix_is_refused_before_the_run(capsys, tmp_path, no_simulation):
    code, output = run_cli(
        capsys, "simulate", "--scenario", "incident", "--plot", str(tmp_path / "incident.txt")
    )
    assert code == 2
    assert "--plot" in output
    assert ".png" in output  # the formats that work are named
    assert no_simulation == []


# ---------------------------------------------------------------------- --config


@pytest.mark.parametrize("command", [["check-config"], ["status", "--config"]])
def test_a_config_that_is_not_utf8_is_a_configuration_error(capsys, tmp_path, command):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("# caf\u00e9\n[server]\nport = 0\n".encode("latin-1"))
    code, output = run_cli(capsys, *command, str(bad))
    assert code == 2
    assert "not UTF-8" in output
    assert "save the file as UTF-8" in output


# ---------------------------------------------------------------------- numeric options


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["run", "--port", "99999"], "port"),
        (["run", "--port", "0", "--duration", "-5"], "--duration"),
        (["run", "--port", "0", "--duration", "0"], "--duration"),
        (["demo", "--duration", "-1"], "--duration"),
    ],
)
def test_out_of_range_numbers_are_usage_errors(capsys, tmp_path, args, option):
    code, output = (
        run_cli(capsys, *args, "--data-dir", str(tmp_path))
        if args[0] == "run"
        else (run_cli(capsys, *args))
    )
    assert code == 2
    assert option in output
    assert "stopped after" not in output  # nothing ran
    assert "done:" not in output


# ---------------------------------------------------------------------- run


def test_run_on_a_port_in_use_names_the_port_and_the_option(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_cli(
            capsys, "run", "--data-dir", str(tmp_path), "--port", str(port), "--duration", "0.1"
        )
    assert code == 2
    assert f"127.0.0.1:{port}" in output
    assert "--port" in output


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # uvicorn's
def test_run_when_the_server_still_cannot_bind_is_a_message(capsys, monkeypatch, tmp_path):
    """The backstop behind the port check (a port taken between check and bind): exit 2."""
    monkeypatch.setattr(cli, "_check_port_free", lambda host, port: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_cli(
            capsys, "run", "--data-dir", str(tmp_path), "--port", str(port), "--duration", "0.1"
        )
    assert code == 2
    assert f"127.0.0.1:{port}" in output
    assert "--port" in output


def test_run_with_a_data_dir_under_a_file_is_refused(capsys, tmp_path):
    plain = tmp_path / "plain-file"
    plain.write_text("not a folder")
    code, output = run_cli(
        capsys, "run", "--data-dir", str(plain / "data"), "--port", "0", "--duration", "0.1"
    )
    assert code == 2
    assert "--data-dir" in output
    assert "not a folder" in output


# ---------------------------------------------------------------------- optional dependencies


@pytest.mark.parametrize(
    "args",
    [
        ["audit"],
        ["halt", "acct-0000", "--reason", "drill"],
        ["resume", "acct-0000", "--operator", "bob", "--reason", "drill"],
        ["enforce", "acct-0000", "--dry-run"],
        ["run", "--port", "0", "--duration", "0.1"],
    ],
)
def test_a_postgresql_store_without_psycopg_names_the_postgres_extra(capsys, monkeypatch, args):
    _without(monkeypatch, "psycopg")
    code, output = run_cli(capsys, *args, "--config", str(FLEET))
    assert code == 2
    assert "psycopg" in output
    assert "pip install 'brokerguard[postgres]'" in output


@pytest.mark.parametrize(
    "args", [["fleet"], ["enforce", "acct-0000"], ["run", "--port", "0", "--duration", "0.1"]]
)
def test_a_fleet_without_redis_names_the_redis_extra(capsys, monkeypatch, args):
    _without(monkeypatch, "redis")
    code, output = run_cli(capsys, *args, "--config", str(FLEET))
    assert code == 2
    assert "coordination_url" in output
    assert "pip install 'brokerguard[redis]'" in output


def test_a_missing_optional_module_met_late_still_names_its_extra(capsys, monkeypatch):
    """The backstop in main: an optional import no check foresaw is a message, not a trace."""

    def needs_apprise(_scenario: str, **_: object) -> None:
        raise ModuleNotFoundError("No module named 'apprise'", name="apprise")

    monkeypatch.setattr(cli, "run_simulation", needs_apprise)
    code, output = run_cli(capsys, "simulate", "--scenario", "incident")
    assert code == 2
    assert "pip install 'brokerguard[apprise]'" in output


@pytest.mark.parametrize("command", [["status"], ["halt", "a", "--reason", "r"], ["audit"]])
def test_an_unreachable_database_is_a_message_not_a_traceback(capsys, tmp_path, command):
    """PostgreSQL down (a closed port): exit 2, the store and the fix named, nothing changed."""
    config = tmp_path / "pg.toml"
    config.write_text(
        'state_url = "postgresql://brokerguard@127.0.0.1:9/brokerguard"\n'
        "[store]\ntimeout_s = 0.5\n"
        '[brokers.paper]\nkind = "paper"\n'
        '[[accounts]]\nid = "a"\nbroker = "paper"\n',
        encoding="utf-8",
    )
    code, err = run_cli(capsys, *command, "--config", str(config))
    assert code == 2
    assert "Traceback" not in err
    assert "Is the database running" in err
    assert "Nothing was changed" in err
