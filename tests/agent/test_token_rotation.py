"""An agent whose token is rotated while it runs keeps working (issue 17): the new secret written to its token
file is taken at its next heartbeat (the file is read before each one, and again after a 401). A real server and a
real agent in-process, on loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.agent_support import start_host_agent, start_server, state_is, wait_for
from tests.conftest import Api


def _agent_token_id(server: Api) -> str:
    [agent] = [t for t in server.get("/v1/tokens").json()["tokens"] if t["role"] == "agent"]
    return agent["id"]


def _heartbeats_since(server: Api, seen: str, timeout: float = 30.0) -> str:
    """The agent's last_seen once it has moved past ``seen`` (heartbeats come every 0.2 s here)."""
    deadline = time.monotonic() + timeout
    while True:
        now = server.get("/v1/agents/h1").json()["last_seen"]
        if now > seen:
            return now
        assert time.monotonic() < deadline, "the agent stopped heartbeating"
        time.sleep(0.05)


def test_a_token_rotated_under_a_running_agent_is_taken_from_its_file(tmp_path: Path) -> None:
    token_file = tmp_path / "h1.token"
    for server in start_server(tmp_path):
        for agent in start_host_agent(tmp_path, server, "h1", heartbeat=0.2, token_file=token_file):
            sync = agent.app.state.tenure.config.extension.sync
            loop = agent.app.state.tenure.loop
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(sync.registered.wait(), 30), loop).result(35)
            seen = _heartbeats_since(server, "")
            token_id = _agent_token_id(server)
            # No grace: the old secret stops at once (a heartbeat between the rotation and the file's new content
            # is refused); the agent reads the file again and goes on with the new secret.
            r = server.post(f"/v1/tokens/{token_id}:rotate", json={"grace": 0})
            assert r.status_code == 200, r.text
            new = r.json()["token"]
            seen = server.get("/v1/agents/h1").json()["last_seen"]
            token_file.write_text(new + "\n")
            seen = _heartbeats_since(server, seen)
            assert sync.client._headers["Authorization"] == f"Bearer {new}"
            # And it still does its work: an instance for h1 becomes active.
            r = server.post("/v1/instances", json={"name": "m", "type": "memory", "host": "h1"})
            assert r.status_code == 201, r.text
            wait_for(server, r.json()["id"], state_is("active"))


def test_the_token_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    from tenure.agent.sync import TokenFile

    path = tmp_path / "t"
    path.write_text("tnr_one\n")
    f = TokenFile(path)
    assert f.token == "tnr_one" and f.changed() is None
    path.write_text("tnr_two\n")
    assert f.changed() == "tnr_two" and f.changed() is None
    path.write_text("")  # emptied (being rewritten): the token in use stays
    assert f.changed() is None and f.token == "tnr_two"
    path.unlink()
    assert f.changed() is None and f.token == "tnr_two"
