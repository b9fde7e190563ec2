"""A real ``tenure serve`` process for benchmarks: start on a free port, wait until ready, call it, stop it.

Shared by bench/http.py and bench/watch.py. The server runs in its own session (so a stop can kill its
whole group), optionally pinned to CPUs with ``taskset``, logging to ``DATA_DIR/server.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent


def taskset(cmd: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu is not None else cmd


def stop_process(proc: subprocess.Popen[bytes], sig: int, grace: float = 20.0) -> None:
    """Signal a process started in its own session, then kill its whole group if it has not exited in ``grace``."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TenureServer:
    def __init__(self, data_dir: Path, log_level: str, cpu: str | None, *,
                 command: Sequence[str] | None = None, extra: Sequence[str] = ()) -> None:
        """``command`` runs instead of the venv's ``tenure`` (e.g. under a tracing hook); ``extra``: more
        ``serve`` options."""
        self.dir = data_dir
        tenure = list(command) if command is not None else [str(VENV_BIN / "tenure")]
        cmd = taskset([*tenure, "serve", "--db", f"sqlite:///{data_dir / 'tenure.db'}", "--listen", "127.0.0.1:0",
                       "--data-dir", str(data_dir), "--log-level", log_level, *extra], cpu)
        self.log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.url, self.token = self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tenure serve exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                url = json.loads((self.dir / "server.json").read_text())["url"]
                token = (self.dir / "admin.token").read_text().strip()
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    if r.status == 200 and token:
                        return url, token
            except (OSError, ValueError, KeyError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"tenure serve not ready within {timeout} s:\n{self.log_tail()}")

    def log_lines(self) -> list[str]:
        try:
            return (self.dir / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_lines()[-n:]) or "(no log)"

    def call(self, method: str, path: str, body: Any = None, raw: bool = False) -> tuple[int, Any]:
        """One request with the admin token: (status, JSON answer, or the text with ``raw``)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                payload = r.read()
                return r.status, payload.decode() if raw else json.loads(payload)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)
        self.log.close()
