"""brokerguard.ccxt.guard on the real ccxt clients, against the Kraken and Coinbase emulators.

Every test runs on both venues (the ``venue`` fixture) unless its name says otherwise: the same
contract for a guarded ``ccxt.kraken`` and a guarded ``ccxt.coinbase``.
"""

from __future__ import annotations

import inspect
import uuid

import ccxt
import pytest

from brokerguard.brokers.ccxt import CcxtBroker
from brokerguard.ccxt import (
    CircuitOpen,
    EntryRefused,
    Guard,
    InvalidResponse,
    OrderRefused,
    OrderUnresolved,
    PositionsImplausible,
    guard,
    guarded_class,
)
from brokerguard.errors import (
    BlockedError,
    BrokerGuardError,
    CircuitOpenError,
    ConfigurationError,
    InvalidBrokerData,
    OrderUnconfirmedError,
    PositionsImplausibleError,
)
from brokerguard.risk.gate import (
    ACCOUNT_HALTED,
    ACCOUNT_REDUCING,
    BROKER_OFFLINE,
    ORDER_UNRESOLVED,
    POSITION_CAP_REACHED,
    POSITIONS_IMPLAUSIBLE,
    POSITIONS_UNKNOWN,
    SYMBOL_PAUSED,
    EntryDenied,
    TradingState,
)

# --------------------------------------------------------------------------- the object


def test_the_guarded_exchange_is_an_instance_of_the_exchanges_own_class(venue):
    """The guarded exchange is an instance of the venue's ccxt class (a subclass made once)."""
    g = venue.guarded()
    venue_class = getattr(ccxt, venue.name)
    assert isinstance(g, venue_class)
    assert type(g) is not venue_class
    assert type(g) is type(venue.guarded(exchange=venue.bare()))
    assert type(g).__name__ == venue_class.__name__
    assert guarded_class(type(g)) is type(g)


def test_the_instance_state_is_carried_over(venue):
    """Keys, options and loaded markets of the given instance are the guarded one's."""
    bare = venue.bare()
    bare.load_markets()
    bare.options["myOption"] = 7
    g = venue.guarded(exchange=bare)
    assert (g.apiKey, g.secret) == (bare.apiKey, bare.secret)
    assert g.options["myOption"] == 7
    assert g.markets is bare.markets
    assert g.id == venue.name


def test_every_camel_case_alias_points_at_the_guarded_method(venue):
    """The camelCase aliases ccxt binds on the class are re-pointed at the guarded methods."""
    cls = type(venue.guarded())
    pairs = {
        "createOrder": "create_order",
        "cancelOrder": "cancel_order",
        "cancelOrders": "cancel_orders",
        "cancelAllOrders": "cancel_all_orders",
        "fetchBalance": "fetch_balance",
        "fetchPositions": "fetch_positions",
        "fetchTicker": "fetch_ticker",
        "fetchTickers": "fetch_tickers",
        "fetchOrder": "fetch_order",
        "fetchOrders": "fetch_orders",
        "fetchOpenOrders": "fetch_open_orders",
        "fetchClosedOrders": "fetch_closed_orders",
        "createOrders": "create_orders",
        "editOrder": "edit_order",
    }
    base = getattr(ccxt, venue.name)
    for camel, snake in pairs.items():
        assert getattr(cls, camel) is getattr(cls, snake), camel
        assert getattr(cls, snake) is not getattr(base, snake), snake


def test_signatures_are_ccxts(venue):
    """A guarded method has ccxt's signature (keyword callers keep working)."""
    g = venue.guarded()
    base = getattr(ccxt, venue.name)
    for name in ("create_order", "cancel_order", "fetch_balance", "fetch_open_orders"):
        assert inspect.signature(getattr(g, name)) == inspect.signature(getattr(base(), name)), name
    placed = g.create_order(
        symbol="SOL/USD", type="market", side="buy", amount=1, price=150, params={}
    )
    assert placed["id"]


def test_g_brokerguard_exposes_gate_enforcer_broker_breakers_and_status(venue):
    """The handle: a CcxtBroker over the same instance, the gate, enforcer, breakers, status()."""
    g = venue.guarded(max_positions=3)
    handle = g.brokerguard
    assert isinstance(handle, Guard)
    assert isinstance(handle.broker, CcxtBroker)
    assert handle.broker.exchange is g
    assert handle.gate.max_positions == handle.enforcer.max_positions == 3
    assert set(handle.breakers) == {"read", "write"}
    assert handle.breakers["read"] is handle.broker.read_breaker
    g.fetch_balance()
    status = handle.status()
    assert status["trading_state"] == TradingState.ACTIVE.value
    assert status["positions"] == ["BTC/USD"]
    assert status["broker"]["breakers"]["read"]["circuit_state"] == "closed"


