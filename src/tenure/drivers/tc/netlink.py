"""rtnetlink by hand: requests, dumps and attributes, sockets per namespace (made inside it), TC and nftables
watches."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError

NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000


class Absent(Exception):
    """The namespace or the device is not there (now)."""


@contextmanager
def held(lock: threading.Lock, deadline: float | None, what: str) -> Iterator[None]:
    """``lock``, waited for until ``deadline`` (monotonic; None: for ever); TimeoutError naming ``what`` if not."""
    left = -1 if deadline is None else max(deadline - time.monotonic(), 0.0)
    if not lock.acquire(timeout=left):
        raise TimeoutError(f"another operation held {what} past this one's deadline")
    try:
        yield
    finally:
        lock.release()


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
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7  # <linux/netfilter/nfnetlink.h>: nftables' changes (tables, chains, rules, sets)
NFTABLES_GROUPS = 1 << (NFNLGRP_NFTABLES - 1)
IFLA_IFNAME = 3
TCA_KIND, TCA_OPTIONS, TCA_STATS = 1, 2, 3  # TCA_STATS: struct tc_stats (the compat statistics)
TCA_HTB_PARMS, TCA_HTB_INIT, TCA_HTB_RATE64, TCA_HTB_CEIL64 = 1, 2, 6, 7
TCA_U32_CLASSID, TCA_U32_SEL = 1, 5
TC_U32_TERMINAL = 1
U32_ROOT_TABLE = 0xFFF00000  # TC_U32_ROOT as a handle: "this preference's root hash table", whatever its id
NLA_TYPE_MASK = 0x3FFF
RECV_BUFFER = 1 << 16  # a dump's datagrams are at most 32 KiB
SOCKET_TIMEOUT = 30.0  # seconds: the kernel always answers; this only bounds a wedged socket
IDLE_SOCKET_SECONDS = 5.0  # a pooled socket unused this long is closed (it pins its namespace)
IDLE_SOCKETS_PER_NETNS = 32  # the agent runs up to 32 operations at once
NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
TCMSG = struct.Struct("=BxxxiIII")  # tcmsg: family, ifindex, handle, parent, info
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
NLA = struct.Struct("=HH")
I32, U32, U64 = struct.Struct("=i"), struct.Struct("=I"), struct.Struct("=Q")
HEAD = NLMSG.size + TCMSG.size  # where a tc message's attributes start
TC_HEAD = struct.Struct("=IHHIIBxxxiIII")  # nlmsghdr and tcmsg in one

MSG_TRUNC = int(socket.MSG_TRUNC)

Message = tuple[bytes, int, int]  # (datagram, offset of the message, its length)


def deadline_of(ctx: Any, default: float = 20.0) -> float:
    """When an operation must be done by (time.monotonic()): its context's timeout from now, else ``default``
    seconds from now (every operation ends)."""
    timeout = getattr(ctx, "timeout", None)
    if isinstance(timeout, int | float) and 0 < timeout < 1e6:
        return time.monotonic() + timeout
    return time.monotonic() + default


def attrs(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """The netlink attributes in ``data[start:end]``: {type: (payload start, payload end)}, the first of each."""
    out: dict[int, tuple[int, int]] = {}
    while start + NLA.size <= end:
        length, kind = NLA.unpack_from(data, start)
        if length < NLA.size or start + length > end:
            break
        out.setdefault(kind & NLA_TYPE_MASK, (start + NLA.size, start + length))
        start += (length + 3) & ~3
    return out


def text_attr(data: bytes, span: tuple[int, int] | None) -> str | None:
    return None if span is None else data[span[0]:span[1]].split(b"\0", 1)[0].decode(errors="replace")


def int_attr(data: bytes, span: tuple[int, int] | None, fmt: struct.Struct) -> int | None:
    if span is None or span[1] - span[0] < fmt.size:
        return None
    return int(fmt.unpack_from(data, span[0])[0])


def tc_options(msg: Message, kind: str) -> tuple[bytes, dict[int, tuple[int, int]]] | None:
    """A tc message's TCA_OPTIONS attributes if its TCA_KIND is ``kind``."""
    data, off, length = msg
    top = attrs(data, off + HEAD, off + length)
    if text_attr(data, top.get(TCA_KIND)) != kind or TCA_OPTIONS not in top:
        return None
    return data, attrs(data, *top[TCA_OPTIONS])


