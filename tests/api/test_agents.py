"""The agent registry over HTTP: register, heartbeat, down after silence, scopes, bad input, events.

Time is a fake clock the test advances, and the sweep that marks silent agents
down is called directly (the background sweeper is off): no test waits for time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tenure.services.runtime import Settings
from tenure.store import schema
from tests.conftest import Api, start_api

DOWN_AFTER = 75.0
T0 = datetime(2026, 11, 22, 4, 20, tzinfo=UTC)


class FakeClock:
    """An aware UTC clock that moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


def serve(db_url: str, data_dir: Path, clock: FakeClock) -> Iterator[Api]:
    settings = Settings(housekeeping=False, agent_down_after=DOWN_AFTER)
    yield from start_api(db_url, data_dir, clock=clock, settings=settings)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def agents_api(db_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    yield from serve(db_url, tmp_path / "data", clock)


def runtime(api: Api) -> Any:
    return api.app.state.tenure.runtime


def sweep(api: Api) -> list[str]:
    rt = runtime(api)
    return [a.host for a in rt.run(rt.agents.sweep_op())]


def agent_events(api: Api) -> list[tuple[str, str, dict[str, str], dict[str, Any]]]:
    with runtime(api).engine.connect() as conn:
        rows = conn.execute(
            select(schema.events).where(schema.events.c.kind == "agent").order_by(schema.events.c.revision)
        ).all()
    return [(r.object_id, r.op, json.loads(r.labels), json.loads(r.body)) for r in rows]


def fingerprint(api: Api) -> tuple[Any, ...]:
    rt = runtime(api)
    with rt.engine.connect() as conn:
        rows = tuple(tuple(r) for r in conn.execute(select(schema.agents).order_by(schema.agents.c.host)))
        events = conn.execute(select(func.count()).select_from(schema.events)).scalar_one()
    return rows, events, rt.revision


def register(api: Api, host: str = "h1", *, token: str | None = None, **fields: Any) -> Any:
    body = {"host": host, "kinds": ["claim"], "version": "1.0", **fields}
    return api.post("/v1/agents", json=body, token=token)


def test_register_is_201_then_200_and_changes_are_events(agents_api: Api, clock: FakeClock) -> None:
    r = register(agents_api, capabilities={"tc": True, "max_classes": 4094})
    assert r.status_code == 201, r.text
    agent = r.json()
    assert agent == {
        "host": "h1", "kinds": ["claim"], "version": "1.0", "capabilities": {"tc": True, "max_classes": 4094},
        "state": "up", "registered_at": T0.isoformat(), "last_seen": T0.isoformat(), "revision": agent["revision"],
    }
    assert agents_api.get("/v1/agents/h1").json() == agent

    # The same registration again: 200, only last_seen moves, no event.
    clock.advance(10)
    r = register(agents_api, capabilities={"max_classes": 4094, "tc": True})
    assert r.status_code == 200
    assert r.json() == {**agent, "last_seen": (T0 + timedelta(seconds=10)).isoformat()}
    assert [(h, op) for h, op, _, _ in agent_events(agents_api)] == [("h1", "created")]

    # A changed registration: 200 and an "updated" event with the new body.
    r = register(agents_api, kinds=["pool", "claim"], version="1.1", capabilities={"tc": True})
    assert r.status_code == 200
    changed = r.json()
    assert changed["kinds"] == ["claim", "pool"] and changed["version"] == "1.1"
    assert changed["revision"] > agent["revision"] and changed["registered_at"] == agent["registered_at"]
    events = agent_events(agents_api)
    assert [(h, op) for h, op, _, _ in events] == [("h1", "created"), ("h1", "updated")]
    assert events[0][2] == {"host": "h1"} and events[0][3] == agent
    assert events[1][3] == changed
    assert agents_api.get("/v1/agents").json() == {"agents": [changed], "revision": changed["revision"]}


def test_heartbeat_moves_last_seen_without_an_event(agents_api: Api, clock: FakeClock) -> None:
    agent = register(agents_api).json()
    before = fingerprint(agents_api)
    clock.advance(30)
    r = agents_api.post("/v1/agents/h1/heartbeat", json={})
    assert r.status_code == 200
    assert r.json() == {**agent, "last_seen": (T0 + timedelta(seconds=30)).isoformat()}
    clock.advance(30)
    assert agents_api.post("/v1/agents/h1/heartbeat").status_code == 200  # the body is optional
    after = fingerprint(agents_api)
    assert after[1:] == before[1:]  # no event, no new revision
    with runtime(agents_api).engine.connect() as conn:  # ... but last_seen is in the store
        stored = conn.execute(select(schema.agents.c.last_seen)).scalar_one()
    assert stored == T0 + timedelta(seconds=60)

    r = agents_api.post("/v1/agents/nope/heartbeat", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "agent_not_registered"


def test_silence_marks_down_and_a_heartbeat_brings_up(agents_api: Api, clock: FakeClock) -> None:
    register(agents_api, "h1")
    register(agents_api, "h2")
    clock.advance(DOWN_AFTER)
    agents_api.post("/v1/agents/h2/heartbeat")
    assert sweep(agents_api) == []  # exactly down_after of silence is not yet too long
    clock.advance(1)
    assert sweep(agents_api) == ["h1"]
    assert sweep(agents_api) == []  # already down: no second event
    states = {a["host"]: a["state"] for a in agents_api.get("/v1/agents").json()["agents"]}
    assert states == {"h1": "down", "h2": "up"}
    down = [e for e in agent_events(agents_api) if e[1] == "updated"]
    assert [(h, body["state"]) for h, _, _, body in down] == [("h1", "down")]

    r = agents_api.post("/v1/agents/h1/heartbeat")
    assert r.status_code == 200 and r.json()["state"] == "up"
    assert r.json()["last_seen"] == (T0 + timedelta(seconds=DOWN_AFTER + 1)).isoformat()
    ups = [(h, op, body["state"]) for h, op, _, body in agent_events(agents_api)][-1]
    assert ups == ("h1", "updated", "up")
    assert r.json()["revision"] == agent_events(agents_api)[-1][3]["revision"]

    # Down again, then a re-registration unchanged in every field still brings it up, with an event.
    clock.advance(DOWN_AFTER + 1)
    assert sweep(agents_api) == ["h1", "h2"]
    n = len(agent_events(agents_api))
    r = register(agents_api, "h2")
    assert r.status_code == 200 and r.json()["state"] == "up"
    assert [(h, op, b["state"]) for h, op, _, b in agent_events(agents_api)[n:]] == [("h2", "updated", "up")]


def test_state_and_last_seen_survive_a_restart_with_grace(db_url: str, tmp_path: Path, clock: FakeClock) -> None:
    data = tmp_path / "data"
    for api in serve(db_url, data, clock):
        register(api, "h1")
        register(api, "h2")
        clock.advance(DOWN_AFTER + 1)
        assert sweep(api) == ["h1", "h2"]
        api.post("/v1/agents/h2/heartbeat")  # h2 up, seen at T0 + 76
        before = api.get("/v1/agents").json()

    clock.advance(3600)  # the server was down for an hour
    restarted = clock()
    for api in serve(db_url, data, clock):
        assert api.get("/v1/agents").json() == before
        # Silence is counted from the restart, not from h2's last heartbeat an hour ago.
        assert sweep(api) == []
        clock.advance(DOWN_AFTER)
        assert sweep(api) == []
        clock.advance(1)
        assert sweep(api) == ["h2"]
        assert api.get("/v1/agents/h2").json()["last_seen"] == (T0 + timedelta(seconds=DOWN_AFTER + 1)).isoformat()
        assert clock() - restarted > timedelta(seconds=DOWN_AFTER)


def test_agent_token_is_confined_to_its_own_host(agents_api: Api) -> None:
    h1 = agents_api.token("agent", host="h1")
    assert register(agents_api, "h2").status_code == 201  # by the admin
    before = fingerprint(agents_api)
    assert register(agents_api, "h2", token=h1, version="evil").status_code == 403
    assert agents_api.post("/v1/agents/h2/heartbeat", token=h1).status_code == 403
    assert agents_api.get("/v1/agents/h2", token=h1).status_code == 403
    assert agents_api.delete("/v1/agents/h2", token=h1).status_code == 403
    assert agents_api.get("/v1/agents", token=h1).json()["agents"] == []
    assert fingerprint(agents_api) == before

    r = register(agents_api, "h1", token=h1)
    assert r.status_code == 201
    assert agents_api.post("/v1/agents/h1/heartbeat", token=h1).status_code == 200
    assert agents_api.get("/v1/agents/h1", token=h1).json() == agents_api.get("/v1/agents/h1").json()
    assert [a["host"] for a in agents_api.get("/v1/agents", token=h1).json()["agents"]] == ["h1"]
    assert [a["host"] for a in agents_api.get("/v1/agents").json()["agents"]] == ["h1", "h2"]
    assert agents_api.delete("/v1/agents/h1", token=h1).status_code == 403  # removal is for admins


def test_members_may_not_touch_agents(agents_api: Api) -> None:
    register(agents_api, "h1")
    member = agents_api.token("member", project="blue")
    before = fingerprint(agents_api)
    for r in (
        register(agents_api, "h1", token=member),
        register(agents_api, "h9", token=member),
        agents_api.post("/v1/agents/h1/heartbeat", token=member),
        agents_api.get("/v1/agents", token=member),
        agents_api.get("/v1/agents/h1", token=member),
        agents_api.delete("/v1/agents/h1", token=member),
    ):
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
    assert fingerprint(agents_api) == before
    assert agents_api.client.get("/v1/agents").status_code == 401


def test_remove(agents_api: Api) -> None:
    agent = register(agents_api, "h1").json()
    r = agents_api.delete("/v1/agents/h1")
    assert r.status_code == 200
    removed = r.json()
    assert {k: v for k, v in removed.items() if k != "revision"} == {k: v for k, v in agent.items() if k != "revision"}
    assert removed["revision"] > agent["revision"]
    assert agent_events(agents_api)[-1] == ("h1", "deleted", {"host": "h1"}, removed)
    assert agents_api.get("/v1/agents/h1").status_code == 404
    assert agents_api.get("/v1/agents/h1").json()["error"]["code"] == "agent_not_found"
    assert agents_api.delete("/v1/agents/h1").status_code == 404
    assert agents_api.post("/v1/agents/h1/heartbeat").json()["error"]["code"] == "agent_not_registered"
    assert agents_api.get("/v1/agents").json()["agents"] == []
    with runtime(agents_api).engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.agents)).scalar_one() == 0
    assert register(agents_api, "h1").status_code == 201  # registers afresh
    assert [op for _, op, _, _ in agent_events(agents_api)] == ["created", "deleted", "created"]



