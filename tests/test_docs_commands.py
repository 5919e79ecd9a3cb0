"""Every shell command in README.md and docs/*.md runs as written, or says why it cannot here.

A newcomer copies the README's lines into a terminal; an operator copies docs/deploy.md's. A
command that ends in a traceback, or that no longer exists, is a broken promise. This module
extracts every command from the docs' ``sh``/``bash`` code blocks (and the ``$ `` lines of
``console`` blocks) and looks each one up in :data:`COMMANDS`, which says how it is exercised:

- ``RUN``: run exactly as written, in a scratch folder holding a copy of ``examples/`` and
  ``bench/``, with the project's virtual environment first on ``PATH``;
- ``RUN_AS``: run with placeholders filled (``ACCOUNT``) or a long run shortened (a
  ``--duration``, a few seeds instead of 5,000); the reason is stated;
- ``HELP``: only ``--help``, because it needs a live exchange or runs until stopped;
- ``SKIP``: not run here, with the reason (a container engine, the test suite itself ...).

A command added to the docs and missing from the table fails
:func:`test_every_documented_command_is_in_the_table`, so the table cannot rot. Every command
run must exit with the code the table states and print no traceback.

:func:`test_a_fresh_install_runs_the_readme_without_extras` makes a fresh virtual environment,
installs the project as the README says (no extras), and runs every command again: those that
need an extra must exit 2 naming it (``pip install 'brokerguard[plot]'``), never with a
traceback. It installs once per run (30-60 s), so it runs in CI (``CI=true``) or with
``BROKERGUARD_FRESH_INSTALL=1``.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
VENV_BIN = Path(sys.executable).parent
TIMEOUT_S = 180
FRESH_ENV = "BROKERGUARD_FRESH_INSTALL"
ACCOUNT = "paper-main"
"""The embedded default's first account: what ``ACCOUNT`` stands for in the README."""
FLEET_ACCOUNT = "acct-0000"


class How(enum.Enum):
    """How a documented command is exercised here."""

    RUN = "run as written"
    RUN_AS = "run with placeholders filled or a long run shortened"
    HELP = "--help only"
    SERVE = "started, its URL read, stopped"
    SKIP = "not run here"


class Needs(enum.Enum):
    """What a command needs beyond the default install (the fresh-install test reads this)."""

    NOTHING = "the default install"
    PLOT = "plot"
    FLEET = "redis, postgres"
    CCXT = "ccxt"
    DEV = "dev"


@dataclass(frozen=True, kw_only=True)
class Exercise:
    """How one documented command is exercised, and what it must do."""

    how: How
    why: str = ""
    run: str = ""
    """The command actually run (RUN_AS); empty for RUN (the documented line) and HELP."""
    code: int = 0
    before: tuple[str, ...] = ()
    """Commands run first in the same folder (a halt before its resume)."""
    needs: Needs = Needs.NOTHING
    fleet: bool = False
    """Runs against the fleet's PostgreSQL and Redis (skips or fails as the services say)."""
    creates: str = ""
    """A file the command must leave behind (the plot)."""
    prints: str = ""
    """Text its output must contain."""


_HALT = f'brokerguard halt {ACCOUNT} --reason "before the resume"'
_FLEET_HALT = (
    f'brokerguard halt {FLEET_ACCOUNT} --reason "review" --operator alice --config fleet.toml'
)
_NO_WORKER = "exit 1: no worker is running, so 4 accounts have none (the table says so)"
_CRASH_TEST = "a test of this suite (tests/crash): CI runs it; this module would run it twice"
_FLEET_TEST = "a test of this suite (tests/coordination/test_processes.py), run in CI"
_FREQTRADE = "a test of this suite (tests/integrations/test_freqtrade_proof.py), run in CI"
_V1 = (
    "the /v1 round trip against your own service, with a placeholder reservation id (9f…); "
    "tests/server/test_pretrade.py sends these requests to the same endpoints"
)

