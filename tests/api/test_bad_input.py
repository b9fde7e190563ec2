"""Bad input gets a 4xx with {"error": {"code", "message"}} and changes nothing in the store."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tenure.store import schema


def store_fingerprint(api):
    rt = api.app.state.tenure.runtime
    with rt.engine.connect() as conn:
        counts = tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                       for t in (schema.pools, schema.claims, schema.events))
    return counts, rt.revision


@pytest.fixture
def pool_api(api):
    assert api.post("/v1/pools", json={"name": "p", "ranges": [[10, 20]], "reserved": [[10, 10]]}).status_code == 201
    assert api.post("/v1/pools/p/claims", json={"key": "held"}).status_code == 201
    return api


def assert_error(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    if code:
        assert err["code"] == code, err


BAD_POOLS = [
    ({"name": "x", "ranges": [[5, 1]]}, "invalid_range"),
    ({"name": "x", "ranges": [[1, 10], [5, 20]]}, "overlapping_ranges"),
    ({"name": "x", "ranges": [[1, 10]], "reserved": [[9, 12]]}, "invalid_reserved"),
    ({"name": "x", "ranges": [[1, 10]], "reserved": [[2, 4], [4, 5]]}, "overlapping_ranges"),
    ({"name": "x", "ranges": [[-1, 10]]}, "invalid_range"),
    ({"name": "x", "ranges": [[0, 2**32]]}, "invalid_range"),
    ({"name": "x", "ranges": []}, "invalid_range"),
    ({"name": "x", "ranges": [[1]]}, "invalid_request"),
    ({"name": "x", "ranges": [["1", "2"]]}, "invalid_request"),
    ({"name": "x", "ranges": [[1, 2]], "strategy": "best"}, "invalid_request"),
    ({"name": "", "ranges": [[1, 2]]}, "invalid_name"),
    ({"name": "a/b", "ranges": [[1, 2]]}, "invalid_name"),
    ({"name": "p", "ranges": [[1, 2]]}, "pool_exists"),
    ({"name": "x", "ranges": [[1, 2]], "surprise": 1}, "invalid_request"),
    ({"ranges": [[1, 2]]}, "invalid_request"),
]


@pytest.mark.parametrize(("body", "code"), BAD_POOLS)
def test_bad_pool_definitions_are_refused(pool_api, body, code):
    before = store_fingerprint(pool_api)
    r = pool_api.post("/v1/pools", json=body)
    assert_error(r, 409 if code == "pool_exists" else 400, code)
    assert store_fingerprint(pool_api) == before


BAD_CLAIMS = [
    ({"key": ""}, 400, "invalid_key"),
    ({"key": "k" * 257}, 400, "invalid_key"),
    ({"key": "nul\x00"}, 400, "invalid_key"),
    (b'{"key": "\\ud800"}', 400, "invalid_key"),  # a lone surrogate, as JSON can escape it
    ({"key": 5}, 400, "invalid_request"),
    ({"key": "k", "value": 9}, 400, "value_out_of_range"),
    ({"key": "k", "value": 21}, 400, "value_out_of_range"),
    ({"key": "k", "value": 2**40}, 400, "value_out_of_range"),
    ({"key": "k", "value": -1}, 400, "value_out_of_range"),
    ({"key": "k", "value": "12"}, 400, "invalid_request"),
    ({"key": "k", "value": True}, 400, "invalid_request"),
    ({"key": "k", "value": 1.5}, 400, "invalid_request"),
    ({"key": "k", "value": 10}, 409, "value_reserved"),
    ({}, 400, "invalid_request"),
    ({"key": "k", "extra": 1}, 400, "invalid_request"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_CLAIMS)
def test_bad_claims_are_refused(pool_api, body, status, code):
    before = store_fingerprint(pool_api)
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    assert_error(pool_api.post("/v1/pools/p/claims", **kw), status, code)
    assert store_fingerprint(pool_api) == before


def test_unknown_pool_is_404_everywhere(pool_api):
    before = store_fingerprint(pool_api)
    for method, path, body in [
        ("GET", "/v1/pools/nope", None),
        ("DELETE", "/v1/pools/nope", None),
        ("POST", "/v1/pools/nope/claims", {"key": "k"}),
        ("GET", "/v1/pools/nope/claims/k", None),
        ("DELETE", "/v1/pools/nope/claims/k", None),
        ("GET", "/v1/pools/nope/claims", None),
        ("POST", "/v1/pools/nope/claims:bulk", {"claims": [{"key": "k"}]}),
        ("POST", "/v1/pools/nope/audit:begin", None),
        ("POST", "/v1/pools/nope/audit:end", None),
    ]:
        assert_error(pool_api.request(method, path, json=body), 404, "pool_not_found")
    assert store_fingerprint(pool_api) == before


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b'{"key": ', {"content-type": "application/json"}, 400, "malformed_json"),
        (b"not json at all", {"content-type": "application/json"}, 400, "malformed_json"),
        (b"key=value", {"content-type": "application/x-www-form-urlencoded"}, 400, None),
        (b"[1, 2]", {"content-type": "application/json"}, 400, "invalid_request"),
        (b'{"key": "' + b"x" * (1024 * 1024) + b'"}', {"content-type": "application/json"}, 413, "too_large"),
    ],
)
def test_malformed_or_oversized_bodies(pool_api, content, headers, status, code):
    before = store_fingerprint(pool_api)
    assert_error(pool_api.post("/v1/pools/p/claims", content=content, headers=headers), status, code)
    assert store_fingerprint(pool_api) == before


def test_oversized_chunked_body_is_refused(pool_api):
    before = store_fingerprint(pool_api)

    def chunks():
        yield b'{"claims": ['
        for i in range(60_000):
            yield b'{"key": "k%06d"},' % i
        yield b'{"key": "last"}]}'

    r = pool_api.post("/v1/pools/p/claims:bulk", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413)
    assert store_fingerprint(pool_api) == before


def test_bad_bulk_claims(pool_api):
    before = store_fingerprint(pool_api)
    assert_error(pool_api.post("/v1/pools/p/claims:bulk", json={"claims": []}), 400)
    r = pool_api.post("/v1/pools/p/claims:bulk", json={"claims": [{"key": "a"}, {"key": "a"}]})
    assert_error(r, 400, "duplicate_key")
    r = pool_api.post("/v1/pools/p/claims:bulk", json={"claims": [{"key": f"k{i}"} for i in range(11)]})
    assert_error(r, 409, "pool_exhausted")
    assert store_fingerprint(pool_api) == before


def test_bad_list_parameters(pool_api):
    assert_error(pool_api.get("/v1/pools/p/claims", params={"limit": 0}), 400)
    assert_error(pool_api.get("/v1/pools/p/claims", params={"limit": 5000}), 400)
    assert_error(pool_api.get("/v1/pools/p/claims", params={"limit": "many"}), 400)
    assert_error(pool_api.get("/v1/pools/p/values/-3"), 400)
    assert_error(pool_api.get("/v1/pools/p/values/abc"), 400)


def test_unknown_route_and_method_are_json_errors(pool_api):
    assert_error(pool_api.get("/v1/nothing-here"), 404)
    assert_error(pool_api.request("PUT", "/v1/pools/p"), 405)
