"""Leadership of replicas on one PostgreSQL database: a lease row on the database's clock, and the fence.

See docs/replication.md. One row (``leadership``, id 1) says who leads (``holder``, ``address``), with which
``epoch``, until when (``lease_until``). Only the database's clock (``clock_timestamp()``) judges a lease, so
the replicas' clocks never matter. A lease row rather than a session advisory lock: a leader stopped with
SIGSTOP keeps its connection (the kernel answers keepalives for it), so its session lock would never be freed.

- :meth:`Leadership.take` becomes the leader if the lease expired: the epoch grows by one.
- :meth:`Leadership.renew` extends the lease of this epoch; False: the lead is lost.
- :meth:`Leadership.fence` runs last in each of the leader's write transactions (the writer's ``fence``):
  a no-op update of the row that matches only this epoch with an unexpired lease, and so takes the row's lock.
  Zero rows: :class:`Fenced`, the transaction rolls back, the batch is undone. A leader that lost its lease
  without noticing (paused, partitioned, a half-open socket) therefore commits nothing: a take-over and a
  fenced batch are ordered by the row's lock, and whichever comes second sees the other.

``skew`` moves this object's idea of the database's clock (tests: time passes for one contender without
anyone sleeping). Every statement runs under ``statement_timeout`` and ``lock_timeout``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from tenure.domain.errors import InvalidInput, Unavailable

STATEMENT_TIMEOUT_MS = 2000
CAS_LOCK_WAIT_MS = 300  # a take-over waits this long for the leadership row before it ends the old writers


class Fenced(Unavailable):
    """This replica's epoch is not the leading one (or its lease ran out): it may not commit."""

    def __init__(self, message: str = "this replica is no longer the leader") -> None:
        super().__init__(message, code="not_leader")


@dataclass(frozen=True)
class Leader:
    """The leadership row as read: who leads, with which epoch, until when (the database's clock)."""

    epoch: int
    holder: str | None
    address: str | None
    lease_until: datetime
    now: datetime  # the database's clock (with this object's skew) when it was read

    @property
    def live(self) -> bool:
        return self.holder is not None and self.lease_until > self.now


LOCK_CLASS = 0x7E4E  # advisory locks (LOCK_CLASS, epoch): held by the leader of that epoch, on its election connection


