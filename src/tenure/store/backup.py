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
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Column, Connection, Engine, MetaData, Table, func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from tenure.store import schema
from tenure.store.engine import head, knows, schema_versions, upgrade_to
from tenure.store.rawinsert import RawInsert
from tenure.store.schema import UTCDateTime

FORMAT = "tenure-backup"
VERSION = 1
# Coordination of replicas, not state: a restored store starts with no leader and no replica rows.
LEFT_OUT = frozenset({"leadership", "replicas"})
# Revisions a restored store issues start this far above the backup's: the store the backup came from may have
# issued revisions after it, and a watcher resuming from one of them must get 410, not a wrong resume.
JUMP = 2**32
BATCH = 5000  # rows per INSERT while restoring
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


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


def _is_time(table: str, column: str) -> bool:
    """Whether this release's schema holds ``table.column`` as a time (a column an older schema had and this one
    dropped is loaded as it is: the migrations that dropped it do not read it)."""
    t = schema.metadata.tables.get(table)
    return t is not None and column in t.columns and isinstance(t.columns[column].type, UTCDateTime)


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
        header = Header(str(obj["schema"]), int(obj["revision"]), str(obj["created_at"]),
                        tuple((str(t["name"]), tuple(t["columns"]), int(t["rows"])) for t in obj["tables"]))
    except (KeyError, TypeError, ValueError):
        raise BackupError(f"{path}: a damaged header") from None
    for name, cols, _ in header.tables:  # names go into SQL: only Tenure's tables, plain identifiers
        if name not in schema.metadata.tables or name in LEFT_OUT:
            raise BackupError(f"{path}: table {name[:64]!r} is not one of Tenure's")
        if not cols or not all(isinstance(c, str) and _IDENTIFIER.fullmatch(c) for c in cols):
            raise BackupError(f"{path}: table {name}: a damaged column list")
    return header


def header_of(path: Path) -> Header:
    """The header of a backup, read from its first line only (cheap; :func:`verify` checks the rest)."""
    for raw in _lines(path):
        try:
            return _header(path, json.loads(raw))
        except ValueError:
            raise BackupError(f"{path}: line 1 is not JSON (the file is damaged)") from None
    raise BackupError(f"{path}: empty")


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


# ------------------------------------------------------------------ restore


class NotEmpty(BackupError):
    """The target store holds data; restoring over it needs ``force``."""


@dataclass(frozen=True)
class Restored:
    header: Header
    schema_from: str  # the backup's schema version, loaded as it was
    schema_to: str  # the version the store was then upgraded to
    revision: int  # the revision the restored store goes on from (the backup's + JUMP)
    rows: int


def _tenure_tables(conn: Connection) -> list[str]:
    names = set(inspect(conn).get_table_names())
    ours = set(schema.metadata.tables) | {"alembic_version"}
    return sorted(names & ours)


def holds_data(conn: Connection) -> bool:
    """Whether a store holds anything a restore would lose: a revision past 0, or a row in any table but the
    ones its migrations create with one row (the state, the leadership)."""
    present = set(_tenure_tables(conn)) - {"alembic_version"}
    if "state" in present and conn.execute(text("SELECT revision FROM state WHERE id = 1")).scalar() not in (None, 0):
        return True
    return any(conn.execute(text(f"SELECT 1 FROM {name} LIMIT 1")).first() is not None  # noqa: S608 - our names
               for name in present - {"state", "leadership"})


