"""Shared by the host agent tests: a server, agents following it, and waiting on instances by watching them."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tenure.agent.daemon import AgentDaemon
from tenure.agent.sync import SyncConfig
from tenure.client import TenureClient
from tenure.instance_types import InstanceType, load_instance_types
from tests.conftest import Api, start_api
from tests.lrm_support import lrm_config

WAIT = 60.0  # seconds: a bound on waiting for a condition, never a pause


def start_server(tmp: Path, **config: Any) -> Iterator[Api]:
    data = tmp / "server"
    data.mkdir(parents=True, exist_ok=True)
    config.setdefault("bookmark_interval", 0.2)
    yield from start_api(f"sqlite:///{data / 'tenure.db'}", data, **config)


def start_host_agent(tmp: Path, server: Api, host: str, *, types: dict[str, InstanceType] | None = None,
                     heartbeat: float = 20.0, token_file: Path | None = None, ca_file: str | None = None,
                     client_cert: tuple[str, str] | None = None, **lrm: Any) -> Iterator[Api]:
    """A ``tenure agent --host HOST --server URL`` in-process, with its own data dir under ``tmp/host``;
    ``token_file``: its token is written there and read from there (``--server-token-file``)."""
    token = server.token("agent", host=host)
    if token_file is not None:
        token_file.write_text(token + "\n")
    data = tmp / host
    data.mkdir(parents=True, exist_ok=True)
    sync = SyncConfig(host=host, server_url=str(server.client.base_url), token=token,
                      types=types if types is not None else load_instance_types(None),
                      heartbeat_interval=heartbeat, token_file=token_file, ca_file=ca_file, client_cert=client_cert)
    cfg = lrm_config(tmp / host, sync=sync, **lrm)
    yield from start_api(f"sqlite:///{data / 'tenure.db'}", data, extension=AgentDaemon(cfg))


def client(server: Api, token: str | None = None) -> TenureClient:
    return TenureClient(str(server.client.base_url), token or server.admin_token)


def wait_for(server: Api, iid: str, pred: Callable[[dict[str, Any] | None], bool], *,
             timeout: float = WAIT, since: int | None = None) -> dict[str, Any] | None:
    """Watch instance ``iid`` (from its current state on, or every change after revision ``since``) until
    ``pred(body)`` holds; None body: deleted."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    with client(server) as c, contextlib.closing(c.watch("instance", ids=iid, initial=since is None, since=since,
                                                          read_timeout=timeout)) as w:
        listed = since is not None
        for ev in w:  # the server's bookmarks (every 0.2 s here) bound each wait
            if ev.is_bookmark and ev.initial_end and not listed and pred(None):
                return None  # not there (any more)
            if not ev.is_bookmark and ev.type != "resync":
                listed = True
                last = None if ev.type == "deleted" else ev.object
                if pred(last):
                    return last
            assert time.monotonic() < deadline, (
                f"instance {iid} did not reach the expected state within {timeout}s; last seen: {last}")
    raise AssertionError("the watch ended")


def state_is(*states: str) -> Callable[[dict[str, Any] | None], bool]:
    return lambda b: b is not None and b["state"] in states


def gone(b: dict[str, Any] | None) -> bool:
    return b is None
