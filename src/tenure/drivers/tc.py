"""``python:tenure.drivers.tc:Shaper``: one bandwidth reservation leg as Linux traffic control, over netlink.

A leg reserved for a flow leaving this host becomes an HTB class that the
flow's packets are steered into. Everything is done through rtnetlink (no
``tc`` process; see Reads below). On the egress device the wire layout is::

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
  is the kernel's choice, so a filter is looked up in two steps: the
  preference's root table (asked for as ``fff:``, which the answer names), then
  the node by its full handle in it. Filters are tried in classid order.
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

**Reads** are rtnetlink requests parsed here, a few attributes per object
(pyroute2's decoding costs ~0.5 ms an object; it only adds and changes). What
an operation reads:

- **The leg's filter** by the two lookups above (non-dump RTM_GETTFILTER):
  the same cost whatever else is on the device.
- **The device's View**: its index (RTM_GETLINK by name), root qdisc (a qdisc
  dump: one per device of the namespace) and classes (a class dump: every class
  on the device, ~2 us each in the kernel; a class decoded only when asked for).
  A class cannot be fetched alone: a non-dump RTM_GETTCLASS (like RTM_GETQDISC)
  answers the asker nothing unless it asks for an echo, and sends the class to
  every RTNLGRP_TC listener, a notification of a change that did not happen.
- **Fresh for start, reload and stop**: a View from a dump that started after
  they asked. Dumps are single-flight per device: whoever asks while none runs
  makes one, whoever asks while one runs waits for the next, and all who wait
  when it starts share it.
- **Vouched for, for monitor**: each namespace has a watch, a socket subscribed
  to its link and tc notifications (RTMGRP_LINK, RTMGRP_TC). The kernel queues
  a notification before the request that made the change returns, and reports
  lost ones (ENOBUFS), so a View is still the device's state as long as nothing
  arrived since just before its dump started. monitor uses the last View while
  that holds, else a fresh one as above. On a device where nothing changes a
  monitor costs two filter lookups, however many legs it holds; the dumps
  (proportional to the classes) are paid by start and stop and by the first
  monitor after any change in the namespace.
- **Writes**: adding or changing a class or a filter goes through pyroute2
  (an IPRoute opened for the operation, only when something differs); deletes
  are sent by hand. stop deletes the node at the leg's place, then the class;
  only if other filters still hold the class (the kernel answers EBUSY), or the
  class is already gone, does it dump the device's filters to delete every u32
  node into the class.

**Threads, locks, sockets.** Handler methods run in threads, several at once,
and the agent makes a Shaper per instance: device locks, Views, watches and
sockets belong to the module, shared by all. start, reload and stop on one
device run under that device's lock; monitor only reads and takes no lock (the
agent runs one operation at a time per instance, and legs share only the root
qdisc). Sockets are kept per namespace, each lent to one operation at a time,
and closed after IDLE_SOCKET_SECONDS unused (by a timer thread that exists only
while some are kept), because a socket keeps its namespace alive: every use
checks what the namespace's name refers to now, so a deleted namespace is
absent (its sockets are closed at once) and a re-created one gets new sockets.
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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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


# --- netlink, by hand -----------------------------------------------------------------------
#
# Reads and deletes are rtnetlink requests made and parsed here, a handful of
# attributes an object (pyroute2's decoding costs ~0.5 ms an object); adds and
# changes, rare, go through pyroute2. Numbers as <linux/netlink.h>,
# <linux/rtnetlink.h>, <linux/pkt_sched.h> and <linux/pkt_cls.h> have them.

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
RTM_GETLINK, RTM_GETQDISC, RTM_GETTCLASS, RTM_GETTFILTER = 18, 38, 42, 46
RTM_DELQDISC, RTM_DELTCLASS, RTM_DELTFILTER = 37, 41, 45
RTMGRP_LINK, RTMGRP_TC = 0x1, 0x8
IFLA_IFNAME = 3
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_HTB_PARMS, TCA_HTB_INIT, TCA_HTB_RATE64, TCA_HTB_CEIL64 = 1, 2, 6, 7
TCA_U32_CLASSID, TCA_U32_SEL = 1, 5
TC_U32_TERMINAL = 1
U32_ROOT_TABLE = 0xFFF00000  # TC_U32_ROOT as a handle: "this preference's root hash table", whatever its id
NLA_TYPE_MASK = 0x3FFF
RECV_BUFFER = 1 << 16  # a dump's datagrams are at most 32 KiB
SOCKET_TIMEOUT = 30.0  # seconds: the kernel always answers; this only bounds a wedged socket
IDLE_SOCKET_SECONDS = 5.0  # a pooled socket unused this long is closed (it pins its namespace)
IDLE_SOCKETS_PER_NETNS = 32  # the agent runs up to 32 operations at once
_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_TCMSG = struct.Struct("=BxxxiIII")  # tcmsg: family, ifindex, handle, parent, info
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_NLA = struct.Struct("=HH")
_I32, _U32, _U64 = struct.Struct("=i"), struct.Struct("=I"), struct.Struct("=Q")
_HEAD = _NLMSG.size + _TCMSG.size  # where a tc message's attributes start
_TC_HEAD = struct.Struct("=IHHIIBxxxiIII")  # nlmsghdr and tcmsg in one

_MSG_TRUNC = int(socket.MSG_TRUNC)

Message = tuple[bytes, int, int]  # (datagram, offset of the message, its length)


def _attrs(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """The netlink attributes in ``data[start:end]``: {type: (payload start, payload end)}, the first of each."""
    out: dict[int, tuple[int, int]] = {}
    while start + _NLA.size <= end:
        length, kind = _NLA.unpack_from(data, start)
        if length < _NLA.size or start + length > end:
            break
        out.setdefault(kind & NLA_TYPE_MASK, (start + _NLA.size, start + length))
        start += (length + 3) & ~3
    return out


def _text(data: bytes, span: tuple[int, int] | None) -> str | None:
    return None if span is None else data[span[0]:span[1]].split(b"\0", 1)[0].decode(errors="replace")


def _int_attr(data: bytes, span: tuple[int, int] | None, fmt: struct.Struct) -> int | None:
    if span is None or span[1] - span[0] < fmt.size:
        return None
    return int(fmt.unpack_from(data, span[0])[0])


def _tc_options(msg: Message, kind: str) -> tuple[bytes, dict[int, tuple[int, int]]] | None:
    """A tc message's TCA_OPTIONS attributes if its TCA_KIND is ``kind``."""
    data, off, length = msg
    top = _attrs(data, off + _HEAD, off + length)
    if _text(data, top.get(TCA_KIND)) != kind or TCA_OPTIONS not in top:
        return None
    return data, _attrs(data, *top[TCA_OPTIONS])


