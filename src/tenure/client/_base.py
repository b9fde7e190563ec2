"""What the sync and async clients share, written once: every route as a request, the watch's session.

As in httpx (``BaseClient`` under ``Client`` and ``AsyncClient``), the two
clients differ only in how they wait. :class:`ClientBase` holds the server, the
token's headers and the timeout, and defines each route once, as a
:class:`Call` (method, path, body, query, and how its answer is read) handed to
``_run``: :class:`~tenure.client.TenureClient` sends it and returns the JSON,
:class:`~tenure.client.AsyncTenureClient` returns a coroutine of the same. The
watch's request (URL, query, headers, read timeout) and its resume logic
(:class:`~tenure.client._watch.WatchSession`) are built here too; only the loop
that reads the stream is written per client.

Path segments are percent-encoded with nothing left safe: a key ``a/b`` must
reach the server as one segment ``a%2Fb``, and ``?``, ``#`` and ``%`` must not
start a query, a fragment or an escape. The keys ``.`` and ``..`` are dot
segments that URL normalisation would remove, so their dots are escaped too.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import quote

import httpx

from tenure.client._errors import UNIX_PREFIX, TenureConfigError, api_error, created, decode, transport_error
from tenure.client._locate import locate
from tenure.client._tls import ClientCert
from tenure.client._watch import Backoff, WatchQuery, WatchSession

#: The largest page the server hands out; :meth:`TenureClient.iter_claims` asks for it.
MAX_PAGE = 1000

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


R = TypeVar("R")

#: Seconds a client keeps trying the other replicas while none answers or none leads (an election).
FAILOVER_WINDOW = 30.0
#: The refusals that mean "nothing was done here, try again (elsewhere)".
UNAVAILABLE = frozenset({"no_leader", "not_leader", "not_ready", "store_closed", "store_timeout"})


class Failover:
    """Several URLs of one store's replicas: which one to use, and whether an attempt is worth repeating.

    A request goes to the current URL. It is repeated, on the next URL, after a short pause growing to a
    second, for at most ``window`` seconds, when nothing was done there: the connection failed before the
    request was sent, or the answer is a 503 such as ``no_leader`` (an election is under way). When the
    outcome is unknown (the connection died after the request was sent, or 503 ``outcome_unknown``) it is
    repeated only if the call is idempotent (:attr:`Call.idempotent`); otherwise the caller hears of it.
    With one URL nothing is repeated: the caller sees every failure as it happens.
    """

    def __init__(self, urls: Sequence[str], *, window: float) -> None:
        self.urls = tuple(urls)
        self.window = window
        self._at = 0

    @property
    def url(self) -> str:
        return self.urls[self._at % len(self.urls)]

    def next(self, failed: str) -> None:
        """``failed`` did not serve: move on from it (unless another thread moved already)."""
        if self.url == failed:
            self._at += 1

    def retry_error(self, exc: Exception, call: Call) -> bool:
        if len(self.urls) < 2:
            return False
        unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        return unsent or (call.idempotent and isinstance(exc, httpx.TransportError))

    def retry_answer(self, response: httpx.Response, call: Call) -> bool:
        if len(self.urls) < 2 or response.status_code not in (503, 504):
            return False
        code = api_error(response).code
        if code == "not_yet_applied":  # this replica lags: another may be further on
            return call.idempotent
        return code in UNAVAILABLE or (code == "outcome_unknown" and call.idempotent)

    @staticmethod
    def pause(attempt: int) -> float:
        return min(1.0, 0.05 * 2**attempt) * (0.5 + random.random() / 2)

    def tries(self, call: Call) -> Tries:
        return Tries(self, call, time.monotonic() + self.window)


@dataclass(slots=True)
class Tries:
    """One call's attempts: after each, how long to pause before the next URL, or None: this is the outcome."""

    failover: Failover
    call: Call
    deadline: float
    attempt: int = 0

    def after(self, origin: str, *, response: httpx.Response | None = None,
              error: Exception | None = None) -> float | None:
        f = self.failover
        again = f.retry_error(error, self.call) if error is not None else f.retry_answer(response, self.call)
        if not again or time.monotonic() > self.deadline:
            return None
        f.next(origin)
        self.attempt += 1
        return f.pause(self.attempt - 1)


