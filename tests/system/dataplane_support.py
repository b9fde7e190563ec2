"""Real ``tenure serve`` and ``tenure agent`` processes around network namespaces, for the dataplane tests.

A :class:`Daemon` is one process of the venv's ``tenure`` console script, its
stdout and stderr in a log file, in a session of its own; an agent runs inside a
host's namespace through ``ip netns exec`` (which execs the command, so the pid
is the agent's own python process: :meth:`Daemon.verify_in_netns` checks it).
:func:`wait_until` waits on a condition with a bounded deadline (short polls,
never a pause to let time pass). TC notifications are counted with
:class:`tests.netns_support.TcEvents`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tenure.client import TenureClient
from tenure.client._errors import TenureConnectionError
from tests.netns_support import Host

TENURE = Path(sys.executable).parent / "tenure"  # the venv's console script
READY = 30.0  # seconds for a process to answer /healthz
STOP_GRACE = 15.0  # seconds between SIGTERM and SIGKILL
T = TypeVar("T")


NOT_LISTENING = (TenureConnectionError, httpx.TransportError, OSError)


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str,
               context: Callable[[], str] = lambda: "", interval: float = 0.05,
               errors: tuple[type[BaseException], ...] = NOT_LISTENING) -> T:
    """Poll ``check`` until it returns something truthy (returned), for at most ``timeout`` seconds; ``errors``
    raised by it count as "not yet" (by default: nobody listens yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except errors as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s (last: {last!r}){context()}")
        time.sleep(interval)


def health(sock: Path, token_file: Path) -> dict[str, Any] | None:
    """``GET /healthz`` over a unix socket with the process's own admin token: the body when it answers 200 with
    status ok; None while the token is not written yet (it is before ready), nobody listens, or it is restoring."""
    if not sock.exists() or not token_file.exists():
        return None
    with TenureClient(f"unix:{sock}", token_file.read_text().strip(), timeout=5) as client:
        body = client.health()
    return body if body.get("status") == "ok" else None


def write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


def netns_inode(netns: str) -> int:
    return os.stat(f"/var/run/netns/{netns}").st_ino


class Daemon:
    """One ``tenure`` process (argv after the console script), logs in ``log``, listening on ``sock``, its data
    (and admin token) in ``data_dir``; inside ``host``'s namespace if given."""

    def __init__(self, name: str, argv: Sequence[str], *, sock: Path, data_dir: Path, log: Path,
                 host: Host | None = None) -> None:
        self.name = name
        self.args = list(argv)
        self.sock = sock
        self.data_dir = data_dir
        self.log = log
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def argv(self) -> list[str]:
        argv = [str(TENURE), *self.args]
        return self.host.argv(*argv) if self.host is not None else argv

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Daemon:
        self.starts += 1
        with open(self.log, "ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
            log.write(f"\n===== {stamp} start {self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def token_file(self) -> Path:
        return self.data_dir / "admin.token"

    def health(self) -> dict[str, Any] | None:
        """/healthz when it answers ok; an exited process is an error at once, with its log."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
        return health(self.sock, self.token_file)

    def wait_healthy(self, pred: Callable[[dict[str, Any]], bool] = lambda b: True, *,
                     timeout: float = READY, what: str = "healthy", context: Callable[[], str] = lambda: "") -> dict:
        def check() -> dict[str, Any] | None:
            body = self.health()
            return body if body is not None and pred(body) else None

        return wait_until(check, timeout=timeout, what=f"{self.name} {what}", context=context)

    def admin_client(self) -> TenureClient:
        return TenureClient(f"unix:{self.sock}", self.token_file.read_text().strip())

    def verify_in_netns(self) -> None:
        """The pid is the ``tenure agent`` python process itself (``ip netns exec`` exec'd it), in the host's netns."""
        assert self.host is not None
        cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        words = [w.decode() for w in cmdline if w]
        assert str(TENURE) in words and "agent" in words and words[0] != "ip", (self.name, words)
        assert os.path.realpath(f"/proc/{self.pid}/exe") == os.path.realpath(sys.executable), (
            self.name, os.path.realpath(f"/proc/{self.pid}/exe"))
        assert os.stat(f"/proc/{self.pid}/ns/net").st_ino == netns_inode(self.host.netns), self.name

    def kill9(self) -> None:
        """SIGKILL to the process itself (not its group), then reap it; nothing of its group may stay."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.returncode == -signal.SIGKILL, self.proc.returncode
        assert not group_alive(self.proc.pid), f"{self.name}: processes of its group outlived it"

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after STOP_GRACE; reaped either way."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if group_alive(self.proc.pid):  # a child that outlived its leader
            _signal_group(self.proc.pid, signal.SIGKILL)

    def tail(self, chars: int = 6000) -> str:
        """The end of the log, without httpx's line per request (an agent's heartbeat every second)."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(ln for ln in lines if "logger=httpx" not in ln)[-chars:]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True




def tc_layout(host: Host) -> dict[str, Any]:
    """The root qdisc, HTB classes and filters as tc shows them (handles, rates, keys), without counters."""
    qdiscs = host.tc_json("qdisc")
    for q in qdiscs:
        q.get("options", {}).pop("direct_packets_stat", None)
    classes = {cid: {k: v for k, v in c.items() if not k.startswith("sent_")} for cid, c in host.tc_classes().items()}
    return {"qdiscs": qdiscs, "classes": classes, "filters": host.tc_json("filter")}


def start_cluster(tmp: Path, hosts: Sequence[Host], daemons: list[Daemon], cleanup: contextlib.ExitStack,
                  logs: Callable[[], str]) -> tuple[TenureClient, dict[str, Daemon]]:
    """A ``tenure serve`` in the root namespace on a unix socket, and one ``tenure agent`` per host inside its
    namespace (each with an agent token of its own), registered, synced and up on the server. Every process is
    appended to ``daemons`` (the caller stops them); the admin client is closed by ``cleanup``."""
    server_dir, server_sock = tmp / "server", tmp / "server.sock"
    server = Daemon("server", ["serve", "--listen", f"unix:{server_sock}", "--data-dir", str(server_dir)],
                    sock=server_sock, data_dir=server_dir, log=tmp / "server.log")
    daemons.append(server)
    server.start().wait_healthy(context=logs)
    admin = cleanup.enter_context(server.admin_client())
    agents: dict[str, Daemon] = {}
    for host in hosts:
        data = tmp / host.name
        data.mkdir()
        token = admin.create_token("agent", host=host.name)["token"]
        token_file = write_secret(tmp / f"{host.name}.token", token)
        argv = ["agent", "--host", host.name, "--server", f"unix:{server_sock}", "--server-token-file",
                str(token_file), "--data-dir", str(data), "--rsctmp", str(data / "rsctmp"),
                "--listen", f"unix:{data / 'agent.sock'}", "--heartbeat", "1"]
        agent = Daemon(f"agent {host.name}", argv, sock=data / "agent.sock", data_dir=data,
                       log=tmp / f"{host.name}.log", host=host)
        daemons.append(agent)
        agents[host.name] = agent.start()
    for agent in agents.values():
        agent.wait_healthy(lambda b: b["sync"]["registered"] and b["sync"]["synced"], what="registered and synced",
                           context=logs)
        agent.verify_in_netns()
    want = {h.name: "up" for h in hosts}
    wait_until(lambda: {a["host"]: a["state"] for a in admin.agents()["agents"]} == want, timeout=30,
               what="every agent up on the server", context=logs)
    return admin, agents
