"""``python:tenure.drivers.tc:Shaper``: one bandwidth reservation leg as Linux traffic control, over netlink.

A leg reserved for a flow leaving this host becomes an HTB class that the
flow's packets are steered into. Everything is done through rtnetlink with
pyroute2 (no ``tc`` process). On the egress device the wire layout is::

    root qdisc   htb 1:  default 0        shared by every leg on the device
    class        1:<classid>  (parent 1:) rate = ceil = the leg's rate, one per leg
    filter       parent 1: protocol ip  pref 100 + (classid-1) // 4095
                 u32 node (classid-1) % 4095 + 1, matching the leg  ->  flowid 1:<classid>

- **Unclassified traffic is not shaped.** HTB sends packets that no filter
  claims, and that have no default class (``default 0``), straight from its
  direct queue at line rate, so a leg slows down only its own flow.
- **Ownership.** A root qdisc with handle 0 is the kernel's default (noqueue,
  pfifo_fast, mq, fq_codel) and is replaced; ``htb 1: default 0`` is taken to be
  ours. Anything else (another handle or kind, an HTB with a default class) was
  configured by someone else: start refuses (OCF_ERR_GENERIC with the reason)
  instead of destroying it, and stop and monitor treat the leg as absent. The
  root qdisc is deleted when the last class under it goes (the kernel puts its
  default back).
- **Filter handles.** Every classid has one fixed place among the filters:
  preference ``100 + (classid-1) // 4095`` and u32 node ``(classid-1) % 4095 + 1``
  in that preference's root hash table (a u32 node id has 12 bits, so 17
  preferences cover classids 2..65534; for classids up to 4095 the node is the
  classid: ``fh 800::5 ... flowid 1:5``). The hash table id (``800:``, ``801:``)
  is the kernel's choice, so a filter is found by (preference, node), never by
  its full handle. Filters are tried in classid order.
- **Match.** IPv4 only: dst (and src) prefix, protocol, ports. Ports are read at
  the fixed offsets of an IP header without options, like ``tc``'s ``match ip
  dport``, and only in packets with IHL 5 that are not later fragments: those
  few packets go unshaped rather than being misread.
- **Idempotent and minimal.** start reads the qdisc, class and filter first and
  writes only what differs: an unchanged leg sends nothing to the kernel (class
  statistics keep counting), a changed rate or burst is a change of the class in
  place (same handle, same counters), a changed flowid a replace of the node. A
  changed match is the one exception: the kernel's u32 ``change`` keeps the old
  keys, so the node is deleted and added again (the flow is unclassified, thus
  unshaped, for that instant). reload is start.
- **Why the classid is a parameter.** The agent takes it from its local
  allocator (a claim keyed by the instance), so the same instance gets the same
  classid after an agent restart, and the restart's start finds everything in
  place and changes nothing. The classid output is ``1:<classid in hex>``, as
  ``tc class show`` prints it.

Rates are bit/s of layer-2 bytes (HTB counts the Ethernet header): the class
rate is ``ceil(rate / 8)`` bytes/s, and the least rate is 64 bit/s (pyroute2
always sends HTB's rate table, whose 2 KiB entry must fit 32 bits of scheduler
ticks). The default burst (and cburst) is 10 ms at the rate, at least 1600
bytes; a given burst must fit HTB's buffer (2^32 ticks, about 274 s).

Handler methods run in threads, several at once; everything on one device runs
under that device's lock. Each call opens its own netlink socket and closes it.
A socket for another namespace (``netns``) is made by a short-lived thread that
enters the namespace (``setns`` moves only the calling thread) and leaves the
socket behind, already bound to it; pyroute2's ``NetNS`` would fork the agent,
a multi-threaded process, for every call.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg.common import calc_xmittime, tick_in_usec

from tenure.domain.units import format_rate

if TYPE_CHECKING:
    from tenure.drivers.pydriver import HandlerContext

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7

Result = int | tuple[int, str]

ROOT_HANDLE = 0x10000  # 1:
TC_H_ROOT = 0xFFFFFFFF
ETH_P_IP = 0x0800
FILTER_PRIO_BASE = 100
U32_NODES = 0xFFF  # node ids 1..4095 per u32 hash table
MIN_CLASSID, MAX_CLASSID = 2, 65534  # 1:1 is left for a parent class; 1:ffff is not a valid minor
MIN_RATE = 64  # bit/s: 8 bytes/s, the least whose HTB rate table (2 KiB at the rate) fits 32 bits of ticks
MAX_RATE = 10**12  # bit/s
MAX_TICKS = 0xFFFFFFFF
DEFAULT_BURST_SECONDS = 0.01
MIN_DEFAULT_BURST = 1600  # bytes: one frame and then some
NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
PARAMS = ("device", "rate", "classid", "dst", "src", "protocol", "dst_port", "src_port", "netns", "burst")
IDENTITY = ("device", "classid", "netns")  # what stop needs: where the leg is, not what it matches

_RATE = re.compile(r"([1-9][0-9]{0,12})([kKMG]?)")
_RATE_SCALE = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}
_NUMBER = re.compile(r"[1-9][0-9]{0,9}")
_IFNAME = re.compile(r"[^\s/:]{1,15}")
_NETNS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")

META_DATA = """<?xml version="1.0"?>
<resource-agent name="Shaper" version="1.0">
  <version>1.0</version>
  <longdesc lang="en">One bandwidth reservation leg on a host's egress: an HTB class 1:CLASSID at the rate under the
