"""Crash safety: the guard service SIGKILLed at random points of enforcement, then restarted.

The broker is the Kraken emulator, running in this (the test's) process so that its state
outlives every killed guard process; the guard is the real ``brokerguard run`` in a subprocess,
talking to it through ``ccxt.kraken`` on 127.0.0.1, with its store in SQLite. Orders fill
``FILL_DELAY`` seconds after they are placed, so most kills land while liquidations are open.

After every kill the test checks, with the process dead:
- the SQLite file passes ``PRAGMA integrity_check``;
- the audit log is the previous audit log plus new records (nothing lost, nothing rewritten,
  every record readable);
- every halt seen before (and every halt a process announced in its log) is still there,
  unless the test itself resumed it as the operator;
- every order the exchange ever received was journaled first, under its client order id, and
  no client order id reached the exchange twice; no sell was ever refused for lack of funds
  (which is what selling a position twice looks like).
Between kills the test plays the bot: it buys a few positions on the exchange so that every
restart has something to enforce, and now and then resumes a halted account.

``BROKERGUARD_CRASH_KILLS`` sets the number of kills (default 50).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from brokerguard.sim.kraken import DEFAULT_API_KEY, DEFAULT_API_SECRET, KrakenEmulator, KrakenPair
from brokerguard.store import LIVE_ORDER_STATUSES, AuditRecord, open_store

ACCOUNT = "kraken-main"
CAP = 4
FILL_DELAY = 0.8
KILLS = int(os.environ.get("BROKERGUARD_CRASH_KILLS", "50"))
PAIRS = tuple(
    KrakenPair(f"C{i:02d}USD", f"C{i:02d}USD", f"C{i:02d}", "ZUSD", Decimal(i))
    for i in range(1, 13)
)

CONFIG = """
[store]
url = "sqlite:///{db}"

[enforcement]
interval_s = 0.2

[breaker]
failure_threshold = 5
recovery_timeout_s = 1
max_attempts = 2
max_total_delay_s = 1

[backoff]
base_s = 0.05
max_delay_s = 0.2

[brokers.kraken]
kind = "ccxt"
exchange = "kraken"
api_key_env = "CRASH_KRAKEN_KEY"
api_secret_env = "CRASH_KRAKEN_SECRET"
api_url = "{url}"
timeout_s = 2
max_calls_per_s = 100
burst = 20

[[accounts]]
id = "{account}"
broker = "kraken"
max_positions = {cap}
max_cycles = 2
settle_timeout_s = 0.3
"""


class Guard:
    """One incarnation of ``brokerguard run`` after another, on the same store and exchange."""

    def __init__(self, tmp_path: Path, emulator: KrakenEmulator) -> None:
        self.db = tmp_path / "state.db"
        self.config = tmp_path / "brokerguard.toml"
        self.config.write_text(
            CONFIG.format(db=self.db, url=emulator.url, account=ACCOUNT, cap=CAP)
        )
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.env = {
            **os.environ,
            "CRASH_KRAKEN_KEY": DEFAULT_API_KEY,
            "CRASH_KRAKEN_SECRET": DEFAULT_API_SECRET,
            "PYTHONUNBUFFERED": "1",
        }
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.runs += 1
        log = (self.logs / f"run-{self.runs:03d}.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 (our interpreter, our CLI)
            [
                sys.executable,
                "-m",
                "brokerguard",
                "run",
                "--config",
                str(self.config),
                "--port",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()

    def kill(self) -> int:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=30)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def log_text(self, run: int) -> str:
        return (self.logs / f"run-{run:03d}.log").read_text(errors="replace")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout  # wall-clock-ok: waiting on a real process
    while not predicate():
        if time.monotonic() > deadline:  # wall-clock-ok
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)  # wall-clock-ok


def integrity(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def audit_snapshot(store) -> list[AuditRecord]:
    return sorted(store.audit_log(limit=1_000_000), key=lambda r: r.id)


def add_orders_per_cid(emulator: KrakenEmulator) -> Counter[str]:
    return Counter(
        r.params.get("cl_ord_id", "") for r in emulator.requests if r.endpoint == "AddOrder"
    )


def buy_some_positions(emulator: KrakenEmulator, rng: random.Random) -> None:
    """The bot, outside the guard: open a few positions so the next run has work to do."""
    balances = emulator.balances()
    empty = [p.base for p in PAIRS if balances.get(p.base, Decimal(0)) <= 0]
    for asset in rng.sample(empty, min(len(empty), rng.randint(2, 6))):
        emulator.credit(asset, 1)


@dataclass
class Ledger:
    """What the test has seen so far, to compare each crash's aftermath against."""

    audit: list[AuditRecord] = field(default_factory=list)
    halted: bool = False
    resumed_by_operator: int = 0
    kills_with_live_orders: int = 0

    def check_after_kill(
        self, kill: int, guard: Guard, emulator: KrakenEmulator, rng: random.Random
    ) -> None:
        """Check every promise with the process dead, then act as the operator."""
        assert integrity(guard.db) == "ok"
        store = open_store(f"sqlite:///{guard.db}")
        try:
            audit = audit_snapshot(store)
            assert audit[: len(self.audit)] == self.audit, f"audit log rewritten (kill {kill})"
            self.audit = audit
            halted = store.is_halted(ACCOUNT)
            announced = "TRADING HALTED" in guard.log_text(guard.runs)
            if self.halted or announced:
                assert halted, f"a halt was lost at kill {kill}"
            journal = {e.client_order_id: e for e in store.journal(ACCOUNT)}
            if any(e.status in LIVE_ORDER_STATUSES for e in journal.values()):
                self.kills_with_live_orders += 1
            for order in emulator.orders():
                assert order["cl_ord_id"] in journal, f"an order was sent unjournaled: {order}"
            per_cid = add_orders_per_cid(emulator)
            assert max(per_cid.values(), default=0) <= 1, per_cid.most_common(3)
            assert "EOrder:Insufficient funds" not in emulator.refusals()
            self.halted = halted
            if halted and rng.random() < 0.5:  # the operator lifts some halts
                assert store.resume(ACCOUNT, "crash-test", "resume after the restart")
                self.resumed_by_operator += 1
                self.halted = False
        finally:
            store.close()


