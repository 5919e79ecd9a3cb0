"""The pre-trade gate's slot reservations, fleet-wide: one account's cap across every process.

Several processes may open positions on one account (strategy workers, a manual tool). Each
:class:`~brokerguard.risk.TradingGate` counts its own reservations; without sharing them, two
processes could each take the last slot. :class:`SharedSlots` keeps every reservation of an
account in one Redis sorted set (member ``token|symbol``, score its expiry) and takes a slot in
one Lua script: the symbols the caller sees held, plus every live reservation in the fleet,
must leave room under the cap. A reservation expires by itself (a process that died mid-entry
frees its slot); a filled entry keeps its slot for ``pending_entry_ttl`` seconds, by when the
position shows in every process's position snapshot.

A gate in a fleet must also know that the fleet's circuits admit new risk before it takes a
slot. :meth:`SharedSlots.reserve_if_trading` reads both circuits (by the rules of the breakers'
own read script) and takes the slot in the same script, so a reservation is one round trip
instead of four (and its end, filled or released, the second). When a circuit is not closed,
or the read circuit is degraded, it takes nothing and says so: the gate then asks the circuits
the usual way, and refuses with the same codes as before.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from brokerguard.coordination.breaker import SharedCircuitBreaker
from brokerguard.coordination.redis_coordinator import (
    CIRCUIT_READ_LUA,
    RedisCoordinator,
    breaker_state,
)
from brokerguard.resilience.breaker import BrokerCircuitBreaker, is_breaking_enabled

__all__ = ["FleetReservation", "SharedSlots"]

_NOW_MS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] = the account's slots; ARGV = (cap, symbol, ttl ms, token, ..., held symbols from
# ARGV[first_held]). Answers (1 taken | 0 full, slots counted).
_TAKE_SLOT: Final = """
local function take_slot(first_held)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local occupied = {}
  local count = 0
  for i = first_held, #ARGV do
    if not occupied[ARGV[i]] then occupied[ARGV[i]] = true; count = count + 1 end
  end
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local symbol = string.match(member, '^[^|]*|(.*)$')
    if not occupied[symbol] then occupied[symbol] = true; count = count + 1 end
  end
  if not occupied[ARGV[2]] and count >= tonumber(ARGV[1]) then return 0, count end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4] .. '|' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return 1, count
end
"""

_RESERVE: Final = (
    _NOW_MS
    + _TAKE_SLOT
    + """
local taken, count = take_slot(5)
return {taken, count}
"""
)

# KEYS[2], KEYS[3] = the read and the write circuit. New risk only when both are closed and,
# if `refuse_degraded` is '1', the read circuit's streak has no failure (not DEGRADED): what
# ``is_trading_allowed`` and the read circuit's health say (resilience.state.health_of).
_TRADING: Final = (
    CIRCUIT_READ_LUA
    + """
local function trading(read_rt, write_rt, refuse_degraded)
  local read = read_circuit(KEYS[2], read_rt)
  local write = read_circuit(KEYS[3], write_rt)
  local ok = read[2] == 1 and write[2] == 1 and not (refuse_degraded == '1' and read[4] > 0)
  return ok, read, write
end
-- Two closed circuits, briefly (the rest of a closed circuit is fixed): failures, rt, gen each.
local function closed(read, write)
  return read[4], read[6], read[7], write[4], write[6], write[7]
end
"""
)

# KEYS = (slots, read circuit, write circuit); ARGV = (cap, symbol, ttl ms, token, read's and
# write's base recovery timeout in ms, '1' when a degraded read circuit refuses, held...).
# Answers (1 taken | 0 full, count, closed(read, write)) or (-1 not trading: nothing taken, 0,
# read circuit, write circuit).
_RESERVE_IF_TRADING: Final = (
    _NOW_MS
    + _TRADING
    + _TAKE_SLOT
    + """
local ok, read, write = trading(ARGV[5], ARGV[6], ARGV[7])
if not ok then return {-1, 0, read, write} end
local taken, count = take_slot(8)
return {taken, count, closed(read, write)}
"""
)

# KEYS = (slots, read circuit, write circuit); ARGV = (read's and write's base recovery timeout
# in ms, '1' when a degraded read circuit refuses).
# Answers (1 trading, live reservations, closed(read, write)) or (-1 not trading, {}, read
# circuit, write circuit).
_OCCUPIED_IF_TRADING: Final = (
    _NOW_MS
    + _TRADING
    + """
