"""The freqtrade mixin fails closed: no reservation, no entry; reservations settle on evidence.

freqtrade calls ``confirm_trade_entry`` through a wrapper whose default is True, so the hook
itself must never raise: every failure is a refusal. These tests drive the mixin over a fake
IStrategy and the /v1 contract in memory (no freqtrade needed).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from brokerguard.integrations.freqtrade import (
    EXIT_TAG,
    BrokerguardMixin,
    GuardAPIError,
    GuardClient,
    GuardSettings,
)
from brokerguard.risk.gate import TradingState
from tests.integrations.fakes import (
    ACCOUNT,
    BOT_TOKEN,
    FakeGuard,
    FakeIStrategy,
    order,
    trade,
)

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


class Strategy(BrokerguardMixin, FakeIStrategy):
    """A strategy as a user writes it: the mixin first, then (here, a stand-in for) IStrategy."""

    def __init__(self, config):
        super().__init__(config)
        self.db: dict[str, list] = {}  # freqtrade's trades by pair

    def brokerguard_trades(self, pair):
        return self.db.get(pair, [])


@pytest.fixture
def guard():
    return FakeGuard(max_positions=2)


@pytest.fixture
def strategy(guard, monkeypatch):
    monkeypatch.setenv("BROKERGUARD_BOT_TOKEN", BOT_TOKEN)
    bot = Strategy({"brokerguard": {"url": "http://guard.invalid", "account_id": ACCOUNT}})
    bot.brokerguard_client = GuardClient("http://guard.invalid", token=BOT_TOKEN, transport=guard)
    return bot


def bot_settings(bot):
    return GuardSettings.from_config(bot.config)


def confirm(bot, pair="BTC/USD", *, at=NOW, side="long"):
    return bot.confirm_trade_entry(
        pair=pair,
        order_type="market",
        amount=0.01,
        rate=65000.0,
        time_in_force="GTC",
        current_time=at,
        entry_tag=None,
        side=side,
    )


def adjust(bot, stake):
    bot.adjust = stake
    return bot.adjust_trade_position(
        trade=trade(1, "BTC/USD", NOW),
        current_time=NOW,
        current_rate=1.0,
        current_profit=0.0,
        min_stake=1.0,
        max_stake=100.0,
        current_entry_rate=1.0,
        current_exit_rate=1.0,
        current_entry_profit=0.0,
        current_exit_profit=0.0,
    )


def exit_for(bot, pair):
    return bot.custom_exit(
        pair=pair,
        trade=trade(1, pair, NOW),
        current_time=NOW,
        current_rate=1.0,
        current_profit=0.0,
    )


def test_the_module_imports_without_freqtrade():
    """Importing the integration never imports freqtrade (it is not installed here)."""
    code = (
        "import sys, brokerguard.integrations.freqtrade as m; "
        "assert 'freqtrade' not in sys.modules; print(m.BrokerguardMixin.__name__)"
    )
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "BrokerguardMixin"


def test_confirm_when_the_guard_allows_then_true_and_the_reservation_is_kept(strategy, guard):
    """An allowed entry reserves a slot (side buy, bot token, idempotency key) and is remembered."""
    assert confirm(strategy) is True
    call = guard.calls[-1]
    assert (call.method, call.path) == ("POST", f"/v1/accounts/{ACCOUNT}/entries")
    assert call.body["symbol"] == "BTC/USD"
    assert call.body["side"] == "buy"
    assert call.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    assert call.headers["Idempotency-Key"] == call.body["client_order_id"]
    assert len(call.body["client_order_id"]) <= 18  # Kraken's free-text cl_ord_id limit
    assert strategy.brokerguard_pending() == {"r1": "BTC/USD"}


def test_confirm_when_the_cap_is_reached_then_false(strategy, guard, caplog):
    """The third entry under a cap of two is refused, and the log says why."""
    caplog.set_level(logging.INFO, logger="brokerguard.integrations.freqtrade")
    assert confirm(strategy, "BTC/USD") is True
    assert confirm(strategy, "ETH/USD") is True
    assert confirm(strategy, "SOL/USD") is False
    assert "POSITION_CAP_REACHED" in caplog.text
    assert "SOL/USD" in caplog.text
    assert set(strategy.brokerguard_pending().values()) == {"BTC/USD", "ETH/USD"}


@pytest.mark.parametrize(
    "failure",
    [
        TimeoutError("timed out"),
        ConnectionRefusedError("refused"),
        RuntimeError("anything at all"),
    ],
)
def test_confirm_when_the_guard_does_not_answer_then_false(strategy, guard, failure):
    """A timeout, a refused connection or any other exception refuses the entry (fail closed)."""
    guard.fail = failure
    assert confirm(strategy) is False
    assert strategy.brokerguard_pending() == {}


@pytest.mark.parametrize(
    "answer",
    [
        (500, b'{"detail": "boom"}'),
        (503, b'{"detail": "store down"}'),
        (200, b"<html>a proxy</html>"),
        (201, b'{"reservation_id": "r9"}'),  # no decision
        (201, b'{"decision": {"allowed": true, "code": "ALLOWED"}}'),  # no reservation id
        (409, b'{"decision": {"allowed": true, "code": "ALLOWED"}}'),  # a refusal that allows
        (404, b'{"detail": "no account"}'),
    ],
)
def test_confirm_when_the_answer_breaks_the_contract_then_false(strategy, guard, answer):
    """Any answer that is not a well-formed 201 is a refusal."""
    guard.answer = answer
    assert confirm(strategy) is False
    assert strategy.brokerguard_pending() == {}


def test_confirm_when_the_token_is_wrong_then_false(guard, monkeypatch):
    """A 401 refuses the entry."""
    monkeypatch.setenv("BROKERGUARD_BOT_TOKEN", "wrong")
    bot = Strategy({"brokerguard": {"url": "http://g.invalid", "account_id": ACCOUNT}})
    bot.brokerguard_client = bot_settings(bot).client(transport=guard)
    assert confirm(bot) is False
    assert guard.calls[-1].headers["Authorization"] == "Bearer wrong"


def test_confirm_when_brokerguard_is_not_configured_then_false(monkeypatch):
    """No brokerguard section and no variables: every entry is refused, nothing raises."""
    for name in ("BROKERGUARD_URL", "BROKERGUARD_ACCOUNT_ID", "BROKERGUARD_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    bot = Strategy({})
    bot.bot_start()  # logs the problem instead of raising
    assert confirm(bot) is False


def test_confirm_when_the_strategy_itself_vetoes_then_false_and_nothing_reserved(strategy, guard):
    """The strategy's own answer comes first: a veto reserves nothing."""
    strategy.veto = True
    assert confirm(strategy) is False
    assert guard.calls == []


