"""The wire: HTB classes (and the u32 nodes legs had before nftables classified them) as the kernel has them, a
device's View (single-flight dumps), and Wire, which reads and writes one leg's class."""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tenure.domain.units import format_rate
from tenure.drivers.tc.netlink import (
    HEAD,
    NETNS_DIR,
    NLM_F_ACK,
    NLMSG,
    RTM_DELQDISC,
    RTM_DELTCLASS,
    RTM_DELTFILTER,
    RTM_GETQDISC,
    RTM_GETTCLASS,
    RTM_GETTFILTER,
    TCA_HTB_CEIL64,
    TCA_HTB_INIT,
    TCA_HTB_PARMS,
    TCA_HTB_RATE64,
    TCA_KIND,
    TCA_STATS,
    TCA_U32_CLASSID,
    TCA_U32_SEL,
    TCMSG,
    U32,
    U32_ROOT_TABLE,
    U64,
    Absent,
    Message,
    Netlink,
    TcWatch,
    attrs,
    int_attr,
    netlink_socket,
    tc_options,
    text_attr,
)
from tenure.drivers.tc.params import (
    DEFAULT_BURST_SECONDS,
    DEFAULT_HANDLE,
    DEFAULT_MINOR,
    MIN_DEFAULT_BURST,
    MIN_RATE,
    PARENT_HANDLE,
    ROOT_HANDLE,
    TC_H_ROOT,
    Leg,
    _u32_ticks,
)

T = TypeVar("T")
OLD_LAYOUT = "old"  # Wire.ours(): the layout before the tree (htb 1: default 0, legs under the root)
TREE = (PARENT_HANDLE, DEFAULT_HANDLE)
MIN_RATE_BYTES = MIN_RATE // 8


@dataclass(frozen=True)
class HtbClass:
    rate: int  # bytes/s
    ceil: int
    buffer: int  # ticks
    cbuffer: int

    def describe(self) -> str:
        return f"rate {format_rate(self.rate * 8)}bit/s ceil {format_rate(self.ceil * 8)}bit/s"


@dataclass(frozen=True)
class ClassStats:
    """A class's counters (struct tc_stats): what it sent, dropped and held back at its rate or ceil."""

    sent_bytes: int
    sent_packets: int
    dropped: int
    overlimits: int
    backlog: int  # bytes queued now

    def outputs(self) -> dict[str, str]:
        return {"sent_bytes": str(self.sent_bytes), "sent_packets": str(self.sent_packets),
                "dropped": str(self.dropped), "overlimits": str(self.overlimits), "backlog": str(self.backlog)}


def class_stats(msg: Message) -> ClassStats | None:
    """The counters of an RTM_NEWTCLASS message (its TCA_STATS), if it has them."""
    data, off, length = msg
    span = attrs(data, off + HEAD, off + length).get(TCA_STATS)
    if span is None or span[1] - span[0] < TC_STATS.size:
        return None
    sent_bytes, packets, drops, overlimits, _bps, _pps, _qlen, backlog = TC_STATS.unpack_from(data, span[0])
    return ClassStats(sent_bytes, packets, drops, overlimits, backlog)


TC_STATS = struct.Struct("=QIIIIIII")  # bytes, packets, drops, overlimits, bps, pps, qlen, backlog


@dataclass(frozen=True)
class U32Node:
    handle: int  # full: the kernel's hash table id and our node
    info: int  # preference << 16 | protocol (network order), as the kernel has it
    classid: int | None

    @property
    def prio(self) -> int:
        return self.info >> 16


