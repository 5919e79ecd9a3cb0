"""The proof, with an unmodified freqtrade trading live against the Kraken emulator.

freqtrade counts its own database, never the exchange: an AddOrder that times out but is
accepted a moment later leaves a position freqtrade does not know, and it keeps buying. These
tests run freqtrade 2026.9 (its own venv, see :mod:`freqtrade_harness`) as a separate process,
live (``dry_run`` false), and read both sides: the emulator's balances and orders, and
freqtrade's database through its REST API.

They install and start freqtrade only when ``BROKERGUARD_FREQTRADE=1`` or ``CI=true``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from brokerguard.sim.kraken import running_kraken
from tests.integrations.freqtrade_harness import (
    CLIENT_TIMEOUT_MS,
    ENABLE_ENV,
    EXAMPLES,
    FREQTRADE_VERSION,
    REPO,
    Adjustment,
    FreqtradeBot,
    FreqtradeRun,
    GuardRun,
    TwoKeyKraken,
    VenueSampler,
    adjust,
    buy_orders,
    ensure_freqtrade,
    freqtrade_enabled,
    held_symbols,
    start_guard,
    untracked,
    venue_buys,
    wait_until,
    write_result,
)

pytestmark = pytest.mark.skipif(
    not freqtrade_enabled(),
    reason=(
        f"installs and runs freqtrade {FREQTRADE_VERSION} (about a minute the first time): "
        f"set {ENABLE_ENV}=1 (CI=true does too)"
    ),
)

LATE_ACCEPT = "delayed_accept:1:slow:3"
"""AddOrder queued in the engine and accepted 1 s later; its answer comes after 3 s, past
freqtrade's 2 s client timeout."""


@pytest.fixture(scope="module")
def freqtrade_bin() -> Path:
    return ensure_freqtrade()


def test_freqtrade_trades_live_against_the_emulator(freqtrade_bin, tmp_path):
    """No faults: freqtrade fills max_open_trades entries and its database matches the venue."""
    with running_kraken(balances={"ZUSD": "10000"}) as kraken:
        bot = FreqtradeBot(freqtrade_bin, tmp_path, kraken.url, "AlwaysIn", max_open_trades=2)
        run = bot.start()
        try:
            wait_until("two open trades", lambda: run.api.count()[0] == 2, timeout_s=60)
            wait_until("two positions", lambda: len(held_symbols(kraken)) == 2, timeout_s=10)
            time.sleep(3)  # a few more loops: nothing else is bought
            trades = run.api.open_trades()
        finally:
            run.stop()
        held = held_symbols(kraken)
        endpoints = sorted({r.endpoint for r in kraken.requests})
    assert {t.pair for t in trades} == set(held)
    assert len(held) == 2
    # What freqtrade 2026.9 calls on Kraken for a live spot bot with market orders.
    assert {"AssetPairs", "OHLC", "Depth", "BalanceEx", "AddOrder", "QueryOrders"} <= set(endpoints)
    write_result("baseline", {"endpoints": endpoints, "held": held, "trades": len(trades)})


def test_without_brokerguard_the_exchange_ends_over_max_open_trades(freqtrade_bin, tmp_path):
    """Two AddOrders accepted after freqtrade's timeout: more positions than max_open_trades.

    freqtrade logs "Unable to create trade", records nothing, and buys again (issue 3647):
    the exchange ends holding 3 symbols with max_open_trades 2, one of them bought twice, and
    freqtrade's database does not know at least one of them. The venue is sampled as in the
    run with brokerguard.
    """
    with running_kraken(balances={"ZUSD": "10000"}) as kraken:
        kraken.inject(LATE_ACCEPT, endpoint="AddOrder", times=2)
        bot = FreqtradeBot(freqtrade_bin, tmp_path, kraken.url, "AlwaysIn", max_open_trades=2)
        sampler = VenueSampler(kraken, cap=bot.max_open_trades).start()
        started = time.monotonic()
        run = bot.start()
        try:
            wait_until(
                "freqtrade full and the late orders accepted",
                lambda: run.api.count()[0] == 2 and not kraken.queued(),
                timeout_s=90,
            )
            time.sleep(3)  # a few more loops
            trades = run.api.open_trades()
            log = run.log()
        finally:
            run.stop()
            sampler.stop()
        elapsed = time.monotonic() - started
        held = held_symbols(kraken)
        buys = buy_orders(kraken)
        fills = venue_buys(kraken)
        refusals = kraken.refusals()
    known = {t.pair for t in trades}
    untracked_pairs = sorted(set(held) - known)
    venue = sampler.figures()
    assert len(trades) == 2
    assert len(held) > bot.max_open_trades
    assert untracked_pairs
    assert sum(buys.values()) > len(trades)  # more buys than freqtrade knows of
    assert fills["duplicate_buys"] >= 1  # a pair bought while already held
    assert venue["over_cap_at_end"]
    assert "Unable to create trade" in log
    write_result(
        "without_brokerguard",
        {
            "max_open_trades": bot.max_open_trades,
            "client_timeout_ms": CLIENT_TIMEOUT_MS,
            "fault": f"{LATE_ACCEPT} x2 on AddOrder",
            **venue,
            **{k: v for k, v in fills.items() if k != "duplicates"},
            "exchange_positions": len(held),
            "exchange_held": held,
            "freqtrade_open_trades": len(trades),
            "freqtrade_pairs": sorted(known),
            "untracked_pairs": untracked_pairs,
            "untracked_count": len(untracked_pairs),
            "untracked_at_end": untracked(held, trades),
            "buy_orders_by_pair": buys,
            "refusals": refusals,
            "seconds": round(elapsed, 1),
        },
    )


