"""The chaos suite: seeded random worlds, every fault mixed, six invariants checked every step.

Run it with ``python -m brokerguard.chaos --runs 5000`` (CI runs 300 seeds through pytest).
Each seed draws a world: several accounts on one paper broker (sharing its breakers), a fault
plan that changes every phase (errors, outages, garbage prices, stale snapshots, sells that never
settle, rate limits, lost confirmations) with Kraken's own ways of executing a retry twice
(orders accepted seconds after the submit timed out unless their deadline passed first,
successful empty position reads, unknown error strings after which the order may exist,
client order ids accepted again once their order is final), and a strategy that keeps trying
to open positions. After every step these named checks run:

1. ``cap_respected``: no account whose entries go through the gate holds more than its cap;
2. ``no_fallback_price``: every order was sized with a price the broker really served;
3. ``no_duplicate_orders``: no intent produced two orders, counted in the broker's own book
   (every order it accepted, an id accepted again after its first order filled included), so an
   order accepted late or under a reused id counts as well as one the bot knows it sent;
4. ``open_circuit_sends_nothing``: no call reached the broker while its circuit was open and
   its probe time had not come;
5. ``halts_are_durable``: every halt the enforcer decided is in the store, and stays;
6. ``guard_loop_survives``: bad broker data never crashed enforcement or the loop.

The same harness on the naive bot (``--naive``) must report violations of 1 to 3: that is the
proof the checks can fail. Half its accounts resend a failed order under a new id per try, the
other half under the same id (the belief that the id makes a resend safe). A failing seed prints
the command that replays it.

``--faults kraken`` draws only Kraken's duplicate-making faults, to show what they alone do; the
naive bot breaks 1 and 3 under them on its own.

By default the accounts' entry attempts are interleaved in a seeded order, so a seed replays
exactly. ``--threads N`` makes them concurrent instead: every step, N entry attempts per
account start together on threads (behind a barrier) against the shared broker, gate and store.
The seed still fixes the world and the symbols; only the thread interleaving varies, so a
threaded failure replays the same world, not always the same interleaving.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from brokerguard.brokers.paper import MISSING, FaultPlan, OutageWindow, PaperBroker
from brokerguard.errors import BrokerGuardError, InvalidBrokerData
from brokerguard.models import Order, OrderRequest, Position, parse_price
from brokerguard.resilience.breaker import BrokerCircuitBreaker
from brokerguard.resilience.state import CircuitState
from brokerguard.risk.exits import EnforcementCrashed, EnforcementEvent
from brokerguard.sim.scenarios import (
    UNIVERSE,
    GuardedBot,
    NaiveBot,
    Scenario,
    orders_per_intent,
)
from brokerguard.testing import FakeClock

__all__ = ["FAULTS", "INVARIANTS", "ChaosReport", "Violation", "main", "run_chaos"]

INVARIANTS = (
    "cap_respected",
    "no_fallback_price",
    "no_duplicate_orders",
    "open_circuit_sends_nothing",
    "halts_are_durable",
    "guard_loop_survives",
)
_GARBAGE: tuple[object, ...] = (MISSING, "NaN", 0, -5, "n/a", None, "1e40", True, [1])


@dataclass(frozen=True)
class Violation:
    """One broken invariant, where and why."""

    invariant: str
    step: int
    account: str
    detail: str


@dataclass
class ChaosReport:
    """The outcome of one seed."""

    seed: int
    naive: bool
    steps: int
    violations: list[Violation] = field(default_factory=list)
    threads: int = 1
    faults: str = "all"
    """Which faults the world drew (a key of :data:`FAULTS`)."""

    @property
    def ok(self) -> bool:
        """Whether every invariant held at every step."""
        return not self.violations

    @property
    def broken(self) -> set[str]:
        """The names of the invariants that failed."""
        return {v.invariant for v in self.violations}

    def replay_command(self) -> str:
        """The command that replays this seed."""
        naive = " --naive" if self.naive else ""
        threads = f" --threads {self.threads}" if self.threads > 1 else ""
        faults = f" --faults {self.faults}" if self.faults != "all" else ""
        return (
            f"python -m brokerguard.chaos --seed {self.seed} --runs 1 --steps {self.steps}"
            f"{naive}{threads}{faults}"
        )


class _ChaosBroker(PaperBroker):
    """A paper broker that records the prices it serves and checks the circuit on every call."""

    def __init__(self, *args: Any, watch: list[Violation], step: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served: dict[str, set[Decimal]] = {}
        self._watch = watch
        self._step = step

    def _check_circuit(self, breaker: BrokerCircuitBreaker, method: str) -> None:
        if breaker.state is CircuitState.OPEN and not breaker.probe_due():
            self._watch.append(
                Violation(
                    "open_circuit_sends_nothing",
                    self._step[0],
                    self.account_id,
                    f"{method} reached the broker while the {breaker.scope} circuit was open",
                )
            )

    def fetch_positions(self) -> Sequence[Position]:
        self._check_circuit(self.read_breaker, "fetch_positions")
        return super().fetch_positions()

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        self._check_circuit(self.read_breaker, "fetch_prices")
        payload = super().fetch_prices(symbols)
        for symbol, value in payload.items():
            try:
                self.served.setdefault(symbol, set()).add(parse_price(value))
            except InvalidBrokerData:
                continue  # a bad value is served too; it must never become an order's price
        return payload

    def submit_order(self, order: OrderRequest) -> Order:
        self._check_circuit(self.write_breaker, "submit_order")
        return super().submit_order(order)

    def fetch_order(self, client_order_id: str) -> Order | None:
        self._check_circuit(self.read_breaker, "fetch_order")
        return super().fetch_order(client_order_id)


_OUTAGE_CHANCE = 0.4
_UNSETTLED_CHANCE = 0.3


def _plan(rng: random.Random, now: float) -> FaultPlan:
    """Draw one phase's faults; each is sometimes off, so every mix gets its turn."""
    methods = ("fetch_positions", "fetch_prices", "submit_order", "fetch_order", "ping")
    outage_at = now + rng.uniform(0, 100)
    kraken = _kraken_faults(rng)
    return FaultPlan(
        error_rate={m: rng.choice([0.0, 0.0, 0.1, 0.3, 0.6]) for m in methods},
        outages=(
            [OutageWindow(outage_at, outage_at + rng.uniform(20, 200))]
            if rng.random() < _OUTAGE_CHANCE
            else []
        ),
        bad_prices={s: rng.choice(_GARBAGE) for s in rng.sample(UNIVERSE, rng.randint(0, 8))},
        stale_positions_rate=rng.choice([0.0, 0.0, 0.2, 0.5]),
        stale_positions_age=rng.uniform(1, 60),
        unsettled_sells=(
            frozenset(rng.sample(UNIVERSE, rng.randint(1, 6)))
            if rng.random() < _UNSETTLED_CHANCE
            else False
        ),
        rate_limit_rate=rng.choice([0.0, 0.0, 0.05]),
        rate_limit_retry_after=rng.uniform(1, 10),
        fail_after_accept_rate=rng.choice([0.0, 0.1, 0.3]),
        **kraken,
    )


