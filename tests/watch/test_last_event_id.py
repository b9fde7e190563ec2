"""Last-Event-ID wins over ``since``: a browser's EventSource reconnects to the URL it was given, ``?since=N``
included, with the last ``id:`` it received in ``Last-Event-ID``; the stream must resume from that id, not
replay from N again on every reconnection. A bad Last-Event-ID is a 4xx JSON error, as a bad ``since`` is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, start_api
from tests.watch.stream import open_stream


@pytest.fixture
def wapi(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from start_api(db_url, tmp_path / "data", bookmark_interval=3600)


def _claims(api: Api, n: int) -> list[int]:
    assert api.post("/v1/pools", json={"name": "p1", "ranges": [[1, 1000]]}).status_code == 201
    revs = []
    for i in range(n):
        r = api.post("/v1/pools/p1/claims", json={"key": f"k{i}"})
        assert r.status_code == 201, r.text
        revs.append(r.json()["revision"])
    return revs


def _status(api: Api, params: dict[str, Any], last_event_id: str | bytes) -> tuple[int, dict[str, Any] | None]:
    """The answer's status (and JSON error body) without reading a stream that was opened by mistake."""
    with api.client.stream("GET", "/v1/watch", params=params,
                           headers={**api.headers(), "Last-Event-ID": last_event_id}) as r:
        if r.status_code == 200:
            return 200, None
        r.read()
        return r.status_code, r.json()


def test_an_eventsource_reconnecting_to_a_since_url_resumes_from_last_event_id(wapi: Api) -> None:
    revs = _claims(wapi, 10)
    s = open_stream(wapi.client, wapi.admin_token, {"kind": "claim", "since": revs[1]},
                    headers={"Last-Event-ID": str(revs[6])})
    start = s.next()
    assert (start.event, start.id) == ("bookmark", revs[6])  # where the stream starts: the Last-Event-ID
    assert [f.id for f in s.events(3)] == revs[7:]
    more = wapi.post("/v1/pools/p1/claims", json={"key": "later"}).json()["revision"]
    assert [f.id for f in s.events(1)] == [more]
    s.close()


def test_last_event_id_resumes_even_when_the_urls_since_was_compacted(wapi: Api) -> None:
    revs = _claims(wapi, 10)
    assert wapi.app.state.tenure.runtime.history.compact(revs[5]) == revs[5]
    s = open_stream(wapi.client, wapi.admin_token, {"kind": "claim", "since": revs[2]},
                    headers={"Last-Event-ID": str(revs[7])})
    assert [f.id for f in s.events(2)] == revs[8:]
    s.close()


@pytest.mark.parametrize("bad", ["abc", "-1", "1e3", "²", "", "1 2", "9" * 40])
def test_a_bad_last_event_id_is_400_even_with_a_good_since(wapi: Api, bad: str) -> None:
    revs = _claims(wapi, 2)
    status, body = _status(wapi, {"kind": "claim", "since": revs[0]}, bad.encode("latin-1"))
    assert status == 400, body
    assert body is not None and body["error"]["code"] == "invalid_since"
    assert "Last-Event-ID" in body["error"]["message"]


def test_a_last_event_id_in_the_future_is_400_even_with_a_good_since(wapi: Api) -> None:
    revs = _claims(wapi, 2)
    status, body = _status(wapi, {"since": revs[0]}, str(revs[-1] + 1000))
    assert status == 400, body
    assert body is not None and body["error"]["code"] == "invalid_since"
    assert body["error"]["revision"] == revs[-1]


def test_a_compacted_last_event_id_is_410_even_with_a_good_since(wapi: Api) -> None:
    revs = _claims(wapi, 10)
    rt = wapi.app.state.tenure.runtime
    assert rt.history.compact(revs[5]) == revs[5]
    status, body = _status(wapi, {"since": revs[7]}, str(revs[2]))
    assert status == 410, body
    assert body is not None and body["error"]["code"] == "gone"
    assert body["error"]["compacted_revision"] == revs[5]


def test_since_with_initial_stays_400_with_a_last_event_id(wapi: Api) -> None:
    """That URL never worked, so no EventSource reconnects to it: it is refused whatever the headers."""
    revs = _claims(wapi, 2)
    status, body = _status(wapi, {"since": revs[0], "initial": "true"}, str(revs[1]))
    assert status == 400 and body is not None and body["error"]["code"] == "invalid_since"


def test_a_malformed_since_stays_400_with_a_good_last_event_id(wapi: Api) -> None:
    revs = _claims(wapi, 2)
    status, body = _status(wapi, {"since": "abc"}, str(revs[1]))
    assert status == 400 and body is not None and body["error"]["code"] == "invalid_since"
