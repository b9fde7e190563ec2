"""The synchronous client: :class:`TenureClient`, every route of the /v1 API (see :mod:`._base`), JSON dicts out.

It is deliberately thin: the server validates, so the client sends what it is
given and turns failures into the three exceptions of :mod:`._errors`. Answers
are the API's JSON documents unchanged, with one addition: :meth:`claim` (and
:meth:`reserve`, :meth:`register_agent`) add ``created`` (the API tells a new
object from an existing one by 201 vs 200, which a dict cannot carry otherwise).

One ``httpx.Client`` underneath, configured once and never mutated afterwards
(the token goes into each request's headers, not into shared client state), so
one :class:`TenureClient` may be used from many threads at once.

Every request is sent to an absolute URL built from ``base_url``, so an injected
``http`` client (e.g. FastAPI's ``TestClient``, which is an ``httpx.Client``)
is used only as a transport; its own base URL and headers do not leak in.

A host agent (``tenure agent``) listens on a Unix socket by default: a base URL
``unix:/path/to/agent.sock`` sends every request over that socket (to an
``http://localhost`` origin, which the server ignores), and errors still name the
``unix:`` URL. Both the synchronous and the asynchronous client speak it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any

import httpx

from tenure.client._base import MAX_PAGE, Call, ClientBase
from tenure.client._errors import TenureClientError, TenureConfigError, api_error, transport_error
from tenure.client._tls import ClientCert, verify_with
from tenure.client._watch import WATCH_READ_TIMEOUT, Backoff, Watch, WatchSession


class TenureClient(ClientBase[dict[str, Any]]):
    """Talks to one Tenure server with one token. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        ca_file: str | None = None,
        client_cert: ClientCert | None = None,
    ) -> None:
        """``transport`` replaces the network (e.g. ``httpx.MockTransport``); ``http`` replaces the whole
        ``httpx.Client`` and stays owned by the caller (it is not closed by :meth:`close`).

        ``base_url`` ``unix:PATH`` connects to the Unix socket ``PATH`` (unless ``transport`` or ``http``
        replaces the network, which then gets the requests with an ``http://localhost`` origin). ``ca_file``: the CA
        that signs an ``https://`` server's certificate (else ``$TENURE_CA_FILE``, else the system's trust store)."""
        super().__init__(base_url, token, timeout, http, transport)
        self.tls = verify_with(ca_file, client_cert)  # the context of https:// connections
        self.client_cert = client_cert
        if self._socket is not None and http is None and transport is None:
            transport = httpx.HTTPTransport(uds=self._socket)
        self._http = http if http is not None else httpx.Client(timeout=timeout, transport=transport,
                                                     verify=self.tls)

    # ---------------------------------------------------------------- plumbing

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> TenureClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, call: Call) -> Any:
        tries = self.failover.tries(call)
        while True:
            origin = self._origin
            try:
                response = self._http.request(call.method, origin + call.path, **self._request(call))
            except (httpx.TransportError, httpx.InvalidURL) as exc:
                if (pause := tries.after(origin, error=exc)) is None:
                    raise self._unreachable(origin, call, exc) from None
            else:
                if (pause := tries.after(origin, response=response)) is None:
                    return self._saw(call.read(response))
            time.sleep(pause)

    # ------------------------------------------------------------------- pages

    def iter_claims(self, pool: str, page_size: int = MAX_PAGE, after: str | None = None) -> Iterator[dict[str, Any]]:
        """Every claim of the pool (after key ``after``) in key order, a page at a time as the caller consumes them."""
        while True:
            page = self.claims(pool, limit=page_size, after=after)
            yield from page["claims"]
            after = page.get("next")
            if after is None:
                return

    def iter_reservations(
        self,
        state: str | None = None,
        project: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every matching reservation (after the cursor ``after``: a page's ``next``), a page of ``limit`` at a
        time, following ``next``."""
        while True:
            page = self.reservations(state=state, project=project, after=after, limit=limit)
            yield from page["reservations"]
            after = page.get("next")
            if after is None:
                return

    # ------------------------------------------------------------------ backup

    def backup(self, out: IO[bytes], read_timeout: float = 120.0) -> dict[str, Any]:
        """Stream a backup of the whole store (``GET /v1/admin/backup``, admin) into ``out``: its revision and size.

        The bytes are written as they arrive; whether they are complete is the file's own checksum to say
        (``tenure backup`` verifies before keeping a file)."""
        origin, size = self._origin, 0
        headers = {**self._headers, "Accept": "application/gzip"}
        try:
            with self._http.stream("GET", origin + "/v1/admin/backup", headers=headers,
                                   timeout=httpx.Timeout(self.timeout, read=read_timeout)) as r:
                if r.is_error:
                    r.read()
                    raise api_error(r)
                for chunk in r.iter_bytes():
                    out.write(chunk)
                    size += len(chunk)
                revision = int(r.headers.get("X-Tenure-Revision", "0"))
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise transport_error(self.base_url, read_timeout, exc) from None
        return {"revision": revision, "bytes": size}

    # ------------------------------------------------------------------- watch

    def watch(
        self,
        kinds: str | Iterable[str] | None = None,
        *,
        ids: str | Iterable[str] | None = None,
        selectors: str | Iterable[str] | None = None,
        ops: str | Iterable[str] | None = None,
        since: int | None = None,
        initial: bool = False,
        bookmarks: bool = True,
        read_timeout: float = WATCH_READ_TIMEOUT,
        max_retries: int | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], object] = time.sleep,
        rng: random.Random | None = None,
    ) -> Watch:
        """Stream the matching events (``GET /v1/watch``) as :class:`WatchEvent`, resuming across lost
        connections from the last revision received, so none is lost or repeated.

        Filters: one string or several each (all must match). ``since``: events after that revision;
        ``initial``: the current objects first (``revision`` None), then a bookmark with ``initial_end``,
        then live events; neither: from now. A listing cut short starts over after a ``resync`` event.
        Raises :class:`WatchGone` (410) when ``since`` is older than the kept history, and
        :class:`TenureAPIError` on any other refusal; retries 5xx and connection failures (forever, or
        ``max_retries`` attempts in a row) with ``backoff``. Lazy: nothing is sent before the first
        ``next()``. See :mod:`tenure.client._watch`.
        """
        session = self._watch_session(kinds, ids, selectors, ops, since=since, initial=initial, bookmarks=bookmarks,
                                      max_retries=max_retries, backoff=backoff, rng=rng)
        return Watch(session, self._watch(session, read_timeout, sleep))

    def _watch(self, session: WatchSession, read_timeout: float, sleep: Callable[[float], object]) -> Iterator[Any]:
        while True:
            url, headers, timeout = self._watch_request(read_timeout)
            error: TenureClientError | None = None
            try:
                if session.needs_start and not session.on_start(self._http.get(
                        self._origin + "/healthz", headers=self._headers, timeout=self.timeout)):
                    sleep(session.connection_lost())
                    continue
                with self._http.stream("GET", url, params=session.params(), headers=headers, timeout=timeout) as r:
                    if r.is_error:
                        r.read()
                    events = session.on_response(r)
                    if events is not None:
                        yield from events
                        for chunk in r.iter_bytes():
                            yield from session.feed(chunk)
            except (httpx.TransportError, httpx.InvalidURL) as exc:
                error = transport_error(self.base_url, read_timeout, exc)
                if isinstance(error, TenureConfigError):
                    raise error from None
            self.failover.next(self.failover.url)  # resume on the next replica, from the last revision
            sleep(session.connection_lost(error))

