"""Reservations on the dataplane: the shapers a bandwidth reservation needs while it is active (Tegu's agent).

While a reservation is ``active``, every leg that leaves a host gets an
instance of type ``bandwidth`` on that host: the host's agent shapes the leg's
flow on its egress (``tenure.drivers.tc:Shaper``: an HTB class at the leg's
rate, and nftables rules classifying and marking the flow). When the reservation expires, is
cancelled or is degraded, its shapers are deleted; a modification that
changes a rate modifies them. All of this happens inside the reservation's own
command (:meth:`InstanceService.sync_owned`), so the reservation's state and
its shapers commit together.

Each shaper carries the capacity of the leg's first link (its source host's
link, in the leg's direction): the tree on that interface gives every leg its
rate and what is left to unreserved traffic (docs/dataplane.md). The
reservation's ``burst`` (``cap`` or ``borrow``) says whether a leg may use
idle capacity above its rate. Each leg carries the reservation's ``mark`` (the DSCP its packets leave with) and
its ``dscp`` match.

A steering reservation's legs are its segments (source -> middlebox -> ... -> destination), each shaped at its
source, a middlebox included (its agent runs the shaper); each matches the flow end to end, and a segment ending
at a middlebox routes the flow to it (``via``; :func:`_steered`).

The flow is matched by the endpoints' addresses, read from the topology's
node labels: ``address`` (required on the destination, used on the source
when present) and ``interface`` (the source host's egress device). A node
without them takes what its host's agent reported when it registered
(``capabilities.network``: per address family, the destination's address in a network the source has an
interface in, else its default route's interface's; the source's interface on that network); an explicit label
wins. A dual-stack pair gets both families matched (the shaper's ``dst`` is an IPv4 and an IPv6 address).
Without an interface from either, the agent's instance type properties must name the ``device``. A destination
without any address makes a shaper that is created
``failed`` with that reason, so the problem shows on the reservation's host
instead of passing silently. When an agent registers (or reports new
addresses), the shapers of the active reservations on its host follow.
"""

from __future__ import annotations

import hashlib
import ipaddress
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from tenure.domain.reservation import ACTIVE, Reservation
from tenure.domain.topology import Node, Topology
from tenure.services.instances import InstanceService
from tenure.store.writer import Batch

SHAPER_TYPE = "bandwidth"
MIRROR_TYPE = "mirror"
SHAPED_KINDS = frozenset({"bandwidth", "oneway", "steering"})
MAX_SHAPED = 10**12  # bit/s: HTB's rates go to 1 Tbit/s; a faster link is shaped as if it were that


Network = Callable[[str], Mapping[str, Any] | None]  # host -> what its agent reported (agent/netinfo.py)
Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _no_network(host: str) -> None:
    return None


def _reported(net: Mapping[str, Any] | None, taken: Mapping[str, str] | None = None,
              node: str | None = None) -> list[tuple[str, Address]]:
    """(interface, address with its network) pairs an agent reported (as ``AgentService.network`` gives
    them: well-formed), its default route's interface first.

    Left out: addresses no host can be reached at (loopback, link-local, multicast, unspecified), and addresses
    ``taken`` by another node than ``node`` (its ``address`` label: an agent vouches for its own host only)."""
    if not net:
        return []
    out = []
    for iface in net["interfaces"]:
        for text in iface["addresses"]:
            addr = ipaddress.ip_interface(text)
            ip = addr.ip
            if (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
                    or (taken or {}).get(str(ip), node) != node):
                continue
            out.append((iface["name"], addr))
    default = net.get("default")
    return sorted(out, key=lambda pair: pair[0] != default)  # stable: the agent's (the kernel's) order within


def _labelled(topology: Topology) -> dict[str, str]:
    """Address label -> node, once per topology (topologies are immutable)."""
    found = _LABELLED.get(topology)
    if found is None:
        found = {n.labels["address"]: n.id for n in topology.nodes.values() if n.labels.get("address")}
        _LABELLED[topology] = found
    return found


_LABELLED: weakref.WeakKeyDictionary[Topology, dict[str, str]] = weakref.WeakKeyDictionary()


