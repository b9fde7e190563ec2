"""GET /v1/watch against a real server on SQLite and PostgreSQL: filters, scopes, resume, 410, initial state,
bookmarks, slow consumers, revocation and shutdown."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, start_api
from tests.watch.stream import open_stream


@pytest.fixture
def wapi(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from start_api(db_url, tmp_path / "data", bookmark_interval=3600)


def _pool(api: Api, name: str, **extra: Any) -> None:
    r = api.post("/v1/pools", json={"name": name, "ranges": [[1, 100000]], **extra})
    assert r.status_code == 201, r.text


def _claim(api: Api, pool: str, key: str, token: str | None = None, **extra: Any) -> dict[str, Any]:
    r = api.post(f"/v1/pools/{pool}/claims", json={"key": key, **extra}, token=token)
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


def test_filters_by_kind_label_id_and_op(wapi: Api) -> None:
    _pool(wapi, "p1")
    _pool(wapi, "p2")
    t = wapi.admin_token
    by_host = open_stream(wapi.client, t, {"kind": "claim", "selector": "host=h1"})
    by_pool = open_stream(wapi.client, t, {"selector": "pool in (p2)", "op": "deleted"})
    by_id = open_stream(wapi.client, t, {"kind": "claim", "id": "p1/k3"})
    not_h1 = open_stream(wapi.client, t, {"kind": "claim", "selector": "host!=h1,pool=p1"})
    for i in range(4):
        _claim(wapi, "p1", f"k{i}", host="h1" if i % 2 else "h2")
        _claim(wapi, "p2", f"k{i}", host="h1")
    wapi.delete("/v1/pools/p2/claims/k0")
    got = [(f.data["id"], f.event) for f in by_host.events(7)]
    assert got == [("p2/k0", "created"), ("p1/k1", "created"), ("p2/k1", "created"), ("p2/k2", "created"),
                   ("p1/k3", "created"), ("p2/k3", "created"), ("p2/k0", "deleted")]
    [deleted] = by_pool.events(1)
    assert (deleted.event, deleted.data["id"], deleted.data["type"]) == ("deleted", "p2/k0", "deleted")
    assert deleted.data["object"]["revision"] == deleted.id  # as DELETE answers: the release's revision
    [only] = by_id.events(1)
    assert only.data["object"]["key"] == "k3" and only.data["object"]["value"] == 4
    assert [f.data["id"] for f in not_h1.events(2)] == ["p1/k0", "p1/k2"]
    for s in (by_host, by_pool, by_id, not_h1):
        assert [f for f in s.quiet() if f.event != "bookmark"] == []  # nothing more
        s.close()


def test_frame_matches_the_rest_api(wapi: Api) -> None:
    _pool(wapi, "p1")
    s = open_stream(wapi.client, wapi.admin_token, {"kind": "claim"})
    body = _claim(wapi, "p1", "a/b c", project="blue", host="h9")
    [f] = s.events(1)
    assert f.id == body["revision"] == f.data["revision"]
    assert f.data["object"] == wapi.get("/v1/pools/p1/claims/a%2Fb%20c").json()
    assert f.data["labels"] == {"pool": "p1", "project": "blue", "host": "h9"}
    assert f.data["kind"] == "claim" and f.data["id"] == "p1/a/b c" and f.data["ts"].endswith("+00:00")
    s.close()


def test_host_isolation_and_member_scope(wapi: Api) -> None:
    _pool(wapi, "open")
    _pool(wapi, "blue-only", projects=["blue"])
    _pool(wapi, "red-only", projects=["red"])
    agent1 = wapi.token("agent", host="h1")
    blue = wapi.token("member", project="blue")
    h1 = open_stream(wapi.client, agent1, {})  # no filter at all: the scope alone confines it
    member = open_stream(wapi.client, blue, {})
    member_asks_red = open_stream(wapi.client, blue, {"selector": "project=red"})
    _claim(wapi, "open", "x1", host="h1")
    _claim(wapi, "open", "x2", host="h2")
    _claim(wapi, "open", "x3", project="red")
    _claim(wapi, "open", "x4", project="blue")
    _claim(wapi, "blue-only", "x5", project="blue")
    _claim(wapi, "open", "x6", token=agent1)  # the agent's own claim: recorded under host h1
    wapi.post("/v1/pools", json={"name": "blue-2", "ranges": [[1, 2]], "projects": ["blue"]})
    wapi.post("/v1/pools", json={"name": "red-2", "ranges": [[1, 2]], "projects": ["red"]})
    wapi.post("/v1/tokens", json={"role": "member", "project": "blue"})
    assert [f.data["id"] for f in h1.events(2)] == ["open/x1", "open/x6"]
    assert [f.data["id"] for f in member.events(3)] == ["open/x4", "blue-only/x5", "blue-2"]
    for s in (h1, member, member_asks_red):
        assert [f for f in s.quiet() if f.event != "bookmark"] == []
        s.close()


def test_resume_with_since_and_last_event_id(wapi: Api) -> None:
    _pool(wapi, "p1")
    revs = [_claim(wapi, "p1", f"k{i}")["revision"] for i in range(10)]
    s = open_stream(wapi.client, wapi.admin_token, {"kind": "claim", "since": revs[3]})
    assert [f.id for f in s.events(6)] == revs[4:]
    s.close()
    s = open_stream(wapi.client, wapi.admin_token, {"kind": "claim"}, headers={"Last-Event-ID": str(revs[7])})
    more = _claim(wapi, "p1", "later")["revision"]
    assert [f.id for f in s.events(3)] == [*revs[8:], more]
    s.close()


def test_last_event_id_turns_an_initial_watch_into_a_resume(wapi: Api) -> None:
    """A browser's EventSource reconnects to the same URL with Last-Event-ID: resume, do not list again."""
    _pool(wapi, "p1")
    first = _claim(wapi, "p1", "a")["revision"]
    second = _claim(wapi, "p1", "b")["revision"]
    s = open_stream(wapi.client, wapi.admin_token, {"kind": "claim", "initial": "true"},
                    headers={"Last-Event-ID": str(first)})
    assert [(f.event, f.id) for f in s.events(1)] == [("created", second)]
    s.close()


