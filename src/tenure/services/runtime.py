"""The runtime: one open store, its writer and the services over it.

``Runtime.open(url)`` takes ownership of the store (see
:mod:`tenure.store.engine`), migrates it, restores every service's state from
it, and only then starts the writer (DESIGN.md invariant 3: restore before
serve). The server and the embedded library both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future
from typing import Any

from sqlalchemy import Connection

from tenure.clock import Clock, utcnow
from tenure.config import Settings
from tenure.domain.capacity import Limit
from tenure.domain.errors import Unavailable
from tenure.instance_types import load_instance_types
from tenure.services.agents import AgentService
from tenure.services.allocator import AllocatorService
from tenure.services.follower import Tailer
from tenure.services.instances import InstanceService
from tenure.services.periodic import Periodic
from tenure.services.reservations import ReservationService
from tenure.services.sessions import SessionService
from tenure.services.shaping import sync_shapers
from tenure.services.tokens import TokenService
from tenure.services.topology import TopologyService
from tenure.store.engine import acquire_owner_lock, check_schema, make_engine, migrate, open_snapshot
from tenure.store.history import History
from tenure.store.writer import Batch, Fence, Op, Published, Writer

log = logging.getLogger("tenure.runtime")

DEFAULT_TIMEOUT = 30.0


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Restore without the cyclic GC, then freeze what was restored.

    A restore allocates a few objects per claim and none of them form cycles;
    with the collector on, its collections re-scan the growing heap again and
    again (two of three seconds for a million claims). Freezing moves the
    restored objects out of the collector's sight: otherwise the first full
    collection after the restore (0.6 s for a million claims) would land in
    the middle of serving, and every later one would walk them again.
    :meth:`Runtime.close` unfreezes, so a closed runtime's objects can be freed.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


class Runtime:
    def __init__(
        self, url: str, *, clock: Clock = utcnow, rng: random.Random | None = None, settings: Settings | None = None,
        follower: bool = False, replica: bool = False, fence: Fence | None = None,
        epoch: int | None = None,
    ) -> None:
        """Replicas (docs/replication.md; :mod:`tenure.services.replica`):

        - ``follower``: a hot standby of a store another process writes: no migration (the schema must be
          this code's), no writer and no timers; its :attr:`tailer` (started by the caller, or driven by hand
          in tests) applies what the store's writer commits. :meth:`promote` makes it write.
        - ``replica``: one of several processes on one PostgreSQL store: the owner lock is shared among
          replicas (a single server's is exclusive, so the two kinds never run together).
        - ``fence``: checked first in every write transaction (:class:`Leadership`); ``epoch``: the
          leadership epoch written with each event.
        """
        started = time.monotonic()
        self.url = url
        self.clock = clock
        self.settings = settings or Settings()
        self.engine = make_engine(url)
        self.follower = follower
        self.tailer: Tailer | None = None
        self._compactor: Periodic | None = None
        self._agent_sweeper: Periodic | None = None
        self._token_use: Periodic | None = None
        self._lock = acquire_owner_lock(self.engine, shared=replica) if (replica or not follower) else None
        try:
            if follower:
                check_schema(self.engine)
            else:
                migrate(self.engine)
            # One snapshot for the whole restore (REPEATABLE READ on PostgreSQL, a read transaction on SQLite): a
            # follower or replica restores while its leader writes, and every service must see the same state,
            # the revision's.
            snapshot, revision = open_snapshot(self.engine)
            with snapshot as conn, _no_gc():
                self.writer = Writer(self.engine, revision=revision, clock=clock, fence=fence, epoch=epoch)
                self.allocator = AllocatorService(writer=self.writer, engine=self.engine, rng=rng)
                self.tokens = TokenService(writer=self.writer, clock=clock)
                self.sessions = SessionService(writer=self.writer, engine=self.engine, tokens=self.tokens, clock=clock)
                self.agents = AgentService(writer=self.writer, clock=clock, down_after=self.settings.agent_down_after)
                limits: Published[str, Limit] = Published()
                self.reservations = ReservationService(
                    writer=self.writer, clock=clock, horizon=self.settings.reservation_horizon,
                    retention=self.settings.reservation_retention, start_grace=self.settings.reservation_start_grace,
                    limits=limits)
                self.topology = TopologyService(writer=self.writer, reservations=self.reservations, limits=limits)
                types = self.settings.instance_types
                if types is None:
                    types = {t.name: t.timeout for t in load_instance_types(None).values()}
                self.instances = InstanceService(
                    writer=self.writer, clock=clock, types=types, claim_value=self.allocator.claimed_value,
                    has_agent=self.agents.registered, report_grace=self.settings.instance_report_grace)
                self.agents.on_registered.append(self.instances.on_agent_registered)
                self.agents.on_network.append(self._hosts_changed)
                self.reservations.listeners.append(self._reservation_changed)
                self.topology.on_changed.append(self._resync_shapers)
                self.allocator.load(conn)
                self.tokens.load(conn)
                self.sessions.load(conn)
                self.history = History(self.engine, self.writer, clock=clock, max_age=self.settings.history_age,
                                       max_events=self.settings.history_events)
                self.history.load(conn)
                self.history.listers.update(pool=self.allocator.list_pools_at, claim=self.allocator.list_claims_at,
                                            token=self.tokens.list_at, agent=self.agents.list_at,
                                            reservation=self.reservations.list_reservations_at,
                                            topology=self.topology.list_topology_at,
                                            limit=self.topology.list_limits_at,
                                            instance=self.instances.list_at)
                self.agents.load(conn)
                self.reservations.load(conn, self.topology.load(conn))
                self.instances.load(conn)
        except BaseException:
            self._release()
            raise
        try:
            if follower:
                self.history.follower = True
                self.tailer = Tailer(self.engine, self.writer, self.history, self._refresh)
            else:
                self._lead()
        except BaseException:
            self.writer.close()
            self._release()
            raise
        self.restore_seconds = time.monotonic() - started
        log.info("store restored", extra={"revision": revision, "seconds": round(self.restore_seconds, 3),
                                          "role": "follower" if follower else "owner"})

    def promote(self, fence: Fence, epoch: int) -> None:
        """A follower becomes the writer, in place (its tailer stopped, caught up by the caller): writes are
        fenced by ``fence``; agents' silence counts from now; overdue timers fire before any write is taken."""
        if not self.follower or self.tailer is None:
            raise RuntimeError("only a follower is promoted")
        self.tailer.stop()
        self.follower = False
        self.history.follower = False
        self.writer.fence, self.writer.epoch = fence, epoch
        self.agents.restored_at = self.clock()
        self._lead()
        log.info("promoted", extra={"revision": self.revision})

    def _lead(self) -> None:
        """Start writing: the writer, then what fell due while nobody wrote, then the timers and housekeeping."""
        self.writer.start()
        # Timers re-armed at load; what fell due while the server was down is applied before serving.
        self.reservations.scheduler.run_due()
        self.instances.scheduler.run_due()
        self.tokens.scheduler.run_due()
        try:
            self.writer.execute(Op(self._resync_shapers))
        except Exception:  # shapers stay as they were: the next topology change or registration tries again
            log.exception("re-syncing the reservations' shapers failed")
        if self.settings.housekeeping:
            self.reservations.scheduler.start()
            self.instances.scheduler.start()
            self.tokens.scheduler.start()
            self._token_use = Periodic("token-use", self.settings.token_use_interval, self.tokens.flush_use).start()
            self._compactor = Periodic("compactor", self.settings.compact_interval, self.history.compact).start()
            self._agent_sweeper = Periodic(
                "agent-sweeper", self.settings.agent_sweep_interval, self.agents.sweep
            ).start()

    def _refresh(self, batch: Batch, conn: Connection, touched: dict[str, set[str] | None]) -> None:
        """A follower's step (the tailer's thread): bring the objects the events named to their rows in
        ``conn``'s snapshot. Topology and limits first (the reservations are booked on them)."""
        topology = self.topology.refresh(batch, conn, topology="topology" in touched,
                                         limits=touched.get("limit") or ())
        self.reservations.refresh(batch, conn, touched.get("reservation") or (), topology)
        if "pool" in touched or "claim" in touched:
            self.allocator.refresh(batch, conn, touched.get("pool") or (), touched.get("claim") or ())
        if "token" in touched:
            self.tokens.refresh(batch, conn, touched["token"] or ())
        if "agent" in touched:
            self.agents.refresh(batch, conn, touched["agent"])
        if "instance" in touched:
            self.instances.refresh(batch, conn, touched["instance"] or ())

    @classmethod
    def open(cls, url: str, **kwargs: Any) -> Runtime:
        return cls(url, **kwargs)

    @property
    def revision(self) -> int:
        """The newest committed revision."""
        return self.writer.revision

    def run(self, op: Op, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
        return self.writer.execute(op, timeout=timeout)

    async def arun(self, op: Op, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
        return await self.asubmit(op, timeout=timeout)

    def asubmit(self, op: Op, *, timeout: float = DEFAULT_TIMEOUT, shielded: bool = False) -> Awaitable[Any]:
        """Queue ``op`` now (commands apply in the order they are queued); await the result later.

        ``shielded``: a caller cancelled while it waits does not cancel the command (by default a command not
        started yet is then dropped): for callers whose memory already counts on it."""
        return self._committed(self.writer.submit(op), timeout, shielded)

    async def _committed(self, cf: Future[Any], timeout: float, shielded: bool = False) -> Any:
        fut = asyncio.wrap_future(cf)
        try:
            async with asyncio.timeout(timeout):  # no extra task per call, unlike wait_for
                return await (asyncio.shield(fut) if shielded else fut)
        except TimeoutError:
            # A still-queued command is cancelled and will not run; a running one may yet commit,
            # and the caller must know that (retry idempotently, then look).
            if cf.cancel():
                raise Unavailable(f"the store did not start within {timeout} s", code="store_timeout") from None
            raise Unavailable(f"no answer from the store within {timeout} s; the change may still commit",
                              code="outcome_unknown") from None

    def _reservation_changed(self, batch: Any, res: Any) -> None:
        """A reservation changed (inside its command): its shapers on the endpoint hosts follow."""
        sync_shapers(batch, res, self.reservations.cap.topology, self.instances, self.agents.network)

    def _resync_shapers(self, batch: Any) -> None:
        """Every active reservation's shapers as the topology and the agents say now (inside a command): after a
        topology change, and once when this server starts writing (shapers made by an older version, or before
        an agent reported its addresses, catch up). Unchanged shapers are not written."""
        for res in self.reservations.active_touching(None):
            sync_shapers(batch, res, self.reservations.cap.topology, self.instances, self.agents.network)

    def _hosts_changed(self, batch: Any, hosts: set[str]) -> None:
        """What some agents reported changed (inside the command): the shapers of the active reservations with a
        leg from or to one of ``hosts`` follow."""
        for res in self.reservations.active_touching(hosts):
            sync_shapers(batch, res, self.reservations.cap.topology, self.instances, self.agents.network)

    def close(self) -> None:
        if self.tailer is not None:
            self.tailer.stop()
        self.reservations.scheduler.stop()
        self.instances.scheduler.stop()
        self.tokens.scheduler.stop()
        if self._token_use is not None:
            self._token_use.stop()
            try:
                self.tokens.flush_use()  # the last uses, before the writer closes
            except Exception:
                log.warning("could not write the tokens' last use at close", exc_info=True)
        if self._compactor is not None:
            self._compactor.stop()
        if self._agent_sweeper is not None:
            self._agent_sweeper.stop()
        self.writer.close()
        self._release()
        gc.unfreeze()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
        self.engine.dispose()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
