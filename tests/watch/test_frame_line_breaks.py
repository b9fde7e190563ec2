"""No SSE frame carries U+2028, U+2029 or U+0085 raw: their JSON escapes them (``\\u2028``).

The SSE spec ends lines at CR and LF only, but clients that split on Unicode line breaks (``str.splitlines``,
JavaScript code that splits on them) would cut a frame in two. Checked on the raw bytes of the stream in every
phase that writes frames: the live dispatch, a replay from the hub's ring, a replay from the database, the
initial listing; and the error frame's encoding. Claim keys carry them on the server (in the id and the object);
resource labels on the host agent (in the labels: the server's label values are names, which cannot).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenure.watch.hub import bookmark_frame, error_frame
from tests.conftest import Api, start_api
from tests.lrm_support import start_agent

BREAKS = "\u2028\u2029\u0085"
RAW = [c.encode() for c in BREAKS]  # b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\xc2\x85"
KEY = f"a{BREAKS}b\u2028"
LABEL = f"front{BREAKS}end"
END_KEY = "zz-end"


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[Api]:
    # A ring of 2: a replay from revision 0 reads the database first.
    yield from start_api(db_url, tmp_path / "data", bookmark_interval=3600, watch_ring=2)


def _claim(api: Api, key: str, **extra: Any) -> int:
    r = api.post("/v1/pools/p/claims", json={"key": key, **extra})
    assert r.status_code == 201, r.text
    assert r.json()["key"] == key
    return int(r.json()["revision"])


def _read_until(api: Api, params: dict[str, Any], until: bytes, before_reading: Any = None) -> bytes:
    """The stream's raw bytes up to the end of the frame that contains ``until``."""
    buf = b""
    with api.client.stream("GET", "/v1/watch", params=params, headers=api.headers()) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        buf += next(chunks)  # the stream has started: a bookmark, or the listing
        if before_reading is not None:
            before_reading()
        for chunk in chunks:
            buf += chunk
            at = buf.find(until)
            if at >= 0 and buf.find(b"\n\n", at) >= 0:
                return buf
    raise AssertionError(f"the stream ended before {until!r}: {buf[-500:]!r}")


def _frames(raw: bytes) -> list[dict[str, Any]]:
    """The frames' data as a spec-following parser reads it (lines end at LF only here)."""
    out = []
    for block in raw.decode("utf-8").split("\n\n"):
        data = [line[len("data: "):] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


def _unbroken(raw: bytes) -> list[dict[str, Any]]:
    for r in RAW:
        assert r not in raw, (r, raw[:2000])
    text = raw.decode("utf-8")
    assert text.splitlines() == text.split("\n")[:-1]  # a Unicode line splitter sees the same lines
    return _frames(raw)


def _check(raw: bytes) -> None:
    frames = [f for f in _unbroken(raw) if f.get("kind") == "claim"]
    tricky = [f for f in frames if f["object"]["key"] == KEY]
    assert len(tricky) == 1, frames
    assert tricky[0]["id"] == f"p/{KEY}"


def _setup(api: Api) -> None:
    assert api.post("/v1/pools", json={"name": "p", "ranges": [[1, 100]]}).status_code == 201


def test_live_frames(server: Api) -> None:
    _setup(server)

    def write() -> None:
        _claim(server, KEY)
        _claim(server, END_KEY)

    _check(_read_until(server, {"kind": "claim"}, END_KEY.encode(), before_reading=write))


def test_replayed_frames_from_the_ring(server: Api) -> None:
    _setup(server)
    since = _claim(server, "before")
    _claim(server, KEY)
    _claim(server, END_KEY)
    _check(_read_until(server, {"kind": "claim", "since": since}, END_KEY.encode()))


def test_replayed_frames_from_the_database(server: Api) -> None:
    _setup(server)
    _claim(server, KEY)
    for i in range(5):  # past the ring of 2
        _claim(server, f"filler-{i}")
    _claim(server, END_KEY)
    _check(_read_until(server, {"kind": "claim", "since": 0}, END_KEY.encode()))


def test_initial_listing_frames(server: Api) -> None:
    _setup(server)
    _claim(server, KEY)
    _claim(server, END_KEY)
    _check(_read_until(server, {"kind": "claim", "initial": "true"}, b'"initial_end":true'))


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Api]:
    yield from start_agent(tmp_path)


def _resource(agent: Api, name: str, labels: dict[str, str]) -> str:
    r = agent.post("/v1/resources", json={"name": name, "driver": "ocf:heartbeat:Dummy", "labels": labels})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("params", [{"since": 0}, {"initial": "true"}, {}])
def test_label_values_on_the_host_agents_watch(agent: Api, params: dict[str, Any]) -> None:
    rid = _resource(agent, "tricky", {"tier": LABEL})
    _resource(agent, "zz-end", {"tier": "plain"})

    def live() -> None:
        _resource(agent, "tricky-live", {"tier": LABEL})
        _resource(agent, "zz-end-live", {"tier": "plain"})

    raw = _read_until(agent, {"kind": "resource", **params}, b'"zz-end-live"', before_reading=live)
    frames = [f for f in _unbroken(raw) if f.get("kind") == "resource"]
    tricky = [f for f in frames if f["object"]["name"].startswith("tricky")]
    assert {f["object"]["name"] for f in tricky} == ({"tricky-live"} if params == {} else {"tricky", "tricky-live"})
    for f in tricky:
        assert f["labels"]["tier"] == LABEL and f["object"]["labels"]["tier"] == LABEL
    assert rid in {f["id"] for f in tricky} or params == {}


def test_error_and_bookmark_frames_are_escaped_too() -> None:
    frame = error_frame({"code": "unavailable", "message": f"quoted{BREAKS}"})
    for r in RAW:
        assert r not in frame
    [data] = [line[len(b"data: "):] for line in frame.split(b"\n") if line.startswith(b"data: ")]
    assert json.loads(data)["error"]["message"] == f"quoted{BREAKS}"
    assert bookmark_frame(7) == (b'id: 7\nevent: bookmark\n'
                                 b'data: {"type":"bookmark","revision":7,"initial_end":false}\n\n')
