"""Which worker enforces which account: leases renewed every pass, fenced in the store.

Every worker of a fleet runs the same loop over all accounts. Each pass starts with a
heartbeat (:meth:`AccountLeases.begin_pass`) that also tells who is alive; the accounts are
spread over the live workers by rendezvous hashing, so each worker *prefers* about 1/N of them
and the assignment moves as little as possible when a worker comes or goes. Before enforcing an
account a worker asks for its lease (:meth:`AccountLeases.hold`), but only for the accounts it
prefers; it gives back any other it holds. The lease arbitrates when two workers' views of the
membership differ for a moment: at most one holds it. A worker that dies stops its heartbeat
and its renewals; within one lease ttl its accounts are preferred by, and leased to, others.
The lease's fencing token goes with every store write of the enforcement
(:meth:`StateStore.fenced`), so a worker paused past its lease cannot write, and so cannot
send: every order is journaled before it is sent.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable

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
        self._live: list[str] = [self.owner]
        self._beat_at = -math.inf
        self._accounts: list[str] = []
        self._lock = threading.Lock()

    def begin_pass(self, accounts: Iterable[str] | None = None) -> list[str]:
        """Heartbeat, learn the live workers, and claim the free accounts this worker prefers.

        `accounts` (the fleet's accounts) is remembered for later claims. Claiming at once,
        rather than when the pass reaches each account, is what makes a takeover take one
        lease ttl and not one ttl plus a whole pass. Raises when Redis cannot be asked.
        """
        live = self.coordinator.heartbeat(self.owner, self.ttl)
        with self._lock:
            self._live = live if self.owner in live else sorted([*live, self.owner])
            self._beat_at = time.monotonic()  # wall-clock-ok: paced like the lease ttl, in Redis
            if accounts is not None:
                self._accounts = list(accounts)
            known = list(self._accounts)
            held = set(self._held)
        for account_id in held:  # hand over what a newcomer now prefers
            if not self.prefers(account_id):
                self._hand_over(account_id)
        # Claim what this worker prefers and does not hold: at every heartbeat, not only when
        # the membership changes, because a departed worker's leases can outlive its heartbeat
        # by a moment (its last renewals came after its last heartbeat).
        for account_id in known:
            if account_id not in held and self.prefers(account_id):
                lease = self.coordinator.acquire_lease(account_id, self.owner, self.ttl)
                if lease is not None:
                    with self._lock:
                        self._held[account_id] = lease
        return live

    def _fresh_membership(self) -> None:
        """Heartbeat again when a long pass has outlived a third of the ttl.

        Membership then follows a departure mid-pass, so accounts later in the pass move to
        the survivors sooner; the heartbeat still only beats while passes make progress.
        """
        if time.monotonic() - self._beat_at > self.ttl / 3:  # wall-clock-ok
            self.begin_pass()

    def preferred_worker(self, account_id: str) -> str:
        """The live worker that ranks first for the account (rendezvous hashing)."""
        with self._lock:
            live = list(self._live)
        return max(live, key=lambda worker: _score(account_id, worker))

    def _hand_over(self, account_id: str) -> None:
        """Give a held account to the worker that now prefers it, without a gap."""
        with self._lock:
            stale = self._held.pop(account_id, None)
        if stale is not None:
            self.coordinator.transfer_lease(stale, self.preferred_worker(account_id))

    def prefers(self, account_id: str) -> bool:
        """Whether this worker ranks first for the account among the live workers (HRW)."""
        return self.preferred_worker(account_id) == self.owner

    def hold(self, account_id: str) -> Lease | None:
        """Take or renew the account's lease if this worker prefers it; None otherwise.

        A lease on an account another live worker now prefers is handed to that worker (a new
        fencing token, its name on the lease), so the account always has a holder. Raises
        CoordinationUnavailableError when Redis cannot be asked: act on nothing then.
        """
        self._fresh_membership()
        if not self.prefers(account_id):
            self._hand_over(account_id)
            return None
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

    def take(self, account_id: str) -> Lease | None:
        """Take the account's lease whoever prefers it; None if a worker holds it now.

        For an operator's one-off step (``brokerguard enforce``), not for the loop.
        """
        lease = self.coordinator.acquire_lease(account_id, self.owner, self.ttl)
        if lease is not None:
            with self._lock:
                self._held[account_id] = lease
        return lease

    def give_back(self, account_id: str) -> None:
        """Release the account's lease now, if this worker holds it."""
        with self._lock:
            lease = self._held.pop(account_id, None)
        if lease is not None:
            self.coordinator.release_lease(lease)

    @property
    def live_workers(self) -> list[str]:
        """The live workers as of the last heartbeat."""
        with self._lock:
            return list(self._live)

    def release_all(self) -> None:
        """Give every account back (a clean shutdown: the others take over at once)."""
        with self._lock:
            leases, self._held = list(self._held.values()), {}
        for lease in leases:
            self.coordinator.release_lease(lease)
        self.coordinator.leave(self.owner)


def _score(account_id: str, worker: str) -> bytes:
    """Rendezvous-hashing weight of `worker` for `account_id` (the highest one wins)."""
    return hashlib.blake2b(f"{account_id}\x00{worker}".encode(), digest_size=8).digest()
