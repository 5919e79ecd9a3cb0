"""A freqtrade strategy guarded by brokerguard: the mixin first, then IStrategy.

Copy this file into ``user_data/strategies/`` and run it with ``config.json`` from this folder
(see ``README.md``). The trading logic is deliberately trivial (enter every whitelisted pair at
market, exit on a 5 % gain or a 10 % loss): the point is what the mixin adds.

- ``confirm_trade_entry`` reserves each entry with the guard service and refuses it when the
  guard says no, cannot be reached, or answers anything unexpected (fail closed).
- filled entries are reported to the guard; entries freqtrade cancelled with nothing filled
  give their slot back.
- while the account is over its cap the guard names the pairs to sell, and ``custom_exit``
  sells them; while it is REDUCING or HALTED no position is added to.

A strategy that overrides one of those hooks calls ``super()`` and honours its answer.
"""

# ruff: noqa: INP001, ARG002 (no package: freqtrade loads this file by path; its signatures)
from __future__ import annotations

from freqtrade.strategy import IStrategy
from pandas import DataFrame

from brokerguard.integrations.freqtrade import BrokerguardMixin


class BrokerguardExample(BrokerguardMixin, IStrategy):
    """Enter every pair at market; brokerguard decides whether an entry may go out."""

    INTERFACE_VERSION = 3
    timeframe = "1m"
    minimal_roi = {"0": 0.05}  # noqa: RUF012 (freqtrade reads these class attributes)
    stoploss = -0.10
    startup_candle_count = 0
    process_only_new_candles = False
    order_types = {  # noqa: RUF012
        "entry": "market",
        "exit": "market",
        "stoploss": "market",
        "stoploss_on_exchange": False,
    }

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        """No indicators: the example enters on every candle."""
        return dataframe

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        """Signal an entry on every candle with volume."""
        dataframe.loc[dataframe["volume"] > 0, "enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        """No exit signal: ROI, the stop loss and brokerguard's custom_exit close trades."""
        dataframe["exit_long"] = 0
        return dataframe
