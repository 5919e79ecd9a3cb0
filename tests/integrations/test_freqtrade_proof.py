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
from pathlib import Path

import pytest

from brokerguard.sim.kraken import running_kraken
from tests.integrations.freqtrade_harness import (
    CLIENT_TIMEOUT_MS,
    ENABLE_ENV,
    EXAMPLES,
    FREQTRADE_VERSION,
    REPO,
    FreqtradeBot,
    TwoKeyKraken,
    buy_orders,
    ensure_freqtrade,
    freqtrade_enabled,
    held_symbols,
    start_guard,
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
    the exchange ends holding 3 symbols with max_open_trades 2, and freqtrade's database does
    not know at least one of them.
    """
    with running_kraken(balances={"ZUSD": "10000"}) as kraken:
        kraken.inject(LATE_ACCEPT, endpoint="AddOrder", times=2)
        bot = FreqtradeBot(freqtrade_bin, tmp_path, kraken.url, "AlwaysIn", max_open_trades=2)
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
        elapsed = time.monotonic() - started
        held = held_symbols(kraken)
        buys = buy_orders(kraken)
        refusals = kraken.refusals()
    known = {t.pair for t in trades}
    untracked = sorted(set(held) - known)
    assert len(trades) == 2
    assert len(held) > bot.max_open_trades
    assert untracked
    assert sum(buys.values()) > len(trades)  # more buys than freqtrade knows of
    assert "Unable to create trade" in log
    write_result(
        "without_brokerguard",
        {
            "max_open_trades": bot.max_open_trades,
            "client_timeout_ms": CLIENT_TIMEOUT_MS,
            "fault": f"{LATE_ACCEPT} x2 on AddOrder",
            "exchange_positions": len(held),
            "exchange_held": held,
            "freqtrade_open_trades": len(trades),
            "freqtrade_pairs": sorted(known),
            "untracked_pairs": untracked,
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


def test_with_the_mixin_the_exchange_never_holds_more_than_the_cap(freqtrade_bin, tmp_path):
    """The same faults, the example strategy (mixin) and the guard service beside it.

    Every entry is reserved with the guard first. A reservation whose order timed out keeps
    its slot, so the entries that would have gone past the cap are refused; the mixin never
    re-enters a pair whose last submit has no known outcome, nor one the exchange holds that
    freqtrade does not know: the exchange never holds more than ``max_positions`` (2) symbols,
    and no pair is bought twice.
    """
    with TwoKeyKraken(balances={"ZUSD": "10000"}) as kraken:
        guard = start_guard(tmp_path, kraken.url)
        kraken.inject(LATE_ACCEPT, endpoint="AddOrder", times=2)
        example = json.loads((EXAMPLES / "config.json").read_text())
        bot = FreqtradeBot(
            freqtrade_bin,
            tmp_path,
            kraken.url,
            "BrokerguardExample",
            max_open_trades=2,
            strategy_source=EXAMPLES / "brokerguard_example.py",
            base_config=EXAMPLES / "config.json",
            extra_config={"brokerguard": {**example["brokerguard"], "url": guard.url}},
            env={"BROKERGUARD_BOT_TOKEN": guard.bot_token},
        )
        started = time.monotonic()
        samples: list[int] = []
        run = bot.start()
        try:

            def late_orders_in() -> bool:
                samples.append(len(held_symbols(kraken)))
                return samples[-1] == 2 and not kraken.queued()

            wait_until("the late orders accepted", late_orders_in, timeout_s=90)
            for _ in range(40):  # ten more seconds of loops, sampling the venue
                samples.append(len(held_symbols(kraken)))
                time.sleep(0.25)
            trades = run.api.open_trades()
            log = run.log()
            status = guard.get("/status")
        finally:
            run.stop()
            guard.stop()
        elapsed = time.monotonic() - started
        held = held_symbols(kraken)
        buys = buy_orders(kraken)
    known = {t.pair for t in trades}
    assert max(samples) <= 2, samples
    assert all(count == 1 for count in buys.values()), buys  # zero duplicate orders
    assert "refused" in log
    write_result(
        "with_mixin",
        {
            "max_positions": 2,
            "max_open_trades": bot.max_open_trades,
            "fault": f"{LATE_ACCEPT} x2 on AddOrder",
            "exchange_positions_max_seen": max(samples),
            "exchange_held": held,
            "freqtrade_pairs": sorted(known),
            "untracked_pairs": sorted(set(held) - known),
            "buy_orders_by_pair": buys,
            "entries_refused_by_the_guard": log.count("refused by brokerguard"),
            "entries_refused_by_the_mixin": log.count("refused: "),
            "seconds": round(elapsed, 1),
            "guard_view": {
                key: status["accounts"]["kraken-main"].get(key)
                for key in ("trading_state", "positions", "symbols_held", "unresolved_orders")
            },
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
