"""The asyncio client: :class:`AsyncTenureClient`, the same contract as :class:`TenureClient` over
``httpx.AsyncClient``, for programs that live on an event loop (the host agent's sync loop, say).

It shares with the sync client everything but the waiting: where the server and
token come from (:func:`~tenure.client._locate.locate`), how a failure becomes an
exception (``_api_error``, ``_transport_error``, ``_decode`` of :mod:`._client`),
how path segments are escaped, and the whole watch logic
(:class:`~tenure.client._watch.WatchSession`). It covers the routes an
event-driven program needs; the rest are one :meth:`request` away.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Self

import httpx

from tenure.client._client import (
    UNIX_ORIGIN,
    _api_error,
    _ClientBase,
    _created,
    _decode,
    _transport_error,
    segment,
    unix_socket,
)
from tenure.client._errors import TenureClientError, TenureConfigError
from tenure.client._watch import (
    WATCH_READ_TIMEOUT,
    AsyncWatch,
    Backoff,
    WatchEvent,
    WatchQuery,
    WatchSession,
)


class AsyncTenureClient(_ClientBase):
    """Talks to one Tenure server with one token, asynchronously. ``async with``, or ``await aclose()``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """``transport`` replaces the network (e.g. ``httpx.MockTransport``); ``http`` replaces the whole
        ``httpx.AsyncClient`` and stays owned by the caller (it is not closed by :meth:`aclose`)."""
        super().__init__(base_url, token, timeout, http, transport)
        socket_path = unix_socket(self.base_url)
        self._origin = self.base_url if socket_path is None else UNIX_ORIGIN  # where requests are addressed
        if socket_path is not None and http is None and transport is None:
            transport = httpx.AsyncHTTPTransport(uds=socket_path)
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout, transport=transport)

    # ---------------------------------------------------------------- plumbing

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def send(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        """One request, the answer as it is (errors included); failing to get one raises a client error."""
        try:
            return await self._http.request(
                method, self._origin + path, headers=self._headers, json=json, params=params
            )
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise _transport_error(self.base_url, self.timeout, exc) from None

    async def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """Any route: the answer's JSON, or :class:`TenureAPIError` for an error answer."""
        response = await self.send(method, path, json=json, params=params)
        if response.is_error:
            raise _api_error(response)
        return _decode(response)

    # ----------------------------------------------------------------- routes

    async def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "restoring" | "failed", ...}``; a server still restoring is an answer, not an error."""
        response = await self.send("GET", "/healthz")
        if response.is_error and response.status_code != 503:
            raise _api_error(response)
        return _decode(response)

    async def whoami(self) -> dict[str, Any]:
        return await self.request("GET", "/v1/whoami")

    async def pools(self) -> dict[str, Any]:
        """``{"pools": [...], "revision": N}``."""
        return await self.request("GET", "/v1/pools")

    async def claim(
        self,
        pool: str,
        key: str,
        value: int | None = None,
        project: str | None = None,
        host: str | None = None,
    ) -> dict[str, Any]:
        """Claim ``key`` (idempotent); the answer has ``created``: False when the key was already held."""
        body = {"key": key, "value": value, "project": project, "host": host}
        return _created(await self.send("POST", f"/v1/pools/{segment(pool)}/claims", json=body))

    async def release(self, pool: str, key: str) -> dict[str, Any]:
        return await self.request("DELETE", f"/v1/pools/{segment(pool)}/claims/{segment(key)}")

    async def register_agent(
        self, host: str, kinds: Iterable[str], version: str, capabilities: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Register (or re-register) the agent of ``host``; ``created``: False for a re-registration."""
        body = {"host": host, "kinds": list(kinds), "version": version, "capabilities": capabilities}
        return _created(await self.send("POST", "/v1/agents", json=body))

    async def heartbeat(self, host: str) -> dict[str, Any]:
        """The agent's record; ``agent_not_registered`` (404) means: register again."""
        return await self.request("POST", f"/v1/agents/{segment(host)}/heartbeat", json={})

    async def agents(self) -> dict[str, Any]:
        """``{"agents": [...], "revision": N}``."""
        return await self.request("GET", "/v1/agents")

    async def instances(self, host: str | None = None, after: str | None = None,
                        limit: int | None = None) -> dict[str, Any]:
        """One page: ``{"instances": [...], "next": ID or None, "revision": N}``."""
        params = {k: v for k, v in (("host", host), ("after", after), ("limit", limit)) if v is not None}
        return await self.request("GET", "/v1/instances", params=params or None)

    async def report_instance(self, id: str, generation: int, state: str, *,  # noqa: A002
                              reason: str | None = None, outputs: dict[str, str] | None = None,
                              result: dict[str, Any] | None = None) -> dict[str, Any]:
        """A host agent's outcome for one generation: ``{"instance": {...}, "stale": bool}``."""
        body = {k: v for k, v in (("generation", generation), ("state", state), ("reason", reason),
                                  ("outputs", outputs), ("result", result)) if v is not None}
        return await self.request("POST", f"/v1/instances/{segment(id)}/report", json=body)

    # ------------------------------------------------------------------ watch

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
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> AsyncWatch:
        """``async for event in client.watch(...)``: the same as :meth:`TenureClient.watch`, awaiting instead of
        blocking (``sleep`` is awaited between reconnection attempts)."""
        query = WatchQuery.of(kinds, ids, selectors, ops, bookmarks)
        session = WatchSession(query, url=self.base_url, since=since, initial=initial, backoff=backoff, rng=rng,
                               max_retries=max_retries)
        return AsyncWatch(session, self._watch(session, read_timeout, sleep))

    async def _watch(
        self, session: WatchSession, read_timeout: float, sleep: Callable[[float], Awaitable[object]]
    ) -> AsyncIterator[WatchEvent]:
        url = self._origin + "/v1/watch"
        headers = {**self._headers, "Accept": "text/event-stream"}
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        while True:
            error: TenureClientError | None = None
            try:
                if session.needs_start and not session.on_start(await self._http.get(
                        self._origin + "/healthz", headers=self._headers, timeout=self.timeout)):
                    await sleep(session.connection_lost())
                    continue
                async with self._http.stream("GET", url, params=session.params(), headers=headers,
                                             timeout=timeout) as r:
                    if r.is_error:
                        await r.aread()
                    events = session.on_response(r)
                    if events is not None:
                        for event in events:
                            yield event
                        async for chunk in r.aiter_bytes():
                            for event in session.feed(chunk):
                                yield event
            except (httpx.TransportError, httpx.InvalidURL) as exc:
                error = _transport_error(self.base_url, read_timeout, exc)
                if isinstance(error, TenureConfigError):
                    raise error from None
            await sleep(session.connection_lost(error))
