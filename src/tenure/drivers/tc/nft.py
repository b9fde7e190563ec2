"""nftables: which packets are a leg's flow, and the DSCP they leave with (docs/dataplane.md, section 2).

One table per namespace, shared by every leg on every device there::

    table inet tenure {
      map to4p { type ifname . ipv4_addr . inet_proto . inet_service : verdict; DEV . D . tcp . P : jump to-HASH }
      map to6p { ... }
      map to4 { type ifname . ipv4_addr : verdict; elements = { DEV . D : jump to-HASH, ... } }
      map to6 { type ifname . ipv6_addr : verdict; ... }
      chain legs {        type filter hook postrouting priority mangle; policy accept
        oifname . ip daddr . meta l4proto . th dport vmap @to4p     comment "tenure dispatch ip port"
        oifname . ip6 daddr . meta l4proto . th dport vmap @to6p    comment "tenure dispatch ip6 port"
        oifname . ip daddr vmap @to4                                comment "tenure dispatch ip"
        oifname . ip6 daddr vmap @to6                               comment "tenure dispatch ip6"
        ... the rules of legs to a network (not one host address), as in to-HASH below ...
        ip dscp M ip dscp set cs0 counter                           comment "tenure remark ip M"
        ip6 dscp M ip6 dscp set cs0 counter                         comment "tenure remark ip6 M"
      }
      chain to-HASH {     the legs from DEV to the host address D, most specific first
        oifname DEV [ip saddr S] ip daddr D [ports | l4proto] [ip dscp X]
            meta priority set 1:N [ip dscp set M] counter accept    comment "tenure DEV 1:N ip leg sS DIGEST mM"
      }
    }

- **Classification.** HTB takes a packet whose priority names one of its leaf classes straight into it, so the
  leg's rule (one per address family its destination has) sets ``meta priority`` to the leg's class and no tc
  filter is needed; the rule names its device, so another device's class with the same number is never hit.
  Leg rules come first and end in ``accept``: a leg to one port of a host before the host's other legs (the port's
  chain is looked up first), those before legs to networks, and within a chain the most specific first (``sS``:
  the number of fields matched, then the address prefixes' lengths), then by device, class and family; so
  overlapping reservations resolve the same way after any restart (a port leg wins over a host leg that matches
  more fields but not the destination port).
- **Re-marking.** After the leg rules, one rule per family and per DSCP that some leg marks with re-marks the
  packets no leg claimed to best effort: nobody gets a reservation's priority by marking their own packets. These
  rules are shared: they are derived from the leg rules on the wire (each names its mark, ``mM``) in the same
  transaction as every leg change, so the last leg marking M takes M's re-mark rules with it.
- **Ownership.** A leg's rules are those whose comment starts ``tenure DEV 1:N``: that is how a start finds them
  and a stop removes them, never anyone else's; ``tenure remark`` rules are the table's. A leg rule's comment
  carries a digest of the rule as this code builds it: a start whose
  parameters changed finds the digests differ and replaces the leg's rules whole, in one transaction (nft's
  batches are atomic), and a monitor compares digests rather than nft's normalised print of the rule (which
  changes with nft's version). A rule edited by hand while keeping its comment is not noticed.
- **Writes** run ``nft -j -f -`` with JSON on standard input (no shell), in another namespace through
  ``nsenter --net``; one transaction per start or stop that changes anything, none when everything is in place.
  The table goes with its last rule, unless it holds something that is not Tenure's. **Reads** are
  ``nft -j list table``; a monitor's reading is vouched for by the namespace's nftables notifications (a
  netfilter socket in NFNLGRP_NFTABLES, as :class:`TcWatch` does for tc) and is at most MAX_AGE old (its
  counters are the observed state's), so many monitors share one ``nft`` process a second.
- **Cost.** nftables walks a chain's rules in order, so the legs are not all in one chain: a leg to one port (TCP,
  UDP or SCTP) of one host address is in the chain of its (device, address, protocol, port), a leg to one host
  address without a destination port in the chain of its (device, address); the family's maps send a packet to
  each in one lookup. A packet to nowhere reserved passes four map lookups (two of its family), the legs to
  networks and the re-mark rules; one to a reserved host's other port, those and the host's legs without a port.
  (bench/dataplane.py: with 1,000 legs on the interface, unreserved traffic keeps 0.94x its throughput without
  any qdisc; with every leg in one chain it kept 0.24x.) Legs to a host's port are tried before the host's other
  legs, and those before legs to a network; a chain goes with its last leg.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from tenure.drivers.tc.netlink import (
    NETLINK_NETFILTER,
    NETNS_DIR,
    NFTABLES_GROUPS,
    Absent,
    Sockets,
    _netns_ident,
    held,
)
from tenure.drivers.tc.params import Leg, Network, matched
from tenure.drivers.tc.wire import Flight

FAMILY, TABLE, CHAIN = "inet", "tenure", "legs"
PRIORITY = -150  # NF_IP_PRI_MANGLE: before the packet reaches the qdisc, as every postrouting hook is
NFT_TIMEOUT = 20.0  # seconds, when the operation gives none
MAX_AGE = 1.0  # seconds a monitor may reuse a reading (its counters) while nothing changed
REMARK = "tenure remark "
DISPATCH = "tenure dispatch "  # the base chain's first rules: oifname . daddr [. l4proto . dport] vmap @to4p ...
MAPS = {4: "to4", 6: "to6"}  # (device, host address) -> its chain
PORT_MAPS = {4: "to4p", 6: "to6p"}  # (device, host address, protocol, destination port) -> its chain
ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
PORTED = {"tcp": 6, "udp": 17, "sctp": 132}  # the protocols with ports: a leg to one of their ports has its own chain
Key = tuple[int, str, str] | tuple[int, str, str, int, int]  # a map element's: (family, device, address[, proto, port])


def _map_name(key: Key) -> str:
    return (PORT_MAPS if len(key) == 5 else MAPS)[key[0]]


def _concat(key: Key) -> dict[str, Any]:
    return {"concat": list(key[1:])}


def _dispatch_of(key: Key) -> str:
    return f"{DISPATCH}{PROTO[key[0]]}" + (" port" if len(key) == 5 else "")


def _key_text(key: Key) -> str:
    return " . ".join(str(k) for k in key[1:])
TO_CHAIN = re.compile(r"to-[0-9a-f]{12}")
LEG_COMMENT = re.compile(r"tenure (\S+) 1:([0-9a-f]{1,4}) (ip6?) (leg|steer) s([0-9]{1,5}) [0-9a-f]{12} "
                         r"m([0-9]{1,2}|-)")
# Steering (docs/dataplane.md, section 3): the base chains that give a steered flow its firewall mark, which its ip
# rule routes by: for the flow this host sends (output, a route chain: the kernel routes the packet again when its
# mark changed) and for the flow it forwards (prerouting, before routing).
STEER_CHAINS = {"steer-out": ("route", "output"), "steer-in": ("filter", "prerouting")}
L4 = {4: {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}, 6: {"icmp": 58, "tcp": 6, "udp": 17, "sctp": 132}}
PROTO = {4: "ip", 6: "ip6"}
NFPROTO = {4: "ipv4", 6: "ipv6"}
SEARCH_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


class NftError(Exception):
    """nft failed, or the table is not as Tenure makes it; the message says what nft or the table said."""


class NftMissing(NftError):
    """nft (or nsenter) is not installed."""


@dataclass(frozen=True)
class Rule:
    """A rule this code wants: its comment (identity and digest), expressions, and chain: the base chain, or for a
    leg to one host address the chain its (device, address) key in the family's map jumps to."""

    comment: str
    expr: list[dict[str, Any]]
    chain: str = CHAIN
    key: Key | None = None  # (family, device, address[, protocol, port]) of a host's (or a host port's) chain


