"""The Kraken emulator behaves like Kraken where brokerguard depends on it."""

from __future__ import annotations

import base64
import json
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal

import ccxt
import pytest

from brokerguard.sim.kraken import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    KrakenEmulator,
    KrakenPair,
    running_kraken,
)


@pytest.fixture
def kraken():
    with running_kraken(balances={"ZUSD": "1000", "XXBT": "0.1"}) as emulator:
        yield emulator


@pytest.fixture
def client(kraken) -> ccxt.kraken:
    exchange = ccxt.kraken(
        {"apiKey": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET, "enableRateLimit": False}
    )
    exchange.urls["api"] = {"public": kraken.url, "private": kraken.url}
    exchange.load_markets()
    return exchange


def test_markets_and_currencies_load_into_unified_symbols(client):
    """Kraken's X/Z asset ids come out as ccxt's BTC/USD, ETH/USD, SOL/USD."""
    assert {"BTC/USD", "ETH/USD", "SOL/USD"} <= set(client.markets)
    assert client.markets["BTC/USD"]["id"] == "XXBTZUSD"


def test_ticker_reports_prices_as_strings_in_kraken_shape(client, kraken):
    """Prices travel as strings; ccxt parses 'c' (last trade) into `last`."""
    kraken.set_price("XXBTZUSD", "70000.5")
    assert client.fetch_ticker("BTC/USD")["last"] == 70000.5


def test_open_orders_stay_open_and_can_be_cancelled(client, kraken):
    """With fills off, a market order rests open, shows in OpenOrders and cancels."""
    kraken.set_fill_market_orders(fill=False)
    placed = client.create_order("BTC/USD", "market", "sell", "0.05", None, {"clientOrderId": "c1"})
    assert client.fetch_open_orders(params={"clientOrderId": "c1"})[0]["id"] == placed["id"]
    assert client.fetch_order(placed["id"])["status"] == "open"
    client.cancel_order(placed["id"])
    assert client.fetch_open_orders() == []
    assert client.fetch_closed_orders()[0]["status"] == "canceled"


def test_cl_ord_id_is_unique_only_among_open_orders(client, kraken):
    """Like Kraken: a duplicate open cl_ord_id is refused; once closed, the id can be reused."""
    kraken.set_fill_market_orders(fill=False)
    client.create_order("BTC/USD", "market", "buy", "0.001", None, {"clientOrderId": "dup"})
    with pytest.raises(ccxt.ExchangeError, match="Duplicate order"):
        client.create_order("BTC/USD", "market", "buy", "0.001", None, {"clientOrderId": "dup"})
    kraken.set_fill_market_orders(fill=True)
    open_order = client.fetch_open_orders()[0]
    client.cancel_order(open_order["id"])
    client.create_order("BTC/USD", "market", "buy", "0.001", None, {"clientOrderId": "dup"})
    assert [o["cl_ord_id"] for o in kraken.orders()] == ["dup", "dup"]


def test_fills_move_balances_and_funds_are_checked(client, kraken):
    """A buy spends quote currency; one beyond the free balance is refused."""
    client.create_order("SOL/USD", "market", "buy", "2", None, {"clientOrderId": "b"})
    assert kraken.balances()["SOL"] == Decimal(2)
    assert kraken.balances()["ZUSD"] == Decimal(700)
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order("BTC/USD", "market", "buy", "1", None, {"clientOrderId": "big"})
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order("BTC/USD", "market", "sell", "1", None, {"clientOrderId": "short"})


def test_a_replayed_nonce_is_refused(client):
    """Nonces must increase per key: replaying one is EAPI:Invalid nonce."""
    client.incrementing_nonce = lambda: 5  # bypass ccxt's own per-instance counter
    client.fetch_balance()
    with pytest.raises(ccxt.InvalidNonce):
        client.fetch_balance()


def test_a_wrong_signature_or_key_is_refused(kraken):
    """Private calls need the right API-Key and a valid API-Sign."""
    wrong = ccxt.kraken(
        {
            "apiKey": DEFAULT_API_KEY,
            "secret": base64.b64encode(b"not the secret").decode(),
            "enableRateLimit": False,
        }
    )
    wrong.urls["api"] = {"public": kraken.url, "private": kraken.url}
    wrong.load_markets()
    with pytest.raises(ccxt.ExchangeError, match="Invalid signature"):
        wrong.fetch_balance()
    other = ccxt.kraken({"apiKey": "nope", "secret": DEFAULT_API_SECRET, "enableRateLimit": False})
    other.urls["api"] = {"public": kraken.url, "private": kraken.url}
    other.load_markets()
    with pytest.raises(ccxt.AuthenticationError):
        other.fetch_balance()
    assert kraken.count("BalanceEx") == 0  # refused before being served


