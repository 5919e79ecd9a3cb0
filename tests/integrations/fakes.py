"""In-memory stand-ins: the guard's /v1 API, freqtrade's REST API and IStrategy's defaults.

Each fake API is a :data:`~brokerguard.integrations.freqtrade.Transport` (a function from a
request to a status and a body), so the clients under test run their real code down to the
bytes they send.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

BOT_TOKEN = "bot-token-for-tests"  # noqa: S105 (a test token)
ACCOUNT = "kraken-main"


@dataclass
class Call:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: Any


@dataclass
class FakeGuard:
    """The /v1 contract for one account with a position cap; records every call."""

    max_positions: int = 2
    held: list[str] = field(default_factory=list)
    trading_state: str = "active"
    exit_symbols: list[str] = field(default_factory=list)
    token: str = BOT_TOKEN
    fail: BaseException | None = None  # raised by the transport: nothing answered
    answer: tuple[int, bytes] | None = None  # served instead of the contract
    calls: list[Call] = field(default_factory=list)
    reservations: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __call__(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> tuple[int, bytes]:
        split = urlsplit(url)
        self.calls.append(
            Call(method, split.path, split.query, dict(headers), json.loads(body) if body else None)
        )
        if self.fail is not None:
            raise self.fail
        if self.answer is not None:
            return self.answer
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, b'{"detail": "a valid bot token is required"}'
        parts = split.path.strip("/").split("/")
        if parts[:2] != ["v1", "accounts"] or len(parts) < 3 or parts[2] != ACCOUNT:
            return 404, b'{"detail": "no such account"}'
        return self._route(method, parts[3:], split.query, json.loads(body) if body else None)

    def _route(  # noqa: PLR0911 (one answer per route of the contract)
        self, method: str, rest: list[str], query: str, body: Any
    ) -> tuple[int, bytes]:
        if method == "GET" and not rest:
            return self._json(200, self.account())
        if method == "GET" and rest == ["gate"]:
            symbol = parse_qs(query)["symbol"][0]
            return self._json(
                200, {"decision": self.decide(symbol), "trading_state": self.trading_state}
            )
        if method == "POST" and rest == ["entries"]:
            decision = self.decide(body["symbol"])
            if not decision["allowed"]:
                return self._json(409, {"decision": decision})
            rid = f"r{next(self._ids)}"
            self.reservations[rid] = {**body, "state": "reserved"}
            return self._json(
                201,
                {
                    "reservation_id": rid,
                    "expires_at": 2_000_000_000.0,
                    "client_order_id": body["client_order_id"],
                    "decision": decision,
                },
            )
        if len(rest) >= 2 and rest[0] == "entries" and rest[1] in self.reservations:
            entry = self.reservations[rest[1]]
            if method == "POST" and rest[2:] == ["placed"]:
                entry.update(state="placed", order_id=body["order_id"])
                return self._json(200, {"reservation_id": rest[1], "state": "placed"})
            if method == "DELETE" and not rest[2:]:
                entry["state"] = "released"
                return self._json(200, {"reservation_id": rest[1], "state": "released"})
        return 404, b'{"detail": "not found"}'

    def taken(self) -> int:
        live = {"reserved", "placed"}
        return len(self.held) + sum(1 for r in self.reservations.values() if r["state"] in live)

    def decide(self, symbol: str) -> dict[str, Any]:
        if self.trading_state != "active":
            code = f"ACCOUNT_{self.trading_state.upper()}"
            return {"allowed": False, "code": code, "reason": code, "details": {}}
        if self.taken() >= self.max_positions:
            details = {"positions": self.taken(), "max_positions": self.max_positions}
            reason = f"POSITION_CAP_REACHED: positions={self.taken()} max={self.max_positions}"
            return {
                "allowed": False,
                "code": "POSITION_CAP_REACHED",
                "reason": reason,
                "details": details,
            }
        return {"allowed": True, "code": "ALLOWED", "reason": "ALLOWED", "details": {}}

    def account(self) -> dict[str, Any]:
        return {
            "account_id": ACCOUNT,
            "trading_state": self.trading_state,
            "max_positions": self.max_positions,
            "positions": len(self.held),
            "symbols_held": list(self.held),
            "exit_symbols": list(self.exit_symbols),
        }

    def states(self) -> dict[str, str]:
        return {rid: r["state"] for rid, r in self.reservations.items()}

    @staticmethod
    def _json(status: int, payload: object) -> tuple[int, bytes]:
        return status, json.dumps(payload).encode()


class FakeIStrategy:
    """freqtrade's IStrategy defaults for the hooks the mixin wraps (no freqtrade needed)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.veto = False  # the strategy's own confirm_trade_entry says no
        self.adjust: Any = None  # what the strategy's adjust_trade_position answers
        self.exit_reason: str | None = None
        self.loops = 0
        self.filled: list[str] = []

    def bot_start(self, **kwargs: Any) -> None:
        pass

    def bot_loop_start(self, current_time: datetime, **kwargs: Any) -> None:
        self.loops += 1

    def confirm_trade_entry(self, **kwargs: Any) -> bool:
        return not self.veto

    def order_filled(self, pair: str, trade: Any, order: Any, current_time: datetime, **kw: Any):
        self.filled.append(order.order_id)

    def adjust_trade_position(self, **kwargs: Any) -> Any:
        return self.adjust

    def custom_exit(self, **kwargs: Any) -> str | None:
        return self.exit_reason


