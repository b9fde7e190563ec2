"""The host agent's HTTP API: the contract, bad input as 4xx JSON, admin-only access, events on the watch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lrm_support import start_agent

DUMMY = "ocf:heartbeat:Dummy"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Any]:
    yield from start_agent(tmp_path)


def h(agent: Any, token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token or agent.admin_token}"}


def error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == code and body["message"], body
    return body


def test_lifecycle_over_http(agent: Any, tmp_path: Path) -> None:
    c = agent.client
    r = c.post("/v1/resources", json={"name": "db", "driver": DUMMY, "params": {"state": str(tmp_path / "db.s")},
                                      "labels": {"tier": "gold"}}, headers=h(agent))
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert r.json()["state"] == "unknown" and r.json()["labels"] == {"tier": "gold"}
    op = c.post("/v1/resources/db/operations", json={"action": "start"}, headers=h(agent))
    assert op.status_code == 202 and op.json()["action"] == "start"
    done = c.get(f"/v1/resources/db/operations/{op.json()['id']}", params={"wait": 30}, headers=h(agent))
    assert done.json()["result"]["rc"] == 0 and done.json()["state"] == "done"
    assert c.get(f"/v1/resources/{rid}", headers=h(agent)).json()["state"] == "running"
    mon = c.post("/v1/resources/db/operations", json={"action": "monitor", "interval": 30}, headers=h(agent)).json()
    assert mon["recurring"] and mon["merged"] is False
    ops = c.get("/v1/resources/db/operations", headers=h(agent)).json()["items"]
    assert any(o["id"] == mon["id"] and o["state"] == "recurring" for o in ops)
    assert c.delete(f"/v1/resources/db/operations/{mon['id']}", headers=h(agent)).json()["state"] == "cancelled"
    hist = c.get("/v1/resources/db/history", headers=h(agent)).json()["items"]
    assert hist[-1]["action"] == "start"
    error(c.delete("/v1/resources/db", headers=h(agent)), 409, "resource_running")
    stop = c.post("/v1/resources/db/operations", json={"action": "stop"}, headers=h(agent)).json()
    c.get(f"/v1/resources/db/operations/{stop['id']}", params={"wait": 30}, headers=h(agent))
    gone = c.delete("/v1/resources/db", headers=h(agent))
    assert gone.status_code == 200 and gone.json()["deleted"] is True, gone.text
    error(c.get("/v1/resources/db", headers=h(agent)), 404, "resource_not_found")
    drivers = c.get("/v1/drivers", headers=h(agent)).json()["items"]
    assert {"driver": DUMMY, "class": "ocf"} in drivers
    meta = c.get(f"/v1/drivers/{DUMMY}/meta-data", headers=h(agent)).json()["meta_data"]
    assert "state" in [p["name"] for p in meta["parameters"]]
    assert {"start", "stop", "monitor"} <= {a["name"] for a in meta["actions"]}
    metrics = c.get("/metrics", headers=h(agent)).text
    assert 'tenure_lrm_operations_total{action="start",status="done"} 1.0' in metrics
    assert "tenure_lrm_in_flight 0.0" in metrics and "tenure_lrm_long_polls 0.0" in metrics


def test_events_on_the_watch(agent: Any, tmp_path: Path) -> None:
    c = agent.client
    rid = c.post("/v1/resources", json={"name": "w", "driver": DUMMY, "params": {"state": str(tmp_path / "w.s")}},
                 headers=h(agent)).json()["id"]
    op = c.post("/v1/resources/w/operations", json={"action": "start"}, headers=h(agent)).json()
    c.get(f"/v1/resources/w/operations/{op['id']}", params={"wait": 30}, headers=h(agent))
    seen: list[tuple[str, str]] = []
    with c.stream("GET", "/v1/watch", params={"kind": "resource,operation", "since": 0, "id": rid},
                  headers=h(agent)) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                e = json.loads(line[5:])
                if "kind" in e:
                    seen.append((e["kind"], e["type"]))
                if len(seen) == 4:
                    break
    assert seen == [("resource", "created"), ("operation", "created"), ("operation", "updated"),
                        ("resource", "updated")], seen


def test_admin_only(agent: Any) -> None:
    c = agent.client
    member = agent.token("member", project="p")
    error(c.get("/v1/resources", headers=h(agent, member)), 403, "forbidden")
    error(c.post("/v1/resources", json={"name": "x", "driver": DUMMY}, headers=h(agent, member)), 403, "forbidden")
    for r in (c.get("/v1/resources"), c.get("/v1/drivers", headers=h(agent, "nope"))):
        assert r.status_code == 401 and r.json()["error"]["code"] in ("missing_token", "invalid_token")
    r = c.get("/v1/watch", params={"kind": "resource"}, headers=h(agent, member))
    assert r.status_code == 403


@pytest.mark.parametrize("body,code", [
    ({"name": "x", "driver": "ocf:heartbeat:NoSuch"}, "driver_not_found"),
    ({"name": "x", "driver": "ocf:heartbeat:../../x"}, "invalid_driver"),
    ({"name": "x", "driver": "exec:/bin/sh"}, "invalid_driver"),
    ({"name": "x", "driver": "python:os:system"}, "invalid_driver"),
    ({"name": "x", "driver": "lsb:"}, "invalid_driver"),
    ({"name": "x", "driver": DUMMY, "params": {"bogus": "1"}}, "unknown_parameter"),
    ({"name": "x", "driver": "exec:meta"}, "missing_parameter"),
    ({"name": "x", "driver": DUMMY, "params": {"state": "a\u0000b"}}, "invalid_parameter"),
    ({"name": "", "driver": DUMMY}, "invalid_name"),
    ({"name": "a/b", "driver": DUMMY}, "invalid_name"),
    ({"name": "x", "driver": DUMMY, "extra": 1}, "invalid_request"),
    ({"name": "x", "driver": DUMMY, "params": {"n": 5}}, "invalid_request"),
])
def test_bad_add(agent: Any, body: dict[str, Any], code: str) -> None:
    r = agent.client.post("/v1/resources", json=body, headers=h(agent))
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] == code, r.text
    assert agent.client.get("/v1/resources", headers=h(agent)).json()["items"] == []


@pytest.mark.parametrize("body,code", [
    ({"action": "explode"}, "unknown_action"),
    ({"action": "Start"}, "invalid_action"),
    ({"action": "monitor", "interval": -1}, "invalid_interval"),
    ({"action": "monitor", "timeout": -1}, "invalid_timeout"),
    ({"action": "monitor", "timeout": 1e300}, "invalid_timeout"),
    ({"action": "start", "interval": 5}, "invalid_interval"),
    ({"action": "monitor", "report": "never"}, "invalid_request"),
    ({"action": "monitor", "interval": "5"}, "invalid_request"),
    ({"action": "monitor", "expect": 999}, "invalid_expect"),
])
def test_bad_operation(agent: Any, tmp_path: Path, body: dict[str, Any], code: str) -> None:
    c = agent.client
    c.post("/v1/resources", json={"name": "b", "driver": DUMMY, "params": {"state": str(tmp_path / "b.s")}},
           headers=h(agent))
    r = c.post("/v1/resources/b/operations", json=body, headers=h(agent))
    assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == code, r.text
    view = c.get("/v1/resources/b", headers=h(agent)).json()
    assert view["queued"] == [] and view["running"] is None and view["last"] == {} and view["recurring"] == []


def test_duplicate_name_and_unknown_refs(agent: Any, tmp_path: Path) -> None:
    c = agent.client
    body = {"name": "dup", "driver": DUMMY, "params": {"state": str(tmp_path / "d.s")}}
    assert c.post("/v1/resources", json=body, headers=h(agent)).status_code == 201
    error(c.post("/v1/resources", json=body, headers=h(agent)), 409, "name_taken")
    error(c.post("/v1/resources/nobody/operations", json={"action": "start"}, headers=h(agent)), 404,
          "resource_not_found")
    error(c.get("/v1/resources/dup/operations/nope", headers=h(agent)), 404, "operation_not_found")
    error(c.delete("/v1/resources/dup/operations/nope", headers=h(agent)), 404, "operation_not_found")
    error(c.get("/v1/drivers/ocf:heartbeat:NoSuch/meta-data", headers=h(agent)), 404, "driver_not_found")
    r = c.get("/v1/resources/dup/operations/x", params={"wait": -1}, headers=h(agent))
    assert r.status_code == 400


@pytest.mark.parametrize("raw,code", [
    ('{"action": "monitor", "interval": 1e400}', "invalid_interval"),
    ('{"action": "monitor", "timeout": -1e400}', "invalid_timeout"),
    ('{"action": "monitor", "interval": ' + "9" * 400 + "}", "invalid_interval"),
    ('{"action": "monitor", "timeout": ' + "9" * 400 + "}", "invalid_timeout"),
])
def test_numbers_out_of_range_are_4xx(agent: Any, tmp_path: Path, raw: str, code: str) -> None:
    c = agent.client
    c.post("/v1/resources", json={"name": "big", "driver": DUMMY, "params": {"state": str(tmp_path / "b.s")}},
           headers=h(agent))
    r = c.post("/v1/resources/big/operations", content=raw,
               headers={**h(agent), "Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["code"] in (code, "invalid_request"), r.text


def test_lone_surrogates_are_4xx(agent: Any) -> None:
    for raw in ('{"name": "s", "driver": "ocf:heartbeat:Dummy", "labels": {"k": "\\ud800"}}',
                '{"name": "s", "driver": "ocf:heartbeat:Dummy", "params": {"state": "\\udfff"}}'):
        r = agent.client.post("/v1/resources", content=raw, headers={**h(agent), "Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
    assert agent.client.get("/v1/resources", headers=h(agent)).json()["items"] == []


def test_submit_with_wait_answers_with_the_result(agent: Any, tmp_path: Path) -> None:
    """``POST .../operations?wait=S``: one request answers with the result (a recurring one: its first); a bad
    ``wait`` is a 400 that queues nothing."""
    c = agent.client
    c.post("/v1/resources", json={"name": "sw", "driver": DUMMY, "params": {"state": str(tmp_path / "sw.s")}},
           headers=h(agent))
    for wait in (-1, 61, "soon"):
        error(c.post("/v1/resources/sw/operations", params={"wait": wait}, json={"action": "start"},
                     headers=h(agent)), 400, "invalid_request")
    assert c.get("/v1/resources/sw/history", headers=h(agent)).json()["items"] == []
    r = c.post("/v1/resources/sw/operations", params={"wait": 30}, json={"action": "start"}, headers=h(agent))
    assert r.status_code == 202, r.text
    assert (r.json()["state"], r.json()["result"]["rc"], r.json()["result"]["status"]) == ("done", 0, "done")
    assert c.get("/v1/resources/sw", headers=h(agent)).json()["state"] == "running"
    body = {"action": "monitor", "interval": 60}
    first = c.post("/v1/resources/sw/operations", params={"wait": 30}, json=body, headers=h(agent)).json()
    assert first["recurring"] and first["merged"] is False and first["result"]["rc"] == 0
    again = c.post("/v1/resources/sw/operations", params={"wait": 30}, json=body, headers=h(agent)).json()
    assert again["id"] == first["id"] and again["merged"] is True and again["result"]["rc"] == 0
    error(c.post("/v1/resources/nobody/operations", params={"wait": 30}, json={"action": "start"},
                 headers=h(agent)), 404, "resource_not_found")


def test_the_agents_routes_overlap_none_of_the_servers() -> None:
    """create_app puts an agent's routes first (they are nearly all its requests): that is only the same app if
    no path of theirs is also one of the server's routes' paths."""
    import re

    from starlette.routing import compile_path

    from tenure.agent.daemon import AgentConfig, AgentDaemon
    from tenure.api import admin, console, replicas, routes, watch

    base = [r.path for router in (routes.router, console.router, watch.router, replicas.router, admin.router)
            for r in router.routes] + ["/healthz", "/metrics", "/openapi.json", "/docs"]
    mine = [r.path for router in AgentDaemon(AgentConfig()).routers for r in router.routes]
    assert mine

    def sample(path: str) -> str:
        return re.sub(r"\{[^}]+\}", "x", path)

    for path in mine:
        for other in base:
            assert not compile_path(other)[0].match(sample(path)), (path, other)
            assert not compile_path(path)[0].match(sample(other)), (path, other)