class _Netlink:
    """Requests over one rtnetlink socket. ``clean`` is False while an answer is still to be read."""

    def __init__(self, sock: socket.socket, ident: tuple[int, int] | None) -> None:
        self.sock = sock
        self.ident = ident  # (st_dev, st_ino) of the namespace it is bound in; None: the agent's own
        self.seq = 0
        self.clean = True
        self.last_used = 0.0
        sock.settimeout(SOCKET_TIMEOUT)

    def close(self) -> None:
        self.sock.close()

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self.seq = self.seq % 0xFFFFFFFF + 1
        self.clean = False
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | flags, self.seq, 0) + body)
        return self.seq

    def _recv(self) -> bytes:
        data, _anc, msg_flags, _addr = self.sock.recvmsg(RECV_BUFFER)
        if msg_flags & _MSG_TRUNC:
            raise OSError(errno.EMSGSIZE, "netlink answer larger than the receive buffer")
        return data

    def _end(self, data: bytes, off: int, length: int) -> None:
        """NLMSG_DONE or NLMSG_ERROR: the request is answered; an error code raises NetlinkError."""
        self.clean = True
        code = -(_int_attr(data, (off + _NLMSG.size, off + length), _I32) or 0)
        if code > 0:
            raise NetlinkError(code)

    def get(self, kind: int, body: bytes, flags: int = 0) -> Message | None:
        """The one message answering a request (None if it was only acknowledged, as NLM_F_ACK asks)."""
        seq = self._send(kind, flags, body)
        while True:
            data = self._recv()
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, mflags, mseq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size or off + length > len(data):
                    raise OSError(errno.EPROTO, "malformed netlink message")
                if mseq == seq:
                    if mtype in (NLMSG_ERROR, NLMSG_DONE):
                        self._end(data, off, length)
                        return None
                    if mflags & NLM_F_MULTI:
                        raise OSError(errno.EPROTO, f"netlink answered a get with a dump (message type {mtype})")
                    self.clean = True
                    return data, off, length
                off += (length + 3) & ~3

    def tc_dump(self, kind: int, index: int, parent: int = 0) -> list[tuple[int, int, Message]]:
        """(handle, parent, message) of each qdisc, class or filter a dump lists on device ``index``."""
        seq = self._send(kind, NLM_F_DUMP, _TCMSG.pack(0, index, 0, parent, 0))
        out = []
        head, tc_head = _NLMSG.unpack_from, _TC_HEAD.unpack_from
        while True:
            data = self._recv()
            size, off = len(data), 0
            while off + _NLMSG.size <= size:
                if off + _HEAD <= size:
                    length, mtype, _flags, mseq, _pid, _fam, ifi, handle, mparent, _info = tc_head(data, off)
                else:
                    (length, mtype, _flags, mseq, _pid), ifi = head(data, off), None
                if length < _NLMSG.size or off + length > size:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                if mseq == seq:
                    if mtype == NLMSG_DONE or mtype == NLMSG_ERROR:
                        self._end(data, off, length)
                        return out
                    if ifi == index and length >= _HEAD:
                        out.append((handle, mparent, (data, off, length)))
                off += (length + 3) & ~3

    def link_index(self, ifname: str) -> int | None:
        name = ifname.encode() + b"\0"
        attr = _NLA.pack(_NLA.size + len(name), IFLA_IFNAME) + name
        try:
            msg = self.get(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0) + attr + b"\0" * (-len(attr) % 4))
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        if msg is None:
            return None
        data, off, _length = msg
        return int(_IFINFO.unpack_from(data, off + _NLMSG.size)[2])


