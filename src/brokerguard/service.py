"""The guard service: a configuration turned into running brokers, enforcers and gates.

:class:`GuardService` builds, from a :class:`~brokerguard.config.BrokerGuardConfig`, one pair
of breakers (read, write) per broker shared by all its accounts, one guarded broker, cap
enforcer and trading gate per account, and one :class:`ContinuousExitEnforcer` over all of them
(bounded concurrency, failures isolated). It only wires and reports: every decision is taken by
the risk layer. :meth:`status` is what the CLI, the HTTP server and the metrics show.

The embedded default (:func:`embedded_default_config`) is a paper broker with a realistic fault
plan and a demo strategy that keeps trying to open positions, so that the gate, the enforcer
and the breakers are visibly at work without any secret or network.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from brokerguard.alerts import AlertRouter, sinks_from_config
from brokerguard.brokers.base import BaseBroker
from brokerguard.brokers.paper import MISSING, FaultPlan, OutageWindow, PaperBroker, PaperMarket
from brokerguard.brokers.plausibility import POSITIONS_CONFIRMED, PlausibilityPolicy
from brokerguard.brokers.prices import SharedPrices
from brokerguard.clock import SYSTEM_CLOCK, Clock
from brokerguard.config import (
    AccountConfig,
    BrokerConfig,
    BrokerGuardConfig,
    parse_config,
    require_secret,
    resolve_secret,
)
from brokerguard.errors import BrokerGuardError, ConfigurationError, InvalidBrokerData
from brokerguard.integrations.freqtrade import FreqtradeSupervisor
from brokerguard.models import Side, parse_symbol
from brokerguard.orders import OrderState
from brokerguard.resilience.breaker import BrokerCircuitBreaker, is_breaking_enabled
from brokerguard.resilience.classify import VenueClassifier
from brokerguard.resilience.ratelimit import RateLimiter
from brokerguard.resilience.state import CircuitState
from brokerguard.risk.cap import ENFORCER_SOURCE, PositionCapEnforcer
from brokerguard.risk.entries import EntryBook
from brokerguard.risk.exits import (
    ContinuousExitEnforcer,
    EnforcementEvent,
    TradingHalted,
    TradingResumed,
)
from brokerguard.risk.gate import EntryDenied, TradingGate, TradingState
from brokerguard.risk.reads import ReadsAhead
from brokerguard.risk.valuation import Valuator
from brokerguard.store.state import AuditRecord, StateStore, open_store

if TYPE_CHECKING:  # a fleet needs redis, an optional dependency
    from brokerguard.coordination import RedisCoordinator, SharedSlots
    from brokerguard.coordination.leases import AccountLeases

__all__ = [
    "AccountRuntime",
    "BreakerTransitioned",
    "GuardService",
    "embedded_default_config",
]

log = logging.getLogger("brokerguard.service")

SERVICE_STOPPED = "service_stopped"
"""The audit action of a clean stop; its ``audit_seen`` is the last record the run looked at."""

_ASK_AGAIN_AFTER_S = 600.0
"""A supervised bot asked to exit a symbol is not asked again for this long (at least)."""

_COMPLETED_STATUSES = frozenset({"compliant", "failed_enforcement"})
"""Enforcement steps that reached a verdict on fresh positions (the rest enforced nothing)."""

_DEMO_SYMBOLS = [
    "BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOGE/USD",
    "AVAX/USD", "DOT/USD", "LINK/USD", "LTC/USD", "ATOM/USD", "UNI/USD",
]  # fmt: skip


def embedded_default_config(data_dir: str | Path = "brokerguard-data") -> BrokerGuardConfig:
    """The configuration ``brokerguard run`` uses when given none: paper broker, SQLite."""
    return parse_config(
        {
            "store": {"url": f"sqlite:///{Path(data_dir) / 'state.db'}"},
            "enforcement": {"interval_s": 5},
            "breaker": {"failure_threshold": 3, "recovery_timeout_s": 20},
            "brokers": {
                "paper": {
                    "kind": "paper",
                    "seed": 7,
                    "max_calls_per_s": 20,
                    "burst": 10,
                    "settle_delay_s": 0.5,
                    "faults": {
                        "error_rate": {"fetch_positions": 0.05, "fetch_prices": 0.03},
                        "outages_s": [[90, 150], [400, 430]],
                        "bad_prices": {"DOGE/USD": "NaN"},
                        "rate_limit_rate": 0.01,
                        "rate_limit_retry_after_s": 3,
                    },
                }
            },
            "accounts": [
                {
                    "id": "paper-main",
                    "broker": "paper",
                    "max_positions": 8,
                    "symbols": _DEMO_SYMBOLS,
                },
                {
                    "id": "paper-small",
                    "broker": "paper",
                    "max_positions": 3,
                    "symbols": _DEMO_SYMBOLS,
                },
            ],
        },
        source="embedded default",
        environ=os.environ,  # BROKERGUARD__SECTION__KEY overrides apply here too
    )


@dataclass(frozen=True, slots=True)
class BreakerTransitioned(EnforcementEvent):
    """A broker's circuit changed state (account_id is the broker's name here)."""

    scope: str
    old_state: str
    new_state: str


@dataclass
class AccountRuntime:
    """Everything the service runs for one account."""

    config: AccountConfig
    broker: BaseBroker
    enforcer: PositionCapEnforcer
    gate: TradingGate
    entries: EntryBook
    """The pre-trade API's reservations (bots in other processes)."""
    supervisor: FreqtradeSupervisor | None = None
    """The bot trading the account, when ``supervise`` is configured."""
    supervision: dict[str, Any] | None = None
    """The last look at the bot: ``locked``, ``untracked``, ``delegated``, ``error``."""
    bot_asked: dict[str, float] = field(default_factory=dict)
    """Symbol -> when (monotonic) the supervised bot was asked to exit it (not asked again
    for a while: the enforcer sells it after the grace)."""
    last_plan: tuple[float, dict[str, Any]] | None = None
    """(monotonic time, the enforcer's plan) from the last look: bots asking what to exit are
    answered from it instead of reading the exchange on every request."""
    dead_man_switch: dict[str, Any] | None = None
    """The switch's last refresh: ``timeout_s``, ``trigger_at`` (epoch s), ``error``."""


