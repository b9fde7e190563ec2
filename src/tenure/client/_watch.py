"""The watch, without I/O: SSE parsing, events, query parameters, and the resume state machine.

``GET /v1/watch`` streams Server-Sent Events (docs/api.md, "Watch"). The sync
client (:meth:`TenureClient.watch`) and the async one
(:meth:`AsyncTenureClient.watch`) differ only in how they wait and read; both
drive one :class:`WatchSession` that decides everything else:

* :class:`SSEParser` turns bytes into frames, incrementally, per the SSE spec
  (``id:``, ``event:``, multi-line ``data:``, ``retry:``, ``:`` comments, CR, LF
  or CRLF line ends, split anywhere, UTF-8 split anywhere). A frame is
  dispatched only at its blank line, so a frame cut by a lost connection is
  dropped whole and its ``id:`` does not count.
* :class:`WatchSession` remembers the last ``id:`` received and asks for
  ``since=`` it on every reconnection, so nothing is lost or repeated. A stream
  cut during the initial listing (``initial=true``, before the bookmark with
  ``initial_end``) has no revision to resume from: the listing starts over and
  the caller first gets a ``resync`` event (drop what the interrupted listing
  delivered). 410 raises :class:`WatchGone`; any other 4xx raises
  :class:`TenureAPIError` at once; 5xx, connection errors, read timeouts and a
  stream that simply ends are retried after a capped exponential backoff with
  jitter (the ``sleep`` and the ``rng`` are injected, so tests never wait).

The caller's loop is therefore::

    session = WatchSession(query, url=..., since=..., initial=...)
    while True:
        try:
            if session.needs_start and not session.on_start(<GET /healthz>):
                raise <retry>
            response = <GET /v1/watch?{session.params()}, streamed>
            events = session.on_response(response)     # raises, or None: retry (5xx)
            if events is not None:
                yield from events                       # e.g. a resync
                for chunk in <response body>:
                    yield from session.feed(chunk)
            error = None
        except <transport error> as exc:
            error = <exc as a TenureClientError>
        sleep(session.connection_lost(error))          # raises when retries are exhausted
"""

from __future__ import annotations

import codecs
import json
import random
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

from tenure.client._errors import TenureAPIError, TenureClientError, TenureConnectionError, api_error

#: The read timeout of a watch request: longer than the server's bookmark interval (10 s), which doubles
#: as the keep-alive, so a silent stream means a dead connection.
WATCH_READ_TIMEOUT = 60.0

_EOL = re.compile(r"\r\n|\r|\n")


class WatchGone(TenureAPIError):
    """410 ``gone``: the events to resume from were compacted away. ``compacted_revision``: history starts
    after it; ``revision``: the server's current revision (both as the server sends them).

    Nothing can resume from there: list the objects, then watch from the list's revision, or watch with
    ``initial=True``.
    """

    def __init__(
        self,
        revision: int | None,
        compacted_revision: int | None,
        message: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            410,
            "gone",
            message or f"history compacted up to revision {compacted_revision} (current: {revision}): list, "
            "then watch from the list's revision, or use initial=true",
            {**(details or {}), "revision": revision, "compacted_revision": compacted_revision},
        )
        self.revision = revision
        self.compacted_revision = compacted_revision

    @classmethod
    def from_error(cls, error: TenureAPIError) -> WatchGone:
        d = error.details
        return cls(_int_or_none(d.get("revision")), _int_or_none(d.get("compacted_revision")), error.message, d)

    def __repr__(self) -> str:
        return f"WatchGone(revision={self.revision}, compacted_revision={self.compacted_revision})"


