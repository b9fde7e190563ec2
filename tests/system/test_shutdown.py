"""SIGTERM (what systemd and most supervisors send) and SIGINT stop `tenure serve` and `tenure agent` cleanly.

Real processes: each is sent the signal and must exit 0 (not die of the signal), remove its socket file, and
close its store (a new process on the same data dir starts, with everything committed before). The agent
stops an operation still running after --shutdown-wait as a timeout would (its driver's process group is
gone) and reports it interrupted at its next start, as after a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenure.client import TenureClient
from tenure.drivers.process import group_alive

from tests.system.dataplane_support import READY, TENURE, health, wait_until

TEST_DRIVERS = Path(__file__).resolve().parent.parent / "drivers" / "bin"
EXIT_DEADLINE = 60.0  # seconds for a signalled process to exit (it needs far less; a bound, not a pause)


class Process:
    """One `tenure serve` or `tenure agent` on a unix socket in ``data``."""

    def __init__(self, data: Path, *args: str) -> None:
        self.data, self.sock, self.log = data, data / "tenure.sock", data / "process.log"
        self.argv = [str(TENURE), *args, "--data-dir", str(data), "--listen", f"unix:{self.sock}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_until(lambda: health(self.sock, self.data / "admin.token"), timeout=READY, what="ready",
                   context=lambda: "\n" + self.log.read_text()[-3000:])
        return self

    @property
    def token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def client(self) -> TenureClient:
        return TenureClient(f"unix:{self.sock}", self.token, timeout=30)

    def metric(self, name: str) -> float:
        """One sample of the process's /metrics, as Prometheus parses it."""
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock)), base_url="http://tenure",
                          headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as http:
            text = http.get("/metrics").raise_for_status().text
        found = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
        assert len(found) == 1, f"{name} in /metrics: {found}"
        return found[0]

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(EXIT_DEADLINE)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    made: list[Process] = []
    try:
        yield made
    finally:
        for p in made:
            p.kill()  # a test that failed must not leave a process behind


@pytest.mark.system
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_server_stops_cleanly_on_a_signal(tmp_path: Path, processes: list[Process], sig: int) -> None:
    data = tmp_path / "server"
    server = Process(data, "serve", "--log-level", "info")
    processes.append(server.start())
    with server.client() as c:
        c.create_pool("p", ranges=[(1, 100)])
        value = c.claim("p", "k")["value"]
    assert server.signal(sig) == 0, server.log.read_text()[-3000:]
    assert not server.sock.exists(), "the socket file outlived the server"
    assert f"msg=stopped signal={sig.name}" in server.log.read_text()
    again = Process(data, "serve")  # the store was closed: its owner lock is free, the claim is there
    processes.append(again.start())
    with again.client() as c:
        assert c.claim("p", "k") == {**c.claim("p", "k"), "value": value, "created": False}
    assert again.signal(signal.SIGTERM) == 0


@pytest.mark.system
def test_the_agent_stops_what_runs_and_reports_it_interrupted_after_a_restart(
        tmp_path: Path, processes: list[Process]) -> None:
    data = tmp_path / "agent"
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    args = ("agent", "--drivers-dir", str(TEST_DRIVERS), "--rsctmp", str(tmp_path / "rsctmp"), "--shutdown-wait",
            "1", "--kill-grace", "1", "--log-level", "info")
    agent = Process(data, *args)
    processes.append(agent.start())
    with agent.client() as c:
        c.add_resource("stuck", "exec:sleeper", params={"ignore_term": "1", "ready": str(fifo)})  # ignores SIGTERM
        op = c.submit("stuck", "start", timeout=3600)
    pid = int(fifo.read_text().split()[1])  # the driver runs and says so (a read that waits on it, not a pause)
    assert group_alive(pid)
    with ThreadPoolExecutor(1) as pool, agent.client() as c:
        long_poll = pool.submit(c.operation, "stuck", op["id"], wait=60)  # waits for a result that will not come
        # The signal only once the request waits in the agent: sent sooner, it could find the request unread.
        wait_until(lambda: agent.metric("tenure_lrm_long_polls") == 1 or None, timeout=EXIT_DEADLINE,
                   what="the long poll waiting in the agent",
                   context=lambda: f"; the long poll ended: {long_poll.exception()!r}" if long_poll.done() else "")
        assert agent.signal(signal.SIGTERM) == 0, agent.log.read_text()[-3000:]
        answer = long_poll.result(timeout=EXIT_DEADLINE)  # answered at the shutdown, as it stands: no 500
        assert answer["id"] == op["id"] and answer["result"] is None
    assert not group_alive(pid), "the running operation's processes outlived the agent"
    assert not agent.sock.exists(), "the socket file outlived the agent"
    log = agent.log.read_text()
    assert "operations still running at shutdown" in log and "msg=stopped signal=SIGTERM" in log
    assert "Traceback" not in log
    again = Process(data, *args)
    processes.append(again.start())
    with again.client() as c:
        view = c.operation("stuck", op["id"])
        assert view["result"]["status"] == "cancelled" and "interrupted" in view["result"]["exit_reason"]
    assert again.signal(signal.SIGINT) == 0
    assert not group_alive(pid)
