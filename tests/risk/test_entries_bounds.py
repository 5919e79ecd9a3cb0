"""The pre-trade reservation book is bounded: settled reservations leave memory, open ones never."""

from __future__ import annotations

import pytest

from brokerguard.brokers import PaperBroker
from brokerguard.risk.entries import (
    SETTLED_ENTRY_MEMORY_S,
    Entry,
    EntryBook,
    EntryState,
    UnknownReservationError,
)
from brokerguard.risk.gate import TradingGate
from brokerguard.testing import FakeClock


def book_of(clock: FakeClock) -> EntryBook:
    broker = PaperBroker(
        prices={"BTC/USD": "50000", "ETH/USD": "3000", "SOL/USD": "100"},
        positions={"BTC/USD": "1"},
        clock=clock,
    )
    return EntryBook(TradingGate(broker, 5), clock=clock)


def churn(book: EntryBook, clock: FakeClock, seconds: float, every: float = 60.0) -> list[str]:
    """Reserve and release an ETH buy, and reserve a BTC sell, every `every` seconds."""
    ids = []
    for _ in range(int(seconds // every)):
        buy = book.reserve("ETH/USD", "buy", f"eth-{clock.monotonic()}")
        assert isinstance(buy, Entry)
        book.release(buy.reservation_id)
        sell = book.reserve("BTC/USD", "sell", f"btc-{clock.monotonic()}")
        assert isinstance(sell, Entry)
        ids += [buy.reservation_id, sell.reservation_id]
        clock.advance(every)
    return ids


def test_a_day_of_reservations_keeps_about_an_hour_of_settled_ones():
    """Memory holds the settled reservations of the last horizon, not of the whole day."""
    clock = FakeClock(start=1000.0)
    book = book_of(clock)

    ids = churn(book, clock, 24 * 3600)

    horizon_entries = 2 * SETTLED_ENTRY_MEMORY_S * 1.125 / 60 + 4
    assert len(book._entries) <= horizon_entries
    assert len(book._settled_at) <= len(book._entries)
    with pytest.raises(UnknownReservationError):
        book.get(ids[0])  # settled a day ago
    assert book.get(ids[-1]).state is EntryState.PLACED  # settled just now


def test_an_open_reservation_is_never_forgotten():
    """A buy reservation with no report keeps its slot and its entry through a day of churn."""
    clock = FakeClock(start=1000.0)
    book = book_of(clock)
    open_one = book.reserve("SOL/USD", "buy", "sol-1")
    assert isinstance(open_one, Entry)

    churn(book, clock, 24 * 3600)

    assert book.get(open_one.reservation_id).state is EntryState.RESERVED
    assert [e.reservation_id for e in book.open_entries()] == [open_one.reservation_id]
    refused = book.reserve("SOL/USD", "buy", "sol-2")  # still pending: a second buy is refused
    assert not isinstance(refused, Entry)
    assert refused.code == "ENTRY_PENDING"