root qdisc htb 1: (default 0, so other traffic is not shaped) and a u32 filter steering the leg's IPv4 flow into
it. Idempotent: a start that finds everything in place changes nothing.</longdesc>
  <shortdesc lang="en">Egress bandwidth shaping with tc (HTB)</shortdesc>
  <parameters>
    <parameter name="device" unique="0" required="1">
      <longdesc lang="en">Egress network interface.</longdesc>
      <shortdesc lang="en">Egress device</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="rate" unique="0" required="1">
      <longdesc lang="en">Rate in bit/s (layer 2): an integer, or with a suffix K, M or G (10^3, 10^6, 10^9), as
50M. From 64 to 10^12.</longdesc>
      <shortdesc lang="en">Rate (bit/s)</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="classid" unique="1" required="1">
      <longdesc lang="en">HTB class minor number, 2 to 65534 (decimal), from the agent's local allocator; the class
is 1:CLASSID (printed in hex by tc).</longdesc>
      <shortdesc lang="en">HTB class minor</shortdesc>
      <content type="integer" />
    </parameter>
    <parameter name="dst" unique="0" required="1">
      <longdesc lang="en">Destination IPv4 address or network (CIDR, host bits zero).</longdesc>
      <shortdesc lang="en">Destination</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="src" unique="0" required="0">
      <longdesc lang="en">Source IPv4 address or network (CIDR, host bits zero).</longdesc>
      <shortdesc lang="en">Source</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="protocol" unique="0" required="0">
      <longdesc lang="en">tcp, udp, icmp or sctp; required with ports (tcp, udp or sctp).</longdesc>
      <shortdesc lang="en">IP protocol</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="dst_port" unique="0" required="0">
      <longdesc lang="en">Destination port, 1 to 65535.</longdesc>
      <shortdesc lang="en">Destination port</shortdesc>
      <content type="integer" />
    </parameter>
    <parameter name="src_port" unique="0" required="0">
      <longdesc lang="en">Source port, 1 to 65535.</longdesc>
      <shortdesc lang="en">Source port</shortdesc>
      <content type="integer" />
    </parameter>
    <parameter name="netns" unique="0" required="0">
      <longdesc lang="en">Name of a network namespace in /var/run/netns to work in; default: the agent's.</longdesc>
      <shortdesc lang="en">Network namespace</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="burst" unique="0" required="0">
      <longdesc lang="en">Burst and cburst in bytes (an integer); default 10 ms at the rate, at least 1600.</longdesc>
      <shortdesc lang="en">Burst (bytes)</shortdesc>
      <content type="integer" />
    </parameter>
  </parameters>
  <actions>
    <action name="start" timeout="20s" />
    <action name="stop" timeout="20s" />
    <action name="monitor" timeout="20s" interval="10s" />
    <action name="reload" timeout="20s" />
    <action name="meta-data" timeout="5s" />
  </actions>