def test_faults_target_one_endpoint_and_are_consumed(client, kraken):
    """An injected fault hits the next call to its endpoint only, then is gone."""
    kraken.inject("EService:Busy", endpoint="Ticker", times=2)
    client.fetch_balance()
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            client.fetch_ticker("BTC/USD")
    client.fetch_ticker("BTC/USD")
    kraken.inject("EService:Unavailable")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_time()
    kraken.inject("EService:Unavailable", times=3)
    kraken.clear_faults()
    client.fetch_time()


def test_unknown_paths_answer_in_the_envelope(kraken):
    """Anything outside the API answers with a Kraken error, never a crash."""
    with urllib.request.urlopen(f"{kraken.url}/0/public/Nope") as response:  # noqa: S310 (loopback)
        assert json.loads(response.read()) == {"error": ["EGeneral:Unknown method"]}
    with urllib.request.urlopen(f"{kraken.url}/elsewhere") as response:  # noqa: S310
        assert json.loads(response.read())["error"] == ["EGeneral:Unknown method"]


def test_the_url_needs_a_running_server():
    """Asking a stopped emulator for its URL is a clear error."""
    with pytest.raises(RuntimeError, match="not running"):
        _ = KrakenEmulator().url


def test_with_a_fill_delay_an_order_rests_open_then_fills_and_refusals_are_counted():
    """fill_delay: open until that much (emulator) time passed; refusals are tallied."""
    now = [1_800_000_000.0]
    with running_kraken(
        balances={"ZUSD": "1000", "XXBT": "0.1"}, fill_delay=2.0, time_source=lambda: now[0]
    ) as kraken:
        exchange = ccxt.kraken(
            {"apiKey": DEFAULT_API_KEY, "secret": DEFAULT_API_SECRET, "enableRateLimit": False}
        )
        exchange.urls["api"] = {"public": kraken.url, "private": kraken.url}
        exchange.load_markets()
        exchange.create_order("BTC/USD", "market", "sell", "0.1", None, {"clientOrderId": "s1"})
        assert exchange.fetch_open_orders(params={"clientOrderId": "s1"})[0]["status"] == "open"
        with pytest.raises(ccxt.InsufficientFunds):  # the open sell holds the whole balance
            exchange.create_order("BTC/USD", "market", "sell", "0.1", None, {})
        now[0] += 2.0
        assert exchange.fetch_closed_orders(params={"clientOrderId": "s1"})[0]["filled"] == 0.1
        assert kraken.balances()["XXBT"] == 0
        kraken.credit("XXBT", "0.25")
        assert exchange.fetch_balance()["total"]["BTC"] == 0.25
        assert kraken.refusals() == {"EOrder:Insufficient funds": 1}


def test_as_its_own_process_it_goes_down_and_up_on_the_admin_api():
    """`python -m brokerguard.sim --admin`: one URL line, then 503s while down, counted."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    process = subprocess.Popen(
        [sys.executable, "-m", "brokerguard.sim", "--port", "0", "--admin"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        def call(path: str, method: str = "GET") -> tuple[int, bytes]:
            request = urllib.request.Request(  # noqa: S310 (loopback)
                url + path, method=method, data=b"" if method == "POST" else None
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
                    return answer.status, answer.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert call("/0/public/Time")[0] == 200
        call("/admin/down", "POST")
        assert [call("/0/public/Time")[0] for _ in range(3)] == [503, 503, 503]
        call("/admin/up", "POST")
        assert call("/0/public/Time")[0] == 200
        stats = json.loads(call("/admin/stats")[1])
        assert stats == {"down": False, "requests": 5, "while_down": 3}
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()


# --------------------------------------------------------------------------- real exchange faults

START = 1_800_000_000.0


class Clock:
    """The emulator's time_source: tests step it instead of sleeping."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def connect(emulator, **config) -> ccxt.kraken:
    exchange = ccxt.kraken(
        {
            "apiKey": DEFAULT_API_KEY,
            "secret": DEFAULT_API_SECRET,
            "enableRateLimit": False,
            "timeout": 2000,
            **config,
        }
    )
    exchange.urls["api"] = {"public": emulator.url, "private": emulator.url}
    exchange.load_markets()
    return exchange


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(clock):
    """An emulator on a stepped clock, with room to buy."""
    with running_kraken(balances={"ZUSD": "10000", "XXBT": "0.1"}, time_source=clock) as emulator:
        yield emulator


