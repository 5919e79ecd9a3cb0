"""Run an unmodified freqtrade, live, against the Kraken emulator on 127.0.0.1.

freqtrade (pinned, :data:`FREQTRADE_VERSION`) lives in its own virtual environment under
``.cache/freqtrade-venv`` at the repository's root, so the project's pins stay clean; it is
installed on first use, and only when ``BROKERGUARD_FREQTRADE=1`` or ``CI=true`` (about a
minute). Everything else skips with that reason.

A run is a ``freqtrade trade`` process with ``dry_run`` false, its ccxt client pointed at the
emulator (``exchange.ccxt_config.urls.api``), its REST API on a free loopback port (read and
driven through :class:`~brokerguard.integrations.freqtrade.FreqtradeSupervisor`), its SQLite
database and log in the test's directory. ``PYTHONPATH`` carries this checkout's ``src`` so a
strategy can import ``brokerguard.integrations.freqtrade``. The API's credentials are not in
the config file: freqtrade reads them from ``FREQTRADE__API_SERVER__USERNAME``,
``FREQTRADE__API_SERVER__PASSWORD`` and ``FREQTRADE__API_SERVER__JWT_SECRET_KEY``, and a
supervising guard service (:func:`start_guard` with ``bot=``) from the same two variables.

What the proof measures on the emulator: :class:`VenueSampler` (how many positions the
exchange holds, 10 times a second, and every stretch over the cap), :func:`venue_buys`
(every filled buy, and whether the account already held its pair when it filled: a duplicate)
and :func:`untracked` (what the exchange holds beyond freqtrade's open trades).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from brokerguard.integrations.freqtrade import FreqtradeSupervisor
from brokerguard.sim.kraken import DEFAULT_API_KEY, DEFAULT_API_SECRET, KrakenEmulator

GUARD_KEY = "brokerguard-own-key"
GUARD_SECRET = base64.b64encode(b"the guard service's own emulator secret").decode()

FREQTRADE_VERSION = "2026.9"
REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".cache" / "freqtrade-venv"
RESULTS = REPO / ".cache" / "freqtrade-proof"
"""Where each proof run writes its figures (JSON), for docs/proof.md."""
EXAMPLES = REPO / "examples" / "freqtrade"
ENABLE_ENV = "BROKERGUARD_FREQTRADE"
INSTALL_TIMEOUT_S = 900
CLIENT_TIMEOUT_MS = 2000
"""freqtrade's ccxt timeout in these runs: an AddOrder answered after 3 s times out."""
BASE_ASSETS = {"XXBT": "BTC/USD", "XETH": "ETH/USD", "SOL": "SOL/USD"}
ASSETS = {pair: asset for asset, pair in BASE_ASSETS.items()}
ALTNAMES = {"XBTUSD": "BTC/USD", "ETHUSD": "ETH/USD", "SOLUSD": "SOL/USD"}
"""The emulator's pairs (``descr.pair`` of its orders) as freqtrade names them."""
DUST = Decimal("0.00001")
USERNAME_ENV = "FREQTRADE__API_SERVER__USERNAME"
PASSWORD_ENV = "FREQTRADE__API_SERVER__PASSWORD"  # noqa: S105 (a variable's name)
JWT_ENV = "FREQTRADE__API_SERVER__JWT_SECRET_KEY"

ALWAYS_IN = '''
"""Enter every pair at market, never exit: the plainest live bot there is."""
from freqtrade.strategy import IStrategy


class AlwaysIn(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "1m"
    minimal_roi = {"0": 100.0}
    stoploss = -0.99
    startup_candle_count = 0
    process_only_new_candles = False
    order_types = {
        "entry": "market",
        "exit": "market",
        "stoploss": "market",
        "stoploss_on_exchange": False,
    }

    def populate_indicators(self, dataframe, metadata):
        return dataframe

    def populate_entry_trend(self, dataframe, metadata):
        dataframe["enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe, metadata):
        dataframe["exit_long"] = 0
        return dataframe
'''


def freqtrade_enabled() -> bool:
    """Whether this run may install and start freqtrade."""
    return os.environ.get(ENABLE_ENV) == "1" or os.environ.get("CI", "").lower() == "true"


