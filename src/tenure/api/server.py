"""The HTTP server machinery around the app: uvicorn, configured and extended for Tenure.

:func:`server_for` builds the :class:`Server` that ``tenure serve`` and ``tenure agent`` run (and the
tests, through :func:`server_config`). Its connections speak :class:`HttpProtocol`: uvicorn's httptools
protocol, with what uvicorn leaves out:

- Errors of the HTTP layer itself (a malformed request, a request target over ``max_url`` bytes, a head
  over ``max_head`` bytes) are answered like every other error: ``{"error": {"code", "message"}}`` as
  JSON (400, 414, 431), never plain text. The head is bounded while it arrives, so a header that never
  ends costs at most ``max_head`` bytes and one read.
- A request answered before its body arrived in full (413 on its Content-Length, 401 before the body was
  read, a refusal of the HTTP layer) has the rest of its body read and discarded, up to ``linger_bytes`` and
  ``linger_timeout``. Closing a socket with unread bytes makes Linux send a reset, and a client that sends
  its whole body before it reads (urllib, requests, most libraries) would then get "connection reset" in
  place of the answer. An answer that closes the connection then waits for the client to close (lingering
  close, as nginx does); one that keeps it open lets the parser skip the rest of the body.
- A connection has ``header_timeout`` seconds to send a request's headers (from its start, or from the
  first bytes of a request): then it is closed, with a 408 if part of a request came. uvicorn has no such
  timeout (only one for idle keep-alive connections, 5 s), and connections that sent part of a request
  used to pile up until the process ran out of descriptors. A head that comes whole arms no timer.
- At start the server raises its descriptor soft limit to the hard limit, and accepts at most
  ``max_connections`` connections at once (by default the limit less a reserve for the store and the rest):
  past that a new connection is closed at once and logged, where running out of descriptors used to reset
  every new connection, ``/healthz`` included, with nothing logged.
- Open connections, header timeouts, refused connections and requests are metrics (:class:`HttpStats`,
  read by ``api/metrics.py``); refusals are logged (logger ``tenure.http``, at most one line a second per
  kind, with the count of those not logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import resource
import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr

from tenure.api.tls import CERT_NAMES, cert_names
from tenure.config import HEADER_TIMEOUT

log = logging.getLogger("tenure.http")


@dataclass(frozen=True)
class HttpLimits:
    """What the HTTP layer accepts before a request reaches the app."""

    max_url: int = 16 * 1024  # bytes of request target (path and query): longer is 414
    max_head: int = 64 * 1024  # bytes of request line and headers: more is 431
    linger_bytes: int = 64 * 1024 * 1024  # most bytes of an answered request's body read and discarded
    linger_timeout: float = 10.0  # seconds the rest of an answered request's body may take to arrive
    header_timeout: float = HEADER_TIMEOUT  # seconds a connection has to send a request's headers
    body_timeout: float = HEADER_TIMEOUT  # seconds a request's body may go without a byte arriving
    max_connections: int | None = None  # None: the descriptor limit less a reserve (see connection_limit)


class _Throttled:
    """At most one log line per kind and ``interval``; the next line says how many were not logged."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -math.inf) < self.interval:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            fields["not_logged"] = skipped
        log.log(level, msg, extra=fields)


class HttpStats:
    """What one server's connections did: read by the metrics at scrape time."""

    def __init__(self) -> None:
        self.open = 0  # connections now
        self.max_connections: int | None = None  # set at start; None: no limit
        self.header_timeouts = 0  # connections closed for not sending a request's headers in time
        self.body_timeouts = 0  # connections closed for a request body that stopped coming
        self.refused_connections = 0  # closed at once: at max_connections
        self.errors: dict[int, int] = {}  # requests refused by the HTTP layer, by status (400, 414, 431)
        self.log = _Throttled()


