"""The seed's incident, replayed through a real ccxt client: bare, then guarded in one line.

A naive bot (the seed's) wants 8 positions. Every 5 emulated seconds it reads its balance and,
if it believes it holds fewer than 8 coins, buys one it does not hold; when the balance read
fails it believes it holds nothing (the seed's bug), and when an order's answer is lost it
resends the same intent (the other half of the seed: duplicates). The venue misbehaves the way
the seed's venues did: half the steps every balance read fails (an outage or an empty answer),
and some order answers are lost after the order executed.

On the bare exchange the bot ends far over its cap, with duplicate executions. The same bot on
``guard(exchange, max_positions=8)`` ends at 8 or fewer, with none.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import ccxt
import pytest

from brokerguard.sim.coinbase import CoinbaseProduct
from brokerguard.sim.kraken import KrakenPair
from brokerguard.testing import FakeClock
from tests.ccxt.conftest import Venue, make_venue

CAP = 8
STEPS = 150
COINS = (
    "ADA", "DOT", "LINK", "AVAX", "ATOM", "LTC", "UNI", "AAVE",
    "NEAR", "FIL", "ALGO", "TRX", "BCH", "ETC",
)  # fmt: skip
UNIVERSE = [f"{coin}/USD" for coin in COINS]


def world(name: str, clock: FakeClock) -> Iterator[Venue]:
    """A venue listing 14 coins at 10 USD, and an account holding 10000 USD."""
    if name == "kraken":
        pairs = tuple(KrakenPair(f"{c}USD", f"{c}USD", c, "ZUSD", Decimal("10.00")) for c in COINS)
        return make_venue("kraken", clock, balances={"ZUSD": "10000"}, pairs=pairs)
    products = tuple(
        CoinbaseProduct(f"{c}-USD", c, "USD", Decimal("9.99"), Decimal("10.00")) for c in COINS
    )
    return make_venue("coinbase", clock, balances={"USD": "10000"}, products=products)


def naive_step(exchange: Any, step: int, rng: random.Random) -> None:
    """One iteration of the seed's bot (unchanged between the bare and the guarded run)."""
    try:
        balance = exchange.fetch_balance()
        held = {code for code, total in balance["total"].items() if total and code != "USD"}
    except Exception:  # the seed's bug, on purpose: an unknown read taken as "nothing"
        held = set()
    if len(held) >= CAP:
        return
    symbol = rng.choice([s for s in UNIVERSE if s.split("/")[0] not in held])
    intent = f"bot-{step}"
    for _ in range(3):  # the bot's retry loop: network errors are "safe to retry"
        try:
            exchange.create_order(symbol, "market", "buy", 1, 10, {"clientOrderId": intent})
        except ccxt.NetworkError:
            continue
        except ccxt.BaseError:
            return  # refused (by the venue or by brokerguard): try again next step
        return


def misbehave(venue: Venue, rng: random.Random) -> None:
    """This step's faults: balance reads fail half the time; some answers are lost."""
    if rng.random() < 0.5:
        venue.fail_balance(rng.choice([venue.unavailable, "empty_result"]), times=20)
    if rng.random() < 0.3:
        venue.emulator.inject(venue.lost_answer, endpoint=venue.order_endpoint)


def run_bot(venue: Venue, exchange: Any, seed: int) -> None:
    faults, choices = random.Random(seed), random.Random(seed + 1)
    for step in range(STEPS):
        misbehave(venue, faults)
        naive_step(exchange, step, choices)
        venue.emulator.clear_faults()
        venue.clock.advance(5)


@pytest.mark.parametrize("name", ["kraken", "coinbase"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_bare_bot_ends_far_over_its_cap_with_duplicates(name, seed):
    """Without brokerguard the seed's bot blows through its cap and executes intents twice."""
    clock = FakeClock(start=1_800_000_000.0)
    for venue in world(name, clock):
        run_bot(venue, venue.bare(), seed)
        assert len(venue.holdings()) >= CAP + 3, venue.holdings()
        assert venue.duplicates() >= 1


@pytest.mark.parametrize("name", ["kraken", "coinbase"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_guarded_bot_ends_within_its_cap_with_no_duplicates(name, seed):
    """The same bot, guarded in one line: at most 8 positions, every intent executed once."""
    clock = FakeClock(start=1_800_000_000.0)
    for venue in world(name, clock):
        exchange = venue.guarded(max_positions=CAP)
        run_bot(venue, exchange, seed)
        holdings = venue.holdings()
        assert len(holdings) <= CAP, holdings
        assert len(holdings) >= CAP - 3, "the guarded bot still trades"
        assert venue.duplicates() == 0
        client_ids = [o["client_id"] for o in venue.orders()]
        assert len(client_ids) == len(set(client_ids))
