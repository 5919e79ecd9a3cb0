"""brokerguard: make a trading bot fail closed.

brokerguard sits between a trading bot and its brokers. It stops calling a broker that is
failing (circuit breakers with health states and capped, jittered backoff), blocks new risk
while anything is unknown, and never invents a number.

The public API is what this module exports; everything else is private and may change.
"""

from importlib.metadata import PackageNotFoundError, version

from brokerguard.brokers import (
    BaseBroker,
    FaultPlan,
    OrderUnconfirmedError,
    OutageWindow,
    PaperBroker,
    PositionSnapshot,
    PriceCheck,
)
from brokerguard.clock import Clock, SystemClock
from brokerguard.errors import (
    BlockedError,
    BrokerError,
    BrokerGuardError,
    BrokerRejection,
    CircuitOpenError,
    ConfigurationError,
    CoordinationUnavailableError,
    FatalBrokerError,
    InvalidBrokerData,
    LeaseLostError,
    RateLimitedError,
    StoreUnavailableError,
    TransientBrokerError,
)
from brokerguard.models import (
    Balance,
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    PriceProblem,
    Quote,
    Side,
    TimeInForce,
)
from brokerguard.resilience import (
    BackoffKind,
    BackoffPolicy,
    BreakerSnapshot,
    BrokerCircuitBreaker,
    BrokerHealthState,
    CircuitState,
    Outcome,
    RetryPolicy,
    all_circuit_breakers,
    circuit_breaker,
    clear_registry,
    default_classifier,
    get_circuit_breaker,
    is_breaking_enabled,
    set_breaking_enabled,
)
from brokerguard.risk import (
    ContinuousExitEnforcer,
    Decision,
    EntryDenied,
    PositionCapEnforcer,
    TradingGate,
    TradingState,
    Valuator,
)
from brokerguard.store import StateStore, open_store

try:
    __version__ = version("brokerguard")
except PackageNotFoundError:  # pragma: no cover (running from a source tree not installed)
    __version__ = "0.0.0+unknown"

__all__ = [
    "BackoffKind",
    "BackoffPolicy",
    "Balance",
    "BaseBroker",
    "BlockedError",
    "BreakerSnapshot",
    "BrokerCircuitBreaker",
    "BrokerError",
    "BrokerGuardError",
    "BrokerHealthState",
    "BrokerRejection",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "ConfigurationError",
    "ContinuousExitEnforcer",
    "CoordinationUnavailableError",
    "Decision",
    "EntryDenied",
    "FatalBrokerError",
    "FaultPlan",
    "Fill",
    "InvalidBrokerData",
    "LeaseLostError",
    "Order",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "OrderUnconfirmedError",
    "OutageWindow",
    "Outcome",
    "PaperBroker",
    "Position",
    "PositionCapEnforcer",
    "PositionSnapshot",
    "PriceCheck",
    "PriceProblem",
    "Quote",
    "RateLimitedError",
    "RetryPolicy",
    "Side",
    "StateStore",
    "StoreUnavailableError",
    "SystemClock",
    "TimeInForce",
    "TradingGate",
    "TradingState",
    "TransientBrokerError",
    "Valuator",
    "__version__",
    "all_circuit_breakers",
    "circuit_breaker",
    "clear_registry",
    "default_classifier",
    "get_circuit_breaker",
    "is_breaking_enabled",
    "open_store",
    "set_breaking_enabled",
]
