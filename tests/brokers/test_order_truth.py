"""The truth about an order (issue 11): each way brokerguard used to fail open against Kraken.

Every test drives the real ``ccxt.kraken`` client against the Kraken emulator on 127.0.0.1
(whose clock is the test's FakeClock, so "seconds later" costs nothing) and fails on the code
before the order lifecycle: a resend after a timeout, a duplicate-id answer read as a
rejection, a timeout string not retried, an empty balance believed, suffixed holdings not
counted, tickers never stale, a nonce re-sync that a writer 1.5 s ahead defeats.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal

import ccxt
import pytest

from brokerguard import (
    OrderStatus,
    OrderUnconfirmedError,
    Position,
    PositionCapEnforcer,
    TradingGate,
)
from brokerguard.brokers.ccxt import CcxtBroker, NonceSource
from brokerguard.errors import BrokerError, InvalidBrokerData, PositionsImplausibleError
from brokerguard.models import OrderRequest, Side
from brokerguard.risk import ORDER_UNRESOLVED, POSITIONS_IMPLAUSIBLE
from brokerguard.risk.valuation import Valuator
from brokerguard.sim.kraken import DEFAULT_API_KEY, DEFAULT_API_SECRET, running_kraken
from brokerguard.store import open_store


def client(emulator, *, nonce=None) -> ccxt.kraken:
    exchange = ccxt.kraken(
        {
            "apiKey": DEFAULT_API_KEY,
            "secret": DEFAULT_API_SECRET,
            "enableRateLimit": False,
            "timeout": 2000,
        }
    )
    exchange.urls["api"] = {"public": emulator.url, "private": emulator.url}
    if nonce is not None:
        exchange.nonce = nonce
    return exchange


@pytest.fixture
def kraken(clock):
    balances = {"ZUSD": "100000", "XXBT": "0.5", "XETH": "2", "SOL": "10"}
    with running_kraken(balances=balances, time_source=clock.time) as emulator:
        yield emulator


@pytest.fixture
def broker(kraken, clock) -> CcxtBroker:
    return CcxtBroker(client(kraken), clock=clock, nonce_source=NonceSource(clock))


def executed(kraken, cid: str) -> int:
    return sum(1 for o in kraken.orders() if o.get("cl_ord_id") == cid)


# --------------------------------------------------------------------------- 1. no resend


@pytest.mark.parametrize(
    "answer", ["EService:Unavailable", "EService:Busy", "EService:Deadline elapsed", "http:504"]
)
def test_an_order_kraken_accepts_after_a_failed_answer_executes_once(broker, kraken, clock, answer):
    """AddOrder fails, Kraken executes it 1.5 s later: unresolved, never resent, then adopted."""
    broker.get_positions()
    kraken.inject(f"delayed_accept:1.5:{answer}", endpoint="AddOrder")

    with pytest.raises(OrderUnconfirmedError) as info:
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="bg-late-1")
    # A caller that retries at once gets the same answer, and nothing is sent.
    with pytest.raises(OrderUnconfirmedError):
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="bg-late-1")
    assert kraken.count("AddOrder") == 1
    assert info.value.deadline is not None

    clock.advance(2.0)  # Kraken accepts and executes it now
    order = broker.place_market_order("SOL/USD", "buy", "1", client_order_id="bg-late-1")

    assert order.status is OrderStatus.FILLED
    assert kraken.count("AddOrder") == 1
    assert executed(kraken, "bg-late-1") == 1
    assert broker.unresolved_orders() == []


def test_the_order_carries_a_kraken_deadline_and_absence_after_it_is_proof(broker, kraken, clock):
    """AddOrder gets deadline=now+10s; only a lookup after it (+ margin) allows one resend."""
    broker.get_positions()
    kraken.inject("http:503", endpoint="AddOrder")
    with pytest.raises(OrderUnconfirmedError) as info:
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="bg-lost-1")
    add = next(r for r in kraken.requests if r.endpoint == "AddOrder")
    assert add.params["deadline"].endswith("Z")
    clock.advance(9.0)  # before deadline + margin: absence still proves nothing
    with pytest.raises(OrderUnconfirmedError):
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="bg-lost-1")
    assert kraken.count("AddOrder") == 1
    clock.advance((info.value.deadline or 0) - clock.time())
    broker.place_market_order("SOL/USD", "buy", "1", client_order_id="bg-lost-1")
    assert kraken.count("AddOrder") == 2
    assert executed(kraken, "bg-lost-1") == 1


def test_the_gate_keeps_the_slot_and_refuses_the_symbol_of_an_unresolved_entry(clock):
    """Cap 3, 2 held: an entry that times out keeps its slot; its symbol is not re-entered."""
    balances = {"ZUSD": "100000", "XXBT": "0.5", "XETH": "2"}
    with running_kraken(balances=balances, time_source=clock.time) as emulator:
        broker = CcxtBroker(client(emulator), clock=clock, nonce_source=NonceSource(clock))
        gate = TradingGate(broker, 3, store=open_store("sqlite://", clock=clock))
        emulator.inject("delayed_accept:3:EService:Unavailable", endpoint="AddOrder")
        with pytest.raises(OrderUnconfirmedError), gate.reserve_entry("SOL/USD"):
            broker.place_market_order("SOL/USD", "buy", "1", client_order_id="bg-entry-1")

        assert gate.check_entry("SOL/USD").code == ORDER_UNRESOLVED
        assert gate.check_entry("LTC/USD").code == "POSITION_CAP_REACHED"
        clock.advance(4)  # accepted and filled: found, and it holds the slot as a position
        assert broker.resolve_unresolved() == {"bg-entry-1": "filled"}
        assert gate.check_entry("LTC/USD").code == "POSITION_CAP_REACHED"
        assert emulator.count("AddOrder") == 1


def test_restart_reconciliation_does_not_resell_an_intent_kraken_accepts_late(kraken, clock):
    """Journal says intent, Kraken has it queued: not found is not proof; no second sell."""
    store = open_store("sqlite://", clock=clock)
    first = CcxtBroker(client(kraken), clock=clock, nonce_source=NonceSource(clock))
    first.get_positions()
    request = OrderRequest("SOL/USD", Side.SELL, "10", "bg-liq-1", clock.time() + 10)
    store.record_order_intent(first.account_id, request, purpose="cap_liquidation")
    kraken.inject("delayed_accept:8:EService:Busy", endpoint="AddOrder")
    with pytest.raises(OrderUnconfirmedError):
        first.place_market_order(
            "SOL/USD", "sell", "10", client_order_id="bg-liq-1", deadline=request.deadline
        )
    # The process dies here. A new one (another broker object, same journal) enforces a cap of
    # 2 over BTC, ETH and SOL: SOL's sale may have happened, so nothing else is sold.
    second = CcxtBroker(client(kraken), clock=clock, nonce_source=NonceSource(clock))
    enforcer = PositionCapEnforcer(second, 2, store=store, settle_timeout=1.0)

    ok, result = enforcer.enforce_cap()

    assert not ok
    assert result["status"] == "unverified"
    assert not result["trading_halted"]
    assert result["orders"] == []
    assert {e.client_order_id: e.status for e in store.journal(second.account_id)} == {
        "bg-liq-1": "unresolved"
    }
    clock.advance(8.0)
    ok, result = enforcer.enforce_cap()
    assert ok, result["reason"]
    assert executed(kraken, "bg-liq-1") == 1
    assert kraken.count("AddOrder") == 1
    assert store.journal(second.account_id)[0].status == "filled"


# --------------------------------------------------------------------------- 2. duplicate id


def test_a_duplicate_order_answer_adopts_the_live_order(kraken, clock):
    """EOrder:Duplicate order is evidence the order exists: it is looked up and returned."""
    kraken.set_fill_market_orders(fill=False)
    nonces = NonceSource(clock)  # the key's nonces are shared, as a fleet's are
    first = CcxtBroker(client(kraken), clock=clock, nonce_source=nonces)
    placed = first.place_market_order("ETH/USD", "buy", "1", client_order_id="bg-dup-1")
    # Another broker object (no memory of the first send) sends the same id.
    second = CcxtBroker(client(kraken), clock=clock, nonce_source=nonces)

    adopted = second.place_market_order("ETH/USD", "buy", "1", client_order_id="bg-dup-1")

    assert adopted.broker_order_id == placed.broker_order_id
    assert adopted.status is OrderStatus.OPEN
    assert kraken.refusals() == {"EOrder:Duplicate order": 1}
    assert executed(kraken, "bg-dup-1") == 1


# --------------------------------------------------------------------------- 3. deadline elapsed


def test_deadline_elapsed_on_a_read_is_transient_and_retried(broker, kraken):
    """EService:Deadline elapsed is Kraken's request timeout: a read is retried, not failed."""
    kraken.inject("EService:Deadline elapsed", endpoint="BalanceEx")
    assert Position("BTC/USD", "0.5") in broker.get_positions()
    assert kraken.count("BalanceEx") == 2


