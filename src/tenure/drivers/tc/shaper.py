"""The handler: ``Shaper``, one leg's start, reload, monitor and stop under its device's lock."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError

from tenure.drivers.tc.netlink import Absent, Netlink, Sockets
from tenure.drivers.tc.params import Invalid, Leg, bytes_of, parse_params
from tenure.drivers.tc.wire import Flight, U32Node, Wire, node_problem, read_view

if TYPE_CHECKING:
    from tenure.drivers.pydriver import HandlerContext

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7

Result = int | tuple[int, str]


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


def _deadline(ctx: HandlerContext) -> float | None:
    timeout = getattr(ctx, "timeout", None)
    if isinstance(timeout, int | float) and 0 < timeout < 1e6:
        return time.monotonic() + timeout
    return None


_GUARD = threading.Lock()
_LOCKS: dict[tuple[str, str], threading.Lock] = {}  # by (netns, device)
_FLIGHTS: dict[tuple[str, str], tuple[tuple[int, int] | None, Flight]] = {}  # by (netns, device), with the netns id
_SOCKETS = Sockets()


def _device_lock(leg: Leg) -> threading.Lock:
    with _GUARD:
        return _LOCKS.setdefault((leg.netns or "", leg.device), threading.Lock())


def _flight(leg: Leg, nl: Netlink) -> Flight:
    """The device's readings in the namespace the socket is in (a re-created namespace starts anew)."""
    key = (leg.netns or "", leg.device)
    with _GUARD:
        ident, flight = _FLIGHTS.get(key, (None, None))
        if flight is None or ident != nl.ident:
            flight = Flight()
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
                    view = _flight(leg, nl).view(lambda: read_view(nl, leg.device), deadline, watch,
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
        problem = node_problem(leg, node)
        if node is None:
            wire.put_node("add-filter", leg.node)
            ctx.log(f"added filter pref {leg.prio} node {leg.node:x} -> {leg.classid_text}")
        elif problem is not None:
            if node.words is not None and bytes_of(node.words) == leg.match_bytes():
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
                problem = node_problem(leg, wire.node())
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
