"""Orders a broker sent, kept in the store: a restart or a second broker object never resends.

What a broker object sent used to live in its memory only. A bot's retry of an order of unknown
outcome, made by a restarted process or through another broker object on the same account,
found the id unknown and was sent again (a venue that checks ids against open orders only,
as Kraken does, executes both). With ``keep_orders_in(store)`` the id is claimed in the store
before it is sent, recorded as sent before it leaves, and its fate recorded after.

The venue here is one object shared by every broker object (the exchange); each broker object
is one process's view of it.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from brokerguard import (
    BlockedError,
    Order,
    OrderRequest,
    OrderStatus,
    OrderUnconfirmedError,
    StoreUnavailableError,
    TradingGate,
)
from brokerguard.orders import OrderState
from brokerguard.store import StateStore, open_store
from tests.kept_world import Crash, Exchange, VenueBroker


@pytest.fixture
def exchange(clock) -> Exchange:
    return Exchange(clock)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def process(exchange, clock, url):
    """Start a process: a new broker object keeping its orders in the same store file."""

    def start(store: StateStore | None = None) -> VenueBroker:
        broker = VenueBroker(exchange, clock)
        broker.keep_orders_in(store or open_store(url, clock=clock))
        return broker

    return start


def test_a_retry_after_a_restart_of_an_order_whose_answer_was_lost_is_adopted_not_resent(
    process, exchange
):
    first = process()
    first.fetch_order = lambda cid: None  # the venue accepted it, but no lookup shows it yet
    exchange.lose_answers = 1
    with pytest.raises(OrderUnconfirmedError):
        first.place_market_order("SOL/USD", "buy", "1", client_order_id="c-lost")
    assert exchange.executed("c-lost") == 1

    second = process()  # a restart; the bot retries the same id

    assert [o.client_order_id for o in second.unresolved_orders()] == ["c-lost"]
    order = second.place_market_order("SOL/USD", "buy", "1", client_order_id="c-lost")
    assert order.status is OrderStatus.FILLED
    assert exchange.executed("c-lost") == 1


def test_a_process_that_died_after_sending_leaves_the_order_unresolved_for_the_next(
    process, exchange
):
    first = process()
    first.crash_after_accept = True
    with pytest.raises(Crash):
        first.place_market_order("SOL/USD", "buy", "1", client_order_id="c-crash")

    second = process()

    [held] = second.unresolved_orders()
    assert (held.client_order_id, held.symbol, held.state) == (
        "c-crash",
        "SOL/USD",
        OrderState.UNRESOLVED,
    )
    assert held.absent_after is not None  # its deadline came with it: absence can decide
    order = second.place_market_order("SOL/USD", "buy", "1", client_order_id="c-crash")
    assert order.broker_order_id == "V1"
    assert exchange.executed("c-crash") == 1
    assert second.unresolved_orders() == []


def test_a_retry_after_a_restart_of_a_filled_order_is_looked_up_not_sent(process, exchange):
    first = process()
    placed = first.place_market_order("ETH/USD", "buy", "2", client_order_id="c-filled")

    again = process().place_market_order("ETH/USD", "buy", "2", client_order_id="c-filled")

    assert again.broker_order_id == placed.broker_order_id
    assert exchange.executed("c-filled") == 1


def test_without_a_store_a_second_object_does_send_again(exchange, clock):
    """What keep_orders_in prevents: this venue does not refuse a seen id, so it executes twice."""
    VenueBroker(exchange, clock).place_market_order("ETH/USD", "buy", "2", client_order_id="c-x")
    VenueBroker(exchange, clock).place_market_order("ETH/USD", "buy", "2", client_order_id="c-x")
    assert exchange.executed("c-x") == 2


def test_a_reused_id_for_another_symbol_is_refused_after_a_restart(process, exchange):
    process().place_market_order("ETH/USD", "buy", "2", client_order_id="c-reuse")
    with pytest.raises(BlockedError, match="refusing to reuse"):
        process().place_market_order("SOL/USD", "buy", "2", client_order_id="c-reuse")
    assert exchange.executed("c-reuse") == 1


def test_two_objects_racing_one_id_send_it_once(process, exchange, url, clock):
    first, second = process(), process()
    both_at_the_claim = threading.Barrier(2, timeout=5)
    outcomes: list[object] = []

    def place(broker: VenueBroker) -> None:
        both_at_the_claim.wait()
        try:
            outcomes.append(
                broker.place_market_order("SOL/USD", "buy", "1", client_order_id="c-race")
            )
        except OrderUnconfirmedError as exc:  # the loser: "being sent by another object"
            outcomes.append(exc)

    threads = [threading.Thread(target=place, args=(b,)) for b in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert len(outcomes) == 2
    assert exchange.executed("c-race") == 1
    # once the winner's answer is kept, the loser's retry finds the order
    retried = second.place_market_order("SOL/USD", "buy", "1", client_order_id="c-race")
    assert retried.status is OrderStatus.FILLED
    assert exchange.executed("c-race") == 1


A_TOKEN = "claim-of-process-a"  # noqa: S105 (a claim's token, not a secret)


class FailingStore:
    """The real store, with one of its sent-order calls failing as an unreachable database."""

    def __init__(self, store: StateStore, failing: str) -> None:
        self.store = store
        self.failing = failing

    def __getattr__(self, name: str) -> object:
        if name == self.failing:

            def down(*args: object, **kwargs: object) -> object:
                raise StoreUnavailableError(f"database down ({name})")

            return down
        return getattr(self.store, name)


def test_a_store_that_cannot_keep_the_send_sends_nothing(exchange, clock, url):
    store = open_store(url, clock=clock)
    broker = VenueBroker(exchange, clock)
    broker.keep_orders_in(FailingStore(store, "claim_sent_order"))  # type: ignore[arg-type]

    with pytest.raises(BlockedError, match="was not sent"):
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="c-down")

    assert exchange.executed("c-down") == 0
    assert broker.order_state("c-down") is None  # its claim given back: never sent
    assert broker.unresolved_orders() == []
    # the store is back: the same id may be sent (once)
    healthy = VenueBroker(exchange, clock)
    healthy.keep_orders_in(store)
    healthy.place_market_order("SOL/USD", "buy", "1", client_order_id="c-down")
    assert exchange.executed("c-down") == 1


def test_a_resend_the_store_cannot_keep_is_not_sent(exchange, clock, url):
    """Refused at the door, the order is resent with a new deadline: kept first, or not sent."""
    store = open_store(url, clock=clock)
    broker = VenueBroker(exchange, clock)
    broker.keep_orders_in(FailingStore(store, "save_sent_order"))  # type: ignore[arg-type]
    broker.refused_at_the_door = 1

    with pytest.raises(BlockedError, match="was not sent"):
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="c-resend")

    assert exchange.executed("c-resend") == 0
    assert broker.order_state("c-resend") is OrderState.NOT_PLACED


def test_a_resend_kept_with_its_new_deadline_goes_once(process, exchange, url, clock):
    broker = process()
    broker.refused_at_the_door = 1
    broker.place_market_order("SOL/USD", "buy", "1", client_order_id="c-resent")
    assert exchange.executed("c-resent") == 1
    [kept] = open_store(url, clock=clock).sent_orders("acct-kept")
    assert kept.state == "filled"
    assert kept.request.deadline == pytest.approx(clock.time() + 10)  # the resend's deadline


def test_a_fate_the_store_could_not_record_leaves_the_cautious_state(exchange, clock, url):
    """The fill was not recorded: after a restart the order is looked up, never sent again."""
    store = open_store(url, clock=clock)
    broker = VenueBroker(exchange, clock)
    broker.keep_orders_in(FailingStore(store, "settle_sent_order"))  # type: ignore[arg-type]
    broker.place_market_order("SOL/USD", "buy", "1", client_order_id="c-unsaved")
    assert [o.state for o in store.sent_orders("acct-kept")] == ["sent"]

    restarted = VenueBroker(exchange, clock)
    restarted.keep_orders_in(store)
    assert [o.client_order_id for o in restarted.unresolved_orders()] == ["c-unsaved"]
    restarted.place_market_order("SOL/USD", "buy", "1", client_order_id="c-unsaved")
    assert exchange.executed("c-unsaved") == 1


def test_an_order_refused_before_the_venue_is_forgotten_and_may_be_sent_after_a_restart(
    process, exchange, clock
):
    first = process()
    first.write_breaker.force_open("an operator opened it")
    with pytest.raises(BlockedError):
        first.place_market_order("SOL/USD", "buy", "1", client_order_id="c-refused")
    assert exchange.executed("c-refused") == 0

    second = process()
    second.place_market_order("SOL/USD", "buy", "1", client_order_id="c-refused")
    assert exchange.executed("c-refused") == 1


def test_a_restarted_gate_refuses_the_symbol_and_counts_the_slot_of_a_crashed_entry(
    exchange, clock, url
):
    broker = VenueBroker(exchange, clock)
    gate = TradingGate(broker, 2, store=open_store(url, clock=clock))
    broker.crash_after_accept = True
    with pytest.raises(Crash), gate.reserve_entry("SOL/USD"):
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="c-entry")

    restarted = VenueBroker(exchange, clock)
    gate2 = TradingGate(restarted, 2, store=open_store(url, clock=clock))

    sol, eth = gate2.check_entry("SOL/USD"), gate2.check_entry("ETH/USD")
    assert sol.code == "ORDER_UNRESOLVED", sol.reason
    assert not eth.allowed  # BTC held + SOL's unresolved buy: the cap of 2 is reached
    assert eth.code == "POSITION_CAP_REACHED", eth.reason


def test_a_gate_gives_the_slot_back_when_the_store_refused_the_send(exchange, clock, url):
    """A send the store could not keep is a refusal by brokerguard: nothing was placed."""
    store = open_store(url, clock=clock)
    broker = VenueBroker(exchange, clock)
    gate = TradingGate(broker, 2, store=store)
    broker._bg_orders_store = FailingStore(store, "claim_sent_order")  # the database goes down

    with pytest.raises(BlockedError), gate.reserve_entry("SOL/USD"):
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="c-gate")

    assert exchange.executed("c-gate") == 0
    assert gate.check_entry("ETH/USD").allowed


def test_the_kept_request_is_exact(process, url, clock):
    process().place_market_order("ETH/USD", "buy", "0.123456789", client_order_id="c-exact")
    [kept] = open_store(url, clock=clock).sent_orders("acct-kept")
    assert kept.request.quantity == Decimal("0.123456789")
    assert kept.request.deadline == 1010.0  # sent at 1000 with the default 10 s deadline
    assert (kept.state, kept.sent_at) == ("filled", 1000.0)


def test_an_adopted_order_resent_since_is_not_proven_absent_by_a_lookup_before_the_resend(
    process, exchange, url, clock
):
    """A lookup made before a resend of an adopted order proves nothing about the resend.

    B holds A's order; one lookup of B's after its first deadline finds nothing; A resends it
    with a later deadline and the venue fills it; B's one lookup after that deadline omits it.
    Two absent answers, but the first was about the send before: only answers after the row's
    current deadline count, or B would prove a filled order absent and send it again.
    """
    store = open_store(url, clock=clock)
    # A claims c1 and its process dies right after the claim (the row says sent).
    first = OrderRequest("SOL/USD", "buy", "1", "c-resent-late", deadline=clock.time() + 10)
    kept = store.claim_sent_order(
        "acct-kept", first, token=A_TOKEN, absent_after=first.deadline + 5
    )
    assert kept is None

    b = process()
    [held] = b.unresolved_orders()
    answers = ["omits"]  # then the lookups fail: the confirming one never answers
    real_lookup = b.fetch_order

    def lagging(cid: str) -> Order | None:
        answer = answers.pop(0) if answers else "fails"
        if answer == "fails":
            raise TimeoutError("the lookup timed out")
        return None if answer == "omits" else real_lookup(cid)

    b.fetch_order = lagging
    clock.advance(16)  # past A's first deadline and margin
    with pytest.raises(OrderUnconfirmedError):
        b.resolve_order("c-resent-late")  # one absence, the confirming lookup failed

    # A's process (restarted) resends it with a new deadline, kept first; the venue fills it.
    second = OrderRequest("SOL/USD", "buy", "1", "c-resent-late", deadline=clock.time() + 10)
    assert store.save_sent_order(
        "acct-kept", second, "sent", token=A_TOKEN, absent_after=second.deadline + 5
    )
    exchange.accept(second)
    b.refresh_kept_orders(0.0)
    clock.advance(16)  # past the resend's deadline and margin
    answers[:] = ["omits", *["fails"] * 10]  # one omission, then the lookups fail again

    with pytest.raises(OrderUnconfirmedError):
        b.resolve_order("c-resent-late")  # the listing omits it once: one absence, not two
    answers[:] = ["real"] * 10
    found = b.place_market_order("SOL/USD", "buy", "1", client_order_id="c-resent-late")
    assert found.status is OrderStatus.FILLED
    assert exchange.executed("c-resent-late") == 1
    assert held.absent_after == first.deadline + 5
