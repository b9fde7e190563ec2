"""An agent's ``initial=true`` listing reads only its own host's claims from the store (DESIGN invariant 9:
costs grow with what is used): the scope's implied equality is pushed down to SQL like the filter's own."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api
from tests.watch.stream import open_stream


def test_an_agent_listing_reads_only_its_own_claims(api: Api) -> None:
    assert api.post("/v1/pools", json={"name": "p", "ranges": [[1, 100_000]]}).status_code == 201
    for host in ("h1", "h2", "h3", "h4"):
        r = api.post("/v1/pools/p/claims:bulk", json={"host": host, "claims": [{"key": f"{host}-{i}"}
                                                                                for i in range(500)]})
        assert r.status_code == 200, r.text
    history = api.app.state.tenure.runtime.history
    original = history.listers["claim"]
    rows = [0]

    def counting(conn: Any, pins: Any) -> Any:
        for row in original(conn, pins):
            rows[0] += 1
            yield row

    history.listers["claim"] = counting
    agent = api.token("agent", host="h1")
    s = open_stream(api.client, agent, {"kind": "claim", "initial": "true"})
    listed = 0
    while s.next().event != "bookmark":
        listed += 1
    s.close()
    assert listed == 500
    assert rows[0] == listed, f"the listing read {rows[0]} claims from the store to send the agent its {listed}"