def _health_error(response: httpx.Response) -> TenureAPIError:
    try:
        body = response.json()
        status = str(body.get("status", "unavailable"))
        detail = f": {body['error']}" if body.get("error") else ""
    except (ValueError, AttributeError):
        status, detail = "unavailable", ""
    return TenureAPIError(response.status_code, "not_ready", f"the server is {status}{detail}")


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------ SSE


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched SSE frame. ``id`` is this frame's own ``id:`` field (None if it had none)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Incremental SSE parser (WHATWG HTML, "Server-sent events", event stream interpretation).

    :meth:`feed` takes bytes (UTF-8, split anywhere) or text and returns the frames completed by it.
    ``last_event_id`` is the spec's "last event ID string": set when a frame ends (blank line), even a
    frame without data, never by a frame cut short. ``retry`` is the last valid ``retry:`` in milliseconds.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []  # the current line, unterminated so far
        self._pending_cr = False  # the last chunk ended with CR: a LF starting the next one belongs to it
        self._bom = True  # a leading U+FEFF is still to be skipped
        self.last_event_id = ""
        self.retry: int | None = None
        self._id_buffer = ""
        self._frame_id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes | str) -> list[ServerSentEvent]:
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes | bytearray | memoryview) else chunk
        if not text:
            return []
        if self._bom:
            self._bom = False
            if text[0] == "\ufeff":
                text = text[1:]
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across chunks: the line already ended at the CR
        self._pending_cr = False
        if not text:
            return []
        self._pending_cr = text.endswith("\r")
        out: list[ServerSentEvent] = []
        start = 0
        for m in _EOL.finditer(text):
            if self._parts:
                self._parts.append(text[start : m.start()])
                line = "".join(self._parts)
                self._parts.clear()
            else:
                line = text[start : m.start()]
            start = m.end()
            frame = self._line(line)
            if frame is not None:
                out.append(frame)
        if start < len(text):
            self._parts.append(text[start:])
        return out

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None  # a comment (a keep-alive, say)
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
                self._frame_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None  # any other field is ignored

    def _dispatch(self) -> ServerSentEvent | None:
        self.last_event_id = self._id_buffer
        frame_id, self._frame_id = self._frame_id, None
        event, self._event = self._event or "message", ""
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data = []
        return ServerSentEvent(event, data, frame_id, self.retry)


# --------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One thing a watch delivers.

    ``type``: ``created``, ``updated``, ``deleted``; ``bookmark`` (every matching event up to ``revision``
    was sent; ``initial_end`` on the one closing an initial listing); or ``resync``, made by the client
    (the initial listing was cut and starts over: forget what it delivered so far). ``revision`` is the
    frame's ``id:``, None for the objects of an initial listing (and for ``resync``). ``data`` is the
    frame's JSON as sent.
    """

    type: str
    revision: int | None
    kind: str | None = None
    id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ts: str | None = None
    object: dict[str, Any] | None = None
    initial_end: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def is_bookmark(self) -> bool:
        return self.type == "bookmark"

    @property
    def initial(self) -> bool:
        """Whether this is an object of the initial listing (a ``created`` frame without ``id:``)."""
        return self.revision is None and self.type in ("created", "updated", "deleted")


RESYNC = WatchEvent("resync", None, data={"type": "resync"})


# ------------------------------------------------------------------ the query


def _values(v: str | Iterable[str] | None) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    return tuple(v)


@dataclass(frozen=True, slots=True)
class WatchQuery:
    """What to watch: every parameter is repeated per value (all must match, see docs/api.md)."""

    kinds: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    selectors: tuple[str, ...] = ()
    ops: tuple[str, ...] = ()
    bookmarks: bool = True

    @classmethod
    def of(
        cls,
        kinds: str | Iterable[str] | None = None,
        ids: str | Iterable[str] | None = None,
        selectors: str | Iterable[str] | None = None,
        ops: str | Iterable[str] | None = None,
        bookmarks: bool = True,
    ) -> WatchQuery:
        """Each filter as one string or several."""
        return cls(_values(kinds), _values(ids), _values(selectors), _values(ops), bookmarks)

    def params(self, *, since: int | None = None, initial: bool = False) -> list[tuple[str, str]]:
        p: list[tuple[str, str]] = [("kind", k) for k in self.kinds]
        p += [("id", i) for i in self.ids]
        p += [("selector", s) for s in self.selectors]
        p += [("op", o) for o in self.ops]
        if not self.bookmarks:
            p.append(("bookmarks", "false"))
        if initial:
            p.append(("initial", "true"))
        elif since is not None:
            p.append(("since", str(since)))
        return p


# -------------------------------------------------------------- backoff


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before reconnection attempt ``n`` (0-based): ``min(cap, first * factor**n)``, jittered down
    to as little as half, so many watchers cut at once (a server restart) do not come back in step."""

    first: float = 0.1
    cap: float = 10.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        d = min(self.cap, self.first * self.factor ** min(attempt, 64))
        return rng.uniform(d / 2, d)


