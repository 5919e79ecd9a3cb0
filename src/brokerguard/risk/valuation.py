"""Valuation without fallback: a position has the value the broker's price gives it, or none.

:class:`Valuator` prices a set of positions in one batched broker call. Each position comes back
either with a ``Decimal`` value (quantity x price) or *unvaluable*, with the reason: the price
was missing, zero, negative, NaN, non-numeric, absurd, or older than ``max_quote_age``. No code
path here (or anywhere in brokerguard) produces a price the broker did not give.

Unvaluable symbols are paused in the store (no new entries, no position management) and
unpaused automatically when a valid price returns; each transition is logged (CRITICAL on
pause) and audited. Only pauses the valuator made itself are lifted by it: an operator's pause
stays until the operator lifts it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from brokerguard.brokers.base import BaseBroker
from brokerguard.clock import Clock
from brokerguard.errors import ConfigurationError
from brokerguard.models import Position, PriceProblem
from brokerguard.store.state import StateStore

__all__ = ["PAUSE_PREFIX", "Valuation", "ValuationReport", "Valuator"]

log = logging.getLogger("brokerguard.valuation")

PAUSE_PREFIX = "unvaluable: "
"""Reasons of the pauses the valuator makes start with this, so it lifts only its own."""


@dataclass(frozen=True, slots=True)
class Valuation:
    """One position's value, or why it has none."""

    symbol: str
    quantity: Decimal
    price: Decimal | None
    problem: PriceProblem | None

    @property
    def valuable(self) -> bool:
        """Whether the position has a value."""
        return self.price is not None

    @property
    def value(self) -> Decimal | None:
        """Quantity times the broker's price; None when unvaluable (never a made-up number)."""
        return None if self.price is None else self.quantity * self.price


@dataclass(frozen=True, slots=True)
class ValuationReport:
    """The valuation of an account's positions at one time (epoch seconds)."""

    valuations: tuple[Valuation, ...]
    at: float

    @property
    def valued(self) -> tuple[Valuation, ...]:
        """Positions with a value."""
        return tuple(v for v in self.valuations if v.valuable)

    @property
    def unvaluable(self) -> tuple[Valuation, ...]:
        """Positions without one."""
        return tuple(v for v in self.valuations if not v.valuable)

    @property
    def unvalued_symbols(self) -> list[str]:
        """Symbols of the unvaluable positions, sorted."""
        return sorted(v.symbol for v in self.unvaluable)

    def by_symbol(self) -> Mapping[str, Valuation]:
        """The valuations keyed by symbol."""
        return {v.symbol: v for v in self.valuations}


class Valuator:
    """Value positions in one batched call; pause what cannot be valued, unpause on recovery.

    Args:
        broker: the guarded broker to ask for prices.
        store: where pauses are recorded (None: no pausing, valuation only).
        clock: the time source (default: the broker's clock).
        max_quote_age: seconds after which a quote with a timestamp is stale.
    """

    def __init__(
        self,
        broker: BaseBroker,
        *,
        store: StateStore | None = None,
        clock: Clock | None = None,
        max_quote_age: float = 60.0,
    ) -> None:
        if not max_quote_age > 0:
            raise ConfigurationError(f"max_quote_age must be > 0 seconds, got {max_quote_age!r}")
        self.broker = broker
        self.store = store
        self.clock = clock if clock is not None else broker.clock
        self.max_quote_age = float(max_quote_age)

    def value(self, positions: Iterable[Position]) -> ValuationReport:
        """Value `positions` (one batched price call) and update the pauses.

        Raises what the broker raises when the price call itself fails; the caller then knows
        nothing about any value, which is not the same as knowing every value is missing.
        """
        positions = list(positions)
        account = self.broker.account_id
        own_pauses = self._own_pauses()
        symbols = sorted({p.symbol for p in positions} | set(own_pauses))
        check = self.broker.check_prices(symbols)
        now = self.clock.time()
        problems: dict[str, PriceProblem] = dict(check.problems)
        prices: dict[str, Decimal] = {}
        for symbol, quote in check.quotes.items():
            if now - quote.timestamp > self.max_quote_age:
                problems[symbol] = PriceProblem.STALE
                log.critical(
                    "price for %s on account %s is stale (%.0fs old, limit %.0fs); no fallback "
                    "price is used, the symbol cannot be valued until a fresh price arrives",
                    symbol,
                    account,
                    now - quote.timestamp,
                    self.max_quote_age,
                )
            else:
                prices[symbol] = quote.price
        for symbol in symbols:
            if symbol not in prices and symbol not in problems:
                problems[symbol] = PriceProblem.MISSING
        valuations = tuple(
            Valuation(p.symbol, p.quantity, prices.get(p.symbol), problems.get(p.symbol))
            for p in sorted(positions, key=lambda p: p.symbol)
        )
        self._sync_pauses(problems, prices, own_pauses)
        return ValuationReport(valuations, now)

    def own_pauses(self) -> dict[str, str]:
        """The symbols this valuator paused (symbol -> reason); each valuation asks their price."""
        return self._own_pauses()

    def _own_pauses(self) -> dict[str, str]:
        if self.store is None:
            return {}
        reasons = self.store.paused_symbol_reasons(self.broker.account_id)
        return {s: r for s, r in reasons.items() if r.startswith(PAUSE_PREFIX)}

    def _sync_pauses(
        self,
        problems: Mapping[str, PriceProblem],
        prices: Mapping[str, Decimal],
        own_pauses: Mapping[str, str],
    ) -> None:
        if self.store is None:
            return
        account = self.broker.account_id
        for symbol, problem in sorted(problems.items()):
            if self.store.pause_symbol(
                account, symbol, f"{PAUSE_PREFIX}{problem.value}", actor="valuator"
            ):
                log.critical(
                    "trading PAUSED for %s on account %s: price %s; no new entries and no "
                    "position management until a valid price arrives",
                    symbol,
                    account,
                    problem.value,
                )
        for symbol in sorted(set(own_pauses) & set(prices)):
            if self.store.unpause_symbol(
                account, symbol, f"valid price {prices[symbol]} returned", actor="valuator"
            ):
                log.warning(
                    "trading unpaused for %s on account %s: a valid price (%s) returned",
                    symbol,
                    account,
                    prices[symbol],
                )