def test_confirm_for_a_short_entry_asks_for_a_sell(strategy, guard):
    """A short entry (freqtrade's side) is a sell order for the guard."""
    confirm(strategy, side="short")
    assert guard.calls[-1].body["side"] == "sell"


def test_order_filled_for_an_entry_reports_placed_with_the_order_id(strategy, guard):
    """A filled entry order confirms its reservation with the venue's order id."""
    confirm(strategy, at=NOW)
    filled = order("O1", status="closed", filled=0.01)
    strategy.order_filled(
        pair="BTC/USD",
        trade=trade(7, "BTC/USD", NOW + timedelta(seconds=1), filled),
        order=filled,
        current_time=NOW,
    )
    assert guard.reservations["r1"]["state"] == "placed"
    assert guard.reservations["r1"]["order_id"] == "O1"
    assert strategy.brokerguard_pending() == {}
    assert strategy.filled == ["O1"]  # the strategy's own hook still ran


def test_order_filled_for_an_exit_reports_nothing(strategy, guard):
    """An exit order's fill is not an entry: the reservation stays as it was."""
    confirm(strategy)
    sold = order("O2", side="sell", status="closed", filled=0.01)
    strategy.order_filled(
        pair="BTC/USD", trade=trade(7, "BTC/USD", NOW), order=sold, current_time=NOW
    )
    assert guard.states() == {"r1": "reserved"}


def test_a_later_add_to_a_reported_trade_does_not_claim_another_reservation(strategy, guard):
    """A position adjustment's fill never settles a reservation of another entry."""
    confirm(strategy, at=NOW)  # r1 opens trade 7
    opened = trade(7, "BTC/USD", NOW + timedelta(seconds=1), order("O1", status="closed"))
    strategy.order_filled(pair="BTC/USD", trade=opened, order=opened.orders[0], current_time=NOW)
    confirm(strategy, at=NOW + timedelta(seconds=5))  # r2: a new entry, its order not seen yet
    strategy.order_filled(
        pair="BTC/USD", trade=opened, order=order("O9", status="closed"), current_time=NOW
    )
    assert guard.states() == {"r1": "placed", "r2": "reserved"}


