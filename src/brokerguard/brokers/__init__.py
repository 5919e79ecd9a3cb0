"""The broker boundary: the raw adapter interface and the guarded broker built on it."""

from brokerguard.brokers.base import BaseBroker, OrderUnconfirmedError, PositionSnapshot, PriceCheck

__all__ = ["BaseBroker", "OrderUnconfirmedError", "PositionSnapshot", "PriceCheck"]