@dataclass(frozen=True)
class Found:
    """A rule of the chain as nft lists it."""

    handle: int
    comment: str
    packets: int = 0
    bytes: int = 0
    chain: str = CHAIN

    @property
    def is_leg(self) -> bool:
        return not self.comment.startswith((REMARK, DISPATCH))

    @property
    def mark(self) -> int | None:
        """The DSCP a leg rule marks with (its comment's ``mM``); None if none, or not a well-formed leg rule."""
        m = LEG_COMMENT.fullmatch(self.comment)
        return int(m.group(6)) if m is not None and m.group(6) != "-" else None

    @property
    def steers(self) -> bool:
        m = LEG_COMMENT.fullmatch(self.comment)
        return m is not None and m.group(4) == "steer"

    @property
    def order(self) -> tuple[int, str, int, str] | None:
        """Where a leg rule goes among the others: most specific first, then device, class and family; None for
        a rule whose comment is not one this code writes (it is no landmark for placing others)."""
        m = LEG_COMMENT.fullmatch(self.comment)
        if m is None:
            return None
        return -int(m.group(5)), m.group(1), int(m.group(2), 16), m.group(3)


@dataclass(frozen=True)
class Table:
    """One reading of the table: whether it and its chain are there (and the chain's shape), and its rules."""

    exists: bool = False
    chain: dict[str, Any] | None = None  # the chain 'legs' as listed
    hooks: dict[str, dict[str, Any]] = field(default_factory=dict)  # the steering chains there, as listed
    chains: tuple[str, ...] = ()
    rules: tuple[Found, ...] = field(default_factory=tuple)  # Tenure's rules (comment "tenure ..."), every chain
    foreign: int = 0  # anything else in the table (someone else's: never touched, and it keeps the table)
    maps: frozenset[str] = frozenset()
    elements: dict[Key, str | None] = field(default_factory=dict)  # key -> the chain it jumps
    # to (None: another verdict, someone else's doing)
    foreign_chains: frozenset[str] = frozenset()  # our chains that hold someone else's rules
    pointed: frozenset[str] = frozenset()  # chains something else points at (a goto element, a rule's jump)
    unread: bool = False  # a map element could not be read: what it points at is unknown

    def of(self, leg: Leg) -> list[Found]:
        p = prefix(leg)
        return [r for r in self.rules if r.comment.startswith(p)]

    def remarks(self) -> list[Found]:
        return [r for r in self.rules if r.comment.startswith(REMARK)]

    def dispatch(self) -> set[str]:
        return {r.comment for r in self.rules if r.comment.startswith(DISPATCH)}

    def in_chain(self, chain: str) -> list[Found]:
        return [r for r in self.rules if r.chain == chain]


