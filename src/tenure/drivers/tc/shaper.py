"""The handler: ``Shaper``, one leg's start, reload, monitor and stop under its device's lock."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError

from tenure.domain.units import format_rate
from tenure.drivers.tc import nft, steer
from tenure.drivers.tc.netlink import Absent, Netlink, Sockets, deadline_of, held
from tenure.drivers.tc.nft import NftError
from tenure.drivers.tc.params import (
    ACTIONS,
    DEFAULT_HANDLE,
    NETNS_PARAMETER,
    PARENT_HANDLE,
    Invalid,
    Leg,
    parse_params,
)
from tenure.drivers.tc.wire import MIN_RATE_BYTES, OLD_LAYOUT, Flight, U32Node, View, Wire, iproute, read_view

if TYPE_CHECKING:
    from tenure.drivers.pydriver import HandlerContext

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7

Result = int | tuple[int, str]


META_DATA = f"""<?xml version="1.0"?>
<resource-agent name="Shaper" version="1.1">
  <version>1.1</version>
  <longdesc lang="en">One bandwidth reservation leg on a host's egress, guaranteed its rate: the device's tree is the
root qdisc htb 1: default fffe, a parent class 1:1 at the interface's capacity, a default class 1:fffe for all
unreserved traffic at what the legs leave (up to the capacity), and one class 1:CLASSID per leg at its rate (its
ceil the rate, or the capacity with borrow). The leg's flow (IPv4, IPv6 or both) is classified into its class, and
marked with its DSCP, by rules in the nftables table inet tenure, which also re-marks other traffic carrying that
DSCP to best effort. Changing one leg touches its class, its rules and the default class's rate only. Idempotent: a
start that finds everything in place changes nothing. A monitor that finds the leg well outputs what is on the wire
(at most a second old): classid, rate and ceil (bit/s), sent_bytes, sent_packets, dropped, overlimits and backlog
(the class's counters), classified_packets and classified_bytes (its rules'), and remarked_packets (packets others
marked with its DSCP that left as best effort). A steered leg (via) also routes its flow to the next hop by policy
routing (an nftables firewall mark, an ip rule and a routing table of its own), and outputs steered_packets and
steered_bytes.</longdesc>
  <shortdesc lang="en">Egress bandwidth shaping with tc (HTB)</shortdesc>
  <parameters>
    <parameter name="device" unique="0" reloadable="0" required="1">
      <longdesc lang="en">Egress network interface.</longdesc>
      <shortdesc lang="en">Egress device</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="rate" unique="0" reloadable="1" required="1">
      <longdesc lang="en">Rate in bit/s (layer 2): an integer, or with a suffix K, M or G (10^3, 10^6, 10^9), as
50M. From 64 to 10^12.</longdesc>
      <shortdesc lang="en">Rate (bit/s)</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="classid" unique="1" reloadable="0" required="1">
      <longdesc lang="en">HTB class minor number, 2 to 65533 (decimal), from the agent's local allocator; the class
is 1:CLASSID (printed in hex by tc).</longdesc>
      <shortdesc lang="en">HTB class minor</shortdesc>
      <content type="integer" />
    </parameter>
    <parameter name="dst" unique="0" reloadable="1" required="1">
      <longdesc lang="en">Destination address or network (CIDR, host bits zero), IPv4 or IPv6; or one of each,
IPv4 first, separated by a comma (a dual-stack host).</longdesc>
      <shortdesc lang="en">Destination</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="src" unique="0" reloadable="1" required="0">
      <longdesc lang="en">Source address or network (CIDR, host bits zero), IPv4 or IPv6, or one of each; matched
