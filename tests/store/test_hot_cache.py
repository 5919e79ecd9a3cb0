"""The store's cached halts, pauses and live orders: never late here, bounded for others.

Entry checks and enforcement passes read an account's halt, paused symbols and live orders
from one in-memory snapshot (issue 16: the three SELECTs per account were half of a pass and
85 % of an entry check). What these tests pin is the bound: a halt written through the store
is seen by the next read, a halt written by another process on SQLite too (the database's
change counter), and on PostgreSQL within ``cache_s`` seconds and not a moment later.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from brokerguard import OrderRequest, Side, StoreUnavailableError
from brokerguard.errors import ConfigurationError
from brokerguard.store import StateStore, open_store
from brokerguard.store.hot import HotSnapshot, HotState
from brokerguard.store.state import LIVE_ORDER_STATUSES
from brokerguard.testing import FakeClock


def _buy(cid: str, symbol: str = "BTC/USD") -> OrderRequest:
    return OrderRequest(symbol=symbol, side=Side.BUY, quantity=Decimal(1), client_order_id=cid)


@pytest.fixture(autouse=True)
def _close_stores(monkeypatch) -> Iterator[None]:
    """Every store a test opens is closed after it (PostgreSQL connections warn otherwise)."""
    opened: list[StateStore] = []
    real_init = StateStore.__init__

    def tracking_init(self: StateStore, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(StateStore, "__init__", tracking_init)
    yield
    for store in opened:
        store.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def test_a_halt_written_through_the_store_is_read_at_once(clock: FakeClock):
    store = open_store("sqlite://", clock=clock, cache_s=3600)
    assert store.get_halt("a") is None  # cached now, and the clock never moves
    store.halt("a", "over cap", "test")
    assert store.get_halt("a") is not None
    assert store.account_state("a").halt is not None
    store.resume("a", "ops", "checked")
    assert store.get_halt("a") is None


def test_a_write_through_a_fenced_view_reaches_the_plain_stores_cache(sqlite_url, clock):
    store = open_store(sqlite_url, clock=clock, cache_s=3600)
    store.claim_fence("a", 1, holder="w1")
    assert store.paused_symbols("a") == set()
    store.fenced("a", 1, holder="w1").pause_symbol("a", "BTC/USD", "no price")
    assert store.paused_symbols("a") == {"BTC/USD"}


def test_on_sqlite_another_processs_halt_is_seen_by_the_next_read(sqlite_url, clock):
    """The other store is another process's view of the same file: PRAGMA data_version."""
    ours = open_store(sqlite_url, clock=clock, cache_s=3600)
    theirs = open_store(sqlite_url, clock=clock, cache_s=0)
    assert ours.get_halt("a") is None
    theirs.halt("a", "operator", "cli")
    assert ours.get_halt("a") is not None  # the clock has not moved at all
    theirs.pause_symbol("a", "ETH/USD", "stale", actor="cli")
    assert ours.account_state("a").paused == {"ETH/USD": "stale"}
    theirs.record_order_intent("a", _buy("c1"), purpose="entry")
    assert [e.client_order_id for e in ours.journal("a", statuses=set(LIVE_ORDER_STATUSES))] == [
        "c1"
    ]


def test_on_postgresql_another_workers_halt_is_seen_within_cache_s_and_not_later(pg_url):
    """The stated bound: cache_s (no change counter on PostgreSQL outside a fleet channel)."""
    clock = FakeClock()
    ours = open_store(pg_url, clock=clock, cache_s=1.0)
    theirs = open_store(pg_url, clock=clock, cache_s=0)
    assert ours.get_halt("a") is None
    theirs.halt("a", "operator", "cli")
    clock.advance(1.0)
    assert ours.get_halt("a") is None  # within the bound: may still be served from memory
    clock.advance(0.001)
    assert ours.get_halt("a") is not None  # past it: never
    theirs.resume("a", "ops", "fine")
    ours.invalidate_cache()  # what the fleet's operator channel does on an announcement
    assert ours.get_halt("a") is None


def test_cache_s_zero_reads_the_database_every_time(pg_url):
    clock = FakeClock()
    ours = open_store(pg_url, clock=clock, cache_s=0)
    theirs = open_store(pg_url, clock=clock, cache_s=0)
    assert ours.get_halt("a") is None
    theirs.halt("a", "operator", "cli")
    assert ours.get_halt("a") is not None


