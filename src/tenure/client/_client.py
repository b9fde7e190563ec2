"""A small synchronous client of the /v1 API: one method per route, JSON dicts out.

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

Path segments are percent-encoded with nothing left safe: a key ``a/b`` must
reach the server as one segment ``a%2Fb``, and ``?``, ``#`` and ``%`` must not
start a query, a fragment or an escape. The keys ``.`` and ``..`` are dot
segments that URL normalisation would remove, so their dots are escaped too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from tenure.client._errors import (
    TenureAPIError,
    TenureClientError,
    TenureConfigError,
    TenureConnectionError,
)
from tenure.client._locate import locate
from tenure.client._watch import (
    WATCH_READ_TIMEOUT,
    Backoff,
    Watch,
    WatchQuery,
    WatchSession,
)

#: The largest page the server hands out; :meth:`TenureClient.iter_claims` asks for it.
MAX_PAGE = 1000

#: A base URL of this form (``unix:/run/tenure/agent.sock``) talks HTTP over a Unix socket.
UNIX_PREFIX = "unix:"
#: The origin requests over a Unix socket are addressed to (the socket, not the host, says where they go).
UNIX_ORIGIN = "http://localhost"

ClaimItem = str | tuple[str, int | None]


def segment(text: str) -> str:
    """``text`` as one URL path segment: every reserved character escaped, dot segments included."""
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def unix_socket(base_url: str) -> str | None:
    """The socket path of a ``unix:PATH`` (or ``unix:///PATH``) base URL; None for any other URL."""
    if not base_url.startswith(UNIX_PREFIX):
        return None
    path = base_url[len(UNIX_PREFIX):]
    if path.startswith("//"):  # unix:///run/x.sock, the URL spelling
        path = path[2:]
    if not path:
        raise TenureConfigError(f"invalid server URL {base_url!r}: no socket path after unix:")
    return path


def _api_error(response: httpx.Response) -> TenureAPIError:
    """The server's ``{"error": {...}}`` as an exception; something sensible for any other body."""
    try:
        body = response.json()["error"]
        details = {k: v for k, v in body.items() if k not in ("code", "message")}
        return TenureAPIError(response.status_code, str(body["code"]), str(body["message"]), details)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return TenureAPIError(response.status_code, f"http_{response.status_code}", text)


def _transport_error(base_url: str, timeout: float | None, exc: Exception) -> TenureClientError:
    """An httpx failure to reach ``base_url`` (or to hear from it in time) as a client error."""
    if isinstance(exc, httpx.TimeoutException):
        return TenureConnectionError(base_url, f"no answer within {timeout:g}s" if timeout else "timed out")
    if isinstance(exc, httpx.ConnectError):
        which = "tenure agent" if base_url.startswith(UNIX_PREFIX) else "tenure serve"
        return TenureConnectionError(base_url, f"{str(exc) or 'connection failed'} (is `{which}` running there?)")
    if isinstance(exc, httpx.InvalidURL):
        return TenureConfigError(f"invalid server URL {base_url!r}: {exc}")
    return TenureConnectionError(base_url, str(exc) or type(exc).__name__)


def _decode(response: httpx.Response) -> Any:
    """The answer's JSON; ``invalid_response`` if it is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise TenureAPIError(
            response.status_code, "invalid_response", f"the server's answer is not JSON: {response.text[:200]!r}"
        ) from None


def _created(response: httpx.Response) -> dict[str, Any]:
    """A POST answered 201 (new) or 200 (already there): the JSON plus ``created``."""
    if response.is_error:
        raise _api_error(response)
    return {**_decode(response), "created": response.status_code == 201}


class _ClientBase:
    """What the sync and async clients share: the server, the token's headers, the timeout, ``from_env``."""

    def __init__(self, base_url: str, token: str, timeout: float, http: Any, transport: Any) -> None:
        if http is not None and transport is not None:
            raise ValueError("pass either transport or http, not both")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._owns_http = http is None

    @classmethod
    def from_env(
        cls,
        url: str | None = None,
        token: str | None = None,
        data_dir: Path | str | None = None,
        **kwargs: Any,
    ) -> Self:
        """A client for the argument, else ``TENURE_URL``/``TENURE_TOKEN``, else the local server and admin token."""
        target = locate(url, token, data_dir)
        return cls(target.url, target.token, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


class TenureClient(_ClientBase):
    """Talks to one Tenure server with one token. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        """``transport`` replaces the network (e.g. ``httpx.MockTransport``); ``http`` replaces the whole
        ``httpx.Client`` and stays owned by the caller (it is not closed by :meth:`close`).

        ``base_url`` ``unix:PATH`` connects to the Unix socket ``PATH`` (unless ``transport`` or ``http``
        replaces the network, which then gets the requests with an ``http://localhost`` origin)."""
        super().__init__(base_url, token, timeout, http, transport)
        socket_path = unix_socket(self.base_url)
        self._origin = self.base_url if socket_path is None else UNIX_ORIGIN  # where requests are addressed
        if socket_path is not None and http is None and transport is None:
            transport = httpx.HTTPTransport(uds=socket_path)
        self._http = http if http is not None else httpx.Client(timeout=timeout, transport=transport)

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

    def _send(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
        content: str | bytes | None = None, content_type: str | None = None, read_timeout: float | None = None,
    ) -> httpx.Response:
        """One request; ``content`` (with its ``content_type``) is a raw body sent instead of ``json``;
        ``read_timeout`` replaces the client's timeout for reading the answer (a long poll)."""
        url = self._origin + path
        headers = self._headers if content_type is None else {**self._headers, "Content-Type": content_type}
        extra: dict[str, Any] = {}
        if read_timeout is not None:
            extra["timeout"] = httpx.Timeout(self.timeout, read=read_timeout)
        try:
            return self._http.request(method, url, headers=headers, json=json, params=params, content=content,
                                      **extra)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise _transport_error(self.base_url, read_timeout or self.timeout, exc) from None

    def _call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
        content: str | bytes | None = None, content_type: str | None = None, read_timeout: float | None = None,
    ) -> Any:
        response = self._send(method, path, json=json, params=params, content=content, content_type=content_type,
                              read_timeout=read_timeout)
        if response.is_error:
            raise _api_error(response)
        return self._decode(response)

    _decode = staticmethod(_decode)

    # ------------------------------------------------------------------- pools

    def create_pool(
        self,
        name: str,
        ranges: Iterable[Sequence[int]],
        reserved: Iterable[Sequence[int]] = (),
        strategy: str = "lowest",
        projects: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "ranges": [list(r) for r in ranges],
            "reserved": [list(r) for r in reserved],
            "strategy": strategy,
            "projects": list(projects) if projects is not None else None,
        }
        return self._call("POST", "/v1/pools", json=body)

    def pools(self) -> dict[str, Any]:
        """``{"pools": [...], "revision": N}``."""
        return self._call("GET", "/v1/pools")

    def pool(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/pools/{segment(name)}")

    def delete_pool(self, name: str, force: bool = False) -> dict[str, Any]:
        """Refused while the pool holds claims, unless ``force``."""
        params = {"force": "true"} if force else None
        return self._call("DELETE", f"/v1/pools/{segment(name)}", params=params)

    # ------------------------------------------------------------------ claims

    def claim(
        self,
        pool: str,
        key: str,
        value: int | None = None,
        project: str | None = None,
        host: str | None = None,
    ) -> dict[str, Any]:
        """Claim ``key`` (idempotent); the answer has ``created``: False when the key was already held."""
        body = {"key": key, "value": value, "project": project, "host": host}
        return _created(self._send("POST", f"/v1/pools/{segment(pool)}/claims", json=body))

    def claim_many(
        self,
        pool: str,
        items: Iterable[ClaimItem],
        project: str | None = None,
        host: str | None = None,
    ) -> dict[str, Any]:
        """Claim keys (``"key"`` or ``(key, value)``) in one transaction: all or none."""
        claims = [{"key": i, "value": None} if isinstance(i, str) else {"key": i[0], "value": i[1]} for i in items]
        body = {"claims": claims, "project": project, "host": host}
        return self._call("POST", f"/v1/pools/{segment(pool)}/claims:bulk", json=body)

    def get_claim(self, pool: str, key: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/pools/{segment(pool)}/claims/{segment(key)}")

    def find_value(self, pool: str, value: int) -> dict[str, Any]:
        """The claim that holds ``value``; ``claim_not_found`` if none does."""
        return self._call("GET", f"/v1/pools/{segment(pool)}/values/{int(value)}")

    def claims(self, pool: str, limit: int = 100, after: str | None = None) -> dict[str, Any]:
        """One page in key order: ``{"claims": [...], "next": KEY or None, "revision": N}``."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return self._call("GET", f"/v1/pools/{segment(pool)}/claims", params=params)

    def iter_claims(self, pool: str, page_size: int = MAX_PAGE, after: str | None = None) -> Iterator[dict[str, Any]]:
        """Every claim of the pool (after key ``after``) in key order, a page at a time as the caller consumes them."""
        while True:
            page = self.claims(pool, limit=page_size, after=after)
            yield from page["claims"]
            after = page.get("next")
            if after is None:
                return

    def release(self, pool: str, key: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/pools/{segment(pool)}/claims/{segment(key)}")

    # ------------------------------------------------------------------- audit

    def audit_begin(self, pool: str) -> dict[str, Any]:
        """Start a mark-and-sweep: owners re-claim their keys, then :meth:`audit_end` releases the rest."""
        return self._call("POST", f"/v1/pools/{segment(pool)}/audit:begin")

    def audit_end(self, pool: str) -> dict[str, Any]:
        """The pool after the sweep, with ``released``: the claims nobody re-claimed."""
        return self._call("POST", f"/v1/pools/{segment(pool)}/audit:end")

    # ------------------------------------------------------------------ tokens

    def create_token(
        self,
        role: str,
        project: str | None = None,
        host: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """The token's record with its secret under ``token``; the server never shows the secret again."""
        body = {"role": role, "project": project, "host": host, "description": description}
        return self._call("POST", "/v1/tokens", json=body)

    def tokens(self, revoked: bool = False) -> dict[str, Any]:
        """``{"tokens": [...]}``; revoked tokens only when ``revoked``."""
        return self._call("GET", "/v1/tokens", params={"revoked": "true"} if revoked else None)

    def revoke_token(self, id: str) -> dict[str, Any]:  # noqa: A002 - mirrors the API's name
        return self._call("DELETE", f"/v1/tokens/{segment(id)}")

    def whoami(self) -> dict[str, Any]:
        """The role, project and host of this client's token."""
        return self._call("GET", "/v1/whoami")

    # ---------------------------------------------------------------- topology

    def topology(self) -> dict[str, Any]:
        """``{"nodes": [...], "links": [...], "revision": N, "updated_at": ...}``."""
        return self._call("GET", "/v1/topology")

    def put_topology(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole topology (admin); the answer has ``recheck``: kept, rerouted, degraded, restored."""
        return self._call("PUT", "/v1/topology", json=doc)

    def put_topology_yaml(self, text: str) -> dict[str, Any]:
        """:meth:`put_topology` with the document as YAML text, parsed by the server."""
        return self._call("PUT", "/v1/topology", content=text.encode("utf-8"), content_type="application/yaml")

    def node(self, id: str) -> dict[str, Any]:  # noqa: A002 - mirrors the API's name
        return self._call("GET", f"/v1/topology/nodes/{segment(id)}")

    def put_node(self, id: str, body: dict[str, Any]) -> dict[str, Any]:  # noqa: A002
        """Add or replace one node (``{"kind": ..., "labels": ...}``); answers like :meth:`put_topology`."""
        return self._call("PUT", f"/v1/topology/nodes/{segment(id)}", json=body)

    def delete_node(self, id: str) -> dict[str, Any]:  # noqa: A002
        """Refused (``node_in_use``) while links still end at the node."""
        return self._call("DELETE", f"/v1/topology/nodes/{segment(id)}")

    def link(self, id: str) -> dict[str, Any]:  # noqa: A002
        return self._call("GET", f"/v1/topology/links/{segment(id)}")

    def put_link(self, id: str, body: dict[str, Any]) -> dict[str, Any]:  # noqa: A002
        """Add or replace one link (``{"a", "b", "capacity"}`` or ``capacity_ab``/``capacity_ba``)."""
        return self._call("PUT", f"/v1/topology/links/{segment(id)}", json=body)

    def delete_link(self, id: str) -> dict[str, Any]:  # noqa: A002
        return self._call("DELETE", f"/v1/topology/links/{segment(id)}")

    def usage(self, link: str, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        """Both directions of ``link`` as steps of booked bit/s, from ``start`` to ``end`` (query ``from``/``to``)."""
        params = {k: v for k, v in (("from", start), ("to", end)) if v is not None}
        return self._call("GET", f"/v1/links/{segment(link)}/usage", params=params or None)

    # ------------------------------------------------------------ reservations

    def reserve(self, **fields: Any) -> dict[str, Any]:
        """Make a reservation (``kind``, ``src``, ``dst``, ``rate``, ``end``, ...; None fields are left out).

        The answer has ``created``: False when a ``request_id`` retry returned the reservation it made.
        """
        body = {k: v for k, v in fields.items() if v is not None}
        return _created(self._send("POST", "/v1/reservations", json=body))

    def reservations(
        self,
        state: str | None = None,
        project: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """One page in admission order: ``{"reservations": [...], "next": ID or None, "revision": N}``."""
        params = {k: v for k, v in (("state", state), ("project", project), ("after", after), ("limit", limit))
                  if v is not None}
        return self._call("GET", "/v1/reservations", params=params or None)

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

    def reservation(self, id: str) -> dict[str, Any]:  # noqa: A002
        return self._call("GET", f"/v1/reservations/{segment(id)}")

    def modify_reservation(self, id: str, **changes: Any) -> dict[str, Any]:  # noqa: A002
        """Change ``start``, ``end``, ``rate``/``rate_out``, ``rate_in`` or ``labels``: re-admitted, all or nothing."""
        body = {k: v for k, v in changes.items() if v is not None}
        return self._call("PATCH", f"/v1/reservations/{segment(id)}", json=body)

    def cancel_reservation(self, id: str) -> dict[str, Any]:  # noqa: A002
        """Cancel: the capacity is free at once; cancelling again answers the cancelled reservation."""
        return self._call("DELETE", f"/v1/reservations/{segment(id)}")

    # ------------------------------------------------------------- instances

    def create_instance(self, name: str, type: str, host: str, *,  # noqa: A002
                        parameters: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
                        depends_on: list[str] | None = None, project: str | None = None) -> dict[str, Any]:
        """A desired-state instance; ``created``: False when the same one already existed."""
        body = {k: v for k, v in (("name", name), ("type", type), ("host", host), ("parameters", parameters),
                                  ("labels", labels), ("depends_on", depends_on), ("project", project))
                if v is not None}
        return _created(self._send("POST", "/v1/instances", json=body))

    def create_instances(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        """Several instances that may depend on each other, all or nothing: ``{"instances": [...]}``."""
        return self._call("POST", "/v1/instances/batch", json={"instances": instances})

    def instances(self, host: str | None = None, state: str | None = None, type: str | None = None,  # noqa: A002
                  project: str | None = None, after: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """One page: ``{"instances": [...], "next": ID or None, "revision": N}``."""
        params = {k: v for k, v in (("host", host), ("state", state), ("type", type), ("project", project),
                                    ("after", after), ("limit", limit)) if v is not None}
        return self._call("GET", "/v1/instances", params=params or None)

    def instance(self, ref: str) -> dict[str, Any]:
        """By id, or by name within the caller's project."""
        return self._call("GET", f"/v1/instances/{segment(ref)}")

    def modify_instance(self, ref: str, **changes: Any) -> dict[str, Any]:
        """Change ``parameters``, ``labels`` or ``depends_on``; the agent applies it as a modify (reload)."""
        return self._call("PATCH", f"/v1/instances/{segment(ref)}",
                          json={k: v for k, v in changes.items() if v is not None})

    def delete_instance(self, ref: str, *, force: bool = False) -> dict[str, Any]:
        """Desired absent: ``deleting`` until the agent confirms (``deleted`` at once if it was never sent)."""
        return self._call("DELETE", f"/v1/instances/{segment(ref)}", params={"force": "true"} if force else None)

    def types(self) -> dict[str, Any]:
        return self._call("GET", "/v1/types")

    def paths(self, **query: Any) -> dict[str, Any]:
        """Up to ``k`` feasible paths for ``src`` → ``dst`` at ``rate`` over ``start``-``end``; nothing is booked."""
        return self._call("POST", "/v1/paths", json={k: v for k, v in query.items() if v is not None})

    # ------------------------------------------------------------------ limits

    def limits(self) -> dict[str, Any]:
        """``{"limits": [...], "revision": N}``."""
        return self._call("GET", "/v1/limits")

    def limit(self, project: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/limits/{segment(project)}")

    def set_limit(self, project: str, max: int | str | None = None,  # noqa: A002 - the API's field
                  share: float | str | None = None) -> dict[str, Any]:
        """Cap what ``project`` may hold per link direction: ``max`` bit/s, or a ``share`` of each capacity."""
        body = {k: v for k, v in (("max", max), ("share", share)) if v is not None}
        return self._call("PUT", f"/v1/limits/{segment(project)}", json=body)

    def delete_limit(self, project: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/limits/{segment(project)}")

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
        query = WatchQuery.of(kinds, ids, selectors, ops, bookmarks)
        session = WatchSession(query, url=self.base_url, since=since, initial=initial, backoff=backoff, rng=rng,
                               max_retries=max_retries)
        return Watch(session, self._watch(session, read_timeout, sleep))

    def _watch(self, session: WatchSession, read_timeout: float, sleep: Callable[[float], object]) -> Iterator[Any]:
        url = self._origin + "/v1/watch"
        headers = {**self._headers, "Accept": "text/event-stream"}
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        while True:
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
                error = _transport_error(self.base_url, read_timeout, exc)
                if isinstance(error, TenureConfigError):
                    raise error from None
            sleep(session.connection_lost(error))

    # ------------------------------------------------------------------ system

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "restoring" | "failed", ...}``; a server still restoring is an answer, not an error."""
        response = self._send("GET", "/healthz")
        if response.is_error and response.status_code != 503:
            raise _api_error(response)
        return self._decode(response)

    # ------------------------------------------------------------------ agents

    def register_agent(
        self,
        host: str,
        kinds: Iterable[str],
        version: str,
        capabilities: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register (or re-register) the agent of ``host``; the answer has ``created``: False on re-registration."""
        body = {"host": host, "kinds": list(kinds), "version": version, "capabilities": capabilities}
        return _created(self._send("POST", "/v1/agents", json=body))

    def heartbeat(self, host: str) -> dict[str, Any]:
        """report_state: the agent as it stands; ``agent_not_registered`` means register again."""
        return self._call("POST", f"/v1/agents/{segment(host)}/heartbeat", json={})

    def agents(self) -> dict[str, Any]:
        """``{"agents": [...], "revision": N}``; an agent token sees only its own record."""
        return self._call("GET", "/v1/agents")

    def agent(self, host: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/agents/{segment(host)}")

    def remove_agent(self, host: str) -> dict[str, Any]:
        """Forget the agent of ``host`` (admin); it may register again."""
        return self._call("DELETE", f"/v1/agents/{segment(host)}")

    # --------------------------------------------------------------- resources
    # The host agent's local resource manager (``tenure agent``; admin tokens of the agent only).

    def add_resource(
        self,
        name: str,
        driver: str,
        params: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Register an instance of ``driver`` (``ocf:heartbeat:Dummy``, ``lsb:ssh``, ...); nothing is run."""
        body = {"name": name, "driver": driver, "params": dict(params or {}), "labels": dict(labels or {})}
        return self._call("POST", "/v1/resources", json=body)

    def resources(self) -> dict[str, Any]:
        """``{"items": [...]}``: every instance with its state, running, queued and recurring operations."""
        return self._call("GET", "/v1/resources")

    def resource(self, ref: str) -> dict[str, Any]:
        """One instance, by id or name."""
        return self._call("GET", f"/v1/resources/{segment(ref)}")

    def remove_resource(self, ref: str, force: bool = False) -> dict[str, Any]:
        """Forget an instance; refused (``resource_running``) while it runs, unless ``force``."""
        params = {"force": "true"} if force else None
        return self._call("DELETE", f"/v1/resources/{segment(ref)}", params=params)

    def submit(
        self,
        ref: str,
        action: str,
        interval: float = 0,
        timeout: float | None = None,
        report: str = "change",
        expect: int = 0,
    ) -> dict[str, Any]:
        """Queue ``action`` (``interval`` seconds > 0: recurring) and answer the operation at once (202).

        A recurring one that duplicates an existing one (same action and interval) answers that one with
        ``merged``: True. The result comes later: :meth:`operation` with ``wait``, the history, the watch.
        """
        body: dict[str, Any] = {"action": action, "interval": interval, "report": report, "expect": expect}
        if timeout is not None:
            body["timeout"] = timeout
        return self._call("POST", f"/v1/resources/{segment(ref)}/operations", json=body)

    def operations(self, ref: str) -> dict[str, Any]:
        """``{"items": [...]}``: running, queued, recurring and recently finished operations of ``ref``."""
        return self._call("GET", f"/v1/resources/{segment(ref)}/operations")

    def operation(self, ref: str, op_id: str, wait: float = 0) -> dict[str, Any]:
        """One operation; with ``wait`` (at most 60 s), the answer comes once it has a result or after
        ``wait`` seconds (a long poll: the read timeout is ``wait`` plus the client's timeout)."""
        path = f"/v1/resources/{segment(ref)}/operations/{segment(op_id)}"
        if not wait:
            return self._call("GET", path)
        return self._call("GET", path, params={"wait": wait}, read_timeout=wait + self.timeout)

    def cancel_operation(self, ref: str, op_id: str) -> dict[str, Any]:
        """Cancel a queued operation, or unschedule a recurring one (a running one cannot be cancelled)."""
        return self._call("DELETE", f"/v1/resources/{segment(ref)}/operations/{segment(op_id)}")

    def resource_history(self, ref: str, limit: int = 50) -> dict[str, Any]:
        """``{"items": [...]}``: the newest ``limit`` recorded operations of ``ref``, newest first."""
        return self._call("GET", f"/v1/resources/{segment(ref)}/history", params={"limit": limit})

    def drivers(self) -> dict[str, Any]:
        """``{"items": [{"driver", "class", ...}]}``: the drivers installed under the agent's roots."""
        return self._call("GET", "/v1/drivers")

    def driver_meta_data(self, spec: str) -> dict[str, Any]:
        """``{"driver": spec, "meta_data": {...} or None}``: what the driver declares (parameters, actions)."""
        return self._call("GET", f"/v1/drivers/{segment(spec)}/meta-data")
