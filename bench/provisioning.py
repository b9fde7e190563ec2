#!/usr/bin/env python3
"""Provisioning: a reservation's activation to its shapers on the wire, and an agent's restart with its shapers.

    python3 dev.py bench provisioning [--runs 40] [--instances 50,100,200] [--restarts 3] [--idle 60] [--quick]

Everything is real: ``tenure serve`` in the root namespace on a Unix socket, and two ``tenure agent`` processes
(hosts h1 and h2), each inside its own network namespace (``ip netns exec``), the namespaces joined by a bridge
(``tests/netns_support.Lan``). The topology is h1 - s1 - h2 with 10G links; each host's node has the labels
``address`` and ``interface`` (its device inside its namespace), so a reservation's shapers land on the right
device. A host node h0 without links is there for the restart baseline. Server and agents run as shipped (log
level info, the built-in ``bandwidth`` type: ``python:tenure.drivers.tc:Shaper``, a 60 s recurring monitor).

1. Activation to dataplane. ``--warmup`` + ``--runs`` bandwidth reservations h1 <-> h2 (100M each way), one after
   another, each starting ``--lead`` seconds after it is made (an ISO 8601 instant with its zone). From just before
   that instant, this process polls netlink in each namespace (raw RTM_GETTCLASS dumps on the
   device, and a netfilter dump of the table inet tenure, every ``--poll-ms``) until the HTB class and the leg's
   nftables rule (what the shaper writes last) are present in both: activation -> both
   configured is that moment minus the reservation's start. Breakdown, from watches: the server's ``reservation``
   event (state active; an event's timestamp is its writer batch's clock, taken before the commit) and
   ``instance`` events (provisioning = dispatched, with when a watcher here received it; active = the agent's
   report), and each agent's own ``operation`` events for the shaper's start (accepted, started, finished). Each
   reservation is then cancelled, and the next one made once its classes are gone from both namespaces and both
   agents say converged. The warm-up rounds (the agents' first shapers since they started) are reported apart.
   Baseline in the same rounds, while the agents are idle: ``tenure.drivers.tc.Shaper().start`` called in this
   process with ``netns=`` and the same parameters (h1's leg and h2's leg, alternating which goes first; the floor of
   programming one host's dataplane), then stopped. Goal: median activation -> both configured <= 200 ms.

2. Restart with N unchanged instances, for each N of ``--instances`` (a ladder; one count works too, e.g. 1000).
   N ``oneway`` reservations h1 -> h2 of 1M each, active for hours (one shaper each on h1, all on one device), made
   through the API from 4 threads; once all are active on the server, on the wire and the agent is converged,
   ``--restarts`` times: a netlink subscription to RTNLGRP_TC in h1's namespace is opened (checked live with a
   sentinel qdisc on ``lo``), and one to NFNLGRP_NFTABLES (checked with a sentinel table), the device's
   qdisc/class/filter listing and the nftables table are saved, the agent is killed with SIGKILL and
   started again with the same data dir; measured: the time from the spawn until its /healthz (over its Unix
   socket, with its own admin token) says ``sync.synced`` and ``sync.converged``, the TC messages about the device
   and the nftables messages in that time (must be 0), the listings after (must be identical but for HTB's
   direct_packets_stat counter and the rules' counters) and
   ``sync.operations`` (must be 0). Baseline in the same rounds: an agent for host h0 (no instances) in h1's
   namespace with an empty data dir, timed the same way. Also: ``Shaper.monitor`` timed in this process with the N
   shapers in place; with the most instances, the agent's CPU over ``--idle`` seconds of nothing changing (its
   recurring monitors); and ``Shaper.monitor`` on a veth in h2's namespace filled by ``tc -batch`` with 1..1,000
   shaper-identical classes and rules (the driver's cost per probe at 1,000, without building 1,000 through the
   agent). When the ladder stops below 1,000, the 1,000 figure is a fit (restart - baseline = a N + b N^2),
   labelled as such. Goal: <= 5 s with zero dataplane changes.

Medians over the rounds; the script reports and never gates (exit 0). Every process and namespace it made is
removed at the end, also on failure or Ctrl-C. Results: bench/results/provisioning-*.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/http.py shadows http
sys.path.append(str(HERE))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import difflib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import benchkit  # noqa: E402  (puts the repository on sys.path: tests.netns_support)
from benchkit import Goal, Report, fmt, median  # noqa: E402

from tenure.client import TenureClient, TenureClientError  # noqa: E402
from tenure.drivers.pydriver import HandlerContext  # noqa: E402
from tenure.drivers.tc import Shaper  # noqa: E402
from tenure.drivers.tc import nft  # noqa: E402
from tenure.drivers.tc.netlink import NETLINK_NETFILTER, NFTABLES_GROUPS, _netns_socket, netlink_socket  # noqa: E402
from tenure.drivers.tc.params import parse_params  # noqa: E402
from tests.netns_support import Host, Lan  # noqa: E402

VENV_BIN = Path(sys.executable).parent
TENURE = str(VENV_BIN / "tenure")
WAIT = 60.0  # seconds: a bound on any wait, never a pause

# rtnetlink, as <linux/netlink.h> and <linux/rtnetlink.h> have it
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETTCLASS = 42
RTMGRP_TC = 0x8
TC_MESSAGES = {36: "newqdisc", 37: "delqdisc", 40: "newclass", 41: "delclass", 44: "newfilter", 45: "delfilter",
               100: "newchain", 101: "delchain"}
NLHDR = struct.Struct("=IHHII")
TCMSG = struct.Struct("=BxxxiIII")
# nf_tables over netlink, as <linux/netfilter/nfnetlink.h> and <linux/netfilter/nf_tables.h> have it
NFNL_SUBSYS_NFTABLES, NFT_MSG_GETRULE, NFPROTO_INET, NFTA_RULE_TABLE = 10, 7, 1, 1
NFGENMSG = struct.Struct("=BBH")
NFT_MESSAGES = {0: "newtable", 2: "deltable", 3: "newchain", 5: "delchain", 6: "newrule", 8: "delrule",
                9: "newset", 11: "delset", 12: "newsetelem", 14: "delsetelem", 15: "newgen"}


def now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


def wall(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ms(x: float | None) -> float:
    return float("nan") if x is None else x * 1000.0


# ============================================================ netlink, directly


class NetnsTc:
    """Raw rtnetlink dumps of one device's HTB classes, and netfilter dumps of the namespace's tenure rules, from
    sockets inside its namespace."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.ifindex = ifindex(host, host.ifname)
        self.sock = netlink_socket(host.netns)
        self.nfsock = _netns_socket(host.netns, NETLINK_NETFILTER)[0]
        self.seq = 0

    def close(self) -> None:
        self.sock.close()
        self.nfsock.close()

    def rules(self) -> int:
        """How many leg rules (comment "tenure ... leg ...") the table inet tenure holds; 0 without the table."""
        self.seq += 1
        table = b"tenure\0"
        attr = struct.pack("=HH", 4 + len(table), NFTA_RULE_TABLE) + table + b"\0" * (-len(table) % 4)
        body = NFGENMSG.pack(NFPROTO_INET, 0, 0) + attr
        self.nfsock.send(NLHDR.pack(NLHDR.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
                                    NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0) + body)
        count = 0
        while True:
            data = self.nfsock.recv(1 << 20)
            off = 0
            while off + NLHDR.size <= len(data):
                length, t, _flags, seq, _pid = NLHDR.unpack_from(data, off)
                if length < NLHDR.size:
                    break
                if seq == self.seq:
                    if t in (NLMSG_DONE, NLMSG_ERROR):  # ERROR: no such table, nothing there
                        return count
                    if b" leg " in data[off:off + length]:  # the comment rides in the rule's user data
                        count += 1
                off += (length + 3) & ~3

    def _dump(self, typ: int, parent: int = 0) -> list[tuple[int, int, int]]:
        self.seq += 1
        self.sock.send(NLHDR.pack(NLHDR.size + TCMSG.size, typ, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0)
                       + TCMSG.pack(0, self.ifindex, 0, parent, 0))
        out: list[tuple[int, int, int]] = []
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + NLHDR.size <= len(data):
                length, t, _flags, seq, _pid = NLHDR.unpack_from(data, off)
                if seq == self.seq:
                    if t == NLMSG_DONE:
                        return out
                    if t == NLMSG_ERROR:  # e.g. no qdisc 1: to list filters of: nothing there
                        return out
                    _fam, ifi, handle, par, info = TCMSG.unpack_from(data, off + NLHDR.size)
                    if ifi == self.ifindex:
                        out.append((handle, par, info))
                off += (length + 3) & ~3

    def classes(self) -> list[int]:
        """Handles of the classes under 1: on the device."""
        return [h for h, _p, _i in self._dump(RTM_GETTCLASS) if h >> 16 == 1]



