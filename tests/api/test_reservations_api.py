"""The reservation API over real HTTP: contract, bad input (4xx, nothing changes), project isolation,
the last capacity under parallel requests, topology as JSON and YAML, usage, paths, limits, watch."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from tenure.store import schema
from tests.api.test_bad_input import assert_error
from tests.reservation_support import SQUARE


@pytest.fixture
def net(api: Any) -> Any:
    r = api.request("PUT", "/v1/topology", json=SQUARE)
    assert r.status_code == 200, r.text
    return api


def fingerprint(api: Any) -> tuple[Any, ...]:
    rt = api.app.state.tenure.runtime
    with rt.engine.connect() as conn:
        counts = tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                       for t in (schema.reservations, schema.events, schema.limits))
        doc = conn.execute(select(schema.topology.c.doc)).scalar()
    return counts, doc, rt.revision


def post(api: Any, token: str | None = None, **body: Any) -> Any:
    body.setdefault("kind", "bandwidth")
    body.setdefault("end", "+1h")
    # As JSON text with \u escapes: a lone surrogate is valid JSON, though not encodable UTF-8.
    return api.post("/v1/reservations", content=json.dumps(body), token=token,
                    headers={"content-type": "application/json"})


def test_create_read_modify_cancel(net: Any) -> None:
    r = post(net, src="h1", dst="h2", rate_out="100M", rate_in=50_000_000, protocol="tcp", dst_port=5201,
             labels={"app": "iperf"})
    assert r.status_code == 201, r.text
    res = r.json()
    assert res["state"] == "active" and res["rate_out"] == 100_000_000 and res["rate_in"] == 50_000_000
    assert [p["leg"] for p in res["paths"]] == ["out", "in"]
    assert res["paths"][0]["nodes"] == ["h1", "s1", "s2", "h2"]
    assert res["match"] == {"protocol": "tcp", "dst_port": 5201}
    assert (res["burst"], res["mark"]) == ("cap", 46)  # the defaults: held to its rate, marked EF on the wire
    assert res["start"].endswith("Z") and res["labels"] == {"app": "iperf"}
    assert net.get(f"/v1/reservations/{res['id']}").json() == res
    listed = net.get("/v1/reservations?state=active").json()
    assert [x["id"] for x in listed["reservations"]] == [res["id"]] and listed["next"] is None
    assert net.get("/v1/reservations?state=pending").json()["reservations"] == []
    r = net.request("PATCH", f"/v1/reservations/{res['id']}", json={"end": "+2h", "rate": "200M"})
    assert r.status_code == 200, r.text
    assert r.json()["rate_out"] == 200_000_000 and r.json()["revision"] > res["revision"]
    r = net.delete(f"/v1/reservations/{res['id']}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert net.get(f"/v1/reservations/{res['id']}").json()["state"] == "cancelled"


def test_refusal_is_a_409_naming_link_needed_available_and_when(net: Any) -> None:
    assert post(net, kind="oneway", src="h1", dst="h2", rate="900M").status_code == 201
    before = fingerprint(net)
    r = post(net, kind="oneway", src="h1", dst="h2", rate="200M")
    assert_error(r, 409, "insufficient_capacity")
    err = r.json()["error"]
    assert (err["link"], err["needed"], err["available"]) == ("h1-s1", 200_000_000, 100_000_000)
    assert err["when"].endswith("Z")
    assert fingerprint(net) == before


def test_usage_steps_and_paths(net: Any) -> None:
    post(net, kind="oneway", src="h1", dst="h2", rate="300M", start="+1h", end="+2h")
    steps = net.get("/v1/links/h1-s1/usage").json()["directions"]["ab"]["steps"]
    assert [s["used"] for s in steps] == [300_000_000, 0] and steps[-1]["to"] is None
    r = net.get("/v1/links/h1-s1/usage", params={"from": "now", "to": "+3h"})
    assert [s["used"] for s in r.json()["directions"]["ab"]["steps"]] == [0, 300_000_000, 0]
    assert_error(net.get("/v1/links/nope/usage"), 404, "link_not_found")
    assert_error(net.get("/v1/links/h1-s1/usage", params={"from": "+2h", "to": "+1h"}), 400, "invalid_window")
    r = net.post("/v1/paths", json={"src": "h3", "dst": "h2", "rate": "100M", "end": "+1h", "k": 3})
    assert r.status_code == 200, r.text
    assert [p["hops"] for p in r.json()["paths"]] == [3, 3, 4]


def test_every_links_usage_at_an_instant_or_its_peak_agrees_with_each_links_steps(net: Any) -> None:
    post(net, kind="oneway", src="h1", dst="h2", rate="300M", start="+1h", end="+2h")
    post(net, kind="oneway", src="h2", dst="h1", rate="100M", start="+90m", end="+3h")
    links = [lk["id"] for lk in net.get("/v1/topology").json()["links"]]
    for query in ({}, {"at": "+1h30m"}, {"at": "+2h30m"}, {"from": "now", "to": "+4h"}, {"from": "+2h", "to": "+3h"}):
        r = net.get("/v1/links/usage", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [row["link"] for row in body["links"]] == links and body["revision"] >= 1
        for row in body["links"]:
            steps = net.get(f"/v1/links/{row['link']}/usage").json()["directions"]
            for d in ("ab", "ba"):
                if "at" in body:
                    expected = next((s["used"] for s in steps[d]["steps"] if s["from"] <= body["at"]
                                     and (s["to"] is None or body["at"] < s["to"])), 0)
                else:
                    expected = max([s["used"] for s in steps[d]["steps"] if s["from"] < body["to"]
                                    and (s["to"] is None or body["from"] < s["to"])], default=0)
                assert row[d] == expected, (query, row, d)
    at = {row["link"]: row for row in net.get("/v1/links/usage", params={"at": "+1h30m"}).json()["links"]}
    assert at["h1-s1"]["ab"] == 300_000_000 and at["h1-s1"]["ba"] == 100_000_000
    for bad in ({"at": "+1h", "from": "now", "to": "+2h"}, {"from": "now"}, {"from": "+2h", "to": "+1h"},
                {"at": "yesterday"}):
        r = net.get("/v1/links/usage", params=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_window", "invalid_time"), (bad, r.text)


def test_reservations_are_listed_by_kind_node_and_link(net: Any) -> None:
    a = post(net, kind="oneway", src="h1", dst="h2", rate="10M").json()
    b = post(net, kind="bandwidth", src="h3", dst="h2", rate="10M").json()
    ids = lambda **q: [r["id"] for r in net.get("/v1/reservations", params=q).json()["reservations"]]  # noqa: E731
    assert ids(kind="oneway") == [a["id"]] and ids(kind="bandwidth") == [b["id"]] and ids(kind="mirror") == []
    assert ids(node="h1") == [a["id"]] and ids(node="h2") == [a["id"], b["id"]]
    transit = a["paths"][0]["nodes"][1]
    assert a["id"] in ids(node=transit)
    assert ids(link=a["paths"][0]["links"][0]) == [a["id"]]
    assert ids(link="no-such-link") == [] and ids(node="h1", kind="bandwidth") == []
    assert_error(net.get("/v1/reservations", params={"kind": "teleport"}), 400, "invalid_kind")


def test_topology_in_yaml_and_per_node_and_link(api: Any) -> None:
    text = yaml.safe_dump(SQUARE)
    r = api.request("PUT", "/v1/topology", content=text, headers={"content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    assert len(api.get("/v1/topology").json()["links"]) == len(SQUARE["links"])
    assert api.get("/v1/topology/links/s1-s2").json() == {"id": "s1-s2", "a": "s1", "b": "s2",
                                                           "capacity_ab": 10**10, "capacity_ba": 5 * 10**9}
    r = api.request("PUT", "/v1/topology/nodes/s9", json={"kind": "switch"})
    assert r.status_code == 200, r.text
    r = api.request("PUT", "/v1/topology/links/s9-s1", json={"a": "s9", "b": "s1", "capacity": "40G",
                                                              "headroom": "10%"})
    assert r.status_code == 200, r.text
    assert api.get("/v1/topology/links/s9-s1").json()["headroom"] == "10%"
    assert_error(api.delete("/v1/topology/nodes/s9"), 409, "node_in_use")
    assert api.delete("/v1/topology/links/s9-s1").status_code == 200
    assert api.delete("/v1/topology/nodes/s9").status_code == 200
    assert_error(api.get("/v1/topology/nodes/s9"), 404, "node_not_found")


BAD_TOPOLOGIES = [
    ({"nodes": [{"id": "a", "kind": "host"}], "links": [{"id": "l", "a": "a", "b": "x", "capacity": 1}]},
     "dangling_link"),
    ({"nodes": [{"id": "a", "kind": "host"}, {"id": "a", "kind": "host"}]}, "duplicate_id"),
    ({"nodes": [{"id": "a", "kind": "host"}, {"id": "b", "kind": "host"}],
      "links": [{"id": "l", "a": "a", "b": "b", "capacity": "-1G"}]}, "invalid_topology"),
    ({"nodes": [{"id": "a", "kind": "host"}, {"id": "b", "kind": "host"}],
      "links": [{"id": "l", "a": "a", "b": "b"}]}, "invalid_topology"),
    ({"nodes": [{"id": "a", "kind": "host"}, {"id": "b", "kind": "host"}],
      "links": [{"id": "l", "a": "a", "b": "b", "capacity": 1}, {"id": "l", "a": "b", "b": "a", "capacity": 1}]},
     "duplicate_id"),
    ({"nodes": [{"id": "a", "kind": "router"}]}, "invalid_topology"),
    ({"nodes": [{"id": "a/b", "kind": "host"}]}, "invalid_topology"),
    ({"nodes": "many"}, "invalid_topology"),
    ({"nodes": [], "headroom": "150%"}, "invalid_topology"),
    ({"nodez": []}, "invalid_topology"),
    ([1, 2], "invalid_topology"),
]


@pytest.mark.parametrize(("doc", "code"), BAD_TOPOLOGIES)
def test_a_malformed_topology_is_refused_and_changes_nothing(net: Any, doc: Any, code: str) -> None:
    before = fingerprint(net)
    assert_error(net.request("PUT", "/v1/topology", json=doc), 400, code)
    assert fingerprint(net) == before


def test_malformed_documents_are_400(net: Any) -> None:
    before = fingerprint(net)
    deep = "[" * 100_000 + "]" * 100_000
    assert_error(net.request("PUT", "/v1/topology", content=deep, headers={"content-type": "application/json"}),
                 400)
    assert_error(net.request("PUT", "/v1/topology", content="nodes: []\n1: a\nzz: b\n",
                             headers={"content-type": "application/yaml"}), 400, "invalid_topology")
    r = net.request("PUT", "/v1/topology", content="nodes: [", headers={"content-type": "application/yaml"})
    assert_error(r, 400, "malformed_topology")
    r = net.request("PUT", "/v1/topology", content="{", headers={"content-type": "application/json"})
    assert_error(r, 400, "malformed_topology")
    r = net.request("PUT", "/v1/topology/links/x", json={"a": "h1", "b": "nope", "capacity": 1})
    assert_error(r, 400, "dangling_link")
    assert fingerprint(net) == before


BAD_RESERVATIONS = [
    ({"src": "h1", "dst": "zz", "rate": "1M"}, "unknown_node"),
    ({"src": "h1", "dst": "h1", "rate": "1M"}, "same_endpoints"),
    ({"src": "h1", "dst": "h2", "rate": 0}, "invalid_rate"),
    ({"src": "h1", "dst": "h2", "rate": "-1M"}, "invalid_rate"),
    ({"src": "h1", "dst": "h2", "rate": 1e30}, "invalid_rate"),
    ({"src": "h1", "dst": "h2", "rate": True}, "invalid_request"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "start": "+2h", "end": "+1h"}, "invalid_window"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "start": "2020-01-01T00:00:00Z"}, "start_in_past"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "+5000d"}, "beyond_horizon"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "+1x"}, "invalid_time"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": 1e300}, "invalid_time"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "9999-12-29T23:59:59+14:00"}, "beyond_horizon"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "+99999999999999999999d"}, "invalid_time"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "dscp": 99}, "invalid_request"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "color": "red"}, "invalid_request"),
    ({"kind": "mirror", "src": "h1", "rate": "1M"}, "invalid_endpoint"),
    ({"kind": "steering", "src": "h1", "dst": "h2", "via": ["h3"], "rate": "1M"}, "not_a_middlebox"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "request_id": "x\u0000"}, "invalid_request_id"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "labels": {"a b": "c"}}, "invalid_name"),
    ({"src": "h1", "dst": "h2"}, "invalid_rate"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "start": "0001-01-01T00:30:00+01:00"}, "invalid_time"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "9999-12-31T23:59:59-01:00"}, "invalid_time"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "start": -999999999999}, "invalid_time"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": 999999999999}, "invalid_time"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "+" + "9" * 5000 + "s"}, "invalid_time"),
    ({"src": "h\ud800", "dst": "h2", "rate": "1M"}, "invalid_name"),
    ({"kind": "steering", "src": "h1", "dst": "h2", "via": ["m\ud800"], "rate": "1M"}, "invalid_name"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "burst": "always"}, "invalid_request"),
    ({"kind": "mirror", "src": "h1", "collector": "h2", "rate": "1M", "burst": "borrow"}, "invalid_burst"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "mark": 64}, "invalid_request"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "mark": "ef"}, "invalid_request"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "mark": True}, "invalid_request"),
]


def test_the_mark_defaults_by_kind_and_may_be_chosen(net: Any) -> None:
    mirror = post(net, kind="mirror", src="h1", collector="h2", rate="1M")
    assert mirror.status_code == 201, mirror.text
    assert mirror.json()["mark"] == 8  # CS1: copies never push the originals aside
    chosen = post(net, kind="oneway", src="h1", dst="h2", rate="1M", mark=34)  # AF41
    assert chosen.status_code == 201 and chosen.json()["mark"] == 34


@pytest.mark.parametrize(("body", "code"), BAD_RESERVATIONS)
def test_bad_reservations_are_4xx_and_change_nothing(net: Any, body: dict[str, Any], code: str) -> None:
    before = fingerprint(net)
    assert_error(post(net, **body), 400, code)
    assert fingerprint(net) == before


def test_bad_modifications_and_lookups(net: Any) -> None:
    rid = post(net, src="h1", dst="h2", rate="1M").json()["id"]
    before = fingerprint(net)
    for body, code in (({}, "invalid_request"), ({"src": "h3"}, "invalid_request"),
                       ({"start": "+1h"}, "start_immutable"), ({"end": "now"}, "invalid_window"),
                       ({"rate": "0"}, "invalid_rate"), ({"rate": "1M", "rate_out": "2M"}, "invalid_rate"),
                       ({"burst": "sometimes"}, "invalid_request")):
        assert_error(net.request("PATCH", f"/v1/reservations/{rid}", json=body), 400, code)
    assert_error(net.request("PATCH", "/v1/reservations/r-nope", json={"end": "+2h"}), 404, "reservation_not_found")
    assert_error(net.delete("/v1/reservations/r-nope"), 404, "reservation_not_found")
    assert_error(net.get("/v1/reservations?state=gone"), 400, "invalid_state")
    assert_error(net.get("/v1/reservations?after=r-nope"), 400, "invalid_cursor")
    assert_error(net.get("/v1/reservations?after=" + rid), 400, "invalid_cursor")  # ids are not cursors
    assert fingerprint(net) == before


def test_members_see_modify_and_cancel_only_their_projects_reservations(net: Any) -> None:
    blue, red = net.token("member", project="blue"), net.token("member", project="red")
    agent = net.token("agent", host="h2")
    b = post(net, blue, src="h1", dst="h2", rate="10M")
    assert b.status_code == 201 and b.json()["project"] == "blue" and b.json()["owner"]
    r = post(net, red, src="h3", dst="c1", rate="10M").json()
    assert_error(post(net, red, src="h1", dst="h2", rate="10M", project="blue"), 403)
    bid = b.json()["id"]
    before = fingerprint(net)
    assert_error(net.get(f"/v1/reservations/{bid}", token=red), 404, "reservation_not_found")
    assert_error(net.request("PATCH", f"/v1/reservations/{bid}", json={"end": "+3h"}, token=red), 404)
    assert_error(net.delete(f"/v1/reservations/{bid}", token=red), 404)
    assert_error(net.get("/v1/reservations?project=blue", token=red), 403)
    assert fingerprint(net) == before
    assert [x["id"] for x in net.get("/v1/reservations", token=red).json()["reservations"]] == [r["id"]]
    assert [x["id"] for x in net.get("/v1/reservations", token=agent).json()["reservations"]] == [bid]
    assert_error(post(net, agent, src="h1", dst="h2", rate="10M"), 403)
    assert_error(net.post("/v1/paths", json={"src": "h1", "dst": "h2", "rate": "1M", "end": "+1h"}, token=agent), 403)
    assert_error(net.request("PATCH", f"/v1/reservations/{bid}", json={"rate": "900M"}, token=agent), 403)
    assert_error(net.delete(f"/v1/reservations/{bid}", token=agent), 403)

    assert net.request("PATCH", f"/v1/reservations/{bid}", json={"end": "+3h"}, token=blue).status_code == 200
    assert net.delete(f"/v1/reservations/{bid}", token=blue).status_code == 200
    assert_error(net.request("PUT", "/v1/topology", json=SQUARE, token=blue), 403)
    assert_error(net.request("PUT", "/v1/limits/blue", json={"max": "1G"}, token=blue), 403)


def test_watch_shows_a_member_only_its_projects_reservations(net: Any) -> None:
    blue, red = net.token("member", project="blue"), net.token("member", project="red")
    post(net, red, src="h3", dst="c1", rate="10M")
    mine = post(net, blue, src="h1", dst="h2", rate="10M").json()
    with net.client.stream("GET", "/v1/watch", params={"kind": "reservation", "initial": "true"},
                           headers=net.headers(blue)) as stream:
        got = []
        for line in stream.iter_lines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if data["type"] != "bookmark":
                    got.append(data["id"])
                elif data.get("initial_end") or got:
                    break
    assert got == [mine["id"]]


def test_parallel_requests_for_the_last_capacity_exactly_one_wins(net: Any) -> None:
    n = 24
    barrier = threading.Barrier(n)

    def one(_: int) -> int:
        barrier.wait()
        return post(net, kind="oneway", src="h1", dst="h2", rate="600M").status_code

    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(one, range(n)))
    assert sorted(codes) == [201] + [409] * (n - 1)


def test_a_retried_post_never_books_twice(net: Any) -> None:
    body = {"kind": "oneway", "src": "h1", "dst": "h2", "rate": "600M", "request_id": "retry-me"}
    first, again = post(net, **body), post(net, **body)
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    assert_error(post(net, **{**body, "rate": "1M"}), 409, "request_id_conflict")
    assert len(net.get("/v1/reservations").json()["reservations"]) == 1


def test_limits_api(net: Any) -> None:
    blue = net.token("member", project="blue")
    r = net.request("PUT", "/v1/limits/blue", json={"share": "50%"})
    assert r.status_code == 200 and r.json()["share"] == "50%"
    assert_error(post(net, blue, kind="oneway", src="h1", dst="h2", rate="600M"), 409, "limit_exceeded")
    assert net.get("/v1/limits", token=blue).json()["limits"][0]["project"] == "blue"
    assert net.get("/v1/limits", token=net.token("member", project="red")).json()["limits"] == []
    for body in ({}, {"max": "1G", "share": "10%"}, {"share": "100%"}, {"max": "-1"}, {"share": "x"}):
        assert_error(net.request("PUT", "/v1/limits/blue", json=body), 400)
    assert net.delete("/v1/limits/blue").status_code == 200
    assert_error(net.delete("/v1/limits/blue"), 404, "limit_not_found")
    assert post(net, blue, kind="oneway", src="h1", dst="h2", rate="600M").status_code == 201


def test_a_node_or_link_body_naming_another_id_is_refused(net: Any) -> None:
    before = fingerprint(net)
    assert_error(net.request("PUT", "/v1/topology/nodes/x", json={"id": "y", "kind": "host"}), 400, "id_mismatch")
    assert_error(net.request("PUT", "/v1/topology/links/x", json={"id": "y", "a": "h1", "b": "s1", "capacity": 1}),
                 400, "id_mismatch")
    assert fingerprint(net) == before


def test_metrics_count_reservations_by_state_and_outcome(net: Any) -> None:
    from tests.api.test_health_metrics import _samples

    post(net, kind="oneway", src="h1", dst="h2", rate="900M", request_id="m")
    post(net, kind="oneway", src="h1", dst="h2", rate="900M", request_id="m")
    post(net, kind="oneway", src="h1", dst="h2", rate="900M", start="+1h", end="+2h")
    post(net, kind="oneway", src="h1", dst="h2", rate="900M")
    post(net, kind="oneway", src="h1", dst="h1", rate="900M")
    s = _samples(net.get("/metrics").text)

    def sample(name: str, **labels: str) -> float:
        return s[(name, tuple(sorted(labels.items())))]

    assert sample("tenure_reservations", state="active") == 1 and sample("tenure_reservations", state="pending") == 1
    requests = "tenure_reservation_requests_total"
    assert sample(requests, outcome="created") == 2 and sample(requests, outcome="existing") == 1
    assert sample(requests, outcome="insufficient_capacity") == 1 and sample(requests, outcome="invalid") == 1


def test_pages_follow_the_next_cursor(net: Any) -> None:
    ids = [post(net, kind="oneway", src="h1", dst="h2", rate="1M").json()["id"] for _ in range(5)]
    seen, after = [], None
    while True:
        page = net.get("/v1/reservations", params={"limit": 2, **({"after": after} if after else {})}).json()
        seen += [r["id"] for r in page["reservations"]]
        after = page["next"]
        if after is None:
            break
    assert seen == ids


def test_who_may_reserve_is_decided_before_the_request_is_judged(net: Any) -> None:
    """An agent may not reserve, nor a member for another project: 403, whatever else is wrong with the request."""
    agent, blue = net.token("agent", host="h1"), net.token("member", project="blue")
    same_ends = {"kind": "bandwidth", "src": "h1", "dst": "h1", "rate": "1M", "end": "+1h"}  # 400 for an admin
    assert post(net, **same_ends).status_code == 400
    r = post(net, agent, **same_ends)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = post(net, blue, project="red", **same_ends)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_heartbeats_carry_what_monitors_saw_on_the_wire(net: Any) -> None:
    """An agent's heartbeat carries its monitors' observations; the reservation's wire shows them per leg, only an
    agent's own host's are taken, bad ones change nothing, and another project sees none of it."""
    for host in ("h1", "h2"):
        assert net.post("/v1/agents", json={"host": host, "kinds": ["instance"], "version": "1"}).status_code in (
            200, 201)
    h1, h2 = net.token("agent", host="h1"), net.token("agent", host="h2")
    blue, red = net.token("member", project="blue"), net.token("member", project="red")
    rid = post(net, blue, kind="oneway", src="h1", dst="h2", rate="10M").json()["id"]
    [leg] = net.get(f"/v1/reservations/{rid}/wire", token=blue).json()["legs"]
    assert (leg["leg"], leg["host"], leg["observed"], leg["observed_at"]) == ("out", "h1", {}, None)
    iid = leg["instance"]
    seen = {"classid": "1:5", "rate": "10000000", "sent_bytes": "123456", "dropped": "0"}
    obs = {"instance": iid, "at": "2026-12-05T10:00:00.250+01:00", "values": seen}
    r = net.post("/v1/agents/h2/heartbeat", json={"observations": [obs]}, token=h2)  # not h2's instance
    assert r.status_code == 200, r.text
    assert net.get(f"/v1/instances/{iid}/observed").json()["observed"] == {}
    assert net.post("/v1/agents/h1/heartbeat", json={"observations": [obs]}, token=h1).status_code == 200
    [leg] = net.get(f"/v1/reservations/{rid}/wire", token=blue).json()["legs"]
    assert (leg["observed"], leg["observed_at"]) == (seen, "2026-12-05T09:00:00.250000Z")
    assert net.get(f"/v1/instances/{iid}/observed").json()["observed"] == seen
    assert_error(net.get(f"/v1/reservations/{rid}/wire", token=red), 404, "reservation_not_found")
    assert [x["host"] for x in net.get(f"/v1/reservations/{rid}/wire", token=h1).json()["legs"]] == ["h1"]
    assert net.get(f"/v1/reservations/{rid}/wire", token=h2).json()["legs"] == []  # its end, not its leg

    before = fingerprint(net)
    for bad in ({**obs, "values": {"Bad-Key": "1"}}, {**obs, "values": {"k": "x" * 257}},
                {**obs, "values": {f"k{i}": "1" for i in range(33)}}, {**obs, "at": "2026-12-05T10:00:00"},
                {**obs, "at": "0001-01-01T00:00:00+14:00"}, {**obs, "at": 1796000000}, {**obs, "instance": ""},
                {**obs, "extra": 1}):
        r = net.post("/v1/agents/h1/heartbeat", json={"observations": [{**bad, "values": {**bad["values"]}}]},
                     token=h1)
        assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_observation", "invalid_request"), (
            bad, r.text)
    assert_error(net.post("/v1/agents/h1/heartbeat", json={"observations": [obs] * 2001}, token=h1), 400)
    assert fingerprint(net) == before
    assert net.get(f"/v1/instances/{iid}/observed").json()["observed"] == seen


def test_every_usage_read_goes_to_the_leader_on_replicas() -> None:
    # Usage is read by a writer command (one consistent view of the ledgers), which only the leader can run: a
    # follower forwards these reads (api/replicas.py), the console's colours included.
    from tenure.api.replicas import LEADER_READS

    assert LEADER_READS.fullmatch("/v1/links/usage") and LEADER_READS.fullmatch("/v1/links/h1-s1/usage")
    assert not LEADER_READS.fullmatch("/v1/links/a/b/usage")
