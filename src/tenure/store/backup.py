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
import queue
import re
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import psycopg
from sqlalchemy import Boolean, Connection, Engine, MetaData, Table, func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from tenure.store import schema
from tenure.store.engine import head, knows, schema_versions, upgrade_to
from tenure.store.schema import UTCDateTime

FORMAT = "tenure-backup"
VERSION = 1
# Coordination of replicas, not state: a restored store starts with no leader and no replica rows.
LEFT_OUT = frozenset({"leadership", "replicas"})
# Revisions a restored store issues start this far above the backup's: the store the backup came from may have
# issued revisions after it, and a watcher resuming from one of them must get 410, not a wrong resume.
JUMP = 2**32
BATCH = 5000  # rows per INSERT while restoring
LEVEL = 1  # gzip's fastest: a backup is written while the server runs; level 6 saves a tenth more for 3x the CPU
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


# Times in a backup: ISO 8601 in UTC, always with microseconds ("2026-12-05T12:00:00.000000+00:00"), so the same
# instant is the same text whichever backend it came from.
def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _iso_from_sqlite(value: str) -> str:
    # SQLAlchemy's SQLite DATETIME text, "YYYY-MM-DD HH:MM:SS.ffffff" in UTC: rearranged, not parsed.
    if len(value) == 26 and value[10] == " ":
        return f"{value[:10]}T{value[11:]}+00:00"
    return _iso(datetime.fromisoformat(value))


def _sqlite_from_iso(value: str) -> str:
    if len(value) == 32 and value[10] == "T" and value.endswith("+00:00"):
        return f"{value[:10]} {value[11:26]}"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _readers(dialect: str, table: Table) -> list[tuple[int, Any]]:
    """(column index, conversion) for the columns whose driver value is not the file's: times, SQLite's booleans."""
    out: list[tuple[int, Any]] = []
    for i, col in enumerate(table.columns):
        if isinstance(col.type, UTCDateTime):
            out.append((i, _iso_from_sqlite if dialect == "sqlite" else _iso))
        elif isinstance(col.type, Boolean) and dialect == "sqlite":
            out.append((i, bool))
    return out


class _Hashing:
    """Lines in, gzip'd pieces out: the lines are joined into pieces of about a megabyte, and a second thread
    hashes and compresses each piece (both let go of the GIL) while the first goes on reading and encoding."""

    PIECE = 1 << 20

    def __init__(self, gz: gzip.GzipFile) -> None:
        self.gz = gz
        self.sha = hashlib.sha256()
        self.lines = 0
        self.pending: list[bytes] = []
        self.size = 0
        self.queue: queue.Queue[bytes | None] = queue.Queue(4)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="tenure-backup-gzip", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.failure is None:
                try:
                    self.sha.update(data)
                    self.gz.write(data)
                except BaseException as exc:  # the file is gone (a client that left, a full disk): tell the reader
                    self.failure = exc

    def line(self, data: bytes) -> None:
        self.pending.append(data)
        self.size += len(data)
        self.lines += 1
        if self.size >= self.PIECE:
            self.flush()

    def flush(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.pending:
            self.queue.put(b"".join(self.pending))
            self.pending = []
            self.size = 0

    def close(self) -> str:
        """Everything written and hashed: the digest (raises what the writing thread met)."""
        self.flush()
        self.queue.put(None)
        self.thread.join()
        if self.failure is not None:
            raise self.failure
        return self.sha.hexdigest()

    def abandon(self) -> None:
        self.failure = self.failure or RuntimeError("abandoned")
        self.queue.put(None)
        self.thread.join()


def _line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


def write(conn: Connection, revision: int, out: IO[bytes], *, now: datetime) -> Header:
    """Write the store as ``conn``'s snapshot holds it (a read transaction at ``revision``) to ``out``.

    Rows are read as the driver gives them (no per-value type processing), only times and SQLite's booleans are
    converted, and orjson encodes them: a million rows are a matter of seconds."""
    schema_version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    chosen = tables()
    counts = [(t.name, tuple(c.name for c in t.columns), _count(conn, t)) for t in chosen]
    header = Header(schema_version, revision, now.astimezone(UTC).isoformat(), tuple(counts))
    dialect = conn.dialect.name
    quote = conn.dialect.identifier_preparer.quote
    dumps, newline = orjson.dumps, b"\n"
    # No name, no time in the gzip header, one level: the same state gives the same bytes.
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0, compresslevel=LEVEL) as gz:
        w = _Hashing(gz)
        try:
            w.line(_line({"format": FORMAT, "version": VERSION, "schema": header.schema, "revision": revision,
                          "created_at": header.created_at,
                          "tables": [{"name": n, "columns": list(cols), "rows": rows} for n, cols, rows in counts]}))
            for t in chosen:
                w.line(_line({"table": t.name}))
                convert = _readers(dialect, t)
                cols = ", ".join(quote(c.name) for c in t.columns)
                keys = ", ".join(quote(c.name) for c in t.primary_key.columns)
                result = conn.execution_options(stream_results=True).exec_driver_sql(
                    f"SELECT {cols} FROM {t.name} ORDER BY {keys}")  # noqa: S608 - our own names
                while batch := result.fetchmany(5000):
                    for row in batch:
                        if convert:
                            row = list(row)
                            for i, fn in convert:
                                if row[i] is not None:
                                    row[i] = fn(row[i])
                        w.line(dumps(row if convert else tuple(row)) + newline)
                result.close()
            digest = w.close()
        except BaseException:
            w.abandon()
            raise
        gz.write(_line({"sha256": digest, "lines": w.lines}))
    return header


