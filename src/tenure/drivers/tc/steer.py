"""Steering: a leg's flow routed to its next hop by policy routing (docs/dataplane.md, section 3).

A steered leg (one with ``via``) has, besides its class and classifying rules, in its namespace:

- nftables rules (:mod:`.nft`, chains ``steer-out`` and ``steer-in``) giving the flow the firewall mark
  ``STEER_BASE | classid``: as this host sends it, and as it forwards it (a middlebox);
- per address family, an ip rule ``fwmark MARK lookup MARK`` (priority STEER_RULE_PRIORITY, before the main
  table's), and in that routing table the route ``DST via VIA dev DEVICE``.

So the flow leaves for the next hop, and everything else keeps the main table's route. The classid makes the mark
and the table unique in the namespace (the agent's allocator gives each instance its own), and stop finds them from
the leg's identity. A middlebox's leg (``forward``) needs the kernel to forward on its device: the shaper checks,
and reports a middlebox that does not forward rather than turning forwarding on (which is the operator's choice).
Reads and writes go through pyroute2 (only steered legs have them): a monitor reads the rules (few) and asks the
kernel how it routes the marked flow (one lookup per family); start and stop dump the family's routes to find
the table's (pyroute2 filters them), a cost proportional to the host's routes.

The whole firewall mark of the steered flow's packets is set (``meta mark set F``): another tool that marks the
same packets loses its mark on them.
"""

from __future__ import annotations

import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tenure.drivers.tc.netlink import Absent, in_netns
from tenure.drivers.tc.params import STEER_RULE_PRIORITY, Leg, Network, matched

AF = {4: socket.AF_INET, 6: socket.AF_INET6}
ESRCH, ENOENT, EEXIST = 3, 2, 17
DEFAULT_METRIC = {4: 0, 6: 1024}  # what the kernel gives a route added without one


def routes(leg: Leg) -> list[tuple[int, Network, str]]:
    """(family, destination, next hop) of each route the steered leg wants in its table."""
    out = []
    for dst in matched(leg.dst, leg.src):
        hop = next((h for h in leg.via if h.version == dst.version), None)
        if hop is not None:
            out.append((dst.version, dst, str(hop.network_address)))
    return out


def _rules(ipr: IPRoute, leg: Leg, version: int) -> list[Any]:
    """The ip rules of this family that look up the leg's table (whatever their mark)."""
    return [r for r in ipr.get_rules(family=AF[version]) if r.get_attr("FRA_TABLE") == leg.steer_mark]


def _right_rule(rule: Any, leg: Leg) -> bool:
    """``fwmark F lookup F`` at our priority, and nothing else: no address, interface or other selector, not
    inverted (FIB_RULE_INVERT)."""
    selectors = ("FRA_IIFNAME", "FRA_OIFNAME", "FRA_SRC", "FRA_DST", "FRA_SPORT_RANGE", "FRA_DPORT_RANGE",
                 "FRA_IP_PROTO", "FRA_UID_RANGE", "FRA_L3MDEV", "FRA_TUN_ID")
    return (rule.get_attr("FRA_FWMARK") == leg.steer_mark and rule.get_attr("FRA_FWMASK") in (None, 0xFFFFFFFF)
            and rule.get_attr("FRA_PRIORITY") == STEER_RULE_PRIORITY and rule["action"] == 1  # FR_ACT_TO_TBL
            and not rule["flags"] & 0x2 and rule["src_len"] == rule["dst_len"] == rule["tos"] == 0
            and not any(rule.get_attr(name) for name in selectors))


def _table(ipr: IPRoute, leg: Leg, version: int) -> list[Any]:
    """The routes in the leg's table (a dump of the family's routes, filtered: for start and stop only)."""
    return [r for r in ipr.get_routes(family=AF[version], table=leg.steer_mark)
            if r.get_attr("RTA_TABLE") == leg.steer_mark]


def _dst(route: Any, version: int) -> str:
    """A route's destination network (the kernel leaves RTA_DST out of a default route)."""
    return f"{route.get_attr('RTA_DST') or ('0.0.0.0' if version == 4 else '::')}/{route['dst_len']}"


def _right_route(route: Any, dst: Network, hop: str, index: int) -> bool:
    return (_dst(route, dst.version) == str(dst) and route.get_attr("RTA_GATEWAY") == hop
            and route.get_attr("RTA_OIF") == index and not route.get_attr("RTA_MULTIPATH")
            and route.get_attr("RTA_PRIORITY") in (None, 0, DEFAULT_METRIC[dst.version]))


def problem(ipr: IPRoute, leg: Leg, index: int) -> str | None:
    """Why the leg's ip rules and routes are not as wanted, or None: its rule is the only one into its table, and
    the kernel routes the marked flow to the next hop by the device (an RTM_GETROUTE per family, not a dump)."""
    for version, dst, hop in routes(leg):
        rules = _rules(ipr, leg, version)
        if not any(_right_rule(r, leg) for r in rules):
            return f"the ip rule fwmark {leg.steer_mark:#x} lookup {leg.steer_mark} (IPv{version}) is missing"
        if len(rules) > 1:
            return f"{len(rules) - 1} other ip rule(s) look up the leg's table {leg.steer_mark} (IPv{version})"
        try:
            [got] = ipr.route("get", dst=str(dst.network_address), mark=leg.steer_mark, family=AF[version])[:1]
        except (NetlinkError, ValueError):
            got = None
        if got is None or got.get_attr("RTA_GATEWAY") != hop or got.get_attr("RTA_OIF") != index:
            return f"the marked flow to {dst} is not routed via {hop} dev {leg.device} (table {leg.steer_mark})"
    return None


