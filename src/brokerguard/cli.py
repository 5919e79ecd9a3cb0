"""The ``brokerguard`` command: run the guard service and operate it.

Exit codes mean something: 0 all is well, 1 a problem was found (an account halted, over its cap,
unverified, a broker offline, nothing to resume), 2 a usage or configuration error. Every command
takes ``--json`` for machines. The CLI only wires and shows: decisions stay in the risk layer.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from brokerguard import sdnotify
from brokerguard.brokers.plausibility import POSITIONS_CONFIRMED
from brokerguard.config import (
    BrokerGuardConfig,
    check_control_token,
    load_config,
    redact_url,
    require_secret,
    resolve_secret,
    with_server,
)
from brokerguard.errors import (
    BrokerGuardError,
    ConfigurationError,
    CoordinationUnavailableError,
    StoreUnavailableError,
)
from brokerguard.logs import LogFormat, configure_logging, unconfigure_logging
from brokerguard.models import parse_symbol
from brokerguard.server import StatusServer, create_app
from brokerguard.service import GuardService, embedded_default_config, tune_gc
from brokerguard.sim.scenarios import SCENARIOS
from brokerguard.sim.scenarios import simulate as run_simulation
from brokerguard.store.state import StateStore, open_store

__all__ = ["main"]

OK, PROBLEM, USAGE = 0, 1, 2
# The optional dependencies and the extra (pyproject's [project.optional-dependencies]) of each.
_EXTRAS = {
    "apprise": "apprise",
    "ccxt": "ccxt",
    "matplotlib": "plot",
    "psycopg": "postgres",
    "redis": "redis",
}
_HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "offline": "bold red"}

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration (default: the embedded paper-broker setup).",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("brokerguard-data"),
    show_default=True,
    help="Where the embedded default keeps its SQLite store.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="brokerguard")
@click.option(
    "--log-format",
    type=click.Choice([f.value for f in LogFormat]),
    default=LogFormat.TEXT.value,
    envvar="BROKERGUARD_LOG_FORMAT",
    show_default=True,
    help="Log lines on stderr: text, or json (one object per line, for log shippers). "
    "Accepted after the command too (brokerguard run --log-format json).",
)
def cli(log_format: str) -> None:
    """Brokerguard: make a trading bot fail closed."""
    _configure_logging(sys.stderr.isatty(), log_format, level=logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return its exit code (configuration errors are exit code 2, no traceback).

    Under ``--json`` every error is also a JSON object on stdout:
    ``{"error": "...", "exit_code": 2}``, so a machine never has to parse stderr.
    """
    args = _hoist_log_format(list(sys.argv[1:] if argv is None else argv))
    as_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
    try:
        return _main(args, as_json)
    finally:
        unconfigure_logging()  # the last repeat summaries out; the root logger as it was