def netlink_socket(netns: str) -> socket.socket:
    """An rtnetlink socket in namespace ``netns`` (in /var/run/netns), made by a thread that enters it and ends."""
    return _netns_socket(netns)[0]


def _netns_socket(netns: str) -> tuple[socket.socket, tuple[int, int]]:
    """:func:`netlink_socket`, and the (st_dev, st_ino) of the namespace it is bound in."""
    result: list[Any] = []

    def work() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns into {netns}: {os.strerror(code)}")
            finally:
                os.close(fd)
            result.append((socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE),
                           (st.st_dev, st.st_ino)))
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    t = threading.Thread(target=work, name=f"tenure-tc-setns-{netns}", daemon=True)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    sock, ident = result[0]
    _buffers(sock)
    return sock, ident


def _buffers(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)


def _netns_ident(netns: str) -> tuple[int, int]:
    """The namespace ``netns`` names now, as (st_dev, st_ino); :class:`Absent` if there is none."""
    try:
        st = os.stat(os.path.join(NETNS_DIR, netns))
    except FileNotFoundError:
        raise Absent(f"network namespace {netns} does not exist") from None
    return st.st_dev, st.st_ino


class _Watch:
    """A namespace's link and tc notifications (RTMGRP_LINK | RTMGRP_TC), only counted.

    :meth:`poll` reads what arrived and returns an epoch that moved if anything
    did: a qdisc, class, filter or link added, changed or deleted anywhere in the
    namespace, or notifications lost (ENOBUFS). The kernel queues a notification
    before the change's own request returns, so an epoch unchanged since a dump
    started means nothing changed since.
    """

    def __init__(self, sock: socket.socket, ident: tuple[int, int] | None) -> None:
        self.sock = sock
        self.ident = ident
        self.epoch = 0
        self.broken = False
        self.last_used = time.monotonic()
        self._lock = threading.Lock()
        sock.bind((0, RTMGRP_LINK | RTMGRP_TC))
        sock.setblocking(False)

    def poll(self) -> int | None:
        """The epoch now; None if the watch is broken (then nothing can be vouched for)."""
        with self._lock:
            self.last_used = time.monotonic()
            while not self.broken:
                try:
                    self.sock.recv(16)  # the content does not matter: truncated, the datagram is gone all the same
                except BlockingIOError:
                    break
                except OSError as exc:
                    self.broken = exc.errno != errno.ENOBUFS  # ENOBUFS: some were lost; the socket goes on
                self.epoch += 1
            return None if self.broken else self.epoch

    def close(self) -> None:
        self.sock.close()