def endpoints(src: Node, dst: Node, topology: Topology, network: Network) -> tuple[list[str], str | None,
                                                                                 list[str], str | None]:
    """(dst addresses, src interface, src addresses, why none) of a leg from ``src`` to ``dst``, at most one address
    of each family: the topology's labels, else what the hosts' agents reported.

    Reported addresses pair up per family: the destination's address in a network the source has an interface in,
    else its first (its default route's) address of the family. The interface is the labelled one, else the one
    whose network holds the destination (IPv4's first), else the default route's. Only families the flow can take
    from that interface stay: one whose destination another interface of the source holds leaves by that interface
    and is dropped, as is one the interface has no address of (when the agent reported them), and a labelled source
    address keeps only its own family. The source addresses are the interface's of those families. A labelled
    interface the agent did not report gets no reported source address (rather than another interface's)."""
    taken = _labelled(topology)
    mine = _reported(network(src.id), taken, src.id)
    device = src.labels.get("interface") or None
    src_label = src.labels.get("address") or None
    dst_label = dst.labels.get("address") or None
    families = {4, 6}
    if src_label is not None and _version(src_label) is not None:
        families = {_version(src_label)}
    chosen: dict[int, str] = {}
    if dst_label is not None:
        version = _version(dst_label)
        if version is not None and version not in families:
            return [], device, [], (f"node {src.id!r}'s address {src_label} and node {dst.id!r}'s {dst_label} are of "
                                    f"different families: the flow between them cannot be matched")
        chosen[version or 4] = dst_label
    else:
        theirs = [addr for _, addr in _reported(network(dst.id), taken, dst.id)]
        for version in (4, 6):
            of = [d for d in theirs if d.version == version]
            if version in families and of:
                shared = [d for d in of for name, s in mine if d.ip in s.network and device in (None, name)]
                chosen[version] = str((shared or of)[0].ip)
    peers = {v: ipaddress.ip_network(a, strict=False) for v, a in chosen.items() if _version(a) is not None}
    if device is None and mine:
        device = next((name for peer in peers.values() for name, s in mine if _within(peer, s)), mine[0][0])
    if mine and device in {name for name, _ in mine}:
        for version, peer in list(peers.items()):
            holders = {name for name, s in mine if _within(peer, s)}
            has_family = any(name == device and s.version == version for name, s in mine)
            if (holders and device not in holders) or not has_family:
                del chosen[version]  # the flow of this family leaves by another interface, or cannot leave by this one
    if src_label is not None:
        src_addrs = [src_label]
    else:
        src_addrs = []
        for version in chosen:
            found = next((str(s.ip) for name, s in mine if name == device and s.version == version), None)
            if found is not None:
                src_addrs.append(found)
    why = None if chosen else (f"node {dst.id!r} has no 'address' label and its agent reported no address of its own "
                               f"that {src.id!r} can reach from {device or 'its interfaces'}: the flow to it cannot be "
                               f"matched")
    return [chosen[v] for v in sorted(chosen)], device, src_addrs, why


def _version(text: str) -> int | None:
    """The address family (4 or 6) of an address or network, or None if it is neither."""
    try:
        return ipaddress.ip_network(text, strict=False).version
    except ValueError:
        return None


def _within(peer: ipaddress.IPv4Network | ipaddress.IPv6Network, mine: Address) -> bool:
    """Whether ``peer`` lies in the network of an address of ours (of its family)."""
    if peer.version == 4 and isinstance(mine, ipaddress.IPv4Interface):
        return peer.subnet_of(mine.network)
    if peer.version == 6 and isinstance(mine, ipaddress.IPv6Interface):
        return peer.subnet_of(mine.network)
    return False


