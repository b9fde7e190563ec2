"""Replicas as real processes on a throwaway PostgreSQL: start, kill -9, pause, resume, ask who leads.

Shared by the replica tests (tests/system/test_replicas.py) and the failover benchmark (bench/failover.py).
Each replica is a `tenure serve --replica-name NAME` on 127.0.0.1 (a free port: its URL is read from
``server.json``), with its own data dir; the first one started initialises the store and writes the admin
token, which every replica accepts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tenure.client import TenureAPIError, TenureClientError
from tests.support.postgres import free_port
from tests.system.dataplane_support import wait_until

TENURE = Path(sys.executable).parent / "tenure"
READY = 60.0  # seconds for a replica to answer /healthz ok


# A replica set between roles answers 503s, cut connections and odd bodies: all of them mean "not yet".
NOT_YET = (httpx.HTTPError, OSError, ValueError, KeyError, TenureAPIError, TenureClientError)


def wait_for(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy, for at most ``timeout`` seconds (a bound, not a pause)."""
    return wait_until(check, timeout=timeout, what=what, interval=0.02, errors=NOT_YET)


class Replica:
    def __init__(self, root: Path, name: str, db: str, lease: float) -> None:
        self.name, self.db, self.lease = name, db, lease
        self.data = root / name
        self.log = self.data / "replica.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False
        self.port = free_port()  # the same address across restarts, as a real replica's would be

    def start(self) -> Replica:
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "server.json").unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(TENURE), "serve", "--db", self.db, "--listen", f"127.0.0.1:{self.port}",
                 "--data-dir", str(self.data), "--replica-name", self.name, "--lease", str(self.lease),
                 "--log-level", "info"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        return self

    @property
    def url(self) -> str:
        return json.loads((self.data / "server.json").read_text())["url"]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> dict[str, Any] | None:
        if not self.alive or self.stopped or not (self.data / "server.json").exists():
            return None
        try:
            return httpx.get(self.url + "/healthz", timeout=10).json()  # a bound on a busy machine, not a pause
        except (httpx.HTTPError, ValueError):
            return None

    def role(self) -> str | None:
        h = self.health()
        return h["replica"]["role"] if h and h.get("status") == "ok" else None

    def kill(self) -> None:
        assert self.proc is not None
        if self.stopped:
            self.cont()
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def terminate(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        if self.stopped:
            self.cont()
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


class ReplicaSet:
    def __init__(self, root: Path, db: str, names: tuple[str, ...] = ("a", "b", "c"), lease: float = 2.0) -> None:
        self.root, self.db = root, db
        self.replicas = {n: Replica(root, n, db, lease) for n in names}
        self.token = ""

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas.values())

    def __getitem__(self, name: str) -> Replica:
        return self.replicas[name]

    def start(self) -> ReplicaSet:
        first, *rest = self.replicas.values()
        first.start()
        self.wait_ok(first)
        self.token = (first.data / "admin.token").read_text().strip()
        for r in rest:
            r.start()
        for r in rest:
            self.wait_ok(r)
        return self

    def wait_ok(self, r: Replica, timeout: float = READY) -> dict[str, Any]:
        def ok() -> dict[str, Any] | None:
            if r.proc is not None and r.proc.poll() is not None:
                raise AssertionError(f"replica {r.name} exited with {r.proc.returncode}:\n{r.tail()}")
            h = r.health()
            return h if h and h.get("status") == "ok" else None

        return wait_for(ok, timeout=timeout, what=f"replica {r.name} ready")

    def leader(self, timeout: float = 30.0) -> Replica:
        """The replica that leads: every live replica answers, one says it leads, and the others follow it with
        its epoch (a leader that lost the lead may still say it leads for a moment: its epoch is behind)."""
        def one() -> Replica | None:
            live = [r for r in self if r.alive and not r.stopped]
            views = {r.name: r.health() for r in live}
            if any(v is None or v.get("status") != "ok" for v in views.values()):
                return None
            leaders = [r for r in live if views[r.name]["replica"]["role"] == "leader"]
            if len(leaders) != 1:
                return None
            epoch = views[leaders[0].name]["replica"]["epoch"]
            agree = all(v["replica"]["epoch"] == epoch and (v["replica"]["leader"] or {}).get("name") == leaders[0].name
                        for v in views.values())
            return leaders[0] if agree else None

        return wait_for(one, timeout=timeout, what="one leader")

    def urls(self) -> list[str]:
        return [r.url for r in self if (r.data / "server.json").exists()]

    def close(self) -> None:
        for r in self:
            r.terminate()