def test_the_enforcer_brings_an_account_over_its_cap_back_and_cancels_resting_buys(venue):
    """enforce(): a resting buy is cancelled and the smallest position sold, verified."""
    g = venue.guarded(max_positions=2)
    resting = g.create_limit_buy_order("ETH/USD", 0.1, 3000)
    venue.credit("SOL", "1")  # a deposit: BTC, SOL and a resting ETH buy on a cap of 2
    venue.credit("ETH", "0.2")
    ok, result = g.brokerguard.enforce()
    assert ok, result
    assert g.fetch_order(resting["id"], "ETH/USD")["status"] == "canceled"
    assert len(venue.holdings()) == 2
    assert g.brokerguard.status()["trading_state"] == TradingState.ACTIVE.value


def test_unknown_options_are_refused(venue):
    """A typo in an option is an error when guarding, not a silently ignored setting."""
    with pytest.raises(ConfigurationError, match="max_postions"):
        guard(venue.bare(), max_positions=3, state_url="sqlite://", max_postions=3)


def test_guarding_a_guarded_exchange_is_refused(venue):
    """One guard per exchange object: a second would double every check."""
    with pytest.raises(ConfigurationError, match="guarded already"):
        guard(venue.guarded(), max_positions=3, state_url="sqlite://")


def test_the_broker_raw_calls_bypass_the_guard(venue):
    """The guarded broker's own reads reach the venue once each, not through the guard again."""
    g = venue.guarded()
    g.load_markets()
    before = len(venue.emulator.requests)
    positions = g.brokerguard.broker.get_positions()
    assert [p.symbol for p in positions] == ["BTC/USD"]
    assert len(venue.emulator.requests) - before == 1


# --------------------------------------------------------------------------- reads


def test_fetch_balance_keeps_ccxts_shape(venue):
    """A believed balance is ccxt's own structure."""
    balance = venue.guarded().fetch_balance()
    assert balance["total"]["BTC"] == 0.5
    assert balance["total"]["USD"] == 100000
    assert balance["BTC"]["total"] == 0.5
    assert "info" in balance


def test_a_failed_balance_read_raises_after_retries_never_empty(venue):
    """Two failures are retried away; a read failing every time raises ccxt's own error."""
    g = venue.guarded()
    g.fetch_balance()
    venue.fail_balance(venue.unavailable, times=2)
    assert g.fetch_balance()["total"]["BTC"] == 0.5
    venue.fail_balance(venue.unavailable, times=50)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        g.fetchBalance()


def test_an_empty_successful_balance_raises_where_bare_ccxt_returns_nothing(venue):
    """An empty answer is no evidence of an empty account: the guarded read raises."""
    bare = venue.bare()
    venue.fail_balance("empty_result")
    assert not any(
        bare.fetch_balance({"v3": True} if venue.name == "coinbase" else {})["total"].values()
    )
    g = venue.guarded()
    venue.fail_balance("empty_result", times=50)
    with pytest.raises(InvalidResponse) as caught:
        g.fetch_balance()
    assert isinstance(caught.value, ccxt.BadResponse)
    assert isinstance(caught.value, InvalidBrokerData)
    assert caught.value.reason in {"empty", "no_totals"}


def test_a_balance_that_lost_a_position_is_implausible_and_blocks_entries(venue):
    """BTC vanishing from a read with nothing to explain it raises; entries are refused."""
    g = venue.guarded()
    g.fetch_balance()
    venue.fail_balance(venue.omit_fault("BTC"))
    with pytest.raises(PositionsImplausible) as caught:
        g.fetch_balance()
    assert isinstance(caught.value, ccxt.ExchangeError)
    assert isinstance(caught.value, PositionsImplausibleError)
    assert caught.value.missing == ("BTC/USD",)
    with pytest.raises(EntryRefused) as refused:
        g.create_order("ETH/USD", "market", "buy", 0.01, 3200)
    assert refused.value.decision.code == POSITIONS_IMPLAUSIBLE


def test_fetch_positions_answers_the_holdings_brokerguard_counts(venue):
    """Spot holdings as ccxt positions (long, in base units); a failed read raises."""
    g = venue.guarded()
    (position,) = g.fetch_positions()
    assert (position["symbol"], position["side"], position["contracts"]) == ("BTC/USD", "long", 0.5)
    assert g.fetchPositions(["ETH/USD"]) == []
    venue.fail_balance(venue.unavailable, times=50)
    with pytest.raises(ccxt.NetworkError):
        g.fetch_positions()