def _htb_class(msg: Message) -> HtbClass | None:
    """An RTM_NEWTCLASS message's HTB parameters, if it is an HTB class."""
    found = tc_options(msg, "htb")
    if found is None:
        return None
    data, opts = found
    span = opts.get(TCA_HTB_PARMS)
    if span is None or span[1] - span[0] < 32:
        return None
    # struct tc_htb_opt: rate and ceil (struct tc_ratespec, 12 bytes, the rate last), buffer, cbuffer, ...
    rate, = U32.unpack_from(data, span[0] + 8)
    ceil, buffer, cbuffer = struct.unpack_from("=III", data, span[0] + 20)
    return HtbClass(rate=int_attr(data, opts.get(TCA_HTB_RATE64), U64) or rate,
                    ceil=int_attr(data, opts.get(TCA_HTB_CEIL64), U64) or ceil, buffer=buffer, cbuffer=cbuffer)


def _root_qdisc(msg: Message) -> tuple[str | None, int, int | None]:
    """(kind, handle, HTB default class or None) of an RTM_NEWQDISC message."""
    data, off, length = msg
    handle = TCMSG.unpack_from(data, off + NLMSG.size)[2]
    kind = text_attr(data, attrs(data, off + HEAD, off + length).get(TCA_KIND))
    defcls = None
    found = tc_options(msg, "htb")
    if found is not None:
        span = found[1].get(TCA_HTB_INIT)  # struct tc_htb_glob: version, rate2quantum, defcls, ...
        defcls = int_attr(data, (span[0] + 8, span[1]), U32) if span is not None else None
    return kind, handle, defcls


def _u32_node(msg: Message) -> U32Node | None:
    """A u32 key node (not a hash table) from an RTM_NEWTFILTER message."""
    found = tc_options(msg, "u32")
    if found is None or TCA_U32_SEL not in found[1]:
        return None
    data, opts = found
    _fam, _ifi, handle, _parent, info = TCMSG.unpack_from(data, msg[1] + NLMSG.size)
    return U32Node(handle=handle, info=info, classid=int_attr(data, opts.get(TCA_U32_CLASSID), U32))


@dataclass(frozen=True)
class View:
    """One reading of a device: its index (None: no such device), root qdisc and classes under 1:."""

    index: int | None
    root: tuple[str | None, int, int | None] = (None, 0, None)  # kind, handle, HTB default class or None
    classes: dict[int, Message] = field(default_factory=dict)  # by handle, decoded when asked for
    parents: dict[int, int] = field(default_factory=dict)  # class handle -> its parent's


def read_view(nl: Netlink, device: str) -> View:
    """A device's qdisc and class dumps (a qdisc dump lists the namespace's devices' qdiscs, not their leaves)."""
    index = nl.link_index(device)
    if index is None:
        return View(None)
    root: tuple[str | None, int, int | None] = (None, 0, None)
    for _handle, parent, msg in nl.tc_dump(RTM_GETQDISC, index):
        if parent == TC_H_ROOT:
            root = _root_qdisc(msg)
    classes, parents = {}, {}
    for handle, parent, msg in nl.tc_dump(RTM_GETTCLASS, index):
        if handle >> 16 == 1:
            classes[handle], parents[handle] = msg, parent
    return View(index, root, classes, parents)


