"""The deadline of the store call running on this thread (private).

Every public :class:`~brokerguard.store.StateStore` method is one call with one time budget,
the store's ``timeout``: waiting for a turn on the database, for a connection and for each
answer all come out of it, so a call fails closed within that time whatever hangs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["call_deadline", "remaining"]

_CALL = threading.local()


@contextmanager
def call_deadline(seconds: float) -> Iterator[None]:
    """Give the store call run inside at most `seconds` of waiting, on this thread.

    A call inside another one keeps the outer (earlier) deadline.
    """
    outer: float | None = getattr(_CALL, "deadline", None)
    mine = time.monotonic() + seconds  # wall-clock-ok: a network deadline, not trading logic
    _CALL.deadline = mine if outer is None else min(outer, mine)
    try:
        yield
    finally:
        _CALL.deadline = outer


def remaining(default: float) -> float:
    """Seconds left in this thread's store call (`default` outside any call)."""
    deadline: float | None = getattr(_CALL, "deadline", None)
    if deadline is None:
        return default
    return deadline - time.monotonic()  # wall-clock-ok
