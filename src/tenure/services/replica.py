"""This process as one replica of a store on PostgreSQL: it follows, campaigns, leads and hands over.

See docs/replication.md. A :class:`Replica` owns the runtime of this process and a control thread that,
every ``period``, either renews the lead (the leader) or tries to take it (a follower: the lease ran out, or
the leader's epoch lock is free because its session ended). On taking the lead a follower is **promoted in
place**: its tailer applies the last committed batches (the old leader can commit no more: its epoch is
stale), the writer starts with the new epoch as its fence, and what fell due meanwhile is applied before
the first write is answered, as at a restart. A leader that loses the lead (a renewal fails or finds another
epoch, a batch is fenced, nothing renewed for longer than the lease) stops writing at once and becomes a
follower again by a fresh restore (its memory may hold nothing the store lacks, but a restore is the one
path that is certainly right). ``on_runtime`` hears every change of runtime (``None`` while there is none).

Each replica heartbeats its row in ``replicas`` (role, epoch, applied revision); a second process with the
name of a live one is refused at start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update

from tenure.domain.errors import Conflict, Unavailable
from tenure.services.periodic import Periodic
from tenure.services.runtime import Runtime
from tenure.store import schema
from tenure.store.engine import make_engine, migrate
from tenure.store.leadership import Leader, Leadership

log = logging.getLogger("tenure.replica")

LEADER, FOLLOWER, CANDIDATE = "leader", "follower", "candidate"
NAME_LOCK_CLASS = 0x7E4F  # advisory locks (NAME_LOCK_CLASS, hashtext(name)): held by the live replica of a name


class NameTaken(Conflict):
    """Another live process runs a replica of this name."""


@dataclass(frozen=True)
class Role:
    """What this replica is now, and whom it follows."""

    role: str  # leader | follower | candidate (no runtime yet, or between roles)
    epoch: int
    leader: str | None
    leader_address: str | None


class Replica:
    def __init__(self, url: str, *, name: str, address: str, lease: float = 5.0,
                 open_runtime: Callable[..., Runtime],
                 on_runtime: Callable[[Runtime | None, Runtime | None], None],
                 on_promoted: Callable[[Runtime], None] | None = None) -> None:
        """``open_runtime(follower=..., fence=...)`` opens this process's runtime (as a replica);
        ``on_runtime(old, new)`` swaps it in (before ``old`` is closed); ``on_promoted(runtime)`` runs once this
        replica writes (e.g. the first admin token of a new store)."""
        self.url = url
        self.name = name
        self.address = address
        self.lease = lease
        self.period = lease / 3  # a leader renews this often
        self.check = min(0.5, lease / 3)  # a follower looks for a dead leader this often
        self.engine: Engine = make_engine(url)
        self.leadership = Leadership(self.engine, name=name, address=address, lease=lease)
        self._open = open_runtime
        self._on_runtime = on_runtime
        self._on_promoted = on_promoted
        self.runtime: Runtime | None = None
        self.incarnation = secrets.token_hex(8)
        self.role = Role(CANDIDATE, 0, None, None)
        self.elections = 0  # times this replica took the lead
        self.changes = 0  # changes of leader seen
        self._renewed = 0.0  # monotonic time of the last successful renewal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._name_conn: Connection | None = None
        self._beat: Periodic | None = None
        self._closed = False

    # ------------------------------------------------------------------ start

    def start(self) -> Runtime:
        """Migrate (serialised among replicas), claim the name, restore as a follower, try once for the lead;
        then the control and heartbeat threads run. Returns the runtime opened (the caller's until a swap).
        Raises :class:`NameTaken` if a live replica has this name."""
        migrate(self.engine)
        self._claim_name()
        try:
            self._until_runtime()
            self._step()  # one try for the lead (a failed promotion leaves no runtime: restore again)
            self._until_runtime()
        except BaseException:
            self.close()
            raise
        runtime = self.runtime
        if runtime is None:  # asked to stop while the store was away
            self.close()
            raise Unavailable("stopped before the store could be opened", code="not_ready")
        self._thread = threading.Thread(target=self._run, name="tenure-replica", daemon=True)
        self._thread.start()
        self._beat = Periodic("replica-heartbeat", self.check, self._heartbeat).start()
        return runtime

    def _until_runtime(self) -> None:
        while self.runtime is None and not self._stop.is_set():  # e.g. the store is away: retry
            try:
                self._open_follower()
            except Exception as exc:
                log.warning("opening the store failed: %s", exc)
                self._stop.wait(self.check)

    def request_stop(self) -> None:
        """Any thread: stop trying (a start waiting for the store gives up); :meth:`close` still cleans up."""
        self._stop.set()

    def _claim_name(self) -> None:
        """Hold this name: a session lock on a connection of its own, free the moment its process is gone
        (so a replica restarted after a crash starts at once, while a second one beside a live or paused
        first one is refused)."""
        R = schema.replicas.c
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:cls, hashtext(:name))"),
                               {"cls": NAME_LOCK_CLASS, "name": self.name}).scalar_one()
            if not got:
                row = conn.execute(select(schema.replicas, func.now().label("now")).where(R.name == self.name)).first()
                where = f" at {row.address}, last heartbeat {(row.now - row.seen_at).total_seconds():.1f} s ago" \
                    if row is not None else ""
                raise NameTaken(f"a replica named {self.name!r} is running{where}; give this one another "
                                "--replica-name", code="replica_name_taken", name=self.name)
            with self.engine.begin() as tx:
                tx.execute(delete(schema.replicas).where(R.name == self.name))
                tx.execute(insert(schema.replicas).values(
                    name=self.name, address=self.address, role=CANDIDATE, epoch=0, revision=0,
                    incarnation=self.incarnation, started_at=func.now(), seen_at=func.now()))
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        self._name_conn = conn

    def _heartbeat(self) -> None:
        """The replicas row (role, epoch, applied revision), and the name's lock kept (its session may have
        been lost with the database)."""
        if self._name_conn is not None:
            try:
                self._name_conn.execute(text("SELECT 1"))  # a session lost with the database lost its lock too
            except Exception:
                with contextlib.suppress(Exception):
                    self._name_conn.invalidate()
                    self._name_conn.close()
                self._name_conn = None
        if self._name_conn is None:
            try:
                self._claim_name()
            except NameTaken:
                log.critical("another process took this replica's name while the store was away; this one "
                             "stops", extra={"replica": self.name})
                self._stop.set()
                os.kill(os.getpid(), signal.SIGTERM)  # a clean shutdown: two replicas must not share a name
                return
        rt = self.runtime
        R = schema.replicas.c
        with self.engine.begin() as conn:
            conn.execute(update(schema.replicas).where(R.name == self.name, R.incarnation == self.incarnation)
                         .values(address=self.address, role=self.role.role, epoch=self.role.epoch,
                                 revision=rt.revision if rt is not None else 0, seen_at=func.now()))

    # ------------------------------------------------------------------ the control loop

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.period if self.role.role == LEADER else self.check)
            if self._stop.is_set():
                return
            try:
                self._step()
            except Exception:
                log.exception("replica step failed")

    def _step(self) -> None:
        rt = self.runtime
        if rt is None:
            self._open_follower()
        elif self.role.role == LEADER:
            if rt.writer.failure is not None:
                self._demote(f"the writer stopped: {rt.writer.failure}")
            else:
                self._renew()
        elif rt.tailer is not None and rt.tailer.failure is not None:
            # Behind the compacted log, or a gap: only a fresh restore is certainly right.
            log.warning("restoring afresh: %s", rt.tailer.failure, extra={"replica": self.name})
            self._swap(None)
            self._open_follower()
        else:
            self._campaign()

    def _open_follower(self) -> None:
        """Restore as a follower and start tailing (a replica always takes the lead from there, in place)."""
        rt = self._open(follower=True)
        if self._stop.is_set():  # closing meanwhile: never install a runtime after close
            rt.close()
            return
        try:
            self._swap(rt)
        except BaseException:
            self.runtime = None
            rt.close()
            raise
        assert rt.tailer is not None
        rt.tailer.start()
        self.role = Role(FOLLOWER, self.role.epoch, self.role.leader, self.role.leader_address)

    def _renew(self) -> None:
        ok: bool | None = None  # None: no answer (an error)
        try:
            ok = self.leadership.renew()  # False at once if a batch was fenced (the epoch is gone)
        except Exception as exc:
            log.warning("renewing the lead failed: %s", exc)
        now = time.monotonic()
        if ok:
            self._renewed = now
        elif ok is None and self.leadership.epoch is not None and now - self._renewed < self.lease * 0.6:
            pass  # one failed renewal (a lock wait, say): the lease still runs, try again next period
        else:
            self._demote("another replica leads" if ok is False else "the lease could not be renewed")

    def _campaign(self) -> None:
        try:
            epoch = self.leadership.take()
        except Exception as exc:
            log.warning("looking for the leader failed: %s", exc)
            return
        if epoch is not None:
            self._promote(epoch)
            return
        try:
            seen = self.leadership.read()
        except Exception as exc:
            log.warning("reading the leadership failed: %s", exc)
            return
        leader = seen.holder if seen.live else None
        if leader is not None and (leader != self.role.leader or seen.epoch != self.role.epoch):
            self._changed(self.role.leader, leader, seen.epoch)
        self.role = Role(FOLLOWER, seen.epoch, leader, seen.address if seen.live else None)

    def _promote(self, epoch: int) -> None:
        """In place: the tailer applies the last batches (the old leader can commit no more), then the writer
        starts under the new epoch. Any failure gives the lead up at once and restores afresh."""
        old = self.role.leader
        rt = self.runtime
        self._renewed = time.monotonic()  # the lease runs from the take-over
        self.role = Role(CANDIDATE, epoch, self.name, self.address)
        try:
            assert rt is not None and rt.tailer is not None
            if not rt.tailer.stop(timeout=60):
                raise RuntimeError("the tailer did not stop")
            while rt.tailer.poll():  # a long catch-up must not let the lease lapse
                self._keep_lease()
            self._keep_lease()
            rt.promote(self.leadership, epoch)
        except BaseException as exc:
            log.error("promotion failed: %s", exc, extra={"replica": self.name, "epoch": epoch})
            self.leadership.step_down()
            self.role = Role(CANDIDATE, epoch, None, None)
            self._swap(None)
            if not isinstance(exc, Exception):
                raise
            return
        self.elections += 1
        self.role = Role(LEADER, epoch, self.name, self.address)
        self._changed(old, self.name, epoch)
        if self._on_promoted is not None:
            try:
                self._on_promoted(rt)
            except Exception:
                log.exception("after the promotion")

    def _keep_lease(self) -> None:
        """During a promotion: renew the lease; lost (another replica leads), or unrenewed for too long: fail."""
        try:
            ok = self.leadership.renew()
        except Exception as exc:
            if time.monotonic() - self._renewed < self.lease * 0.6:
                log.warning("renewing the lead during the promotion failed: %s", exc)
                return
            raise
        if not ok:
            raise RuntimeError("another replica took the lead during the promotion")
        self._renewed = time.monotonic()

    def _demote(self, reason: str) -> None:
        log.warning("this replica stops leading: %s", reason, extra={"epoch": self.role.epoch, "replica": self.name})
        self.leadership.close()
        self.role = Role(CANDIDATE, self.role.epoch, None, None)
        self._swap(None)

    def _swap(self, new: Runtime | None) -> None:
        """Hand ``new`` to the app (which may refuse it: then nothing changes), then close the old runtime."""
        old = self.runtime
        self._on_runtime(old, new)
        self.runtime = new
        if old is not None:
            old.close()

    def _changed(self, old: str | None, new: str, epoch: int) -> None:
        self.changes += 1
        log.warning("leader changed", extra={"old_leader": old, "new_leader": new, "epoch": epoch,
                                              "replica": self.name})

    def lag(self) -> tuple[int, float]:
        """(revisions committed in the store and not applied here, seconds since last caught up while behind);
        (0, 0.0) on the leader and on a follower that is caught up."""
        rt = self.runtime
        tailer = rt.tailer if rt is not None and rt.follower else None
        if tailer is None or not tailer.lag:
            return 0, 0.0
        return tailer.lag, round(time.monotonic() - tailer.applied_at, 3)

    # ------------------------------------------------------------------ stop

    def leader(self) -> Leader | None:
        """The leadership row now, read on a connection of its own (None if the store cannot be read)."""
        try:
            with self.engine.connect() as conn:
                return self.leadership.read(conn)
        except Exception:
            return None

    def close(self) -> None:
        """Stop; a leader hands over at once (its lease ends now), so a follower need not wait for it."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(60)
        if self._beat is not None:
            self._beat.stop()
        if self.runtime is not None:
            self.runtime.writer.close()  # the last batch commits before the lead is given up
        self.leadership.step_down()
        self._swap(None)
        R = schema.replicas.c
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(schema.replicas).where(R.name == self.name, R.incarnation == self.incarnation))
        except Exception as exc:
            log.warning("could not remove this replica's row: %s", exc)
        if self._name_conn is not None:
            with contextlib.suppress(Exception):
                self._name_conn.invalidate()  # the name's lock goes with the session
                self._name_conn.close()
            self._name_conn = None
        self.engine.dispose()


def replicas(engine: Engine) -> list[dict[str, Any]]:
    """Every replica's row, with how long ago it was seen (`tenure replicas`, GET /v1/replicas)."""
    R = schema.replicas.c
    with engine.connect() as conn:
        rows = conn.execute(select(schema.replicas, func.now().label("now")).order_by(R.name)).all()
    return [{"name": r.name, "address": r.address, "role": r.role, "epoch": r.epoch, "revision": r.revision,
             "started_at": r.started_at.isoformat(), "seen_seconds_ago": round((r.now - r.seen_at).total_seconds(), 3)}
            for r in rows]