COMMANDS: dict[str, Exercise] = {
    # README.md: set up
    "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/brokerguard run": Exercise(
        how=How.SKIP,
        why="the install is what test_a_fresh_install_runs_the_readme_without_extras does, "
        "then runs the service for 2 s",
    ),
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest": (
        Exercise(how=How.SKIP, why="the test suite itself: this module is part of it")
    ),
    # README.md: operate it
    "brokerguard run [--config FILE] [--data-dir D] [--duration S]": Exercise(
        how=How.RUN_AS,
        run="brokerguard run --data-dir data --duration 2 --port 0",
        why="the synopsis: the options filled, 2 s, a free port",
    ),
    "brokerguard check-config examples/paper.toml": Exercise(
        how=How.RUN, prints="examples/paper.toml: valid"
    ),
    "brokerguard status": Exercise(how=How.RUN),
    'brokerguard halt ACCOUNT --reason "..."': Exercise(
        how=How.RUN_AS, run=f'brokerguard halt {ACCOUNT} --reason "..."', why="ACCOUNT filled"
    ),
    'brokerguard resume ACCOUNT --operator alice --reason "..."': Exercise(
        how=How.RUN_AS,
        run=f'brokerguard resume {ACCOUNT} --operator alice --reason "..."',
        why="ACCOUNT filled, after a halt",
        before=(_HALT,),
    ),
    'brokerguard confirm-positions ACCOUNT --symbol BTC/USD --operator alice --reason "..."': (
        Exercise(
            how=How.RUN_AS,
            run=f"brokerguard confirm-positions {ACCOUNT} --symbol BTC/USD --operator alice "
            '--reason "..."',
            why="ACCOUNT filled",
        )
    ),
    "brokerguard enforce ACCOUNT --dry-run": Exercise(
        how=How.RUN_AS, run=f"brokerguard enforce {ACCOUNT} --dry-run", why="ACCOUNT filled"
    ),
    "brokerguard audit [ACCOUNT]": Exercise(
        how=How.RUN_AS,
        run=f"brokerguard audit && brokerguard audit {ACCOUNT}",
        why="both forms of the synopsis, after a halt",
        before=(_HALT,),
    ),
    "brokerguard fleet --config examples/fleet.toml": Exercise(
        how=How.RUN, why=_NO_WORKER, code=1, needs=Needs.FLEET, fleet=True
    ),
    "brokerguard demo": Exercise(how=How.RUN),
    "brokerguard simulate --scenario incident --plot incident.png": Exercise(
        how=How.RUN, needs=Needs.PLOT, creates="incident.png"
    ),
    "python examples/ccxt_bot.py --emulator --seconds 20": Exercise(
        how=How.RUN_AS,
        run="python examples/ccxt_bot.py --emulator --seconds 3",
        why="20 s of real time: 3 s show the same loop",
        needs=Needs.CCXT,
        prints="executed twice: 0",
    ),
    "python examples/ccxt_bot.py --emulator --seconds 20 --bare": Exercise(
        how=How.RUN_AS,
        run="python examples/ccxt_bot.py --emulator --seconds 3 --bare",
        why="20 s of real time: 3 s show the same loop",
        needs=Needs.CCXT,
        prints="bare ccxt: positions:",
    ),
    # docs/benchmarks.md
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python "
    "bench/overhead.py": Exercise(
        how=How.RUN_AS,
        run="python bench/overhead.py --quick",
        why="the benchmark (minutes) in its smoke size, in this venv (it has the dev extra)",
        needs=Needs.DEV,
    ),
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python "
    "bench/pretrade.py --rounds 2000": Exercise(
        how=How.RUN_AS,
        run="python bench/pretrade.py --rounds 20",
        why="20 rounds instead of 2,000, in this venv (it has the dev extra)",
        needs=Needs.DEV,
    ),
    ".venv/bin/python bench/memory.py": Exercise(
        how=How.RUN_AS,
        run="python bench/memory.py --hours 0.1 --sample 120 --warmup 120 --accounts 10 "
        "--brokers 2 --interval 60",
        why="24 simulated hours of two worlds (minutes): 6 simulated minutes of a small fleet",
        needs=Needs.DEV,
    ),
    ".venv/bin/python bench/memory.py --world embedded --hours 4 --top 15": Exercise(
        how=How.RUN_AS,
        run="python bench/memory.py --world embedded --hours 0.1 --sample 120 --warmup 120 --top 5",
        why="4 simulated hours (a minute): 6 simulated minutes show the same report",
        needs=Needs.DEV,
    ),
    # docs/deploy.md
    "createdb brokerguard": Exercise(
        how=How.SKIP,
        why="PostgreSQL's client creating a database on your server; the tests use their own",
    ),
    "brokerguard run --config fleet.toml --port 8000": Exercise(
        how=How.RUN_AS,
        run="brokerguard run --config fleet.toml --port 0 --duration 3",
        why="3 s on a free port, against a paper exchange this test starts",
        needs=Needs.FLEET,
        fleet=True,
    ),
    "brokerguard fleet --config fleet.toml": Exercise(
        how=How.RUN, why=_NO_WORKER, code=1, needs=Needs.FLEET, fleet=True
    ),
    "brokerguard status --config fleet.toml": Exercise(how=How.RUN, needs=Needs.FLEET, fleet=True),
    'brokerguard halt ACCOUNT --reason "compliance review" --operator alice --config fleet.toml': (
        Exercise(
            how=How.RUN_AS,
            run=f'brokerguard halt {FLEET_ACCOUNT} --reason "compliance review" '
            "--operator alice --config fleet.toml",
            why="ACCOUNT filled",
            needs=Needs.FLEET,
            fleet=True,
        )
    ),
    'brokerguard resume ACCOUNT --reason "reviewed" --operator alice --config fleet.toml': (
        Exercise(
            how=How.RUN_AS,
            run=f'brokerguard resume {FLEET_ACCOUNT} --reason "reviewed" --operator alice '
            "--config fleet.toml",
            why="ACCOUNT filled, after a halt",
            before=(_FLEET_HALT,),
            needs=Needs.FLEET,
            fleet=True,
        )
    ),
    "brokerguard audit --config fleet.toml": Exercise(how=How.RUN, needs=Needs.FLEET, fleet=True),
    "python -m brokerguard.sim.paper_exchange --accounts 200 --positions 6": Exercise(
        how=How.SERVE, why="serves until stopped: started, its URL read, stopped (SIGTERM)"
    ),
    "for n in 1 2 3; do brokerguard run --config fleet.toml --port 0 & done": Exercise(
        how=How.SKIP, why=f"three workers in the background until stopped; {_FLEET_TEST}"
    ),
    "export POSTGRES_PASSWORD=... REDIS_PASSWORD=... GRAFANA_ADMIN_PASSWORD=...": Exercise(
        how=How.SKIP, why="sets the compose file's secrets; docker is not run here"
    ),
    "docker compose -f deploy/compose.yaml up -d --build --scale worker=4": Exercise(
        how=How.SKIP,
        why="needs a container engine; tests/test_deploy_files.py checks the compose file",
    ),
    "docker compose -f deploy/compose.yaml exec worker brokerguard fleet --config "
    "/etc/brokerguard/fleet.toml": Exercise(
        how=How.SKIP,
        why="needs the running compose project; `brokerguard fleet` itself runs above",
    ),
    # docs/guard-your-bot.md
    "export BROKERGUARD_BOT_TOKEN=$(python -c 'import secrets; "
    "print(secrets.token_urlsafe(32))')": (
        Exercise(
            how=How.RUN_AS,
            run="export BROKERGUARD_BOT_TOKEN=$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))') && test ${#BROKERGUARD_BOT_TOKEN} -ge 32",
            why="and the token it makes is long enough for the service",
        )
    ),
    "brokerguard run --config brokerguard.toml &": Exercise(
        how=How.HELP, why="your own configuration, in the background until stopped"
    ),
    "API=http://127.0.0.1:8000/v1/accounts/main": Exercise(how=How.SKIP, why=_V1),
    'AUTH="Authorization: Bearer $BROKERGUARD_BOT_TOKEN"': Exercise(how=How.SKIP, why=_V1),
    'curl -s -X POST $API/entries -H "$AUTH" -H \'Idempotency-Key: entry-42\' -d \'{"symbol": '
    '"SOL/USD", "side": "buy", "client_order_id": "my-order-42"}\'': Exercise(
        how=How.SKIP, why=_V1
    ),
    'curl -s -X POST $API/entries/9f…/placed -H "$AUTH" -d \'{"order_id": "OABC-123"}\'': (
        Exercise(how=How.SKIP, why=_V1)
    ),
    'curl -s -X DELETE $API/entries/9f… -H "$AUTH"': Exercise(how=How.SKIP, why=_V1),
    'curl -s "$API/gate?symbol=ETH/USD" -H "$AUTH"': Exercise(how=How.SKIP, why=_V1),
    'curl -s $API -H "$AUTH"': Exercise(how=How.SKIP, why=_V1),
    # docs/proof.md
    "brokerguard simulate --scenario incident [--seed N] [--json] [--plot incident.png]": Exercise(
        how=How.RUN_AS,
        run="brokerguard simulate --scenario incident --seed 0 --json --plot incident.png",
        why="the synopsis with every option (tests/test_proof_figures.py checks the figures)",
        needs=Needs.PLOT,
        creates="incident.png",
    ),
    "python -m brokerguard.chaos --runs 5000": Exercise(
        how=How.RUN_AS,
        run="python -m brokerguard.chaos --runs 3",
        why="30 min; 3 seeds here (tests/test_proof_figures.py runs 20, tests/chaos 300)",
    ),
    "python -m brokerguard.chaos --seed 0 --runs 2500": Exercise(
        how=How.RUN_AS,
        run="python -m brokerguard.chaos --seed 0 --runs 2",
        why="the published run's first process: its first 2 seeds",
    ),
    "python -m brokerguard.chaos --seed 2500 --runs 2500": Exercise(
        how=How.RUN_AS,
        run="python -m brokerguard.chaos --seed 2500 --runs 2",
        why="the published run's second process: its first 2 seeds",
    ),
    "python -m brokerguard.chaos --runs 300 --naive": Exercise(
        how=How.RUN_AS,
        run="python -m brokerguard.chaos --runs 3 --naive",
        why="3 seeds; exit 1: the naive bot breaks the invariants",
        code=1,
    ),
    "python -m brokerguard.chaos --runs 300 --naive --faults kraken": Exercise(
        how=How.RUN_AS,
        run="python -m brokerguard.chaos --runs 3 --naive --faults kraken",
        why="3 seeds; exit 1: the naive bot breaks the invariants",
        code=1,
    ),
    "python -m brokerguard.chaos --runs 500 --threads 4": Exercise(
        how=How.RUN_AS,
        run="python -m brokerguard.chaos --runs 2 --threads 4",
        why="2 seeds (tests/chaos runs 40)",
    ),
    "python -m brokerguard.chaos --runs 20": Exercise(
        how=How.SKIP, why="its output is the figure tests/test_proof_figures.py regenerates"
    ),
    "python -m brokerguard.chaos --runs 20 --naive": Exercise(
        how=How.SKIP, why="its output is the figure tests/test_proof_figures.py regenerates"
    ),
    "python -m brokerguard.chaos --runs 20 --naive --faults kraken": Exercise(
        how=How.SKIP, why="its output is the figure tests/test_proof_figures.py regenerates"
    ),
    ".venv/bin/python -m pytest tests/crash -s": Exercise(how=How.SKIP, why=_CRASH_TEST),
    "BROKERGUARD_CRASH_KILLS=500 .venv/bin/python -m pytest tests/crash -s": Exercise(
        how=How.SKIP, why=_CRASH_TEST
    ),
    ".venv/bin/python -m pytest tests/coordination/test_processes.py -s": Exercise(
        how=How.SKIP, why=_FLEET_TEST
    ),
    "BROKERGUARD_FLEET_ACCOUNTS=5000 .venv/bin/python -m pytest "
    "tests/coordination/test_processes.py -s": Exercise(how=How.SKIP, why=_FLEET_TEST),
    "BROKERGUARD_FREQTRADE=1 python -m pytest -p no:cacheprovider --no-cov "
    "tests/integrations/test_freqtrade_proof.py": Exercise(how=How.SKIP, why=_FREQTRADE),
}
"""Every documented command, exactly as the docs write it (continuations joined, the trailing
``# comment`` dropped), and how it is exercised."""

