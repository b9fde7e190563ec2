"""Leadership of replicas on one PostgreSQL database: a lease row on the database's clock, and the fence.

See docs/replication.md. One row (``leadership``, id 1) says who leads (``holder``, ``address``), with which
``epoch``, until when (``lease_until``). Only the database's clock (``clock_timestamp()``) judges a lease, so
the replicas' clocks never matter. A lease row rather than a session advisory lock: a leader stopped with
SIGSTOP keeps its connection (the kernel answers keepalives for it), so its session lock would never be freed.

- :meth:`Leadership.take` becomes the leader if the lease expired: the epoch grows by one.
- :meth:`Leadership.renew` extends the lease of this epoch; False: the lead is lost.
- :meth:`Leadership.fence` runs first in each of the leader's write transactions (the writer's ``fence``):
  a no-op update of the row that matches only this epoch with an unexpired lease, and so takes the row's lock.
  Zero rows: :class:`Fenced`, the transaction rolls back, the batch is undone. A leader that lost its lease
  without noticing (paused, partitioned, a half-open socket) therefore commits nothing: a take-over and a
  fenced batch are ordered by the row's lock, and whichever comes second sees the other.

``skew`` moves this object's idea of the database's clock (tests: time passes for one contender without
anyone sleeping). Every statement runs under ``statement_timeout`` and ``lock_timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, text

from tenure.domain.errors import InvalidInput, Unavailable

STATEMENT_TIMEOUT_MS = 2000


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


class Leadership:
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

    def _now(self) -> str:
        return "(clock_timestamp() + :skew)"

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"skew": self.skew, "lease": self.lease, "me": self.name, "addr": self.address, **extra}

    def _run(self, sql: str, **params: Any) -> Any:
        with self.engine.begin() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            conn.execute(text(f"SET LOCAL lock_timeout = {STATEMENT_TIMEOUT_MS}"))
            return conn.execute(text(sql), self._params(**params)).first()

    def read(self) -> Leader:
        row = self._run(f"SELECT epoch, holder, address, lease_until, {self._now()} AS now "
                        "FROM leadership WHERE id = 1")
        return Leader(row.epoch, row.holder, row.address, row.lease_until, row.now)

    def take(self) -> int | None:
        """Lead, if the lease expired: the new epoch, or None (someone else leads)."""
        row = self._run(
            f"UPDATE leadership SET epoch = epoch + 1, holder = :me, address = :addr, "
            f"lease_until = {self._now()} + :lease, changed_at = {self._now()} "
            f"WHERE id = 1 AND lease_until < {self._now()} RETURNING epoch")
        self.epoch = row.epoch if row is not None else None
        return self.epoch

    def renew(self) -> bool:
        """Extend this epoch's lease; False (and no epoch any more) if another replica leads."""
        if self.epoch is None:
            return False
        row = self._run(f"UPDATE leadership SET lease_until = {self._now()} + :lease "
                        "WHERE id = 1 AND epoch = :epoch AND holder = :me RETURNING epoch", epoch=self.epoch)
        if row is None:
            self.epoch = None
        return row is not None

    def step_down(self) -> None:
        """Give the lead up now (a clean shutdown): the lease ends, a follower takes over at once."""
        if self.epoch is not None:
            self._run("UPDATE leadership SET lease_until = timestamptz '1970-01-01 00:00:00+00' "
                      "WHERE id = 1 AND epoch = :epoch AND holder = :me RETURNING epoch", epoch=self.epoch)
        self.epoch = None

    def fence(self, conn: Connection) -> None:
        """The first statement of a leader's write transaction: :class:`Fenced` unless this epoch still leads."""
        if self.epoch is None:
            raise Fenced()
        row = conn.execute(text(f"UPDATE leadership SET lease_until = lease_until WHERE id = 1 AND epoch = :epoch "
                                f"AND lease_until > {self._now()} RETURNING epoch"),
                           self._params(epoch=self.epoch)).first()
        if row is None:
            self.epoch = None
            raise Fenced()
