"""SQLite's checkpoints off the writer's path (store.writer.Checkpointer): the writer's own connection makes none,
the thread's rounds copy the log back (and flush it), and once the log has grown and a round copied all of it the
writer checkpoints the little left, so that its next write starts the log over (under steady writes it otherwise
never would); a reader on an old snapshot (a backup) keeps the log, and the writer goes on meanwhile."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenure.services.embedded import Allocator
from tenure.store.engine import open_snapshot
from tenure.store.writer import Checkpointer


def _starts(path: str) -> int:
    """How many times the log has started over: the checkpoint sequence number of its header (bytes 12-15)."""
    with open(path + "-wal", "rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Allocator, str]]:
    monkeypatch.setattr(Checkpointer, "INTERVAL", 3600.0)  # the test takes the rounds itself
    monkeypatch.setattr(Checkpointer, "RESTART_AT", 64)
    path = str(tmp_path / "t.db")
    a = Allocator.open(f"sqlite:///{path}")
    a.create_pool("vlans", ranges=[[1, 4094]])
    yield a, path
    a.close()


def _round(cp: Checkpointer, path: str) -> None:
    with sqlite3.connect(path, timeout=0, isolation_level=None) as conn:
        cp.checkpoint(conn)


def _grow(a: Allocator, n: int, tag: str) -> None:
    for i in range(n):
        a.claim("vlans", f"{tag}-{i}")


def test_the_writer_checkpoints_only_when_asked_and_the_log_starts_over(store: tuple[Allocator, str]) -> None:
    a, path = store
    cp = a.runtime.writer._checkpointer
    assert cp is not None
    before = _starts(path)
    _grow(a, 1100, "a")
    # Past SQLite's own threshold (1,000 frames), the log has not started over: the writer's commits made no
    # checkpoint (with SQLite's default they would have, and the next write would have started it over).
    assert _starts(path) == before and a.runtime.writer.checkpoints == 0
    _round(cp, path)
    assert cp.due.is_set()  # all of a grown log copied: the writer's turn
    a.claim("vlans", "one")  # the writer checkpoints after this batch (its callers are answered before)...
    a.claim("vlans", "two")  # ...and this write starts the log over (answered after: one writer thread)
    assert a.runtime.writer.checkpoints == 1 and not cp.due.is_set()
    assert _starts(path) > before  # (twice here: with the writer idle, the round itself reached the log's end)


def test_when_the_rounds_fail_the_writer_checkpoints_on_its_own(store: tuple[Allocator, str]) -> None:
    a, path = store
    cp = a.runtime.writer._checkpointer
    assert cp is not None
    before = _starts(path)
    cp.last_round -= Checkpointer.STALE + 1  # (as if every round had failed since)
    a.claim("vlans", "one")
    a.claim("vlans", "two")
    assert a.runtime.writer.checkpoints == 1 and _starts(path) > before


def test_a_reader_on_an_old_snapshot_keeps_the_log_and_the_writer_goes_on(store: tuple[Allocator, str]) -> None:
    a, path = store
    cp = a.runtime.writer._checkpointer
    assert cp is not None
    conn_r, revision = open_snapshot(a.runtime.engine)  # a backup's snapshot
    try:
        _grow(a, 200, "b")
        _round(cp, path)  # (returns: a passive round waits for nobody)
        assert not cp.due.is_set()  # the reader still needs the log: nothing for the writer to finish
        assert a.runtime.revision >= revision + 200
    finally:
        conn_r.close()
    _round(cp, path)
    assert cp.due.is_set()
