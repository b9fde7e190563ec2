"""The FastAPI application: wiring of runtime, auth, routes, errors and metrics.

The server listens at once but restores in a background thread: until the
store is loaded (and the admin token and any seed data exist), ``/healthz``
answers 503 and every API call answers 503 ``not_ready`` (DESIGN.md invariant
3). The ``before_ready`` hook lets tests hold the restore open to observe that.

This module builds the HTTP app only. A process that adds more to it (the host
agent: :mod:`tenure.agent.daemon`) passes an :class:`Extension`: its routers
replace the server's resource routes, it starts once the store is restored
(before the app reports ready) and closes when the app stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tenure.api import admin, agents, console, errors, instances, openapi, replicas, reservations, routes, ui, watch
from tenure.api.auth import authenticate
from tenure.api.metrics import Metrics
from tenure.api.middleware import BodyLimit, RequestMetrics
from tenure.api.replicas import ReplicaRequests
from tenure.clock import Clock, utcnow
from tenure.config import ADMIN_TOKEN_FILE
from tenure.domain.access import Principal, require_admin
from tenure.domain.errors import Gone, Unauthorized, Unavailable
from tenure.lrm.executor import Lrm
from tenure.sdnotify import notify
from tenure.services.backups import Schedule
from tenure.services.periodic import Periodic
from tenure.services.replica import Replica
from tenure.services.runtime import Runtime, Settings
from tenure.services.tokens import new_secret
from tenure.store.writer import Event
from tenure.watch.hub import BOOKMARK_INTERVAL, MAX_PENDING, RING_SIZE, Hub

log = logging.getLogger("tenure.server")


class Extension(Protocol):
    """What a process adds to the HTTP app (see the module docstring)."""

    routers: Sequence[APIRouter]

    async def start(self, state: ServerState, runtime: Runtime) -> None:
        """On the event loop, once the store is restored and before the app reports ready."""

    async def close(self) -> None:
        """When the app stops, before the store closes."""

    def health(self) -> dict[str, Any]:
        """More for ``/healthz``'s body."""


@dataclass(frozen=True)
class ReplicaConfig:
    """``tenure serve --replica-name NAME --advertise URL --lease S`` (docs/replication.md)."""

    name: str
    address: str  # where the other replicas forward writes to this one
    lease: float = 5.0


@dataclass
class ServerConfig:
    db_url: str
    data_dir: Path
    seed: Callable[[Runtime], None] | None = None  # e.g. the example data (tenure.services.examples), once restored
    clock: Clock = utcnow
    settings: Settings = field(default_factory=Settings)
    watch_mode: str = "index"  # "broadcast": the baseline dispatcher of bench/watch.py
    bookmark_interval: float = BOOKMARK_INTERVAL
    watch_max_pending: int = MAX_PENDING
    watch_ring: int = RING_SIZE
    extension: Extension | None = None  # set: e.g. this is a host agent (`tenure agent`, tenure.agent.daemon)
    replica: ReplicaConfig | None = None  # set: one of several replicas of a PostgreSQL store
    backups: Schedule | None = None  # `tenure serve --backup-dir DIR --backup-every S --backup-keep N`
    agent_certs: bool = False  # `tenure serve --tls-client-ca FILE`: agents' tokens need a certificate (api/auth.py)
    before_ready: Callable[[], None] | None = None  # test hook, runs in the restore thread
    on_restore_failed: Callable[[BaseException], None] | None = None  # e.g. stop the server: nothing to serve


@dataclass
class ServerState:
    config: ServerConfig
    runtime: Runtime | None = None
    error: BaseException | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    hub: Hub = field(default_factory=Hub)
    loop: asyncio.AbstractEventLoop | None = None
    lrm: Lrm | None = None  # a host agent's resource manager (its extension sets it): /v1/resources, metrics
    replica: Replica | None = None
    published: int = 0  # the newest revision handed to the hub
    forward_client: Any = None  # httpx.AsyncClient of writes forwarded to the leader (api.replicas)
    backup_timer: Periodic | None = None
    _publishing: threading.RLock = field(default_factory=threading.RLock)

    def require(self) -> Runtime:
        rt = self.runtime
        if rt is None and self.ready.is_set() and self.replica is not None:
            raise Unavailable("this replica is changing role (an election is under way); retry shortly",
                              code="no_leader")
        if rt is None or not self.ready.is_set():
            raise Unavailable("the server is restoring its state; retry shortly", code="not_ready")
        return rt

    def publish(self, events: list[Any]) -> None:
        """A runtime's committed (or, on a follower, applied) batch, to the hub, each event once, in order."""
        with self._publishing:
            fresh = [e for e in events if e.revision > self.published]
            if fresh:
                self.published = fresh[-1].revision
                self.hub.publish(fresh)

    def swap(self, old: Runtime | None, new: Runtime | None) -> None:
        """This process's runtime changes (the first one; a replica that restores afresh): the hub carries on.

        The new runtime's listener is in place before the gap is filled, both under one lock, so an event
        committed meanwhile reaches the hub once and in order: the events between the last one the hub heard
        and the new runtime's revision are read from the log first. If they were compacted away, every
        watch stream is ended (its client resumes, and gets ``gone`` if it must re-list).
        """
        self.runtime = None
        if new is None:
            return
        assert self.loop is not None
        with self._publishing:
            if self.hub.loop is None:
                self.hub.attach(self.loop, new.revision)
                self.published = new.revision
            elif new.revision < self.published:  # the store went back (restored from a backup): start over
                log.error("the store is at revision %d, behind what this server served (%d): watch streams end",
                          new.revision, self.published)
                self.hub.restart_at(new.revision, "the store went back in time; resume")
                self.published = new.revision
            new.writer.subscribe(self.publish)
            try:
                while self.published < new.revision:
                    rows = [r for r in new.history.page(self.published, None) if r.revision <= new.revision]
                    if not rows:
                        raise new.history.gone(self.published)
                    self.publish([_event(r) for r in rows])  # re-entrant: the lock is an RLock
            except Gone:
                log.error("the event log between revisions %d and %d is gone: watch streams end and resume",
                          self.published, new.revision)
                self.hub.restart_at(new.revision, "this server's history has a gap; resume")
                self.published = new.revision
        self.runtime = new