class _Sockets:
    """rtnetlink sockets by namespace: idle ones lent to one operation at a time, and one :class:`_Watch` each.

    A socket holds its namespace alive, so each use checks what the name refers
    to now (a deleted namespace is Absent and its sockets are closed at once, a
    re-created one gets new sockets), and sockets idle for IDLE_SOCKET_SECONDS
    are closed by a timer thread that runs only while there are any. A socket
    whose answer was not read to the end (an exception mid-read) is closed, never
    lent again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[_Netlink]] = {}  # by netns name ("": the agent's own)
        self._watches: dict[str, _Watch] = {}
        self._making = threading.Lock()  # one watch made at a time (concurrent first uses would each make one)
        self._timer: threading.Timer | None = None

    @contextmanager
    def lend(self, netns: str | None) -> Iterator[_Netlink]:
        key = netns or ""
        try:
            ident = _netns_ident(netns) if netns is not None else None
        except Absent:
            self._drop(key)
            raise
        nl = self._take(key, ident)
        if nl is None:
            nl = _Netlink(*self._open(netns))
        try:
            yield nl
        finally:
            if nl.clean and nl.ident == ident:
                self._give(key, nl)
            else:
                nl.close()

    def watch(self, netns: str | None, ident: tuple[int, int] | None) -> _Watch | None:
        """The namespace's watch (made on first use); None if it cannot be had."""
        key = netns or ""
        watch = self._watch(key, ident)
        if watch is not None:
            return watch
        with self._making:
            watch = self._watch(key, ident)  # made by another thread meanwhile?
            if watch is not None:
                return watch
            with self._lock:
                stale = self._watches.pop(key, None)
            if stale is not None:
                stale.close()
            try:
                sock, made_in = self._open(netns)
            except (Absent, OSError):
                return None
            try:
                watch = _Watch(sock, made_in)
            except OSError:
                sock.close()
                return None
            if made_in != ident:  # the namespace was re-created meanwhile
                watch.close()
                return None
            with self._lock:
                self._watches[key] = watch
                self._schedule()
            return watch

    def _watch(self, key: str, ident: tuple[int, int] | None) -> _Watch | None:
        with self._lock:
            watch = self._watches.get(key)
        return watch if watch is not None and watch.ident == ident and not watch.broken else None

    @staticmethod
    def _open(netns: str | None) -> tuple[socket.socket, tuple[int, int] | None]:
        if netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
            _buffers(sock)
            return sock, None
        try:
            return _netns_socket(netns)
        except FileNotFoundError:
            raise Absent(f"network namespace {netns} does not exist") from None

    def _take(self, key: str, ident: tuple[int, int] | None) -> _Netlink | None:
        with self._lock:
            idle = self._idle.get(key, [])
            stale = [nl for nl in idle if nl.ident != ident]  # the name now refers to another namespace
            idle[:] = [nl for nl in idle if nl.ident == ident]
            nl = idle.pop() if idle else None
        for s in stale:
            s.close()
        return nl

    def _give(self, key: str, nl: _Netlink) -> None:
        nl.last_used = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < IDLE_SOCKETS_PER_NETNS:
                idle.append(nl)
                nl = None
            self._schedule()
        if nl is not None:
            nl.close()

    def _drop(self, key: str) -> None:
        """Close a namespace's idle sockets and its watch (its name is gone)."""
        with self._lock:
            closing: list[_Netlink | _Watch] = list(self._idle.pop(key, []))
            watch = self._watches.pop(key, None)
        for s in closing + ([watch] if watch is not None else []):
            s.close()

    def _schedule(self) -> None:
        """(Under the lock.) A reaping soon, if none is due."""
        if self._timer is None and (self._idle or self._watches):
            self._timer = threading.Timer(IDLE_SOCKET_SECONDS, self.reap)
            self._timer.name = "tenure-tc-sockets"
            self._timer.daemon = True
            self._timer.start()

    def reap(self) -> None:
        """Close the sockets idle for IDLE_SOCKET_SECONDS or whose namespace is gone; again later if some are left."""
        closing: list[_Netlink | _Watch] = []
        now = time.monotonic()
        with self._lock:
            self._timer = None
            for key in set(self._idle) | set(self._watches):
                try:
                    ident = _netns_ident(key) if key else None
                except Absent:
                    ident = (-1, -1)
                idle = self._idle.pop(key, [])
                keep = [nl for nl in idle if nl.ident == ident and now - nl.last_used < IDLE_SOCKET_SECONDS]
                closing += [nl for nl in idle if nl not in keep]
                if keep:
                    self._idle[key] = keep
                watch = self._watches.get(key)
                if watch is not None and (watch.ident != ident or watch.broken
                                          or now - watch.last_used >= IDLE_SOCKET_SECONDS):
                    closing.append(self._watches.pop(key))
            self._schedule()
        for s in closing:
            s.close()