</resource-agent>
"""


class Invalid(ValueError):
    """A parameter the shaper cannot take (OCF_ERR_CONFIGURED)."""


class Absent(Exception):
    """The namespace or the device is not there (now)."""


# --- parameters -----------------------------------------------------------------------------


def parse_rate(text: str) -> int:
    """Bit/s from ``"50000000"`` or ``"50M"`` (K/k, M, G: powers of 1000); 64 to 10^12."""
    m = _RATE.fullmatch(text)
    if m is None:
        raise Invalid(f"rate {text!r} is not a rate: use whole bit/s with an optional K, M or G suffix, as '50M'")
    bps = int(m.group(1)) * _RATE_SCALE[m.group(2)]
    if not MIN_RATE <= bps <= MAX_RATE:
        raise Invalid(f"rate {text!r} is out of range: HTB takes {MIN_RATE} to 10^12 bit/s")
    return bps


def _number(params: dict[str, str], name: str, lo: int, hi: int) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if _NUMBER.fullmatch(text) is None or not lo <= int(text) <= hi:
        raise Invalid(f"{name} {text!r} must be a decimal integer from {lo} to {hi}")
    return int(text)


def _network(params: dict[str, str], name: str) -> ipaddress.IPv4Network | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise Invalid(f"{name} {text!r} is not an IPv4 address or network: {exc}") from None


def _u32_ticks(rate_bytes: int, burst: int) -> int:
    """HTB's buffer for ``burst`` bytes at ``rate_bytes``/s, in scheduler ticks (pyroute2's arithmetic)."""
    return calc_xmittime(rate_bytes, burst)


@dataclass(frozen=True)
class Leg:
    """Validated parameters, and where they go on the wire."""

    device: str
    classid: int
    netns: str | None
    rate: int | None = None  # bit/s; None only for stop, which does not need it
    dst: ipaddress.IPv4Network | None = None
    src: ipaddress.IPv4Network | None = None
    protocol: str | None = None
    dst_port: int | None = None
    src_port: int | None = None
    burst: int | None = None  # bytes, None for the default

    @property
    def handle(self) -> int:
        return ROOT_HANDLE | self.classid

    @property
    def classid_text(self) -> str:
        return f"1:{self.classid:x}"

    @property
    def prio(self) -> int:
        return FILTER_PRIO_BASE + (self.classid - 1) // U32_NODES

    @property
    def node(self) -> int:
        return (self.classid - 1) % U32_NODES + 1

    @property
    def where(self) -> str:
        return f"{self.device}" + (f" in netns {self.netns}" if self.netns else "")

    @property
    def rate_bytes(self) -> int:
        assert self.rate is not None
        return -(-self.rate // 8)  # rounded up: the flow gets at least its reservation

    @property
    def burst_bytes(self) -> int:
        if self.burst is not None:
            return self.burst
        # Always within HTB's limit: 1600 bytes at the least rate (8 bytes/s) is 200 s, under ~274 s.
        return max(int(self.rate_bytes * DEFAULT_BURST_SECONDS), MIN_DEFAULT_BURST)

    @property
    def buffer_ticks(self) -> int:
        return _u32_ticks(self.rate_bytes, self.burst_bytes)

    def words(self) -> list[tuple[int, int, int]]:
        """The match as (value, mask, offset) 32-bit words of the IPv4 header (and the ports after it)."""
        words = []
        if self.ports:
            words.append((0x05000000, 0x0F000000, 0))  # IHL 5: the ports are at 20
            words.append((0x00000000, 0x00001FFF, 4))  # fragment offset 0: the ports are in this packet
        if self.protocol is not None:
            words.append((PROTOCOLS[self.protocol] << 16, 0x00FF0000, 8))
        for net, off in ((self.src, 12), (self.dst, 16)):
            if net is not None and net.prefixlen:
                words.append((int(net.network_address), int(net.netmask), off))
        if self.ports:
            value = ((self.src_port or 0) << 16) | (self.dst_port or 0)
            mask = (0xFFFF0000 if self.src_port else 0) | (0x0000FFFF if self.dst_port else 0)
            words.append((value, mask, 20))
        return words

    @property
    def ports(self) -> bool:
        return self.src_port is not None or self.dst_port is not None

    def keys(self) -> list[str]:
        """pyroute2's u32 key strings."""
        return [f"0x{v:08x}/0x{m:08x}+{off}" for v, m, off in self.words()]

    def match_bytes(self) -> dict[int, tuple[int, int]]:
        return _bytes_of(self.words())


