"""The order journal reconciled before every enforcement: a restart never sells a symbol twice."""

from __future__ import annotations

from decimal import Decimal

import pytest

from brokerguard import ConfigurationError
from brokerguard.brokers import FaultPlan
from brokerguard.models import OrderRequest, Side
from brokerguard.risk import PositionCapEnforcer
from brokerguard.store import AuditNote, open_store

from .worlds import coins, paper_account, sell_orders


@pytest.fixture
def store(tmp_path, clock):
    return open_store(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)


def test_an_open_sell_left_by_a_previous_process_is_not_sold_again(clock, store):
    """Sells that never settle: a new enforcer on the same store sends nothing new."""
    prices = coins(10)
    broker = paper_account(
        clock,
        prices=prices,
        positions=dict.fromkeys(prices, "1"),
        plan=FaultPlan(unsettled_sells=True),
    )
    ok, first = PositionCapEnforcer(broker, 8, store=store, max_cycles=1).enforce_cap()
    assert not ok
    assert sell_orders(broker) == [("C01/USD", Decimal(1)), ("C02/USD", Decimal(1))]
    store.resume(broker.account_id, "ops", "retry after the exchange fixed settlement")

    # "Restart": a brand-new enforcer, only the store and the broker survive.
    ok, second = PositionCapEnforcer(broker, 8, store=store, max_cycles=1).enforce_cap()

    assert not ok  # still over the cap: the sells are still open
    assert sell_orders(broker) == [("C01/USD", Decimal(1)), ("C02/USD", Decimal(1))]
    assert second["orders"] == []
    assert {e.client_order_id for e in store.journal(broker.account_id)} == set(first["orders"])
    assert {e.status for e in store.journal(broker.account_id)} == {"open"}


def test_an_intent_not_found_before_its_deadline_stays_unresolved_and_is_not_resold(clock, store):
    """Killed between journaling and sending: "not found" at once proves nothing; no halt."""
    prices = coins(9)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    store.record_order_intent(
        broker.account_id,
        OrderRequest("C01/USD", Side.SELL, Decimal(1), "crashed-before-send", clock.time() + 10),
        purpose="cap_liquidation",
    )

    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()

    assert not ok
    assert result["status"] == "unverified"
    assert result["trading_halted"] is False
    assert result["unresolved"] == ["crashed-before-send"]
    assert broker.all_orders() == []  # nothing else sold while its fate is unknown
    statuses = {e.client_order_id: e.status for e in store.journal(broker.account_id)}
    assert statuses["crashed-before-send"] == "unresolved"


def test_an_intent_proven_absent_after_its_deadline_is_marked_not_placed_and_resold(clock, store):
    """After the deadline (plus margin) a lookup that finds nothing proves it: a new sell goes."""
    prices = coins(9)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    store.record_order_intent(
        broker.account_id,
        OrderRequest("C01/USD", Side.SELL, Decimal(1), "crashed-before-send", clock.time() + 10),
        purpose="cap_liquidation",
    )
    clock.advance(10 + broker.resolution_margin_s)

    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()

    assert ok
    assert result["reconciled"] == [
        {
            "client_order_id": "crashed-before-send",
            "symbol": "C01/USD",
            "from": "intent",
            "to": "not_placed",
        }
    ]
    assert [o.client_order_id for o in broker.all_orders()] == result["orders"]
    assert "crashed-before-send" not in result["orders"]
    statuses = {e.client_order_id: e.status for e in store.journal(broker.account_id)}
    assert statuses["crashed-before-send"] == "not_placed"
    audit = [r for r in store.audit_log(broker.account_id) if r.action == "order_reconciled"]
    assert [r.details["client_order_id"] for r in audit] == ["crashed-before-send"]


def test_a_journal_entry_from_before_deadlines_waits_for_the_local_bound(clock, store):
    """No deadline was sent with it: absence proves nothing before the local floor of 60 s."""
    prices = coins(9)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    store.record_order_intent(
        broker.account_id,
        OrderRequest("C01/USD", Side.SELL, Decimal(1), "old-intent"),
        purpose="cap_liquidation",
    )
    enforcer = PositionCapEnforcer(broker, 8, store=store)
    clock.advance(30)
    assert enforcer.reconcile_orders()[0]["to"] == "unresolved"
    clock.advance(40)
    assert enforcer.reconcile_orders()[0]["to"] == "not_placed"


def test_a_sent_but_unrecorded_order_is_found_by_its_id_and_not_resent(clock, store):
    """Killed after sending, before recording the answer: the lookup finds the fill."""
    prices = coins(9)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    request = OrderRequest("C01/USD", Side.SELL, Decimal(1), "sent-then-killed")
    store.record_order_intent(broker.account_id, request, purpose="cap_liquidation")
    broker.place_market_order("C01/USD", Side.SELL, 1, client_order_id="sent-then-killed")
    clock.advance(5)  # it settles while the process is down

    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()

    assert ok
    assert result["orders"] == []  # one position fewer already: nothing more to sell
    assert len(broker.all_orders()) == 1
    assert store.journal(broker.account_id)[0].status == "filled"
    assert result["reconciled"][0]["to"] == "filled"