def ifindex(host: Host, name: str) -> int:
    return int(json.loads(host.run("ip", "-j", "link", "show", "dev", name).stdout)[0]["ifindex"])


def poll_configured(probes: list[NetnsTc], *, deadline_wall: float, interval: float) -> list[dict[str, float]]:
    """Poll each namespace until a class and a leg's rule are present in all; per probe the first wall times."""
    seen: list[dict[str, float]] = [{} for _ in probes]
    while time.time() < deadline_wall:
        done = True
        for p, s in zip(probes, seen, strict=True):
            if "rules" in s:
                continue
            if "class" not in s:
                if p.classes():
                    s["class"] = time.time()
                else:
                    done = False
                    continue
            if p.rules():
                s["rules"] = time.time()
            else:
                done = False
        if done:
            return seen
        time.sleep(interval)
    return seen


def wait_empty(probes: list[NetnsTc], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(p.classes() or p.rules() for p in probes):
            return True
        time.sleep(0.005)
    return False


class TcMonitor:
    """A subscription to RTNLGRP_TC in a namespace: every qdisc/class/filter change, with when it was read (with
    ``nftables``, to NFNLGRP_NFTABLES instead: every table, chain, rule or set change, ifindex -1)."""

    def __init__(self, host: Host, *, nftables: bool = False) -> None:
        self.nftables = nftables
        if nftables:
            self.sock = _netns_socket(host.netns, NETLINK_NETFILTER)[0]
            self.sock.bind((0, NFTABLES_GROUPS))
        else:
            self.sock = netlink_socket(host.netns)
            self.sock.bind((0, RTMGRP_TC))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str, int]] = []  # (wall, type, ifindex)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tc-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as exc:  # ENOBUFS: messages were lost, the count is not to be trusted
                self.errors.append(str(exc))
                continue
            t = time.time()
            off = 0
            while off + NLHDR.size <= len(data):
                length, typ, _f, _s, _p = NLHDR.unpack_from(data, off)
                if length < NLHDR.size:
                    break
                if self.nftables:
                    self.messages.append((t, NFT_MESSAGES.get(typ & 0xFF, str(typ)), -1))
                else:
                    ifi = TCMSG.unpack_from(data, off + NLHDR.size)[1] if length >= NLHDR.size + TCMSG.size else -1
                    self.messages.append((t, TC_MESSAGES.get(typ, str(typ)), ifi))
                off += (length + 3) & ~3

    def wait_for(self, kind: str, ifi: int, after: int, timeout: float = 10.0) -> int:
        """Index past the first message ``kind`` on ``ifi`` at or after index ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(after, len(self.messages)):
                if self.messages[i][1] == kind and self.messages[i][2] == ifi:
                    return i + 1
            time.sleep(0.005)
        raise RuntimeError(f"the netlink subscription did not see {kind} on ifindex {ifi} within {timeout}s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def sentinel(host: Host, monitor: TcMonitor, lo: int) -> int:
    """A qdisc added to and deleted from ``lo``, seen by the monitor: everything before it was read."""
    start = len(monitor.messages)
    host.run("tc", "qdisc", "add", "dev", "lo", "root", "handle", "7:", "pfifo", "limit", "10")
    host.run("tc", "qdisc", "del", "dev", "lo", "root")
    return monitor.wait_for("delqdisc", lo, monitor.wait_for("newqdisc", lo, start))


def nft_sentinel(host: Host, monitor: TcMonitor) -> tuple[int, int]:
    """A table added and deleted, seen by the nftables monitor: (index of its first message, index past its last:
    the new generation that closes the deleting transaction)."""
    start = len(monitor.messages)
    host.run("nft", "add", "table", "inet", "bench_sentinel")
    host.run("nft", "delete", "table", "inet", "bench_sentinel")
    first = monitor.wait_for("newtable", -1, start)
    return first - 1, monitor.wait_for("newgen", -1, monitor.wait_for("deltable", -1, first))


COUNTERS = re.compile(r"\b(direct_packets_stat|packets|bytes) \d+")


def tc_listing(host: Host) -> str:
    """``tc qdisc/class/filter show`` of the device and ``nft -a list table inet tenure``, counters (HTB's
    direct_packets_stat, the rules' packets and bytes) blanked."""
    text = "\n".join(host.run("tc", *what, "show", "dev", host.ifname, *extra).stdout
                     for what, extra in ((("qdisc",), ()), (("class",), ()), (("filter",), ("parent", "1:"))))
    text += "\n" + host.run("nft", "-a", "list", "table", "inet", "tenure", check=False).stdout
    return COUNTERS.sub(r"\1 N", text)


# ============================================================ processes


class Proc:
    """A child in its own session (so a kill takes its whole group), output to a log file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115 - closed by kill()
        self.spawned = time.monotonic()
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=15)
        self.log.close()

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Agent:
    host: str
    netns: str
    dir: Path
    server_sock: Path
    token_file: Path
    log_level: str
    proc: Proc | None = None
    starts: int = 0

    @property
    def sock(self) -> Path:
        return self.dir / "agent.sock"

    def spawn(self) -> Proc:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        argv = ["ip", "netns", "exec", self.netns, TENURE, "agent", "--host", self.host,
                "--server", f"unix:{self.server_sock}", "--server-token-file", str(self.token_file),
                "--data-dir", str(self.dir), "--rsctmp", str(self.dir / "rsctmp"), "--listen", f"unix:{self.sock}",
                "--log-level", self.log_level]
        self.proc = Proc(argv, self.dir / f"agent-{self.starts}.log")  # `ip netns exec` execs: pid = the agent
        return self.proc

    def client(self) -> TenureClient:
        return TenureClient(f"unix:{self.sock}", (self.dir / "admin.token").read_text().strip(), timeout=10)

    def health(self, c: TenureClient | None) -> dict[str, Any] | None:
        """The agent's /healthz, or None while it does not answer (not started, restoring)."""
        try:
            return (c or self.client()).health()
        except (TenureClientError, OSError):
            return None

    def wait(self, pred: Any, *, timeout: float = WAIT, interval: float = 0.025) -> tuple[float, dict[str, Any]]:
        """Poll /healthz until ``pred(sync)``; (monotonic time it first held, the body)."""
        deadline = time.monotonic() + timeout
        c: TenureClient | None = None
        last: dict[str, Any] | None = None
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and not self.proc.alive():
                    raise RuntimeError(f"agent {self.host} exited {self.proc.popen.returncode}:\n{self.proc.tail()}")
                if c is None and (self.dir / "admin.token").exists() and self.sock.exists():
                    with contextlib.suppress(OSError, ValueError):
                        c = self.client()
                body = self.health(c) if c is not None else None
                if body is not None and body.get("status") == "ok":
                    last = body
                    if pred(body.get("sync") or {}):
                        return time.monotonic(), body
                time.sleep(interval)
        finally:
            if c is not None:
                c.close()
        raise RuntimeError(f"agent {self.host}: condition not met within {timeout}s; last /healthz: {last}")


def ready(sync: dict[str, Any]) -> bool:
    return bool(sync.get("registered") and sync.get("synced") and sync.get("converged"))


# ============================================================ the world


@dataclass
class World:
    args: argparse.Namespace
    tmp: Path
    lan: Lan
    server: Proc
    admin: TenureClient
    agents: dict[str, Agent] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)


