"""Helpers of the catch-up tests: a server whose uvicorn object the test can see, and a raw, slow HTTP client.

``serve`` is ``tests.conftest.start_api`` with the uvicorn server and its thread in reach, so a test can
stop the server and check that it really stopped.
``SlowWatch`` opens a watch on a socket with a tiny receive buffer and does not read past the headers
until told to: the server then blocks writing to it, as with a client that stalled.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import h11
import uvicorn

from tests.conftest import Api, start_api
from tests.watch.stream import END, Frame, parse


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait until ``cond()`` holds (a condition, not a duration); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@dataclass
class Served:
    api: Api

    @property
    def server(self) -> uvicorn.Server:
        assert self.api.server is not None
        return self.api.server

    @property
    def thread(self) -> threading.Thread:
        assert self.api.thread is not None
        return self.api.thread

    @property
    def port(self) -> int:
        return int(str(self.api.client.base_url).rstrip("/").rsplit(":", 1)[1])

    def paused_writers(self) -> int:
        """Connections on which the server is blocked writing (its transport's buffer is full)."""
        return sum(1 for c in list(self.server.server_state.connections) if getattr(c, "flow", None)
                   and c.flow.write_paused)


@contextlib.contextmanager
def serve(db_url: str, data_dir: Path, **config: Any) -> Iterator[Served]:
    """:func:`tests.conftest.start_api`, with the uvicorn server and its thread in reach."""
    servers = start_api(db_url, data_dir, **config)
    try:
        yield Served(next(servers))
    finally:
        servers.close()


class SlowWatch:
    """A watch on a raw socket that reads the status line and headers, then stops reading until ``drain``."""

    def __init__(self, port: int, token: str, params: dict[str, str] | list[tuple[str, str]]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.conn = h11.Connection(h11.CLIENT)
        target = "/v1/watch?" + urlencode(params)
        self.sock.sendall(self.conn.send(h11.Request(
            method="GET", target=target, headers=[("Host", "x"), ("Authorization", f"Bearer {token}")])))
        self.sock.sendall(self.conn.send(h11.EndOfMessage()))
        self.frames: queue.Queue[Any] = queue.Queue()
        self.sock.settimeout(30)
        event = self._next()
        assert isinstance(event, h11.Response), event
        self.status = event.status_code

    def _next(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:  # the connection ended mid-body
                return h11.ConnectionClosed()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            try:
                self.conn.receive_data(data)
            except h11.RemoteProtocolError:  # the server dropped the connection mid-body
                return h11.ConnectionClosed()

    def _lines(self) -> Iterator[str]:
        buf = b""
        while True:
            event = self._next()
            if isinstance(event, h11.Data):
                buf += bytes(event.data)
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode()
            else:  # EndOfMessage, ConnectionClosed
                return

    def drain(self) -> SlowWatch:
        """Start reading again (in a thread): frames go to ``frames``, then END."""
        threading.Thread(target=parse, args=(self._lines(), self.frames), daemon=True).start()
        return self

    def until(self, pred: Callable[[Frame], bool], timeout: float = 30.0) -> tuple[list[Frame], bool]:
        """Frames up to the first matching ``pred`` (True) or the end of the stream (False)."""
        out = []
        while True:
            item = self.frames.get(timeout=timeout)
            if item is END:
                return out, False
            out.append(item)
            if pred(item):
                return out, True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def fill_claims(api: Api, pool: str, n: int, *, key_len: int = 200, per_request: int = 4000,
                **claim: Any) -> int:
    """``n`` claims with long keys (large frames, so that a listing overflows every socket buffer)."""
    r = api.post("/v1/pools", json={"name": pool, "ranges": [[1, 10_000_000]]})
    assert r.status_code == 201, r.text
    rev = 0
    for start in range(0, n, per_request):
        body = {"claims": [{"key": f"{i:08}-" + "x" * (key_len - 9)}
                           for i in range(start, min(n, start + per_request))], **claim}
        r = api.post(f"/v1/pools/{pool}/claims:bulk", json=body)
        assert r.status_code == 200, r.text[:300]
        rev = r.json()["revision"]
    return rev