class Netlink:
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
        self.sock.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | flags, self.seq, 0) + body)
        return self.seq

    def _recv(self) -> bytes:
        data, _anc, msg_flags, _addr = self.sock.recvmsg(RECV_BUFFER)
        if msg_flags & MSG_TRUNC:
            raise OSError(errno.EMSGSIZE, "netlink answer larger than the receive buffer")
        return data

    def _end(self, data: bytes, off: int, length: int) -> None:
        """NLMSG_DONE or NLMSG_ERROR: the request is answered; an error code raises NetlinkError."""
        self.clean = True
        code = -(int_attr(data, (off + NLMSG.size, off + length), I32) or 0)
        if code > 0:
            raise NetlinkError(code)

    def get(self, kind: int, body: bytes, flags: int = 0) -> Message | None:
        """The one message answering a request (None if it was only acknowledged, as NLM_F_ACK asks)."""
        seq = self._send(kind, flags, body)
        while True:
            data = self._recv()
            off = 0
            while off + NLMSG.size <= len(data):
                length, mtype, mflags, mseq, _pid = NLMSG.unpack_from(data, off)
                if length < NLMSG.size or off + length > len(data):
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
        seq = self._send(kind, NLM_F_DUMP, TCMSG.pack(0, index, 0, parent, 0))
        out = []
        head, tc_head = NLMSG.unpack_from, TC_HEAD.unpack_from
        while True:
            data = self._recv()
            size, off = len(data), 0
            while off + NLMSG.size <= size:
                if off + HEAD <= size:
                    length, mtype, _flags, mseq, _pid, _fam, ifi, handle, mparent, _info = tc_head(data, off)
                else:
                    (length, mtype, _flags, mseq, _pid), ifi = head(data, off), None
                if length < NLMSG.size or off + length > size:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                if mseq == seq:
                    if mtype == NLMSG_DONE or mtype == NLMSG_ERROR:
                        self._end(data, off, length)
                        return out
                    if ifi == index and length >= HEAD:
                        out.append((handle, mparent, (data, off, length)))
                off += (length + 3) & ~3

    def link_index(self, ifname: str) -> int | None:
        name = ifname.encode() + b"\0"
        attr = NLA.pack(NLA.size + len(name), IFLA_IFNAME) + name
        try:
            msg = self.get(RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0) + attr + b"\0" * (-len(attr) % 4))
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        if msg is None:
            return None
        data, off, _length = msg
        return int(IFINFO.unpack_from(data, off + NLMSG.size)[2])


def netlink_socket(netns: str) -> socket.socket:
    """An rtnetlink socket in namespace ``netns`` (in /var/run/netns), made by a thread that enters it and ends."""
    return _netns_socket(netns)[0]


def _netns_socket(netns: str, protocol: int = NETLINK_ROUTE) -> tuple[socket.socket, tuple[int, int]]:
    """:func:`netlink_socket` (of ``protocol``), and the (st_dev, st_ino) of the namespace it is bound in."""
    sock, ident = in_netns(netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, protocol))
    _buffers(sock)
    return sock, ident


T = TypeVar("T")


def in_netns(netns: str, work: Callable[[], T]) -> tuple[T, tuple[int, int]]:
    """``work()``'s result as done in namespace ``netns`` (in /var/run/netns), and the namespace's (st_dev, st_ino):
    done by a thread that enters the namespace and ends (``setns`` moves only the calling thread; a socket made
    there stays bound to it, a file of /proc/sys/net opened there is the namespace's)."""
    result: list[Any] = []

    def run() -> None:
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
            result.append((work(), (st.st_dev, st.st_ino)))
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    t = threading.Thread(target=run, name=f"tenure-tc-setns-{netns}", daemon=True)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


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


