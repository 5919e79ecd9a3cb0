"""Replays: the same trading strategy, naive and guarded, in the same faulty world.

Each :class:`Scenario` is a seeded paper-broker world on a :class:`FakeClock` (hours of trading
in seconds). :func:`simulate` runs it twice, side by side:

- **naive**, the seed's previous behaviour: a failed position fetch counts as 0 positions (and
  an empty one is believed), a missing price becomes $1.00, cleanup is a single pass without
  verification, and a failed call is retried at once, without a breaker and without looking an
  order up first;
- **guarded**: the same strategy through brokerguard (the trading gate, the cap enforcer, the
  breakers, no-fallback valuation, the order lifecycle: an order whose outcome is unknown is
  left unresolved, never resent).

Both report the same fields (:class:`RunStats`): the most positions ever held against the cap,
the steps spent over it, orders sent, orders sized with a made-up price, duplicated orders (as
the broker saw them: every order beyond the first of one intent, see
:func:`orders_per_intent`), halts, and calls that reached the broker during its outage.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from brokerguard.brokers.paper import MISSING, FaultPlan, OutageWindow, PaperBroker
from brokerguard.errors import BrokerGuardError, OrderUnconfirmedError
from brokerguard.models import Order, OrderRequest, Side, parse_price
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.risk.cap import PositionCapEnforcer
from brokerguard.risk.exits import ContinuousExitEnforcer
from brokerguard.risk.gate import EntryDenied, TradingGate
from brokerguard.store.state import open_store
from brokerguard.testing import FakeClock

__all__ = [
    "SCENARIOS",
    "UNIVERSE",
    "GuardedBot",
    "NaiveBot",
    "RunStats",
    "Scenario",
    "intent_of",
    "orders_per_intent",
    "simulate",
]

EPOCH = 1_795_000_000.0
FALLBACK_PRICE = Decimal("1.00")
"""The made-up price of the seed's naive bot. It exists only here, to show what it costs."""
UNIVERSE = [f"COIN{i:02d}/USD" for i in range(40)]

_RETRY_SUFFIX = "-try"


def intent_of(client_order_id: str) -> str:
    """The intent an order was sent for: its client order id without a naive retry's suffix."""
    return client_order_id.split(_RETRY_SUFFIX, 1)[0]


def orders_per_intent(orders: Iterable[Order]) -> Counter[str]:
    """Count the orders a broker holds per intent: more than one is a duplicate execution.

    Counted from the broker's own book, not from what a bot believes it sent: an order accepted
    after a timeout, or a client order id accepted again once its first order was final, is an
    order all the same.
    """
    return Counter(intent_of(order.client_order_id) for order in orders)


@dataclass(frozen=True)
class Scenario:
    """A world: how long, how often the strategy tries to enter, and what goes wrong when."""

    name: str
    description: str
    duration_s: float
    plan: Callable[[float], FaultPlan]
    cap: int = 8
    entry_every_s: float = 5.0
    enforce_every_s: float = 10.0
    outage: tuple[float, float] | None = None
    initial_positions: int = 0


def _incident(_start: float) -> FaultPlan:
    return FaultPlan(error_rate={"fetch_positions": 0.5})


def _outage(start: float) -> FaultPlan:
    return FaultPlan(outages=[OutageWindow(start + 600, start + 1200)])


def _no_prices(_start: float) -> FaultPlan:
    third = UNIVERSE[::3]
    bad: dict[str, object] = {}
    for i, symbol in enumerate(third):
        bad[symbol] = (MISSING, "NaN", 0)[i % 3]
    return FaultPlan(bad_prices=bad)


def _unsettled(_start: float) -> FaultPlan:
    return FaultPlan(unsettled_sells=True, error_rate={"fetch_positions": 0.2})


