"""Fixtures for the adversarial tests: the real ccxt.kraken client against the Kraken emulator.

A hostile exchange (the emulator's injected faults) and a careless bot (the tests' own calls)
meet the order lifecycle on a FakeClock. Helpers are exposed as fixtures: the suite runs with
--import-mode=importlib, so a test module here does not import a sibling module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import ccxt
import pytest

from brokerguard.brokers.ccxt import CcxtBroker, NonceSource
from brokerguard.sim.kraken import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    KrakenEmulator,
    running_kraken,
)
from brokerguard.testing import FakeClock

BALANCES = {"ZUSD": "100000", "XXBT": "0.5", "XETH": "2", "SOL": "10"}


def make_client(emulator: KrakenEmulator, *, timeout_ms: int = 2000) -> ccxt.kraken:
    exchange = ccxt.kraken(
        {
            "apiKey": DEFAULT_API_KEY,
            "secret": DEFAULT_API_SECRET,
            "enableRateLimit": False,
            "timeout": timeout_ms,
        }
    )
    exchange.urls["api"] = {"public": emulator.url, "private": emulator.url}
    return exchange


@pytest.fixture
def nonces(clock: FakeClock) -> NonceSource:
    """One nonce source for the key, as the process-wide default would be."""
    return NonceSource(clock)


@pytest.fixture
def kraken(clock: FakeClock) -> Iterator[KrakenEmulator]:
    with running_kraken(balances=dict(BALANCES), time_source=clock.time) as emulator:
        yield emulator


@pytest.fixture
def new_broker(
    kraken: KrakenEmulator, clock: FakeClock, nonces: NonceSource
) -> Callable[..., CcxtBroker]:
    """Make another CcxtBroker on the same key (another object, or another process's)."""

    def make(
        emulator: KrakenEmulator | None = None,
        *,
        timeout_ms: int = 2000,
        own_nonces: bool = False,
        **kwargs: Any,
    ) -> CcxtBroker:
        target = emulator or kraken
        return CcxtBroker(
            make_client(target, timeout_ms=timeout_ms),
            clock=clock,
            nonce_source=NonceSource(clock) if own_nonces else nonces,
            **kwargs,
        )

    return make


@pytest.fixture
def broker(new_broker: Callable[..., CcxtBroker]) -> CcxtBroker:
    return new_broker()


@pytest.fixture
def executed(kraken: KrakenEmulator) -> Callable[..., int]:
    """How many orders the venue accepted with this cl_ord_id (optionally only filled ones)."""

    def count(cid: str, emulator: KrakenEmulator | None = None) -> int:
        return sum(1 for o in (emulator or kraken).orders() if o.get("cl_ord_id") == cid)

    return count


@pytest.fixture
def client_factory() -> Callable[..., ccxt.kraken]:
    return make_client