def prefix(leg: Leg) -> str:
    return f"tenure {leg.device} {leg.classid_text} "


def _match(left: dict[str, Any], right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _payload(protocol: str, name: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": name}}


def _address(net: Network) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _digest(expr: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(expr, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def _of(nets: tuple[Network, ...], version: int) -> Network | None:
    return next((n for n in nets if n.version == version), None)


def wanted(leg: Leg) -> list[Rule]:
    """The leg's own rules: one classifying (and marking) rule per family of its destination (and source)."""
    out = []
    for dst in matched(leg.dst, leg.src):  # one rule per family of the destination (and source)
        v, proto = dst.version, PROTO[dst.version]
        expr = [_match({"meta": {"key": "oifname"}}, leg.device),
                _match({"meta": {"key": "nfproto"}}, NFPROTO[v])]
        src = _of(leg.src, v)
        if src is not None and src.prefixlen:
            expr.append(_match(_payload(proto, "saddr"), _address(src)))
        if dst.prefixlen:
            expr.append(_match(_payload(proto, "daddr"), _address(dst)))
        if leg.ports:
            assert leg.protocol is not None
            for name, port in (("sport", leg.src_port), ("dport", leg.dst_port)):
                if port is not None:
                    expr.append(_match(_payload(leg.protocol, name), port))
        elif leg.protocol is not None:
            expr.append(_match({"meta": {"key": "l4proto"}}, L4[v][leg.protocol]))
        if leg.dscp is not None:
            expr.append(_match(_payload(proto, "dscp"), leg.dscp))
        expr.append({"mangle": {"key": {"meta": {"key": "priority"}}, "value": leg.classid_text}})
        if leg.mark is not None:
            expr.append({"mangle": {"key": _payload(proto, "dscp"), "value": leg.mark}})
        expr += [{"counter": None}, {"accept": None}]
        # How specific the match is (the rule's place among the legs'): the fields it matches (a protocol with or
        # without its ports, each port, each address, the DSCP), then the lengths of its address prefixes.
        fields = sum((src is not None and src.prefixlen > 0, dst.prefixlen > 0, leg.protocol is not None,
                      leg.src_port is not None, leg.dst_port is not None, leg.dscp is not None))
        score = fields * 1000 + (src.prefixlen if src is not None else 0) + dst.prefixlen
        mark = "m-" if leg.mark is None else f"m{leg.mark}"
        comment = f"{prefix(leg)}{proto} leg s{score} {_digest(expr)} {mark}"
        if dst.prefixlen == dst.max_prefixlen and leg.protocol in PORTED and leg.dst_port is not None:
            address = str(dst.network_address)  # to one port of one host: that port's chain, through the port map
            key: Key = (v, leg.device, address, PORTED[leg.protocol], leg.dst_port)
            out.append(Rule(comment, expr, _to_chain(leg.device, address, leg.protocol, leg.dst_port), key))
        elif dst.prefixlen == dst.max_prefixlen:  # to one host: in its own chain, found through the family's map
            address = str(dst.network_address)
            out.append(Rule(comment, expr, _to_chain(leg.device, address), (v, leg.device, address)))
        else:
            out.append(Rule(comment, expr))
        if _of(leg.via, v) is not None:  # steered: the flow's mark, which its ip rule routes to the next hop by
            steer = expr[1:expr.index(next(e for e in expr if "mangle" in e))]  # the match, less the device
            steer += [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": leg.steer_mark}}, {"counter": None},
                      {"accept": None}]
            comment = f"{prefix(leg)}{proto} steer s{score} {_digest(steer)} m-"
            out += [Rule(comment, steer, name) for name in STEER_CHAINS]
    return out


def _to_chain(device: str, address: str, *port: object) -> str:
    return "to-" + hashlib.sha256(" ".join(map(str, (device, address, *port))).encode()).hexdigest()[:12]


def dispatch() -> list[Rule]:
    """The base chain's first rules, in this order: a packet whose (device, destination, protocol, destination port)
    is a key of the family's port map jumps to the chain of the legs to that port of that host; then one whose
    (device, destination) is a key of the family's map, to the chain of that host's other legs (coming back from
    either when none of the legs takes it)."""
    ported = [Rule(f"{DISPATCH}{PROTO[v]} port", [{"vmap": {"key": {"concat": [
        {"meta": {"key": "oifname"}}, _payload(PROTO[v], "daddr"), {"meta": {"key": "l4proto"}},
        _payload("th", "dport")]}, "data": f"@{PORT_MAPS[v]}"}}]) for v in (4, 6)]
    return ported + [Rule(f"{DISPATCH}{PROTO[v]}", [{"vmap": {"key": {"concat": [{"meta": {"key": "oifname"}},
                                                                                  _payload(PROTO[v], "daddr")]},
                                                            "data": f"@{MAPS[v]}"}}]) for v in (4, 6)]


def _dispatch_changes(table: Table) -> tuple[list[Found], list[Rule]]:
    """(dispatch rules to delete, to add) so that the base chain starts with every dispatch rule in its order (by
    port, then by host): none if it does; else all of them again at the head, in one transaction (an upgrade from
    the host maps alone, a rule deleted by hand or moved)."""
    wanted = dispatch()
    head = [r.comment for r in table.in_chain(CHAIN)][:len(wanted)]
    if head == [r.comment for r in wanted]:
        return [], []
    return [r for r in table.in_chain(CHAIN) if r.comment.startswith(DISPATCH)], wanted


def remarks(marks: set[int]) -> list[Rule]:
    """The shared re-mark rules for the DSCP values legs mark with (0 is best effort already)."""
    out = []
    for mark in sorted(marks - {0}):
        for proto in PROTO.values():
            expr = [_match(_payload(proto, "dscp"), mark), {"mangle": {"key": _payload(proto, "dscp"), "value": 0}},
                    {"counter": None}]
            out.append(Rule(f"{REMARK}{proto} {mark}", expr))
    return out


def problem(leg: Leg, table: Table) -> str | None:
    """Why the leg's rules on the wire (and the re-mark rules of its mark) are not the ones it wants, or None."""
    want = {r.comment for r in wanted(leg)}
    if table.chain is None:
        return f"the nftables chain {FAMILY} {TABLE} {CHAIN} classifying the leg's flow is missing"
    if (shape := _shape_problem(table.chain)) is not None:
        return shape
    for name in sorted({r.chain for r in wanted(leg) if r.chain in STEER_CHAINS}):
        if name not in table.hooks:
            return f"the nftables chain {FAMILY} {TABLE} {name} steering the leg's flow is missing"
        if (shape := _shape_problem(table.hooks[name], name)) is not None:
            return shape
    have = {r.comment for r in table.of(leg)}
    if want - have:
        other = " (its rules there were made for other parameters)" if have else ""
        return f"nftables rule {sorted(want - have)[0]!r} is missing{other}"
    if have - want:
        return f"nftables rule {sorted(have - want)[0]!r} is not the leg's (made for other parameters)"
    for r in wanted(leg):
        if r.chain not in {f.chain for f in table.of(leg) if f.comment == r.comment}:
            return f"nftables rule {r.comment!r} is not in the chain {r.chain}"
        if r.key is not None and table.elements.get(r.key) != r.chain:
            return (f"the nftables map {_map_name(r.key)} does not send {_key_text(r.key)} to the chain "
                    f"{r.chain}")
        if r.key is not None and _dispatch_changes(table)[1]:
            missing = _dispatch_of(r.key) not in table.dispatch()
            return f"nftables rule '{_dispatch_of(r.key)}' is " + ("missing" if missing else "out of its place")
    if want and leg.mark:
        missing = {r.comment for r in remarks({leg.mark})} - {r.comment for r in table.remarks()}
        if missing:
            return f"nftables rule {sorted(missing)[0]!r} (re-marking others that carry its mark) is missing"
    return None


def counters(leg: Leg, table: Table) -> dict[str, int]:
    """Packets and bytes the leg's rules classified, and the packets the re-mark rules of its mark made best
    effort (on this host, whichever leg's mark it was)."""
    out = {"classified_packets": 0, "classified_bytes": 0, "remarked_packets": 0}
    for r in table.of(leg):
        if r.steers:  # (the packets this host sent or forwarded to the next hop)
            out["steered_packets"] = out.get("steered_packets", 0) + r.packets
            out["steered_bytes"] = out.get("steered_bytes", 0) + r.bytes
            continue
        out["classified_packets"] += r.packets
        out["classified_bytes"] += r.bytes
    if leg.mark:
        names = {r.comment for r in remarks({leg.mark})}
        out["remarked_packets"] = sum(r.packets for r in table.remarks() if r.comment in names)
    return out


def _shape_problem(chain: dict[str, Any], name: str = CHAIN) -> str | None:
    shape = (chain.get("type"), chain.get("hook"), chain.get("prio"))
    kind, hook = STEER_CHAINS.get(name, ("filter", "postrouting"))
    if shape != (kind, hook, PRIORITY):
        return (f"the nftables chain {FAMILY} {TABLE} {name} is {shape[0]} at {shape[1]} priority {shape[2]}, not "
                f"{kind} at {hook} priority {PRIORITY} as Tenure makes it; not changing it")
    return None


def _base_chains(rules: list[Rule]) -> list[dict[str, Any]]:
    """Commands adding the table, its base chain and maps, and the steering chains ``rules`` go in (an add of what
    is there is nothing)."""
    commands: list[dict[str, Any]] = [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": _ref("chain", name=CHAIN, type="filter", hook="postrouting", prio=PRIORITY, policy="accept")}]
    commands += [{"add": _ref("map", name=MAPS[v], type=["ifname", ADDR_TYPE[v]], map="verdict")} for v in (4, 6)]
    commands += [{"add": _ref("map", name=PORT_MAPS[v], type=["ifname", ADDR_TYPE[v], "inet_proto", "inet_service"],
                              map="verdict")} for v in (4, 6)]
    for name in sorted({r.chain for r in rules if r.chain in STEER_CHAINS}):
        kind, hook = STEER_CHAINS[name]
        commands.append({"add": _ref("chain", name=name, type=kind, hook=hook, prio=PRIORITY, policy="accept")})
    return commands


# --- running nft ------------------------------------------------------------------------------


_BINARIES: dict[str, str] = {}
PACKAGES = {"nft": "nftables", "nsenter": "util-linux", "ip": "iproute2", "tc": "iproute2"}


def _binary(name: str) -> str:
    path = _BINARIES.get(name)
    if path is None:
        path = shutil.which(name, path=os.environ.get("PATH", "") + ":" + SEARCH_PATH)
        if path is None:
            raise NftMissing(f"{name} is not installed (Debian package {PACKAGES.get(name, name)})")
        _BINARIES[name] = path
    return path


def run_tool(tool: str, netns: str | None, args: list[str], deadline: float | None, stdin: str | None = None) -> str:
    """``tool args`` (nft, ip, tc) in namespace ``netns`` (through nsenter; no shell), its output; NftError with the
    first error line it printed, NftMissing if it is not installed, Absent if the namespace is gone, TimeoutError
    at the deadline."""
    argv = [_binary(tool), *args]
    if netns is not None:
        path = os.path.join(NETNS_DIR, netns)
        if not os.path.exists(path):
            raise Absent(f"network namespace {netns} does not exist")
        argv = [_binary("nsenter"), f"--net={path}", "--", *argv]
    left = NFT_TIMEOUT if deadline is None else deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"no time left to run {tool}")
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=left, check=False,
                              env={"PATH": SEARCH_PATH, "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{tool} did not finish within {left:.3g}s") from None
    if done.returncode != 0:
        if netns is not None and not os.path.exists(os.path.join(NETNS_DIR, netns)):
            raise Absent(f"network namespace {netns} does not exist")
        raise NftError(_first_error(done.stderr) or f"{tool} exited {done.returncode}")
    return done.stdout


def _run(netns: str | None, args: list[str], deadline: float | None, stdin: str | None = None) -> str:
    try:
        return run_tool("nft", netns, args, deadline, stdin)
    except NftMissing as exc:
        raise NftMissing(f"{exc}: the leg's flow cannot be classified") from None


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("Error", "nsenter", "RTNETLINK", "Cannot"))]
    return (errors or lines or [""])[0][:300]


def read(netns: str | None, deadline: float | None) -> Table:
    """The table as nft lists it now (an empty reading if there is none)."""
    try:
        out = _run(netns, ["-j", "list", "table", FAMILY, TABLE], deadline)
    except NftError as exc:
        if "No such file or directory" in str(exc):
            return Table()
        raise
    return parse(out)


def parse(listing: str) -> Table:
    """A Table from ``nft -j list table inet tenure``'s output."""
    try:
        items = json.loads(listing)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise NftError(f"nft's listing could not be read: {exc}") from None
    chain, chains, rules, foreign = None, [], [], 0
    hooks: dict[str, dict[str, Any]] = {}
    maps: set[str] = set()
    foreign_chains: set[str] = set()
    pointed: set[str] = set()
    unread = False
    elements: dict[Key, str | None] = {}
    for item in items:
        if not isinstance(item, dict) or "metainfo" in item or "table" in item:
            continue
        if "chain" in item:
            name = item["chain"].get("name")
            chains.append(name)
            if name == CHAIN:
                chain = item["chain"]
            elif name in STEER_CHAINS:
                hooks[name] = item["chain"]
            elif not (isinstance(name, str) and TO_CHAIN.fullmatch(name)):
                foreign += 1
        elif "rule" in item:
            rule = item["rule"]
            comment = rule.get("comment")
            name = rule.get("chain")
            for expr in rule.get("expr") or ():  # a jump or goto from a rule (not a map lookup)
                for verdict in ("jump", "goto"):
                    if isinstance(expr, dict) and isinstance(expr.get(verdict), dict):
                        pointed.add(str(expr[verdict].get("target")))
            ours = name == CHAIN or name in STEER_CHAINS or (isinstance(name, str)
                                                             and TO_CHAIN.fullmatch(name) is not None)
            if ours and isinstance(comment, str) and comment.startswith("tenure "):
                packets = octets = 0
                for expr in rule.get("expr") or ():
                    if isinstance(expr, dict) and isinstance(expr.get("counter"), dict):
                        packets, octets = int(expr["counter"].get("packets", 0)), int(expr["counter"].get("bytes", 0))
                rules.append(Found(int(rule["handle"]), comment, packets, octets, name))
            elif ours:
                foreign += 1
                foreign_chains.add(name)
        elif "map" in item and item["map"].get("name") in {*MAPS.values(), *PORT_MAPS.values()}:
            m = item["map"]
            maps.add(m["name"])
            v = 4 if m["name"] in (MAPS[4], PORT_MAPS[4]) else 6
            ported = m["name"] in PORT_MAPS.values()
            for elem in m.get("elem") or ():
                try:
                    key, verdict = elem[0], elem[1]
                    if isinstance(key, dict) and "elem" in key:  # (listed wrapped when it has a comment, counter...)
                        key = key["elem"]["val"]
                    parts = key["concat"]
                    device, address = parts[0], str(ipaddress.ip_address(parts[1]))  # as written (::ffff:a00:7)
                    if ported:
                        proto, port = parts[2], int(parts[3])
                        proto = PORTED[proto] if isinstance(proto, str) else int(proto)  # listed by name
                    elif len(parts) != 2:
                        raise ValueError(parts)
                except (KeyError, TypeError, ValueError, IndexError):
                    unread = True
                    continue
                jump = verdict.get("jump") if isinstance(verdict, dict) else None
                target = jump.get("target") if isinstance(jump, dict) else None
                goto = verdict.get("goto") if isinstance(verdict, dict) else None
                if isinstance(goto, dict):
                    pointed.add(str(goto.get("target")))
                found_key: Key = (v, str(device), address, proto, port) if ported else (v, str(device), address)
                elements[found_key] = str(target) if target is not None else None
        else:  # a set, another map, a flowtable or an object: someone else's, and it keeps the table
            foreign += 1
    return Table(exists=True, chain=chain, hooks=hooks, chains=tuple(chains), rules=tuple(rules), foreign=foreign,
                 maps=frozenset(maps), elements=elements, foreign_chains=frozenset(foreign_chains),
                 pointed=frozenset(pointed), unread=unread)


def _apply(netns: str | None, commands: list[dict[str, Any]], deadline: float | None) -> None:
    _run(netns, ["-j", "-f", "-"], deadline, json.dumps({"nftables": commands}))


def _ref(kind: str, **more: Any) -> dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE, **more}}


