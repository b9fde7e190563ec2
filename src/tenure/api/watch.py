"""``GET /v1/watch``: a filtered, resumable Server-Sent Events stream of the event log.

The route validates everything before the stream starts (so bad input is a
4xx JSON error, never a broken stream); the stream then goes through three
phases, each handing over to the next without a gap or a duplicate:

1. ``initial=true``: the matching objects from one consistent snapshot, then a
   bookmark with the snapshot's revision;
2. replay from the resume point: from the database in pages while the point is
   older than the hub's ring, then from the ring;
3. live: the ring's last matches and the watcher's registration happen in one
   step of the event loop (no await in between), so every later event reaches
   the watcher's buffer; bookmarks are sent when idle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tenure.api import errors
from tenure.api.auth import check_agent_cert, cookie_of, principal_of
from tenure.api.routes import Auth
from tenure.domain.access import Principal
from tenure.domain.errors import Forbidden, InvalidInput, TenureError, Unavailable
from tenure.domain.events import KINDS, OPS, implied_scope, may_see_event
from tenure.store.history import PAGE, History, Row
from tenure.watch.hub import (
    Hub,
    Item,
    Watcher,
    bookmark_frame,
    error_frame,
    event_data,
    sse_frame,
)
from tenure.watch.selector import Filter

log = logging.getLogger("tenure.watch")
router = APIRouter(prefix="/v1")

SEND_BATCH = 512  # frames per write while replaying
FINAL_WRITE_TIMEOUT = 1.0  # the last chunk of a stream (end or error frame)
LISTING_TIMEOUT = 600.0  # an initial listing (or its wait for a turn) ends within this


class _Cut(Exception):
    """The stream must end now (client gone, cut off, token revoked, shutdown)."""


class _Stuck(Exception):
    """A write to the client did not complete in time: end without another write."""


def _revision(raw: str, name: str) -> int:
    text = raw.strip()
    if not _REVISION.fullmatch(text):  # ASCII digits only: "²" is a digit to str.isdigit, not to int()
        raise InvalidInput(f"{name} must be a revision (an integer >= 0), got {raw[:40]!r}", code="invalid_since")
    return int(text)


def parse_since(raw: str | None, current: int, history: History, name: str = "since") -> int | None:
    if raw is None:
        return None
    since = _revision(raw, name)
    if since > current:
        raise InvalidInput(f"{name}={since} is in the future: the newest revision is {current}", code="invalid_since",
                           revision=current)
    history.check(since)  # compacted away, or another store's revision (before a restore): 410
    return since


_REVISION = re.compile(r"[0-9]{1,19}")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
MAX_QUERY = 16 * 1024


def _flag(params: dict[str, list[str]], name: str, default: bool) -> bool:
    values = params.get(name)
    if not values:
        return default
    v = values[-1].strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise InvalidInput(f"{name}: expected true or false, got {values[-1][:40]!r}", code="invalid_request")


def prepare(state: Any, principal: Principal, scope: Scope) -> WatchStream:
    """Validate a watch request (query string and Last-Event-ID) and build its stream, or raise a 4xx."""
    rt = state.require()
    raw = scope.get("query_string", b"")
    if len(raw) > MAX_QUERY:
        raise InvalidInput(f"the query string is longer than {MAX_QUERY} bytes", code="invalid_request")
    try:
        params = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=1024)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"malformed query string: {exc}", code="invalid_request") from None
    unknown = sorted(set(params) - {p["name"] for p in _PARAMS if p["in"] == "query"})
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0][:64]!r}", code="invalid_request")
    for name, pattern, code in (("kind", _KIND_LIST, "invalid_kind"), ("op", _OP_LIST, "invalid_op")):
        for value in params.get(name, ()):
            if not re.fullmatch(pattern, value):
                raise InvalidInput(f"{name}: expected names separated by commas, got {value[:40]!r}", code=code)
    flt = Filter.parse(kinds=params.get("kind", ()), ids=params.get("id", ()), ops=params.get("op", ()),
                       selectors=params.get("selector", ()))
    if all(implied_scope(principal, k) is None for k in flt.kinds):
        raise Forbidden(f"a {principal.describe()} may not watch {', '.join(sorted(flt.kinds))}")
    initial = _flag(params, "initial", False)
    bookmarks = _flag(params, "bookmarks", True)
    since = params.get("since", [None])[-1]
    if since is not None and initial:
        raise InvalidInput("initial=true lists the current objects; it cannot be combined with since",
                           code="invalid_since")
    last_id = None
    for name, value in scope.get("headers", ()):
        if name == b"last-event-id":
            last_id = value.decode("latin-1")
    if last_id is None:
        start = parse_since(since, rt.revision, rt.history)
    else:
        # An EventSource reconnecting: the same URL (since= or initial=true included) plus the last id it
        # received. Resume from that id; neither replay from the URL's since again nor list again.
        if since is not None:
            _revision(since, "since")  # still well formed; its value was the first connection's
        start = parse_since(last_id, rt.revision, rt.history, "Last-Event-ID")
        initial = False
    hub: Hub = state.hub
    if not hub.can_open():
        raise Unavailable("too many open watches on this server; retry later", code="too_many_watchers")
    if start is None and not initial:
        start = rt.revision  # from now: everything committed after this request arrived
    w = Watcher(flt, principal, bookmarks=bookmarks)
    hub.open(w)  # counted, revocable and closable from now on; the stream releases it when it ends
    return WatchStream(hub, rt.history, w, start=start, initial=initial)


def _list_of(names: tuple[str, ...]) -> str:
    one = "(" + "|".join(names) + ")"
    return f"^ *{one}( *, *{one})* *$"


_KIND_LIST = _list_of(KINDS)
_OP_LIST = _list_of(OPS)
_PARAMS = [
    {"name": "kind", "in": "query", "schema": {"type": "array", "items": {"type": "string", "pattern": _KIND_LIST}},
     "description": "kinds (repeat or comma-separate)"},
    {"name": "id", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
    {"name": "selector", "in": "query", "schema": {"type": "array", "items": {"type": "string"}},
     "description": "label selectors, Kubernetes syntax; ANDed"},
    {"name": "op", "in": "query", "schema": {"type": "array", "items": {"type": "string", "pattern": _OP_LIST}}},
    {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "initial", "in": "query", "schema": {"type": "boolean", "default": False}},
    {"name": "bookmarks", "in": "query", "schema": {"type": "boolean", "default": True}},
    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer", "minimum": 0},
     "description": "resume after this revision (an EventSource reconnecting); wins over since and initial"},
]


@router.get("/watch", tags=["watch"], response_class=Response, openapi_extra={"parameters": _PARAMS},
            responses={200: {"content": {"text/event-stream": {}}}, 410: {"description": "history compacted"}})
async def watch(request: Request, who: Auth) -> Response:
    """The documented route; :class:`WatchEndpoint` serves the same requests without the framework's stack."""
    return prepare(request.app.state.tenure, who, request.scope)


