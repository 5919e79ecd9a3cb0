"""The gate's edges (issue 12, items 1-4): unknown outcomes, symbol forms, REDUCING, the fleet."""

from __future__ import annotations

import pytest

from brokerguard import OrderUnconfirmedError
from brokerguard.brokers import FaultPlan
from brokerguard.models import parse_symbol
from brokerguard.risk import (
    ACCOUNT_REDUCING,
    COORDINATION_UNAVAILABLE,
    INVALID_SYMBOL,
    POSITION_CAP_REACHED,
    SYMBOL_PAUSED,
    TradingGate,
    TradingState,
)
from brokerguard.store import open_store
from tests.conftest import REDIS_URL

from .worlds import coins, paper_account


@pytest.fixture
def store(clock):
    return open_store("sqlite://", clock=clock)


@pytest.mark.parametrize("failure", ["unconfirmed", "bot_error_after_the_fill"])
def test_an_entry_with_an_unknown_outcome_keeps_its_slot_and_the_cap_holds(clock, store, failure):
    """Cap 1: the first entry's outcome is unknown (it filled); a second entry is refused.

    On the old gate such an entry released its reservation, the next check reused a snapshot
    under 30 s old, and the account ended with 2 positions for a cap of 1.
    """
    prices = coins(5)
    broker = paper_account(clock, prices=prices, positions={}, settle_delay=0)
    # Trust the fresh snapshot even while reads are degraded: the slot itself must hold.
    gate = TradingGate(broker, 1, store=store, refetch_when_degraded=False)
    broker.get_positions()
    if failure == "unconfirmed":
        broker.set_fault_plan(
            FaultPlan(fail_after_accept_rate=1.0, error_rate={"fetch_order": 1.0})
        )

    def enter() -> None:
        with gate.reserve_entry("C01/USD"):
            broker.place_market_order("C01/USD", "buy", 1, client_order_id="first")
            if failure == "bot_error_after_the_fill":
                raise RuntimeError("the bot's bookkeeping failed after the order")

    with pytest.raises((OrderUnconfirmedError, RuntimeError)):
        enter()
    broker.set_fault_plan(FaultPlan())
    decision = gate.check_entry("C02/USD")

    assert decision.code == POSITION_CAP_REACHED
    assert len(broker.true_positions()) == 1


@pytest.mark.parametrize("spelled", ["DOGE/USD ", " doge/usd", "Doge/Usd", "DOGE / USD"])
def test_a_paused_symbol_is_paused_however_it_is_spelled(clock, store, spelled):
    """One parser for the gate and the broker: case and whitespace do not get around a pause."""
    broker = paper_account(clock, prices={"DOGE/USD": "0.1", "BTC/USD": "60000"}, positions={})
    store.pause_symbol(broker.account_id, "DOGE/USD", "NaN price")
    gate = TradingGate(broker, 4, store=store)
    assert gate.check_entry(spelled).code == SYMBOL_PAUSED
    assert gate.check_exit(spelled).code == SYMBOL_PAUSED


def test_exchange_aliases_name_one_symbol(clock, store):
    """XBT is BTC: a pause on BTC/USD holds for xbt/usd, and an order for it trades BTC/USD."""
    broker = paper_account(clock, prices={"BTC/USD": "60000"}, positions={}, settle_delay=0)
    store.pause_symbol(broker.account_id, "BTC/USD", "operator")
    gate = TradingGate(broker, 4, store=store)
    assert gate.check_entry("xbt/usd").code == SYMBOL_PAUSED
    order = broker.place_market_order("XBT/USD ", "buy", "0.001")
    assert order.symbol == "BTC/USD"
    assert parse_symbol("xdg/usd") == "DOGE/USD"


@pytest.mark.parametrize("garbage", ["", "   ", "BTC//USD", "BT C/USD"])
def test_a_symbol_that_is_not_one_is_refused_as_data(clock, store, garbage):
    """An unparseable symbol is a refusal with its own code, never an exception or a yes."""
    gate = TradingGate(paper_account(clock, prices=coins(3), positions={}), 4, store=store)
    decision = gate.check_entry(garbage)
    assert not decision.allowed
    assert decision.code == INVALID_SYMBOL


def test_reducing_refuses_every_entry_even_into_a_held_symbol(clock, store):
    """Cap 2, 4 held: REDUCING; adding to BTC is new risk and is refused like a new symbol."""
    prices = coins(6)
    held = dict.fromkeys(list(prices)[:4], "1")
    gate = TradingGate(paper_account(clock, prices=prices, positions=held), 2, store=store)
    decision = gate.check_entry("C01/USD")  # held already
    assert gate.trading_state() is TradingState.REDUCING
    assert decision.code == ACCOUNT_REDUCING
    assert decision.details == {"open": 4, "cap": 2}
    assert gate.check_exit("C01/USD").allowed  # selling is still fine


def test_check_entry_reads_the_fleets_reservations(clock, redis_namespace):
    """Another process holds the last slot: check_entry says no, as reserve_entry would."""
    from brokerguard.coordination import RedisCoordinator, SharedSlots  # noqa: PLC0415

    prices = coins(5)
    broker = paper_account(clock, prices=prices, positions={"C01/USD": "1"})
    ours = TradingGate(
        broker,
        2,
        clock=clock,
        slots=SharedSlots(RedisCoordinator(REDIS_URL, namespace=redis_namespace)),
    )
    theirs = SharedSlots(RedisCoordinator(REDIS_URL, namespace=redis_namespace))
    assert ours.check_entry("C02/USD").allowed
    assert theirs.reserve(broker.account_id, "C03/USD", 2, ["C01/USD"]) is not None

    decision = ours.check_entry("C02/USD")

    assert decision.code == POSITION_CAP_REACHED
    assert decision.details["reserved"] == 1


def test_check_entry_refuses_when_the_fleets_redis_cannot_be_asked(clock):
    """Redis unreachable: the check cannot know the fleet's reservations, so it refuses."""
    from brokerguard.coordination import RedisCoordinator, SharedSlots  # noqa: PLC0415

    broker = paper_account(clock, prices=coins(3), positions={})
    dead = RedisCoordinator("redis://127.0.0.1:9/0", timeout=0.2)
    gate = TradingGate(broker, 2, clock=clock, slots=SharedSlots(dead))
    assert gate.check_entry("C01/USD").code == COORDINATION_UNAVAILABLE