# --- what the shaper calls ------------------------------------------------------------------------------


_GUARD = threading.Lock()
_LOCKS: dict[str, threading.Lock] = {}  # by netns: the table is shared by every device's legs
_FLIGHTS: dict[str, tuple[tuple[int, int] | None, Flight[Table]]] = {}
_WATCHES = Sockets(NETLINK_NETFILTER, NFTABLES_GROUPS)


def _locked(netns: str | None, deadline: float | None) -> AbstractContextManager[None]:
    """The namespace's table's lock, waited for until the operation's deadline."""
    with _GUARD:
        lock = _LOCKS.setdefault(netns or "", threading.Lock())
    return held(lock, deadline, f"the nftables table of {netns or 'the host namespace'}")


def reading(netns: str | None, deadline: float | None, *, fresh: bool) -> Table:
    """The namespace's table: for a monitor (not ``fresh``) a reading nothing has changed since and at most
    MAX_AGE old, if there is one; otherwise one read after the call."""
    ident = _netns_ident(netns) if netns is not None else None
    key = netns or ""
    with _GUARD:
        made_in, flight = _FLIGHTS.get(key, (None, None))
        if flight is None or made_in != ident:
            flight = Flight()
            _FLIGHTS[key] = (ident, flight)
    watch = _WATCHES.watch(netns, ident)
    return flight.view(lambda: read(netns, deadline), deadline, watch, fresh=fresh, max_age=MAX_AGE)