def _kraken_faults(rng: random.Random) -> dict[str, Any]:
    """Draw Kraken's duplicate-making faults for one phase.

    Acceptance delays span both sides of the order deadline brokerguard sends (10 s after the
    send by default, proven absent 5 s later): most queued orders appear after the immediate
    lookup found nothing but before the deadline (the resend-twice trap); the rest are dropped
    at their deadline and must be proven absent, not guessed.
    """
    return {
        "delayed_accept_rate": rng.choice([0.0, 0.0, 0.1, 0.3]),
        "accept_delay": (rng.uniform(0.1, 2.0), rng.uniform(8.0, 20.0)),
        "empty_positions_rate": rng.choice([0.0, 0.0, 0.1, 0.3]),
        "unknown_error_rate": rng.choice([0.0, 0.0, 0.05, 0.2]),
    }


def _kraken_plan(rng: random.Random, _now: float) -> FaultPlan:
    """Only Kraken's duplicate-making faults: what they alone do to a bot."""
    return FaultPlan(**_kraken_faults(rng))


FAULTS: dict[str, Callable[[random.Random, float], FaultPlan]] = {
    "all": _plan,
    "kraken": _kraken_plan,
}
"""The fault mixes a world can draw from: every fault, or only Kraken's duplicate-makers
(delayed acceptance, empty position reads, unknown error strings, ids accepted again)."""