@pytest.fixture
def trader(timed) -> ccxt.kraken:
    return connect(timed)


def by_cid(exchange: ccxt.kraken, cid: str) -> list[dict]:
    params = {"clientOrderId": cid}
    found = exchange.fetch_open_orders(params=params) + exchange.fetch_closed_orders(params=params)
    return [o for o in found if o["clientOrderId"] == cid]


def test_a_queued_add_order_is_invisible_until_the_engine_accepts_it(trader, timed, clock):
    """delayed_accept: AddOrder fails now, the order exists (and fills) only after the delay."""
    timed.inject("delayed_accept:1.5", endpoint="AddOrder")
    with pytest.raises(ccxt.ExchangeNotAvailable, match="EService:Unavailable"):
        trader.create_order("SOL/USD", "market", "buy", "2", None, {"clientOrderId": "late"})
    clock.advance(1.4)
    assert by_cid(trader, "late") == []
    assert timed.orders() == []
    assert [q["cl_ord_id"] for q in timed.queued()] == ["late"]
    clock.advance(0.1)
    (order,) = by_cid(trader, "late")
    assert (order["status"], order["filled"]) == ("closed", 2)
    assert order["timestamp"] == int((START + 1.5) * 1000)  # accepted when the engine got to it
    assert timed.queued() == []
    assert timed.balances()["SOL"] == 2


def test_a_resend_after_an_empty_lookup_makes_the_duplicate_kraken_makes(trader, timed, clock):
    """The hazard itself: fault, nothing found, resend, and the first order lands later too."""
    timed.inject("delayed_accept:2:EService:Busy", endpoint="AddOrder")
    params = {"clientOrderId": "twice"}
    with pytest.raises(ccxt.ExchangeNotAvailable):
        trader.create_order("SOL/USD", "market", "buy", "1", None, params)
    assert by_cid(trader, "twice") == []  # absence, looked up at once, proves nothing
    trader.create_order("SOL/USD", "market", "buy", "1", None, params)
    clock.advance(2)
    assert [o["status"] for o in by_cid(trader, "twice")] == ["closed", "closed"]
    assert timed.balances()["SOL"] == 2


def test_a_queued_order_meeting_its_open_twin_is_dropped_as_a_duplicate(clock):
    """cl_ord_id is unique among open orders: a late twin of a still-open order never exists."""
    with running_kraken(balances={"ZUSD": "10000"}, fill_delay=5, time_source=clock) as kraken:
        exchange = connect(kraken)
        kraken.inject("delayed_accept:1", endpoint="AddOrder")
        params = {"clientOrderId": "twin"}
        with pytest.raises(ccxt.ExchangeNotAvailable):
            exchange.create_order("SOL/USD", "market", "buy", "1", None, params)
        exchange.create_order("SOL/USD", "market", "buy", "1", None, params)
        clock.advance(1)
        assert len(by_cid(exchange, "twin")) == 1
        assert kraken.refusals() == {"EOrder:Duplicate order": 1}


def test_a_client_timeout_in_front_of_a_queued_order(clock):
    """delayed_accept with a slow answer: the client times out, the order appears later."""
    with running_kraken(balances={"ZUSD": "10000"}, time_source=clock) as kraken:
        exchange = connect(kraken, timeout=200)
        kraken.inject("delayed_accept:3:slow:0.5", endpoint="AddOrder")
        with pytest.raises(ccxt.RequestTimeout):
            exchange.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": "t/o"})
        assert by_cid(exchange, "t/o") == []
        clock.advance(3)
        assert [o["filled"] for o in by_cid(exchange, "t/o")] == [1]


def test_accept_delay_queues_every_add_order_behind_the_chosen_answer(clock):
    """The constructor form: every AddOrder waits accept_delay and answers delayed_answer."""
    with running_kraken(
        balances={"ZUSD": "10000"}, accept_delay=2, delayed_answer="http:504", time_source=clock
    ) as kraken:
        exchange = connect(kraken)
        for cid in ("q1", "q2"):
            with pytest.raises(ccxt.RequestTimeout):
                exchange.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": cid})
        assert len(kraken.queued()) == 2
        clock.advance(2)
        assert [o["cl_ord_id"] for o in kraken.orders()] == ["q1", "q2"]