def server_config(app: Any, *, limits: HttpLimits | None = None, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app (``overrides``: more uvicorn options, e.g. a log level)."""
    protocol = type("HttpProtocol", (HttpProtocol,), {"limits": limits or HttpLimits(), "stats": HttpStats()})
    # No proxy-header rewriting: Tenure is not meant to sit behind a proxy that it trusts blindly.
    # No WebSocket: Tenure has no WebSocket route, and an upgraded connection would leave HttpProtocol's care.
    options: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "on",
                               "timeout_graceful_shutdown": 10, "proxy_headers": False, "http": protocol,
                               "ws": "none"}
    return uvicorn.Config(app, **{**options, **overrides})


def raise_descriptor_limit() -> tuple[int, int, int]:
    """Raise this process's soft limit of open descriptors to its hard limit: (soft before, soft now, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. a hard limit above fs.nr_open
            pass
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard


MAX_CONNECTIONS = 16_384  # the default cap however many descriptors there are: memory is finite too


def connection_limit(soft: int) -> int:
    """Connections accepted at once under a soft descriptor limit: a reserve is kept for the store, the logs,
    drivers' pipes and the rest, so that a flood of connections never takes the last descriptor; and at most
    :data:`MAX_CONNECTIONS` (each may hold a head of 64 KiB and a body of 1 MiB while it is read)."""
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return min(MAX_CONNECTIONS, max(64, soft - max(256, soft // 8)))


def server_for(app: Any, *, limits: HttpLimits | None = None, raise_fd_limit: bool = True,
               tls: ssl.SSLContext | None = None) -> Server:
    """The server for ``app``. ``raise_fd_limit``: raise the descriptor soft limit at start (``tenure serve``;
    not the host agent, whose drivers would inherit it and which serves a few local clients). ``tls``: listen
    with this context (api/tls.py; reloaded in place on SIGHUP)."""
    server = Server(server_config(app, limits=limits))
    server.raise_fd_limit = raise_fd_limit
    server.tls = tls
    return server


class _Refusal(Exception):
    """Raised in a parser callback: the request is refused with this status and error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Conn:
    """What HttpProtocol keeps per connection (see its docstring), apart from uvicorn's own state."""

    __slots__ = ("counted", "head_timer", "in_head", "head_bytes", "head_size", "draining", "discarding", "drained",
                 "linger", "body_timer", "body_seen", "cycle_transport", "cert_names")

    def __init__(self) -> None:
        self.counted = False
        self.head_timer: asyncio.TimerHandle | None = None
        self.in_head = True
        self.head_bytes = 0
        self.head_size = 0
        self.draining = self.discarding = False
        self.drained = 0
        self.linger: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.body_seen = 0.0
        self.cycle_transport: _CycleTransport | None = None
        self.cert_names: frozenset[str] | None = None  # a TLS connection's verified client certificate's names


class HttpProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection: uvicorn's httptools protocol with bounded heads and JSON refusals.

    Its own state is in ``_c`` (:class:`_Conn`). ``in_head`` is true while the connection waits for the head of
    its next request (from the end of the previous request's body, or the start of the connection, until that
    head is complete); ``head_bytes`` counts what arrived meanwhile, ``head_size`` the request target and
    headers parsed so far.

    After an answer that came before the whole body: ``draining`` (the connection is to close: every byte
    is discarded unparsed until the client closes) or ``discarding`` (it stays open: the parser skips the
    rest of the body); ``drained`` counts the bytes, ``linger`` bounds the time.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()
    stats: ClassVar[HttpStats] = HttpStats()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        stats = self.stats
        self._c = _Conn()  # one attribute: uvicorn's instance dict stays a compact (key-sharing) one
        if stats.max_connections is not None and stats.open >= stats.max_connections:
            stats.refused_connections += 1
            stats.log.log(logging.WARNING, "limit", "connection refused: at the connection limit",
                          limit=stats.max_connections, client=_address(get_remote_addr(transport)))
            transport.abort()
            return
        self._c.counted = True
        stats.open += 1
        super().connection_made(transport)
        # What a request's cycle closes goes through _close_after_response (see on_headers_complete).
        self._c.cycle_transport = _CycleTransport(transport, self._close_after_response)
        if transport.get_extra_info("ssl_object") is not None:  # (called once the handshake is done)
            self._c.cert_names = cert_names(transport.get_extra_info("peercert"))
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._c.counted:  # refused in connection_made
            return
        self._c.counted = False
        self.stats.open -= 1
        self._c.head_timer = _cancel(self._c.head_timer)
        self._c.body_timer = _cancel(self._c.body_timer)
        self._c.linger = _cancel(self._c.linger)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._c.draining or self._c.discarding:
            self._c.drained += len(data)
            if self._c.drained > self.limits.linger_bytes:
                self.transport.close()  # enough: whatever still comes is reset
                return
            if self._c.draining:
                return
        self._unset_keepalive_if_required()
        if self._c.in_head:
            self._c.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refusal = exc.__context__ if isinstance(exc.__context__, _Refusal) else None
            if refusal is not None:
                self._refuse(refusal.status, refusal.code, refusal.message)
            elif isinstance(exc.__context__, UnicodeDecodeError):
                self._refuse(400, "invalid_request", "the request target is not ASCII")
            else:
                detail = exc.__context__ if exc.__context__ is not None else exc
                self._refuse(400, "invalid_request", f"not a valid HTTP/1.1 request: {detail}")
            return
        if self._c.in_head:
            if self._c.head_bytes > self.limits.max_head:  # a head that does not end
                self._refuse(431, "headers_too_large", f"the request line and headers are over "
                                                       f"{self.limits.max_head} bytes")
            elif self._c.head_timer is None:
                self._arm_head_timer()  # part of a head came: the rest has header_timeout to come

    # Parser callbacks: uvicorn's, with the head's size counted as it is parsed.
    def on_url(self, url: bytes) -> None:
        self.url += url
        self._c.head_size += len(url)
        if len(self.url) > self.limits.max_url:
            raise _Refusal(414, "uri_too_long", f"the request target is over {self.limits.max_url} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._c.head_size += len(name) + len(value) + 4
        if self._c.head_size > self.limits.max_head:
            raise _Refusal(431, "headers_too_large", f"the request line and headers are over "
                                                     f"{self.limits.max_head} bytes")
        name = name.lower()
        # llhttp keeps trailing OWS, which https://www.rfc-editor.org/rfc/rfc9110#section-5.5 excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._c.head_timer = _cancel(self._c.head_timer)
        self._c.in_head = False
        self._c.head_bytes = self._c.head_size = 0
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a new request (not an upgrade): its task has not run yet
            self.cycle.transport = self._c.cycle_transport  # type: ignore[assignment]
            if self._c.cert_names is not None:  # the ASGI TLS extension's place; read by api/auth.py
                tls = self.scope.setdefault("extensions", {}).setdefault("tls", {})  # type: ignore[typeddict-item]
                tls[CERT_NAMES] = self._c.cert_names
            if _has_body(self.headers):  # a body follows: it may not stall (the app reads it before it answers)
                self._c.body_seen = self.loop.time()
                self._c.body_timer = _cancel(self._c.body_timer)
                self._c.body_timer = self.loop.call_later(self.limits.body_timeout, self._body_idle)

    def on_body(self, body: bytes) -> None:
        self._c.body_seen = self.loop.time()  # no re-arming per chunk: the timer looks when it fires
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._c.in_head = True
        self._c.body_timer = _cancel(self._c.body_timer)
        if self._c.discarding:  # the body of an answered request is over: the connection serves the next one
            self._c.discarding = False
            self._c.linger = _cancel(self._c.linger)
        super().on_message_complete()
        self._arm_head_timer()  # if it was already answered

    def on_response_complete(self) -> None:
        if self._c.draining:
            self.server_state.total_requests += 1
            return
        if not self._c.in_head and not self.pipeline and not self.transport.is_closing():
            # Answered (and kept open) before the body arrived in full: the parser skips the rest, bounded.
            self._c.discarding = True
            self._c.drained = 0
            self._c.linger = self.loop.call_later(self.limits.linger_timeout, self._linger_over)
        super().on_response_complete()  # an idle connection is closed after timeout_keep_alive (5 s)

    def shutdown(self) -> None:
        if self._c.draining:
            self.transport.close()
        else:
            super().shutdown()

    def _close_after_response(self) -> None:
        """A request's cycle closes the connection (an answer with ``connection: close``, or a failure)."""
        if self._c.in_head or self.transport.is_closing():
            self.transport.close()
        else:  # its body is still coming
            self._start_draining()

    def _start_draining(self) -> None:
        """Lingering close: discard whatever arrives until the client closes, within the limits, then close."""
        self._c.draining = True
        self._c.discarding = False
        self._c.drained = 0
        self._unset_keepalive_if_required()
        self._c.head_timer = _cancel(self._c.head_timer)
        self._c.linger = _cancel(self._c.linger)
        self._c.linger = self.loop.call_later(self.limits.linger_timeout, self._linger_over)
        if self.cycle is not None:
            self.cycle.body = bytearray()
        self.flow.resume_reading()

    def _linger_over(self) -> None:
        self._c.linger = None
        self.transport.close()

    def _arm_head_timer(self) -> None:
        """Waiting for a request's head, with no request being answered: it must come within the timeout.

        Armed when a connection starts, when part of a head arrived (not for a head that comes whole: no timer
        on the way of a request), and when the rest of an answered body was skipped."""
        if (self._c.head_timer is None and self._c.in_head and not self._c.draining
                and (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()):
            self._c.head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _body_idle(self) -> None:
        """A request's body has not moved for ``body_timeout``: close (408 if nothing was answered yet)."""
        self._c.body_timer = None
        idle = self.loop.time() - self._c.body_seen
        if idle < self.limits.body_timeout:  # bytes came meanwhile: look again when they are due
            self._c.body_timer = self.loop.call_later(self.limits.body_timeout - idle, self._body_idle)
            return
        if self.transport.is_closing() or self._c.draining or self._c.discarding:
            return
        self.stats.body_timeouts += 1
        self.stats.log.log(logging.INFO, "body_timeout", "connection closed: the request body stopped coming",
                           client=_address(self.client), body_timeout=self.limits.body_timeout,
                           open_connections=self.stats.open)
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self._write_error(408, "request_timeout", f"the request's body stopped coming for "
                                                      f"{self.limits.body_timeout:g} s")
        if cycle is not None:
            cycle.disconnected = True  # the app's receive() ends: http.disconnect
            cycle.message_event.set()
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._c.head_timer = None
        if self.transport.is_closing() or self._c.draining:
            return
        self.stats.header_timeouts += 1
        self.stats.log.log(logging.INFO, "header_timeout", "connection closed: request headers not complete in "
                           "time", client=_address(self.client), received_bytes=self._c.head_bytes,
                           header_timeout=self.limits.header_timeout, open_connections=self.stats.open)
        if self._c.head_bytes:  # part of a request came: say why it is not answered
            self._write_error(408, "request_timeout", f"the request's headers did not arrive within "
                                                      f"{self.limits.header_timeout:g} s")
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "invalid_request", msg)

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's says to install a WebSocket library: Tenure has no WebSocket route, the request is served as is.
        log.debug("upgrade request served without upgrading", extra={"client": _address(self.client)})

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer an error of the HTTP layer, as JSON like every other error, and close the connection."""
        self.stats.errors[status] = self.stats.errors.get(status, 0) + 1
        self.stats.log.log(logging.INFO, "refused", "request refused", status=status, error=code, reason=message,
                           client=_address(self.client))
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # Mid-request (a body that stopped being HTTP): the app sees a disconnect, and it cannot have
            # started an answer that this one would corrupt.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self._write_error(status, code, message)
        self._start_draining()  # whatever else the client sends, it gets to read this answer

    def _write_error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode() + b"\r\n",
                        b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))


class _CycleTransport:
    """The transport as a request's cycle sees it: its ``close`` is the protocol's, which may linger."""

    __slots__ = ("_transport", "close", "is_closing", "write")

    def __init__(self, transport: Any, close: Any) -> None:
        self._transport = transport
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.close = close

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    """Cancel ``timer`` if there is one; None, to store in its place."""
    if timer is not None:
        timer.cancel()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these headers has a body (a Content-Length above 0, or chunked)."""
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"", b"0")
        if name == b"transfer-encoding":
            return True
    return False


def _address(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "local"


class Server(uvicorn.Server):
    """uvicorn's server, ending watch streams first when it shuts down, and dropping cut-off ones.

    ``stopped_by``: the names of the signals that stopped it (SIGTERM, SIGINT), once it has.

    uvicorn waits for open responses to finish before it runs the app's shutdown; a watch never
    finishes on its own, so the hub ends every stream (clients resume elsewhere or later) first.

    A stream cut off because its reader stopped reading ends without completing its response, and
    uvicorn then *closes* the transport, which waits for the unread bytes to drain: forever, for a
    reader that never reads (and a shutdown would wait on it). ASGI has no way to say "abort", so the
    hub is given one here: find the connection serving that request and abort its transport.
    """

    tls: ssl.SSLContext | None = None

    stopped_by: list[str] = []
    raise_fd_limit = True

    def _state(self) -> Any:
        app = self.config.loaded_app if self.config.loaded else self.config.app
        return getattr(getattr(_unwrap(app), "state", None), "tenure", None)

    async def startup(self, sockets: Any = None) -> None:
        if self.tls is not None:  # our own context (not uvicorn's from file names): it is reloaded in place
            self.config.ssl = self.tls
        if self.raise_fd_limit:
            before, soft, hard = raise_descriptor_limit()
        else:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            before = soft
        protocol = self.config.http_protocol_class
        stats: HttpStats | None = getattr(protocol, "stats", None)
        if stats is not None:
            configured = protocol.limits.max_connections  # type: ignore[attr-defined]
            stats.max_connections = configured if configured is not None else connection_limit(soft)
            metrics = getattr(getattr(_unwrap(self.config.loaded_app), "state", None), "metrics", None)
            if metrics is not None:
                metrics.attach_http(stats)
        log.info("descriptor limit", extra={"soft": soft, "hard": hard, "soft_before": before,
                                            "max_connections": stats.max_connections if stats else None})
        await super().startup(sockets)
        state = self._state()
        if state is not None:
            state.hub.abort_connection = self._abort

    def _abort(self, scope: Any) -> None:
        for conn in list(self.server_state.connections):
            cycle = getattr(conn, "cycle", None)
            if cycle is not None and cycle.scope is scope:
                conn.transport.abort()
                return

    async def shutdown(self, sockets: Any = None) -> None:
        state = self._state()
        if state is not None:
            state.hub.close()
            if state.lrm is not None:  # a host agent: its long polls answer now, not at the graceful timeout
                state.lrm.stop_waiting()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGTERM (what systemd and most supervisors send) and SIGINT both mean: shut down cleanly.

        uvicorn re-raises the signal once it has shut down, so that the process dies of it; the caller
        (``tenure serve``, ``tenure agent``) has cleaning up left to do (the socket file) and exits 0
        instead. Which signals came is kept in :attr:`stopped_by`.
        """
        with super().capture_signals():
            try:
                yield
            finally:
                self.stopped_by = [signal.Signals(s).name for s in self._captured_signals]
                self._captured_signals.clear()


def _unwrap(app: Any) -> Any:
    """The FastAPI app under uvicorn's middleware wrappers."""
    while not isinstance(app, FastAPI) and hasattr(app, "app"):
        app = app.app
    return app


class _QuietCutoffs(logging.Filter):
    """A watcher cut off while the server was blocked writing to it ends without a final chunk; uvicorn
    reports that as an error. It is expected (the hub logs the cut-off), so it goes to debug instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == "ASGI callable returned without completing response.":
            logging.getLogger("tenure.watch").debug("stream ended without its final chunk (cut off)")
            return False
        return True


logging.getLogger("uvicorn.error").addFilter(_QuietCutoffs())