def test_tickers_keep_ccxts_shape(venue):
    """Usable tickers come back as ccxt has them."""
    g = venue.guarded()
    tickers = g.fetch_tickers(["BTC/USD", "ETH/USD"])
    assert set(tickers) == {"BTC/USD", "ETH/USD"}
    assert tickers["ETH/USD"]["last"] == pytest.approx(3200, rel=1e-3)
    assert g.fetchTicker("BTC/USD")["symbol"] == "BTC/USD"


@pytest.mark.parametrize("bad", ["0", "-5"])
def test_an_unusable_price_is_removed_and_pauses_the_symbol(venue, bad):
    """A zero or negative price is dropped (never replaced); entries there are refused."""
    g = venue.guarded()
    g.load_markets()  # (the Coinbase emulator's exchange-rates cannot divide by a zero price)
    venue.set_price("SOL", bad)
    tickers = g.fetch_tickers(["BTC/USD", "SOL/USD"])
    assert set(tickers) == {"BTC/USD"}
    single = g.fetch_ticker("SOL/USD")
    assert single["last"] is None
    assert g.brokerguard.broker.data_quality()
    with pytest.raises(EntryRefused) as refused:
        g.create_order("SOL/USD", "market", "buy", 1, 150)
    assert refused.value.decision.code == SYMBOL_PAUSED
    venue.set_price("SOL", "151")
    assert g.fetch_tickers(["SOL/USD"])["SOL/USD"]["last"] == pytest.approx(151, rel=1e-3)
    assert g.brokerguard.gate.check_entry("SOL/USD").allowed


def test_a_stale_ticker_loses_its_prices_on_coinbase(coinbase, clock):
    """Coinbase stamps a product's ticker: one older than max_quote_age is not a price."""
    g = coinbase.guarded(max_quote_age=30)
    assert g.fetch_ticker("SOL/USD")["last"] == pytest.approx(149.995, rel=1e-3)
    clock.advance(31)
    stale = g.fetch_ticker("SOL/USD")
    assert (stale["last"], stale["bid"], stale["ask"]) == (None, None, None)
    assert stale["timestamp"] is not None
    reasons = g.brokerguard.store.paused_symbol_reasons(g.brokerguard.account_id)
    assert reasons["SOL/USD"] == "unvaluable: stale"
    coinbase.set_price("SOL", "150")
    assert g.fetch_ticker("SOL/USD")["last"] == 150
    assert "SOL/USD" not in g.brokerguard.store.paused_symbol_reasons(g.brokerguard.account_id)


def test_order_reads_go_through_the_read_breaker_with_retries(venue):
    """fetch_order(s) and fetch_closed_orders survive a transient failure; ccxt's shapes."""
    g = venue.guarded()
    placed = g.create_order("SOL/USD", "market", "buy", 1, 150)
    venue.emulator.inject(venue.unavailable, times=1)
    assert g.fetch_order(placed["id"], "SOL/USD")["id"] == placed["id"]
    if g.has["fetchOrders"]:
        venue.emulator.inject(venue.unavailable, times=1)
        assert placed["id"] in [o["id"] for o in g.fetchOrders("SOL/USD")]
    else:  # Kraken: as ccxt says it, untouched
        with pytest.raises(ccxt.NotSupported):
            g.fetchOrders("SOL/USD")
    venue.emulator.inject(venue.unavailable, times=1)
    assert placed["id"] in [o["id"] for o in g.fetch_closed_orders("SOL/USD")]


def test_fetch_open_orders_lists_every_symbols_resting_orders(venue):
    """Resting limit orders of all symbols, filtered by symbol on request, in ccxt's shape."""
    g = venue.guarded()
    eth = g.create_limit_buy_order("ETH/USD", 0.1, 3000)
    btc = g.create_limit_sell_order("BTC/USD", 0.1, 70000)
    listed = g.fetch_open_orders()
    assert {o["id"] for o in listed} == {eth["id"], btc["id"]}
    assert [o["id"] for o in g.fetchOpenOrders("ETH/USD")] == [eth["id"]]
    assert {o["status"] for o in listed} == {"open"}


