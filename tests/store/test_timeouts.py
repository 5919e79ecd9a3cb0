"""Every store call takes bounded time: a database that never answers is a fault, not a wait.

A refused connection fails at once; a black hole (a server that accepts and never answers, a
network that drops packets, a hung database) must fail just as closed, within the store's
``timeout`` (connects at least libpq's 2 s floor), so the gate answers STORE_UNAVAILABLE and the
enforcer reports an unverified step instead of hanging.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from brokerguard import StoreUnavailableError
from brokerguard.config import parse_config
from brokerguard.risk import STORE_UNAVAILABLE, PositionCapEnforcer, TradingGate, TradingState
from brokerguard.risk.exits import ContinuousExitEnforcer
from brokerguard.service import GuardService
from brokerguard.store import open_store
from brokerguard.store.state import DEFAULT_CACHE_S
from tests.conftest import PG_URL, require_service
from tests.coordination.proxy import BlackHole, TcpProxy
from tests.risk.worlds import coins, paper_account

TIMEOUT = 2.0  # libpq never waits less than 2 s for a connection
SLACK = 2.0  # a loaded 2-core CI runner


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """Run `call` on a thread; its answer (or exception) and seconds, failing if it hangs."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["answer"] = call()
        except Exception as exc:
            box["answer"] = exc

    started = time.monotonic()  # wall-clock-ok: measuring a real network wait
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT * 4 + SLACK)
    elapsed = time.monotonic() - started  # wall-clock-ok
    if thread.is_alive():
        pytest.fail(f"still waiting after {elapsed:.1f}s: a store call hangs on a black hole")
    return box["answer"], elapsed


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def test_opening_a_store_on_a_database_that_never_answers_fails_within_the_bound(black_hole):
    """open_store on a server that accepts and never answers raises StoreUnavailableError."""
    url = f"postgresql://postgres@127.0.0.1:{black_hole.port}/test"
    answer, elapsed = timed(lambda: open_store(url, timeout=TIMEOUT))
    assert isinstance(answer, StoreUnavailableError), answer
    assert elapsed < TIMEOUT + SLACK, elapsed


