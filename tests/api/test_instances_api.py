"""/v1/instances over HTTP: the contract, bad input as 4xx JSON that changes nothing, and who sees what."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from tenure.client import TenureClient
from tests.conftest import Api


def create(api: Api, token: str | None = None, **body: Any) -> Any:
    return api.post("/v1/instances", token=token, json={"type": "memory", "host": "h1", **body})


def test_create_list_show_modify_delete(api: Api) -> None:
    r = create(api, name="a", parameters={"value": "x", "n": 5}, labels={"tier": "web"})
    assert r.status_code == 201, r.text
    a = r.json()
    assert (a["state"], a["reason"], a["parameters"]) == ("pending", "no agent is registered on host 'h1'",
                                                          {"value": "x", "n": "5"})
    assert create(api, name="a", parameters={"value": "x", "n": 5}, labels={"tier": "web"}).status_code == 200
    assert api.get("/v1/instances/a").json()["id"] == a["id"]
    assert api.get(f"/v1/instances/{a['id']}").json()["name"] == "a"
    page = api.get("/v1/instances", params={"host": "h1", "state": "pending"}).json()
    assert [i["id"] for i in page["instances"]] == [a["id"]] and page["next"] is None
    r = api.request("PATCH", "/v1/instances/a", json={"parameters": {"value": "y"}})
    assert r.status_code == 200 and r.json()["generation"] == 2
    r = api.delete("/v1/instances/a")
    assert r.status_code == 200 and r.json()["state"] == "deleted"  # never sent: gone at once
    assert api.get("/v1/instances/a").status_code == 404
    metrics = api.get("/metrics").text
    assert 'tenure_instances{state="pending"} 0.0' in metrics and 'tenure_instances{state="active"} 0.0' in metrics
    types = api.get("/v1/types").json()["types"]
    assert {"name": "bandwidth", "timeout": 30.0} in types and any(t["name"] == "memory" for t in types)


def test_a_batch_with_dependencies_is_all_or_nothing(api: Api) -> None:
    r = api.post("/v1/instances/batch", json={"instances": [
        {"name": "vm", "type": "memory", "host": "h1", "parameters": {"v": "${instance:net.outputs.vlan}"}},
        {"name": "net", "type": "memory", "host": "h1"}]})
    assert r.status_code == 201, r.text
    assert [i["name"] for i in r.json()["instances"]] == ["vm", "net"]
    assert api.get("/v1/instances/vm").json()["reason"] == "waiting for dependency 'net' (pending)"
    r = api.post("/v1/instances/batch", json={"instances": [
        {"name": "x", "type": "memory", "host": "h1", "depends_on": ["y"]},
        {"name": "y", "type": "memory", "host": "h1", "depends_on": ["x"]}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "dependency_cycle"
    assert api.get("/v1/instances/x").status_code == 404


@pytest.mark.parametrize("body,status,code", [
    ({"name": "a", "type": "nosuch"}, 400, "unknown_type"),
    ({"name": "a", "depends_on": ["ghost"]}, 400, "unknown_dependency"),
    ({"name": "a", "parameters": {"v": "${claim:nopool:k}"}}, 400, "unresolved_reference"),
    ({"name": "a", "parameters": {"v": "${instance:x}"}}, 400, "invalid_reference"),
    ({"name": "a", "parameters": {"v": True}}, 400, None),
    ('{"name": "a", "type": "memory", "host": "h1", "parameters": {"v": 1e400}}', 400, None),
    ('{"name": "a", "type": "memory", "host": "h1", "parameters": {"v": %s}}' % (10 ** 400), 400, None),
    ('{"name": "a", "type": "memory", "host": "h1"', 400, None),
    ('{"name": "a", "type": "memory", "host": "h1", "parameters": {"v": "\\ud800"}}', 400, None),
    ({"name": "a/b"}, 400, "invalid_name"),
    ({"name": "a", "host": ""}, 400, "invalid_name"),
    ({"name": "a", "extra": 1}, 400, None),
    ({"name": "a", "labels": {"k": 1}}, 400, None),
])
def test_bad_input_is_a_json_4xx_and_changes_nothing(api: Api, body: dict[str, Any] | str, status: int,
                                                     code: str | None) -> None:
    before = api.get("/healthz").json()["revision"]
    if isinstance(body, str):  # JSON that a client library would not produce
        r = api.post("/v1/instances", content=body, headers={"Content-Type": "application/json"})
    else:
        r = create(api, **body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"code", "message"}
    if code:
        assert err["code"] == code
    assert api.get("/healthz").json()["revision"] == before


def test_bad_reports_and_patches_are_4xx(api: Api) -> None:
    a = create(api, name="a").json()
    agent = api.token("agent", host="h1")
    for body in ({"generation": "1", "state": "active"}, {"generation": 1, "state": "up"}, {"generation": 1},
                 {"generation": 1, "state": "active", "outputs": {"x": 1.5}}, {"generation": 2**60, "state": "active"}):
        r = api.post(f"/v1/instances/{a['id']}/report", token=agent, json=body)
        assert r.status_code == 400, (body, r.text)
    r = api.post(f"/v1/instances/{a['id']}/report", token=agent, json={"generation": 1, "state": "active"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "unknown_generation"  # never sent
    for body in ({}, {"parameters": {"a": []}}, {"name": "b"}):
        assert api.request("PATCH", "/v1/instances/a", json=body).status_code == 400
    assert api.request("PATCH", "/v1/instances/ghost", json={"labels": {}}).status_code == 404


def test_scopes_members_their_project_agents_their_host(api: Api) -> None:
    blue, red = api.token("member", project="blue"), api.token("member", project="red")
    h1, h2 = api.token("agent", host="h1"), api.token("agent", host="h2")
    b = create(api, blue, name="web").json()
    assert b["project"] == "blue"
    assert create(api, red, name="web").status_code == 201
    assert create(api, blue, name="x", project="red").status_code == 403
    assert create(api, h1, name="x").status_code == 403
    assert api.get(f"/v1/instances/{b['id']}", token=red).status_code == 404
    assert [i["project"] for i in api.get("/v1/instances", token=red).json()["instances"]] == ["red"]
    assert len(api.get("/v1/instances", token=h1).json()["instances"]) == 2
    assert api.get("/v1/instances", token=h2).json()["instances"] == []
    assert api.get(f"/v1/instances/{b['id']}", token=h2).status_code == 404
    assert api.delete(f"/v1/instances/{b['id']}", token=red).status_code == 404
    assert api.delete(f"/v1/instances/{b['id']}", token=h1).status_code == 403
    assert api.delete(f"/v1/instances/{b['id']}?force=true", token=blue).status_code == 403
    r = api.post(f"/v1/instances/{b['id']}/report", token=blue, json={"generation": 1, "state": "active"})
    assert r.status_code == 403
    # The watch shows what a GET would: red sees no event of blue's instance.
    seen = []
    with TenureClient(str(api.client.base_url), red) as c, contextlib.closing(
            c.watch("instance", initial=True)) as w:
        for ev in w:
            if ev.initial_end:
                break
            if not ev.is_bookmark:
                seen.append(ev.object["project"])
    assert seen == ["red"]
