"""Opening a store: engine, durability settings, migrations, and the single-owner lock.

SQLite (the default) runs in WAL mode with ``synchronous=FULL``: a commit
returns only after the WAL is fsynced, so a claim acknowledged after its commit
survives a kill -9 or a power cut. PostgreSQL runs through psycopg 3 with its
default synchronous commit.

Tenure keeps each pool's free/taken index in memory and changes it only through
one writer (DESIGN.md invariant 2), so exactly one process may own a store. For
SQLite the owner holds an exclusive ``flock`` on ``<db>.lock``; for PostgreSQL
it holds a session advisory lock. A second owner is refused at open instead of
silently diverging.
"""

from __future__ import annotations

import fcntl
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url

from tenure.domain.errors import Unavailable

MIGRATIONS = Path(__file__).with_name("migrations")
_PG_LOCK_ID = 0x7E_4E_0E  # arbitrary constant: "the owner of this Tenure database"
_PG_MIGRATE_LOCK_ID = 0x7E_4E_0F  # held by a migration's transaction


class StoreLocked(Unavailable):
    """Another process owns this store."""


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine with Tenure's durability settings for the URL's backend."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:":
            raise ValueError("Tenure needs a SQLite file, not an in-memory database")
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            u, connect_args={"check_same_thread": False, "timeout": 10}, pool_size=8, max_overflow=8
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        # Everything ends: bounded connects, statements and lock waits.
        # Statements end well within a request's 30 s: a commit that is cut short fails cleanly
        # (and is undone) instead of committing after its caller was told it failed.
        # A dead peer (host gone, cable cut, half-open socket) is noticed within seconds, not hours:
        # TCP keepalives and tcp_user_timeout on every connection (docs/replication.md).
        connect_args = {"connect_timeout": 10, "options": "-c statement_timeout=20000 -c lock_timeout=10000",
                        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                        "tcp_user_timeout": 10_000}
        return create_engine(u, pool_size=8, max_overflow=8, pool_pre_ping=True, connect_args=connect_args)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://...")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = _config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # replicas starting together migrate one after the other
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_MIGRATE_LOCK_ID})
        current, head, known = _versions(conn)
        if not known:  # Alembic would only say it cannot locate the revision
            raise _newer(current, head)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _versions(conn: Connection) -> tuple[str | None, str, bool]:
    """(the store's schema version, this code's newest, whether this code knows the store's version)."""
    current = MigrationContext.configure(conn).get_current_revision()
    return current, head(), current is None or knows(current)


schema_versions = _versions


@functools.cache
def _script() -> ScriptDirectory:
    """This code's migrations (read once: they are files of the package)."""
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest schema version this code knows."""
    return _script().get_current_head() or ""


def knows(version: str) -> bool:
    """Whether ``version`` is one of this code's schema versions (one it can create, and upgrade from)."""
    return any(r.revision == version for r in _script().walk_revisions())


def upgrade_to(conn: Connection, version: str) -> None:
    """Run the migrations up to ``version`` (or ``head``) inside ``conn``'s transaction."""
    cfg = _config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, version)


def _newer(current: str | None, head: str) -> SchemaMismatch:
    return SchemaMismatch(
        f"the database's schema is version {current}, newer than this code's {head}: "
        "run the newer code (or restore the database this code was used with)",
        code="schema_mismatch", database=current, code_version=head)


def check_schema(engine: Engine) -> str:
    """A replica that does not migrate: the store's schema must be this code's, or it is refused, naming both.

    The leader (or a single server) migrates; a follower started before the leader migrated, or from older
    code than the database's, must not read rows it does not understand.
    """
    with engine.connect() as conn:
        current, head, known = _versions(conn)
    if not known:
        raise _newer(current, head)
    if current != head:
        raise SchemaMismatch(
            f"the database's schema is version {current or 'none'}, this code's is {head}: "
            "start a replica that leads (it migrates) first", code="schema_mismatch",
            database=current, code_version=head)
    return current


def open_snapshot(engine: Engine) -> tuple[Connection, int]:
    """A connection inside a stable read transaction, and the revision its view is at: ``REPEATABLE READ`` on
    PostgreSQL, a ``BEGIN`` on SQLite (a WAL reader sees one snapshot per transaction). Readers never block the
    writer on either backend. The caller closes the connection."""
    conn = engine.connect()
    try:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        else:
            conn.exec_driver_sql("BEGIN")
        revision = conn.execute(text("SELECT revision FROM state WHERE id = 1")).scalar_one()
    except BaseException:
        conn.close()
        raise
    return conn, revision


class SchemaMismatch(Unavailable):
    """The store's schema is not the one this code was written for."""


@dataclass
class OwnerLock:
    """Proof that this process is the store's only owner; release on close."""

    _file: Any = None
    _conn: Connection | None = None
    description: str = ""
    _shared: bool = False
    _closed: bool = field(default=False)

    def release(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
        if self._conn is not None:
            try:
                kind = "_shared" if self._shared else ""
                self._conn.execute(text(f"SELECT pg_advisory_unlock{kind}(:id)"), {"id": _PG_LOCK_ID})
            except Exception:  # the session is gone (the database restarted, say): so is its lock
                self._conn.invalidate()
            finally:
                self._conn.close()


def acquire_owner_lock(engine: Engine, *, shared: bool = False) -> OwnerLock:
    """This process owns the store: alone (a server), or ``shared`` with the other replicas (PostgreSQL)."""
    if engine.dialect.name == "sqlite":
        path = f"{engine.url.database}.lock"
        f = open(path, "a+")  # noqa: SIM115 - held for the store's lifetime
        os.chmod(path, 0o600)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise StoreLocked(
                f"another process owns the store {engine.url.database}", code="store_locked"
            ) from None
        return OwnerLock(_file=f, description=path)
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    kind = "_shared" if shared else ""
    got = conn.execute(text(f"SELECT pg_try_advisory_lock{kind}(:id)"), {"id": _PG_LOCK_ID}).scalar()
    if not got:
        conn.close()
        raise StoreLocked("another process owns this PostgreSQL database"
                          + (" (a server that is not a replica)" if shared else
                             " (a server, or replicas: start this one with --replica-name to join them)"),
                          code="store_locked")
    return OwnerLock(_conn=conn, description="pg advisory lock", _shared=shared)
