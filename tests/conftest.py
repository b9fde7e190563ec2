"""Shared fixtures: every store-touching test runs on SQLite and on PostgreSQL.

``db_url`` is parametrized over both backends. PostgreSQL is a throwaway server
started once per session from the machine's binaries (tests/support/postgres.py);
each test gets a fresh database in it. Without the binaries the PostgreSQL half
is skipped, unless ``TENURE_REQUIRE_POSTGRES=1`` (set by .ci/run), which turns
that skip into a failure.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tenure.api.app import ServerConfig, create_app
from tenure.api.server import HttpLimits, Server, server_config
from tenure.services.embedded import Allocator
from tests.support.postgres import PostgresServer, PostgresUnavailable

BACKENDS = ["sqlite", "postgresql"]
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        if os.environ.get("TENURE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (TENURE_REQUIRE_POSTGRES=1) but unavailable: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


def make_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / f'tenure-{next(_db_counter)}.db'}"
    pg: PostgresServer = request.getfixturevalue("pg_server")
    return pg.create_database(f"tenure_{os.getpid()}_{next(_db_counter)}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the parametrized backend."""
    return make_db_url(backend, tmp_path, request)


@pytest.fixture
def new_db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """A factory of fresh databases on the parametrized backend (for tests that need several)."""
    return lambda: make_db_url(backend, tmp_path, request)


@pytest.fixture
def alloc(db_url: str) -> Iterator[Allocator]:
    """The embedded allocator over a fresh store on the parametrized backend."""
    a = Allocator.open(db_url)
    try:
        yield a
    finally:
        a.close()


@dataclass
class Api:
    """An HTTP client bound to a real uvicorn server on loopback, with the bootstrap admin token.

    A real server and not Starlette's TestClient: the TestClient decodes the
    path twice, so keys containing ``%`` would not round-trip as they do on the wire.
    """

    client: httpx.Client
    admin_token: str
    data_dir: Path
    app: FastAPI
    server: Server | None = None  # the uvicorn server and its thread, for tests that stop it themselves
    thread: threading.Thread | None = None

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    def request(
        self, method: str, path: str, *, token: str | None = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        return self.client.request(method, path, headers={**self.headers(token), **(headers or {})}, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def token(self, role: str, *, project: str | None = None, host: str | None = None) -> str:
        r = self.post("/v1/tokens", json={"role": role, "project": project, "host": host})
        assert r.status_code == 201, r.text
        return r.json()["token"]


def start_api(db_url: str, data_dir: Path, *, wait_ready: bool = True, limits: HttpLimits | None = None,
              tls: Any = None, verify: Any = True, **config: Any) -> Iterator[Api]:
    """Serve the app with uvicorn in a thread on a free loopback port; stop it afterwards. ``tls``: an
    ``ssl.SSLContext`` to listen with (https://), ``verify``: what the test's client trusts then."""
    app = create_app(ServerConfig(db_url=db_url, data_dir=data_dir, **config))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    started = threading.Event()

    class _Server(Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            started.set()

    server = _Server(server_config(app, limits=limits, timeout_graceful_shutdown=None))
    server.tls = tls
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert started.wait(30), "uvicorn did not start"
        state = app.state.tenure
        if wait_ready:
            assert state.ready.wait(30), f"server did not become ready: {state.error!r}"
        token_file = data_dir / "admin.token"
        token = token_file.read_text().strip() if token_file.exists() else ""
        scheme = "https" if tls is not None else "http"
        with httpx.Client(base_url=f"{scheme}://127.0.0.1:{port}", timeout=30, verify=verify) as client:
            yield Api(client, token, data_dir, app, server, thread)
    finally:
        server.should_exit = True
        thread.join(15)
        if thread.is_alive():  # a shutdown that hangs must not leave the server behind
            server.force_exit = True
            thread.join(15)
        sock.close()


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from start_api(db_url, tmp_path / "data")
