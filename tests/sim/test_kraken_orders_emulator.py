"""The Kraken emulator's limit orders, cancels and dead man's switch, driven by the real ccxt.

BTC/USD stands at 65000: the Ticker's ask is 65006.5 and its bid 64993.5 (the price plus and
minus 0.01 %); XBTUSD prices have one decimal, so 0.1 is its tick.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import ccxt
import pytest

from brokerguard.sim.kraken import (
    DEAD_MAN_SWITCH_FIRED,
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    IOC_UNFILLED,
    USER_REQUESTED,
    DeadManSwitch,
    KrakenEmulator,
    running_kraken,
)
from tests.sim.test_kraken_fixtures import RECORDED, shape_differences

START = 1_800_000_000.0
ASK, BID = 65006.5, 64993.5


class Clock:
    """The emulator's time_source: tests step it instead of sleeping."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def connect(emulator: KrakenEmulator) -> ccxt.kraken:
    exchange = ccxt.kraken(
        {
            "apiKey": DEFAULT_API_KEY,
            "secret": DEFAULT_API_SECRET,
            "enableRateLimit": False,
            "timeout": 2000,
        }
    )
    exchange.urls["api"] = {"public": emulator.url, "private": emulator.url}
    exchange.load_markets()
    return exchange


def ms(epoch: float) -> int:
    return int(epoch * 1000)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def last_request(emulator: KrakenEmulator, endpoint: str) -> dict[str, str]:
    return dict([r for r in emulator.requests if r.endpoint == endpoint][-1].params)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kraken(clock):
    with running_kraken(balances={"ZUSD": "10000", "XXBT": "0.5"}, time_source=clock) as emulator:
        yield emulator


@pytest.fixture
def trader(kraken) -> ccxt.kraken:
    return connect(kraken)


def buy_limit(trader: ccxt.kraken, price: float, amount: float = 0.01, **params) -> dict:
    return trader.create_order("BTC/USD", "limit", "buy", amount, price, params)


# --------------------------------------------------------------------------- resting and filling


def test_a_limit_buy_below_the_ask_rests_open_and_is_listed(trader, kraken):
    """A buy at 64000 (the ask is 65006.5) rests: OpenOrders shows it as Kraken describes it."""
    placed = buy_limit(trader, 64000, clientOrderId="rest-1")
    assert (placed["type"], placed["price"], placed["amount"]) == ("limit", 64000, 0.01)
    (order,) = trader.fetch_open_orders("BTC/USD")
    assert order["id"] == placed["id"]
    assert (order["status"], order["type"], order["side"], order["clientOrderId"]) == (
        "open",
        "limit",
        "buy",
        "rest-1",
    )
    assert (order["price"], order["amount"], order["filled"], order["average"]) == (
        64000,
        0.01,
        0,
        None,
    )
    info = order["info"]
    assert info["descr"] == {
        "pair": "XBTUSD",
        "type": "buy",
        "ordertype": "limit",
        "price": "64000.0",
        "price2": "0",
        "leverage": "none",
        "order": "buy 0.01000000 XBTUSD @ limit 64000.0",
        "close": "",
    }
    assert (info["price"], info["limitprice"], info["oflags"], info["vol_exec"]) == (
        "0.000000",
        "0.000000",
        "fciq",
        "0.00000000",
    )
    assert kraken.balances() == {"ZUSD": Decimal(10000), "XXBT": Decimal("0.5")}


def test_a_resting_limit_buy_fills_at_its_price_when_the_ask_falls_to_it(trader, kraken, clock):
    """A move that leaves the ask above the limit fills nothing; the next one fills at 64000."""
    placed = buy_limit(trader, 64000)
    kraken.set_price("XXBTZUSD", "64100")  # ask 64106.41: still above
    assert trader.fetch_order(placed["id"])["status"] == "open"
    clock.advance(5)
    kraken.set_price("XXBTZUSD", "63990")  # ask 63996.399: through the limit
    clock.advance(3)
    order = trader.fetch_order(placed["id"])
    assert (order["status"], order["filled"], order["average"], order["cost"]) == (
        "closed",
        0.01,
        64000,
        640,
    )
    assert order["lastUpdateTimestamp"] == ms(START + 5)  # when the price moved, not the look
    assert trader.fetch_open_orders() == []
    assert kraken.balances() == {"ZUSD": Decimal(9360), "XXBT": Decimal("0.51")}