def test_a_queued_order_whose_deadline_passes_first_never_appears(trader, timed, clock):
    """deadline: the engine drops a queued order it reaches after the deadline."""
    timed.inject("delayed_accept:10", endpoint="AddOrder")
    params = {"clientOrderId": "dl", "deadline": rfc3339(START + 5)}
    with pytest.raises(ccxt.ExchangeNotAvailable):
        trader.create_order("SOL/USD", "market", "buy", "1", None, params)
    clock.advance(10)
    assert by_cid(trader, "dl") == []
    assert timed.orders() == []
    assert timed.queued() == []
    assert timed.refusals() == {"EService:Deadline elapsed": 1}
    assert "SOL" not in timed.balances()


def test_a_queued_order_reached_before_its_deadline_executes(trader, timed, clock):
    """deadline: accepted inside the deadline, the queued order is a real order."""
    timed.inject("delayed_accept:2", endpoint="AddOrder")
    params = {"clientOrderId": "in-time", "deadline": rfc3339(START + 5)}
    with pytest.raises(ccxt.ExchangeNotAvailable):
        trader.create_order("SOL/USD", "market", "buy", "1", None, params)
    clock.advance(2)
    assert [o["status"] for o in by_cid(trader, "in-time")] == ["closed"]
    assert kraken_deadline(timed) == rfc3339(START + 5)


def kraken_deadline(emulator) -> str:
    (add,) = [r for r in emulator.requests if r.endpoint == "AddOrder"]
    return add.params["deadline"]


def test_a_deadline_already_past_is_refused_and_never_executed(trader, timed):
    """A request arriving after its deadline: EService:Deadline elapsed, a plain ExchangeError."""
    params = {"clientOrderId": "stale", "deadline": rfc3339(START - 1)}
    with pytest.raises(ccxt.ExchangeError, match="EService:Deadline elapsed") as caught:
        trader.create_order("SOL/USD", "market", "buy", "1", None, params)
    assert not isinstance(caught.value, ccxt.NetworkError)
    assert timed.orders() == []


@pytest.mark.parametrize(
    "deadline",
    [
        "in five seconds",
        "2027-01-15T08:00:00",  # no offset: not RFC 3339
        "2027-01-15",  # a date, not a date-time
        rfc3339(START + 61),  # beyond now + 60 s
        rfc3339(START + 1),  # before now + 2 s
    ],
)
def test_an_invalid_deadline_is_refused(trader, timed, deadline):
    """The deadline must be an RFC 3339 date-time from now + 2 s to now + 60 s."""
    params = {"clientOrderId": "bad-dl", "deadline": deadline}
    with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:deadline"):
        trader.create_order("SOL/USD", "market", "buy", "1", None, params)
    assert timed.orders() == []


def test_deadline_elapsed_injected_reaches_ccxt_as_a_plain_exchange_error(trader, timed):
    """As ccxt 4.5.90's REST table lacks EService:Deadline elapsed, ccxt raises ExchangeError."""
    timed.inject("EService:Deadline elapsed", endpoint="AddOrder")
    with pytest.raises(ccxt.ExchangeError, match="Deadline elapsed") as caught:
        trader.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": "x"})
    assert type(caught.value) is ccxt.ExchangeError
    assert timed.orders() == []


def test_market_orders_fill_in_parts_over_time(clock):
    """fill_parts: vol_exec grows while the order stays open, then it closes."""
    with running_kraken(
        balances={"ZUSD": "10000"}, fill_delay=1, fill_parts=4, time_source=clock
    ) as kraken:
        exchange = connect(kraken)
        placed = exchange.create_order(
            "SOL/USD", "market", "buy", "1", None, {"clientOrderId": "p"}
        )
        clock.advance(1)
        (order,) = exchange.fetch_open_orders(params={"clientOrderId": "p"})
        assert (order["status"], order["filled"], order["remaining"]) == ("open", 0.25, 0.75)
        assert order["info"]["vol_exec"] == "0.25000000"
        assert kraken.balances()["SOL"] == Decimal("0.25")
        clock.advance(3)
        fetched = exchange.fetch_order(placed["id"])
        assert (fetched["status"], fetched["filled"], fetched["cost"]) == ("closed", 1, 150)
        assert len(fetched["trades"]) == 4
        assert fetched["lastUpdateTimestamp"] == int((START + 4) * 1000)


