"""Tokens, roles and scopes: 401 without a valid token, 403 outside its scope, isolation of projects."""

from __future__ import annotations

from sqlalchemy import select

from tenure.store import schema


def test_missing_or_invalid_token_is_401(api):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        r = api.client.get("/v1/pools", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] in {"missing_token", "invalid_token"}
        assert r.headers["www-authenticate"] == "Bearer"


def test_tokens_are_stored_hashed_and_the_file_is_private(api):
    secret = api.token("member", project="blue")
    rt = api.app.state.tenure.runtime
    with rt.engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(select(schema.tokens))]
    assert all(secret not in str(row) and api.admin_token not in str(row) for row in stored)
    assert (api.data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    events = [r.body for r in rt.engine.connect().execute(select(schema.events.c.body))]
    assert all(secret not in b and api.admin_token not in b for b in events)


def test_revoked_token_is_refused(api):
    secret = api.token("member", project="blue")
    assert api.get("/v1/whoami", token=secret).json()["project"] == "blue"
    token_id = api.get("/v1/whoami", token=secret).json()["token_id"]
    assert api.delete(f"/v1/tokens/{token_id}").status_code == 200
    assert api.get("/v1/whoami", token=secret).status_code == 401
    assert api.delete(f"/v1/tokens/{token_id}").status_code == 404
    listed = [t["id"] for t in api.get("/v1/tokens").json()["tokens"]]
    assert token_id not in listed
    assert token_id in [t["id"] for t in api.get("/v1/tokens", params={"revoked": "true"}).json()["tokens"]]


def test_token_scopes_are_validated(api):
    for body in (
        {"role": "member"},
        {"role": "member", "project": "a", "host": "h"},
        {"role": "agent"},
        {"role": "agent", "host": "h", "project": "p"},
        {"role": "admin", "project": "p"},
        {"role": "root"},
        {"role": "member", "project": "bad/name"},
        {"role": "admin", "description": "nul\u0000inside"},
    ):
        r = api.post("/v1/tokens", json=body)
        assert r.status_code == 400, (body, r.text)


def test_non_admins_cannot_manage_pools_tokens_or_audits(api):
    api.post("/v1/pools", json={"name": "open", "ranges": [[1, 10]]})
    for secret in (api.token("member", project="blue"), api.token("agent", host="h1")):
        assert api.post("/v1/pools", json={"name": "x", "ranges": [[1, 2]]}, token=secret).status_code == 403
        assert api.delete("/v1/pools/open", token=secret).status_code == 403
        assert api.post("/v1/tokens", json={"role": "admin"}, token=secret).status_code == 403
        assert api.get("/v1/tokens", token=secret).status_code == 403
        assert api.post("/v1/pools/open/audit:begin", token=secret).status_code == 403


def test_member_of_a_cannot_read_or_release_b_claims_in_restricted_pool(api):
    assert api.post("/v1/pools", json={"name": "lab", "ranges": [[1, 100]], "projects": ["a", "b"]}).status_code == 201
    assert api.post("/v1/pools", json={"name": "only-b", "ranges": [[1, 100]], "projects": ["b"]}).status_code == 201
    a, b, c = (api.token("member", project=p) for p in "abc")
    b_claim = api.post("/v1/pools/lab/claims", json={"key": "net-b"}, token=b)
    assert b_claim.status_code == 201 and b_claim.json()["project"] == "b"
    a_claim = api.post("/v1/pools/lab/claims", json={"key": "net-a"}, token=a)
    assert a_claim.json()["project"] == "a"

    # A cannot read, look up, list, release or take over B's claim.
    assert api.get("/v1/pools/lab/claims/net-b", token=a).status_code == 403
    assert api.get(f"/v1/pools/lab/values/{b_claim.json()['value']}", token=a).status_code == 404
    assert [x["key"] for x in api.get("/v1/pools/lab/claims", token=a).json()["claims"]] == ["net-a"]
    assert api.delete("/v1/pools/lab/claims/net-b", token=a).status_code == 403
    r = api.post("/v1/pools/lab/claims", json={"key": "net-b"}, token=a)
    assert r.status_code == 409 and "value" not in r.json()["error"]
    assert api.get("/v1/pools/lab/claims/net-b", token=b).status_code == 200

    # A may not claim on behalf of B, and a pool closed to C refuses C.
    assert api.post("/v1/pools/lab/claims", json={"key": "x", "project": "b"}, token=a).status_code == 403
    assert api.post("/v1/pools/lab/claims", json={"key": "x"}, token=c).status_code == 403
    assert api.get("/v1/pools/lab", token=c).status_code == 403
    assert [p["name"] for p in api.get("/v1/pools", token=a).json()["pools"]] == ["lab"]
    assert api.get("/v1/pools/only-b", token=a).status_code == 403

    # The admin sees everything.
    keys = sorted(x["key"] for x in api.get("/v1/pools/lab/claims").json()["claims"])
    assert keys == ["net-a", "net-b"]


def test_agent_claims_are_scoped_to_its_host(api):
    api.post("/v1/pools", json={"name": "ids", "ranges": [[1, 100]]})
    h1, h2 = api.token("agent", host="h1"), api.token("agent", host="h2")
    r = api.post("/v1/pools/ids/claims", json={"key": "q"}, token=h1)
    assert r.status_code == 201 and r.json()["host"] == "h1"
    assert api.get("/v1/pools/ids/claims/q", token=h2).status_code == 403
    assert api.delete("/v1/pools/ids/claims/q", token=h2).status_code == 403
    assert api.get("/v1/pools/ids/claims", token=h2).json()["claims"] == []
    assert api.delete("/v1/pools/ids/claims/q", token=h1).status_code == 200


def test_bulk_exhaustion_reports_the_pool_as_it_stays(api):
    api.post("/v1/pools", json={"name": "small", "ranges": [[1, 10]]})
    api.post("/v1/pools/small/claims", json={"key": "held"})
    r = api.post("/v1/pools/small/claims:bulk", json={"claims": [{"key": f"k{i}"} for i in range(20)]})
    err = r.json()["error"]
    assert r.status_code == 409 and err["code"] == "pool_exhausted"
    assert err["used"] == 1 and err["size"] == 10 and err["requested"] == 20
