"""The asyncio client: :class:`AsyncTenureClient`, the same contract as :class:`TenureClient` over
``httpx.AsyncClient``, for programs that live on an event loop (the host agent's sync loop, say).

It shares with the sync client everything but the waiting (:mod:`._base`):
every route (awaited here), where the server and token come from, how a
failure becomes an exception, how path segments are escaped, and the whole
watch logic (:class:`~tenure.client._watch.WatchSession`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Self

import httpx

from tenure.client._base import Call, ClientBase
from tenure.client._errors import TenureClientError, TenureConfigError, transport_error
from tenure.client._tls import ClientCert, verify_with
from tenure.client._watch import WATCH_READ_TIMEOUT, AsyncWatch, Backoff, WatchEvent, WatchSession


class AsyncTenureClient(ClientBase[Awaitable[dict[str, Any]]]):
    """Talks to one Tenure server with one token, asynchronously. ``async with``, or ``await aclose()``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        http: httpx.AsyncClient | None = None,
        ca_file: str | None = None,
        client_cert: ClientCert | None = None,
    ) -> None:
        """``transport`` replaces the network (e.g. ``httpx.MockTransport``); ``http`` replaces the whole
        ``httpx.AsyncClient`` and stays owned by the caller (it is not closed by :meth:`aclose`)."""
        super().__init__(base_url, token, timeout, http, transport)
        self.tls = verify_with(ca_file, client_cert)  # the context of https:// connections
        self.client_cert = client_cert
        if self._socket is not None and http is None and transport is None:
            transport = httpx.AsyncHTTPTransport(uds=self._socket)
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout, transport=transport,
                                                          verify=self.tls)

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
        return await self._send(Call(method, path, json=json, params=params))

    async def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """Any route: the answer's JSON, or :class:`TenureAPIError` for an error answer."""
        return await self._run(Call(method, path, json=json, params=params))

    async def _send(self, call: Call) -> httpx.Response:
        """The answer, from the current replica or, when that one cannot serve, the next (see :class:`Failover`)."""
        tries = self.failover.tries(call)
        while True:
            origin = self._origin
            try:
                response = await self._http.request(call.method, origin + call.path, **self._request(call))
            except (httpx.TransportError, httpx.InvalidURL) as exc:
                if (pause := tries.after(origin, error=exc)) is None:
                    raise self._unreachable(origin, call, exc) from None
            else:
                if (pause := tries.after(origin, response=response)) is None:
                    return response
            await asyncio.sleep(pause)

    async def _run(self, call: Call) -> Any:  # type: ignore[override]  # a coroutine: ClientBase[Awaitable]
        return self._saw(call.read(await self._send(call)))

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
        session = self._watch_session(kinds, ids, selectors, ops, since=since, initial=initial, bookmarks=bookmarks,
                                      max_retries=max_retries, backoff=backoff, rng=rng)
        return AsyncWatch(session, self._watch(session, read_timeout, sleep))

    async def _watch(
        self, session: WatchSession, read_timeout: float, sleep: Callable[[float], Awaitable[object]]
    ) -> AsyncIterator[WatchEvent]:
        while True:
            url, headers, timeout = self._watch_request(read_timeout)
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
                error = transport_error(self.base_url, read_timeout, exc)
                if isinstance(error, TenureConfigError):
                    raise error from None
            self.failover.next(self.failover.url)  # resume on the next replica, from the last revision
            await sleep(session.connection_lost(error))