def test_an_order_rests_pending_before_it_is_open(clock):
    """pending_delay: Kraken's 'pending book entry', listed among open orders, then it fills."""
    with running_kraken(
        balances={"ZUSD": "10000"}, pending_delay=2, fill_delay=1, time_source=clock
    ) as kraken:
        exchange = connect(kraken)
        exchange.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": "pd"})
        (order,) = exchange.fetch_open_orders()
        assert (order["info"]["status"], order["status"]) == ("pending", "open")
        clock.advance(2)
        assert exchange.fetch_open_orders()[0]["info"]["status"] == "open"
        clock.advance(1)
        assert exchange.fetch_closed_orders()[0]["status"] == "closed"


def test_an_order_with_expiretm_expires_and_frees_its_hold(trader, timed, clock):
    """expiretm: a resting order expires, shows among closed orders, and holds nothing more."""
    timed.set_fill_market_orders(fill=False)
    trader.create_order("BTC/USD", "market", "sell", "0.1", None, {"expiretm": "+30"})
    assert trader.fetch_balance()["used"]["BTC"] == 0.1
    clock.advance(30)
    (order,) = trader.fetch_closed_orders()
    assert (order["status"], order["info"]["expiretm"]) == ("expired", START + 30)
    assert trader.fetch_balance()["used"]["BTC"] == 0
    assert trader.fetch_open_orders() == []


def test_any_order_status_can_be_forced(trader, timed, clock):
    """set_order_status: a status the engine would not reach in the test, kept as set."""
    trader.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": "forced"})
    timed.set_order_status("forced", "expired")
    (order,) = by_cid(trader, "forced")
    assert (order["status"], order["filled"]) == ("expired", 1)
    timed.set_order_status("forced", "pending")
    clock.advance(100)
    assert trader.fetch_open_orders()[0]["info"]["status"] == "pending"
    with pytest.raises(ValueError, match="not a Kraken order status"):
        timed.set_order_status("forced", "filled")
    with pytest.raises(KeyError):
        timed.set_order_status("nobody", "open")


def test_a_ticker_answer_can_omit_a_requested_pair(trader, timed):
    """omit: the Ticker succeeds without one pair; ccxt then returns an empty ticker for it."""
    timed.inject("omit:XXBTZUSD", endpoint="Ticker", times=2)
    assert list(trader.fetch_tickers(["BTC/USD", "ETH/USD"])) == ["ETH/USD"]
    ticker = trader.fetch_ticker("BTC/USD")  # no error: every field is None
    assert (ticker["symbol"], ticker["last"], ticker["info"]) == ("BTC/USD", None, None)
    assert trader.fetch_ticker("BTC/USD")["last"] == 65000


@pytest.mark.parametrize(
    ("status", "raised", "error"),
    [
        ("cancel_only", ccxt.OnMaintenance, "EService:Market in cancel_only mode"),
        ("post_only", ccxt.OnMaintenance, "EService:Market in post_only mode"),
        ("limit_only", ccxt.ExchangeError, "EService:Market in limit_only mode"),
        ("reduce_only", ccxt.ExchangeError, "EService:Market in reduce_only mode"),
        ("maintenance", ccxt.ExchangeNotAvailable, "EService:Unavailable"),
        ("delisted", ccxt.ExchangeError, "EQuery:Unknown asset pair"),
    ],
)
def test_a_pair_that_is_not_online_refuses_market_orders(trader, timed, status, raised, error):
    """set_pair_status: AssetPairs shows the mode, ccxt marks the market inactive, orders fail."""
    timed.set_pair_status("XXBTZUSD", status)
    trader.load_markets(reload=True)
    market = trader.market("BTC/USD")
    assert (market["active"], market["info"]["status"]) == (False, status)
    with pytest.raises(raised, match=error):
        trader.create_order("BTC/USD", "market", "buy", "0.01", None, {"clientOrderId": "m"})
    assert timed.refusals() == {error: 1}
    assert timed.orders() == []


