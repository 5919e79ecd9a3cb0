"""Adversarial tests: what may explain a position that vanished from a successful read.

Promise: a read that loses positions is believed only on evidence that could not be otherwise:
a sell of ours that sold it, sells in the trade history since it was last seen held that leave
at most dust, or an operator's confirmation. Believed holdings survive a restart.

Driven through the paper broker with a FakeClock. A glitching venue is a PaperBroker subclass
whose position reads omit chosen symbols (the sale did not happen: the venue still holds them);
its trade history can run on a clock ahead of or behind ours. A restart is a new broker object
on the same store; the venue's holdings are given again, as a real venue would keep them.

Account: BTC 1, ETH 1, SOL 10 (cap 3 where a gate is used); DOGE is one too many.

Passing tests pin a defence; a test marked xfail(strict) asserts the promise against a gap that
remains, and its reason names the code.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import suppress
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokerguard import PositionCapEnforcer, TradingGate, clear_registry
from brokerguard.brokers.paper import FaultPlan, PaperBroker
from brokerguard.cli import main
from brokerguard.errors import PositionsImplausibleError, StoreUnavailableError
from brokerguard.models import Fill
from brokerguard.risk.gate import POSITION_CAP_REACHED, POSITIONS_IMPLAUSIBLE, EntryDenied
from brokerguard.service import GuardService, embedded_default_config
from brokerguard.store import open_store
from brokerguard.testing import FakeClock

PRICES = dict.fromkeys(("BTC/USD", "ETH/USD", "SOL/USD", "DOGE/USD", "ADA/USD"), "100")
HELD = {"BTC/USD": "1", "ETH/USD": "1", "SOL/USD": "10"}
ALL = set(HELD)
CAP = 3


class Venue(PaperBroker):
    """A paper venue whose position reads can omit symbols and whose clock can be skewed."""

    def __init__(self, *args, skew: float = 0.0, **kwargs) -> None:
        kwargs.setdefault("prices", PRICES)
        kwargs.setdefault("positions", HELD)
        kwargs.setdefault("volatility", 0)
        kwargs.setdefault("settle_delay", 0)
        super().__init__(*args, **kwargs)
        self.hide: set[str] = set()
        self.hide_after = 0  # the first reads are true: hide applies from read hide_after + 1
        self.reads = 0
        self.skew = skew  # seconds the venue's clock (its trade timestamps) runs ahead of ours

    def fetch_positions(self):
        self.reads += 1
        hidden = self.hide if self.reads > self.hide_after else set()
        return [p for p in super().fetch_positions() if p.symbol not in hidden]

    def fetch_fills(self, since):
        fills = super().fetch_fills(since - self.skew)
        return [
            Fill(f.symbol, f.side, f.quantity, f.timestamp + self.skew, f.order_id) for f in fills
        ]

    def held(self) -> set[str]:
        return {s for s, q in self.true_positions().items() if q > 0}


class MemoryHoldings:
    """A HoldingsStore in memory that can fail on command (the store is down)."""

    def __init__(self) -> None:
        self.saved: dict[str, tuple[dict[str, Decimal], float]] = {}
        self.fail_reads = 0
        self.fail_saves = 0
        self.saves = 0
        self.hold_next_save: threading.Event | None = None  # block one save until set
        self.holding = threading.Event()

    def save_holdings(self, account_id: str, holdings: Mapping[str, Decimal], seen_at: float):
        gate, self.hold_next_save = self.hold_next_save, None
        if gate is not None:
            self.holding.set()
            assert gate.wait(5), "the held save was never released"
        if self.fail_saves:
            self.fail_saves -= 1
            raise StoreUnavailableError("store down (save_holdings)")
        self.saves += 1
        self.saved[account_id] = (dict(holdings), seen_at)

    def holdings(self, account_id: str):
        if self.fail_reads:
            self.fail_reads -= 1
            raise StoreUnavailableError("store down (holdings)")
        found = self.saved.get(account_id)
        return None if found is None else (dict(found[0]), found[1])


@pytest.fixture
def venue(clock) -> Venue:
    return Venue("venue", clock=clock)


def symbols(positions) -> set[str]:
    return {p.symbol for p in positions}


# --------------------------------------------------------------------------- sells of ours


@pytest.mark.parametrize("sell", ["resting_limit", "ioc_unfilled", "market_unsettled"])
def test_a_sell_that_sold_nothing_does_not_explain_a_vanished_position(venue, clock, sell):
    """Only a sell that filled explains a loss; a glitch hiding the unsold SOL is suspect."""
    assert symbols(venue.get_positions()) == ALL
    if sell == "market_unsettled":
        venue.set_fault_plan(FaultPlan(unsettled_sells=True))
        venue.place_market_order("SOL/USD", "sell", "10")
    else:
        tif = {"time_in_force": "IOC"} if sell == "ioc_unfilled" else {}
        venue.place_order("SOL/USD", "sell", "10", order_type="limit", price="500", **tif)
    clock.advance(1)
    assert venue.true_positions()["SOL/USD"] == Decimal(10)  # nothing was sold
    venue.hide = {"SOL/USD"}
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


def test_a_sell_of_ours_does_not_explain_a_glitch_after_the_symbol_was_bought_back(venue, clock):
    """Sold, bought back and seen held: the old sell no longer explains SOL vanishing."""
    gate = TradingGate(venue, CAP, store=open_store("sqlite://", clock=clock))
    assert gate.check_entry("DOGE/USD").code == POSITION_CAP_REACHED
    venue.place_market_order("SOL/USD", "sell", "10")
    clock.advance(1)
    assert symbols(venue.get_positions()) == {"BTC/USD", "ETH/USD"}  # explained: believed
    with gate.reserve_entry("SOL/USD"):
        venue.place_market_order("SOL/USD", "buy", "10")
    clock.advance(31)
    assert gate.check_entry("DOGE/USD").code == POSITION_CAP_REACHED  # a read shows SOL again
    venue.hide = {"SOL/USD"}  # from now on every read glitches
    for _ in range(3):
        clock.advance(31)
        with suppress(EntryDenied), gate.reserve_entry("DOGE/USD"):
            venue.place_market_order("DOGE/USD", "buy", "1")
    assert len(venue.held()) <= CAP, venue.held()


def test_a_liquidation_the_venue_cancelled_does_not_let_a_glitch_read_as_compliant(clock):
    """The switch cancels the enforcer's unsettled sell; a thin re-read is not compliance."""
    venue = Venue(
        "dms-glitch",
        clock=clock,
        settle_delay=1.0,
        positions={"BTC/USD": "1", "ETH/USD": "2", "SOL/USD": "3", "DOGE/USD": "4"},
    )
    venue.get_positions()
    venue.hide, venue.hide_after = {"BTC/USD"}, 2  # the enforcer's verifying re-read glitches
    venue.arm_dead_man_switch(0.5)
    enforcer = PositionCapEnforcer(venue, CAP, store=open_store("sqlite://", clock=clock))
    ok, result = enforcer.enforce_cap()
    assert venue.switch_fired == 1
    assert "BTC/USD" in result["liquidated"]
    assert len(venue.held()) == 4
    assert not (ok and result["status"] == "compliant"), result