def test_a_resting_limit_sell_fills_when_the_bid_rises_to_it(trader, kraken):
    """The mirror image: a sell above the bid rests and fills at its own price."""
    placed = trader.create_order("BTC/USD", "limit", "sell", 0.1, 66000)
    assert trader.fetch_order(placed["id"])["status"] == "open"
    kraken.set_price("XXBTZUSD", "66010")  # bid 66003.399
    order = trader.fetch_order(placed["id"])
    assert (order["status"], order["average"]) == ("closed", 66000)
    assert kraken.balances() == {"ZUSD": Decimal(16600), "XXBT": Decimal("0.4")}


@pytest.mark.parametrize(
    ("side", "price", "touch"),
    [("buy", 66000, ASK), ("buy", ASK, ASK), ("sell", 60000, BID), ("sell", BID, BID)],
)
def test_a_marketable_limit_order_takes_liquidity_at_the_touch(trader, side, price, touch):
    """A buy at or above the ask fills at once at the ask, a sell at or below the bid at the bid."""
    placed = trader.create_order("BTC/USD", "limit", side, 0.01, price)
    order = trader.fetch_order(placed["id"])
    assert (order["status"], order["filled"], order["average"]) == ("closed", 0.01, touch)


def test_one_tick_below_the_ask_a_limit_buy_rests(trader):
    """The Ticker's ask is the line: a buy 0.1 under it does not trade."""
    assert trader.fetch_ticker("BTC/USD")["ask"] == ASK
    placed = buy_limit(trader, ASK - 0.1)
    assert trader.fetch_order(placed["id"])["status"] == "open"


def test_time_in_the_emulator_does_not_fill_a_limit_order_the_price_never_reached(trader, clock):
    """Only a price move fills a resting order; an hour passing does not."""
    placed = buy_limit(trader, 64000)
    clock.advance(3600)
    assert trader.fetch_order(placed["id"])["status"] == "open"


# --------------------------------------------------------------------------- post-only, IOC, GTD


@pytest.mark.parametrize(("side", "price"), [("buy", ASK), ("buy", 70000), ("sell", BID)])
def test_a_post_only_order_that_would_take_liquidity_is_refused(trader, kraken, side, price):
    """oflags=post at or through the touch: Kraken's EOrder:Post only order, and nothing placed."""
    with pytest.raises(ccxt.ExchangeError, match="EOrder:Post only order"):
        trader.create_order("BTC/USD", "limit", side, 0.01, price, {"postOnly": True})
    assert last_request(kraken, "AddOrder")["oflags"] == "post"
    assert kraken.orders() == []
    assert kraken.refusals() == {"EOrder:Post only order": 1}


def test_a_post_only_order_inside_the_spread_rests_and_fills_as_maker(trader, kraken):
    """Below the ask it rests (oflags post,fciq as recorded) and later fills at its own price."""
    placed = buy_limit(trader, 65000, postOnly=True)
    order = trader.fetch_order(placed["id"])
    assert (order["status"], order["postOnly"], order["info"]["oflags"]) == (
        "open",
        True,
        "post,fciq",
    )
    kraken.set_price("XXBTZUSD", "64000")
    assert trader.fetch_order(placed["id"])["average"] == 65000


def test_an_ioc_limit_order_that_cannot_trade_is_cancelled_at_once(trader, kraken):
    """IOC below the ask never rests: canceled, nothing filled, nothing held."""
    placed = buy_limit(trader, 64000, timeInForce="IOC")
    assert last_request(kraken, "AddOrder")["timeinforce"] == "IOC"
    order = trader.fetch_order(placed["id"])
    assert (order["status"], order["filled"], order["info"]["reason"]) == (
        "canceled",
        0,
        IOC_UNFILLED,
    )
    assert order["lastUpdateTimestamp"] == ms(START)
    assert trader.fetch_open_orders() == []
    assert kraken.held() == {}
    kraken.set_price("XXBTZUSD", "60000")
    assert trader.fetch_order(placed["id"])["status"] == "canceled"