# --------------------------------------------------------------------------- 4. empty reads


def test_an_empty_successful_balance_is_not_read_as_holding_nothing(broker, kraken, clock):
    """An empty but successful balance after real holdings: unverified, and the gate refuses."""
    store = open_store("sqlite://", clock=clock)
    gate = TradingGate(broker, 3, store=store, max_position_age=0.001)
    assert len(broker.get_positions()) == 3
    kraken.inject("empty_result", endpoint="BalanceEx", times=50)

    with pytest.raises(InvalidBrokerData):
        broker.fetch_positions()
    _, result = PositionCapEnforcer(broker, 3, store=store).enforce_cap()
    clock.advance(1)
    decision = gate.check_entry("LTC/USD")

    assert result["status"] == "unverified"
    assert result["orders"] == []
    assert not decision.allowed
    assert decision.code == "POSITIONS_UNKNOWN"


def test_a_successful_read_that_loses_positions_is_suspect_until_confirmed(broker, kraken, clock):
    """BTC vanishes with no sale of ours: refused however long the reads agree, until confirmed.

    No count of agreeing reads tells a glitch from a sale; an operator can.
    """
    store = open_store("sqlite://", clock=clock)
    gate = TradingGate(broker, 4, store=store, max_position_age=0.001)
    assert len(broker.get_positions()) == 3
    kraken.inject("omit:XXBT", endpoint="BalanceEx", times=1000)
    clock.advance(1)

    decision = gate.check_entry("LTC/USD")
    _, result = PositionCapEnforcer(broker, 4, store=store).enforce_cap()

    assert decision.code == POSITIONS_IMPLAUSIBLE
    assert result["status"] == "unverified"
    assert "implausible" in result["reason"]
    assert broker.data_quality()["positions.implausible"] >= 2
    # An hour of agreeing reads proves nothing: a glitch can last as long.
    for _ in range(120):
        clock.advance(30)
        with pytest.raises(PositionsImplausibleError, match="an operator"):
            broker.get_positions()
    assert gate.check_entry("LTC/USD").code == POSITIONS_IMPLAUSIBLE
    broker.accept_position_loss(["btc/usd"])
    assert {p.symbol for p in broker.get_positions()} == {"ETH/USD", "SOL/USD"}
    assert gate.check_entry("LTC/USD").allowed


