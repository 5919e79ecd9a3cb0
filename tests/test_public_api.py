"""The public surface is a contract: adding is deliberate, removing or renaming is breaking."""

from importlib.metadata import version

import brokerguard

EXPECTED = [
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


def test_all_is_pinned_and_sorted():
    """`__all__` lists exactly the public names, sorted, and each one exists."""
    assert brokerguard.__all__ == EXPECTED
    assert sorted(brokerguard.__all__) == brokerguard.__all__
    for name in EXPECTED:
        assert hasattr(brokerguard, name), name


def test_version_comes_from_the_installed_metadata():
    """`__version__` is the installed distribution's version, not a hard-coded string."""
    assert brokerguard.__version__ == version("brokerguard")


def test_enum_values_are_the_documented_strings():
    """States serialise to the strings the seed design and the status report use."""
    assert [s.value for s in brokerguard.CircuitState] == ["closed", "open", "half_open"]
    assert [s.value for s in brokerguard.BrokerHealthState] == ["healthy", "degraded", "offline"]