def test_an_ioc_limit_order_that_can_trade_fills_at_once(trader):
    """IOC through the ask fills in full at the ask."""
    placed = buy_limit(trader, 66000, timeInForce="IOC")
    order = trader.fetch_order(placed["id"])
    assert (order["status"], order["filled"], order["average"]) == ("closed", 0.01, ASK)


@pytest.mark.parametrize("time_in_force", ["FOK", "PO", "gtc"])
def test_a_time_in_force_kraken_spot_lacks_is_refused(trader, kraken, time_in_force):
    """Kraken spot knows GTC, IOC and GTD only: FOK is EGeneral:Invalid arguments:timeinforce."""
    with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:timeinforce"):
        buy_limit(trader, 64000, timeInForce=time_in_force)
    assert kraken.orders() == []


def test_a_gtd_order_expires_at_its_expiretm_and_frees_its_hold(trader, kraken, clock):
    """GTD with expiretm +60: open for 60 s, then expired; a later price move fills nothing."""
    placed = buy_limit(trader, 64000, timeInForce="GTD", expiretm="+60")
    clock.advance(59)
    assert trader.fetch_balance()["used"]["USD"] == 640
    clock.advance(1)
    (order,) = trader.fetch_closed_orders()
    assert (order["id"], order["status"], order["lastUpdateTimestamp"]) == (
        placed["id"],
        "expired",
        ms(START + 60),
    )
    assert trader.fetch_balance()["used"]["USD"] == 0
    kraken.set_price("XXBTZUSD", "60000")
    assert trader.fetch_order(placed["id"])["filled"] == 0
    assert kraken.balances()["ZUSD"] == 10000


def test_a_price_move_before_the_expiry_fills_even_if_nobody_looks_until_after(
    trader, kraken, clock
):
    """Events keep their own times: a fill at t=30 stands though the look comes at t=90."""
    placed = buy_limit(trader, 64000, timeInForce="GTD", expiretm="+60")
    clock.advance(30)
    kraken.set_price("XXBTZUSD", "63000")
    clock.advance(60)
    order = trader.fetch_order(placed["id"])
    assert (order["status"], order["lastUpdateTimestamp"]) == ("closed", ms(START + 30))


def test_an_order_that_expires_while_pending_never_trades(clock):
    """pending_delay 10 s, expiretm +5: it expires before it reaches the book, marketable or not."""
    with running_kraken(balances={"ZUSD": "10000"}, pending_delay=10, time_source=clock) as k:
        exchange = connect(k)
        placed = buy_limit(exchange, 66000, timeInForce="GTD", expiretm="+5")
        clock.advance(10)
        order = exchange.fetch_order(placed["id"])
        assert (order["status"], order["filled"]) == ("expired", 0)
        assert k.balances() == {"ZUSD": Decimal(10000)}


@pytest.mark.parametrize("params", [{"timeInForce": "GTD"}, {"expiretm": "+4"}])
def test_gtd_needs_an_expiretm_of_at_least_five_seconds(trader, kraken, params):
    """GTD without expiretm, or a relative expiretm under 5 s, is an invalid expiretm."""
    with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:expiretm"):
        buy_limit(trader, 64000, **params)
    assert kraken.orders() == []


def test_reduce_only_on_a_spot_account_is_refused_as_kraken_refuses_it(trader, kraken):
    """reduce_only=true reduces a margin position; spot has none: Reduce only:No position exists."""
    with pytest.raises(ccxt.ExchangeError, match="EOrder:Reduce only:No position exists"):
        trader.create_order("BTC/USD", "limit", "sell", 0.1, 70000, {"reduceOnly": True})
    assert last_request(kraken, "AddOrder")["reduce_only"] == "true"
    assert kraken.orders() == []