def start_server(tmp: Path, log_level: str) -> tuple[Proc, TenureClient]:
    data = tmp / "server"
    data.mkdir(parents=True)
    sock = tmp / "server.sock"
    proc = Proc([TENURE, "serve", "--listen", f"unix:{sock}", "--data-dir", str(data), "--log-level", log_level],
                data / "server.log")
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"tenure serve exited {proc.popen.returncode}:\n{proc.tail()}")
        token_file = data / "admin.token"
        if token_file.exists() and sock.exists():
            c = TenureClient(f"unix:{sock}", token_file.read_text().strip(), timeout=30)
            with contextlib.suppress(TenureClientError):
                if c.health().get("status") == "ok":
                    return proc, c
            c.close()
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"tenure serve not ready within {WAIT}s:\n{proc.tail()}")


def topology(lan: Lan) -> dict[str, Any]:
    h1, h2 = lan[0], lan[1]
    return {
        "nodes": [
            {"id": "h1", "kind": "host", "labels": {"address": h1.address, "interface": h1.ifname}},
            {"id": "h2", "kind": "host", "labels": {"address": h2.address, "interface": h2.ifname}},
            {"id": "h0", "kind": "host"},
            {"id": "s1", "kind": "switch"},
        ],
        "links": [
            {"id": "h1-s1", "a": "h1", "b": "s1", "capacity": "10G"},
            {"id": "h2-s1", "a": "h2", "b": "s1", "capacity": "10G"},
        ],
    }


def add_agent(w: World, host: str, netns: str, data_dir: Path | None = None) -> Agent:
    token_file = w.tmp / f"{host}.token"
    if not token_file.exists():
        tok = w.admin.create_token("agent", host=host, description=f"bench provisioning {host}")["token"]
        token_file.write_text(tok + "\n")
        token_file.chmod(0o600)
    a = Agent(host=host, netns=netns, dir=data_dir or w.tmp / host, server_sock=w.tmp / "server.sock",
              token_file=token_file, log_level=w.args.log_level)
    return a


# ============================================================ event tracking