def test_a_lock_set_through_the_supervisor_survives_a_freqtrade_restart(freqtrade_bin, tmp_path):
    """Brokerguard's "*" lock stops entries, outlives a restart, and its removal resumes them.

    Also: ``force_exit`` of a trade freqtrade knows sells it and keeps its database true.
    """
    with running_kraken(balances={"ZUSD": "10000"}) as kraken:
        bot = FreqtradeBot(freqtrade_bin, tmp_path, kraken.url, "AlwaysIn", max_open_trades=1)
        run = bot.start()
        try:
            wait_until("one open trade", lambda: run.api.count()[0] == 1, timeout_s=60)
            lock = run.api.lock_all("account kraken-main halted: proof")
            (trade,) = run.api.open_trades()
            assert run.api.force_exit(trade.trade_id).startswith("Created exit order")
            wait_until("the trade closed", lambda: run.api.count()[0] == 0, timeout_s=30)
            wait_until("the position sold", lambda: not held_symbols(kraken), timeout_s=10)
            time.sleep(4)  # several loops with a free slot: the lock holds
            assert run.api.count()[0] == 0
        finally:
            run.stop()
        buys_before_restart = sum(buy_orders(kraken).values())
        run = bot.start()
        try:
            time.sleep(6)  # restarted, a free slot, an entry signal on every pair
            assert run.api.count()[0] == 0
            assert [lk.lock_id for lk in run.api.locks() if lk.by_brokerguard] == [lock.lock_id]
            assert sum(buy_orders(kraken).values()) == buys_before_restart
            assert run.api.unlock_brokerguard() == [lock.lock_id]
            wait_until("entries resumed", lambda: run.api.count()[0] == 1, timeout_s=30)
        finally:
            run.stop()
        closed = [t for t in run.db_trades() if not t[2]]
    assert len(closed) == 1  # the forced exit, in freqtrade's own database


ACCOUNT = "kraken-main"
CAP = 2
PAIRS = ("BTC/USD", "ETH/USD", "SOL/USD")
PRICES = {"BTC/USD": 65000, "ETH/USD": 3200, "SOL/USD": 150}
"""The emulator's prices: what a deposit of so many dollars is in base units."""
INTERVAL_S = 2.0
"""The sidecar's enforcement interval in this run (examples/freqtrade/brokerguard.toml's)."""
SALE_SLACK_S = 1.0
"""What an over-cap stretch may last beyond one interval: the pass's read, the sale's round
trip, and the sampler's own period (0.1 s)."""


def _supervision(guard) -> dict:
    return guard.account(ACCOUNT).get("supervision") or {}


def _brokerguard_locks(run) -> list[int]:
    return [lock.lock_id for lock in run.api.locks() if lock.by_brokerguard and lock.active]


def _dollars_of(pair: str, dollars: int) -> Decimal:
    return (Decimal(dollars) / PRICES[pair]).quantize(Decimal("1e-6"))


