"""The HTTP layer under the app (api/server.py): what it answers before any route sees a request.

Raw sockets, not an HTTP client: these requests are malformed, oversized or never finished on purpose.
Every error is still ``{"error": {"code", "message"}}`` as JSON (DESIGN.md invariant 8).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, start_api


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Api]:
    """A real server (uvicorn on loopback, SQLite): the HTTP layer does not depend on the store's backend."""
    yield from start_api(f"sqlite:///{tmp_path / 'tenure.db'}", tmp_path / "data")


def port_of(api: Api) -> int:
    return int(str(api.client.base_url).rstrip("/").rsplit(":", 1)[1])


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket) -> Answer:
    """One response from the socket: status line, headers, then Content-Length bytes of body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response head: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        rest += chunk
    return Answer(int(status_line.split()[1]), headers, rest[:length])


def exchange(port: int, data: bytes, *, timeout: float = 10) -> Answer:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


def assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == code and error["message"], error


# -- errors of the HTTP layer itself (issue 8) ------------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Bad: a\x01b\r\n\r\n",      # a control character in a header value
    b"GET /healthz HTTP/1.1\r\nHost: t\r\nX\x01Bad: ab\r\n\r\n",      # ... in a header name
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n",                   # a path that is not ASCII
    b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",  # a Content-Length that is no number
    b"NOT HTTP AT ALL\r\n\r\n",
], ids=["control-char-value", "control-char-name", "non-ascii-path", "bad-content-length", "garbage"])
def test_a_malformed_request_gets_a_json_400(served: Api, request_bytes: bytes) -> None:
    answer = exchange(port_of(served), request_bytes)
    assert_error(answer, 400, "invalid_request")
    assert answer.headers["connection"] == "close"


def test_an_over_long_url_gets_a_json_414(served: Api) -> None:
    answer = exchange(port_of(served), b"GET /v1/pools/" + b"a" * 64 * 1024 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert_error(answer, 414, "uri_too_long")


def test_too_large_headers_get_a_json_431(served: Api) -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1024) for i in range(100))  # 100 KiB in all
    answer = exchange(port_of(served), b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
    assert_error(answer, 431, "headers_too_large")


def test_a_header_that_never_ends_gets_a_json_431(served: Api) -> None:
    """The server must not buffer a header without end: it answers once the head is over the limit."""
    answer = exchange(port_of(served), b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Long: " + b"v" * 200 * 1024)
    assert_error(answer, 431, "headers_too_large")


def test_the_connection_still_serves_requests_within_the_limits(served: Api) -> None:
    """Two requests on one connection, with a long (but allowed) URL and headers: both answered normally."""
    with socket.create_connection(("127.0.0.1", port_of(served)), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz?" + b"q" * 8000 + b" HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 16000
                         + b"\r\n\r\n")
            answer = read_answer(sock)
            assert answer.status == 200 and answer.json()["status"] == "ok"
