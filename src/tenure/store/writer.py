"""The single writer: one command at a time against memory, many per durable commit.

Every mutation of Tenure is a *command* applied by one thread (DESIGN.md
invariant 2: the check that guards a scarce thing and the commit that consumes
it are one serialized step). Commands are applied to the in-memory model one
after another; what each one changes is recorded as ordered row writes and
event rows in a :class:`Batch`; the whole batch is committed in one database
transaction, and only then is each caller answered (invariant 1: no answer
before the commit, every change with its event).

Group commit: while one batch is being committed (an fsync), new commands queue
up and form the next batch, so 64 concurrent claimers cost a handful of fsyncs,
not 64. Nobody waits on a timer to fill a batch.

A command that refuses (raises :class:`~tenure.domain.errors.TenureError`) must
do so before it changes memory, or register undo callbacks; its recorded writes
and events are dropped and the rest of the batch goes on. If the commit itself
fails, every command of the batch is undone in reverse order and every caller
gets ``store_error``: memory never runs ahead of the store.

On SQLite the write-ahead log is copied back into the database file by :class:`Checkpointer`, a thread of its own,
not by the commit that happens to cross SQLite's threshold: a checkpoint after a long reader (a backup's snapshot
holds every page written meanwhile in the log) took 30–120 ms, and a commit that ran it made its callers wait. The
writer checkpoints only the little the thread's last round left, when it asks, so that the log can start over.

Services keep their state in :class:`Published` maps: the writer thread changes
the working map inside a command (with its undo registered), and readers on any
thread see the view, which is brought up to date only after the commit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import orjson
from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from tenure.clock import Clock, utcnow
from tenure.domain.errors import TenureError, Unavailable
from tenure.store import schema
from tenure.store.leadership import Fenced
from tenure.store.rawinsert import RawInsert

log = logging.getLogger("tenure.writer")

MAX_BATCH = 512
VERDICT_WAIT = 10.0  # seconds a writer asks an away store whether a cut commit went through
INSERT_EVENTS = RawInsert(schema.events)
UPDATE_REVISION = update(schema.state).where(schema.state.c.id == 1).values(revision=bindparam("b_revision"))


class Checkpointer:
    """SQLite's checkpoints, mostly off the writer's path. Every ``interval`` seconds a ``PASSIVE`` checkpoint on a
    connection of its own copies the log back into the database file (it waits for no reader and no writer; what a
    reader still needs stays in the log for a later round). The writer's connection makes none by itself
    (``wal_autocheckpoint=0``). Nothing on PostgreSQL.

    SQLite starts its log over only when a write begins with the whole log copied back, which the writer's commits,
    landing while the copy runs, almost never let happen (measured: the log grew by 13,000 frames a second under
    one-at-a-time claims, for as long as they went on). So once the log is over ``RESTART_AT`` frames and a round
    has copied all that was in it, :attr:`due` asks the writer to checkpoint once itself, between two batches:
    it copies only what was committed during that round (a few milliseconds), and its next write starts the log
    over. Not a ``RESTART`` checkpoint from this thread: that holds the write lock, and the writer, finding it
    held, sleeps in SQLite's busy handler's growing steps (pauses of 20–60 ms measured)."""

    INTERVAL = 1.0
    PASSES = 5
    RESTART_AT = 4096  # frames (pages): 16 MiB of log at SQLite's default page size
    STALE = 10.0  # seconds without a round that worked: the writer checkpoints on its own (once a second)

    def __init__(self, engine: Engine, interval: float | None = None) -> None:
        self.path = engine.url.database or ""
        self.interval = interval if interval is not None else self.INTERVAL
        self.due = threading.Event()
        self.last_round = time.monotonic()  # the last round that worked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tenure-checkpoint", daemon=True)

    def stale(self) -> bool:
        """Whether the rounds have failed for ``STALE`` seconds (the writer then checkpoints as SQLite would)."""
        return time.monotonic() - self.last_round > self.STALE

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """One round: copy what can be copied; if the log has grown and all of it was copied, the writer's turn.

        SQLite flushes the database file only after a pass that reached the log's end, which commits landing during
        a long pass prevent; the writer's checkpoint would then flush every page of the round (13–18 ms measured).
        So a round makes ``PASSES`` passes, each copying only what came during the one before, so that one of
        them reaches the end and flushes, here. (Not a flush of a descriptor of our own: closing any descriptor of the
        file would drop the POSIX locks of every SQLite connection of this process.)"""
        for _ in range(self.PASSES):  # (its result cannot tell whether a pass reached the end: all of them)
            _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames < 0:
            raise sqlite3.OperationalError(f"{self.path} is not in WAL mode")
        self.last_round = time.monotonic()
        if frames > self.RESTART_AT and copied == frames:  # (not while a reader still needs part of it)
            self.due.set()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(self.interval):
            try:
                if conn is None:  # its own, outside the engine's pool; busy_timeout 0: it never waits for a lock
                    # mode=rw: the store's file, never a new empty one where it was (moved, or not yet there)
                    conn = sqlite3.connect(f"file:{urllib.parse.quote(self.path)}?mode=rw", uri=True, timeout=0,
                                           isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA synchronous=FULL")  # the file is flushed before the log may start over
                self.checkpoint(conn)
            except Exception as exc:  # (a busy or vanished file): the next round tries again; the writer, if stale
                log.warning("checkpoint failed: %s", exc)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change. ``revision`` is the global order."""

    revision: int
    ts: datetime
    kind: str
    object_id: str
    op: str  # created | updated | deleted
    labels: dict[str, str]
    body: dict[str, Any]

    def row(self, epoch: int | None = None, labels: str | None = None) -> dict[str, Any]:
        """The event's row; ``labels``: its labels' JSON if the caller has it (events of one bulk share one dict)."""
        return {
            "epoch": epoch,
            "revision": self.revision,
            "ts": self.ts,
            "kind": self.kind,
            "object_id": self.object_id,
            "op": self.op,
            "labels": _json(self.labels, orjson.OPT_SORT_KEYS) if labels is None else labels,
            "body": _json(self.body),
        }


