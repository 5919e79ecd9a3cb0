"""The chaos suite: seeded random worlds, every fault mixed, six invariants checked every step.

Run it with ``python -m brokerguard.chaos --runs 5000`` (CI runs 200 seeds through pytest).
Each seed draws a world: several accounts on one paper broker (sharing its breakers), a fault
plan that changes every phase (errors, outages, garbage prices, stale snapshots, sells that never
settle, rate limits, lost confirmations), and a strategy that keeps trying to open positions.
After every step these named checks run:

1. ``cap_respected``: no account whose entries go through the gate holds more than its cap;
2. ``no_fallback_price``: every order was sized with a price the broker really served;
3. ``no_duplicate_orders``: no intent produced two orders;
4. ``open_circuit_sends_nothing``: no call reached the broker while its circuit was open and
   its probe time had not come;
5. ``halts_are_durable``: every halt the enforcer decided is in the store, and stays;
6. ``guard_loop_survives``: bad broker data never crashed enforcement or the loop.

The same harness on the naive bot (``--naive``) must report violations of 1 to 3: that is the
proof the checks can fail. A failing seed prints the command that replays it.

By default the accounts' entry attempts are interleaved in a seeded order, so a seed replays
exactly. ``--threads N`` makes them concurrent instead: every step, N entry attempts per
account start together on threads (behind a barrier) against the shared broker, gate and store.
The seed still fixes the world and the symbols; only the thread interleaving varies, so a
threaded failure replays the same world, not always the same interleaving.
"""

from __future__ import annotations

import argparse
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
from brokerguard.sim.scenarios import UNIVERSE, GuardedBot, NaiveBot, Scenario
from brokerguard.testing import FakeClock

__all__ = ["INVARIANTS", "ChaosReport", "Violation", "main", "run_chaos"]

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
        return (
            f"python -m brokerguard.chaos --seed {self.seed} --runs 1 --steps {self.steps}"
            f"{naive}{threads}"
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
    methods = ("fetch_positions", "fetch_prices", "submit_order", "fetch_order", "ping")
    outage_at = now + rng.uniform(0, 100)
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
    )


def run_chaos(  # noqa: C901, PLR0912 (one world, one loop: it reads best in one place)
    seed: int,
    *,
    naive: bool = False,
    steps: int = 300,
    accounts: int = 3,
    cap: int = 5,
    threads: int = 1,
) -> ChaosReport:
    """Run one seeded world for `steps` steps; return every invariant violation seen.

    `threads` > 1 runs that many entry attempts per account at once, on threads.
    """
    rng = random.Random(seed)  # noqa: S311 (a seeded simulation)
    clock = FakeClock(start=1_795_000_000.0)
    report = ChaosReport(seed, naive, steps, threads=threads)
    step = [0]
    read = BrokerCircuitBreaker("chaos", scope="read", clock=clock, rng=random.Random(seed))  # noqa: S311
    write = BrokerCircuitBreaker("chaos", scope="write", clock=clock, rng=random.Random(seed))  # noqa: S311
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
            bot = NaiveBot(scenario, broker)
        else:
            bot = GuardedBot(scenario, broker, clock)
            bot.exits.add_listener(
                lambda e: crashes.append(e) if isinstance(e, EnforcementCrashed) else None
            )
        worlds.append((broker, bot))
    decided_halts: set[str] = set()
    for step[0] in range(steps):
        if step[0] % 60 == 0:
            plan = _plan(rng, clock.monotonic())
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


def _check(  # noqa: C901 (one branch per invariant, in the order the docstring lists them)
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
        duplicated = sorted(i for i, n in bot.sent_per_intent.items() if n > 1)
        orders_by_intent: dict[str, int] = {}
        for order in broker.all_orders():
            base = order.client_order_id.split("-try")[0]
            orders_by_intent[base] = orders_by_intent.get(base, 0) + 1
        duplicated += sorted(
            i for i, n in orders_by_intent.items() if n > 1 and i.startswith("intent-")
        )
        if duplicated and not _seen(report, "no_duplicate_orders", account):
            add(Violation("no_duplicate_orders", step, account, f"{duplicated[0]} sent twice"))
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
    args = parser.parse_args(argv)
    failed = 0
    broken: dict[str, int] = {}
    for seed in range(args.seed, args.seed + args.runs):
        report = run_chaos(seed, naive=args.naive, steps=args.steps, threads=args.threads)
        if report.ok:
            continue
        failed += 1
        for name in report.broken:
            broken[name] = broken.get(name, 0) + 1
        first = report.violations[0]
        print(  # noqa: T201 (a command-line report)
            f"seed {seed}: {', '.join(sorted(report.broken))}; first: step {first.step} "
            f"{first.account} {first.invariant}: {first.detail}\n"
            f"  replay: {report.replay_command()}"
        )
    who = "naive bot" if args.naive else "brokerguard"
    print(  # noqa: T201
        f"{who}: {args.runs - failed}/{args.runs} seeds kept every invariant; "
        f"broken: {broken or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
