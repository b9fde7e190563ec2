"""Shared by the LRM tests: a real host agent app (uvicorn on loopback, SQLite store) and the test drivers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tenure.agent.daemon import AgentConfig, AgentDaemon
from tenure.drivers.spec import DriverRoots

TEST_DRIVERS = Path(__file__).parent / "drivers" / "bin"  # the project's own failure-case drivers (exec:NAME)


def lrm_config(tmp: Path, **kwargs: Any) -> AgentConfig:
    """An LRM with the real OCF root, the test drivers as exec drivers, and a private HA_RSCTMP."""
    roots = DriverRoots(exec_dirs=(TEST_DRIVERS,), **kwargs.pop("roots", {}))
    return AgentConfig(roots=roots, rsctmp=tmp / "rsctmp", **kwargs)


def start_agent(tmp: Path, **kwargs: Any) -> Iterator[Any]:
    """``tenure agent`` in-process: the same app as the server with the resource manager, on SQLite."""
    from tests.conftest import start_api

    data = tmp / "agent"
    data.mkdir(parents=True, exist_ok=True)
    yield from start_api(f"sqlite:///{data / 'tenure.db'}", data, extension=AgentDaemon(lrm_config(tmp, **kwargs)))