local ok, read, write = trading(ARGV[1], ARGV[2], ARGV[3])
if not ok then return {-1, {}, read, write} end
return {1, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf'), closed(read, write)}
"""
)

_OCCUPIED: Final = (
    _NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""
)

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


@dataclass(frozen=True, slots=True)
class FleetReservation:
    """What :meth:`SharedSlots.reserve_if_trading` answered.

    ``trading`` False: a circuit was not closed (or the read circuit degraded); nothing was
    taken, and the caller must ask the circuits itself. Otherwise ``token`` is the fleet's
    reservation, or None when the fleet is at the cap.
    """

    trading: bool
    token: str | None


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
        self._reserve_if_trading = coordinator.client.register_script(_RESERVE_IF_TRADING)
        self._extend = coordinator.client.register_script(_EXTEND)
        self._occupied = coordinator.client.register_script(_OCCUPIED)
        self._occupied_if_trading = coordinator.client.register_script(_OCCUPIED_IF_TRADING)

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

    def checks_circuits(self, read: BrokerCircuitBreaker, write: BrokerCircuitBreaker) -> bool:
        """Whether the ``*_if_trading`` scripts can read these circuits in their own trip.

        Only shared circuits on this very coordinator (the same Redis: a circuit read from
        another one would read as closed), and only while breaking is on.
        """
        return is_breaking_enabled() and all(
            isinstance(breaker, SharedCircuitBreaker) and breaker.coordinator is self.coordinator
            for breaker in (read, write)
        )

    def reserve_if_trading(
        self,
        account_id: str,
        symbol: str,
        cap: int,
        held: Iterable[str],
        *,
        read: BrokerCircuitBreaker,
        write: BrokerCircuitBreaker,
        refuse_degraded_reads: bool,
    ) -> FleetReservation:
        """Check the fleet's circuits and take a slot for `symbol`, in one round trip.

        Takes the slot only when both circuits are closed (and, with `refuse_degraded_reads`,
        the read circuit has no failure in its streak), exactly what ``is_trading_allowed`` and
        the read circuit's health would have said. Both breakers mirror what the script read
        (their listeners fire on a change, as after their own read). Raises
        CoordinationUnavailableError when Redis cannot be asked. Circuits it cannot read in
        its script (see :meth:`checks_circuits`) take nothing: ``trading`` is False.
        """
        circuits = self._circuits(read, write)
        if circuits is None:
            return FleetReservation(trading=False, token=None)
        shared_read, shared_write = circuits
        token = uuid.uuid4().hex
        args = [
            str(cap),
            symbol,
            str(_ms(self.reservation_ttl)),
            token,
            *_circuit_args(shared_read, shared_write, refuse_degraded_reads=refuse_degraded_reads),
            *sorted(set(held)),
        ]
        keys = [
            self.coordinator.key("slots", account_id),
            shared_read.state_key,
            shared_write.state_key,
        ]
        answer: list[Any] = self.coordinator.run(
            lambda: self._reserve_if_trading(keys=keys, args=args)
        )
        taken = int(answer[0])
        _adopt(shared_read, shared_write, answer[2:], trading=taken >= 0)
        if taken < 0:
            return FleetReservation(trading=False, token=None)
        return FleetReservation(trading=True, token=f"{token}|{symbol}" if taken else None)

    def occupied_if_trading(
        self,
        account_id: str,
        *,
        read: BrokerCircuitBreaker,
        write: BrokerCircuitBreaker,
        refuse_degraded_reads: bool,
    ) -> list[str] | None:
        """The symbols of the account's live reservations, if the circuits admit new risk.

        One round trip, for a check that takes no slot: the circuits are judged as by
        :meth:`reserve_if_trading`, and both breakers mirror them. None when they do not admit
        new risk (or cannot be read in this script): the caller asks them itself. Raises
        CoordinationUnavailableError when Redis cannot be asked.
        """
        circuits = self._circuits(read, write)
        if circuits is None:
            return None
        shared_read, shared_write = circuits
        keys = [
            self.coordinator.key("slots", account_id),
            shared_read.state_key,
            shared_write.state_key,
        ]
        args = _circuit_args(shared_read, shared_write, refuse_degraded_reads=refuse_degraded_reads)
        answer: list[Any] = self.coordinator.run(
            lambda: self._occupied_if_trading(keys=keys, args=args)
        )
        trading = int(answer[0]) > 0
        _adopt(shared_read, shared_write, answer[2:], trading=trading)
        return _symbols(answer[1]) if trading else None

    def _circuits(
        self, read: BrokerCircuitBreaker, write: BrokerCircuitBreaker
    ) -> tuple[SharedCircuitBreaker, SharedCircuitBreaker] | None:
        if (
            isinstance(read, SharedCircuitBreaker)
            and isinstance(write, SharedCircuitBreaker)
            and self.checks_circuits(read, write)
        ):
            return read, write
        return None

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
        members: list[object] = self.coordinator.run(lambda: self._occupied(keys=[key]))
        return _symbols(members)


def _adopt(
    read: SharedCircuitBreaker, write: SharedCircuitBreaker, circuits: list[Any], *, trading: bool
) -> None:
    """Mirror the circuits a script read: in full, or briefly when both were closed."""
    if not trading:
        read.adopt(breaker_state(circuits[0]))
        write.adopt(breaker_state(circuits[1]))
        return
    rf, rrt, rgen, wf, wrt, wgen = circuits
    read.adopt(breaker_state(("closed", 1, 0, rf, -1, rrt, rgen)))
    write.adopt(breaker_state(("closed", 1, 0, wf, -1, wrt, wgen)))


def _symbols(members: Iterable[object]) -> list[str]:
    """The symbols of reservation members (``token|symbol``), sorted."""
    return sorted(
        (m.decode() if isinstance(m, bytes) else str(m)).split("|", 1)[1] for m in members
    )


def _circuit_args(
    read: SharedCircuitBreaker, write: SharedCircuitBreaker, *, refuse_degraded_reads: bool
) -> list[str]:
    """The circuits' arguments of the ``*_if_trading`` scripts (base recovery timeouts, ms).

    Rounded as the breakers round them for their own scripts.
    """
    return [
        str(round(read.recovery_timeout * 1000)),
        str(round(write.recovery_timeout * 1000)),
        "1" if refuse_degraded_reads else "0",
    ]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
