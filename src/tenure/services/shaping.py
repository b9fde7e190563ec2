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
when present) and ``interface`` (the source host's egress device; without it
the agent's instance type properties must name the ``device``). A destination
without an address makes a shaper that is created ``failed`` with that reason,
so the problem shows on the reservation's host instead of passing silently.
"""

from __future__ import annotations

from typing import Any

from tenure.domain.reservation import ACTIVE, Reservation
from tenure.domain.topology import Topology
from tenure.services.instances import InstanceService
from tenure.store.writer import Batch

SHAPER_TYPE = "bandwidth"
SHAPED_KINDS = frozenset({"bandwidth", "oneway", "steering"})


def shaper_specs(res: Reservation, topology: Topology) -> dict[str, dict[str, Any]]:
    """Leg name -> the shaper instance spec, for an active reservation; {} otherwise."""
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
            params["capacity"] = first.capacity(leg.hops[0][1])
        failed = None
        if dst.labels.get("address"):
            params["dst"] = dst.labels["address"]
        else:
            failed = f"node {dst.id!r} has no 'address' label: the flow to it cannot be matched"
        if src.labels.get("address"):
            params["src"] = src.labels["address"]
        if src.labels.get("interface"):
            params["device"] = src.labels["interface"]
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


def sync_shapers(batch: Batch, res: Reservation, topology: Topology, instances: InstanceService) -> None:
    if SHAPER_TYPE not in instances.types:
        return
    instances.sync_owned(batch, f"reservation:{res.id}", shaper_specs(res, topology), project=res.project)