@dataclass(frozen=True, slots=True)
class Call:
    """One request of a route, and how its answer is read.

    ``answer``: ``json`` (an error status raises), ``created`` (the JSON plus ``created``: 201 or 200),
    ``health`` (a 503 is an answer: the server is restoring or failed). ``content`` (with its
    ``content_type``) is a raw body sent instead of ``json``; ``read_timeout`` replaces the client's
    timeout for reading the answer (a long poll).
    """

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    content: bytes | None = None
    content_type: str | None = None
    read_timeout: float | None = None
    answer: Literal["json", "created", "health"] = "json"
    retry: bool = False  # a write that may be sent twice (claims by key, a reservation's request_id, ...)

    @property
    def idempotent(self) -> bool:
        """Whether sending it again, after an answer was lost, does no more than sending it once."""
        return self.retry or self.method in ("GET", "HEAD", "PUT")

    def read(self, response: httpx.Response) -> Any:
        """The answer to this call, as its route returns it."""
        if self.answer == "created":
            return created(response)
        if response.is_error and not (self.answer == "health" and response.status_code == 503):
            raise api_error(response)
        return decode(response)


class ClientBase(Generic[R]):
    """The routes of the /v1 API, each once; ``R`` is what ``_run`` returns (a dict, or an awaitable of one)."""

    tls: ssl.SSLContext  # the context of https:// connections (set by each client)
    client_cert: ClientCert | None = None  # the certificate it shows a server that asks for one

    def __init__(self, base_url: str | Sequence[str], token: str, timeout: float, http: Any, transport: Any) -> None:
        if http is not None and transport is not None:
            raise ValueError("pass either transport or http, not both")
        parts = base_url.split(",") if isinstance(base_url, str) else list(base_url)
        self.urls = tuple(u.strip().rstrip("/") for u in parts if u.strip())
        if not self.urls:
            raise TenureConfigError("no server URL given")
        if len(self.urls) > 1 and any(u.startswith(UNIX_PREFIX) for u in self.urls):
            raise TenureConfigError("several server URLs (replicas) must all be http:// or https:// URLs")
        self.base_url = ",".join(self.urls)
        self.timeout = timeout
        self.failover = Failover(self.urls, window=max(timeout, FAILOVER_WINDOW))
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._owns_http = http is None
        self._socket = unix_socket(self.urls[0])
        self._seen = 0  # the newest revision seen in an answer

    @property
    def _origin(self) -> str:
        """Where requests are addressed now: the current URL (a Unix socket's requests go to a fixed origin)."""
        return UNIX_ORIGIN if self._socket is not None else self.failover.url

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

    def _run(self, call: Call) -> R:
        raise NotImplementedError

    def _unreachable(self, origin: str, call: Call, exc: Exception) -> Exception:
        """The error of a call that got no answer from ``origin`` (named when there are several URLs)."""
        return transport_error(origin if len(self.urls) > 1 else self.base_url, call.read_timeout or self.timeout, exc)

    def _saw(self, answer: Any) -> Any:
        """Remember the newest revision an answer names (reads on other replicas wait for it)."""
        if isinstance(answer, dict):
            revision = answer.get("revision")
            if isinstance(revision, int) and revision > self._seen:
                self._seen = revision
        return answer

    def _request(self, call: Call) -> dict[str, Any]:
        """The keyword arguments of ``httpx``'s ``request`` for ``call``.

        With several replicas, a read asks for at least the newest revision this client has seen in an
        answer (``min_revision``): it may go to another replica than the write did, and still sees it.
        """
        headers = self._headers if call.content_type is None else {**self._headers, "Content-Type": call.content_type}
        params = call.params
        if self._seen and call.method == "GET" and len(self.urls) > 1 and call.path.startswith("/v1/"):
            params = {**(params or {}), "min_revision": self._seen}
        kwargs: dict[str, Any] = {"headers": headers, "json": call.json, "params": params, "content": call.content}
        if call.read_timeout is not None:
            kwargs["timeout"] = httpx.Timeout(self.timeout, read=call.read_timeout)
        return kwargs

    # ------------------------------------------------------------------- watch

    def _watch_session(
        self,
        kinds: str | Iterable[str] | None,
        ids: str | Iterable[str] | None,
        selectors: str | Iterable[str] | None,
        ops: str | Iterable[str] | None,
        *,
        since: int | None,
        initial: bool,
        bookmarks: bool,
        max_retries: int | None,
        backoff: Backoff | None,
        rng: random.Random | None,
    ) -> WatchSession:
        query = WatchQuery.of(kinds, ids, selectors, ops, bookmarks)
        return WatchSession(query, url=self.base_url, since=since, initial=initial, backoff=backoff, rng=rng,
                            max_retries=max_retries)

    def _watch_request(self, read_timeout: float) -> tuple[str, dict[str, str], httpx.Timeout]:
        """The stream's URL, headers and timeout (the query comes from the session at each connection)."""
        return (self._origin + "/v1/watch", {**self._headers, "Accept": "text/event-stream"},
                httpx.Timeout(self.timeout, read=read_timeout))

    # ------------------------------------------------------------------- pools

    def create_pool(
        self,
        name: str,
        ranges: Iterable[Sequence[int]],
        reserved: Iterable[Sequence[int]] = (),
        strategy: str = "lowest",
        projects: Iterable[str] | None = None,
    ) -> R:
        body = {
            "name": name,
            "ranges": [list(r) for r in ranges],
            "reserved": [list(r) for r in reserved],
            "strategy": strategy,
            "projects": list(projects) if projects is not None else None,
        }
        return self._run(Call("POST", "/v1/pools", json=body))

    def pools(self) -> R:
        """``{"pools": [...], "revision": N}``."""
        return self._run(Call("GET", "/v1/pools"))

    def pool(self, name: str) -> R:
        return self._run(Call("GET", f"/v1/pools/{segment(name)}"))

    def delete_pool(self, name: str, force: bool = False) -> R:
        """Refused while the pool holds claims, unless ``force``."""
        params = {"force": "true"} if force else None
        return self._run(Call("DELETE", f"/v1/pools/{segment(name)}", params=params))

    # ------------------------------------------------------------------ claims

    def claim(
        self,
        pool: str,
        key: str,
        value: int | None = None,
        project: str | None = None,
        host: str | None = None,
    ) -> R:
        """Claim ``key`` (idempotent); the answer has ``created``: False when the key was already held."""
        body = {"key": key, "value": value, "project": project, "host": host}
        return self._run(Call("POST", f"/v1/pools/{segment(pool)}/claims", json=body, answer="created", retry=True))

    def claim_many(
        self,
        pool: str,
        items: Iterable[ClaimItem],
        project: str | None = None,
        host: str | None = None,
    ) -> R:
        """Claim keys (``"key"`` or ``(key, value)``) in one transaction: all or none."""
        claims = [{"key": i, "value": None} if isinstance(i, str) else {"key": i[0], "value": i[1]} for i in items]
        body = {"claims": claims, "project": project, "host": host}
        return self._run(Call("POST", f"/v1/pools/{segment(pool)}/claims:bulk", json=body, retry=True))

    def get_claim(self, pool: str, key: str) -> R:
        return self._run(Call("GET", f"/v1/pools/{segment(pool)}/claims/{segment(key)}"))

    def find_value(self, pool: str, value: int) -> R:
        """The claim that holds ``value``; ``claim_not_found`` if none does."""
        return self._run(Call("GET", f"/v1/pools/{segment(pool)}/values/{int(value)}"))

    def claims(self, pool: str, limit: int = 100, after: str | None = None) -> R:
        """One page in key order: ``{"claims": [...], "next": KEY or None, "revision": N}``."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return self._run(Call("GET", f"/v1/pools/{segment(pool)}/claims", params=params))

    def release(self, pool: str, key: str) -> R:
        return self._run(Call("DELETE", f"/v1/pools/{segment(pool)}/claims/{segment(key)}"))

    # ------------------------------------------------------------------- audit

    def audit_begin(self, pool: str) -> R:
        """Start a mark-and-sweep: owners re-claim their keys, then :meth:`audit_end` releases the rest."""
        return self._run(Call("POST", f"/v1/pools/{segment(pool)}/audit:begin"))

    def audit_end(self, pool: str) -> R:
        """The pool after the sweep, with ``released``: the claims nobody re-claimed."""
        return self._run(Call("POST", f"/v1/pools/{segment(pool)}/audit:end"))

    # ------------------------------------------------------------------ tokens

    def create_token(
        self,
        role: str,
        project: str | None = None,
        host: str | None = None,
        description: str | None = None,
        ttl: int | None = None,
    ) -> R:
        """The token's record with its secret under ``token``; the server never shows the secret again. ``ttl``:
        seconds it works for (None: until revoked)."""
        body: dict[str, Any] = {"role": role, "project": project, "host": host, "description": description}
        if ttl is not None:
            body["ttl"] = ttl
        return self._run(Call("POST", "/v1/tokens", json=body))

    def rotate_token(self, id: str, grace: int | None = None) -> R:  # noqa: A002 - mirrors the API's name
        """A new secret for the token (its record, the secret under ``token``); the old secret works ``grace``
        seconds more (the server's default: an hour)."""
        return self._run(Call("POST", f"/v1/tokens/{segment(id)}:rotate",
                              json={"grace": grace} if grace is not None else {}))

    def reload_client_cert(self) -> bool:
        """Load the client certificate again if its files changed (a renewal); whether they did. The connections
        made from then on show it."""
        return self.client_cert is not None and self.client_cert.load_into(self.tls)

    def set_token(self, token: str) -> None:
        """Send ``token`` from now on (a rotated secret): requests already sent keep theirs; the watch's next
        connection takes the new one."""
        self._headers = {**self._headers, "Authorization": f"Bearer {token}"}

    def tokens(self, revoked: bool = False) -> R:
        """``{"tokens": [...]}``; revoked tokens only when ``revoked``."""
        return self._run(Call("GET", "/v1/tokens", params={"revoked": "true"} if revoked else None))

    def revoke_token(self, id: str) -> R:  # noqa: A002 - mirrors the API's name
        return self._run(Call("DELETE", f"/v1/tokens/{segment(id)}"))

    def console_code(self) -> R:
        """A one-time sign-in code for the web console (60 s, once): ``{"code", "expires_at", "url"}``."""
        return self._run(Call("POST", "/v1/ui/codes"))

    def whoami(self) -> R:
        """The role, project and host of this client's token."""
        return self._run(Call("GET", "/v1/whoami"))

    # ---------------------------------------------------------------- topology

    def topology(self) -> R:
        """``{"nodes": [...], "links": [...], "revision": N, "updated_at": ...}``."""
        return self._run(Call("GET", "/v1/topology"))

    def put_topology(self, doc: dict[str, Any]) -> R:
        """Replace the whole topology (admin); the answer has ``recheck``: kept, rerouted, degraded, restored."""
        return self._run(Call("PUT", "/v1/topology", json=doc))

    def put_topology_yaml(self, text: str) -> R:
        """:meth:`put_topology` with the document as YAML text, parsed by the server."""
        return self._run(Call("PUT", "/v1/topology", content=text.encode("utf-8"), content_type="application/yaml"))

    def node(self, id: str) -> R:  # noqa: A002 - mirrors the API's name
        return self._run(Call("GET", f"/v1/topology/nodes/{segment(id)}"))

    def put_node(self, id: str, body: dict[str, Any]) -> R:  # noqa: A002
        """Add or replace one node (``{"kind": ..., "labels": ...}``); answers like :meth:`put_topology`."""
        return self._run(Call("PUT", f"/v1/topology/nodes/{segment(id)}", json=body))

    def delete_node(self, id: str) -> R:  # noqa: A002
        """Refused (``node_in_use``) while links still end at the node."""
        return self._run(Call("DELETE", f"/v1/topology/nodes/{segment(id)}"))

    def link(self, id: str) -> R:  # noqa: A002
        return self._run(Call("GET", f"/v1/topology/links/{segment(id)}"))

    def put_link(self, id: str, body: dict[str, Any]) -> R:  # noqa: A002
        """Add or replace one link (``{"a", "b", "capacity"}`` or ``capacity_ab``/``capacity_ba``)."""
        return self._run(Call("PUT", f"/v1/topology/links/{segment(id)}", json=body))

    def delete_link(self, id: str) -> R:  # noqa: A002
        return self._run(Call("DELETE", f"/v1/topology/links/{segment(id)}"))

    def usage(self, link: str, start: str | None = None, end: str | None = None) -> R:
        """Both directions of ``link`` as steps of booked bit/s, from ``start`` to ``end`` (query ``from``/``to``)."""
        params = {k: v for k, v in (("from", start), ("to", end)) if v is not None}
        return self._run(Call("GET", f"/v1/links/{segment(link)}/usage", params=params or None))

    # ------------------------------------------------------------ reservations

    def reserve(self, **fields: Any) -> R:
        """Make a reservation (``kind``, ``src``, ``dst``, ``rate``, ``end``, ...; None fields are left out).

        The answer has ``created``: False when a ``request_id`` retry returned the reservation it made.
        """
        body = {k: v for k, v in fields.items() if v is not None}
        return self._run(Call("POST", "/v1/reservations", json=body, answer="created", retry="request_id" in body))

    def reservations(
        self,
        state: str | None = None,
        project: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> R:
        """One page in admission order: ``{"reservations": [...], "next": ID or None, "revision": N}``."""
        params = {k: v for k, v in (("state", state), ("project", project), ("after", after), ("limit", limit))
                  if v is not None}
        return self._run(Call("GET", "/v1/reservations", params=params or None))

    def reservation(self, id: str) -> R:  # noqa: A002
        return self._run(Call("GET", f"/v1/reservations/{segment(id)}"))

    def reservation_wire(self, id: str) -> R:  # noqa: A002
        """Each leg's shaper and what its agent last observed on the wire (``GET /v1/reservations/{id}/wire``)."""
        return self._run(Call("GET", f"/v1/reservations/{segment(id)}/wire"))

    def instance_observed(self, id: str) -> R:  # noqa: A002
        """What the instance's agent last observed on the wire (``GET /v1/instances/{id}/observed``)."""
        return self._run(Call("GET", f"/v1/instances/{segment(id)}/observed"))

    def modify_reservation(self, id: str, **changes: Any) -> R:  # noqa: A002
        """Change ``start``, ``end``, ``rate``/``rate_out``, ``rate_in`` or ``labels``: re-admitted, all or nothing."""
        body = {k: v for k, v in changes.items() if v is not None}
        return self._run(Call("PATCH", f"/v1/reservations/{segment(id)}", json=body))

    def cancel_reservation(self, id: str) -> R:  # noqa: A002
        """Cancel: the capacity is free at once; cancelling again answers the cancelled reservation."""
        return self._run(Call("DELETE", f"/v1/reservations/{segment(id)}"))

    # ------------------------------------------------------------- instances

    def create_instance(self, name: str, type: str, host: str, *,  # noqa: A002
                        parameters: dict[str, Any] | None = None, labels: dict[str, str] | None = None,
                        depends_on: list[str] | None = None, project: str | None = None) -> R:
        """A desired-state instance; ``created``: False when the same one already existed."""
        body = {k: v for k, v in (("name", name), ("type", type), ("host", host), ("parameters", parameters),
                                  ("labels", labels), ("depends_on", depends_on), ("project", project))
                if v is not None}
        return self._run(Call("POST", "/v1/instances", json=body, answer="created"))

    def create_instances(self, instances: list[dict[str, Any]]) -> R:
        """Several instances that may depend on each other, all or nothing: ``{"instances": [...]}``."""
        return self._run(Call("POST", "/v1/instances/batch", json={"instances": instances}))

    def instances(self, host: str | None = None, state: str | None = None, type: str | None = None,  # noqa: A002
                  project: str | None = None, after: str | None = None, limit: int | None = None) -> R:
        """One page: ``{"instances": [...], "next": ID or None, "revision": N}``."""
        params = {k: v for k, v in (("host", host), ("state", state), ("type", type), ("project", project),
                                    ("after", after), ("limit", limit)) if v is not None}
        return self._run(Call("GET", "/v1/instances", params=params or None))

    def instance(self, ref: str) -> R:
        """By id, or by name within the caller's project."""
        return self._run(Call("GET", f"/v1/instances/{segment(ref)}"))

    def modify_instance(self, ref: str, **changes: Any) -> R:
        """Change ``parameters``, ``labels`` or ``depends_on``; the agent applies it as a modify (reload)."""
        return self._run(Call("PATCH", f"/v1/instances/{segment(ref)}",
                          json={k: v for k, v in changes.items() if v is not None}))

    def delete_instance(self, ref: str, *, force: bool = False) -> R:
        """Desired absent: ``deleting`` until the agent confirms (``deleted`` at once if it was never sent)."""
        return self._run(Call("DELETE", f"/v1/instances/{segment(ref)}", params={"force": "true"} if force else None))

    def report_instance(self, id: str, generation: int, state: str, *,  # noqa: A002
                        reason: str | None = None, outputs: dict[str, str] | None = None,
                        result: dict[str, Any] | None = None) -> R:
        """A host agent's outcome for one generation: ``{"instance": {...}, "stale": bool}``."""
        body = {k: v for k, v in (("generation", generation), ("state", state), ("reason", reason),
                                  ("outputs", outputs), ("result", result)) if v is not None}
        return self._run(Call("POST", f"/v1/instances/{segment(id)}/report", json=body))

    def types(self) -> R:
        return self._run(Call("GET", "/v1/types"))

    def paths(self, **query: Any) -> R:
        """Up to ``k`` feasible paths for ``src`` → ``dst`` at ``rate`` over ``start``-``end``; nothing is booked."""
        return self._run(Call("POST", "/v1/paths", json={k: v for k, v in query.items() if v is not None},
                              retry=True))

    # ------------------------------------------------------------------ limits

    def limits(self) -> R:
        """``{"limits": [...], "revision": N}``."""
        return self._run(Call("GET", "/v1/limits"))

    def limit(self, project: str) -> R:
        return self._run(Call("GET", f"/v1/limits/{segment(project)}"))

    def set_limit(self, project: str, max: int | str | None = None,  # noqa: A002 - the API's field
                  share: float | str | None = None) -> R:
        """Cap what ``project`` may hold per link direction: ``max`` bit/s, or a ``share`` of each capacity."""
        body = {k: v for k, v in (("max", max), ("share", share)) if v is not None}
        return self._run(Call("PUT", f"/v1/limits/{segment(project)}", json=body))

    def delete_limit(self, project: str) -> R:
        return self._run(Call("DELETE", f"/v1/limits/{segment(project)}"))

    # ------------------------------------------------------------------ system

    def health(self) -> R:
        """``{"status": "ok" | "restoring" | "failed", ...}``; a server still restoring is an answer, not an error."""
        return self._run(Call("GET", "/healthz", answer="health"))

    def replicas(self) -> R:
        """The replicas of the store (``GET /v1/replicas``): role, epoch, applied revision, last heartbeat."""
        return self._run(Call("GET", "/v1/replicas"))

    # ------------------------------------------------------------------ agents

    def register_agent(
        self,
        host: str,
        kinds: Iterable[str],
        version: str,
        capabilities: dict[str, Any] | None = None,
    ) -> R:
        """Register (or re-register) the agent of ``host``; the answer has ``created``: False on re-registration."""
        body = {"host": host, "kinds": list(kinds), "version": version, "capabilities": capabilities}
        return self._run(Call("POST", "/v1/agents", json=body, answer="created", retry=True))

    def heartbeat(self, host: str, observations: list[dict[str, Any]] | None = None) -> R:
        """report_state: the agent as it stands; ``agent_not_registered`` means register again. ``observations``:
        ``[{"instance", "at", "values"}]``, what monitors found on the wire since the last heartbeat."""
        body = {} if observations is None else {"observations": observations}
        return self._run(Call("POST", f"/v1/agents/{segment(host)}/heartbeat", json=body, retry=True))

    def agents(self) -> R:
        """``{"agents": [...], "revision": N}``; an agent token sees only its own record."""
        return self._run(Call("GET", "/v1/agents"))

    def agent(self, host: str) -> R:
        return self._run(Call("GET", f"/v1/agents/{segment(host)}"))

    def remove_agent(self, host: str) -> R:
        """Forget the agent of ``host`` (admin); it may register again."""
        return self._run(Call("DELETE", f"/v1/agents/{segment(host)}"))

    # --------------------------------------------------------------- resources
    # The host agent's local resource manager (``tenure agent``; admin tokens of the agent only).

    def add_resource(
        self,
        name: str,
        driver: str,
        params: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> R:
        """Register an instance of ``driver`` (``ocf:heartbeat:Dummy``, ``lsb:ssh``, ...); nothing is run."""
        body = {"name": name, "driver": driver, "params": dict(params or {}), "labels": dict(labels or {})}
        return self._run(Call("POST", "/v1/resources", json=body))

    def resources(self) -> R:
        """``{"items": [...]}``: every instance with its state, running, queued and recurring operations."""
        return self._run(Call("GET", "/v1/resources"))

    def resource(self, ref: str) -> R:
        """One instance, by id or name."""
        return self._run(Call("GET", f"/v1/resources/{segment(ref)}"))

    def remove_resource(self, ref: str, force: bool = False) -> R:
        """Forget an instance; refused (``resource_running``) while it runs, unless ``force``."""
        params = {"force": "true"} if force else None
        return self._run(Call("DELETE", f"/v1/resources/{segment(ref)}", params=params))

    def submit(
        self,
        ref: str,
        action: str,
        interval: float = 0,
        timeout: float | None = None,
        report: str = "change",
        expect: int = 0,
        wait: float = 0,
    ) -> R:
        """Queue ``action`` (``interval`` seconds > 0: recurring) and answer the operation at once (202).

        A recurring one that duplicates an existing one (same action and interval) answers that one with
        ``merged``: True. The result comes later: :meth:`operation` with ``wait``, the history, the watch; or,
        with ``wait`` here (at most 60 s), in this answer once the operation has it (a recurring one: its
        first), else the operation as it stands after ``wait`` seconds.
        """
        body: dict[str, Any] = {"action": action, "interval": interval, "report": report, "expect": expect}
        if timeout is not None:
            body["timeout"] = timeout
        path = f"/v1/resources/{segment(ref)}/operations"
        if not wait:
            return self._run(Call("POST", path, json=body))
        return self._run(Call("POST", path, json=body, params={"wait": wait}, read_timeout=wait + self.timeout))

    def operations(self, ref: str) -> R:
        """``{"items": [...]}``: running, queued, recurring and recently finished operations of ``ref``."""
        return self._run(Call("GET", f"/v1/resources/{segment(ref)}/operations"))

    def operation(self, ref: str, op_id: str, wait: float = 0) -> R:
        """One operation; with ``wait`` (at most 60 s), the answer comes once it has a result or after
        ``wait`` seconds (a long poll: the read timeout is ``wait`` plus the client's timeout)."""
        path = f"/v1/resources/{segment(ref)}/operations/{segment(op_id)}"
        if not wait:
            return self._run(Call("GET", path))
        return self._run(Call("GET", path, params={"wait": wait}, read_timeout=wait + self.timeout))

    def cancel_operation(self, ref: str, op_id: str) -> R:
        """Cancel a queued operation, or unschedule a recurring one (a running one cannot be cancelled)."""
        return self._run(Call("DELETE", f"/v1/resources/{segment(ref)}/operations/{segment(op_id)}"))

    def resource_history(self, ref: str, limit: int = 50) -> R:
        """``{"items": [...]}``: the newest ``limit`` recorded operations of ``ref``, newest first."""
        return self._run(Call("GET", f"/v1/resources/{segment(ref)}/history", params={"limit": limit}))

    def drivers(self) -> R:
        """``{"items": [{"driver", "class", ...}]}``: the drivers installed under the agent's roots."""
        return self._run(Call("GET", "/v1/drivers"))

    def driver_meta_data(self, spec: str) -> R:
        """``{"driver": spec, "meta_data": {...} or None}``: what the driver declares (parameters, actions)."""
        return self._run(Call("GET", f"/v1/drivers/{segment(spec)}/meta-data"))