@pytest.mark.parametrize(
    ("extra", "raised", "error"),
    [
        ({"ordertype": "limit"}, ccxt.InvalidOrder, "EGeneral:Invalid arguments:price"),
        (
            {"ordertype": "limit", "price": "64000.05"},
            ccxt.ExchangeError,
            "EOrder:Tick size check failed",
        ),
        ({"oflags": "post"}, ccxt.ExchangeError, "EGeneral:Invalid arguments:oflags"),
        (
            {"ordertype": "limit", "price": "64000", "oflags": "fcib,fciq"},
            ccxt.ExchangeError,
            "EGeneral:Invalid arguments:oflags",
        ),
    ],
)
def test_malformed_limit_requests_are_refused_before_the_engine(
    trader, kraken, extra, raised, error
):
    """No price, a price off the 0.1 tick, post on a market order, both fee flags: refused."""
    order = {"pair": "XBTUSD", "type": "buy", "ordertype": "market", "volume": "0.01", **extra}
    with pytest.raises(raised, match=error):
        trader.private_post_addorder(order)
    assert kraken.orders() == []


def test_validate_describes_a_limit_order_as_kraken_does(trader, kraken):
    """validate=true: the description carries the limit, and nothing is placed."""
    answer = trader.private_post_addorder(
        {
            "pair": "XBTUSD",
            "type": "buy",
            "ordertype": "limit",
            "price": "64000",
            "volume": "0.01",
            "validate": True,
        }
    )
    assert answer["result"] == {"descr": {"order": "buy 0.01000000 XBTUSD @ limit 64000.0"}}
    assert kraken.orders() == []


# --------------------------------------------------------------------------- holds and funds


def test_open_orders_hold_quote_for_buys_and_base_for_sells(trader, kraken):
    """A buy holds volume x limit in USD, a sell its BTC; BalanceEx reports it as hold_trade."""
    buy_limit(trader, 64000, amount=0.15)
    trader.create_order("BTC/USD", "limit", "sell", 0.5, 70000)
    assert kraken.held() == {"ZUSD": Decimal(9600), "XXBT": Decimal("0.5")}
    extended = trader.private_post_balanceex()["result"]
    assert extended["ZUSD"] == {"balance": "10000.0000", "hold_trade": "9600.0000"}
    assert extended["XXBT"] == {"balance": "0.5000000000", "hold_trade": "0.5000000000"}
    balance = trader.fetch_balance()
    assert (balance["USD"]["used"], balance["USD"]["free"]) == (9600, 400)
    assert (balance["BTC"]["used"], balance["BTC"]["free"]) == (0.5, 0)


def test_an_order_beyond_what_is_free_is_refused_with_insufficient_funds(trader, kraken):
    """Held funds are not free: the next buy (640 > 400) and any sell are refused."""
    buy_limit(trader, 64000, amount=0.15)
    trader.create_order("BTC/USD", "limit", "sell", 0.5, 70000)
    with pytest.raises(ccxt.InsufficientFunds):
        buy_limit(trader, 64000)
    with pytest.raises(ccxt.InsufficientFunds):
        trader.create_order("BTC/USD", "limit", "sell", 0.01, 70000)
    assert kraken.refusals() == {"EOrder:Insufficient funds": 2}
    assert len(trader.fetch_open_orders()) == 2


# --------------------------------------------------------------------------- cancelling


def test_cancel_order_by_id_cancels_and_frees_the_hold(trader, kraken, clock):
    """CancelOrder by txid: {count: 1}, status canceled with reason User requested."""
    placed = buy_limit(trader, 64000)
    clock.advance(2)
    answer = trader.cancel_order(placed["id"])
    assert answer["info"] == {"error": [], "result": {"count": 1}}
    order = trader.fetch_order(placed["id"])
    assert (order["status"], order["info"]["reason"], order["lastUpdateTimestamp"]) == (
        "canceled",
        USER_REQUESTED,
        ms(START + 2),
    )
    assert kraken.held() == {}


def test_cancel_order_by_client_order_id(trader, kraken):
    """clientOrderId: ccxt sends cl_ord_id alone, and Kraken cancels the open order carrying it."""
    placed = buy_limit(trader, 64000, clientOrderId="cancel-me")
    trader.cancel_order("", None, {"clientOrderId": "cancel-me"})
    sent = last_request(kraken, "CancelOrder")
    assert (sent.get("cl_ord_id"), "txid" in sent) == ("cancel-me", False)
    assert trader.fetch_order(placed["id"])["status"] == "canceled"


