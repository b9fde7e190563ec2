"""A client of several replicas (``TENURE_URL=http://a,http://b``), without servers (``httpx.MockTransport``).

What is repeated on the next replica and what is not: nothing was done there (a refused connection, 503
``no_leader``) is always repeated; an unknown outcome (the connection died after the request was sent) only
for idempotent calls; with one URL nothing is repeated. Reads carry the newest revision seen (``min_revision``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tenure.client import TenureAPIError, TenureClient, TenureConnectionError

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, urls: str = "http://a:7470,http://b:7470") -> TenureClient:
    c = TenureClient(urls, "t0k", transport=httpx.MockTransport(handler))
    c.failover.pause = lambda attempt: 0.0  # type: ignore[method-assign]  # no waiting between tries
    return c


def error(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code}})


CLAIM = {"pool": "vlan", "key": "k", "value": 7, "project": None, "host": None, "revision": 12}


def test_an_election_on_one_replica_sends_the_write_to_the_next() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return error(503, "no_leader") if request.url.host == "a" else httpx.Response(201, json=CLAIM)

    with client(handler) as c:
        assert c.claim("vlan", "k")["value"] == 7
        assert c.claim("vlan", "k2")["value"] == 7  # and it stays with the one that answered
    assert hosts == ["a", "b", "b"]


def test_a_lost_answer_is_repeated_for_a_claim_but_not_for_a_token() -> None:
    sent: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.host, request.url.path))
        if request.url.host == "a":
            raise httpx.ReadError("connection reset after the request was sent")
        if request.url.path == "/v1/tokens":
            return httpx.Response(201, json={"id": "t", "token": "s"})
        return httpx.Response(201, json=CLAIM)

    with client(handler) as c:
        assert c.claim("vlan", "k")["created"]  # by key: repeating it does no more than once
        c.failover._at = 0  # back to a for the next call
        with pytest.raises(TenureConnectionError):
            c.create_token(role="admin")  # a second token would be another token: the caller must look
    assert sent == [("a", "/v1/pools/vlan/claims"), ("b", "/v1/pools/vlan/claims"), ("a", "/v1/tokens")]


def test_a_refused_connection_is_repeated_for_any_call() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            raise httpx.ConnectError("refused")  # nothing was sent: nothing was done
        return httpx.Response(201, json={"id": "t", "token": "s"})

    with client(handler) as c:
        assert c.create_token(role="admin")["id"] == "t"


def test_reads_carry_the_newest_revision_seen_and_move_on_from_a_lagging_replica() -> None:
    reads: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(201, json=CLAIM)
        reads.append((request.url.host, request.url.params.get("min_revision")))
        if request.url.host == "b":
            return error(504, "not_yet_applied")
        return httpx.Response(200, json=CLAIM)

    with client(handler, "http://b:7470,http://a:7470") as c:
        c.claim("vlan", "k")  # answered with revision 12
        assert c.get_claim("vlan", "k")["value"] == 7
    assert reads == [("b", "12"), ("a", "12")]


def test_with_one_url_every_failure_is_the_callers() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.params.get("min_revision"))
        return error(503, "no_leader")

    with client(handler, "http://a:7470") as c, pytest.raises(TenureAPIError) as refused:
        c.claim("vlan", "k")
    assert refused.value.code == "no_leader" and calls == [None]


def test_several_urls_must_all_be_http() -> None:
    with pytest.raises(Exception, match="http"):
        TenureClient("http://a:7470,unix:/run/t.sock", "t0k")
