"""The one place brokerguard persists: halts, paused symbols, the audit log, the order journal.

A halt is durable before ``halt()`` returns (one transaction, committed; on SQLite in WAL mode
with ``synchronous=FULL``), so a crash right after deciding to halt cannot lose it, and every
change of state writes its audit record in the same transaction. Database errors become
:class:`~brokerguard.errors.StoreUnavailableError` here, at one seam: callers treat an
unreachable store as "unknown", which means "deny".

Every call takes bounded time (the store's ``timeout``, default
:data:`DEFAULT_TIMEOUT_S`): waiting for a turn, for a connection (at least libpq's 2 s floor)
and for each answer all come out of one budget, with statement, lock and idle-transaction
timeouts on PostgreSQL and a busy timeout on SQLite. A database that accepts and never answers
is then a StoreUnavailableError within that time, like one that refuses: never a hang.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from decimal import Decimal
from enum import Enum
from typing import Any, Final, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from brokerguard._redact import redact_url
from brokerguard._validation import int_problem, seconds_problem
from brokerguard.clock import SYSTEM_CLOCK, Clock
from brokerguard.errors import (
    BrokerGuardError,
    ConfigurationError,
    LeaseLostError,
    StoreUnavailableError,
)
from brokerguard.models import OrderRequest
from brokerguard.store._deadline import call_deadline, remaining
from brokerguard.store.hot import HotSnapshot, HotState
from brokerguard.store.schema import (
    APPEND_ONLY_DDL,
    AUDIT_LOG,
    ENTRIES,
    FENCES,
    HALTS,
    HOLDINGS,
    METADATA,
    ORDERS,
    PAUSED_SYMBOLS,
    SCHEMA_VERSION,
    SCHEMA_VERSION_TABLE,
    SENT_ORDERS,
)

__all__ = [
    "DEFAULT_CACHE_S",
    "DEFAULT_TIMEOUT_S",
    "LIVE_ORDER_STATUSES",
    "AccountState",
    "AuditNote",
    "AuditRecord",
    "Halt",
    "JournalEntry",
    "SentOrder",
    "StateStore",
    "open_store",
]

log = logging.getLogger("brokerguard.store")

T = TypeVar("T")

DEFAULT_TIMEOUT_S: Final = 5.0
"""Seconds one store call may wait in all, by default: long enough for a loaded database's
slowest statement here (a few ms each), short enough that an entry check or an enforcement
step fails closed well within one enforcement interval when the database hangs."""

DEFAULT_CACHE_S: Final = 1.0
"""Seconds the halts, paused symbols and live orders read by entry checks and enforcement may
be served from memory, by default (see :mod:`brokerguard.store.hot`): the bound on how late a
halt written by *another process* on PostgreSQL can stop entries. Writes through the store
itself, and on SQLite any process's writes, are seen at once."""

_SCHEMA_BUDGET_S: Final = 30.0
"""Creating or migrating the schema, once a worker has reached the database, may take this
long (the other workers of a fleet starting together wait for the first one's DDL)."""

_CLAIM_LOCK_WAIT_S: Final = 0.5
"""A claim waits at most this long for a fence row another session holds locked: a previous
holder's write takes milliseconds; one that takes longer is paused, and its open transaction
is ended by the database within the store's timeout (a later pass claims then)."""


SENT_ORDER_MEMORY_S: Final = 3600.0
"""Seconds a final sent order (filled, canceled, vanished) is kept after it was last updated:
as long as a broker remembers it (``brokers.base.FINAL_ORDER_MEMORY_S``), so a retry of its id
within the hour, from a restarted process or another broker object, is looked up, never sent."""

SENT_RESTING_MEMORY_S: Final = 30 * 86400.0
"""Seconds an order last seen resting (open, partially filled) is kept without news of it: a
bound on the table should its end never be seen (the venue's listing still shows it). Orders
whose outcome is unknown (sent, unresolved, exists) are never forgotten."""

SENT_FOREIGN_MARGIN_S: Final = 86400.0
"""Extra seconds before a process sweeps a kept order another process wrote last: the bounds
above are measured on the clock of the row's last writer, and a host whose clock runs ahead
(by up to this much) must not forget another's order early."""

