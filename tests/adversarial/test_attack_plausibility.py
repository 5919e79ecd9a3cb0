"""Adversarial tests: a hostile exchange and a careless bot against the order lifecycle.

Promise 3: an implausible (empty or thinner) successful position read is never believed before
agreeing reads confirm it.

Account: BTC 0.5, ETH 2, SOL 10 (and USD cash).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import pytest

from brokerguard import PositionCapEnforcer, TradingGate
from brokerguard.brokers import BaseBroker
from brokerguard.errors import (
    BrokerGuardError,
    CircuitOpenError,
    InvalidBrokerData,
    PositionsImplausibleError,
)
from brokerguard.models import Order, OrderRequest, Position
from brokerguard.risk import POSITIONS_IMPLAUSIBLE
from brokerguard.store import open_store

ALL = {"BTC/USD", "ETH/USD", "SOL/USD"}


def symbols(positions) -> set[str]:
    return {p.symbol for p in positions}


# --------------------------------------------------------------------------- explained losses


@pytest.mark.parametrize("sell", ["rejected", "circuit_open", "partial_2pct"])
def test_a_sell_that_did_not_close_the_position_does_not_explain_its_disappearance(
    broker, kraken, sell
):
    """A refused, unsent or partial sell never explains its whole symbol vanishing from a read."""
    assert symbols(broker.get_positions()) == ALL
    try:
        if sell == "rejected":
            broker.place_market_order("BTC/USD", "sell", "100")  # EOrder:Insufficient funds
        elif sell == "circuit_open":
            broker.write_breaker.force_open("maintenance window")
            broker.place_market_order("BTC/USD", "sell", "0.5")  # never sent
        else:
            broker.place_market_order("BTC/USD", "sell", "0.01")  # fills; 0.49 BTC remain
    except (BrokerGuardError, CircuitOpenError):
        pass
    kraken.inject("omit:XXBT", endpoint="BalanceEx")  # one glitchy read

    with pytest.raises(PositionsImplausibleError):
        broker.get_positions()


def test_the_enforcer_is_not_fooled_by_a_read_a_partial_sell_explains(broker, kraken, clock):
    """After a 2% sell, thin reads dropping that symbol never let the enforcer report compliant."""
    broker.get_positions()
    broker.place_market_order("BTC/USD", "sell", "0.01")
    kraken.inject("omit:XXBT", endpoint="BalanceEx", times=50)

    ok, result = PositionCapEnforcer(
        broker, 2, store=open_store("sqlite://", clock=clock), settle_timeout=1.0
    ).enforce_cap()

    assert kraken.balances()["XXBT"] > 0
    assert not (ok and result["status"] == "compliant"), result["reason"]


# --------------------------------------------------------------------------- thin reads


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("empty_result", InvalidBrokerData),
        ("omit:XXBT,XETH,SOL", PositionsImplausibleError),
        ("omit:XXBT", PositionsImplausibleError),
        ("omit:ZUSD,XXBT,XETH,SOL", InvalidBrokerData),
    ],
)
def test_an_empty_or_thinner_read_is_not_believed(broker, kraken, clock, fault, error):
    """Empty, cash-only and thinner reads raise, and many quick agreeing reads do not confirm."""
    assert symbols(broker.get_positions()) == ALL
    kraken.inject(fault, endpoint="BalanceEx", times=20)
    for _ in range(10):  # ten agreeing reads within 9 s: not enough time to confirm
        with pytest.raises((error, CircuitOpenError)):  # invalid reads also open the circuit
            broker.get_positions()
        clock.advance(1)
    gate = TradingGate(broker, 5, store=open_store("sqlite://", clock=clock), max_position_age=0.5)
    assert not gate.check_entry("DOGE/USD").allowed


def test_alternating_thin_and_full_reads_never_confirm_a_loss(broker, kraken, clock):
    """A thin-read glitch that comes and goes for minutes is never believed."""
    broker.get_positions()
    for _ in range(20):
        kraken.inject("omit:XETH", endpoint="BalanceEx")
        with pytest.raises(PositionsImplausibleError):
            broker.get_positions()
        clock.advance(10)
        assert symbols(broker.get_positions()) == ALL
        clock.advance(10)
    assert broker.position_suspicion() is None


def test_a_suspect_read_blocks_entries_at_the_gate(broker, kraken, clock):
    """While a loss is unconfirmed the gate refuses entries as POSITIONS_IMPLAUSIBLE."""
    gate = TradingGate(broker, 4, store=open_store("sqlite://", clock=clock), max_position_age=1)
    broker.get_positions()
    kraken.inject("omit:SOL", endpoint="BalanceEx", times=10)
    clock.advance(2)
    assert gate.check_entry("DOGE/USD").code == POSITIONS_IMPLAUSIBLE


# --------------------------------------------------------------------------- concurrency


class _ScriptedReads(BaseBroker):
    """fetch_positions answers from a script; a step may wait for an event first."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.script: list[tuple[threading.Event | None, list[str]]] = []
        self.waiting = threading.Event()
        """Set when a read reaches a step that waits (the slow read has started)."""
        self._lock = threading.Lock()

    def fetch_positions(self) -> Sequence[Position]:
        with self._lock:
            wait, shown = self.script.pop(0)
        if wait is not None:
            self.waiting.set()
            wait.wait(5)
        return [Position(s, "1") for s in shown]

    def fetch_prices(self, symbols: Sequence[str]) -> Mapping[str, object]:
        return dict.fromkeys(symbols, "1")

    def submit_order(self, order: OrderRequest) -> Order:  # pragma: no cover
        raise NotImplementedError

    def fetch_order(self, client_order_id: str) -> Order | None:  # pragma: no cover
        return None


def test_a_slow_thin_read_is_not_handed_to_its_caller(clock):
    """A slow thin read that finishes after a newer full one never reaches its caller as is."""
    broker = _ScriptedReads("scripted", clock=clock)
    release = threading.Event()
    broker.script = [
        (None, ["A/USD", "B/USD", "C/USD"]),
        (release, ["A/USD"]),
        (None, ["A/USD", "B/USD", "C/USD"]),
    ]
    assert len(broker.get_positions()) == 3  # baseline believed
    seen: dict[str, object] = {}

    def slow_reader() -> None:
        try:
            seen["slow"] = broker.get_positions()
        except BrokerGuardError as exc:
            seen["slow"] = exc

    slow = threading.Thread(target=slow_reader)
    slow.start()
    assert broker.waiting.wait(5)  # the slow read has started
    clock.advance(1)
    assert len(broker.get_positions()) == 3  # the fast, newer, full read
    release.set()
    slow.join(5)

    assert not slow.is_alive()
    answer = seen["slow"]
    assert isinstance(answer, BrokerGuardError) or len(answer) == 3, answer


# --------------------------------------------------------------------------- restarts


def test_a_restart_during_a_thin_read_glitch_is_not_believed(new_broker, kraken, clock, tmp_path):
    """A thin read right after a restart is not believed: it frees no slot."""
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    first = new_broker()
    gate = TradingGate(first, 3, store=open_store(url, clock=clock))
    assert gate.check_entry("DOGE/USD").code == "POSITION_CAP_REACHED"
    # Restart while Kraken's balance endpoint drops BTC from its answers.
    kraken.inject("omit:XXBT", endpoint="BalanceEx", times=10)
    second = new_broker()
    gate2 = TradingGate(second, 3, store=open_store(url, clock=clock))

    decision = gate2.check_entry("DOGE/USD")

    assert not decision.allowed, decision.reason
