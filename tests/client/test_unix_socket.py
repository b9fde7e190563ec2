"""The client over a Unix socket: ``unix:PATH`` base URLs, against a real ``tenure agent`` process.

The agent listens on ``unix:PATH`` (mode 0600) and writes that URL to its ``server.json``; the client
sends plain HTTP over the socket, long polls and watches included, and names the ``unix:`` URL in its
errors. A few checks of the URL handling need no process (``httpx.MockTransport``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tenure.cli.main import app
from tenure.client import TenureAPIError, TenureClient, TenureConfigError, TenureConnectionError
from tenure.client._base import unix_socket

pytestmark = pytest.mark.timeout(120)

START_TIMEOUT = 30.0


# ------------------------------------------------------------- no process


def test_unix_urls_go_to_localhost_over_the_transport() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "o1", "result": None})

    with TenureClient("unix:/run/tenure/agent.sock", "t0k", transport=httpx.MockTransport(handler)) as c:
        assert repr(c) == "TenureClient('unix:/run/tenure/agent.sock')"
        c.operation("a/b", "o1", wait=30)
        c.operation("a/b", "o1")
        c.driver_meta_data("ocf:heartbeat:Dummy")
    long_poll, plain, meta = seen
    assert str(long_poll.url) == "http://localhost/v1/resources/a%2Fb/operations/o1?wait=30"
    assert long_poll.headers["authorization"] == "Bearer t0k"
    assert long_poll.extensions["timeout"]["read"] > 30  # the answer may take the whole wait
    assert plain.extensions["timeout"]["read"] == 10.0 and plain.url.query == b""
    assert meta.url.raw_path == b"/v1/drivers/ocf%3Aheartbeat%3ADummy/meta-data"


def test_unix_url_forms() -> None:
    assert unix_socket("unix:/run/x.sock") == "/run/x.sock"
    assert unix_socket("unix:///run/x.sock") == "/run/x.sock"
    assert unix_socket("unix:rel/x.sock") == "rel/x.sock"
    assert unix_socket("http://127.0.0.1:7470") is None
    with pytest.raises(TenureConfigError, match="no socket path"):
        TenureClient("unix:", "t")


def test_an_absent_socket_is_unreachable_and_named(tmp_path: Path) -> None:
    url = f"unix:{tmp_path / 'nobody.sock'}"
    with TenureClient(url, "t") as c, pytest.raises(TenureConnectionError) as info:
        c.resources()
    assert url in info.value.message and "`tenure agent`" in info.value.message
    assert info.value.url == url


# ---------------------------------------------------------- a real agent


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    socket: Path
    url: str
    token: str
    log: Path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TENURE_")}


def _wait_ready(proc: subprocess.Popen[bytes], data: Path, log: Path) -> tuple[str, str]:
    """server.json and admin.token written, and /healthz ok over the socket (polling: a process starting)."""
    ticker = threading.Event()
    for _ in range(int(START_TIMEOUT / 0.05)):
        assert proc.poll() is None, f"the agent exited with {proc.returncode}:\n{log.read_text()}"
        try:
            url = json.loads((data / "server.json").read_text())["url"]
            token = (data / "admin.token").read_text().strip()
        except (OSError, ValueError, KeyError):
            ticker.wait(0.05)
            continue
        try:
            with TenureClient(url, token) as c:
                if c.health()["status"] == "ok":
                    return url, token
        except TenureConnectionError:  # bound, not yet listening
            pass
        ticker.wait(0.05)
    raise AssertionError(f"the agent was not ready within {START_TIMEOUT:g} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError("the agent did not exit within 20 s of SIGTERM; killed") from None


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    short = Path(tempfile.mkdtemp(prefix="tnr-", dir="/tmp"))  # AF_UNIX paths are at most 107 bytes
    sock = short / "agent.sock"
    data = tmp_path / "agent"
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tenure", "agent", "--listen", f"unix:{sock}", "--data-dir", str(data),
             "--rsctmp", str(tmp_path / "rsctmp"), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        url, token = _wait_ready(proc, data, log)
        yield Agent(proc, data, sock, url, token, log)
    finally:
        try:
            _stop(proc)
        finally:
            shutil.rmtree(short, ignore_errors=True)


def test_the_agent_over_its_unix_socket(agent: Agent, tmp_path: Path) -> None:
    assert agent.url == f"unix:{agent.socket.resolve()}"
    assert stat.S_ISSOCK(agent.socket.stat().st_mode)
    assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o600

    state = tmp_path / "dummy.state"
    with TenureClient(agent.url, agent.token) as c:
        assert c.resources() == {"items": []}
        assert c.whoami()["role"] == "admin"
        added = c.add_resource("db1", "ocf:heartbeat:Dummy", {"state": str(state)}, {"tier": "db"})
        op = c.submit("db1", "start")
        done = c.operation("db1", op["id"], wait=30)  # a long poll over the socket
        assert (done["state"], done["result"]["rc"]) == ("done", 0) and state.exists()
        assert c.resource(added["id"])["state"] == "running"
        assert [h["action"] for h in c.resource_history("db1")["items"]] == ["start"]
        with c.watch("resource", initial=True) as events:
            listed = next(events)
            assert (listed.type, listed.id, listed.object["name"]) == ("created", added["id"], "db1")
            assert next(events).initial_end
        with pytest.raises(TenureAPIError) as info:
            c.resource("nobody")
        assert (info.value.status, info.value.code) == (404, "resource_not_found")
    with TenureClient(agent.url, "not-a-token") as stranger, pytest.raises(TenureAPIError) as info:
        stranger.resources()
    assert info.value.status == 401

    # The CLI finds the agent from its data dir alone: server.json's unix: URL and admin.token.
    result = CliRunner().invoke(app, ["resource", "--agent-dir", str(agent.data_dir), "status", "--json"],
                                env={"TENURE_URL": None, "TENURE_TOKEN": None, "TENURE_DATA_DIR": None,
                                     "TENURE_AGENT_DIR": None})
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert [r["name"] for r in json.loads(result.stdout)["items"]] == ["db1"]

    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: -15 is a clean exit (0 on older versions).
    assert _stop(agent.proc) in (0, -signal.SIGTERM)
    assert "Traceback" not in agent.log.read_text()
    with TenureClient(agent.url, agent.token) as c, pytest.raises(TenureConnectionError) as gone:
        c.health()
    assert agent.url in gone.value.message


def test_bind_never_replaces_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    from tenure.cli.serve import bind

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    with pytest.raises(ValueError):
        bind(f"unix:{precious}")
    assert precious.read_text() == "keep me"