def test_replay_from_the_database_when_the_ring_is_short(db_url: str, tmp_path: Path) -> None:
    for api in start_api(db_url, tmp_path / "data", watch_ring=8, bookmark_interval=3600):
        _pool(api, "p1")
        _pool(api, "p2")
        for i in range(30):  # 2,500 events: several database pages, then the ring
            r = api.post("/v1/pools/p1/claims:bulk", json={"claims": [{"key": f"b{i}-{j}"} for j in range(50)]})
            assert r.status_code == 200
            r = api.post("/v1/pools/p2/claims:bulk", json={"claims": [{"key": f"b{i}-{j}"} for j in range(30)]})
        expected = [c for c in range(1, api.app.state.tenure.runtime.revision + 1)]
        s = open_stream(api.client, api.admin_token, {"selector": "pool=p1", "since": 0})
        frames = s.events(1 + 30 * 50)
        ids = [f.id for f in frames]
        assert ids == sorted(set(ids)) and len(ids) == 1501
        assert frames[0].data["kind"] == "pool" and all(f.data["labels"]["pool"] == "p1" for f in frames)
        assert set(ids) < set(expected)
        live = _claim(api, "p1", "live")["revision"]
        assert s.events(1)[0].id == live
        s.close()


@pytest.mark.parametrize(
    ("params", "headers", "code"),
    [
        ({"kind": "nope"}, {}, "invalid_kind"),
        ({"kind": "claim,nope"}, {}, "invalid_kind"),
        ({"op": "renamed"}, {}, "invalid_op"),
        ({"selector": "host in (a"}, {}, "invalid_selector"),
        ({"selector": "host in ((a))"}, {}, "invalid_selector"),
        ({"selector": "=x"}, {}, "invalid_selector"),
        ({"selector": "host=a b"}, {}, "invalid_selector"),
        ({"selector": "host=,"}, {}, "invalid_selector"),
        ({"selector": "a" * 5000}, {}, "invalid_selector"),
        ({"since": "-1"}, {}, "invalid_since"),
        ({"since": "abc"}, {}, "invalid_since"),
        ({"since": "1e3"}, {}, "invalid_since"),
        ({"since": "99999999"}, {}, "invalid_since"),
        ({"since": "9" * 40}, {}, "invalid_since"),
        ({}, {"Last-Event-ID": "-5"}, "invalid_since"),
        ({"since": "0", "initial": "true"}, {}, "invalid_since"),
        ({"initial": "maybe"}, {}, "invalid_request"),
    ],
)
def test_bad_input_is_400(wapi: Api, params: dict[str, str], headers: dict[str, str], code: str) -> None:
    r = wapi.get("/v1/watch", params=params, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]