def test_an_unreadable_sqlite_file_fails_closed_even_with_a_fresh_cache(tmp_path, clock):
    path = tmp_path / "state.db"
    store = open_store(f"sqlite:///{path}", clock=clock, cache_s=3600)
    assert store.get_halt("a") is None
    store._probe.close()
    path.unlink()
    (tmp_path / "state.db").mkdir()  # the file is gone and cannot be reopened
    with pytest.raises(StoreUnavailableError):
        store.get_halt("a")


def test_the_cache_bound_is_validated():
    with pytest.raises(ConfigurationError, match="cache_s"):
        StateStore("sqlite://", cache_s=-1)
    with pytest.raises(ConfigurationError, match="pool_size"):
        StateStore("sqlite://", pool_size=0)


def test_a_load_that_raced_a_write_is_served_once_but_never_kept():
    clock = FakeClock()
    loads: list[int] = []
    hot: HotState[str, str] = HotState(60.0, clock.monotonic)

    def racing_load() -> HotSnapshot[str, str]:
        loads.append(1)
        if len(loads) == 1:
            hot.wrote()  # a halt commits while the snapshot is being read
        return HotSnapshot({}, {}, {})

    hot.get(racing_load)
    hot.get(racing_load)
    hot.get(racing_load)
    assert len(loads) == 2  # the raced load was not kept; the second one was


def test_concurrent_readers_and_writers_never_read_a_halt_back_out(sqlite_url, clock):
    """Once halt() returned, no later read of any thread answers "not halted"."""
    store = open_store(sqlite_url, clock=clock, cache_s=3600)
    halted = threading.Event()
    wrong: list[str] = []

    def reader() -> None:
        for _ in range(300):
            seen_halt_done = halted.is_set()
            if store.get_halt("a") is None and seen_halt_done:
                wrong.append("read not halted after halt() returned")

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    store.halt("a", "over cap", "test")
    halted.set()
    for t in threads:
        t.join()
    assert wrong == []


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["halt", "resume", "pause", "unpause", "intent", "final"]),
        st.sampled_from(["a", "b"]),
        st.sampled_from(["ours", "theirs"]),
    ),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS)
def test_a_cached_store_always_answers_as_an_uncached_one(tmp_path_factory, ops):
    """Whoever writes (this process or another), the cached reads equal the database's."""
    url = f"sqlite:///{tmp_path_factory.mktemp('hot') / 'state.db'}"
    clock = FakeClock()
    ours = open_store(url, clock=clock, cache_s=3600)
    theirs = open_store(url, clock=clock, cache_s=0)
    for n, (op, account, who) in enumerate(ops):
        writer = ours if who == "ours" else theirs
        if op == "halt":
            writer.halt(account, "r", "s")
        elif op == "resume":
            writer.resume(account, "ops", "r")
        elif op == "pause":
            writer.pause_symbol(account, f"S{n % 3}/USD", "r")
        elif op == "unpause":
            writer.unpause_symbol(account, f"S{n % 3}/USD", "r")
        elif op == "intent":
            writer.record_order_intent(account, _buy(f"c{n}"), purpose="entry")
        else:
            live = theirs.journal(account, statuses=set(LIVE_ORDER_STATUSES))
            if live:
                writer.record_order_status(live[0].client_order_id, "filled")
        for a in ("a", "b"):
            assert ours.get_halt(a) == theirs.get_halt(a)
            assert ours.paused_symbol_reasons(a) == theirs.paused_symbol_reasons(a)
            live_statuses = set(LIVE_ORDER_STATUSES)
            assert ours.journal(a, statuses=live_statuses) == theirs.journal(
                a, statuses=live_statuses
            )
    assert ours.halts() == theirs.halts()
    ours.close()
    theirs.close()


def test_without_pre_ping_a_dropped_connection_fails_one_call_closed_then_recovers(pg_url):
    """The pool no longer pings before every call; a server-side drop costs one refused call."""
    import psycopg  # noqa: PLC0415 (PostgreSQL only)

    store = open_store(pg_url, clock=FakeClock(), cache_s=0)
    store.halt("a", "over cap", "test")
    assert store.get_halt("a") is not None
    with store._engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(store.get_halt("a") is not None)
        except StoreUnavailableError:
            outcomes.append("refused")
    assert outcomes[-1] is True  # recovered, and still halted
    assert outcomes.count("refused") <= 1  # at most one call refused (closed), never "not halted"
    assert False not in outcomes
