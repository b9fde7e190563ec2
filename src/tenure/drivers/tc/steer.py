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
Reads and writes go through pyroute2 (rules and routes are few: only steered legs have them).
"""

from __future__ import annotations

import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tenure.drivers.tc.netlink import Absent, in_netns
from tenure.drivers.tc.params import STEER_RULE_PRIORITY, Leg, Network

AF = {4: socket.AF_INET, 6: socket.AF_INET6}
ESRCH, ENOENT, EEXIST = 3, 2, 17


def routes(leg: Leg) -> list[tuple[int, Network, str]]:
    """(family, destination, next hop) of each route the steered leg wants in its table."""
    out = []
    for dst in leg.dst:
        hop = next((h for h in leg.via if h.version == dst.version), None)
        if hop is not None and (not leg.src or dst.version in {n.version for n in leg.src}):
            out.append((dst.version, dst, str(hop.network_address)))
    return out


def _rules(ipr: IPRoute, leg: Leg, version: int) -> list[Any]:
    """The ip rules of this family that look up the leg's table (whatever their mark)."""
    return [r for r in ipr.get_rules(family=AF[version]) if r.get_attr("FRA_TABLE") == leg.steer_mark]


def _right_rule(rule: Any, leg: Leg) -> bool:
    return (rule.get_attr("FRA_FWMARK") == leg.steer_mark and rule.get_attr("FRA_FWMASK") in (None, 0xFFFFFFFF)
            and rule.get_attr("FRA_PRIORITY") == STEER_RULE_PRIORITY and rule["action"] == 1)  # FR_ACT_TO_TBL


def _table(ipr: IPRoute, leg: Leg, version: int) -> list[Any]:
    return [r for r in ipr.get_routes(family=AF[version], table=leg.steer_mark)
            if r.get_attr("RTA_TABLE") == leg.steer_mark]


def _right_route(route: Any, dst: Network, hop: str, index: int) -> bool:
    return (route.get_attr("RTA_DST") == str(dst.network_address) and route["dst_len"] == dst.prefixlen
            and route.get_attr("RTA_GATEWAY") == hop and route.get_attr("RTA_OIF") == index)


def problem(ipr: IPRoute, leg: Leg, index: int) -> str | None:
    """Why the leg's ip rules and routes are not as wanted, or None."""
    for version, dst, hop in routes(leg):
        rules = _rules(ipr, leg, version)
        if not any(_right_rule(r, leg) for r in rules):
            return f"the ip rule fwmark {leg.steer_mark:#x} lookup {leg.steer_mark} (IPv{version}) is missing"
        table = _table(ipr, leg, version)
        if not any(_right_route(r, dst, hop, index) for r in table):
            return f"the route {dst} via {hop} dev {leg.device} in table {leg.steer_mark} is missing"
    return None


def ensure(ipr: IPRoute, leg: Leg, index: int) -> list[str]:
    """The leg's routes, then its ip rules (so a marked packet never finds an empty table), as wanted; anything else
    in its table, or another rule into it, goes. What changed, for the log."""
    changes = []
    wanted = routes(leg)
    for version in (4, 6):
        mine = [(dst, hop) for v, dst, hop in wanted if v == version]
        table = _table(ipr, leg, version)
        for dst, hop in mine:
            if not any(_right_route(r, dst, hop, index) for r in table):
                ipr.route("replace", dst=str(dst), gateway=hop, oif=index, table=leg.steer_mark,
                          family=AF[version])
                changes.append(f"set the route {dst} via {hop} dev {leg.device} in table {leg.steer_mark}")
        for r in _table(ipr, leg, version) if mine else table:
            if not any(_right_route(r, dst, hop, index) for dst, hop in mine):
                _gone_ok(lambda r=r: ipr.route("del", table=leg.steer_mark, family=AF[version],
                                               dst=f"{r.get_attr('RTA_DST')}/{r['dst_len']}"))
                changes.append(f"deleted a route to {r.get_attr('RTA_DST')}/{r['dst_len']} from table "
                               f"{leg.steer_mark}")
        rules = _rules(ipr, leg, version)
        for r in rules:
            if not (mine and _right_rule(r, leg)):
                spec = {k: r.get_attr(a) for k, a in (("priority", "FRA_PRIORITY"), ("fwmark", "FRA_FWMARK"),
                                                       ("fwmask", "FRA_FWMASK")) if r.get_attr(a) is not None}
                _gone_ok(lambda spec=spec: ipr.rule("del", family=AF[version], table=leg.steer_mark, **spec))
                changes.append(f"deleted an ip rule into table {leg.steer_mark} (IPv{version})")
        if mine and not any(_right_rule(r, leg) for r in rules):
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
    """Why this host does not forward the leg's flow (forwarding off on its device, per family), or None."""
    for version, _, _ in routes(leg) or [(d.version, d, "") for d in leg.dst]:
        path = f"/proc/sys/net/ipv{version}/conf/{leg.device}/forwarding"
        value = _read_in(leg.netns, path)
        if value is None:
            raise Absent(f"device {leg.where} does not exist")
        if value.strip() != "1":
            return (f"forwarding is off on {leg.where} (net.ipv{version}.conf.{leg.device}.forwarding = "
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
