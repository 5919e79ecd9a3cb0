"""The state store: durable halts, audited changes, an append-only log, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal

import pytest
from sqlalchemy import text

from brokerguard import ConfigurationError, OrderRequest, StoreUnavailableError
from brokerguard.errors import LeaseLostError
from brokerguard.store import StateStore, open_store
from brokerguard.store.schema import SCHEMA_VERSION
from brokerguard.testing import FakeClock


@pytest.fixture(params=["sqlite-file", "memory", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'state.db'}"
    if request.param == "memory":
        return "sqlite://"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(url, clock) -> StateStore:
    opened = open_store(url, clock=clock)
    yield opened
    opened.close()


# --------------------------------------------------------------------------- halts


def test_a_halt_is_recorded_with_its_reason_and_audited(store, clock):
    """halt() stores who halted, why and when, and writes the audit record with it."""
    halt = store.halt("acct-1", "still over cap after 3 cycles", "cap_enforcer")
    assert (halt.reason, halt.source, halt.halted_at) == (
        "still over cap after 3 cycles",
        "cap_enforcer",
        1000.0,
    )
    assert store.is_halted("acct-1")
    assert not store.is_halted("acct-2")
    [record] = store.audit_log("acct-1")
    assert (record.action, record.actor, record.reason, record.at) == (
        "halt",
        "cap_enforcer",
        "still over cap after 3 cycles",
        1000.0,
    )


def test_halting_twice_keeps_the_first_halt(store, clock):
    """The original reason and time survive a repeated decision, which is audited too."""
    store.halt("acct-1", "first", "enforcer")
    clock.advance(10)
    again = store.halt("acct-1", "second", "enforcer")
    assert (again.reason, again.halted_at) == ("first", 1000.0)
    assert [r.action for r in store.audit_log("acct-1")] == ["halt_repeated", "halt"]
    assert [h.account_id for h in store.halts()] == ["acct-1"]


@pytest.mark.parametrize(("operator", "reason"), [("", "ok"), ("alice", ""), ("  ", "  ")])
def test_resume_needs_an_operator_and_a_reason(store, operator, reason):
    """Only an operator who says why may lift a halt."""
    store.halt("acct-1", "over cap", "enforcer")
    with pytest.raises(ConfigurationError):
        store.resume("acct-1", operator, reason)
    assert store.is_halted("acct-1")


def test_resume_lifts_the_halt_and_is_audited(store):
    """A resume with operator and reason lifts the halt, and says so in the log."""
    store.halt("acct-1", "over cap", "enforcer")
    assert store.resume("acct-1", "alice", "positions flattened by hand")
    assert not store.is_halted("acct-1")
    latest = store.audit_log("acct-1")[0]
    assert (latest.action, latest.actor, latest.reason) == (
        "resume",
        "alice",
        "positions flattened by hand",
    )
    assert not store.resume("acct-1", "alice", "again")
    assert store.audit_log("acct-1")[0].action == "resume_not_halted"


# --------------------------------------------------------------------------- paused symbols


def test_pausing_and_unpausing_symbols(store):
    """Pauses are per account and symbol, each change audited once."""
    assert store.pause_symbol("acct-1", "ETH/USD", "price NaN")
    assert not store.pause_symbol("acct-1", "ETH/USD", "price NaN again")
    assert store.pause_symbol("acct-1", "SOL/USD", "price missing", actor="valuator")
    assert store.paused_symbols("acct-1") == {"ETH/USD", "SOL/USD"}
    assert store.paused_symbol_reasons("acct-1")["ETH/USD"] == "price NaN"
    assert store.paused_symbols("acct-2") == set()
    assert store.unpause_symbol("acct-1", "ETH/USD", "valid price 3200")
    assert not store.unpause_symbol("acct-1", "ETH/USD", "not paused")
    assert store.paused_symbols("acct-1") == {"SOL/USD"}
    actions = [(r.action, r.details.get("symbol")) for r in store.audit_log("acct-1")]
    assert actions == [("unpause", "ETH/USD"), ("pause", "SOL/USD"), ("pause", "ETH/USD")]


# --------------------------------------------------------------------------- the audit log


def test_the_audit_log_is_newest_first_filtered_and_limited(store, clock):
    """Records come back newest first, per account or all, at most `limit`."""
    for i in range(5):
        clock.advance(1)
        store.record_audit("acct-1", "liquidation_order", "enforcer", f"excess {i}", {"n": i})
    store.record_audit("acct-2", "halt", "operator", "drill")
    assert [r.details["n"] for r in store.audit_log("acct-1", limit=3)] == [4, 3, 2]
    assert len(store.audit_log()) == 6
    assert store.audit_log()[0].account_id == "acct-2"
    with pytest.raises(ConfigurationError):
        store.audit_log(limit=0)


def test_the_audit_log_is_append_only_in_the_database(store):
    """The database itself refuses to rewrite or delete audit records."""
    store.record_audit("acct-1", "halt", "enforcer", "over cap")
    for statement in ("UPDATE bg_audit_log SET reason = 'nothing'", "DELETE FROM bg_audit_log"):
        with pytest.raises(Exception, match="append-only"), store._engine.begin() as conn:
            conn.execute(text(statement))
    assert store.audit_log()[0].reason == "over cap"


# --------------------------------------------------------------------------- the order journal


def test_orders_are_journaled_before_sending_and_updated_after(store, clock):
    """An intent is written first; its fate is recorded on it; queries filter by status."""
    request = OrderRequest("ETH/USD", "sell", "1.5", "bg-liq-1")
    store.record_order_intent("acct-1", request, purpose="cap_liquidation")
    [entry] = store.journal("acct-1", statuses={"intent"})
    assert (entry.symbol, entry.side, entry.quantity, entry.purpose) == (
        "ETH/USD",
        "sell",
        Decimal("1.5"),
        "cap_liquidation",
    )
    clock.advance(2)
    store.record_order_status("bg-liq-1", "filled", broker_order_id="B-7")
    assert store.journal("acct-1", statuses={"intent"}) == []
    [done] = store.journal("acct-1")
    assert (done.status, done.broker_order_id, done.updated_at) == ("filled", "B-7", 1002.0)


# --------------------------------------------------------------------------- lifecycle


def test_state_survives_reopening(durable_url, clock):
    """A new StateStore on the same database sees the halt (not for the in-memory store)."""
    url = durable_url
    first = open_store(url, clock=clock)
    first.halt("acct-1", "over cap", "enforcer")
    first.pause_symbol("acct-1", "ETH/USD", "nan")
    first.close()
    second = open_store(url, clock=clock)
    assert second.is_halted("acct-1")
    assert second.paused_symbols("acct-1") == {"ETH/USD"}
    assert second.schema_version() == SCHEMA_VERSION
    second.close()


def test_a_newer_schema_is_refused(durable_url, clock):
    """Data written by a newer brokerguard is not touched by an older one."""
    url = durable_url
    store = open_store(url, clock=clock)
    with store._engine.begin() as conn:
        conn.execute(text("UPDATE bg_schema_version SET version = 99"))
    store.close()
    with pytest.raises(ConfigurationError, match="newer"):
        open_store(url, clock=clock)


def test_an_unreachable_store_says_so():
    """A database that does not answer raises StoreUnavailableError (callers deny)."""
    with pytest.raises(StoreUnavailableError, match="failed"):
        open_store("postgresql://postgres@127.0.0.1:1/test?connect_timeout=1")


def test_unknown_urls_are_refused():
    """Only SQLite and PostgreSQL are supported."""
    with pytest.raises(ConfigurationError, match="unsupported"):
        open_store("mysql://root@localhost/test")


@pytest.mark.parametrize("kind", ["file", "memory", "postgresql"])
def test_concurrent_writers_and_readers_lose_nothing(tmp_path, kind, request):
    """8 threads halting, pausing, reading and auditing at once: every record lands."""
    url = {
        "file": lambda: f"sqlite:///{tmp_path / 'state.db'}",
        "memory": lambda: "sqlite://",
        "postgresql": lambda: request.getfixturevalue("pg_url"),
    }[kind]()
    store = open_store(url)

    def work(n: int) -> None:
        for i in range(25):
            store.pause_symbol(f"acct-{n}", f"S{i}/USD", "nan")
            store.paused_symbols(f"acct-{n}")
            store.is_halted(f"acct-{n}")
            store.record_audit(f"acct-{n}", "liquidation_order", "enforcer", f"{i}")
        store.halt(f"acct-{n}", "over cap", "enforcer")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.halts()) == 8
    assert len(store.audit_log(limit=10_000)) == 8 * (25 + 25 + 1)
    assert all(len(store.paused_symbols(f"acct-{n}")) == 25 for n in range(8))
    store.close()


def test_a_halt_survives_sigkill_right_after_halt_returns(tmp_path):
    """The process is killed the instant halt() returns; the restarted store still has it."""
    path = tmp_path / "state.db"
    child = textwrap.dedent(
        f"""
        import sys, time
        from brokerguard.store import open_store
        store = open_store({f"sqlite:///{path}"!r})
        store.halt("acct-1", "over cap after 3 cycles", "cap_enforcer")
        sys.stdout.write("HALTED\\n"); sys.stdout.flush()
        time.sleep(60)
        """
    )
    with subprocess.Popen(  # noqa: S603 (our own interpreter running our own snippet)
        [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "HALTED"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = open_store(f"sqlite:///{path}", clock=FakeClock())
    assert store.is_halted("acct-1")
    assert store.get_halt("acct-1").reason == "over cap after 3 cycles"
    assert [r.action for r in store.audit_log("acct-1")] == ["halt"]


def test_pausing_needs_no_reason_from_an_operator(store):
    """pause_symbol(account, symbol) works with a default reason, and is audited."""
    assert store.pause_symbol("acct-1", "ETH/USD")
    assert store.paused_symbols("acct-1") == {"ETH/USD"}
    assert store.unpause_symbol("acct-1", "ETH/USD")
    assert [r.action for r in store.audit_log("acct-1")] == ["unpause", "pause"]


# --------------------------------------------------------------------------- fencing tokens


def test_a_fenced_write_records_its_token_and_a_stale_token_changes_nothing(store):
    """Worker 7's lease expired and worker 8 took over: 7's late writes are refused whole."""
    old, new = store.fenced("acct-1", 7), store.fenced("acct-1", 8)
    old.record_audit("acct-1", "liquidation_order", "worker-a", "before the pause")
    assert store.fence_token("acct-1") == 7
    new.halt("acct-1", "over the cap after 3 cycles", "worker-b")
    assert store.fence_token("acct-1") == 8
    request = OrderRequest("BTC/USD", "sell", Decimal(1), "late-order")

    with pytest.raises(LeaseLostError, match="stale"):
        old.record_order_intent("acct-1", request, purpose="cap_liquidation")
    with pytest.raises(LeaseLostError):
        old.resume("acct-1", "worker-a", "it thinks it still owns the account")

    assert store.journal("acct-1") == []
    assert store.is_halted("acct-1")
    assert [r.actor for r in store.audit_log("acct-1")] == ["worker-b", "worker-a"]
    new.record_order_intent("acct-1", request, purpose="cap_liquidation")  # the holder writes
    assert [e.client_order_id for e in store.journal("acct-1")] == ["late-order"]


def test_fences_are_per_account_and_unfenced_writes_pass(store):
    """Another account's token is independent; the plain store (operators) is never fenced."""
    store.fenced("acct-1", 50).record_audit("acct-1", "x", "w", "r")
    store.fenced("acct-2", 1).record_audit("acct-2", "x", "w", "r")
    store.record_audit("acct-1", "operator_note", "ops", "unfenced")
    assert (store.fence_token("acct-1"), store.fence_token("acct-2")) == (50, 1)
    assert store.fence_token("acct-3") is None
    with pytest.raises(ConfigurationError):
        store.fenced("acct-1", 0)