def _place(new: Rule, table: Table, dropped: set[int]) -> dict[str, Any]:
    """The command adding a leg rule at its place in its chain: before the first leg rule there that stays and goes
    after it; else, in the base chain, before the first re-mark rule that stays; else at the chain's end. (An
    insert names the rule it goes before; nft 1.0.6's JSON ignores the rule an add names to go after.)"""
    key = Found(0, new.comment).order
    assert key is not None
    staying = [r for r in table.in_chain(new.chain) if r.handle not in dropped]
    legs = [r for r in staying if r.is_leg and r.order is not None]
    before = next((r for r in legs if r.order is not None and r.order > key), None)
    if before is None and new.chain == CHAIN:
        before = next((r for r in staying if r.comment.startswith(REMARK)), None)
    body = {"chain": new.chain, "comment": new.comment, "expr": new.expr}
    if before is not None:
        return {"insert": _ref("rule", handle=before.handle, **body)}
    return {"add": _ref("rule", **body)}


def _remark_changes(table: Table, legs: list[Found], adding: list[Rule]) -> tuple[list[Found], list[Rule]]:
    """(re-mark rules to delete, to add) so that they are the ones the leg rules that stay and are added need."""
    marks = {m for m in (r.mark for r in legs) if m is not None}
    marks |= {m for m in (Found(0, r.comment).mark for r in adding) if m is not None}
    want = {r.comment: r for r in remarks(marks)}
    have = table.remarks()
    drop = [r for r in have if r.comment not in want]
    names = {r.comment for r in have}
    return drop, [r for c, r in want.items() if c not in names]


