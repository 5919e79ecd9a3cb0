"""Which worker enforces which account: leases renewed every pass, fenced in the store.

Every worker of a fleet runs the same loop over all accounts. Before enforcing an account it
asks for the account's lease (:meth:`AccountLeases.hold`): it gets it if the account is free or
already its own (that renews it), and nothing if another worker holds it. A worker that dies
stops renewing; its accounts fall to the others within one lease ttl. The lease's fencing token
goes with every store write of the enforcement (:meth:`StateStore.fenced`), so a worker paused
past its lease cannot write, and so cannot send: every order is journaled before it is sent.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

from brokerguard.coordination.redis_coordinator import Lease, RedisCoordinator

__all__ = ["AccountLeases", "worker_id"]


def worker_id() -> str:
    """A name for this worker process, unique across the fleet and its restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class AccountLeases:
    """This worker's leases on the fleet's accounts.

    Args:
        coordinator: the fleet's Redis.
        ttl: seconds a lease lasts unless renewed; longer than the slowest enforcement step.
        owner: this worker's name (default: :func:`worker_id`).
    """

    def __init__(
        self, coordinator: RedisCoordinator, *, ttl: float = 30.0, owner: str | None = None
    ) -> None:
        self.coordinator = coordinator
        self.ttl = ttl
        self.owner = owner or worker_id()
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def hold(self, account_id: str) -> Lease | None:
        """Take or renew the account's lease; None while another worker holds it.

        Raises CoordinationUnavailableError when Redis cannot be asked: act on nothing then.
        """
        lease = self.coordinator.acquire_lease(account_id, self.owner, self.ttl)
        with self._lock:
            if lease is None:
                self._held.pop(account_id, None)
            else:
                self._held[account_id] = lease
        return lease

    def held(self) -> dict[str, Lease]:
        """The leases this worker holds (as of their last renewal)."""
        with self._lock:
            return dict(self._held)

    def release_all(self) -> None:
        """Give every account back (a clean shutdown: the others take over at once)."""
        with self._lock:
            leases, self._held = list(self._held.values()), {}
        for lease in leases:
            self.coordinator.release_lease(lease)