def _steered(res: Reservation, here: str, there: str, topology: Topology,
             network: Network) -> tuple[list[str], str | None, list[str], str | None, dict[str, str]]:
    """A steering segment from ``here`` to ``there``: (the flow's dst addresses, ``here``'s interface toward
    ``there``, the flow's src addresses, why none, and the steering parameters). The flow is the reservation's, end to
    end (its source's addresses to its destination's), whichever segment, in the families in which every middlebox
    can be reached from the stop before it (a family one stop could not route on would go straight to the
    destination from there); the segment adds where it leaves ``here`` and, unless ``there`` is the destination, the
    next hop it is routed to (``via``, one address per family); a middlebox forwards it (``forward``)."""
    nodes = topology.nodes
    dst_addrs, _, src_addrs, why = endpoints(nodes[res.src], nodes[res.dst], topology, network)
    _, device, _, _ = endpoints(nodes[here], nodes[there], topology, network)
    more = {"forward": "yes"} if here != res.src else {}
    if why is None and not src_addrs:
        why = f"node {res.src!r} has no address its agent reported or its labels name: its flow cannot be steered"
    if why is None:  # the families every middlebox can be reached in, each from the stop before it
        stops = (res.src, *res.via, res.dst)
        families = {_version(d) for d in dst_addrs}
        for a, b in zip(stops[:-2], stops[1:-1], strict=True):
            families &= {_version(r) for r in _next_hops(a, b, topology, network)}
            if not families:
                why = (f"middlebox {b!r} has no address of the flow's family on a network {a!r} has an interface in: "
                       f"the flow cannot be steered to it")
                break
        dst_addrs = [d for d in dst_addrs if _version(d) in families]
        src_addrs = [d for d in src_addrs if _version(d) in families]
    if why is None and there != res.dst:
        by_family = {_version(a): a for a in _next_hops(here, there, topology, network)}
        more["via"] = ",".join(by_family[_version(a)] for a in dst_addrs)
    return (dst_addrs if why is None else []), device, src_addrs, why, more


def _next_hops(here: str, there: str, topology: Topology, network: Network) -> list[str]:
    """``there``'s addresses (at most one per family) that ``here`` can route to as a next hop: on a network of its
    interface toward ``there`` (when its agent reported its networks; a labelled address is taken as it is)."""
    nodes = topology.nodes
    reached, device, _, _ = endpoints(nodes[here], nodes[there], topology, network)
    hops = []
    for text in reached:
        try:
            hops.append(ipaddress.ip_address(text))
        except ValueError:  # a label naming a network: no next hop
            continue
    mine = [s for name, s in _reported(network(here), _labelled(topology), here) if device in (None, name)]
    return [str(h) for h in hops if not mine or any(h in s.network for s in mine)]


def shaper_specs(res: Reservation, topology: Topology, network: Network = _no_network) -> dict[str, dict[str, Any]]:
    """Leg name -> the shaper instance spec, for an active reservation; {} otherwise. Addresses and interfaces
    come from the topology's labels, else from what the hosts' agents reported (``network``)."""
    if res.state != ACTIVE or res.kind not in SHAPED_KINDS:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for leg in res.legs:
        src, dst = topology.nodes.get(leg.src), topology.nodes.get(leg.dst)
        if leg.rate <= 0 or src is None or dst is None or not (
                src.kind == "host" or (src.kind == "middlebox" and res.kind == "steering")):
            continue
        params: dict[str, Any] = {"rate": leg.rate, "borrow": "yes" if res.burst == "borrow" else "no"}
        first = topology.links.get(leg.hops[0][0]) if leg.hops else None
        if first is not None:  # the source host's link: the capacity its interface's tree shares out
            params["capacity"] = min(first.capacity(leg.hops[0][1]), MAX_SHAPED)
        failed = None
        if res.kind == "steering":
            dst_addresses, device, src_addresses, why, more = _steered(res, leg.src, leg.dst, topology, network)
            params.update(more)
        else:
            dst_addresses, device, src_addresses, why = endpoints(src, dst, topology, network)
        if dst_addresses:
            params["dst"] = ",".join(dst_addresses)
        else:
            failed = why
        if device:
            params["device"] = device
        if src_addresses:
            params["src"] = ",".join(src_addresses)
        params["mark"] = res.mark
        m = res.match
        if m.dscp is not None and params.get("forward") != "yes":  # (past the source, the flow carries the mark)
            params["dscp"] = m.dscp
        if m.protocol is not None:
            params["protocol"] = m.protocol
        sport, dport = (m.src_port, m.dst_port) if leg.name != "in" else (m.dst_port, m.src_port)
        if sport is not None:
            params["src_port"] = sport
        if dport is not None:
            params["dst_port"] = dport
        spec: dict[str, Any] = {"name": f"{res.id}-{leg.name}", "type": SHAPER_TYPE, "host": src.id,
                                "parameters": params}
        if failed:
            spec["failed"] = failed
        out[leg.name] = spec
    return out


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def mirror_vni(rid: str) -> int:
    """A mirror's VXLAN network identifier (1 to 2^24-1), from its id: the same at both ends and after any restart.
    Two mirrors on one host share one only with odds of 1 in 16.7 million; the second's tunnel then finds the
    first's in its way and fails, saying so (it never takes it over)."""
    return int(hashlib.sha256(rid.encode()).hexdigest()[:6], 16) or 1