# --- the wire -------------------------------------------------------------------------------


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


def _htb_class(msg: Message) -> HtbClass | None:
    """An RTM_NEWTCLASS message's HTB parameters, if it is an HTB class."""
    found = _tc_options(msg, "htb")
    if found is None:
        return None
    data, opts = found
    span = opts.get(TCA_HTB_PARMS)
    if span is None or span[1] - span[0] < 32:
        return None
    # struct tc_htb_opt: rate and ceil (struct tc_ratespec, 12 bytes, the rate last), buffer, cbuffer, ...
    rate, = _U32.unpack_from(data, span[0] + 8)
    ceil, buffer, cbuffer = struct.unpack_from("=III", data, span[0] + 20)
    return HtbClass(rate=_int_attr(data, opts.get(TCA_HTB_RATE64), _U64) or rate,
                    ceil=_int_attr(data, opts.get(TCA_HTB_CEIL64), _U64) or ceil, buffer=buffer, cbuffer=cbuffer)


def _root_qdisc(msg: Message) -> tuple[str | None, int, int | None]:
    """(kind, handle, HTB default class or None) of an RTM_NEWQDISC message."""
    data, off, length = msg
    handle = _TCMSG.unpack_from(data, off + _NLMSG.size)[2]
    kind = _text(data, _attrs(data, off + _HEAD, off + length).get(TCA_KIND))
    defcls = None
    found = _tc_options(msg, "htb")
    if found is not None:
        span = found[1].get(TCA_HTB_INIT)  # struct tc_htb_glob: version, rate2quantum, defcls, ...
        defcls = _int_attr(data, (span[0] + 8, span[1]), _U32) if span is not None else None
    return kind, handle, defcls


def _u32_node(msg: Message) -> U32Node | None:
    """A u32 key node (not a hash table) from an RTM_NEWTFILTER message."""
    found = _tc_options(msg, "u32")
    if found is None or TCA_U32_SEL not in found[1]:
        return None
    data, opts = found
    _fam, _ifi, handle, _parent, info = _TCMSG.unpack_from(data, msg[1] + _NLMSG.size)
    start, end = opts[TCA_U32_SEL]
    return U32Node(handle=handle, info=info, classid=_int_attr(data, opts.get(TCA_U32_CLASSID), _U32),
                   words=_u32_words(data[start:end]))


def _u32_words(sel: bytes) -> list[tuple[int, int, int]] | None:
    """A u32 node's keys as (value, mask, offset) from its struct tc_u32_sel; None if it is not a plain node.

    (16 bytes of selector, flags and nkeys first, then 16 bytes per key: mask and
    value big-endian, offset and offmask in host order. pyroute2 0.9.7's
    ``u32_sel.decode`` reads the keys 4 bytes too early, hence this.)
    """
    if len(sel) < 16:
        return None
    flags, nkeys = sel[0], sel[2]
    if flags != TC_U32_TERMINAL or len(sel) < 16 + 16 * nkeys:  # nothing variable
        return None
    words = []
    for i in range(nkeys):
        mask, value = struct.unpack_from(">II", sel, 16 + 16 * i)
        off, offmask = struct.unpack_from("=ii", sel, 24 + 16 * i)
        if offmask:
            return None
        words.append((value, mask, off))
    return words


