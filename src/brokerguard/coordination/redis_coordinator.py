"""Fleet coordination on Redis: shared breaker state, account leases with fencing, nonces.

Many bot processes against one broker must agree. Everything shared lives in Redis and every
change is one Lua script, so it is atomic without locks held across the network:

- **breakers**: a hash per (broker, scope) holds the circuit; a circuit opened by one process
  rejects the next call of every other, and half-open admits at most ``success_threshold``
  probes fleet-wide (:class:`SharedCircuitBreaker`);
- **leases**: one worker enforces an account at a time. A lease expires by itself (a dead
  worker frees its accounts), is renewed by its holder, and carries a fencing token from a
  per-account counter that only grows; the store refuses writes with an older token
  (:meth:`StateStore.fenced`), so a worker that was paused past its lease cannot act on it.
  Redis can lose that counter (a restart without persistence, a failover to a replica that
  had not synced): every script that issues a token takes a *floor* (the highest token the
  store is known to hold) and moves the counter past it first, and
  :meth:`RedisCoordinator.advance_lease` re-issues a held lease's token above a floor the
  store answered with, so tokens stay monotonic across Redis's data loss;
- **nonces**: an API key's nonce is one counter for the fleet, strictly increasing across
  processes (:class:`RedisNonceSource`).

Time inside the scripts is Redis's own (``TIME``): processes with skewed clocks still agree.
When Redis cannot be reached every operation raises :class:`CoordinationUnavailableError`:
unknown means no new risk, and no action on any account.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import redis
from redis.commands.core import Script

from brokerguard._redact import redact_url
from brokerguard.errors import ConfigurationError, CoordinationUnavailableError

__all__ = ["Lease", "RedisCoordinator", "SharedBreakerState"]

log = logging.getLogger("brokerguard.coordination")

T = TypeVar("T")

_NOW_MS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Every breaker script answers {state, allowed, probe, failures, remaining_ms, rt_ms, gen}.
# remaining_ms: -1 = none (closed, or forced open: no automatic probe).
# read and admit take ARGV = (success_threshold, base recovery timeout in ms).
_LOAD_CIRCUIT: Final = (
    _NOW_MS
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'open_until', 'rt', 'probes', 'gen')
local state = h[1] or 'closed'
local failures = tonumber(h[2]) or 0
local open_until = tonumber(h[3]) or 0
local rt = tonumber(h[4]) or tonumber(ARGV[2])
local probes = tonumber(h[5]) or 0
local gen = tonumber(h[6]) or 0
"""
)

# The read of one circuit as a Lua function, so a script of another coordination piece
# (SharedSlots' reservation) checks a circuit by the very same rules in its own round trip.
# Needs `now` (_NOW_MS); `default_rt` is the base recovery timeout in ms.
CIRCUIT_READ_LUA: Final = """
local function read_circuit(key, default_rt)
  local h = redis.call('HMGET', key, 'state', 'failures', 'open_until', 'rt', 'gen')
  local state = h[1] or 'closed'
  local failures = tonumber(h[2]) or 0
  local open_until = tonumber(h[3]) or 0
  local rt = tonumber(h[4]) or tonumber(default_rt)
  local gen = tonumber(h[5]) or 0
  local remaining = -1
  if state == 'open' then remaining = math.max(0, open_until - now) end
  if state == 'half_open' then remaining = 0 end
  return {state, state == 'closed' and 1 or 0, 0, failures, remaining, rt, gen}
end
"""

_BREAKER_READ: Final = _NOW_MS + CIRCUIT_READ_LUA + "return read_circuit(KEYS[1], ARGV[2])\n"

_BREAKER_ADMIT: Final = (
    _LOAD_CIRCUIT
    + """
if state == 'closed' then return {state, 1, 0, failures, -1, rt, gen} end
if state == 'forced' then return {state, 0, 0, failures, -1, rt, gen} end
if state == 'open' then
  if now < open_until then return {state, 0, 0, failures, open_until - now, rt, gen} end
  state = 'half_open'
  probes = 0
  gen = gen + 1
  redis.call('HSET', KEYS[1], 'state', state, 'probes', 0, 'probe_ok', 0, 'gen', gen)
end
if probes >= tonumber(ARGV[1]) then return {state, 0, 0, failures, 0, rt, gen} end
redis.call('HINCRBY', KEYS[1], 'probes', 1)
return {state, 1, 1, failures, 0, rt, gen}
"""
)