def _flaky(_start: float) -> FaultPlan:
    rates = dict.fromkeys(("fetch_positions", "fetch_prices", "submit_order", "fetch_order"), 0.3)
    return FaultPlan(error_rate=rates, fail_after_accept_rate=0.15)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "incident",
            "the seed's: cap 8, an entry try every 2 s, half the position fetches fail, "
            "cleanup once a minute",
            3600,
            _incident,
            entry_every_s=2.0,
            enforce_every_s=60.0,
        ),
        Scenario("outage", "the broker is down for 10 minutes", 1800, _outage, outage=(600, 1200)),
        Scenario("no-prices", "a third of the symbols have no usable price", 1800, _no_prices),
        Scenario(
            "unsettled",
            "12 positions for a cap of 8, and liquidation sells never fill",
            1800,
            _unsettled,
            initial_positions=12,
        ),
        Scenario("flaky", "30% random errors, 15% of orders lose their confirmation", 1800, _flaky),
    )
}


@dataclass
class RunStats:
    """What one run did, in the fields ``brokerguard simulate`` prints."""

    max_positions: int = 0
    cap: int = 0
    cap_violations: int = 0
    orders_sent: int = 0
    fallback_priced_orders: int = 0
    duplicate_orders: int = 0
    halts: int = 0
    broker_calls_during_outage: int = 0
    timeline: list[tuple[float, int, str]] = field(default_factory=list)
    """(seconds since start, positions held, circuit state) at every step, for plots."""
    fallback_priced_timeline: list[int] = field(default_factory=list)
    """Fallback-priced orders so far, at every step of `timeline` (the no-prices story)."""
    calls_per_minute: list[int] = field(default_factory=list)
    """Calls that reached the broker in each minute since start (the outage story). Binned by
    the call's own time, not by step: the guarded run's steps stretch while it backs off."""
    outage_s: tuple[float, float] | None = None
    """The outage window in seconds since start, if the world has one."""
    halted_at_s: float | None = None
    """Seconds since start of the first halt (the unsettled story), or None."""
    intents_by_orders: dict[int, int] = field(default_factory=dict)
    """How many intents the broker executed n times, by n (the flaky story: n > 1 is a
    duplicate)."""

    def summary(self) -> dict[str, Any]:
        """The fields without the per-step data the plots draw."""
        data = asdict(self)
        for key in _PLOT_ONLY:
            data.pop(key)
        return data


_PLOT_ONLY = (
    "timeline",
    "fallback_priced_timeline",
    "calls_per_minute",
    "outage_s",
    "halted_at_s",
    "intents_by_orders",
)


def simulate(name: str, *, seed: int = 0) -> dict[str, RunStats]:
    """Run scenario `name` naive and guarded on the same seeded world."""
    scenario = SCENARIOS[name]
    return {
        "naive": _run(scenario, seed, guarded=False),
        "guarded": _run(scenario, seed, guarded=True),
    }


def _world(scenario: Scenario, seed: int, clock: FakeClock) -> PaperBroker:
    rng = random.Random(seed)  # noqa: S311 (a simulation)
    prices = {s: f"{rng.uniform(0.5, 500):.4f}" for s in UNIVERSE}
    held = dict.fromkeys(UNIVERSE[1 : 1 + scenario.initial_positions], "1")
    return PaperBroker(
        "sim",
        seed=seed,
        clock=clock,
        prices=prices,
        positions=held,
        settle_delay=1.0,
        fault_plan=scenario.plan(clock.monotonic()),
        read_breaker=BrokerCircuitBreaker(
            "sim",
            scope="read",
            clock=clock,
            rng=random.Random(seed),  # noqa: S311 (a simulation)
        ),
        write_breaker=BrokerCircuitBreaker(
            "sim",
            scope="write",
            clock=clock,
            rng=random.Random(seed),  # noqa: S311 (a simulation)
        ),
    )


