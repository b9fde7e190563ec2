"""Throwaway hosts as network namespaces on one switch, and iperf3 between them.

``Lan(n)`` builds ``n`` hosts, each a network namespace with one interface,
joined by veth pairs to a Linux bridge that lives in a namespace of its own (the
"switch"), so nothing is created in the root namespace::

    h1 [t<sfx>h1] ----- [t<sfx>s1] \
                                    br (namespace tn-<sfx>-sw)
    h2 [t<sfx>h2] ----- [t<sfx>s2] /

Every name carries a random suffix, so concurrent tests (or a run that crashed
before cleaning up) never collide; interface names stay under the kernel's 15
characters. Each veth pair is created with its two ends directly in their
namespaces (``ip link add ... netns A type veth peer ... netns B``). Closing the
``Lan`` (it is a context manager; a failed build closes what it made) kills what
still runs in its namespaces and deletes them, which takes the veths and the
bridge with them.

``iperf3(src, dst)`` runs a one-off server in ``dst``'s namespace, waits until
it listens (by polling the server's own ``/proc/PID/net/tcp``, so without a
blind sleep), runs the client in ``src``'s namespace and returns the bit rate
the receiver measured.

Both need root and ``ip netns``: tests call :func:`require_netns` (and
:func:`require_iperf3`), which skip with the reason otherwise. CI runs as root
and fails on any skip, so a skip there is a failure, as intended.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

IP = "ip"
NETNS_DIR = Path("/var/run/netns")
READY_TIMEOUT = 10.0  # seconds for links to come up, or for an iperf3 server to listen
CREATED: set[str] = set()  # every namespace made by this process (tests check none is left)


def require_netns() -> None:
    """Skip the calling test unless we are root and ``ip netns`` works."""
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root")
    if shutil.which(IP) is None:
        pytest.skip("network namespace tests need the ip command (iproute2)")
    probe = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"ip netns is unavailable: {probe.stderr.strip()}")


def require_iperf3() -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is not installed")


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command (argv, no shell); with ``check``, a failure raises with its stderr."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {proc.stderr.strip()}")
    return proc


def netns_names() -> set[str]:
    """The namespaces ``ip netns list`` shows now."""
    out = run([IP, "-j", "netns", "list"]).stdout.strip()
    return {entry["name"] for entry in json.loads(out)} if out else set()


@dataclass(frozen=True)
class Host:
    """One host: a namespace with one interface on the switch."""

    name: str  # h1, h2, ...
    netns: str
    ifname: str
    address: str  # 10.77.0.1
    prefix: int  # 24
    address6: str | None = None  # fd77::1 (prefix 64) on a dual-stack Lan

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return [IP, "netns", "exec", self.netns, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*argv), check=check, timeout=timeout)

    def nft_rules(self, table: str = "tenure", family: str = "inet") -> list[dict]:
        """The rules of an nftables table (``nft -j list table``), each as nft lists it; [] if there is none."""
        proc = self.run("nft", "-j", "list", "table", family, table, check=False)
        if proc.returncode != 0:
            assert "No such file or directory" in proc.stderr, proc.stderr
            return []
        return [item["rule"] for item in json.loads(proc.stdout)["nftables"] if "rule" in item]

    def nft(self, script: str) -> None:
        """Run an nft script (``nft -f -``) in this host's namespace."""
        proc = subprocess.run(self.argv("nft", "-f", "-"), input=script, text=True, capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr

    def tc_json(self, *what: str) -> list[dict]:
        """``tc -j [OPTS] OBJ show dev IF`` parsed, e.g. ``tc_json("qdisc")``, ``tc_json("-s", "filter")``.

        (A u32 filter repeats its "match" key; every "match" becomes a list.)
        """
        *opts, obj = what
        out = self.run("tc", *opts, "-j", obj, "show", "dev", self.ifname).stdout.strip()
        return json.loads(out, object_pairs_hook=_with_match_lists) if out else []

    def tc_classes(self) -> dict[str, dict]:
        """``tc -s class show dev IF`` by classid ("1:5"), parsed from text (tc has no JSON for HTB classes).

        Each: kind, parent ("root" or a classid), prio (leaf classes), rate and ceil (bit/s), burst and
        cburst (bytes), sent_bytes, sent_packets.
        """
        out = self.run("tc", "-s", "class", "show", "dev", self.ifname).stdout
        classes: dict[str, dict] = {}
        current: dict | None = None
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ["class"]:
                current = {"kind": words[1], "classid": words[2], "parent": _after(words, "parent") or "root"}
                if "prio" in words[:-1]:  # leaf classes only
                    current["prio"] = int(_after(words, "prio") or 0)
                for key in ("rate", "ceil"):
                    if key in words:
                        current[key] = _tc_number(_after(words, key), _RATE_UNITS)
                for key in ("burst", "cburst"):
                    if key in words:
                        current[key] = _tc_number(_after(words, key), _SIZE_UNITS)
                classes[current["classid"]] = current
            elif words[:1] == ["Sent"] and current is not None:
                current["sent_bytes"], current["sent_packets"] = int(words[1]), int(words[3])
        return classes


_RATE_UNITS = {"bit": 1, "Kbit": 10**3, "Mbit": 10**6, "Gbit": 10**9, "Tbit": 10**12}
_SIZE_UNITS = {"b": 1, "Kb": 1024, "Mb": 1024**2, "Gb": 1024**3}


def _after(words: list[str], key: str) -> str | None:
    return words[words.index(key) + 1] if key in words[:-1] else None


def _tc_number(text: str | None, units: dict[str, int]) -> int:
    """``50Mbit`` -> 50000000, ``62500b`` -> 62500, as tc prints them."""
    assert text is not None
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[:-len(unit)].replace(".", "", 1).isdigit():
            return round(float(text[:-len(unit)]) * units[unit])
    raise ValueError(f"cannot read {text!r} as tc prints numbers")


def _with_match_lists(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key == "match":
            out.setdefault("match", []).append(value)
        else:
            out[key] = value
    return out


@dataclass
class Lan:
    """``n`` hosts on a bridge; see the module docstring."""

    n: int = 2
    subnet: str = "10.77.0.0/24"
    ipv6: bool = False  # dual stack: each host also gets fd77::<i>/64 (without duplicate address detection)
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[Host] = field(default_factory=list, init=False)
    switch: str = field(default="", init=False)  # the bridge's namespace
    bridge: str = field(default="", init=False)
    _namespaces: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        net = ipaddress.IPv4Network(self.subnet)
        if not 1 <= self.n <= min(99, net.num_addresses - 2):
            raise ValueError(f"a Lan on {self.subnet} holds 1 to {min(99, net.num_addresses - 2)} hosts")
        self.switch = f"tn-{self.suffix}-sw"
        self.bridge = f"t{self.suffix}br"

    def __enter__(self) -> Lan:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def _add_netns(self, name: str) -> None:
        run([IP, "netns", "add", name])
        self._namespaces.append(name)
        CREATED.add(name)
        run([IP, "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        net = ipaddress.IPv4Network(self.subnet)
        self._add_netns(self.switch)
        run([IP, "-n", self.switch, "link", "add", self.bridge, "type", "bridge", "stp_state", "0"])
        run([IP, "-n", self.switch, "link", "set", self.bridge, "up"])
        ports = []
        for i in range(1, self.n + 1):
            host = Host(name=f"h{i}", netns=f"tn-{self.suffix}-h{i}", ifname=f"t{self.suffix}h{i}",
                        address=str(net.network_address + i), prefix=net.prefixlen,
                        address6=f"fd77::{i:x}" if self.ipv6 else None)
            port = f"t{self.suffix}s{i}"
            self._add_netns(host.netns)
            run([IP, "link", "add", host.ifname, "netns", host.netns, "type", "veth",
                 "peer", "name", port, "netns", self.switch])
            run([IP, "-n", self.switch, "link", "set", port, "master", self.bridge])
            run([IP, "-n", self.switch, "link", "set", port, "up"])
            run([IP, "-n", host.netns, "addr", "add", host.cidr, "dev", host.ifname])
            if host.address6 is not None:
                run([IP, "-n", host.netns, "addr", "add", f"{host.address6}/64", "dev", host.ifname, "nodad"])
            run([IP, "-n", host.netns, "link", "set", host.ifname, "up"])
            self.hosts.append(host)
            ports.append(port)
        self._wait_up([(h.netns, h.ifname) for h in self.hosts] + [(self.switch, p) for p in ports])

    def _wait_up(self, links: list[tuple[str, str]]) -> None:
        """Poll (bounded) until every link reports operstate UP."""
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(links)
        while pending:
            netns, ifname = pending[0]
            out = run([IP, "-n", netns, "-j", "link", "show", "dev", ifname]).stdout
            if json.loads(out)[0].get("operstate") == "UP":
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ifname} in {netns} did not come up within {READY_TIMEOUT:g}s")
            time.sleep(0.01)

    def close(self) -> None:
        """Kill what still runs in our namespaces and delete them (the veths and the bridge go with them)."""
        errors = []
        for name in reversed(self._namespaces):
            pids = run([IP, "netns", "pids", name], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            proc = run([IP, "netns", "del", name], check=False)
            if proc.returncode != 0 and (NETNS_DIR / name).exists():
                errors.append(f"{name}: {proc.stderr.strip()}")
        self._namespaces.clear()
        if errors:
            raise RuntimeError("could not delete namespaces: " + "; ".join(errors))


def _listening(pid: int, port: int) -> bool:
    """Whether process ``pid``'s namespace has a TCP socket listening on ``port`` (any address)."""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A = LISTEN
                return True
    return False


def iperf3(src: Host, dst: Host, *, seconds: float = 3.0, port: int = 5201, udp: bool = False,
           bitrate: str | None = None, cport: int | None = None, address: str | None = None,
           tos: int | None = None, length: int | None = None) -> float:
    """Bits per second received by ``dst`` from a ``seconds``-long iperf3 test from ``src``.

    ``address`` is where the client connects (``dst.address`` by default); ``cport``
    pins the client's data port; ``udp`` with ``bitrate`` (e.g. "200M") sends UDP; ``tos`` sets the client's
    packets' TOS byte (DSCP << 2); ``length`` the size of each write (a UDP datagram's payload).
    The one-off server (``-s -1``) is always killed and reaped.
    """
    server = subprocess.Popen(dst.argv("iperf3", "-s", "-1", "--json", "-p", str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # `ip netns exec` execs iperf3, so server.pid is the server itself and its /proc/PID/net
        # shows the destination namespace.
        deadline = time.monotonic() + READY_TIMEOUT
        while not _listening(server.pid, port):
            if server.poll() is not None:
                raise RuntimeError(f"iperf3 server exited with {server.returncode}: {server.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server in {dst.netns} did not listen on {port} within {READY_TIMEOUT:g}s")
            time.sleep(0.005)
        argv = ["iperf3", "-c", address or dst.address, "-p", str(port), "-t", f"{seconds:g}", "--json"]
        if udp:
            argv += ["-u", "-b", bitrate or "1G"]
        elif bitrate:
            argv += ["-b", bitrate]
        if cport is not None:
            argv += ["--cport", str(cport)]
        if tos is not None:
            argv += ["--tos", str(tos)]
        if length is not None:
            argv += ["-l", str(length)]
        client = src.run(*argv, check=False, timeout=seconds + 30)
        report = json.loads(client.stdout or "{}")
        if client.returncode != 0 or "error" in report:
            raise RuntimeError(f"iperf3 client failed ({client.returncode}): {report.get('error') or client.stderr}")
        out, _ = server.communicate(timeout=30)
        received = json.loads(out or "{}").get("end", {})
        summary = received.get("sum_received") or received.get("sum")
        if not summary:  # the server's report is the receiver's truth; the client relays it as well
            summary = report["end"].get("sum_received") or report["end"]["sum"]
        return float(summary["bits_per_second"])
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=30)
        for pipe in (server.stdout, server.stderr):
            if pipe is not None:
                pipe.close()


def count_dscp(host: Host, src: Host) -> None:
    """Count, in ``host``'s input, the TCP packets from ``src`` to ports 5201 and 5202 by DSCP (EF, CS0, other),
    both address families alike: an nftables table ``inet count`` whose rules :func:`dscp_counts` reads."""
    rules = []
    for family, address in (("ip", src.address), ("ip6", src.address6)):
        if address is None:
            continue
        for port in (5201, 5202):
            rules += [f'{family} saddr {address} tcp dport {port} {family} dscp ef counter comment "ef {port}"',
                      f'{family} saddr {address} tcp dport {port} {family} dscp cs0 counter comment "cs0 {port}"',
                      f'{family} saddr {address} tcp dport {port} {family} dscp != {{ ef, cs0 }} counter '
                      f'comment "other {port}"']
    host.nft("table inet count {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    "
             + "\n    ".join(rules) + "\n  }\n}\n")


def dscp_counts(host: Host) -> dict[str, int]:
    """Packets :func:`count_dscp`'s rules saw, by their comment ("ef 5201", "cs0 5202", ...), both families summed."""
    out: dict[str, int] = {}
    for r in host.nft_rules("count"):
        packets = next(e["counter"]["packets"] for e in r["expr"] if "counter" in e)
        out[r["comment"]] = out.get(r["comment"], 0) + packets
    return out


def forwarded(host: Host, src: Host, dst: Host) -> None:
    """Count, in ``host``'s forward hook, the TCP packets from ``src`` to ``dst`` by destination port (5201, 5202):
    an nftables table ``inet count`` read by :func:`dscp_counts` (packets: as forwarded, after GRO) or by bytes."""
    host.nft("table inet count {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
             + "".join(f'    ip saddr {src.address} ip daddr {dst.address} tcp dport {port} counter comment '
                       f'"fwd {port}"\n' for port in (5201, 5202)) + "  }\n}\n")


def routing(host: Host) -> tuple[str, ...]:
    """The host's ip rules and every routing table's routes, both families, as ``ip`` prints them (less the IPv6
    link-local addresses, which come when the kernel gets round to them)."""
    v6 = "".join(line for line in host.run("ip", "-6", "route", "show", "table", "all").stdout.splitlines(True)
                 if "fe80:" not in line)
    return host.run("ip", "rule").stdout, host.run("ip", "-6", "rule").stdout, host.run(
        "ip", "-4", "route", "show", "table", "all").stdout, v6


def count_udp(host: Host, port: int = 5201, device: str | None = None) -> None:
    """Count the UDP datagrams to ``port`` that ``host`` receives: in its input hook, or (``device``) as frames
    arriving on that device (a mirror's tunnel; the netdev family's ingress hook). Read by :func:`udp_count`."""
    name = f"udp{port}" + (device or "")
    hook = (f"type filter hook ingress device {device} priority 0;" if device
            else "type filter hook input priority 0;")
    family = "netdev" if device else "inet"
    host.nft(f"table {family} {name} {{\n  chain c {{\n    {hook} policy accept;\n    udp dport {port} counter\n"
             f"  }}\n}}\n")


def udp_count(host: Host, port: int = 5201, device: str | None = None) -> tuple[int, int]:
    """(packets, bytes) :func:`count_udp`'s rule counted."""
    rules = host.nft_rules(f"udp{port}" + (device or ""), "netdev" if device else "inet")
    counter = next(e["counter"] for r in rules for e in r["expr"] if "counter" in e)
    return counter["packets"], counter["bytes"]


RTMGRP_TC = 0x8  # the netlink multicast group of TC changes


class TcEvents:
    """TC notifications (RTMGRP_TC) in a namespace: whatever changes its qdiscs, classes or filters."""

    def __init__(self, netns: str) -> None:
        from tenure.drivers.tc.netlink import netlink_socket

        self.sock: socket.socket = netlink_socket(netns)
        self.sock.bind((0, RTMGRP_TC))

    def drain(self) -> int:
        """Messages received since the last drain."""
        count = 0
        while True:
            try:
                self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return count
            count += 1

    def close(self) -> None:
        self.sock.close()


def best_rate(measure: Callable[[], float], enough: float, tries: int = 3) -> float:
    """The best rate of up to ``tries`` runs of ``measure``, stopping at the first that reaches ``enough``.

    For a UDP flow's own rate on a busy 2-core machine, which can lose a few per cent of its datagrams to the
    load alone (seen in CI); a fault that holds the flow fails every try. What every try must satisfy is
    asserted inside ``measure``."""
    best = 0.0
    for _ in range(tries):
        best = max(best, measure())
        if best >= enough:
            break
    return best


def side_by_side(*runs: Callable[[], float]) -> list[float]:
    """Run iperf3 measurements side by side (threads); their results in order."""
    out: list[float | BaseException] = [0.0] * len(runs)

    def one(i: int) -> None:
        try:
            out[i] = runs[i]()
        except BaseException as exc:  # re-raised below, in the test's thread
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return [float(r) for r in out]  # type: ignore[arg-type]