_BREAKER_SUCCESS: Final = """
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'rt', 'gen')
local state = h[1] or 'closed'
local failures = tonumber(h[2]) or 0
local rt = tonumber(h[3]) or tonumber(ARGV[4])
local gen = tonumber(h[4]) or 0
if gen ~= tonumber(ARGV[1]) then return {state, 0, 0, failures, -1, rt, gen} end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'probes', -1)
  local ok = redis.call('HINCRBY', KEYS[1], 'probe_ok', 1)
  if ok >= tonumber(ARGV[3]) then
    state = 'closed'
    failures = 0
    rt = tonumber(ARGV[4])
    gen = gen + 1
    redis.call('HSET', KEYS[1], 'state', state, 'failures', 0, 'rt', rt, 'probes', 0,
               'probe_ok', 0, 'gen', gen)
  end
elseif state == 'closed' and failures > 0 then
  failures = 0
  redis.call('HSET', KEYS[1], 'failures', 0)
end
return {state, 0, 0, failures, -1, rt, gen}
"""

_BREAKER_FAILURE: Final = (
    _NOW_MS
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'rt', 'gen')
local state = h[1] or 'closed'
local rt = tonumber(h[3]) or tonumber(ARGV[5])
local gen = tonumber(h[4]) or 0
if gen ~= tonumber(ARGV[1]) then
  return {state, 0, 0, tonumber(h[2]) or 0, -1, rt, gen}
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local open = false
if ARGV[2] == '1' then
  if state == 'half_open' then rt = math.min(rt * 2, tonumber(ARGV[6])) end
  open = true
elseif state == 'closed' and (ARGV[3] == '1' or failures >= tonumber(ARGV[4])) then
  open = true
end
if open then
  state = 'open'
  gen = gen + 1
  redis.call('HSET', KEYS[1], 'state', state, 'open_until', now + rt, 'rt', rt, 'probes', 0,
             'probe_ok', 0, 'gen', gen)
  return {state, 0, 0, failures, rt, rt, gen}
end
return {state, 0, 0, failures, -1, rt, gen}
"""
)

_BREAKER_ABANDON: Final = """
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0
if ARGV[2] == '1' and gen == tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'probes', -1)
end
return 1
"""

_BREAKER_FORCE: Final = """
local gen = (tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0) + 1
if ARGV[1] == 'open' then
  redis.call('HSET', KEYS[1], 'state', 'forced', 'probes', 0, 'probe_ok', 0, 'gen', gen)
  return {'forced', 0, 0, 0, -1, tonumber(ARGV[2]), gen}
end
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'rt', ARGV[2], 'probes', 0,
           'probe_ok', 0, 'gen', gen)
return {'closed', 1, 0, 0, -1, tonumber(ARGV[2]), gen}
"""

# Issuing a token: the counter first moves past ARGV floor (a fence the store is known to hold),
# so a token is never issued twice even after Redis lost the counter.
_NEXT_FENCE: Final = """
local function next_token(floor)
  local counter = tonumber(redis.call('GET', KEYS[2])) or 0
  if counter < floor then redis.call('SET', KEYS[2], string.format('%d', floor)) end
  return redis.call('INCR', KEYS[2])
end
"""

# ARGV = (owner, ttl ms, floor). A lease its owner already holds is extended, and re-issued
# above the floor if its token is below it (at the floor, it may be the very token that set
# the mark: the store's claim tells a twin apart by its holder).
_LEASE_ACQUIRE: Final = (
    _NEXT_FENCE
    + """
local floor = tonumber(ARGV[3]) or 0
local current = redis.call('GET', KEYS[1])
if current then
  local owner, token = string.match(current, '^(.*)|(%d+)$')
  if owner ~= ARGV[1] then return 0 end
  if tonumber(token) >= floor then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
end
local token = next_token(floor)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""
)