# ------------------------------------------------------- the state machine


class WatchSession:
    """The resume logic of one watch, fed by a sync or an async transport loop (see the module doc).

    ``revision`` is the resume point: the last ``id:`` received (bookmarks included), or ``since``.
    ``max_retries``: consecutive failed attempts (no frame received in between) before giving up with
    the last error; None retries forever. ``skipped`` counts events the server sent twice or out of
    order (at or below ``revision``): dropped, and never expected.
    """

    def __init__(
        self,
        query: WatchQuery,
        *,
        url: str = "",
        since: int | None = None,
        initial: bool = False,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        max_retries: int | None = None,
    ) -> None:
        if since is not None and initial:
            raise ValueError("since and initial exclude each other")
        if since is not None and since < 0:
            raise ValueError("since must be >= 0")
        self.query = query
        self.url = url
        self.revision: int | None = since
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.max_retries = max_retries
        self.connections = 0  # streams opened (200)
        self.reconnects = 0  # attempts after the first
        self.skipped = 0
        self._listing = initial  # the initial listing is still to be completed
        self._listed = 0  # objects delivered from the current listing
        self._resync = False  # the caller must be told the listing starts over
        self._failures = 0  # consecutive attempts without progress
        self._last_error: TenureClientError | None = None
        self._progress = False  # the current connection delivered a frame
        self._anchored = since is not None or initial  # a revision to resume from is known or not needed
        self._parser = SSEParser()

    @property
    def listing(self) -> bool:
        """Whether the initial listing is still under way (no ``initial_end`` bookmark yet)."""
        return self._listing

    @property
    def needs_start(self) -> bool:
        """Whether the caller must first read the current revision (``GET /healthz``, see :meth:`on_start`).

        A watch "from now" (neither ``since`` nor ``initial``) starts at the server's current revision, but
        the stream says which only at its first ``id:``; a connection lost before that would leave no
        resume point, and the events committed meanwhile would be lost. Reading the revision first and
        watching ``since`` it is the same "from now", with a resume point from the start.
        """
        return not self._anchored

    def on_start(self, response: httpx.Response) -> bool:
        """The answer of ``GET /healthz``: False if the server is not ready (retry, as for a 5xx)."""
        if response.status_code >= 500:
            self._last_error = _health_error(response)
            return False
        self._anchored = True
        try:
            revision = response.json().get("revision")
        except (ValueError, AttributeError):
            revision = None
        if isinstance(revision, int) and revision >= 0:  # else an older server: watch from "now" unanchored
            self.revision = revision
        return True

    def params(self) -> list[tuple[str, str]]:
        """The query of the next request; starts a new connection (a fresh parser)."""
        self._parser = SSEParser()
        self._progress = False
        return self.query.params(since=None if self._listing else self.revision, initial=self._listing)

    def on_response(self, response: httpx.Response) -> list[WatchEvent] | None:
        """The answer's status and headers (and for an error, its body, read): the events to deliver first,
        or None when the attempt failed and is to be retried (5xx). Raises :class:`WatchGone` on 410 and
        :class:`TenureAPIError` on any other error that retrying cannot fix."""
        status = response.status_code
        if status == 200:
            ctype = response.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                raise TenureAPIError(status, "invalid_response", f"a watch answered {ctype or 'no content type'}, "
                                                                 "not text/event-stream")
            self.connections += 1
            if self._resync:
                self._resync = False
                return [RESYNC]
            return []
        error = api_error(response)
        if status == 410:
            raise WatchGone.from_error(error)
        if status >= 500:
            self._last_error = error
            return None
        raise error

    def feed(self, chunk: bytes | str) -> list[WatchEvent]:
        """Bytes of the stream in, the events to deliver out (in order)."""
        out = []
        for frame in self._parser.feed(chunk):
            event = self._event(frame)
            if event is not None:
                out.append(event)
        return out

    def _event(self, frame: ServerSentEvent) -> WatchEvent | None:
        self._progress = True
        try:
            data = json.loads(frame.data)
            rev = int(frame.id) if frame.id else None
        except ValueError:
            raise TenureAPIError(200, "invalid_response", f"a malformed watch frame: {frame!r:.200}") from None
        if not isinstance(data, dict):
            raise TenureAPIError(200, "invalid_response", f"a malformed watch frame: {frame!r:.200}")
        if frame.event == "error" or data.get("type") == "error":
            self._error(data)
            return None
        kind = data.get("type") or frame.event
        if kind == "bookmark":
            if rev is None:
                rev = _int_or_none(data.get("revision"))
            end = bool(data.get("initial_end"))
            if self._listing:
                if not end:  # a keep-alive inside the listing: no resume point yet
                    return WatchEvent("bookmark", rev, data=data)
                self._listing = False
                self._listed = 0
            if rev is not None and (self.revision is None or rev > self.revision):
                self.revision = rev
            return WatchEvent("bookmark", rev, initial_end=end, data=data)
        event = WatchEvent(
            kind,
            rev,
            kind=data.get("kind"),
            id=data.get("id"),
            labels=data.get("labels") or {},
            ts=data.get("ts"),
            object=data.get("object"),
            data=data,
        )
        if rev is None:
            if self._listing:
                self._listed += 1
            return event
        if self.revision is not None and rev <= self.revision:
            self.skipped += 1
            return None
        if not self._listing:
            self.revision = rev
        return event

    def _error(self, data: dict[str, Any]) -> None:
        """An ``event: error`` frame ends the stream: 410-like ``gone`` raises; anything else (a revoked
        token, a consumer too slow) is a stream end like any other, and the reconnection tells."""
        body = data.get("error") if isinstance(data.get("error"), dict) else {}
        code = str(body.get("code", "error"))
        details = {k: v for k, v in body.items() if k not in ("code", "message")}
        error = TenureAPIError(200, code, str(body.get("message", "the watch stream ended with an error")), details)
        if code == "gone":
            raise WatchGone.from_error(error)
        self._last_error = error

    def connection_lost(self, error: TenureClientError | None = None) -> float:
        """The stream is over (``error`` None: it ended cleanly, or the response was a 5xx): the delay before
        the next attempt. Raises the last error when ``max_retries`` consecutive attempts failed."""
        if error is not None:
            self._last_error = error
        if self._listing and self._listed:
            self._resync = True
            self._listed = 0
        if self._progress:
            self._failures = 0
        self._failures += 1
        if self.max_retries is not None and self._failures > self.max_retries:
            raise self._last_error or TenureConnectionError(self.url, "the watch stream kept ending")
        self.reconnects += 1
        return self.backoff.delay(self._failures - 1, self.rng)


# ------------------------------------------------------------- the handles


class Watch:
    """A running watch (sync): iterate it for :class:`WatchEvent`; :meth:`close` (or ``with``) ends it.

    ``revision`` is where it would resume: the last ``id:`` received, bookmarks included.
    """

    def __init__(self, session: WatchSession, events: Iterator[WatchEvent]) -> None:
        self.session = session
        self._events = events

    @property
    def revision(self) -> int | None:
        return self.session.revision

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> WatchEvent:
        return next(self._events)

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWatch:
    """A running watch (async): ``async for`` it; :meth:`aclose` (or ``async with``) ends it."""

    def __init__(self, session: WatchSession, events: AsyncIterator[WatchEvent]) -> None:
        self.session = session
        self._events = events

    @property
    def revision(self) -> int | None:
        return self.session.revision

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