def test_a_glitch_with_no_sell_at_all_keeps_entries_refused(venue, clock):
    """The control: the same glitch with no sell of ours is suspect, and entries stay refused."""
    gate = TradingGate(venue, CAP, store=open_store("sqlite://", clock=clock))
    assert gate.check_entry("DOGE/USD").code == POSITION_CAP_REACHED
    venue.hide = {"SOL/USD"}
    for _ in range(5):
        clock.advance(31)
        assert gate.check_entry("DOGE/USD").code == POSITIONS_IMPLAUSIBLE


# --------------------------------------------------------------------------- the trade history


def test_a_hand_sale_in_the_trade_history_explains_the_loss(venue, clock):
    """The positive control: SOL sold whole by hand after it was seen held is believed gone."""
    venue.get_positions()
    clock.advance(5)
    venue.sell_by_hand("SOL/USD")
    clock.advance(5)
    assert symbols(venue.get_positions()) == {"BTC/USD", "ETH/USD"}


def test_a_hand_sale_then_a_rebuy_is_not_explained_by_the_old_history(venue, clock):
    """Sold by hand, bought back, seen held: the old sale does not explain a later glitch."""
    venue.get_positions()
    clock.advance(5)
    venue.sell_by_hand("SOL/USD")
    clock.advance(5)
    venue.get_positions()  # believed: the history shows the sale
    venue.place_market_order("SOL/USD", "buy", "10")
    clock.advance(5)
    assert symbols(venue.get_positions()) == ALL
    clock.advance(5)
    venue.hide = {"SOL/USD"}
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


def test_a_partial_hand_sale_does_not_explain_the_whole_position(venue, clock):
    """Half sold by hand after the last read: the other half cannot vanish on that evidence."""
    venue.get_positions()
    clock.advance(5)
    venue.sell_by_hand("SOL/USD", "5")
    clock.advance(5)
    venue.hide = {"SOL/USD"}
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


