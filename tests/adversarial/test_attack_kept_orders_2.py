# A claim's token is not a password (S106).
# ruff: noqa: S106
"""Adversarial tests, second round: orders a broker sends, kept in the store.

Promise: ZERO DUPLICATE ORDERS across processes and broker objects (see
tests/adversarial/test_attack_kept_orders.py, whose harness this file reuses and whose attacks it
does not repeat). This round attacks the current design: a claim's token shared by every process
that adopted its row, the horizon an adopter holds while the claimer records a resend's new
deadline, the two statements of a claim under PostgreSQL's READ COMMITTED, what a process that
loaded the kept orders once does not know of rows written after, resting orders across a
restart, a tampered row, a large table.

A test that passes pins a defence. A test marked xfail(strict) asserts the promise against a gap
that remains: its reason names the code responsible. The six gaps this round found are closed: a
proof of absence deletes a row only if its deadline is no later than the proof's; an order reads
the account's unsettled kept rows before its claim, and a gate within KEPT_REFRESH_S; an own
unresolved order meeting another's row becomes that order; a claim whose conflicting row
vanished inserts again; a kept resting order is exposure after a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, text

from brokerguard import (
    BlockedError,
    Order,
    OrderRequest,
    OrderStatus,
    OrderUnconfirmedError,
    TradingGate,
)
from brokerguard.brokers.base import KEPT_REFRESH_S
from brokerguard.errors import BrokerGuardError, RateLimitedError
from brokerguard.models import OrderType
from brokerguard.store import StateStore, open_store
from brokerguard.store.state import SENT_FOREIGN_MARGIN_S, SENT_ORDER_MEMORY_S
from brokerguard.testing import FakeClock

from .test_attack_kept_orders import (
    ACCOUNT,
    Crash,
    Exchange,
    HookedStore,
    VenueBroker,
    _past_deadline,
    _try,
    any_url,
    exchange,
    start,
    url,
)

__all__ = ["any_url", "exchange", "start", "url"]  # fixtures, imported so pytest sees them


class BookBroker(VenueBroker):
    """A venue with an order book: limit orders rest open, are listed and can be cancelled.

    ``omit``: client order ids the venue's listing leaves out (a lagging listing).
    """

    def __init__(self, exchange: Exchange, clock: FakeClock) -> None:
        super().__init__(exchange, clock)
        self.omit: set[str] = set()

    def submit_order(self, order: OrderRequest) -> Order:
        if order.order_type is not OrderType.LIMIT:
            return super().submit_order(order)
        resting = Order(
            order.client_order_id,
            order.symbol,
            order.side,
            order.quantity,
            "0",
            OrderStatus.OPEN,
            f"L-{order.client_order_id}",
            order_type=OrderType.LIMIT,
            price=order.price,
        )
        with self.exchange.lock:
            self.exchange.orders.setdefault(order.client_order_id, []).append(resting)
        return resting

    def fetch_open_orders(self) -> Sequence[Order]:
        return [
            found[-1]
            for cid, found in self.exchange.orders.items()
            if not found[-1].is_final and cid not in self.omit
        ]

    def submit_cancel(self, order: Order) -> Order | None:
        with self.exchange.lock:
            current = self.exchange.orders[order.client_order_id][-1]
            if current.is_final:
                return current
            cancelled = Order(
                current.client_order_id,
                current.symbol,
                current.side,
                current.quantity,
                current.filled_quantity,
                OrderStatus.CANCELED,
                current.broker_order_id,
                order_type=current.order_type,
                price=current.price,
            )
            self.exchange.orders[order.client_order_id].append(cancelled)
        return cancelled


def _dies_after_the_venue_accepts(start, cid: str, symbol: str = "SOL/USD", side: str = "buy"):
    """A process whose order the venue accepted dies before it learns so (the row says sent)."""
    dying, _ = start()
    dying.crash_after_accept = True
    with pytest.raises(Crash):
        dying.place_market_order(symbol, side, "1", client_order_id=cid)
    return dying


# --------------------------------------------------------------------------- GAPS


def test_an_adopter_does_not_prove_absent_a_resend_whose_new_deadline_it_never_read(
    start, clock, exchange
):
    """A claims c1 (deadline 1010); the venue refuses it at the door (retry in 8 s).

    B meets A's row before that resend (it adopts absent_after 1015). A records the resend's new
    deadline (1018, absent after 1023) and, before it leaves, B's bot retries c1 past 1015.
    """
    a, a_store = start()
    b, _ = start()

    def rate_limited(_args: tuple[Any, ...]) -> None:
        raise RateLimitedError("EAPI:Rate limit exceeded", retry_after=8.0)

    def b_meets_the_row(_args: tuple[Any, ...]) -> None:
        with pytest.raises(OrderUnconfirmedError):
            b.place_market_order("SOL/USD", "buy", "1", client_order_id="c-resend")

    def b_retries_past_the_old_horizon(_args: tuple[Any, ...]) -> None:
        clock.advance(1015.5 - clock.time())
        _try(b.place_market_order, "SOL/USD", "buy", "1", client_order_id="c-resend")

    a.submit_order = _first_call_raises(a.submit_order, rate_limited)  # type: ignore[method-assign]
    a_store.after["claim_sent_order"] = [b_meets_the_row]
    a_store.after["save_sent_order"] = [b_retries_past_the_old_horizon]

    _try(a.place_market_order, "SOL/USD", "buy", "1", client_order_id="c-resend")

    assert exchange.executed("c-resend") <= 1, "c-resend was sent by A's resend and by B"


def _first_call_raises(real, raise_it):
    calls = [0]

    def submit(order: OrderRequest) -> Order:
        calls[0] += 1
        if calls[0] == 1:
            raise_it(())
        return real(order)

    return submit


def test_an_unresolved_buy_another_live_process_kept_blocks_a_new_id_for_it(start, exchange):
    """A runs; B (a second bot process, or the enforcer) sends a SOL buy and dies unanswered."""
    a, _ = start()
    _dies_after_the_venue_accepts(start, "c-b-sol")

    _try(a.place_market_order, "SOL/USD", "buy", "1", client_order_id="c-a-sol")

    assert exchange.executed("c-a-sol") == 0, "SOL was bought twice: c-b-sol filled, c-a-sol sent"


def test_a_running_gate_refuses_a_symbol_whose_buy_another_process_left_unresolved(
    start, exchange, clock
):
    """Was a strict xfail (the kept rows were read once).

    The gate reads them again for a decision once its view is KEPT_REFRESH_S old: the
    documented bound.
    """
    a, _ = start()
    gate = TradingGate(a, 3)
    assert gate.check_entry("SOL/USD").allowed
    _dies_after_the_venue_accepts(start, "c-b-sol-gate")
    clock.advance(KEPT_REFRESH_S)

    assert gate.check_entry("SOL/USD").code == "ORDER_UNRESOLVED"
    with pytest.raises(BlockedError):  # and an order for it refuses at once, whatever the gate
        a.place_market_order("SOL/USD", "buy", "1", client_order_id="c-a-sol-gate")


def test_an_own_unresolved_order_written_late_never_takes_over_another_process_row(
    exchange, clock, url, start
):
    """P1 sends c1 with no store yet (the request never arrived: a drop); P0 claims c1.

    P0 (with the store, a caller's deadline 30 s out) is paused between its claim and its
    request. P1 builds its gate with the store then; its bot retries c1 past P1's own horizon.
    """
    p1 = VenueBroker(exchange, clock)
    exchange.drop_requests = 1
    exchange.hidden = True
    with pytest.raises(OrderUnconfirmedError) as info:
        p1.place_market_order("SOL/USD", "buy", "1", client_order_id="c-late")
    exchange.hidden = False
    p1_store = open_store(url, clock=clock)

    p0, p0_store = start()

    def p1_meets_the_store_then_retries(_args: tuple[Any, ...]) -> None:
        p1.keep_orders_in(p1_store)  # P1's own unresolved c-late is written: P0's row holds it
        _past_deadline(clock, info.value)
        _try(p1.place_market_order, "SOL/USD", "buy", "1", client_order_id="c-late")

    p0_store.after["claim_sent_order"] = [p1_meets_the_store_then_retries]
    _try(
        p0.place_market_order,
        "SOL/USD",
        "buy",
        "1",
        client_order_id="c-late",
        deadline=clock.time() + 30,
    )
    p1_store.close()

    assert exchange.executed("c-late") <= 1, "c-late was sent by P1 and by P0"


def test_a_claim_that_met_a_row_deleted_before_its_select_is_not_a_win_on_postgresql(pg_url, clock):
    dead = open_store(pg_url, clock=clock)  # the process that sent c1 (it died)
    a = open_store(pg_url, clock=clock)
    b = open_store(pg_url, clock=clock)
    try:
        request = OrderRequest("SOL/USD", "buy", "1", "c-vanishing", deadline=1010.0)
        assert dead.claim_sent_order(ACCOUNT, request, token="t-dead", absent_after=1015.0) is None
        armed = [True]

        @event.listens_for(a._engine, "before_cursor_execute")
        def b_settles_in_between(_conn, _cursor, statement, *_rest) -> None:
            if armed[0] and statement.lstrip().upper().startswith("SELECT"):
                armed[0] = False  # B proved c1 absent: its row goes, committed at once
                assert b.settle_sent_order(ACCOUNT, "c-vanishing", "not_placed", token="t-dead")

        won_a = a.claim_sent_order(ACCOUNT, request, token="t-a", absent_after=1015.0) is None
        assert not armed[0], "the interleaving did not happen"
        won_b = b.claim_sent_order(ACCOUNT, request, token="t-b", absent_after=1015.0) is None

        assert not (won_a and won_b), "both processes were told c-vanishing is theirs to send"
    finally:
        for store in (dead, a, b):
            store.close()


def test_a_resting_buy_kept_open_holds_its_slot_after_a_restart_when_the_listing_omits_it(
    exchange, clock, url
):
    stores: list[StateStore] = []

    def book() -> BookBroker:
        stores.append(open_store(url, clock=clock))
        broker = BookBroker(exchange, clock)
        broker.keep_orders_in(stores[-1])
        return broker

    first = book()
    rest = first.place_order(
        "SOL/USD", "buy", "1", client_order_id="c-rest", order_type="limit", price="90"
    )
    assert rest.status is OrderStatus.OPEN

    restarted = book()
    restarted.omit = {"c-rest"}  # the venue's listing lags (absence from it is not evidence)
    gate = TradingGate(restarted, 2)  # BTC held: the resting SOL buy takes the last slot
    decision = gate.check_entry("ETH/USD")
    for store in stores:
        store.close()

    assert not decision.allowed, "a third position was admitted over a cap of 2"


# --------------------------------------------------------------------------- defences


def test_an_adopter_whose_row_was_claimed_again_is_not_stuck_and_never_clobbers_it(
    start, clock, exchange
):
    """A and B adopt D's unresolved c1 (one token); B proves it absent and resends it.

    A's retry must find B's order (not send), and A's writes with the old token never touch
    B's row (its fate stays B's).
    """
    dying, _ = start()
    dying.crash_before_venue = True
    with pytest.raises(Crash):
        dying.place_market_order("SOL/USD", "buy", "1", client_order_id="c-twice-adopted")
    a, a_store = start()
    b, b_store = start()
    with pytest.raises(OrderUnconfirmedError) as info:
        b.place_market_order("SOL/USD", "buy", "1", client_order_id="c-twice-adopted")
    _past_deadline(clock, info.value)
    b.place_market_order("SOL/USD", "buy", "1", client_order_id="c-twice-adopted")
    assert exchange.executed("c-twice-adopted") == 1
    row = b_store.store.sent_order(ACCOUNT, "c-twice-adopted")
    assert row is not None
    assert row.state == "filled"

    exchange.hidden = True  # A's lookups lag: A proves "its" (old) send absent, too late
    _try(a.place_market_order, "SOL/USD", "buy", "1", client_order_id="c-twice-adopted")
    clock.advance(5)
    _try(a.place_market_order, "SOL/USD", "buy", "1", client_order_id="c-twice-adopted")
    exchange.hidden = False
    found = a.place_market_order("SOL/USD", "buy", "1", client_order_id="c-twice-adopted")

    assert found.status is OrderStatus.FILLED
    assert exchange.executed("c-twice-adopted") == 1
    after = a_store.store.sent_order(ACCOUNT, "c-twice-adopted")
    assert after is not None
    assert (after.token, after.state) == (row.token, "filled")


def test_the_token_cas_never_writes_a_row_claimed_again_under_racing_writers(any_url, clock):
    """Racing on one id: X frees it and claims it again; Y writes with the old token.

    Whatever the interleaving (PostgreSQL READ COMMITTED, SQLite), Y's write lands on the old
    row or nowhere: the new row keeps X's request and state.
    """
    x = open_store(any_url, clock=clock)
    y = open_store(any_url, clock=clock)
    errors: list[BaseException] = []  # a busy database is a refusal, never a wrong write
    reclaimed = 0
    try:
        for n in range(12):
            cid = f"c-cas-{n}"
            old = OrderRequest("SOL/USD", "buy", "1", cid, deadline=1010.0)
            new = OrderRequest("SOL/USD", "buy", "1", cid, deadline=1020.0)
            assert x.claim_sent_order(ACCOUNT, old, token=f"old-{n}", absent_after=1015.0) is None
            at_once = threading.Barrier(2, timeout=10)

            def free_and_claim(cid=cid, new=new, n=n, at_once=at_once, errors=errors) -> None:
                at_once.wait()
                try:
                    x.settle_sent_order(ACCOUNT, cid, "not_placed", token=f"old-{n}")
                    x.claim_sent_order(ACCOUNT, new, token=f"new-{n}", absent_after=1025.0)
                except BrokerGuardError as exc:
                    errors.append(exc)

            def stale_write(old=old, n=n, at_once=at_once, errors=errors) -> None:
                at_once.wait()
                try:
                    y.save_sent_order(
                        ACCOUNT, old, "unresolved", token=f"old-{n}", absent_after=1015.0
                    )
                    y.settle_sent_order(ACCOUNT, old.client_order_id, "filled", token=f"old-{n}")
                except BrokerGuardError as exc:
                    errors.append(exc)

            threads = [
                threading.Thread(target=free_and_claim),
                threading.Thread(target=stale_write),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            row = x.sent_order(ACCOUNT, cid)
            if row is not None and row.token == f"new-{n}":
                reclaimed += 1
                assert row.state == "sent"
                assert row.request.deadline == 1020.0
                assert row.absent_after == 1025.0
        assert reclaimed, errors
    finally:
        x.close()
        y.close()


def test_a_cancel_after_a_restart_records_the_kept_resting_order_cancelled(exchange, clock, url):
    """A limit buy rests; the process restarts and cancels it: the row says cancelled."""
    stores = [open_store(url, clock=clock) for _ in range(3)]
    first = BookBroker(exchange, clock)
    first.keep_orders_in(stores[0])
    first.place_order(
        "SOL/USD", "buy", "1", client_order_id="c-cancel", order_type="limit", price="90"
    )
    restarted = BookBroker(exchange, clock)
    restarted.keep_orders_in(stores[1])
    assert restarted.cancel_order("c-cancel").status is OrderStatus.CANCELED
    row = stores[2].sent_order(ACCOUNT, "c-cancel")
    third = BookBroker(exchange, clock)
    third.keep_orders_in(stores[2])
    # the bot retries the id: the cancelled order is answered, nothing is placed again
    again = third.place_order(
        "SOL/USD", "buy", "1", client_order_id="c-cancel", order_type="limit", price="90"
    )
    for store in stores:
        store.close()
    assert row is not None
    assert row.state == "canceled"
    assert again.status is OrderStatus.CANCELED
    assert exchange.executed("c-cancel") == 2  # the open order and its cancelled state


def test_a_venue_fill_of_a_resting_order_seen_by_a_restart_is_looked_up_not_resent(
    exchange, clock, url
):
    """The venue fills a resting limit sell while its process is gone; the bot retries it."""
    stores = [open_store(url, clock=clock) for _ in range(2)]
    first = BookBroker(exchange, clock)
    first.keep_orders_in(stores[0])
    first.place_order(
        "BTC/USD", "sell", "1", client_order_id="c-rest-sell", order_type="limit", price="110"
    )
    resting = exchange.orders["c-rest-sell"][-1]
    exchange.orders["c-rest-sell"].append(
        Order(
            resting.client_order_id,
            resting.symbol,
            resting.side,
            resting.quantity,
            resting.quantity,
            OrderStatus.FILLED,
            resting.broker_order_id,
            order_type=OrderType.LIMIT,
            price=resting.price,
        )
    )
    restarted = BookBroker(exchange, clock)
    restarted.keep_orders_in(stores[1])
    again = restarted.place_order(
        "BTC/USD", "sell", "1", client_order_id="c-rest-sell", order_type="limit", price="110"
    )
    for store in stores:
        store.close()
    assert again.status is OrderStatus.FILLED
    assert len(exchange.orders["c-rest-sell"]) == 2  # placed once, then filled by the venue


def test_the_enforcer_resolving_an_adopted_row_never_frees_the_owner_resend(start, clock, exchange):
    """The enforcer's process adopts the bot's unresolved c1; the bot resends it once absent.

    The enforcer's late resolve_unresolved (its lookups lag) must not free the new send.
    """
    bot, bot_store = start()
    exchange.drop_requests = 1
    with pytest.raises(OrderUnconfirmedError) as info:
        bot.place_market_order("SOL/USD", "buy", "1", client_order_id="c-enf")
    enforcer_side, _ = start()
    assert [o.client_order_id for o in enforcer_side.unresolved_orders()] == ["c-enf"]
    _past_deadline(clock, info.value)
    exchange.lose_answers = 1  # the resend lands, its answer is lost
    exchange.hidden = True  # and the lookups lag behind the venue
    with pytest.raises(OrderUnconfirmedError):
        bot.place_market_order("SOL/USD", "buy", "1", client_order_id="c-enf")
    enforcer_side.resolve_unresolved()
    clock.advance(3)
    enforcer_side.resolve_unresolved()

    restarted, _ = start()
    held = [o.client_order_id for o in restarted.unresolved_orders()]
    exchange.hidden = False
    for process in (restarted, enforcer_side, bot):
        _try(process.place_market_order, "SOL/USD", "buy", "1", client_order_id="c-enf")
    assert held == ["c-enf"], "the resend's row was freed by the enforcer's stale proof"
    assert exchange.executed("c-enf") == 1
    assert bot_store.store.sent_order(ACCOUNT, "c-enf") is not None


def test_a_row_whose_request_names_another_id_never_sends_either(exchange, clock, url):
    """A hostile operator rewrites an unresolved row's request to another client order id.

    The next process must send neither id while the row's order is of unknown outcome.
    """
    store = open_store(url, clock=clock)
    request = OrderRequest("SOL/USD", "buy", "1", "c-real", deadline=1010.0)
    store.claim_sent_order(ACCOUNT, request, token="t", absent_after=1015.0)
    with store._engine.begin() as conn:
        conn.execute(
            text("UPDATE bg_sent_orders SET request = replace(request, 'c-real', 'c-fake')")
        )
    exchange.hidden = True
    broker = VenueBroker(exchange, clock)
    broker.keep_orders_in(store)
    for cid in ("c-real", "c-fake", "c-real"):
        _try(broker.place_market_order, "SOL/USD", "buy", "1", client_order_id=cid)
    store.close()
    assert exchange.executed() == 0


def test_a_row_tampered_to_another_quantity_is_answered_as_the_venue_has_it(
    exchange, clock, url, start
):
    """The operator rewrites an unresolved row's quantity; the order filled at the venue."""
    _dies_after_the_venue_accepts(start, "c-qty")
    store = open_store(url, clock=clock)
    with store._engine.begin() as conn:
        conn.execute(text("UPDATE bg_sent_orders SET request = replace(request, '\"1\"', '\"7\"')"))
    broker = VenueBroker(exchange, clock)
    broker.keep_orders_in(store)
    [held] = broker.unresolved_orders()
    assert held.request.quantity == Decimal(7)
    found = broker.place_market_order("SOL/USD", "buy", "1", client_order_id="c-qty")
    store.close()
    assert found.quantity == Decimal(1)
    assert exchange.executed("c-qty") == 1