def test_nothing_fills_on_a_pair_until_it_is_online_again(clock):
    """Trading modes other than online match nothing: a resting order waits for online."""
    with running_kraken(balances={"ZUSD": "10000"}, fill_delay=1, time_source=clock) as kraken:
        exchange = connect(kraken)
        exchange.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": "w"})
        kraken.set_pair_status("SOLUSD", "cancel_only")
        clock.advance(5)
        assert exchange.fetch_open_orders()[0]["filled"] == 0
        kraken.set_pair_status("SOLUSD", "online")
        assert exchange.fetch_closed_orders()[0]["filled"] == 1
        with pytest.raises(ValueError, match="not a Kraken pair status"):
            kraken.set_pair_status("SOLUSD", "halted")


def test_a_pair_can_start_in_a_trading_mode():
    """KrakenPair(status=...) sets the mode from the start; an unknown mode is refused."""
    pair = KrakenPair("XXBTZUSD", "XBTUSD", "XXBT", "ZUSD", Decimal(1), status="post_only")
    with running_kraken(pairs=(pair,)) as kraken:
        assert connect(kraken).market("BTC/USD")["info"]["status"] == "post_only"
    with pytest.raises(ValueError, match="not a Kraken pair status"):
        KrakenEmulator(pairs=(KrakenPair("A", "A", "A", "ZUSD", Decimal(1), status="odd"),))


def test_an_empty_but_successful_balance_answer(trader, timed):
    """empty_result: Balance and BalanceEx succeed with no asset at all, and nothing else runs."""
    timed.inject("empty_result", endpoint="BalanceEx")
    balance = trader.fetch_balance()
    assert (balance["total"], balance["info"]) == ({}, {"error": [], "result": {}})
    timed.inject("empty_result")
    assert trader.private_post_balance() == {"error": [], "result": {}}
    timed.inject("empty_result", endpoint="AddOrder")
    trader.create_order("SOL/USD", "market", "buy", "1")
    assert timed.orders() == []
    assert trader.fetch_balance()["total"]["BTC"] == 0.1


def test_some_assets_vanish_from_one_balance_answer(trader, timed):
    """omit: chosen assets are missing from the next balance answer only."""
    timed.inject("omit:XXBT", endpoint="BalanceEx")
    assert set(trader.fetch_balance()["total"]) == {"USD"}
    assert set(trader.fetch_balance()["total"]) == {"USD", "BTC"}
    timed.inject("omit:ZUSD,XXBT", endpoint="Balance")
    assert trader.private_post_balance()["result"] == {}


def test_suffixed_assets_are_reported_as_kraken_reports_them():
    """XBT.F, ETH2.S, DOT.S, USDC.M: own balance keys and Assets entries; ccxt keeps suffixes."""
    balances = {
        "ZUSD": "100",
        "XXBT": "0.1",
        "XBT.F": "0.2",
        "XXBT.P": "0.01",
        "ETH2.S": "1.5",
        "ETH2": "0.5",
        "XETH.F": "1",
        "DOT.S": "3",
        "USDC.M": "10",
        "SOL.B": "2",
        "USD.M": "5",
    }
    with running_kraken(balances=balances) as kraken:
        exchange = connect(kraken)
        raw = exchange.private_post_balance()["result"]
        assert (raw["XBT.F"], raw["USDC.M"], raw["USD.M"]) == (
            "0.2000000000",
            "10.00000000",
            "5.0000",
        )
        assets = exchange.public_get_assets()["result"]
        assert assets["XBT.F"] == {
            "aclass": "currency",
            "altname": "XBT.F",
            "decimals": 10,
            "display_decimals": 5,
            "status": "enabled",
        }
        codes = {
            kraken_id: code
            for kraken_id in balances
            for code, currency in exchange.currencies.items()
            if currency["id"] == kraken_id
        }
        assert codes == {
            "ZUSD": "USD",
            "XXBT": "BTC",
            "XBT.F": "BTC.F",
            "XXBT.P": "BTC.P",
            "ETH2.S": "ETH2.S",
            "ETH2": "ETH2",
            "XETH.F": "ETH.F",
            "DOT.S": "DOT.S",
            "USDC.M": "USDC.M",
            "SOL.B": "SOL.B",
            "USD.M": "USD.M",
        }
        total = exchange.fetch_balance()["total"]
        assert {code: total[code] for code in codes.values()} == {
            codes[kraken_id]: float(amount) for kraken_id, amount in balances.items()
        }


