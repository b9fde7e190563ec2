"""The retained event log: replay by pages, consistent snapshots, and compaction by age and count.

Replays read the ``events`` table in revision order after a watcher's resume
point. Compaction deletes the oldest events through the writer (one command
per chunk, so it never holds the writer for long) and records the new
``compacted_revision``. Before a chunk is deleted its upper bound is announced
in :attr:`History.floor`; a replay checks the floor after each page it reads,
so a page that compaction thinned out is never passed off as complete: the
watcher gets ``gone`` and re-lists.

Snapshots (for ``initial=true``) read every listed object and the revision
they are at in one transaction with a stable view: a ``BEGIN`` on SQLite (WAL
readers see one snapshot per transaction) and ``REPEATABLE READ`` on
PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, update

from tenure.clock import Clock
from tenure.domain.errors import Gone
from tenure.store import schema
from tenure.store.engine import open_snapshot
from tenure.store.writer import Batch, Op, Writer

log = logging.getLogger("tenure.history")

PAGE = 1000
CHUNK = 10_000  # events deleted per writer command

_E = schema.events.c
DELETE_EVENTS = schema.events.delete().where(_E.revision <= bindparam("b_upto"))
SET_COMPACTED = update(schema.state).where(schema.state.c.id == 1).values(compacted_revision=bindparam("b_upto"))


@dataclass(frozen=True, slots=True)
class Row:
    """An event as stored: labels and body still JSON text (a replay sends them as they are)."""

    revision: int
    ts: datetime
    kind: str
    object_id: str
    op: str
    labels: str
    body: str


# A lister streams the current objects of one kind: (object_id, labels, body) in a stable order.
Lister = Callable[[Connection], Iterator[tuple[str, dict[str, str], dict[str, Any]]]]


class History:
    def __init__(self, engine: Engine, writer: Writer, *, clock: Clock, max_age: float, max_events: int) -> None:
        self.engine = engine
        self.writer = writer
        self.clock = clock
        self.max_age = max_age
        self.max_events = max_events
        self.compacted = 0  # committed: events at or below this revision are gone
        self.floor = 0  # announced: events at or below this revision may be gone already
        # Restored from a backup at revision lo, going on at hi: (lo, hi) were issued by the store the backup came
        # from, never by this one (store/backup.py).
        self.restored: tuple[int, int] | None = None
        self.listers: dict[str, Lister] = {}
        # A follower's log is compacted by another process, which announces nothing here: each page then
        # reads the compacted revision in the page's own snapshot.
        self.follower = False

    def load(self, conn: Connection) -> None:
        st = schema.state.c
        self.compacted, lo, hi = conn.execute(select(st.compacted_revision, st.restored_from, st.restored_to)).one()
        self.floor = self.compacted
        self.restored = (lo, hi) if lo is not None and hi is not None else None

    def check(self, after: int) -> None:
        """Raise :class:`Gone` unless every event after ``after`` is still kept, or ``after`` is a revision of
        another store's history (the one a restored backup came from)."""
        if after < self.floor or self._before_restore(after):
            raise self.gone(after)

    def _before_restore(self, after: int) -> bool:
        return self.restored is not None and self.restored[0] < after < self.restored[1]

    def gone(self, after: int) -> Gone:
        if self._before_restore(after):
            lo, hi = self.restored  # type: ignore[misc]
            return Gone(f"revision {after} is not in this store's history: it was restored from a backup taken at "
                        f"revision {lo} and went on from {hi}; list the objects, then watch from the list's "
                        "revision (or watch with initial=true)", revision=self.writer.revision,
                        compacted_revision=self.floor, restored_from=lo)
        return Gone(
            f"history after revision {after} is no longer kept (compacted up to {self.floor}); "
            "list the objects, then watch from the list's revision (or watch with initial=true)",
            revision=self.writer.revision,
            compacted_revision=self.floor,
        )

    # ------------------------------------------------------------------ replay

    def page(self, after: int, kinds: frozenset[str] | None, limit: int = PAGE) -> list[Row]:
        """Up to ``limit`` events above ``after`` (of ``kinds``, if given), in revision order.

        Raises :class:`Gone` if compaction may have removed any of them.
        """
        self.check(after)
        q = (
            select(_E.revision, _E.ts, _E.kind, _E.object_id, _E.op, _E.labels, _E.body)
            .where(_E.revision > after)
            .order_by(_E.revision)
            .limit(limit)
        )
        if kinds is not None:
            q = q.where(_E.kind.in_(sorted(kinds)))
        if self.follower:
            conn, _ = self.open_snapshot()
            try:
                floor = conn.execute(select(schema.state.c.compacted_revision)).scalar_one()
                self.floor = max(self.floor, floor)
                rows = [Row(*r) for r in conn.execute(q)]
            finally:
                conn.close()
        else:
            with self.engine.connect() as conn:
                rows = [Row(*r) for r in conn.execute(q)]
        if after < self.floor:  # compaction started meanwhile: the page may have holes
            raise self.gone(after)
        return rows

    # --------------------------------------------------------------- snapshots

    def open_snapshot(self) -> tuple[Connection, int]:
        """A connection inside a stable read transaction, and the revision its view is at."""
        return open_snapshot(self.engine)

    # -------------------------------------------------------------- compaction

    def _revision_before(self, conn: Connection, cutoff: datetime, lo: int, hi: int) -> int:
        """The newest revision in (lo, hi] whose event is older than ``cutoff`` (``lo`` if none).

        A binary search on the primary key: event times grow with revisions (one clock, one writer).
        """
        q = select(_E.ts).where(_E.revision >= bindparam("r")).order_by(_E.revision).limit(1)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            ts = conn.execute(q, {"r": mid}).scalar()
            if ts is not None and ts < cutoff:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def target(self, now: datetime | None = None) -> int:
        """The revision history should be compacted up to now, by count and by age."""
        newest = self.writer.revision
        upto = newest - self.max_events
        if self.restored is not None and upto < self.restored[1]:  # no events in the restore's gap: count past it
            lo, hi = self.restored
            upto = lo - (self.max_events - max(0, newest - hi))
        upto = max(self.compacted, upto)
        cutoff = (now or self.clock()) - timedelta(seconds=self.max_age)
        with self.engine.connect() as conn:
            upto = max(upto, self._revision_before(conn, cutoff, self.compacted, newest))
        return upto

    def compact_op(self, upto: int) -> Op:
        def apply(batch: Batch) -> int:
            if upto <= self.compacted:
                return self.compacted
            previous = self.floor
            self.floor = max(self.floor, upto)  # announced before the delete commits: replays re-check it
            batch.on_undo(lambda: setattr(self, "floor", previous))
            batch.write(DELETE_EVENTS, {"b_upto": upto})
            batch.write(SET_COMPACTED, {"b_upto": upto})
            batch.on_commit(lambda: setattr(self, "compacted", upto))
            return upto

        return Op(apply)

    def compact(self, upto: int | None = None) -> int:
        """Compact up to ``upto`` (default: what age and count call for), in chunks; the new compacted revision."""
        target = self.target() if upto is None else min(upto, self.writer.revision)
        start = self.compacted
        while self.compacted < target:
            base = self.compacted
            if self.restored is not None and self.restored[0] <= base < self.restored[1]:
                base = self.restored[1]  # no event has a revision in a restore's gap: step over it
            self.writer.execute(self.compact_op(min(target, base + CHUNK)))
        if self.compacted > start:
            log.info("history compacted", extra={"compacted_revision": self.compacted, "events": self.compacted - start})
        return self.compacted