_SENDABLE_AGAIN: Final = ("not_placed", "rejected")
"""Sent-order states that hold nothing: never placed, so the id may be sent again."""
_FORGOTTEN_FINAL: Final = ("filled", "canceled", "vanished")
_RESTING: Final = ("open", "partially_filled")
_UNSETTLED: Final = ("intent", "sent", "unresolved", "exists", *_RESTING)
_CLAIM_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class Halt:
    """An account's halt: why, who decided it, and when (epoch seconds)."""

    account_id: str
    reason: str
    source: str
    halted_at: float


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One line of the append-only audit log."""

    id: int
    at: float
    account_id: str | None
    action: str
    actor: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditNote:
    """An audit record to write in the same transaction as a journal change.

    A crash then leaves both or neither: never an order intent without the record that
    explains it.
    """

    action: str
    actor: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


LIVE_ORDER_STATUSES: Final = frozenset(
    {
        "intent",
        "sent",
        "unresolved",
        "exists",
        "open",
        "partially_filled",
        # Written by versions before the order lifecycle: their fate was decided on a lookup
        # made too early, so they are looked up again.
        "unconfirmed",
        "failed",
    }
)
"""Journal statuses whose order may still be (or become) live at the broker: they are looked
up by client order id before anything else is sent for their symbol (see
:mod:`brokerguard.orders`)."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """An order brokerguard decided to send, written before it was sent."""

    client_order_id: str
    account_id: str
    symbol: str
    side: str
    quantity: Decimal
    status: str
    broker_order_id: str | None
    purpose: str
    created_at: float
    updated_at: float
    deadline: float | None = None
    """Epoch seconds after which the venue can no longer accept it (None: journaled before
    deadlines were recorded)."""


@dataclass(frozen=True, slots=True)
class SentOrder:
    """An order a broker object sent (or claimed the right to send), as the store keeps it."""

    account_id: str
    request: OrderRequest
    state: str
    """An :class:`~brokerguard.orders.OrderState` value."""
    absent_after: float | None
    """Epoch seconds after which lookups that find nothing can prove it never placed."""
    sent_at: float
    updated_at: float
    token: str
    """The claim's token: every write of the row names it (a claim of the id after it was
    proven absent gets a new one)."""


@dataclass(frozen=True, slots=True)
class AccountState:
    """What an entry check reads of one account, in one look: its halt and paused symbols."""

    halt: Halt | None
    paused: Mapping[str, str]
    """Paused symbol -> the reason of its pause."""


def open_store(
    url: str,
    *,
    clock: Clock | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    password: str | None = None,
    cache_s: float = DEFAULT_CACHE_S,
    pool_size: int | None = None,
) -> StateStore:
    """Open (and create or migrate on first use) the store at `url`.

    ``sqlite:///path/to/state.db`` is the embedded default; ``sqlite://`` or ``memory://`` is an
    in-memory store (tests, simulations); ``postgresql://user@host/db`` uses psycopg 3.
    `timeout` bounds every call (seconds; connecting to PostgreSQL waits at least 2 s), but
    creating or migrating the schema, once the database has answered, may take up to 30 s:
    fleet workers starting together wait for the first one's DDL. `password` (PostgreSQL,
    from the environment variable the configuration names) is handed to the driver, never
    written into the URL, so it cannot be printed. `cache_s` bounds how long halts, pauses and
    live orders are served from memory (:data:`DEFAULT_CACHE_S`; 0 reads the database every
    time); `pool_size` sizes PostgreSQL's connection pool (the threads that use the store at
    once; default 5, plus as many again on demand).
    """
    return StateStore(
        url, clock=clock, timeout=timeout, password=password, cache_s=cache_s, pool_size=pool_size
    )


@dataclass(frozen=True, slots=True)
class _Fence:
    """The lease a fenced view writes under."""

    namespace: str
    account_id: str
    token: int
    holder: str


class StateStore:
    """Halts, paused symbols, the audit log and the order journal, on SQLAlchemy Core.

    Args:
        url: where (see :func:`open_store`).
        clock: the time source of every timestamp written.
        timeout: seconds any one call may take in all before it raises
            :class:`StoreUnavailableError`.
        cache_s: seconds the state entry checks and enforcement read (halts, pauses, live
            orders) may be served from memory (:mod:`brokerguard.store.hot`); 0: never.
        pool_size: PostgreSQL's pool: connections kept open (as many again on demand).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        password: str | None = None,
        cache_s: float = DEFAULT_CACHE_S,
        pool_size: int | None = None,
    ) -> None:
        problems = [
            *seconds_problem("timeout", timeout, allow_zero=False),
            *seconds_problem("cache_s", cache_s),
            *([] if pool_size is None else int_problem("pool_size", pool_size, minimum=1)),
        ]
        if problems or not math.isfinite(timeout) or not math.isfinite(cache_s):
            raise ConfigurationError("invalid store settings: " + "; ".join(problems or ["inf"]))
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._writer = uuid.uuid4().hex  # this process's mark on the sent orders it writes
        self.url = url
        self.timeout = float(timeout)
        self._engine = _make_engine(url, self.timeout, password, pool_size)
        self._probe = _SqliteVersion.of(self._engine, self.timeout)
        self._hot: HotState[Halt, JournalEntry] = HotState(
            float(cache_s),
            self._clock.monotonic,
            None if self._probe is None else self._version,
        )
        # The in-memory store has ONE connection shared by every thread: every statement must
        # take turns on it. A file-based SQLite has one connection per thread and one writer
        # at a time (queueing here beats SQLite's busy-wait). PostgreSQL needs neither.
        in_memory = isinstance(self._engine.pool, StaticPool)
        self._any_lock = threading.RLock() if in_memory else None
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._fence: _Fence | None = None
        try:
            # Reachable within the timeout first; then the schema, which may wait its turn
            # behind the other workers of a fleet starting together.
            self._read(lambda conn: conn.execute(text("SELECT 1")))
            self._call(self._create_or_migrate, write=False, budget=self._schema_budget)
        except BaseException:
            self.close()
            raise

    def fenced(
        self, account_id: str, token: int, *, holder: str = "", namespace: str = ""
    ) -> StateStore:
        """Return a view of this store whose every write first checks `token` for `account_id`.

        A worker holding an account's lease writes through this view with the lease's fencing
        token, its own name (`holder`) and its fleet's `namespace`. The store keeps the highest
        token taken or written for each (namespace, account), in the same transaction as the
        write; a write with a lower token, or with the same token from another holder (a
        worker whose lease expired while it was paused, or was issued again after Redis lost
        its data), is refused with :class:`LeaseLostError` and changes nothing. The view
        shares the engine: it is cheap, one per lease. Audit records written through it carry
        ``fence_token`` (and the ``worker`` `holder`) in their details: the evidence of who
        acted on the account under which lease.
        """
        _require("account_id", account_id)
        problems = int_problem("token", token, minimum=1)
        if problems:
            raise ConfigurationError("invalid fencing token: " + "; ".join(problems))
        view = copy.copy(self)
        view._fence = _Fence(namespace, account_id, token, holder)  # noqa: SLF001 (same class)
        return view

    def fence_token(self, account_id: str, *, namespace: str = "") -> int | None:
        """The highest fencing token taken or written for `account_id` in `namespace`.

        None: never fenced there. Fences written before schema 4 are in namespace ``""``.
        """
        return self._read(
            lambda conn: conn.execute(
                select(FENCES.c.token).where(
                    FENCES.c.namespace == namespace, FENCES.c.account_id == account_id
                )
            ).scalar()
        )

    def claim_fence(
        self, account_id: str, token: int, *, holder: str, namespace: str = ""
    ) -> int | None:
        """Record `token` as the account's fence as a lease is taken; None once it is.

        It is taken when it is newer than every token the store has seen for (`namespace`,
        `account_id`), or is the fence `holder` itself already holds: from then on every write
        under an older token is refused, before the new holder has written anything. Otherwise
        the answer is the mark that refused it (Redis issued a token the store has already
        seen: its counter was lost); the caller takes a token above that mark. A fence row
        locked by another session (a paused previous holder) is waited for at most half a
        second: StoreUnavailableError then, and a later pass claims.
        """
        return self.claim_fences([(account_id, token, holder)], namespace=namespace).get(account_id)

    def claim_fences(
        self, claims: Sequence[tuple[str, int, str]], *, namespace: str = ""
    ) -> dict[str, int]:
        """:meth:`claim_fence` for many ``(account_id, token, holder)`` in one transaction.

        Returns the refused ones: account -> the mark that refused it. A worker taking many
        leases at once (its start, a takeover) fences them all with one commit.
        """
        fences = []
        for account_id, token, holder in claims:
            _require("account_id", account_id)
            _require("holder", holder)
            problems = int_problem("token", token, minimum=1)
            if problems:
                raise ConfigurationError("invalid fencing token: " + "; ".join(problems))
            fences.append(_Fence(namespace, account_id, token, holder))
        if not fences:
            return {}

        def work(conn: Connection) -> dict[str, int]:
            if self.dialect == "postgresql":
                wait_ms = round(min(self.timeout, _CLAIM_LOCK_WAIT_S) * 1000)
                conn.execute(text(f"SET LOCAL lock_timeout = {wait_ms}"))
            refused = {}
            for fence in fences:
                mark = self._raise_fence(conn, fence)
                if mark is not None:
                    refused[fence.account_id] = mark
            return refused

        return self._call(lambda: self._transaction(work), write=True)

    def fence_marks(self, namespace: str = "") -> dict[str, int]:
        """Every account's fence in `namespace` (one read: the floors a worker starts from)."""
        return self._read(
            lambda conn: {
                r.account_id: int(r.token)
                for r in conn.execute(
                    select(FENCES.c.account_id, FENCES.c.token).where(
                        FENCES.c.namespace == namespace
                    )
                )
            }
        )

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return str(self._engine.dialect.name)

    @property
    def safe_url(self) -> str:
        """The URL with any password masked (user:password@ and parameters), for logs, status."""
        return redact_url(self._engine.url.render_as_string(hide_password=True))

    def close(self) -> None:
        """Release the connection pool."""
        if self._probe is not None:
            self._probe.close()
        self._engine.dispose()

    def ping(self) -> bool:
        """Return True if the database answers within the timeout; never raises (readiness)."""
        try:
            self._read(lambda conn: conn.execute(text("SELECT 1")))
        except StoreUnavailableError:
            return False
        return True

    # ------------------------------------------------------------------ halts

    def halt(self, account_id: str, reason: str, source: str) -> Halt:
        """Halt `account_id` durably, with an audit record, before returning.

        Halting a halted account keeps the original halt (its reason and time) and audits
        the repeated decision.
        """
        _require("account_id", account_id)
        _require("reason", reason)
        _require("source", source)
        now = self._clock.time()

        def work(conn: Connection) -> Halt:
            row = conn.execute(select(HALTS).where(HALTS.c.account_id == account_id)).first()
            if row is None:
                conn.execute(
                    insert(HALTS).values(
                        account_id=account_id, reason=reason, source=source, halted_at=now
                    )
                )
                halt = Halt(account_id, reason, source, now)
                action = "halt"
            else:
                halt = Halt(row.account_id, row.reason, row.source, row.halted_at)
                action = "halt_repeated"
            self._audit(conn, account_id, action, source, reason, {}, now)
            return halt

        return self._write(work)

    def is_halted(self, account_id: str) -> bool:
        """Return whether `account_id` is halted (raises StoreUnavailableError if unknown)."""
        return self.get_halt(account_id) is not None

    def get_halt(self, account_id: str) -> Halt | None:
        """Return the account's halt, or None (served within the cache bound, see `cache_s`)."""
        if self._hot.enabled:
            return self._hot_state().halts.get(account_id)

        def work(conn: Connection) -> Halt | None:
            row = conn.execute(select(HALTS).where(HALTS.c.account_id == account_id)).first()
            return (
                None if row is None else Halt(row.account_id, row.reason, row.source, row.halted_at)
            )

        return self._read(work)

    def account_state(self, account_id: str) -> AccountState:
        """Return the account's halt and paused symbols together (one cache check or read)."""
        if self._hot.enabled:
            hot = self._hot_state()
            return AccountState(hot.halts.get(account_id), dict(hot.pauses.get(account_id, {})))

        def work(conn: Connection) -> AccountState:
            row = conn.execute(select(HALTS).where(HALTS.c.account_id == account_id)).first()
            rows = conn.execute(
                select(PAUSED_SYMBOLS.c.symbol, PAUSED_SYMBOLS.c.reason)
                .where(PAUSED_SYMBOLS.c.account_id == account_id)
                .order_by(PAUSED_SYMBOLS.c.symbol)
            )
            return AccountState(
                None
                if row is None
                else Halt(row.account_id, row.reason, row.source, row.halted_at),
                {r.symbol: r.reason for r in rows},
            )

        return self._read(work)

    def halts(self) -> list[Halt]:
        """Return every current halt, oldest first."""
        if self._hot.enabled:
            return sorted(
                self._hot_state().halts.values(), key=lambda h: (h.halted_at, h.account_id)
            )

        def work(conn: Connection) -> list[Halt]:
            rows = conn.execute(select(HALTS).order_by(HALTS.c.halted_at, HALTS.c.account_id))
            return [Halt(r.account_id, r.reason, r.source, r.halted_at) for r in rows]

        return self._read(work)

    def resume(self, account_id: str, operator: str, reason: str) -> bool:
        """Lift the halt of `account_id`; only an operator with a reason may. Audited.

        Returns False (and audits the attempt) when the account was not halted.
        """
        _require("account_id", account_id)
        _require("operator", operator)
        _require("reason", reason)
        now = self._clock.time()

        def work(conn: Connection) -> bool:
            removed = conn.execute(delete(HALTS).where(HALTS.c.account_id == account_id))
            lifted = bool(removed.rowcount)
            action = "resume" if lifted else "resume_not_halted"
            self._audit(conn, account_id, action, operator, reason, {}, now)
            return lifted

        lifted = self._write(work)
        if lifted:
            log.warning(
                "trading RESUMED for account %s by operator %r: %s", account_id, operator, reason
            )
        return lifted

    # ------------------------------------------------------------------ believed holdings

    def save_holdings(
        self, account_id: str, holdings: Mapping[str, Decimal], seen_at: float
    ) -> None:
        """Replace the account's believed holdings (symbol -> quantity, read at `seen_at`)."""
        _require("account_id", account_id)

        def work(conn: Connection) -> None:
            conn.execute(delete(HOLDINGS).where(HOLDINGS.c.account_id == account_id))
            if holdings:
                conn.execute(
                    insert(HOLDINGS),
                    [
                        {
                            "account_id": account_id,
                            "symbol": symbol,
                            "quantity": str(quantity),
                            "seen_at": seen_at,
                        }
                        for symbol, quantity in sorted(holdings.items())
                    ],
                )
            else:  # "holds nothing" is a belief too: one marker row keeps its time
                conn.execute(
                    insert(HOLDINGS).values(
                        account_id=account_id, symbol="", quantity="0", seen_at=seen_at
                    )
                )

        self._write(work, hot=False)

    def holdings(self, account_id: str) -> tuple[dict[str, Decimal], float] | None:
        """The account's last believed holdings and when they were read, or None if never."""

        def work(conn: Connection) -> tuple[dict[str, Decimal], float] | None:
            rows = list(conn.execute(select(HOLDINGS).where(HOLDINGS.c.account_id == account_id)))
            if not rows:
                return None
            held = {r.symbol: Decimal(r.quantity) for r in rows if r.symbol}
            return held, min(r.seen_at for r in rows)

        return self._read(work)

    # ------------------------------------------------------------------ pre-trade entries

    def save_entry(self, entry: Mapping[str, Any]) -> None:
        """Insert or update one pre-trade reservation (keyed by ``reservation_id``)."""
        row = {c.name: entry[c.name] for c in ENTRIES.columns if c.name != "updated_at"}
        row["updated_at"] = self._clock.time()

        def work(conn: Connection) -> None:
            updated = conn.execute(
                update(ENTRIES)
                .where(ENTRIES.c.reservation_id == row["reservation_id"])
                .values(state=row["state"], order_id=row["order_id"], updated_at=row["updated_at"])
            )
            if not updated.rowcount:
                conn.execute(insert(ENTRIES).values(**row))

        self._write(work, hot=False)

    def open_entries(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """Reservations not settled yet (``reserved`` or ``unresolved``), oldest first."""

        def work(conn: Connection) -> list[dict[str, Any]]:
            query = (
                select(ENTRIES)
                .where(ENTRIES.c.state.in_(("reserved", "unresolved")))
                .order_by(ENTRIES.c.created_at)
            )
            if account_id is not None:
                query = query.where(ENTRIES.c.account_id == account_id)
            return [dict(r) for r in conn.execute(query).mappings()]

        return self._read(work)

    # ------------------------------------------------------------------ sent orders

    def claim_sent_order(
        self,
        account_id: str,
        request: OrderRequest,
        *,
        token: str,
        state: str = "sent",
        absent_after: float | None = None,
    ) -> SentOrder | None:
        """Keep `request` as sent under `token`, unless its id is kept: None, or the holder.

        Atomic across processes (one row per account and client order id): of two broker
        objects claiming one id, one inserts it and the other gets that row back. The row is
        written as ``sent`` with `absent_after` *before* the request leaves, so a claimer that
        dies before or while sending leaves an order resolved by the evidence rule, never one
        that another process may send again at once. Every later write of the row names its
        `token` (:meth:`save_sent_order`, :meth:`settle_sent_order`).
        """
        _require("account_id", account_id)
        now = self._clock.time()
        cid = request.client_order_id
        row = {
            "account_id": account_id,
            "client_order_id": cid,
            "request": _request_json(request),
            "state": state,
            "absent_after": absent_after,
            "token": token,
            "writer": self._writer,
            "sent_at": now,
            "updated_at": now,
        }

        def work(conn: Connection) -> SentOrder | None:
            upsert = sqlite_insert if self.dialect == "sqlite" else postgresql_insert
            claim = (
                upsert(SENT_ORDERS)
                .values(**row)
                .on_conflict_do_nothing()
                .returning(SENT_ORDERS.c.token)  # rowcount is -1 here on psycopg
            )
            for _ in range(_CLAIM_ATTEMPTS):
                if conn.execute(claim).first() is not None:
                    return None
                held = conn.execute(select(SENT_ORDERS).where(_sent_key(account_id, cid)))
                found = held.one_or_none()
                if found is not None:
                    return _sent_order(found)
                # PostgreSQL, read committed: the row that conflicted was deleted (proven
                # absent) before this SELECT saw it. Not a win: insert again.
            raise StoreUnavailableError(
                f"the claim of order {cid} for account {account_id} kept meeting a row that "
                "vanished: nothing is sent"
            )

        return self._write(work, hot=False)

    def save_sent_order(
        self,
        account_id: str,
        request: OrderRequest,
        state: str,
        *,
        token: str,
        absent_after: float | None = None,
    ) -> bool:
        """Record `request` (a new deadline, or unresolved) on the row `token` holds.

        False when no row of the id carries `token` (another process proved it absent, and
        may have claimed it again): the caller must not send.
        """
        now = self._clock.time()
        values = {
            "request": _request_json(request),
            "state": state,
            "absent_after": absent_after,
            "writer": self._writer,
            "updated_at": now,
        }
        key = _sent_key(account_id, request.client_order_id) & (SENT_ORDERS.c.token == token)

        def work(conn: Connection) -> bool:
            return bool(conn.execute(update(SENT_ORDERS).where(key).values(**values)).rowcount)

        return self._write(work, hot=False)

    def settle_sent_order(
        self,
        account_id: str,
        client_order_id: str,
        state: str,
        *,
        token: str,
        proven_after: float | None = None,
    ) -> bool:
        """Record what became of the kept order `token` holds; False if no such row is kept.

        A ``not_placed`` or ``rejected`` order is forgotten (its id may be sent again). Only
        the row `token` names is touched: a late proof of absence never frees an id another
        process has claimed since. `proven_after`: the order was proven absent by lookups after
        this time (its ``absent_after`` when the prover read it); the row is kept if its owner
        has resent it since with a later deadline (its ``absent_after`` is later). Final and
        resting orders are swept with it, each past its bound by the clock of the process that
        last wrote it (see :data:`SENT_FOREIGN_MARGIN_S`).
        """
        now = self._clock.time()
        key = _sent_key(account_id, client_order_id) & (SENT_ORDERS.c.token == token)
        mine = SENT_ORDERS.c.writer == self._writer

        def past(bound: float) -> ColumnElement[bool]:
            return (mine & (SENT_ORDERS.c.updated_at < now - bound)) | (
                SENT_ORDERS.c.updated_at < now - bound - SENT_FOREIGN_MARGIN_S
            )

        def work(conn: Connection) -> bool:
            conn.execute(
                delete(SENT_ORDERS).where(
                    (SENT_ORDERS.c.account_id == account_id)
                    & (
                        (SENT_ORDERS.c.state.in_(_FORGOTTEN_FINAL) & past(SENT_ORDER_MEMORY_S))
                        | (SENT_ORDERS.c.state.in_(_RESTING) & past(SENT_RESTING_MEMORY_S))
                    )
                )
            )
            if state in _SENDABLE_AGAIN:
                gone = key
                if proven_after is not None:
                    gone = gone & (SENT_ORDERS.c.absent_after <= proven_after)
                return bool(conn.execute(delete(SENT_ORDERS).where(gone)).rowcount)
            changed = update(SENT_ORDERS).where(key)
            values = {"state": state, "writer": self._writer, "updated_at": now}
            return bool(conn.execute(changed.values(**values)).rowcount)

        return self._write(work, hot=False)

    def sent_order(self, account_id: str, client_order_id: str) -> SentOrder | None:
        """The sent order `client_order_id` of `account_id`, or None if none is kept."""
        key = _sent_key(account_id, client_order_id)

        def work(conn: Connection) -> SentOrder | None:
            row = conn.execute(select(SENT_ORDERS).where(key)).one_or_none()
            return None if row is None else _sent_order(row)

        return self._read(work)

    def unsettled_sent_orders(self, account_id: str) -> list[SentOrder]:
        """The kept orders of `account_id` that may still execute (outcome unknown, or resting)."""
        return self._kept_orders(account_id, _UNSETTLED)

    def sent_orders(self, account_id: str) -> list[SentOrder]:
        """Every sent order kept for `account_id`, oldest first."""
        return self._kept_orders(account_id, None)

    def _kept_orders(self, account_id: str, states: Sequence[str] | None) -> list[SentOrder]:
        """The kept orders of `account_id` (in `states`, or all), oldest first."""
        where = SENT_ORDERS.c.account_id == account_id
        if states is not None:
            where = where & SENT_ORDERS.c.state.in_(states)
        query = (
            select(SENT_ORDERS)
            .where(where)
            .order_by(SENT_ORDERS.c.sent_at, SENT_ORDERS.c.client_order_id)
        )
        return self._read(lambda conn: [_sent_order(r) for r in conn.execute(query)])

    # ------------------------------------------------------------------ paused symbols

    def pause_symbol(
        self,
        account_id: str,
        symbol: str,
        reason: str = "paused by operator",
        *,
        actor: str = "brokerguard",
    ) -> bool:
        """Pause `symbol` for `account_id` (no entries, no management); True if newly paused."""
        _require("account_id", account_id)
        _require("symbol", symbol)
        _require("reason", reason)
        now = self._clock.time()

        def work(conn: Connection) -> bool:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(PAUSED_SYMBOLS).values(
                            account_id=account_id, symbol=symbol, reason=reason, paused_at=now
                        )
                    )
            except IntegrityError:
                return False  # already paused: nothing changed, nothing to audit
            self._audit(conn, account_id, "pause", actor, reason, {"symbol": symbol}, now)
            return True

        return self._write(work)

    def unpause_symbol(
        self,
        account_id: str,
        symbol: str,
        reason: str = "unpaused by operator",
        *,
        actor: str = "brokerguard",
    ) -> bool:
        """Lift the pause of `symbol`; True if it was paused. Audited."""
        _require("account_id", account_id)
        _require("reason", reason)
        now = self._clock.time()

        def work(conn: Connection) -> bool:
            removed = conn.execute(
                delete(PAUSED_SYMBOLS).where(
                    PAUSED_SYMBOLS.c.account_id == account_id, PAUSED_SYMBOLS.c.symbol == symbol
                )
            )
            if not removed.rowcount:
                return False
            self._audit(conn, account_id, "unpause", actor, reason, {"symbol": symbol}, now)
            return True

        return self._write(work)

    def paused_symbols(self, account_id: str) -> set[str]:
        """Return the symbols paused for `account_id`."""
        return set(self.paused_symbol_reasons(account_id))

    def paused_symbol_reasons(self, account_id: str) -> dict[str, str]:
        """Return the paused symbols of `account_id` with the reason of each pause."""
        if self._hot.enabled:
            return dict(self._hot_state().pauses.get(account_id, {}))

        def work(conn: Connection) -> dict[str, str]:
            rows = conn.execute(
                select(PAUSED_SYMBOLS.c.symbol, PAUSED_SYMBOLS.c.reason)
                .where(PAUSED_SYMBOLS.c.account_id == account_id)
                .order_by(PAUSED_SYMBOLS.c.symbol)
            )
            return {r.symbol: r.reason for r in rows}

        return self._read(work)

    # ------------------------------------------------------------------ the audit log

    def record_audit(
        self,
        account_id: str | None,
        action: str,
        actor: str,
        reason: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Append a record (liquidation orders, operator actions ...) to the audit log."""
        _require("action", action)
        _require("actor", actor)
        now = self._clock.time()
        self._write(
            lambda conn: self._audit(conn, account_id, action, actor, reason, details or {}, now),
            hot=False,
        )

    def audit_log(self, account_id: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """Return the newest `limit` audit records (of one account, or all), newest first."""
        if limit < 1:
            raise ConfigurationError(f"limit must be >= 1, got {limit!r}")

        def work(conn: Connection) -> list[AuditRecord]:
            query = select(AUDIT_LOG).order_by(AUDIT_LOG.c.id.desc()).limit(limit)
            if account_id is not None:
                query = query.where(AUDIT_LOG.c.account_id == account_id)
            return [
                AuditRecord(
                    r.id, r.at, r.account_id, r.action, r.actor, r.reason, json.loads(r.details)
                )
                for r in conn.execute(query)
            ]

        return self._read(work)

    # ------------------------------------------------------------------ the order journal

    def record_order_intent(
        self,
        account_id: str,
        request: OrderRequest,
        *,
        purpose: str,
        audit: AuditNote | None = None,
    ) -> None:
        """Write an order down *before* it is sent, so a crash cannot make it sent twice.

        The request's ``deadline`` is kept: after a restart, absence proves the order was not
        placed only once that deadline has passed. `audit`, when given, is appended in the
        same transaction.
        """
        now = self._clock.time()

        def work(conn: Connection) -> None:
            conn.execute(
                insert(ORDERS).values(
                    client_order_id=request.client_order_id,
                    account_id=account_id,
                    symbol=request.symbol,
                    side=request.side.value,
                    quantity=str(request.quantity),
                    status="intent",
                    broker_order_id=None,
                    purpose=purpose,
                    created_at=now,
                    updated_at=now,
                    deadline=request.deadline,
                )
            )
            if audit is not None:
                self._audit_note(conn, account_id, audit, now)

        self._write(work)

    def record_order_status(
        self,
        client_order_id: str,
        status: str,
        *,
        broker_order_id: str | None = None,
        audit: AuditNote | None = None,
        account_id: str | None = None,
    ) -> None:
        """Record what became of a journaled order (``filled``, ``unconfirmed`` ...).

        `audit` (about `account_id`), when given, is appended in the same transaction.
        """
        now = self._clock.time()
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if broker_order_id is not None:
            values["broker_order_id"] = broker_order_id

        def work(conn: Connection) -> None:
            conn.execute(
                update(ORDERS).where(ORDERS.c.client_order_id == client_order_id).values(**values)
            )
            if audit is not None:
                self._audit_note(conn, account_id, audit, now)

        self._write(work)

    def journal(self, account_id: str, *, statuses: set[str] | None = None) -> list[JournalEntry]:
        """Return the journaled orders of `account_id`, oldest first (optionally by status).

        The live ones (`statuses` within :data:`LIVE_ORDER_STATUSES`, what every enforcement
        pass asks) are served within the cache bound; any other question reads the database.
        """
        if self._hot.enabled and statuses is not None and statuses <= LIVE_ORDER_STATUSES:
            live = self._hot_state().live_orders.get(account_id, ())
            return [e for e in live if e.status in statuses]

        def work(conn: Connection) -> list[JournalEntry]:
            query = select(ORDERS).where(ORDERS.c.account_id == account_id)
            if statuses is not None:
                query = query.where(ORDERS.c.status.in_(sorted(statuses)))
            return [_journal_entry(r) for r in conn.execute(query.order_by(ORDERS.c.seq))]

        return self._read(work)

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Read other processes' changes once for the block (one enforcement step)."""
        with self._hot.pinned():
            yield

    @contextmanager
    def steps(self) -> Iterator[None]:
        """The pinned blocks of this thread within share one look at other processes' changes.

        See :meth:`brokerguard.store.hot.HotState.steps`: what runs between them is not pinned.
        """
        with self._hot.steps():
            yield

    def invalidate_cache(self) -> None:
        """Drop the cached halts, pauses and live orders (another process announced a change)."""
        self._hot.invalidate()

    def _hot_state(self) -> HotSnapshot[Halt, JournalEntry]:
        return self._hot.get(self._load_hot)

    def _load_hot(self) -> HotSnapshot[Halt, JournalEntry]:
        """Read every halt, pause and live order in one connection (three SELECTs)."""

        def work(conn: Connection) -> HotSnapshot[Halt, JournalEntry]:
            halts = {
                r.account_id: Halt(r.account_id, r.reason, r.source, r.halted_at)
                for r in conn.execute(select(HALTS))
            }
            pauses: dict[str, dict[str, str]] = {}
            rows = conn.execute(
                select(
                    PAUSED_SYMBOLS.c.account_id, PAUSED_SYMBOLS.c.symbol, PAUSED_SYMBOLS.c.reason
                ).order_by(PAUSED_SYMBOLS.c.account_id, PAUSED_SYMBOLS.c.symbol)
            )
            for r in rows:
                pauses.setdefault(r.account_id, {})[r.symbol] = r.reason
            live: dict[str, list[JournalEntry]] = {}
            query = select(ORDERS).where(ORDERS.c.status.in_(sorted(LIVE_ORDER_STATUSES)))
            for r in conn.execute(query.order_by(ORDERS.c.seq)):
                live.setdefault(r.account_id, []).append(_journal_entry(r))
            return HotSnapshot(halts, pauses, {a: tuple(es) for a, es in live.items()})

        return self._read(work)

    def _version(self) -> int:
        """The SQLite file's change counter, within the store's time bound and error seam."""
        probe = self._probe
        assert probe is not None  # noqa: S101 (only installed with a probe)
        return self._call(probe.read, write=False)

    # ------------------------------------------------------------------ internals

    def schema_version(self) -> int:
        """Return the schema version recorded in the database."""
        return self._read(
            lambda conn: int(conn.execute(select(SCHEMA_VERSION_TABLE.c.version)).scalar_one())
        )

    @property
    def _schema_budget(self) -> float:
        return max(self.timeout, _SCHEMA_BUDGET_S)

    def _create_or_migrate(self) -> None:
        with self._engine.begin() as conn:
            if self.dialect == "postgresql":
                budget_ms = round(self._schema_budget * 1000)
                conn.execute(text(f"SET LOCAL statement_timeout = {budget_ms}"))
                conn.execute(text(f"SET LOCAL lock_timeout = {budget_ms}"))
                # Workers of a fleet start together: one creates or migrates, the others wait
                # and find it done (without it: "tuple concurrently updated" on the DDL).
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            METADATA.create_all(conn)
            for statement in APPEND_ONLY_DDL.get(self.dialect, []):
                conn.execute(text(statement))
            found = conn.execute(select(SCHEMA_VERSION_TABLE.c.version)).scalar()
            if found is None:
                conn.execute(
                    insert(SCHEMA_VERSION_TABLE).values(
                        version=SCHEMA_VERSION, applied_at=self._clock.time()
                    )
                )
            elif found < SCHEMA_VERSION:
                # 1 -> 2 added bg_fences, which create_all above has just made; 2 -> 3 adds
                # bg_orders.deadline, which create_all does not add to an existing table;
                # 3 -> 4 keys bg_fences by (namespace, account), keeping every fence;
                # 4 -> 5 added bg_holdings, 5 -> 6 bg_entries, which create_all above made.
                columns = {c["name"] for c in inspect(conn).get_columns(ORDERS.name)}
                if "deadline" not in columns:
                    conn.execute(text("ALTER TABLE bg_orders ADD COLUMN deadline FLOAT"))
                _migrate_fences(conn)
                conn.execute(update(SCHEMA_VERSION_TABLE).values(version=SCHEMA_VERSION))
            elif found > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the store at {self.safe_url} has schema version {found}, newer than this "
                    f"brokerguard ({SCHEMA_VERSION}); upgrade brokerguard instead of downgrading "
                    "the data"
                )
            # Versions below SCHEMA_VERSION would be migrated here, one step at a time.

    def _audit(  # noqa: PLR0917 (a private helper mirroring the audit record's columns)
        self,
        conn: Connection,
        account_id: str | None,
        action: str,
        actor: str,
        reason: str,
        details: Mapping[str, Any],
        now: float,
    ) -> None:
        if self._fence is not None:
            details = {**details, "fence_token": self._fence.token, "worker": self._fence.holder}
        conn.execute(
            insert(AUDIT_LOG).values(
                at=now,
                account_id=account_id,
                action=action,
                actor=actor,
                reason=reason,
                details=json.dumps(dict(details), sort_keys=True, default=str),
            )
        )

    def _check_fence(self, conn: Connection, fence: _Fence) -> None:
        """Record the fence's token as the account's highest, or refuse it as stale.

        Runs in the write's own transaction, so a refused write changes nothing.
        """
        held = self._raise_fence(conn, fence)
        if held is not None:
            raise LeaseLostError(
                f"fencing token {fence.token} of {fence.holder or 'this worker'} for account "
                f"{fence.account_id} is stale (the store has seen {held}): another lease holds "
                "the account now; nothing was written"
            )

    def _raise_fence(self, conn: Connection, fence: _Fence) -> int | None:
        """Make the fence the account's mark if it is newer; None, or the mark that refused it.

        Newer: a higher token, or the same token from the holder that set it. The row stays
        locked until the transaction ends, so a claim and a write on one account take turns.
        """
        upsert = sqlite_insert if self.dialect == "sqlite" else postgresql_insert
        statement = upsert(FENCES).values(
            namespace=fence.namespace,
            account_id=fence.account_id,
            token=fence.token,
            holder=fence.holder,
            updated_at=self._clock.time(),
        )
        guarded = statement.on_conflict_do_update(
            index_elements=[FENCES.c.namespace, FENCES.c.account_id],
            set_={
                "token": statement.excluded.token,
                "holder": statement.excluded.holder,
                "updated_at": statement.excluded.updated_at,
            },
            where=or_(
                FENCES.c.token < statement.excluded.token,
                and_(
                    FENCES.c.token == statement.excluded.token,
                    FENCES.c.holder == statement.excluded.holder,
                ),
            ),
        ).returning(FENCES.c.token)
        # RETURNING, not rowcount: psycopg reports -1 for an upsert whose WHERE refused it.
        if conn.execute(guarded).first() is not None:
            return None
        held = conn.execute(
            select(FENCES.c.token).where(
                FENCES.c.namespace == fence.namespace, FENCES.c.account_id == fence.account_id
            )
        ).scalar()
        return int(held) if held is not None else fence.token

    def _audit_note(
        self, conn: Connection, account_id: str | None, note: AuditNote, now: float
    ) -> None:
        _require("action", note.action)
        _require("actor", note.actor)
        self._audit(conn, account_id, note.action, note.actor, note.reason, note.details, now)

    def _write(self, work: Callable[[Connection], T], *, hot: bool = True) -> T:
        """Run `work` in one transaction (fenced); `hot`: it may change a cached table."""
        fence = self._fence

        def run(conn: Connection) -> T:
            if fence is not None:
                self._check_fence(conn, fence)
            return work(conn)

        try:
            return self._call(lambda: self._transaction(run), write=True)
        finally:
            if hot:
                # Committed or not (a lost answer may still have committed): never read the
                # state from before this write again.
                self._hot.wrote()

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        with self._engine.begin() as conn:
            return work(conn)

    def _read(self, work: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self._engine.connect() as conn:
                return work(conn)

        return self._call(run, write=False)

    def _call(self, run: Callable[[], T], *, write: bool, budget: float | None = None) -> T:
        """Run one store call: its turn, its connection and its answers within the timeout."""
        seconds = self.timeout if budget is None else budget
        locks = [self._any_lock, self._write_lock if write else None]
        taken: list[threading.Lock | threading.RLock] = []
        with call_deadline(seconds):
            try:
                for lock in locks:
                    if lock is None:
                        continue
                    if not lock.acquire(timeout=max(remaining(seconds), 0.0)):
                        raise StoreUnavailableError(
                            f"state store {self.safe_url} busy: no turn within "
                            f"{seconds:g}s (another call holds it)"
                        )
                    taken.append(lock)
                return self._guard(run)
            finally:
                for lock in reversed(taken):
                    lock.release()

    def _guard(self, run: Callable[[], T]) -> T:
        try:
            return run()
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(
                f"state store {self.safe_url} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"StateStore({self.safe_url!r})"


_SCHEMA_LOCK: Final = 0x6267_7363_6865_6D61  # "bgschema": the advisory lock of the DDL


def _sent_key(account_id: str, client_order_id: str) -> ColumnElement[bool]:
    return (SENT_ORDERS.c.account_id == account_id) & (
        SENT_ORDERS.c.client_order_id == client_order_id
    )


def _request_json(request: OrderRequest) -> str:
    """The request as JSON, every field of it: decimals as exact strings, enums as values.

    Every field, so a field added to OrderRequest survives a restart without a change here.
    """
    return json.dumps(
        {f.name: _plain(getattr(request, f.name)) for f in fields(request)}, sort_keys=True
    )


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)  # exact: never a float
    if isinstance(value, Enum):
        return value.value
    return value


def _sent_order(r: Any) -> SentOrder:
    try:
        request = OrderRequest(**json.loads(r.request))  # validated again, as any request
    except (ValueError, TypeError, BrokerGuardError) as exc:
        raise _unreadable(r, f"{type(exc).__name__}: {exc}") from exc
    if request.client_order_id != r.client_order_id:  # a tampered row names another order
        raise _unreadable(r, f"its request names order {request.client_order_id!r}")
    return SentOrder(
        r.account_id, request, r.state, r.absent_after, r.sent_at, r.updated_at, r.token
    )


def _unreadable(r: Any, why: str) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"the kept order {r.client_order_id!r} of account {r.account_id!r} cannot be read "
        f"({why}): no order is sent until it is mended"
    )