in the family of the destination it shares.</longdesc>
      <shortdesc lang="en">Source</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="protocol" unique="0" reloadable="1" required="0">
      <longdesc lang="en">tcp, udp, icmp or sctp; required with ports (tcp, udp or sctp).</longdesc>
      <shortdesc lang="en">IP protocol</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="dst_port" unique="0" reloadable="1" required="0">
      <longdesc lang="en">Destination port, 1 to 65535.</longdesc>
      <shortdesc lang="en">Destination port</shortdesc>
      <content type="integer" />
    </parameter>
    <parameter name="src_port" unique="0" reloadable="1" required="0">
      <longdesc lang="en">Source port, 1 to 65535.</longdesc>
      <shortdesc lang="en">Source port</shortdesc>
      <content type="integer" />
    </parameter>
{NETNS_PARAMETER}    <parameter name="capacity" unique="0" reloadable="1" required="0">
      <longdesc lang="en">The interface's capacity in bit/s (as rate): the parent class 1:1's rate, which the legs and
the default class share. Required when the device has no tree yet; otherwise the tree's is kept unless given.</longdesc>
      <shortdesc lang="en">Interface capacity (bit/s)</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="borrow" unique="0" reloadable="1" required="0">
      <longdesc lang="en">yes: the leg may use idle capacity above its rate (ceil = capacity); no (the default): it is
held to its rate.</longdesc>
      <shortdesc lang="en">Borrow idle capacity</shortdesc>
      <content type="string" default="no" />
    </parameter>
    <parameter name="dscp" unique="0" reloadable="1" required="0">
      <longdesc lang="en">Match only the flow's packets that arrive with this DSCP (0 to 63).</longdesc>
      <shortdesc lang="en">DSCP to match</shortdesc>
      <content type="integer" />
    </parameter>
    <parameter name="mark" unique="0" reloadable="1" required="0">
      <longdesc lang="en">The DSCP (0 to 63) the flow's packets leave with; other packets leaving this host with it