def _main(args: list[str], as_json: bool) -> int:
    try:
        cli.main(args=args, prog_name="brokerguard", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return _json_error(as_json, exc.format_message(), USAGE)
    except click.exceptions.Abort:
        return _json_error(as_json, "aborted", PROBLEM)
    except (
        ConfigurationError,
        ModuleNotFoundError,
        StoreUnavailableError,
        CoordinationUnavailableError,
    ) as exc:
        message = _failure(exc)
        click.echo(message, err=True)
        return _json_error(as_json, message, USAGE)
    except SystemExit as exc:
        return int(exc.code or 0)
    return OK


def _hoist_log_format(args: list[str]) -> list[str]:
    """Move ``--log-format X`` given after the command to the front, where the group reads it.

    Every command logs, so the option is the group's; an operator types it after the command
    as often as before. Nothing after ``--`` is touched.
    """
    end = args.index("--") if "--" in args else len(args)
    head, tail, hoisted = args[:end], args[end:], []
    index = 1  # before the first argument the group reads it anyway
    while index < len(head):
        if head[index] == "--log-format" and index + 1 < len(head):
            hoisted += head[index : index + 2]
            del head[index : index + 2]
        elif head[index].startswith("--log-format="):
            hoisted.append(head.pop(index))
        else:
            index += 1
    return hoisted + head + tail


def _json_error(as_json: bool, message: str, code: int) -> int:
    """Print `message` as ``{"error", "exit_code"}`` on stdout under --json; return `code`."""
    if as_json:
        click.echo(json.dumps({"error": message, "exit_code": code}, indent=2, sort_keys=True))
    return code


def _failure(
    exc: ConfigurationError
    | ModuleNotFoundError
    | StoreUnavailableError
    | CoordinationUnavailableError,
) -> str:
    """The message for exit code 2; a missing module that no extra provides is a bug: raised."""
    if isinstance(exc, ConfigurationError):
        return f"configuration error: {exc}"
    if isinstance(exc, StoreUnavailableError):
        return (
            f"Error: {exc}. Is the database running, and [store] url (or state_url) right? "
            "Nothing was changed."
        )
    if isinstance(exc, CoordinationUnavailableError):
        return f"Error: {exc}. Is Redis running, and coordination_url right? Nothing was changed."
    hint = _install_hint(exc, exc.name or "")  # an optional dependency a path needed after all
    if hint is None:
        raise exc
    return f"Error: this needs {hint}"


def _config(config_path: Path | None, data_dir: Path) -> BrokerGuardConfig:
    if config_path:
        return _load_config(config_path)
    _check_data_dir(data_dir)
    return embedded_default_config(data_dir)


def _load_config(path: Path) -> BrokerGuardConfig:
    """`load_config`, with an unreadable or non-UTF-8 file a ConfigurationError too."""
    try:
        return load_config(path)
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path}: not UTF-8 text (byte {exc.start} is "
            f"{exc.object[exc.start : exc.start + 1]!r}): save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _check_data_dir(data_dir: Path) -> None:
    """Refuse a --data-dir that cannot become a writable folder, before anything opens."""
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder that would hold the new ones
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    if problem is not None:
        raise ConfigurationError(
            f"--data-dir {data_dir}: {problem}: give --data-dir a folder you can write"
        )


def _install_hint(exc: ImportError, module: str) -> str | None:
    """'redis, which is not installed: pip install ...' for an optional dependency, else None."""
    missing = (exc.name or module).partition(".")[0]
    extra = _EXTRAS.get(missing)
    if extra is None:
        return None
    return f"{missing}, which is not installed: pip install 'brokerguard[{extra}]'"


def _require(module: str, what: str) -> None:
    """Import `module` now, or stop with the extra to install (exit 2), before any work."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        hint = _install_hint(exc, module)
        if hint is None:
            raise
        raise click.ClickException(f"{what} needs {hint}") from None


def _require_store(config: BrokerGuardConfig) -> None:
    if config.store.url.startswith("postgres"):
        _require("psycopg", f"the store {redact_url(config.store.url)}")


def _require_coordination(config: BrokerGuardConfig) -> None:
    if config.coordination_url is not None:
        what = f"coordination_url {redact_url(config.coordination_url)}"
        _require("redis", what)
        _require("brokerguard.coordination", what)


def _service(config: BrokerGuardConfig) -> GuardService:
    """The guard service, its optional dependencies checked first (exit 2, the extra named)."""
    _require_store(config)
    _require_coordination(config)
    return GuardService(config)


def _emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human()


def _done(code: int) -> NoReturn:
    raise SystemExit(code)


# ---------------------------------------------------------------------- run


@cli.command()
@config_option
@data_dir_option
@click.option("--host", default=None, help="Status server address (default from config).")
@click.option("--port", type=int, default=None, help="Status server port (default from config).")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds (default: until SIGINT/SIGTERM).",
)
@click.option("--no-demo", is_flag=True, help="Do not run the demo strategy.")
@json_option
def run(
    config_path: Path | None,
    data_dir: Path,
    host: str | None,
    port: int | None,
    duration: float | None,
    no_demo: bool,
    as_json: bool,
) -> None:
    """Run the guard service (the main job).

    Exit 0 when it stops with nothing outstanding, 1 when problems are outstanding (an account
    halted, a broker offline ...) after Ctrl-C or --duration; SIGTERM, a service manager's
    orderly stop, exits 0 either way. --json prints a final summary on stdout.
    """
    config = _config(config_path, data_dir)
    if host or port is not None:
        config = with_server(config, host=host or None, port=port)  # checked like the file
    # Read and judge the token before anything opens: a weak one stops the start (exit 2).
    token = _control_token(config)
    bot_token = _bot_token(config, token)
    embedded = config_path is None
    demo = embedded and not no_demo
    log_format = _log_format()
    console = _stderr_console(log_format)
    interactive = console.is_terminal
    _check_port_free(config.server.host, config.server.port)
    _configure_logging(interactive, log_format)
    service = _service(config)
    restore_gc = tune_gc()  # this process is the service: its state is frozen once built
    server = StatusServer(
        create_app(service, control_token=token, bot_token=bot_token),
        host=config.server.host,
        port=config.server.port,
    )
    try:
        server.start()
    except RuntimeError:
        service.close()
        restore_gc()
        raise ConfigurationError(
            f"the status server did not start on {config.server.host}:{config.server.port} "
            "(see the log above): choose another port with --port (0 picks a free one)"
        ) from None
    # Signals are ours before anyone is told we run: a stop asked at once is a clean stop.
    with _stop_on_signals(service) as received:
        console.print(
            f"status page {server.url}/ · JSON {server.url}/status · "
            f"metrics {server.url}/metrics · "
            + (
                f"control endpoints ON (bearer token from {config.server.control_token_env})"
                if token
                else f"control endpoints OFF (set {config.server.control_token_env} to enable)"
            )
            + " · "
            + (
                f"pre-trade API /v1 ON (bot token from {config.server.bot_token_env})"
                if bot_token
                else f"pre-trade API /v1 OFF (set {config.server.bot_token_env} to enable)"
            )
        )
        if embedded:
            console.print(
                f"[bold]brokerguard[/bold]: no --config given, running the embedded default: a "
                f"paper broker with a realistic fault plan, a demo strategy that keeps trying to "
                f"open positions, and SQLite at {redact_url(service.store.safe_url)}"
            )
        sdnotify.notify("READY=1")  # systemd (Type=notify): the status server answers
        runner = threading.Thread(
            target=service.run, kwargs={"demo_strategy": demo}, name="brokerguard-service"
        )
        runner.start()
        deadline = None if duration is None else time.monotonic() + duration  # wall-clock-ok
        _wait(service, runner, deadline, console if interactive else None)
        sdnotify.notify("STOPPING=1")
        service.stop()
        runner.join()
    server.stop()
    summary = service.status()
    service.close()
    restore_gc()
    problems = _problems(summary)
    console.print(
        f"brokerguard stopped after {summary['service']['enforcement_passes']} enforcement "
        f"pass(es); {len(problems)} problem(s) outstanding"
    )
    for problem in problems:
        console.print(f"  - {problem}")
    stopped_by = received[-1] if received else ("duration" if duration is not None else "end")
    # A service manager's stop is no failure of the service: systemd would mark the unit failed.
    code = PROBLEM if problems and stopped_by != signal.SIGTERM.name else OK
    if as_json:
        click.echo(
            json.dumps(
                {
                    "stopped_by": stopped_by,
                    "enforcement_passes": summary["service"]["enforcement_passes"],
                    "problems": problems,
                    "exit_code": code,
                },
                indent=2,
                sort_keys=True,
            )
        )
    _done(code)


def _wait(
    service: GuardService, runner: threading.Thread, deadline: float | None, console: Console | None
) -> None:
    """Wait for the service thread or the deadline; WATCHDOG=1 to systemd after every pass.

    Liveness is enforcement passes completing, not the process answering: a worker whose passes
    stop for WatchdogSec is restarted by systemd. `console`: the live view (a terminal) or None.
    """
    passes = service.exits.ticks
    live = (
        None
        if console is None
        else Live(_view(service, console), console=console, refresh_per_second=2)
    )
    with live or nullcontext():
        while runner.is_alive() and not _expired(deadline):
            runner.join(0.5)
            if service.exits.ticks != passes:
                passes = service.exits.ticks
                sdnotify.notify("WATCHDOG=1")
            if live is not None:
                live.update(_view(service, console))


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port something else listens on, naming it, before the service starts."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError:
        return  # the server reports what it cannot resolve
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): port {port} is in use "
                "or not allowed; stop what holds it or choose another with --port "
                "(0 picks a free one)"
            ) from None


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline  # wall-clock-ok


@contextmanager
def _stop_on_signals(service: GuardService) -> Iterator[list[str]]:
    """Stop `service` on SIGINT/SIGTERM; yield the names of the signals received, in order."""
    received: list[str] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        logging.getLogger("brokerguard.cli").warning(
            "received %s: finishing the current enforcement step, then stopping", name
        )
        service.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _configure_logging(
    interactive: bool, log_format: str = LogFormat.TEXT.value, level: int | None = None
) -> None:
    """Logs on stderr, repeats collapsed: errors only beside the live view, else from INFO.

    JSON (``--log-format json``) is for log shippers: every record from INFO, one object per
    line, whatever stderr is.
    """
    if level is None:
        level = logging.ERROR if interactive and log_format == "text" else logging.INFO
    configure_logging(log_format, level=level, structured=not interactive)


def _log_format() -> str:
    """The ``--log-format`` the group was given (text when called outside the group)."""
    context = click.get_current_context(silent=True)
    root = None if context is None else context.find_root()
    return str(root.params.get("log_format") or "text") if root is not None else "text"


def _stderr_console(log_format: str) -> Console:
    """Where `run` talks to the operator: the terminal, or log records when not one.

    Under ``--log-format json`` every stderr line must be JSON, so what `run` says becomes an
    INFO record of ``brokerguard.cli``; piped text is never wrapped at 80 columns.
    """
    if log_format == LogFormat.JSON.value:
        return Console(file=_LogLines(), width=_PIPED_WIDTH, no_color=True)
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=_PIPED_WIDTH)


def _console() -> Console:
    """The console for stdout: a terminal's width, or wide enough that piped tables are not cut."""
    console = Console()
    return console if console.is_terminal else Console(width=_PIPED_WIDTH)


_PIPED_WIDTH = 1000  # columns when not a terminal: a table is cut by its content, not at 80


class _LogLines(io.StringIO):
    """A file whose every complete line becomes an INFO record of ``brokerguard.cli``."""

    def write(self, text: str) -> int:
        """Buffer `text`; log each finished line (blank lines are dropped)."""
        written = super().write(text)
        buffered = self.getvalue()
        if "\n" in buffered:
            done, _, rest = buffered.rpartition("\n")
            self.seek(0)
            self.truncate()
            super().write(rest)
            for line in done.splitlines():
                if line.strip():
                    logging.getLogger("brokerguard.cli").info(line.rstrip())
        return written


def _view(service: GuardService, console: Console | None = None) -> Group:
    size = None if console is None else console.size
    return _view_from(
        service.status(),
        width=None if size is None else size.width,
        height=None if size is None else size.height,
    )


def _view_from(
    status: Mapping[str, Any], *, width: int | None = None, height: int | None = None
) -> Group:
    """The live view: brokers, accounts (problems first) and recent events, one line per row.

    With a `height` (a terminal's) the rows are budgeted to fit it, what does not fit said as
    "+N more accounts"; cells never wrap, they are cut with an ellipsis to the `width`.
    """
    brokers_in = list(status["brokers"].items())
    accounts_in = sorted(
        status["accounts"].items(), key=lambda item: item[1]["trading_state"] == "active"
    )
    events_in = list(status["events"][:8])
    if height is not None:
        # Each table: title, header and rule lines; one line spare for the cursor.
        rows = max(height - 1 - 3 * _VIEW_TABLES, 2)
        shown_brokers = min(len(brokers_in), max(1, rows // 4))
        shown_accounts = min(len(accounts_in), max(1, rows - shown_brokers))
        events_in = events_in[: max(0, rows - shown_brokers - shown_accounts)]
    else:
        shown_brokers, shown_accounts = len(brokers_in), len(accounts_in)
    brokers = _view_table(
        "brokers",
        width,
        ("broker", None),
        ("health", 8),
        ("read", None),
        ("write", None),
        ("trading", 7),
    )
    for name, broker in _fitting(brokers_in, shown_brokers):
        health = broker["health_state"]
        brokers.add_row(
            name,
            f"[{_HEALTH_STYLE.get(health, 'red')}]{health}[/]",
            _circuit(broker["breakers"]["read"]),
            _circuit(broker["breakers"]["write"]),
            "allowed" if broker["trading_allowed"] else "[red]blocked[/]",
        )
    _more(brokers, len(brokers_in), shown_brokers, "broker")
    accounts = _view_table(
        "accounts",
        width,
        ("account", None),
        ("pos/cap", 7),
        ("state", 8),
        ("last enforcement", None),
        ("paused", 12),
    )
    for account_id, account in _fitting(accounts_in, shown_accounts):
        last = account["last_enforcement"] or {}
        held = "?" if account["positions"] is None else str(account["positions"])
        accounts.add_row(
            account_id,
            f"{held}/{account['max_positions']}",
            account["trading_state"],
            f"{last.get('status', '-')} {last.get('reason', '')}".strip(),
            ", ".join(account["paused_symbols"] or {}) or "-",
        )
    _more(accounts, len(accounts_in), shown_accounts, "account")
    parts: list[Table] = [brokers, accounts]
    if events_in:
        events = _view_table("recent events", width, ("event", 20), ("details", None))
        for event in events_in:
            details = {k: v for k, v in event.items() if k not in {"kind", "at"}}
            events.add_row(str(event["kind"]), ", ".join(f"{k}={v}" for k, v in details.items()))
        parts.append(events)
    return Group(*parts)


_VIEW_TABLES = 3


def _view_table(title: str, width: int | None, *columns: tuple[str, int | None]) -> Table:
    """A compact table: no outer box, one line per row (cut to `width`, never wrapped).

    Within a `width`, a column with a number keeps at most that many characters and the
    others share the rest; without one (piped), every cell is shown whole.
    """
    table = Table(
        title=title,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        width=width,
    )
    for name, size in columns:
        if width is None:
            table.add_column(name)
        else:
            table.add_column(
                name,
                no_wrap=True,
                overflow="ellipsis",
                max_width=size,
                ratio=None if size is not None else 1,
            )
    return table


def _fitting(items: list[tuple[str, Any]], shown: int) -> list[tuple[str, Any]]:
    """The first `shown` items, one fewer when a "+N more" caption must take the last line."""
    return items if shown >= len(items) else items[: max(shown - 1, 0)]


def _more(table: Table, total: int, shown: int, what: str) -> None:
    if shown < total:
        table.caption = f"+{total - max(shown - 1, 0)} more {what}s"


def _circuit(report: Mapping[str, Any]) -> str:
    state = report["circuit_state"]
    wait = report["next_probe_in_seconds"]
    return state if wait is None else f"{state} (probe in {wait:.0f}s)"


def _problems(status: Mapping[str, Any]) -> list[str]:
    problems = [f"account {h['account_id']} halted: {h['reason']}" for h in status["halts"]]
    for name, broker in status["brokers"].items():
        if broker["health_state"] == "offline":
            problems.append(f"broker {name} offline")
    for account_id, account in status["accounts"].items():
        last = account.get("last_enforcement") or {}
        if last.get("status") in {"unverified", "failed_enforcement", "error"}:
            problems.append(f"account {account_id}: {last['status']}")
    if not status["service"]["store_ok"]:
        problems.append("store unreachable")
    return problems


# ---------------------------------------------------------------------- status


@cli.command()
@config_option
@data_dir_option
@click.option("--url", default=None, help="The running service (default: from the config).")
@json_option
def status(config_path: Path | None, data_dir: Path, url: str | None, as_json: bool) -> None:
    """Show the running service's status, or the store's if none answers (exit 1 on problems).

    When no service answers, the store's view is printed and flagged as such (on stderr and
    in the JSON's ``live``/``service_error``); with --url, asking for the live view, that is
    exit 1 too.
    """
    config = _config(config_path, data_dir)
    service_url = url or f"http://{config.server.host}:{config.server.port}"
    live, service_error = _fetch_live_status(service_url)
    if live is not None:
        problems = _problems(live)
        _emit(as_json, live, lambda: _print_live(live, problems))
        _done(PROBLEM if problems else OK)
    click.echo(
        f"no running service answered at {redact_url(service_url)} ({service_error}): "
        "showing the store's view (halts and pauses only; no broker health or positions)",
        err=True,
    )
    with _store(config) as store:
        halts = store.halts()
        accounts: dict[str, dict[str, Any]] = {
            a.id: {
                "halted": store.get_halt(a.id) is not None,
                "paused_symbols": store.paused_symbol_reasons(a.id),
                "max_positions": a.max_positions,
                "broker": a.broker,
            }
            for a in config.accounts
        }
        recent = store.audit_log(limit=10)
    data = {
        "live": False,
        "service_url": redact_url(service_url),
        "service_error": service_error,
        "store": redact_url(store.safe_url),
        "accounts": accounts,
        "halts": [_as_dict(h) for h in halts],
        "recent_audit": [_as_dict(r) for r in recent],
    }

    def human() -> None:
        console = _console()
        table = Table(title=f"accounts ({redact_url(store.safe_url)})")
        for column in ("account", "broker", "cap", "halted", "paused"):
            table.add_column(column)
        for account_id, account in accounts.items():
            table.add_row(
                account_id,
                account["broker"],
                str(account["max_positions"]),
                "[bold red]HALTED[/]" if account["halted"] else "no",
                ", ".join(account["paused_symbols"]) or "-",
            )
        console.print(table)
        for halt in halts:
            console.print(f"[red]halt[/] {halt.account_id}: {halt.reason} (by {halt.source})")

    _emit(as_json, data, human)
    _done(PROBLEM if halts or url is not None else OK)


def _fetch_live_status(base_url: str) -> tuple[dict[str, Any] | None, str]:
    """The service's ``/status`` at `base_url`, or None and why it could not be had."""
    if not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(f"--url must be http(s)://..., got {base_url!r}")
    try:
        with urllib.request.urlopen(f"{base_url}/status", timeout=2) as response:  # noqa: S310
            data = json.loads(response.read())
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return None, f"{type(exc).__name__}: {reason}"  # no service there: the store's view
    if isinstance(data, dict) and "accounts" in data:
        return data, ""
    return None, "the answer is not a brokerguard status"


def _print_live(status: Mapping[str, Any], problems: list[str]) -> None:
    console = _console()
    console.print(_view_from(status))
    for problem in problems:
        console.print(f"[red]problem[/] {problem}")


@cli.command()
@config_option
@data_dir_option
@json_option
def fleet(config_path: Path | None, data_dir: Path, as_json: bool) -> None:
    """Show a fleet's workers and who enforces each account (exit 1 if any account has none)."""
    config = _config(config_path, data_dir)
    if config.coordination_url is None:
        raise ConfigurationError("this configuration has no coordination_url: it is not a fleet")
    _require_coordination(config)
    from brokerguard.coordination import RedisCoordinator  # noqa: PLC0415 (optional)

    settings = config.coordination
    coordinator = RedisCoordinator(
        config.coordination_url,
        namespace=settings.namespace,
        timeout=settings.timeout_s,
        password=require_secret(settings.password_env, "coordination.password_env"),
    )
    try:
        ages = coordinator.workers()
        holders = coordinator.lease_holders([a.id for a in config.accounts])
    except BrokerGuardError as exc:
        reason = str(exc)
        _emit(as_json, {"reachable": False, "reason": reason}, lambda: click.echo(reason))
        _done(PROBLEM)
    finally:
        coordinator.close()
    live = {w: age for w, age in ages.items() if age <= settings.lease_ttl_s}
    unheld = sorted(a for a, h in holders.items() if h is None)
    workers: dict[str, dict[str, Any]] = {
        w: {
            "seconds_since_heartbeat": round(age, 3),
            "live": w in live,
            "accounts": sorted(a for a, h in holders.items() if h and h[0] == w),
        }
        for w, age in sorted(ages.items())
    }
    data = {
        "coordination": redact_url(coordinator.safe_url),
        "workers": workers,
        "leases": {
            a: None if h is None else {"worker": h[0], "token": h[1]} for a, h in holders.items()
        },
        "accounts_without_a_worker": unheld,
    }

    def human() -> None:
        table = Table(title=f"fleet on {redact_url(coordinator.safe_url)}")
        for column in ("worker", "heartbeat", "accounts"):
            table.add_column(column)
        for worker, info in workers.items():
            state = f"{info['seconds_since_heartbeat']:.1f}s ago" + (
                "" if info["live"] else " (gone)"
            )
            table.add_row(worker, state, str(len(info["accounts"])))
        _console().print(table)
        if unheld:
            click.echo(f"{len(unheld)} account(s) without a worker: {', '.join(unheld[:10])}")

    _emit(as_json, data, human)
    _done(PROBLEM if unheld or not live else OK)


# ---------------------------------------------------------------------- halt / resume


@cli.command()
@click.argument("account")
@click.option("--reason", required=True, help="Why trading must stop (audited).")
@click.option("--operator", default="cli", show_default=True, help="Who is halting.")
@config_option
@data_dir_option
@json_option
def halt(
    account: str,
    reason: str,
    operator: str,
    config_path: Path | None,
    data_dir: Path,
    as_json: bool,
) -> None:
    """Halt ACCOUNT until an operator resumes it (durable, audited)."""
    config = _config(config_path, data_dir)
    _known_account(config, account)
    with _store(config) as store:
        record = store.halt(account, reason, f"operator:{operator}")
    _emit(
        as_json,
        _as_dict(record),
        lambda: click.echo(f"{account} HALTED: {record.reason} (by {record.source})"),
    )
    _done(OK)


@cli.command()
@click.argument("account")
@click.option("--operator", required=True, help="Who takes responsibility (audited).")
@click.option("--reason", required=True, help="Why it is safe to trade again (audited).")
@config_option
@data_dir_option
@json_option
def resume(
    account: str,
    operator: str,
    reason: str,
    config_path: Path | None,
    data_dir: Path,
    as_json: bool,
) -> None:
    """Lift the halt of ACCOUNT (exit 1 if it was not halted)."""
    config = _config(config_path, data_dir)
    _known_account(config, account)
    with _store(config) as store:
        lifted = store.resume(account, operator, reason)
    message = f"{account} resumed by {operator}" if lifted else f"{account} was not halted"
    _emit(as_json, {"account_id": account, "resumed": lifted}, lambda: click.echo(message))
    _done(OK if lifted else PROBLEM)


@cli.command("confirm-positions")
@click.argument("account")
@click.option(
    "--symbol",
    "symbols",
    multiple=True,
    required=True,
    help="A symbol the exchange no longer holds (repeat for several), as status lists them.",
)
@click.option("--operator", required=True, help="Who takes responsibility (audited).")
@click.option(
    "--reason", required=True, help="How you know they are gone (sold by hand ...; audited)."
)
@config_option
@data_dir_option
@json_option
def confirm_positions(
    account: str,
    symbols: tuple[str, ...],
    operator: str,
    reason: str,
    config_path: Path | None,
    data_dir: Path,
    as_json: bool,
) -> None:
    """Confirm that positions a read lost are really gone from ACCOUNT (audited).

    A read that lacks positions with no sell of ours and nothing in the trade history to
    explain it is never believed on its own: new entries stay refused. After checking the
    exchange yourself, confirm; the guard service believes the next read that lacks them.
    """
    config = _config(config_path, data_dir)
    _known_account(config, account)
    try:
        canonical = sorted({parse_symbol(s) for s in symbols})
    except BrokerGuardError as exc:
        raise click.UsageError(str(exc)) from exc
    with _store(config) as store:
        store.record_audit(
            account, POSITIONS_CONFIRMED, f"operator:{operator}", reason, {"symbols": canonical}
        )
    _emit(
        as_json,
        {"account_id": account, "confirmed": canonical},
        lambda: click.echo(f"{account}: {', '.join(canonical)} confirmed gone by {operator}"),
    )
    _done(OK)


# ---------------------------------------------------------------------- enforce / audit


@cli.command()
@click.argument("account")
@click.option("--dry-run", is_flag=True, help="Print what would be liquidated; send nothing.")
@config_option
@data_dir_option
@json_option
def enforce(
    account: str, dry_run: bool, config_path: Path | None, data_dir: Path, as_json: bool
) -> None:
    """Run the position cap on ACCOUNT once (exit 1 unless it ends compliant).

    This command builds its own service and broker from the configuration: it never asks a
    running service (whose HTTP API offers no plan), and says so in ``looked_at``.
    """
    config = _config(config_path, data_dir)
    _known_account(config, account)
    looked_at = _looked_at(config, account, config_path)
    service = _service(config)
    try:
        result = (
            service.account(account).enforcer.plan() if dry_run else service.enforce_once(account)
        )
    finally:
        service.close(mark_stopped=False)
    result = {**result, "looked_at": looked_at, "reason": _reason(result)}

    def human() -> None:
        click.echo(f"looked at: {looked_at}")
        click.echo(f"{account}: {result['status']}: {result['reason']}")
        for item in result.get("would_liquidate", []):
            click.echo(f"  would sell {item['quantity']} {item['symbol']} (value {item['value']})")
        for symbol in result.get("liquidated", []):
            click.echo(f"  sold {symbol}")

    _emit(as_json, result, human)
    _done(OK if result["status"] == "compliant" else PROBLEM)


def _looked_at(config: BrokerGuardConfig, account: str, config_path: Path | None) -> str:
    """What `enforce` reads: a broker of its own, never a running service's (said plainly)."""
    broker = next(a.broker for a in config.accounts if a.id == account)
    source = "the embedded default" if config_path is None else str(config_path)
    said = (
        f"a fresh broker built by this command (broker {broker!r} from {source}), "
        "not the running service's"
    )
    if config.brokers[broker].kind in {"paper", "paper_exchange"}:
        said += (
            "; a paper broker lives in memory, so it holds the configuration's starting "
            "positions, not what a running service's paper broker holds now "
            "(brokerguard status shows that)"
        )
    return said


def _reason(result: Mapping[str, Any]) -> str:
    """The result's reason, or one said from its figures: a reason is never empty."""
    if result.get("reason"):
        return str(result["reason"])
    count, cap = result.get("position_count"), result.get("max_positions")
    if result["status"] == "compliant":
        return f"{count} position(s), within the cap of {cap}"
    if result["status"] == "over_cap":
        return f"{count} position(s) over the cap of {cap} by {result.get('excess')}"
    return f"status {result['status']}: {count} position(s), cap {cap}"


@cli.command()
@click.argument("account", required=False)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@config_option
@data_dir_option
@json_option
def audit(
    account: str | None, limit: int, config_path: Path | None, data_dir: Path, as_json: bool
) -> None:
    """Show the audit log (newest first), for one ACCOUNT or all (exit 2 on an unknown one)."""
    config = _config(config_path, data_dir)
    if account is not None:
        _known_account(config, account)
    with _store(config) as store:
        records = store.audit_log(account, limit=limit)

    def human() -> None:
        table = Table(title="audit log (newest first)")
        for column in ("at", "account", "action", "actor", "reason", "details"):
            table.add_column(column)
        for r in records:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.at))
            details = ", ".join(f"{k}={v}" for k, v in r.details.items())
            table.add_row(when, r.account_id or "-", r.action, r.actor, r.reason, details)
        _console().print(table)

    _emit(as_json, [_as_dict(r) for r in records], human)
    _done(OK)


@cli.command()
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Simulated s.",
)
@json_option
def demo(seed: int, duration: float, as_json: bool) -> None:
    """Replay a paper-broker outage on simulated time and print what the breaker did."""
    from brokerguard.demo import run_demo  # noqa: PLC0415 (only this command needs it)

    lines = run_demo(seed=seed, duration=duration)
    last = lines[-1].removeprefix("status: ") if lines[-1].startswith("status: ") else "null"
    summary = {
        "seed": seed,
        "duration_s": duration,
        "lines": lines,
        "broker_status": json.loads(last),
        "exit_code": OK,
    }
    _emit(as_json, summary, lambda: click.echo("\n".join(lines)))
    _done(OK)