@pytest.mark.parametrize("timing", ["same_instant", "venue_clock_2s_ahead"])
def test_a_sale_the_read_already_reflects_is_not_counted_again(clock, timing):
    """The history's sale is the one the last read already showed: it explains nothing more."""
    venue = Venue("skew", clock=clock, skew=2.0 if timing == "venue_clock_2s_ahead" else 0.0)
    venue.get_positions()
    clock.advance(10)
    venue.sell_by_hand("SOL/USD", "5")
    if timing == "venue_clock_2s_ahead":
        clock.advance(1)  # the read comes a second later on our clock
    shown = {p.symbol: p.quantity for p in venue.get_positions()}
    assert shown["SOL/USD"] == Decimal(5)  # the read reflects the sale
    clock.advance(10)
    venue.hide = {"SOL/USD"}
    assert venue.true_positions()["SOL/USD"] == Decimal(5)
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


def test_a_venue_clock_behind_ours_makes_a_real_sale_wait_for_an_operator(clock):
    """Fail closed: a true sale stamped before the last read (venue 30 s behind) explains nothing.

    Entries stay refused until an operator confirms; the confirmation is then believed.
    """
    venue = Venue("behind", clock=clock, skew=-30.0)
    venue.get_positions()
    clock.advance(10)
    venue.sell_by_hand("SOL/USD")
    clock.advance(10)
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()
    venue.accept_position_loss(["sol/usd"])
    assert symbols(venue.get_positions()) == {"BTC/USD", "ETH/USD"}


def test_an_unreadable_trade_history_explains_nothing(venue, clock):
    """The history cannot be read: the loss stays unexplained (absence of a sell is no proof)."""
    venue.get_positions()
    clock.advance(5)
    venue.sell_by_hand("SOL/USD")
    venue.set_fault_plan(FaultPlan(error_rate={"fetch_fills": 1.0}))
    clock.advance(5)
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


def test_a_history_that_only_shows_the_sale_cannot_hide_a_second_symbol(venue, clock):
    """SOL sold by hand explains SOL, not ETH vanishing in the same read."""
    venue.get_positions()
    clock.advance(5)
    venue.sell_by_hand("SOL/USD")
    clock.advance(5)
    venue.hide = {"ETH/USD"}
    with pytest.raises(PositionsImplausibleError) as caught:
        venue.get_positions()
    assert caught.value.missing == ("ETH/USD",)


# --------------------------------------------------------------------------- operators


def test_a_confirmed_symbol_that_comes_back_and_vanishes_again_is_suspect(venue, clock):
    """A confirmation lasts until the symbol is seen held again; the next loss needs new proof."""
    venue.get_positions()
    venue.sell_by_hand("SOL/USD")
    venue.set_fault_plan(FaultPlan(error_rate={"fetch_fills": 1.0}))  # no history to read
    clock.advance(5)
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()
    venue.accept_position_loss(["SOL/USD"])
    assert symbols(venue.get_positions()) == {"BTC/USD", "ETH/USD"}
    venue.place_market_order("SOL/USD", "buy", "3")
    clock.advance(5)
    assert symbols(venue.get_positions()) == ALL
    venue.hide = {"SOL/USD"}
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


def test_a_confirmation_given_while_the_symbol_is_still_shown_is_void(venue, clock):
    """Confirmed gone, but the next read shows it: the confirmation is spent, not kept armed."""
    venue.get_positions()
    venue.accept_position_loss(["SOL/USD"])  # a mistaken or early confirmation
    clock.advance(5)
    assert symbols(venue.get_positions()) == ALL
    venue.hide = {"SOL/USD"}
    clock.advance(5)
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


def test_a_confirmation_from_before_a_restart_is_not_replayed(tmp_path):
    """An operator's old confirmation in the audit log does not explain a glitch after restart."""
    clock = FakeClock(start=1_795_000_000.0)
    config = embedded_default_config(tmp_path)
    first = GuardService(config, clock=clock)
    try:
        broker = first.accounts["paper-main"].broker
        broker.set_fault_plan(FaultPlan())
        for symbol in ("BTC/USD", "ETH/USD"):
            broker.place_market_order(symbol, "buy", "0.01")
        clock.advance(5)
        first.accounts["paper-main"].gate.check_entry("SOL/USD")  # believed and persisted
        first.confirm_positions("paper-main", ["BTC/USD", "ETH/USD"], "alice", "sold by hand")
    finally:
        first.close()
    clock.advance(60)
    second = GuardService(config, clock=clock)
    try:
        broker = second.accounts["paper-main"].broker
        broker.set_fault_plan(FaultPlan(empty_positions_rate=1.0))
        second.watch_operator_actions()
        with pytest.raises(PositionsImplausibleError):
            broker.get_positions()
    finally:
        second.close()