def mirror_specs(res: Reservation, topology: Topology, network: Network = _no_network) -> dict[str, dict[str, Any]]:
    """Part name -> instance spec, for an active mirror whose source is a host: ``mirror`` on the source (copies
    into a VXLAN tunnel held to the rate) and ``collector`` on the collector (the tunnel's other end); {} otherwise
    (a switch's port is mirrored by the switch, which has no agent). One address family, IPv4 first, that both
    ends have; without one, both are created failed with the reason."""
    if res.state != ACTIVE or res.kind != "mirror":
        return {}
    src, dst = topology.nodes.get(res.src), topology.nodes.get(res.dst)
    if src is None or dst is None or src.kind != "host":
        return {}
    remote, device, local, why = endpoints(src, dst, topology, network)
    pair = next(((r, loc) for r in remote for loc in local if _version(r) == _version(loc)
                 and _is_address(r) and _is_address(loc)), None)
    vni = mirror_vni(res.id)
    common = {"tunnel": f"tm{vni:06x}", "vni": vni}
    source: dict[str, Any] = {"role": "source", **common, "direction": res.direction, "rate": res.rate_out,
                              "mark": res.mark}
    collector: dict[str, Any] = {"role": "collector", **common}
    if device:
        source["device"] = device
    failed = None
    if pair is not None:
        source.update(local=pair[1], remote=pair[0])
        collector.update(local=pair[0], remote=pair[1])
    else:
        failed = (f"the collector {dst.id!r} cannot be reached by a tunnel from {src.id!r}: "
                  + (why or "they have no address of one family in common"))
    if failed is None and not device:
        failed = f"node {src.id!r} has no 'interface' label and its agent reported none: nothing to mirror"
    if failed is None and dst.kind != "host":
        failed = (f"the collector {dst.id!r} is a {dst.kind}: a mirror's copies go to a host, whose agent ends "
                  f"their tunnel")
    if failed is None and res.port is not None and len(topology.links_of(src.id)) > 1:
        failed = (f"which of {src.id!r}'s interfaces is its link {res.port!r} is not known: on the wire, a mirror of "
                  f"a host with several links copies the host's one interface (label it 'interface')")
    out = {"mirror": {"name": f"{res.id}-mirror", "type": MIRROR_TYPE, "host": src.id, "parameters": source},
           "collector": {"name": f"{res.id}-collector", "type": MIRROR_TYPE, "host": dst.id,
                         "parameters": collector}}
    if failed:
        for spec in out.values():
            spec["failed"] = failed
    return out


def sync_shapers(batch: Batch, res: Reservation, topology: Topology, instances: InstanceService,
                 network: Network = _no_network) -> None:
    """The reservation's instances on the wire as it says now: its legs' shapers, or a mirror's two ends (each kind
    only while its instance type exists)."""
    if res.kind == "mirror":
        if MIRROR_TYPE in instances.types:
            instances.sync_owned(batch, f"reservation:{res.id}", mirror_specs(res, topology, network),
                                 project=res.project)
        return
    if SHAPER_TYPE not in instances.types:
        return
    instances.sync_owned(batch, f"reservation:{res.id}", shaper_specs(res, topology, network), project=res.project)