RESUME_WAIT = 5.0  # seconds a replica waits to apply the revision a watch resumes from


def _resume_revision(scope: Scope) -> int | None:
    """The revision a watch asks to resume after (Last-Event-ID, else since), if it is well formed."""
    raw = None
    for name, value in scope.get("headers", ()):
        if name == b"last-event-id":
            raw = value.decode("latin-1")
    if raw is None:
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("since")
        raw = values[-1] if values else None
    text = (raw or "").strip()
    return int(text) if _REVISION.fullmatch(text) else None


class WatchEndpoint:
    """Serves ``GET /v1/watch`` in front of the framework (pure ASGI).

    A watch stays open for hours, holding its whole call stack: through FastAPI's routing and
    dependency machinery that is about 27 kB per idle watcher, served here about half. Authentication,
    validation and errors are the same as the route's (:func:`prepare`, ``{"error": ...}`` bodies).
    """

    def __init__(self, app: ASGIApp, *, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/watch" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        try:
            rt = self.state.require()
            want = _resume_revision(scope)
            if want is not None and want > rt.revision:
                # A revision another replica served, or one this server is publishing right now (its objects are
                # readable a moment before the revision moves: store/writer.py): wait for it, briefly. A revision
                # beyond both is the client's mistake, refused at once by the route (400 invalid_since).
                landing = want <= rt.writer.landing
                if (self.state.replica is not None or landing) and not await self.state.hub.applied(want, RESUME_WAIT):
                    raise Unavailable(f"this server has not applied revision {want} yet (it is at "
                                      f"{self.state.hub.revision}); retry shortly", code="not_yet_applied")
            authorization = None
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    authorization = value.decode("latin-1")
            who = principal_of(rt, authorization, cookie_of(scope.get("headers", ())), "GET", None)
            check_agent_cert(self.state, who, scope)
            stream = prepare(self.state, who, scope)
        except TenureError as exc:
            await errors.error_response(errors.status_of(exc), exc.code, exc.message, **exc.details)(
                scope, receive, send)
            return
        await stream(scope, receive, send)


class WatchStream(Response):
    media_type = "text/event-stream"

    def __init__(self, hub: Hub, history: History, watcher: Watcher, *, start: int | None, initial: bool) -> None:
        # Not Response.__init__: it would announce a body of length 0.
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.hub = hub
        self.history = history
        self.w = watcher
        self.start = start
        self.initial = initial
        self.sent = 0  # the last revision the client was told about
        self._send: Send | None = None

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        w = self.w
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        w.task = asyncio.current_task()
        listener = asyncio.ensure_future(self._listen(receive))
        error: dict[str, Any] | None = None
        try:
            if self.start is None:
                pos = await self._initial()
            else:
                pos = self.start
                await self._write(bookmark_frame(pos))  # where the stream starts, for a resume before any event
                self.sent = pos
            await self._replay(pos)
            await self._live()
        except TenureError as exc:  # gone (compacted under a replay), too many listings, listing timeout
            error = exc.to_dict()
        except _Cut:
            pass
        except _Stuck:
            self._abort(scope)  # a write never completed: drop the connection, no further write
            return
        except asyncio.CancelledError:
            if w.closed is None:  # a real cancellation (server shutting down): let it through
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            self._abort(scope)  # cut off while blocked writing to a reader that does not read
            return
        except Exception as exc:  # the store failed under a replay or snapshot: end cleanly, the client resumes
            log.exception("watch stream failed")
            error = {"code": "unavailable", "message": f"the stream failed ({type(exc).__name__}); resume from "
                     "the last id received"}
        finally:
            w.task = None
            self.hub.release(w)
            listener.cancel()
        if w.closed == "disconnected":
            return
        try:
            await self._write(error_frame(error) if error is not None and w.closed is None else b"", final=True)
        except _Stuck:
            self._abort(scope)

    def _abort(self, scope: Scope) -> None:
        if self.hub.abort_connection is not None:
            self.hub.abort_connection(scope)

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.w.close("disconnected")
                return

    async def _write(self, data: bytes, *, final: bool = False) -> None:
        w = self.w
        if w.closed is not None and not final:
            raise _Cut
        assert self._send is not None
        w.sending = True
        try:
            # The end of a stream gets a short grace only: a stream closed by shutdown or revocation while its
            # reader stalls must not keep the connection (and a shutdown) for the whole send timeout.
            async with asyncio.timeout(min(self.hub.send_timeout, FINAL_WRITE_TIMEOUT) if final
                                       else self.hub.send_timeout):
                await self._send({"type": "http.response.body", "body": data, "more_body": not final})
        except TimeoutError:  # the reader stopped reading (any phase: listing, replay or live)
            self.hub.cutoffs += 1
            log.warning("watch stream cut off: a write blocked", extra={"seconds": self.hub.send_timeout})
            w.close("too slow")
            raise _Stuck from None
        finally:
            w.sending = False

    # ---------------------------------------------------------------- phases

    async def _initial(self) -> int:
        """Phase 1: the current matching objects, then the bookmark that ends them. Returns its revision.

        At most ``hub.snapshots`` listings read the store at once (each holds a connection and a read
        transaction), and a listing ends within ``LISTING_TIMEOUT``: a reader that stalls cannot hold them.
        """
        hub = self.hub
        try:
            async with asyncio.timeout(LISTING_TIMEOUT):
                await hub.snapshots.acquire()
        except TimeoutError:
            raise Unavailable("too many initial listings at once; retry", code="too_many_listings") from None
        try:
            async with asyncio.timeout(LISTING_TIMEOUT):
                return await self._list()
        except TimeoutError:
            raise Unavailable(f"the initial listing took over {LISTING_TIMEOUT:g} s; retry",
                              code="listing_timeout") from None
        finally:
            hub.snapshots.release()

    async def _list(self) -> int:
        w, history = self.w, self.history
        conn, revision = await asyncio.to_thread(history.open_snapshot)
        try:
            for kind in sorted(w.filter.kinds):
                lister = history.listers.get(kind)
                pins = w.filter.pins(w.principal, kind)
                if lister is None or pins is None:
                    continue
                it = lister(conn, pins)
                while True:
                    chunk = await asyncio.to_thread(_take, it, PAGE)
                    frames = [
                        sse_frame(None, "created", event_data(
                            body.get("revision", revision), "created", kind, object_id, _dumps(labels),
                            None, _dumps(body)))
                        for object_id, labels, body in chunk
                        if w.filter.matches(kind, object_id, "created", labels)
                        and may_see_event(w.principal, kind, object_id, labels, body)
                    ]
                    if frames:
                        await self._write(b"".join(frames))
                    if len(chunk) < PAGE:
                        break
        finally:
            await asyncio.to_thread(conn.close)
        await self._write(bookmark_frame(revision, initial_end=True))
        self.sent = revision
        return revision

    async def _replay(self, pos: int) -> None:
        """Phase 2: everything after ``pos`` that matches, until the watcher is filed with the hub."""
        w, hub = self.w, self.hub
        kinds = None if len(w.filter.kinds) > 2 else w.filter.kinds  # the (kind, revision) index pays off
        while True:
            if w.closed is not None:
                raise _Cut
            if hub.ring.covers(pos):
                items, scanned = hub.collect(w, pos, hub.max_pending)
                if scanned >= hub.revision:
                    hub.register(w, floor=scanned, pending=items)  # no await since collect: nothing missed
                    self.sent = max(self.sent, pos)
                    if not items and scanned > self.sent and w.bookmarks:
                        # Caught up with nothing to send: say so now, not at the next idle tick, so a selective
                        # watcher knows it has every event up to here (an agent resuming after a restart).
                        await self._write(bookmark_frame(scanned))
                        self.sent = scanned
                    return
                await self._send_items(items)
                pos = scanned
                continue
            before = hub.revision
            rows = await asyncio.to_thread(self.history.page, pos, kinds)
            frames = [_row_frame(r) for r in rows if _row_wanted(w, r)]
            for i in range(0, len(frames), SEND_BATCH):
                await self._write(b"".join(frames[i:i + SEND_BATCH]))
            pos = rows[-1].revision if len(rows) == PAGE else max(rows[-1].revision if rows else pos, before)
            if not frames and pos > self.sent:  # progress a selective watcher can resume from
                await self._write(bookmark_frame(pos))
            self.sent = max(self.sent, pos)

    async def _send_items(self, items: list[Item]) -> None:
        for i in range(0, len(items), SEND_BATCH):
            batch = items[i:i + SEND_BATCH]
            await self._write(b"".join(it.frame for it in batch))
            self.sent = batch[-1].revision

    async def _live(self) -> None:
        """Phase 3: send what the hub queued, and a bookmark when the hub's ticker finds the watcher idle."""
        w, hub = self.w, self.hub
        loop = asyncio.get_running_loop()
        while True:
            if w.closed is not None:
                raise _Cut
            if w.pending:
                items, w.pending = w.pending, []
                w.active = True
                await self._send_items(items)
                continue
            if w.bookmark_due:
                w.bookmark_due = False
                self.sent = max(self.sent, hub.revision)  # nothing pending: every match up to here was sent
                await self._write(bookmark_frame(self.sent))
                continue
            waiter = w.waiter = loop.create_future()
            try:
                await waiter
            finally:
                w.waiter = None


def _take(it: Any, n: int) -> list[Any]:
    out = []
    for x in it:
        out.append(x)
        if len(out) == n:
            break
    return out


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _row_wanted(w: Watcher, r: Row) -> bool:
    labels = json.loads(r.labels)
    if not w.filter.matches(r.kind, r.object_id, r.op, labels):
        return False
    p: Principal = w.principal
    body = json.loads(r.body) if (not p.is_admin and r.kind == "pool") else {}
    return may_see_event(p, r.kind, r.object_id, labels, body)


def _row_frame(r: Row) -> bytes:
    return sse_frame(r.revision, r.op, event_data(r.revision, r.op, r.kind, r.object_id, r.labels,
                                                  r.ts.isoformat(), r.body))