def test_a_cli_confirmation_written_while_the_service_was_down_is_applied(tmp_path, capsys):
    """The operator confirms during a restart: the restarted service honours it."""
    clock = FakeClock(start=1_795_000_000.0)
    config = embedded_default_config(tmp_path)
    first = GuardService(config, clock=clock)
    try:
        broker = first.accounts["paper-main"].broker
        broker.set_fault_plan(FaultPlan())
        for symbol in ("BTC/USD", "ETH/USD"):
            broker.place_market_order(symbol, "buy", "0.01")
        clock.advance(5)
        held = sorted(symbols(broker.get_positions()))
        first.accounts["paper-main"].gate.check_entry("SOL/USD")
    finally:
        first.close()
    who = ["--operator", "bob", "--reason", "sold by hand", "--data-dir", str(tmp_path)]
    code = main(["confirm-positions", "paper-main", *(f"--symbol={s}" for s in held), *who])
    assert code == 0
    capsys.readouterr()
    clock.advance(60)
    second = GuardService(config, clock=clock)
    try:
        broker = second.accounts["paper-main"].broker
        broker.set_fault_plan(FaultPlan(empty_positions_rate=1.0))
        second.watch_operator_actions()
        assert broker.get_positions() == []
    finally:
        second.close()


# --------------------------------------------------------------------------- believed holdings


def run_once(clock, holdings: MemoryHoldings, name: str = "persist") -> Venue:
    """A first run: SOL, BTC, ETH believed held and saved."""
    venue = Venue(name, clock=clock)
    venue.keep_holdings_in(holdings)
    assert symbols(venue.get_positions()) == ALL
    return venue


def restart(clock, holdings: MemoryHoldings, name: str = "persist", **kwargs) -> Venue:
    """A new process on the same venue (same holdings), during a glitch that hides SOL."""
    venue = Venue(name, clock=clock, **kwargs)
    venue.hide = {"SOL/USD"}
    return venue


def test_a_restart_judges_its_first_read_against_the_saved_holdings(clock):
    """The baseline: the stored holdings make a thin first read after a restart suspect."""
    holdings = MemoryHoldings()
    run_once(clock, holdings)
    clock.advance(60)
    venue = restart(clock, holdings)
    venue.keep_holdings_in(holdings)
    with pytest.raises(PositionsImplausibleError):
        venue.get_positions()


def test_a_store_that_cannot_read_the_holdings_at_restart_frees_no_slot(clock):
    """Unknown prior holdings are not 'none': entries wait until they can be read."""
    holdings = MemoryHoldings()
    run_once(clock, holdings)
    clock.advance(60)
    venue = restart(clock, holdings)
    holdings.fail_reads = 1  # the store blips once as the process starts
    venue.keep_holdings_in(holdings)
    gate = TradingGate(venue, CAP, store=open_store("sqlite://", clock=clock))
    decision = gate.check_entry("DOGE/USD")
    assert not decision.allowed, decision.reason


def test_a_read_made_before_the_store_is_attached_is_still_judged_against_it(clock):
    """The stored holdings judge the first read of the process, whenever the store is attached."""
    holdings = MemoryHoldings()
    run_once(clock, holdings)
    clock.advance(60)
    venue = restart(clock, holdings)
    with suppress(PositionsImplausibleError):
        venue.get_positions()  # the bot logs its holdings at startup
    venue.keep_holdings_in(holdings)
    gate = TradingGate(venue, CAP, store=open_store("sqlite://", clock=clock))
    decision = gate.check_entry("DOGE/USD")
    assert not decision.allowed, decision.reason


def test_a_failed_save_is_retried_by_the_next_believed_read(clock):
    """The store refuses one save: the next believed read saves, and a restart is judged by it."""
    holdings = MemoryHoldings()
    holdings.fail_saves = 1
    venue = run_once(clock, holdings)
    assert holdings.saved == {}
    clock.advance(5)
    venue.get_positions()
    assert set(holdings.saved[venue.account_id][0]) == ALL
    clock.advance(60)
    second = restart(clock, holdings)
    second.keep_holdings_in(holdings)
    with pytest.raises(PositionsImplausibleError):
        second.get_positions()


