"""The client's watch without a server: the SSE parser, the query, and the resume logic over httpx.MockTransport.

:class:`FakeWatchServer` follows the documented contract (docs/api.md, "Watch")
for a fixed log of events: ``since=R`` streams the events above R, ``initial=true``
streams the objects without ``id:``, a bookmark with ``initial_end``, then the log.
Each request follows a plan: cut the stream after so many bytes (the transport
raises, as httpx does when the peer goes away), end it cleanly, time out, refuse
with a status, or fail to connect. Nothing sleeps: the backoff's sleep is recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenure.client import (
    AsyncTenureClient,
    Backoff,
    TenureAPIError,
    TenureClient,
    TenureConnectionError,
    WatchEvent,
    WatchGone,
)
from tenure.client._watch import SSEParser, WatchQuery, WatchSession

URL = "http://tenure.test"

# ---------------------------------------------------------------- the parser


def parse(*chunks: bytes | str) -> list[tuple[str, str, str | None]]:
    p = SSEParser()
    return [(f.event, f.data, f.id) for c in chunks for f in p.feed(c)]


def test_a_frame_has_id_event_and_data() -> None:
    assert parse(b'id: 7\nevent: created\ndata: {"a": 1}\n\n') == [("created", '{"a": 1}', "7")]


def test_data_lines_join_with_newlines_and_the_type_defaults_to_message() -> None:
    assert parse("data: one\ndata:two\ndata\ndata:  three\n\n") == [("message", "one\ntwo\n\n three", None)]


def test_comments_unknown_fields_and_empty_frames_dispatch_nothing() -> None:
    assert parse(": keep-alive\n\n", "foo: bar\n\n", "event: x\n\n", "\n\n") == []
    assert parse(":c\nid: 3\n:c\ndata: x\n\n") == [("message", "x", "3")]


def test_cr_lf_and_crlf_all_end_lines_even_split_between_chunks() -> None:
    assert parse("data: a\r\ndata: b\rdata: c\n\r\n") == [("message", "a\nb\nc", None)]
    # A CR at the end of a chunk and the LF that starts the next one are one line end, not two.
    assert parse("data: a\r", "\ndata: b\r\n\r", "\n") == [("message", "a\nb", None)]
    assert parse("data: a\r", "\r") == [("message", "a", None)]


def test_utf8_split_inside_a_character_and_a_leading_bom() -> None:
    raw = "\ufeffdata: ünï日本\n\n".encode()
    assert parse(*[raw[i : i + 1] for i in range(len(raw))]) == [("message", "ünï日本", None)]
    assert parse("data: \ufeffx\n\n") == [("message", "\ufeffx", None)]  # only a leading BOM is dropped


def test_a_frame_cut_before_its_blank_line_is_never_dispatched_nor_its_id_kept() -> None:
    p = SSEParser()
    frames = p.feed("id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert [f.id for f in frames] == ["1"] and p.last_event_id == "1"


def test_last_event_id_follows_frames_without_data_and_ignores_nul() -> None:
    p = SSEParser()
    assert p.feed("id: 5\n\n") == [] and p.last_event_id == "5"
    assert p.feed("id: 6\x007\ndata: x\n\n")[0].id is None and p.last_event_id == "5"
    assert p.feed("id\ndata: y\n\n")[0].id == "" and p.last_event_id == ""


def test_retry_takes_digits_only() -> None:
    p = SSEParser()
    p.feed("retry: 1500\n\nretry: 1x\n\n")
    assert p.retry == 1500


FRAMES = st.lists(
    st.tuples(
        st.sampled_from(["created", "bookmark", ""]),
        st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=8),
                 min_size=1, max_size=3),
        st.one_of(st.none(), st.integers(0, 10**6).map(str)),
        st.sampled_from(["\n", "\r", "\r\n"]),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(frames=FRAMES, cuts=st.lists(st.integers(0, 400), max_size=12), comment=st.booleans())
def test_any_split_of_the_bytes_parses_the_same(frames: list[Any], cuts: list[int], comment: bool) -> None:
    text = ""
    expected = []
    for event, lines, fid, eol in frames:
        if comment:
            text += ": ping" + eol
        text += (f"id: {fid}{eol}" if fid is not None else "") + (f"event: {event}{eol}" if event else "")
        text += "".join(f"data: {line}{eol}" for line in lines) + eol
        expected.append((event or "message", "\n".join(lines), fid))
    raw = text.encode()
    bounds = sorted({min(c, len(raw)) for c in cuts})
    chunks = [raw[a:b] for a, b in itertools.pairwise([0, *bounds, len(raw)])]
    assert parse(*chunks) == expected


# ----------------------------------------------------------------- the query


def test_query_parameters_repeat_and_resume() -> None:
    q = WatchQuery.of("claim", ids=["p/a", "p/b,c"], selectors="pool=p1,project in (a,b)", ops=("created",),
                      bookmarks=False)
    assert q.params(since=12) == [
        ("kind", "claim"), ("id", "p/a"), ("id", "p/b,c"), ("selector", "pool=p1,project in (a,b)"),
        ("op", "created"), ("bookmarks", "false"), ("since", "12"),
    ]
    assert WatchQuery.of().params(initial=True) == [("initial", "true")]
    assert WatchQuery.of().params() == []
    with pytest.raises(ValueError):
        WatchSession(q, since=1, initial=True)


def test_backoff_grows_to_its_cap_with_jitter_down_to_half() -> None:
    b, rng = Backoff(first=0.1, cap=2.0, factor=2.0), random.Random(1)
    for attempt, full in enumerate([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]):
        for _ in range(20):
            assert full / 2 <= b.delay(attempt, rng) <= full
    assert b.delay(10_000, rng) <= 2.0


# ------------------------------------------------------------ a fake server


def event(rev: int, key: str, op: str = "created", pool: str = "p1") -> dict[str, Any]:
    return {"type": op, "revision": rev, "kind": "claim", "id": f"{pool}/{key}", "labels": {"pool": pool},
            "ts": f"2026-01-01T00:00:{rev % 60:02d}+00:00", "object": {"pool": pool, "key": key, "value": rev}}


def frame(fid: int | None, kind: str, data: dict[str, Any], eol: str = "\n") -> bytes:
    head = f"id: {fid}{eol}" if fid is not None else ""
    return f"{head}event: {kind}{eol}data: {json.dumps(data)}{eol}{eol}".encode()


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body sent in small chunks, optionally ended by a transport error after ``cut`` bytes."""

    def __init__(self, data: bytes, cut: int | None = None, error: Exception | None = None, chunk: int = 7) -> None:
        self.data, self.cut, self.chunk = data, cut, chunk
        self.error = error or httpx.RemoteProtocolError("peer closed connection without sending complete body")
        self.closed = False

    def _chunks(self) -> Iterator[bytes]:
        end = len(self.data) if self.cut is None else min(self.cut, len(self.data))
        for i in range(0, end, self.chunk):
            yield self.data[i : min(i + self.chunk, end)]

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks()
        if self.cut is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self._chunks():
            yield c
        if self.cut is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeWatchServer:
    """``log``: the events; ``objects``: the initial listing at revision ``snapshot`` (log entries above it
    follow it). ``plan``: per request, ``("cut", n)``, ``"end"``, ``"open"`` (serve all, then end),
    ``("status", code, body)``, or an exception to raise. An exhausted plan serves everything and ends."""

    log: list[dict[str, Any]]
    objects: list[dict[str, Any]] = field(default_factory=list)
    snapshot: int = 0
    plan: list[Any] = field(default_factory=list)
    eol: str = "\n"
    requests: list[httpx.Request] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)
    head: int | None = None  # what /healthz reports as the current revision
    health: list[Any] = field(default_factory=list)  # plan of /healthz: status codes; then 200

    def stream(self, params: httpx.QueryParams) -> bytes:
        out = b": hello\n\n"
        if params.get("initial") == "true":
            for o in self.objects:
                out += frame(None, "created", o, self.eol)
            out += frame(self.snapshot, "bookmark", {"type": "bookmark", "revision": self.snapshot,
                                                     "initial_end": True}, self.eol)
            after = self.snapshot
        else:
            after = int(params.get("since", self.head or 0))
        for e in self.log:
            if e["revision"] > after:
                out += frame(e["revision"], e["type"], e, self.eol)
        return out

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            status = self.health.pop(0) if self.health else 200
            if status != 200:
                return httpx.Response(status, json={"status": "restoring"})
            head = self.head if self.head is not None else max([0, *(e["revision"] for e in self.log)])
            return httpx.Response(200, json={"status": "ok", "revision": head})
        self.requests.append(request)
        step = self.plan.pop(0) if self.plan else "end"
        if isinstance(step, Exception):
            raise step
        if isinstance(step, tuple) and step[0] == "status":
            return httpx.Response(step[1], json=step[2])
        data = self.stream(request.url.params)
        body = Body(data, cut=step[1] if isinstance(step, tuple) else None)
        if isinstance(step, tuple) and len(step) > 2:
            body.error = step[2]
        self.bodies.append(body)
        return httpx.Response(200, headers={"content-type": "text/event-stream; charset=utf-8"}, stream=body)

    def params(self) -> list[list[tuple[str, str]]]:
        return [list(r.url.params.multi_items()) for r in self.requests]


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(server: FakeWatchServer) -> TenureClient:
    return TenureClient(URL, "secret", transport=httpx.MockTransport(server))


