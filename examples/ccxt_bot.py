"""A small ccxt dip-buying bot, guarded by brokerguard in one line.

Against the Kraken emulator (no keys; nothing leaves 127.0.0.1), with the seed's faults: the
balance read fails on a third of the ticks and some order answers are lost after the order
executed::

    python examples/ccxt_bot.py --emulator --seconds 20

The same bot without brokerguard (watch it pass its cap of 8 and buy twice)::

    python examples/ccxt_bot.py --emulator --seconds 20 --bare

Against your own Kraken account (keys from KRAKEN_API_KEY and KRAKEN_API_SECRET; it trades)::

    python examples/ccxt_bot.py --live --seconds 60

The bot is ordinary ccxt code: the only brokerguard line is the ``guard(...)`` call in
:func:`connect`; its ``except`` clauses are ccxt's.
"""

# ruff: noqa: T201, INP001 (a command-line example prints its story; examples/ is no package)
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

try:
    import ccxt
except ModuleNotFoundError:  # a message, not a traceback: the extra is what is missing
    print("this example needs ccxt: pip install -e '.[ccxt]'", file=sys.stderr)
    sys.exit(2)

from brokerguard.ccxt import EntryRefused, OrderUnresolved, guard
from brokerguard.sim.kraken import DEFAULT_API_KEY, DEFAULT_API_SECRET, KrakenPair, running_kraken

MAX_POSITIONS = 8
COINS = ("ADA", "DOT", "LINK", "AVAX", "ATOM", "LTC", "UNI", "AAVE", "NEAR", "FIL", "ALGO", "TRX")
SYMBOLS = [f"{coin}/USD" for coin in COINS]
SPEND_USD = 20
LOST_ANSWER_RATE = 0.3
READ_FAILURE_RATE = 1 / 3


def connect(config: dict[str, Any], *, bare: bool, state_url: str) -> Any:
    """The bot's exchange: ccxt's, guarded in one line (unless --bare)."""
    exchange = ccxt.kraken(config)
    if bare:
        return exchange
    return guard(exchange, max_positions=MAX_POSITIONS, state_url=state_url)


def tick(exchange: Any, seen: dict[str, float], stats: Counter[str]) -> str:
    """One iteration: read holdings and prices; under the cap, buy what fell most since last."""
    try:
        balance = exchange.fetch_balance()
        held = {c for c, total in balance["total"].items() if total and c != "USD"}
        note = f"holding {len(held)}"
    except ccxt.BaseError as exc:
        held = set()  # the classic bug: a failed read looks like "no positions"
        stats["balance read failed"] += 1
        note = f"balance read failed ({type(exc).__name__})"
    if len(held) >= MAX_POSITIONS:
        return f"{note}; at the cap"
    try:
        tickers = exchange.fetch_tickers(SYMBOLS)
    except ccxt.BaseError as exc:
        return f"{note}; tickers failed ({type(exc).__name__})"
    last = {s: t["last"] for s, t in tickers.items() if t.get("last")}
    moves = {s: p / seen.get(s, p) for s, p in last.items() if s.split("/")[0] not in held}
    seen.update(last)
    if not moves:
        return f"{note}; nothing to buy"
    symbol = min(moves, key=moves.__getitem__)
    return f"{note}; {buy(exchange, symbol, SPEND_USD / last[symbol], stats)}"


def buy(exchange: Any, symbol: str, amount: float, stats: Counter[str]) -> str:
    """Buy `amount` of `symbol` at market, retrying what ccxt calls a network error."""
    intent = f"dip-{stats['intents']}"
    stats["intents"] += 1
    for _ in range(3):
        try:
            order = exchange.create_order(
                symbol, "market", "buy", amount, None, {"clientOrderId": intent}
            )
        except ccxt.NetworkError:  # "safe to retry" -- unless brokerguard says otherwise
            stats["retried"] += 1
            continue
        except EntryRefused as exc:  # a ccxt.InvalidOrder: refused, nothing was sent
            stats[f"refused {exc.decision.code}"] += 1
            return f"buy {symbol} refused: {exc.decision.reason}"
        except OrderUnresolved as exc:  # a ccxt.ExchangeError: never resent
            stats["unresolved"] += 1
            return f"buy {symbol} unresolved ({exc.client_order_id}), not resent"
        except ccxt.BaseError as exc:
            return f"buy {symbol} failed: {exc}"
        stats["bought"] += 1
        return f"bought {symbol} ({order['id']})"
    return f"gave up on {symbol}"


