"""The watch hub: committed events in, to exactly the watchers that want them.

The writer hands each committed batch to :meth:`Hub.publish` (from its own
thread); the hub moves it onto the event loop, keeps the newest events in a
ring (so most resumes never touch the database), and dispatches each event
through an index: a watcher is filed under one key per kind (its most selective
pinned label, see :meth:`~tenure.watch.selector.Filter.index_keys`), and an
event looks up only its own keys. The cost of an event grows with the watchers
filed under its keys, not with the number of watchers (DESIGN.md invariant 9).
``mode="broadcast"`` compares every event with every watcher instead: it exists
only as the baseline of ``bench/watch.py``.

A watcher's buffer of pending events is bounded: a consumer that is blocked
writing to its client while more than ``max_pending`` events queue up is cut
off (its stream ends) and resumes from the last revision it received, so it never blocks the others or grows memory
without bound. Each event's SSE frame is encoded once, however many watchers
receive it.

Everything here runs on the event loop's thread except :meth:`publish`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from tenure.domain.access import Principal
from tenure.domain.events import may_see_event
from tenure.store.writer import Event
from tenure.watch.selector import Filter, IndexKey, event_keys

log = logging.getLogger("tenure.watch")

RING_SIZE = 10_000
MAX_PENDING = 4096
BOOKMARK_INTERVAL = 10.0
MAX_WATCHERS = 20_000
SEND_TIMEOUT = 30.0  # a write blocked this long on a reader that does not read ends the stream
MAX_SNAPSHOTS = 4  # initial listings reading the store at once (each holds a connection and a transaction)


# JSON holds U+2028, U+2029 and U+0085 raw inside strings. SSE ends lines at CR and LF only, but a client that
# splits on Unicode line breaks (str.splitlines, some JavaScript) would cut the frame there: send them escaped,
# which is the same JSON.
_UNICODE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


def sse_frame(revision: int | None, event: str, data: str) -> bytes:
    """One SSE frame; ``data`` is one line of JSON (every frame of the watch is built here)."""
    if not data.isascii():  # O(1) in CPython: the common case pays nothing
        data = data.translate(_UNICODE_BREAKS)
    head = f"id: {revision}\n" if revision is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


def bookmark_frame(revision: int, *, initial_end: bool = False) -> bytes:
    data = f'{{"type":"bookmark","revision":{revision},"initial_end":{"true" if initial_end else "false"}}}'
    return sse_frame(revision, "bookmark", data)


def error_frame(error: dict[str, Any]) -> bytes:
    return sse_frame(None, "error", json.dumps({"type": "error", "error": error}, ensure_ascii=False))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def event_data(
    revision: int, op: str, kind: str, object_id: str, labels_json: str, ts: str | None, body_json: str
) -> str:
    """The ``data:`` JSON of an event frame, assembled from already-encoded labels and body."""
    return (
        f'{{"type":{_dumps(op)},"revision":{revision},"kind":{_dumps(kind)},"id":{_dumps(object_id)},'
        f'"labels":{labels_json},"ts":{_dumps(ts)},"object":{body_json}}}'
    )


class Item:
    """One committed event as the hub keeps it; its frame is encoded on first use and shared."""

    __slots__ = ("_frame", "body", "kind", "labels", "object_id", "op", "revision", "ts")

    def __init__(self, revision: int, ts: str, kind: str, object_id: str, op: str, labels: dict[str, str],
                 body: dict[str, Any], frame: bytes | None = None) -> None:
        self.revision = revision
        self.ts = ts
        self.kind = kind
        self.object_id = object_id
        self.op = op
        self.labels = labels
        self.body = body
        self._frame = frame

    @classmethod
    def of(cls, e: Event) -> Item:
        return cls(e.revision, e.ts.isoformat(), e.kind, e.object_id, e.op, e.labels, e.body)

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            data = event_data(self.revision, self.op, self.kind, self.object_id, _dumps(self.labels), self.ts,
                              _dumps(self.body))
            self._frame = sse_frame(self.revision, self.op, data)
        return self._frame


class Watcher:
    """One open watch: its filter, scope, and the events waiting to be sent."""

    __slots__ = ("active", "bookmark_due", "bookmarks", "closed", "filter", "floor", "keys", "pending", "principal",
                 "sending", "task", "waiter")

    def __init__(self, flt: Filter, principal: Principal, *, bookmarks: bool = True) -> None:
        self.filter = flt
        self.principal = principal
        self.bookmarks = bookmarks
        self.active = False  # sent events since the last bookmark tick
        self.bookmark_due = False
        self.keys: list[IndexKey] = []
        self.pending: list[Item] = []
        self.floor = 0  # events at or below this revision were sent by the replay
        self.waiter: asyncio.Future[None] | None = None
        self.closed: str | None = None  # why the stream must end
        self.sending = False  # blocked writing to the client (a slow reader holds the write)
        self.task: asyncio.Task[Any] | None = None  # the stream's task

    def wants(self, item: Item) -> bool:
        return self.filter.matches(item.kind, item.object_id, item.op, item.labels) and may_see_event(
            self.principal, item.kind, item.object_id, item.labels, item.body
        )

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self.pending = []
            if self.sending and self.task is not None and reason != "disconnected":
                self.task.cancel()  # stuck writing to a reader that does not read: drop the connection
        self.wake()


class Ring:
    """The newest events in revision order, bounded; found by revision with a binary search.

    It holds every dispatched event with a revision above :attr:`base`.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.base = 0
        self._items: list[Item] = []
        self._revs: list[int] = []

    def reset(self, base: int) -> None:
        self.base = base
        self._items, self._revs = [], []

    def append(self, item: Item) -> None:
        self._items.append(item)
        self._revs.append(item.revision)
        if len(self._items) >= 2 * self.size:  # trim in halves: amortised O(1) per event
            self.base = self._revs[self.size - 1]
            del self._items[: self.size]
            del self._revs[: self.size]

    def covers(self, after: int) -> bool:
        """Whether every dispatched event with a revision above ``after`` is here."""
        return after >= self.base

    def after(self, revision: int, until: int | None = None) -> list[Item]:
        lo = bisect.bisect_right(self._revs, revision)
        hi = len(self._revs) if until is None else bisect.bisect_right(self._revs, until)
        return self._items[lo:hi]

    def __len__(self) -> int:
        return len(self._items)