def run_chaos(  # noqa: C901, PLR0912 (one world, one loop: it reads best in one place)
    seed: int,
    *,
    naive: bool = False,
    steps: int = 300,
    accounts: int = 3,
    cap: int = 5,
    threads: int = 1,
    faults: str | FaultPlan = "all",
) -> ChaosReport:
    """Run one seeded world for `steps` steps; return every invariant violation seen.

    `threads` > 1 runs that many entry attempts per account at once, on threads. `faults`
    names the mix the phases draw from (:data:`FAULTS`), or is one fixed plan for every phase
    (what one fault alone does; such a report has no replay command line).
    """
    draw_plan = FAULTS[faults] if isinstance(faults, str) else _fixed(faults)
    rng = random.Random(seed)  # noqa: S311 (a seeded simulation)
    clock = FakeClock(start=1_795_000_000.0)
    report = ChaosReport(
        seed, naive, steps, threads=threads, faults=faults if isinstance(faults, str) else "fixed"
    )
    step = [0]
    read = BrokerCircuitBreaker(
        "chaos",
        scope="read",
        clock=clock,
        rng=random.Random(seed),  # noqa: S311 (a seeded simulation)
    )
    write = BrokerCircuitBreaker(
        "chaos",
        scope="write",
        clock=clock,
        rng=random.Random(seed),  # noqa: S311 (a seeded simulation)
    )
    prices = {s: f"{rng.uniform(0.5, 500):.4f}" for s in UNIVERSE}
    scenario = Scenario("chaos", "random", steps * 5.0, lambda _s: FaultPlan(), cap=cap)
    worlds: list[tuple[_ChaosBroker, NaiveBot | GuardedBot]] = []
    crashes: list[EnforcementEvent] = []
    for index in range(accounts):
        broker = _ChaosBroker(
            "chaos",
            account_id=f"acct-{index}",
            seed=seed * 100 + index,
            clock=clock,
            prices=prices,
            settle_delay=rng.uniform(0, 3),
            read_breaker=read,
            write_breaker=write,
            watch=report.violations,
            step=step,
        )
        bot: NaiveBot | GuardedBot
        if naive:
            bot = NaiveBot(scenario, broker, resend_same_id=index % 2 == 1)
        else:
            bot = GuardedBot(scenario, broker, clock)
            bot.exits.add_listener(
                lambda e: crashes.append(e) if isinstance(e, EnforcementCrashed) else None
            )
        worlds.append((broker, bot))
    decided_halts: set[str] = set()
    for step[0] in range(steps):
        if step[0] % 60 == 0:
            plan = draw_plan(rng, clock.monotonic())
            for broker, _ in worlds:
                broker.set_fault_plan(plan)
        try:
            if threads == 1:
                for _broker, bot in rng.sample(worlds, len(worlds)):
                    bot.try_entry(rng.choice(UNIVERSE))
            else:
                _all_at_once(
                    [
                        (bot.try_entry, rng.choice(UNIVERSE))
                        for _broker, bot in worlds
                        for _ in range(threads)
                    ]
                )
            if step[0] % 4 == 0:
                for _, bot in worlds:
                    bot.cleanup()
                    if isinstance(bot, GuardedBot):
                        for account, result in bot.exits.last_results.items():
                            if result.get("status") == "failed_enforcement":
                                decided_halts.add(account)
        except Exception as exc:  # noqa: BLE001 (invariant 6: anything escaping is a violation)
            report.violations.append(
                Violation("guard_loop_survives", step[0], "-", f"{type(exc).__name__}: {exc}")
            )
        _check(report, step[0], worlds, decided_halts=decided_halts, cap=cap, crashes=crashes)
        clock.advance(rng.choice([0.5, 1.0, 5.0, 15.0]))
    return report


def _fixed(plan: FaultPlan) -> Callable[[random.Random, float], FaultPlan]:
    """A plan drawer that always answers `plan`."""
    return lambda _rng, _now: plan


