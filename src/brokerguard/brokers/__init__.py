"""The broker boundary: the raw adapter interface, the guarded broker, and the paper broker."""

from brokerguard.brokers.base import BaseBroker, OrderUnconfirmedError, PositionSnapshot, PriceCheck
from brokerguard.brokers.paper import MISSING, FaultPlan, OutageWindow, PaperBroker, RecordedCall

__all__ = [
    "MISSING",
    "BaseBroker",
    "FaultPlan",
    "OrderUnconfirmedError",
    "OutageWindow",
    "PaperBroker",
    "PositionSnapshot",
    "PriceCheck",
    "RecordedCall",
]