def _net(network: object) -> dict[str, object]:
    return {"host": "h1", "kinds": [], "version": "1", "capabilities": {"network": network}}


BAD_REGISTRATIONS: list[tuple[Any, str]] = [
    ({"host": "", "kinds": [], "version": "1"}, "invalid_name"),
    ({"host": "a/b", "kinds": [], "version": "1"}, "invalid_name"),
    ({"host": "a b", "kinds": [], "version": "1"}, "invalid_name"),
    ({"host": "h" * 129, "kinds": [], "version": "1"}, "invalid_name"),
    ({"host": "nul\x00", "kinds": [], "version": "1"}, "invalid_name"),
    ({"host": 5, "kinds": [], "version": "1"}, "invalid_request"),
    ({"host": "h1", "kinds": ["claims"], "version": "1"}, "invalid_kind"),
    ({"host": "h1", "kinds": ["claim", "nope"], "version": "1"}, "invalid_kind"),
    ({"host": "h1", "kinds": "claim", "version": "1"}, "invalid_request"),
    ({"host": "h1", "kinds": [1], "version": "1"}, "invalid_request"),
    ({"host": "h1", "kinds": [None], "version": "1"}, "invalid_request"),
    ({"host": "h1", "kinds": {"claim": 1}, "version": "1"}, "invalid_request"),
    ({"host": "h1", "kinds": ["claim"] * 65, "version": "1"}, "invalid_request"),
    ({"host": "h1", "version": "1"}, "invalid_request"),
    ({"host": "h1", "kinds": [], "version": "v" * 65}, "invalid_version"),
    ({"host": "h1", "kinds": [], "version": "1\x00"}, "invalid_version"),
    ({"host": "h1", "kinds": [], "version": ""}, "invalid_version"),
    ({"host": "h1", "kinds": [], "version": 1}, "invalid_request"),
    ({"host": "h1", "kinds": []}, "invalid_request"),
    ({"host": "h1", "kinds": [], "version": "1", "capabilities": []}, "invalid_request"),
    ({"host": "h1", "kinds": [], "version": "1", "capabilities": "tc"}, "invalid_request"),
    ({"host": "h1", "kinds": [], "version": "1", "capabilities": {"x": "y" * 16_384}}, "invalid_capabilities"),
    ({"host": "h1", "kinds": [], "version": "1", "capabilities": {"x": "é" * 8_190}}, "invalid_capabilities"),
    ({"host": "h1", "kinds": [], "version": "1", "surprise": 1}, "invalid_request"),
    # capabilities.network is what tenure agent reports: the server uses it, so it is checked
    (_net(True), "invalid_capabilities"),
    (_net({"interfaces": 5}), "invalid_capabilities"),
    (_net({"interfaces": [{"name": "eth0", "addresses": ["10.0.0.1"], "speed": 1}]}),
     "invalid_capabilities"),
    (_net({"interfaces": [{"name": "eth0", "addresses": ["10.0.0.300/24"]}]}), "invalid_capabilities"),
    (_net({"interfaces": [{"name": "eth0", "addresses": [5]}]}), "invalid_capabilities"),
    (_net({"interfaces": [{"name": "a/b", "addresses": []}]}), "invalid_capabilities"),
    (_net({"interfaces": [], "default": 7}), "invalid_capabilities"),
    (_net({"interfaces": [{"name": "eth0", "addresses": ["10.0.0.1"]}]}), "invalid_capabilities"),  # no prefix
    (b'{"host": "h1", "kinds": [], "version": "\\ud800"}', "invalid_version"),
    (b'{"host": "h1", "kinds": [], "version": "1", "capabilities": {"x": "\\udfff"}}', "invalid_capabilities"),
    (b'{"host": "h1", "kinds": [], "version": "1", "capabilities": {"\\ud800": 1}}', "invalid_capabilities"),
    (b'{"host": "h1", "kinds": [], "version": "1", "capabilities": {"x": NaN}}', "invalid_capabilities"),
    (b'{"host": "h1", "kinds": [], "version": "1", "capabilities": {"x": 1e400}}', "invalid_capabilities"),
    (b'{"host": "h1", "kinds": [], "version": "1", "capabilities": {"x": -Infinity}}', "invalid_capabilities"),
    (b'{"host": "h1", "kinds": [], "version": "1", "capabilities": {"x": ' + b"[" * 40 + b"]" * 40 + b"}}",
     "invalid_capabilities"),
    (b'{"host": "h1", "kinds": [], "version": "1", "capabilities": ' + b'{"a":' * 500 + b"1" + b"}" * 501,
     "invalid_capabilities"),
    (b'{"host": "h1", "kinds": [], "version": "1", "capabilities": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
     None),
    (b'{"host": "h1", "kinds": [], "version": "1"', "malformed_json"),
    (b'[{"host": "h1", "kinds": [], "version": "1"}]', "invalid_request"),
    (b"null", "invalid_request"),
]


