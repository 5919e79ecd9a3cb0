"""One breaker per (broker, scope) in the process, and a decorator that uses them.

Every account on a broker must see the same breaker: when Kraken is down for one account it is
down for all of them, and the failures of all accounts together should trip it. The registry
hands out that shared instance.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

from brokerguard.errors import ConfigurationError
from brokerguard.resilience.breaker import BrokerCircuitBreaker

__all__ = ["all_circuit_breakers", "circuit_breaker", "clear_registry", "get_circuit_breaker"]

P = ParamSpec("P")
T = TypeVar("T")

_registry: dict[tuple[str, str], tuple[BrokerCircuitBreaker, dict[str, Any]]] = {}
_lock = threading.Lock()


def get_circuit_breaker(
    broker_name: str, scope: str = "default", **config: Any
) -> BrokerCircuitBreaker:
    """Return the process-wide breaker for (`broker_name`, `scope`), creating it on first use.

    `config` is passed to :class:`BrokerCircuitBreaker` the first time. Asking again with no
    config returns the same instance; asking again with a *different* config raises
    :class:`~brokerguard.errors.ConfigurationError` rather than silently ignoring it, because
    two parts of a program disagreeing on a broker's thresholds is a bug worth hearing about.
    """
    key = (broker_name, scope)
    with _lock:
        found = _registry.get(key)
        if found is None:
            breaker = BrokerCircuitBreaker(broker_name, scope=scope, **config)
            _registry[key] = (breaker, dict(config))
            return breaker
        breaker, first_config = found
    if config and config != first_config:
        raise ConfigurationError(
            f"circuit breaker for broker {broker_name!r} (scope {scope!r}) already exists with "
            f"settings {sorted(first_config)}; asked again with different ones: "
            f"{sorted(config)}"
        )
    return breaker


def all_circuit_breakers() -> list[BrokerCircuitBreaker]:
    """Return every registered breaker, sorted by broker name then scope."""
    with _lock:
        return [entry[0] for _, entry in sorted(_registry.items())]


def clear_registry() -> None:
    """Forget every registered breaker (for tests, and for a service reloading its config)."""
    with _lock:
        _registry.clear()


def circuit_breaker(
    broker_name: str, scope: str = "default", *, retry: bool = False, **config: Any
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorate a sync or async function so that every call goes through the shared breaker.

    With ``retry=True`` transient failures are retried with backoff
    (:meth:`~BrokerCircuitBreaker.call_with_circuit_breaker`); the default is one attempt,
    because retrying is only safe for reads. The breaker is on the wrapper as ``.breaker``.
    """

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        breaker = get_circuit_breaker(broker_name, scope, **config)
        if inspect.iscoroutinefunction(func):
            afunc = cast("Callable[P, Awaitable[Any]]", func)
            acall = breaker.acall_with_circuit_breaker if retry else breaker.acall

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await acall(afunc, *args, **kwargs)

            async_wrapper.breaker = breaker  # type: ignore[attr-defined]
            return cast("Callable[P, T]", async_wrapper)

        call = breaker.call_with_circuit_breaker if retry else breaker.call

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return call(func, *args, **kwargs)

        wrapper.breaker = breaker  # type: ignore[attr-defined]
        return wrapper

    return decorate