def test_orders_placed_by_hand_are_listed_under_their_venue_id(kraken):
    """An order without a client id of ours is named by its venue id, and can be cancelled."""
    bare = kraken.bare()
    by_hand = bare.create_order("ETH/USD", "limit", "buy", 0.1, 3000)
    g = kraken.guarded()
    (listed,) = g.fetch_open_orders()
    assert listed["id"] == by_hand["id"]
    cancelled = g.cancel_order(by_hand["id"])
    assert cancelled["status"] == "canceled"
    assert kraken.orders()[0]["status"] == "canceled"


# --------------------------------------------------------------------------- create_order


def test_a_client_order_id_is_injected_when_the_caller_gave_none(venue):
    """The venue receives a client id (a UUID) and the answer carries it."""
    g = venue.guarded()
    placed = g.create_order("SOL/USD", "market", "buy", 1, 150)
    (sent,) = venue.sent_client_ids()
    assert uuid.UUID(sent)
    assert placed["clientOrderId"] == sent
    assert [o["client_id"] for o in venue.orders()] == [sent]


def test_the_callers_client_order_id_is_used(venue):
    """The caller's clientOrderId (ccxt's unified key) reaches the venue, Coinbase included."""
    g = venue.guarded()
    placed = g.create_order("SOL/USD", "market", "buy", 1, 150, {"clientOrderId": "bot-7"})
    assert venue.sent_client_ids() == ["bot-7"]
    assert placed["clientOrderId"] == "bot-7"


def test_ccxt_never_resends_a_write_by_itself(venue):
    """The ccxt retry option is forced to 0: a lost answer is looked up, never resent by ccxt."""
    bare = venue.bare()
    bare.options["maxRetriesOnFailure"] = 3
    g = venue.guarded(exchange=bare)
    assert g.options["maxRetriesOnFailure"] == 0
    venue.emulator.inject(venue.lost_answer, endpoint=venue.order_endpoint)
    placed = g.create_order("SOL/USD", "market", "buy", 1, 150, {"maxRetriesOnFailure": 3})
    assert len(venue.requests_to(venue.order_endpoint)) == 1
    (executed,) = venue.orders()
    assert placed["id"] == executed["id"]


def test_helpers_route_through_the_guarded_create_order(venue):
    """create_market_buy_order, create_limit_sell_order, createMarketBuyOrder are guarded."""
    g = venue.guarded(max_positions=2)
    g.create_market_buy_order("ETH/USD", 0.1, {"clientOrderId": "h-1"})
    g.create_limit_sell_order("BTC/USD", 0.1, 90000, {"clientOrderId": "h-2"})
    with pytest.raises(EntryRefused) as refused:
        g.createMarketBuyOrder("SOL/USD", 1)
    assert refused.value.decision.code == POSITION_CAP_REACHED
    assert venue.sent_client_ids() == ["h-1", "h-2"]


def test_a_risk_increasing_order_at_the_cap_is_refused_and_nothing_is_sent(venue):
    """BTC held, ETH bought: at a cap of 2 a SOL buy is refused with the reason code."""
    g = venue.guarded(max_positions=2)
    g.create_order("ETH/USD", "market", "buy", 0.1, 3200)
    sent = len(venue.requests_to(venue.order_endpoint))
    with pytest.raises(EntryRefused) as caught:
        g.createOrder("SOL/USD", "market", "buy", 1, 150)
    refused = caught.value
    assert refused.decision.code == POSITION_CAP_REACHED
    assert "POSITION_CAP_REACHED" in str(refused)
    assert isinstance(refused, EntryDenied)
    assert len(venue.requests_to(venue.order_endpoint)) == sent
    g.create_order("ETH/USD", "market", "buy", 0.1, 3200)  # adding to a held symbol: no slot


def test_open_buy_orders_count_against_the_cap(venue):
    """A resting buy placed by hand on a new symbol occupies a slot in a fresh guard's gate."""
    bare = venue.bare()
    bare.create_order(
        "ETH/USD", "limit", "buy", 0.1, 3000, {"client_order_id": "by-hand"}
    )  # Coinbase needs its raw client id; Kraken ignores the key
    g = venue.guarded(max_positions=2)
    with pytest.raises(EntryRefused) as caught:
        g.create_order("SOL/USD", "limit", "buy", 1, 140)
    assert caught.value.decision.code == POSITION_CAP_REACHED
    assert "open=2" in caught.value.decision.reason


def test_a_resting_buy_placed_through_the_guard_holds_its_slot_until_cancelled(venue):
    """Our own resting buy counts at once; cancelled (and seen final) it stops counting."""
    g = venue.guarded(max_positions=2, pending_entry_ttl=60)
    eth = g.create_limit_buy_order("ETH/USD", 0.1, 3000)
    with pytest.raises(EntryRefused):
        g.create_limit_buy_order("SOL/USD", 1, 140)
    assert g.cancel_order(eth["id"])["status"] == "canceled"
    venue.clock.advance(61)
    g.fetch_balance()
    assert g.create_limit_buy_order("SOL/USD", 1, 140)["id"]