def _json(value: Any, option: int = 0) -> str:
    """An event's JSON text: orjson (a sixth of a bulk claim's writer time went to the standard library's), or,
    for what orjson does not take (an integer beyond 64 bits), the standard library's."""
    try:
        return orjson.dumps(value, option=option).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, sort_keys=bool(option & orjson.OPT_SORT_KEYS))


def _event_rows(events: list[Event], epoch: int | None) -> list[dict[str, Any]]:
    """The events' rows, each distinct labels dict (by identity: a bulk's events share one) encoded once."""
    encoded: dict[int, str] = {}
    rows = []
    for e in events:
        labels = encoded.get(id(e.labels))
        if labels is None:
            labels = encoded[id(e.labels)] = _json(e.labels, orjson.OPT_SORT_KEYS)
        rows.append(e.row(epoch, labels))
    return rows


class Command(Protocol):
    def apply(self, batch: Batch) -> Any: ...


class Fence(Protocol):
    """What a replica's writer checks (:class:`~tenure.store.leadership.Leadership`)."""

    def prepare(self, conn: Any) -> None:
        """Once per new write connection (e.g. bound how long a paused writer may hold its locks)."""

    def fence(self, conn: Any, epoch: int | None) -> None:
        """Last in every write transaction, before its commit: raise :class:`~tenure.store.leadership.Fenced`
        unless ``epoch`` (the writer's) still leads."""


class Rows(list):  # type: ignore[type-arg]
    """Rows for a :class:`RawInsert` already in its column order: see :meth:`Batch.write_rows`."""

    __slots__ = ()


