"""Dockerfile, deploy/compose.yaml, Grafana provisioning, systemd unit, sd_notify.

CI has no Docker: the files are checked for structure, every path they name is checked to
exist, and the commands the compose file runs are run here, on local PostgreSQL and Redis.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from brokerguard import sdnotify
from brokerguard.config import parse_config
from tests.conftest import REDIS_URL, require_service

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
UNIT = DEPLOY / "systemd" / "brokerguard.service"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
SERVICES = {"worker", "paper-exchange", "redis", "postgres", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def fleet_toml(compose: dict) -> str:
    return compose["configs"]["fleet"]["content"]


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to deploy/)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (DEPLOY / source).resolve()
    return found


# ---------------------------------------------------------------------- compose


def test_the_compose_file_runs_the_fleet_of_the_docs(compose):
    """Workers, Redis, PostgreSQL, Prometheus, Grafana (and the paper exchange), pinned tags."""
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert tag not in {"latest", ""}, f"{name}: {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"
        assert "healthcheck" in service, f"{name} has no healthcheck"
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert service["cap_drop"] == ["ALL"], name
    # Workers scale (no fixed name, no published port) and build this repository's image.
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["deploy"]["replicas"] == "${BROKERGUARD_WORKERS:-3}"
    assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == (
        DOCKERFILE
    )
    assert services["paper-exchange"]["image"] == worker["image"]


def test_the_workers_run_brokerguard_on_the_mounted_config(compose):
    """`brokerguard run --config` on the file compose mounts, after their dependencies."""
    worker = compose["services"]["worker"]
    entrypoint = re.search(r'^ENTRYPOINT \["(\w+)"\]', DOCKERFILE.read_text(), re.MULTILINE)
    assert entrypoint is not None
    assert entrypoint[1] == "brokerguard"
    command = worker["command"]
    assert command[0] == "run"
    config_path = command[command.index("--config") + 1]
    assert worker["configs"] == [{"source": "fleet", "target": config_path}]
    assert worker["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "paper-exchange": {"condition": "service_healthy"},
    }
    assert compose["services"]["grafana"]["depends_on"]["prometheus"] == {
        "condition": "service_healthy"
    }
    data_dir = command[command.index("--data-dir") + 1]
    assert worker["read_only"] is True
    assert any(t.startswith(f"{data_dir}:") for t in worker["tmpfs"])


def test_the_mounted_config_is_a_valid_fleet_config_with_secrets_by_variable(compose):
    """The inline config parses as brokerguard's, names its password variables, binds 0.0.0.0."""
    text = fleet_toml(compose)
    config = parse_config(tomllib.loads(text), source="compose fleet")
    assert config.state_url.startswith("postgresql://brokerguard@postgres:5432/")
    assert config.coordination_url == "redis://redis:6379/0"
    assert config.server.host == "0.0.0.0"  # noqa: S104 (Prometheus scrapes over the network)
    assert config.server.port == 8000
    environment = compose["services"]["worker"]["environment"]
    assert config.store.password_env in environment
    assert config.coordination.password_env in environment
    assert environment[config.store.password_env] == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    assert (
        compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
        == (environment[config.store.password_env])
    )
    assert "${REDIS_PASSWORD:?set REDIS_PASSWORD}" in compose["services"]["redis"]["command"]
    assert not re.search(r"password\s*=", text, re.IGNORECASE)  # names only, never values
    broker = config.brokers["exchange"]
    assert broker.api_url == "http://paper-exchange:8765"  # type: ignore[union-attr]


def test_prometheus_mounts_the_rules_promtool_tests(compose):
    """The rule file compose mounts is deploy/prometheus/alerts.yml, which test_deploy checks."""
    prometheus = mounts(compose["services"]["prometheus"])
    config_file = prometheus["/etc/prometheus/prometheus.yml"]
    assert config_file == DEPLOY / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    for rule_file in config["rule_files"]:
        container_path = str(Path("/etc/prometheus") / rule_file)
        assert prometheus[container_path] == DEPLOY / "prometheus" / "alerts.yml"
    tested = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())
    assert tested["rule_files"] == config["rule_files"]
    scrape = {job["job_name"]: job for job in config["scrape_configs"]}
    assert scrape["brokerguard"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 8000, "refresh_interval": "15s"}
    ]


def test_promtool_checks_the_prometheus_config():
    """`promtool check config` accepts prometheus.yml and the rules it loads."""
    promtool = shutil.which("promtool")
    if promtool is None:
        require_service("promtool", "Debian's prometheus package is not installed (see .ci/run)")
    done = subprocess.run(  # noqa: S603 (a fixed tool on our own file)
        [str(promtool), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_grafana_provisioning_points_at_files_that_exist(compose):
    """The datasource is the Prometheus service; the dashboard folder holds brokerguard.json."""
    grafana = mounts(compose["services"]["grafana"])
    assert grafana["/etc/grafana/provisioning"] == PROVISIONING
    (datasource,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["isDefault"] is True  # the dashboard's ${datasource} picks the default
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "brokerguard.yaml").read_text())[
        "providers"
    ]
    folder = provider["options"]["path"]
    dashboards = {t: p for t, p in grafana.items() if Path(t).parent == Path(folder)}
    assert dashboards == {f"{folder}/brokerguard.json": DEPLOY / "grafana" / "brokerguard.json"}


def test_every_file_the_compose_file_mounts_exists(compose):
    """No bind mount of a file that is not in the repository."""
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target})"


# ---------------------------------------------------------------------- Dockerfile