def test_reductions_pass_while_halted_entries_do_not(venue):
    """A halted account refuses buys (ACCOUNT_HALTED) and lets sells through."""
    g = venue.guarded()
    handle = g.brokerguard
    handle.store.halt(handle.account_id, "operator says stop", "test")
    with pytest.raises(EntryRefused) as caught:
        g.create_order("ETH/USD", "market", "buy", 0.1, 3200)
    assert caught.value.decision.code == ACCOUNT_HALTED
    assert handle.gate.trading_state() is TradingState.HALTED
    sold = g.create_order("BTC/USD", "market", "sell", 0.1)
    assert sold["id"]
    assert [o["side"] for o in venue.orders()] == ["sell"]


def test_reductions_pass_while_over_the_cap_entries_do_not(venue):
    """Over the cap (REDUCING) only reductions are sent."""
    g = venue.guarded(max_positions=1)
    venue.credit("ETH", "0.5")  # a deposit: ETH joins BTC, at a cap of 1
    g.fetch_balance()
    assert g.brokerguard.gate.trading_state() is TradingState.REDUCING
    with pytest.raises(EntryRefused) as caught:
        g.create_order("BTC/USD", "market", "buy", 0.01, 65000)
    assert caught.value.decision.code == ACCOUNT_REDUCING
    g.create_order("ETH/USD", "market", "sell", 0.1)


def test_an_exit_in_a_paused_symbol_is_refused_as_an_order_refusal(venue):
    """check_exit refuses a paused symbol: OrderRefused with the gate's decision."""
    g = venue.guarded()
    handle = g.brokerguard
    handle.store.pause_symbol(handle.account_id, "BTC/USD", "operator pause")
    with pytest.raises(OrderRefused) as caught:
        g.create_order("BTC/USD", "market", "sell", 0.1)
    assert caught.value.decision.code == SYMBOL_PAUSED
    assert not isinstance(caught.value, EntryRefused)
    assert venue.orders() == []


def test_an_ambiguous_send_is_unresolved_keeps_its_slot_and_is_never_resent(venue, clock):
    """A create whose answer is lost before the venue accepts it: unresolved, no second send.

    The slot stays taken (SOL refused at the cap) and ETH is not entered again until the order
    is found; once it appears (the engine accepted it 3 s later) it is adopted.
    """
    g = venue.guarded(max_positions=2)
    venue.emulator.inject("delayed_accept:3", endpoint=venue.order_endpoint)
    with pytest.raises(OrderUnresolved) as caught:
        g.create_order("ETH/USD", "market", "buy", 0.1, 3200, {"clientOrderId": "amb-1"})
    unresolved = caught.value
    assert unresolved.client_order_id == "amb-1"
    assert not isinstance(unresolved, ccxt.NetworkError)
    assert isinstance(unresolved, OrderUnconfirmedError)
    with pytest.raises(EntryRefused) as refused:
        g.create_order("ETH/USD", "market", "buy", 0.1, 3200, {"clientOrderId": "amb-2"})
    assert refused.value.decision.code == ORDER_UNRESOLVED
    with pytest.raises(EntryRefused) as at_cap:
        g.create_order("SOL/USD", "market", "buy", 1, 150)
    assert at_cap.value.decision.code == POSITION_CAP_REACHED
    clock.advance(3)
    assert g.brokerguard.resolve() == {"amb-1": "filled"}
    assert len(venue.requests_to(venue.order_endpoint)) == 1
    assert [o["client_id"] for o in venue.orders()] == ["amb-1"]


def test_an_order_the_venue_never_accepts_frees_its_slot_after_its_deadline(kraken, clock):
    """Kraken drops an order queued past its deadline: after it, absence is proof; slot free."""
    g = kraken.guarded(max_positions=2)
    kraken.emulator.inject("delayed_accept:30", endpoint="AddOrder")
    with pytest.raises(OrderUnresolved) as caught:
        g.create_order("ETH/USD", "market", "buy", 0.1)
    clock.advance(caught.value.deadline - clock.time() + 1)
    assert g.brokerguard.resolve() == {caught.value.client_order_id: "not_placed"}
    clock.advance(30)
    assert kraken.orders() == []
    assert g.create_order("SOL/USD", "market", "buy", 1)["id"]


