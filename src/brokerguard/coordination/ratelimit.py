"""Per-API-key rate limits for a fleet: one token bucket in Redis, shared by every worker.

A venue counts calls per API key, not per process. With a local
:class:`~brokerguard.resilience.RateLimiter` in each of N workers on one key, the fleet spends
N times the budget and the venue answers with rate-limit errors (Kraken: a lockout).
:class:`SharedRateLimiter` keeps the key's bucket in Redis and takes a call's tokens in one Lua
script (refill and take, atomic):

- **weights**: a call takes ``weight`` tokens (Kraken's trade history costs 2 on its REST
  counter; ccxt gives each endpoint a ``cost``). The bucket holds at most ``burst`` tokens and
  refills at ``rate`` tokens per second; any window of ``w`` seconds holds calls weighing at
  most ``burst + rate * w`` fleet-wide.
- **waiting**: when the bucket is short, the script *reserves* the tokens (the bucket goes
  below zero) and answers how long until they are due; the caller sleeps that long on its
  injected clock and calls. One round trip per call, no polling of Redis, and callers are
  served in the order they asked. A wait longer than ``max_wait_s`` reserves nothing and
  raises :class:`FleetRateLimitedError` (a :class:`~brokerguard.errors.RateLimitedError` that
  says nothing was sent), so a saturated fleet refuses calls instead of queueing forever.
- **time**: the script reads Redis's own clock (``TIME``), so workers whose clocks disagree
  still share one refill schedule; only Redis's clock must move forward (if it jumps back,
  the bucket simply does not refill until it catches up).
- **fail closed**: Redis unreachable raises :class:`~brokerguard.coordination.NotAdmittedError`
  (a :class:`~brokerguard.errors.CoordinationUnavailableError`): the call is not made. There
  is no fallback to a local or unlimited budget: a worker that cannot see the fleet's budget
  cannot know that the key has any left.
- **the key's identity**: the bucket is named by :func:`bucket_fingerprint`, a SHA-256 of the
  venue and the API key's *value* under a fixed salt; never the key, its variable, or the
  secret. The value, not the variable's name, because the venue counts per key: two broker
  entries (or two hosts) naming the same key differently must share one bucket. API keys are
  long random strings, so the digest cannot be reversed by guessing; the salt keeps it apart
  from other digests of the same key (the nonce counter's, anyone else's plain SHA-256).

:func:`take` is the bucket's arithmetic in pure Python, the same steps as the script: the
property tests check the budget on it, and the Redis tests check that the script agrees.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from brokerguard._validation import seconds_problem
from brokerguard.clock import Clock
from brokerguard.coordination.breaker import NotAdmittedError
from brokerguard.coordination.redis_coordinator import RedisCoordinator
from brokerguard.errors import ConfigurationError, CoordinationUnavailableError, RateLimitedError
from brokerguard.resilience.ratelimit import RateLimiter, check_weight

__all__ = [
    "BucketState",
    "FleetRateLimitedError",
    "SharedRateLimiter",
    "TakeResult",
    "bucket_fingerprint",
    "take",
]

_SALT: Final = b"brokerguard:ratelimit:v1\0"

# KEYS = (bucket). ARGV = (rate tokens/s, capacity, weight, max wait us, ttl ms, now us or '').
# Answers {granted 0/1, wait us, now us, tokens left as a string}. Lua numbers are doubles and
# Redis truncates a returned number to an integer: times are integral microseconds, and the
# tokens travel as a string ('%.17g' reads back to the same double).
_TAKE: Final = """
local now
if ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local weight = tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(h[1])
local updated = tonumber(h[2])
if tokens == nil or updated == nil then
  tokens = capacity
  updated = now
end
if now > updated then
  tokens = math.min(capacity, tokens + (now - updated) * rate / 1000000)
  updated = now
end
local wait = 0
if tokens < weight then wait = math.ceil((weight - tokens) * 1000000 / rate) end
if wait > tonumber(ARGV[4]) then
  return {0, wait, now, string.format('%.17g', tokens)}
end
tokens = tokens - weight
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'updated', string.format('%d', updated))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, wait, now, string.format('%.17g', tokens)}
"""


def bucket_fingerprint(venue: str, api_key: str | None) -> str:
    """Name the bucket of `api_key` on `venue` without revealing either (see the module doc).

    `venue` is the ccxt exchange id for a real exchange; without an API key (a paper broker,
    public endpoints) the bucket is the venue's alone, shared by every worker that names it.
    """
    material = venue.encode() + b"\0" + (api_key or "").encode()
    return hashlib.sha256(_SALT + material).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket as Redis holds it: tokens left (negative: reserved) at ``updated`` (us)."""

    tokens: float
    updated: int


@dataclass(frozen=True, slots=True)
class TakeResult:
    """What one take answered: whether the tokens are yours, and when they are due."""

    granted: bool
    wait_us: int
    """Microseconds until the tokens are due (0: now); when not granted, the wait refused."""
    now_us: int
    """The bucket's clock when it answered (Redis's ``TIME``)."""
    tokens: float
    """Tokens left after the take (negative: reserved by callers still waiting)."""

    @property
    def due_us(self) -> int:
        """When the call may be made, on the bucket's clock."""
        return self.now_us + self.wait_us


