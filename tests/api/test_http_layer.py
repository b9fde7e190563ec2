"""The HTTP layer under the app (api/server.py): what it answers before any route sees a request.

Raw sockets, not an HTTP client: these requests are malformed, oversized or never finished on purpose.
Every error is still ``{"error": {"code", "message"}}`` as JSON (DESIGN.md invariant 8).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenure.api.server import HttpLimits
from tests.conftest import Api, start_api


@contextlib.contextmanager
def serving(tmp_path: Path, limits: HttpLimits | None = None) -> Iterator[Api]:
    """A real server (uvicorn on loopback, SQLite): the HTTP layer does not depend on the store's backend."""
    servers = start_api(f"sqlite:///{tmp_path / 'tenure.db'}", tmp_path / "data", limits=limits)
    try:
        yield next(servers)
    finally:
        servers.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Api]:
    with serving(tmp_path) as api:
        yield api


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
    """Requests on one connection with a long (but allowed) URL and headers: answered by the app, not refused."""
    with socket.create_connection(("127.0.0.1", port_of(served)), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 16000 + b"\r\n\r\n")
            answer = read_answer(sock)
            assert answer.status == 200 and answer.json()["status"] == "ok"
            sock.sendall(b"GET /v1/pools/" + b"q" * 8000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")  # a name too long
            answer = read_answer(sock)
            assert answer.status in (400, 401, 404) and "error" in answer.json()


# -- a body over the limit (issue 1) ------------------------------------------------------------------------------

TWO_MIB = b"x" * (2 * 1024 * 1024)


def _post(api: Api, path: str, body: bytes | Iterator[bytes], headers: dict[str, str]) -> tuple[int, Any]:
    """A POST with urllib, which sends its whole body before it reads the answer (as most clients do)."""
    request = urllib.request.Request(f"{api.client.base_url}{path}", data=body, method="POST",
                                     headers={**api.headers(), "Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_bodies_over_the_limit_get_413_not_a_reset(served: Api) -> None:
    """20 POSTs of 2 MiB: every one answered 413 with the JSON error (a reset used to end about half)."""
    assert served.post("/v1/pools", json={"name": "p", "ranges": [[1, 100]]}).status_code == 201
    for _ in range(20):
        status, body = _post(served, "/v1/pools/p/claims", TWO_MIB, {})
        assert status == 413 and body["error"]["code"] == "too_large", body


def test_a_chunked_body_over_the_limit_gets_413(served: Api) -> None:
    """Without a Content-Length the limit is found while the body streams: the rest is still read, not reset."""
    assert served.post("/v1/pools", json={"name": "p", "ranges": [[1, 100]]}).status_code == 201
    for _ in range(20):
        chunks = iter([TWO_MIB[i:i + 65536] for i in range(0, len(TWO_MIB), 65536)])
        status, body = _post(served, "/v1/pools/p/claims", chunks, {"Transfer-Encoding": "chunked"})
        assert status == 413 and body["error"]["code"] == "too_large", body


def test_a_malformed_request_with_a_large_body_gets_its_400(served: Api) -> None:
    """Refused on its head while its body is still coming: the client that sends it all first reads the 400."""
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port_of(served)), timeout=10) as sock:
            sock.sendall(b"POST /v1/pools/p/claims HTTP/1.1\r\nHost: t\r\nX-Bad: a\x01b\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(TWO_MIB))
            sock.sendall(TWO_MIB)
            assert_error(read_answer(sock), 400, "invalid_request")


# A body refused on its Content-Length is answered with "connection: close": the server drains it until the client
# closes. A chunked one is refused while it streams and the connection stays open: the parser skips the rest.
FRAMINGS = {"content-length": b"Content-Length: 104857600\r\n\r\n", "chunked": b"Transfer-Encoding: chunked\r\n\r\n"}


def _refused_upload(port: int, framing: str) -> socket.socket:
    """A claim POST whose body (100 MiB, or chunks without end) goes over the limit: the 413 read, more to send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/pools/p/claims HTTP/1.1\r\nHost: t\r\n" + FRAMINGS[framing])
    if framing == "chunked":
        sock.sendall(b"%x\r\n%s\r\n" % (len(TWO_MIB), TWO_MIB))
    assert_error(read_answer(sock), 413, "too_large")
    return sock


def _chunk(framing: str, data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if framing == "chunked" else data


@pytest.mark.parametrize("framing", FRAMINGS)
def test_draining_a_refused_body_is_bounded_in_bytes(tmp_path: Path, framing: str) -> None:
    """Past ``linger_bytes`` of a refused body the server stops reading and closes: the sender is cut off."""
    with serving(tmp_path, HttpLimits(linger_bytes=256 * 1024)) as api, _refused_upload(port_of(api), framing) as sock:
        with pytest.raises(OSError):  # reset or broken pipe well before 100 MiB
            for _ in range(1600):
                sock.sendall(_chunk(framing, b"x" * 65536))


@pytest.mark.parametrize("framing", FRAMINGS)
def test_draining_a_refused_body_is_bounded_in_time(tmp_path: Path, framing: str) -> None:
    """A client that stops sending the refused body is closed after ``linger_timeout``."""
    with serving(tmp_path, HttpLimits(linger_timeout=0.5)) as api, _refused_upload(port_of(api), framing) as sock:
        sock.sendall(_chunk(framing, b"x" * 1000))
        assert sock.recv(1) == b""  # the server closed: end of stream, within the socket's timeout


# -- connections that never finish their headers (issue 2) --------------------------------------------------------

PARTIAL = b"POST /v1/pools/p/claims HTT"  # a request line that never ends


def open_idle(port: int, n: int, data: bytes = PARTIAL) -> list[socket.socket]:
    socks = []
    try:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            if data:
                sock.sendall(data)
            socks.append(sock)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def metric(api: Api, name: str) -> float:
    return fresh_metric(api.client, name, api.headers())


def fresh_metric(client: httpx.Client, name: str, headers: dict[str, str] | None = None) -> float:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    values = [float(line.split()[-1]) for line in r.text.splitlines() if line.split(" ")[0] == name]
    assert len(values) == 1, f"{name} not in /metrics"
    return values[0]


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_many_idle_connections_do_not_lock_others_out(tmp_path: Path) -> None:
    with serving(tmp_path, HttpLimits(header_timeout=60)) as api:
        assert api.post("/v1/pools", json={"name": "p", "ranges": [[1, 100]]}).status_code == 201
        idle = open_idle(port_of(api), 300)
        try:
            # On a new connection, accepted after the idle ones (the kernel's accept queue is in order).
            with httpx.Client(base_url=api.client.base_url, headers=api.headers(), timeout=30) as fresh:
                assert fresh.get("/healthz").json()["status"] == "ok"
                assert fresh.post("/v1/pools/p/claims", json={"key": "k"}).status_code == 201
                assert fresh_metric(fresh, "tenure_http_connections") >= 301
        finally:
            close_all(idle)


def test_connections_that_do_not_finish_their_headers_are_closed(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tenure.http")
    with serving(tmp_path, HttpLimits(header_timeout=0.5)) as api:
        port = port_of(api)
        partial = open_idle(port, 300)
        silent = open_idle(port, 1, b"")  # connects, sends nothing
        second = open_idle(port, 1, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")  # one request, then half of one
        try:
            assert read_answer(second[0]).status == 200
            second[0].sendall(b"GET /healthz HTTP/1.1\r\nHost")
            for sock in partial + second:  # each gets a 408, then the end of the stream
                head, _, body = read_to_end(sock).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408 "), head
                assert json.loads(body)["error"]["code"] == "request_timeout"
            assert read_to_end(silent[0]) == b""  # nothing was asked: closed without an answer
        finally:
            close_all(partial + silent + second)
        assert metric(api, "tenure_http_header_timeouts_total") >= 302
    assert any(r.name == "tenure.http" and "headers" in r.getMessage() for r in caplog.records)


def test_a_body_that_stops_coming_is_closed_and_does_not_hold_the_limit(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Complete headers, then a body that stalls (with or without a token): closed with a 408 after the body
    timeout, so such connections cannot hold the connection limit and lock out /healthz."""
    caplog.set_level(logging.INFO, logger="tenure.http")
    with serving(tmp_path, HttpLimits(max_connections=20, body_timeout=0.5, header_timeout=60)) as api:
        api.client.close()  # no keep-alive connection of the test's client in the count
        stalled = [b"POST /v1/pools HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 100\r\n\r\n{",
                   b"POST /v1/pools HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                   b"Authorization: Bearer " + api.admin_token.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"1\r\n{\r\n"]
        socks = [s for data in stalled for s in open_idle(port_of(api), 10, data)]
        try:
            for sock in socks:  # each: a 408, then the end of the stream
                head, _, body = read_to_end(sock).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 408 "), head
                assert json.loads(body)["error"]["code"] == "request_timeout"
        finally:
            close_all(socks)
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=api.client.base_url, headers=api.headers(), timeout=30) as client:
            while True:  # the server sees the closed ones go soon after, not at once
                try:
                    assert client.get("/healthz").status_code == 200
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not accept connections again"
            assert fresh_metric(client, "tenure_http_body_timeouts_total") >= 20
    assert any(r.name == "tenure.http" and "body" in r.getMessage() for r in caplog.records)


def test_at_the_connection_limit_new_connections_are_refused_and_logged(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tenure.http")
    with serving(tmp_path, HttpLimits(max_connections=20, header_timeout=60)) as api:
        api.client.close()  # no keep-alive connection of the test's client in the count
        idle = open_idle(port_of(api), 20)
        try:
            over = open_idle(port_of(api), 1, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_to_end(over[0]) == b""  # closed at once, not answered
            close_all(over)
        finally:
            close_all(idle)
        # The server sees the idle ones close soon after, not at once: until then a new connection may be refused.
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=api.client.base_url, headers=api.headers(), timeout=30) as client:
            while True:
                try:
                    refused = fresh_metric(client, "tenure_http_refused_connections_total")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not accept connections again"
        assert refused >= 1
    assert any(r.name == "tenure.http" and r.levelno == logging.WARNING and "limit" in r.getMessage()
               for r in caplog.records)


def test_tenure_serve_raises_its_descriptor_limit_and_closes_idle_connections(tmp_path: Path) -> None:
    """A real ``tenure serve`` started with a soft limit of 256 descriptors: it raises the limit to the hard one,
    so 300 idle connections leave room for everyone else; they are closed after ``--header-timeout``."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert 1024 <= hard != resource.RLIM_INFINITY, f"the hard limit ({hard}) leaves no room for this test"
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # prlimit (util-linux) sets the limit, then execs tenure: the same process
            ["prlimit", f"--nofile=256:{hard}", sys.executable, "-m", "tenure", "serve", "--listen", "127.0.0.1:0",
             "--data-dir", str(data), "--header-timeout", "5"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("TENURE_")})
    try:
        url, token = _wait_ready(proc, data, log)
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line
        assert "descriptor limit" in log.read_text()
        port = int(url.rsplit(":", 1)[1])
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=20) as client:
            assert client.post("/v1/pools", json={"name": "p", "ranges": [[1, 100]]}).status_code == 201
            idle = open_idle(port, 300)
            try:
                with httpx.Client(base_url=url, timeout=20) as fresh:  # a new connection, past the old soft limit
                    assert fresh.get("/healthz").json()["status"] == "ok"
                assert client.post("/v1/pools/p/claims", json={"key": "k"}).status_code == 201
                assert read_to_end(idle[0]).startswith(b"HTTP/1.1 408 ")  # closed after 5 s
            finally:
                close_all(idle)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert "Traceback" not in log.read_text()


def _wait_ready(proc: subprocess.Popen[bytes], data: Path, log: Path) -> tuple[str, str]:
    """server.json and admin.token written, and /healthz ok (polling: a process starting)."""
    ticker = threading.Event()
    for _ in range(600):
        assert proc.poll() is None, f"tenure serve exited with {proc.returncode}:\n{log.read_text()}"
        try:
            url = json.loads((data / "server.json").read_text())["url"]
            token = (data / "admin.token").read_text().strip()
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return url, token
        except (OSError, ValueError, KeyError, httpx.TransportError):
            pass
        ticker.wait(0.05)
    raise AssertionError(f"tenure serve was not ready within 30 s:\n{log.read_text()}")
