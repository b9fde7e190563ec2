"""A follower's tailer: the batches another replica committed, applied to this replica's memory.

See docs/replication.md ("Followers"). The leader's writer commits a batch's rows, its events and the new
``state.revision`` in one transaction; on PostgreSQL a trigger then notifies ``tenure_events``. The tailer
wakes on that notification (or every ``interval`` without one: a lost notification loses nothing), and in
one snapshot reads the committed revision, the events above the last one it applied, and the rows those
events name. Each service brings those objects to their rows (``refresh``), through the same maps the
writer changes, so views, indexes and timers follow; then the writer's listeners (the watch hub) hear the
events with the leader's revisions. The state a follower holds at revision R is therefore the state a
restore at R would build, which the tests check object by object.

Revisions come from one writer, batch by batch, so a follower sees whole batches and no gap; a gap would be
a bug (or a database restored from a backup) and stops the tailer loudly. A follower that fell behind the
compaction of the event log cannot tail across the hole: :class:`FollowerBehind`, and the replica restores
in full.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection, Engine, select

from tenure.domain.errors import Unavailable
from tenure.store import schema
from tenure.store.history import History
from tenure.store.writer import Batch, Event, Writer

log = logging.getLogger("tenure.follower")

CHANNEL = "tenure_events"
PAGE = 10_000  # events read at a time
_E = schema.events.c

# apply(batch, conn, touched): bring the objects ``touched`` names (kind -> object ids; None: every object of
# the kind) to their rows as of conn's snapshot.
Apply = Callable[[Batch, Connection, dict[str, set[str] | None]], None]


class FollowerBehind(Unavailable):
    """The events this follower needs next were compacted away (or the store went back in time)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="follower_behind")


class Tailer:
    def __init__(self, engine: Engine, writer: Writer, history: History, apply: Apply, *,
                 interval: float = 1.0, agents_every: float = 5.0) -> None:
        self.engine = engine
        self.writer = writer
        self.history = history
        self.apply = apply
        self.interval = interval
        self.agents_every = agents_every  # heartbeats move last_seen without an event: refresh every agent
        self.newest = writer.revision  # the newest committed revision seen in the store
        self.applied_at = time.monotonic()  # when this follower last caught up with ``newest``
        self.failure: BaseException | None = None  # why the thread stopped, if it did
        self._agents_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lag(self) -> int:
        """Revisions committed in the store and not yet applied here (as of the last look)."""
        return max(0, self.newest - self.writer.revision)

    # ------------------------------------------------------------------ one step

    def poll(self) -> int:
        """Apply everything committed since the last step, in one snapshot; the number of events applied.

        Every object the events name is brought to its row as of the same snapshot, so the state is the
        store's at one revision, however far behind this follower was: the events are read in pages (twice
        when there are many: once for the objects they name, once for the hub), never cut at a revision
        between the ones read.
        """
        last = self.writer.revision
        conn, newest = self.history.open_snapshot()
        try:
            compacted = conn.execute(select(schema.state.c.compacted_revision)).scalar_one()
            self.newest = newest
            if newest < last:
                raise FollowerBehind(f"the store is at revision {newest}, behind this follower's {last}: "
                                     "was the database restored from a backup?")
            touched: dict[str, set[str] | None] = {}
            if time.monotonic() - self._agents_at >= self.agents_every:
                # Heartbeats move last_seen without an event: every agent is re-read now and then.
                self._agents_at = time.monotonic()
                touched["agent"] = None
            if newest == last:
                if touched:
                    self.writer.replay(last, lambda batch: self.apply(batch, conn, touched), [])
                self.applied_at = time.monotonic()
                self.history.compacted = self.history.floor = max(self.history.floor, compacted)
                return 0
            if last < compacted:
                raise FollowerBehind(f"this follower applied revision {last}, but the events up to {compacted} "
                                     "were compacted away")
            kept: list[Event] = []
            for page in self._pages(conn, last, newest):
                for e in page:
                    ids = touched.setdefault(e.kind, set())
                    if ids is not None:
                        ids.add(e.object_id)
                if len(kept) < PAGE:
                    kept.extend(page)
            pages = [kept] if len(kept) == newest - last else self._pages(conn, last, newest)
            try:
                self.writer.replay(newest, lambda batch: self.apply(batch, conn, touched), pages)
            except Exception as exc:
                if self.writer.revision != last:  # applied, but not every event reached the hub
                    raise FollowerBehind(f"the events up to {newest} were applied, but handing them to the "
                                         f"watchers failed ({exc}); restoring afresh") from exc
                raise
            self.applied_at = time.monotonic()
        finally:
            conn.close()
        # After the replay: a floor raised first could refuse a replay of what is still kept here.
        self.history.compacted = self.history.floor = max(self.history.floor, compacted)
        return newest - last

    @staticmethod
    def _pages(conn: Connection, last: int, newest: int) -> Iterator[list[Event]]:
        """The events (last, newest] in pages, checked to be whole: no revision missing, none past the end."""
        after = last
        while after < newest:
            q = (select(_E.revision, _E.ts, _E.kind, _E.object_id, _E.op, _E.labels, _E.body)
                 .where(_E.revision > after, _E.revision <= newest).order_by(_E.revision).limit(PAGE))
            page = [Event(r.revision, r.ts, r.kind, r.object_id, r.op, json.loads(r.labels), json.loads(r.body))
                    for r in conn.execute(q)]
            for expected, e in enumerate(page, after + 1):
                if e.revision != expected:
                    raise FollowerBehind(f"the event log has a gap: revision {expected} is missing "
                                         f"(found {e.revision})")
            if not page:
                raise FollowerBehind(f"the event log ends at {after}, not at the committed revision {newest}")
            after = page[-1].revision
            yield page

    # ------------------------------------------------------------------ the thread

    def start(self) -> Tailer:
        self._thread = threading.Thread(target=self._run, name="tenure-tailer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        listener: Any = None
        backoff = 0.1
        try:
            while not self._stop.is_set():
                try:
                    if listener is None and self.engine.dialect.name == "postgresql":
                        listener = self._listen()
                    while self.poll() > 0 and not self._stop.is_set():
                        pass  # far behind: catch up step by step
                    self._wait(listener)
                    backoff = 0.1
                except FollowerBehind as exc:
                    log.critical("follower cannot tail: %s", exc.message)
                    self.failure = exc
                    return
                except Exception as exc:  # the store is away: reconnect and go on where we were
                    log.warning("tailing the event log failed: %s", exc)
                    listener = self._unlisten(listener)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.interval)
        finally:
            self._unlisten(listener)

    def _listen(self) -> Any:
        raw = self.engine.raw_connection()
        pg = raw.driver_connection
        pg.autocommit = True
        pg.execute(f"LISTEN {CHANNEL}")
        return raw

    @staticmethod
    def _unlisten(raw: Any) -> None:
        if raw is not None:
            with contextlib.suppress(Exception):
                raw.invalidate()  # never back to the pool while it listens
        return None

    def _wait(self, listener: Any) -> None:
        """Until a notification, ``interval``, or stop: short waits, so that stop is prompt."""
        deadline = time.monotonic() + self.interval
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if listener is None:
                self._stop.wait(min(left, 0.25))
                continue
            for note in listener.driver_connection.notifies(timeout=min(left, 0.25), stop_after=1):
                with contextlib.suppress(ValueError):
                    self.newest = max(self.newest, int(note.payload))
                return

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the thread; whether it has (its statements are bounded, so it does unless the store hangs)."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()
