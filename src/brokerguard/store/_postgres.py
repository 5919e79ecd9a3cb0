"""PostgreSQL connections whose every wait is bounded (private; needs psycopg).

Server-side timeouts (``statement_timeout``, ``lock_timeout``,
``idle_in_transaction_session_timeout``) end a slow statement, a lock wait and a paused
client's open transaction, but only a server that still answers can apply them: a database
that accepts and never answers (a hung host, a proxy black-holing packets) would keep a call
waiting forever. :class:`BoundedConnection` bounds every wait of psycopg on the client side
too, by the time left in the store call under way (:mod:`brokerguard.store._deadline`); a
connection whose answer did not come in time is closed, never reused in an unknown state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg.abc import PQGen
from sqlalchemy import Engine, event

from brokerguard.store._deadline import remaining

__all__ = ["BoundedConnection", "bound_engine", "server_options"]

RV = TypeVar("RV")


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose waits end with the store call's deadline."""

    bound: float = 5.0
    """Seconds a wait may last outside any store call (pool housekeeping)."""

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        """Consume `gen` like psycopg does, but give up when the store call's time is up."""
        limit = remaining(self.bound)
        if timeout is not None:
            limit = min(limit, timeout)
        try:
            return super().wait(gen, interval, max(limit, 0.001))
        except psycopg.OperationalError:
            if self.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                # A statement whose answer never came: the session's state is unknown, so it
                # is closed (the pool then replaces it) rather than ever used again.
                self.pgconn.finish()
            raise


def server_options(timeout: float, given: str | None) -> str:
    """The libpq ``options`` bounding statements, lock waits, idle transactions; then `given`."""
    ms = max(1, round(timeout * 1000))
    ours = " ".join(
        f"-c {name}={ms}"
        for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
    )
    return f"{ours} {given}" if given else ours  # the URL's own options come last, and win


def bound_engine(engine: Engine, timeout: float) -> None:
    """Make every connection of `engine` a :class:`BoundedConnection` with `timeout`."""

    @event.listens_for(engine, "do_connect")
    def connect(
        _dialect: object, _record: object, cargs: tuple[Any, ...], cparams: dict[str, Any]
    ) -> BoundedConnection:
        left = remaining(timeout)
        if left <= 0:
            raise psycopg.OperationalError("the store call's time ran out before connecting")
        # libpq waits at least 2 s for a connection, in whole seconds.
        wanted = max(2, math.ceil(left))
        given = _connect_timeout(cparams)
        cparams["connect_timeout"] = wanted if given is None else min(given, wanted)
        cparams["options"] = server_options(timeout, cparams.get("options"))
        connection = BoundedConnection.connect(*cargs, **cparams)
        connection.bound = timeout
        return connection


def _connect_timeout(cparams: Mapping[str, Any]) -> int | None:
    value = cparams.get("connect_timeout")
    try:
        return None if value is None else max(2, int(float(value)))
    except ValueError:
        return None