def test_a_host_behind_neither_sends_late_nor_proves_absence_early(start, clock, exchange):
    """A host whose clock runs 30 s behind the venue and the other hosts.

    Its own requests carry deadlines already past at the venue (refused, never placed, no row
    left); it judges another's unresolved order by its late clock, so it proves absence late,
    never early: it sends nothing while the other's order may still be accepted.
    """
    behind = FakeClock(start=clock.time() - 30)
    b, b_store = start(own_clock=behind)
    _try(b.place_market_order, "ETH/USD", "buy", "1", client_order_id="c-behind")
    assert exchange.executed("c-behind") == 0
    assert b_store.store.sent_order(ACCOUNT, "c-behind") is None

    a, _ = start()
    exchange.drop_requests = 1
    with pytest.raises(OrderUnconfirmedError) as info:
        a.place_market_order("SOL/USD", "buy", "1", client_order_id="c-on-time")
    assert info.value.deadline is not None
    clock.advance(info.value.deadline - clock.time() + 3)  # past it on time, not on b's clock
    behind.advance(info.value.deadline - behind.time() - 27)
    for _ in range(3):
        _try(b.place_market_order, "SOL/USD", "buy", "1", client_order_id="c-on-time")
        clock.advance(2)
        behind.advance(2)
    assert exchange.executed("c-on-time") == 0
    assert [o.client_order_id for o in b.unresolved_orders()] == ["c-on-time"]


