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


def _frames(path: str) -> int:
    """The frames in the log now, from its file (a 32-byte header, then frames of 24 bytes and a page), with no
    checkpoint of the test's own."""
    with sqlite3.connect(path) as c:
        page = c.execute("PRAGMA page_size").fetchone()[0]
    wal = Path(path + "-wal")
    return max(0, (wal.stat().st_size - 32) // (24 + page)) if wal.exists() else 0


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
    _grow(a, 1100, "a")
    grown = _frames(path)
    assert grown > 1000  # past SQLite's own threshold: the writer's commits made no checkpoint
    assert a.runtime.writer.checkpoints == 0
    _round(cp, path)
    assert cp.due.is_set()  # all of a grown log copied: the writer's turn
    a.claim("vlans", "one")  # the writer checkpoints after this batch (its callers are answered before)...
    a.claim("vlans", "two")  # (answered after that checkpoint: one writer thread)
    assert a.runtime.writer.checkpoints == 1 and not cp.due.is_set()
    _grow(a, 20, "b")  # ...and its next write starts the log over: the file is written from its start again
    with sqlite3.connect(path) as c:
        _, frames, _ = c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert frames < 200 < grown  # the log's frames now (the file keeps its size: SQLite's default)


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