class Batch:
    """What the commands of one transaction change: row writes, events, undo and after-commit steps."""

    def __init__(self, *, revision: int, now: datetime) -> None:
        self.revision = revision  # the last revision allocated so far
        self.now = now
        self.writes: list[tuple[Executable | RawInsert, list[dict[str, Any]]]] = []
        self.events: list[Event] = []
        self.undo: list[Callable[[], None]] = []
        self.after_commit: list[Callable[[], None]] = []
        self.end_of_batch: dict[Any, Callable[[], tuple[Executable, dict[str, Any]]]] = {}
        self.after_commit_once: dict[Any, Callable[[], None]] = {}

    def next_revision(self) -> int:
        """The revision the next event of this command will get."""
        return self.revision + 1

    def emit(self, kind: str, object_id: str, op: str, labels: dict[str, str], body: dict[str, Any]) -> int:
        self.revision += 1
        self.events.append(Event(self.revision, self.now, kind, object_id, op, labels, body))
        return self.revision

    def write(self, stmt: Executable | RawInsert, params: dict[str, Any]) -> None:
        """Queue one row write; consecutive writes of the same statement become one executemany."""
        if self.writes and self.writes[-1][0] is stmt and type(self.writes[-1][1]) is list:
            self.writes[-1][1].append(params)
        else:
            self.writes.append((stmt, [params]))

    def write_rows(self, stmt: RawInsert, rows: list[tuple[Any, ...]]) -> None:
        """Queue many rows of one insert, each a tuple in the table's column order (no dict per row)."""
        self.writes.append((stmt, Rows(rows)))

    def write_once(self, key: Any, build: Callable[[], tuple[Executable, dict[str, Any]]]) -> None:
        """A write done once at the end of the batch with the then-current state (e.g. a pool's cursor)."""
        self.end_of_batch[key] = build

    def on_undo(self, fn: Callable[[], None]) -> None:
        self.undo.append(fn)

    def on_commit(self, fn: Callable[[], None]) -> None:
        self.after_commit.append(fn)

    def on_commit_once(self, key: Any, fn: Callable[[], None]) -> None:
        """Run ``fn`` once after the commit however many commands ask (e.g. publish a pool's view).

        Kept even if the asking command is refused: such steps must only read current state.
        """
        self.after_commit_once[key] = fn

    # -- per-command checkpoints -------------------------------------------

    def mark(self) -> tuple[int, int, int, int, int, int]:
        last = len(self.writes[-1][1]) if self.writes else 0
        return (self.revision, len(self.writes), last, len(self.events), len(self.undo), len(self.after_commit))

    def rollback_to(self, mark: tuple[int, int, int, int, int, int]) -> None:
        revision, nwrites, last, nevents, nundo, nafter = mark
        for fn in reversed(self.undo[nundo:]):
            fn()
        self.revision = revision
        del self.writes[nwrites:]
        if self.writes:
            del self.writes[-1][1][last:]
        del self.events[nevents:]
        del self.undo[nundo:]
        del self.after_commit[nafter:]


K = TypeVar("K")
V = TypeVar("V")


class Published(Generic[K, V]):
    """A service's map of objects: changed by the writer thread, read by anyone as of the last commit.

    ``working`` belongs to the writer thread: commands read and change it (through :meth:`put`,
    which registers the undo, so a refused command or a failed commit puts the old value back).
    ``view`` is what every other thread reads; :meth:`put` brings the key's view up to date only
    after the commit, so nobody sees a change that may still be undone. Both are plain dicts,
    changed in place (never replaced), so a reader may take ``list(view.values())`` at any time.

    ``on_swap(old, new)`` keeps indexes of the working map in step (it runs for a change and, in
    reverse, for its undo); ``on_publish(key, value)`` runs after the commit with the committed
    value (``None``: gone), e.g. to arm a timer.
    """

    __slots__ = ("working", "view", "_on_swap", "_on_publish")

    def __init__(
        self,
        *,
        on_swap: Callable[[V | None, V | None], None] | None = None,
        on_publish: Callable[[K, V | None], None] | None = None,
    ) -> None:
        self.working: dict[K, V] = {}
        self.view: dict[K, V] = {}
        self._on_swap = on_swap
        self._on_publish = on_publish

    def load(self, key: K, value: V) -> None:
        """Restore: an entry that is committed already (working and view alike)."""
        if self._on_swap is not None:
            self._on_swap(None, value)
        self.working[key] = value
        self.view[key] = value

    def put(self, batch: Batch, key: K, value: V | None) -> None:
        """Set (``None``: remove) ``key`` in the working map, undone with the command; published after commit."""
        before = self.working.get(key)
        self._swap(key, before, value)
        batch.on_undo(lambda: self._swap(key, value, before))
        batch.on_commit_once((id(self), key), lambda: self._publish(key))

    def _swap(self, key: K, old: V | None, new: V | None) -> None:
        if self._on_swap is not None:
            self._on_swap(old, new)
        if new is None:
            self.working.pop(key, None)
        else:
            self.working[key] = new

    def _publish(self, key: K) -> None:
        value = self.working.get(key)
        if value is None:
            self.view.pop(key, None)
        else:
            self.view[key] = value
        if self._on_publish is not None:
            self._on_publish(key, value)


