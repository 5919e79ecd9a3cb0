"""Pre-trade reservations for bots in other processes: reserve, report placed or not, expire.

The gate's ``reserve_entry`` is a ``with`` block around an order sent in the same process. A
bot in another process (or language) asks over HTTP instead: it reserves an entry, sends its
order with the client order id it gave, and reports the outcome. :class:`EntryBook` keeps those
reservations for one account.

The rules are the order-truth rules (:mod:`brokerguard.orders`): a slot is given back only on
evidence that nothing was placed. A bot saying "not placed" is checked against the broker (a
lookup of its client order id that finds the order keeps the slot); a reservation the bot never
reported is looked up when it expires, and absence counts only after the local deadline floor
plus the broker's margin (a venue can accept an order seconds after its submit timed out).
Until then the entry is ``unresolved`` and keeps its slot. Reservations are saved in the store,
so a restart keeps the slots of the ones still open.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Final

from brokerguard.brokers.base import LOCAL_DEADLINE_FLOOR_S
from brokerguard.clock import Clock
from brokerguard.errors import BrokerGuardError, InvalidBrokerData
from brokerguard.models import Side, parse_side, parse_symbol
from brokerguard.risk.gate import Decision, TradingGate
from brokerguard.store.state import StateStore

__all__ = [
    "DEFAULT_ENTRY_TTL_S",
    "ENTRY_PENDING",
    "Entry",
    "EntryBook",
    "EntryState",
    "UnknownReservationError",
]

log = logging.getLogger("brokerguard.entries")

DEFAULT_ENTRY_TTL_S: Final = 60.0
"""How long a reservation waits for the bot's report before the broker is asked."""

_IDEMPOTENCY_KEYS: Final = 10_000

SETTLED_ENTRY_MEMORY_S: Final = 3600.0
"""Seconds a settled (placed or released) reservation stays in memory for :meth:`EntryBook.get`.

Open ones (reserved, unresolved) are never forgotten: they hold slots. A settled one no longer
matters to any decision (its slot is the gate's now) and is in the store; without this bound
the book, and every scan of it, grew by one entry per reservation for as long as the process
ran. A restart already forgets settled reservations the same way.
"""

ENTRY_PENDING: Final = "ENTRY_PENDING"
"""Refusal code: the symbol has a buy reservation whose outcome is not reported yet."""


class EntryState(StrEnum):
    """Where a reservation is."""

    RESERVED = "reserved"
    """The slot is held; the bot has not reported."""
    PLACED = "placed"
    """The order was placed (the bot said so, or the broker showed it): the slot stays until
    a snapshot shows the position."""
    RELEASED = "released"
    """Proven not placed: the slot is free."""
    UNRESOLVED = "unresolved"
    """Not reported and not provably absent yet: the slot stays; looked up again later."""


_SETTLED = frozenset({EntryState.PLACED, EntryState.RELEASED})


class UnknownReservationError(BrokerGuardError):
    """No reservation with this id in this account."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One reservation, as the API shows it."""

    reservation_id: str
    account_id: str
    symbol: str
    side: Side
    client_order_id: str
    state: EntryState
    created_at: float
    """Epoch seconds."""
    expires_at: float
    """Epoch seconds: after it, the broker is asked instead of the bot."""
    decision: Decision
    order_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = asdict(self)
        data["side"] = self.side.value
        data["state"] = self.state.value
        data["decision"] = decision_dict(self.decision)
        return data


def decision_dict(decision: Decision) -> dict[str, Any]:
    """A gate decision as JSON-ready data."""
    return {
        "allowed": decision.allowed,
        "code": decision.code,
        "reason": decision.reason,
        "details": {k: v if isinstance(v, int | float | bool) else str(v) for k, v in
                    decision.details.items()},
    }  # fmt: skip


