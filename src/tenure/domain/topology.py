"""The network: nodes and links with a capacity per direction, validated as a whole.

A topology is replaced whole (``PUT /v1/topology``, ``tenure topology load``)
or edited a node or link at a time; either way the result is validated as a
whole before anything changes, so a dangling link, a negative capacity or a
duplicate id is refused and the old topology stays (DESIGN.md invariant 8).

Each direction of a link is a *hop*, the unit of capacity: link ``i`` gives hop
``2i`` (a → b) and hop ``2i + 1`` (b → a). A hop's usable capacity is its
capacity minus the headroom held back (per link, else the topology's default),
rounded down to whole bit/s with exact fractions. Paths pass *through* switches
and gateways only; hosts and middleboxes are where paths begin and end (a host
with two NICs is not a router), so multi-homed hosts are just hosts with
several links.

The search structures (:class:`~tenure.domain.paths.Graph` over node indices)
are built once per topology; a topology is immutable, and a change makes a new one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from tenure.domain.errors import InvalidInput
from tenure.domain.names import validate_name
from tenure.domain.paths import Graph, PathFinder
from tenure.domain.units import parse_rate, parse_share, share_text

NODE_KINDS = ("host", "switch", "middlebox", "gateway")
TRANSIT_KINDS = frozenset({"switch", "gateway"})
DIRECTIONS = ("ab", "ba")
MAX_NODES = 100_000
MAX_LINKS = 400_000
MAX_LABELS = 32


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.labels:
            d["labels"] = dict(self.labels)
        return d


@dataclass(frozen=True, slots=True)
class Link:
    id: str
    a: str
    b: str
    capacity_ab: int
    capacity_ba: int
    headroom: Fraction | None = None  # None: the topology's default
    alarm: Fraction | None = None

    def capacity(self, direction: str) -> int:
        return self.capacity_ab if direction == "ab" else self.capacity_ba

    def ends(self, direction: str) -> tuple[str, str]:
        return (self.a, self.b) if direction == "ab" else (self.b, self.a)

    def doc(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "a": self.a, "b": self.b}
        if self.capacity_ab == self.capacity_ba:
            d["capacity"] = self.capacity_ab
        else:
            d["capacity_ab"], d["capacity_ba"] = self.capacity_ab, self.capacity_ba
        if self.headroom is not None:
            d["headroom"] = share_text(self.headroom)
        if self.alarm is not None:
            d["alarm"] = share_text(self.alarm)
        return d


def _bad(where: str, message: str, code: str = "invalid_topology") -> InvalidInput:
    return InvalidInput(f"{where}: {message}", code=code)


def _fields(item: object, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise _bad(where, "must be an object")
    unknown = sorted(set(item) - allowed, key=str)
    if unknown:
        raise _bad(where, f"unknown field {str(unknown[0])[:64]!r} (allowed: {', '.join(sorted(allowed))})")
    return item


def _id(value: object, where: str) -> str:
    try:
        return validate_name(value, what="id")
    except InvalidInput as exc:
        raise _bad(where, exc.message) from None


def _labels(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > MAX_LABELS:
        raise _bad(where, f"labels must be an object of at most {MAX_LABELS} string values")
    out = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise _bad(where, f"label {k!r} must be a string")
        out[_id(k, f"{where} label")] = _id(v, f"{where} label {k!r}") if v else ""
    return out


def _share(value: object, where: str, what: str, *, alarm: bool = False) -> Fraction | None:
    if value is None:
        return None
    try:
        if alarm and value in (1, "100%"):
            return Fraction(1)
        share = parse_share(value, what=what)
    except InvalidInput as exc:
        raise _bad(where, exc.message) from None
    if alarm and share == 0:
        raise _bad(where, "alarm must be more than 0")
    return share


def _capacity(value: object, where: str, what: str) -> int:
    try:
        return parse_rate(value, what=what, allow_zero=True)
    except InvalidInput as exc:
        raise _bad(where, exc.message) from None


class Topology:
    """An immutable, validated topology and the index structures paths and ledgers use."""

    def __init__(self, nodes: list[Node], links: list[Link], *, headroom: Fraction = Fraction(0),
                 alarm: Fraction | None = None) -> None:
        self.nodes: dict[str, Node] = {n.id: n for n in nodes}
        self.links: dict[str, Link] = {lk.id: lk for lk in links}
        self.headroom = headroom
        self.alarm = alarm
        self.index: dict[str, int] = {n.id: i for i, n in enumerate(nodes)}
        self.node_ids: list[str] = [n.id for n in nodes]
        # hop 2i = link i a→b, hop 2i+1 = link i b→a
        self.hops: list[tuple[str, str]] = []
        self.usable: list[int] = []
        self.capacity: list[int] = []
        self.alarm_at: list[int | None] = []
        ends: list[tuple[int, int]] = []
        for lk in links:
            room = lk.headroom if lk.headroom is not None else headroom
            alarm_share = lk.alarm if lk.alarm is not None else alarm
            for d in DIRECTIONS:
                cap = lk.capacity(d)
                u, v = lk.ends(d)
                self.hops.append((lk.id, d))
                self.capacity.append(cap)
                self.usable.append(math.floor(cap * (1 - room)))
                self.alarm_at.append(math.floor(cap * alarm_share) if alarm_share is not None else None)
                ends.append((self.index[u], self.index[v]))
        self.hop_index: dict[tuple[str, str], int] = {h: i for i, h in enumerate(self.hops)}
        self.into: list[list[int]] = [[] for _ in nodes]  # the hops arriving at each node
        for h, (_, v) in enumerate(ends):
            self.into[v].append(h)
        transit = [n.kind in TRANSIT_KINDS for n in nodes]
        self.graph = Graph.build(len(nodes), ends, transit)
        self.finder = PathFinder(self.graph)

    # ------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, doc: object) -> Topology:
        """Validate a whole topology document (the YAML/JSON file format); refuse it with a clear message."""
        doc = _fields(doc, "topology", {"nodes", "links", "headroom", "alarm"})
        raw_nodes = doc.get("nodes", [])
        raw_links = doc.get("links", [])
        if not isinstance(raw_nodes, list) or not isinstance(raw_links, list):
            raise _bad("topology", "nodes and links must be lists")
        if len(raw_nodes) > MAX_NODES or len(raw_links) > MAX_LINKS:
            raise _bad("topology", f"at most {MAX_NODES} nodes and {MAX_LINKS} links")
        nodes = [parse_node(item, f"nodes[{i}]") for i, item in enumerate(raw_nodes)]
        seen: set[str] = set()
        for i, n in enumerate(nodes):
            if n.id in seen:
                raise _bad(f"nodes[{i}]", f"duplicate node id {n.id!r}", code="duplicate_id")
            seen.add(n.id)
        links = [parse_link(item, f"links[{i}]") for i, item in enumerate(raw_links)]
        seen_links: set[str] = set()
        for i, lk in enumerate(links):
            where = f"links[{i}] ({lk.id})"
            if lk.id in seen_links:
                raise _bad(f"links[{i}]", f"duplicate link id {lk.id!r}", code="duplicate_id")
            seen_links.add(lk.id)
            for end in (lk.a, lk.b):
                if end not in seen:
                    raise _bad(where, f"node {end!r} does not exist", code="dangling_link")
        headroom = _share(doc.get("headroom"), "topology", "headroom") or Fraction(0)
        alarm = _share(doc.get("alarm"), "topology", "alarm", alarm=True)
        return cls(nodes, links, headroom=headroom, alarm=alarm)

    def doc(self) -> dict[str, Any]:
        """The canonical document: ``Topology.parse(t.doc())`` gives the same topology."""
        d: dict[str, Any] = {"nodes": [n.doc() for n in self.nodes.values()],
                             "links": [lk.doc() for lk in self.links.values()]}
        if self.headroom:
            d["headroom"] = share_text(self.headroom)
        if self.alarm is not None:
            d["alarm"] = share_text(self.alarm)
        return d

    # ------------------------------------------------------------ edits (each a new topology)

    def with_node(self, node: Node) -> Topology:
        nodes = dict(self.nodes)
        nodes[node.id] = node
        return Topology(list(nodes.values()), list(self.links.values()), headroom=self.headroom, alarm=self.alarm)

    def without_node(self, node_id: str) -> Topology:
        nodes = dict(self.nodes)
        del nodes[node_id]
        return Topology(list(nodes.values()), list(self.links.values()), headroom=self.headroom, alarm=self.alarm)

    def with_link(self, link: Link) -> Topology:
        for end in (link.a, link.b):
            if end not in self.nodes:
                raise _bad(f"link {link.id}", f"node {end!r} does not exist", code="dangling_link")
        links = dict(self.links)
        links[link.id] = link
        return Topology(list(self.nodes.values()), list(links.values()), headroom=self.headroom, alarm=self.alarm)

    def without_link(self, link_id: str) -> Topology:
        links = dict(self.links)
        del links[link_id]
        return Topology(list(self.nodes.values()), list(links.values()), headroom=self.headroom, alarm=self.alarm)

    def hop_signature(self, h: int) -> tuple[object, ...]:
        """What admission on hop ``h`` depends on: its ends (and whether they pass traffic) and capacity."""
        u, v = self.graph.ends[h]
        return (self.node_ids[u], self.node_ids[v], self.graph.transit[u], self.graph.transit[v],
                self.capacity[h], self.usable[h])

    def unchanged_hops(self, old: Topology) -> set[tuple[str, str]]:
        """The hops (link, direction) that admission sees exactly as in ``old``."""
        return {key for key, h in self.hop_index.items()
                if (oh := old.hop_index.get(key)) is not None and old.hop_signature(oh) == self.hop_signature(h)}

    def links_of(self, node_id: str) -> list[str]:
        return [lk.id for lk in self.links.values() if node_id in (lk.a, lk.b)]

    # ------------------------------------------------------------ paths

    def path_doc(self, hops: list[int]) -> dict[str, Any]:
        """A path as the API shows it: the nodes it visits and the links it takes, in order."""
        nodes = [self.node_ids[self.graph.ends[hops[0]][0]]] + [self.node_ids[self.graph.ends[h][1]] for h in hops]
        return {"nodes": nodes, "links": [self.hops[h][0] for h in hops]}

    def hops_of(self, path: list[tuple[str, str]]) -> list[int] | None:
        """A stored path (``[(link, direction)]``) in this topology's hop indices; None if a link is gone."""
        out = []
        for key in path:
            h = self.hop_index.get(key)
            if h is None:
                return None
            out.append(h)
        return out