@dataclass
class Proof:
    """One run with the sidecar: the processes, and what each step found."""

    kraken: TwoKeyKraken
    guard: GuardRun
    bot: FreqtradeBot
    run: FreqtradeRun
    figures: dict[str, Any] = field(default_factory=dict)
    adjustments: list[Adjustment] = field(default_factory=list)
    untracked_seen: list[list[str]] = field(default_factory=list)
    step5_at: float = 0.0

    def held(self) -> dict[str, Decimal]:
        return held_symbols(self.kraken)

    def buys(self) -> int:
        return sum(buy_orders(self.kraken).values())

    def see_untracked(self) -> None:
        self.untracked_seen.append(_supervision(self.guard).get("untracked") or [])

    def late_orders_are_reported_untracked(self) -> None:
        """Step 1: the late orders land; the sidecar reports what freqtrade does not know."""
        wait_until(
            "the late orders accepted",
            lambda: len(self.held()) == CAP and not self.kraken.queued(),
            timeout_s=90,
        )
        strays = set(self.held())
        known = {t.pair for t in self.run.api.open_trades()}
        wait_until(
            "the sidecar reporting them untracked",
            lambda: _supervision(self.guard).get("untracked") == sorted(strays - known),
            timeout_s=15,
        )
        reported = _supervision(self.guard)
        self.see_untracked()
        self.figures["step1_untracked_reported"] = reported["untracked"]
        self.figures["step1_freqtrade_pairs"] = sorted(known)
        assert reported["untracked"], "the late orders left no position freqtrade lacks"
        assert reported["error"] is None

    def a_deposit_is_sold(self) -> None:
        """Step 2: a deposit nobody ordered (the smallest position) is over the cap: sold."""
        (free,) = sorted(set(PAIRS) - set(self.held()))
        self.adjustments.append(adjust(self.kraken, free, _dollars_of(free, 60), "deposit"))
        self.figures["step2_held_after_the_deposit"] = len(self.held())
        wait_until("the excess sold", lambda: len(self.held()) <= CAP, timeout_s=20)
        self.see_untracked()

    def a_halt_outlives_a_restart(self) -> None:
        """Step 3: a halt is freqtrade's lock; with a free slot, before and after a restart."""
        halted_at = time.monotonic()
        self.guard.post("/halt", {"account_id": ACCOUNT, "reason": "proof", "operator": "proof"})
        wait_until("freqtrade locked", lambda: _brokerguard_locks(self.run), timeout_s=15)
        self.figures["step3_halt_to_lock_s"] = round(time.monotonic() - halted_at, 2)
        (lock_id,) = _brokerguard_locks(self.run)
        gone = min(self.held())
        self.adjustments.append(
            adjust(self.kraken, gone, -self.held()[gone], "withdrawn by the operator")
        )
        self.guard.post(
            "/positions/confirm",
            {
                "account_id": ACCOUNT,
                "symbols": [gone],
                "operator": "proof",
                "reason": "withdrawn from the exchange",
            },
        )
        wait_until(
            "the sidecar seeing the free slot",
            lambda: self.guard.account(ACCOUNT)["positions"] == CAP - 1,
            timeout_s=15,
        )
        buys_at_halt = self.buys()
        time.sleep(4)  # a free slot, an entry signal on every pair, loops every second
        assert self.buys() == buys_at_halt
        self.run.stop()
        restart_offset = len(self.run.log())
        self.run = self.bot.start()
        time.sleep(6)  # restarted: no trade in its database, a free slot, signals
        after_restart = self.run.log()[restart_offset:]
        self.figures["step3_after_restart"] = {
            "brokerguard_locks": _brokerguard_locks(self.run),
            "lock_id_before_restart": lock_id,
            "buy_orders_since_halt": self.buys() - buys_at_halt,
            "global_lock_logged": "Global pairlock active" in after_restart,
            "entries_put_to_the_mixin": after_restart.count("refused"),
        }
        assert _brokerguard_locks(self.run) == [lock_id]  # the same lock, from its database
        assert self.buys() == buys_at_halt
        assert "Global pairlock active" in after_restart
        assert "refused" not in after_restart  # the lock stops entries before the mixin

    def resume_lifts_the_lock(self) -> str:
        """Step 4: resumed, the lock goes and freqtrade fills the free slot once; its pair."""
        resumed_at = time.monotonic()
        self.guard.post("/resume", {"account_id": ACCOUNT, "operator": "proof", "reason": "ok"})
        wait_until("the lock lifted", lambda: not _brokerguard_locks(self.run), timeout_s=15)
        self.figures["step4_resume_to_unlock_s"] = round(time.monotonic() - resumed_at, 2)
        # The entries whose submits timed out in step 1 keep their reservations (and slots)
        # until the sidecar's sweep resolves them, 60 s after they were made.
        wait_until(
            "an entry after the resume",
            lambda: self.run.api.count()[0] == 1 and len(self.held()) == CAP,
            timeout_s=75,
        )
        self.figures["step4_resume_to_entry_s"] = round(time.monotonic() - resumed_at, 2)
        time.sleep(3)  # loops with the cap full: nothing more is bought
        assert len(self.held()) == CAP
        (ours,) = [t.pair for t in self.run.api.open_trades()]
        self.see_untracked()
        return ours

    def an_excess_of_a_known_trade_is_cleared(self, ours: str) -> None:
        """Step 5: deposits make freqtrade's own trade the smallest of 3: cleared."""
        self.step5_at = time.time()  # wall-clock-ok: compared with the audit log's times
        (stray,) = sorted(set(self.held()) - {ours})
        (third,) = sorted(set(PAIRS) - {ours, stray})
        self.adjustments.append(adjust(self.kraken, stray, _dollars_of(stray, 100), "deposit"))
        self.adjustments.append(adjust(self.kraken, third, _dollars_of(third, 300), "deposit"))
        self.figures["step5_held_after_the_deposits"] = len(self.held())
        wait_until("the second excess cleared", lambda: len(self.held()) <= CAP, 30)
        wait_until("freqtrade's trade closed", lambda: self.run.api.count()[0] == 0, 15)
        time.sleep(2)  # loops with the cap full: nothing more is bought
        self.see_untracked()


