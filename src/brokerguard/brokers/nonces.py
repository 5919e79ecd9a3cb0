"""Strictly increasing nonces per API key, shared by every thread (no ccxt needed).

Kept apart from the ccxt adapter so that a fleet's shared nonces
(:mod:`brokerguard.coordination.nonces`) import without ccxt installed.
"""

from __future__ import annotations

import hashlib
import threading

from brokerguard.clock import SYSTEM_CLOCK, Clock

__all__ = ["NonceSource", "nonce_source_for"]


class NonceSource:
    """Strictly increasing nonces (milliseconds) for one API key, shared by every thread.

    Kraken rejects a nonce that is not larger than the last one it saw for the key. ccxt's own
    counter is per exchange instance, so two instances (or threads with their own instances)
    on one key can collide; one shared source per key cannot. Another writer on the same key
    that we do not share a source with (a second host, a hand-run script) can still be ahead of
    us, and Kraken never says by how much. So after a refusal :meth:`resync` moves the source
    *ahead of its own clock* by a learned offset that doubles with each consecutive refusal
    (1 s, then 2 s, 4 s ... past the last nonce handed out) and **keeps** that offset for
    every later nonce: a writer 10 s ahead is cleared after four refusals (1 + 2 + 4 + 8 s),
    and stays cleared while it keeps writing, instead of overtaking us again a second later.
    :meth:`accepted` ends a streak of refusals.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        resync_jump_ms: int = 1000,
        max_offset_ms: int = 32_000,
    ) -> None:
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self.max_offset_ms = max_offset_ms
        """The lead is never learned past this: a burst of refusals (a hostile or broken
        answer) cannot push our nonces hours ahead and lock every other client out of the key."""
        self._lock = threading.Lock()
        self._last = 0
        self._offset_ms = 0
        self._streak = 0
        self.resync_jump_ms = resync_jump_ms
        self.call_lock = threading.RLock()
        """Held across each private call: increasing nonces must also *arrive* in order."""
        self.collisions = 0
        """How many times the exchange refused one of our nonces."""

    def next(self) -> int:
        """Return a nonce larger than every nonce returned before (and than the learned mark)."""
        with self._lock:
            self._last = max(self._last + 1, int(self._clock.time() * 1000) + self._offset_ms)
            return self._last

    def resync(self) -> None:
        """Record a refused nonce and jump ahead so the next one clears the exchange's mark."""
        with self._lock:
            self.collisions += 1
            self._streak += 1
            jump = self.resync_jump_ms * 2 ** min(self._streak - 1, 16)
            now_ms = int(self._clock.time() * 1000)
            self._offset_ms = min(
                max(self._offset_ms, self._last - now_ms) + jump, self.max_offset_ms
            )
            self._last = max(self._last, now_ms + self._offset_ms - 1)

    def accepted(self) -> None:
        """Record that the exchange accepted a nonce: the next refusal starts a new streak."""
        with self._lock:
            self._streak = 0

    @property
    def last(self) -> int:
        """The last nonce handed out."""
        return self._last

    @property
    def offset_ms(self) -> int:
        """How far ahead of the clock the source runs, learned from refusals (milliseconds)."""
        return self._offset_ms


_nonce_sources: dict[str, NonceSource] = {}
_nonce_lock = threading.Lock()


def nonce_source_for(api_key: str, clock: Clock | None = None) -> NonceSource:
    """Return the process-wide nonce source for `api_key` (keyed by a hash, never the key)."""
    fingerprint = hashlib.sha256(api_key.encode()).hexdigest()
    with _nonce_lock:
        source = _nonce_sources.get(fingerprint)
        if source is None:
            source = _nonce_sources[fingerprint] = NonceSource(clock)
        return source
