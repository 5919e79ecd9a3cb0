"""Decisions about positions: valuation without fallback, the hard cap, the pre-trade gate."""

from brokerguard.risk.cap import ENFORCER_SOURCE, PositionCapEnforcer
from brokerguard.risk.gate import (
    ACCOUNT_HALTED,
    ALLOWED,
    BROKER_OFFLINE,
    POSITION_CAP_REACHED,
    POSITIONS_UNKNOWN,
    RISK_REDUCING,
    STORE_UNAVAILABLE,
    SYMBOL_PAUSED,
    Decision,
    EntryDenied,
    Reservation,
    TradingGate,
    TradingState,
)
from brokerguard.risk.valuation import Valuation, ValuationReport, Valuator

__all__ = [
    "ACCOUNT_HALTED",
    "ALLOWED",
    "BROKER_OFFLINE",
    "ENFORCER_SOURCE",
    "POSITIONS_UNKNOWN",
    "POSITION_CAP_REACHED",
    "RISK_REDUCING",
    "STORE_UNAVAILABLE",
    "SYMBOL_PAUSED",
    "Decision",
    "EntryDenied",
    "PositionCapEnforcer",
    "Reservation",
    "TradingGate",
    "TradingState",
    "Valuation",
    "ValuationReport",
    "Valuator",
]