are re-marked best effort (0). Without it, packets keep their DSCP.</longdesc>
      <shortdesc lang="en">DSCP to mark with</shortdesc>
      <content type="integer" />
    </parameter>
    <parameter name="via" unique="0" reloadable="0" required="0">
      <longdesc lang="en">Steering: the next hop (an address on the device's link, one per family of dst) the flow is
routed to instead of the main table's route: the first middlebox, or the next one. Needs src.</longdesc>
      <shortdesc lang="en">Next hop</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="forward" unique="0" reloadable="0" required="0">
      <longdesc lang="en">yes on a middlebox: the flow arrives from elsewhere and this host forwards it (the start
fails, saying so, if forwarding is off on the device); no (the default): this host sends it.</longdesc>
      <shortdesc lang="en">Forwarded here</shortdesc>
      <content type="string" default="no" />
    </parameter>
    <parameter name="burst" unique="0" reloadable="1" required="0">
      <longdesc lang="en">Burst and cburst in bytes (an integer); default 10 ms at the rate, at least 1600.</longdesc>
      <shortdesc lang="en">Burst (bytes)</shortdesc>
      <content type="integer" />
    </parameter>
  </parameters>
{ACTIONS}</resource-agent>
"""


_GUARD = threading.Lock()
_LOCKS: dict[tuple[str, str], threading.Lock] = {}  # by (netns, device)
_FLIGHTS: dict[tuple[str, str], tuple[tuple[int, int] | None, Flight[View]]] = {}  # by (netns, device), with its id
_SOCKETS = Sockets()


def _device_lock(leg: Leg) -> threading.Lock:
    with _GUARD:
        return _LOCKS.setdefault((leg.netns or "", leg.device), threading.Lock())


def _held(leg: Leg, deadline: float | None) -> contextlib.AbstractContextManager[None]:
    """The device's lock, waited for until the operation's deadline."""
    return held(_device_lock(leg), deadline, f"device {leg.where}")


def _flight(leg: Leg, nl: Netlink) -> Flight[View]:
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
    def _device(self, leg: Leg, deadline: float | None, *, monitor: bool = False) -> Iterator[Wire]:
        """The device's Wire over a lent socket: for start and stop with the device's lock held and a fresh View,
        for monitor (which only reads) without the lock and with a View the watch vouches for (at most
        nft.MAX_AGE old: its counters are the observed state's). Absent, NetlinkError and OSError pass through."""
        with contextlib.ExitStack() as held:
            if not monitor:
                held.enter_context(_held(leg, deadline))
            with _SOCKETS.lend(leg.netns) as nl:
                try:
                    watch = _SOCKETS.watch(leg.netns, nl.ident)
                    view = _flight(leg, nl).view(lambda: read_view(nl, leg.device), deadline, watch,
                                                 fresh=not monitor, max_age=nft.MAX_AGE)
                    wire = Wire(nl, leg, view)
                    try:
                        yield wire
                    finally:
                        wire.close()
                except NetlinkError as exc:
                    if exc.code == errno.ENODEV:  # the device went away under us
                        raise Absent(f"device {leg.where} does not exist") from exc
                    raise

    def meta_data(self) -> str:
        return META_DATA

    def start(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        try:
            leg = parse_params(params)
        except Invalid as exc:
            return OCF_ERR_CONFIGURED, str(exc)
        deadline = deadline_of(ctx)
        try:
            with self._device(leg, deadline) as wire:
                result = self._ensure(wire, ctx, deadline)
        except Absent as exc:
            return OCF_ERR_GENERIC, f"{exc}; cannot shape on it"
        except (NftError, NetlinkError, OSError) as exc:
            return _failed(leg, exc)
        if result == OCF_SUCCESS and hasattr(ctx, "set_output"):
            ctx.set_output("classid", leg.classid_text)
        return result

    def reload(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        """A changed rate, burst or match applied in place: start's reconciliation."""
        return self.start(params, ctx)

    def _ensure(self, wire: Wire, ctx: HandlerContext, deadline: float | None) -> Result:
        """The tree (root qdisc, parent class at the capacity, default class; its rate lowered first to what the legs
        leave), then the leg's class, then its nftables rules. Touches nothing that is already as wanted."""
        leg = wire.leg
        owner = wire.ours()
        if owner and owner != OLD_LAYOUT:
            return OCF_ERR_GENERIC, owner
        if leg.forward and (why := steer.forwarding_problem(leg)) is not None:
            return OCF_ERR_GENERIC, why
        capacity = leg.capacity_bytes or (wire.capacity() if owner is None else None)
        if capacity is None:  # checked before anything changes (an old layout is left as it is)
            return OCF_ERR_CONFIGURED, f"parameter 'capacity' is required to build the tree on {leg.where}"
        if owner == OLD_LAYOUT:  # Tenure's layout before the tree: made again (its other legs' monitors see them gone)
            wire.del_root()
            ctx.log(f"removed the root qdisc htb 1: default 0 on {leg.where} (the layout before the guarantee)")
            owner = ""
        others = wire.reserved(without=leg.handle) if owner is None else 0
        # Each rate is rounded up to whole bytes on its own: a link booked to the bit may be a byte over per leg.
        if others + leg.rate_bytes > capacity + len(wire.leg_handles() | {leg.handle}):
            return OCF_ERR_GENERIC, (f"the legs on {leg.where} would reserve {_bits(others + leg.rate_bytes)}, over "
                                     f"its capacity {_bits(capacity)}; not changing it")
        default_rate = max(capacity - others - leg.rate_bytes, MIN_RATE_BYTES)
        if owner == "":
            wire.add_root()
            wire.put_tree_class("add-class", PARENT_HANDLE, capacity, capacity)
            wire.put_tree_class("add-class", DEFAULT_HANDLE, default_rate, capacity)
            ctx.log(f"added root qdisc htb 1: default fffe on {leg.where}, class 1:1 at {_bits(capacity)} and the "
                    f"default class 1:fffe at {_bits(default_rate)}")
        else:
            parent = wire.htb_class(PARENT_HANDLE)
            if parent is None or (parent.rate, parent.ceil) != (capacity, capacity):
                wire.put_tree_class("add-class" if parent is None else "change-class", PARENT_HANDLE, capacity,
                                    capacity)
                ctx.log(f"set class 1:1 on {leg.where} to the capacity {_bits(capacity)}")
            self._default(wire, ctx, default_rate, capacity)  # lowered before the leg's class grows

        want = wire.wanted_class(capacity)
        have = wire.get_class() if owner is None else None  # a new root has no classes
        if have is not None and wire.parent_of(leg.handle) != PARENT_HANDLE:  # a class cannot move: made anew
            node = wire.node()
            if node is not None:
                self._del_node(wire, node, ctx)
            wire.del_class()
            have = None
        if have is None:
            wire.put_class("add-class", capacity)
            ctx.log(f"added class {leg.classid_text} {want.describe()}")
        elif have != want:
            wire.put_class("change-class", capacity)
            ctx.log(f"changed class {leg.classid_text} from {have.describe()} to {want.describe()}")

        for change in steer.ensure(wire.ipr, leg, wire.index) if leg.via else ():  # (its table before its mark)
            ctx.log(f"{change} in {leg.netns or 'the host namespace'}")
        for change in nft.ensure(leg, deadline):
            ctx.log(f"{change} in {leg.netns or 'the host namespace'}")
        old = wire.node()  # the u32 filter a leg had before nftables classified it: after the rules, no gap
        if old is not None:  # (HTB takes the packet's priority before its filters)
            self._del_node(wire, old, ctx)
        return OCF_SUCCESS

    @staticmethod
    def _default(wire: Wire, ctx: HandlerContext, rate: int, capacity: int) -> None:
        """The default class at ``rate`` (what the legs leave), up to the capacity; made if missing."""
        have = wire.htb_class(DEFAULT_HANDLE)
        if have is None or (have.rate, have.ceil) != (rate, capacity):
            wire.put_tree_class("add-class" if have is None else "change-class", DEFAULT_HANDLE, rate, capacity)
            ctx.log(f"set the default class 1:fffe on {wire.leg.where} to {_bits(rate)} (ceil {_bits(capacity)})")

    def monitor(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        try:
            leg = parse_params(params)
        except Invalid as exc:
            return OCF_ERR_CONFIGURED, str(exc)
        deadline = deadline_of(ctx)
        try:
            with self._device(leg, deadline, monitor=True) as wire:
                if wire.ours() is not None:
                    return OCF_NOT_RUNNING  # no tree of ours (or the layout before it), so no class of ours
                have = wire.get_class()
                if have is None:
                    return OCF_NOT_RUNNING
                if wire.parent_of(leg.handle) != PARENT_HANDLE:
                    return OCF_ERR_GENERIC, f"class {leg.classid_text} on {leg.where} is not under the class 1:1"
                if wire.htb_class(DEFAULT_HANDLE) is None:
                    return OCF_ERR_GENERIC, f"the default class 1:fffe on {leg.where} is missing"
                # Its own class against its own parameters: the tree's capacity is the last start's (legs that
                # disagree about it, until the server re-syncs them, do not make each other fail).
                want = wire.wanted_class(leg.capacity_bytes or wire.capacity())
                stats = wire.stats()
                if have != want:
                    burst = "" if (have.rate, have.ceil) != (want.rate, want.ceil) else " (burst differs)"
                    return OCF_ERR_GENERIC, (f"class {leg.classid_text} on {leg.where} has {have.describe()}{burst}, "
                                             f"expected {want.describe()}")
                if leg.via and (why := steer.problem(wire.ipr, leg, wire.index)) is not None:
                    return OCF_ERR_GENERIC, f"{why} ({leg.where})"
                if leg.forward and (why := steer.forwarding_problem(leg)) is not None:
                    return OCF_ERR_GENERIC, why
            table = nft.reading(leg.netns, deadline, fresh=False)
            problem = nft.problem(leg, table)
            if problem is not None:
                return OCF_ERR_GENERIC, f"{problem} ({leg.where})"
            if hasattr(ctx, "set_output"):  # the observed state: what is on the wire, as of at most nft.MAX_AGE ago
                observed = {"classid": leg.classid_text, "rate": str(have.rate * 8), "ceil": str(have.ceil * 8),
                            **(stats.outputs() if stats is not None else {}),
                            **{k: str(v) for k, v in nft.counters(leg, table).items()}}
                for key, value in observed.items():
                    ctx.set_output(key, value)
        except Absent:
            return OCF_NOT_RUNNING
        except (NftError, NetlinkError, OSError) as exc:
            return _failed(leg, exc)
        return OCF_SUCCESS

    def stop(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        """Remove the leg's rules (and any old u32 filter) and class, and the root qdisc after the last class; absent
        is stopped.

        Only the leg's identity (device, classid, netns) is checked: whatever the
        rest says, stopping must be able to remove what a start made.
        """
        try:
            leg = parse_params(params, identity_only=True)
        except Invalid as exc:
            return OCF_ERR_CONFIGURED, str(exc)
        deadline = deadline_of(ctx)
        where = leg.netns or "the host namespace"
        try:
            with self._device(leg, deadline) as wire:
                for change in nft.remove(leg, deadline):  # first: no packet is classified into a class going away
                    ctx.log(f"{change} in {where}")
                for change in steer.remove(wire.ipr, leg) if leg.via else ():  # (not marked any more: unrouted)
                    ctx.log(f"{change} in {where}")
                owner = wire.ours()
                if owner not in (None, OLD_LAYOUT):
                    return OCF_SUCCESS  # no root qdisc, or a foreign one: nothing of ours can be under it
                node = wire.node()
                if node is not None:  # at our place, whatever its flowid
                    self._del_node(wire, node, ctx)
                if owner is None and leg.handle in (PARENT_HANDLE, DEFAULT_HANDLE):
                    return OCF_SUCCESS  # an old agent's leg 1:fffe: on the tree that is the default class, not it
                if leg.handle in wire.class_handles():
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
                if not wire.leg_handles() - {leg.handle}:
                    _absent_ok(wire.del_root, gone=(errno.ENOENT, errno.EINVAL))
                    ctx.log(f"deleted root qdisc htb 1: on {leg.where} (no leg left)")
                elif owner is None and (capacity := wire.capacity()) is not None:  # its rate goes back to the rest
                    self._default(wire, ctx, max(capacity - wire.reserved(without=leg.handle), MIN_RATE_BYTES),
                                  capacity)
        except Absent:  # the device (or the namespace) is gone; its rules, in a namespace still there, go too
            try:
                with _held(leg, deadline):
                    for change in nft.remove(leg, deadline):
                        ctx.log(f"{change} in {where}")
                    if leg.via:  # (the kernel took the routes with the device, not the ip rules)
                        ipr = iproute(leg.netns)
                        try:
                            for change in steer.remove(ipr, leg):
                                ctx.log(f"{change} in {where}")
                        finally:
                            ipr.close()
            except Absent:
                pass
            except (NftError, NetlinkError, OSError) as exc:
                return _failed(leg, exc)
            return OCF_SUCCESS
        except (NftError, NetlinkError, OSError) as exc:
            return _failed(leg, exc)
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


def _bits(rate_bytes: int) -> str:
    return f"{format_rate(rate_bytes * 8)}bit/s"


def _failed(leg: Leg, exc: BaseException) -> Result:
    """OCF_ERR_GENERIC with what failed: nftables, the deadline, or tc (netlink, a socket)."""
    if isinstance(exc, NftError):
        return OCF_ERR_GENERIC, f"nftables for {leg.where}: {exc}"
    if isinstance(exc, TimeoutError):
        return OCF_ERR_GENERIC, f"{leg.where}: timed out: {exc}"
    return OCF_ERR_GENERIC, f"tc on {leg.where}: {_error(exc)}"


def _error(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"netlink error {exc.code} ({os.strerror(exc.code)})"
    return f"{type(exc).__name__}: {exc}"