@pytest.fixture
def silent_pg(pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """The test database behind a proxy the test can black-hole."""
    address = urlsplit(PG_URL)
    proxy = TcpProxy((address.hostname or "127.0.0.1", address.port or 5432))
    proxy.restore()
    yield pg_url.replace(f"@{address.netloc.split('@')[-1]}/", f"@127.0.0.1:{proxy.port}/"), proxy
    proxy.cut()


def test_a_database_gone_silent_fails_every_call_closed_within_the_bound(silent_pg, clock):
    """Gate, trading state and enforcement each answer fail-closed within the bound; none sent."""
    url, proxy = silent_pg
    store = open_store(url, clock=clock, timeout=TIMEOUT)
    broker = paper_account(
        clock, prices=coins(8), positions=dict.fromkeys(list(coins(3)), "1"), settle_delay=0
    )
    gate = TradingGate(broker, 4, store=store, clock=clock)
    enforcer = PositionCapEnforcer(broker, 4, store=store, clock=clock)
    exits = ContinuousExitEnforcer(enforcer)
    assert gate.check_entry("C07/USD").allowed  # all answers, at first

    proxy.black_hole()
    # Halts and pauses are served from memory for at most [store] cache_s (the stated bound):
    # past it, every question goes to the database, and a silent one is a refusal.
    clock.advance(DEFAULT_CACHE_S + 0.001)
    decision, elapsed = timed(lambda: gate.check_entry("C07/USD"))
    assert decision.code == STORE_UNAVAILABLE
    assert elapsed < TIMEOUT + SLACK, elapsed
    state, elapsed = timed(gate.trading_state)
    assert state is TradingState.HALTED  # a halt the store cannot rule out
    assert elapsed < TIMEOUT + SLACK, elapsed
    answer, elapsed = timed(enforcer.enforce_cap)
    assert isinstance(answer, StoreUnavailableError), answer
    assert elapsed < TIMEOUT + SLACK, elapsed
    results, elapsed = timed(exits.tick)
    assert results[broker.account_id]["status"] == "unverified"
    assert "store" in results[broker.account_id]["reason"]
    assert elapsed < TIMEOUT + SLACK, elapsed
    ping, elapsed = timed(store.ping)
    assert ping is False
    assert elapsed < TIMEOUT + SLACK, elapsed
    assert broker.all_orders() == []  # nothing sent

    proxy.restore()  # the database answers again: so does the store, by itself
    try:
        assert store.ping()
        assert gate.check_entry("C07/USD").allowed
    finally:
        store.close()


def test_the_store_sets_statement_and_lock_timeouts_and_keeps_the_urls_options(pg_url):
    """PostgreSQL sessions carry the bound (statement, lock, idle transaction) and search_path."""
    store = open_store(pg_url, timeout=3)
    with store._engine.connect() as conn:
        shown = {
            name: conn.exec_driver_sql(f"SHOW {name}").scalar()
            for name in (
                "statement_timeout",
                "lock_timeout",
                "idle_in_transaction_session_timeout",
                "search_path",
            )
        }
    assert shown["statement_timeout"] == shown["lock_timeout"] == "3s"
    assert shown["idle_in_transaction_session_timeout"] == "3s"
    assert shown["search_path"].startswith("bg_test_")  # the URL's own options still apply
    store.close()


def test_a_lock_held_elsewhere_fails_a_write_within_the_bound(pg_url):
    """A session sitting on a lock (a paused worker) costs a writer the bound, not forever."""
    store = open_store(pg_url, timeout=TIMEOUT)
    try:
        holder = psycopg.connect(PG_URL, connect_timeout=3)
    except psycopg.OperationalError as exc:
        require_service("PostgreSQL", str(exc))
    schema = pg_url.rsplit("%3D", 1)[1]
    with holder:
        holder.execute(f'LOCK TABLE "{schema}".bg_halts IN ACCESS EXCLUSIVE MODE')
        answer, elapsed = timed(lambda: store.halt("acct-1", "over the cap", "enforcer"))
        assert isinstance(answer, StoreUnavailableError), answer
        assert elapsed < TIMEOUT + SLACK, elapsed
        holder.rollback()
    assert store.halt("acct-1", "over the cap", "enforcer").reason == "over the cap"
    store.close()


def test_a_locked_sqlite_store_fails_within_the_bound(tmp_path):
    """SQLite waits for a busy database at most the store's timeout (busy_timeout), then fails."""
    path = tmp_path / "state.db"
    store = open_store(f"sqlite:///{path}", timeout=0.5)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        answer, elapsed = timed(lambda: store.halt("acct-1", "over the cap", "enforcer"))
        assert isinstance(answer, StoreUnavailableError), answer
        assert elapsed < 0.5 + SLACK, elapsed
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.halt("acct-1", "over the cap", "enforcer").reason == "over the cap"
    store.close()


def test_the_timeout_is_configured_under_store(tmp_path):
    """[store] timeout_s reaches the service's store (default: a few seconds)."""
    config = {
        "store": {"url": f"sqlite:///{tmp_path / 's.db'}", "timeout_s": 1.5},
        "brokers": {"paper": {"kind": "paper"}},
        "accounts": [{"id": "a", "broker": "paper"}],
        "alerts": [],
    }
    service = GuardService(parse_config(config))
    assert service.store.timeout == 1.5
    service.close()
    default = parse_config({**config, "store": {"url": config["store"]["url"]}})
    assert 1 <= default.store.timeout_s <= 10
    with pytest.raises(Exception, match="timeout_s"):
        parse_config({**config, "store": {"url": config["store"]["url"], "timeout_s": 0}})