def _count(conn: Connection, t: Table) -> int:
    return conn.execute(select(func.count()).select_from(t)).scalar_one()


def _lines(path: Path) -> Iterator[bytes]:
    """Every line of the file, each with its newline (the last one's missing if the file was cut)."""
    try:
        with gzip.open(path, "rb") as f:
            rest = b""
            while block := f.read(1 << 20):
                parts = (rest + block).split(b"\n")
                rest = parts.pop()
                for part in parts:
                    yield part + b"\n"
            if rest:
                yield rest
    except (OSError, EOFError, zlib.error) as exc:  # gzip: a bad CRC, a truncated stream, not gzip at all
        raise BackupError(f"{path}: not a readable backup ({exc})") from None


def verify(path: Path) -> Header:
    """Check a backup end to end: its format, every line, the row counts of the header, the checksum. Answers the
    header; raises :class:`BackupError` naming the first problem."""
    scan = _Scan(path)
    for _ in scan.rows(parse=False):
        pass
    assert scan.header is not None
    return scan.header


class _Scan:
    """One pass over a backup that checks it as it goes: the rows come out as they are read, and the problems are
    raised where they are met; the checksum, at the end. A caller that writes rows as they come (a restore) does
    so in a transaction it undoes when the pass raises."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header: Header | None = None

    def rows(self, parse: bool = True) -> Iterator[tuple[str, Any]]:
        path, loads = self.path, orjson.loads
        sha = hashlib.sha256()
        expected: list[tuple[str, int]] = []
        table_i, rows_seen, lines, current = -1, 0, 0, ""
        trailer = None
        for raw in _lines(path):
            if trailer is not None:
                raise BackupError(f"{path}: data after the trailer (line {lines + 2})")
            if raw[:1] == b"[" and raw[-1:] == b"\n" and table_i >= 0:  # a row: the checksum judges its bytes
                rows_seen += 1
                sha.update(raw)
                lines += 1
                if parse:
                    try:
                        yield current, loads(raw)
                    except orjson.JSONDecodeError:
                        raise BackupError(f"{path}: line {lines} is not JSON (the file is damaged)") from None
                continue
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:
                raise BackupError(f"{path}: line {lines + 1} is not JSON (the file is damaged)") from None
            if self.header is None:
                self.header = _header(path, obj)
                expected = [(n, rows) for n, _, rows in self.header.tables]
            elif isinstance(obj, dict) and "sha256" in obj:
                trailer = obj
                continue
            elif isinstance(obj, dict) and "table" in obj:
                if table_i >= 0 and rows_seen != expected[table_i][1]:
                    raise BackupError(f"{path}: table {expected[table_i][0]} has {rows_seen} rows, "
                                      f"the header says {expected[table_i][1]}")
                table_i += 1
                if table_i >= len(expected) or obj["table"] != expected[table_i][0]:
                    raise BackupError(f"{path}: table {str(obj['table'])[:64]!r} is not the next one the header "
                                      "names")
                rows_seen, current = 0, expected[table_i][0]
            else:
                raise BackupError(f"{path}: line {lines + 1} is neither a table, a row nor the trailer")
            sha.update(raw)
            lines += 1
        if self.header is None:
            raise BackupError(f"{path}: empty")
        if trailer is None:
            raise BackupError(f"{path}: truncated (no trailer after {lines} lines)")
        if table_i != len(expected) - 1 or (expected and rows_seen != expected[table_i][1]):
            raise BackupError(f"{path}: truncated or incomplete: the tables do not match the header")
        if trailer.get("lines") != lines or trailer.get("sha256") != sha.hexdigest():
            raise BackupError(f"{path}: checksum mismatch: the content is not what was written")


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
            return _header(path, orjson.loads(raw))
        except orjson.JSONDecodeError:
            raise BackupError(f"{path}: line 1 is not JSON (the file is damaged)") from None
    raise BackupError(f"{path}: empty")


def rows(path: Path) -> Iterator[tuple[str, list[Any]]]:
    """(table, row) for every row of a backup, in the file's order, checked as they are read (a damaged file raises
    :class:`BackupError`, at the latest after its last row)."""
    yield from _Scan(path).rows()


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

    A store holding data is refused unless ``force``, which drops Tenure's tables first. The schema is created at
    the backup's version, the rows are loaded (the file is checked as they are read), the migrations since are
    run, and the state row records the restore: all in one transaction, so a file that fails, or anything else,
    leaves the store as it was. The restored store goes on from the backup's revision + :data:`JUMP`.
    """
    header = verified or header_of(path)  # the rest is checked while it loads: a failure undoes the transaction
    if not knows(header.schema):
        raise BackupError(f"{path}: the backup's schema is version {header.schema}, newer than this tenure's "
                          f"{head()}: restore it with the tenure that took it, or a newer one")
    with engine.connect() as conn:
        if holds_data(conn) and not force:
            raise NotEmpty(f"the target store ({_where(engine)}) is not empty: restore into an empty store, or "
                           "pass --force to replace everything in it")
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":  # else the driver commits each DROP and CREATE as it goes
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            _drop(conn)
            upgrade_to(conn, header.schema)
            n = _load(conn, path, header)
            upgrade_to(conn, "head")
            revision = _mark(conn, path, header)
            schema_to = schema_versions(conn)[0] or ""
    except DBAPIError as exc:  # rows this schema does not take (a file made by hand, say): nothing was changed
        raise BackupError(f"{path}: the store refused the backup's rows, nothing was restored: "
                          f"{str(exc.orig).splitlines()[0] if exc.orig else exc}") from None
    except (psycopg.Error, TypeError, ValueError, IndexError, KeyError) as exc:  # COPY's own, a value of a wrong type
        raise BackupError(f"{path}: a row the store cannot take, nothing was restored: "
                          f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
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
    sink = _PgCopy(conn) if conn.dialect.name == "postgresql" else _SqliteInsert(conn)
    current: str | None = None
    batch: list[list[Any]] = []
    times: list[int] = []
    n = 0
    for name, row in rows(path):
        if name != current:
            if batch:
                sink.put(current, columns[current], batch)  # type: ignore[index]
                batch = []
            current = name
            times = [i for i, c in enumerate(columns[name]) if _is_time(name, c)] if sink.converts else []
        for i in times:
            if row[i] is not None:
                row[i] = _sqlite_from_iso(row[i])
        batch.append(row)
        n += 1
        if len(batch) >= BATCH:
            sink.put(current, columns[current], batch)
            batch = []
    if batch:
        sink.put(current, columns[current], batch)  # type: ignore[index]
    if conn.dialect.name == "postgresql":  # serial keys (the one-row tables') go on after the loaded ids
        for name in (n for n, cols in columns.items() if "id" in cols):
            seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": name}).scalar()
            if seq is not None:
                conn.execute(text(f"SELECT setval(:s, (SELECT coalesce(max(id), 0) + 1 FROM {name}), false)"),  # noqa: S608
                             {"s": seq})
    return n


class _SqliteInsert:
    """Rows to SQLite by the driver's ``executemany`` (times as SQLAlchemy's DATETIME text, converted by the
    caller)."""

    converts = True

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def put(self, table: str, cols: Sequence[str], batch: list[list[Any]]) -> None:
        names = ", ".join(f'"{c}"' for c in cols)  # plain identifiers (checked by verify)
        self.conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))})",
                                  [tuple(r) for r in batch])


class _PgCopy:
    """Rows to PostgreSQL by ``COPY FROM STDIN``: PostgreSQL parses the ISO times itself."""

    converts = False

    def __init__(self, conn: Connection) -> None:
        self.raw = conn.connection.driver_connection  # psycopg's, inside the same transaction

    def put(self, table: str, cols: Sequence[str], batch: list[list[Any]]) -> None:
        names = ", ".join(f'"{c}"' for c in cols)
        with self.raw.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:  # noqa: S608
            for row in batch:
                copy.write_row(row)


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