def test_an_order_that_cannot_be_looked_up_keeps_its_symbol_off_the_block(clock, store):
    """Fate unknown: the symbol is not sold again, another one is, the entry stays live."""
    prices = coins(10)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    store.record_order_intent(
        broker.account_id,
        OrderRequest("C01/USD", Side.SELL, Decimal(1), "fate-unknown"),
        purpose="cap_liquidation",
    )
    broker.set_fault_plan(FaultPlan(error_rate={"fetch_order": 1.0}))

    _, result = PositionCapEnforcer(broker, 8, store=store, max_cycles=1).enforce_cap()

    assert result["reconciled"][0]["to"] == "unknown"
    sold = [symbol for symbol, _ in sell_orders(broker)]
    assert "C01/USD" not in sold
    assert sold == ["C02/USD"]  # the excess of 2 less the one whose fate is unknown
    statuses = {e.client_order_id: e.status for e in store.journal(broker.account_id)}
    assert statuses["fate-unknown"] == "intent"


def test_the_dry_run_leaves_out_symbols_with_a_live_order(clock, store):
    """plan() does not propose selling what a journaled live order is already selling."""
    prices = coins(10)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    store.record_order_intent(
        broker.account_id,
        OrderRequest("C01/USD", Side.SELL, Decimal(1), "in-flight"),
        purpose="cap_liquidation",
    )
    plan = PositionCapEnforcer(broker, 8, store=store).plan()
    assert [s["symbol"] for s in plan["would_liquidate"]] == ["C02/USD"]


def test_an_intent_and_its_audit_record_are_written_together_or_not_at_all(clock, store):
    """A bad audit note rolls the intent back: never an order without its explanation."""
    request = OrderRequest("C01/USD", Side.SELL, Decimal(1), "atomic")
    with pytest.raises(ConfigurationError):
        store.record_order_intent(
            "acct", request, purpose="cap_liquidation", audit=AuditNote("", "enforcer", "why")
        )
    assert store.journal("acct") == []
    assert store.audit_log("acct") == []


def test_a_stale_fence_token_stops_the_enforcer_before_any_order(clock, store):
    """A worker whose lease was taken over (token 7 < 8) cannot journal, so it cannot send."""
    from brokerguard.errors import LeaseLostError  # noqa: PLC0415

    prices = coins(10)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    store.fenced(broker.account_id, 8, holder="worker-b").record_audit(
        broker.account_id, "took_over", "worker-b", "lease 8"
    )
    with pytest.raises(LeaseLostError):
        PositionCapEnforcer(broker, 8, store=store).enforce_cap(
            fence_token=7, fence_holder="worker-a"
        )
    assert broker.all_orders() == []
    assert store.journal(broker.account_id) == []
    ok, _ = PositionCapEnforcer(broker, 8, store=store).enforce_cap(
        fence_token=8, fence_holder="worker-b"
    )
    assert ok
    assert len(broker.all_orders()) == 2
    audit = [r for r in store.audit_log(broker.account_id) if r.action == "liquidation_order"]
    assert {(r.details["fence_token"], r.details["worker"]) for r in audit} == {(8, "worker-b")}


def test_a_liquidation_whose_lookup_fails_makes_the_enforcer_wait_not_halt(clock, store):
    """The broker cannot say what became of the sell: over the cap, unverified, not halted."""
    prices = coins(9)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    store.record_order_intent(
        broker.account_id,
        OrderRequest("C01/USD", Side.SELL, Decimal(1), "lookup-fails", clock.time() + 10),
        purpose="cap_liquidation",
    )
    broker.set_fault_plan(FaultPlan(error_rate={"fetch_order": 1.0}))

    ok, result = PositionCapEnforcer(broker, 8, store=store).enforce_cap()

    assert not ok
    assert result["status"] == "unverified"
    assert result["trading_halted"] is False
    assert result["unresolved"] == ["lookup-fails"]
    assert broker.all_orders() == []


def test_a_doubt_that_cannot_clear_the_excess_does_not_prevent_a_halt(clock, store):
    """One unresolved sell for an excess of two: even if it filled, the account stays over."""
    prices = coins(10)
    broker = paper_account(clock, prices=prices, positions=dict.fromkeys(prices, "1"))
    store.record_order_intent(
        broker.account_id,
        OrderRequest("C01/USD", Side.SELL, Decimal(1), "doubt", clock.time() + 10),
        purpose="cap_liquidation",
    )
    store.record_order_status("doubt", "unresolved")
    broker.set_fault_plan(FaultPlan(unsettled_sells=True))

    ok, result = PositionCapEnforcer(broker, 8, store=store, max_cycles=2).enforce_cap()

    assert not ok
    assert result["status"] == "failed_enforcement"
    assert result["trading_halted"] is True