@pytest.mark.parametrize(("body", "code"), BAD_REGISTRATIONS)
def test_bad_registrations_are_refused_and_change_nothing(agents_api: Api, body: Any, code: str | None) -> None:
    assert register(agents_api, "h1", capabilities={"tc": True}).status_code == 201
    before = fingerprint(agents_api)
    if isinstance(body, bytes):
        r = agents_api.post("/v1/agents", content=body, headers={"Content-Type": "application/json"})
    else:
        r = agents_api.post("/v1/agents", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if code == "invalid_kind":
        assert all(kind in err["message"] for kind in ("pool", "claim", "token", "agent"))
    assert fingerprint(agents_api) == before
    assert agents_api.get("/v1/agents").status_code == 200


@pytest.mark.parametrize("body", [b'{"x": 1}', b"[]", b'"up"', b"nope"])
def test_bad_heartbeats_are_refused_and_change_nothing(agents_api: Api, clock: FakeClock, body: bytes) -> None:
    register(agents_api, "h1")
    before = fingerprint(agents_api)
    clock.advance(5)
    r = agents_api.post("/v1/agents/h1/heartbeat", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert fingerprint(agents_api) == before


def test_capabilities_at_the_limit_round_trip(agents_api: Api) -> None:
    overhead = len(json.dumps({"x": ""}))
    caps = {"x": "é" * ((16_384 - overhead) // 2)}  # two bytes each in UTF-8: within 16 kB exactly
    r = register(agents_api, "h1", capabilities=caps)
    assert r.status_code == 201, r.text
    nested: Any = 1
    for _ in range(31):  # 32 levels of objects with the top one
        nested = {"a": nested}
    r = register(agents_api, "h2", capabilities=nested)
    assert r.status_code == 201, r.text
    odd = {"nul": "a\x00b", "big": 2**80, "float": 1.5, "unicode": "☃", "none": None}
    r = register(agents_api, "h3", capabilities=odd)
    assert r.status_code == 201 and r.json()["capabilities"] == odd
    assert agents_api.get("/v1/agents/h1").json()["capabilities"] == caps
    assert agents_api.get("/v1/agents/h2").json()["capabilities"] == nested
    assert agents_api.get("/v1/agents/h3").json()["capabilities"] == odd


def test_capability_changes_follow_json_not_python_equality(agents_api: Api) -> None:
    register(agents_api, "h1", capabilities={"x": 1})
    r = register(agents_api, "h1", capabilities={"x": True})  # 1 == True in Python, not in JSON
    assert r.status_code == 200 and r.json()["capabilities"] == {"x": True}
    assert [op for _, op, _, _ in agent_events(agents_api)] == ["created", "updated"]
