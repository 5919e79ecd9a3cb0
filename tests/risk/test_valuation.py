"""Valuation: quantity x the broker's price, or unvaluable with a reason; pauses follow."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from brokerguard import ConfigurationError, Position, PriceProblem, Quote
from brokerguard.brokers import MISSING, FaultPlan
from brokerguard.risk import Valuator
from brokerguard.store import open_store

from .worlds import paper_account


@pytest.fixture
def store(clock):
    return open_store("sqlite://", clock=clock)


def test_values_are_quantity_times_the_broker_price(clock, store):
    """Valued positions carry exact Decimal values, from one batched price call."""
    broker = paper_account(
        clock, prices={"A/USD": "2.5", "B/USD": "10"}, positions={"A/USD": "4", "B/USD": "0.3"}
    )
    report = Valuator(broker, store=store).value(broker.get_positions())
    assert {v.symbol: v.value for v in report.valuations} == {
        "A/USD": Decimal("10.0"),
        "B/USD": Decimal("3.0"),
    }
    assert [c.method for c in broker.calls].count("fetch_prices") == 1
    assert report.unvaluable == ()


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (MISSING, PriceProblem.MISSING),
        (0, PriceProblem.ZERO),
        ("-1", PriceProblem.NEGATIVE),
        ("NaN", PriceProblem.NAN),
        ("n/a", PriceProblem.NON_NUMERIC),
    ],
)
def test_a_bad_price_makes_the_position_unvaluable_and_pauses_it(
    clock, store, bad, problem, caplog
):
    """No value, a reason, a pause with a CRITICAL line and an audit record: never a number."""
    broker = paper_account(
        clock,
        prices={"A/USD": "2", "B/USD": "3"},
        positions={"A/USD": "1", "B/USD": "1"},
        plan=FaultPlan(bad_prices={"B/USD": bad}),
    )
    with caplog.at_level(logging.CRITICAL, logger="brokerguard.valuation"):
        report = Valuator(broker, store=store).value(broker.get_positions())
    [unvaluable] = report.unvaluable
    assert (unvaluable.symbol, unvaluable.value, unvaluable.problem) == ("B/USD", None, problem)
    assert report.unvalued_symbols == ["B/USD"]
    assert store.paused_symbols(broker.account_id) == {"B/USD"}
    assert "PAUSED for B/USD" in caplog.text
    assert store.audit_log(broker.account_id)[0].action == "pause"


def test_stale_quotes_are_unvaluable(clock, store):
    """A quote older than max_quote_age is not a price any more."""
    broker = paper_account(clock, prices={"A/USD": "2"}, positions={"A/USD": "1"})
    broker.get_positions()
    broker.fetch_prices = lambda symbols: {"A/USD": Quote("A/USD", "2", clock.time() - 61)}  # type: ignore[method-assign]
    report = Valuator(broker, store=store, max_quote_age=60).value([Position("A/USD", 1)])
    assert report.valuations[0].problem is PriceProblem.STALE
    assert store.paused_symbol_reasons(broker.account_id) == {"A/USD": "unvaluable: stale"}


def test_a_symbol_is_unpaused_when_a_valid_price_returns(clock, store):
    """The valuator lifts its own pause on recovery, even if the position is gone meanwhile."""
    broker = paper_account(
        clock,
        prices={"A/USD": "2"},
        positions={"A/USD": "1"},
        plan=FaultPlan(bad_prices={"A/USD": "NaN"}),
    )
    valuator = Valuator(broker, store=store)
    valuator.value(broker.get_positions())
    assert store.paused_symbols(broker.account_id) == {"A/USD"}
    broker.set_fault_plan(FaultPlan())
    report = valuator.value([])  # no position now: the paused symbol is still re-priced
    assert report.valuations == ()
    assert store.paused_symbols(broker.account_id) == set()
    assert [r.action for r in store.audit_log(broker.account_id)] == ["unpause", "pause"]


def test_an_operators_pause_is_not_lifted_by_a_price(clock, store):
    """Only the valuator's own pauses end when prices return."""
    broker = paper_account(clock, prices={"A/USD": "2"}, positions={"A/USD": "1"})
    store.pause_symbol(broker.account_id, "A/USD", "delisting rumour", actor="alice")
    Valuator(broker, store=store).value(broker.get_positions())
    assert store.paused_symbols(broker.account_id) == {"A/USD"}


def test_without_a_store_nothing_is_paused(clock):
    """Valuation alone (no store) still never invents a price."""
    broker = paper_account(
        clock,
        prices={"A/USD": "2"},
        positions={"A/USD": "1"},
        plan=FaultPlan(bad_prices={"A/USD": 0}),
    )
    report = Valuator(broker).value(broker.get_positions())
    assert report.valuations[0].value is None


def test_max_quote_age_must_be_positive(clock):
    """A zero or negative age limit is refused."""
    broker = paper_account(clock, prices={"A/USD": "2"}, positions={})
    with pytest.raises(ConfigurationError):
        Valuator(broker, max_quote_age=0)