@contextmanager
def emulated_kraken() -> Iterator[tuple[dict[str, Any], Any]]:
    """A loopback Kraken listing the bot's coins, and a config pointing ccxt at it."""
    pairs = tuple(KrakenPair(f"{c}USD", f"{c}USD", c, "ZUSD", Decimal(10)) for c in COINS)
    with running_kraken(balances={"ZUSD": "10000"}, pairs=pairs) as emulator:
        config = {
            "apiKey": DEFAULT_API_KEY,
            "secret": DEFAULT_API_SECRET,
            "enableRateLimit": False,
            "timeout": 3000,
            "urls": {"api": {"public": emulator.url, "private": emulator.url}},
        }
        yield config, emulator


def misbehave(emulator: Any, rng: random.Random) -> None:
    """The seed's venue: a balance read fails on a third of the ticks, answers get lost."""
    emulator.clear_faults()
    if rng.random() < READ_FAILURE_RATE:
        fault = rng.choice(["EService:Unavailable", "empty_result"])
        emulator.inject(fault, endpoint="BalanceEx")
    if rng.random() < LOST_ANSWER_RATE:
        emulator.inject("accept_then:http:504", endpoint="AddOrder")
    for coin in COINS:  # a random walk, so the dips move
        emulator.set_price(f"{coin}USD", f"{10 * (1 + rng.uniform(-0.05, 0.05)):.2f}")


def summary(emulator: Any) -> tuple[int, int]:
    """(positions held, orders executed twice for one intent) as the venue records them."""
    held = [a for a, v in emulator.balances().items() if a != "ZUSD" and v > 0]
    per_intent = Counter(o["cl_ord_id"] for o in emulator.orders())
    return len(held), sum(n - 1 for n in per_intent.values())


def main(argv: list[str] | None = None) -> int:
    """Run the bot for --seconds, one tick every --interval seconds; print what it did."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--emulator", action="store_true", help="a loopback Kraken emulator")
    where.add_argument("--live", action="store_true", help="your Kraken account (it trades)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--bare", action="store_true", help="run without brokerguard")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--state-url", default="sqlite:///ccxt-bot-state.db")
    args = parser.parse_args(argv)
    stats: Counter[str] = Counter()
    rng = random.Random(args.seed)  # noqa: S311 (a reproducible demo, not cryptography)
    if args.live:
        config = {"apiKey": os.environ["KRAKEN_API_KEY"], "secret": os.environ["KRAKEN_API_SECRET"]}
        exchange = connect(config, bare=args.bare, state_url=args.state_url)
        run(exchange, args, rng, stats, misbehave_with=None)
        return 0
    with emulated_kraken() as (config, emulator):
        exchange = connect(config, bare=args.bare, state_url="sqlite://")
        run(exchange, args, rng, stats, misbehave_with=emulator)
        positions, twice = summary(emulator)
    mode = "bare ccxt" if args.bare else "guarded"
    print(f"\n{mode}: positions: {positions} (cap {MAX_POSITIONS}); executed twice: {twice}")
    print("what happened: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
    return 0


def run(
    exchange: Any, args: argparse.Namespace, rng: random.Random, stats: Counter[str], *,
    misbehave_with: Any,
) -> None:  # fmt: skip
    """Tick until the time is up."""
    started = time.monotonic()
    seen: dict[str, float] = {}
    while time.monotonic() - started < args.seconds:
        if misbehave_with is not None:
            misbehave(misbehave_with, rng)
        line = tick(exchange, seen, stats)
        print(f"t={time.monotonic() - started:5.1f}s  {line}", flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
