"""The FastAPI application: wiring of runtime, auth, routes, errors and metrics.

The server listens at once but restores in a background thread: until the
store is loaded (and the admin token and example pools exist), ``/healthz``
answers 503 and every API call answers 503 ``not_ready`` (DESIGN.md invariant
3). The ``before_ready`` hook lets tests hold the restore open to observe that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tenure.agent.state import SyncState
from tenure.agent.sync import SyncConfig, SyncLoop
from tenure.api import agents, errors, instances, reservations, resources, routes, watch
from tenure.api.auth import authenticate
from tenure.api.metrics import Metrics
from tenure.api.middleware import BodyLimit, RequestMetrics
from tenure.client import AsyncTenureClient
from tenure.config import ADMIN_TOKEN_FILE
from tenure.domain.access import Principal, require_admin
from tenure.domain.errors import Unauthorized, Unavailable
from tenure.domain.topology import Topology
from tenure.drivers.spec import DriverRoots
from tenure.lrm.clock import LoopClock, RealClock
from tenure.lrm.executor import Lrm
from tenure.lrm.store import LrmStore
from tenure.services.runtime import Runtime, Settings
from tenure.services.tokens import new_secret
from tenure.services.writer import Clock, utcnow
from tenure.watch.hub import BOOKMARK_INTERVAL, MAX_PENDING, RING_SIZE, Hub

log = logging.getLogger("tenure.server")


EXAMPLE_POOLS: list[dict[str, Any]] = [
    {"name": "mpls-labels", "ranges": [[16, 1048575]], "strategy": "lowest"},
    {"name": "vlans", "ranges": [[1, 4094]], "reserved": [[1, 1], [1002, 1005]], "strategy": "lowest"},
    {"name": "vxlan-vnis", "ranges": [[1, 16777215]], "strategy": "random"},
    {"name": "ifindexes", "ranges": [[1, 65535]], "strategy": "next"},
]


# A small leaf-spine for `dev.py serve`: two spines, two leaves, four hosts, a middlebox (firewall).
EXAMPLE_TOPOLOGY: dict[str, Any] = {
    "alarm": "90%",
    "nodes": [{"id": n, "kind": "switch"} for n in ("spine1", "spine2", "leaf1", "leaf2")]
    + [{"id": f"h{i}", "kind": "host"} for i in range(1, 5)] + [{"id": "fw1", "kind": "middlebox"}],
    "links": [{"id": f"{leaf}-{spine}", "a": leaf, "b": spine, "capacity": "40G"}
              for leaf in ("leaf1", "leaf2") for spine in ("spine1", "spine2")]
    + [{"id": f"h{i}-leaf{1 + (i - 1) // 2}", "a": f"h{i}", "b": f"leaf{1 + (i - 1) // 2}", "capacity": "10G"}
       for i in range(1, 5)]
    + [{"id": "fw1-leaf2", "a": "fw1", "b": "leaf2", "capacity": "10G"}],
}


@dataclass
class LrmConfig:
    """The host agent's resource manager: where drivers may come from, and its limits."""

    roots: DriverRoots = field(default_factory=DriverRoots)
    rsctmp: Path = Path("/run/resource-agents")  # HA_RSCTMP: heartbeat agents keep their state files here
    max_parallel: int = 32
    default_timeout: float = 20.0
    grace: float = 5.0
    clock: LoopClock | None = None  # None: the event loop's clock
    sync: SyncConfig | None = None  # set: follow a server (`tenure agent --host NAME --server URL`)


@dataclass
class ServerConfig:
    db_url: str
    data_dir: Path
    example: bool = False
    clock: Clock = utcnow
    settings: Settings = field(default_factory=Settings)
    watch_mode: str = "index"  # "broadcast": the baseline dispatcher of bench/watch.py
    bookmark_interval: float = BOOKMARK_INTERVAL
    watch_max_pending: int = MAX_PENDING
    watch_ring: int = RING_SIZE
    lrm: LrmConfig | None = None  # set: this is a host agent (`tenure agent`) serving its resource manager
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
    lrm: Lrm | None = None
    sync: SyncLoop | None = None

    def require(self) -> Runtime:
        if self.runtime is None or not self.ready.is_set():
            raise Unavailable("the server is restoring its state; retry shortly", code="not_ready")
        return self.runtime


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


def ensure_examples(runtime: Runtime) -> None:
    if not runtime.reservations.topology.nodes and runtime.reservations.topology_body()["revision"] == 0:
        runtime.run(runtime.reservations.set_topology_op(Topology.parse(EXAMPLE_TOPOLOGY)))
    svc = runtime.allocator
    for spec in EXAMPLE_POOLS:
        if spec["name"] not in {v.name for v in svc.pool_views()}:
            runtime.run(svc.create_pool_op(spec["name"], ranges=spec["ranges"], reserved=spec.get("reserved", ()),
                                           strategy=spec["strategy"]))