class EntryBook:
    """The pre-trade reservations of one account (thread-safe).

    Args:
        gate: the account's gate (slots are its slots).
        clock: the time source.
        store: where reservations are saved (None: memory only).
        ttl_s: seconds a reservation waits for the bot's report.
    """

    def __init__(
        self,
        gate: TradingGate,
        *,
        clock: Clock,
        store: StateStore | None = None,
        ttl_s: float = DEFAULT_ENTRY_TTL_S,
    ) -> None:
        self.gate = gate
        self.broker = gate.broker
        self.clock = clock
        self.store = store
        self.ttl_s = float(ttl_s)
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._tokens: dict[str, int] = {}  # reservation id -> the gate's slot token
        self._idempotent: OrderedDict[str, Entry | Decision] = OrderedDict()
        self._settled_at: dict[str, float] = {}  # reservation id -> when it settled (monotonic)
        self._sweep_at = clock.monotonic() + SETTLED_ENTRY_MEMORY_S / 8
        self._restore()

    @property
    def account_id(self) -> str:
        """The account."""
        return self.gate.account_id

    # ------------------------------------------------------------------ the bot's calls

    def reserve(
        self,
        symbol: str,
        side: Side | str,
        client_order_id: str,
        *,
        idempotency_key: str | None = None,
    ) -> Entry | Decision:
        """Reserve an entry: the Entry when allowed, else the gate's refusing Decision.

        A sell (risk reducing) takes no slot: it is checked with ``check_exit``. The same
        `idempotency_key` answers the same thing again without asking the gate twice.
        """
        with self._lock:
            if idempotency_key is not None and idempotency_key in self._idempotent:
                return self._idempotent[idempotency_key]
        symbol = parse_symbol(symbol)
        side = parse_side(side)
        client_order_id = parse_symbol(client_order_id, field="client_order_id")
        pending = self._pending_in(symbol) if side is Side.BUY else None
        if pending is not None:
            if pending.client_order_id == client_order_id:
                return self._remember(idempotency_key, pending)  # the same order asked again
            # A second entry while the first one's outcome is unknown: if both were sent, the
            # bot would hold the symbol twice over (a retry after a timeout does exactly this).
            return self._remember(
                idempotency_key,
                Decision.deny(
                    ENTRY_PENDING,
                    symbol=symbol,
                    reservation_id=pending.reservation_id,
                    state=pending.state.value,
                ),
            )
        if side is Side.SELL:
            decision, token = self.gate.check_exit(symbol), None
        else:
            decision, token = self.gate.hold_slot(symbol)
            if token is None:
                return self._remember(idempotency_key, decision)
        if not decision.allowed:
            return self._remember(idempotency_key, decision)
        now = self.clock.time()
        entry = Entry(
            reservation_id=uuid.uuid4().hex,
            account_id=self.account_id,
            symbol=symbol,
            side=side,
            client_order_id=client_order_id,
            state=EntryState.RESERVED if token is not None else EntryState.PLACED,
            created_at=now,
            expires_at=now + self.ttl_s,
            decision=decision,
        )
        with self._lock:
            self._entries[entry.reservation_id] = entry
            if token is not None:
                self._tokens[entry.reservation_id] = token
            else:
                self._settled_at[entry.reservation_id] = self.clock.monotonic()
            self._forget_settled()
        self._save(entry)
        return self._remember(idempotency_key, entry)

    def _forget_settled(self) -> None:
        """Drop settled reservations older than SETTLED_ENTRY_MEMORY_S (caller holds the lock).

        Runs at most every eighth of that horizon, so its walk is spread over many reservations.
        """
        now = self.clock.monotonic()
        if now < self._sweep_at:
            return
        self._sweep_at = now + SETTLED_ENTRY_MEMORY_S / 8
        horizon = now - SETTLED_ENTRY_MEMORY_S
        for rid, settled in list(self._settled_at.items()):
            entry = self._entries.get(rid)
            if entry is None or entry.state not in _SETTLED:
                del self._settled_at[rid]
            elif settled <= horizon:
                del self._entries[rid]
                del self._settled_at[rid]

    def placed(self, reservation_id: str, order_id: str | None) -> Entry:
        """The bot placed its order: the slot stays until a snapshot shows the position."""
        entry = self._get(reservation_id)
        if entry.state in {EntryState.PLACED, EntryState.RELEASED}:
            return entry  # reported twice, or too late: what is known stands
        return self._settle(entry, EntryState.PLACED, order_id=order_id)

    def release(self, reservation_id: str) -> Entry:
        """The bot says its order was not placed: checked with the broker before the slot goes.

        Found at the broker: ``placed`` after all. Not found: ``released``. The lookup failed:
        ``unresolved`` (the slot stays; the next sweep asks again).
        """
        entry = self._get(reservation_id)
        if entry.state in {EntryState.PLACED, EntryState.RELEASED}:
            return entry
        try:
            found = self.broker.get_order(entry.client_order_id)
        except (BrokerGuardError, InvalidBrokerData) as exc:
            log.warning(
                "entry %s of %s: the bot says not placed, but %s cannot be looked up (%s); "
                "the slot stays",
                reservation_id,
                self.account_id,
                entry.client_order_id,
                exc,
            )
            return self._mark(entry, EntryState.UNRESOLVED)
        if found is not None:
            return self._settle(entry, EntryState.PLACED, order_id=found.broker_order_id)
        return self._settle(entry, EntryState.RELEASED)

    def sweep(self) -> list[Entry]:
        """Resolve reservations the bot did not report in time; return those that changed.

        Each is looked up by its client order id: found, it is placed; not found after the
        local deadline floor and margin (the bot's order may carry no deadline), released;
        otherwise unresolved, keeping its slot.
        """
        now = self.clock.time()
        with self._lock:
            due = [
                e
                for e in self._entries.values()
                if e.state in {EntryState.RESERVED, EntryState.UNRESOLVED} and now >= e.expires_at
            ]
        changed = []
        for entry in due:
            try:
                found = self.broker.get_order(entry.client_order_id)
            except (BrokerGuardError, InvalidBrokerData):
                if entry.state is not EntryState.UNRESOLVED:
                    changed.append(self._mark(entry, EntryState.UNRESOLVED))
                continue
            absent_after = (
                entry.created_at + LOCAL_DEADLINE_FLOOR_S + self.broker.resolution_margin_s
            )
            if found is not None:
                changed.append(
                    self._settle(entry, EntryState.PLACED, order_id=found.broker_order_id)
                )
            elif now >= absent_after:
                changed.append(self._settle(entry, EntryState.RELEASED))
            elif entry.state is not EntryState.UNRESOLVED:
                changed.append(self._mark(entry, EntryState.UNRESOLVED))
        return changed

    def _pending_in(self, symbol: str) -> Entry | None:
        """The open (unreported or unresolved) buy reservation in `symbol`, if any."""
        with self._lock:
            return next(
                (
                    e
                    for e in self._entries.values()
                    if e.symbol == symbol
                    and e.side is Side.BUY
                    and e.state in {EntryState.RESERVED, EntryState.UNRESOLVED}
                ),
                None,
            )

    def get(self, reservation_id: str) -> Entry:
        """One reservation (UnknownReservationError if it is not this account's)."""
        return self._get(reservation_id)

    def open_entries(self) -> list[Entry]:
        """Reservations still holding a slot without a report (reserved or unresolved)."""
        with self._lock:
            return [
                e
                for e in self._entries.values()
                if e.state in {EntryState.RESERVED, EntryState.UNRESOLVED}
            ]

    # ------------------------------------------------------------------ internals

    def _get(self, reservation_id: str) -> Entry:
        with self._lock:
            entry = self._entries.get(reservation_id)
        if entry is None:
            raise UnknownReservationError(
                f"no reservation {reservation_id!r} in account {self.account_id}"
            )
        return entry

    def _settle(self, entry: Entry, state: EntryState, *, order_id: str | None = None) -> Entry:
        with self._lock:
            token = self._tokens.pop(entry.reservation_id, None)
        if token is not None:  # (one restored after a restart is counted as an entry already)
            self.gate.settle_slot(
                token, placed=state is EntryState.PLACED, client_order_id=entry.client_order_id
            )
        return self._mark(entry, state, order_id=order_id)

    def _mark(self, entry: Entry, state: EntryState, *, order_id: str | None = None) -> Entry:
        updated = replace(entry, state=state, order_id=order_id or entry.order_id)
        with self._lock:
            self._entries[entry.reservation_id] = updated
            if state in _SETTLED:
                self._settled_at[entry.reservation_id] = self.clock.monotonic()
        self._save(updated)
        log.info(
            "entry %s of %s (%s %s, %s): %s",
            entry.reservation_id,
            self.account_id,
            entry.side.value,
            entry.symbol,
            entry.client_order_id,
            state.value,
        )
        return updated

    def _remember(self, key: str | None, answer: Entry | Decision) -> Entry | Decision:
        if key is not None:
            with self._lock:
                self._idempotent[key] = answer
                while len(self._idempotent) > _IDEMPOTENCY_KEYS:
                    self._idempotent.popitem(last=False)
        return answer

    def _save(self, entry: Entry) -> None:
        if self.store is None:
            return
        row = {
            "reservation_id": entry.reservation_id,
            "account_id": entry.account_id,
            "symbol": entry.symbol,
            "side": entry.side.value,
            "client_order_id": entry.client_order_id,
            "state": entry.state.value,
            "order_id": entry.order_id,
            "created_at": entry.created_at,
            "expires_at": entry.expires_at,
        }
        try:
            self.store.save_entry(row)
        except BrokerGuardError as exc:
            log.error("entry %s of %s not saved: %s", entry.reservation_id, self.account_id, exc)

    def _restore(self) -> None:
        """Reservations a previous run left open keep their slots (as unresolved entries)."""
        if self.store is None:
            return
        try:
            rows = self.store.open_entries(self.account_id)
        except BrokerGuardError as exc:
            log.error("open entries of %s could not be read: %s", self.account_id, exc)
            return
        for row in rows:
            entry = Entry(
                reservation_id=row["reservation_id"],
                account_id=row["account_id"],
                symbol=row["symbol"],
                side=parse_side(row["side"]),
                client_order_id=row["client_order_id"],
                state=EntryState.UNRESOLVED,
                created_at=row["created_at"],
                expires_at=row["expires_at"],
                decision=Decision.allow("RESTORED"),
                order_id=row["order_id"],
            )
            self._entries[entry.reservation_id] = entry
            if entry.side is Side.BUY:
                self.gate.remember_entry(entry.symbol, entry.client_order_id)
