"""The HTTP contract of pools, claims and audit, on both store backends."""

from __future__ import annotations

from urllib.parse import quote

import pytest


def make_pool(api, name="vlan", ranges=((1, 10),), **extra):
    r = api.post("/v1/pools", json={"name": name, "ranges": [list(x) for x in ranges], **extra})
    assert r.status_code == 201, r.text
    return r.json()


def claim(api, pool, key, **extra):
    return api.post(f"/v1/pools/{pool}/claims", json={"key": key, **extra})


def test_pool_shows_size_and_used(api):
    body = make_pool(api, ranges=[(1, 100), (200, 209)], reserved=[[1, 4]], strategy="lowest")
    assert body["size"] == 106 and body["used"] == 0 and body["revision"] >= 1
    claim(api, "vlan", "a")
    got = api.get("/v1/pools/vlan").json()
    assert got["used"] == 1 and got["size"] == 106
    names = [p["name"] for p in api.get("/v1/pools").json()["pools"]]
    assert names == ["vlan"]


def test_claim_is_idempotent_201_then_200(api):
    make_pool(api)
    first = claim(api, "vlan", "vrf:blue")
    assert first.status_code == 201
    again = claim(api, "vlan", "vrf:blue")
    assert again.status_code == 200
    assert again.json()["value"] == first.json()["value"]
    assert again.json()["revision"] == first.json()["revision"]
    assert set(first.json()) >= {"pool", "key", "value", "revision"}


def test_revisions_strictly_increase(api):
    make_pool(api)
    revs = [claim(api, "vlan", f"k{i}").json()["revision"] for i in range(5)]
    assert revs == sorted(set(revs))


def test_pinned_value_is_honoured_or_refused(api):
    make_pool(api, reserved=[[5, 5]])
    assert claim(api, "vlan", "a", value=7).json()["value"] == 7
    r = claim(api, "vlan", "b", value=7)
    assert r.status_code == 409 and r.json()["error"]["code"] == "value_taken"
    r = claim(api, "vlan", "b", value=5)
    assert r.status_code == 409 and r.json()["error"]["code"] == "value_reserved"
    r = claim(api, "vlan", "a", value=8)
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_holds_other_value"


def test_exhaustion_names_pool_size_and_used(api):
    make_pool(api, ranges=[(1, 2)])
    claim(api, "vlan", "a"), claim(api, "vlan", "b")
    r = claim(api, "vlan", "c")
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "pool_exhausted" and err["pool"] == "vlan" and err["size"] == 2 and err["used"] == 2


@pytest.mark.parametrize("key", ["route:blue/10.0.0.0/24", "a%2Fb", "sp ace?#", "ünï/cødé🙂", "x" * 256, "/lead"])
def test_keys_round_trip_percent_encoded(api, key):
    make_pool(api)
    value = claim(api, "vlan", key).json()["value"]
    path = f"/v1/pools/vlan/claims/{quote(key, safe='')}"
    got = api.get(path)
    assert got.status_code == 200 and got.json()["key"] == key and got.json()["value"] == value
    assert api.delete(path).status_code == 200
    assert api.get(path).status_code == 404


def test_release_frees_the_value(api):
    make_pool(api, ranges=[(1, 1)])
    claim(api, "vlan", "a")
    r = api.delete("/v1/pools/vlan/claims/a")
    assert r.status_code == 200 and r.json()["value"] == 1
    assert claim(api, "vlan", "b").json()["value"] == 1
    assert api.delete("/v1/pools/vlan/claims/a").status_code == 404


def test_lookup_by_value(api):
    make_pool(api)
    claim(api, "vlan", "a", value=3)
    r = api.get("/v1/pools/vlan/values/3")
    assert r.status_code == 200 and r.json()["key"] == "a"
    assert api.get("/v1/pools/vlan/values/4").status_code == 404


def test_list_paginates_in_key_order(api):
    make_pool(api, ranges=[(1, 100)])
    keys = [f"k{i:02d}" for i in range(25)]
    r = api.post("/v1/pools/vlan/claims:bulk", json={"claims": [{"key": k} for k in keys]})
    assert r.status_code == 200, r.text
    seen, after = [], None
    while True:
        params = {"limit": 10} | ({"after": after} if after else {})
        page = api.get("/v1/pools/vlan/claims", params=params).json()
        seen += [c["key"] for c in page["claims"]]
        after = page["next"]
        if after is None:
            break
    assert seen == keys