@pytest.mark.parametrize(
    "cid",
    [
        "6d47a5f0-6fd4-4b84-b56e-c23f0f689c20",  # long UUID
        "6d47a5f06fd44b84b56ec23f0f689c20",  # short UUID
        "bg-0123456789abcde",  # free text, 18 characters
    ],
)
def test_a_cl_ord_id_may_be_a_uuid_or_short_text(trader, timed, cid):
    """Kraken's three cl_ord_id formats are accepted."""
    trader.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": cid})
    assert [o["cl_ord_id"] for o in timed.orders()] == [cid]


@pytest.mark.parametrize(
    "cid",
    [
        "bg-0123456789abcdef",  # free text, 19 characters
        "6d47a5f0-6fd4-4b84-b56e-c23f0f689c2z",  # UUID-long, not hex
        "ordre-été",  # not ASCII
    ],
)
def test_any_other_cl_ord_id_is_refused(trader, timed, cid):
    """Anything else is EGeneral:Invalid arguments (ccxt: BadRequest) and places nothing."""
    with pytest.raises(ccxt.BadRequest, match="EGeneral:Invalid arguments"):
        trader.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": cid})
    assert timed.orders() == []


def test_cl_ord_id_and_userref_are_mutually_exclusive(trader, timed):
    """Kraken refuses an order carrying both; userref alone is a number in the payloads."""
    with pytest.raises(ccxt.BadRequest):
        trader.create_order(
            "SOL/USD", "market", "buy", "1", None, {"clientOrderId": "a", "userref": 7}
        )
    trader.create_order("SOL/USD", "market", "buy", "1", None, {"userref": 7})
    (order,) = trader.private_post_closedorders({"userref": 7})["result"]["closed"].values()
    assert order["userref"] == 7
    assert "cl_ord_id" not in order


def test_order_times_are_numbers_and_userref_is_null_beside_a_cl_ord_id(trader, timed, clock):
    """As on the wire: opentm/closetm/starttm/expiretm numbers; userref null (cl_ord_id) or 0."""
    trader.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": "n1"})
    clock.advance(1)
    trader.create_order("SOL/USD", "market", "buy", "1")
    closed = trader.private_post_closedorders()["result"]["closed"]
    without, with_cid = closed.values()  # newest first
    assert (with_cid["userref"], with_cid["cl_ord_id"]) == (None, "n1")
    assert without["userref"] == 0
    assert (with_cid["opentm"], with_cid["closetm"]) == (START, START)
    assert (without["starttm"], without["expiretm"]) == (0, 0)
    assert "reason" in with_cid
    assert trader.fetch_closed_orders()[-1]["timestamp"] == int((START + 1) * 1000)  # ccxt sorts


def test_open_orders_omit_reason_and_cancelling_by_cl_ord_id_records_one(trader, timed):
    """OpenOrders entries carry no reason; a cancel by cl_ord_id closes with 'User requested'."""
    timed.set_fill_market_orders(fill=False)
    trader.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": "c"})
    (listed,) = trader.private_post_openorders()["result"]["open"].values()
    assert "reason" not in listed
    assert "closetm" not in listed
    trader.cancel_order("ignored", None, {"clientOrderId": "c"})
    (order,) = trader.fetch_closed_orders()
    assert (order["status"], order["info"]["reason"]) == ("canceled", "User requested")
    with pytest.raises(ccxt.OrderNotFound):
        trader.cancel_order("ignored", None, {"clientOrderId": "c"})  # no longer open


def test_validate_only_describes_the_order_and_places_nothing(trader, timed):
    """AddOrder validate=true: Kraken checks the request and answers a description, no txid."""
    answer = trader.private_post_addorder(
        {"pair": "SOLUSD", "type": "buy", "ordertype": "market", "volume": "1", "validate": True}
    )
    assert answer == {"error": [], "result": {"descr": {"order": "buy 1.00000000 SOLUSD @ market"}}}
    assert timed.orders() == []


def test_a_bad_delayed_accept_fault_is_refused_when_injected(timed):
    """inject() checks the delay of a delayed_accept fault, so a typo fails in the test."""
    with pytest.raises(ValueError, match="could not convert"):
        timed.inject("delayed_accept:soon", endpoint="AddOrder")
    with pytest.raises(ValueError, match="needs a delay"):
        timed.inject("delayed_accept:-1", endpoint="AddOrder")
    with pytest.raises(ValueError, match="fill_parts"):
        KrakenEmulator(fill_parts=0)


