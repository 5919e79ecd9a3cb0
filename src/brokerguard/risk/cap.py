"""The hard position cap: liquidate the excess, verify, and halt if it cannot be restored.

Each cycle fetches the positions, values them in one batched call, and, when the account holds
more positions than ``max_positions``, sells the ``excess`` smallest *valued* positions, waits
for those sells to settle by polling them (on the clock), then re-fetches and verifies. After
``max_cycles`` cycles still over the cap, the account is halted in the store (durably, before
this returns) until an operator resumes it.

What it never does: act on positions it could not fetch (the result is ``unverified`` and no
order is sent), rank a position by a made-up value, sell a symbol twice while its first sell is
still open, or resend an order whose fate is unknown.

Every liquidation is journaled (with its audit record and its deadline, in one transaction)
before it is sent. Each enforcement starts by reconciling the journal: orders a previous run (or
a killed process) left live are looked up by client order id, their fate recorded, and their
symbols are not sold again while they may still be live. An order whose outcome is unknown stays
``unresolved`` until it is found or a lookup made after its deadline proves it was never placed
(:mod:`brokerguard.orders`): "not found" right after a timeout proves nothing. That is what
makes a restart safe.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

from brokerguard._validation import int_problem, seconds_problem
from brokerguard.brokers.base import LOCAL_DEADLINE_FLOOR_S, BaseBroker, step_reads
from brokerguard.clock import Clock
from brokerguard.errors import (
    BrokerGuardError,
    BrokerRejection,
    CircuitOpenError,
    ConfigurationError,
    OrderUnconfirmedError,
    PositionsImplausibleError,
)
from brokerguard.logs import log_context
from brokerguard.models import Order, OrderRequest, PriceProblem, Side, parse_symbol
from brokerguard.orders import OrderState, journal_state
from brokerguard.risk.valuation import Valuation, ValuationReport, Valuator
from brokerguard.store.state import (
    LIVE_ORDER_STATUSES,
    AuditNote,
    JournalEntry,
    StateStore,
    open_store,
)

__all__ = ["ENFORCER_SOURCE", "PositionCapEnforcer"]

log = logging.getLogger("brokerguard.enforcer")

ENFORCER_SOURCE = "position_cap_enforcer"
"""The actor named in halts and audit records written by the enforcer."""


class PositionCapEnforcer:
    """Keep an account at or under ``max_positions`` open positions, or halt it.

    Args:
        broker: the guarded broker of the account.
        max_positions: the cap.
        max_cycles: liquidate-and-verify cycles before halting.
        settle_timeout: seconds to poll a cycle's sell orders for settlement (on the clock).
        store: where halts, audit records and the order journal go (default: an in-memory
            store; production passes a persistent one so halts survive restarts).
        clock: the time source (default: the broker's).
        count_unpriced: True (default, fail-closed): a position that cannot be valued still
            occupies a cap slot, because it is exposure. False: the seed's literal rule, only
            valued positions are counted.
        valuator: prices the positions (default: a Valuator on the same broker and store).
        poll_interval: seconds between settlement polls.
        count_dust: False (default): a position below the venue's minimum order (dust, which
            cannot be sold) occupies no cap slot; it is reported in ``result["dust"]`` and never
            picked for liquidation. Counting it would halt an account over a residue no order
            can clear, and dust is by definition worth less than the smallest order the venue
            takes. Unknown minimums make nothing dust (fail closed). True counts it anyway.
        order_id_factory: makes the liquidations' client order ids (default: UUIDs).
    """

    def __init__(
        self,
        broker: BaseBroker,
        max_positions: int = 8,
        *,
        max_cycles: int = 3,
        settle_timeout: float = 3.0,
        store: StateStore | None = None,
        clock: Clock | None = None,
        count_unpriced: bool = True,
        valuator: Valuator | None = None,
        poll_interval: float = 0.25,
        order_id_factory: Callable[[], str] | None = None,
        count_dust: bool = False,
    ) -> None:
        problems = [
            *int_problem("max_positions", max_positions, minimum=0),
            *int_problem("max_cycles", max_cycles, minimum=1),
            *seconds_problem("settle_timeout", settle_timeout),
            *seconds_problem("poll_interval", poll_interval, allow_zero=False),
        ]
        if problems:
            raise ConfigurationError("invalid PositionCapEnforcer: " + "; ".join(problems))
        self.broker = broker
        self.max_positions = max_positions
        self.max_cycles = max_cycles
        self.settle_timeout = float(settle_timeout)
        self.poll_interval = float(poll_interval)
        self.clock = clock if clock is not None else broker.clock
        self.store = store if store is not None else open_store("sqlite://", clock=self.clock)
        if store is not None:
            broker.keep_holdings_in(store)  # a restart judges its first read against them
            broker.keep_orders_in(store)  # and never resends what the last run sent
        self.count_unpriced = count_unpriced
        self.count_dust = count_dust
        self.valuator = valuator or Valuator(broker, store=self.store, clock=self.clock)
        self._new_order_id = order_id_factory or _uuid_order_id
        self._keep_lease: Callable[[], object] | None = None  # the running step's, in a fleet
        self._doubtful: set[str] = set()  # this enforcement's sells of unknown outcome
        # Why positions are unknown now (a reason code), logged on entering and leaving.
        self._blind: str | None = None
        # symbol -> monotonic deadline: exits handed to the bot (freqtrade's forceexit); until
        # the deadline the enforcer counts them as being sold and sells something else only
        # if they cannot clear the excess.
        self._delegated: dict[str, float] = {}
        self._dust_of: tuple[ValuationReport, frozenset[str]] | None = None  # within a step

    @property
    def account_id(self) -> str:
        """The account this enforcer guards."""
        return self.broker.account_id

    def enforce_cap(
        self,
        *,
        fence_token: int | None = None,
        fence_holder: str = "",
        fence_namespace: str = "",
        keep_lease: Callable[[], object] | None = None,
    ) -> tuple[bool, dict[str, Any]]:
        """Fetch, and while over the cap run up to ``max_cycles`` cycles; return (ok, result).

        `fence_token` (a fleet worker's lease on the account; `fence_holder` the worker,
        `fence_namespace` its fleet): every store write of this step carries it, and the store
        refuses it with :class:`LeaseLostError` once a newer lease exists. `keep_lease` is
        called before each order (it renews the lease, or raises LeaseLostError): nothing is
        sent once the lease is gone, and each order's journal entry is written in one
        transaction with the fence check, before the order is sent.

        A cycle liquidates the excess, waits for settlement and re-fetches to verify. ``cycles``
        in the result counts them (0 when the account was within the cap to begin with).

        The result always has ``status`` (``compliant``, ``unverified`` or
        ``failed_enforcement``), ``trading_halted``, ``position_count``, ``valued_count``,
        ``max_positions``, ``cycles``, ``liquidated`` (symbols), ``unvalued_symbols`` and
        ``orders`` (client order ids), plus ``reason``, ``excess`` and
        ``initial_position_count`` (what the first fetch found). Resting buys of an account
        over its cap or halted are cancelled first: ``cancelled`` lists those verified final,
        ``cancel_unverified`` those whose cancel could not be verified (``"*"``: the open
        orders could not be listed).
        """
        # One look at other processes' halts, pauses and orders for the whole step.
        with self.store.pinned():
            return self._enforce_fenced(fence_token, fence_holder, fence_namespace, keep_lease)

    def step_is_local(self) -> bool:
        """Whether the next step looks like it needs no broker call: its reads are in hand.

        True when the pass read this account ahead (a successful read, within the cap, losing
        no symbol of the last believed read), its prices are in the venue's shared answer, and
        nothing waits on the venue: no live journaled order, no order of unknown outcome, no
        halt (a halted account cancels resting buys). An enforcement pass steps such accounts
        one after the other in its own thread and the rest in its pool, so that no slow
        account (selling, settling, looking orders up) holds up the others. A wrong guess
        costs only time: the step makes whatever calls it needs either way.
        """
        broker = self.broker
        count = broker.primed_count
        if count is None or count > self.max_positions:
            return False
        symbols = broker.primed_symbols()
        last = broker.last_position_snapshot()
        if last is not None and not {p.symbol for p in last.positions}.issubset(symbols):
            return False
        # The valuation also asks for the symbols it paused itself (to lift a pause).
        wanted = [*symbols, *self.valuator.own_pauses()]
        board = broker.shared_prices
        if wanted and (board is None or not board.holds(wanted)):
            return False
        if broker.unresolved_orders():
            return False
        try:
            live = self.store.journal(self.account_id, statuses=set(LIVE_ORDER_STATUSES))
            return not live and not self.store.is_halted(self.account_id)
        except BrokerGuardError:
            return False

    def _enforce_fenced(
        self,
        fence_token: int | None,
        fence_holder: str,
        fence_namespace: str,
        keep_lease: Callable[[], object] | None,
    ) -> tuple[bool, dict[str, Any]]:
        if fence_token is None:
            return self._enforce()
        plain = self.store
        fenced = plain.fenced(
            self.account_id, fence_token, holder=fence_holder, namespace=fence_namespace
        )
        valuator_shares = self.valuator.store is plain  # its pauses are writes too
        self.store = fenced
        self._keep_lease = keep_lease
        if valuator_shares:
            self.valuator.store = fenced
        try:
            return self._enforce()
        finally:
            self.store = plain
            self._keep_lease = None
            if valuator_shares:
                self.valuator.store = plain

    def _enforce(self) -> tuple[bool, dict[str, Any]]:
        result: dict[str, Any] = {
            "account_id": self.account_id,
            "status": "unverified",
            "trading_halted": False,
            "position_count": None,
            "initial_position_count": None,
            "valued_count": None,
            "max_positions": self.max_positions,
            "excess": None,
            "cycles": 0,
            "liquidated": [],
            "unvalued_symbols": [],
            "dust": [],
            "orders": [],
            "reconciled": [],
            "unresolved": [],
            "cancelled": [],
            "cancel_unverified": [],
            "reason": "",
        }
        # symbol -> client order id of a sell not yet final (or whose fate is still unknown)
        self._doubtful = set()
        pending = self._reconcile(result["reconciled"])
        report = self._observe(result)
        if report is not None and self._halted_now():
            # A halted account takes no new risk: resting buys would open positions later.
            self._cancel_risk_increasing(result)
            if self.broker.has_order_book:
                # A buy may have filled before its cancel, or between the reads: count again.
                report = self._observe(result)
        while report is not None:
            counted = self._counted(report)
            excess = counted - self.max_positions
            result["excess"] = max(0, excess)
            if excess <= 0:
                result["status"] = "compliant"
                result["reason"] = (
                    f"{counted} counted position(s) within the cap of {self.max_positions}"
                )
                return True, self._finish(result)
            if result["cycles"] == self.max_cycles:
                # Wait (not halt) only when the sells of unknown outcome could clear the
                # excess by themselves: a stale doubt about another symbol changes nothing.
                doubtful = self._doubtful | set(self._unresolved_in_journal())
                waiting = sorted(cid for cid in pending.values() if cid in doubtful)
                # Exits handed to the bot are sells in flight too, until their grace ends.
                waiting += sorted(f"delegated:{s}" for s in self.delegated() if s not in pending)
                if waiting and len(waiting) >= excess:
                    return False, self._wait_for_unresolved(result, waiting)
                return self._fail_and_halt(result)
            result["cycles"] += 1
            log.warning(
                "account %s is OVER the position cap: %d counted (%d valued, %d unvalued) for a "
                "cap of %d; cycle %d of %d liquidates the %d smallest valued",
                self.account_id,
                counted,
                len(report.valued),
                len(report.unvaluable),
                self.max_positions,
                result["cycles"],
                self.max_cycles,
                excess,
            )
            # Resting buys first: each one that fills adds a position while we sell.
            self._cancel_risk_increasing(result)
            self._liquidate(report, excess, pending, result)
            self._await_settlement(pending)
            report = self._observe(result)  # verify on fresh positions
        return False, self._finish(result)

    # ------------------------------------------------------------------ the journal

    def reconcile_orders(self) -> list[dict[str, str]]:
        """Look up every journaled liquidation that may still be live and record its fate.

        Returns one ``{"client_order_id", "symbol", "from", "to"}`` per entry looked at; ``to``
        is ``unknown`` when the broker could not be asked (the entry stays live and its symbol
        is not sold again until it can).
        """
        changes: list[dict[str, str]] = []
        self._reconcile(changes)
        return changes

    def _reconcile(self, changes: list[dict[str, str]]) -> dict[str, str]:
        """Reconcile the live journal entries; return symbol -> cid of those still live."""
        pending: dict[str, str] = {}
        for entry in self.store.journal(self.account_id, statuses=set(LIVE_ORDER_STATUSES)):
            cid = entry.client_order_id
            status = self._look_up(entry)
            if entry.side == Side.SELL.value and status not in _SOLD_NOTHING:
                # A sell that may have executed explains its position's disappearance.
                self.broker.note_sell(entry.symbol)
            if status in _STILL_LIVE:
                pending[entry.symbol] = cid
            if status in _DOUBTFUL:
                self._doubtful.add(cid)
            if status == "unknown":
                changes.append(_change(cid, entry.symbol, entry.status, "unknown"))
                continue
            if status == entry.status:
                continue
            self.store.record_order_status(
                cid,
                status,
                account_id=self.account_id,
                audit=AuditNote(
                    "order_reconciled",
                    ENFORCER_SOURCE,
                    f"journaled order was {entry.status}; the broker says {status}",
                    {"client_order_id": cid, "symbol": entry.symbol, "from": entry.status},
                ),
            )
            changes.append(_change(cid, entry.symbol, entry.status, status))
        self._sales_under_way(pending)
        return pending

    def _sales_under_way(self, pending: dict[str, str]) -> None:
        """Add the sells not journaled by us that are under way to `pending` (symbol -> cid).

        Orders this process sent whose outcome is unknown (a bot's entries, other sells): what
        the evidence allows is resolved; unresolved sells keep their symbols off the block. A
        sell resting open (the bot's, or any the venue listed) is a sale under way too: selling
        the symbol again would be refused against the venue's hold, cycle after cycle, or sell
        twice what the bot meant to sell once. The enforcer sells something else.
        """
        self.broker.resolve_unresolved()
        for order in self.broker.unresolved_orders():
            if order.request.side is Side.SELL:
                pending.setdefault(order.symbol, order.client_order_id)
                self._doubtful.add(order.client_order_id)
        for resting in self.broker.known_open_orders():
            if resting.side is Side.SELL:
                pending.setdefault(resting.symbol, resting.client_order_id)

    def _look_up(self, entry: JournalEntry) -> str:
        """Return what the journal entry's order is now (``unknown``: the broker cannot say)."""
        state = journal_state(entry.status)
        cid = entry.client_order_id
        try:
            if state in {OrderState.OPEN, OrderState.PARTIALLY_FILLED}:
                order = self.broker.get_order(cid)
                # Seen live, now neither open nor among the recent closed orders: it closed
                # long ago, and the next position fetch tells what it did.
                return OrderState.VANISHED.value if order is None else order.status.value
            found = self.broker.resolve_order(cid, absent_after=self._absent_after(entry))
        except OrderUnconfirmedError as exc:
            if exc.__cause__ is not None:  # the lookup itself failed: the broker cannot say
                return self._unknown(entry, exc.__cause__)
            log.warning(
                "journaled order %s (%s %s) on %s is still unresolved: %s is not sold again "
                "until it is found or proven absent",
                cid,
                entry.side,
                entry.symbol,
                self.account_id,
                entry.symbol,
            )
            if exc.exists:
                return OrderState.EXISTS.value
            return OrderState.UNRESOLVED.value if state is not OrderState.EXISTS else entry.status
        except BrokerGuardError as exc:
            return self._unknown(entry, exc)
        return OrderState.NOT_PLACED.value if found is None else found.status.value

    def _unknown(self, entry: JournalEntry, exc: BaseException) -> str:
        log.warning(
            "journaled order %s (%s %s) on %s cannot be looked up (%s): %s is not sold again "
            "until it can",
            entry.client_order_id,
            entry.side,
            entry.symbol,
            self.account_id,
            exc,
            entry.symbol,
        )
        return "unknown"

    def _absent_after(self, entry: JournalEntry) -> float | None:
        """When absence proves the journaled order was never placed (None: only finding it)."""
        if journal_state(entry.status) is OrderState.EXISTS:
            return None
        if entry.deadline is None:
            # Journaled before deadlines were sent: the venue had no deadline to enforce.
            return entry.created_at + LOCAL_DEADLINE_FLOOR_S + self.broker.resolution_margin_s
        return self.broker.absent_after(entry.deadline, entry.created_at)

    # ------------------------------------------------------------------ steps

    def _observe(self, result: dict[str, Any]) -> ValuationReport | None:
        """Fetch and value the positions; None (result unverified) if they cannot be known."""
        try:
            with step_reads():  # the read the pass made ahead for this step, if any
                positions = self.broker.get_positions()
        except BrokerGuardError as exc:
            result["status"] = "unverified"
            result["reason"] = (
                f"positions implausible: {exc}"
                if isinstance(exc, PositionsImplausibleError)
                else f"positions could not be fetched: {type(exc).__name__}: {exc}"
            )
            # Said on entering the state (or turning implausible from unknown), not each pass.
            code = (
                "POSITIONS_IMPLAUSIBLE"
                if isinstance(exc, PositionsImplausibleError)
                else "POSITIONS_UNKNOWN"
            )
            entered, self._blind = self._blind != code, code
            log.log(
                logging.ERROR if entered else logging.DEBUG,
                "cap enforcement for account %s UNVERIFIED: %s; no order sent, new entries "
                "stay blocked until positions are known",
                self.account_id,
                result["reason"],
                extra=log_context(
                    account=self.account_id,
                    broker=self.broker.broker_name,
                    reason=code,
                    state="entered" if entered else None,
                ),
            )
            return None
        if self._blind is not None:
            log.warning(
                "positions of account %s are known again (%d held): cap enforcement verified",
                self.account_id,
                len(positions),
                extra=log_context(
                    account=self.account_id, broker=self.broker.broker_name, state="left"
                ),
            )
            self._blind = None
        result["position_count"] = len(positions)
        if result["initial_position_count"] is None:
            result["initial_position_count"] = len(positions)
        try:
            report = self.valuator.value(positions)
        except BrokerGuardError as exc:
            # Prices unknown: every position is unvaluable this cycle (none invented).
            log.error(
                "prices for account %s could not be fetched (%s): no position can be ranked",
                self.account_id,
                exc,
            )
            report = ValuationReport(
                tuple(
                    Valuation(p.symbol, p.quantity, None, PriceProblem.MISSING)
                    for p in sorted(positions, key=lambda p: p.symbol)
                ),
                self.clock.time(),
            )
        result["valued_count"] = len(report.valued)
        result["unvalued_symbols"] = report.unvalued_symbols
        result["dust"] = sorted(self._dust(report))
        return report

    def _liquidate(
        self,
        report: ValuationReport,
        excess: int,
        pending: dict[str, str],
        result: dict[str, Any],
    ) -> None:
        """Sell the smallest valued positions not already being sold, up to the excess."""
        handed = {s: f"delegated:{s}" for s in self.delegated() if s not in pending}
        chosen, shortfall = self._select(report, excess, {**pending, **handed})
        if shortfall:
            result["reason"] = shortfall
        for valuation in chosen:
            try:
                live = self._sell(valuation.symbol, valuation.quantity, valuation.value, result)
            except CircuitOpenError:
                break  # the write circuit is open: nothing more can be sent this cycle
            if live is not None:
                pending[valuation.symbol] = live

    def delegate_exit(self, symbol: str, seconds: float) -> None:
        """The bot was asked to exit `symbol` (it keeps its books true): wait `seconds` for it.

        Until then the enforcer treats the symbol as being sold; after, it sells it itself.
        """
        self._delegated[parse_symbol(symbol)] = self.clock.monotonic() + seconds

    def delegated(self) -> set[str]:
        """Symbols whose exit is the bot's to make, for now."""
        now = self.clock.monotonic()
        self._delegated = {s: t for s, t in self._delegated.items() if t > now}
        return set(self._delegated)

    def _halted_now(self) -> bool:
        try:
            return self.store.is_halted(self.account_id)
        except BrokerGuardError:
            return True  # the halt cannot be ruled out: cancelling buys only reduces risk

    def _cancel_risk_increasing(self, result: dict[str, Any]) -> None:
        """Cancel the account's open buy orders, and verify each cancel by its final state.

        A cancel that cannot be verified (the listing failed, the answer was lost and the
        lookup still shows the order live) is reported in ``cancel_unverified``; the gate keeps
        counting that order's slot until it is seen final.
        """
        if not self.broker.has_order_book:
            return
        try:
            buys = [o for o in self.broker.get_open_orders() if o.side is Side.BUY]
        except BrokerGuardError as exc:
            result["cancel_unverified"].append("*")
            log.error(
                "account %s: open orders could not be listed (%s); resting buys, if any, are "
                "not cancelled this cycle",
                self.account_id,
                exc,
            )
            return
        for order in buys:
            cid = order.client_order_id
            if cid in result["cancelled"]:
                continue
            if self._keep_lease is not None:
                self._keep_lease()
            try:
                after = self.broker.cancel_order(cid)
            except BrokerGuardError as exc:
                log.error("account %s: cancel of buy %s failed: %s", self.account_id, cid, exc)
                result["cancel_unverified"].append(cid)
                continue
            if not after.is_final:
                result["cancel_unverified"].append(cid)
                continue
            result["cancelled"].append(cid)
            self.store.record_audit(
                self.account_id,
                "order_cancelled",
                ENFORCER_SOURCE,
                "a resting buy of an account over its cap or halted",
                {
                    "client_order_id": cid,
                    "symbol": order.symbol,
                    "status": after.status.value,
                    "filled": str(after.filled_quantity),
                },
            )

    def _dust(self, report: ValuationReport) -> set[str]:
        """The positions below the venue's minimum order: they cannot be sold.

        Worked out once per report (a step asks for it two or three times).
        """
        known = self._dust_of
        if known is not None and known[0] is report:
            return set(known[1])
        dust = frozenset(
            v.symbol
            for v in report.valuations
            if self.broker.is_dust(v.symbol, v.quantity, v.price)
        )
        self._dust_of = (report, dust)
        return set(dust)

    def _counted(self, report: ValuationReport) -> int:
        """How many positions occupy cap slots (see ``count_unpriced`` and ``count_dust``)."""
        counted = report.valuations if self.count_unpriced else report.valued
        if self.count_dust:
            return len(counted)
        dust = self._dust(report)
        return sum(1 for v in counted if v.symbol not in dust)

    def _select(
        self, report: ValuationReport, excess: int, pending: Mapping[str, str]
    ) -> tuple[list[Valuation], str]:
        """Pick the smallest valued, unpaused positions not already being sold.

        Returns the choice and, when it cannot cover the excess, why.
        """
        needed = excess - len(pending)
        if needed <= 0:
            return [], ""  # earlier sells, once settled, clear the excess: wait for them
        paused = self.store.paused_symbols(self.account_id)
        dust = self._dust(report)  # below the venue's minimum: a sell would only be refused
        candidates = sorted(
            (
                v
                for v in report.valued
                if v.symbol not in pending and v.symbol not in paused and v.symbol not in dust
            ),
            key=lambda v: (v.value, v.symbol),
        )
        shortfall = ""
        if len(candidates) < needed:
            shortfall = (
                f"the excess of {excess} cannot be cleared from valued positions "
                f"({len(candidates)} sellable; unvalued: {', '.join(report.unvalued_symbols)}; "
                f"dust: {', '.join(sorted(dust))})"
            )
        return candidates[:needed], shortfall

    def plan(self) -> dict[str, Any]:
        """Say what one enforcement cycle would sell now, sending nothing (a dry run).

        The result has ``status`` (``compliant``, ``over_cap`` or ``unverified``),
        ``position_count``, ``valued_count``, ``unvalued_symbols``, ``excess``, ``reason`` and
        ``would_liquidate``: a list of ``{"symbol", "quantity", "value"}`` (Decimals as strings).
        """
        result: dict[str, Any] = {
            "account_id": self.account_id,
            "status": "unverified",
            "position_count": None,
            "initial_position_count": None,
            "valued_count": None,
            "unvalued_symbols": [],
            "max_positions": self.max_positions,
            "excess": None,
            "would_liquidate": [],
            "reason": "",
        }
        report = self._observe(result)
        if report is None:
            return result
        counted = self._counted(report)
        excess = counted - self.max_positions
        result["excess"] = max(0, excess)
        if excess <= 0:
            result["status"] = "compliant"
            return result
        live = {
            e.symbol: e.client_order_id
            for e in self.store.journal(self.account_id, statuses=set(LIVE_ORDER_STATUSES))
        }
        chosen, shortfall = self._select(report, excess, live)
        result["status"] = "over_cap"
        result["reason"] = shortfall
        result["would_liquidate"] = [
            {"symbol": v.symbol, "quantity": str(v.quantity), "value": str(v.value)} for v in chosen
        ]
        return result

    def _sell(
        self, symbol: str, quantity: Decimal, value: Decimal | None, result: dict[str, Any]
    ) -> str | None:
        """Journal, audit and send one liquidation; return its client order id if still open.

        Raises CircuitOpenError (after journaling it as not sent) when the write circuit is open,
        and LeaseLostError, sending nothing, when the step's lease is gone (renewal refused, or
        the store's fence is newer than this step's token: checked in the intent's transaction).
        """
        if self._keep_lease is not None:
            self._keep_lease()
        cid = self._new_order_id()
        deadline = self.broker.order_deadline()
        request = OrderRequest(symbol, Side.SELL, quantity, cid, deadline)
        self.store.record_order_intent(
            self.account_id,
            request,
            purpose="cap_liquidation",
            audit=AuditNote(
                "liquidation_order",
                ENFORCER_SOURCE,
                f"over the position cap of {self.max_positions}: selling the smallest position",
                {
                    "symbol": symbol,
                    "quantity": str(quantity),
                    "value": str(value),
                    "client_order_id": cid,
                },
            ),
        )
        result["orders"].append(cid)
        try:
            order = self.broker.place_market_order(
                symbol, Side.SELL, quantity, client_order_id=cid, deadline=deadline
            )
        except CircuitOpenError as exc:
            self.store.record_order_status(cid, OrderState.NOT_PLACED.value)
            log.error("liquidation of %s on %s not sent: %s", symbol, self.account_id, exc)
            raise
        except BrokerRejection as exc:
            self.store.record_order_status(cid, OrderState.REJECTED.value)
            log.error("liquidation of %s on %s rejected: %s", symbol, self.account_id, exc)
            return None
        except OrderUnconfirmedError as exc:
            state = OrderState.EXISTS if exc.exists else OrderState.UNRESOLVED
            self.store.record_order_status(cid, state.value)
            log.critical(
                "liquidation %s of %s on %s is UNRESOLVED (%s): it will not be resent, and %s is "
                "not sold again until the order is found or proven absent",
                cid,
                symbol,
                self.account_id,
                exc,
                symbol,
            )
            result["liquidated"].append(symbol)
            result["unresolved"].append(cid)
            self._doubtful.add(cid)
            return cid
        except BrokerGuardError as exc:
            # Refused before the venue processed it (rate limit, nonce) past the deadline.
            self.store.record_order_status(cid, OrderState.NOT_PLACED.value)
            log.error("liquidation of %s on %s not placed: %s", symbol, self.account_id, exc)
            return None
        self.store.record_order_status(
            cid, order.status.value, broker_order_id=order.broker_order_id
        )
        result["liquidated"].append(symbol)
        return None if order.is_final else cid

    def _await_settlement(self, pending: dict[str, str]) -> None:
        """Poll the cycle's open sells until they are final or ``settle_timeout`` passes."""
        deadline = self.clock.monotonic() + self.settle_timeout
        while pending:
            for symbol, cid in list(pending.items()):
                order = self._poll(cid)
                if order is not None and order.is_final:
                    self.store.record_order_status(cid, order.status.value)
                    del pending[symbol]
            if not pending or self.clock.monotonic() + self.poll_interval > deadline:
                return
            self.clock.sleep(self.poll_interval)

    def _poll(self, cid: str) -> Order | None:
        try:
            return self.broker.resolve_order(cid)
        except OrderUnconfirmedError:
            return None  # still unresolved: it stays pending
        except BrokerGuardError as exc:
            log.warning("could not poll liquidation %s on %s: %s", cid, self.account_id, exc)
            return None

    def _unresolved_in_journal(self) -> list[str]:
        try:
            entries = self.store.journal(
                self.account_id,
                statuses={OrderState.UNRESOLVED.value, OrderState.EXISTS.value},
            )
        except BrokerGuardError:
            return []  # unknown: halting is the fail-closed reading
        return [e.client_order_id for e in entries]

    def _wait_for_unresolved(self, result: dict[str, Any], waiting: list[str]) -> dict[str, Any]:
        """Over the cap while sells have unknown outcomes: wait for the evidence, not halt.

        An unresolved sell may have happened; selling another position now could sell one too
        many, and halting would ask an operator to decide what the venue will tell us within
        the order's deadline. New entries stay refused (the account is over the cap).
        """
        result["status"] = "unverified"
        result["unresolved"] = waiting
        result["reason"] = (
            f"over the position cap of {self.max_positions} while {len(waiting)} liquidation(s) "
            f"have unknown outcomes ({', '.join(waiting)}): waiting until each is found or "
            "proven absent after its deadline"
        )
        log.error(
            "cap enforcement for account %s UNVERIFIED: %s", self.account_id, result["reason"]
        )
        return self._finish(result)

    def _fail_and_halt(self, result: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        reason = (
            f"still over the position cap of {self.max_positions} after {self.max_cycles} "
            f"cycle(s): {result['position_count']} open, {result['valued_count']} valued"
        )
        if result["reason"]:
            reason = f"{reason}; {result['reason']}"
        result["status"] = "failed_enforcement"
        result["reason"] = reason
        already = self._halted_before()
        self.store.halt(self.account_id, reason, ENFORCER_SOURCE)
        result["trading_halted"] = True
        # Announced once, on entering the halt: every later pass that fails again is audited
        # (halt_repeated) and logged at DEBUG; the service logs the operator's resume.
        log.log(
            logging.DEBUG if already else logging.CRITICAL,
            "TRADING HALTED until manual intervention for account %s: %s",
            self.account_id,
            reason,
            extra=log_context(
                account=self.account_id,
                broker=self.broker.broker_name,
                reason="FAILED_ENFORCEMENT",
                state=None if already else "entered",
            ),
        )
        return False, result

    def _halted_before(self) -> bool:
        """Whether the account is halted already (unknown: not, so the halt is announced)."""
        try:
            return self.store.is_halted(self.account_id)
        except BrokerGuardError:
            return False

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        self._dust_of = None  # a step's; not kept between passes
        try:
            result["trading_halted"] = self.store.is_halted(self.account_id)
        except BrokerGuardError:
            result["trading_halted"] = True  # unknown: report the fail-closed reading
        return result


_SOLD_NOTHING: Final = frozenset(
    {OrderState.NOT_PLACED.value, OrderState.REJECTED.value, OrderState.VANISHED.value}
)
"""Journal outcomes that prove a sell executed nothing (a cancel may have filled in part)."""

_DOUBTFUL: Final = frozenset({"unknown", OrderState.UNRESOLVED.value, OrderState.EXISTS.value})
"""Outcomes that are not known yet: over the cap because of them, the enforcer waits."""

_STILL_LIVE: Final = frozenset(
    {
        "unknown",
        OrderState.UNRESOLVED.value,
        OrderState.EXISTS.value,
        OrderState.OPEN.value,
        OrderState.PARTIALLY_FILLED.value,
    }
)


def _change(cid: str, symbol: str, old: str, new: str) -> dict[str, str]:
    return {"client_order_id": cid, "symbol": symbol, "from": old, "to": new}


def _uuid_order_id() -> str:
    # A UUID: the one client-id format every exchange accepts (Kraken's cl_ord_id included).
    return str(uuid.uuid4())
