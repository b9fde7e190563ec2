"""The backup format (issue 17, step 1; docs/operations.md section 1): one snapshot of every table, checked end to
end, the same bytes for the same state, and every kind of damage refused with its name."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tenure import Allocator
from tenure.store import backup

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _take(alloc: Allocator, path: Path) -> backup.Header:
    rt = alloc.runtime
    conn, revision = rt.history.open_snapshot()
    try:
        with open(path, "wb") as out:
            return backup.write(conn, revision, out, now=NOW)
    finally:
        conn.close()


@pytest.fixture
def filled(alloc: Allocator) -> Allocator:
    alloc.create_pool("vlans", ranges=[[1, 4094]])
    for key in ("a", "b", "ünïcode key / with slash"):
        alloc.claim("vlans", key)
    alloc.release("vlans", "b")
    return alloc


def test_a_backup_holds_every_table_at_its_revision_and_verifies(filled: Allocator, tmp_path: Path) -> None:
    path = tmp_path / "one.tbk"
    header = _take(filled, path)
    assert header.revision == filled.runtime.revision
    assert header.counts()["claims"] == 2 and header.counts()["pools"] == 1
    assert "leadership" not in header.counts() and "replicas" not in header.counts()
    assert backup.verify(path) == header
    rows = [r for t, r in backup.rows(path) if t == "claims"]
    claims = backup.tables()[[t.name for t in backup.tables()].index("claims")]
    assert sorted(backup.decode(claims, r)["key"] for r in rows) == ["a", "ünïcode key / with slash"]


def test_the_same_state_gives_the_same_bytes(filled: Allocator, tmp_path: Path) -> None:
    _take(filled, tmp_path / "1.tbk")
    _take(filled, tmp_path / "2.tbk")
    assert (tmp_path / "1.tbk").read_bytes() == (tmp_path / "2.tbk").read_bytes()


def _damaged(path: Path, change) -> Path:  # noqa: ANN001
    raw = bytearray(gzip.decompress(path.read_bytes()))
    out = path.with_name("damaged.tbk")
    out.write_bytes(gzip.compress(bytes(change(raw)), mtime=0))
    return out


@pytest.mark.parametrize(("what", "change", "message"), [
    ("one byte of a row flipped", lambda b: b.replace(b'"a"', b'"A"', 1), "checksum mismatch"),
    ("truncated before the trailer", lambda b: b[: b.rindex(b'{"sha256"')], "truncated"),
    ("cut in the middle of a table", lambda b: b[: b.index(b'{"table":"claims"}') + 20], "not JSON"),
    ("a newer format version", lambda b: b.replace(b'"version":1', b'"version":2', 1), "format version 2"),
    ("not a backup at all", lambda b: b'{"hello": 1}\n', "not a Tenure backup"),
])
def test_damage_is_refused_with_its_name(filled: Allocator, tmp_path: Path, what: str, change, message: str) -> None:  # noqa: ANN001
    path = tmp_path / "good.tbk"
    _take(filled, path)
    with pytest.raises(backup.BackupError, match=message):
        backup.verify(_damaged(path, change))


def test_a_damaged_gzip_stream_is_refused(filled: Allocator, tmp_path: Path) -> None:
    path = tmp_path / "good.tbk"
    _take(filled, path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one byte of the compressed file
    bad = tmp_path / "flipped.tbk"
    bad.write_bytes(bytes(raw))
    with pytest.raises(backup.BackupError):
        backup.verify(bad)
    cut = tmp_path / "cut.tbk"
    cut.write_bytes(path.read_bytes()[: len(raw) // 2])
    with pytest.raises(backup.BackupError):
        backup.verify(cut)


def test_writing_reads_a_snapshot_while_the_writer_goes_on(filled: Allocator, tmp_path: Path) -> None:
    rt = filled.runtime
    conn, revision = rt.history.open_snapshot()
    try:
        filled.claim("vlans", "made during the backup")  # committed while the snapshot is open: not in it
        out = io.BytesIO()
        header = backup.write(conn, revision, out, now=NOW)
    finally:
        conn.close()
    assert header.revision == revision < rt.revision
    assert header.counts()["claims"] == 2
