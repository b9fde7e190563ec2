"""The client's SSE parser keeps every frame when a CRLF is split after its CR, the next chunk is a lone
LF, and the chunk after starts with the blank line's LF (only the LF completing the CRLF is dropped)."""

from __future__ import annotations

from tenure.client._watch import SSEParser, WatchQuery, WatchSession

STREAM = b'id: 1\nevent: created\ndata: {"type":"created","kind":"claim"}\r\n\nid: 2\nevent: created\ndata: {"type":"created","kind":"pool"}\n\n'
CUT = STREAM.index(b"\r\n") + 1


def _frames(chunks: list[bytes]) -> list[tuple[str | None, str]]:
    p = SSEParser()
    return [(f.id, f.data) for c in chunks for f in p.feed(c)]


def test_a_crlf_split_then_a_lone_lf_chunk_keeps_every_frame() -> None:
    whole = _frames([STREAM])
    assert [i for i, _ in whole] == ["1", "2"]
    split = _frames([STREAM[:CUT], STREAM[CUT:CUT + 1], STREAM[CUT + 1:]])
    assert split == whole


def test_the_watch_session_delivers_both_events() -> None:
    s = WatchSession(WatchQuery(), since=0)
    s.params()
    events = [e for c in (STREAM[:CUT], STREAM[CUT:CUT + 1], STREAM[CUT + 1:]) for e in s.feed(c)]
    assert [e.revision for e in events] == [1, 2]
