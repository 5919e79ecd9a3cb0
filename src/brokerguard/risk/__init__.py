"""Decisions about positions: valuation without fallback, the hard cap, the pre-trade gate."""

from brokerguard.risk.cap import ENFORCER_SOURCE, PositionCapEnforcer
from brokerguard.risk.valuation import Valuation, ValuationReport, Valuator

__all__ = ["ENFORCER_SOURCE", "PositionCapEnforcer", "Valuation", "ValuationReport", "Valuator"]