def restore(engine: Engine, path: Path, *, force: bool = False, verified: Header | None = None) -> Restored:
    """Load the backup at ``path`` into the store of ``engine`` (the caller owns it: no server runs on it).

    The file is verified first (nothing is written from a file that fails). A store holding data is refused
    unless ``force``, which drops Tenure's tables first. The schema is created at the backup's version, the rows
    are loaded, the migrations since are run, and the state row records the restore: all in one transaction, so a
    failure leaves the store as it was. The restored store goes on from the backup's revision + :data:`JUMP`.
    """
    header = verified or verify(path)
    if not knows(header.schema):
        raise BackupError(f"{path}: the backup's schema is version {header.schema}, newer than this tenure's "
                          f"{head()}: restore it with the tenure that took it, or a newer one")
    with engine.connect() as conn:
        if holds_data(conn) and not force:
            raise NotEmpty(f"the target store ({_where(engine)}) is not empty: restore into an empty store, or "
                           "pass --force to replace everything in it")
    try:
        with engine.begin() as conn:
            _drop(conn)
            upgrade_to(conn, header.schema)
            n = _load(conn, path, header)
            upgrade_to(conn, "head")
            revision = _mark(conn, path, header)
            schema_to = schema_versions(conn)[0] or ""
    except DBAPIError as exc:  # rows this schema does not take (a file made by hand, say): nothing was changed
        raise BackupError(f"{path}: the store refused the backup's rows, nothing was restored: "
                          f"{str(exc.orig).splitlines()[0] if exc.orig else exc}") from None
    return Restored(header, header.schema, schema_to, revision, n)


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _drop(conn: Connection) -> None:
    """Tenure's tables, gone (only those: other tables of a shared PostgreSQL database are left alone)."""
    present = _tenure_tables(conn)
    if not present:
        return
    meta = MetaData()
    meta.reflect(conn, only=present)
    meta.drop_all(conn)


def _load(conn: Connection, path: Path, header: Header) -> int:
    columns = {name: cols for name, cols, _ in header.tables}
    for name in columns:  # the rows the migrations made (the state row, say) give way to the backup's
        conn.execute(text(f"DELETE FROM {name}"))  # noqa: S608 - a table name checked by verify against ours
    inserts: dict[str, tuple[RawInsert, tuple[int, ...]]] = {}
    batch: list[dict[str, Any]] = []
    current, n = None, 0

    def flush() -> None:
        if batch:
            inserts[current][0].execute(conn, batch)  # type: ignore[index]
            batch.clear()

    for name, row in rows(path):
        if name != current:
            flush()
            current = name
            if name not in inserts:
                cols = columns[name]
                table = Table(name, MetaData(), *(_column(name, c) for c in cols))
                inserts[name] = (RawInsert(table), tuple(i for i, c in enumerate(cols) if _is_time(name, c)))
        ins, times = inserts[name]
        for i in times:
            if row[i] is not None:
                row[i] = datetime.fromisoformat(row[i])
        batch.append(dict(zip(ins.columns, row, strict=True)))
        n += 1
        if len(batch) >= BATCH:
            flush()
    flush()
    if conn.dialect.name == "postgresql":  # serial keys (the one-row tables') go on after the loaded ids
        for name in (n for n, cols in columns.items() if "id" in cols):
            seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": name}).scalar()
            if seq is not None:
                conn.execute(text(f"SELECT setval(:s, (SELECT coalesce(max(id), 0) + 1 FROM {name}), false)"),  # noqa: S608
                             {"s": seq})
    return n


def _column(table: str, name: str) -> Column[Any]:
    t = schema.metadata.tables.get(table)
    if t is not None and name in t.columns:
        return Column(name, t.columns[name].type)
    return Column(name)


def _mark(conn: Connection, path: Path, header: Header) -> int:
    st = schema.state.c
    row = conn.execute(select(st.revision, st.compacted_revision, st.restored_to)).one_or_none()
    if row is None or row.revision != header.revision:
        raise BackupError(f"{path}: the state row says revision {row and row.revision}, the header "
                          f"{header.revision}")
    goes_on = header.revision + JUMP
    # An earlier restore's gap below this backup: a watcher from before it must list again (a 410 is always safe).
    compacted = max(row.compacted_revision, row.restored_to or 0)
    conn.execute(schema.state.update().values(revision=goes_on, compacted_revision=compacted,
                                              restored_from=header.revision, restored_to=goes_on))
    return goes_on
