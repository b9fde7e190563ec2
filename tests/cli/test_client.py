"""The Python client: every route through real HTTP, keys that look like URL syntax, errors, and where it connects."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenure.client import (
    TenureAPIError,
    TenureClient,
    TenureConfigError,
    TenureConnectionError,
    locate,
    segment,
)
from tenure.config import write_server_info
from tests.cli.conftest import base_url

AWKWARD_KEYS = [
    "a/b",
    "a/../b",
    "/leading",
    "trailing/",
    "a//b",
    "50%",
    "50%25",
    "with space",
    "what?x=1&y=2",
    "frag#ment",
    "plus+sign",
    "ünïcødé/日本語",
    ".",
    "..",
]


def test_segment_escapes_every_reserved_character() -> None:
    assert segment("a/b?c#d %e") == "a%2Fb%3Fc%23d%20%25e"
    assert segment("é") == "%C3%A9"
    assert segment(".") == "%2E" and segment("..") == "%2E%2E"
    assert segment("a.b") == "a.b"


def test_keys_are_one_path_segment_on_the_wire() -> None:
    seen: list[bytes] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        return httpx.Response(200, json={})

    with TenureClient("http://tenure.test/", "t", transport=httpx.MockTransport(record)) as c:
        c.get_claim("p", "a/b?c#d")
        c.release("p", "..")
    assert seen == [b"/v1/pools/p/claims/a%2Fb%3Fc%23d", b"/v1/pools/p/claims/%2E%2E"]


def test_awkward_keys_round_trip_through_get_list_and_delete(client: TenureClient) -> None:
    client.create_pool("ids", [(1, 1000)])
    client.claim("ids", "b")  # what "a/../b" would hit if its slashes leaked into the path
    values = {key: client.claim("ids", key)["value"] for key in AWKWARD_KEYS}
    assert len(set(values.values())) == len(AWKWARD_KEYS)

    for key, value in values.items():
        got = client.get_claim("ids", key)
        assert (got["key"], got["value"]) == (key, value)
    assert {c["key"] for c in client.iter_claims("ids")} == {*AWKWARD_KEYS, "b"}

    for key, value in values.items():
        assert client.release("ids", key)["value"] == value
        with pytest.raises(TenureAPIError) as err:
            client.get_claim("ids", key)
        assert err.value.status == 404 and err.value.code == "claim_not_found"
    assert [c["key"] for c in client.iter_claims("ids")] == ["b"]


def test_claim_tells_new_from_existing(client: TenureClient) -> None:
    client.create_pool("vlans", [(10, 20)], reserved=[(10, 10)])
    first = client.claim("vlans", "web")
    assert first["value"] == 11 and first["created"] is True
    again = client.claim("vlans", "web")
    assert again["value"] == 11 and again["created"] is False
    assert client.find_value("vlans", 11)["key"] == "web"

    bulk = client.claim_many("vlans", ["web", ("db", 15), "cache"])
    assert [(c["key"], c["value"], c["created"]) for c in bulk["claims"]] == [
        ("web", 11, False), ("db", 15, True), ("cache", 12, True)]


def test_api_errors_carry_status_code_and_details(client: TenureClient) -> None:
    client.create_pool("vlans", [(10, 20)])
    client.claim("vlans", "a", value=15)
    with pytest.raises(TenureAPIError) as err:
        client.claim("vlans", "b", value=15)
    assert (err.value.status, err.value.code, err.value.details) == (409, "value_taken", {"value": 15})
    assert "15" in err.value.message and str(err.value).startswith("value_taken: ")

    with pytest.raises(TenureAPIError) as err:
        client.create_pool("bad", [(5, 1)])
    assert (err.value.status, err.value.code) == (400, "invalid_range")


def test_pools_claims_pages_audit_and_delete(client: TenureClient) -> None:
    client.create_pool("ids", [(1, 100)], strategy="next", projects=["blue"])
    assert [p["name"] for p in client.pools()["pools"]] == ["ids"]
    assert client.pool("ids")["projects"] == ["blue"]
    for i in range(5):
        client.claim("ids", f"k{i}")

    page = client.claims("ids", limit=2)
    assert [c["key"] for c in page["claims"]] == ["k0", "k1"] and page["next"] == "k1"
    assert [c["key"] for c in client.iter_claims("ids", page_size=2)] == [f"k{i}" for i in range(5)]
    assert [c["key"] for c in client.iter_claims("ids", page_size=2, after="k2")] == ["k3", "k4"]

    assert client.audit_begin("ids")["auditing"] is True
    client.claim("ids", "k0")
    assert [c["key"] for c in client.audit_end("ids")["released"]] == ["k1", "k2", "k3", "k4"]

    with pytest.raises(TenureAPIError) as err:
        client.delete_pool("ids")
    assert err.value.code == "pool_in_use"
    assert client.delete_pool("ids", force=True)["deleted"] == "ids"
    assert client.pools()["pools"] == []


def test_tokens_and_health(client: TenureClient, api: Any) -> None:
    created = client.create_token("agent", host="h1", description="rack 4")
    assert created["token"] and created["host"] == "h1"
    assert created["id"] in {t["id"] for t in client.tokens()["tokens"]}
    with TenureClient(base_url(api), created["token"]) as agent:
        assert agent.whoami()["host"] == "h1"
        client.revoke_token(created["id"])
        with pytest.raises(TenureAPIError) as err:
            agent.pools()
        assert err.value.status == 401
    assert created["id"] not in {t["id"] for t in client.tokens()["tokens"]}
    assert created["id"] in {t["id"] for t in client.tokens(revoked=True)["tokens"]}
    assert client.health()["status"] == "ok"


def test_one_client_serves_many_threads(client: TenureClient) -> None:
    client.create_pool("ids", [(1, 1000)])
    with ThreadPoolExecutor(8) as pool:
        values = list(pool.map(lambda i: client.claim("ids", f"k{i}")["value"], range(64)))
    assert sorted(values) == list(range(1, 65))


def test_an_injected_http_client_is_used_and_left_open(api: Any) -> None:
    with TenureClient(base_url(api), api.admin_token, http=api.client) as c:
        assert c.pools()["pools"] == []
    assert not api.client.is_closed
    with pytest.raises(ValueError):
        TenureClient("http://x", "t", http=api.client, transport=httpx.MockTransport(lambda r: httpx.Response(200)))


def _mock(handler: Any) -> TenureClient:
    return TenureClient("http://tenure.test:7470", "t", timeout=2, transport=httpx.MockTransport(handler))


def test_connection_failures_name_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(TenureConnectionError, match=r"http://tenure\.test:7470: connection refused"):
        _mock(refuse).pools()
    with pytest.raises(TenureConnectionError, match=r"http://tenure\.test:7470: no answer within 2s"):
        _mock(stall).pools()


def test_an_error_without_an_error_document_still_raises_api_error() -> None:
    proxy = _mock(lambda r: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(TenureAPIError) as err:
        proxy.pools()
    assert (err.value.status, err.value.code) == (502, "http_502") and "Bad Gateway" in err.value.message

    not_json = _mock(lambda r: httpx.Response(200, text="hello"))
    with pytest.raises(TenureAPIError) as err:
        not_json.pools()
    assert err.value.code == "invalid_response"


def test_health_of_a_restoring_server_is_an_answer() -> None:
    restoring = _mock(lambda r: httpx.Response(503, json={"status": "restoring"}))
    assert restoring.health() == {"status": "restoring"}


# ---------------------------------------------------------------- locating


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    write_server_info(d, "http://local:7470")
    (d / "admin.token").write_text("local-admin\n")
    return d


def test_local_server_and_admin_token_are_the_default(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert locate(data_dir=data_dir) == locate(data_dir=str(data_dir))
    assert (locate(data_dir=data_dir).url, locate(data_dir=data_dir).token) == ("http://local:7470", "local-admin")
    monkeypatch.setenv("TENURE_DATA_DIR", str(data_dir))
    with TenureClient.from_env() as c:
        assert c.base_url == "http://local:7470"


def test_environment_beats_data_dir_and_arguments_beat_both(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENURE_URL", "http://env:1")
    monkeypatch.setenv("TENURE_TOKEN", "env-token")
    assert (locate(data_dir=data_dir).url, locate(data_dir=data_dir).token) == ("http://env:1", "env-token")
    t = locate("http://arg:2", "arg-token", data_dir)
    assert (t.url, t.token) == ("http://arg:2", "arg-token")


def test_nothing_to_go_on_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TenureConfigError, match="no server URL: pass --url or set TENURE_URL"):
        TenureClient.from_env(data_dir=tmp_path)
    with pytest.raises(TenureConfigError, match="no token: pass --token or set TENURE_TOKEN"):
        TenureClient.from_env(url="http://x", data_dir=tmp_path)
    (tmp_path / "server.json").write_text(json.dumps({"url": "http://from-file:9"}))
    with pytest.raises(TenureConfigError, match="no token"):
        locate(data_dir=tmp_path)