# ARGV = (the lease's value, floor, ttl ms): a new token above the floor for a held lease.
_LEASE_ADVANCE: Final = (
    _NEXT_FENCE
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local owner = string.match(ARGV[1], '^(.*)|%d+$')
local token = next_token(tonumber(ARGV[2]))
redis.call('SET', KEYS[1], owner .. '|' .. token, 'PX', ARGV[3])
return token
"""
)

_LEASE_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# ARGV = (the lease's value, new owner, ttl ms, floor).
# KEYS = leases, ARGV = (ttl ms, their values...): 1 for each still held (and extended).
_LEASE_RENEW_MANY: Final = """
local held = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""

_LEASE_TRANSFER: Final = (
    _NEXT_FENCE
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local token = next_token(tonumber(ARGV[4]))
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. token, 'PX', ARGV[3])
return token
"""
)

_LEASE_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

_HEARTBEAT: Final = (
    _NOW_MS
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)

_NONCE: Final = (
    _NOW_MS
    + """
local last = tonumber(redis.call('GET', KEYS[1])) or 0
local nonce = math.max(last + 1, now + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%d', nonce))
return nonce
"""
)


@dataclass(frozen=True, slots=True)
class SharedBreakerState:
    """What a breaker script answered about the fleet's circuit."""

    state: str  # closed, open, half_open, forced
    allowed: bool
    probe: bool
    failures: int
    remaining: float | None  # seconds until the probe; None: none scheduled
    recovery_timeout: float
    generation: int


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to act on one account, until it expires.

    ``token`` is the fencing token: it only grows across every lease ever granted for the
    account, and the store refuses writes carrying an older one.
    """

    account_id: str
    owner: str
    token: int
    ttl: float

    @property
    def value(self) -> str:
        """What Redis holds for this lease."""
        return f"{self.owner}|{self.token}"


class RedisCoordinator:
    """The fleet's shared state on one Redis (``redis://host:port/db``).

    Args:
        url: the Redis URL (a password, if any, comes from the URL's environment, never logs).
        namespace: prefix of every key, so several fleets can share one Redis.
        timeout: seconds for connecting and for each command; short, because an answer that
            does not come means "unknown", and unknown blocks trading.
        client: an existing ``redis.Redis`` (tests); `url` is then only shown.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "brokerguard",
        timeout: float = 0.5,
        client: redis.Redis | None = None,
        password: str | None = None,
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                "coordination_url must be redis://, rediss:// or unix://, got "
                f"{url.split(':', maxsplit=1)[0]}"
            )
        self.url = url
        self.namespace = namespace
        self._redis = client or redis.Redis.from_url(
            url, password=password, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._scripts: dict[str, Script] = {
            name: self._redis.register_script(body)
            for name, body in (
                ("breaker_read", _BREAKER_READ),
                ("breaker_admit", _BREAKER_ADMIT),
                ("breaker_success", _BREAKER_SUCCESS),
                ("breaker_failure", _BREAKER_FAILURE),
                ("breaker_abandon", _BREAKER_ABANDON),
                ("breaker_force", _BREAKER_FORCE),
                ("lease_acquire", _LEASE_ACQUIRE),
                ("lease_advance", _LEASE_ADVANCE),
                ("lease_renew", _LEASE_RENEW),
                ("lease_renew_many", _LEASE_RENEW_MANY),
                ("lease_release", _LEASE_RELEASE),
                ("lease_transfer", _LEASE_TRANSFER),
                ("nonce", _NONCE),
                ("heartbeat", _HEARTBEAT),
            )
        }
        self._lock = threading.Lock()
        self._reachable = True
        self._reason = "not asked yet"

    # ------------------------------------------------------------------ health

    @property
    def safe_url(self) -> str:
        """The URL with any password masked (user:password@ and parameters)."""
        return redact_url(self.url)

    def ping(self) -> bool:
        """Ask Redis; record and return whether it answered."""
        try:
            self._run(self._redis.ping)
        except CoordinationUnavailableError:
            return False
        return True

    @property
    def reachable(self) -> bool:
        """Whether the last command reached Redis (fail closed when it did not)."""
        return self._reachable

    def status(self) -> dict[str, Any]:
        """For /status and the CLI: where, whether reachable, and why not."""
        return {"url": self.safe_url, "reachable": self._reachable, "reason": self._reason}

    @property
    def client(self) -> redis.Redis:
        """The Redis client (for other coordination pieces: register scripts, commands)."""
        return self._redis

    def run(self, command: Callable[[], T]) -> T:
        """Run a Redis command through the fail-closed seam.

        A Redis error becomes :class:`CoordinationUnavailableError` and marks the coordinator
        unreachable; the next good answer marks it reachable again.
        """
        return cast("T", self._run(command))

    def key(self, *parts: str) -> str:
        """The namespaced key for `parts` (``brokerguard:breaker:kraken:read``)."""
        return ":".join((self.namespace, *parts))

    def close(self) -> None:
        """Close the connections."""
        self._redis.close()

    # ------------------------------------------------------------------ breaker scripts

    def breaker(self, script: str, key: str, *args: str) -> SharedBreakerState:
        """Run one breaker script on `key`; see :class:`SharedCircuitBreaker`."""
        answer = self._run(lambda: self._scripts[f"breaker_{script}"](keys=[key], args=args))
        return _breaker_state(answer)

    # ------------------------------------------------------------------ leases

    def acquire_lease(
        self, account_id: str, owner: str, ttl: float, *, floor: int = 0
    ) -> Lease | None:
        """Take (or extend, if `owner` holds it) the account's lease; None if another holds it.

        A new token is above `floor` (the highest fence the store is known to hold for the
        account); a lease `owner` already holds keeps its token unless it is below `floor`,
        when it is re-issued above it.
        """
        if "|" in owner:
            raise ConfigurationError(f"a lease owner cannot contain '|', got {owner!r}")
        token = int(
            self._run(
                lambda: self._scripts["lease_acquire"](
                    keys=[self.key("lease", account_id), self.key("fence", account_id)],
                    args=[owner, _ms(ttl), floor],
                )
            )
        )
        return Lease(account_id, owner, token, ttl) if token > 0 else None

    def advance_lease(self, lease: Lease, floor: int) -> Lease | None:
        """Re-issue the held `lease` with a token above `floor`; None if it is not held.

        For a token the store refused because it has already seen `floor` (Redis lost its
        counter since): the lease keeps its holder and gets a token the store has not seen.
        """
        token = int(
            self._run(
                lambda: self._scripts["lease_advance"](
                    keys=[self.key("lease", lease.account_id), self.key("fence", lease.account_id)],
                    args=[lease.value, floor, _ms(lease.ttl)],
                )
            )
        )
        return Lease(lease.account_id, lease.owner, token, lease.ttl) if token > 0 else None

    def renew_lease(self, lease: Lease) -> bool:
        """Extend `lease` by its ttl; False if it expired or another worker holds it now."""
        renewed = self._run(
            lambda: self._scripts["lease_renew"](
                keys=[self.key("lease", lease.account_id)], args=[lease.value, _ms(lease.ttl)]
            )
        )
        return bool(int(renewed))

    def renew_leases(self, leases: Sequence[Lease], ttl: float) -> list[Lease]:
        """Extend every lease still held by `ttl` (one round trip); return those not held."""
        if not leases:
            return []
        keys = [self.key("lease", lease.account_id) for lease in leases]
        held = self._run(
            lambda: self._scripts["lease_renew_many"](
                keys=keys, args=[_ms(ttl), *(lease.value for lease in leases)]
            )
        )
        return [lease for lease, kept in zip(leases, held, strict=True) if not int(kept)]

    def transfer_lease(self, lease: Lease, owner: str, *, floor: int = 0) -> int | None:
        """Hand `lease` to `owner` with a new fencing token (None if `lease` is not held).

        The account is never without a holder during a handover: `owner` finds it already
        its own at its next acquire; if `owner` is gone, the lease expires after its ttl. The
        new token is above `floor` and `lease`'s own token.
        """
        token = int(
            self._run(
                lambda: self._scripts["lease_transfer"](
                    keys=[self.key("lease", lease.account_id), self.key("fence", lease.account_id)],
                    args=[lease.value, owner, _ms(lease.ttl), max(floor, lease.token)],
                )
            )
        )
        return token or None

    def release_lease(self, lease: Lease) -> None:
        """Give the account up now (only if `lease` still holds it)."""
        self._run(
            lambda: self._scripts["lease_release"](
                keys=[self.key("lease", lease.account_id)], args=[lease.value]
            )
        )

    def lease_holder(self, account_id: str) -> tuple[str, int] | None:
        """Who holds the account's lease, and with which token (None: nobody)."""
        raw = self._run(lambda: self._redis.get(self.key("lease", account_id)))
        if raw is None:
            return None
        owner, _, token = bytes(raw).decode().rpartition("|")
        return owner, int(token)

    def lease_holders(self, account_ids: Sequence[str]) -> dict[str, tuple[str, int] | None]:
        """Who holds each account's lease (one round trip for all of them)."""
        keys = [self.key("lease", a) for a in account_ids]
        raws = self._run(lambda: self._redis.mget(keys)) if keys else []
        holders: dict[str, tuple[str, int] | None] = {}
        for account_id, raw in zip(account_ids, raws, strict=True):
            if raw is None:
                holders[account_id] = None
            else:
                owner, _, token = bytes(raw).decode().rpartition("|")
                holders[account_id] = (owner, int(token))
        return holders

    def workers(self) -> dict[str, float]:
        """Every worker's seconds since its last heartbeat (without beating for anyone)."""

        def read() -> tuple[Any, Any]:
            return self._redis.time(), self._redis.zrange(
                self.key("workers"), 0, -1, withscores=True
            )

        (seconds, micros), members = self._run(read)
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return {bytes(w).decode(): (now_ms - float(at)) / 1000 for w, at in members}

    def heartbeat(self, owner: str, ttl: float) -> list[str]:
        """Say `owner` is alive; return every worker that said so within `ttl` (sorted)."""
        live = self._run(
            lambda: self._scripts["heartbeat"](keys=[self.key("workers")], args=[owner, _ms(ttl)])
        )
        return sorted(bytes(w).decode() for w in live)

    def leave(self, owner: str) -> None:
        """`owner` is shutting down: drop it from the live workers now."""
        self._run(lambda: self._redis.zrem(self.key("workers"), owner))

    # ------------------------------------------------------------------ nonces

    def next_nonce(self, api_key: str, *, jump_ms: int = 0) -> int:
        """A nonce for `api_key` larger than any handed out in the fleet (ms, Redis time).

        The key is stored under a hash of the API key, never the key itself.
        """
        fingerprint = hashlib.sha256(api_key.encode()).hexdigest()[:32]
        return int(
            self._run(
                lambda: self._scripts["nonce"](
                    keys=[self.key("nonce", fingerprint)], args=[jump_ms]
                )
            )
        )

    # ------------------------------------------------------------------ internals

    def _run(self, command: Any) -> Any:
        try:
            answer = command()
        except redis.RedisError as exc:
            self._note(reachable=False, reason=f"{type(exc).__name__}: {exc}")
            raise CoordinationUnavailableError(
                f"coordination store {self.safe_url} unreachable ({type(exc).__name__}: {exc}):"
                " trading is blocked until it answers"
            ) from exc
        if not self._reachable:
            self._note(reachable=True, reason="")
        return answer

    def _note(self, *, reachable: bool, reason: str) -> None:
        with self._lock:
            was = self._reachable
            self._reachable = reachable
            self._reason = reason
        if was and not reachable:
            log.critical(
                "coordination store %s UNREACHABLE (%s): new risk is blocked fleet-wide",
                self.safe_url,
                reason,
            )
        elif reachable and not was:
            log.warning("coordination store %s reachable again", self.safe_url)

    def __repr__(self) -> str:
        return f"RedisCoordinator({self.safe_url!r})"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def breaker_state(answer: Sequence[Any]) -> SharedBreakerState:
    """Parse a breaker script's answer (also the circuits a SharedSlots script read)."""
    return _breaker_state(answer)


def _breaker_state(answer: Sequence[Any]) -> SharedBreakerState:
    state, allowed, probe, failures, remaining, rt, gen = answer
    return SharedBreakerState(
        state=state.decode() if isinstance(state, bytes) else str(state),
        allowed=bool(int(allowed)),
        probe=bool(int(probe)),
        failures=int(failures),
        remaining=None if int(remaining) < 0 else int(remaining) / 1000,
        recovery_timeout=int(rt) / 1000,
        generation=int(gen),
    )
