"""docs/api.md's table of event kinds is complete and true: every kind in ``tenure.domain.events.KINDS``, with
the labels and ops that the server and the host agent really emit (read back from the watch), and the kinds an
``initial=true`` listing really lists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tenure.domain.events import KINDS, OPS
from tests.conftest import Api, start_api
from tests.lrm_support import start_agent
from tests.watch.stream import Frame, open_stream

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
FREE = "*"  # a kind whose labels are its object's own (user-chosen) labels
TOPOLOGY = {"nodes": [{"id": "h1", "kind": "host"}, {"id": "h3", "kind": "host"}, {"id": "s1", "kind": "switch"}],
            "links": [{"id": "h1-s1", "a": "h1", "b": "s1", "capacity": "1G"},
                      {"id": "h3-s1", "a": "h3", "b": "s1", "capacity": "1G"}]}


def documented() -> dict[str, dict[str, Any]]:
    """The rows of the "Event kinds" table: kind -> {labels: {name: required}, ops, initial}."""
    text = API_MD.read_text()
    assert "\n### Event kinds\n" in text, "docs/api.md has no 'Event kinds' section"
    section = text.split("\n### Event kinds\n", 1)[1]
    lines = [ln for ln in section.split("\n\n", 2)[1].splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["kind", "id", "labels", "ops", "listed by `initial=true`"], header
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        (kind,) = re.findall(r"`([a-z_]+)`", cells[0])
        labels_cell, ops_cell = (re.sub(r"\([^)]*\)", "", c) for c in cells[2:4])  # not the explanations
        if "own labels" in labels_cell:
            labels: Any = FREE
        else:
            labels = {m[0]: not m[1] for m in re.findall(r"`([a-z_]+)`(\?)?", labels_cell)}
        out[kind] = {"labels": labels, "ops": set(re.findall(r"`([a-z_]+)`", ops_cell)),
                     "initial": cells[4].lower().startswith("yes")}
    return out


def _all_events(api: Api) -> list[Frame]:
    """Every event so far, replayed from revision 0 (admins see every event)."""
    last = api.app.state.tenure.runtime.revision
    s = open_stream(api.client, api.admin_token, {"since": 0})
    out: list[Frame] = []
    while not out or out[-1].id != last:
        out.extend(s.events(1))
    s.close()
    return out


def _listed_kinds(api: Api) -> set[str]:
    s = open_stream(api.client, api.admin_token, {"initial": "true"})
    kinds = set()
    while True:
        f = s.next()
        if f.event == "bookmark" and f.data["initial_end"]:
            break
        kinds.add(f.data["kind"])
    s.close()
    return kinds


def _ok(r: Any, *status: int) -> Any:
    assert r.status_code in (status or (200, 201)), r.text
    return r.json()


def _server_events(api: Api) -> list[Frame]:
    _ok(api.request("PUT", "/v1/topology", json=TOPOLOGY))
    _ok(api.post("/v1/pools", json={"name": "p", "ranges": [[1, 100]]}))
    _ok(api.post("/v1/pools/p/claims", json={"key": "a", "project": "blue", "host": "h1"}))
    _ok(api.post("/v1/pools/p/claims", json={"key": "b"}))
    _ok(api.post("/v1/pools/p/audit:begin"))
    _ok(api.post("/v1/pools/p/claims", json={"key": "a", "project": "blue", "host": "h1"}))  # re-marked
    _ok(api.post("/v1/pools/p/audit:end"))  # b released
    _ok(api.delete("/v1/pools/p/claims/a"))
    _ok(api.delete("/v1/pools/p"))
    tok = _ok(api.post("/v1/tokens", json={"role": "member", "project": "blue"}))
    _ok(api.delete(f"/v1/tokens/{tok['id']}"))
    _ok(api.post("/v1/tokens", json={"role": "agent", "host": "h2"}))
    _ok(api.post("/v1/agents", json={"host": "h2", "kinds": ["instance"], "version": "1"}))
    _ok(api.delete("/v1/agents/h2"))
    _ok(api.request("PUT", "/v1/limits/blue", json={"share": "50%"}))
    _ok(api.request("PUT", "/v1/limits/blue", json={"share": "60%"}))
    _ok(api.delete("/v1/limits/blue"))
    _ok(api.request("PUT", "/v1/topology/nodes/s9", json={"kind": "switch"}))
    res = _ok(api.post("/v1/reservations", json={"kind": "bandwidth", "src": "h1", "dst": "h3", "rate": "1M",
                                                 "end": "+1h", "project": "blue"}))
    _ok(api.request("PATCH", f"/v1/reservations/{res['id']}", json={"labels": {"x": "y"}}))
    _ok(api.delete(f"/v1/reservations/{res['id']}"))
    inst = _ok(api.post("/v1/instances", json={"name": "m", "type": "memory", "host": "h1", "project": "blue"}))
    _ok(api.request("PATCH", f"/v1/instances/{inst['id']}", json={"parameters": {"v": "2"}}))
    _ok(api.delete(f"/v1/instances/{inst['id']}"))
    _ok(api.post("/v1/instances", json={"name": "kept", "type": "memory", "host": "h1"}))
    return _all_events(api)


def _agent_events(agent: Api) -> list[Frame]:
    r = _ok(agent.post("/v1/resources", json={"name": "d", "driver": "ocf:heartbeat:Dummy",
                                               "params": {"state": str(agent.data_dir / "d.state")},
                                               "labels": {"tier": "gold"}}))
    op = _ok(agent.post("/v1/resources/d/operations", json={"action": "start"}), 202)
    _ok(agent.get(f"/v1/resources/d/operations/{op['id']}", params={"wait": 30}))
    _ok(agent.post("/v1/resources", json={"name": "gone", "driver": "ocf:heartbeat:Dummy"}))
    _ok(agent.delete("/v1/resources/gone"))
    assert r["labels"] == {"tier": "gold"}
    return _all_events(agent)


def test_the_table_lists_every_kind() -> None:
    table = documented()
    assert list(table) == list(KINDS)
    for kind, row in table.items():
        assert row["ops"] and row["ops"] <= set(OPS), (kind, row["ops"])


def test_the_table_is_what_the_server_and_the_host_agent_emit(tmp_path: Path) -> None:
    table = documented()
    frames: list[Frame] = []
    listed: set[str] = set()
    for api in start_api(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server"):
        frames += _server_events(api)
        listed |= _listed_kinds(api)
    for agent in start_agent(tmp_path):
        frames += _agent_events(agent)
        listed |= _listed_kinds(agent)
    assert {f.data["kind"] for f in frames} == set(KINDS)  # every kind was seen at least once
    for f in frames:
        kind, labels = f.data["kind"], f.data["labels"]
        row = table[kind]
        assert f.event in row["ops"], (kind, f.event, row["ops"])
        if row["labels"] == FREE:
            assert labels == {"tier": "gold"} or labels == {}, (kind, labels)
            continue
        assert set(labels) <= set(row["labels"]), (kind, sorted(labels), row["labels"])
        required = {name for name, req in row["labels"].items() if req}
        assert required <= set(labels), (kind, sorted(labels), required)
    assert listed <= {k for k, row in table.items() if row["initial"]}, listed
