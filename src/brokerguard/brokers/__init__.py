"""The broker boundary: the raw adapter interface, the guarded broker, and the paper broker."""

from brokerguard.brokers.base import (
    BaseBroker,
    OrderMinimums,
    OrderUnconfirmedError,
    PositionSnapshot,
    PriceCheck,
)
from brokerguard.brokers.paper import (
    MISSING,
    FaultPlan,
    OutageWindow,
    PaperBroker,
    PaperMarket,
    RecordedCall,
)

__all__ = [
    "MISSING",
    "BaseBroker",
    "FaultPlan",
    "OrderMinimums",
    "OrderUnconfirmedError",
    "OutageWindow",
    "PaperBroker",
    "PaperMarket",
    "PositionSnapshot",
    "PriceCheck",
    "RecordedCall",
]
