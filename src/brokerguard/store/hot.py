"""The state every entry check and enforcement pass reads, held in memory with a stated bound.

An entry check needs the account's halt and its paused symbols; an enforcement pass needs
those and the account's live orders. Read from the database each time, they were 85 % of an
entry check and half of a compliant pass (three SELECTs per account per pass through
SQLAlchemy). :class:`HotState` keeps one snapshot of the three tables for every account and
says when it may no longer be used:

- **a write through this store** (any view of it, fenced or not) makes it stale at once: the
  process never reads its own halt late;
- **another process's write** is seen through the database's own change counter where there
  is one (SQLite's ``PRAGMA data_version``, read on a dedicated connection, changes whenever
  another connection commits: the check costs a few microseconds, so a file store is never
  stale), or :meth:`invalidate` (the service calls it when its look at the audit log finds
  an operator's halt or resume), and at the latest once the snapshot is ``max_age`` seconds
  old (PostgreSQL: 1 s by default): **the bound on how late a halt written elsewhere can stop
  entries**;
- a snapshot loaded while a write committed is never installed (a generation counter), so a
  reload racing a halt cannot bring back the state before it.

The snapshot holds only what could be wrong if stale in the direction of *less* safety
(halts, pauses, live orders), and it is replaced whole, never merged.

An enforcement step reads these seven times; inside :meth:`HotState.pinned` the change counter
is read once, at the start, so one step sees other processes' writes as of its start (its
own writes still at once). A pass's run of steps made in its own thread (at most 64, those
whose reads landed together) shares one read of it (:meth:`HotState.steps`): still never a
snapshot older than ``max_age``. Entry checks are never pinned (nor is anything between the
steps of a run).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["HotSnapshot", "HotState"]

H = TypeVar("H")
J = TypeVar("J")


@dataclass(frozen=True, slots=True)
class HotSnapshot(Generic[H, J]):
    """Every account's halt, paused symbols (with reasons) and live journal entries."""

    halts: Mapping[str, H]
    pauses: Mapping[str, Mapping[str, str]]
    live_orders: Mapping[str, tuple[J, ...]]
    loaded_at: float = 0.0
    """Monotonic seconds when the load began (the data is at least this fresh)."""
    generation: int = 0
    version: int | None = None
    """The database's change counter read just before the load, when it has one."""


@dataclass(slots=True)
class HotState(Generic[H, J]):
    """One store's cached snapshot (shared by its fenced views), and when to drop it.

    Args:
        max_age: seconds a snapshot may be used at most (0: never cached).
        monotonic: the store's clock.
        version: reads the database's change counter (None: the database has none, or it
            is in memory and only this process writes it). An error raised by it propagates
            to the read, which then fails closed like any other store error.
    """

    max_age: float
    monotonic: Callable[[], float]
    version: Callable[[], int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _generation: int = 0
    _snapshot: HotSnapshot[H, J] | None = None
    _pins: threading.local = field(default_factory=threading.local)

    @property
    def enabled(self) -> bool:
        """Whether reads may be served from memory at all."""
        return self.max_age > 0

    def wrote(self) -> None:
        """A write through this store committed (or failed after starting): drop the snapshot."""
        with self._lock:
            self._generation += 1
            self._snapshot = None

    def invalidate(self) -> None:
        """Someone else changed the state (an announced operator action): drop the snapshot."""
        self.wrote()

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Within the block, this thread reads the change counter once (an enforcement step).

        Inside :meth:`steps`, the pinned blocks share the run's one read.
        """
        pins = self._pins
        depth: int = getattr(pins, "depth", 0)
        in_run = getattr(pins, "in_run", False)
        if depth == 0:
            pins.version = pins.run_version if in_run else None
        pins.depth = depth + 1
        try:
            yield
        finally:
            pins.depth = depth
            if depth == 0 and in_run:
                pins.run_version = pins.version  # the run's next steps reuse what this one read

    @contextmanager
    def steps(self) -> Iterator[None]:
        """Within the block, this thread's pinned blocks share one read of the change counter.

        A pass steps a run of accounts one after the other (those whose reads landed
        together): one look at other processes' changes for the run, each step still pinned.
        What runs between the pinned blocks (result listeners, an entry check one of them
        makes) is not pinned: it sees another process's change at once.
        """
        pins = self._pins
        outer = getattr(pins, "in_run", False)
        if not outer:
            pins.in_run, pins.run_version = True, None
        try:
            yield
        finally:
            if not outer:
                pins.in_run, pins.run_version = False, None

    def _current_version(self) -> int | None:
        if self.version is None:
            return None
        if getattr(self._pins, "depth", 0) == 0:
            return self.version()
        pinned: int | None = self._pins.version
        if pinned is None:
            pinned = self._pins.version = self.version()
        return pinned

    def get(self, load: Callable[[], HotSnapshot[H, J]]) -> HotSnapshot[H, J]:
        """Return a snapshot no older than the bound, loading one with `load` when needed."""
        # Without the lock first (an enforcement step asks seven times): the snapshot is read
        # before the generation, so a write racing this look makes it miss, never serve stale.
        snapshot = self._snapshot
        if (
            snapshot is not None
            and snapshot.generation == self._generation
            and self.monotonic() - snapshot.loaded_at <= self.max_age
            and snapshot.version == self._current_version()
        ):
            return snapshot
        now = self.monotonic()
        with self._lock:
            snapshot = self._snapshot
            generation = self._generation
        version = self._current_version()
        if (
            snapshot is not None
            and snapshot.generation == generation
            and now - snapshot.loaded_at <= self.max_age
            and snapshot.version == version
        ):
            return snapshot
        loaded = load()
        fresh = HotSnapshot(
            loaded.halts,
            loaded.pauses,
            loaded.live_orders,
            loaded_at=now,
            generation=generation,
            version=version,
        )
        with self._lock:
            # A write that committed during the load may not be in it: serve it to this
            # caller (its read began before the write finished) but never keep it.
            if self._generation == generation:
                self._snapshot = fresh
        return fresh