class Hub:
    def __init__(
        self,
        *,
        ring_size: int = RING_SIZE,
        max_pending: int = MAX_PENDING,
        bookmark_interval: float = BOOKMARK_INTERVAL,
        max_watchers: int = MAX_WATCHERS,
        send_timeout: float = SEND_TIMEOUT,
        max_snapshots: int = MAX_SNAPSHOTS,
        mode: str = "index",
    ) -> None:
        if mode not in ("index", "broadcast"):
            raise ValueError("mode is 'index' or 'broadcast'")
        if ring_size < 1 or max_pending < 1 or max_snapshots < 1:
            raise ValueError("ring_size, max_pending and max_snapshots must be at least 1")
        self.mode = mode
        self.max_pending = max_pending
        self.bookmark_interval = bookmark_interval
        self.max_watchers = max_watchers
        self.send_timeout = send_timeout
        self.snapshots = asyncio.Semaphore(max_snapshots)
        self.ring = Ring(ring_size)
        self.revision = 0  # the newest revision dispatched
        self.loop: asyncio.AbstractEventLoop | None = None
        self._index: dict[IndexKey, set[Watcher]] = {}
        self._watchers: set[Watcher] = set()  # filed in the index (live)
        self._streams: set[Watcher] = set()  # every open stream, catching up or live
        self._by_token: dict[str, set[Watcher]] = {}
        self.closed = False
        # counters for /metrics
        self.dispatched = 0
        self.delivered = 0
        self.cutoffs = 0
        self._ticker: asyncio.Task[None] | None = None
        # Set by the server (api.server.Server): drop the connection of a stream that ends mid-response.
        self.abort_connection: Callable[[Any], None] | None = None
        self._revision_waiters: list[tuple[int, asyncio.Future[None]]] = []

    # ----------------------------------------------------------- the writer side

    def attach(self, loop: asyncio.AbstractEventLoop, revision: int) -> None:
        """Start following a store whose last committed revision is ``revision`` (before any new commit)."""
        self.loop = loop
        self.revision = revision
        self.ring.reset(revision)

    def publish(self, events: list[Event]) -> None:
        """Writer thread: hand a committed batch to the loop (never blocks)."""
        loop = self.loop
        if loop is not None and not loop.is_closed() and not self.closed:
            try:
                loop.call_soon_threadsafe(self._dispatch, events)
            except RuntimeError:  # the loop closed meanwhile: nobody is watching any more
                pass

    def _dispatch(self, events: list[Event]) -> None:
        index = self._index
        broadcast = self.mode == "broadcast"
        delivered = 0
        for e in events:
            item = Item.of(e)
            self.ring.append(item)
            self.revision = item.revision
            if broadcast:
                for w in self._watchers:
                    if w.wants(item):
                        delivered += self._push(w, item)
            else:
                for key in event_keys(item.kind, item.object_id, item.labels):
                    bucket = index.get(key)
                    if bucket:
                        for w in bucket:
                            if w.wants(item):
                                delivered += self._push(w, item)
            if item.kind == "token" and item.op != "created" and (item.body.get("revoked_at")
                                                                    or item.body.get("expired")):
                for w in list(self._by_token.get(item.object_id, ())):
                    w.close("token revoked" if item.body.get("revoked_at") else "token expired")
        self.dispatched += len(events)
        self.delivered += delivered
        if self._revision_waiters:
            self._wake_revision_waiters()

    # ------------------------------------------------------------ reading one's writes

    async def applied(self, revision: int, timeout: float) -> bool:
        """Whether this server has applied ``revision`` within ``timeout`` seconds (``?min_revision``)."""
        if self.revision >= revision:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (revision, fut)
        self._revision_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return self.revision >= revision
        finally:
            with contextlib.suppress(ValueError):
                self._revision_waiters.remove(entry)

    def _wake_revision_waiters(self) -> None:
        for revision, fut in self._revision_waiters:
            if revision <= self.revision and not fut.done():
                fut.set_result(None)

    def _push(self, w: Watcher, item: Item) -> int:
        if w.closed is not None or item.revision <= w.floor:
            return 0
        w.pending.append(item)
        # Slow: still blocked writing earlier events while more than max_pending queued up. (A watcher
        # that is not writing takes all its pending events at its next turn, however many one commit made.)
        if w.sending and len(w.pending) > self.max_pending:
            self.cutoffs += 1
            log.warning("watcher too slow: cut off", extra={"pending": len(w.pending), "revision": item.revision})
            w.close("too slow")  # its stream unregisters it (not here: the bucket is being iterated)
            return 0
        if len(w.pending) == 1:
            w.wake()
        return 1

    # ---------------------------------------------------------------- watchers

    def can_open(self) -> bool:
        return not self.closed and len(self._streams) < self.max_watchers

    def open(self, w: Watcher) -> None:
        """Count a new stream from its first moment: revocation, shutdown and the limit reach it while it
        is still catching up, before it is filed."""
        self._streams.add(w)
        if w.principal.token_id:
            self._by_token.setdefault(w.principal.token_id, set()).add(w)
        if self.closed:
            w.close("server shutting down")

    def register(self, w: Watcher, *, floor: int, pending: list[Item]) -> None:
        """File ``w``: it has been sent everything up to ``floor``; ``pending`` are the ring's matches above it.

        The caller must not await between collecting ``pending`` from the ring and this call.
        """
        w.floor = floor
        w.pending = pending
        w.keys = w.filter.index_keys(w.principal)
        self._watchers.add(w)
        for key in w.keys:
            self._index.setdefault(key, set()).add(w)
        if self.closed:
            w.close("server shutting down")
        elif self._ticker is None and self.bookmark_interval:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on a loop (unit tests drive dispatch by hand): no bookmarks
                return
            self._ticker = loop.create_task(self._tick())

    async def _tick(self) -> None:
        """Every bookmark interval, wake the watchers that sent nothing since the last tick: one timer for all."""
        while not self.closed:
            await asyncio.sleep(self.bookmark_interval)
            for w in self._watchers:
                if w.bookmarks and w.closed is None and not w.pending:
                    if not w.active:
                        w.bookmark_due = True
                        w.wake()
                    w.active = False

    def release(self, w: Watcher) -> None:
        """The stream ended: forget it everywhere."""
        self._streams.discard(w)
        self._watchers.discard(w)
        for key in w.keys:
            bucket = self._index.get(key)
            if bucket is not None:
                bucket.discard(w)
                if not bucket:
                    del self._index[key]
        if w.principal.token_id:
            mine = self._by_token.get(w.principal.token_id)
            if mine is not None:
                mine.discard(w)
                if not mine:
                    del self._by_token[w.principal.token_id]

    def collect(self, w: Watcher, after: int, limit: int) -> tuple[list[Item], int]:
        """Matching ring events above ``after``: at most ``limit``, and the revision scanned up to."""
        out: list[Item] = []
        scanned = after
        for item in self.ring.after(after):
            if w.wants(item):
                if len(out) == limit:
                    return out, scanned
                out.append(item)
            scanned = item.revision
        return out, max(scanned, self.revision)

    @property
    def watchers(self) -> int:
        """Open streams (catching up or live)."""
        return len(self._streams)

    @property
    def filed(self) -> int:
        """Streams filed in the index (live)."""
        return len(self._watchers)

    def restart_at(self, revision: int, reason: str) -> None:
        """Any thread: the history before ``revision`` cannot be replayed from here (a replica restored past a
        compacted gap): every stream ends (its client resumes, and re-lists if it must), the ring starts over."""
        def restart() -> None:
            for w in list(self._streams):
                w.close(reason)
            self.revision = revision
            self.ring.reset(revision)

        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(restart)

    def close(self) -> None:
        """End every stream (server shutdown); streams opened later end at once."""
        self.closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        for w in list(self._streams):
            w.close("server shutting down")