def test_an_entry_whose_previous_outcome_is_unknown_is_refused_without_asking(strategy, guard):
    """A submit that timed out may still fill: no second entry in that pair until it settles."""
    assert confirm(strategy, "BTC/USD", at=NOW) is True  # its order never reached the database
    calls = len(guard.calls)
    assert confirm(strategy, "BTC/USD", at=NOW + timedelta(seconds=5)) is False
    assert len(guard.calls) == calls  # the guard was not even asked
    assert confirm(strategy, "ETH/USD", at=NOW + timedelta(seconds=5)) is True  # other pairs go


def test_an_entry_in_a_pair_the_exchange_already_holds_is_refused(strategy, guard, caplog):
    """A pair held at the exchange but not in freqtrade (it asks only then) is untracked."""
    caplog.set_level(logging.INFO)  # whatever an earlier test set the root logger to
    guard.held = ["ETH/USD"]
    strategy.bot_loop_start(current_time=NOW)
    assert confirm(strategy, "ETH/USD") is False
    assert "untracked" in caplog.text
    assert not [c for c in guard.calls if c.method == "POST"]
    assert confirm(strategy, "BTC/USD") is True


def test_a_reservation_that_got_no_answer_is_resent_with_the_same_id(strategy, guard):
    """The guard may have reserved it: the retry carries the same client order id and key."""
    guard.fail = TimeoutError("slow")
    assert confirm(strategy, "BTC/USD") is False
    lost = guard.calls[-1].body["client_order_id"]
    guard.fail = None
    assert confirm(strategy, "BTC/USD") is True
    assert guard.calls[-1].body["client_order_id"] == lost
    assert guard.calls[-1].headers["Idempotency-Key"] == lost
    confirm(strategy, "ETH/USD")
    assert guard.calls[-1].body["client_order_id"] != lost


def test_a_trade_freqtrade_removed_after_a_zero_fill_cancel_releases(strategy, guard):
    """Seen with an open entry order, then gone from the database: nothing was bought."""
    confirm(strategy, at=NOW)
    strategy.db["BTC/USD"] = [trade(3, "BTC/USD", NOW + timedelta(seconds=1), order("O1"))]
    strategy.bot_loop_start(current_time=NOW + timedelta(seconds=2))
    assert guard.states() == {"r1": "reserved"}  # open order: wait
    strategy.db["BTC/USD"] = []  # handle_cancel_enter deleted it
    strategy.bot_loop_start(current_time=NOW + timedelta(seconds=20))
    assert guard.states() == {"r1": "released"}
    assert strategy.brokerguard_pending() == {}


def test_an_entry_order_cancelled_with_nothing_filled_releases(strategy, guard):
    """A cancelled entry order with a zero fill gives the slot back."""
    confirm(strategy, at=NOW)
    cancelled = order("O1", status="canceled", filled=0.0)
    strategy.db["BTC/USD"] = [trade(3, "BTC/USD", NOW + timedelta(seconds=1), cancelled)]
    strategy.bot_loop_start(current_time=NOW + timedelta(seconds=2))
    assert guard.states() == {"r1": "released"}


def test_an_entry_order_cancelled_after_a_partial_fill_is_placed(strategy, guard):
    """Anything filled means the order was placed: never released."""
    confirm(strategy, at=NOW)
    partial = order("O1", status="canceled", filled=0.004)
    strategy.db["BTC/USD"] = [trade(3, "BTC/USD", NOW + timedelta(seconds=1), partial)]
    strategy.bot_loop_start(current_time=NOW + timedelta(seconds=2))
    assert guard.reservations["r1"] == {**guard.reservations["r1"], "state": "placed"}
    assert guard.reservations["r1"]["order_id"] == "O1"


def test_a_reservation_whose_order_never_reached_the_database_is_never_released(strategy, guard):
    """A timed-out submit may still fill: the mixin never says "not placed" for it."""
    confirm(strategy, at=NOW)
    strategy.db["BTC/USD"] = [trade(1, "BTC/USD", NOW - timedelta(days=1))]  # an old trade
    strategy.bot_loop_start(current_time=NOW + timedelta(seconds=30))
    assert guard.states() == {"r1": "reserved"}
    assert strategy.brokerguard_pending() == {"r1": "BTC/USD"}
    strategy.bot_loop_start(current_time=datetime(2033, 6, 1, tzinfo=UTC))  # after expires_at
    assert guard.states() == {"r1": "reserved"}  # left to the guard, which asks the broker
    assert strategy.brokerguard_pending() == {}
    assert not [c for c in guard.calls if c.method == "DELETE"]


