"""Claims in pools restricted to projects belong to one of those projects, so the watch and GET agree on who
sees them: a claim made on behalf of a host alone is refused there (its agent may not use the pool),
and an agent never sees a restricted pool's claims, live, replayed or listed."""

from __future__ import annotations

from tests.conftest import Api
from tests.watch.stream import open_stream


def test_a_host_claim_in_a_restricted_pool_needs_one_of_its_projects(api: Api) -> None:
    assert api.post("/v1/pools", json={"name": "red-only", "ranges": [[1, 100]], "projects": ["red"]}).status_code == 201
    before = api.app.state.tenure.runtime.revision
    r = api.post("/v1/pools/red-only/claims", json={"key": "k", "host": "h1"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "project_required"
    r = api.post("/v1/pools/red-only/claims:bulk", json={"claims": [{"key": "k"}], "host": "h1"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "project_required"
    assert api.app.state.tenure.runtime.revision == before  # nothing changed
    assert api.post("/v1/pools/red-only/claims", json={"key": "k", "project": "red", "host": "h1"}).status_code == 201


def test_an_agent_sees_no_claim_of_a_restricted_pool(api: Api) -> None:
    assert api.post("/v1/pools", json={"name": "red-only", "ranges": [[1, 100]], "projects": ["red"]}).status_code == 201
    assert api.post("/v1/pools", json={"name": "open", "ranges": [[1, 9]]}).status_code == 201
    agent = api.token("agent", host="h1")
    live = open_stream(api.client, agent, {"kind": "claim"})
    assert live.next().event == "bookmark"
    assert api.post("/v1/pools/red-only/claims", json={"key": "k", "project": "red", "host": "h1"}).status_code == 201
    assert api.post("/v1/pools/open/claims", json={"key": "visible", "host": "h1"}).status_code == 201
    assert api.get("/v1/pools/red-only/claims/k", token=agent).status_code == 403
    assert [f.data["id"] for f in live.events(1)] == ["open/visible"]
    replay = open_stream(api.client, agent, {"kind": "claim", "since": "0"})
    assert [f.data["id"] for f in replay.events(1)] == ["open/visible"]
    listing = open_stream(api.client, agent, {"kind": "claim", "initial": "true"})
    listed = []
    while (f := listing.next()).event != "bookmark":
        listed.append(f.data["id"])
    assert listed == ["open/visible"]
    for s in (live, replay, listing):
        s.close()