def test_the_dockerfile_builds_a_non_root_image_with_a_healthcheck():
    """python:3.11-slim, the three extras, a numeric non-root user, /healthz checked."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert 'pip install ".[postgres,redis,ccxt]"' in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.MULTILINE)
    for source in re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(ignored)


# ---------------------------------------------------------------------- the commands, run here


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def healthcheck(service: dict, port_from: int, port_to: int) -> list[str]:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [sys.executable, *[arg.replace(str(port_from), str(port_to)) for arg in test[2:]]]


def wait_healthy(command: list[str], process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if subprocess.run(command, capture_output=True, check=False, timeout=10).returncode == 0:  # noqa: S603
            return
        time.sleep(0.3)
    pytest.fail(f"not healthy after {timeout} s: {command}")


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return err


def test_the_compose_commands_run_here(compose, pg_url, redis_namespace, tmp_path):
    """The paper exchange's and the worker's commands, and both healthchecks, on this host.

    Only the addresses change: the compose hostnames become the local PostgreSQL and Redis
    and free ports. The worker joins Redis, answers /healthz and exports metrics.
    """
    services = compose["services"]
    exchange_port, worker_port = free_port(), free_port()
    script = services["paper-exchange"]["command"][0].replace("8765", str(exchange_port))
    assert services["paper-exchange"]["entrypoint"] == ["python", "-c"]
    exchange = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_healthy(healthcheck(services["paper-exchange"], 8765, exchange_port), exchange, 30)
        config = (
            fleet_toml(compose)
            .replace("postgresql://brokerguard@postgres:5432/brokerguard", pg_url)
            .replace("redis://redis:6379/0", REDIS_URL)
            .replace('namespace = "compose"', f'namespace = "{redis_namespace}"')
            .replace("http://paper-exchange:8765", f"http://127.0.0.1:{exchange_port}")
            .replace("port = 8000", f"port = {worker_port}")
            # the test Redis has no password: the one line that differs
            .replace('password_env = "BROKERGUARD_REDIS_PASSWORD"\n', "")
        )
        config_path = tmp_path / "fleet.toml"
        config_path.write_text(config)
        command = services["worker"]["command"]
        args = [
            {"/etc/brokerguard/fleet.toml": str(config_path)}.get(a, a)
            for a in command
            if a != "/var/lib/brokerguard"
        ]
        args[args.index("--data-dir") + 1 : args.index("--data-dir") + 1] = [str(tmp_path)]
        environment = {
            **os.environ,
            # trust auth on the test database ignores it; the worker only needs it set
            "BROKERGUARD_PG_PASSWORD": os.environ.get("PGPASSWORD", "unused"),
        }
        environment.pop("BROKERGUARD_CONTROL_TOKEN", None)
        environment.pop("BROKERGUARD_BOT_TOKEN", None)
        brokerguard = Path(sys.executable).parent / "brokerguard"
        worker = subprocess.Popen(  # noqa: S603
            [str(brokerguard), *args],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_healthy(healthcheck(services["worker"], 8000, worker_port), worker, 60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{worker_port}/metrics", timeout=5
                ) as answer:
                    metrics = answer.read().decode()
                if re.search(r"^brokerguard_account_lease_held\{.*\} 1", metrics, re.MULTILINE):
                    break
                time.sleep(0.5)
            else:
                pytest.fail("the worker held no account lease in 30 s")
        finally:
            err = stop(worker)
        assert worker.returncode == 0, err
    finally:
        stop(exchange)


# ---------------------------------------------------------------------- systemd


def test_the_systemd_unit_is_type_notify_with_a_watchdog():
    """The unit parses; Type=notify, WatchdogSec, Restart=on-failure, hardened, brokerguard run."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) >= 30
    assert service["Restart"] == "on-failure"
    assert service["User"] != "root"
    for option in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictSUIDSGID"):
        assert service[option] == "yes", option
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    exec_start = service["ExecStart"].split()
    assert exec_start[0].endswith("/brokerguard")
    assert exec_start[1:3] == ["run", "--config"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verifies_the_unit(tmp_path):
    """`systemd-analyze verify` accepts it (ExecStart pointed at this venv's brokerguard)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    brokerguard = Path(sys.executable).parent / "brokerguard"
    unit = tmp_path / "brokerguard.service"
    unit.write_text(UNIT.read_text().replace("/opt/brokerguard/bin/brokerguard", str(brokerguard)))
    done = subprocess.run(  # noqa: S603
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------- sd_notify


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A datagram socket bound where systemd would, NOTIFY_SOCKET pointing at it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield receiver


def test_notify_sends_ready_watchdog_stopping(notify_socket):
    """Each state is one datagram, as sent."""
    for state in ("READY=1", "WATCHDOG=1", "STOPPING=1"):
        assert sdnotify.notify(state) is True
        assert notify_socket.recv(4096) == state.encode()


def test_notify_reaches_an_abstract_socket(monkeypatch):
    """`@name` is Linux's abstract namespace (systemd's own NOTIFY_SOCKET is often one)."""
    name = f"brokerguard-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        assert sdnotify.notify("READY=1") is True
        assert receiver.recv(4096) == b"READY=1"


def test_notify_is_a_no_op_without_systemd(monkeypatch):
    """No NOTIFY_SOCKET (a terminal, a container): nothing sent, False, no error."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.notify("READY=1") is False


def test_notify_never_raises(tmp_path, monkeypatch):
    """A socket gone or an unknown address form: False, never an exception."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.notify("WATCHDOG=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify("WATCHDOG=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch):
    """WatchdogSec=60 gives WATCHDOG_USEC=60000000: ping every 30 s; absent or bad: None."""
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("", "soon", "0", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None, bad