def take(
    state: BucketState | None,
    now_us: int,
    *,
    rate: float,
    capacity: float,
    weight: float,
    max_wait_us: int,
) -> tuple[BucketState | None, TakeResult]:
    """Refill `state` to `now_us` and take `weight` tokens (the script's steps, in Python).

    Returns the new state (the old one when nothing was taken) and the answer. A missing
    state is a full bucket: a bucket Redis expired had refilled anyway.
    """
    tokens, updated = (capacity, now_us) if state is None else (state.tokens, state.updated)
    if now_us > updated:
        tokens = min(capacity, tokens + (now_us - updated) * rate / 1_000_000)
        updated = now_us
    wait = math.ceil((weight - tokens) * 1_000_000 / rate) if tokens < weight else 0
    if wait > max_wait_us:
        return state, TakeResult(granted=False, wait_us=wait, now_us=now_us, tokens=tokens)
    tokens -= weight
    return BucketState(tokens, updated), TakeResult(
        granted=True, wait_us=wait, now_us=now_us, tokens=tokens
    )


class FleetRateLimitedError(RateLimitedError):
    """The fleet's budget for this API key is spent for longer than ``max_wait_s``.

    Raised before the call: nothing reached the broker (``not_processed``), and an order
    refused this way was certainly not placed. ``retry_after`` is when the tokens would have
    been due. It is a :class:`RateLimitedError` because it is the venue's budget that is
    spent: retries and breakers treat it as they treat the venue saying so.
    """

    not_processed = True


class SharedRateLimiter(RateLimiter):
    """A :class:`RateLimiter` whose bucket is the fleet's, in Redis, for one API key.

    Args:
        coordinator: the fleet's :class:`RedisCoordinator`.
        fingerprint: the bucket's name, from :func:`bucket_fingerprint` (never the key).
        rate: tokens per second, the whole fleet together.
        burst: the bucket's capacity (and the heaviest call it can serve).
        clock: where the caller sleeps while its tokens come due.
        max_wait_s: the longest wait accepted; a longer one raises
            :class:`FleetRateLimitedError` and reserves nothing.
        time_us: tests and simulations only: the bucket's clock in microseconds, used instead
            of Redis's ``TIME`` (every limiter on the bucket must then share it).

    Every worker of the fleet must configure one key with the same ``rate`` and ``burst``.
    """

    def __init__(
        self,
        coordinator: RedisCoordinator,
        fingerprint: str,
        rate: float,
        burst: int = 1,
        *,
        clock: Clock | None = None,
        max_wait_s: float = 10.0,
        time_us: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(rate, burst, clock=clock)
        problems = seconds_problem("max_wait_s", max_wait_s)
        if problems:
            raise ConfigurationError("invalid SharedRateLimiter: " + "; ".join(problems))
        self.coordinator = coordinator
        self.fingerprint = fingerprint
        self.max_wait_s = float(max_wait_s)
        self.key = coordinator.key("ratelimit", fingerprint)
        self._time_us = time_us
        self._script = coordinator.client.register_script(_TAKE)
        # A bucket left alone refills in burst/rate seconds (from at most max_wait of
        # reservations below zero): then it is full, and an absent key means exactly that.
        self._ttl_ms = math.ceil((burst / self.rate + self.max_wait_s) * 1000) + 1000
        self.refused = 0
        """Calls refused because the wait would have exceeded ``max_wait_s`` (for the status)."""

    def take(self, weight: float = 1.0) -> TakeResult:
        """Ask the fleet's bucket for `weight` tokens once, without sleeping.

        Raises :class:`NotAdmittedError` when Redis cannot be asked.
        """
        check_weight(weight, self.burst)
        now = "" if self._time_us is None else str(int(self._time_us()))
        args = [
            repr(self.rate),
            str(self.burst),
            repr(float(weight)),
            str(math.floor(self.max_wait_s * 1_000_000)),
            str(self._ttl_ms),
            now,
        ]
        try:
            answer: Any = self.coordinator.run(lambda: self._script(keys=[self.key], args=args))
        except CoordinationUnavailableError as exc:
            raise NotAdmittedError(
                f"rate limit {self.fingerprint[:8]}: the fleet's budget cannot be read, the call "
                f"is not made ({exc})"
            ) from exc
        granted, wait_us, now_us, tokens = answer
        return TakeResult(
            granted=bool(int(granted)),
            wait_us=int(wait_us),
            now_us=int(now_us),
            tokens=float(tokens.decode() if isinstance(tokens, bytes) else tokens),
        )

    def acquire(self, weight: float = 1.0) -> float:
        """Take `weight` tokens of the fleet's budget, sleeping until due; return the wait.

        Raises :class:`FleetRateLimitedError` when the wait would exceed ``max_wait_s`` and
        :class:`NotAdmittedError` when Redis cannot be asked: in both cases no call is made.
        """
        wait = self._granted(weight)
        if wait > 0:
            self.clock.sleep(wait)
        return wait

    async def aacquire(self, weight: float = 1.0) -> float:
        """Async twin of :meth:`acquire`; Redis is asked from a worker thread (one round trip)."""
        wait = await asyncio.to_thread(self._granted, weight)
        if wait > 0:
            await self.clock.asleep(wait)
        return wait

    def _granted(self, weight: float) -> float:
        """The fleet's answer for `weight` tokens: the wait before the call, or a refusal."""
        answer = self.take(weight)
        wait = answer.wait_us / 1_000_000
        if not answer.granted:
            with self._lock:
                self.refused += 1
            raise FleetRateLimitedError(
                f"rate limit {self.fingerprint[:8]}: the fleet's budget is spent for {wait:.1f}s"
                f" (over max_wait_s={self.max_wait_s:g}); the call is not made",
                retry_after=wait,
            )
        if wait > 0:
            with self._lock:
                self.waited += wait
        return wait

    def __repr__(self) -> str:
        return (
            f"SharedRateLimiter({self.fingerprint[:8]}..., rate={self.rate:g}, "
            f"burst={self.burst}, {self.coordinator.safe_url})"
        )