def test_a_version_1_store_is_migrated_to_the_current_version(durable_url, clock):
    """A store written before fencing opens, gains bg_fences, and says the current version."""
    url = durable_url
    first = open_store(url, clock=clock)
    first.halt("acct-1", "kept across the migration", "ops")
    with first._engine.begin() as conn:
        conn.execute(text("UPDATE bg_schema_version SET version = 1"))
        conn.execute(text("DROP TABLE bg_fences"))
    first.close()
    second = open_store(url, clock=clock)
    assert second.schema_version() == SCHEMA_VERSION
    assert second.is_halted("acct-1")
    second.fenced("acct-1", 3).record_audit("acct-1", "x", "w", "r")
    assert second.fence_token("acct-1") == 3
    second.close()


def test_a_version_2_store_gains_the_journal_deadline(durable_url, clock):
    """A journal written before deadlines keeps its rows (deadline None) and records new ones."""
    first = open_store(durable_url, clock=clock)
    with first._engine.begin() as conn:
        conn.execute(text("UPDATE bg_schema_version SET version = 2"))
        conn.execute(text("ALTER TABLE bg_orders DROP COLUMN deadline"))
        conn.execute(
            text(
                "INSERT INTO bg_orders (client_order_id, account_id, symbol, side, quantity, "
                "status, purpose, created_at, updated_at) VALUES ('old', 'acct-1', 'BTC/USD', "
                "'sell', '1', 'intent', 'cap_liquidation', 1.0, 1.0)"
            )
        )
    first.close()
    second = open_store(durable_url, clock=clock)
    assert second.schema_version() == SCHEMA_VERSION
    second.record_order_intent(
        "acct-1", OrderRequest("ETH/USD", "sell", "2", "new", deadline=1234.5), purpose="test"
    )
    journal = {e.client_order_id: e.deadline for e in second.journal("acct-1")}
    assert journal == {"old": None, "new": 1234.5}
    second.close()


