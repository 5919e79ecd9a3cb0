"""Broker API reliability: circuit breakers, backoff, retries and their registry.

Nothing here knows about trading; it knows calls, failures and time.
"""

from brokerguard.resilience.backoff import BackoffKind, BackoffPolicy
from brokerguard.resilience.breaker import (
    BreakerSnapshot,
    BrokerCircuitBreaker,
    StateListener,
    is_breaking_enabled,
    set_breaking_enabled,
)
from brokerguard.resilience.classify import Classifier, Outcome, default_classifier
from brokerguard.resilience.ratelimit import RateLimiter
from brokerguard.resilience.registry import (
    all_circuit_breakers,
    circuit_breaker,
    clear_registry,
    get_circuit_breaker,
)
from brokerguard.resilience.retry import RetryPolicy
from brokerguard.resilience.state import (
    TRANSITIONS,
    BrokerHealthState,
    CircuitState,
    IllegalTransitionError,
    Trigger,
)

__all__ = [
    "TRANSITIONS",
    "BackoffKind",
    "BackoffPolicy",
    "BreakerSnapshot",
    "BrokerCircuitBreaker",
    "BrokerHealthState",
    "CircuitState",
    "Classifier",
    "IllegalTransitionError",
    "Outcome",
    "RateLimiter",
    "RetryPolicy",
    "StateListener",
    "Trigger",
    "all_circuit_breakers",
    "circuit_breaker",
    "clear_registry",
    "default_classifier",
    "get_circuit_breaker",
    "is_breaking_enabled",
    "set_breaking_enabled",
]