def _emptied(table: Table, dropped: set[int], adding: list[Rule], deleted: set[Key]) -> list[dict[str, Any]]:
    """Commands deleting the host chains no rule is left in (their map elements first), also ones found empty;
    ``deleted`` gathers the elements deleted (so that a transaction never deletes one twice)."""
    filling = {r.chain for r in adding}
    candidates = {r.chain for r in table.rules if r.handle in dropped and r.chain != CHAIN}  # (a steering chain too)
    if not table.foreign and not table.unread:  # (found empty: swept only when nothing unknown may point at them)
        candidates |= {c for c in table.chains if TO_CHAIN.fullmatch(c or "") and not table.in_chain(c)}
    out: list[dict[str, Any]] = []
    for name in sorted(candidates - filling):
        if (any(r.handle not in dropped for r in table.in_chain(name)) or name in table.foreign_chains
                or name in table.pointed):  # (deleting a chain something still points at fails the transaction)
            continue
        for key, target in table.elements.items():
            if target == name and key not in deleted:
                deleted.add(key)
                out.append({"delete": _ref("element", name=_map_name(key), elem=[_concat(key)])})
        out.append({"delete": _ref("chain", name=name)})
    return out


def bulk(legs: list[Leg]) -> list[dict[str, Any]]:
    """One transaction laying out ``legs`` from nothing as :func:`ensure` would one by one (the rules in each chain
    in their order): for tests and benchmarks that fill a table fast."""
    rules = sorted((r for leg in legs for r in wanted(leg)), key=lambda r: Found(0, r.comment).order or (0, "", 0, ""))
    commands = _base_chains(rules)
    commands += [{"add": _ref("rule", chain=CHAIN, comment=r.comment, expr=r.expr)} for r in dispatch()]
    for r in {r.chain: r for r in rules if r.key is not None}.values():
        assert r.key is not None
        commands += [{"add": _ref("chain", name=r.chain)},
                     {"add": _ref("element", name=_map_name(r.key), elem=[
                         [_concat(r.key), {"jump": {"target": r.chain}}]])}]
    commands += [{"add": _ref("rule", chain=r.chain, comment=r.comment, expr=r.expr)} for r in rules]
    marks = {leg.mark for leg in legs if leg.mark is not None and wanted(leg)}
    commands += [{"add": _ref("rule", chain=CHAIN, comment=r.comment, expr=r.expr)} for r in remarks(marks)]
    return commands


