"""One breaker per (broker, scope) per process, and the decorator over it."""

from __future__ import annotations

import asyncio

import pytest

from brokerguard import (
    BrokerCircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    all_circuit_breakers,
    circuit_breaker,
    get_circuit_breaker,
)
from brokerguard.testing import FakeClock


def test_same_name_and_scope_share_one_breaker():
    """Every account on a broker sees the same breaker for a scope."""
    a = get_circuit_breaker("kraken", scope="read")
    assert get_circuit_breaker("kraken", scope="read") is a
    assert get_circuit_breaker("kraken", scope="write") is not a
    assert get_circuit_breaker("binance", scope="read") is not a
    assert isinstance(a, BrokerCircuitBreaker)
    assert a.scope == "read"


def test_config_applies_on_first_creation_and_must_agree_later():
    """Asking again with the same config is fine; with a different one it is an error."""
    a = get_circuit_breaker("kraken", failure_threshold=2)
    assert a.failure_threshold == 2
    assert get_circuit_breaker("kraken", failure_threshold=2) is a
    assert get_circuit_breaker("kraken") is a
    with pytest.raises(ConfigurationError, match="kraken"):
        get_circuit_breaker("kraken", failure_threshold=9)


def test_all_circuit_breakers_lists_them_in_order():
    """The status surface can enumerate every breaker, sorted by broker and scope."""
    w = get_circuit_breaker("kraken", "write")
    r = get_circuit_breaker("kraken", "read")
    b = get_circuit_breaker("binance", "read")
    assert all_circuit_breakers() == [b, r, w]


def test_decorator_guards_a_sync_function():
    """A decorated function runs under the shared breaker and is rejected when it opens."""
    clock = FakeClock()
    calls = []

    @circuit_breaker("kraken", scope="read", failure_threshold=2, clock=clock)
    def fetch(symbol: str) -> str:
        calls.append(symbol)
        raise ConnectionError(symbol)

    for _ in range(2):
        with pytest.raises(ConnectionError):
            fetch("BTC/USD")
    with pytest.raises(CircuitOpenError):
        fetch("BTC/USD")
    assert calls == ["BTC/USD", "BTC/USD"]
    assert fetch.breaker is get_circuit_breaker("kraken", scope="read")  # type: ignore[attr-defined]
    assert fetch.__name__ == "fetch"


def test_decorator_guards_an_async_function():
    """Coroutine functions are wrapped with the async shell."""
    clock = FakeClock()

    @circuit_breaker("kraken", failure_threshold=1, clock=clock)
    async def fetch() -> str:
        raise TimeoutError

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await fetch()
        with pytest.raises(CircuitOpenError):
            await fetch()

    asyncio.run(main())


def test_decorator_retries_only_when_asked():
    """retry=True uses the retrying shell; the default makes exactly one attempt."""
    clock = FakeClock()
    attempts = {"once": 0, "retry": 0}

    @circuit_breaker("a", clock=clock)
    def once() -> None:
        attempts["once"] += 1
        raise TimeoutError

    @circuit_breaker("b", retry=True, clock=clock)
    def retry() -> None:
        attempts["retry"] += 1
        raise TimeoutError

    with pytest.raises(TimeoutError):
        once()
    with pytest.raises(TimeoutError):
        retry()
    assert attempts == {"once": 1, "retry": 3}


def test_async_decorator_with_retry():
    """The async decorator retries on the clock when asked."""
    clock = FakeClock()
    attempts = []

    @circuit_breaker("kraken", retry=True, clock=clock)
    async def fetch() -> str:
        attempts.append(clock.monotonic())
        if len(attempts) == 1:
            raise TimeoutError
        return "ok"

    assert asyncio.run(fetch()) == "ok"
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] == clock.sleeps[0]