# Closed: a read finding a save under way leaves its holdings to that saver (newest wins) and
# returns at once; before, it waited behind the slow save (or, earlier, raced it).
def test_an_older_reads_slow_save_does_not_overwrite_a_newer_one(clock):
    """Two believed reads save concurrently: the store ends with the newer holdings.

    The newer read does not wait for the older one's slow save.
    """
    holdings = MemoryHoldings()
    venue = run_once(clock, holdings)
    venue.place_market_order("ADA/USD", "buy", "1")
    clock.advance(1)
    release = threading.Event()
    holdings.hold_next_save = release
    errors: list[BaseException] = []

    def older_read() -> None:
        try:
            venue.get_positions()  # shows ADA: its save is slow
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=older_read)
    thread.start()
    assert holdings.holding.wait(5)
    clock.advance(1)
    venue.place_market_order("DOGE/USD", "buy", "1")
    clock.advance(1)
    assert "DOGE/USD" in symbols(venue.get_positions())  # the newer read saves first
    release.set()
    thread.join(5)
    assert not errors, errors
    clock.advance(5)
    venue.get_positions()  # one more believed read with the same holdings
    assert "DOGE/USD" in holdings.saved[venue.account_id][0]


@pytest.mark.xfail(
    strict=True,
    reason="BREAK: BaseBroker.__init__ (brokers/base.py) derives account_id from broker_name, "
    "account_type and user_id only, and the holdings are keyed by it (StateStore.save_holdings): "
    "two accounts on one venue (two API keys, no user_id) are both 'paper:master' and overwrite "
    "each other's believed holdings; the other account holding nothing saves {} last, and a "
    "restart of the first during a glitch believes its empty read",
)
def test_two_accounts_with_the_same_derived_id_do_not_share_believed_holdings(clock):
    """Holdings believed for one account never become another account's baseline."""
    holdings = MemoryHoldings()
    first = Venue("paper", clock=clock)
    first.keep_holdings_in(holdings)
    first.get_positions()
    other = Venue("paper", clock=clock, positions={})  # another key on the same venue
    other.keep_holdings_in(holdings)
    with suppress(PositionsImplausibleError):
        other.get_positions()
    other.accept_position_loss(ALL)  # its operator confirms: it holds nothing
    other.get_positions()
    clock.advance(60)
    restarted = Venue("paper", clock=clock, fault_plan=FaultPlan(empty_positions_rate=1.0))
    restarted.keep_holdings_in(holdings)
    with pytest.raises(PositionsImplausibleError):
        restarted.get_positions()


# --------------------------------------------------------------------------- property

EVENTS = st.lists(
    st.one_of(
        st.tuples(
            st.just("hand_sell"), st.sampled_from(sorted(HELD)), st.sampled_from(["all", "half"])
        ),
        st.tuples(st.just("buy"), st.sampled_from(sorted(HELD))),
        st.tuples(st.just("hide"), st.sampled_from([(), *((s,) for s in sorted(HELD))])),
        st.tuples(st.just("advance"), st.sampled_from([1.0, 30.0, 700.0])),
        st.tuples(st.just("read")),
    ),
    max_size=30,
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(events=EVENTS)
def test_no_believed_read_ever_drops_a_symbol_the_venue_still_holds(events):
    """No believed read lacks a symbol the last one showed and the venue still holds.

    Hand sales (whole or half), buys back and glitches come in any order.
    Bounded to the defended space: no sells of ours (pinned above) and a second between a hand
    sale and the next read (the same-instant double count is pinned above).
    """
    clear_registry()
    clock = FakeClock(start=1_795_000_000.0)
    venue = Venue("prop-evidence", clock=clock)
    believed = symbols(venue.get_positions())
    for event in events:
        kind = event[0]
        if kind == "hand_sell":
            quantity = venue.true_positions().get(event[1])
            if quantity:
                venue.sell_by_hand(event[1], None if event[2] == "all" else quantity / 2)
        elif kind == "buy":
            venue.place_market_order(event[1], "buy", "1")
        elif kind == "hide":
            venue.hide = set(event[1])
        elif kind == "advance":
            clock.advance(event[1])
        else:
            try:
                shown = symbols(venue.get_positions())
            except PositionsImplausibleError:
                pass
            else:
                lost = (believed & venue.held()) - shown
                assert not lost, (event, lost)
                believed = shown
        clock.advance(1)