def test_a_position_that_comes_back_clears_the_suspicion(broker, kraken, clock):
    """One thin read, then the full one: the suspicion was a glitch and is dropped."""
    broker.get_positions()
    kraken.inject("omit:XETH", endpoint="BalanceEx")
    with pytest.raises(PositionsImplausibleError):
        broker.get_positions()
    assert len(broker.get_positions()) == 3
    assert broker.position_suspicion() is None


def test_a_position_we_sold_may_disappear(broker, kraken):
    """A sell of ours explains the loss of its symbol: believed at once."""
    broker.get_positions()
    broker.place_market_order("SOL/USD", "sell", "10")
    assert {p.symbol for p in broker.get_positions()} == {"BTC/USD", "ETH/USD"}


# --------------------------------------------------------------------------- 5. suffixed assets


def test_suffixed_kraken_holdings_count_toward_the_cap(clock):
    """XBT.F (Earn), DOT.S (staked), ETH2.S: exposure in their base asset, counted by default."""
    balances = {"ZUSD": "1000", "XXBT": "0.1", "XBT.F": "0.2", "DOT.S": "30", "ETH2.S": "1"}
    with running_kraken(balances=balances, time_source=clock.time) as emulator:
        broker = CcxtBroker(client(emulator), clock=clock, nonce_source=NonceSource(clock))
        positions = {p.symbol: p.quantity for p in broker.get_positions()}
        opted_out = CcxtBroker(
            client(emulator),
            clock=clock,
            nonce_source=NonceSource(clock),
            ignore_assets=["DOT.S"],
        )
        assert {p.symbol for p in opted_out.get_positions()} == {"BTC/USD", "ETH/USD"}
    assert positions == {"BTC/USD": Decimal("0.3"), "DOT/USD": 30, "ETH/USD": 1}


# --------------------------------------------------------------------------- 6. stale quotes


def test_a_kraken_ticker_has_no_time_of_its_own_and_the_quote_says_so(broker):
    """Kraken's REST Ticker carries no timestamp: stamped on receipt, and marked as such."""
    check = broker.check_prices(["BTC/USD"])
    assert check.quotes["BTC/USD"].stamped_on_receipt