def test_with_brokerguard_the_cap_holds_untracked_is_reported_and_a_halt_survives_a_restart(
    freqtrade_bin, tmp_path
):
    """The same faults, the example strategy (mixin), and ``brokerguard run`` supervising it.

    The sidecar runs examples/freqtrade/brokerguard.toml: cap 2, a pass every 2 s, its own API
    key, and ``[accounts.supervise]`` on freqtrade's REST API (credentials from freqtrade's own
    variables). The venue is sampled 10 times a second throughout. In order:

    1. two AddOrders accepted after freqtrade's timeout: the exchange holds 2 positions freqtrade
       does not know; the cap holds (the late orders keep their reservations) and the sidecar's
       ``/status`` reports both as ``supervision.untracked``;
    2. a deposit in the third pair (a position nobody ordered, the smallest): 3 held, over the
       cap; the sidecar sells it within one pass;
    3. ``POST /halt``: freqtrade gets a lock on ``"*"``; the operator withdraws one untracked
       position and confirms it (a free slot, an entry signal on every pair): no buy; freqtrade
       restarted: the same lock, from its database, still stops every entry (the mixin is not
       even asked);
    4. ``POST /resume``: the lock is lifted and freqtrade fills the free slot, once;
    5. deposits make freqtrade's own trade the smallest of 3 positions: over the cap again,
       cleared within one pass, and freqtrade's database ends without the trade.

    Throughout: no buy fills in a pair the account already holds (zero duplicates) and no
    order executes twice.
    """
    example = json.loads((EXAMPLES / "config.json").read_text())
    with TwoKeyKraken(balances={"ZUSD": "10000"}) as kraken:
        bot = FreqtradeBot(
            freqtrade_bin,
            tmp_path,
            kraken.url,
            "BrokerguardExample",
            max_open_trades=2,
            strategy_source=EXAMPLES / "brokerguard_example.py",
            base_config=EXAMPLES / "config.json",
        )
        guard = start_guard(tmp_path, kraken.url, bot=bot, interval_s=INTERVAL_S)
        bot.extra_config = {"brokerguard": {**example["brokerguard"], "url": guard.url}}
        bot.env = {"BROKERGUARD_BOT_TOKEN": guard.bot_token}
        kraken.inject(LATE_ACCEPT, endpoint="AddOrder", times=2)
        sampler = VenueSampler(kraken, cap=CAP).start()
        started = time.monotonic()
        proof = Proof(kraken, guard, bot, bot.start())
        try:
            proof.late_orders_are_reported_untracked()
            proof.a_deposit_is_sold()
            proof.a_halt_outlives_a_restart()
            ours = proof.resume_lifts_the_lock()
            proof.an_excess_of_a_known_trade_is_cleared(ours)
            trades = proof.run.api.open_trades()
            status = guard.account(ACCOUNT)
            log = proof.run.log()
        finally:
            proof.run.stop()
            guard.stop()
            sampler.stop()
        elapsed = time.monotonic() - started
        held = held_symbols(kraken)
        buys = venue_buys(kraken, proof.adjustments)
        orders = buy_orders(kraken)
    venue = sampler.figures()
    stretches = sampler.stretches()
    audit = guard.audit()
    exits = proof.run.exit_reasons()
    # How freqtrade's own trade left in step 5: its forceexit (bot_exit_requested, exit
    # reason force_exit) or the sidecar's own sale (liquidation_order, sold_on_exchange).
    sold_by = sorted(
        {
            r["action"]
            for r in audit
            if r["action"] in {"liquidation_order", "bot_exit_requested"}
            and r["details"].get("symbol") == ours
            and r["at"] >= proof.step5_at
        }
    )
    # The cap: over it only after each deposit, and each time for at most one pass (a
    # stretch shorter than the sampler's period may go unseen: at most two are).
    assert proof.figures["step2_held_after_the_deposit"] == CAP + 1
    assert proof.figures["step5_held_after_the_deposits"] == CAP + 1
    assert venue["max_positions_held"] == CAP + 1
    assert len(stretches) <= 2, stretches
    assert all(s["ended"] for s in stretches), stretches
    assert venue["longest_over_cap_s"] <= INTERVAL_S + SALE_SLACK_S, stretches
    # Zero duplicates: no buy into a pair already held, no order executed twice.
    assert buys["duplicate_buys"] == 0, buys["duplicates"]
    assert buys["max_executions_per_order"] == 1
    # Both sides agree at the end: freqtrade's trade is gone from its database too.
    assert len(held) == CAP
    assert trades == []
    assert exits.get(ours) is not None
    # ... and it left through freqtrade's own forceexit, so freqtrade's books stayed true.
    assert sold_by == ["bot_exit_requested"], sold_by
    assert exits[ours] == "force_exit", exits
    write_result(
        "with_brokerguard",
        {
            **proof.figures,
            "step5_excess_of_a_known_trade": {
                "freqtrade_trade": ours,
                "freqtrade_exit_reason": exits.get(ours),
                "sidecar_actions_on_it": sold_by,
            },
            "max_positions": CAP,
            "enforcement_interval_s": INTERVAL_S,
            "max_open_trades": bot.max_open_trades,
            "fault": f"{LATE_ACCEPT} x2 on AddOrder",
            "adjustments": [
                {"pair": a.pair, "delta": str(a.delta), "why": a.why} for a in proof.adjustments
            ],
            **venue,
            **{k: v for k, v in buys.items() if k != "duplicates"},
            "buy_orders_by_pair": orders,
            "exchange_positions": len(held),
            "exchange_held": held,
            "freqtrade_open_trades": len(trades),
            "freqtrade_exit_reasons": exits,
            "untracked_reported_by_the_sidecar": proof.untracked_seen,
            "untracked_count": max(len(u) for u in proof.untracked_seen),
            "untracked_at_end": untracked(held, trades),
            "entries_refused_by_the_guard": log.count("refused by brokerguard"),
            "entries_refused_by_the_mixin": log.count("refused: "),
            "sidecar_at_end": {
                key: status.get(key)
                for key in ("trading_state", "positions", "symbols_held", "supervision")
            },
            "sidecar_audit": [
                {"action": r["action"], "actor": r["actor"], "symbol": r["details"].get("symbol")}
                for r in audit
            ],
            "seconds": round(elapsed, 1),
        },
    )


SIGNATURES = """
import inspect, json, sys
from freqtrade.strategy import IStrategy
from brokerguard.integrations.freqtrade import BrokerguardMixin
hooks = ["bot_start", "bot_loop_start", "confirm_trade_entry", "order_filled",
         "adjust_trade_position", "custom_exit"]
def shape(function):
    return [(p.name, p.kind.name) for p in inspect.signature(function).parameters.values()]
print(json.dumps({h: [shape(getattr(IStrategy, h)), shape(getattr(BrokerguardMixin, h))]
                  for h in hooks}))
"""


def test_the_mixin_hooks_have_istrategys_exact_signatures(freqtrade_bin):
    """Each hook the mixin overrides takes IStrategy 2026.9's parameters, in order, by kind."""
    python = freqtrade_bin.parent / "python"
    done = subprocess.run(  # noqa: S603 (our venv's interpreter, a fixed script)
        [str(python), "-c", SIGNATURES],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    shapes = json.loads(done.stdout)
    for hook, (theirs, ours) in shapes.items():
        assert ours == theirs, hook