def _all_at_once(calls: Sequence[tuple[Callable[[str], None], str]]) -> None:
    """Run every call on its own thread, released together; re-raise the first exception."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[str], None], symbol: str) -> None:
        barrier.wait()
        try:
            call(symbol)
        except BaseException as exc:  # noqa: BLE001 (handed to the caller: invariant 6)
            errors.append(exc)

    workers = [threading.Thread(target=run, args=call) for call in calls]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def _check(
    report: ChaosReport,
    step: int,
    worlds: Sequence[tuple[_ChaosBroker, NaiveBot | GuardedBot]],
    *,
    decided_halts: set[str],
    cap: int,
    crashes: list[EnforcementEvent],
) -> None:
    add = report.violations.append
    for broker, bot in worlds:
        account = broker.account_id
        held = len(broker.true_positions())
        if held > cap and not _seen(report, "cap_respected", account):
            add(Violation("cap_respected", step, account, f"{held} positions for a cap of {cap}"))
        for intent, symbol, price in bot.prices_used:
            if price not in broker.served.get(symbol, set()) and not _seen(
                report, "no_fallback_price", account
            ):
                add(
                    Violation(
                        "no_fallback_price",
                        step,
                        account,
                        f"{intent} sized {symbol} at {price}, a price the broker never served",
                    )
                )
        # Every order the broker accepted counts, whoever sent it (entries, the enforcer's
        # sells, a naive cleanup) and however (late, or under an id accepted again).
        counted = orders_per_intent(broker.all_orders())
        duplicated = sorted(i for i, n in bot.sent_per_intent.items() if n > 1)
        duplicated += sorted(i for i, n in counted.items() if n > 1)
        if duplicated and not _seen(report, "no_duplicate_orders", account):
            first = duplicated[0]
            add(
                Violation(
                    "no_duplicate_orders",
                    step,
                    account,
                    f"{first} executed {max(counted[first], bot.sent_per_intent[first])} times",
                )
            )
        if isinstance(bot, GuardedBot) and account in decided_halts:
            try:
                halted = bot.store.is_halted(account)
            except BrokerGuardError as exc:
                halted = False
                add(Violation("halts_are_durable", step, account, f"store: {exc}"))
            if not halted and not _seen(report, "halts_are_durable", account):
                add(Violation("halts_are_durable", step, account, "a decided halt is gone"))
    for event in crashes:
        add(Violation("guard_loop_survives", step, event.account_id, "enforcement crashed"))
    crashes.clear()


def _seen(report: ChaosReport, invariant: str, account: str) -> bool:
    """Report an invariant once per account (the first step is the interesting one)."""
    return any(v.invariant == invariant and v.account == account for v in report.violations)


def main(argv: Sequence[str] | None = None) -> int:
    """Run many seeds; print the failures with the command that replays each."""
    parser = argparse.ArgumentParser(prog="python -m brokerguard.chaos", description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="how many seeds (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--steps", type=int, default=300, help="steps per seed (default 300)")
    parser.add_argument("--naive", action="store_true", help="run the naive bot instead")
    parser.add_argument(
        "--threads", type=int, default=1, help="concurrent entry attempts per account per step"
    )
    parser.add_argument(
        "--faults",
        choices=sorted(FAULTS),
        default="all",
        help="every fault (default), or only Kraken's duplicate-making ones",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print the guard's warnings as they happen (default: only the report; a "
        "5,000-seed run logs hundreds of MB of expected warnings)",
    )
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return _run_seeds(args)
    # The faults are the point: their warnings are expected; the invariants report.
    quiet = logging.getLogger("brokerguard")
    silencer, propagate = logging.NullHandler(), quiet.propagate
    quiet.addHandler(silencer)
    quiet.propagate = False
    try:
        return _run_seeds(args)
    finally:
        quiet.removeHandler(silencer)
        quiet.propagate = propagate


def _run_seeds(args: argparse.Namespace) -> int:
    failed = 0
    broken: dict[str, int] = {}
    for seed in range(args.seed, args.seed + args.runs):
        report = run_chaos(
            seed, naive=args.naive, steps=args.steps, threads=args.threads, faults=args.faults
        )
        if report.ok:
            continue
        failed += 1
        for name in sorted(report.broken):  # a set: its order would vary per process
            broken[name] = broken.get(name, 0) + 1
        first = report.violations[0]
        print(  # noqa: T201 (a command-line report)
            f"seed {seed}: {', '.join(sorted(report.broken))}; first: step {first.step} "
            f"{first.account} {first.invariant}: {first.detail}\n"
            f"  replay: {report.replay_command()}"
        )
    who = "naive bot" if args.naive else "brokerguard"
    print(  # noqa: T201 (a command-line report)
        f"{who}: {args.runs - failed}/{args.runs} seeds kept every invariant; "
        f"broken: {broken or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