def _installed_version() -> str | None:
    binary = VENV / "bin" / "freqtrade"
    if not binary.exists():
        return None
    done = subprocess.run(  # noqa: S603 (our own venv's freqtrade)
        [str(binary), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("Freqtrade Version:"):
            return line.split()[-1]
    return None


def ensure_freqtrade() -> Path:
    """The venv's ``freqtrade`` binary, installing the pinned version first when needed."""
    if _installed_version() != FREQTRADE_VERSION:
        VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(  # noqa: S603 (this interpreter's venv module)
            [sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=300
        )
        subprocess.run(  # noqa: S603 (the pinned version, from the configured index)
            [
                str(VENV / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"freqtrade=={FREQTRADE_VERSION}",
            ],
            check=True,
            timeout=INSTALL_TIMEOUT_S,
        )
        if _installed_version() != FREQTRADE_VERSION:
            pytest.fail(f"freqtrade {FREQTRADE_VERSION} did not install into {VENV}")
    return VENV / "bin" / "freqtrade"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(what: str, check: Callable[[], bool], timeout_s: float, every_s: float = 0.25):
    """Poll `check` until it holds; fail the test naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: S110 (a peer still starting: poll again)
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def held_symbols(kraken: KrakenEmulator) -> dict[str, Decimal]:
    """The positions the exchange holds: base balances above dust, by freqtrade pair."""
    balances = kraken.balances()
    return {
        pair: balances[asset]
        for asset, pair in BASE_ASSETS.items()
        if balances.get(asset, Decimal(0)) > DUST
    }


def buy_orders(kraken: KrakenEmulator) -> dict[str, int]:
    """Accepted buy orders by pair (altname), from the emulator's book."""
    counts: dict[str, int] = {}
    for order in kraken.orders():
        if order["descr"]["type"] == "buy":
            counts[order["descr"]["pair"]] = counts.get(order["descr"]["pair"], 0) + 1
    return counts


@dataclass(frozen=True)
class Adjustment:
    """A change to the account made outside any order (a deposit, a withdrawal): `delta` base."""

    at: float  # epoch seconds, the emulator's clock
    pair: str
    delta: Decimal
    why: str


def adjust(kraken: KrakenEmulator, pair: str, delta: Decimal, why: str) -> Adjustment:
    """Credit (or, negative, debit) `pair`'s base asset on the emulator, and say when."""
    kraken.credit(ASSETS[pair], delta)
    return Adjustment(time.time(), pair, delta, why)  # wall-clock-ok: the emulator's clock


def venue_buys(kraken: KrakenEmulator, adjustments: Sequence[Adjustment] = ()) -> dict[str, Any]:
    """Every filled buy, in fill order, and whether the exchange already held its pair then.

    freqtrade holds one trade per pair and these strategies never add to one, so a buy that
    fills while the account already holds its pair (above :data:`DUST`) is a second order for
    one intended entry: a duplicate. Holdings are replayed from the fills (buys add, sells
    subtract) and `adjustments` (what a test deposited or withdrew), in time order.
    """
    events: list[tuple[float, int, str, Decimal, str]] = []
    executions_per_order: dict[str, int] = {}
    for order in kraken.orders():
        executed = Decimal(order["vol_exec"])
        if executed <= 0:
            continue
        executions_per_order[order["txid"]] = len(order.get("trades", ()))
        side = order["descr"]["type"]
        at = float(order.get("closetm") or order["opentm"])
        events.append(
            (
                at,
                1,
                ALTNAMES[order["descr"]["pair"]],
                executed if side == "buy" else -executed,
                order["txid"] if side == "buy" else "",
            )
        )
    events.extend((a.at, 0, a.pair, a.delta, "") for a in adjustments)
    held: dict[str, Decimal] = {}
    buys: list[dict[str, Any]] = []
    for at, _, pair, delta, txid in sorted(events, key=lambda e: (e[0], e[1])):
        if txid:
            buys.append(
                {"pair": pair, "txid": txid, "at": at, "held_before": str(held.get(pair, 0))}
            )
        held[pair] = held.get(pair, Decimal(0)) + delta
    duplicates = [b for b in buys if Decimal(b["held_before"]) > DUST]
    return {
        "filled_buys": len(buys),
        "filled_buys_by_pair": {
            pair: sum(1 for b in buys if b["pair"] == pair)
            for pair in sorted({b["pair"] for b in buys})
        },
        "duplicate_buys": len(duplicates),
        "duplicates": duplicates,
        "max_executions_per_order": max(executions_per_order.values(), default=0),
    }


def untracked(held: Mapping[str, Decimal], trades: Sequence[Any]) -> dict[str, str]:
    """What the exchange holds beyond freqtrade's open trades, by pair (base units)."""
    known: dict[str, Decimal] = {}
    for trade in trades:
        known[trade.pair] = known.get(trade.pair, Decimal(0)) + Decimal(str(trade.amount))
    return {
        pair: str(quantity - known.get(pair, Decimal(0)))
        for pair, quantity in sorted(held.items())
        if quantity - known.get(pair, Decimal(0)) > DUST
    }


class VenueSampler:
    """How many positions the exchange holds, sampled in a thread every `every_s` seconds.

    An over-cap stretch runs from the first sample above `cap` to the first one back within
    it (so it is measured up to `every_s` long, never short); one still open when sampling
    stops ends at the last sample and is flagged.
    """

    def __init__(self, kraken: KrakenEmulator, cap: int, every_s: float = 0.1) -> None:
        self.kraken = kraken
        self.cap = cap
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="venue-sampler", daemon=True)

    def start(self) -> VenueSampler:
        """Begin sampling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """End sampling (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), len(held_symbols(self.kraken))))
            self._stop.wait(self.every_s)

    def max_held(self) -> int:
        """The most positions seen at once."""
        return max((count for _, count in self.samples), default=0)

    def stretches(self) -> list[dict[str, Any]]:
        """Every stretch over the cap: its start (monotonic), seconds, peak, and if it ended."""
        found: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for at, count in self.samples:
            if count > self.cap:
                if current is None:
                    current = {"start": at, "end": at, "peak": count, "ended": False}
                current["peak"] = max(current["peak"], count)
                current["end"] = at
            elif current is not None:
                current["end"], current["ended"] = at, True
                found.append(current)
                current = None
        if current is not None:
            found.append(current)
        return [{**s, "seconds": round(s["end"] - s["start"], 2)} for s in found]

    def figures(self) -> dict[str, Any]:
        """What the proof reports: the peak, the over-cap stretches and their total."""
        stretches = self.stretches()
        return {
            "samples": len(self.samples),
            "sample_every_s": self.every_s,
            "max_positions_held": self.max_held(),
            "positions_held_at_end": self.samples[-1][1] if self.samples else None,
            "over_cap_stretches_s": [s["seconds"] for s in stretches],
            "longest_over_cap_s": max((s["seconds"] for s in stretches), default=0.0),
            "over_cap_total_s": round(sum(s["seconds"] for s in stretches), 2),
            "over_cap_at_end": bool(stretches) and not stretches[-1]["ended"],
        }


def write_result(name: str, figures: Mapping[str, Any]) -> None:
    """Keep a run's figures under .cache/freqtrade-proof/ (docs/proof.md quotes them)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps(figures, indent=2, sort_keys=True, default=str)
    )


@dataclass
class FreqtradeRun:
    """One ``freqtrade trade`` process and the handles a test needs."""

    process: subprocess.Popen[bytes]
    api: FreqtradeSupervisor
    workdir: Path
    config_path: Path
    log_path: Path
    db_path: Path

    def stop(self) -> None:
        """SIGINT (freqtrade's clean shutdown), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        """Freqtrade's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def db_trades(self) -> list[tuple[int, str, bool]]:
        """(id, pair, is_open) of every trade in freqtrade's database."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True) as db:
            return [
                (i, p, bool(o)) for i, p, o in db.execute("SELECT id, pair, is_open FROM trades")
            ]

    def exit_reasons(self) -> dict[str, str | None]:
        """Each trade's exit reason in freqtrade's database, by pair (None: still open)."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT pair, exit_reason FROM trades ORDER BY id"))