def ensure(ipr: IPRoute, leg: Leg, index: int) -> list[str]:
    """The leg's ip rules and routes as wanted: other rules into its table go first, then its routes are put in
    and other routes in its table go, then its rule is added (so a marked packet never finds an empty or a wrong
    table). What changed, for the log."""
    changes = []
    wanted = routes(leg)
    for version in (4, 6):
        mine = [(dst, hop) for v, dst, hop in wanted if v == version]
        rules = _rules(ipr, leg, version)
        keep = next((r for r in rules if mine and _right_rule(r, leg)), None)
        for r in rules:
            if r is not keep:  # (named by all it has: the kernel deletes the first rule matching what is given)
                spec = {k: r.get_attr(a) for k, a in (("priority", "FRA_PRIORITY"), ("fwmark", "FRA_FWMARK"),
                                                       ("fwmask", "FRA_FWMASK"), ("iifname", "FRA_IIFNAME"),
                                                       ("oifname", "FRA_OIFNAME"), ("src", "FRA_SRC"),
                                                       ("dst", "FRA_DST")) if r.get_attr(a) is not None}
                spec.update({k: r[k] for k in ("src_len", "dst_len", "tos", "flags") if r[k]})
                _gone_ok(lambda spec=spec: ipr.rule("del", family=AF[version], table=leg.steer_mark, **spec))
                changes.append(f"deleted an ip rule into table {leg.steer_mark} (IPv{version})")
        table = _table(ipr, leg, version)
        for dst, hop in mine:
            if not any(_right_route(r, dst, hop, index) for r in table):
                ipr.route("replace", dst=str(dst), gateway=hop, oif=index, table=leg.steer_mark,
                          family=AF[version], priority=0)
                changes.append(f"set the route {dst} via {hop} dev {leg.device} in table {leg.steer_mark}")
        for r in _table(ipr, leg, version) if mine else table:
            if not any(_right_route(r, dst, hop, index) for dst, hop in mine):
                spec = {k: r.get_attr(a) for k, a in (("gateway", "RTA_GATEWAY"), ("oif", "RTA_OIF"),
                                                       ("priority", "RTA_PRIORITY")) if r.get_attr(a) is not None}
                _gone_ok(lambda r=r, spec=spec: ipr.route("del", table=leg.steer_mark, family=AF[version],
                                                          dst=_dst(r, version), **spec))
                changes.append(f"deleted a route to {_dst(r, version)} from table {leg.steer_mark}")
        if mine and keep is None:
            ipr.rule("add", family=AF[version], fwmark=leg.steer_mark, fwmask=0xFFFFFFFF, table=leg.steer_mark,
                     priority=STEER_RULE_PRIORITY)
            changes.append(f"added the ip rule fwmark {leg.steer_mark:#x} lookup {leg.steer_mark} (IPv{version})")
    return changes


def remove(ipr: IPRoute, leg: Leg) -> list[str]:
    """The ip rules into the leg's table (first: no packet is routed by a table about to empty), then its routes."""
    return ensure(ipr, Leg(device=leg.device, classid=leg.classid, netns=leg.netns), 0)


def _gone_ok(fn: Any) -> None:
    try:
        fn()
    except NetlinkError as exc:
        if exc.code not in (ESRCH, ENOENT):
            raise


def forwarding_problem(leg: Leg) -> str | None:
    """Why this host does not forward the leg's flow, or None: per family of the flow, IPv6's switch is
    ``conf.all.forwarding``; IPv4's is the flag of the device a packet arrives by, which the leg does not know: the
    leg's device is checked (on a one-armed middlebox, the device it arrives by)."""
    for version in sorted({d.version for d in matched(leg.dst, leg.src)}):
        for conf in (leg.device,) if version == 4 else ("all",):
            value = _read_in(leg.netns, f"/proc/sys/net/ipv{version}/conf/{conf}/forwarding")
            if value is None:
                raise Absent(f"device {leg.where} does not exist")
            if value.strip() != "1":
                return (f"forwarding is off on {leg.where} (net.ipv{version}.conf.{conf}.forwarding = "
                        f"{value.strip()}): a middlebox must forward the flow it is steered; turn it on there")
    return None


def _read_in(netns: str | None, path: str) -> str | None:
    """A file of /proc/sys/net as the namespace ``netns`` shows it (None: no such file)."""
    if netns is None:
        return _read(path)
    try:
        return in_netns(netns, lambda: _read(path))[0]
    except FileNotFoundError:  # the namespace's own file
        raise Absent(f"network namespace {netns} does not exist") from None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