_SHELL_BLOCKS = {"sh", "bash", "shell"}
_COMMENT = re.compile(r"\s+#\s.*$")


def _commands_in(text: str) -> Iterator[str]:
    """Yield the shell commands of a markdown text's code blocks."""
    lang: str | None = None
    pending = ""
    for line in text.splitlines():
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
            continue
        if lang == "console":
            if line.startswith("$ "):
                yield _COMMENT.sub("", line[2:]).strip()
            continue
        if lang not in _SHELL_BLOCKS:
            continue
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        yield _COMMENT.sub("", pending + stripped).strip()
        pending = ""


def documented_commands() -> dict[str, list[str]]:
    """Every command in README.md and docs/*.md, with the files that show it."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for command in _commands_in(doc.read_text(encoding="utf-8")):
            found.setdefault(command, []).append(str(doc.relative_to(REPO)))
    return found


def test_the_extractor_reads_blocks_prompts_continuations_and_comments():
    """The extraction the table is checked against: only shell blocks, comments dropped."""
    lines = [
        "```sh",
        "# a comment line",
        "brokerguard status   # trailing comment",
        "curl -s -X POST $API \\",
        "     -d '{}'",
        "```",
        "```python",
        "print('not a command')",
        "```",
        "```console",
        "$ python -m brokerguard.chaos --runs 2",
        "brokerguard: 2/2 seeds kept every invariant",
        "```",
    ]
    text = "\n".join(lines)
    assert list(_commands_in(text)) == [
        "brokerguard status",
        "curl -s -X POST $API -d '{}'",
        "python -m brokerguard.chaos --runs 2",
    ]


def test_every_documented_command_is_in_the_table():
    """A command added to the docs must say here how it is exercised (or why it is not)."""
    missing = sorted(set(documented_commands()) - set(COMMANDS))
    assert not missing, "add these to COMMANDS in tests/test_docs_commands.py:\n" + "\n".join(
        missing
    )


def test_every_command_in_the_table_is_still_documented():
    """An entry whose command left the docs is stale: the table lists what the docs say."""
    stale = sorted(set(COMMANDS) - set(documented_commands()))
    assert not stale, "no longer in the docs; remove from COMMANDS:\n" + "\n".join(stale)


def test_every_exception_states_its_reason():
    """A command not run as written says why, so the table reads as a record, not a shrug."""
    unexplained = [c for c, e in COMMANDS.items() if e.how is not How.RUN and not e.why]
    assert not unexplained


def _workdir(tmp_path: Path) -> Path:
    """A scratch folder as a clone's root looks to these commands: examples/ and bench/."""
    work = tmp_path / "work"
    work.mkdir(parents=True)
    shutil.copytree(REPO / "examples", work / "examples")
    shutil.copytree(REPO / "bench", work / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    return work


def _env(bin_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with `bin_dir` first on PATH and no BROKERGUARD_ settings leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKERGUARD")}
    env |= {"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "COLUMNS": "120"}
    env.pop("VIRTUAL_ENV", None)
    return env | (extra or {})


@dataclass(frozen=True)
class Ran:
    """What a command did."""

    command: str
    code: int
    out: str
    err: str

    def describe(self) -> str:
        return f"$ {self.command}\nexit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def _bash(command: str, cwd: Path, env: dict[str, str]) -> Ran:
    done = subprocess.run(  # noqa: S603 (the documented command, in bash, as a reader runs it)
        ["bash", "-c", command],  # noqa: S607 (bash from PATH, as a reader's terminal)
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return Ran(command, done.returncode, done.stdout, done.stderr)


def _command_to_run(documented: str, exercise: Exercise) -> str:
    if exercise.how is How.HELP:
        return documented.rstrip("& ").split(" --", 1)[0] + " --help"
    return exercise.run or documented


def _check(ran: Ran, code: int) -> None:
    assert "Traceback" not in ran.out + ran.err, ran.describe()
    assert ran.code == code, ran.describe()


@pytest.fixture
def fleet_env(pg_url: str, redis_namespace: str) -> dict[str, str]:
    """The fleet's config pointed at a fresh PostgreSQL schema and Redis namespace."""
    return {
        "BROKERGUARD__STATE_URL": pg_url,
        "BROKERGUARD__COORDINATION_URL": REDIS_URL,
        "BROKERGUARD__COORDINATION__NAMESPACE": redis_namespace,
    }


_URL = re.compile(r"http://127\.0\.0\.1:\d+")
PAPER_EXCHANGE = "python -m brokerguard.sim.paper_exchange --accounts 200 --positions 6"


@contextmanager
def _serving(command: str, cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """Start a documented server, yield the URL it prints, stop it with SIGTERM; no traceback."""
    server = subprocess.Popen(  # noqa: S603 (the documented command)
        ["bash", "-c", f"exec {command}"],  # noqa: S607 (bash from PATH)
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()  # it prints its URL first, then serves
        url = _URL.search(first)
        assert url is not None, f"{command}: printed {first!r}, not its URL"
        yield url.group(0)
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert "Traceback" not in out + err, err
    assert server.returncode in {0, -signal.SIGTERM}, err


def _exercised(how: set[How]) -> list[str]:
    return [c for c, e in COMMANDS.items() if e.how in how]


@pytest.mark.parametrize("documented", _exercised({How.RUN, How.RUN_AS, How.HELP, How.SERVE}))
def test_a_documented_command_does_what_the_table_says(documented, tmp_path, request):
    """Each command exits with its code (0 unless stated), prints no traceback, makes its file."""
    exercise = COMMANDS[documented]
    work = _workdir(tmp_path)
    extra: dict[str, str] = {}
    if exercise.fleet:
        extra = request.getfixturevalue("fleet_env")
        shutil.copy(work / "examples" / "fleet.toml", work / "fleet.toml")
    env = _env(VENV_BIN, extra)
    if exercise.how is How.SERVE:
        with _serving(documented, work, env) as url:
            assert url
        return
    for step in exercise.before:
        _check(_bash(step, work, env), 0)
    command = _command_to_run(documented, exercise)
    if exercise.fleet and " run " in f" {command} ":
        with _serving(PAPER_EXCHANGE, work, env) as url:
            env["BROKERGUARD__BROKERS__EXCHANGE__API_URL"] = url
            ran = _bash(command, work, env)
    else:
        ran = _bash(command, work, env)
    _check(ran, exercise.code)
    assert exercise.prints in ran.out, ran.describe()
    if exercise.creates:
        assert (work / exercise.creates).stat().st_size > 0, ran.describe()


def _fresh_install_enabled() -> bool:
    return os.environ.get(FRESH_ENV) == "1" or os.environ.get("CI", "").lower() == "true"


@pytest.mark.skipif(
    not _fresh_install_enabled(),
    reason=f"creates a virtual environment and installs the project (30-60 s): set {FRESH_ENV}=1 "
    "(CI=true does too)",
)
def test_a_fresh_install_runs_the_readme_without_extras(tmp_path):
    """On the README's install (no extras) every command runs, or exits 2 naming its extra."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, clone / name)
    shutil.copytree(
        REPO / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    install = f"{sys.executable} -m venv .venv && .venv/bin/pip install -q -e ."
    _check(_bash(install, clone, _env(VENV_BIN)), 0)
    fresh_bin = clone / ".venv" / "bin"
    env = _env(fresh_bin)
    for module in ("matplotlib", "ccxt", "redis", "psycopg"):  # else this proves nothing
        ran = _bash(f"python -c 'import {module}'", clone, env)
        assert ran.code != 0, f"{module} is installed without its extra"
    _check(_bash("brokerguard run --duration 2 --port 0", _workdir(tmp_path / "run"), env), 0)

    failures = []
    for n, documented in enumerate(_exercised({How.RUN, How.RUN_AS, How.HELP, How.SERVE})):
        exercise = COMMANDS[documented]
        if exercise.needs is Needs.DEV:
            continue  # its documented line installs the dev extra first
        work = _workdir(tmp_path / f"command-{n}")
        shutil.copy(work / "examples" / "fleet.toml", work / "fleet.toml")
        try:
            if exercise.how is How.SERVE:
                with _serving(documented, work, env):
                    pass
                continue
            for step in exercise.before if exercise.needs is Needs.NOTHING else ():
                _check(_bash(step, work, env), 0)
            ran = _bash(_command_to_run(documented, exercise), work, env)
            if exercise.needs is Needs.NOTHING:
                _check(ran, exercise.code)
            else:
                _check(ran, 2)
                extras = "|".join(re.escape(e) for e in exercise.needs.value.split(", "))
                hint = re.compile(rf"pip install [^\n]*\[[^\]]*\b({extras})\b")
                assert hint.search(ran.out + ran.err), ran.describe()
        except AssertionError as exc:
            failures.append(f"{documented}\n{exc}")
    assert not failures, "\n\n".join(failures)