class Op:
    """A command made of one function of the batch; services build these."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Batch], Any]) -> None:
        self.fn = fn

    def apply(self, batch: Batch) -> Any:
        return self.fn(batch)


@dataclass(slots=True)
class _Pending:
    command: Command
    future: Future[Any]


class Writer:
    """Owns the write connection; applies commands in order and commits them in groups."""

    def __init__(self, engine: Engine, *, revision: int, clock: Clock = utcnow, max_batch: int = MAX_BATCH,
                 fence: Fence | None = None, epoch: int | None = None) -> None:
        """``fence``: its ``fence(conn)`` runs last in every write transaction, before the commit; raising
        :class:`~tenure.store.leadership.Fenced` there rolls the batch back and fails its commands with it (a
        replica that no longer leads).
        ``epoch``: the leadership epoch this writer writes under, stored with each event."""
        self.engine = engine
        self.fence = fence
        self.epoch = epoch
        self.clock = clock
        self.revision = revision  # last committed revision
        # The revision of a committed batch whose changes are being published (revision moves right after): a
        # reader may already see objects of it, e.g. a watch asked to resume from one (api/watch.py waits).
        self.landing = revision
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._thread = threading.Thread(target=self._run, name="tenure-writer", daemon=True)
        self._stopped = threading.Event()
        self._checkpointer = Checkpointer(engine) if engine.dialect.name == "sqlite" else None
        self.batches = 0
        self.commands = 0
        self.checkpoints = 0  # the writer's own (SQLite), when the Checkpointer asked
        self._own_checkpoint = 0.0
        self.failure: BaseException | None = None  # set if the writer thread stopped on a bug

    def start(self) -> None:
        self._thread.start()
        if self._checkpointer is not None:
            self._checkpointer.start()

    def subscribe(self, fn: Callable[[list[Event]], None]) -> None:
        """Call ``fn(events)`` after each commit, from the writer thread; it must not block."""
        self._listeners.append(fn)

    def submit(self, command: Command) -> Future[Any]:
        fut: Future[Any] = Future()
        if self._stopped.is_set():
            fut.set_exception(Unavailable("the store is closed", code="store_closed"))
        elif self._thread.ident is None:  # never started: a follower's, which writes nothing
            fut.set_exception(Fenced("this replica follows the leader; it does not write"))
        else:
            self._queue.put(_Pending(command, fut))
        return fut

    def execute(self, command: Command, *, timeout: float = 30.0) -> Any:
        """Submit and wait for the committed result (or the command's refusal)."""
        fut = self.submit(command)
        try:
            return fut.result(timeout=timeout)
        except TimeoutError:
            # Still queued: it will not run. Already running: it may yet commit, so say so.
            if fut.cancel():
                raise Unavailable(f"the store did not start within {timeout} s", code="store_timeout") from None
            raise Unavailable(f"no answer from the store within {timeout} s; the change may still commit",
                              code="outcome_unknown") from None

    def close(self, timeout: float = 30.0) -> None:
        try:
            if self._stopped.is_set():
                return
            self._stopped.set()
            self._queue.put(None)
            if self._thread.is_alive():
                self._thread.join(timeout)
        finally:  # after the writer's last batch (the last connection to close checkpoints what is left)
            if self._checkpointer is not None:
                self._checkpointer.stop(timeout)

    # -- the writer thread ---------------------------------------------------

    def _run(self) -> None:
        conn = None
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    break
                items = [first]
                stop = False
                while len(items) < self.max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    items.append(nxt)
                try:
                    conn = self._commit_batch(conn, items)
                    cp = self._checkpointer
                    if conn is not None and cp is not None and (cp.due.is_set() or self._stale_due(cp)):
                        self._checkpoint(conn)
                except BaseException as exc:  # a bug in an undo or after-commit step, or an unknown outcome: stop
                    log.critical("writer stopped: %s", exc, exc_info=True)
                    self.failure = exc
                    self._stopped.set()
                    err = exc if isinstance(exc, Unavailable) else Unavailable("the writer failed",
                                                                               code="writer_failed")
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(err)
                    break
                if stop:
                    break
        finally:
            self._drain_refused()
            if conn is not None:
                self._let_go(conn)

    def _let_go(self, conn: Any) -> None:
        """Close the writer's connection; on SQLite it leaves the pool too (its ``wal_autocheckpoint=0`` is the
        writer's arrangement with the Checkpointer, not for whoever takes the connection next)."""
        with contextlib.suppress(Exception):
            if self._checkpointer is not None:
                conn.invalidate()
            conn.close()

    def _stale_due(self, cp: Checkpointer) -> bool:
        """The Checkpointer's rounds have failed for a while: the writer checkpoints itself, once a second."""
        if not cp.stale() or time.monotonic() - self._own_checkpoint < 1.0:
            return False
        self._own_checkpoint = time.monotonic()
        return True

    def _checkpoint(self, conn: Any) -> None:
        """The writer's own checkpoint, when the Checkpointer asks: what was committed since its last round."""
        assert self._checkpointer is not None
        self._checkpointer.due.clear()
        try:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").close()
            conn.commit()
            self.checkpoints += 1
        except Exception as exc:  # the Checkpointer asks again
            log.warning("checkpoint failed: %s", exc)

    def _drain_refused(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None and not item.future.done():
                item.future.set_exception(Unavailable("the store is closed", code="store_closed"))

    def _commit_batch(self, conn: Any, items: list[_Pending], *, retry: bool = False) -> Any:
        """Apply and commit one batch; returns the connection to use next (None after a failure).

        ``retry``: the items' futures are already running (a failed batch being retried one by one).
        """
        batch = Batch(revision=self.revision, now=self.clock())
        outcomes: list[tuple[_Pending, bool, Any]] = []
        for item in items:
            if not retry and not item.future.set_running_or_notify_cancel():
                continue
            mark = batch.mark()
            try:
                result = item.command.apply(batch)
            except TenureError as exc:
                batch.rollback_to(mark)
                outcomes.append((item, False, exc))
            except Exception as exc:  # a bug: refuse this command, keep the writer alive
                log.exception("command %s failed", type(item.command).__name__)
                batch.rollback_to(mark)
                outcomes.append((item, False, exc))
            else:
                outcomes.append((item, True, result))
        if batch.events or batch.writes or batch.end_of_batch:
            try:
                if conn is None:  # first batch, or the last commit failed: (re)connect now
                    conn = self.engine.connect()
                    if self._checkpointer is not None:  # the Checkpointer's to do, not a commit's
                        conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0").close()
                        conn.commit()
                    if self.fence is not None:
                        self.fence.prepare(conn)
                with conn.begin():
                    for stmt, params in batch.writes:
                        if isinstance(stmt, RawInsert):
                            stmt.execute(conn, params, ordered=isinstance(params, Rows))
                        else:
                            conn.execute(stmt, params if len(params) > 1 else params[0])
                    for build in batch.end_of_batch.values():
                        stmt, params = build()
                        conn.execute(stmt, params)
                    if batch.events:
                        INSERT_EVENTS.execute(conn, _event_rows(batch.events, self.epoch))
                    conn.execute(UPDATE_REVISION, {"b_revision": batch.revision})
                    if self.fence is not None:  # last: the leadership row stays locked only until the commit
                        self.fence.fence(conn, self.epoch)
            except Exception as exc:
                if conn is not None:
                    self._let_go(conn)
                conn = None
                verdict = self._verdict(exc, batch)
                if verdict is True:
                    log.warning("the connection was lost at the commit of %d commands, which did commit", len(items))
                else:
                    return self._failed(exc if verdict is None else verdict, items, batch, outcomes)
        return self._committed(conn, batch, outcomes)

    def _failed(self, exc: Exception, items: list[_Pending], batch: Batch,
                outcomes: list[tuple[_Pending, bool, Any]]) -> Any:
        """The batch did not commit: undo it and answer its callers (or commit its commands one by one)."""
        log.error("commit of %d commands failed: %s", len(items), exc)
        for fn in reversed(batch.undo):
            fn()
        conn = None
        applied = [item for item, ok, _ in outcomes if ok]
        for item, ok, value in outcomes:
            if not ok:
                item.future.set_exception(value)
        if isinstance(exc, Fenced):  # not this replica's to write: no retry can change that
            for item in applied:
                item.future.set_exception(exc)
            return None
        if len(applied) > 1:
            # One command's rows may have broken the commit for all (say, a value the driver
            # refuses): commit each alone, so only the culprit fails and the others go through.
            for item in applied:
                conn = self._commit_batch(conn, [item], retry=True)
            return conn
        err = Unavailable(f"the store failed to commit: {type(exc).__name__}", code="store_error")
        for item in applied:
            item.future.set_exception(err)
        return None

    def _verdict(self, exc: Exception, batch: Batch) -> bool | Fenced | None:
        """After a failed commit: True if it committed nonetheless, :class:`Fenced` if it did not and this
        replica no longer leads, None if it did not commit.

        A statement that failed rolled its transaction back; but a connection lost during the commit leaves
        the outcome unknown, and undoing a batch the store kept would put memory behind the store for good.
        So the store is asked (for up to ``VERDICT_WAIT`` seconds while it is away): is this batch's last
        event there, written by this writer's epoch?
        """
        if isinstance(exc, Fenced):
            return exc
        if not (isinstance(exc, DBAPIError) and exc.connection_invalidated) or not batch.events:
            # It did not commit. A replica asks whether it still leads: a deposed leader's batch fails on the
            # rows the new leader wrote (a revision taken, say) before it reaches its fence.
            if self.fence is None:
                return None
            try:
                with self.engine.connect() as conn, conn.begin():
                    self.fence.fence(conn, self.epoch)
            except Fenced as fenced:
                return fenced
            except Exception:  # the store is away: the batch failed, whatever the reason
                return None
            return None
        last = batch.events[-1]
        deadline = time.monotonic() + VERDICT_WAIT
        delay = 0.05
        while True:
            try:
                with self.engine.connect() as conn:
                    if self.fence is not None:
                        self.fence.prepare(conn)  # bounded like every write session of a replica
                    conn.begin()
                    # The batch's transaction may still be committing on the server: its lock on the state
                    # row says so. Wait for it, then look (a new statement sees what committed meanwhile).
                    conn.execute(select(schema.state.c.revision).where(schema.state.c.id == 1).with_for_update())
                    row = conn.execute(select(schema.events.c.kind, schema.events.c.object_id, schema.events.c.op,
                                              schema.events.c.epoch)
                                       .where(schema.events.c.revision == last.revision)).first()
                    if row is not None and tuple(row) == (last.kind, last.object_id, last.op, self.epoch):
                        return True
                    if self.fence is not None:
                        self.fence.fence(conn, self.epoch)
                    conn.commit()
                return None
            except Fenced as fenced:
                return fenced
            except Exception as again:
                if time.monotonic() > deadline:
                    log.critical("cannot tell whether a batch committed (the store is away: %s); the writer stops",
                                 again)
                    # Memory may now be behind the store: stop, and let a restore settle it.
                    raise Unavailable("the store went away during the commit; the change may have been made",
                                      code="outcome_unknown") from again
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _committed(self, conn: Any, batch: Batch, outcomes: list[tuple[_Pending, bool, Any]]) -> Any:
        # What the batch changed is published before the revision moves: a reader that takes the revision and then
        # reads the published views (a list and the revision a watch then resumes from) never misses a change
        # counted in that revision.
        moves = bool(batch.events or batch.writes or batch.end_of_batch)
        if moves:
            self.landing = batch.revision
        self._after_commit(batch)
        if moves:
            self.revision = batch.revision
        self.commands += len(outcomes)
        for item, ok, value in outcomes:
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)
        self._announce(batch.events)
        return conn

    def _after_commit(self, batch: Batch) -> None:
        for fn in (*batch.after_commit, *batch.after_commit_once.values()):
            try:
                fn()
            except Exception:  # committed already: a bug in a publish or log step must not stop the writer
                log.exception("after-commit step failed")
        self.batches += 1

    def _announce(self, events: list[Event]) -> None:
        if events:
            for listener in self._listeners:
                try:
                    listener(events)
                except Exception:  # a listener must never stop the writer
                    log.exception("event listener failed")

    # -- a follower's batches -------------------------------------------------

    def replay(self, revision: int, fill: Callable[[Batch], None], pages: Iterable[list[Event]]) -> None:
        """A batch another replica committed: ``fill(batch)`` brings memory to the store's rows as of
        ``revision`` (through the same :class:`Published` maps, so views and timers follow); then the
        after-commit steps run and the listeners hear the events, page by page, as for a commit of this
        writer's own.

        Only while this writer's thread has never run: a follower's tailer owns the working maps then.
        """
        if self._thread.ident is not None:
            raise RuntimeError("replay() is for a follower; this writer has run")
        batch = Batch(revision=self.revision, now=self.clock())
        fill(batch)
        self.landing = revision
        self._after_commit(batch)  # published before the revision moves, as for a commit of this writer's own
        self.revision = revision
        for events in pages:
            self._announce(events)