# --------------------------------------------------------------------------- fences per fleet


def test_fences_are_kept_per_fleet_namespace_and_account(store):
    """Two fleets sharing a store never fence each other out: each namespace has its own marks."""
    store.fenced("acct-1", 90, holder="prod-w1", namespace="prod").record_audit(
        "acct-1", "x", "w", "r"
    )
    store.fenced("acct-1", 2, holder="staging-w1", namespace="staging").record_audit(
        "acct-1", "x", "w", "r"
    )
    assert store.fence_token("acct-1", namespace="prod") == 90
    assert store.fence_token("acct-1", namespace="staging") == 2
    assert store.fence_token("acct-1") is None  # the unscoped namespace is a third one
    with pytest.raises(LeaseLostError):
        store.fenced("acct-1", 89, holder="prod-w2", namespace="prod").halt("acct-1", "x", "w")


def test_a_claim_takes_only_a_newer_token_or_the_same_holders_own(store):
    """claim_fence takes a newer token (None) and answers the mark refusing a stale or a twin."""
    assert store.claim_fence("acct-1", 5, holder="w1", namespace="fleet") is None
    assert store.claim_fence("acct-1", 5, holder="w1", namespace="fleet") is None  # idempotent
    assert store.claim_fence("acct-1", 5, holder="w2", namespace="fleet") == 5  # a rival twin
    assert store.fence_token("acct-1", namespace="fleet") == 5
    assert store.claim_fence("acct-1", 4, holder="w2", namespace="fleet") == 5  # stale
    assert store.claim_fence("acct-1", 6, holder="w2", namespace="fleet") is None
    with pytest.raises(LeaseLostError):  # w1's writes under token 5 are refused now
        store.fenced("acct-1", 5, holder="w1", namespace="fleet").record_audit(
            "acct-1", "x", "w1", "late"
        )
    with pytest.raises(LeaseLostError):  # and a rival holder's equal token too
        store.fenced("acct-1", 6, holder="w3", namespace="fleet").record_audit(
            "acct-1", "x", "w3", "twin token"
        )
    store.fenced("acct-1", 6, holder="w2", namespace="fleet").record_audit(
        "acct-1", "x", "w2", "the holder"
    )
    assert [r.actor for r in store.audit_log("acct-1")] == ["w2"]