def ensure(leg: Leg, deadline: float | None) -> list[str]:
    """Make the leg's rules (its host chains, their map elements, the dispatch and re-mark rules) as wanted:
    nothing if they are, else one transaction. What changed, for the log."""
    want = wanted(leg)
    with _locked(leg.netns, deadline):
        table = reading(leg.netns, deadline, fresh=True)
        if table.chain is not None and (shape := _shape_problem(table.chain)) is not None:
            raise NftError(shape)
        steering = {r.chain for r in want if r.chain in STEER_CHAINS}
        for name in sorted(steering & set(table.hooks)):
            if (shape := _shape_problem(table.hooks[name], name)) is not None:
                raise NftError(shape)
        names = {(r.comment, r.chain) for r in want}
        seen: set[tuple[str, str]] = set()
        drop = []
        for r in table.of(leg):
            if (r.comment, r.chain) not in names or (r.comment, r.chain) in seen:
                drop.append(r)
            seen.add((r.comment, r.chain))
        add = [r for r in want if (r.comment, r.chain) not in seen]
        dropped = {r.handle for r in drop}
        legs = [r for r in table.rules if r.is_leg and r.handle not in dropped]
        drop_remarks, add_remarks = _remark_changes(table, legs, add)
        dropped |= {r.handle for r in drop_remarks}
        keys = [r for r in want if r.key is not None and table.elements.get(r.key) != r.chain]
        dispatch_drop, dispatch_missing = _dispatch_changes(table)
        drop += dispatch_drop
        deleted: set[Key] = set()
        emptied = _emptied(table, dropped, add, deleted)
        if (table.chain is not None and not drop and not add and not drop_remarks and not add_remarks and not keys
                and not dispatch_missing and not emptied and {*MAPS.values(), *PORT_MAPS.values()} <= table.maps
                and steering <= set(table.hooks)):
            return []
        commands = _base_chains(want)
        commands += [{"delete": _ref("rule", chain=r.chain, handle=r.handle)} for r in drop + drop_remarks]
        commands += emptied
        for r in {r.chain: r for r in want if r.key is not None}.values():
            assert r.key is not None
            commands.append({"add": _ref("chain", name=r.chain)})
            if table.elements.get(r.key) != r.chain:
                if r.key in table.elements and r.key not in deleted:  # (another verdict: replaced)
                    deleted.add(r.key)
                    commands.append({"delete": _ref("element", name=_map_name(r.key), elem=[_concat(r.key)])})
                commands.append({"add": _ref("element", name=_map_name(r.key), elem=[
                    [_concat(r.key), {"jump": {"target": r.chain}}]])})
        commands += [{"insert": _ref("rule", chain=CHAIN, comment=r.comment, expr=r.expr)}
                     for r in reversed(dispatch_missing)]  # at the head, in order (all of them, when any is)
        commands += [_place(r, table, dropped) for r in add]
        commands += [{"add": _ref("rule", chain=CHAIN, comment=r.comment, expr=r.expr)} for r in add_remarks]
        _apply(leg.netns, commands, deadline)
    return ([f"deleted nftables rule {r.comment!r}" for r in drop + drop_remarks]
            + [f"added nftables rule {r.comment!r}" for r in add + add_remarks + dispatch_missing]
            + [f"set the nftables map {_map_name(r.key)}'s {_key_text(r.key)} to jump to {r.chain}"
               for r in keys if r.key is not None]
            + [f"deleted the empty nftables chain {c['delete']['chain']['name']}" for c in emptied
               if "chain" in c["delete"]])