def order(order_id: str, *, side: str = "buy", status: str = "open", filled: float = 0.0):
    """A freqtrade Order row as the mixin reads it."""
    return SimpleNamespace(order_id=order_id, ft_order_side=side, status=status, filled=filled)


def trade(trade_id: int, pair: str, opened: datetime, *orders: SimpleNamespace):
    """A freqtrade Trade row as the mixin reads it (naive UTC open date, as in its database)."""
    return SimpleNamespace(
        id=trade_id,
        pair=pair,
        open_date=opened.replace(tzinfo=None),
        entry_side="buy",
        orders=list(orders),
    )


@dataclass
class FakeFreqtradeAPI:
    """freqtrade's /api/v1 locks, status, count and forceexit, with basic auth."""

    authorization: str
    locks: list[dict[str, Any]] = field(default_factory=list)
    trades: list[dict[str, Any]] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    max_open_trades: int = 3

    def __call__(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> tuple[int, bytes]:
        split = urlsplit(url)
        payload = json.loads(body) if body else None
        self.calls.append(Call(method, split.path, split.query, dict(headers), payload))
        path = split.path.removeprefix("/api/v1")
        if path == "/ping":
            return 200, b'{"status": "pong"}'
        if headers.get("Authorization") != self.authorization:
            return 401, b'{"detail": "Unauthorized"}'
        if method == "DELETE" and path.startswith("/locks/"):
            return self._unlock(int(path.rsplit("/", 1)[1]))
        route = {
            ("POST", "/locks"): self._lock,
            ("GET", "/locks"): lambda _: self._locks(),
            ("GET", "/status"): lambda _: (200, json.dumps(self.trades).encode()),
            ("GET", "/count"): lambda _: self._count(),
            ("POST", "/forceexit"): self._force_exit,
        }.get((method, path))
        return (404, b'{"detail": "Not Found"}') if route is None else route(payload)

    def _lock(self, payload: Any) -> tuple[int, bytes]:
        for item in payload:
            same = [
                lock
                for lock in self.locks
                if lock["active"]
                and lock["pair"] == item["pair"]
                and lock["reason"] == item["reason"]
            ]
            if same:
                continue  # freqtrade merges a lock with the same reason and end
            until = datetime.fromisoformat(item["until"])
            self.locks.append(
                {
                    "id": len(self.locks) + 1,
                    "pair": item["pair"],
                    "side": item.get("side", "*"),
                    "reason": item.get("reason"),
                    "active": True,
                    "lock_end_timestamp": int(until.timestamp() * 1000),
                    "lock_time": "2026-01-01 00:00:00",
                    "lock_timestamp": 0,
                    "lock_end_time": item["until"],
                }
            )
        return self._locks()

    def _unlock(self, lock_id: int) -> tuple[int, bytes]:
        for lock in self.locks:
            if lock["id"] == lock_id:
                lock["active"] = False
        return self._locks()

    def _count(self) -> tuple[int, bytes]:
        body = {"current": len(self.trades), "max": self.max_open_trades, "total_stake": 0}
        return 200, json.dumps(body).encode()

    def _force_exit(self, payload: Any) -> tuple[int, bytes]:
        if payload["tradeid"] not in {str(t["trade_id"]) for t in self.trades}:
            error = {"error": "Error querying /api/v1/forceexit: invalid argument"}
            return 502, json.dumps(error).encode()
        self.exited.append(payload["tradeid"])
        return 200, json.dumps(
            {"result": f"Created exit order for trade {payload['tradeid']}."}
        ).encode()

    def _locks(self) -> tuple[int, bytes]:
        active = [lock for lock in self.locks if lock["active"]]
        return 200, json.dumps({"lock_count": len(active), "locks": active}).encode()