def test_a_ticker_timestamp_makes_an_old_quote_stale(clock):
    """A venue whose tickers carry a time: a price 5 minutes old is stale, never used."""
    exchange = ccxt.binance({"enableRateLimit": False})
    now_ms = int(clock.time() * 1000)
    recorded = [  # binance /api/v3/ticker/24hr, the fields ccxt reads for a ticker
        {"symbol": "BTCUSDT", "lastPrice": "65000.00", "closeTime": now_ms - 300_000},
        {"symbol": "ETHUSDT", "lastPrice": "3200.00", "closeTime": now_ms - 1_000},
    ]
    exchange.markets = {
        "BTC/USDT": {"id": "BTCUSDT", "symbol": "BTC/USDT", "spot": True},
        "ETH/USDT": {"id": "ETHUSDT", "symbol": "ETH/USDT", "spot": True},
    }
    exchange.markets_by_id = {m["id"]: [m] for m in exchange.markets.values()}
    exchange.fetch_tickers = lambda symbols=None, params=None: exchange.parse_tickers(recorded)
    broker = CcxtBroker(exchange, clock=clock, quote_currency="USDT")

    report = Valuator(broker, max_quote_age=60).value(
        [Position("BTC/USDT", "1"), Position("ETH/USDT", "1")]
    )

    assert report.unvalued_symbols == ["BTC/USDT"]
    assert [v.symbol for v in report.valued] == ["ETH/USDT"]


# --------------------------------------------------------------------------- 7. nonce re-sync


@pytest.mark.parametrize("ahead_s", [1.5, 10.0])
def test_the_nonce_resync_clears_another_writer_ahead_and_stays_ahead(kraken, clock, ahead_s):
    """Another host on the key runs `ahead_s` ahead: we re-sync past it and stay past it."""
    other_last = [0]

    def other_nonce() -> int:
        other_last[0] = max(other_last[0] + 1, int((clock.time() + ahead_s) * 1000))
        return other_last[0]

    other = client(kraken, nonce=other_nonce)
    source = NonceSource(clock)
    broker = CcxtBroker(client(kraken), clock=clock, nonce_source=source)
    other.fetch_balance()
    for _ in range(5):
        broker.get_positions()  # every call of ours goes through
        clock.advance(1.0)
        with contextlib.suppress(ccxt.InvalidNonce):  # the other writer is now behind us
            other.fetch_balance()
    assert source.collisions == {1.5: 2, 10.0: 4}[ahead_s]  # jumps of 1, 2, 4, 8 s
    assert source.offset_ms > ahead_s * 1000


# --------------------------------------------------------------------------- unknown strings


def test_an_unknown_kraken_error_on_a_write_leaves_the_order_unresolved(broker, kraken):
    """A string nobody classified may hide an accepted order: looked up, never resent."""
    broker.get_positions()
    kraken.inject("accept_then:EOrder:Something entirely new", endpoint="AddOrder")
    order = broker.place_market_order("SOL/USD", "buy", "1", client_order_id="bg-new-1")
    assert order.status is OrderStatus.FILLED  # the lookup found it: adopted
    kraken.inject("EGeneral:Another new thing", endpoint="AddOrder")
    with pytest.raises(OrderUnconfirmedError):
        broker.place_market_order("SOL/USD", "buy", "1", client_order_id="bg-new-2")
    assert kraken.count("AddOrder") == 2


def test_an_unknown_kraken_error_on_a_read_is_a_counted_failure_not_retried(broker, kraken):
    """Reads: an unknown string counts against the breaker and is raised, never read as empty."""
    kraken.inject("EGeneral:Something entirely new", endpoint="BalanceEx")
    with pytest.raises(BrokerError) as info:
        broker.get_positions()
    assert type(info.value) is BrokerError
    assert kraken.count("BalanceEx") == 1
    assert broker.read_breaker.get_status()["failure_count"] == 1


def test_a_sale_on_the_website_is_believed_from_kraken_s_trade_history(broker, kraken, clock):
    """BTC sold outside brokerguard: TradesHistory shows the sell, so the read is believed."""
    assert len(broker.get_positions()) == 3
    clock.advance(5)
    website = client(kraken, nonce=broker._nonce.next)  # the owner, on the same key
    website.load_markets()
    btc = next(p for p in broker.get_positions() if p.symbol == "BTC/USD")
    clock.advance(3)  # a sale during (or within 2 s of) the last read may be in it: no evidence
    website.create_order("BTC/USD", "market", "sell", str(btc.quantity))
    clock.advance(5)
    assert {p.symbol for p in broker.get_positions()} == {"ETH/USD", "SOL/USD"}
    assert broker.position_suspicion() is None


def test_a_partial_sale_on_the_website_does_not_explain_a_vanished_position(broker, kraken, clock):
    """Half of BTC sold, then a balance that omits BTC: the other half is unexplained."""
    broker.get_positions()
    clock.advance(5)
    website = client(kraken, nonce=broker._nonce.next)
    website.load_markets()
    btc = next(p for p in broker.get_positions() if p.symbol == "BTC/USD")
    clock.advance(3)
    website.create_order("BTC/USD", "market", "sell", str(btc.quantity / 2))
    clock.advance(5)
    kraken.inject("omit:XXBT", endpoint="BalanceEx")
    with pytest.raises(PositionsImplausibleError, match="BTC/USD"):
        broker.get_positions()