class Flight(Generic[T]):
    """Readings of one device (a View), or of a namespace's nftables table: a reading is either vouched for by the
    namespace's :class:`TcWatch` or read anew.

    A reading is kept with the watch's epoch from just before its dump started;
    a monitor takes it while the epoch has not moved (nothing in the namespace
    changed since) and, with ``max_age``, while it is younger than that (its counters, which move without
    notifications, are then at most that old). Otherwise, and always for start and stop (``fresh``), the
    caller gets a View read by a dump that started after it asked, single-flight:
    whoever asks while no dump runs makes one, whoever asks while one runs waits
    for the next, and every caller waiting when that starts shares it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._started = 0
        self._finished = 0
        self._running = False
        self._result: T | BaseException = TimeoutError("no reading yet")
        self._kept: tuple[TcWatch, int, T, float] | None = None

    def view(self, read: Callable[[], T], deadline: float | None, watch: TcWatch | None, *,
             fresh: bool, max_age: float | None = None) -> T:
        epoch = watch.poll() if watch is not None and not fresh else None
        oldest = None if max_age is None else time.monotonic() - max_age
        with self._cond:
            want = self._started + 1
            while True:
                kept = self._kept  # (also one a dump made while we waited: nothing changed since we asked)
                if (epoch is not None and kept is not None and kept[0] is watch and kept[1] == epoch
                        and (oldest is None or kept[3] >= oldest)):
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
        result: T | BaseException
        try:
            before = watch.poll() if watch is not None else None
            began = time.monotonic()
            result = read()
        except BaseException as exc:  # the waiters' outcome as well
            result = exc
        with self._cond:
            self._running = False
            self._finished = mine
            self._result = result
            if not isinstance(result, BaseException) and watch is not None and before is not None:
                self._kept = (watch, before, result, began)
            else:
                self._kept = None
            self._cond.notify_all()
        return self._outcome(result)

    @staticmethod
    def _outcome(result: T | BaseException) -> T:
        if isinstance(result, BaseException):
            raise result
        return result


def tree_burst(rate: int) -> int:
    """Burst of a tree class: 10 ms at its rate, at least a frame's worth (as a leg's default)."""
    return max(int(rate * DEFAULT_BURST_SECONDS), MIN_DEFAULT_BURST)


def iproute(netns: str | None) -> IPRoute:
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

    def __init__(self, nl: Netlink, leg: Leg, view: View) -> None:
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
            self._ipr = iproute(self.leg.netns)
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def root(self) -> tuple[str | None, int, int | None]:
        """The root qdisc: (kind, handle, HTB default class or None)."""
        return self.view.root

    def ours(self) -> str | None:
        """None if the root qdisc is ours (htb 1: default fffe), "" if it is the kernel's default, OLD_LAYOUT if it
        is ours from before the tree (htb 1: default 0), else a reason."""
        kind, handle, defcls = self.root()
        if kind == "htb" and handle == ROOT_HANDLE and defcls == DEFAULT_MINOR:
            return None
        if kind == "htb" and handle == ROOT_HANDLE and defcls == 0:
            return OLD_LAYOUT
        if handle == 0:
            return ""
        what = f"{kind} {handle >> 16:x}:" + (f" default {defcls:x}" if defcls else "")
        return f"device {self.leg.where} has a root qdisc {what} that Tenure did not create; not replacing it"

    def add_root(self) -> None:
        self.ipr.tc("add", "htb", self.index, ROOT_HANDLE, parent=TC_H_ROOT, default=DEFAULT_MINOR)

    def del_root(self) -> None:
        self.nl.get(RTM_DELQDISC, TCMSG.pack(0, self.index, ROOT_HANDLE, TC_H_ROOT, 0), NLM_F_ACK)

    def class_handles(self) -> set[int]:
        """Handles of the classes under 1:."""
        return set(self.view.classes)

    def leg_handles(self) -> set[int]:
        """Handles of the legs' classes (every class but the tree's parent and default; under the layout from
        before the tree, every class)."""
        if self.ours() == OLD_LAYOUT:
            return set(self.view.classes)
        return set(self.view.classes) - set(TREE)

    def htb_class(self, handle: int) -> HtbClass | None:
        msg = self.view.classes.get(handle)
        return _htb_class(msg) if msg is not None else None

    def parent_of(self, handle: int) -> int | None:
        return self.view.parents.get(handle)

    def get_class(self) -> HtbClass | None:
        """This leg's HTB class, if there is one."""
        return self.htb_class(self.leg.handle)

    def stats(self) -> ClassStats | None:
        """This leg's class's counters, as of the View's reading."""
        msg = self.view.classes.get(self.leg.handle)
        return class_stats(msg) if msg is not None else None

    def capacity(self) -> int | None:
        """The interface's capacity in bytes/s, as the parent class on the wire has it."""
        parent = self.htb_class(PARENT_HANDLE)
        return parent.rate if parent is not None else None

    def reserved(self, *, without: int | None = None) -> int:
        """Bytes/s of the legs' classes on the wire (but ``without``), as they are now."""
        total = 0
        for handle in self.leg_handles() - {without}:
            c = self.htb_class(handle)
            total += c.rate if c is not None else 0
        return total

    def wanted_class(self, capacity: int | None = None) -> HtbClass:
        """This leg's class: rate and burst from the leg; ceil its rate (cap), or ``capacity`` bytes/s (borrow)."""
        leg = self.leg
        ceil = capacity if leg.borrow and capacity is not None else leg.rate_bytes
        return HtbClass(rate=leg.rate_bytes, ceil=ceil, buffer=leg.buffer_ticks,
                        cbuffer=_u32_ticks(ceil, leg.cburst_bytes(ceil)))

    def put_class(self, command: str, capacity: int | None = None) -> None:
        leg = self.leg
        want = self.wanted_class(capacity)
        quantum = min(max(leg.rate_bytes // 10, 1000), 200000)  # the kernel's own choice, without its warning
        self.ipr.tc(command, "htb", self.index, leg.handle, parent=PARENT_HANDLE, rate=want.rate, ceil=want.ceil,
                    burst=leg.burst_bytes, cburst=leg.cburst_bytes(want.ceil), quantum=quantum, prio=0)

    def del_class(self, handle: int | None = None) -> None:
        handle = self.leg.handle if handle is None else handle
        parent = self.view.parents.get(handle, PARENT_HANDLE)
        self.nl.get(RTM_DELTCLASS, TCMSG.pack(0, self.index, handle, parent, 0), NLM_F_ACK)

    def put_tree_class(self, command: str, handle: int, rate: int, ceil: int) -> None:
        """The parent class (at the capacity) or the default class (what the legs leave, up to the capacity)."""
        quantum = min(max(rate // 10, 1000), 200000)
        parent, prio = (ROOT_HANDLE, 0) if handle == PARENT_HANDLE else (PARENT_HANDLE, 1)
        # Each bucket 10 ms at its own rate: the default class's rate may be tiny beside its ceil.
        self.ipr.tc(command, "htb", self.index, handle, parent=parent, rate=rate, ceil=ceil, burst=tree_burst(rate),
                    cburst=tree_burst(ceil), quantum=quantum, prio=prio)

    def _get_filter(self, handle: int, prio: int) -> Message | None:
        """One filter under 1: by preference (any protocol) and full handle; None if there is none."""
        try:
            return self.nl.get(RTM_GETTFILTER, TCMSG.pack(0, self.index, handle, ROOT_HANDLE, prio << 16))
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
        if table is None or tc_options(table, "u32") is None:
            return None
        htid = TCMSG.unpack_from(table[0], table[1] + NLMSG.size)[2] & 0xFFF00000
        found = self._get_filter(htid | leg.node, leg.prio)
        node = _u32_node(found) if found is not None else None
        return node if node is not None and node.handle == htid | leg.node else None

    def nodes_into(self, classid: int) -> list[U32Node]:
        """The u32 nodes under 1: that classify into ``classid`` (their keys not read), from a dump of the
        device's filters."""
        out = []
        for handle, _parent, msg in self.nl.tc_dump(RTM_GETTFILTER, self.index, ROOT_HANDLE):
            if handle & 0xFFF:  # key 0 is a hash table
                found = tc_options(msg, "u32")
                if found is not None and int_attr(found[0], found[1].get(TCA_U32_CLASSID), U32) == classid:
                    info = TCMSG.unpack_from(msg[0], msg[1] + NLMSG.size)[4]
                    out.append(U32Node(handle=handle, info=info, classid=classid))
        return out

    def del_node(self, node: U32Node) -> None:
        self.nl.get(RTM_DELTFILTER, TCMSG.pack(0, self.index, node.handle, ROOT_HANDLE, node.info), NLM_F_ACK)