def test_expiretm_takes_a_unix_time_and_refuses_anything_else(trader, timed, clock):
    """expiretm: '+<n>' or a unix time; garbage is EGeneral:Invalid arguments:expiretm."""
    timed.set_fill_market_orders(fill=False)
    trader.create_order("SOL/USD", "market", "buy", "1", None, {"expiretm": str(int(START) + 10)})
    clock.advance(10)
    assert [o["status"] for o in trader.fetch_closed_orders()] == ["expired"]
    for expiretm in ("soon", "-5"):
        with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:expiretm"):
            trader.create_order("SOL/USD", "market", "buy", "1", None, {"expiretm": expiretm})


def test_a_userref_must_be_an_integer(trader, timed):
    """Kraken's userref is a signed integer: text is refused before the engine."""
    order = {"pair": "SOLUSD", "type": "buy", "ordertype": "market", "volume": "1"}
    with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:userref"):
        trader.private_post_addorder({**order, "userref": "abc"})
    assert timed.orders() == []


def test_asset_pairs_can_be_asked_for_by_id_or_altname(trader):
    """AssetPairs ?pair= narrows the answer; an unknown name is EQuery:Unknown asset pair."""
    answer = trader.public_get_assetpairs({"pair": "XBTUSD,SOLUSD"})["result"]
    assert list(answer) == ["XXBTZUSD", "SOLUSD"]
    with pytest.raises(ccxt.ExchangeError, match="Unknown asset pair"):
        trader.public_get_assetpairs({"pair": "DOGEUSD"})


def test_cancels_wait_out_maintenance_and_a_closed_order_cancels_nothing(trader, timed):
    """CancelOrder: refused while the pair is in maintenance; a filled order is unknown to it."""
    placed = trader.create_order("SOL/USD", "market", "buy", "1")
    with pytest.raises(ccxt.InvalidOrder, match="EOrder:Unknown order"):  # ccxt's mapping
        trader.private_post_cancelorder({"txid": placed["id"]})
    timed.set_fill_market_orders(fill=False)
    resting = trader.create_order("SOL/USD", "market", "buy", "1")
    timed.set_pair_status("SOLUSD", "maintenance")
    with pytest.raises(ccxt.ExchangeNotAvailable, match="EService:Unavailable"):
        trader.cancel_order(resting["id"])
    timed.set_pair_status("SOLUSD", "online")
    trader.cancel_order(resting["id"])
    assert trader.fetch_order(resting["id"])["status"] == "canceled"


def test_forcing_a_closing_status_stamps_the_close_time(trader, timed, clock):
    """set_order_status on a resting order: closed now, at the emulator's time."""
    timed.set_fill_market_orders(fill=False)
    placed = trader.create_order("SOL/USD", "market", "buy", "1", None, {"clientOrderId": "f"})
    clock.advance(3)
    timed.set_order_status(placed["id"], "canceled")
    order = trader.fetch_order(placed["id"])
    assert (order["status"], order["lastUpdateTimestamp"]) == ("canceled", int((START + 3) * 1000))


def test_each_pairs_tick_size_is_one_unit_of_its_price_decimals(trader, timed):
    """AssetPairs: tick_size agrees with pair_decimals (ccxt rounds prices to the latter)."""
    pairs = trader.public_get_assetpairs()["result"]
    assert {k: (p["pair_decimals"], p["tick_size"]) for k, p in pairs.items()} == {
        "XXBTZUSD": (1, "0.1"),
        "XETHZUSD": (2, "0.01"),
        "SOLUSD": (2, "0.01"),
    }
    placed = trader.create_order("SOL/USD", "limit", "buy", 1, 149.95)
    assert trader.fetch_order(placed["id"])["price"] == 149.95
    with pytest.raises(ccxt.ExchangeError, match="EOrder:Tick size check failed"):
        trader.private_post_addorder(
            {
                "pair": "SOLUSD",
                "type": "buy",
                "ordertype": "limit",
                "price": "149.955",
                "volume": "1",
            }
        )


def test_the_dead_man_switch_starts_disarmed(timed):
    """Until CancelAllOrdersAfter arms it, the emulator's switch has no trigger and never fired."""
    switch = timed.dead_man_switch
    assert (switch.armed, switch.trigger_at, switch.fired_at, switch.cancelled) == (
        False,
        None,
        (),
        0,
    )