def test_a_lost_answer_is_adopted_from_the_lookup_not_resent(venue):
    """accept_then: the order executed, the answer was lost: found by its id, one execution."""
    g = venue.guarded()
    venue.emulator.inject(venue.lost_answer, endpoint=venue.order_endpoint)
    placed = g.create_order("SOL/USD", "market", "buy", 1, 150, {"clientOrderId": "lost-1"})
    assert placed["clientOrderId"] == "lost-1"
    assert placed["status"] == "closed"
    assert [o["client_id"] for o in venue.orders()] == ["lost-1"]


def test_a_repeated_call_with_the_same_client_id_returns_the_order_never_a_second(venue):
    """The bot retries its own call: the id is known, the order is returned, nothing resent."""
    g = venue.guarded()
    first = g.create_order("SOL/USD", "market", "buy", 1, 150, {"clientOrderId": "again"})
    second = g.create_order("SOL/USD", "market", "buy", 1, 150, {"clientOrderId": "again"})
    assert first["id"] == second["id"]
    assert len(venue.requests_to(venue.order_endpoint)) == 1


def test_limit_order_terms_reach_the_venue_in_its_own_form(venue, clock):
    """Post-only, IOC and GTD (Kraken: expiretm; Coinbase: end_time) as each venue takes them."""
    g = venue.guarded()
    post = g.create_order("ETH/USD", "limit", "buy", 0.1, 3000, {"postOnly": True})
    ioc = g.create_order("ETH/USD", "limit", "buy", 0.1, 3000, {"timeInForce": "IOC"})
    expiry = "+60" if venue.name == "kraken" else None
    gtd_params = (
        {"timeInForce": "GTD", "expiretm": expiry}
        if venue.name == "kraken"
        else {"timeInForce": "GTD", "end_time": "2027-01-15T08:01:00Z"}
    )
    gtd = g.create_order("ETH/USD", "limit", "buy", 0.1, 3000, gtd_params)
    assert g.fetch_order(post["id"], "ETH/USD")["postOnly"] is True
    assert g.fetch_order(ioc["id"], "ETH/USD")["status"] == "canceled"
    clock.advance(61)
    assert g.fetch_order(gtd["id"], "ETH/USD")["status"] in {"canceled", "expired"}
    if venue.name == "kraken":
        sent = venue.requests_to("AddOrder")
        assert [s.get("oflags") for s in sent] == ["post", None, None]
        assert sent[2]["expiretm"] == str(int(clock.time() - 61 + 60))


def test_terms_a_venue_does_not_take_are_refused_before_sending(venue):
    """Kraken spot has no FOK; neither venue's spot has reduce-only: refused, nothing sent."""
    g = venue.guarded()
    with pytest.raises(OrderRefused, match="reduce-only") as caught:
        g.create_order("BTC/USD", "limit", "sell", 0.1, 70000, {"reduceOnly": True})
    assert isinstance(caught.value, ccxt.InvalidOrder)
    if venue.name == "kraken":
        with pytest.raises(OrderRefused, match="FOK"):
            g.create_order("BTC/USD", "limit", "sell", 0.1, 70000, {"timeInForce": "FOK"})
    else:
        fok = g.create_order("BTC/USD", "limit", "sell", 0.1, 60000, {"timeInForce": "FOK"})
        assert g.fetch_order(fok["id"])["status"] == "closed"
    assert len(venue.requests_to(venue.order_endpoint)) == (0 if venue.name == "kraken" else 1)


def test_an_order_below_the_venues_minimum_is_refused_before_sending(venue):
    """The market's limits (Kraken's costmin, Coinbase's quote_min_size) refuse it first."""
    g = venue.guarded()
    with pytest.raises(OrderRefused, match="minimum"):
        g.create_order("SOL/USD", "limit", "buy", 0.001, 100)
    assert venue.requests_to(venue.order_endpoint) == []


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda g: g.create_orders([]), ccxt.NotSupported),
        (lambda g: g.editOrder("x", "SOL/USD", "limit", "buy", 2, 100), ccxt.NotSupported),
        (lambda g: g.create_order("SOL/USD", "stop-loss", "sell", 1, 100), ccxt.NotSupported),
        (
            lambda g: g.create_order("SOL/USD", "market", "buy", 1, 150, {"cost": 150}),
            ccxt.NotSupported,
        ),
        (lambda g: g.create_order("SOL/USD", "market", "hold", 1), ccxt.InvalidOrder),
        (lambda g: g.create_order("SOL/USD", "limit", "buy", 1, None), ccxt.ArgumentsRequired),
        (lambda g: g.create_order("SOL/USD", "market", "buy", -1), ccxt.InvalidOrder),
    ],
)
def test_what_the_guard_cannot_check_is_refused_with_ccxts_errors(venue, call, error):
    """Batches, amends, unknown types, cost-sized and malformed orders: nothing is sent."""
    with pytest.raises(error):
        call(venue.guarded())
    assert venue.requests_to(venue.order_endpoint) == []