def test_thousands_of_final_rows_are_pruned_by_one_settle_and_loaded_quickly(
    start, clock, exchange, url
):
    """A large table (another writer's final rows, a day old) is bounded by the next settle."""
    store = open_store(url, clock=clock)
    rows = [
        {
            "account_id": ACCOUNT,
            "client_order_id": f"c-old-{n}",
            "request": (
                '{"symbol": "SOL/USD", "side": "buy", "quantity": "1", '
                f'"client_order_id": "c-old-{n}"}}'
            ),
            "state": "filled",
            "absent_after": None,
            "token": f"t{n}",
            "writer": "someone-else",
            "sent_at": 0.0,
            "updated_at": 0.0,
        }
        for n in range(3000)
    ]
    with store._engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO bg_sent_orders (account_id, client_order_id, request, state, "
                "absent_after, token, writer, sent_at, updated_at) VALUES (:account_id, "
                ":client_order_id, :request, :state, :absent_after, :token, :writer, :sent_at, "
                ":updated_at)"
            ),
            rows,
        )
    clock.advance(SENT_ORDER_MEMORY_S + SENT_FOREIGN_MARGIN_S)
    broker, _ = start()
    assert broker.unresolved_orders() == []
    broker.place_market_order("SOL/USD", "buy", "1", client_order_id="c-prunes-all")
    left = store.sent_orders(ACCOUNT)
    store.close()
    assert [r.request.client_order_id for r in left] == ["c-prunes-all"]


def test_a_load_racing_the_gate_thread_holds_the_kept_unresolved_buy(start, clock, exchange, url):
    """keep_orders_in failed (store down); the gate thread and the bot thread load it at once."""
    _dies_after_the_venue_accepts(start, "c-race-load")
    hooked = HookedStore(open_store(url, clock=clock))
    hooked.down = {"sent_orders"}
    broker = VenueBroker(exchange, clock)
    broker.keep_orders_in(hooked)  # type: ignore[arg-type]
    hooked.down = set()
    at_once = threading.Barrier(6, timeout=10)
    seen: list[list[str]] = []

    def gate_thread() -> None:
        at_once.wait()
        seen.append([o.client_order_id for o in broker.unresolved_orders()])

    def bot_thread(n: int) -> None:
        at_once.wait()
        _try(broker.place_market_order, "SOL/USD", "buy", "1", client_order_id=f"c-new-{n}")

    threads = [threading.Thread(target=gate_thread) for _ in range(3)]
    threads += [threading.Thread(target=bot_thread, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    hooked.store.close()
    assert exchange.executed() == 1, "a SOL buy under a new id went out past the kept one"
    assert all(s == ["c-race-load"] for s in seen), seen
