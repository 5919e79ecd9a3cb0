"""The two venues of the seed, as emulators the real ccxt clients talk to over 127.0.0.1.

Each test that takes the ``venue`` fixture runs against Kraken and against Coinbase Advanced
Trade: the same contract, two venues. :class:`Venue` hides what differs in the *tests*
(endpoint names, price controls, how an order is described); what differs in the *adapter* is
what the tests are about.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import ccxt
import ccxt.async_support
import pytest

from brokerguard.brokers.ccxt import NonceSource
from brokerguard.ccxt import guard
from brokerguard.sim import coinbase as cb
from brokerguard.sim import kraken as kr
from brokerguard.testing import FakeClock

START = 1_800_000_000.0
T = TypeVar("T")

KRAKEN_IDS = {"BTC": "XXBTZUSD", "ETH": "XETHZUSD", "SOL": "SOLUSD"}
_STATUSES = {"CANCELLED": "canceled", "EXPIRED": "expired", "FILLED": "closed"}
"""Coinbase's order statuses in Kraken's words, so one assertion serves both venues."""


@dataclass
class Venue:
    """One running emulator and what a test needs to drive it."""

    name: str
    emulator: Any
    clock: FakeClock
    nonces: NonceSource
    balance_endpoints: tuple[str, ...]
    order_endpoint: str
    cancel_endpoint: str
    lookup_endpoint: str
    unavailable: str
    """A fault string the venue answers when it is unavailable (a NetworkError in ccxt)."""
    lost_answer: str = "accept_then:http:504"
    """The request is executed, then its answer is lost (a timeout in ccxt)."""
    ids: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ clients

    def client_config(self) -> dict[str, Any]:
        module = kr if self.name == "kraken" else cb
        return {
            "apiKey": module.DEFAULT_API_KEY,
            "secret": module.DEFAULT_API_SECRET,
            "enableRateLimit": False,  # Kraken's default spacing is ~3 s between private calls
            "timeout": 2000,
        }

    def _point(self, exchange: Any) -> Any:
        if self.name == "kraken":
            exchange.urls["api"] = {"public": self.emulator.url, "private": self.emulator.url}
            exchange.nonce = self.nonces.next  # one key, one nonce sequence (bare and guarded)
        else:
            exchange.urls["api"] = {"rest": self.emulator.url}
        return exchange

    def bare(self) -> Any:
        """A plain synchronous ccxt client of this venue."""
        return self._point(getattr(ccxt, self.name)(self.client_config()))

    def bare_async(self) -> Any:
        """A plain ``ccxt.async_support`` client of this venue (close it)."""
        return self._point(getattr(ccxt.async_support, self.name)(self.client_config()))

    def guarded(self, *, max_positions: int = 8, exchange: Any = None, **options: Any) -> Any:
        """The venue's client guarded in one line (in-memory store, the test's clock)."""
        options.setdefault("nonce_source", self.nonces)
        return guard(
            exchange if exchange is not None else self.bare(),
            max_positions=max_positions,
            state_url="sqlite://",
            clock=self.clock,
            **options,
        )

    # ------------------------------------------------------------------ controls

    def market_id(self, base: str) -> str:
        if self.name == "kraken":
            return self.ids.get(base, KRAKEN_IDS.get(base, f"{base}USD"))
        return f"{base}-USD"

    def set_price(self, base: str, price: object) -> None:
        if self.name == "kraken":
            self.emulator.set_price(self.market_id(base), price)
        else:
            self.emulator.set_price(self.market_id(base), price, price)

    def credit(self, base: str, amount: object) -> None:
        """A deposit made outside the bot (a new holding, as far as the bot knows)."""
        code = self.kraken_asset(base) if self.name == "kraken" else base
        self.emulator.credit(code, amount)

    def fail_balance(self, fault: str, times: int = 1) -> None:
        for endpoint in self.balance_endpoints:
            self.emulator.inject(fault, endpoint=endpoint, times=times)

    def omit_fault(self, base: str) -> str:
        """A fault that drops `base` from one balance answer."""
        return f"omit:{self.kraken_asset(base)}" if self.name == "kraken" else f"omit:{base}"

    def kraken_asset(self, base: str) -> str:
        return {"BTC": "XXBT", "ETH": "XETH"}.get(base, base)

    def holdings(self) -> dict[str, Decimal]:
        """The account's non-quote holdings above zero, by base code."""
        quote = {"ZUSD", "USD"}
        names = {"XXBT": "BTC", "XETH": "ETH"}
        return {
            names.get(code, code): amount
            for code, amount in self.emulator.balances().items()
            if code not in quote and amount > 0
        }

    def orders(self) -> list[dict[str, Any]]:
        """Every order the engine accepted, as (client id, symbol base, side, status, time)."""
        described = []
        for order in self.emulator.orders():
            if self.name == "kraken":
                pair = order["descr"]["pair"]
                described.append(
                    {
                        "client_id": order.get("cl_ord_id"),
                        "pair": pair,
                        "side": order["descr"]["type"],
                        "status": order["status"],
                        "at": order["opentm"],
                        "id": order["txid"],
                    }
                )
            else:
                described.append(
                    {
                        "client_id": order["client_order_id"],
                        "pair": order["product_id"],
                        "side": order["side"].lower(),
                        "status": _STATUSES.get(order["status"], order["status"].lower()),
                        "at": order["created_time"],
                        "id": order["order_id"],
                    }
                )
        return described

    def requests_to(self, endpoint: str) -> list[dict[str, Any]]:
        return [dict(r.params) for r in self.emulator.requests if r.endpoint == endpoint]

    def sent_client_ids(self) -> list[str]:
        """The client order ids the venue received on its order endpoint."""
        key = "cl_ord_id" if self.name == "kraken" else "client_order_id"
        return [p.get(key) for p in self.requests_to(self.order_endpoint)]

    def duplicates(self) -> int:
        """Orders beyond the first executed for one intent (same moment of the bot's clock)."""
        per_moment = Counter(o["at"] for o in self.orders())
        return sum(n - 1 for n in per_moment.values())


