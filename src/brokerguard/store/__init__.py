"""Persistent state: halts, paused symbols, the audit log and the order journal."""

from brokerguard.store.state import (
    LIVE_ORDER_STATUSES,
    AuditNote,
    AuditRecord,
    Halt,
    JournalEntry,
    StateStore,
    open_store,
)

__all__ = [
    "LIVE_ORDER_STATUSES",
    "AuditNote",
    "AuditRecord",
    "Halt",
    "JournalEntry",
    "StateStore",
    "open_store",
]