def take(server: FakeWatchServer, n: int, **watch: Any) -> tuple[list[WatchEvent], Sleeps, Any]:
    sleeps = Sleeps()
    with client_for(server) as c, c.watch(sleep=sleeps, rng=random.Random(0), **watch) as w:
        got = list(itertools.islice(w, n))
        return got, sleeps, w


def log_of(n: int, start: int = 1) -> list[dict[str, Any]]:
    return [event(r, f"k{r}") for r in range(start, start + n)]


# ------------------------------------------------------------- events


def test_frames_become_watch_events() -> None:
    server = FakeWatchServer(log_of(2), plan=["end"])
    got, _, _ = take(server, 2, kinds="claim", selectors="pool=p1", since=0)
    assert got[0] == WatchEvent("created", 1, kind="claim", id="p1/k1", labels={"pool": "p1"},
                                ts="2026-01-01T00:00:01+00:00", object={"pool": "p1", "key": "k1", "value": 1},
                                data=event(1, "k1"))
    assert [e.revision for e in got] == [1, 2] and not got[0].initial and not got[0].is_bookmark
    request = server.requests[0]
    assert request.url.path == "/v1/watch"
    assert server.params()[0] == [("kind", "claim"), ("selector", "pool=p1"), ("since", "0")]
    assert request.headers["authorization"] == "Bearer secret"
    assert request.headers["accept"] == "text/event-stream"
    # The read timeout outlasts the bookmark interval; the others stay the client's.
    assert request.extensions["timeout"] == {"connect": 10.0, "read": 60.0, "write": 10.0, "pool": 10.0}