def test_a_failed_settlement_keeps_the_reservation_for_the_next_loop(strategy, guard):
    """The guard down while settling: nothing is forgotten, the next loop reports it."""
    confirm(strategy, at=NOW)
    strategy.db["BTC/USD"] = [
        trade(3, "BTC/USD", NOW + timedelta(seconds=1), order("O1", status="closed", filled=1))
    ]
    guard.fail = TimeoutError("down")
    strategy.bot_loop_start(current_time=NOW + timedelta(seconds=2))
    assert strategy.brokerguard_pending() == {"r1": "BTC/USD"}
    guard.fail = None
    strategy.bot_loop_start(current_time=NOW + timedelta(seconds=3))
    assert guard.states() == {"r1": "placed"}


def test_bot_loop_start_refreshes_the_account_and_keeps_the_strategy_hook(strategy, guard):
    """Each loop reads the account's state; the strategy's own bot_loop_start still runs."""
    guard.held = ["BTC/USD"]
    strategy.bot_loop_start(current_time=NOW)
    account = strategy.brokerguard_account
    assert account is not None
    assert account.trading_state is TradingState.ACTIVE
    assert account.symbols_held == ("BTC/USD",)
    assert strategy.loops == 1


def test_an_unreadable_account_state_is_unknown_not_active(strategy, guard):
    """A failed refresh forgets the old state: unknown, so adds are refused."""
    strategy.bot_loop_start(current_time=NOW)
    guard.fail = TimeoutError("down")
    strategy.bot_loop_start(current_time=NOW)
    assert strategy.brokerguard_account is None
    assert adjust(strategy, 10.0) is None


@pytest.mark.parametrize("state", ["reducing", "halted"])
def test_adjust_when_not_active_then_adds_are_refused(strategy, guard, state):
    """An add while REDUCING or HALTED becomes None (no order)."""
    guard.trading_state = state
    strategy.bot_loop_start(current_time=NOW)
    assert adjust(strategy, 10.0) is None
    assert adjust(strategy, (10.0, "dca")) is None


@pytest.mark.parametrize("state", ["reducing", "halted"])
def test_adjust_when_not_active_then_reductions_pass(strategy, guard, state):
    """A partial exit reduces risk: it passes in any state."""
    guard.trading_state = state
    strategy.bot_loop_start(current_time=NOW)
    assert adjust(strategy, -5.0) == -5.0
    assert adjust(strategy, (-5.0, "trim")) == (-5.0, "trim")


def test_adjust_when_active_then_the_strategy_decides(strategy, guard):
    """ACTIVE: the strategy's answer passes unchanged."""
    strategy.bot_loop_start(current_time=NOW)
    assert adjust(strategy, 10.0) == 10.0
    assert adjust(strategy, None) is None


def test_custom_exit_when_over_the_cap_then_the_guards_pairs_exit(strategy, guard):
    """Over the cap, the pairs the guard names exit with brokerguard's tag; others do not."""
    guard.held = ["BTC/USD", "ETH/USD", "SOL/USD"]
    guard.trading_state = "reducing"
    guard.exit_symbols = ["SOL/USD"]
    strategy.bot_loop_start(current_time=NOW)
    assert exit_for(strategy, "SOL/USD") == EXIT_TAG
    assert exit_for(strategy, "BTC/USD") is None


def test_custom_exit_when_under_the_cap_then_the_strategy_decides(strategy, guard):
    """ACTIVE and under the cap: the strategy's own custom_exit answers."""
    guard.held = ["BTC/USD"]
    strategy.exit_reason = "my_reason"
    strategy.bot_loop_start(current_time=NOW)
    assert exit_for(strategy, "BTC/USD") == "my_reason"


def test_custom_exit_when_the_state_is_unknown_then_nothing_is_sold_on_its_word(strategy, guard):
    """No account state: the mixin asks for no exit."""
    guard.fail = TimeoutError("down")
    strategy.bot_loop_start(current_time=NOW)
    assert exit_for(strategy, "BTC/USD") is None


def test_a_client_error_is_a_guard_api_error_with_its_status(guard):
    """Outside the mixin the client raises, with the status, for the caller to judge."""
    client = GuardClient("http://g.invalid", token=BOT_TOKEN, transport=guard)
    guard.answer = (500, b'{"detail": "boom"}')
    with pytest.raises(GuardAPIError) as raised:
        client.account(ACCOUNT)
    assert raised.value.status == 500
    guard.answer, guard.fail = None, TimeoutError("slow")
    with pytest.raises(GuardAPIError) as raised:
        client.account(ACCOUNT)
    assert raised.value.status is None
    assert isinstance(raised.value.__cause__, TimeoutError)
