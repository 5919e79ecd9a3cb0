"""Which worker enforces which account: leases renewed every pass, fenced in the store.

Every worker of a fleet runs the same loop over all accounts. Each pass starts with a
heartbeat (:meth:`AccountLeases.begin_pass`) that also tells who is alive; the accounts are
spread over the live workers by rendezvous hashing, so each worker *prefers* about 1/N of them
and the assignment moves as little as possible when a worker comes or goes. Before enforcing an
account a worker asks for its lease (:meth:`AccountLeases.hold`), but only for the accounts it
prefers; it gives back any other it holds. The lease arbitrates when two workers' views of the
membership differ for a moment: at most one holds it. A worker that dies stops its heartbeat
and its renewals; within one lease ttl its accounts are preferred by, and leased to, others.

Fencing, so that a worker paused past its lease (GC, a frozen VM, a partition) acts on nothing:

- **a lease is fenced as it is taken.** Acquiring, claiming or receiving a lease records its
  token in the store (:meth:`StateStore.claim_fence`) before anything is done under it, so the
  previous holder's very next write, whatever it is, is refused;
- **every order is fenced.** An enforcement step renews its lease before each order
  (:meth:`AccountLeases.keep`: Redis says it is still this worker's, or nothing is sent), and the
  order's journal entry is written through the fenced store in one transaction with the check;
- **no handover mid-step.** A lease is handed to the worker that now prefers its account only
  between two steps on it (:meth:`AccountLeases.enforcing` holds the account meanwhile);
- **tokens survive Redis.** A token the store refuses because it has seen it (Redis lost its
  counter: a restart without persistence, a failover) is re-issued above the store's mark
  (:meth:`RedisCoordinator.advance_lease`), and this worker remembers the marks it learns as the
  floor of its next acquisitions;
- **a lock-out is loud.** Should tokens still be refused pass after pass
  (:data:`LOCKOUT_STRIKES`), the account is reported locked out (:meth:`AccountLeases.lockouts`:
  not held, not ready, an alert) instead of silently never being enforced.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from brokerguard.coordination.redis_coordinator import Lease, RedisCoordinator
from brokerguard.errors import (
    CoordinationUnavailableError,
    LeaseLostError,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    from brokerguard.store.state import StateStore

__all__ = ["LOCKOUT_STRIKES", "AccountLeases", "worker_id"]

log = logging.getLogger("brokerguard.coordination")

LOCKOUT_STRIKES: Final = 3
"""Passes in a row whose fencing token the store refused before an account is reported locked
out. One refusal is a takeover this worker lost; three, while it still prefers the account,
mean nobody enforces it."""

_CLAIM_ATTEMPTS: Final = 3
"""Tokens tried per acquisition when the store has seen the one Redis issued (each attempt
issues one above the mark the store answered; a second refusal needs another worker racing)."""


def worker_id() -> str:
    """A name for this worker process, unique across the fleet and its restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class AccountLeases:
    """This worker's leases on the fleet's accounts.

    Args:
        coordinator: the fleet's Redis.
        ttl: seconds a lease lasts unless renewed; longer than the slowest enforcement step.
        owner: this worker's name (default: :func:`worker_id`).
        store: where each lease's token is fenced as it is taken (a ContinuousExitEnforcer
            given these leases sets its accounts' store when this is None). Without a store,
            tokens are only checked when something is written.
    """

    def __init__(
        self,
        coordinator: RedisCoordinator,
        *,
        ttl: float = 30.0,
        owner: str | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.ttl = ttl
        self.owner = owner or worker_id()
        self.store = store
        self._held: dict[str, Lease] = {}
        self._live: list[str] = [self.owner]
        self._beat_at = -math.inf
        self._accounts: list[str] = []
        self._floors: dict[str, int] = {}  # the highest fence this worker knows the store holds
        self._floors_stale = True  # read every mark again at the next heartbeat
        self._steps: dict[str, threading.RLock] = {}  # held while a step runs on the account
        self._strikes: dict[str, int] = {}
        self._lockouts: dict[str, str] = {}
        self._lock = threading.Lock()
        self._beating = threading.Lock()  # one heartbeat round at a time

    @property
    def namespace(self) -> str:
        """The fleet's namespace: fences are kept per namespace and account."""
        return self.coordinator.namespace

    def begin_pass(self, accounts: Iterable[str] | None = None) -> list[str]:
        """Heartbeat, learn the live workers, and claim the free accounts this worker prefers.

        `accounts` (the fleet's accounts) is remembered for later claims. Claiming at once,
        rather than when the pass reaches each account, is what makes a takeover take one
        lease ttl and not one ttl plus a whole pass. The leases held are renewed (one round
        trip), those a newcomer now prefers are handed over, and the new ones are fenced in
        the store in one transaction. Raises when Redis cannot be asked.
        """
        with self._beating:
            return self._beat(accounts)

    def _beat(self, accounts: Iterable[str] | None) -> list[str]:
        try:
            live = self.coordinator.heartbeat(self.owner, self.ttl)
        except CoordinationUnavailableError:
            with self._lock:  # Redis may come back empty: learn the store's marks again then
                self._floors_stale = True
            raise
        with self._lock:
            self._live = live if self.owner in live else sorted([*live, self.owner])
            self._beat_at = time.monotonic()  # wall-clock-ok: paced like the lease ttl, in Redis
            if accounts is not None:
                self._accounts = list(accounts)
            known = list(self._accounts)
            held = dict(self._held)
        for lost in self.coordinator.renew_leases(list(held.values()), self.ttl):
            with self._lock:
                self._floors_stale = True  # expired, taken, or Redis lost it: marks moved
                if self._held.get(lost.account_id) == lost:
                    del self._held[lost.account_id]
        self._load_floors()
        self._hand_over_many([a for a in held if not self.prefers(a)])
        # Claim what this worker prefers and does not hold: at every heartbeat, not only when
        # the membership changes, because a departed worker's leases can outlive its heartbeat
        # by a moment (its last renewals came after its last heartbeat).
        self._take_many([a for a in known if a not in held and self.prefers(a)])
        return live

    def _fresh_membership(self) -> None:
        """Heartbeat again when a long pass has outlived a third of the ttl.

        Membership then follows a departure mid-pass, so accounts later in the pass move to
        the survivors sooner; the heartbeat still only beats while passes make progress. One
        thread beats; the others go on meanwhile.
        """
        if time.monotonic() - self._beat_at <= self.ttl / 3:  # wall-clock-ok
            return
        if self._beating.acquire(blocking=False):
            try:
                self._beat(None)
            finally:
                self._beating.release()

    def preferred_worker(self, account_id: str) -> str:
        """The live worker that ranks first for the account (rendezvous hashing)."""
        with self._lock:
            live = list(self._live)
        return max(live, key=lambda worker: _score(account_id, worker))

    def _hand_over(self, account_id: str) -> None:
        """Give a held account to the worker that now prefers it, without a gap."""
        self._hand_over_many([account_id])

    def _hand_over_many(self, account_ids: list[str]) -> None:
        """Give held accounts to the workers that now prefer them, without a gap.

        Never while a step runs on one (:meth:`enforcing`): that one at a later heartbeat.
        The new holders' tokens are fenced in the store at once, for them.
        """
        fences: list[tuple[str, int, str]] = []
        for account_id in account_ids:
            step = self._step_lock(account_id)
            if not step.acquire(blocking=False):
                log.info("account %s is mid-enforcement: handed over after the step", account_id)
                continue
            try:
                with self._lock:
                    stale = self._held.pop(account_id, None)
                    floor = self._floors.get(account_id, 0)
                if stale is None:
                    continue
                newcomer = self.preferred_worker(account_id)
                token = self.coordinator.transfer_lease(stale, newcomer, floor=floor)
                if token is not None:
                    self._learn_floor(account_id, token)
                    fences.append((account_id, token, newcomer))
            finally:
                step.release()
        if not fences or self.store is None:
            return
        try:  # a refusal or a failure here is the newcomer's to settle when it acquires
            self.store.claim_fences(fences, namespace=self.namespace)
        except StoreUnavailableError as exc:
            log.warning("%d handover(s) not fenced yet: %s", len(fences), exc)

    def prefers(self, account_id: str) -> bool:
        """Whether this worker ranks first for the account among the live workers (HRW)."""
        return self.preferred_worker(account_id) == self.owner

    def hold(self, account_id: str) -> Lease | None:
        """Take or renew the account's lease if this worker prefers it; None otherwise.

        A lease on an account another live worker now prefers is handed to that worker (a new
        fencing token, its name on the lease), so the account always has a holder. A lease
        newly taken is fenced in the store first. Raises CoordinationUnavailableError when Redis
        cannot be asked, StoreUnavailableError when the store cannot record the fence, and
        LeaseLostError when the store refuses every token: act on nothing then.
        """
        self._fresh_membership()
        if not self.prefers(account_id):
            self._hand_over(account_id)
            return None
        return self._take(account_id)

    @contextmanager
    def enforcing(self, account_id: str) -> Iterator[Lease | None]:
        """Hold the account's lease (:meth:`hold`) for one enforcement step.

        Until the block ends the lease is not handed over to another worker, even if one now
        prefers the account: a step is never cut in the middle by its own worker.
        """
        with self._step_lock(account_id):
            yield self.hold(account_id)

    def keep(self, lease: Lease) -> None:
        """Renew `lease` before acting under it (an order): LeaseLostError if it is gone.

        Redis decides, not this process's clock (which a frozen VM does not advance): the lease
        is extended to a full ttl if it is still this one, and dropped here otherwise. Raises
        CoordinationUnavailableError when Redis cannot be asked: act on nothing then either.
        """
        with self._lock:
            current = self._held.get(lease.account_id)
        if current != lease:
            raise LeaseLostError(
                f"the lease on {lease.account_id} (token {lease.token}) is no longer this "
                "worker's: nothing more is sent under it"
            )
        if not self.coordinator.renew_lease(lease):
            with self._lock:
                if self._held.get(lease.account_id) == lease:
                    del self._held[lease.account_id]
            raise LeaseLostError(
                f"the lease on {lease.account_id} (token {lease.token}) expired or another "
                "worker holds it: nothing more is sent under it"
            )

    def held(self) -> dict[str, Lease]:
        """The leases this worker holds and enforces under (as of their last renewal).

        An account locked out (:meth:`lockouts`) is not among them: it is not enforced.
        """
        with self._lock:
            return {a: lease for a, lease in self._held.items() if a not in self._lockouts}

    def take(self, account_id: str) -> Lease | None:
        """Take the account's lease whoever prefers it; None if a worker holds it now.

        For an operator's one-off step (``brokerguard enforce``), not for the loop.
        """
        return self._take(account_id)

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

    # ------------------------------------------------------------------ lock-outs

    def lost(self, account_id: str, reason: str) -> bool:
        """This worker's token for the account was refused, or its lease is gone: a strike.

        The lease is dropped here (the next pass takes a new one). Returns True when this
        strike makes a fencing lock-out: :data:`LOCKOUT_STRIKES` passes in a row.
        """
        with self._lock:
            self._held.pop(account_id, None)
            strikes = self._strikes.get(account_id, 0) + 1
            self._strikes[account_id] = strikes
            newly = strikes >= LOCKOUT_STRIKES and account_id not in self._lockouts
            if strikes >= LOCKOUT_STRIKES:
                self._lockouts[account_id] = (
                    f"fencing lock-out: this worker's tokens were refused as stale {strikes} "
                    f"passes in a row ({reason}); the account is not enforced"
                )
        if newly:
            log.critical(
                "account %s is LOCKED OUT: fencing tokens refused %d passes in a row (%s); its "
                "cap is not enforced",
                account_id,
                strikes,
                reason,
            )
        return newly

    def settled(self, account_id: str) -> None:
        """A pass ended without a refusal (enforced, or another worker holds it): no strikes."""
        with self._lock:
            self._strikes.pop(account_id, None)
            recovered = self._lockouts.pop(account_id, None)
        if recovered is not None:
            log.warning("account %s: fencing lock-out over, enforced again", account_id)

    def lockouts(self) -> dict[str, str]:
        """The accounts locked out (tokens refused pass after pass), with why."""
        with self._lock:
            return dict(self._lockouts)

    # ------------------------------------------------------------------ internals

    def _step_lock(self, account_id: str) -> threading.RLock:
        with self._lock:
            return self._steps.setdefault(account_id, threading.RLock())

    def _learn_floor(self, account_id: str, mark: int) -> None:
        with self._lock:
            self._floors[account_id] = max(self._floors.get(account_id, 0), mark)

    def _load_floors(self) -> None:
        """Read every fence of the namespace when this worker's knowledge of them is stale.

        At the first heartbeat, and after the store refused a token (Redis lost its
        counters): every token issued next is then above the store's mark at once.
        """
        if self.store is None or not self._floors_stale:
            return
        try:
            marks = self.store.fence_marks(self.namespace)
        except StoreUnavailableError as exc:
            log.warning("fences not read (%s): tokens are checked one by one", exc)
            return
        with self._lock:
            for account_id, mark in marks.items():
                self._floors[account_id] = max(self._floors.get(account_id, 0), mark)
            self._floors_stale = False

    def _take(self, account_id: str) -> Lease | None:
        """Acquire (or extend) the account's lease; fence a token new to this worker first."""
        lease = self._acquire(account_id)
        if lease is None or self._holds(lease):
            return lease
        lease = self._claim(lease)
        if lease is not None:
            with self._lock:
                self._held[account_id] = lease
        return lease

    def _take_many(self, account_ids: list[str]) -> None:
        """:meth:`_take` for many accounts, fencing the new tokens in one transaction."""
        fresh = [
            lease
            for lease in (self._acquire(a) for a in account_ids)
            if lease is not None and not self._holds(lease)
        ]
        if not fresh:
            return
        refused: dict[str, int] = {}
        if self.store is not None:
            try:
                refused = self.store.claim_fences(
                    [(lease.account_id, lease.token, lease.owner) for lease in fresh],
                    namespace=self.namespace,
                )
            except StoreUnavailableError as exc:
                # Not held, then: hold() claims each when the pass reaches it, and reports it.
                log.warning("%d lease(s) not fenced at the heartbeat: %s", len(fresh), exc)
                return
        for lease in fresh:
            taken: Lease | None = lease
            if lease.account_id in refused:
                try:
                    taken = self._claim(lease, refused_by=refused[lease.account_id])
                except (LeaseLostError, StoreUnavailableError) as exc:
                    log.warning(
                        "account %s not claimed at the heartbeat: %s", lease.account_id, exc
                    )
                    continue
            if taken is not None:
                self._learn_floor(taken.account_id, taken.token)
                with self._lock:
                    self._held[taken.account_id] = taken

    def _acquire(self, account_id: str) -> Lease | None:
        """Acquire or extend in Redis; a lease whose token changed is not held until fenced."""
        with self._lock:
            floor = self._floors.get(account_id, 0)
        lease = self.coordinator.acquire_lease(account_id, self.owner, self.ttl, floor=floor)
        with self._lock:
            known = self._held.get(account_id)
            if lease is None or known is None or known.token != lease.token:
                self._held.pop(account_id, None)
        return lease

    def _holds(self, lease: Lease) -> bool:
        """Whether this worker holds `lease` already, that very token (so it is fenced)."""
        with self._lock:
            return self._held.get(lease.account_id) == lease

    def _claim(self, lease: Lease, *, refused_by: int | None = None) -> Lease | None:
        """Fence `lease`'s token in the store, re-issuing it above a mark the store has seen.

        `refused_by`: the store already refused this token, with that mark. None when the
        lease is no longer this worker's; LeaseLostError when every token tried was refused.
        """
        if self.store is None:
            return lease
        mark = 0
        for attempt in range(_CLAIM_ATTEMPTS):
            if attempt or refused_by is None:
                refused_by = self.store.claim_fence(
                    lease.account_id, lease.token, holder=lease.owner, namespace=self.namespace
                )
            if refused_by is None:
                self._learn_floor(lease.account_id, lease.token)
                return lease
            mark = refused_by
            self._learn_floor(lease.account_id, mark)
            if attempt == _CLAIM_ATTEMPTS - 1:
                break
            with self._lock:
                self._floors_stale = True  # Redis lost counters: read every mark again
            log.warning(
                "account %s: token %d refused, the store has seen %d (Redis lost its counter?): "
                "taking a token above it",
                lease.account_id,
                lease.token,
                mark,
            )
            advanced = self.coordinator.advance_lease(lease, mark)
            if advanced is None:
                return None
            lease = advanced
        raise LeaseLostError(
            f"every fencing token for {lease.account_id} was refused by the store (its mark: "
            f"{mark}, {_CLAIM_ATTEMPTS} tried): nothing is done under this lease"
        )


def _score(account_id: str, worker: str) -> bytes:
    """Rendezvous-hashing weight of `worker` for `account_id` (the highest one wins)."""
    return hashlib.blake2b(f"{account_id}\x00{worker}".encode(), digest_size=8).digest()