# --------------------------------------------------------------------------- cancels


def test_a_cancel_is_verified_and_idempotent(venue):
    """Cancelled once it says canceled (as the venue shows it); again, the same, no error."""
    g = venue.guarded()
    rest = g.create_limit_buy_order("ETH/USD", 0.1, 3000, {"clientOrderId": "c-1"})
    first = g.cancel_order(rest["id"], "ETH/USD")
    assert (first["id"], first["status"]) == (rest["id"], "canceled")
    assert [o["status"] for o in venue.orders()] == ["canceled"]
    again = g.cancelOrder(rest["id"])
    assert again["status"] == "canceled"
    assert g.fetch_open_orders() == []


def test_cancelling_a_filled_order_reports_it_filled(venue):
    """A cancel that comes too late answers the order's final state, not an error."""
    g = venue.guarded()
    filled = g.create_order("SOL/USD", "market", "buy", 1, 150)
    assert g.cancel_order(filled["id"])["status"] == "closed"


def test_a_cancel_whose_answer_is_lost_is_verified_by_a_lookup(venue):
    """The cancel landed, its answer did not: the lookup says canceled."""
    g = venue.guarded()
    rest = g.create_limit_buy_order("ETH/USD", 0.1, 3000)
    venue.emulator.inject(venue.lost_answer, endpoint=venue.cancel_endpoint)
    assert g.cancel_order(rest["id"])["status"] == "canceled"


def test_cancel_by_client_order_id(venue):
    """A clientOrderId in params names the order to cancel (no venue id needed)."""
    g = venue.guarded()
    g.create_limit_buy_order("ETH/USD", 0.1, 3000, {"clientOrderId": "by-cid"})
    answer = g.cancel_order("", None, {"clientOrderId": "by-cid"})
    assert (answer["clientOrderId"], answer["status"]) == ("by-cid", "canceled")


def test_cancelling_an_unknown_order_is_order_not_found(venue):
    """An id the venue never had: ccxt's OrderNotFound (an InvalidOrder)."""
    with pytest.raises(ccxt.OrderNotFound):
        venue.guarded().cancel_order("00000000-0000-0000-0000-000000000000", "ETH/USD")


def test_cancel_orders_and_cancel_all_orders_cancel_each_verified(venue):
    """Batch cancels go one by one through the guarded cancel, each answer verified."""
    g = venue.guarded()
    a = g.create_limit_buy_order("ETH/USD", 0.1, 3000)
    b = g.create_limit_buy_order("ETH/USD", 0.1, 2900)
    c = g.create_limit_sell_order("BTC/USD", 0.1, 90000)
    assert [o["status"] for o in g.cancel_orders([a["id"]])] == ["canceled"]
    answers = g.cancelAllOrders("ETH/USD")
    assert [o["id"] for o in answers] == [b["id"]]
    assert [o["id"] for o in g.fetch_open_orders()] == [c["id"]]
    assert [o["status"] for o in g.cancel_all_orders()] == ["canceled"]
    assert g.fetch_open_orders() == []


# --------------------------------------------------------------------------- exceptions


def test_an_open_circuit_is_caught_by_except_network_error_and_sends_nothing(venue):
    """Outage: the read circuit opens; then CircuitOpen (an ExchangeNotAvailable), no request."""
    g = venue.guarded()
    g.fetch_balance()
    venue.emulator.set_down(True)
    caught: list[Exception] = []
    for _ in range(10):
        try:
            g.fetch_balance()
        except ccxt.NetworkError as exc:  # a bot's usual retry clause
            caught.append(exc)
    assert isinstance(caught[-1], CircuitOpen)
    assert isinstance(caught[-1], ccxt.ExchangeNotAvailable)
    assert isinstance(caught[-1], CircuitOpenError)
    assert caught[-1].next_probe_in is not None
    seen = venue.emulator.stats()["while_down"]
    with pytest.raises(CircuitOpen):
        g.fetch_open_orders()
    with pytest.raises(EntryRefused) as refused:  # the gate sees the broker offline first
        g.create_order("ETH/USD", "market", "buy", 0.1, 3200)
    assert refused.value.decision.code == BROKER_OFFLINE
    assert venue.emulator.stats()["while_down"] == seen


