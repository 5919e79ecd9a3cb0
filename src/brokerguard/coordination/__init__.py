"""Fleet coordination: shared breakers, leases with fencing, nonces, rate limits (Redis).

Absent ``coordination_url``, brokerguard runs embedded: one process, in-process breakers, no
leases needed. With ``coordination_url = "redis://..."`` every process of a fleet shares the
state in :mod:`brokerguard.coordination.redis_coordinator`.
"""

from brokerguard.coordination.breaker import NotAdmittedError, SharedCircuitBreaker
from brokerguard.coordination.nonces import RedisNonceSource
from brokerguard.coordination.ratelimit import (
    FleetRateLimitedError,
    SharedRateLimiter,
    bucket_fingerprint,
)
from brokerguard.coordination.redis_coordinator import Lease, RedisCoordinator, SharedBreakerState
from brokerguard.coordination.slots import SharedSlots

__all__ = [
    "FleetRateLimitedError",
    "Lease",
    "NotAdmittedError",
    "RedisCoordinator",
    "RedisNonceSource",
    "SharedBreakerState",
    "SharedCircuitBreaker",
    "SharedRateLimiter",
    "SharedSlots",
    "bucket_fingerprint",
]
