"""Reservations on the dataplane: the shapers a bandwidth reservation needs while it is active (Tegu's agent).

While a reservation is ``active``, every leg that leaves a host gets an
instance of type ``bandwidth`` on that host: the host's agent shapes the leg's
flow on its egress (``tenure.drivers.tc:Shaper``: an HTB class at the leg's
rate and a filter matching the flow). When the reservation expires, is
cancelled or is degraded, its shapers are deleted; a modification that
changes a rate modifies them. All of this happens inside the reservation's own
command (:meth:`InstanceService.sync_owned`), so the reservation's state and
its shapers commit together.

Each shaper carries the capacity of the leg's first link (its source host's
link, in the leg's direction): the tree on that interface gives every leg its
rate and what is left to unreserved traffic (docs/dataplane.md). The
reservation's ``burst`` (``cap`` or ``borrow``) says whether a leg may use
idle capacity above its rate.

The flow is matched by the endpoints' addresses, read from the topology's
node labels: ``address`` (required on the destination, used on the source
when present) and ``interface`` (the source host's egress device). A node
without them takes what its host's agent reported when it registered
(``capabilities.network``: the IPv4 address of its default route's interface,
and the interface whose network holds the destination); an explicit label
wins. Without either, the agent's instance type properties must name the
``device``. A destination without any address makes a shaper that is created
``failed`` with that reason, so the problem shows on the reservation's host
instead of passing silently. When an agent registers (or reports new
addresses), the shapers of the active reservations on its host follow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from tenure.domain.reservation import ACTIVE, Reservation
from tenure.domain.topology import Node, Topology
from tenure.services.instances import InstanceService
from tenure.store.writer import Batch

SHAPER_TYPE = "bandwidth"
SHAPED_KINDS = frozenset({"bandwidth", "oneway", "steering"})
MAX_SHAPED = 10**12  # bit/s: HTB's rates go to 1 Tbit/s; a faster link is shaped as if it were that


Network = Callable[[str], Mapping[str, Any] | None]  # host -> what its agent reported (agent/netinfo.py)


def _no_network(host: str) -> None:
    return None


def _reported(net: Mapping[str, Any] | None) -> list[tuple[str, ipaddress.IPv4Interface]]:
    """(interface, IPv4 address with its network) pairs an agent reported, its default route's interface first."""
    if not net:
        return []
    out = []
    for iface in net.get("interfaces") or ():
        if not isinstance(iface, Mapping) or not isinstance(iface.get("name"), str):
            continue
        for text in iface.get("addresses") or ():
            try:
                addr = ipaddress.ip_interface(text)
            except (TypeError, ValueError):
                continue
            if isinstance(addr, ipaddress.IPv4Interface):  # the u32 match is IPv4 (docs/dataplane.md, step 2)
                out.append((iface["name"], addr))
    default = net.get("default")
    return sorted(out, key=lambda pair: pair[0] != default)


def address_of(node: Node, network: Network, interface: str | None = None) -> str | None:
    """The node's address: its ``address`` label, else the IPv4 address its agent reported on ``interface``
    (the one the flow leaves by), else on its default route's interface."""
    if node.labels.get("address"):
        return node.labels["address"]
    found = _reported(network(node.id))
    if not found:
        return None
    on = [addr for name, addr in found if name == interface]
    return str((on or [addr for _, addr in found])[0].ip)


def interface_of(node: Node, toward: str | None, network: Network) -> str | None:
    """The node's egress interface toward ``toward``: its ``interface`` label, else the reported interface
    whose network holds ``toward``, else the default route's (or the only one)."""
    if node.labels.get("interface"):
        return node.labels["interface"]
    found = _reported(network(node.id))
    if toward is not None:
        try:
            peer = ipaddress.ip_address(toward)
        except ValueError:
            peer = None
        for name, addr in found:
            if peer is not None and peer in addr.network:
                return name
    return found[0][0] if found else None


def shaper_specs(res: Reservation, topology: Topology, network: Network = _no_network) -> dict[str, dict[str, Any]]:
    """Leg name -> the shaper instance spec, for an active reservation; {} otherwise. Addresses and interfaces
    come from the topology's labels, else from what the hosts' agents reported (``network``)."""
    if res.state != ACTIVE or res.kind not in SHAPED_KINDS:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for leg in res.legs:
        src, dst = topology.nodes.get(leg.src), topology.nodes.get(leg.dst)
        if leg.rate <= 0 or src is None or dst is None or src.kind != "host":
            continue
        params: dict[str, Any] = {"rate": leg.rate, "borrow": "yes" if res.burst == "borrow" else "no"}
        first = topology.links.get(leg.hops[0][0]) if leg.hops else None
        if first is not None:  # the source host's link: the capacity its interface's tree shares out
            params["capacity"] = min(first.capacity(leg.hops[0][1]), MAX_SHAPED)
        failed = None
        dst_address = address_of(dst, network)
        if dst_address:
            params["dst"] = dst_address
        else:
            failed = (f"node {dst.id!r} has no 'address' label and its agent reported no IPv4 address: the flow to "
                      f"it cannot be matched")
        device = interface_of(src, dst_address, network)
        if device:
            params["device"] = device
        src_address = address_of(src, network, device)  # as the flow leaves: the address on its interface
        if src_address:
            params["src"] = src_address
        m = res.match
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


def sync_shapers(batch: Batch, res: Reservation, topology: Topology, instances: InstanceService,
                 network: Network = _no_network) -> None:
    if SHAPER_TYPE not in instances.types:
        return
    instances.sync_owned(batch, f"reservation:{res.id}", shaper_specs(res, topology, network), project=res.project)