class GuardService:
    """Run brokerguard for every configured account.

    Args:
        config: the deployment.
        clock: the time source (default: the system clock).
        store: an already open store (default: opened from ``config.store.url``).
        seed: seeds the demo strategy (and jitter) for reproducible runs.
    """

    def __init__(
        self,
        config: BrokerGuardConfig,
        *,
        clock: Clock | None = None,
        store: StateStore | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.store = store if store is not None else _open_store(config, self.clock)
        self.started_at = self.clock.time()
        self._started_mono = self.clock.monotonic()
        self._rng = random.Random(seed)  # noqa: S311 (a demo strategy, not a secret)
        self._events: deque[EnforcementEvent] = deque(maxlen=500)
        self._events_lock = threading.Lock()
        self._listeners: list[Callable[[EnforcementEvent], object]] = []
        self._stop = threading.Event()
        # A fleet (coordination_url): breakers, account leases and nonces live in Redis.
        self.coordinator: RedisCoordinator | None = None
        self.leases: AccountLeases | None = None
        self._slots: SharedSlots | None = None
        if config.coordination_url is not None:
            self.coordinator, self.leases = _fleet(config, self.store)
            self._slots = _shared_slots(self.coordinator)
        # Outage detection is the exchange's: the entries of one venue (one API key each)
        # share its breakers, as they share its prices (rate limits stay per entry).
        venues: dict[str, dict[str, BrokerCircuitBreaker]] = {}
        for name in config.brokers:
            venue = config.venue_of(name)
            if venue not in venues:
                venues[venue] = self._breakers_for(name, venue)
        self.breakers: dict[str, dict[str, BrokerCircuitBreaker]] = {
            name: venues[config.venue_of(name)] for name in config.brokers
        }
        self.prices: dict[str, SharedPrices] = {}
        """Each venue's shared price answer (venues whose share_prices_s is 0 have none)."""
        for name, broker_config in config.brokers.items():
            venue = config.venue_of(name)
            if broker_config.share_prices_s > 0 and venue not in self.prices:
                self.prices[venue] = SharedPrices(self.clock, max_age=broker_config.share_prices_s)
        # A fleet shares one bucket per API key in Redis; one process keeps its own.
        self.rate_limiters: dict[str, RateLimiter] = {
            name: (
                RateLimiter(broker.max_calls_per_s, broker.burst, clock=self.clock)
                if self.coordinator is None
                else _shared_rate_limiter(
                    self.coordinator,
                    name,
                    broker,
                    clock=self.clock,
                    max_wait_s=config.coordination.rate_limit_max_wait_s,
                )
            )
            for name, broker in config.brokers.items()
            if broker.max_calls_per_s is not None
        }
        # One market and fault plan per paper exchange, shared by its accounts.
        self._paper_exchanges: dict[str, tuple[PaperMarket, FaultPlan]] = {}
        # Before the accounts: a ccxt entry with async_reads puts its exchange on this loop.
        self.reads_ahead = (
            ReadsAhead(
                max_in_flight=config.enforcement.max_in_flight,
                read_timeout_s=config.enforcement.read_timeout_s,
            )
            if config.enforcement.reads_ahead
            else None
        )
        self.accounts: dict[str, AccountRuntime] = {
            account.id: self._account(index, account)
            for index, account in enumerate(config.accounts)
        }
        self.exits = ContinuousExitEnforcer(
            [a.enforcer for a in self.accounts.values()],
            interval=config.enforcement.interval_s,
            clock=self.clock,
            max_concurrency=config.enforcement.max_concurrency,
            leases=self.leases,
            reads_ahead=self.reads_ahead,
        )
        self.exits.add_listener(self._record)
        # Wall time of each account's last completed step: /metrics exports it so an alert
        # can see enforcement stall (results alone cannot show a loop that stopped producing).
        self._completed_at: dict[str, float] = {}
        self.exits.add_result_listener(self._on_result)
        self.alerts = AlertRouter(sinks_from_config(config.alerts), clock=self.clock)
        self.add_listener(self.alerts)
        latest = self.store.audit_log(limit=1)
        self._audit_seen = latest[0].id if latest else 0  # announce what happens from now on
        self._apply_confirmations_made_while_down()

    def _apply_confirmations_made_while_down(self) -> None:
        """Apply the ``confirm-positions`` records the previous run never saw.

        An operator may confirm while the service is stopped (the CLI writes the audit log).
        The previous run's last look at the log is in its ``service_stopped`` record; what came
        after it was written while no service watched. A confirmation the previous run saw was
        applied there, and is not replayed: it may have been proven wrong since (the symbol
        seen held again). After a crash (no such record) nothing is replayed: confirm again.
        """
        try:
            records = self.store.audit_log(limit=500)
        except BrokerGuardError:
            return
        stopped = next((r for r in records if r.action == SERVICE_STOPPED), None)
        seen = stopped.details.get("audit_seen") if stopped is not None else None
        if not isinstance(seen, int):
            return
        for record in reversed(records):
            if record.id > seen:
                self._apply_confirmation(record)

    def _apply_confirmation(self, record: AuditRecord) -> None:
        """Apply one ``positions_confirmed`` record to its account's broker (others: ignored)."""
        runtime = self.accounts.get(record.account_id or "")
        symbols = record.details.get("symbols")
        if (
            runtime is not None
            and record.action == POSITIONS_CONFIRMED
            and isinstance(symbols, list)
            and all(isinstance(x, str) for x in symbols)
        ):
            runtime.broker.accept_position_loss(symbols)

    # ------------------------------------------------------------------ building

    def _breakers_for(self, name: str, venue: str) -> dict[str, BrokerCircuitBreaker]:
        """The read and write breakers of `venue`, with the settings of its entry `name`."""
        settings = self.config.breaker_for(name)
        breakers = {}
        for scope in ("read", "write"):
            options: dict[str, Any] = {
                "max_attempts": settings.max_attempts,
                "max_total_delay": settings.max_total_delay_s,
                "max_recovery_timeout": settings.max_recovery_timeout_s,
                "backoff": self.config.backoff.policy(),
                "scope": scope,
                "clock": self.clock,
                "rng": random.Random(f"{venue}:{scope}"),  # noqa: S311 (jitter)
            }
            keys = sum(1 for n in self.config.brokers if self.config.venue_of(n) == venue)
            if keys > 1:  # one key's own fatal error or rate limit is not the exchange's outage
                options["classifier"] = VenueClassifier(self.clock)
            kind = BrokerCircuitBreaker
            if self.coordinator is not None:  # the fleet's circuit, in Redis
                kind = _shared_breaker_class()
                options["coordinator"] = self.coordinator
            breaker = kind(
                venue,
                settings.failure_threshold,
                settings.recovery_timeout_s,
                settings.success_threshold,
                **options,
            )
            breaker.add_listener(self._on_transition)
            breakers[scope] = breaker
        return breakers

    def _account(self, index: int, account: AccountConfig) -> AccountRuntime:
        broker_config = self.config.brokers[account.broker]
        breakers = self.breakers[account.broker]
        paper = None
        venue = self.config.venue_of(account.broker)
        if broker_config.kind == "paper":
            paper = self._paper_exchanges.get(venue)
            if paper is None:
                paper = _paper_exchange(broker_config, self.clock)
                self._paper_exchanges[venue] = paper
        broker = _make_broker(
            account,
            broker_config,
            index,
            read=breakers["read"],
            write=breakers["write"],
            clock=self.clock,
            limiter=self.rate_limiters.get(account.broker),
            paper=paper,
            coordinator=self.coordinator,
            reads=self.reads_ahead,
        )
        _with_order_truth(broker, broker_config)
        broker.api_key_name = account.broker  # its entry: one API key (never the key itself)
        if broker_config.share_prices_s > 0:
            broker.share_prices(self.prices.get(venue))
        valuator = Valuator(
            broker, store=self.store, clock=self.clock, max_quote_age=account.max_quote_age_s
        )
        enforcer = PositionCapEnforcer(
            broker,
            account.max_positions,
            max_cycles=account.max_cycles,
            settle_timeout=account.settle_timeout_s,
            store=self.store,
            clock=self.clock,
            count_unpriced=account.count_unpriced,
            valuator=valuator,
        )
        gate = TradingGate(
            broker,
            account.max_positions,
            store=self.store,
            clock=self.clock,
            max_position_age=account.max_position_age_s,
            slots=self._slots,
        )
        entries = EntryBook(gate, clock=self.clock, store=self.store)
        supervisor = None
        if account.supervise is not None:
            supervisor = FreqtradeSupervisor.from_env(
                account.supervise.url,
                username_env=account.supervise.username_env,
                password_env=account.supervise.password_env,
                timeout_s=account.supervise.timeout_s,
            )
        return AccountRuntime(account, broker, enforcer, gate, entries, supervisor)

    # ------------------------------------------------------------------ events

    def add_listener(self, listener: Callable[[EnforcementEvent], object]) -> None:
        """Receive every event (enforcement and breaker transitions): alerts, metrics."""
        self._listeners.append(listener)

    def recent_events(self, limit: int = 50) -> list[EnforcementEvent]:
        """The newest events, newest first."""
        with self._events_lock:
            return list(self._events)[-limit:][::-1]

    def _on_result(self, account_id: str, result: dict[str, Any]) -> None:
        """Stamp a completed step with the clock's wall time; other outcomes let it age."""
        if result.get("status") in _COMPLETED_STATUSES:
            self._completed_at[account_id] = self.clock.time()

    def _on_transition(
        self, breaker: BrokerCircuitBreaker, old: CircuitState, new: CircuitState
    ) -> None:
        self._record(
            BreakerTransitioned(
                breaker.broker_name, self.clock.time(), breaker.scope, old.value, new.value
            )
        )

    def _record(self, event: EnforcementEvent) -> None:
        with self._events_lock:
            self._events.append(event)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("service listener %r failed on %r", listener, event)

    # ------------------------------------------------------------------ operating

    def account(self, account_id: str) -> AccountRuntime:
        """The runtime of an account; ConfigurationError if there is none."""
        try:
            return self.accounts[account_id]
        except KeyError:
            known = ", ".join(sorted(self.accounts))
            raise ConfigurationError(f"no account {account_id!r} (known: {known})") from None

    def tick(self) -> dict[str, dict[str, Any]]:
        """One enforcement pass over every account (and a look for operators' actions)."""
        for prices in self.prices.values():
            prices.new_pass()  # each pass values positions at prices of its own
        self.watch_operator_actions()
        self.supervise_bots()  # exits handed to the bots before the enforcer sells
        results = self.exits.tick()
        self.supervise_bots()  # a halt decided in this pass locks the bot now
        self.refresh_dead_man_switches()
        self.sweep_entries()
        return results

    def supervise_bots(self) -> None:
        """Keep each supervised bot in line with brokerguard (every pass, idempotent).

        A halt is the bot's lock on every pair (in its own database: it survives the bot's
        restart) and is lifted on resume; an excess is exited through the bot first for the
        trades it knows (its books stay true), the enforcer selling the rest, and itself after
        ``exit_grace_s``; positions the exchange holds that the bot does not know are reported
        (``untracked``) and counted like any other.
        """
        for account_id, runtime in self.accounts.items():
            if runtime.supervisor is None:
                continue
            previous = runtime.supervision or {}
            try:
                runtime.supervision = self._supervise(account_id, runtime, runtime.supervisor)
            except BrokerGuardError as exc:
                runtime.supervision = {**previous, "error": f"{type(exc).__name__}: {exc}"}
                log.error("account %s: the supervised bot cannot be reached: %s", account_id, exc)

    def _supervise(
        self, account_id: str, runtime: AccountRuntime, bot: FreqtradeSupervisor
    ) -> dict[str, Any]:
        settings = runtime.config.supervise
        if settings is None:  # pragma: no cover (only supervised accounts get here)
            return {}
        try:
            halt = self.store.get_halt(account_id)
            halted = halt is not None
            reason = halt.reason if halt is not None else ""
        except BrokerGuardError:
            halted, reason = True, "the state store cannot say whether the account is halted"
        ours = [lock for lock in bot.locks() if lock.by_brokerguard and lock.active]
        if halted and not ours:
            bot.lock_all(reason)
            log.warning("account %s: halted, so its bot is locked on every pair", account_id)
        elif not halted and ours:
            bot.unlock_brokerguard()
            log.warning("account %s: resumed, so its bot's lock is lifted", account_id)
        trades = {parse_symbol(t.pair): t for t in bot.open_trades() if t.is_open}
        snapshot = runtime.broker.last_position_snapshot()
        held = set() if snapshot is None else {p.symbol for p in snapshot.positions}
        untracked = sorted(held - set(trades))
        if untracked and untracked != (runtime.supervision or {}).get("untracked"):
            log.warning(
                "account %s: the exchange holds %s, which its bot does not know; counted toward "
                "the cap and liquidated by it when over",
                account_id,
                ", ".join(untracked),
            )
        now = self.clock.monotonic()
        # A symbol the bot was asked to exit and did not is the enforcer's to sell: not asked
        # again for a while (the enforcer sells it once the grace is over).
        again_after = max(_ASK_AGAIN_AFTER_S, 10 * settings.exit_grace_s)
        asked = runtime.bot_asked
        for symbol in [s for s, at in asked.items() if now - at >= again_after]:
            del asked[symbol]
        plan = runtime.enforcer.plan()  # a fresh read: an excess since the last pass counts
        runtime.last_plan = (now, plan)
        if plan["status"] == "over_cap":
            for item in plan["would_liquidate"]:
                trade = trades.get(item["symbol"])
                if trade is None or item["symbol"] in asked:
                    continue
                bot.force_exit(trade.trade_id)
                asked[item["symbol"]] = now
                runtime.enforcer.delegate_exit(item["symbol"], settings.exit_grace_s)
                self.store.record_audit(
                    account_id,
                    "bot_exit_requested",
                    ENFORCER_SOURCE,
                    "over the position cap: the bot exits its own trade first",
                    {"symbol": item["symbol"], "trade_id": trade.trade_id, "bot": bot.base_url},
                )
        return {
            "bot": bot.base_url,
            "locked": halted,
            "untracked": untracked,
            "delegated": sorted(runtime.enforcer.delegated()),
            "error": None,
        }

    def sweep_entries(self) -> None:
        """Resolve pre-trade reservations whose bots never reported (looked up at the broker)."""
        for account_id, runtime in self.accounts.items():
            try:
                runtime.entries.sweep()
            except BrokerGuardError as exc:
                log.warning("account %s: reservations not swept: %s", account_id, exc)

    def account_view(self, account_id: str) -> dict[str, Any]:
        """What a bot asks before it trades: the state, the cap, and what to exit now.

        ``exit_symbols`` is the enforcer's plan when the account is REDUCING (over its cap):
        the positions it would sell, smallest first.
        """
        runtime = self.account(account_id)
        state = runtime.gate.trading_state()
        snapshot = runtime.broker.last_position_snapshot()
        exits: list[str] = []
        if state is TradingState.REDUCING and snapshot is not None:
            now = self.clock.monotonic()
            cached = runtime.last_plan
            if cached is not None and now - cached[0] <= self.config.enforcement.interval_s:
                plan = cached[1]  # a bot polling every loop must not starve enforcement
            else:
                try:
                    plan = runtime.enforcer.plan()
                except BrokerGuardError:
                    plan = {"would_liquidate": []}
                runtime.last_plan = (now, plan)
            exits = [item["symbol"] for item in plan["would_liquidate"]]
        return {
            "account_id": account_id,
            "trading_state": state.value,
            "max_positions": runtime.config.max_positions,
            "positions": None if snapshot is None else snapshot.count,
            "symbols_held": [] if snapshot is None else [p.symbol for p in snapshot.positions],
            "exit_symbols": exits,
        }

    def refresh_dead_man_switches(self) -> None:
        """Re-arm each configured dead man's switch (every pass; the next pass is the retry).

        A refresh that fails is logged and shown in status: when the switch fires, the venue
        cancels the account's open orders, which is the point of it (fail closed).
        """
        for account_id, runtime in self.accounts.items():
            timeout = self.config.brokers[runtime.config.broker].dead_man_switch_s
            if timeout is None or not runtime.broker.has_dead_man_switch:
                continue
            state: dict[str, Any] = {"timeout_s": timeout, "trigger_at": None, "error": None}
            previous = runtime.dead_man_switch or {}
            try:
                state["trigger_at"] = runtime.broker.arm_dead_man_switch(timeout)
            except BrokerGuardError as exc:
                state["trigger_at"] = previous.get("trigger_at")
                state["error"] = f"{type(exc).__name__}: {exc}"
                log.error(
                    "account %s: the dead man's switch could not be refreshed (%s); the venue "
                    "cancels its open orders at %s unless a later refresh succeeds",
                    account_id,
                    state["error"],
                    state["trigger_at"],
                )
            runtime.dead_man_switch = state

    def enforce_once(self, account_id: str) -> dict[str, Any]:
        """Enforce one account now (the CLI's ``enforce``), under its lease in a fleet.

        In a fleet the account's lease is taken first, whichever worker prefers it: if a
        worker holds it now, nothing is done (``status: "held_elsewhere"``), because two
        enforcers on one account could sell one position twice.
        """
        enforcer = self.account(account_id).enforcer
        if self.leases is None:
            return enforcer.enforce_cap()[1]
        lease = self.leases.take(account_id)
        if lease is None:
            holder = self.leases.coordinator.lease_holder(account_id)
            return {
                "account_id": account_id,
                "status": "held_elsewhere",
                "position_count": None,
                "max_positions": enforcer.max_positions,
                "reason": f"worker {holder[0] if holder else '?'} holds this account's lease; "
                "nothing was done",
            }
        try:
            leases = self.leases
            return enforcer.enforce_cap(
                fence_token=lease.token,
                fence_holder=lease.owner,
                fence_namespace=leases.namespace,
                keep_lease=lambda: leases.keep(lease),
            )[1]
        finally:
            self.leases.give_back(account_id)

    def strategy_step(self, account_id: str) -> str:
        """One move of the demo strategy: try to open a position, through the gate.

        One try in seven is a *rogue* entry that bypasses the gate (as a second bot or a human
        would), so the cap enforcer has real excess to clear.
        """
        runtime = self.account(account_id)
        symbols = runtime.config.symbols or _DEMO_SYMBOLS
        symbol = self._rng.choice(symbols)
        rogue = self._rng.random() < 1 / 7
        try:
            price = runtime.broker.get_current_price(symbol)
            if price is None:
                return f"{symbol}: no usable price, no entry"
            quantity = (Decimal(100) / price).quantize(Decimal("1e-6"))
            if rogue:
                runtime.broker.place_market_order(symbol, Side.BUY, quantity)
                return f"{symbol}: ROGUE entry (bypassed the gate)"
            with runtime.gate.reserve_entry(symbol):
                runtime.broker.place_market_order(symbol, Side.BUY, quantity)
        except EntryDenied as exc:
            return f"{symbol}: refused {exc.decision.reason}"
        except BrokerGuardError as exc:
            return f"{symbol}: {type(exc).__name__}"
        return f"{symbol}: entered"

    def halt(self, account_id: str, reason: str, operator: str) -> None:
        """Halt an account by hand (audited, announced)."""
        self.account(account_id)
        self.store.halt(account_id, reason, f"operator:{operator}")
        self.watch_operator_actions()

    def resume(self, account_id: str, operator: str, reason: str) -> bool:
        """Lift an account's halt (operator and reason required; audited, announced)."""
        self.account(account_id)
        lifted = self.store.resume(account_id, operator, reason)
        self.watch_operator_actions()
        return lifted

    def confirm_positions(
        self, account_id: str, symbols: Sequence[str], operator: str, reason: str
    ) -> list[str]:
        """An operator confirms that `symbols` are really gone from the account (audited).

        The record goes to the audit log, where every worker of a fleet reads it; the worker
        enforcing the account believes the next read that lacks them.
        """
        self.account(account_id)
        try:
            canonical = sorted({parse_symbol(s) for s in symbols})
        except InvalidBrokerData as exc:
            raise ConfigurationError(f"confirm_positions: {exc}") from exc
        if not canonical:
            raise ConfigurationError("confirm_positions needs at least one symbol")
        self.store.record_audit(
            account_id,
            POSITIONS_CONFIRMED,
            f"operator:{operator}",
            reason,
            {"symbols": canonical},
        )
        self.watch_operator_actions()
        return canonical

    def watch_operator_actions(self) -> None:
        """Announce halts and resumes written to the store since the last look.

        Operators act through the HTTP server, through this object, or through the CLI in
        another process: the audit log is where they all meet, so it is the one source of these
        events. The enforcer's own halts are announced by the enforcement loop instead.
        """
        try:
            records = self.store.audit_log(limit=200)
        except BrokerGuardError:
            return  # the store is down: readiness says so; nothing to announce
        for record in reversed(records):
            if record.id <= self._audit_seen:
                continue
            self._audit_seen = record.id
            if record.actor == ENFORCER_SOURCE or record.account_id is None:
                continue
            if record.action in {"halt", "resume"}:
                self.store.invalidate_cache()  # perhaps another process's: read it now
            if record.action == "halt":
                self._record(
                    TradingHalted(
                        record.account_id, record.at, f"{record.reason} (by {record.actor})"
                    )
                )
            elif record.action == "resume":
                self._record(
                    TradingResumed(record.account_id, record.at, record.actor, record.reason)
                )
            elif record.action == POSITIONS_CONFIRMED:
                self._apply_confirmation(record)

    def run(self, *, demo_strategy: bool = False, strategy_interval: float = 2.0) -> None:
        """Enforce every interval (and move the demo strategy) until :meth:`stop`."""
        next_pass = self.clock.monotonic()
        while not self._stop.is_set():
            now = self.clock.monotonic()
            if now >= next_pass:
                self.tick()  # a stop request lets this pass finish
                next_pass = now + self.config.enforcement.interval_s
            if demo_strategy:
                for account_id in self.accounts:
                    if self._stop.is_set():
                        break
                    log.info("strategy %s: %s", account_id, self.strategy_step(account_id))
            self._sleep(strategy_interval if demo_strategy else max(0.0, next_pass - now))

    def stop(self) -> None:
        """Ask :meth:`run` to return once the steps under way are done (none is started)."""
        self._stop.set()
        self.exits.stop(timeout=0)  # the pass in progress starts no further account

    def close(self, *, mark_stopped: bool = True) -> None:
        """Deliver pending alerts, give the fleet back this worker's accounts, release stores.

        `mark_stopped` records the clean stop (``service_stopped``, with the last audit record
        looked at) so the next start applies what operators did meanwhile; a one-off command
        (``enforce``) is not a run of the service and passes False.
        """
        self.watch_operator_actions()
        if mark_stopped:
            with contextlib.suppress(BrokerGuardError):  # a store that is down: nothing kept
                self.store.record_audit(
                    None, SERVICE_STOPPED, "service", "closed", {"audit_seen": self._audit_seen}
                )
        self.alerts.close()
        self._close_exchanges_on_the_reads_loop()
        for runtime in self.accounts.values():
            close = getattr(runtime.broker, "close", None)  # adapters holding connections
            if callable(close):
                close()
        if self.leases is not None:
            with contextlib.suppress(BrokerGuardError):
                self.leases.release_all()  # the others take over now, not after the ttl
        if self.coordinator is not None:
            self.coordinator.close()
        if self.reads_ahead is not None:
            self.reads_ahead.close()
        self.store.close()

    def _close_exchanges_on_the_reads_loop(self) -> None:
        """Close the async exchanges' HTTP sessions, all at once, on the loop they live on.

        Before the loop stops (each close awaits the session's own shutdown, about 0.25 s:
        together, not one account after the other). A failure is logged: closing goes on.
        """
        reads = self.reads_ahead
        loop = None if reads is None else reads.running_loop
        brokers = [
            r.broker
            for r in self.accounts.values()
            if loop is not None and getattr(r.broker, "home_loop", None) is loop
        ]
        if loop is None or not brokers:
            return  # never started, or closed already: nothing lives on it

        async def close_all() -> list[object]:
            return await asyncio.gather(
                *(b.aclose() for b in brokers),  # type: ignore[attr-defined]  # home_loop: ccxt
                return_exceptions=True,
            )

        outcomes = asyncio.run_coroutine_threadsafe(close_all(), loop).result()
        for broker, outcome in zip(brokers, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning(
                    "closing the exchange session of account %s failed: %s",
                    broker.account_id,
                    outcome,
                )

    def _sleep(self, seconds: float) -> None:
        remaining = seconds
        while remaining > 0 and not self._stop.is_set():
            step = min(remaining, 0.25)
            self.clock.sleep(step)
            remaining -= step

    # ------------------------------------------------------------------ status

    def ready(self) -> tuple[bool, list[str]]:
        """Ready unless a broker is OFFLINE or the store is unreachable; with the reasons."""
        reasons = []
        if not self.store.ping():
            reasons.append("store unreachable")
        if self.coordinator is not None and not self.coordinator.ping():
            reasons.append(
                f"coordination store unreachable ({self.coordinator.status()['reason']}): "
                "trading blocked fleet-wide"
            )
        for name, breakers in self.breakers.items():
            for scope, breaker in breakers.items():
                if breaker.state is CircuitState.OPEN:
                    reasons.append(f"broker {name} offline ({scope} circuit open)")
        if self.leases is not None:  # loud, never silent: an account nobody can enforce
            locked = sorted(self.leases.lockouts().items())
            reasons.extend(f"account {account} unenforced: {why}" for account, why in locked)
        return not reasons, reasons

    def _unresolved_orders(self, broker: BaseBroker, store_ok: bool) -> list[dict[str, Any]]:
        """This process's unresolved orders and the journal's (maybe an earlier run's), once."""
        orders = [o.as_dict() for o in broker.unresolved_orders()]
        if not store_ok:
            return orders
        known = {o["client_order_id"] for o in orders}
        journaled = self.store.journal(
            broker.account_id, statuses={OrderState.UNRESOLVED.value, OrderState.EXISTS.value}
        )
        orders.extend(
            {
                "client_order_id": entry.client_order_id,
                "symbol": entry.symbol,
                "side": entry.side,
                "quantity": str(entry.quantity),
                "state": entry.status,
                "since": entry.updated_at,
                "absent_after": None,
                "reason": "journaled",
            }
            for entry in journaled
            if entry.client_order_id not in known
        )
        return orders

    def status(self) -> dict[str, Any]:
        """Everything an operator sees: brokers, accounts, halts, recent events. No secrets."""
        store_ok = self.store.ping()
        halts = {h.account_id: asdict(h) for h in self.store.halts()} if store_ok else {}
        results = self.exits.last_results
        accounts = {}
        for account_id, runtime in self.accounts.items():
            snapshot = runtime.broker.last_position_snapshot()
            accounts[account_id] = {
                "broker": runtime.config.broker,
                "trading_state": runtime.gate.trading_state().value,
                "max_positions": runtime.config.max_positions,
                "positions": None if snapshot is None else snapshot.count,
                "symbols_held": [] if snapshot is None else [p.symbol for p in snapshot.positions],
                "positions_age_seconds": (
                    None if snapshot is None else snapshot.age(self.clock.monotonic())
                ),
                "halt": halts.get(account_id),
                "paused_symbols": (
                    self.store.paused_symbol_reasons(account_id) if store_ok else None
                ),
                "last_enforcement": results.get(account_id),
                "last_enforcement_completed_at": self._completed_at.get(account_id),
                "data_quality": runtime.broker.data_quality(),
                "unresolved_orders": self._unresolved_orders(runtime.broker, store_ok),
                "positions_suspect": _suspicion_dict(runtime.broker),
                "dead_man_switch": runtime.dead_man_switch,
                "supervision": runtime.supervision,
            }
        brokers = {}
        for name, breakers in self.breakers.items():
            reports = {scope: b.get_status() for scope, b in breakers.items()}
            states = [b.get_broker_health_state().value for b in breakers.values()]
            worst = max(states, key=["healthy", "degraded", "offline"].index)
            limiter = self.rate_limiters.get(name)
            brokers[name] = {
                "kind": self.config.brokers[name].kind,
                "rate_limit": None
                if limiter is None
                else {
                    "per_second": limiter.rate,
                    "burst": limiter.burst,
                    "waited_s": limiter.waited,
                    # A fleet's bucket is per API key in Redis (SharedRateLimiter); it counts
                    # the calls it refused for a wait over rate_limit_max_wait_s.
                    "fleet_wide": type(limiter) is not RateLimiter,
                    "refused": getattr(limiter, "refused", 0),
                },
                "health_state": worst,
                "trading_allowed": all(b.is_trading_allowed() for b in breakers.values()),
                "breakers": reports,
            }
        ready, reasons = self.ready()
        return {
            "service": {
                "started_at": self.started_at,
                "uptime_seconds": self.clock.monotonic() - self._started_mono,
                "store": self.store.safe_url,
                "store_ok": store_ok,
                "coordination": (
                    {"mode": "embedded"}
                    if self.coordinator is None or self.leases is None
                    else {
                        "mode": "redis",
                        **self.coordinator.status(),
                        "worker": self.leases.owner,
                        "accounts_held": sorted(self.leases.held()),
                        "accounts_locked_out": self.leases.lockouts(),
                    }
                ),
                "ready": ready,
                "not_ready_reasons": reasons,
                "breaking_enabled": is_breaking_enabled(),
                "enforcement_passes": self.exits.ticks,
            },
            "brokers": brokers,
            "accounts": accounts,
            "halts": list(halts.values()),
            "events": [event_to_dict(e) for e in self.recent_events(50)],
        }


def _suspicion_dict(broker: BaseBroker) -> dict[str, Any] | None:
    suspicion = broker.position_suspicion()
    if suspicion is None:
        return None
    policy = broker.plausibility_policy
    return {
        "missing": list(suspicion.missing),
        "agreeing_reads": suspicion.agreeing,
        "needed_reads": policy.confirm_reads if policy.believe_reads else None,
        "waiting_for": broker.awaited_evidence(),
    }


GC_THRESHOLDS: Final = (10_000, 50, 1_000)
"""The collector's thresholds in a guard service process (CPython's default: 700, 10, 10)."""


def tune_gc() -> Callable[[], None]:
    """Set the garbage collector for a service holding a fleet's state (``brokerguard run``).

    A fleet's live state is millions of objects (10,000 accounts: about 3 million) that live as
    long as the process, and a pass makes millions of short-lived ones. With CPython's default
    thresholds a pass triggered dozens of collections of the older generations, each walking
    the whole live state: measured, a third of a pass's CPU (10,000 accounts, one key each:
    about 360 µs per account, 240 µs with this). So: the young generation is collected every
    10,000 net allocations instead of 700, the older ones less often, and what the start built
    (configuration, brokers, breakers, the stores) is frozen: never walked again. Reference
    counting frees nearly all garbage anyway; the cycles the collector exists for are still
    collected, later. Memory stays flat (bench/memory.py runs with it). Not applied to a
    process that only imports brokerguard: a bot's own collector settings are its own.

    Returns what puts the collector back as it was (a service run inside another program).
    """
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.collect()
    gc.freeze()

    def restore() -> None:
        gc.unfreeze()
        gc.set_threshold(*before)

    return restore


def event_to_dict(event: EnforcementEvent) -> dict[str, Any]:
    """An event as JSON-ready data, with its kind."""
    return {"kind": type(event).__name__, **asdict(event)}


def _open_store(config: BrokerGuardConfig, clock: Clock) -> StateStore:
    url = config.store.url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return open_store(
        url,
        clock=clock,
        timeout=config.store.timeout_s,
        password=require_secret(config.store.password_env, "store.password_env"),
        cache_s=config.store.cache_s,
        # Every enforcement thread may hold a connection at once, with room for the HTTP
        # server, the entry sweeps and the operator watch beside them.
        pool_size=config.enforcement.max_concurrency + 4,
    )


def _paper_exchange(config: BrokerConfig, clock: Clock) -> tuple[PaperMarket, FaultPlan]:
    """One paper exchange: its market (prices every account sees) and its fault plan."""
    start = clock.monotonic()
    faults = config.faults
    plan = FaultPlan(
        error_rate=faults.error_rate,
        latency=faults.latency_s,
        outages=[OutageWindow(start + a, start + b) for a, b in faults.outages_s],
        bad_prices={s: MISSING if v == "MISSING" else v for s, v in faults.bad_prices.items()},
        stale_positions_rate=faults.stale_positions_rate,
        stale_positions_age=faults.stale_positions_age_s,
        unsettled_sells=(
            faults.unsettled_sells
            if isinstance(faults.unsettled_sells, bool)
            else frozenset(faults.unsettled_sells)
        ),
        rate_limit_rate=faults.rate_limit_rate,
        rate_limit_retry_after=faults.rate_limit_retry_after_s,
        fail_after_accept_rate=faults.fail_after_accept_rate,
    )
    return PaperMarket(config.prices or None, seed=config.seed, start=start), plan


def _fleet(config: BrokerGuardConfig, store: StateStore) -> tuple[RedisCoordinator, AccountLeases]:
    try:
        from brokerguard.coordination import RedisCoordinator  # noqa: PLC0415 (optional)
        from brokerguard.coordination.leases import AccountLeases  # noqa: PLC0415
    except ImportError:
        raise ConfigurationError(
            "coordination_url needs redis: pip install 'brokerguard[redis]'"
        ) from None
    settings = config.coordination
    coordinator = RedisCoordinator(
        str(config.coordination_url),
        namespace=settings.namespace,
        timeout=settings.timeout_s,
        password=require_secret(settings.password_env, "coordination.password_env"),
    )
    return coordinator, AccountLeases(coordinator, ttl=settings.lease_ttl_s, store=store)


def _shared_slots(coordinator: RedisCoordinator) -> SharedSlots:
    from brokerguard.coordination import SharedSlots  # noqa: PLC0415 (optional)

    return SharedSlots(coordinator)


def _shared_rate_limiter(
    coordinator: RedisCoordinator,
    name: str,
    config: BrokerConfig,
    *,
    clock: Clock,
    max_wait_s: float,
) -> RateLimiter:
    """The fleet's bucket for the broker's API key (named by a salted hash, never the key)."""
    from brokerguard.coordination.ratelimit import (  # noqa: PLC0415 (optional)
        SharedRateLimiter,
        bucket_fingerprint,
    )

    # The venue counts per API key: a ccxt exchange's bucket is (exchange, key value), shared
    # by every broker entry and worker using that key; a broker without a key is its own.
    venue = str(config.exchange) if config.kind == "ccxt" else f"{config.kind}:{name}"
    fingerprint = bucket_fingerprint(venue, resolve_secret(config.api_key_env))
    rate = float(config.max_calls_per_s or 0)
    return SharedRateLimiter(
        coordinator, fingerprint, rate, config.burst, clock=clock, max_wait_s=max_wait_s
    )


def _shared_breaker_class() -> type[BrokerCircuitBreaker]:
    from brokerguard.coordination import SharedCircuitBreaker  # noqa: PLC0415 (optional)

    return SharedCircuitBreaker


def _with_order_truth(broker: BaseBroker, config: BrokerConfig) -> BaseBroker:
    """Apply the broker's order-lifecycle and plausibility settings, whatever its kind."""
    broker.order_deadline_s = config.order_deadline_s
    broker.resolution_margin_s = config.resolution_margin_s
    broker.plausibility_policy = PlausibilityPolicy(
        believe_reads=config.positions_believe_reads,
        confirm_reads=config.positions_confirm_reads,
        confirm_after_s=config.positions_confirm_after_s,
        quiet_after_glitch_s=config.positions_quiet_after_glitch_s,
    )
    if config.call_weights:
        broker.call_weights = {**broker.call_weights, **config.call_weights}
    return broker


def _make_broker(
    account: AccountConfig,
    config: BrokerConfig,
    index: int,
    *,
    read: BrokerCircuitBreaker,
    write: BrokerCircuitBreaker,
    clock: Clock,
    limiter: RateLimiter | None,
    paper: tuple[PaperMarket, FaultPlan] | None = None,
    coordinator: RedisCoordinator | None = None,
    reads: ReadsAhead | None = None,
) -> BaseBroker:
    name = read.broker_name
    if config.kind == "paper_exchange":
        from brokerguard.brokers.paper_exchange import PaperExchangeBroker  # noqa: PLC0415

        return PaperExchangeBroker(
            str(config.api_url),
            name,
            account_id=account.id,
            timeout=config.timeout_s,
            clock=clock,
            read_breaker=read,
            write_breaker=write,
            rate_limiter=limiter,
        )
    if config.kind == "paper":
        market, plan = paper or _paper_exchange(config, clock)
        return PaperBroker(
            name,
            account_id=account.id,
            market=market,
            positions=account.positions,
            seed=config.seed + index,
            clock=clock,
            settle_delay=config.settle_delay_s,
            fault_plan=plan,
            read_breaker=read,
            write_breaker=write,
            rate_limiter=limiter,
        )
    return _make_ccxt_broker(
        account,
        config,
        read=read,
        write=write,
        clock=clock,
        limiter=limiter,
        coordinator=coordinator,
        reads=reads,
    )


def _make_ccxt_broker(
    account: AccountConfig,
    config: BrokerConfig,
    *,
    read: BrokerCircuitBreaker,
    write: BrokerCircuitBreaker,
    clock: Clock,
    limiter: RateLimiter | None,
    coordinator: RedisCoordinator | None = None,
    reads: ReadsAhead | None = None,
) -> BaseBroker:
    """The account's ccxt broker; with ``async_reads``, a ``ccxt.async_support`` exchange.

    The async exchange's aiohttp session lives on the reads loop (`reads`): the pass awaits its
    reads there, and its synchronous calls (orders, lookups, cancels) run their coroutines
    there from the calling thread. :meth:`GuardService.close` closes it there.
    """
    try:
        import ccxt  # noqa: PLC0415 (optional dependency)

        from brokerguard.brokers.ccxt import CcxtBroker  # noqa: PLC0415
    except ImportError:
        raise ConfigurationError(
            "a ccxt broker needs ccxt: pip install 'brokerguard[ccxt]'"
        ) from None
    module: Any = ccxt
    loop = None
    if config.async_reads:
        if reads is None:  # the config refuses it; a hand-built service must not get around it
            raise ConfigurationError("async_reads needs [enforcement] reads_ahead = true")
        import ccxt.async_support  # noqa: PLC0415 (aiohttp: only for the entries that use it)

        module, loop = ccxt.async_support, reads.loop
    exchange_class = getattr(module, str(config.exchange), None)
    if exchange_class is None:
        raise ConfigurationError(f"ccxt has no exchange {config.exchange!r}")
    settings: Mapping[str, Any] = {
        "apiKey": resolve_secret(config.api_key_env),
        "secret": resolve_secret(config.api_secret_env),
        # With max_calls_per_s set, brokerguard's limiter (shared by all accounts on the
        # broker) paces the calls; ccxt's own per-instance throttle would pace them again.
        "enableRateLimit": config.max_calls_per_s is None,
        "timeout": int(config.timeout_s * 1000),
    }
    exchange = exchange_class(
        dict(settings) if loop is None else {**settings, "asyncio_loop": loop}
    )
    if config.api_url:
        api = exchange.urls.get("api")
        exchange.urls["api"] = (
            dict.fromkeys(api, config.api_url) if isinstance(api, Mapping) else config.api_url
        )
    nonce_source = None
    if coordinator is not None and settings["apiKey"]:
        from brokerguard.coordination import RedisNonceSource  # noqa: PLC0415 (optional)

        # One nonce counter for the API key across every worker of the fleet.
        nonce_source = RedisNonceSource(coordinator, str(settings["apiKey"]))
    return CcxtBroker(
        exchange,
        read.broker_name,
        account_id=account.id,
        quote_currency=config.quote_currency,
        ignore_assets=config.ignore_assets,
        nonce_source=nonce_source,
        clock=clock,
        read_breaker=read,
        write_breaker=write,
        rate_limiter=limiter,
        loop=loop,
    )
