"""Persistent state: halts, paused symbols, the audit log and the order journal."""

from brokerguard.store.state import AuditRecord, Halt, JournalEntry, StateStore, open_store

__all__ = ["AuditRecord", "Halt", "JournalEntry", "StateStore", "open_store"]