def test_cancel_order_by_userref_cancels_every_open_order_carrying_it(trader, kraken):
    """Kraken's txid may be a userref: every open order with it is cancelled at once."""
    buy_limit(trader, 64000, userref=7)
    buy_limit(trader, 63000, userref=7)
    other = buy_limit(trader, 62000, userref=8)
    assert trader.private_post_cancelorder({"txid": 7})["result"] == {"count": 2}
    assert [o["id"] for o in trader.fetch_open_orders()] == [other["id"]]


def test_cancelling_an_order_already_cancelled_or_expired_is_an_unknown_order(trader, clock):
    """Kraken answers EOrder:Unknown order (ccxt: OrderNotFound), as for a txid it never had."""
    cancelled = buy_limit(trader, 64000)
    trader.cancel_order(cancelled["id"])
    expiring = buy_limit(trader, 63000, timeInForce="GTD", expiretm="+10")
    clock.advance(10)
    for txid in (cancelled["id"], expiring["id"], "OXXXXX-XXXXX-XXXXXX"):
        with pytest.raises(ccxt.OrderNotFound, match="EOrder:Unknown order"):
            trader.cancel_order(txid)
    with pytest.raises(ccxt.OrderNotFound):
        trader.cancel_order("", None, {"clientOrderId": "nobody"})


def test_cancel_all_orders_cancels_every_open_order_and_counts_them(trader, kraken):
    """CancelAll: {count: n} for the open orders; filled ones are untouched; then count 0."""
    filled = trader.create_order("BTC/USD", "market", "buy", 0.01)
    resting = [buy_limit(trader, 64000), buy_limit(trader, 63000)]
    resting.append(trader.create_order("BTC/USD", "limit", "sell", 0.1, 70000))
    (answer,) = trader.cancel_all_orders()
    assert answer["info"] == {"error": [], "result": {"count": 3}}
    assert trader.fetch_open_orders() == []
    statuses = {o["id"]: o["status"] for o in trader.fetch_closed_orders()}
    assert statuses == {filled["id"]: "closed"} | {o["id"]: "canceled" for o in resting}
    assert kraken.held() == {}
    assert trader.cancel_all_orders()[0]["info"]["result"] == {"count": 0}


def test_cancel_orders_sends_a_json_batch_and_cancels_those_listed(trader, kraken):
    """The cancel_orders of ccxt is CancelOrderBatch with a JSON body: the listed orders go."""
    first, second, kept = (
        buy_limit(trader, 64000),
        buy_limit(trader, 63000),
        buy_limit(trader, 60000),
    )
    (answer,) = trader.cancel_orders([first["id"], second["id"]])
    assert answer["info"]["result"] == {"count": 2}
    assert [o["id"] for o in trader.fetch_open_orders()] == [kept["id"]]


# --------------------------------------------------------------------------- dead man's switch


def test_the_dead_man_switch_arms_and_reports_its_trigger_time(trader, kraken):
    """cancel_all_orders_after(60000 ms) sends timeout=60 and gets Kraken's two RFC 3339 times."""
    answer = trader.cancel_all_orders_after(60000)
    assert last_request(kraken, "CancelAllOrdersAfter")["timeout"] == "60"
    assert answer == {
        "error": [],
        "result": {"currentTime": rfc3339(START), "triggerTime": rfc3339(START + 60)},
    }
    switch = kraken.dead_man_switch
    assert switch == DeadManSwitch(trigger_at=START + 60, fired_at=(), cancelled=0)
    assert switch.armed


def test_the_switch_fires_when_not_refreshed_and_cancels_every_open_order(trader, kraken, clock):
    """Refreshed at t=30 it moves to t=90; unrefreshed, it cancels both orders at t=90, once."""
    placed = [buy_limit(trader, 64000), trader.create_order("BTC/USD", "limit", "sell", 0.1, 70000)]
    trader.cancel_all_orders_after(60000)
    clock.advance(30)
    trader.cancel_all_orders_after(60000)
    clock.advance(59)
    assert len(trader.fetch_open_orders()) == 2
    clock.advance(1)
    assert trader.fetch_open_orders() == []
    for order in (trader.fetch_order(p["id"]) for p in placed):
        assert (order["status"], order["lastUpdateTimestamp"], order["info"]["reason"]) == (
            "canceled",
            ms(START + 90),
            DEAD_MAN_SWITCH_FIRED,
        )
    assert kraken.dead_man_switch == DeadManSwitch(
        trigger_at=None, fired_at=(START + 90,), cancelled=2
    )
    assert kraken.held() == {}