class TcWatch:
    """A namespace's link and tc notifications (RTMGRP_LINK | RTMGRP_TC), or its nftables notifications
    (NFNLGRP_NFTABLES on a netfilter socket), only counted.

    :meth:`poll` reads what arrived and returns an epoch that moved if anything
    did: a qdisc, class, filter or link (or a table, chain, rule or set) added, changed or deleted anywhere in the
    namespace, or notifications lost (ENOBUFS). The kernel queues a notification
    before the change's own request returns, so an epoch unchanged since a dump
    started means nothing changed since.
    """

    def __init__(self, sock: socket.socket, ident: tuple[int, int] | None,
                 groups: int = RTMGRP_LINK | RTMGRP_TC) -> None:
        self.sock = sock
        self.ident = ident
        self.epoch = 0
        self.broken = False
        self.last_used = time.monotonic()
        self._lock = threading.Lock()
        sock.bind((0, groups))
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


class Sockets:
    """rtnetlink sockets by namespace: idle ones lent to one operation at a time, and one :class:`TcWatch` each
    (made with ``protocol`` and ``groups``: ``Sockets(NETLINK_NETFILTER, NFTABLES_GROUPS)`` only watches nftables).

    A socket holds its namespace alive, so each use checks what the name refers
    to now (a deleted namespace is Absent and its sockets are closed at once, a
    re-created one gets new sockets), and sockets idle for IDLE_SOCKET_SECONDS
    are closed by a timer thread that runs only while there are any. A socket
    whose answer was not read to the end (an exception mid-read) is closed, never
    lent again.
    """

    def __init__(self, protocol: int = NETLINK_ROUTE, groups: int = RTMGRP_LINK | RTMGRP_TC) -> None:
        self.protocol = protocol
        self.groups = groups
        self._lock = threading.Lock()
        self._idle: dict[str, list[Netlink]] = {}  # by netns name ("": the agent's own)
        self._watches: dict[str, TcWatch] = {}
        self._making = threading.Lock()  # one watch made at a time (concurrent first uses would each make one)
        self._timer: threading.Timer | None = None

    @contextmanager
    def lend(self, netns: str | None) -> Iterator[Netlink]:
        key = netns or ""
        try:
            ident = _netns_ident(netns) if netns is not None else None
        except Absent:
            self._drop(key)
            raise
        nl = self._take(key, ident)
        if nl is None:
            nl = Netlink(*self._open(netns))
        try:
            yield nl
        finally:
            if nl.clean and nl.ident == ident:
                self._give(key, nl)
            else:
                nl.close()

    def watch(self, netns: str | None, ident: tuple[int, int] | None) -> TcWatch | None:
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
                watch = TcWatch(sock, made_in, self.groups)
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

    def _watch(self, key: str, ident: tuple[int, int] | None) -> TcWatch | None:
        with self._lock:
            watch = self._watches.get(key)
        return watch if watch is not None and watch.ident == ident and not watch.broken else None

    def _open(self, netns: str | None) -> tuple[socket.socket, tuple[int, int] | None]:
        if netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, self.protocol)
            _buffers(sock)
            return sock, None
        try:
            return _netns_socket(netns, self.protocol)
        except FileNotFoundError:
            raise Absent(f"network namespace {netns} does not exist") from None

    def _take(self, key: str, ident: tuple[int, int] | None) -> Netlink | None:
        with self._lock:
            idle = self._idle.get(key, [])
            stale = [nl for nl in idle if nl.ident != ident]  # the name now refers to another namespace
            idle[:] = [nl for nl in idle if nl.ident == ident]
            nl = idle.pop() if idle else None
        for s in stale:
            s.close()
        return nl

    def _give(self, key: str, nl: Netlink) -> None:
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
            closing: list[Netlink | TcWatch] = list(self._idle.pop(key, []))
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
        closing: list[Netlink | TcWatch] = []
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