def make_venue(name: str, clock: FakeClock, **emulator: Any) -> Iterator[Venue]:
    nonces = NonceSource(clock)
    if name == "kraken":
        balances = emulator.pop("balances", {"ZUSD": "100000", "XXBT": "0.5"})
        with kr.running_kraken(balances=balances, time_source=clock.time, **emulator) as k:
            yield Venue(
                "kraken",
                k,
                clock,
                nonces,
                balance_endpoints=("BalanceEx", "Balance"),
                order_endpoint="AddOrder",
                cancel_endpoint="CancelOrder",
                lookup_endpoint="ClosedOrders",
                unavailable="EService:Unavailable",
                ids={p.base: p.pair_id for p in emulator.get("pairs", ())},
            )
    else:
        balances = emulator.pop("balances", {"USD": "100000", "BTC": "0.5"})
        with cb.running_coinbase(balances=balances, time_source=clock.time, **emulator) as c:
            yield Venue(
                "coinbase",
                c,
                clock,
                nonces,
                balance_endpoints=("brokerage/accounts", "accounts"),
                order_endpoint="brokerage/orders",
                cancel_endpoint="brokerage/orders/batch_cancel",
                lookup_endpoint="brokerage/orders/historical/batch",
                unavailable="http:503",
            )


@pytest.fixture
def clock() -> FakeClock:
    """The test's time: the emulator and the guard read it, nobody sleeps."""
    return FakeClock(start=START)


@pytest.fixture(params=["kraken", "coinbase"])
def venue(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Venue]:
    """Each venue of the seed in turn, holding 100000 USD and 0.5 BTC."""
    yield from make_venue(request.param, clock)


@pytest.fixture
def kraken(clock: FakeClock) -> Iterator[Venue]:
    """Kraken alone (for what only Kraken does)."""
    yield from make_venue("kraken", clock)


@pytest.fixture
def coinbase(clock: FakeClock) -> Iterator[Venue]:
    """Coinbase alone (for what only Coinbase does)."""
    yield from make_venue("coinbase", clock)


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine on a fresh event loop (the async tests)."""
    return asyncio.run(_run(factory))


async def _run(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()