def test_after_firing_the_switch_stays_off_until_armed_again(trader, kraken, clock):
    """Kraken: once expired, the timer stays disabled until a new non-zero timeout."""
    trader.cancel_all_orders_after(10000)
    clock.advance(10)
    later = buy_limit(trader, 64000)
    clock.advance(3600)
    assert trader.fetch_order(later["id"])["status"] == "open"
    assert not kraken.dead_man_switch.armed


def test_a_zero_timeout_disarms_the_switch(trader, kraken, clock):
    """timeout=0: triggerTime "0", and the orders outlive the old trigger time."""
    placed = buy_limit(trader, 64000)
    trader.cancel_all_orders_after(60000)
    clock.advance(10)
    answer = trader.cancel_all_orders_after(0)
    assert answer["result"] == {"currentTime": rfc3339(START + 10), "triggerTime": "0"}
    clock.advance(120)
    assert trader.fetch_order(placed["id"])["status"] == "open"
    assert kraken.dead_man_switch == DeadManSwitch(trigger_at=None, fired_at=(), cancelled=0)


def test_the_switch_fires_at_its_own_time_among_other_events(trader, kraken, clock):
    """Looked at late (t=25), events still happen in time order around the trigger at t=10.

    A fill at t=5 stands; an order the engine accepts at t=8 is cancelled by the switch at t=10;
    one accepted at t=15, after the switch fired, survives it.
    """
    filled = buy_limit(trader, 64000)
    trader.cancel_all_orders_after(10000)
    clock.advance(5)
    kraken.set_price("XXBTZUSD", "63000")  # fills `filled` at t=5
    for delay, cid in ((3, "early"), (10, "late")):
        kraken.inject(f"delayed_accept:{delay}", endpoint="AddOrder")
        with pytest.raises(ccxt.ExchangeNotAvailable):
            buy_limit(trader, 62000, clientOrderId=cid)
    clock.advance(20)
    assert trader.fetch_order(filled["id"])["status"] == "closed"
    (early,) = trader.fetch_closed_orders(params={"clientOrderId": "early"})
    assert (early["status"], early["timestamp"], early["lastUpdateTimestamp"]) == (
        "canceled",
        ms(START + 8),
        ms(START + 10),
    )
    (late,) = trader.fetch_open_orders(params={"clientOrderId": "late"})
    assert late["timestamp"] == ms(START + 15)
    assert kraken.dead_man_switch == DeadManSwitch(
        trigger_at=None, fired_at=(START + 10,), cancelled=1
    )


@pytest.mark.parametrize("timeout", ["86400", "-1", "soon"])
def test_a_timeout_outside_what_kraken_takes_is_refused(trader, kraken, timeout):
    """The timeout is whole seconds below 86400; anything else arms nothing."""
    with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:timeout"):
        trader.private_post_cancelallordersafter({"timeout": timeout})
    assert not kraken.dead_man_switch.armed


# --------------------------------------------------------------------------- faults


