"""Kraken nonces for a fleet: one counter per API key in Redis, across every process.

:class:`~brokerguard.brokers.ccxt.NonceSource` keeps one key's nonces increasing inside one
process. Two processes on one key each keep their own counter and collide; this source asks
Redis for every nonce instead (one atomic script: ``max(last + 1, now_ms)``), so the fleet's
nonces for a key are strictly increasing whatever process draws them. Requests can still
*arrive* out of order across processes; the adapter's one re-sync-and-retry covers that.
"""

from __future__ import annotations

from brokerguard.brokers.nonces import NonceSource
from brokerguard.coordination.redis_coordinator import RedisCoordinator

__all__ = ["RedisNonceSource"]


class RedisNonceSource(NonceSource):
    """Nonces for `api_key` drawn from the fleet's counter (raises when Redis is unreachable).

    A nonce that cannot be drawn means the private call is not made: the error surfaces as
    :class:`~brokerguard.errors.CoordinationUnavailableError`, a refusal, never a guess.
    """

    def __init__(
        self, coordinator: RedisCoordinator, api_key: str, *, resync_jump_ms: int = 1000
    ) -> None:
        super().__init__(resync_jump_ms=resync_jump_ms)
        self._coordinator = coordinator
        self._api_key = api_key

    def next(self) -> int:
        """Return a nonce larger than every nonce the fleet drew for this key."""
        nonce = self._coordinator.next_nonce(self._api_key)
        with self._lock:
            self._last = max(self._last, nonce)
        return nonce

    def resync(self) -> None:
        """The exchange refused a nonce: jump the fleet's counter ahead."""
        with self._lock:
            self.collisions += 1
        nonce = self._coordinator.next_nonce(self._api_key, jump_ms=self.resync_jump_ms)
        with self._lock:
            self._last = max(self._last, nonce)