def remove(leg: Leg, deadline: float | None) -> list[str]:
    """Delete the leg's rules (whatever parameters made them), the host chains left empty, the re-mark rules no
    leg needs any more, and the table with its last leg. What changed, for the log."""
    with _locked(leg.netns, deadline):
        try:
            table = reading(leg.netns, deadline, fresh=True)
        except NftMissing:
            return []  # without nft there are no rules of ours to remove
        mine = table.of(leg)
        legs = [r for r in table.rules if r.is_leg and r not in mine]
        drop_remarks, _ = _remark_changes(table, legs, [])
        dropped = {r.handle for r in mine + drop_remarks}
        emptied = _emptied(table, dropped, [], set())
        if not mine and not drop_remarks and not emptied:
            return []
        if not legs and not table.foreign and table.chain is not None and _shape_problem(table.chain) is None:
            _apply(leg.netns, [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}], deadline)
            return [f"deleted nftables table {FAMILY} {TABLE} with the leg's rules (no leg left)"]
        _apply(leg.netns, [{"delete": _ref("rule", chain=r.chain, handle=r.handle)} for r in mine + drop_remarks]
               + emptied, deadline)
    return ([f"deleted nftables rule {r.comment!r}" for r in mine + drop_remarks]
            + [f"deleted the empty nftables chain {c['delete']['chain']['name']}" for c in emptied
               if "chain" in c["delete"]])