def test_a_gate_refusal_is_caught_by_except_invalid_order(venue):
    """EntryRefused is an InvalidOrder: a bot's 'skip this order' clause; never a NetworkError."""
    g = venue.guarded()
    venue.fail_balance(venue.unavailable, times=100)
    try:
        g.create_order("ETH/USD", "market", "buy", 0.1, 3200)
    except ccxt.NetworkError:  # pragma: no cover (the wrong clause)
        pytest.fail("a refusal must not look retryable")
    except ccxt.InvalidOrder as exc:
        assert isinstance(exc, EntryRefused)
        assert exc.decision.code == POSITIONS_UNKNOWN
        assert isinstance(exc, BlockedError)
    assert venue.requests_to(venue.order_endpoint) == []


def test_an_unresolved_order_escapes_a_network_error_retry_loop(venue):
    """A bot retrying on NetworkError does not resend an unresolved order: it is not one."""
    g = venue.guarded()
    venue.emulator.inject("delayed_accept:3", endpoint=venue.order_endpoint)
    attempts = 0
    caught: Exception | None = None
    try:
        for _ in range(3):
            attempts += 1
            try:
                g.create_order("ETH/USD", "market", "buy", 0.1, 3200)
                break
            except ccxt.NetworkError:
                continue
    except ccxt.ExchangeError as exc:
        caught = exc
    assert attempts == 1
    assert isinstance(caught, OrderUnresolved)
    assert len(venue.requests_to(venue.order_endpoint)) == 1


def test_the_public_surface_is_pinned():
    """What brokerguard.ccxt exports, sorted (a change here is an API change)."""
    import brokerguard.ccxt as module  # noqa: PLC0415 (this test only)

    assert module.__all__ == [
        "CircuitOpen",
        "EntryRefused",
        "Guard",
        "InvalidResponse",
        "OrderRefused",
        "OrderUnresolved",
        "PositionsImplausible",
        "as_ccxt_error",
        "guard",
        "guarded_class",
    ]
    assert list(inspect.signature(guard).parameters) == [
        "exchange",
        "max_positions",
        "state_url",
        "account_id",
        "quote_currency",
        "clock",
        "options",
    ]


def test_the_exception_classes_are_both_kinds():
    """Each guard exception is ccxt's kind and the brokerguard error it stands for."""
    assert issubclass(CircuitOpen, ccxt.ExchangeNotAvailable)
    assert issubclass(CircuitOpen, CircuitOpenError)
    assert issubclass(EntryRefused, ccxt.InvalidOrder)
    assert issubclass(EntryRefused, EntryDenied)
    assert issubclass(OrderRefused, BlockedError)
    assert issubclass(OrderUnresolved, ccxt.ExchangeError)
    assert not issubclass(OrderUnresolved, ccxt.NetworkError)
    assert issubclass(OrderUnresolved, OrderUnconfirmedError)
    assert issubclass(PositionsImplausible, ccxt.ExchangeError)
    assert not issubclass(PositionsImplausible, ccxt.NetworkError)
    for cls in (CircuitOpen, EntryRefused, OrderRefused, OrderUnresolved, PositionsImplausible):
        assert issubclass(cls, BrokerGuardError)
        assert issubclass(cls, ccxt.BaseError)


def test_the_exceptions_survive_pickling():
    """Errors cross process boundaries (fleets, multiprocessing bots) with their context."""
    import pickle  # noqa: PLC0415 (this test only)

    from brokerguard.risk.gate import Decision  # noqa: PLC0415

    decision = Decision.deny(POSITION_CAP_REACHED, open=8, cap=8)
    errors = [
        EntryRefused(decision, account_id="kraken:master", symbol="SOL/USD"),
        OrderRefused("no", decision=decision),
        OrderUnresolved("lost", client_order_id="c1", deadline=12.0, exists=False),
        PositionsImplausible("gone", missing=("BTC/USD",), agreeing=1, needed=0),
        InvalidResponse("balance", {}, "empty"),
        CircuitOpen("kraken", 12.5, "read"),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own objects)
        assert type(copy) is type(error)
        assert str(copy) == str(error)
    assert pickle.loads(pickle.dumps(errors[0])).decision.code == POSITION_CAP_REACHED  # noqa: S301
    assert pickle.loads(pickle.dumps(errors[5])).next_probe_in == 12.5  # noqa: S301