@cli.command()
@click.option(
    "--scenario",
    type=click.Choice(sorted(SCENARIOS)),
    required=True,
    help="The world to replay.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@json_option
def simulate(scenario: str, seed: int, plot_path: Path | None, as_json: bool) -> None:
    """Replay a scenario naive and guarded on simulated time, side by side."""
    if plot_path is not None:
        _check_plot_path(plot_path)  # before the simulation: a bad path wastes no run
    runs = run_simulation(scenario, seed=seed)
    data = {name: stats.summary() for name, stats in runs.items()}

    def human() -> None:
        table = Table(title=f"{scenario} (seed {seed}): {SCENARIOS[scenario].description}")
        table.add_column("")
        for name in runs:
            table.add_column(name, justify="right")
        for key in data["naive"]:
            table.add_row(key.replace("_", " "), *(str(data[name][key]) for name in runs))
        _console().print(table)

    if plot_path is not None:
        from brokerguard.sim.plot import plot_runs  # noqa: PLC0415 (needs matplotlib)

        plot_runs(runs, plot_path, title=f"{scenario} (seed {seed})", scenario=scenario)
    _emit(as_json, data, human)
    if plot_path is not None:  # on stderr under --json: stdout stays one JSON document
        click.echo(f"plot written to {plot_path}", err=as_json)
    _done(OK)


def _check_plot_path(path: Path) -> None:
    """Refuse a --plot that cannot be written: no matplotlib, an unknown format, no folder."""
    _require("matplotlib", "--plot")
    from matplotlib.backend_bases import FigureCanvasBase  # noqa: PLC0415 (optional)

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise click.BadParameter(
            f"{path}: the suffix names the image format; use one of "
            + ", ".join(f".{f}" for f in sorted(formats))
            + " (e.g. incident.png)",
            param_hint="'--plot'",
        )
    if not path.parent.is_dir():
        raise click.BadParameter(
            f"{path}: the folder {path.parent} does not exist; create it first",
            param_hint="'--plot'",
        )


@cli.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def check_config(file: Path, as_json: bool) -> None:
    """Validate FILE; list every problem by field (exit 2 if any)."""
    try:
        config = _load_config(file)
    except ConfigurationError as exc:
        problems = str(exc)
        _emit(
            as_json, {"valid": False, "problems": problems}, lambda: click.echo(problems, err=True)
        )
        _done(USAGE)
    store = redact_url(config.store.url)
    coordination = None if config.coordination_url is None else redact_url(config.coordination_url)
    passwords = {
        "store": config.store.password_env,
        "coordination": config.coordination.password_env,
    }
    summary = {
        "valid": True,
        "brokers": {name: b.kind for name, b in config.brokers.items()},
        "accounts": [a.id for a in config.accounts],
        "store": store,
        "coordination": coordination,
        "passwords_from": {part: env for part, env in passwords.items() if env is not None},
        "server": f"{config.server.host}:{config.server.port}",
    }
    _emit(
        as_json,
        summary,
        lambda: click.echo(
            f"{file}: valid — {len(config.brokers)} broker(s), {len(config.accounts)} "
            f"account(s), store {store}"
            + ("" if coordination is None else f", coordination {coordination}")
            + f", server {summary['server']}"
        ),
    )
    _done(OK)


def _control_token(config: BrokerGuardConfig) -> str | None:
    """The control token from its variable, refused (ConfigurationError) if it is guessable."""
    name = config.server.control_token_env
    token = resolve_secret(name)
    problems = [] if token is None else check_control_token(token)
    if problems:
        raise ConfigurationError(
            f"server.control_token_env: the control token in {name} is too weak "
            f"({'; '.join(problems)}): use at least 32 random characters, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def _bot_token(config: BrokerGuardConfig, control_token: str | None) -> str | None:
    """The bot token: as strong as the control token, and never the same one."""
    name = config.server.bot_token_env
    token = resolve_secret(name)
    problems = [] if token is None else check_control_token(token)
    if token is not None and token == control_token:
        problems.append("it is the control token: a bot could halt and resume")
    if problems:
        raise ConfigurationError(
            f"server.bot_token_env: the bot token in {name} is refused "
            f"({'; '.join(problems)}): use 32 random characters of its own"
        )
    return token


@contextmanager
def _store(config: BrokerGuardConfig) -> Iterator[StateStore]:
    _require_store(config)
    url = config.store.url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        # Before the first `run` there is no folder yet: an empty store (no halts) is the truth,
        # as the service would make it, not a traceback.
        folder = Path(url.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"store.url {url}: cannot create {folder} ({exc})") from None
    store = open_store(
        config.store.url,
        timeout=config.store.timeout_s,
        password=require_secret(config.store.password_env, "store.password_env"),
    )
    try:
        yield store
    finally:
        store.close()


def _known_account(config: BrokerGuardConfig, account: str) -> None:
    if account not in {a.id for a in config.accounts}:
        known = ", ".join(a.id for a in config.accounts)
        raise ConfigurationError(f"no account {account!r} in the configuration (known: {known})")


def _as_dict(value: Any) -> dict[str, Any]:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"not a record: {value!r}")
