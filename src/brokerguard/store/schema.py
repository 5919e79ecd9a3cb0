"""The tables brokerguard persists, as SQLAlchemy Core metadata, and the schema version.

One schema serves SQLite (the embedded default) and PostgreSQL. Timestamps are epoch seconds
(a float from the injected clock); quantities are stored as their exact decimal string.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, Column, Float, Integer, MetaData, String, Table, Text

__all__ = [
    "AUDIT_LOG",
    "ENTRIES",
    "FENCES",
    "HALTS",
    "HOLDINGS",
    "METADATA",
    "ORDERS",
    "PAUSED_SYMBOLS",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_TABLE",
    "SENT_ORDERS",
]

SCHEMA_VERSION: Final = 7
"""The version this code writes (1: halts, pauses, audit log, order journal; 2: adds bg_fences,
the fencing tokens; 3: adds bg_orders.deadline, when a journaled order can no longer be
accepted; 4: bg_fences keyed by fleet namespace and account, with the holder of each token;
5: bg_holdings; 6: bg_entries; 7: bg_sent_orders, every order a broker object sent).
Older stores are migrated on open, one step at a time."""

METADATA = MetaData()

SCHEMA_VERSION_TABLE = Table(
    "bg_schema_version",
    METADATA,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

HALTS = Table(
    "bg_halts",
    METADATA,
    Column("account_id", String(200), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("source", String(200), nullable=False),
    Column("halted_at", Float, nullable=False),
)

PAUSED_SYMBOLS = Table(
    "bg_paused_symbols",
    METADATA,
    Column("account_id", String(200), primary_key=True),
    Column("symbol", String(100), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("paused_at", Float, nullable=False),
)

AUDIT_LOG = Table(
    "bg_audit_log",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("account_id", String(200), nullable=True, index=True),
    Column("action", String(50), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("details", Text, nullable=False),  # JSON object
)

ORDERS = Table(
    "bg_orders",
    METADATA,
    # The sequence keeps the journal in the order decisions were written, even within one
    # clock tick (client order ids are random).
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("client_order_id", String(100), nullable=False, unique=True),
    Column("account_id", String(200), nullable=False, index=True),
    Column("symbol", String(100), nullable=False),
    Column("side", String(10), nullable=False),
    Column("quantity", String(60), nullable=False),
    Column("status", String(30), nullable=False),
    Column("broker_order_id", String(100), nullable=True),
    Column("purpose", String(50), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Epoch seconds after which the venue can no longer accept the order (schema 3; NULL for
    # orders journaled before it, which are given a conservative bound when reconciled).
    Column("deadline", Float, nullable=True),
)

FENCES = Table(
    "bg_fences",
    METADATA,
    # The highest fencing token taken or written for each account of each fleet (its Redis
    # namespace; "" for fences written before schema 4 and for unscoped library use): a write
    # carrying a lower one, or the same one from another holder, comes from a worker whose
    # lease is gone (paused, partitioned, or issued before Redis lost its data) and is refused.
    Column("namespace", String(200), primary_key=True),
    Column("account_id", String(200), primary_key=True),
    Column("token", BigInteger, nullable=False),
    Column("holder", String(300), nullable=False, server_default=""),
    Column("updated_at", Float, nullable=False),
)

HOLDINGS = Table(
    # The holdings of each account's last believed position read: after a restart, a read
    # that lacks some of them is judged against them instead of being believed as the first.
    "bg_holdings",
    METADATA,
    Column("account_id", String(200), primary_key=True),
    Column("symbol", String(100), primary_key=True),
    Column("quantity", String(60), nullable=False),
    Column("seen_at", Float, nullable=False),  # wall time the read that showed it started
)

ENTRIES = Table(
    # The pre-trade API's reservations: one a bot never reported keeps its slot across a
    # restart until the broker is asked about its client order id.
    "bg_entries",
    METADATA,
    Column("reservation_id", String(64), primary_key=True),
    Column("account_id", String(200), nullable=False, index=True),
    Column("symbol", String(100), nullable=False),
    Column("side", String(10), nullable=False),
    Column("client_order_id", String(100), nullable=False),
    Column("state", String(20), nullable=False),
    Column("order_id", String(100), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

SENT_ORDERS = Table(
    # Every order a broker object sent (a bot's, the gate's, the enforcer's), written before
    # it is sent: a restarted process, or another broker object on the same account, must not
    # send again an order whose outcome is unknown or that already executed. A final row is
    # forgotten an hour after it ended (brokers.base.FINAL_ORDER_MEMORY_S), as in memory.
    "bg_sent_orders",
    METADATA,
    Column("account_id", String(200), primary_key=True),
    Column("client_order_id", String(100), primary_key=True),
    Column("request", Text, nullable=False),  # the OrderRequest, as JSON (exact decimals)
    Column("state", String(30), nullable=False),  # brokerguard.orders.OrderState
    Column("absent_after", Float, nullable=True),  # when absence can prove it never placed
    Column("token", String(32), nullable=False),  # the claim's: every write of the row names it
    Column("writer", String(32), nullable=False),  # the process (store) that wrote it last
    Column("sent_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False, index=True),
)

APPEND_ONLY_DDL: Final = {
    # The audit log is evidence: the database itself refuses to rewrite it.
    "sqlite": [
        (
            "CREATE TRIGGER IF NOT EXISTS bg_audit_no_update BEFORE UPDATE ON bg_audit_log "
            "BEGIN SELECT RAISE(ABORT, 'bg_audit_log is append-only'); END"
        ),
        (
            "CREATE TRIGGER IF NOT EXISTS bg_audit_no_delete BEFORE DELETE ON bg_audit_log "
            "BEGIN SELECT RAISE(ABORT, 'bg_audit_log is append-only'); END"
        ),
    ],
    "postgresql": [
        (
            "CREATE OR REPLACE FUNCTION bg_audit_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'bg_audit_log is append-only'; END; $$ LANGUAGE plpgsql"
        ),
        "DROP TRIGGER IF EXISTS bg_audit_no_rewrite ON bg_audit_log",
        (
            "CREATE TRIGGER bg_audit_no_rewrite BEFORE UPDATE OR DELETE ON bg_audit_log "
            "FOR EACH ROW EXECUTE FUNCTION bg_audit_append_only()"
        ),
    ],
}