def _restore(state: ServerState) -> None:
    cfg = state.config
    try:
        rt = Runtime.open(cfg.db_url, clock=cfg.clock, settings=cfg.settings)
        state.runtime = rt
        assert state.loop is not None
        state.hub.attach(state.loop, rt.revision)  # before any command: the hub misses no commit
        rt.writer.subscribe(state.hub.publish)
        token_path = write_admin_token(rt, cfg.data_dir)
        if token_path:
            log.info("admin token written", extra={"path": str(token_path)})
        if cfg.example:
            ensure_examples(rt)
        if cfg.lrm is not None:
            asyncio.run_coroutine_threadsafe(_start_lrm(state, rt, cfg.lrm), state.loop).result()
        if cfg.before_ready is not None:
            cfg.before_ready()
        state.ready.set()
        log.info("ready", extra={"revision": rt.revision, "restore_seconds": round(rt.restore_seconds, 3)})
    except BaseException as exc:  # surfaced by /healthz and logged; `tenure serve` then exits non-zero
        state.error = exc
        log.exception("restore failed")
        if cfg.on_restore_failed is not None:
            cfg.on_restore_failed(exc)


async def _start_lrm(state: ServerState, rt: Runtime, cfg: LrmConfig) -> None:
    """On the loop: the LRM restores (instances, schedules, last results) and queues one probe per instance."""
    cfg.rsctmp.mkdir(parents=True, exist_ok=True, mode=0o755)
    lrm = Lrm(store=LrmStore(rt), roots=cfg.roots, rsctmp=cfg.rsctmp, clock=cfg.clock or RealClock(),
              max_parallel=cfg.max_parallel, default_timeout=cfg.default_timeout, grace=cfg.grace)
    rt.history.listers["resource"] = lrm.store.list_instances_at
    await lrm.restore()
    state.lrm = lrm
    if cfg.sync is not None:
        sc = cfg.sync
        client = AsyncTenureClient(sc.server_url, sc.token)
        sync = SyncLoop(host=sc.host, client=client, lrm=lrm, state=SyncState(rt), handlers=sc.handlers,
                        heartbeat_interval=sc.heartbeat_interval, max_restarts=sc.max_restarts)
        await sync.start()
        state.sync = sync


def create_app(config: ServerConfig) -> FastAPI:
    hub = Hub(ring_size=config.watch_ring, max_pending=config.watch_max_pending,
              bookmark_interval=config.bookmark_interval, mode=config.watch_mode)
    state = ServerState(config, hub=hub)
    metrics = Metrics(lambda: state.runtime if state.ready.is_set() else None, hub,
                      lrm=(lambda: state.lrm) if config.lrm is not None else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        thread = threading.Thread(target=_restore, args=(state,), name="tenure-restore", daemon=True)
        thread.start()
        try:
            yield
        finally:
            hub.close()
            await asyncio.to_thread(thread.join)
            if state.sync is not None:
                await state.sync.close()
                await state.sync.client.aclose()
            if state.lrm is not None:
                await state.lrm.close()
            if state.runtime is not None:
                state.runtime.close()

    app = FastAPI(
        title="Tenure",
        version="0.1.0",
        description="Stable identifiers, reservations in time and resource operations that survive restarts.",
        lifespan=lifespan,
    )
    app.state.tenure = state
    app.state.metrics = metrics
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(watch.router)
    if config.lrm is None:
        app.include_router(agents.router)
        app.include_router(reservations.router)
        app.include_router(instances.router)
    else:  # a host agent: its own tokens, local IDs, events, and the resource manager
        app.include_router(resources.router)

    @app.get("/healthz", tags=["system"])
    def healthz() -> Response:
        if state.error is not None:
            return JSONResponse({"status": "failed", "error": str(state.error)}, status_code=503)
        if not state.ready.is_set() or state.runtime is None:
            return JSONResponse({"status": "restoring"}, status_code=503)
        rt = state.runtime
        if rt.writer.failure is not None:
            return JSONResponse({"status": "failed", "error": f"writer stopped: {rt.writer.failure}"}, status_code=503)
        body: dict[str, Any] = {"status": "ok", "revision": rt.revision, "compacted_revision": rt.history.compacted,
                                "watchers": hub.watchers}
        if state.sync is not None:
            body["sync"] = state.sync.status()
        return JSONResponse(body)

    @app.get("/metrics", tags=["system"])
    def prometheus(who: Annotated[Principal, Depends(authenticate)]) -> Response:
        # Admin only: pool names and usage span every project (Prometheus sends a bearer token).
        require_admin(who, "reading metrics")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodyLimit)
    app.add_middleware(watch.WatchEndpoint, state=state)
    return app