def write_admin_token(runtime: Runtime, data_dir: Path) -> Path | None:
    """On the first start (no tokens at all), create an admin token and write it 0600.

    The secret is written (and fsynced) to ``admin.token.pending`` before the token is committed,
    then renamed: a crash between the commit and the rename is finished at the next start, so the
    operator is never locked out by a token that exists only as a hash.
    """
    path = data_dir / ADMIN_TOKEN_FILE
    pending = path.with_name(ADMIN_TOKEN_FILE + ".pending")
    if pending.exists():
        secret = pending.read_text().strip()
        try:
            runtime.tokens.authenticate(secret)
        except Unauthorized:
            pending.unlink()  # written, never committed: a new bootstrap follows if none exists
        else:
            os.replace(pending, path)
            return path
    if not runtime.tokens.empty:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = new_secret()
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    runtime.run(runtime.tokens.create_op(role="admin", description="bootstrap admin", secret=secret))
    os.replace(pending, path)
    return path


def _event(row: Any) -> Event:
    return Event(row.revision, row.ts, row.kind, row.object_id, row.op, json.loads(row.labels), json.loads(row.body))


def _restore(state: ServerState) -> None:
    cfg = state.config
    try:
        if cfg.replica is not None:
            rc = cfg.replica

            def open_runtime(**kw: Any) -> Runtime:
                return Runtime.open(cfg.db_url, clock=cfg.clock, settings=cfg.settings, replica=True, **kw)

            def promoted(rt: Runtime) -> None:  # the replica that leads first on a new store writes the token
                token_path = write_admin_token(rt, cfg.data_dir)
                if token_path:
                    log.info("admin token written", extra={"path": str(token_path)})

            state.replica = Replica(cfg.db_url, name=rc.name, address=rc.address, lease=rc.lease,
                                    open_runtime=open_runtime, on_runtime=state.swap, on_promoted=promoted)
            rt = state.replica.start()
        else:
            rt = Runtime.open(cfg.db_url, clock=cfg.clock, settings=cfg.settings)
            state.swap(None, rt)
            token_path = write_admin_token(rt, cfg.data_dir)
            if token_path:
                log.info("admin token written", extra={"path": str(token_path)})
        if cfg.seed is not None:
            cfg.seed(rt)
        if cfg.extension is not None:
            asyncio.run_coroutine_threadsafe(cfg.extension.start(state, rt), state.loop).result()
        if cfg.before_ready is not None:
            cfg.before_ready()
        if cfg.backups is not None:
            cfg.backups.directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # a bad --backup-dir fails the start
            # Checked every minute (or as often as they are taken): the first is due at once if the directory's
            # newest is older than the period, so a server restarted more often than that still takes them.
            state.backup_timer = Periodic("backup", min(cfg.backups.every, 60.0),
                                          lambda: _scheduled_backup(state)).start()
        state.ready.set()
        notify("READY=1", f"STATUS=serving, revision {rt.revision}")  # systemd's Type=notify: only now
        log.info("ready", extra={"revision": rt.revision, "restore_seconds": round(rt.restore_seconds, 3)})
    except BaseException as exc:  # surfaced by /healthz and logged; `tenure serve` then exits non-zero
        state.error = exc
        log.exception("restore failed")
        if cfg.on_restore_failed is not None:
            cfg.on_restore_failed(exc)


