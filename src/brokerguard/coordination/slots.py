"""The pre-trade gate's slot reservations, fleet-wide: one account's cap across every process.

Several processes may open positions on one account (strategy workers, a manual tool). Each
:class:`~brokerguard.risk.TradingGate` counts its own reservations; without sharing them, two
processes could each take the last slot. :class:`SharedSlots` keeps every reservation of an
account in one Redis sorted set (member ``token|symbol``, score its expiry) and takes a slot in
one Lua script: the symbols the caller sees held, plus every live reservation in the fleet,
must leave room under the cap. A reservation expires by itself (a process that died mid-entry
frees its slot); a filled entry keeps its slot for ``pending_entry_ttl`` seconds, by when the
position shows in every process's position snapshot.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Final

from brokerguard.coordination.redis_coordinator import RedisCoordinator

__all__ = ["SharedSlots"]

_RESERVE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local occupied = {}
local count = 0
for i = 5, #ARGV do
  if not occupied[ARGV[i]] then occupied[ARGV[i]] = true; count = count + 1 end
end
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local symbol = string.match(member, '^[^|]*|(.*)$')
  if not occupied[symbol] then occupied[symbol] = true; count = count + 1 end
end
if not occupied[ARGV[2]] and count >= tonumber(ARGV[1]) then return {0, count} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4] .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return {1, count}
"""

_EXTEND: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
"""


class SharedSlots:
    """Fleet-wide entry reservations, per account, on the fleet's Redis.

    Args:
        coordinator: the fleet's :class:`RedisCoordinator`.
        reservation_ttl: seconds a slot is held while its entry is in flight.
    """

    def __init__(self, coordinator: RedisCoordinator, *, reservation_ttl: float = 60.0) -> None:
        self.coordinator = coordinator
        self.reservation_ttl = reservation_ttl
        self._reserve = coordinator.client.register_script(_RESERVE)
        self._extend = coordinator.client.register_script(_EXTEND)

    def reserve(self, account_id: str, symbol: str, cap: int, held: Iterable[str]) -> str | None:
        """Take a slot for `symbol`; return its token, or None when the fleet is at the cap.

        `held` is what the caller knows occupies slots (its snapshot and its own entries).
        Raises CoordinationUnavailableError when Redis cannot be asked.
        """
        member = f"{uuid.uuid4().hex}|{symbol}"
        token = member.split("|", 1)[0]
        args = [str(cap), symbol, str(_ms(self.reservation_ttl)), token, *sorted(set(held))]
        key = self.coordinator.key("slots", account_id)
        taken, _count = self.coordinator.run(lambda: self._reserve(keys=[key], args=args))
        return f"{token}|{symbol}" if int(taken) else None

    def release(self, account_id: str, token: str) -> None:
        """Give the slot back (the entry did not happen)."""
        key = self.coordinator.key("slots", account_id)
        self.coordinator.run(lambda: self.coordinator.client.zrem(key, token))

    def filled(self, account_id: str, token: str, ttl: float) -> None:
        """The entry filled: keep its slot for `ttl` seconds, until snapshots show it."""
        key = self.coordinator.key("slots", account_id)
        self.coordinator.run(lambda: self._extend(keys=[key], args=[token, str(_ms(ttl))]))

    def occupied(self, account_id: str) -> list[str]:
        """The symbols of the account's live reservations (for status and tests)."""
        key = self.coordinator.key("slots", account_id)
        client = self.coordinator.client

        def live() -> list[object]:
            seconds, micros = client.time()
            return list(client.zrangebyscore(key, seconds * 1000 + micros // 1000, "+inf"))

        members = self.coordinator.run(live)
        return sorted(
            (m.decode() if isinstance(m, bytes) else str(m)).split("|", 1)[1] for m in members
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
