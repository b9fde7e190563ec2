"""The host agent as a process: its resource manager, drivers and sync loop, added to the HTTP app.

``tenure agent`` is the server's HTTP app (:func:`tenure.api.app.create_app`:
the same tokens, writer, event log and watch, over the agent's own SQLite
store) with an :class:`AgentDaemon` as its extension. Once the store is
restored, the daemon builds the LRM over it (drivers only from the configured
roots), restores it (interrupted operations recorded, one probe per
instance), and, when the agent follows a server (``--host`` and
``--server``), starts the sync loop. The app reports ready only after that;
on shutdown the sync loop stops first, then the LRM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI

from tenure.agent.netinfo import host_network
from tenure.agent.state import SyncState
from tenure.agent.sync import SyncConfig, SyncLoop, TokenFile
from tenure.api import resources
from tenure.api.app import ServerConfig, ServerState, create_app
from tenure.client import AsyncTenureClient, ClientCert
from tenure.clock import LoopClock, RealClock
from tenure.drivers.spec import DriverRoots
from tenure.lrm.executor import Lrm
from tenure.lrm.store import LrmStore
from tenure.services.runtime import Runtime


@dataclass
class AgentConfig:
    """The host agent's resource manager: where drivers may come from, its limits, and the server it follows."""

    roots: DriverRoots = field(default_factory=DriverRoots)
    rsctmp: Path = Path("/run/resource-agents")  # HA_RSCTMP: heartbeat agents keep their state files here
    max_parallel: int = 32
    default_timeout: float = 20.0
    grace: float = 5.0
    shutdown_wait: float = 30.0  # at shutdown, how long what runs may take before it is stopped
    clock: LoopClock | None = None  # None: the event loop's clock
    sync: SyncConfig | None = None  # set: follow a server (`tenure agent --host NAME --server URL`)


class AgentDaemon:
    """The extension of the HTTP app that makes it a host agent (see the module docstring)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.routers: Sequence[APIRouter] = (resources.router,)
        self.lrm: Lrm | None = None
        self.sync: SyncLoop | None = None

    async def start(self, state: ServerState, rt: Runtime) -> None:
        """On the loop, once the store is restored: the LRM restores and probes; the sync loop starts."""
        cfg = self.config
        cfg.rsctmp.mkdir(parents=True, exist_ok=True, mode=0o755)
        lrm = Lrm(store=LrmStore(rt), roots=cfg.roots, rsctmp=cfg.rsctmp, clock=cfg.clock or RealClock(),
                  max_parallel=cfg.max_parallel, default_timeout=cfg.default_timeout, grace=cfg.grace,
                  close_wait=cfg.shutdown_wait)
        rt.history.listers["resource"] = lrm.store.list_instances_at
        await lrm.restore()
        self.lrm = state.lrm = lrm
        if cfg.sync is not None:
            sc = cfg.sync
            cert = ClientCert(*sc.client_cert) if sc.client_cert is not None else None
            client = AsyncTenureClient(sc.server_url, sc.token, ca_file=sc.ca_file, client_cert=cert)
            sync = SyncLoop(host=sc.host, client=client, lrm=lrm,
                            state=SyncState(rt), types=sc.types, heartbeat_interval=sc.heartbeat_interval,
                            max_restarts=sc.max_restarts, network=host_network,
                            token_file=TokenFile(sc.token_file) if sc.token_file is not None else None)
            await sync.start()
            self.sync = sync

    async def close(self) -> None:
        """The sync loop first (it submits to the LRM), then the LRM (operations in flight as on a restart)."""
        if self.sync is not None:
            await self.sync.close()
            await self.sync.client.aclose()
        if self.lrm is not None:
            await self.lrm.close()

    def health(self) -> dict[str, Any]:
        return {"sync": self.sync.status()} if self.sync is not None else {}


def create_agent_app(server: ServerConfig, agent: AgentConfig) -> FastAPI:
    """The host agent's app: the server's HTTP app over the agent's store, with an :class:`AgentDaemon`."""
    return create_app(replace(server, extension=AgentDaemon(agent)))