def test_a_version_3_store_keeps_its_fences_unscoped(durable_url, clock):
    """Fences written before namespaces survive the migration, under the unscoped namespace."""
    first = open_store(durable_url, clock=clock)
    with first._engine.begin() as conn:
        conn.execute(text("UPDATE bg_schema_version SET version = 3"))
        conn.execute(text("DROP TABLE bg_fences"))
        conn.execute(
            text(
                "CREATE TABLE bg_fences (account_id VARCHAR(200) PRIMARY KEY, "
                "token INTEGER NOT NULL, updated_at FLOAT NOT NULL)"
            )
        )
        conn.execute(text("INSERT INTO bg_fences VALUES ('acct-1', 41, 1.0), ('acct-2', 7, 1.0)"))
    first.close()
    second = open_store(durable_url, clock=clock)
    assert second.schema_version() == SCHEMA_VERSION
    assert (second.fence_token("acct-1"), second.fence_token("acct-2")) == (41, 7)
    with pytest.raises(LeaseLostError):
        second.fenced("acct-1", 40).record_audit("acct-1", "x", "w", "older than the kept mark")
    assert second.claim_fence("acct-1", 3, holder="w1", namespace="fleet") is None
    second.close()


def test_a_version_4_store_gains_the_believed_holdings(durable_url, clock):
    """The holdings table is created on open; what was stored before stays."""
    first = open_store(durable_url, clock=clock)
    first.halt("acct-1", "kept across the migration", "ops")
    with first._engine.begin() as conn:
        conn.execute(text("UPDATE bg_schema_version SET version = 4"))
        conn.execute(text("DROP TABLE bg_holdings"))
    first.close()
    second = open_store(durable_url, clock=clock)
    assert second.schema_version() == SCHEMA_VERSION
    assert second.is_halted("acct-1")
    assert second.holdings("acct-1") is None
    second.close()