def _run(scenario: Scenario, seed: int, *, guarded: bool) -> RunStats:
    clock = FakeClock(start=EPOCH)
    broker = _world(scenario, seed, clock)
    stats = RunStats(cap=scenario.cap)
    bot: NaiveBot | GuardedBot = (
        GuardedBot(scenario, broker, clock) if guarded else NaiveBot(scenario, broker)
    )
    rng = random.Random(f"{seed}:strategy")  # noqa: S311 (the same decisions in both runs)
    next_enforce = 0.0
    elapsed = 0.0
    while elapsed < scenario.duration_s:
        symbol = rng.choice(UNIVERSE)
        bot.try_entry(symbol)
        if elapsed >= next_enforce:
            bot.cleanup()
            next_enforce = elapsed + scenario.enforce_every_s
        held = len(broker.true_positions())
        stats.max_positions = max(stats.max_positions, held)
        stats.cap_violations += held > scenario.cap
        stats.timeline.append((elapsed, held, broker.read_breaker.state.value))
        stats.fallback_priced_timeline.append(bot.fallback_priced)
        clock.advance(scenario.entry_every_s)
        elapsed = clock.monotonic() - EPOCH
    orders = broker.all_orders()
    stats.orders_sent = len(orders)
    stats.fallback_priced_orders = bot.fallback_priced
    stats.duplicate_orders = sum(n - 1 for n in orders_per_intent(orders).values() if n > 1)
    stats.halts = bot.halts()
    halted_at = bot.halted_at()
    stats.halted_at_s = None if halted_at is None else halted_at - EPOCH
    stats.intents_by_orders = dict(sorted(Counter(orders_per_intent(orders).values()).items()))
    stats.calls_per_minute = _calls_per_minute(broker)
    if scenario.outage is not None:
        start, end = scenario.outage
        stats.outage_s = scenario.outage
        stats.broker_calls_during_outage = len(broker.calls_between(EPOCH + start, EPOCH + end))
    return stats