def test_accept_then_on_cancel_order_cancels_and_then_fails(trader, kraken):
    """The cancel lands though the answer is a 504; a retry then finds the order unknown."""
    placed = buy_limit(trader, 64000)
    kraken.inject("accept_then:http:504", endpoint="CancelOrder")
    with pytest.raises(ccxt.RequestTimeout):
        trader.cancel_order(placed["id"])
    assert trader.fetch_order(placed["id"])["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):
        trader.cancel_order(placed["id"])


def test_accept_then_on_the_switch_arms_it_behind_a_failure(trader, kraken):
    """A failed CancelAllOrdersAfter answer does not prove the timer is off."""
    kraken.inject("accept_then:EService:Unavailable", endpoint="CancelAllOrdersAfter")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        trader.cancel_all_orders_after(30000)
    assert kraken.dead_man_switch.trigger_at == START + 30


def test_a_delayed_limit_order_is_invisible_then_rests_and_holds(trader, kraken, clock):
    """delayed_accept on a limit order: nothing to see for 2 s, then it rests and holds USD."""
    kraken.inject("delayed_accept:2", endpoint="AddOrder")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        buy_limit(trader, 64000, clientOrderId="slow-limit")
    assert trader.fetch_open_orders() == []
    assert kraken.held() == {}
    clock.advance(2)
    (order,) = trader.fetch_open_orders()
    assert (order["clientOrderId"], order["price"], order["timestamp"]) == (
        "slow-limit",
        64000,
        ms(START + 2),
    )
    assert kraken.held() == {"ZUSD": Decimal(640)}


def test_a_queued_order_is_judged_at_the_price_of_its_own_moment(trader, kraken, clock):
    """Accepted at t=2 below the ask it rests; the move at t=5 then fills it as maker at 65000."""
    kraken.inject("delayed_accept:2", endpoint="AddOrder")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        buy_limit(trader, 65000, postOnly=True, clientOrderId="queued")
    clock.advance(5)
    kraken.set_price("XXBTZUSD", "64000")
    (order,) = trader.fetch_closed_orders(params={"clientOrderId": "queued"})
    assert (order["status"], order["average"], order["lastUpdateTimestamp"]) == (
        "closed",
        65000,
        ms(START + 5),
    )


def test_a_queued_post_only_order_that_would_cross_when_accepted_is_dropped(trader, kraken, clock):
    """The engine checks post-only when it reaches the order: crossed by then, it never exists."""
    kraken.inject("delayed_accept:2", endpoint="AddOrder")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        buy_limit(trader, 65000, postOnly=True)
    kraken.set_price("XXBTZUSD", "64000")  # at t=0, before the engine reaches it
    clock.advance(2)
    assert kraken.orders() == []
    assert kraken.refusals() == {"EOrder:Post only order": 1}


# --------------------------------------------------------------------------- pair modes, shapes


def test_limit_only_and_post_only_modes_take_the_orders_they_allow(trader, kraken):
    """limit_only takes limit orders, post_only only post-only ones; neither trades."""
    kraken.set_pair_status("XXBTZUSD", "limit_only")
    resting = buy_limit(trader, 66000)  # marketable, but nothing trades outside online
    with pytest.raises(ccxt.ExchangeError, match="EService:Market in limit_only mode"):
        trader.create_order("BTC/USD", "market", "buy", 0.01)
    kraken.set_pair_status("XXBTZUSD", "post_only")
    with pytest.raises(ccxt.OnMaintenance, match="EService:Market in post_only mode"):
        buy_limit(trader, 64000)
    buy_limit(trader, 64000, postOnly=True)
    assert trader.fetch_order(resting["id"])["status"] == "open"
    kraken.set_pair_status("XXBTZUSD", "online")
    order = trader.fetch_order(resting["id"])
    assert (order["status"], order["average"]) == ("closed", ASK)


def test_an_ioc_order_in_limit_only_mode_is_cancelled_unfilled(trader, kraken):
    """No trades outside online: an IOC accepted in limit_only mode cannot fill, so it goes."""
    kraken.set_pair_status("XXBTZUSD", "limit_only")
    placed = buy_limit(trader, 66000, timeInForce="IOC")
    assert trader.fetch_order(placed["id"])["status"] == "canceled"


@pytest.mark.parametrize(
    ("recorded", "post_only"), [("OpenOrders_cl_ord_id", False), ("QueryOrders_open", True)]
)
def test_limit_order_payloads_match_ccxts_recordings(trader, kraken, recorded, post_only):
    """An open limit order has the recorded keys and value types, in OpenOrders and QueryOrders."""
    params = {"postOnly": True} if post_only else {"clientOrderId": "123"}
    placed = buy_limit(trader, 64000, **params)
    if post_only:
        emitted = trader.private_post_queryorders({"txid": placed["id"]})["result"][placed["id"]]
    else:
        emitted = trader.private_post_openorders()["result"]["open"][placed["id"]]
    expected = RECORDED["ccxt_recorded"][recorded]
    assert shape_differences(expected, emitted, quoted=True) == []
    assert emitted["oflags"] == expected["oflags"]
    assert (emitted["price"], emitted["limitprice"]) == (expected["price"], expected["limitprice"])