def test_watch_needs_a_token(wapi: Api) -> None:
    assert wapi.client.get("/v1/watch").status_code == 401
    r = wapi.client.get("/v1/watch", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


def test_kinds_a_token_can_never_see_are_403(wapi: Api) -> None:
    member = wapi.token("member", project="blue")
    r = wapi.get("/v1/watch", params={"kind": "agent"}, token=member)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert "agent" in r.json()["error"]["message"]


def test_gone_after_compaction(wapi: Api) -> None:
    _pool(wapi, "p1")
    revs = [_claim(wapi, "p1", f"k{i}")["revision"] for i in range(10)]
    rt = wapi.app.state.tenure.runtime
    assert rt.history.compact(revs[5]) == revs[5]
    r = wapi.get("/v1/watch", params={"since": revs[2]})
    assert r.status_code == 410
    err = r.json()["error"]
    assert err["code"] == "gone" and err["compacted_revision"] == revs[5] and err["revision"] == rt.revision
    assert wapi.get("/healthz").json()["compacted_revision"] == revs[5]
    # From the compacted revision itself nothing is missing.
    s = open_stream(wapi.client, wapi.admin_token, {"kind": "claim", "since": revs[5]})
    assert [f.id for f in s.events(4)] == revs[6:]
    s.close()


def test_initial_state_then_bookmark_then_live(wapi: Api) -> None:
    _pool(wapi, "p1")
    _pool(wapi, "p2")
    for i in range(5):
        _claim(wapi, "p1", f"k{i}", host="h1" if i < 3 else "h2")
    wapi.delete("/v1/pools/p1/claims/k1")
    s = open_stream(wapi.client, wapi.admin_token, {"kind": "claim", "selector": "host=h1", "initial": "true"})
    frames = s.events(2)
    assert [(f.event, f.id, f.data["id"]) for f in frames] == [("created", None, "p1/k0"), ("created", None, "p1/k2")]
    assert frames[0].data["object"] == wapi.get("/v1/pools/p1/claims/k0").json()
    mark = s.next()
    assert mark.event == "bookmark" and mark.data["initial_end"] is True
    assert mark.id == wapi.app.state.tenure.runtime.revision
    new = _claim(wapi, "p2", "z", host="h1")
    _claim(wapi, "p2", "y", host="h2")
    [f] = s.events(1)
    assert (f.id, f.data["id"], f.event) == (new["revision"], "p2/z", "created")
    s.close()


def test_initial_state_respects_scope(wapi: Api) -> None:
    _pool(wapi, "open")
    _pool(wapi, "red-only", projects=["red"])
    _claim(wapi, "open", "mine", project="blue")
    _claim(wapi, "open", "theirs", project="red")
    blue = wapi.token("member", project="blue")
    s = open_stream(wapi.client, blue, {"initial": "true"})
    got = []
    while (f := s.next()).event != "bookmark":
        got.append((f.data["kind"], f.data["id"]))
    me = wapi.get("/v1/whoami", token=blue).json()["token_id"]
    assert got == [("claim", "open/mine"), ("pool", "open"), ("token", me)]  # its own token, nobody else's
    s.close()


def test_idle_filtered_watcher_gets_bookmarks(db_url: str, tmp_path: Path) -> None:
    for api in start_api(db_url, tmp_path / "data", bookmark_interval=0.05):
        _pool(api, "p1")
        s = open_stream(api.client, api.admin_token, {"selector": "host=quiet"})
        last = _claim(api, "p1", "noise", host="loud")["revision"]
        while True:  # bookmarks carry the current revision although nothing matched
            f = s.next()
            assert f.event == "bookmark" and f.data["initial_end"] is False and f.id == f.data["revision"]
            if f.id == last:
                break
        s.close()


def test_revoked_token_ends_its_streams(wapi: Api) -> None:
    r = wapi.post("/v1/tokens", json={"role": "agent", "host": "h1"})
    tok, tid = r.json()["token"], r.json()["id"]
    s = open_stream(wapi.client, tok, {})
    other = open_stream(wapi.client, wapi.admin_token, {"kind": "token"})
    assert wapi.delete(f"/v1/tokens/{tid}").status_code == 200
    assert [f for f in s.until_end() if f.event != "bookmark"] == []
    assert other.events(1)[0].data["id"] == tid  # the admin's stream goes on
    assert wapi.get("/v1/watch", token=tok).status_code == 401
    other.close()


def test_slow_consumer_is_cut_off_without_hurting_a_fast_one(db_url: str, tmp_path: Path) -> None:
    for api in start_api(db_url, tmp_path / "data", watch_max_pending=300, bookmark_interval=3600):
        _pool(api, "p1")
        port = int(str(api.client.base_url).rsplit(":", 1)[1].rstrip("/"))
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
        slow.connect(("127.0.0.1", port))
        slow.sendall(f"GET /v1/watch?kind=claim HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.admin_token}"
                     "\r\n\r\n".encode())
        hub = api.app.state.tenure.hub
        fast = open_stream(api.client, api.admin_token, {"kind": "claim"})
        while hub.watchers < 2:
            fast.quiet(0.01)
        revs = []
        for i in range(100):  # 10,000 events of 800 bytes: more than the kernel's socket buffers hold
            r = api.post("/v1/pools/p1/claims:bulk", json={"claims": [{"key": f"{i}-{j:04}-" + "x" * 240}
                                                                        for j in range(100)]})
            assert r.status_code == 200, r.text
            revs += [c["revision"] for c in r.json()["claims"]]
        assert [f.id for f in fast.events(len(revs))] == revs  # the fast watcher got everything
        assert hub.cutoffs == 1
        # The slow one was disconnected: reading now drains what was buffered, then EOF.
        slow.settimeout(20)
        data = b""
        while chunk := slow.recv(65536):
            data += chunk
        slow.close()
        ids, current = [], 0  # chunked encoding: sizes between chunks, each chunk whole frames
        for line in data.decode().split("\n"):
            if line.startswith("id: "):
                current = int(line[4:])
            elif line.startswith("event: ") and line != "event: bookmark":
                ids.append(current)
        assert ids == revs[: len(ids)] and len(ids) < len(revs)
        # ... and resumes from its last id without losing anything.
        again = open_stream(api.client, api.admin_token, {"kind": "claim", "since": ids[-1] if ids else 0})
        assert [f.id for f in again.events(len(revs) - len(ids))] == revs[len(ids):]
        again.close()
        fast.close()


def test_shutdown_ends_open_streams(db_url: str, tmp_path: Path) -> None:
    gen = start_api(db_url, tmp_path / "data")
    api = next(gen)
    s = open_stream(api.client, api.admin_token, {})
    with pytest.raises(StopIteration):
        next(gen)  # stops the server: must not wait for the stream
    assert [f.event for f in s.until_end(timeout=10)] == ["bookmark"]  # where it started; then the end


def test_too_many_watchers_is_503(db_url: str, tmp_path: Path) -> None:
    for api in start_api(db_url, tmp_path / "data"):
        api.app.state.tenure.hub.max_watchers = 1
        s = open_stream(api.client, api.admin_token, {})
        hub = api.app.state.tenure.hub
        while hub.watchers < 1:
            s.quiet(0.01)
        r = api.get("/v1/watch")
        assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_watchers"
        s.close()


def test_watcher_gauges_in_metrics(wapi: Api) -> None:
    s = open_stream(wapi.client, wapi.admin_token, {})
    hub = wapi.app.state.tenure.hub
    while hub.watchers < 1:
        s.quiet(0.01)
    text = wapi.get("/metrics").text
    assert "tenure_watchers 1.0" in text and "tenure_compacted_revision" in text
    s.close()