def parse_node(item: object, where: str) -> Node:
    f = _fields(item, where, {"id", "kind", "labels"})
    node_id = _id(f.get("id"), where)
    kind = f.get("kind")
    if kind not in NODE_KINDS:
        raise _bad(f"{where} ({node_id})", f"kind must be one of {', '.join(NODE_KINDS)}, got {kind!r}")
    return Node(node_id, kind, _labels(f.get("labels"), f"{where} ({node_id})"))


def parse_link(item: object, where: str) -> Link:
    f = _fields(item, where, {"id", "a", "b", "capacity", "capacity_ab", "capacity_ba", "headroom", "alarm"})
    link_id = _id(f.get("id"), where)
    where = f"{where} ({link_id})"
    a, b = _id(f.get("a"), f"{where} a"), _id(f.get("b"), f"{where} b")
    if a == b:
        raise _bad(where, "a link needs two different ends")
    if "capacity" in f:
        if "capacity_ab" in f or "capacity_ba" in f:
            raise _bad(where, "give capacity, or capacity_ab and capacity_ba, not both")
        ab = ba = _capacity(f["capacity"], where, "capacity")
    elif "capacity_ab" in f and "capacity_ba" in f:
        ab = _capacity(f["capacity_ab"], where, "capacity_ab")
        ba = _capacity(f["capacity_ba"], where, "capacity_ba")
    else:
        raise _bad(where, "needs capacity (both ways) or capacity_ab and capacity_ba")
    return Link(link_id, a, b, ab, ba, _share(f.get("headroom"), where, "headroom"),
                _share(f.get("alarm"), where, "alarm", alarm=True))


def empty_topology() -> Topology:
    return Topology([], [])
