"""A real ``tenure serve`` process for system tests: start, wait until ready, kill -9, stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

START_DEADLINE = 60.0


class ServerProcess:
    def __init__(self, *, db_url: str, data_dir: Path, listen: str = "127.0.0.1:0", args: Sequence[str] = ()) -> None:
        self.db_url = db_url
        self.data_dir = data_dir
        self.listen = listen  # a fixed port: the same URL after a restart
        self.args = tuple(args)  # more of `tenure serve`'s options, e.g. --example
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log = data_dir / "server.log"

    def start(self) -> ServerProcess:
        """Start the process and return once it is listening (not necessarily ready)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "server.json").unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tenure", "serve", "--db", self.db_url, "--listen", self.listen,
                 "--data-dir", str(self.data_dir), "--log-level", "warning", *self.args],
                stdout=log, stderr=log, start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE
        info = self.data_dir / "server.json"
        try:
            while not info.exists():
                self._check_alive(deadline)
                time.sleep(0.01)  # polling for the file the server writes, bounded by the deadline
        except BaseException:
            self.stop()  # a server that did not start must not outlive the test
            raise
        self.url = json.loads(info.read_text())["url"]
        return self

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"server did not start in time:\n{self.log.read_text()[-3000:]}")

    def wait_ready(self, on_not_ready=None) -> None:
        """Poll /healthz until 200; ``on_not_ready(client)`` runs after each non-ready answer."""
        deadline = time.monotonic() + START_DEADLINE
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                self._check_alive(deadline)
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if on_not_ready is not None:
                    on_not_ready(client)

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