def test_believed_holdings_are_replaced_whole_and_an_empty_belief_is_kept(store):
    """Each save replaces the account's holdings; 'holds nothing' is remembered, not absent."""
    assert store.holdings("acct-1") is None
    store.save_holdings("acct-1", {"BTC/USD": Decimal("0.5"), "ETH/USD": Decimal(2)}, 100.0)
    store.save_holdings("acct-2", {"SOL/USD": Decimal(3)}, 90.0)
    assert store.holdings("acct-1") == ({"BTC/USD": Decimal("0.5"), "ETH/USD": Decimal(2)}, 100.0)
    store.save_holdings("acct-1", {"ETH/USD": Decimal("1.25")}, 200.0)
    assert store.holdings("acct-1") == ({"ETH/USD": Decimal("1.25")}, 200.0)
    store.save_holdings("acct-1", {}, 300.0)
    assert store.holdings("acct-1") == ({}, 300.0)
    assert store.holdings("acct-2") == ({"SOL/USD": Decimal(3)}, 90.0)


def test_a_version_5_store_gains_the_pre_trade_entries(durable_url, clock):
    """The entries table is created on open; a saved entry is found open, then settled."""
    first = open_store(durable_url, clock=clock)
    with first._engine.begin() as conn:
        conn.execute(text("UPDATE bg_schema_version SET version = 5"))
        conn.execute(text("DROP TABLE bg_entries"))
    first.close()
    second = open_store(durable_url, clock=clock)
    assert second.schema_version() == SCHEMA_VERSION
    entry = {
        "reservation_id": "r1",
        "account_id": "acct-1",
        "symbol": "BTC/USD",
        "side": "buy",
        "client_order_id": "c1",
        "state": "reserved",
        "order_id": None,
        "created_at": 1.0,
        "expires_at": 61.0,
    }
    second.save_entry(entry)
    assert [e["reservation_id"] for e in second.open_entries("acct-1")] == ["r1"]
    second.save_entry({**entry, "state": "placed", "order_id": "X"})
    assert second.open_entries("acct-1") == []
    second.close()