@dataclass(frozen=True)
class View:
    """One reading of a device: its index (None: no such device), root qdisc and classes under 1:."""

    index: int | None
    root: tuple[str | None, int, int | None] = (None, 0, None)  # kind, handle, HTB default class or None
    classes: dict[int, Message] = field(default_factory=dict)  # by handle, decoded when asked for


def _read_view(nl: _Netlink, device: str) -> View:
    """A device's qdisc and class dumps (a qdisc dump lists the namespace's devices' qdiscs, not their leaves)."""
    index = nl.link_index(device)
    if index is None:
        return View(None)
    root: tuple[str | None, int, int | None] = (None, 0, None)
    for _handle, parent, msg in nl.tc_dump(RTM_GETQDISC, index):
        if parent == TC_H_ROOT:
            root = _root_qdisc(msg)
    classes = {handle: msg for handle, _parent, msg in nl.tc_dump(RTM_GETTCLASS, index) if handle >> 16 == 1}
    return View(index, root, classes)


class _Flight:
    """Readings of one device: a View is either vouched for by the namespace's :class:`_Watch` or read anew.

    A reading is kept with the watch's epoch from just before its dump started;
    a monitor takes it while the epoch has not moved (nothing in the namespace
    changed since). Otherwise, and always for start and stop (``fresh``), the
    caller gets a View read by a dump that started after it asked, single-flight:
    whoever asks while no dump runs makes one, whoever asks while one runs waits
    for the next, and every caller waiting when that starts shares it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._started = 0
        self._finished = 0
        self._running = False
        self._result: View | BaseException = View(None)
        self._kept: tuple[_Watch, int, View] | None = None

    def view(self, read: Callable[[], View], deadline: float | None, watch: _Watch | None, *,
             fresh: bool) -> View:
        epoch = watch.poll() if watch is not None and not fresh else None
        with self._cond:
            want = self._started + 1
            while True:
                kept = self._kept  # (also one a dump made while we waited: nothing changed since we asked)
                if epoch is not None and kept is not None and kept[0] is watch and kept[1] == epoch:
                    return kept[2]
                if self._finished >= want:
                    return self._outcome(self._result)
                if not self._running:
                    self._running = True
                    self._started += 1
                    mine = self._started
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("waited too long for a reading of the device")
                self._cond.wait(left)
        result: View | BaseException
        try:
            before = watch.poll() if watch is not None else None
            result = read()
        except BaseException as exc:  # the waiters' outcome as well
            result = exc
        with self._cond:
            self._running = False
            self._finished = mine
            self._result = result
            if isinstance(result, View) and watch is not None and before is not None:
                self._kept = (watch, before, result)
            else:
                self._kept = None
            self._cond.notify_all()
        return self._outcome(result)

    @staticmethod
    def _outcome(result: View | BaseException) -> View:
        if isinstance(result, BaseException):
            raise result
        return result


def _iproute(netns: str | None) -> IPRoute:
    """An IPRoute in ``netns`` (None: ours) to write with; :class:`Absent` if the namespace is not there."""
    if netns is None:
        return IPRoute()
    if not os.path.exists(os.path.join(NETNS_DIR, netns)):
        raise Absent(f"network namespace {netns} does not exist")
    try:
        sock = netlink_socket(netns)
    except FileNotFoundError:
        raise Absent(f"network namespace {netns} does not exist") from None
    try:
        return IPRoute(use_socket=sock)
    except BaseException:
        sock.close()
        raise


class Wire:
    """One device's tc objects: read over a lent socket (the device's View, this leg's u32 node), deleted over it
    too, added and changed with pyroute2 over an IPRoute opened at the first such write."""

    def __init__(self, nl: _Netlink, leg: Leg, view: View) -> None:
        if view.index is None:
            raise Absent(f"device {leg.where} does not exist")
        self.nl = nl
        self.leg = leg
        self.view = view
        self.index: int = view.index
        self._ipr: IPRoute | None = None

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = _iproute(self.leg.netns)
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def root(self) -> tuple[str | None, int, int | None]:
        """The root qdisc: (kind, handle, HTB default class or None)."""
        return self.view.root

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
        self.nl.get(RTM_DELQDISC, _TCMSG.pack(0, self.index, ROOT_HANDLE, TC_H_ROOT, 0), NLM_F_ACK)

    def class_handles(self) -> set[int]:
        """Handles of the classes under 1:."""
        return set(self.view.classes)

    def get_class(self) -> HtbClass | None:
        """This leg's HTB class, if there is one."""
        msg = self.view.classes.get(self.leg.handle)
        return _htb_class(msg) if msg is not None else None

    def wanted_class(self) -> HtbClass:
        leg = self.leg
        return HtbClass(rate=leg.rate_bytes, ceil=leg.rate_bytes, buffer=leg.buffer_ticks, cbuffer=leg.buffer_ticks)

    def put_class(self, command: str) -> None:
        leg = self.leg
        quantum = min(max(leg.rate_bytes // 10, 1000), 200000)  # the kernel's own choice, without its warning
        self.ipr.tc(command, "htb", self.index, leg.handle, parent=ROOT_HANDLE, rate=leg.rate_bytes,
                    ceil=leg.rate_bytes, burst=leg.burst_bytes, cburst=leg.burst_bytes, quantum=quantum)

    def del_class(self) -> None:
        self.nl.get(RTM_DELTCLASS, _TCMSG.pack(0, self.index, self.leg.handle, ROOT_HANDLE, 0), NLM_F_ACK)

    def _get_filter(self, handle: int, prio: int) -> Message | None:
        """One filter under 1: by preference (any protocol) and full handle; None if there is none."""
        try:
            return self.nl.get(RTM_GETTFILTER, _TCMSG.pack(0, self.index, handle, ROOT_HANDLE, prio << 16))
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.EINVAL):  # no such preference, table or node
                return None
            raise

    def node(self) -> U32Node | None:
        """This classid's u32 node (at its preference, node id and bucket 0), if there is one.

        Two lookups: the preference's root hash table (whose id the kernel chose),
        then the node in it.
        """
        leg = self.leg
        table = self._get_filter(U32_ROOT_TABLE, leg.prio)
        if table is None or _tc_options(table, "u32") is None:
            return None
        htid = _TCMSG.unpack_from(table[0], table[1] + _NLMSG.size)[2] & 0xFFF00000
        found = self._get_filter(htid | leg.node, leg.prio)
        node = _u32_node(found) if found is not None else None
        return node if node is not None and node.handle == htid | leg.node else None

    def nodes_into(self, classid: int) -> list[U32Node]:
        """The u32 nodes under 1: that classify into ``classid`` (their keys not read), from a dump of the
        device's filters."""
        out = []
        for handle, _parent, msg in self.nl.tc_dump(RTM_GETTFILTER, self.index, ROOT_HANDLE):
            if handle & 0xFFF:  # key 0 is a hash table
                found = _tc_options(msg, "u32")
                if found is not None and _int_attr(found[0], found[1].get(TCA_U32_CLASSID), _U32) == classid:
                    info = _TCMSG.unpack_from(msg[0], msg[1] + _NLMSG.size)[4]
                    out.append(U32Node(handle=handle, info=info, classid=classid, words=None))
        return out

    def put_node(self, command: str, handle: int) -> None:
        leg = self.leg
        self.ipr.tc(command, "u32", self.index, handle=handle, parent=ROOT_HANDLE, prio=leg.prio,
                    protocol=ETH_P_IP, target=leg.handle, keys=leg.keys())

    def del_node(self, node: U32Node) -> None:
        self.nl.get(RTM_DELTFILTER, _TCMSG.pack(0, self.index, node.handle, ROOT_HANDLE, node.info), NLM_F_ACK)


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


def _deadline(ctx: HandlerContext) -> float | None:
    timeout = getattr(ctx, "timeout", None)
    if isinstance(timeout, int | float) and 0 < timeout < 1e6:
        return time.monotonic() + timeout
    return None


_GUARD = threading.Lock()
_LOCKS: dict[tuple[str, str], threading.Lock] = {}  # by (netns, device)
_FLIGHTS: dict[tuple[str, str], tuple[tuple[int, int] | None, _Flight]] = {}  # by (netns, device), with the netns id
_SOCKETS = _Sockets()


def _device_lock(leg: Leg) -> threading.Lock:
    with _GUARD:
        return _LOCKS.setdefault((leg.netns or "", leg.device), threading.Lock())


def _flight(leg: Leg, nl: _Netlink) -> _Flight:
    """The device's readings in the namespace the socket is in (a re-created namespace starts anew)."""
    key = (leg.netns or "", leg.device)
    with _GUARD:
        ident, flight = _FLIGHTS.get(key, (None, None))
        if flight is None or ident != nl.ident:
            flight = _Flight()
            _FLIGHTS[key] = (nl.ident, flight)
        return flight


class Shaper:
    """The handler: OCF actions over :class:`Wire`, one device at a time.

    The agent makes one per instance, so the device locks, the readings and the
    sockets are the module's, shared by all.
    """

    @contextmanager
    def _device(self, leg: Leg, ctx: HandlerContext, *, monitor: bool = False) -> Iterator[Wire]:
        """The device's Wire over a lent socket: for start and stop with the device's lock held and a fresh View,
        for monitor (which only reads) without the lock and with a View the watch vouches for. Absent,
        NetlinkError and OSError pass through."""
        deadline = _deadline(ctx)
        lock = None if monitor else _device_lock(leg)
        if lock is not None and not lock.acquire(timeout=-1 if deadline is None else ctx.timeout):
            raise TimeoutError(f"another operation on {leg.where} held it for over {ctx.timeout:g}s")
        try:
            with _SOCKETS.lend(leg.netns) as nl:
                try:
                    watch = _SOCKETS.watch(leg.netns, nl.ident)
                    view = _flight(leg, nl).view(lambda: _read_view(nl, leg.device), deadline, watch,
                                                 fresh=not monitor)
                    wire = Wire(nl, leg, view)
                    try:
                        yield wire
                    finally:
                        wire.close()
                except NetlinkError as exc:
                    if exc.code == errno.ENODEV:  # the device went away under us
                        raise Absent(f"device {leg.where} does not exist") from exc
                    raise
        finally:
            if lock is not None:
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
        have = wire.get_class() if owner is None else None  # a new root has no classes
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
            with self._device(leg, ctx, monitor=True) as wire:
                if wire.ours() is not None:
                    return OCF_NOT_RUNNING  # no HTB of ours, so no class of ours
                have = wire.get_class()
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
                node = wire.node()
                if node is not None:  # at our place, whatever its flowid
                    self._del_node(wire, node, ctx)
                classes = wire.class_handles()
                if leg.handle in classes:
                    try:
                        _absent_ok(wire.del_class)
                    except NetlinkError as exc:
                        if exc.code != errno.EBUSY:
                            raise
                        for other in wire.nodes_into(leg.handle):  # other filters into the class hold it
                            self._del_node(wire, other, ctx)
                        _absent_ok(wire.del_class)
                    ctx.log(f"deleted class {leg.classid_text}")
                else:  # already gone: filters it left behind go
                    for other in wire.nodes_into(leg.handle):
                        self._del_node(wire, other, ctx)
                if not classes - {leg.handle}:
                    _absent_ok(wire.del_root, gone=(errno.ENOENT, errno.EINVAL))
                    ctx.log(f"deleted root qdisc htb 1: on {leg.where} (no class left)")
        except Absent:
            return OCF_SUCCESS
        except (NetlinkError, OSError) as exc:
            return OCF_ERR_GENERIC, f"tc on {leg.where}: {_error(exc)}"
        return OCF_SUCCESS

    @staticmethod
    def _del_node(wire: Wire, node: U32Node, ctx: HandlerContext) -> None:
        _absent_ok(wire.del_node, node)
        ctx.log(f"deleted filter pref {node.prio} fh {node.handle >> 20:x}::{node.handle & 0xFFF:x}")


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