@dataclass
class FreqtradeBot:
    """What a run needs to start (and restart) freqtrade against one emulator."""

    binary: Path
    workdir: Path
    emulator_url: str
    strategy: str
    max_open_trades: int
    pairs: tuple[str, ...] = ("BTC/USD", "ETH/USD", "SOL/USD")
    extra_config: Mapping[str, Any] | None = None
    env: Mapping[str, str] | None = None
    strategy_source: Path | None = None  # a file to copy into user_data/strategies
    base_config: Path | None = None  # a config file under ours (its brokerguard section stays)
    port: int = 0
    username: str = "brokerguard-test"
    password: str = ""
    jwt_secret: str = ""

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        # A letter first: freqtrade reads a variable that parses as a number as that number.
        self.password = self.password or "pw-" + secrets.token_urlsafe(24)
        self.jwt_secret = self.jwt_secret or "jwt-" + secrets.token_hex(16)
        strategies = self.workdir / "user_data" / "strategies"
        strategies.mkdir(parents=True, exist_ok=True)
        if self.strategy_source is not None:
            shutil.copy(self.strategy_source, strategies)
        else:
            (strategies / "always_in.py").write_text(ALWAYS_IN)

    def config(self) -> dict[str, Any]:
        """Freqtrade's config: live on the emulator, its API on loopback."""
        urls = {"api": {"public": self.emulator_url, "private": self.emulator_url}}
        ccxt = {"urls": urls, "enableRateLimit": False, "timeout": CLIENT_TIMEOUT_MS}
        base = {} if self.base_config is None else json.loads(self.base_config.read_text())
        config: dict[str, Any] = base | {
            "max_open_trades": self.max_open_trades,
            "stake_currency": "USD",
            "stake_amount": 100,
            "tradable_balance_ratio": 0.99,
            "dry_run": False,
            "timeframe": "1m",
            "cancel_open_orders_on_exit": False,
            "trading_mode": "spot",
            "margin_mode": "",
            "unfilledtimeout": {"entry": 10, "exit": 10, "unit": "seconds"},
            "entry_pricing": {"price_side": "other", "use_order_book": True, "order_book_top": 1},
            "exit_pricing": {"price_side": "other", "use_order_book": True, "order_book_top": 1},
            "exchange": {
                "name": "kraken",
                "key": DEFAULT_API_KEY,
                "secret": DEFAULT_API_SECRET,
                "ccxt_config": ccxt,
                "ccxt_async_config": ccxt,
                "pair_whitelist": list(self.pairs),
                "pair_blacklist": [],
            },
            "pairlists": [{"method": "StaticPairList"}],
            "api_server": {
                "enabled": True,
                "listen_ip_address": "127.0.0.1",
                "listen_port": self.port,
                "verbosity": "error",
                "enable_openapi": False,
                "jwt_secret_key": "",  # these three from the environment: api_env()
                "ws_token": secrets.token_urlsafe(16),
                "CORS_origins": [],
                "username": "",
                "password": "",
            },
            "bot_name": "brokerguard-proof",
            "initial_state": "running",
            "force_entry_enable": True,
            "internals": {"process_throttle_secs": 1, "heartbeat_interval": 60},
            "db_url": f"sqlite:///{self.workdir / 'trades.sqlite'}",
            "user_data_dir": str(self.workdir / "user_data"),
            "strategy": self.strategy,
        }
        config.update(self.extra_config or {})
        return config

    def api_env(self) -> dict[str, str]:
        """The API's credentials as freqtrade's own variables (never in the config file)."""
        return {
            USERNAME_ENV: self.username,
            PASSWORD_ENV: self.password,
            JWT_ENV: self.jwt_secret,
        }

    def start(self) -> FreqtradeRun:
        """Start ``freqtrade trade`` and wait until its API answers."""
        config_path = self.workdir / "config.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log_path = self.workdir / "freqtrade.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "src"),
            "PYTHONDONTWRITEBYTECODE": "1",
            **self.api_env(),
            **(self.env or {}),
        }
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env.pop(name, None)  # loopback only
        # freqtrade skips its logging setup (no --logfile) when it sees pytest's variable.
        env.pop("PYTEST_VERSION", None)
        process = subprocess.Popen(  # noqa: S603 (our venv's freqtrade, our config)
            [str(self.binary), "trade", "-c", str(config_path), "--logfile", str(log_path)],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        api = FreqtradeSupervisor(
            f"http://127.0.0.1:{self.port}",
            username=self.username,
            password=self.password,
            timeout_s=10.0,
        )
        run = FreqtradeRun(
            process, api, self.workdir, config_path, log_path, self.workdir / "trades.sqlite"
        )

        def answering() -> bool:
            if process.poll() is not None:
                pytest.fail(f"freqtrade exited with {process.returncode}:\n{run.log()[-4000:]}")
            return api.ping()

        wait_until("freqtrade's API", answering, timeout_s=120)
        return run


class TwoKeyKraken(KrakenEmulator):
    """The emulator with a second API key on the same account: the guard service's own.

    Kraken checks nonces per key; freqtrade and the service each sign with their own key, as a
    real deployment must (two programs on one key refuse each other's nonces).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._second_secret = base64.b64decode(GUARD_SECRET)
        self._second_nonce = 0
        self._second_lock = threading.Lock()

    def _authenticate(
        self, path: str, headers: Mapping[str, str], body: str, params: Mapping[str, str]
    ) -> str | None:
        if headers.get("api-key") != GUARD_KEY:
            return super()._authenticate(path, headers, body, params)
        nonce = params.get("nonce", "")
        if not nonce.isdigit():
            return "EAPI:Invalid nonce"
        digest = hashlib.sha256((nonce + body).encode()).digest()
        signed = hmac.new(self._second_secret, path.encode() + digest, hashlib.sha512).digest()
        if not hmac.compare_digest(base64.b64encode(signed).decode(), headers.get("api-sign", "")):
            return "EAPI:Invalid signature"
        with self._second_lock:
            if int(nonce) <= self._second_nonce:
                return "EAPI:Invalid nonce"
            self._second_nonce = int(nonce)
        return None


@dataclass
class GuardRun:
    """The guard service (``brokerguard run``) as its own process."""

    process: subprocess.Popen[bytes]
    url: str
    bot_token: str
    control_token: str
    log_path: Path
    store_path: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        """What the service wrote (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str) -> Any:
        """GET a JSON document from the service (control token sent)."""
        request = urllib.request.Request(  # noqa: S310 (loopback, our own service)
            self.url + path, headers={"Authorization": f"Bearer {self.control_token}"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST a JSON body with the control token (halt, resume, confirm positions)."""
        request = urllib.request.Request(  # noqa: S310 (loopback, our own service)
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.control_token}",
                "Content-Type": "application/json",
            },
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def account(self, account_id: str = "kraken-main") -> dict[str, Any]:
        """The account's part of ``GET /status`` (supervision included)."""
        return self.get("/status")["accounts"][account_id]

    def audit(self) -> list[dict[str, Any]]:
        """The service's audit log, oldest first, read from its SQLite store (read only)."""
        with sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT at, action, actor, reason, details FROM bg_audit_log")
            return [
                {"at": at, "action": a, "actor": who, "reason": why, "details": json.loads(d)}
                for at, a, who, why, d in rows
            ]


def start_guard(
    workdir: Path, emulator_url: str, *, bot: FreqtradeBot, interval_s: float = 2.0
) -> GuardRun:
    """Run ``brokerguard run`` with examples/freqtrade/brokerguard.toml on the emulator.

    Its ``[accounts.supervise]`` points at `bot`'s API (which need not be up yet: a pass that
    cannot reach it says so in status), with the bot's credentials in freqtrade's variables.
    """
    port = free_port()
    text = (EXAMPLES / "brokerguard.toml").read_text()
    text = text.replace("http://127.0.0.1:8765", emulator_url)
    text = text.replace("http://127.0.0.1:8081", f"http://127.0.0.1:{bot.port}")
    text = text.replace("port = 8000", f"port = {port}")
    text = text.replace("interval_s = 2", f"interval_s = {interval_s:g}")
    text = text.replace(
        "sqlite:///brokerguard-data/freqtrade-guard.db", f"sqlite:///{workdir / 'guard.db'}"
    )
    config = workdir / "brokerguard.toml"
    config.write_text(text)
    bot_token, control_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "BROKERGUARD_BOT_TOKEN": bot_token,
        "BROKERGUARD_CONTROL_TOKEN": control_token,
        "BG_KRAKEN_KEY": GUARD_KEY,
        "BG_KRAKEN_SECRET": GUARD_SECRET,
        USERNAME_ENV: bot.username,
        PASSWORD_ENV: bot.password,
    }
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    log_path = workdir / "brokerguard.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (this interpreter, our CLI)
            [sys.executable, "-m", "brokerguard", "run", "--config", str(config)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    run = GuardRun(
        process,
        f"http://127.0.0.1:{port}",
        bot_token,
        control_token,
        log_path,
        workdir / "guard.db",
    )

    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail(f"brokerguard exited with {process.returncode}:\n{run.log()[-4000:]}")
        return run.get("/healthz") == {"status": "ok"}

    wait_until("brokerguard's API", healthy, timeout_s=60)
    return run