class Tracker:
    """Watches in threads: the server's reservation and instance events, each agent's operation events."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.res_active: dict[str, tuple[float, float]] = {}  # rid -> (event ts, received)
        self.inst: dict[tuple[str, str, str], float] = {}  # (rid, host, state) -> first event ts
        self.inst_received: dict[tuple[str, str, str], float] = {}  # the same -> when this watch got it
        self.ops: dict[tuple[str, str, str], float] = {}  # (rid, host, what) -> wall
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._clients: list[TenureClient] = []
        self.stopped = False

    def _thread(self, name: str, client: TenureClient, kinds: list[str], on: Any) -> None:
        ready = threading.Event()

        def run() -> None:
            try:
                w = client.watch(kinds, read_timeout=30, max_retries=5)
                for ev in w:
                    if ev.is_bookmark:
                        ready.set()
                        continue
                    if self.stopped:
                        return
                    if ev.object is not None:
                        with self.lock:
                            on(ev)
            except Exception as exc:  # noqa: BLE001 - reported, the breakdown is then incomplete
                if not self.stopped:
                    self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                ready.set()

        t = threading.Thread(target=run, name=f"watch-{name}", daemon=True)
        t.start()
        self._threads.append(t)
        self._clients.append(client)
        ready.wait(timeout=15)  # the first bookmark: the stream is open

    def watch_server(self, c: TenureClient) -> None:
        def on(ev: Any) -> None:
            obj = ev.object
            ts = wall(ev.ts) or time.time()
            if ev.kind == "reservation" and obj.get("state") == "active":
                self.res_active.setdefault(ev.id, (ts, time.time()))
            elif ev.kind == "instance" and ev.type != "deleted":
                rid = str(obj.get("name", "")).rsplit("-", 1)[0]
                key = (rid, obj.get("host"), obj.get("state"))
                self.inst.setdefault(key, ts)
                self.inst_received.setdefault(key, time.time())

        self._thread("server", c, ["reservation", "instance"], on)

    def watch_agent(self, host: str, c: TenureClient) -> None:
        def on(ev: Any) -> None:
            obj = ev.object
            if obj.get("action") != "start":
                return
            rid = str((ev.labels or {}).get("instance", "")).rsplit("-", 1)[0]
            if obj.get("submitted_at"):
                self.ops.setdefault((rid, host, "accepted"), wall(obj["submitted_at"]))
            res = obj.get("result")
            if res:
                self.ops.setdefault((rid, host, "started"), wall(res.get("started_at")))
                self.ops.setdefault((rid, host, "finished"), wall(res.get("finished_at")))

        self._thread(f"agent-{host}", c, ["operation"], on)

    def stop(self) -> None:
        self.stopped = True
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()


# ============================================================ 1. activation to dataplane


class Ctx:
    """What Shaper.start needs of an operation's context (log, set_output, timeout)."""

    def __init__(self) -> None:
        self.inner = HandlerContext(instance="bench", instance_id="bench", interval=0.0, timeout=20.0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


CAPACITY = "10000000000"  # bit/s: the hosts' links in the benchmark's topology (10G), as the server passes it

def baseline_legs(lan: Lan, classid: int) -> list[dict[str, str]]:
    h1, h2 = lan[0], lan[1]
    return [{"device": h1.ifname, "rate": "100000000", "classid": str(classid), "dst": h2.address, "src": h1.address,
             "netns": h1.netns, "capacity": CAPACITY, "borrow": "no",
             "mark": "46"},
            {"device": h2.ifname, "rate": "100000000", "classid": str(classid), "dst": h1.address, "src": h2.address,
             "netns": h2.netns, "capacity": CAPACITY, "borrow": "no",
             "mark": "46"}]


def activation(w: World, probes: list[NetnsTc], tracker: Tracker) -> dict[str, Any]:
    a = w.args
    shaper = Shaper()
    rows: list[dict[str, Any]] = []
    base: list[list[float]] = [[], []]
    h1, h2 = w.agents["h1"], w.agents["h2"]
    for i in range(-a.warmup, a.runs):  # rounds < 0: warm-up (the agents' first shapers), not in the medians
        assert wait_empty(probes), "classes left over from the previous round"
        h1.wait(ready)
        h2.wait(ready)
        t_start = time.time() + a.lead
        r = w.admin.reserve(kind="bandwidth", src="h1", dst="h2", rate="100M", start=now_iso(t_start),
                            end=now_iso(t_start + 60), request_id=f"bench-act-{os.getpid()}-{i}",
                            labels={"bench": "activation"})
        rid = r["id"]
        act = wall(r["start"])
        assert act is not None
        time.sleep(max(0.0, act - 0.05 - time.time()))
        seen = poll_configured(probes, deadline_wall=act + 20, interval=a.poll_ms / 1000)
        row: dict[str, Any] = {"id": rid, "round": i, "warmup": i < 0, "activation": act}
        ok = all("rules" in s for s in seen)
        for host, s in zip(("h1", "h2"), seen, strict=True):
            row[f"{host}_class"] = s.get("class")
            row[f"{host}_rules"] = s.get("rules")
        row["both"] = max(s["rules"] for s in seen) if ok else None
        # the reports (instance active) close the round's breakdown; bounded wait
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with tracker.lock:
                if all((rid, h, "active") in tracker.inst for h in ("h1", "h2")):
                    break
            time.sleep(0.01)
        w.admin.cancel_reservation(rid)
        assert wait_empty(probes), f"reservation {rid}: classes still present after the cancel"
        rows.append(row)
        # baseline: the shaper's start in this process, same parameters, while the agents are idle
        h1.wait(ready)
        h2.wait(ready)
        took = [0.0, 0.0]
        legs = baseline_legs(w.lan, 2 + (i % 100))
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate which host goes first
            t0 = time.perf_counter()
            rc = shaper.start(legs[k], Ctx())
            took[k] = time.perf_counter() - t0
            assert rc == 0, rc
            assert shaper.stop(legs[k], Ctx()) == 0
            if i >= 0:
                base[k].append(took[k])
        label = "warm-up" if i < 0 else f"round {i + 1}/{a.runs}"
        if not ok:
            print(f"  {label}: NOT configured within 20 s: {seen}", flush=True)
        else:
            print(f"  {label}: activation -> both configured {ms(row['both'] - act):.1f} ms "
                  f"(h1 {ms(row['h1_rules'] - act):.1f}, h2 {ms(row['h2_rules'] - act):.1f}); "
                  f"baseline start h1 {ms(took[0]):.1f} ms, h2 {ms(took[1]):.1f} ms", flush=True)
    with tracker.lock:
        for row in rows:
            rid = row["id"]
            ev = tracker.res_active.get(rid)
            row["server_event"] = ev[0] if ev else None
            row["server_event_received"] = ev[1] if ev else None
            for host in ("h1", "h2"):
                row[f"{host}_dispatched"] = tracker.inst.get((rid, host, "provisioning"))
                row[f"{host}_dispatch_received"] = tracker.inst_received.get((rid, host, "provisioning"))
                row[f"{host}_reported"] = tracker.inst.get((rid, host, "active"))
                for what in ("accepted", "started", "finished"):
                    row[f"{host}_{what}"] = tracker.ops.get((rid, host, what))
    return {"rows": rows, "baseline_h1_s": base[0], "baseline_h2_s": base[1]}


def summarize_activation(res: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in res["rows"] if not r["warmup"]]

    def span(a: str, b: str, host: str | None = None) -> list[float]:
        out = []
        for r in rows:
            x, y = r.get(a.format(h=host)), r.get(b.format(h=host))
            if x is not None and y is not None:
                out.append(y - x)
        return out

    stats: dict[str, Any] = {}

    def put(name: str, xs: list[float]) -> None:
        stats[name] = {"n": len(xs), "p50_ms": ms(median(xs)), "p99_ms": ms(pct(xs, 0.99)),
                       "min_ms": ms(min(xs)) if xs else float("nan"), "max_ms": ms(max(xs)) if xs else float("nan")}

    put("activation -> both configured", span("activation", "both"))
    put("activation -> h1 configured", span("activation", "h1_rules"))
    put("activation -> h2 configured", span("activation", "h2_rules"))
    put("activation -> server event (state active)", span("activation", "server_event"))
    put("server event -> received by this watch", span("server_event", "server_event_received"))
    for h in ("h1", "h2"):
        put(f"server event -> {h} instance dispatched", span("server_event", "{h}_dispatched", h))
        put(f"{h}: dispatched -> its event received by a watcher here", span("{h}_dispatched",
                                                                            "{h}_dispatch_received", h))
        put(f"{h}: dispatched -> agent accepted the start", span("{h}_dispatched", "{h}_accepted", h))
        put(f"{h}: accepted -> start began", span("{h}_accepted", "{h}_started", h))
        put(f"{h}: start ran (driver)", span("{h}_started", "{h}_finished", h))
        put(f"{h}: start began -> rules seen on the wire", span("{h}_started", "{h}_rules", h))
        put(f"{h}: start finished -> reported active (server event)", span("{h}_finished", "{h}_reported", h))
    put("baseline: Shaper.start in-process, h1 leg", res["baseline_h1_s"])
    put("baseline: Shaper.start in-process, h2 leg", res["baseline_h2_s"])
    return stats


# ============================================================ 2. restart convergence


def make_instances(w: World, have: int, n: int, probe: NetnsTc) -> dict[str, Any]:
    """Up to ``n`` oneway reservations h1 -> h2 (1M, for hours; ``have`` exist): one shaper each on h1, all in place."""
    t0 = time.monotonic()
    start = time.time()
    end = now_iso(start + 6 * 3600)
    url, token = w.admin.base_url, (w.tmp / "server" / "admin.token").read_text().strip()
    local = threading.local()
    clients: list[TenureClient] = []

    def one(i: int) -> str:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = TenureClient(url, token, timeout=60)
            clients.append(c)
        return c.reserve(kind="oneway", src="h1", dst="h2", rate="1M", end=end,
                         request_id=f"bench-many-{os.getpid()}-{i}", labels={"bench": "restart"})["id"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = list(pool.map(one, range(have, n)))
    for c in clients:
        c.close()
    made = time.monotonic() - t0
    print(f"  {len(ids)} more reservations admitted in {made:.1f} s; waiting for {n} shapers on h1", flush=True)
    limit = max(600.0, n * 2.0)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if len(probe.classes()) >= n and probe.rules() >= n:
            break
        time.sleep(0.5)
    on_wire = time.monotonic() - t0
    h1 = w.agents["h1"]
    _, body = h1.wait(lambda s: ready(s) and s.get("instances") == n, timeout=limit)
    while (active := count_instances(w.admin, "h1", "active")) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    return {"added": len(ids), "admitted_s": made, "on_wire_s": on_wire, "ready_s": time.monotonic() - t0,
            "active_on_server": active, "classes_on_wire": len(probe.classes()), "sync": body.get("sync")}


def monitor_cost(w: World, probe: NetnsTc, samples: int = 5) -> float:
    """Median seconds of one ``Shaper.monitor`` in this process on a leg of h1, with everything h1 holds in place."""
    h1, h2 = w.lan[0], w.lan[1]
    classid = min(probe.classes()) & 0xFFFF
    params = {"device": h1.ifname, "rate": "1000000", "classid": str(classid), "dst": h2.address, "src": h1.address,
              "netns": h1.netns, "capacity": CAPACITY, "borrow": "no",
             "mark": "46"}
    shaper = Shaper()
    took = []
    for _ in range(samples):
        t0 = time.perf_counter()
        shaper.monitor(params, Ctx())  # the answer does not matter here (the agent's own params may differ)
        took.append(time.perf_counter() - t0)
    return median(took)


def count_instances(c: TenureClient, host: str, state: str) -> int:
    n, after = 0, None
    while True:
        page = c.instances(host=host, state=state, after=after, limit=10_000)
        n += len(page["instances"])
        after = page.get("next")
        if after is None:
            return n


def restart_round(w: World, lan_host: Host, probe: NetnsTc, n: int) -> dict[str, Any]:
    h1 = w.agents["h1"]
    lo = ifindex(lan_host, "lo")
    before = tc_listing(lan_host)
    monitor = TcMonitor(lan_host)
    nft_monitor = TcMonitor(lan_host, nftables=True)
    try:
        mark = sentinel(lan_host, monitor, lo)  # the subscription is live
        nft_mark = nft_sentinel(lan_host, nft_monitor)[1]
        assert h1.proc is not None
        old_cpu = cpu_seconds(h1.proc.pid)
        h1.proc.kill(signal.SIGKILL)
        w.procs.remove(h1.proc)
        t_kill = time.time()
        spawned = time.monotonic()
        proc = h1.spawn()
        w.procs.append(proc)
        t_ready, _ = h1.wait(lambda s: True, timeout=300, interval=0.025)  # /healthz answers: restored, loop started
        t_conv, body = h1.wait(ready, timeout=600, interval=0.025)
        cpu = cpu_seconds(proc.pid)
        end = sentinel(lan_host, monitor, lo)  # every change before this point was read
        nft_end = nft_sentinel(lan_host, nft_monitor)[0]
        changes = [m for m in monitor.messages[mark:end] if m[2] != lo] + nft_monitor.messages[nft_mark:nft_end]
        lost = list(monitor.errors) + list(nft_monitor.errors)
    finally:
        monitor.close()
        nft_monitor.close()
    after = tc_listing(lan_host)
    if before != after:  # kept for a look: what differs
        (w.tmp / f"listing-before-{h1.starts}.txt").write_text(before)
        (w.tmp / f"listing-after-{h1.starts}.txt").write_text(after)
        diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
        print("  listing differs:\n    " + "\n    ".join(diff[:20]), flush=True)
    sync = body.get("sync") or {}
    return {"converged_s": t_conv - spawned, "healthz_ok_s": t_ready - spawned, "agent_cpu_s": cpu,
            "cpu_before_kill_s": old_cpu, "dataplane_changes": len(changes),
            "change_kinds": sorted({m[1] for m in changes}), "netlink_errors": lost,
            "listing_identical": before == after, "listing_lines": before.count("\n") + 1,
            "classes_after": len(probe.classes()), "instances": sync.get("instances"),
            "operations": sync.get("operations"), "passes": sync.get("passes"), "reports": sync.get("reports"),
            "killed_at": t_kill, "sync": sync}


def baseline_round(w: World, netns: str, k: int) -> dict[str, Any]:
    a = add_agent(w, "h0", netns, data_dir=w.tmp / f"h0-empty-{k}")
    spawned = time.monotonic()
    proc = a.spawn()
    w.procs.append(proc)
    try:
        t_ok, _ = a.wait(lambda s: True, timeout=120)
        t_conv, body = a.wait(ready, timeout=120)
        cpu = cpu_seconds(proc.pid)
    finally:
        proc.kill(signal.SIGKILL)
        w.procs.remove(proc)
    sync = body.get("sync") or {}
    return {"converged_s": t_conv - spawned, "healthz_ok_s": t_ok - spawned, "agent_cpu_s": cpu,
            "instances": sync.get("instances"), "operations": sync.get("operations")}


# ============================================================ main


def driver_scaling(w: World, sizes: list[int]) -> list[dict[str, Any]]:
    """``Shaper.monitor`` in this process on a dummy device in h2's namespace holding N shaper-like classes (made with
    ``tc -batch``) and their nftables rules (one ``nft -j -f``), as the Shaper lays them out: the driver's cost per
    probe as N grows."""
    h1, h2 = w.lan[0], w.lan[1]
    dev = "bdum0"
    h2.run("ip", "link", "add", dev, "type", "veth", "peer", "name", "bdum1")  # (no dummy module here)
    try:
        h2.run("ip", "link", "set", "bdum1", "up")
        h2.run("ip", "link", "set", dev, "up")
        h2.run("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "fffe")  # the tree
        h2.run("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit", "ceil",
               "10gbit")
        h2.run("tc", "class", "add", "dev", dev, "parent", "1:1", "classid", "1:fffe", "htb", "rate", "1gbit", "ceil",
               "10gbit", "prio", "1")
        params = {"device": dev, "rate": "1000000", "classid": "2", "dst": h1.address, "src": h2.address,
                  "netns": h2.netns, "capacity": CAPACITY, "borrow": "no",
             "mark": "46"}
        shaper = Shaper()
        out = []
        have = 0
        for n in sorted(sizes):
            lines = []
            for c in range(2 + have, 2 + n):
                lines.append(f"class add dev {dev} parent 1:1 classid 1:{c:x} htb rate 1000000bit ceil 1000000bit "
                             f"burst 1600 cburst 1600 quantum 12500")
            h2.run("nft", "delete", "table", "inet", "tenure", check=False)  # made again, with all n
            commands = nft.bulk([parse_params({**params, "classid": str(c)}) for c in range(2, 2 + n)])
            batch = w.tmp / f"tc-batch-{n}.txt"
            batch.write_text("\n".join(lines) + "\n")
            h2.run("tc", "-batch", str(batch), timeout=300)
            done = subprocess.run(h2.argv("nft", "-j", "-f", "-"), input=json.dumps({"nftables": commands}),
                                  text=True, capture_output=True, timeout=300, check=False)
            assert done.returncode == 0, done.stderr
            have = n
            took, rcs = [], set()
            for _ in range(5):
                t0 = time.perf_counter()
                rc = shaper.monitor(params, Ctx())
                took.append(time.perf_counter() - t0)
                rcs.add(rc if isinstance(rc, int) else rc[0])
            out.append({"instances": n, "monitor_s": median(took), "rc": sorted(rcs)})
            print(f"  Shaper.monitor with {n} shapers on a device (in-process): {ms(median(took)):.1f} ms "
                  f"-> {n} restore probes need ~{median(took) * n:.0f} s", flush=True)
        return out
    finally:
        h2.run("ip", "link", "del", dev, check=False)
        h2.run("nft", "delete", "table", "inet", "tenure", check=False)  # (h2's agent holds no leg by then)


def idle_cpu(w: World, seconds: float) -> float:
    """Share of one core the h1 agent uses while nothing changes (its recurring monitors)."""
    proc = w.agents["h1"].proc
    assert proc is not None
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``y = b*n + c*n^2`` (y: restart minus baseline): (b, c)."""
    s2 = sum(n**2 for n, _ in points)
    s3 = sum(n**3 for n, _ in points)
    s4 = sum(n**4 for n, _ in points)
    t1 = sum(n * y for n, y in points)
    t2 = sum(n**2 * y for n, y in points)
    det = s2 * s4 - s3 * s3
    if not det:
        return float("nan"), float("nan")
    return (t1 * s4 - t2 * s3) / det, (s2 * t2 - s3 * t1) / det


def run_restarts(w: World, report: Report, probe: NetnsTc) -> None:
    args = w.args
    sizes = sorted({int(x) for x in str(args.instances).split(",") if x.strip()})
    lan = w.lan
    have = 0
    ladder: list[dict[str, Any]] = []
    for n in sizes:
        print(f"restart: {n} oneway reservations h1 -> h2 (one shaper each on h1)", flush=True)
        setup = make_instances(w, have, n, probe)
        have = n
        print(f"  all {n} in place after {setup['ready_s']:.1f} s (on the wire after {setup['on_wire_s']:.1f} s); "
              f"{setup['active_on_server']} active on the server", flush=True)
        mon = monitor_cost(w, probe)
        print(f"  Shaper.monitor in this process with {n} shapers on the device: {ms(mon):.1f} ms", flush=True)
        rounds: list[dict[str, Any]] = []
        base: list[dict[str, Any]] = []
        for k in range(args.restarts):
            r = restart_round(w, lan[0], probe, n)
            rounds.append(r)
            print(f"  restart {k + 1}/{args.restarts}: converged {r['converged_s']:.2f} s (healthz ok "
                  f"{r['healthz_ok_s']:.2f} s), agent CPU {r['agent_cpu_s']:.2f} s, dataplane changes "
                  f"{r['dataplane_changes']} {r['change_kinds']}, listing identical {r['listing_identical']}, "
                  f"operations {r['operations']}, instances {r['instances']}, passes {r['passes']}", flush=True)
            b = baseline_round(w, lan[0].netns, len(ladder) * args.restarts + k)
            base.append(b)
            print(f"  baseline {k + 1}/{args.restarts} (empty data dir, 0 instances): converged "
                  f"{b['converged_s']:.2f} s (healthz ok {b['healthz_ok_s']:.2f} s), CPU {b['agent_cpu_s']:.2f} s",
                  flush=True)
        conv = [r["converged_s"] for r in rounds]
        bconv = [b["converged_s"] for b in base]
        ladder.append({"instances": n, "setup": setup, "monitor_in_process_s": mon, "rounds": rounds,
                       "baseline": base, "converged_s": conv, "baseline_converged_s": bconv,
                       "converged_median_s": median(conv), "baseline_median_s": median(bconv),
                       "per_instance_ms": (median(conv) - median(bconv)) / n * 1000,
                       "dataplane_changes": sum(r["dataplane_changes"] for r in rounds),
                       "listings_identical": all(r["listing_identical"] for r in rounds),
                       "operations": [r["operations"] for r in rounds]})
    idle = float("nan")
    if args.idle > 0:
        idle = idle_cpu(w, args.idle)
        print(f"  h1 agent's CPU with {have} instances and nothing changing (recurring 60 s monitors), "
              f"{args.idle:g} s: {idle:.0%} of a core", flush=True)
    scaling = driver_scaling(w, sorted(set(sizes) | {1, 1000}))
    at1000 = next(x for x in scaling if x["instances"] == 1000)
    floor1000 = at1000["monitor_s"] * 1000
    base_all = median([x for s in ladder for x in s["baseline_converged_s"]])
    b, c = fit([(s["instances"], s["converged_median_s"] - base_all) for s in ladder])
    extrapolated = base_all + b * 1000 + c * 1000**2
    report.results.append({"mode": "restart", "sizes": ladder, "baseline_median_s": base_all,
                           "idle_agent_cpu_share": idle, "driver_scaling": scaling,
                           "fit_linear_s_per_instance": b, "fit_quadratic_s_per_instance2": c,
                           "extrapolated_1000_s": extrapolated,
                           "probes_1000_s": floor1000})
    benchkit.print_table(f"Restart with N unchanged instances ({args.restarts} restarts each)",
                         ["N", "converged (s)", "runs", "healthz ok (s)", "agent CPU (s)", "per instance",
                          "Shaper.monitor", "dataplane changes", "listing same", "sync.operations"],
                         [(s["instances"], fmt(s["converged_median_s"]),
                           " / ".join(fmt(x) for x in s["converged_s"]),
                           fmt(median([r["healthz_ok_s"] for r in s["rounds"]])),
                           fmt(median([r["agent_cpu_s"] for r in s["rounds"]])),
                           f"{fmt(s['per_instance_ms'])} ms", f"{fmt(ms(s['monitor_in_process_s']))} ms",
                           " / ".join(str(r["dataplane_changes"]) for r in s["rounds"]), s["listings_identical"],
                           " / ".join(str(x) for x in s["operations"])) for s in ladder]
                         + [("0 (baseline: empty data dir)", fmt(base_all),
                             " / ".join(fmt(x) for s in ladder for x in s["baseline_converged_s"]),
                             fmt(median([b["healthz_ok_s"] for s in ladder for b in s["baseline"]])),
                             fmt(median([b["agent_cpu_s"] for s in ladder for b in s["baseline"]])),
                             "", "", "", "", "")])
    top = ladder[-1]
    n = top["instances"]
    print(f"  the driver alone: 1,000 probes with 1,000 shapers on the device = 1,000 x "
          f"{ms(at1000['monitor_s']):.0f} ms = {floor1000:.0f} s of Shaper.monitor", flush=True)
    if n < 1000:
        print(f"  fit (restart - baseline) = {b * 1000:.3f} ms * N + {c * 1e6:.4f} us * N^2: 1,000 instances would "
              f"take about {extrapolated:.0f} s (extrapolated, not measured)", flush=True)
        name = f"restart to synced + converged, {n} unchanged instances (1,000 not measured)"
        detail = (f"baseline (empty data dir) {fmt(base_all)} s; 1,000 extrapolated ~{extrapolated:.0f} s "
                  f"(fit a*N + b*N^2 over N={','.join(str(s['instances']) for s in ladder)}); the 1,000 probes "
                  f"alone: {floor1000:.0f} s of Shaper.monitor")
    else:
        name = f"restart to synced + converged, {n} unchanged instances"
        detail = f"baseline (empty data dir) {fmt(base_all)} s; {fmt(top['per_instance_ms'])} ms per instance"
    report.goals.append(Goal(name, top["converged_median_s"], 5.0, "s", higher_is_better=False, detail=detail))
    report.goals.append(Goal("dataplane changes during the restarts (TC messages on the device, nftables messages)",
                             float(sum(s["dataplane_changes"] for s in ladder)), 0.0, "messages",
                             higher_is_better=False,
                             detail="listings identical" if all(s["listings_identical"] for s in ladder)
                             else "LISTINGS DIFFER"))
    report.goals.append(Goal("sync.operations after each restart",
                             float(max(x or 0 for s in ladder for x in s["operations"])), 0.0, "operations",
                             higher_is_better=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40, help="activation rounds (reservations, one after another)")
    ap.add_argument("--warmup", type=int, default=1, help="activation rounds first, reported apart")
    ap.add_argument("--lead", type=float, default=1.5, help="seconds from making a reservation to its start")
    ap.add_argument("--poll-ms", type=float, default=0.5, help="pause between netlink polls of both namespaces")
    ap.add_argument("--instances", default="50,100,200",
                    help="shapers held by h1 for the restart part: a count, or counts (a ladder, e.g. 50,100,200)")
    ap.add_argument("--restarts", type=int, default=3, help="restarts (and baseline starts) per count")
    ap.add_argument("--idle", type=float, default=60.0,
                    help="seconds to measure the h1 agent's CPU with the most instances and nothing changing "
                         "(its recurring monitors run every 60 s: at least 60; 0: skip)")
    ap.add_argument("--quick", action="store_true",
                    help="10 activation rounds; 50 and 100 instances, 2 restarts, no idle measurement")
    ap.add_argument("--no-activation", dest="activation", action="store_false")
    ap.add_argument("--no-restart", dest="restart", action="store_false")
    ap.add_argument("--log-level", default="info", help="of the server and agents (as shipped: info)")
    ap.add_argument("--dir", default=None, help="work directory (default: a new temporary one, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores)")
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    args = ap.parse_args()
    if args.quick:
        args.runs, args.instances, args.restarts = min(args.runs, 10), "50,100", min(args.restarts, 2)
        args.idle = 0.0
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        sys.exit("bench provisioning needs root, ip and tc (network namespaces)")

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tenure-bench-prov-"))
    tmp.mkdir(parents=True, exist_ok=True)
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    report = Report("provisioning", benchkit.machine(tmp, quiet_wait=args.quiet_wait), vars(args))
    report.machine["loadavg_before"] = loadavg
    benchkit.print_machine(report.machine)
    print(f"work dir {tmp}; loadavg before: {loadavg}", flush=True)
    started = time.monotonic()

    tracker = Tracker()
    probes: list[NetnsTc] = []
    world: World | None = None
    lan = Lan(2, subnet="10.78.0.0/24")
    try:
        lan.__enter__()
        server, admin = start_server(tmp, args.log_level)
        world = World(args=args, tmp=tmp, lan=lan, server=server, admin=admin)
        world.procs.append(server)
        admin.put_topology(topology(lan))
        for i, host in enumerate(("h1", "h2")):
            a = world.agents[host] = add_agent(world, host, lan[i].netns)
            world.procs.append(a.spawn())
        for a in world.agents.values():
            a.wait(ready)
        probes = [NetnsTc(lan[0]), NetnsTc(lan[1])]

        if args.activation:
            tracker.watch_server(TenureClient(admin.base_url, (tmp / "server" / "admin.token").read_text().strip(),
                                              timeout=30))
            for host, a in world.agents.items():
                tracker.watch_agent(host, a.client())
            print(f"activation -> dataplane: {args.warmup} + {args.runs} reservations, start {args.lead:g} s after "
                  f"each is made", flush=True)
            act = activation(world, probes, tracker)
            tracker.stop()  # no watches of ours while h1 restarts
            stats = summarize_activation(act)
            warm = [r for r in act["rows"] if r["warmup"] and r.get("both")]
            report.results.append({"mode": "activation", "stats": stats, "rounds": act["rows"],
                                   "baseline_h1_s": act["baseline_h1_s"], "baseline_h2_s": act["baseline_h2_s"],
                                   "warmup_ms": [ms(r["both"] - r["activation"]) for r in warm],
                                   "watch_errors": list(tracker.errors)})
            benchkit.print_table(f"Activation to dataplane (ms; {args.runs} rounds, p99 of {args.runs} is about "
                                 f"the max)", ["span", "n", "p50", "p99", "min", "max"],
                                 [(k, v["n"], fmt(v["p50_ms"]), fmt(v["p99_ms"]), fmt(v["min_ms"]), fmt(v["max_ms"]))
                                  for k, v in stats.items()])
            if warm:
                print(f"  warm-up (the agents' first shapers since they started; not above): "
                      f"{', '.join(f'{x:.0f} ms' for x in report.results[-1]['warmup_ms'])}", flush=True)
            both = stats["activation -> both configured"]
            floor = max(stats["baseline: Shaper.start in-process, h1 leg"]["p50_ms"],
                        stats["baseline: Shaper.start in-process, h2 leg"]["p50_ms"])
            report.goals.append(Goal("activation -> both hosts' shapers on the wire, median", both["p50_ms"], 200.0,
                                     "ms", higher_is_better=False,
                                     detail=f"p99 {fmt(both['p99_ms'])} ms, n={both['n']}; floor (Shaper.start "
                                            f"in-process, slower leg) {fmt(floor)} ms"))

        if args.restart:
            run_restarts(world, report, probes[0])
    finally:
        tracker.stop()
        for p in probes:
            with contextlib.suppress(OSError):
                p.close()
        if world is not None:
            for proc in reversed(world.procs):
                with contextlib.suppress(Exception):
                    proc.kill(signal.SIGKILL)
            with contextlib.suppress(Exception):
                world.admin.close()
            with contextlib.suppress(OSError):
                benchkit.RESULTS.mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp / "server" / "server.log", benchkit.RESULTS / "provisioning-server-last.log")
        lan.close()
        if not args.keep and args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    report.machine["loadavg_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    report.machine["duration_s"] = round(time.monotonic() - started, 1)
    benchkit.finish(report)


if __name__ == "__main__":
    main()