def test_the_watch_is_lazy_and_closing_it_closes_the_response() -> None:
    server = FakeWatchServer(log_of(5))
    with client_for(server) as c:
        w = c.watch(since=0)
        assert server.requests == []
        assert next(w).revision == 1
        w.close()
    assert server.bodies[0].closed


# ------------------------------------------------------------ resuming


def test_a_cut_mid_frame_resumes_from_the_last_complete_frame() -> None:
    log = log_of(10)
    whole = FakeWatchServer(log).stream(httpx.QueryParams({"since": "0"}))
    cut = whole.index(b"id: 5") + 20  # inside frame 5
    server = FakeWatchServer(log, plan=[("cut", cut), "open"])
    got, sleeps, w = take(server, 10, since=0)
    assert [e.revision for e in got] == list(range(1, 11))
    assert server.params()[1] == [("since", "4")]
    assert len(sleeps) == 1 and 0.05 <= sleeps[0] <= 0.1
    assert w.revision == 10 and w.session.skipped == 0 and w.session.reconnects == 1


@settings(max_examples=60, deadline=None)
@given(cut_seed=st.integers(0, 2**32), cuts=st.integers(1, 25), crlf=st.booleans())
def test_random_cuts_lose_and_repeat_nothing(cut_seed: int, cuts: int, crlf: bool) -> None:
    log = log_of(40)
    rng = random.Random(cut_seed)
    size = len(FakeWatchServer(log).stream(httpx.QueryParams({"since": "0"})))
    plan: list[Any] = [("cut", rng.randrange(0, size // 3)) for _ in range(cuts)]
    server = FakeWatchServer(log, plan=plan, eol="\r\n" if crlf else "\n")
    got, _, w = take(server, 40, since=0)
    assert [e.revision for e in got] == list(range(1, 41))
    assert len(server.requests) <= cuts + 1 and w.session.reconnects == len(server.requests) - 1
    assert w.session.skipped == 0


@pytest.mark.parametrize("failure", [
    "end",
    ("cut", 10**9, httpx.ReadTimeout("timed out")),
    ("cut", 10**9, httpx.ReadError("connection reset")),
])
def test_a_stream_that_ends_or_times_out_or_breaks_is_resumed(failure: Any) -> None:
    server = FakeWatchServer(log_of(3), plan=[failure, "end"])
    with client_for(server) as c, c.watch(since=1, sleep=Sleeps()) as w:
        assert [next(w).revision, next(w).revision] == [2, 3]
        server.log.append(event(4, "k4"))
        assert next(w).revision == 4
    assert [p[-1] for p in server.params()] == [("since", "1"), ("since", "3")]


def test_bookmarks_move_the_resume_point_and_replays_below_it_are_dropped() -> None:
    def stream(params: httpx.QueryParams) -> bytes:
        if int(params["since"]) < 9:
            return frame(3, "created", event(3, "a")) + frame(9, "bookmark", {"type": "bookmark", "revision": 9})
        # A server that (wrongly) replays an event at or below the resume point: the client drops it.
        return frame(3, "created", event(3, "a")) + frame(10, "created", event(10, "b"))

    server = FakeWatchServer([], plan=["end", "end"])
    server.stream = stream  # type: ignore[method-assign]
    got, _, w = take(server, 3, since=0)
    assert [(e.type, e.revision) for e in got] == [("created", 3), ("bookmark", 9), ("created", 10)]
    assert got[1].is_bookmark and not got[1].initial_end
    assert server.params()[1] == [("since", "9")]
    assert w.session.skipped == 1


def test_server_errors_and_refused_connections_are_retried_with_growing_delays() -> None:
    plan: list[Any] = [
        ("status", 503, {"error": {"code": "not_ready", "message": "restoring"}}),
        httpx.ConnectError("connection refused"),
        ("status", 500, {"error": {"code": "internal", "message": "boom"}}),
        httpx.ConnectTimeout("timed out"),
        "open",
    ]
    server = FakeWatchServer(log_of(2), plan=plan)
    got, sleeps, _ = take(server, 2, since=0)
    assert [e.revision for e in got] == [1, 2]
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):
        full = 0.1 * 2**attempt
        assert full / 2 <= delay <= full


def test_progress_resets_the_backoff() -> None:
    whole = FakeWatchServer(log_of(3)).stream(httpx.QueryParams({"since": "0"}))
    first = whole.index(b"id: 2")
    plan: list[Any] = [httpx.ConnectError("x"), httpx.ConnectError("x"), ("cut", first), "open"]
    server = FakeWatchServer(log_of(3), plan=plan)
    _, sleeps, _ = take(server, 3, since=0, backoff=Backoff(first=1.0, cap=100.0))
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # growing while nothing comes through
    assert 0.5 <= sleeps[2] <= 1.0  # a frame came through: back to the first delay


def test_max_retries_gives_up_with_the_last_error() -> None:
    server = FakeWatchServer([], plan=[httpx.ConnectError("refused")] * 10)
    with client_for(server) as c, pytest.raises(TenureConnectionError, match="refused"):
        list(c.watch(max_retries=3, sleep=Sleeps()))
    assert len(server.requests) == 4
    server = FakeWatchServer([], plan=[("status", 503, {"error": {"code": "not_ready", "message": "wait"}})] * 5)
    with client_for(server) as c, pytest.raises(TenureAPIError) as info:
        list(c.watch(max_retries=1, sleep=Sleeps()))
    assert info.value.code == "not_ready" and len(server.requests) == 2


def test_a_watch_from_now_anchors_at_the_current_revision_so_an_early_cut_loses_nothing() -> None:
    server = FakeWatchServer(log_of(6), head=3, health=[503], plan=[("cut", 5), "open"])
    got, sleeps, _ = take(server, 3)
    assert [e.revision for e in got] == [4, 5, 6]
    assert server.params() == [[("since", "3")], [("since", "3")]]
    assert len(sleeps) == 2  # the 503 of /healthz, then the cut


def test_a_server_without_a_revision_in_healthz_is_watched_from_now() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        seen.append(list(request.url.params.multi_items()))
        rev = 7 + len(seen) - 1
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=frame(rev, "created", event(rev, "a")))

    seen: list[Any] = []
    with TenureClient(URL, "t", transport=httpx.MockTransport(handler)) as c, c.watch(sleep=Sleeps()) as w:
        assert [next(w).revision, next(w).revision] == [7, 8]
    assert seen == [[], [("since", "7")]]


# -------------------------------------------------------------- refusals


def test_410_raises_watch_gone_at_once() -> None:
    gone = {"error": {"code": "gone", "message": "compacted", "revision": 900, "compacted_revision": 500}}
    server = FakeWatchServer([], plan=[("status", 410, gone)])
    with client_for(server) as c, pytest.raises(WatchGone) as info:
        next(c.watch(since=10, sleep=Sleeps()))
    e = info.value
    assert isinstance(e, TenureAPIError) and e.status == 410 and e.code == "gone"
    assert (e.revision, e.compacted_revision) == (900, 500) and len(server.requests) == 1


@pytest.mark.parametrize(("status", "code"), [(400, "invalid_selector"), (401, "unauthorized"), (403, "forbidden"),
                                              (404, "not_found"), (429, "too_many")])
def test_other_refusals_raise_at_once(status: int, code: str) -> None:
    server = FakeWatchServer([], plan=[("status", status, {"error": {"code": code, "message": "no"}})])
    with client_for(server) as c, pytest.raises(TenureAPIError) as info:
        next(c.watch(selectors="pool=", sleep=Sleeps()))
    assert (info.value.status, info.value.code) == (status, code) and len(server.requests) == 1


def test_an_error_frame_gone_raises_and_any_other_reconnects() -> None:
    gone = {"type": "error",
            "error": {"code": "gone", "message": "compacted", "revision": 50, "compacted_revision": 40}}
    server = FakeWatchServer([], plan=["end"])
    body = frame(1, "created", event(1, "a")) + frame(None, "error", gone)
    server.stream = lambda _: body  # type: ignore[method-assign]
    with client_for(server) as c, c.watch(since=0, sleep=Sleeps()) as w:
        assert next(w).revision == 1
        with pytest.raises(WatchGone) as info:
            next(w)
    assert info.value.compacted_revision == 40

    slow = {"type": "error", "error": {"code": "too_slow", "message": "cut off"}}
    streams = iter([frame(1, "created", event(1, "a")) + frame(None, "error", slow),
                    frame(2, "created", event(2, "b"))])
    server = FakeWatchServer([], plan=["end", "end"])
    server.stream = lambda params: next(streams)  # type: ignore[method-assign]
    got, _, _ = take(server, 2, since=0)
    assert [e.revision for e in got] == [1, 2] and server.params()[1] == [("since", "1")]


def test_a_non_sse_answer_is_an_error() -> None:
    with TenureClient(URL, "t", transport=httpx.MockTransport(lambda r: httpx.Response(200, json={}))) as c, \
            pytest.raises(TenureAPIError) as info:
        next(c.watch(sleep=Sleeps()))
    assert info.value.code == "invalid_response"


# ------------------------------------------------------------- initial state


def objects(*keys: str) -> list[dict[str, Any]]:
    return [{**event(0, k), "revision": 3} for k in keys]


def test_initial_lists_objects_then_the_bookmark_then_live_events() -> None:
    server = FakeWatchServer(log_of(3, start=4), objects=objects("a", "b"), snapshot=3)
    got, _, w = take(server, 6, initial=True)
    assert [(e.type, e.revision, e.initial, e.initial_end) for e in got] == [
        ("created", None, True, False), ("created", None, True, False), ("bookmark", 3, False, True),
        ("created", 4, False, False), ("created", 5, False, False), ("created", 6, False, False)]
    assert server.params()[0] == [("initial", "true")] and w.revision == 6


def test_a_listing_cut_short_starts_over_after_a_resync() -> None:
    probe = FakeWatchServer(log_of(2, start=4), objects=objects("a", "b", "c"), snapshot=3)
    whole = probe.stream(httpx.QueryParams({"initial": "true"}))
    in_b = whole.index(b'"key": "b"')  # after a, inside b
    after_end = whole.index(b"id: 4")  # after the bookmark, before event 4 completes
    server = FakeWatchServer(log_of(2, start=4), objects=objects("a", "b", "c"), snapshot=3,
                             plan=[("cut", in_b), ("cut", after_end), "open"])
    got, _, _ = take(server, 8, initial=True)
    assert [(e.type, e.id) for e in got] == [
        ("created", "p1/a"), ("resync", None), ("created", "p1/a"), ("created", "p1/b"), ("created", "p1/c"),
        ("bookmark", None), ("created", "p1/k4"), ("created", "p1/k5")]
    assert server.params() == [[("initial", "true")], [("initial", "true")], [("since", "3")]]


def test_a_listing_cut_before_any_object_starts_over_without_resync() -> None:
    server = FakeWatchServer([], objects=objects("a"), snapshot=3, plan=[("cut", 3), httpx.ConnectError("x"), "end"])
    got, _, _ = take(server, 2, initial=True)
    assert [e.type for e in got] == ["created", "bookmark"]
    assert server.params() == [[("initial", "true")]] * 3


# ---------------------------------------------------------------------- async


def test_the_async_client_watches_and_resumes_the_same_way() -> None:
    log = log_of(20)
    whole = FakeWatchServer(log).stream(httpx.QueryParams({"since": "0"}))
    rng = random.Random(7)
    plan: list[Any] = [("cut", rng.randrange(len(whole) // 20)) for _ in range(8)]  # each cut within a frame or two
    plan.insert(3, ("status", 503, {"error": {"code": "not_ready", "message": "restoring"}}))
    server = FakeWatchServer(log, plan=plan)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> list[int | None]:
        async with AsyncTenureClient(URL, "secret", transport=httpx.MockTransport(server)) as c:
            got = []
            async with c.watch("claim", since=0, sleep=sleep, rng=random.Random(1)) as w:
                async for e in w:
                    got.append(e.revision)
                    if len(got) == 20:
                        break
            return got

    assert asyncio.run(main()) == list(range(1, 21))
    assert len(sleeps) == 9 and all(r.headers["accept"] == "text/event-stream" for r in server.requests)


def test_the_async_client_gone_and_refusals() -> None:
    gone = {"error": {"code": "gone", "message": "compacted", "revision": 9, "compacted_revision": 5}}

    async def first(server: FakeWatchServer) -> WatchEvent:
        async with AsyncTenureClient(URL, "t", transport=httpx.MockTransport(server)) as c:
            return await c.watch(since=1).__anext__()

    with pytest.raises(WatchGone) as info:
        asyncio.run(first(FakeWatchServer([], plan=[("status", 410, gone)])))
    assert info.value.compacted_revision == 5
    with pytest.raises(TenureAPIError) as refused:
        asyncio.run(first(FakeWatchServer([], plan=[("status", 403, {"error": {"code": "forbidden", "message": ""}})])))
    assert refused.value.code == "forbidden"


def test_the_async_client_routes_and_errors() -> None:
    seen: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.raw_path.decode(), body))
        path = request.url.path
        if path == "/healthz":
            return httpx.Response(503, json={"status": "restoring"})
        if path.endswith("/claims") and body["key"] == "held":
            return httpx.Response(200, json={"pool": "p", "key": "held", "value": 1})
        if path.endswith("/claims"):
            return httpx.Response(201, json={"pool": "p", "key": body["key"], "value": 2})
        if path == "/v1/agents" and request.method == "POST":
            return httpx.Response(201, json={"host": body["host"]})
        if path.endswith("/heartbeat"):
            return httpx.Response(404, json={"error": {"code": "agent_not_registered", "message": "register"}})
        return httpx.Response(200, json={"ok": path})

    async def main() -> None:
        async with AsyncTenureClient(URL + "/", "t", transport=httpx.MockTransport(handler)) as c:
            assert await c.health() == {"status": "restoring"}
            assert (await c.claim("p", "a/b"))["created"] is True
            assert (await c.claim("p", "held"))["created"] is False
            assert await c.release("p", "a/b") == {"ok": "/v1/pools/p/claims/a/b"}
            assert (await c.register_agent("h1", ["ocf"], "1.0"))["created"] is True
            with pytest.raises(TenureAPIError) as info:
                await c.heartbeat("h1")
            assert info.value.code == "agent_not_registered" and info.value.status == 404
            assert await c.agents() == {"ok": "/v1/agents"}
            assert await c.whoami() == {"ok": "/v1/whoami"}
            assert await c.pools() == {"ok": "/v1/pools"}

    asyncio.run(main())
    assert ("DELETE", "/v1/pools/p/claims/a%2Fb", None) in seen
    assert ("POST", "/v1/agents", {"host": "h1", "kinds": ["ocf"], "version": "1.0", "capabilities": None}) in seen
    assert ("POST", "/v1/agents/h1/heartbeat", {}) in seen


def test_the_async_client_maps_connection_failures() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async def main() -> None:
        async with AsyncTenureClient(URL, "t", transport=httpx.MockTransport(refuse)) as c:
            await c.pools()

    with pytest.raises(TenureConnectionError, match="is `tenure serve` running there"):
        asyncio.run(main())