def _calls_per_minute(broker: PaperBroker) -> list[int]:
    minutes = [int((call.at - EPOCH) // 60) for call in broker.calls_between(EPOCH, float("inf"))]
    counts = [0] * (max(minutes, default=-1) + 1)
    for minute in minutes:
        counts[minute] += 1
    return counts


class NaiveBot:
    """The seed's previous behaviour, faithfully wrong.

    Args:
        scenario: the world's cap and timing.
        broker: the paper broker, called raw (no breaker, no lookups).
        resend_same_id: resend a failed order under the same client order id instead of a new
            one per try: the belief that the id makes resends safe. On Kraken it does not: the
            id is checked only against *open* orders, so an original accepted late, after the
            resend filled, executes again under the same id.
    """

    RETRIES = 5

    def __init__(
        self, scenario: Scenario, broker: PaperBroker, *, resend_same_id: bool = False
    ) -> None:
        self.scenario = scenario
        self.broker = broker
        self.resend_same_id = resend_same_id
        self.fallback_priced = 0
        self.sent_per_intent: Counter[str] = Counter()
        self.prices_used: list[tuple[str, str, Decimal]] = []
        self._intents = itertools.count(1)  # next() is atomic: entries may run on threads
        self._cleanups = 0

    def _retry(self, call: Callable[[], Any]) -> Any:
        last: Exception | None = None
        for _ in range(self.RETRIES):  # immediately, no breaker, no backoff
            try:
                return call()
            except BrokerGuardError as exc:
                last = exc
        raise last  # type: ignore[misc]

    def _count(self) -> int:
        try:
            return len(self.broker.fetch_positions())
        except BrokerGuardError:
            return 0  # the bug: a failed fetch reads as "no positions"

    def try_entry(self, symbol: str) -> None:
        """Buy $100 of `symbol` if the (possibly wrong) count says there is room."""
        if self._count() >= self.scenario.cap:
            return
        try:
            raw = self._retry(lambda: self.broker.fetch_prices([symbol])).get(symbol)
            price = parse_price(raw)
        except BrokerGuardError:
            price = FALLBACK_PRICE  # the bug: a made-up $1.00
            self.fallback_priced += 1
        quantity = (Decimal(100) / price).quantize(Decimal("1e-6"))
        intent = f"intent-{next(self._intents)}"
        self.prices_used.append((intent, symbol, price))
        for attempt in range(self.RETRIES):
            cid = intent if self.resend_same_id else f"{intent}{_RETRY_SUFFIX}{attempt}"
            request = OrderRequest(symbol, Side.BUY, quantity, cid)
            before = self._orders_with(cid)
            try:
                self.broker.submit_order(request)
            except BrokerGuardError:
                # No lookup: the order may have landed, and it is sent again anyway. (Counted
                # here only for the statistics, from the broker's book: the bot never looks.)
                if self._orders_with(cid) > before:
                    self.sent_per_intent[intent] += 1
                continue
            self.sent_per_intent[intent] += 1
            return

    def _orders_with(self, client_order_id: str) -> int:
        return sum(1 for o in self.broker.all_orders() if o.client_order_id == client_order_id)

    def cleanup(self) -> None:
        """Sell the excess once, never checking that it worked."""
        try:
            positions = list(self.broker.fetch_positions())
        except BrokerGuardError:
            return  # "no positions": nothing to clean
        excess = len(positions) - self.scenario.cap
        for position in positions[: max(0, excess)]:  # one pass, never verified
            self._cleanups += 1
            request = OrderRequest(
                position.symbol, Side.SELL, position.quantity, f"clean-{self._cleanups}"
            )
            try:
                self.broker.submit_order(request)
            except BrokerGuardError:
                continue

    def halts(self) -> int:
        """The naive bot never halts."""
        return 0

    def halted_at(self) -> float | None:
        """The naive bot never halts."""
        return None


class GuardedBot:
    """The same strategy through brokerguard, written as a correct bot.

    An entry whose order ends unresolved (:class:`~brokerguard.errors.OrderUnconfirmedError`)
    is left alone: the gate keeps its slot, the broker keeps the order on its unresolved list,
    and nothing is resent under a new id. The cleanup's enforcer tick resolves it (the
    enforcer calls ``broker.resolve_unresolved()`` first): found, it is adopted; proven absent
    after its deadline, its slot frees.
    """

    def __init__(self, scenario: Scenario, broker: PaperBroker, clock: FakeClock) -> None:
        self.broker = broker
        self.store = open_store("sqlite://", clock=clock)
        self.gate = TradingGate(
            broker, scenario.cap, store=self.store, max_position_age=scenario.entry_every_s
        )
        enforcer = PositionCapEnforcer(broker, scenario.cap, store=self.store, clock=clock)
        self.exits = ContinuousExitEnforcer(enforcer, interval=scenario.enforce_every_s)
        self.fallback_priced = 0  # by construction: there is no code path that could
        self.sent_per_intent: Counter[str] = Counter()
        self.prices_used: list[tuple[str, str, Decimal]] = []
        self.unresolved: list[str] = []
        """Client order ids of entries left unresolved (never resent: the broker resolves)."""
        self._intents = itertools.count(1)  # next() is atomic: entries may run on threads

    def try_entry(self, symbol: str) -> None:
        """Open a new $100 position in `symbol` through the gate, at a real price only."""
        snapshot = self.broker.last_position_snapshot()
        if snapshot is not None and symbol in {p.symbol for p in snapshot.positions}:
            return  # the strategy opens new positions only
        try:
            with self.gate.reserve_entry(symbol) as reservation:
                price = self.broker.get_current_price(symbol)
                if price is None:
                    reservation.cancel()  # no price, no entry: never a made-up one
                    return
                cid = f"intent-{next(self._intents)}"
                self.prices_used.append((cid, symbol, price))
                quantity = (Decimal(100) / price).quantize(Decimal("1e-6"))
                self.broker.place_market_order(symbol, Side.BUY, quantity, client_order_id=cid)
        except EntryDenied:
            return
        except OrderUnconfirmedError as exc:
            # The outcome is unknown: the order may still be accepted. Leaving the block with
            # this error keeps the gate's slot; the enforcer's tick resolves the order.
            self.unresolved.append(exc.client_order_id)
            return
        except BrokerGuardError:
            return
        self.sent_per_intent[cid] = sum(
            1 for o in self.broker.all_orders() if o.client_order_id == cid
        )

    def cleanup(self) -> None:
        """One enforcement pass: it resolves unresolved orders first, then enforces the cap."""
        self.exits.tick()

    def halts(self) -> int:
        """Halts recorded in the store."""
        return len(self.store.halts())

    def halted_at(self) -> float | None:
        """When the first halt recorded in the store was made (clock time), or None."""
        return min((h.halted_at for h in self.store.halts()), default=None)