def _journal_entry(r: Any) -> JournalEntry:
    return JournalEntry(
        r.client_order_id,
        r.account_id,
        r.symbol,
        r.side,
        Decimal(r.quantity),
        r.status,
        r.broker_order_id,
        r.purpose,
        r.created_at,
        r.updated_at,
        r.deadline,
    )


class _SqliteVersion:
    """SQLite's ``PRAGMA data_version`` on a connection of its own.

    The value changes whenever *another* connection (another process, or another connection
    of this process's pool) commits, so a cache checked against it is never stale; reading it
    costs a few microseconds. Opened on first use, so an unreachable file fails the read that
    needed it (closed) rather than the constructor.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def of(cls, engine: Engine, timeout: float) -> _SqliteVersion | None:
        """The counter of `engine`'s file: the path SQLAlchemy itself opens (decoded, no query)."""
        path = engine.url.database
        if engine.dialect.name != "sqlite" or path in {None, "", ":memory:"}:
            return None  # in memory: one connection, only this process writes (generations)
        assert path is not None  # noqa: S101 (for the type checker; excluded above)
        return cls(path, timeout)

    def read(self) -> int:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = sqlite3.connect(
                        self._path, timeout=self._timeout, check_same_thread=False
                    )
                row = self._conn.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error as exc:
                self._drop()
                raise StoreUnavailableError(
                    f"state store sqlite:///{self._path} failed: {type(exc).__name__}: {exc}"
                ) from exc
            return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _make_engine(
    url: str, timeout: float, password: str | None = None, pool_size: int | None = None
) -> Engine:
    if url in {"memory://", "sqlite://", "sqlite:///:memory:"}:
        # One shared connection, or each thread would see its own empty in-memory database.
        engine = create_engine(
            "sqlite://",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
        _sqlite_pragmas(engine, wal=False, timeout=timeout)
        return engine
    if url.startswith("sqlite:///"):
        engine = create_engine(url, connect_args={"timeout": timeout, "check_same_thread": False})
        _sqlite_pragmas(engine, wal=True, timeout=timeout)
        return engine
    if url.startswith(("postgresql://", "postgres://")):
        return _postgresql_engine(
            "postgresql+psycopg://" + url.split("://", 1)[1], timeout, password, pool_size
        )
    if url.startswith("postgresql+"):
        return _postgresql_engine(url, timeout, password, pool_size)
    raise ConfigurationError(
        f"unsupported store URL {url.split('://', 1)[0]}://...: use sqlite:///path, "
        "sqlite:// (in memory) or postgresql://"
    )


def _postgresql_engine(
    url: str, timeout: float, password: str | None = None, pool_size: int | None = None
) -> Engine:
    """A pooled PostgreSQL engine whose every connect, statement, lock and wait is bounded.

    No pre-ping: it cost a round trip before every call. A connection the server dropped
    (a restart) fails its next call as STORE_UNAVAILABLE, which is closed, and SQLAlchemy
    then discards it and every older pooled connection, so the call after succeeds.
    """
    if make_url(url).get_driver_name() != "psycopg":
        raise ConfigurationError("a postgresql store needs the psycopg (3) driver")
    from brokerguard.store._postgres import bound_engine  # noqa: PLC0415 (optional dependency)

    engine = create_engine(
        url,
        connect_args={} if password is None else {"password": password},
        pool_size=5 if pool_size is None else pool_size,
        max_overflow=10 if pool_size is None else pool_size,
        pool_timeout=timeout,
    )
    bound_engine(engine, timeout)
    return engine


def _sqlite_pragmas(engine: Engine, *, wal: bool, timeout: float) -> None:
    busy_ms = max(1, round(timeout * 1000))

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a committed halt survives a power cut
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")  # a busy database: wait, boundedly
        cursor.close()


def _migrate_fences(conn: Connection) -> None:
    """Schema 3 -> 4: key bg_fences by (namespace, account), keeping every fence unscoped."""
    columns = {c["name"] for c in inspect(conn).get_columns(FENCES.name)}
    if "namespace" in columns:
        return  # made by create_all in this very version
    kept = conn.execute(text("SELECT account_id, token, updated_at FROM bg_fences")).all()
    conn.execute(text("DROP TABLE bg_fences"))
    FENCES.create(conn)
    if kept:
        conn.execute(
            insert(FENCES),
            [
                {
                    "namespace": "",
                    "account_id": account,
                    "token": token,
                    "holder": "",
                    "updated_at": at,
                }
                for account, token, at in kept
            ],
        )


def _require(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