def _bytes_of(words: list[tuple[int, int, int]]) -> dict[int, tuple[int, int]]:
    """{byte offset: (value, mask)} of the masked bytes: keys compared whatever their alignment."""
    out: dict[int, tuple[int, int]] = {}
    for value, mask, off in words:
        for i, (v, m) in enumerate(zip(value.to_bytes(4, "big"), mask.to_bytes(4, "big"), strict=True)):
            if m:
                out[off + i] = (v & m, m)
    return out


def parse_params(params: dict[str, str], *, identity_only: bool = False) -> Leg:
    """A :class:`Leg`, or :class:`Invalid` with the reason."""
    unknown = sorted(set(params) - set(PARAMS) - {"OCF_CHECK_LEVEL"})
    if unknown:
        raise Invalid(f"unknown parameter {unknown[0]!r}; the shaper takes {', '.join(PARAMS)}")
    for name, value in params.items():
        if not isinstance(value, str):
            raise Invalid(f"{name} must be a string, not {type(value).__name__}")
    for name in ("device", "classid") + (() if identity_only else ("rate", "dst")):
        if not params.get(name):
            raise Invalid(f"parameter {name!r} is required")
    device = params["device"]
    if _IFNAME.fullmatch(device) is None or device in (".", ".."):
        raise Invalid(f"device {device!r} is not an interface name (1-15 characters, no '/', ':' or spaces)")
    netns = params.get("netns")
    if netns is not None and (_NETNS_NAME.fullmatch(netns) is None or netns in (".", "..")):
        raise Invalid(f"netns {netns!r} is not a namespace name in {NETNS_DIR}")
    classid = _number(params, "classid", MIN_CLASSID, MAX_CLASSID)
    assert classid is not None
    if identity_only:
        return Leg(device=device, classid=classid, netns=netns)

    rate = parse_rate(params["rate"])
    protocol = params.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        raise Invalid(f"protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
    dst_port = _number(params, "dst_port", 1, 65535)
    src_port = _number(params, "src_port", 1, 65535)
    if (dst_port or src_port) and protocol not in PORT_PROTOCOLS:
        raise Invalid(f"ports need protocol {', '.join(PORT_PROTOCOLS)}, not {protocol or 'none'}")
    leg = Leg(device=device, classid=classid, netns=netns, rate=rate, dst=_network(params, "dst"),
              src=_network(params, "src"), protocol=protocol, dst_port=dst_port, src_port=src_port,
              burst=_number(params, "burst", 1, 2**32 - 1))
    if leg.burst is not None and leg.buffer_ticks > MAX_TICKS:
        raise Invalid(f"burst {leg.burst} bytes is more than HTB can hold at rate {format_rate(rate)}bit/s: "
                      f"its buffer is 2^32 scheduler ticks, about {MAX_TICKS / tick_in_usec / 1e6:.0f} s of sending")
    return leg


# --- the wire -------------------------------------------------------------------------------


def netlink_socket(netns: str) -> socket.socket:
    """An rtnetlink socket in namespace ``netns`` (in /var/run/netns), made by a thread that enters it and ends."""
    result: list[Any] = []

    def work() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns into {netns}: {os.strerror(code)}")
            finally:
                os.close(fd)
            result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    t = threading.Thread(target=work, name=f"tenure-tc-setns-{netns}", daemon=True)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    sock: socket.socket = result[0]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


@contextmanager
def _iproute(netns: str | None) -> Iterator[IPRoute]:
    """An IPRoute in ``netns`` (None: ours), closed on exit; :class:`Absent` if the namespace is not there."""
    if netns is None:
        ipr = IPRoute()
    else:
        if not os.path.exists(os.path.join(NETNS_DIR, netns)):
            raise Absent(f"network namespace {netns} does not exist")
        try:
            sock = netlink_socket(netns)
        except FileNotFoundError:
            raise Absent(f"network namespace {netns} does not exist") from None
        try:
            ipr = IPRoute(use_socket=sock)
        except BaseException:
            sock.close()
            raise
    try:
        yield ipr
    finally:
        ipr.close()


def _u32_words(msg: Any) -> list[tuple[int, int, int]] | None:
    """A u32 node's keys as (value, mask, offset), read from the raw attribute; None if it is not a plain node.

    (pyroute2 0.9.7's ``u32_sel.decode`` reads the keys 4 bytes too early, so its
    decoded keys are wrong; the raw bytes are struct tc_u32_sel: a 4-byte
    attribute header, 16 bytes of selector, then 16 bytes per key: mask and value
    big-endian, offset and offmask in host order.)
    """
    sel = msg.get_attr("TCA_OPTIONS").get_attr("TCA_U32_SEL")
    raw = bytes(sel.data[sel.offset:sel.offset + sel.length])
    if len(raw) < 20:
        return None
    flags, _offshift, nkeys = raw[4], raw[5], raw[6]
    if flags != 1 or len(raw) < 20 + 16 * nkeys:  # 1 = TC_U32_TERMINAL, nothing variable
        return None
    words = []
    for i in range(nkeys):
        mask, value = struct.unpack_from(">II", raw, 20 + 16 * i)
        off, offmask = struct.unpack_from("=ii", raw, 28 + 16 * i)
        if offmask:
            return None
        words.append((value, mask, off))
    return words


@dataclass(frozen=True)
class HtbClass:
    rate: int  # bytes/s
    ceil: int
    buffer: int  # ticks
    cbuffer: int

    def describe(self) -> str:
        return f"rate {format_rate(self.rate * 8)}bit/s ceil {format_rate(self.ceil * 8)}bit/s"


@dataclass(frozen=True)
class U32Node:
    handle: int  # full: the kernel's hash table id and our node
    info: int  # preference << 16 | protocol (network order), as the kernel has it
    classid: int | None
    words: list[tuple[int, int, int]] | None

    @property
    def prio(self) -> int:
        return self.info >> 16


class Wire:
    """Reads and writes of one device's tc objects over one IPRoute."""

    def __init__(self, ipr: IPRoute, leg: Leg) -> None:
        self.ipr = ipr
        self.leg = leg
        found = ipr.link_lookup(ifname=leg.device)
        if not found:
            raise Absent(f"device {leg.where} does not exist")
        self.index: int = found[0]

    def root(self) -> tuple[str | None, int, int | None]:
        """The root qdisc: (kind, handle, HTB default class or None)."""
        for q in self.ipr.tc("dump", index=self.index):
            if q["index"] == self.index and q["parent"] == TC_H_ROOT:
                kind = q.get_attr("TCA_KIND")
                defcls = None
                opts = q.get_attr("TCA_OPTIONS")
                if kind == "htb" and opts is not None:
                    init = opts.get_attr("TCA_HTB_INIT")
                    defcls = init["defcls"] if init is not None else None
                return kind, q["handle"], defcls
        return None, 0, None

    def ours(self) -> str | None:
        """None if the root qdisc is ours (htb 1: default 0), "" if it is the kernel's default, else a reason."""
        kind, handle, defcls = self.root()
        if kind == "htb" and handle == ROOT_HANDLE and defcls == 0:
            return None
        if handle == 0:
            return ""
        what = f"{kind} {handle >> 16:x}:" + (f" default {defcls:x}" if defcls else "")
        return f"device {self.leg.where} has a root qdisc {what} that Tenure did not create; not replacing it"

    def add_root(self) -> None:
        self.ipr.tc("add", "htb", self.index, ROOT_HANDLE, parent=TC_H_ROOT, default=0)

    def del_root(self) -> None:
        self.ipr.tc("del", index=self.index, handle=ROOT_HANDLE, parent=TC_H_ROOT)

    def classes(self) -> dict[int, HtbClass]:
        """HTB classes under 1:, by handle."""
        out = {}
        for c in self.ipr.get_classes(index=self.index):
            if c["index"] != self.index or c["handle"] >> 16 != 1 or c.get_attr("TCA_KIND") != "htb":
                continue
            opts = c.get_attr("TCA_OPTIONS")
            parms = opts.get_attr("TCA_HTB_PARMS") if opts is not None else None
            if parms is None:
                continue
            out[c["handle"]] = HtbClass(rate=opts.get_attr("TCA_HTB_RATE64") or parms["rate"],
                                        ceil=opts.get_attr("TCA_HTB_CEIL64") or parms["ceil"],
                                        buffer=parms["buffer"], cbuffer=parms["cbuffer"])
        return out

    def wanted_class(self) -> HtbClass:
        leg = self.leg
        return HtbClass(rate=leg.rate_bytes, ceil=leg.rate_bytes, buffer=leg.buffer_ticks, cbuffer=leg.buffer_ticks)

    def put_class(self, command: str) -> None:
        leg = self.leg
        quantum = min(max(leg.rate_bytes // 10, 1000), 200000)  # the kernel's own choice, without its warning
        self.ipr.tc(command, "htb", self.index, leg.handle, parent=ROOT_HANDLE, rate=leg.rate_bytes,
                    ceil=leg.rate_bytes, burst=leg.burst_bytes, cburst=leg.burst_bytes, quantum=quantum)

    def del_class(self) -> None:
        self.ipr.tc("del-class", index=self.index, handle=self.leg.handle, parent=ROOT_HANDLE)

    def nodes(self) -> list[U32Node]:
        """Every u32 node (not hash table) under 1:."""
        out = []
        for f in self.ipr.get_filters(index=self.index, parent=ROOT_HANDLE):
            opts = f.get_attr("TCA_OPTIONS")
            if (f["index"] != self.index or f.get_attr("TCA_KIND") != "u32" or opts is None
                    or opts.get_attr("TCA_U32_SEL") is None):
                continue
            out.append(U32Node(handle=f["handle"], info=f["info"], classid=opts.get_attr("TCA_U32_CLASSID"),
                               words=_u32_words(f)))
        return out

    def node(self) -> U32Node | None:
        """This classid's u32 node (at its preference, node id and bucket 0), if there is one."""
        leg = self.leg
        return next((n for n in self.nodes()
                     if n.prio == leg.prio and n.handle & 0xFFF == leg.node and (n.handle >> 12) & 0xFF == 0), None)

    def put_node(self, command: str, handle: int) -> None:
        leg = self.leg
        self.ipr.tc(command, "u32", self.index, handle=handle, parent=ROOT_HANDLE, prio=leg.prio,
                    protocol=ETH_P_IP, target=leg.handle, keys=leg.keys())

    def del_node(self, node: U32Node) -> None:
        self.ipr.tc("del-filter", index=self.index, parent=ROOT_HANDLE, handle=node.handle, info=node.info)


def _node_problem(leg: Leg, node: U32Node | None) -> str | None:
    """Why the node is not the leg's filter, or None if it is."""
    if node is None:
        return f"filter pref {leg.prio} node {leg.node:x} for class {leg.classid_text} is missing"
    if node.classid != leg.handle:
        got = f"1:{node.classid & 0xFFFF:x}" if node.classid else "none"
        return f"filter pref {leg.prio} node {leg.node:x} has flowid {got}, expected {leg.classid_text}"
    if node.words is None or _bytes_of(node.words) != leg.match_bytes():
        return (f"filter pref {leg.prio} node {leg.node:x} matches {_describe(node.words)}, "
                f"expected {_describe(leg.words())}")
    return None


def _describe(words: list[tuple[int, int, int]] | None) -> str:
    if words is None:
        return "a selector that is not a plain u32 match"
    return " ".join(f"{v:08x}/{m:08x}@{off}" for v, m, off in words) or "everything"


# --- the handler ----------------------------------------------------------------------------


class Shaper:
    """The handler: OCF actions over :class:`Wire`, one device at a time."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def _lock(self, leg: Leg) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((leg.netns or "", leg.device), threading.Lock())

    @contextmanager
    def _device(self, leg: Leg, ctx: HandlerContext) -> Iterator[Wire]:
        """The device's lock held and its Wire open (Absent, NetlinkError and OSError pass through)."""
        lock = self._lock(leg)
        timeout = getattr(ctx, "timeout", None)
        if not lock.acquire(timeout=timeout if isinstance(timeout, int | float) and 0 < timeout < 1e6 else -1):
            raise TimeoutError(f"another operation on {leg.where} held it for over {timeout:g}s")
        try:
            with _iproute(leg.netns) as ipr:
                try:
                    yield Wire(ipr, leg)
                except NetlinkError as exc:
                    if exc.code == errno.ENODEV:  # the device went away under us
                        raise Absent(f"device {leg.where} does not exist") from exc
                    raise
        finally:
            lock.release()

    def meta_data(self) -> str:
        return META_DATA

    def start(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        try:
            leg = parse_params(params)
        except Invalid as exc:
            return OCF_ERR_CONFIGURED, str(exc)
        try:
            with self._device(leg, ctx) as wire:
                result = self._ensure(wire, ctx)
        except Absent as exc:
            return OCF_ERR_GENERIC, f"{exc}; cannot shape on it"
        except (NetlinkError, OSError) as exc:
            return OCF_ERR_GENERIC, f"tc on {leg.where}: {_error(exc)}"
        if result == OCF_SUCCESS and hasattr(ctx, "set_output"):
            ctx.set_output("classid", leg.classid_text)
        return result

    def reload(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        """A changed rate, burst or match applied in place: start's reconciliation."""
        return self.start(params, ctx)

    def _ensure(self, wire: Wire, ctx: HandlerContext) -> Result:
        leg = wire.leg
        owner = wire.ours()
        if owner:
            return OCF_ERR_GENERIC, owner
        if owner == "":
            wire.add_root()
            ctx.log(f"added root qdisc htb 1: default 0 on {leg.where}")

        want = wire.wanted_class()
        have = wire.classes().get(leg.handle)
        if have is None:
            wire.put_class("add-class")
            ctx.log(f"added class {leg.classid_text} {want.describe()}")
        elif have != want:
            wire.put_class("change-class")
            ctx.log(f"changed class {leg.classid_text} from {have.describe()} to {want.describe()}")

        node = wire.node()
        problem = _node_problem(leg, node)
        if node is None:
            wire.put_node("add-filter", leg.node)
            ctx.log(f"added filter pref {leg.prio} node {leg.node:x} -> {leg.classid_text}")
        elif problem is not None:
            if node.words is not None and _bytes_of(node.words) == leg.match_bytes():
                wire.put_node("replace-filter", node.handle)  # only the flowid differs: replaced in place
            else:  # u32 keeps a node's keys on change: a new match is a new node
                wire.del_node(node)
                wire.put_node("add-filter", leg.node)
            ctx.log(f"fixed filter pref {leg.prio} node {leg.node:x}: {problem}")
        return OCF_SUCCESS

    def monitor(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        try:
            leg = parse_params(params)
        except Invalid as exc:
            return OCF_ERR_CONFIGURED, str(exc)
        try:
            with self._device(leg, ctx) as wire:
                if wire.ours() is not None:
                    return OCF_NOT_RUNNING  # no HTB of ours, so no class of ours
                have = wire.classes().get(leg.handle)
                if have is None:
                    return OCF_NOT_RUNNING
                want = wire.wanted_class()
                if have != want:
                    burst = "" if (have.rate, have.ceil) != (want.rate, want.ceil) else " (burst differs)"
                    return OCF_ERR_GENERIC, (f"class {leg.classid_text} on {leg.where} has {have.describe()}{burst}, "
                                             f"expected {want.describe()}")
                problem = _node_problem(leg, wire.node())
                if problem is not None:
                    return OCF_ERR_GENERIC, f"{problem} on {leg.where}"
        except Absent:
            return OCF_NOT_RUNNING
        except (NetlinkError, OSError) as exc:
            return OCF_ERR_GENERIC, f"tc on {leg.where}: {_error(exc)}"
        return OCF_SUCCESS

    def stop(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        """Remove the leg's filter and class, and the root qdisc after the last class; absent is stopped.

        Only the leg's identity (device, classid, netns) is checked: whatever the
        rest says, stopping must be able to remove what a start made.
        """
        try:
            leg = parse_params(params, identity_only=True)
        except Invalid as exc:
            return OCF_ERR_CONFIGURED, str(exc)
        try:
            with self._device(leg, ctx) as wire:
                if wire.ours() is not None:
                    return OCF_SUCCESS  # a foreign root qdisc: nothing of ours can be under it
                for node in wire.nodes():  # ours, and any other filter into the class (it could not go else)
                    if node.classid == leg.handle or (node.prio, node.handle & 0xFFF) == (leg.prio, leg.node):
                        _absent_ok(wire.del_node, node)
                        ctx.log(f"deleted filter pref {node.prio} fh {node.handle >> 20:x}::{node.handle & 0xFFF:x}")
                classes = wire.classes()
                if leg.handle in classes:
                    _absent_ok(wire.del_class)
                    ctx.log(f"deleted class {leg.classid_text}")
                if not set(classes) - {leg.handle}:
                    _absent_ok(wire.del_root, gone=(errno.ENOENT, errno.EINVAL))
                    ctx.log(f"deleted root qdisc htb 1: on {leg.where} (no class left)")
        except Absent:
            return OCF_SUCCESS
        except (NetlinkError, OSError) as exc:
            return OCF_ERR_GENERIC, f"tc on {leg.where}: {_error(exc)}"
        return OCF_SUCCESS


def _absent_ok(fn: Any, *args: Any, gone: tuple[int, ...] = (errno.ENOENT,)) -> None:
    """Run a delete; already gone is fine (ENOENT; a missing root qdisc says EINVAL)."""
    try:
        fn(*args)
    except NetlinkError as exc:
        if exc.code not in gone:
            raise


def _error(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"netlink error {exc.code} ({os.strerror(exc.code)})"
    return f"{type(exc).__name__}: {exc}"