def kill_at_a_random_point(guard: Guard, emulator: KrakenEmulator, rng: random.Random) -> None:
    """Start an incarnation and SIGKILL it a random time after it reached the exchange."""
    requests_before = len(emulator.requests)
    guard.start()
    process = guard.process
    assert process is not None
    wait_for(
        lambda: len(emulator.requests) > requests_before + 2 or process.poll() is not None,
        60,
        f"run {guard.runs} to reach the exchange",
    )
    assert process.poll() is None, guard.log_text(guard.runs)
    time.sleep(rng.uniform(0.0, 1.5))  # wall-clock-ok: a random point in real time
    assert guard.kill() == -signal.SIGKILL


def test_sigkill_at_random_points_loses_no_halt_no_audit_record_and_sends_nothing_twice(
    tmp_path,
):
    rng = random.Random(20261124)
    balances: dict[str, object] = {"ZUSD": "1000000"}
    balances.update({p.base: "1" for p in PAIRS})  # 12 positions for a cap of 4
    ledger = Ledger()
    with KrakenEmulator(balances=balances, pairs=PAIRS, fill_delay=FILL_DELAY) as emulator:
        guard = Guard(tmp_path, emulator)
        for kill in range(1, KILLS + 1):
            kill_at_a_random_point(guard, emulator, rng)
            ledger.check_after_kill(kill, guard, emulator, rng)
            buy_some_positions(emulator, rng)

        # A last, clean run: the account ends compliant, every journal entry final and true.
        store = open_store(f"sqlite:///{guard.db}")
        if store.is_halted(ACCOUNT):
            store.resume(ACCOUNT, "crash-test", "final run")
        guard.start()

        def settled() -> bool:
            held = [p for p in PAIRS if emulator.balances().get(p.base, Decimal(0)) > 0]
            live = store.journal(ACCOUNT, statuses=set(LIVE_ORDER_STATUSES))
            return len(held) <= CAP and not live

        wait_for(settled, 120, "the last run to reach compliance with a final journal")
        assert guard.terminate() == 0
        exchange = {o["cl_ord_id"]: o for o in emulator.orders()}
        journal = {e.client_order_id: e for e in store.journal(ACCOUNT)}
        store.close()

    assert set(exchange) <= set(journal)
    for cid, order in exchange.items():
        assert (order["status"], journal[cid].status) == ("closed", "filled"), cid
    assert not {e.status for e in journal.values()} & LIVE_ORDER_STATUSES
    assert max(add_orders_per_cid(emulator).values()) == 1
    assert "EOrder:Insufficient funds" not in emulator.refusals()
    assert all(v >= 0 for v in emulator.balances().values())
    # The kills did land inside enforcement, and the operator path was exercised.
    assert ledger.kills_with_live_orders >= KILLS // 5, ledger.kills_with_live_orders
    assert ledger.resumed_by_operator >= 1
    record_kinds = Counter(r.action for r in ledger.audit)
    assert record_kinds["liquidation_order"] >= 1
    print(  # noqa: T201 (the evidence, in the test log)
        json.dumps(
            {
                "kills": KILLS,
                "kills_with_live_orders": ledger.kills_with_live_orders,
                "orders": len(exchange),
                "resumed_by_operator": ledger.resumed_by_operator,
                "audit_records": dict(record_kinds),
            }
        )
    )