def test_bulk_claim_is_all_or_nothing(api):
    make_pool(api, ranges=[(1, 3)])
    claim(api, "vlan", "held", value=2)
    before = api.get("/v1/pools/vlan").json()
    r = api.post("/v1/pools/vlan/claims:bulk", json={"claims": [{"key": "x"}, {"key": "y", "value": 2}]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "value_taken"
    # Refused after some items were taken: z pins 3, x picks 1, w finds the pool exhausted.
    r = api.post("/v1/pools/vlan/claims:bulk", json={"claims": [{"key": "x"}, {"key": "z", "value": 3}, {"key": "w"}]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "pool_exhausted"
    after = api.get("/v1/pools/vlan").json()
    assert after["used"] == before["used"] == 1
    for key in ("x", "z", "w"):
        assert api.get(f"/v1/pools/vlan/claims/{key}").status_code == 404
    ok = api.post("/v1/pools/vlan/claims:bulk", json={"claims": [{"key": "x"}, {"key": "held"}]})
    body = ok.json()
    assert [c["created"] for c in body["claims"]] == [True, False]
    assert body["claims"][1]["value"] == 2


@pytest.mark.parametrize("strategy", ["lowest", "next", "random"])
def test_a_bulk_claim_that_can_be_granted_is_whatever_the_strategy_picks(api, strategy):
    """A pick never takes a value a later item of the same bulk pins (found by CI: a random pick of 30 in
    [1, 50] made the bulk [a, b, pinned 30] fail about once in 25). Pins go first; answers keep request order."""
    for n in range(12):  # a random pool picks 1 half the time; one pass in 4,096 if picks went first
        make_pool(api, name=f"p{n}", ranges=[(1, 2)], strategy=strategy)
        r = api.post(f"/v1/pools/p{n}/claims:bulk", json={"claims": [{"key": "a"}, {"key": "b", "value": 1}]})
        assert r.status_code == 200, r.json()
        assert [(c["key"], c["value"], c["created"]) for c in r.json()["claims"]] == [("a", 2, True), ("b", 1, True)]
    # Still all or nothing, and refused when it cannot be granted: three keys for two values.
    make_pool(api, name="full", ranges=[(1, 2)], strategy=strategy)
    r = api.post("/v1/pools/full/claims:bulk", json={"claims": [{"key": "a"}, {"key": "b", "value": 1}, {"key": "c"}]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "pool_exhausted"
    assert api.get("/v1/pools/full").json()["used"] == 0


def test_audit_releases_only_what_was_not_reclaimed(api):
    make_pool(api)
    for k in ("keep", "stale", "also-stale"):
        claim(api, "vlan", k)
    assert api.post("/v1/pools/vlan/audit:begin").json()["auditing"] is True
    assert api.post("/v1/pools/vlan/audit:begin").status_code == 409
    claim(api, "vlan", "keep")
    claim(api, "vlan", "new-during-audit")
    r = api.post("/v1/pools/vlan/audit:end")
    assert r.status_code == 200
    assert sorted(c["key"] for c in r.json()["released"]) == ["also-stale", "stale"]
    left = sorted(c["key"] for c in api.get("/v1/pools/vlan/claims").json()["claims"])
    assert left == ["keep", "new-during-audit"]
    assert api.post("/v1/pools/vlan/audit:end").json()["error"]["code"] == "no_audit"


def test_delete_pool_refused_while_claimed_unless_forced(api):
    make_pool(api)
    claim(api, "vlan", "a")
    r = api.delete("/v1/pools/vlan")
    assert r.status_code == 409 and r.json()["error"]["code"] == "pool_in_use"
    assert api.delete("/v1/pools/vlan", params={"force": "true"}).status_code == 200
    assert api.get("/v1/pools/vlan").status_code == 404
    make_pool(api)  # the name is free again, and the old claims are gone
    assert claim(api, "vlan", "a").status_code == 201


def test_events_are_written_with_each_change(api):
    from sqlalchemy import select

    from tenure.store import schema

    make_pool(api)
    rev = claim(api, "vlan", "a").json()["revision"]
    api.delete("/v1/pools/vlan/claims/a")
    rt = api.app.state.tenure.runtime
    with rt.engine.connect() as conn:
        rows = conn.execute(select(schema.events).order_by(schema.events.c.revision)).fetchall()
    kinds = [(r.kind, r.op, r.object_id) for r in rows if r.kind != "token"]
    assert kinds == [("pool", "created", "vlan"), ("claim", "created", "vlan/a"), ("claim", "deleted", "vlan/a")]
    created = next(r for r in rows if r.kind == "claim" and r.op == "created")
    assert created.revision == rev
    assert [r.revision for r in rows] == list(range(1, len(rows) + 1))
