"""The pre-trade gate: before any entry, is there a slot, and is everything known?

:meth:`TradingGate.check_entry` answers with a :class:`Decision`: allowed, or refused with a
stable reason code and details (``POSITION_CAP_REACHED: open=8 reserved=0 cap=8``). The same
codes are metric labels and CLI text. Unknown means deny: a halt the store cannot confirm, a
broker whose circuit is not closed, a paused symbol, positions that could not be fetched or are
older than ``max_position_age``.

A broker whose reads are DEGRADED (closed, but the last read failed) is not trusted with a
cached count: the gate fetches the positions afresh, and refuses if that fails. Without this,
entries stayed allowed on a 20-second-old count for the ~10 s an outage takes to open the
circuit (bench/time_to_safety.py).

:meth:`TradingGate.reserve_entry` takes a slot atomically for the duration of an entry, so 64
threads racing for 8 slots get 8. A filled entry keeps its slot until a position snapshot
fetched *after* the fill shows the position: a stale snapshot can never free a slot. An entry
whose outcome is unknown keeps its slot too: the slot is given back only when the block was
cancelled or failed in a way that proves nothing was placed (refused by brokerguard, or
rejected by the broker); an order left unresolved (:mod:`brokerguard.orders`) holds its slot
until the broker finds it or proves it absent, and its symbol is not entered again meanwhile
(``ORDER_UNRESOLVED``). A successful position read that lost positions nothing explains is not
believed (``POSITIONS_IMPLAUSIBLE``) until agreeing reads confirm it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from brokerguard._validation import int_problem, seconds_problem
from brokerguard.brokers.base import BaseBroker, PositionSnapshot
from brokerguard.clock import Clock
from brokerguard.errors import (
    BlockedError,
    BrokerGuardError,
    BrokerRejection,
    ConfigurationError,
    CoordinationUnavailableError,
    InvalidBrokerData,
    OrderUnconfirmedError,
    PositionsImplausibleError,
)
from brokerguard.models import Side, parse_symbol
from brokerguard.orders import LIVE_STATES, OrderState
from brokerguard.resilience.state import BrokerHealthState
from brokerguard.store.state import AccountState, StateStore

if TYPE_CHECKING:  # the fleet's slots are optional (they need redis)
    from brokerguard.coordination.slots import SharedSlots

__all__ = [
    "ACCOUNT_HALTED",
    "ACCOUNT_REDUCING",
    "ALLOWED",
    "BROKER_OFFLINE",
    "COORDINATION_UNAVAILABLE",
    "INVALID_SYMBOL",
    "ORDER_UNRESOLVED",
    "POSITIONS_IMPLAUSIBLE",
    "POSITIONS_UNKNOWN",
    "POSITION_CAP_REACHED",
    "RISK_REDUCING",
    "STORE_UNAVAILABLE",
    "SYMBOL_PAUSED",
    "Decision",
    "EntryDenied",
    "Reservation",
    "TradingGate",
    "TradingState",
]

log = logging.getLogger("brokerguard.gate")

ALLOWED: Final = "ALLOWED"
RISK_REDUCING: Final = "RISK_REDUCING"
ACCOUNT_HALTED: Final = "ACCOUNT_HALTED"
ACCOUNT_REDUCING: Final = "ACCOUNT_REDUCING"
"""The account holds more positions than its cap: only risk-reducing orders until it does not."""
INVALID_SYMBOL: Final = "INVALID_SYMBOL"
BROKER_OFFLINE: Final = "BROKER_OFFLINE"
SYMBOL_PAUSED: Final = "SYMBOL_PAUSED"
POSITIONS_UNKNOWN: Final = "POSITIONS_UNKNOWN"
POSITION_CAP_REACHED: Final = "POSITION_CAP_REACHED"
STORE_UNAVAILABLE: Final = "STORE_UNAVAILABLE"
COORDINATION_UNAVAILABLE: Final = "COORDINATION_UNAVAILABLE"
POSITIONS_IMPLAUSIBLE: Final = "POSITIONS_IMPLAUSIBLE"
"""A successful read lost positions that nothing explains; believed only once confirmed."""
ORDER_UNRESOLVED: Final = "ORDER_UNRESOLVED"
"""An order in this symbol has an unknown outcome: the symbol is not entered again until it is
found or proven absent."""


_NEVER_PLACED: Final = frozenset({OrderState.NOT_PLACED, OrderState.REJECTED})


class TradingState(StrEnum):
    """What an account may do."""

    ACTIVE = "active"
    """Entries and exits."""
    REDUCING = "reducing"
    """Over the cap (or positions unknown): only risk-reducing orders."""
    HALTED = "halted"
    """Halted until an operator resumes: only risk-reducing orders."""


@dataclass(frozen=True, slots=True)
class Decision:
    """An answer of the gate: allowed or not, with a stable reason code and its details.

    ``reason`` reads ``"CODE: key=value key=value"``; ``code`` is the part before the colon.
    A Decision is truthy when allowed.
    """

    allowed: bool
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def allow(cls, code: str = "ALLOWED", **details: Any) -> Decision:
        """Build an allowing decision whose reason renders `code` and `details`."""
        return cls(allowed=True, reason=_render(code, details), details=details)

    @classmethod
    def deny(cls, code: str, **details: Any) -> Decision:
        """Build a refusal whose reason renders `code` and `details`."""
        return cls(allowed=False, reason=_render(code, details), details=details)

    @property
    def code(self) -> str:
        """The stable reason code (``POSITION_CAP_REACHED`` ...)."""
        return self.reason.split(":", 1)[0]

    def __bool__(self) -> bool:
        return self.allowed


def _render(code: str, details: Mapping[str, Any]) -> str:
    text = " ".join(f"{k}={v}" for k, v in details.items())
    return f"{code}: {text}" if text else code


class EntryDenied(BlockedError):  # noqa: N818 (the name is the documented contract)
    """An entry was refused by the gate; :attr:`decision` says why."""

    def __init__(self, decision: Decision, *, account_id: str, symbol: str) -> None:
        super().__init__(f"entry in {symbol} on account {account_id} refused: {decision.reason}")
        self.decision = decision
        self.account_id = account_id
        self.symbol = symbol


@dataclass
class Reservation:
    """A slot held for one entry. Call :meth:`cancel` if the order did not fill."""

    symbol: str
    token: int
    cancelled: bool = False
    started: float = 0.0
    """When the slot was taken (monotonic): orders sent for the symbol since then are its."""

    def cancel(self) -> None:
        """Give the slot back when leaving the ``with`` block (the entry did not happen)."""
        self.cancelled = True


class _AskTheCircuits(Exception):  # noqa: N818 (control flow inside the gate, never escapes)
    """A one-trip fleet decision met something only the usual order of checks may decide."""


class TradingGate:
    """Refuse new positions when anything is unknown, stale, halted, paused or at the cap.

    Args:
        broker: the guarded broker of the account.
        max_positions: the cap of open positions (plus reserved entries).
        store: where halts and paused symbols are read (None: no halts, no pauses).
        clock: the time source (default: the broker's).
        max_position_age: seconds after which the broker's last position snapshot is too old
            and the gate fetches a fresh one (a failed fetch means refuse).
        pending_entry_ttl: seconds a filled entry keeps its slot while no snapshot shows it.
        position_memory: seconds a symbol seen held keeps its slot after snapshots stop showing
            it. A broker that answers with an older state (or a slow fetch landing last) must
            not free a slot: a position disappears from the count only when no snapshot has
            shown it for this long. The price is that a closed position's slot frees this much
            later.
        refetch_when_degraded: True (default): while the read breaker is DEGRADED, a cached
            snapshot is not enough; the gate fetches afresh (refusing if that fails).
        slots: in a fleet, :class:`~brokerguard.coordination.SharedSlots`: every reservation
            is also taken fleet-wide, so processes sharing an account share its cap (Redis
            unreachable: COORDINATION_UNAVAILABLE). With the fleet's shared circuits on the
            same coordinator, one script checks them and takes the slot: a reservation is one
            round trip, its end a second.
        count_dust: as for the cap enforcer: False (default) leaves holdings below the venue's
            minimum order quantity out of the slot count.
    """

    def __init__(
        self,
        broker: BaseBroker,
        max_positions: int,
        *,
        store: StateStore | None = None,
        clock: Clock | None = None,
        max_position_age: float = 30.0,
        pending_entry_ttl: float = 600.0,
        position_memory: float = 60.0,
        refetch_when_degraded: bool = True,
        slots: SharedSlots | None = None,
        count_dust: bool = False,
    ) -> None:
        problems = [
            *int_problem("max_positions", max_positions, minimum=0),
            *seconds_problem("max_position_age", max_position_age, allow_zero=False),
            *seconds_problem("pending_entry_ttl", pending_entry_ttl, allow_zero=False),
            *seconds_problem("position_memory", position_memory),
        ]
        if problems:
            raise ConfigurationError("invalid TradingGate: " + "; ".join(problems))
        self.broker = broker
        self.max_positions = max_positions
        self.store = store
        if store is not None:
            broker.keep_holdings_in(store)  # a restart judges its first read against them
            broker.keep_orders_in(store)  # and never resends what the last run sent
        self.clock = clock if clock is not None else broker.clock
        self.max_position_age = float(max_position_age)
        self.pending_entry_ttl = float(pending_entry_ttl)
        self.position_memory = float(position_memory)
        self.refetch_when_degraded = refetch_when_degraded
        self.slots = slots
        self.count_dust = count_dust
        self._fleet_tokens: dict[int, str] = {}  # local token -> the fleet's reservation
        self._seen: dict[str, float] = {}  # symbol -> start of the latest fetch that showed it
        self._listeners: list[Callable[[str, Decision], object]] = []
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._reserved: dict[int, str] = {}
        # symbol -> its entries not yet seen in a snapshot: (monotonic time the entry
        # completed, its client order id when known); one symbol may have several.
        self._filled: dict[str, list[tuple[float, str | None]]] = {}
        # client order id of a filled entry -> when the gate first saw its order no longer live
        self._ended: dict[str, float] = {}

    @property
    def account_id(self) -> str:
        """The account this gate guards."""
        return self.broker.account_id

    def add_listener(self, listener: Callable[[str, Decision], object]) -> None:
        """Call ``listener(account_id, decision)`` for every entry decision (metrics, audit)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ decisions

    def check_entry(self, symbol: str) -> Decision:
        """Return whether a new position in `symbol` may be opened now (takes no slot).

        Never more permissive than :meth:`reserve_entry`: in a fleet it reads the fleet's
        reservations too (and refuses when Redis cannot be asked).
        """
        decision, _ = self._decide(symbol, reserve=False)
        self._announce(decision)
        return decision

    @contextmanager
    def reserve_entry(self, symbol: str) -> Iterator[Reservation]:
        """Hold a slot while the entry is placed; raise EntryDenied if none is free.

        The slot is given back when :meth:`Reservation.cancel` was called or the block raised
        a proof that nothing was placed (a refusal by brokerguard, a rejection by the broker);
        otherwise the entry counts as an open position until a fresh snapshot shows it, the
        broker proves its order was never placed, or ``pending_entry_ttl`` passes.
        """
        decision, token = self._decide(symbol, reserve=True)
        self._announce(decision)
        if token is None:
            raise EntryDenied(decision, account_id=self.account_id, symbol=symbol)
        reservation = Reservation(parse_symbol(symbol), token, started=self.clock.monotonic())
        try:
            yield reservation
        except BaseException as exc:
            # Give the slot back only on proof that nothing was placed: the block was cancelled
            # or refused, and no buy it sent may have filled. Anything else may have reached the
            # broker, and the slot stays taken until a snapshot or the broker says.
            sent = self.broker.sent_since(reservation.symbol, Side.BUY, reservation.started)
            refused = reservation.cancelled or isinstance(exc, BlockedError | BrokerRejection)
            cids: list[str | None] = list(sent)
            if isinstance(exc, OrderUnconfirmedError) and exc.client_order_id not in sent:
                cids.append(exc.client_order_id)
            self._release(token, filled=bool(cids) or not refused, client_order_ids=cids)
            raise
        sent = self.broker.sent_since(reservation.symbol, Side.BUY, reservation.started)
        # A cancelled reservation whose block sent a buy that may have filled keeps its slot.
        self._release(
            token, filled=not reservation.cancelled or bool(sent), client_order_ids=list(sent)
        )

    def hold_slot(self, symbol: str) -> tuple[Decision, int | None]:
        """Take a slot outside a ``with`` block (the HTTP API's reservations): (decision, token).

        The token is None when refused. Give it back with :meth:`settle_slot`; until then the
        slot counts as reserved.
        """
        decision, token = self._decide(symbol, reserve=True)
        self._announce(decision)
        return decision, token

    def settle_slot(self, token: int, *, placed: bool, client_order_id: str | None) -> None:
        """End a :meth:`hold_slot`.

        Placed (or possibly placed) keeps the slot as a filled entry until a snapshot shows it;
        not placed gives it back.
        """
        self._release(token, filled=placed, client_order_ids=[client_order_id])

    def remember_entry(self, symbol: str, client_order_id: str | None) -> None:
        """Count an entry of unknown outcome (one a restart found reserved).

        It keeps a slot until a snapshot shows the position, the broker proves it absent, or
        ``pending_entry_ttl`` passes.
        """
        with self._lock:
            self._filled.setdefault(parse_symbol(symbol), []).append(
                (self.clock.monotonic(), client_order_id)
            )

    def check_exit(self, symbol: str) -> Decision:
        """Risk-reducing orders stay allowed when halted or over the cap, not when paused."""
        try:
            symbol = parse_symbol(symbol)
        except InvalidBrokerData as exc:
            return Decision.deny(INVALID_SYMBOL, symbol=repr(symbol), reason=exc.reason)
        paused = self._paused(self._account_state(), symbol)
        if paused is not None:
            return paused
        return Decision.allow(RISK_REDUCING, symbol=symbol)

    def trading_state(self) -> TradingState:
        """HALTED, REDUCING (over the cap, or positions unknown) or ACTIVE."""
        try:
            if self.store is not None and self.store.is_halted(self.account_id):
                return TradingState.HALTED
        except BrokerGuardError:
            return TradingState.HALTED  # the halt cannot be ruled out
        snapshot = self.broker.last_position_snapshot()
        if (
            snapshot is None
            or snapshot.count > self.max_positions
            or self.broker.position_suspicion() is not None
        ):
            return TradingState.REDUCING
        return TradingState.ACTIVE

    # ------------------------------------------------------------------ internals

    def _announce(self, decision: Decision) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(self.account_id, decision)
            except Exception:
                log.exception("gate listener %r failed", listener)

    def _decide(self, raw_symbol: str, *, reserve: bool) -> tuple[Decision, int | None]:
        slots = self.slots
        if slots is not None and slots.checks_circuits(
            self.broker.read_breaker, self.broker.write_breaker
        ):
            # In a fleet the slots' own script reads the shared circuits (one round trip, not
            # four); whatever it cannot settle is decided again the usual way.
            try:
                return self._decide_once(raw_symbol, reserve=reserve, one_trip=True)
            except _AskTheCircuits:
                pass
        return self._decide_once(raw_symbol, reserve=reserve, one_trip=False)

    def _decide_once(
        self, raw_symbol: str, *, reserve: bool, one_trip: bool
    ) -> tuple[Decision, int | None]:
        """Decide; with `one_trip`, leave the circuits to the fleet slots' script.

        A one-trip decision raises :class:`_AskTheCircuits` wherever the circuits would have
        been asked first: a refusal that ranks after them, a fetch that goes through them.
        """
        try:
            # The form the broker will trade: case, whitespace and aliases (XBT) folded.
            symbol = parse_symbol(raw_symbol)
        except InvalidBrokerData as exc:
            return Decision.deny(INVALID_SYMBOL, symbol=repr(raw_symbol), reason=exc.reason), None
        # One read of the account's halt and pauses (from the store's bounded cache).
        account = self._account_state()
        checks: tuple[Callable[[], Decision | None], ...] = (
            lambda: self._halted(account),
            (lambda: None) if one_trip else self._broker_offline,  # one trip: in the script
            lambda: self._paused(account, symbol),
            lambda: self._unresolved(symbol),
            self._implausible,
        )
        for index, check in enumerate(checks):
            denied = check()
            if denied is not None:
                if one_trip and index > 1:
                    raise _AskTheCircuits  # an open circuit would have been the answer
                return denied, None
        snapshot = self._fresh_snapshot(one_trip=one_trip)
        if isinstance(snapshot, Decision):
            return snapshot, None
        stale_listing = self._refresh_open_orders(one_trip=one_trip)
        if stale_listing is not None:
            return stale_listing, None
        unresolved_buys = {
            o.symbol for o in self.broker.unresolved_orders() if o.request.side is Side.BUY
        }
        # A resting buy opens a position when it fills: it holds a slot like a held symbol.
        resting_buys = {o.symbol for o in self.broker.known_open_orders() if o.side is Side.BUY}
        with self._lock:
            self._absorb(snapshot)
            return self._take_slot(
                symbol,
                set(self._seen) | set(self._filled) | unresolved_buys | resting_buys,
                reserve=reserve,
                one_trip=one_trip,
            )

    def _take_slot(
        self, symbol: str, held: set[str], *, reserve: bool, one_trip: bool = False
    ) -> tuple[Decision, int | None]:
        """Count the slots and, for a reservation, take one (caller holds the lock)."""
        if len(held) > self.max_positions:
            if one_trip:
                raise _AskTheCircuits  # an open circuit would have been the answer
            # REDUCING: over the cap, only risk-reducing orders (adding to a held symbol adds
            # risk too).
            return Decision.deny(ACCOUNT_REDUCING, open=len(held), cap=self.max_positions), None
        reserved = set(self._reserved.values())
        if not reserve:
            fleet_held = self._fleet_occupied(one_trip=one_trip)
            if isinstance(fleet_held, Decision):
                return fleet_held, None
            reserved |= fleet_held
        occupied = held | reserved
        if symbol not in occupied and len(occupied) >= self.max_positions:
            if one_trip and reserve:  # (a check has read the circuits with the fleet's slots)
                raise _AskTheCircuits  # an open circuit would have been the answer
            return (
                Decision.deny(
                    POSITION_CAP_REACHED,
                    open=len(held),
                    reserved=len(reserved - held),
                    cap=self.max_positions,
                ),
                None,
            )
        token = None
        if reserve:
            fleet = self._reserve_in_fleet(symbol, occupied, one_trip=one_trip)
            if isinstance(fleet, Decision):
                return fleet, None
            token = next(self._tokens)
            self._reserved[token] = symbol
            if fleet is not None:
                self._fleet_tokens[token] = fleet
        return (
            Decision.allow(
                ALLOWED,
                open=len(held),
                reserved=len(reserved - held) + (reserve and symbol not in occupied),
                cap=self.max_positions,
            ),
            token,
        )

    def _account_state(self) -> AccountState | Decision | None:
        """The account's halt and paused symbols in one store read (None without a store)."""
        if self.store is None:
            return None
        try:
            return self.store.account_state(self.account_id)
        except BrokerGuardError as exc:
            return Decision.deny(STORE_UNAVAILABLE, error=type(exc).__name__)

    @staticmethod
    def _halted(account: AccountState | Decision | None) -> Decision | None:
        if account is None or isinstance(account, Decision):
            return account  # no store, or the store could not answer (refused)
        halt = account.halt
        if halt is None:
            return None
        return Decision.deny(ACCOUNT_HALTED, source=halt.source, since=f"{halt.halted_at:.0f}")

    def _broker_offline(self) -> Decision | None:
        if self.broker.is_trading_allowed():
            return None
        for breaker in (self.broker.read_breaker, self.broker.write_breaker):
            coordinator = getattr(breaker, "coordinator", None)  # a fleet's shared breaker
            if coordinator is not None and not coordinator.reachable:
                return Decision.deny(COORDINATION_UNAVAILABLE, store=coordinator.safe_url)
        return Decision.deny(
            BROKER_OFFLINE,
            broker=self.broker.broker_name,
            health=self.broker.get_broker_health_state(),
        )

    @staticmethod
    def _paused(account: AccountState | Decision | None, symbol: str) -> Decision | None:
        if account is None or isinstance(account, Decision):
            return account
        if symbol in account.paused:
            return Decision.deny(SYMBOL_PAUSED, symbol=symbol)
        return None

    def _unresolved(self, symbol: str) -> Decision | None:
        try:
            self.broker.refresh_kept_orders()  # another process's kept ones, within 1 s
        except BrokerGuardError as exc:
            log.warning(
                "entry check on account %s: kept orders unreadable (%s)", self.account_id, exc
            )
            return Decision.deny(STORE_UNAVAILABLE, error=type(exc).__name__)
        for order in self.broker.unresolved_orders():
            if order.symbol == symbol:
                return Decision.deny(
                    ORDER_UNRESOLVED,
                    symbol=symbol,
                    client_order_id=order.client_order_id,
                    state=order.state.value,
                )
        return None

    def _implausible(self) -> Decision | None:
        suspicion = self.broker.position_suspicion()
        if suspicion is None:
            return None
        return Decision.deny(
            POSITIONS_IMPLAUSIBLE, missing=",".join(suspicion.missing), agreeing=suspicion.agreeing
        )

    def _fresh_snapshot(self, *, one_trip: bool = False) -> PositionSnapshot | Decision:
        snapshot = self.broker.last_position_snapshot()
        now = self.clock.monotonic()
        if (
            snapshot is not None
            and snapshot.age(now) <= self.max_position_age
            and not (
                # one trip: the reservation's script refuses a degraded read circuit
                not one_trip
                and self.refetch_when_degraded
                and self.broker.read_breaker.get_broker_health_state() is BrokerHealthState.DEGRADED
            )
        ):
            return snapshot
        if one_trip:
            raise _AskTheCircuits  # a fetch goes through the circuits: they are asked first
        try:
            # Open orders first: a resting buy that fills between the two reads is then seen
            # twice (as an order and as a position), never not at all.
            self.broker.get_open_orders()
            self.broker.get_positions()
        except PositionsImplausibleError as exc:
            return Decision.deny(
                POSITIONS_IMPLAUSIBLE, missing=",".join(exc.missing), agreeing=exc.agreeing
            )
        except BrokerGuardError as exc:
            log.warning(
                "entry check on account %s: positions unknown (%s); refusing entries",
                self.account_id,
                exc,
            )
            return Decision.deny(POSITIONS_UNKNOWN, error=type(exc).__name__)
        fresh = self.broker.last_position_snapshot()
        if fresh is None:  # pragma: no cover (get_positions always records one)
            return Decision.deny(POSITIONS_UNKNOWN, error="no_snapshot")
        return fresh

    def _refresh_open_orders(self, *, one_trip: bool = False) -> Decision | None:
        """List open orders again when the last listing is older than ``max_position_age``.

        A snapshot kept fresh by someone else (the enforcer) does not list orders: a resting
        buy placed elsewhere would never be counted. Refuses when the listing fails.
        """
        if not self.broker.has_order_book:
            return None
        age = self.broker.open_orders_age(self.clock.monotonic())
        if age is not None and age <= self.max_position_age:
            return None
        if one_trip:
            raise _AskTheCircuits  # a fetch goes through the circuits: they are asked first
        try:
            self.broker.get_open_orders()
        except BrokerGuardError as exc:
            return Decision.deny(POSITIONS_UNKNOWN, error=type(exc).__name__, of="open_orders")
        return None

    def _absorb(self, snapshot: PositionSnapshot) -> None:
        """Fold a snapshot into the gate's memory of held symbols (caller holds the lock).

        A filled entry becomes an ordinary held symbol once a snapshot that started after the
        fill shows it; a held symbol is forgotten only after ``position_memory`` seconds in
        which no snapshot showed it.
        """
        now = self.clock.monotonic()
        shown = {
            p.symbol
            for p in snapshot.positions
            # Dust (below the venue's minimum quantity) occupies no slot, as in the enforcer.
            if self.count_dust or not self.broker.is_dust(p.symbol, p.quantity)
        }
        for symbol in shown:
            self._seen[symbol] = max(
                self._seen.get(symbol, snapshot.fetched_at), snapshot.fetched_at
            )
        for symbol, seen_at in list(self._seen.items()):
            if symbol not in shown and now - seen_at > self.position_memory:
                del self._seen[symbol]
        for symbol, entries in list(self._filled.items()):
            kept = [
                (filled_at, cid)
                for filled_at, cid in entries
                if not (symbol in shown and snapshot.fetched_at > filled_at)
                # the broker proved this one was never placed
                and not (cid is not None and self.broker.order_state(cid) in _NEVER_PLACED)
            ]
            expired = [
                (filled_at, cid)
                for filled_at, cid in kept
                if now - self._ttl_from(filled_at, cid, now) > self.pending_entry_ttl
            ]
            kept = [e for e in kept if e not in expired]
            for _, cid in set(entries) - set(kept):  # entries gone: their end times too
                self._ended.pop(cid or "", None)
            if kept:
                self._filled[symbol] = kept
            else:
                del self._filled[symbol]
            if expired:
                log.warning(
                    "entry in %s on account %s never showed in a position snapshot within "
                    "%.0fs; its slot is released",
                    symbol,
                    self.account_id,
                    self.pending_entry_ttl,
                )

    def _ttl_from(self, filled_at: float, cid: str | None, now: float) -> float:
        """When an entry's ``pending_entry_ttl`` started (caller holds the lock).

        At its reservation's end, unless its order ended having bought something: then when
        the gate first saw it ended. A limit buy may fill (in part) at any moment it rests, and
        a snapshot from before that fill does not show it: a buy that rested an hour, half
        filled, then was cancelled keeps its slot for the ttl after the gate saw its end (or
        until a snapshot shows the position), not one ttl after it was sent. An order still
        live (resting, unresolved) keeps its slot.
        """
        if cid is None:
            return filled_at
        if self.broker.order_state(cid) in LIVE_STATES:
            self._ended.pop(cid, None)
            return now
        bought = self.broker.final_fill(cid)
        if bought is None or bought <= 0:
            return filled_at
        return max(filled_at, self._ended.setdefault(cid, now))

    def _fleet_occupied(self, *, one_trip: bool = False) -> set[str] | Decision:
        """The symbols the fleet's live reservations hold (caller holds the lock).

        With `one_trip`, the same script first checks the fleet's circuits (raising
        :class:`_AskTheCircuits` when they do not admit new risk).
        """
        if self.slots is None:
            return set()
        try:
            if not one_trip:
                return set(self.slots.occupied(self.account_id))
            symbols = self.slots.occupied_if_trading(
                self.account_id,
                read=self.broker.read_breaker,
                write=self.broker.write_breaker,
                refuse_degraded_reads=self.refetch_when_degraded,
            )
        except CoordinationUnavailableError:
            return Decision.deny(COORDINATION_UNAVAILABLE, store=self.slots.coordinator.safe_url)
        if symbols is None:
            raise _AskTheCircuits
        return set(symbols)

    def _reserve_in_fleet(
        self, symbol: str, occupied: set[str], *, one_trip: bool = False
    ) -> str | Decision | None:
        """Take the slot fleet-wide too (caller holds the lock); a Decision when refused.

        With `one_trip`, the same script first checks the fleet's circuits (raising
        :class:`_AskTheCircuits` when they do not admit new risk: nothing was taken).
        """
        if self.slots is None:
            return None
        try:
            if one_trip:
                answer = self.slots.reserve_if_trading(
                    self.account_id,
                    symbol,
                    self.max_positions,
                    occupied,
                    read=self.broker.read_breaker,
                    write=self.broker.write_breaker,
                    refuse_degraded_reads=self.refetch_when_degraded,
                )
                if not answer.trading:
                    raise _AskTheCircuits
                fleet = answer.token
            else:
                fleet = self.slots.reserve(self.account_id, symbol, self.max_positions, occupied)
        except CoordinationUnavailableError:
            return Decision.deny(COORDINATION_UNAVAILABLE, store=self.slots.coordinator.safe_url)
        if fleet is None:
            return Decision.deny(
                POSITION_CAP_REACHED, open=len(occupied), fleet="yes", cap=self.max_positions
            )
        return fleet

    def _release(
        self, token: int, *, filled: bool, client_order_ids: list[str | None] | None = None
    ) -> None:
        with self._lock:
            symbol = self._reserved.pop(token, None)
            if symbol is not None and filled:
                now = self.clock.monotonic()
                self._filled.setdefault(symbol, []).extend(
                    (now, cid) for cid in (client_order_ids or [None])
                )
            fleet = self._fleet_tokens.pop(token, None)
        if fleet is None or self.slots is None:
            return
        try:
            if filled:
                self.slots.filled(self.account_id, fleet, self.pending_entry_ttl)
            else:
                self.slots.release(self.account_id, fleet)
        except CoordinationUnavailableError as exc:
            # The reservation expires by itself; until then it only errs towards "full".
            log.warning("fleet slot %s of %s not updated: %s", fleet, self.account_id, exc)
