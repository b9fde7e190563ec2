"""Backups in the format ``tenure-backup/1`` (docs/operations.md, section 1): every table of a store at one
revision, as gzip'd UTF-8 JSON lines that any backend can load.

The file, uncompressed, is:

1. a header: ``{"format", "version", "schema", "revision", "created_at", "tables": [{"name", "columns", "rows"}]}``;
2. for each table of the header, in its order: ``{"table": NAME}``, then one JSON array per row in primary-key
   order (times as ISO 8601 UTC strings, everything else as the store holds it);
3. a trailer: ``{"sha256", "lines"}``: the SHA-256 of every byte before the trailer, and the number of lines.

The same state gives the same bytes (sorted rows, gzip without a time stamp), so two backups can be compared.
:func:`write` reads one snapshot (a read transaction: the writer is never blocked); :func:`verify` checks a file
without trusting any of it; :func:`rows` reads a verified file back, table by table, without holding it in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Table, func, select, text

from tenure.store import schema
from tenure.store.schema import UTCDateTime

FORMAT = "tenure-backup"
VERSION = 1
# Coordination of replicas, not state: a restored store starts with no leader and no replica rows.
LEFT_OUT = frozenset({"leadership", "replicas"})


class BackupError(Exception):
    """A backup file that cannot be trusted, and why (checksum, truncation, format, counts)."""


@dataclass(frozen=True)
class Header:
    schema: str
    revision: int
    created_at: str
    tables: tuple[tuple[str, tuple[str, ...], int], ...]  # (name, columns, rows)

    def counts(self) -> dict[str, int]:
        return {name: n for name, _, n in self.tables}


def tables() -> list[Table]:
    """The tables a backup holds, in an order that loads without breaking a foreign key."""
    return [t for t in schema.metadata.sorted_tables if t.name not in LEFT_OUT]


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bytes):
        raise TypeError("binary columns are not in the schema")
    return value


def decode(table: Table, row: Sequence[Any]) -> dict[str, Any]:
    """A row of the file as the table's column values (times back to datetimes)."""
    out = {}
    for col, value in zip(table.columns, row, strict=True):
        if value is not None and isinstance(col.type, UTCDateTime):
            value = datetime.fromisoformat(value)
        out[col.name] = value
    return out


class _Hashing:
    """Writes lines to the gzip stream and hashes exactly the bytes written."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.lines = 0

    def line(self, obj: Any) -> None:
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        self.sha.update(data)
        self.out.write(data)
        self.lines += 1


def write(conn: Connection, revision: int, out: IO[bytes], *, now: datetime) -> Header:
    """Write the store as ``conn``'s snapshot holds it (a read transaction at ``revision``) to ``out``."""
    schema_version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    chosen = tables()
    counts = [(t.name, tuple(c.name for c in t.columns), _count(conn, t)) for t in chosen]
    header = Header(schema_version, revision, now.astimezone(UTC).isoformat(), tuple(counts))
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as gz:  # no name, no time: same state, same bytes
        w = _Hashing(gz)
        w.line({"format": FORMAT, "version": VERSION, "schema": header.schema, "revision": revision,
                "created_at": header.created_at,
                "tables": [{"name": n, "columns": list(cols), "rows": rows} for n, cols, rows in counts]})
        for t in chosen:
            w.line({"table": t.name})
            q = t.select().order_by(*t.primary_key.columns)
            for row in conn.execution_options(stream_results=True, yield_per=2000).execute(q):
                w.line([_encode(v) for v in row])
        gz.write((json.dumps({"sha256": w.sha.hexdigest(), "lines": w.lines}) + "\n").encode())
    return header


def _count(conn: Connection, t: Table) -> int:
    return conn.execute(select(func.count()).select_from(t)).scalar_one()


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with gzip.open(path, "rb") as f:
            yield from f
    except (OSError, EOFError, zlib.error) as exc:  # gzip: a bad CRC, a truncated stream, not gzip at all
        raise BackupError(f"{path}: not a readable backup ({exc})") from None


def verify(path: Path) -> Header:
    """Check a backup end to end: its format, every line, the row counts of the header, the checksum. Answers the
    header; raises :class:`BackupError` naming the first problem."""
    sha = hashlib.sha256()
    header: Header | None = None
    expected: list[tuple[str, int]] = []
    table_i, rows_seen, lines = -1, 0, 0
    trailer = None
    for raw in _lines(path):
        if trailer is not None:
            raise BackupError(f"{path}: data after the trailer (line {lines + 2})")
        try:
            obj = json.loads(raw)
        except ValueError:
            raise BackupError(f"{path}: line {lines + 1} is not JSON (the file is damaged)") from None
        if header is None:
            header = _header(path, obj)
            expected = [(n, rows) for n, _, rows in header.tables]
        elif isinstance(obj, dict) and "sha256" in obj:
            trailer = obj
            continue
        elif isinstance(obj, dict) and "table" in obj:
            if table_i >= 0 and rows_seen != expected[table_i][1]:
                raise BackupError(f"{path}: table {expected[table_i][0]} has {rows_seen} rows, "
                                  f"the header says {expected[table_i][1]}")
            table_i += 1
            if table_i >= len(expected) or obj["table"] != expected[table_i][0]:
                raise BackupError(f"{path}: table {obj['table']!r} is not the next one the header names")
            rows_seen = 0
        elif isinstance(obj, list) and table_i >= 0:
            rows_seen += 1
        else:
            raise BackupError(f"{path}: line {lines + 1} is neither a table, a row nor the trailer")
        sha.update(raw)
        lines += 1
    if header is None:
        raise BackupError(f"{path}: empty")
    if trailer is None:
        raise BackupError(f"{path}: truncated (no trailer after {lines} lines)")
    if table_i != len(expected) - 1 or (expected and rows_seen != expected[table_i][1]):
        raise BackupError(f"{path}: truncated or incomplete: the tables do not match the header")
    if trailer.get("lines") != lines or trailer.get("sha256") != sha.hexdigest():
        raise BackupError(f"{path}: checksum mismatch: the content is not what was written")
    return header


def _header(path: Path, obj: Any) -> Header:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise BackupError(f"{path}: not a Tenure backup (no {FORMAT} header)")
    if obj.get("version") != VERSION:
        raise BackupError(f"{path}: format version {obj.get('version')!r}; this tenure reads version {VERSION}")
    try:
        return Header(str(obj["schema"]), int(obj["revision"]), str(obj["created_at"]),
                      tuple((str(t["name"]), tuple(t["columns"]), int(t["rows"])) for t in obj["tables"]))
    except (KeyError, TypeError, ValueError):
        raise BackupError(f"{path}: a damaged header") from None


def rows(path: Path) -> Iterator[tuple[str, list[Any]]]:
    """(table, row) for every row of a verified backup, in the file's order."""
    current = None
    for i, raw in enumerate(_lines(path)):
        obj = json.loads(raw)
        if i == 0 or (isinstance(obj, dict) and "sha256" in obj):
            continue
        if isinstance(obj, dict):
            current = obj["table"]
            continue
        yield current, obj