def _scheduled_backup(state: ServerState) -> None:
    """One scheduled backup, by the leader only (a replica set takes one, not one per replica)."""
    rt, schedule = state.runtime, state.config.backups
    if rt is None or schedule is None or (state.replica is not None and state.replica.role.role != "leader"):
        return
    if not schedule.prepared:
        schedule.prepare()
    if schedule.due():
        schedule.take(rt.engine)


def create_app(config: ServerConfig) -> FastAPI:
    hub = Hub(ring_size=config.watch_ring, max_pending=config.watch_max_pending,
              bookmark_interval=config.bookmark_interval, mode=config.watch_mode)
    state = ServerState(config, hub=hub)
    metrics = Metrics(lambda: state.runtime if state.ready.is_set() else None, hub,
                      lrm=(lambda: state.lrm) if config.extension is not None else None,
                      replica=(lambda: state.replica) if config.replica is not None else None,
                      backups=config.backups)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        thread = threading.Thread(target=_restore, args=(state,), name="tenure-restore", daemon=True)
        thread.start()
        try:
            yield
        finally:
            notify("STOPPING=1")
            hub.close()
            if state.replica is not None:
                state.replica.request_stop()  # a start still waiting for the store gives up
            await asyncio.to_thread(thread.join)
            if state.backup_timer is not None:
                await asyncio.to_thread(state.backup_timer.stop)
            if config.extension is not None:
                await config.extension.close()
            if state.forward_client is not None:
                await state.forward_client.aclose()
            if state.replica is not None:
                await asyncio.to_thread(state.replica.close)  # a leader hands over at once
            elif state.runtime is not None:
                state.runtime.close()

    app = FastAPI(
        title="Tenure",
        version="0.1.0",
        description="Stable identifiers, reservations in time and resource operations that survive restarts.",
        lifespan=lifespan,
        dependencies=[Depends(routes.known_query)],
    )
    app.state.tenure = state
    app.state.metrics = metrics
    errors.install(app)
    if config.extension is not None:
        # E.g. a host agent's resource manager (the routes below serve its tokens, local IDs and events over the
        # agent's store). Its routes come first: a request is matched against the routes in order, and on an agent
        # nearly every request is one of these. Their paths must not overlap the ones below (a test checks).
        for router in config.extension.routers:
            app.include_router(router)
    app.include_router(routes.router)
    app.include_router(console.router)
    app.include_router(watch.router)
    app.include_router(replicas.router)
    app.include_router(admin.router)
    if config.extension is None:
        app.include_router(agents.router)
        app.include_router(reservations.router)
        app.include_router(instances.router)
        app.include_router(ui.router)
        app.mount(ui.PREFIX, ui.ConsoleFiles(), name="ui")

    @app.get("/healthz", tags=["system"], response_class=JSONResponse, responses=HEALTH_RESPONSES)
    def healthz() -> Response:
        if state.error is not None:
            return JSONResponse({"status": "failed", "error": str(state.error)}, status_code=503)
        replica = _replica_health(state)
        if not state.ready.is_set() or state.runtime is None:
            return JSONResponse({"status": "restoring" if not state.ready.is_set() else "electing", **replica},
                                status_code=503)
        rt = state.runtime
        if rt.writer.failure is not None:
            return JSONResponse({"status": "failed", "error": f"writer stopped: {rt.writer.failure}"}, status_code=503)
        body: dict[str, Any] = {"status": "ok", "revision": rt.revision, "compacted_revision": rt.history.compacted,
                                "watchers": hub.watchers, **replica}
        if config.extension is not None:
            body.update(config.extension.health())
        return JSONResponse(body)

    @app.get("/metrics", tags=["system"], response_class=Response, responses=METRICS_RESPONSES)
    def prometheus(who: Annotated[Principal, Depends(authenticate)]) -> Response:
        # Admin only: pool names and usage span every project (Prometheus sends a bearer token).
        require_admin(who, "reading metrics")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    openapi.install(app)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(ReplicaRequests, state=state)
    app.add_middleware(BodyLimit)
    app.add_middleware(watch.WatchEndpoint, state=state)
    return app


def _replica_health(state: ServerState) -> dict[str, Any]:
    """For /healthz: this replica's role, the leader, the epoch and how far behind the store it is."""
    replica = state.replica
    if replica is None:
        return {}
    role = replica.role
    lag, behind = replica.lag()
    return {"replica": {"name": replica.name, "role": role.role, "epoch": role.epoch,
                        "leader": {"name": role.leader, "address": role.leader_address} if role.leader else None,
                        "lag_revisions": lag, "lag_seconds": behind}}


_HEALTH = {"type": "object", "required": ["status"],
           "properties": {"status": {"type": "string", "enum": ["ok", "restoring", "electing", "failed"]}}}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Restored and serving: status ok, revision, compacted_revision, watchers",
          "content": {"application/json": {"schema": _HEALTH}}},
    503: {"description": "Not serving: restoring, or failed (with the error)",
          "content": {"application/json": {"schema": _HEALTH}}},
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
}