class Leadership:
    """One replica's view of the lead, and its dedicated election connection.

    Two signs of a dead leader, and either lets a follower take over:

    - **its lease ran out** (on the database's clock): it stopped renewing, whatever the reason (paused,
      partitioned, gone);
    - **its epoch's lock is free**: the leader of epoch E holds the session advisory lock (LOCK_CLASS, E) on its
      election connection, taken before its epoch was; PostgreSQL frees it the moment that session ends (the
      process was killed, the connection was terminated). A follower that can take the lock knows at once, and
      need not wait for the lease. A paused leader keeps its lock, so for it the lease decides.

    Either way the take-over is a compare-and-set of the epoch (E to E + 1), after the lock of E + 1 is taken,
    so two candidates cannot both win, and the old leader's next batch fails its fence. Locks are never taken
    twice by one session (they would stack), and the election connection has keepalives, ``tcp_user_timeout``
    and timeouts on every statement and lock wait: an error on it ends this replica's lead (the connection,
    and with it the lock, is dropped).
    """

    def __init__(self, engine: Engine, *, name: str, address: str, lease: float = 5.0,
                 skew: timedelta = timedelta(0)) -> None:
        if engine.dialect.name != "postgresql":
            raise InvalidInput("replicas need PostgreSQL: a SQLite store has one process, no leader to elect",
                               code="replicas_need_postgresql")
        if not 0 < lease <= 3600:
            raise InvalidInput("the lease must be more than 0 and at most 3600 seconds", code="invalid_lease")
        self.engine = engine
        self.name = name
        self.address = address
        self.lease = timedelta(seconds=lease)
        self.skew = skew
        self.epoch: int | None = None  # set while this replica holds the lead
        self._conn: Connection | None = None
        self._held: set[int] = set()  # epochs whose lock this session holds

    def _now(self) -> str:
        return "(clock_timestamp() + :skew)"

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"skew": self.skew, "lease": self.lease, "me": self.name, "addr": self.address, **extra}

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                conn.execute(text(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                conn.execute(text(f"SET lock_timeout = {STATEMENT_TIMEOUT_MS}"))
                conn.execute(text(f"SET idle_in_transaction_session_timeout = {STATEMENT_TIMEOUT_MS}"))
                # Who is who in pg_stat_activity (an operator, or a test, can find this replica's session).
                conn.execute(text("SELECT set_config('application_name', :name, false)"),
                             {"name": f"tenure election {self.name}"[:63]})
            except BaseException:
                conn.invalidate()
                raise
            self._conn = conn
        return self._conn

    def _run(self, sql: str, **params: Any) -> Any:
        try:
            result = self._connection().execute(text(sql), self._params(**params))
            return result.first() if result.returns_rows else None
        except DBAPIError as exc:
            if exc.connection_invalidated:
                self.close()  # the session and its locks are gone: so is the lead
            raise
        except BaseException:
            self.close()  # interrupted mid-statement: the session's state is unknown
            raise

    def close(self) -> None:
        """Drop the election connection: its locks go with it, and this replica no longer leads."""
        conn, self._conn = self._conn, None
        self._held.clear()
        self.epoch = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()  # never back to the pool: a session that held locks
            with contextlib.suppress(Exception):
                conn.close()

    def _try_lock(self, epoch: int) -> bool:
        if epoch in self._held:
            return True
        got = bool(self._run("SELECT pg_try_advisory_lock(:cls, :key) AS got", cls=LOCK_CLASS, key=_key(epoch)).got)
        if got:
            self._held.add(epoch)
        return got

    def _unlock(self, epoch: int) -> None:
        if epoch in self._held:
            self._held.discard(epoch)
            self._run("SELECT pg_advisory_unlock(:cls, :key)", cls=LOCK_CLASS, key=_key(epoch))

    def read(self, conn: Connection | None = None) -> Leader:
        """The row now: on the election connection, or on ``conn`` (another thread's, say the API's)."""
        sql = f"SELECT epoch, holder, address, lease_until, {self._now()} AS now FROM leadership WHERE id = 1"
        row = self._run(sql) if conn is None else conn.execute(text(sql), self._params()).first()
        return Leader(row.epoch, row.holder, row.address, row.lease_until, row.now)

    def take(self) -> int | None:
        """Lead, if the leader is gone (its lease ran out, or its epoch's lock is free): the new epoch, or None."""
        current = self.read()
        if self.epoch is not None and self.epoch == current.epoch:
            return None  # this replica leads already
        e = current.epoch
        if current.live:
            if not self._try_lock(e):
                return None  # its leader lives (or is paused: its lease will tell)
            self._unlock(e)
            still = "TRUE"  # its session ended: it is gone, whatever its lease says
        else:
            still = f"lease_until < {self._now()}"  # unless it renewed meanwhile
        if not self._try_lock(e + 1):
            return None  # another candidate is taking over right now
        cas = (f"UPDATE leadership SET epoch = epoch + 1, holder = :me, address = :addr, "
               f"lease_until = {self._now()} + :lease, changed_at = {self._now()} "
               f"WHERE id = 1 AND epoch = :e AND {still} RETURNING epoch")
        try:
            try:
                self._run(f"SET lock_timeout = {CAS_LOCK_WAIT_MS}")
                row = self._run(cas, e=e)
            except DBAPIError as exc:
                if exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) != "55P03":
                    raise  # not "lock not available"
                # The row is locked: by the old leader's batch, its process paused between the fence and the
                # commit (a live leader holds it for a moment only). If the leader is still gone, end its writer
                # sessions (whatever they had not committed is not committed), and try once more.
                again = self.read()
                if again.epoch != e or (not current.live and again.live):  # it renewed, or another took over
                    row = None
                else:
                    self._end_writers()
                    row = self._run(cas, e=e)
            finally:
                if self._conn is not None:
                    self._run(f"SET lock_timeout = {STATEMENT_TIMEOUT_MS}")
        except BaseException:
            with contextlib.suppress(Exception):
                self._unlock(e + 1)
            raise
        if row is None:
            self._unlock(e + 1)
            return None
        self.epoch = row.epoch
        # The old leader's writer sessions may also hold other locks (a claim's value, say) that the first
        # batches would wait for: end them (they can commit nothing now).
        with contextlib.suppress(Exception):
            self._end_writers()
        return self.epoch

    def _end_writers(self) -> None:
        self._run("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
                  "WHERE application_name LIKE 'tenure writer %' AND application_name <> :mine "
                  "AND datname = current_database()", mine=_writer_name(self.name))

    def renew(self) -> bool:
        """Extend this epoch's lease; False (and no epoch any more) if another replica leads."""
        if self.epoch is None:
            return False
        row = self._run(f"UPDATE leadership SET lease_until = {self._now()} + :lease "
                        "WHERE id = 1 AND epoch = :epoch AND holder = :me RETURNING epoch", epoch=self.epoch)
        if row is None:
            self.close()
        return row is not None

    def step_down(self) -> None:
        """Give the lead up now (a clean shutdown): the lease ends, a follower takes over at once."""
        if self.epoch is not None:
            with contextlib.suppress(Exception):
                self._run("UPDATE leadership SET lease_until = timestamptz '1970-01-01 00:00:00+00' "
                          "WHERE id = 1 AND epoch = :epoch AND holder = :me RETURNING epoch", epoch=self.epoch)
        self.close()

    def prepare(self, conn: Connection) -> None:
        """A new write connection of the leader: named, so that the next leader can end it (see :meth:`take`)
        should this process be paused inside a transaction, holding locks; and ended by the database if it
        sits idle inside a transaction for longer than the lease."""
        ms = int(self.lease.total_seconds() * 1000)
        conn.execute(text(f"SET idle_in_transaction_session_timeout = {ms}"))
        conn.execute(text("SELECT set_config('application_name', :name, false)"), {"name": _writer_name(self.name)})
        conn.commit()

    def fence(self, conn: Connection, epoch: int | None = None) -> None:
        """The last statement of a leader's write transaction: :class:`Fenced` unless ``epoch`` (the writer's;
        default this replica's) still leads with an unexpired lease. A writer of an older epoch (one closing
        late, after this replica led again) is fenced without touching the current one."""
        if epoch is None:
            epoch = self.epoch
        if epoch is None:
            raise Fenced()
        row = conn.execute(text(f"UPDATE leadership SET lease_until = lease_until WHERE id = 1 AND epoch = :epoch "
                                f"AND lease_until > {self._now()} RETURNING epoch"),
                           self._params(epoch=epoch)).first()
        if row is None:
            if self.epoch == epoch:
                self.epoch = None
            raise Fenced()


def _writer_name(name: str) -> str:
    """The application_name of a replica's write sessions (what the next leader ends)."""
    return f"tenure writer {name}"[:63]


def _key(epoch: int) -> int:
    """The second key of an epoch's lock (an int4)."""
    return epoch % 2_147_483_647
