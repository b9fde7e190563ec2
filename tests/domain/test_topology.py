"""Topology: nodes and links validated as a whole, hops with usable capacity and alarm thresholds, edits.

A topology is built from its document (``Topology.parse`` of the YAML/JSON
dict), so that is how these tests build them. The document is checked as a
whole: every refusal is an :class:`InvalidInput` with a code
(``invalid_topology``, ``duplicate_id``, ``dangling_link``) and a message that
says where. Each link gives two hops (``2i`` a → b, ``2i + 1`` b → a) whose
usable capacity is the capacity less the headroom, rounded down exactly; a
property test draws whole documents and checks the hops against a model
computed with integers, and that ``parse(doc())`` gives the same topology
back. Edits make a new topology and leave the old one as it was;
``unchanged_hops`` says which hops admission sees exactly as before.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenure.domain.errors import InvalidInput
from tenure.domain.topology import (
    MAX_LABELS,
    NODE_KINDS,
    Link,
    Node,
    Topology,
    empty_topology,
    parse_link,
    parse_node,
)
from tenure.domain.units import MAX_RATE, format_rate, share_text

from tests.topologies import SQUARE

G = 10**9



def line(*kinds: str, capacity: object = 1000, **extra: Any) -> dict[str, Any]:
    """``a ─ b ─ c ...`` with the given kinds: nodes n0, n1, ... and links l0 (n0-n1), l1 (n1-n2), ..."""
    nodes = [{"id": f"n{i}", "kind": k} for i, k in enumerate(kinds)]
    links = [{"id": f"l{i}", "a": f"n{i}", "b": f"n{i + 1}", "capacity": capacity} for i in range(len(kinds) - 1)]
    return {"nodes": nodes, "links": links, **extra}


def refused(doc: object, code: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        Topology.parse(doc)
    assert info.value.code == code, info.value.to_dict()
    return info.value


def hop(t: Topology, link: str, direction: str) -> int:
    return t.hop_index[(link, direction)]


# -- hops and capacities -------------------------------------------------------


def test_each_link_gives_two_hops_a_to_b_then_b_to_a() -> None:
    t = Topology.parse(SQUARE)
    assert t.hops == [(lk["id"], d) for lk in SQUARE["links"] for d in ("ab", "ba")]
    assert all(t.hop_index[key] == i for i, key in enumerate(t.hops))
    s12 = hop(t, "s1-s2", "ab")
    assert s12 == 2 * 4 and hop(t, "s1-s2", "ba") == s12 + 1
    assert t.graph.ends[s12] == (t.index["s1"], t.index["s2"])
    assert t.graph.ends[s12 + 1] == (t.index["s2"], t.index["s1"])
    assert t.capacity[s12] == 10 * G and t.capacity[s12 + 1] == 5 * G  # capacity_ab, capacity_ba
    assert t.usable == t.capacity  # no headroom
    assert t.alarm_at == [None] * len(t.hops)
    assert sorted(t.into[t.index["s2"]]) == sorted(
        hop(t, lk, d) for lk, d in (("h2-s2", "ab"), ("s1-s2", "ab"), ("s3-s2", "ab"), ("m1-s2", "ab")))


def test_capacities_are_rates() -> None:
    t = Topology.parse(line("host", "switch", "host", capacity="2.5G"))
    assert set(t.capacity) == {2_500_000_000}
    t = Topology.parse({"nodes": [{"id": "a", "kind": "host"}, {"id": "b", "kind": "switch"}],
                        "links": [{"id": "l", "a": "a", "b": "b", "capacity_ab": "100M", "capacity_ba": 1_000}]})
    assert t.capacity == [100_000_000, 1_000]


def test_zero_capacity_is_allowed() -> None:
    t = Topology.parse(line("host", "switch", capacity=0))
    assert t.capacity == t.usable == [0, 0]


def test_usable_capacity_is_capacity_minus_headroom_rounded_down() -> None:
    doc = line("host", "switch", "switch", "host", capacity=999, headroom="10%")
    doc["links"][1]["headroom"] = 0.25  # a link's own headroom wins over the default
    doc["links"][2]["headroom"] = "0%"  # ... even when it is none at all
    t = Topology.parse(doc)
    assert t.headroom == Fraction(1, 10)
    assert [t.usable[hop(t, f"l{i}", "ab")] for i in range(3)] == [899, 749, 999]  # 899.1, 749.25, 999
    assert t.capacity == [999] * 6


def test_usable_capacity_is_exact_for_huge_capacities() -> None:
    """10**15 * (1 - 10**-16) is 10**15 - 0.1: a float computation would give 10**15."""
    t = Topology.parse(line("host", "switch", capacity=MAX_RATE, headroom="0.00000000000001%"))
    assert t.usable == [MAX_RATE - 1, MAX_RATE - 1]


def test_alarm_thresholds_are_shares_of_capacity() -> None:
    doc = line("host", "switch", "switch", "host", capacity=999, alarm="80%")
    doc["links"][1]["alarm"] = "100%"
    doc["links"][2]["alarm"] = 1
    t = Topology.parse(doc)
    assert t.alarm_at == [799, 799, 999, 999, 999, 999]
    assert Topology.parse(line("host", "switch")).alarm_at == [None, None]
    doc = line("host", "switch", "host", capacity=1000)
    doc["links"][0]["alarm"] = "50%"
    assert Topology.parse(doc).alarm_at == [500, 500, None, None]  # only where a threshold is set


def test_alarm_of_zero_is_refused() -> None:
    assert "more than 0" in refused(line("host", "switch", alarm=0), "invalid_topology").message
    doc = line("host", "switch")
    doc["links"][0]["alarm"] = "0%"
    refused(doc, "invalid_topology")


@pytest.mark.parametrize("value", ["100%", 1, "150%", -0.1, "lots"])
def test_headroom_must_be_a_share_below_one(value: object) -> None:
    refused(line("host", "switch", headroom=value), "invalid_topology")
    doc = line("host", "switch")
    doc["links"][0]["headroom"] = value
    refused(doc, "invalid_topology")


@pytest.mark.parametrize("value", ["101%", 1.5, -0.5, "high"])
def test_alarm_above_capacity_or_not_a_share_is_refused(value: object) -> None:
    refused(line("host", "switch", alarm=value), "invalid_topology")


def test_labels_are_kept_and_may_be_empty() -> None:
    t = Topology.parse({"nodes": [{"id": "h1", "kind": "host", "labels": {"rack": "r1", "role": ""}}]})
    assert t.nodes["h1"].labels == {"rack": "r1", "role": ""}
    assert t.doc()["nodes"] == [{"id": "h1", "kind": "host", "labels": {"rack": "r1", "role": ""}}]


def test_empty_topology_has_no_hops() -> None:
    for t in (empty_topology(), Topology.parse({}), Topology.parse({"nodes": [], "links": []})):
        assert t.hops == [] and t.nodes == {} and t.links == {}
        assert t.doc() == {"nodes": [], "links": []}


# -- refusals ------------------------------------------------------------------


def _set(path: tuple[Any, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _drop(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return edit


def _rename(path: tuple[Any, ...], old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path:
            target = target[key]
        target[new] = target.pop(old)
    return edit


INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("unknown top-level field", _set(("routers",), []), "invalid_topology", "topology: unknown field 'routers'"),
    ("nodes not a list", _set(("nodes",), {"h1": "host"}), "invalid_topology", "must be lists"),
    ("links not a list", _set(("links",), "l0"), "invalid_topology", "must be lists"),
    ("node not an object", _set(("nodes", 1), "n1"), "invalid_topology", "nodes[1]: must be an object"),
    ("unknown node field", _set(("nodes", 0, "rack"), "r1"), "invalid_topology", "nodes[0]: unknown field 'rack'"),
    ("unknown kind", _set(("nodes", 1, "kind"), "router"), "invalid_topology", "nodes[1] (n1): kind must be"),
    ("missing kind", _drop(("nodes", 1, "kind")), "invalid_topology", "kind must be one of"),
    ("missing id", _drop(("nodes", 0, "id")), "invalid_topology", "nodes[0]"),
    ("id with a slash", _set(("nodes", 0, "id"), "a/b"), "invalid_topology", "nodes[0]"),
    ("id not a string", _set(("nodes", 0, "id"), 7), "invalid_topology", "nodes[0]"),
    ("labels not an object", _set(("nodes", 0, "labels"), ["x"]), "invalid_topology", "labels must be"),
    ("label value not a string", _set(("nodes", 0, "labels"), {"rack": 1}), "invalid_topology", "label 'rack'"),
    ("label name invalid", _set(("nodes", 0, "labels"), {"r k": "x"}), "invalid_topology", "label"),
    ("too many labels", _set(("nodes", 0, "labels"), {f"k{i}": "v" for i in range(MAX_LABELS + 1)}),
     "invalid_topology", "at most 32"),
    ("duplicate node", _set(("nodes", 2, "id"), "n0"), "duplicate_id", "nodes[2]: duplicate node id 'n0'"),
    ("duplicate link", _set(("links", 1, "id"), "l0"), "duplicate_id", "links[1]: duplicate link id 'l0'"),
    ("dangling link", _set(("links", 1, "b"), "ghost"), "dangling_link",
     "links[1] (l1): node 'ghost' does not exist"),
    ("link to itself", _set(("links", 0, "b"), "n0"), "invalid_topology", "two different ends"),
    ("link not an object", _set(("links", 0), None), "invalid_topology", "links[0]: must be an object"),
    ("unknown link field", _set(("links", 0, "latency"), 5), "invalid_topology", "unknown field 'latency'"),
    ("capacity twice", _set(("links", 0, "capacity_ab"), 5), "invalid_topology", "not both"),
    ("no capacity", _drop(("links", 0, "capacity")), "invalid_topology", "needs capacity"),
    ("one direction only", _rename(("links", 0), "capacity", "capacity_ab"), "invalid_topology", "needs capacity"),
    ("negative capacity", _set(("links", 0, "capacity"), -1), "invalid_topology", "links[0] (l0): capacity"),
    ("capacity not a rate", _set(("links", 0, "capacity"), "fast"), "invalid_topology", "not a rate"),
    ("capacity over 1P", _set(("links", 0, "capacity"), "2P"), "invalid_topology", "over the limit"),
    ("capacity a boolean", _set(("links", 0, "capacity"), True), "invalid_topology", "boolean"),
    ("link end missing", _drop(("links", 0, "a")), "invalid_topology", "links[0] (l0) a"),
]


@pytest.mark.parametrize(("edit", "code", "fragment"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_document_is_refused_saying_where(edit: Callable[[dict[str, Any]], None], code: str,
                                                  fragment: str) -> None:
    doc = line("host", "switch", "host")
    doc["nodes"][0]["labels"] = {"rack": "r1"}
    Topology.parse(copy.deepcopy(doc))  # the document is fine before the edit
    edit(doc)
    err = refused(doc, code)
    assert fragment in err.message, err.message


@pytest.mark.parametrize("doc", [None, [], "nodes: []", 3])
def test_a_document_that_is_not_an_object_is_refused(doc: object) -> None:
    refused(doc, "invalid_topology")


# -- the document --------------------------------------------------------------


def test_doc_is_canonical() -> None:
    doc = line("host", "switch", "host", capacity="1G", headroom=0.1, alarm="90%")
    doc["links"][1] = {"id": "l1", "a": "n1", "b": "n2", "capacity_ab": "2G", "capacity_ba": "1.5G",
                       "headroom": "0.05", "alarm": 1}
    assert Topology.parse(doc).doc() == {
        "nodes": [{"id": "n0", "kind": "host"}, {"id": "n1", "kind": "switch"}, {"id": "n2", "kind": "host"}],
        "links": [{"id": "l0", "a": "n0", "b": "n1", "capacity": G},
                  {"id": "l1", "a": "n1", "b": "n2", "capacity_ab": 2 * G, "capacity_ba": 1_500_000_000,
                   "headroom": "5%", "alarm": "100%"}],
        "headroom": "10%",
        "alarm": "90%",
    }
    assert "headroom" not in Topology.parse(line("host", "switch", headroom="0%")).doc()


def test_parse_of_doc_is_the_same_topology() -> None:
    t = Topology.parse(SQUARE)
    again = Topology.parse(t.doc())
    assert again.doc() == t.doc()
    assert (again.hops, again.capacity, again.usable, again.alarm_at) == (t.hops, t.capacity, t.usable, t.alarm_at)
    assert again.graph == t.graph


NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzAZ0123456789-_.:", min_size=1, max_size=6)


@st.composite
def shares(draw: st.DrawFn, *, alarm: bool = False) -> tuple[object, Fraction]:
    """A share as a user may write it (percent text, decimal text, float), and its exact value."""
    if alarm and draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from([1, "100%", 1.0])), Fraction(1)
    k = draw(st.integers(min_value=1, max_value=6))
    n = draw(st.integers(min_value=1 if alarm else 0, max_value=10**k - 1))
    value = Fraction(n, 10**k)
    decimal = Decimal(n) / Decimal(10**k)
    spelling = draw(st.sampled_from(["percent", "decimal", "float"]))
    if spelling == "percent":
        return share_text(value), value
    if spelling == "decimal":
        return str(decimal), value
    return float(decimal), value


@st.composite
def capacities(draw: st.DrawFn) -> tuple[dict[str, object], int, int]:
    """The capacity fields of a link as a user may write them, and the exact capacities a → b and b → a."""
    def one() -> tuple[object, int]:
        bps = draw(st.one_of(st.integers(min_value=0, max_value=10**13),
                             st.builds(lambda m, e: m * 10**e, st.integers(1, 999), st.integers(0, 12))))
        return (format_rate(bps) if draw(st.booleans()) else bps), bps

    if draw(st.booleans()):
        spelled, bps = one()
        return {"capacity": spelled}, bps, bps
    (ab_spelled, ab), (ba_spelled, ba) = one(), one()
    return {"capacity_ab": ab_spelled, "capacity_ba": ba_spelled}, ab, ba


@st.composite
def topology_docs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A valid document and what it must give: per hop (in order) the capacity, usable and alarm threshold."""
    ids = draw(st.lists(NAMES, min_size=0, max_size=7, unique=True))
    nodes = []
    for node_id in ids:
        node: dict[str, Any] = {"id": node_id, "kind": draw(st.sampled_from(NODE_KINDS))}
        labels = draw(st.dictionaries(NAMES, st.one_of(NAMES, st.just("")), max_size=3))
        if labels or draw(st.booleans()):
            node["labels"] = labels
        nodes.append(node)
    doc: dict[str, Any] = {"nodes": nodes, "links": []}
    headroom, alarm = Fraction(0), None
    if draw(st.booleans()):
        doc["headroom"], headroom = draw(shares())
    if draw(st.booleans()):
        doc["alarm"], alarm = draw(shares(alarm=True))
    expected: dict[str, Any] = {"hops": [], "capacity": [], "usable": [], "alarm_at": []}
    link_ids = draw(st.lists(NAMES, max_size=10, unique=True)) if len(ids) >= 2 else []
    for link_id in link_ids:
        a = draw(st.sampled_from(ids))
        b = draw(st.sampled_from([i for i in ids if i != a]))
        fields, ab, ba = draw(capacities())
        link: dict[str, Any] = {"id": link_id, "a": a, "b": b, **fields}
        room, threshold = headroom, alarm
        if draw(st.booleans()):
            link["headroom"], room = draw(shares())
        if draw(st.booleans()):
            link["alarm"], threshold = draw(shares(alarm=True))
        doc["links"].append(link)
        for direction, cap in (("ab", ab), ("ba", ba)):
            expected["hops"].append((link_id, direction))
            expected["capacity"].append(cap)
            # integer arithmetic only: floor(cap * (1 - room)) and floor(cap * threshold)
            expected["usable"].append(cap * (room.denominator - room.numerator) // room.denominator)
            expected["alarm_at"].append(None if threshold is None
                                        else cap * threshold.numerator // threshold.denominator)
    return doc, expected


@settings(max_examples=100, deadline=None)
@given(topology_docs())
def test_hops_follow_the_document(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    doc, expected = case
    t = Topology.parse(doc)
    assert t.hops == expected["hops"]
    assert t.capacity == expected["capacity"]
    assert t.usable == expected["usable"]
    assert t.alarm_at == expected["alarm_at"]
    assert list(t.nodes) == t.node_ids == [n["id"] for n in doc["nodes"]]
    assert [t.nodes[n["id"]].kind for n in doc["nodes"]] == [n["kind"] for n in doc["nodes"]]
    for i, lk in enumerate(doc["links"]):
        assert t.graph.ends[2 * i] == (t.index[lk["a"]], t.index[lk["b"]])
        assert t.graph.ends[2 * i + 1] == (t.index[lk["b"]], t.index[lk["a"]])


@settings(max_examples=100, deadline=None)
@given(topology_docs())
def test_parse_of_doc_round_trips(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    t = Topology.parse(case[0])
    doc = t.doc()
    assert json.loads(json.dumps(doc)) == doc  # plain JSON: no Fraction, no tuple
    again = Topology.parse(doc)
    assert again.doc() == doc
    assert (again.hops, again.capacity, again.usable, again.alarm_at) == (t.hops, t.capacity, t.usable, t.alarm_at)
    assert (again.headroom, again.alarm) == (t.headroom, t.alarm)
    assert again.nodes == t.nodes and again.links == t.links
    assert again.graph == t.graph
    assert again.unchanged_hops(t) == t.unchanged_hops(again) == set(t.hops)


# -- edits ---------------------------------------------------------------------


def test_edits_make_a_new_topology_and_leave_the_old_one_as_it_was() -> None:
    old = Topology.parse(SQUARE)
    before = copy.deepcopy(old.doc())
    grown = old.with_node(Node("h4", "host")).with_link(Link("h4-s2", "h4", "s2", G, G))
    assert grown is not old
    assert old.doc() == before and "h4" not in old.nodes and ("h4-s2", "ab") not in old.hop_index
    assert grown.hops[-2:] == [("h4-s2", "ab"), ("h4-s2", "ba")]
    path = grown.finder.shortest(grown.index["h4"], grown.index["h2"], lambda h: True)
    assert path is not None and grown.path_doc(path)["nodes"] == ["h4", "s2", "h2"]
    shrunk = grown.without_link("h4-s2").without_node("h4")
    assert shrunk.doc() == before
    assert grown.links_of("h4") == ["h4-s2"]


def test_changing_a_nodes_kind_keeps_its_place() -> None:
    old = Topology.parse(SQUARE)
    new = old.with_node(Node("s3", "host", {"was": "switch"}))
    assert new.index == old.index and new.node_ids == old.node_ids
    assert new.nodes["s3"].kind == "host" and new.nodes["s3"].labels == {"was": "switch"}
    assert old.nodes["s3"].kind == "switch"


def test_a_link_to_a_missing_node_is_refused_and_changes_nothing() -> None:
    old = Topology.parse(SQUARE)
    before = old.doc()
    with pytest.raises(InvalidInput) as info:
        old.with_link(Link("x", "h1", "ghost", G, G))
    assert info.value.code == "dangling_link" and "'ghost'" in info.value.message
    assert old.doc() == before


def test_removing_a_link_renumbers_the_hops_after_it() -> None:
    old = Topology.parse(SQUARE)
    new = old.without_link("h2-s2")
    assert ("h2-s2", "ab") not in new.hop_index
    assert new.hops == [key for key in old.hops if key[0] != "h2-s2"]
    assert new.hop_index[("s1-s2", "ab")] == old.hop_index[("s1-s2", "ab")] - 2


def test_parse_node_and_parse_link_check_one_item() -> None:
    assert parse_node({"id": "s9", "kind": "gateway"}, "node s9") == Node("s9", "gateway", {})
    assert parse_link({"id": "l", "a": "x", "b": "y", "capacity": "1G", "headroom": "5%"}, "link l") == Link(
        "l", "x", "y", G, G, Fraction(1, 20), None)
    with pytest.raises(InvalidInput) as info:
        parse_node({"id": "s9", "kind": "router"}, "node s9")
    assert info.value.code == "invalid_topology" and info.value.message.startswith("node s9 (s9)")


# -- unchanged hops ------------------------------------------------------------


def test_unchanged_hops_of_the_same_topology_are_all_its_hops() -> None:
    t = Topology.parse(SQUARE)
    assert t.unchanged_hops(t) == set(t.hops)
    assert t.unchanged_hops(empty_topology()) == set()
    assert empty_topology().unchanged_hops(t) == set()


def test_changing_a_links_capacity_changes_only_that_direction() -> None:
    old = Topology.parse(SQUARE)
    new = old.with_link(Link("s1-s2", "s1", "s2", 7 * G, 5 * G))  # was 10G a → b, 5G b → a
    assert set(old.hops) - new.unchanged_hops(old) == {("s1-s2", "ab")}


def test_changing_a_links_headroom_changes_its_hops() -> None:
    old = Topology.parse(SQUARE)
    new = old.with_link(Link("h1-s1", "h1", "s1", G, G, headroom=Fraction(1, 10)))
    assert set(old.hops) - new.unchanged_hops(old) == {("h1-s1", "ab"), ("h1-s1", "ba")}
    same = old.with_link(Link("h1-s1", "h1", "s1", G, G, headroom=Fraction(0)))  # usable unchanged
    assert same.unchanged_hops(old) == set(old.hops)


def test_changing_only_an_alarm_or_labels_keeps_the_hops() -> None:
    old = Topology.parse(SQUARE)
    new = old.with_link(Link("h1-s1", "h1", "s1", G, G, alarm=Fraction(1, 2))).with_node(
        Node("s1", "switch", {"rack": "r9"}))
    assert new.unchanged_hops(old) == set(old.hops)


def test_a_node_that_stops_passing_traffic_changes_the_hops_at_it() -> None:
    old = Topology.parse(SQUARE)
    new = old.with_node(Node("s3", "host"))
    at_s3 = {key for key in old.hops if "s3" in (old.links[key[0]].a, old.links[key[0]].b)}
    assert at_s3 == {(lk, d) for lk in ("h3-s3", "s1-s3", "s3-s2", "c1-s3") for d in ("ab", "ba")}
    assert new.unchanged_hops(old) == set(old.hops) - at_s3
    switch_to_gateway = old.with_node(Node("s3", "gateway"))  # still passes traffic
    assert switch_to_gateway.unchanged_hops(old) == set(old.hops)


def test_swapping_a_links_ends_changes_its_hops() -> None:
    old = Topology.parse(SQUARE)
    new = old.with_link(Link("s1-s3", "s3", "s1", G, G))
    assert set(old.hops) - new.unchanged_hops(old) == {("s1-s3", "ab"), ("s1-s3", "ba")}


def test_added_and_removed_links_are_not_unchanged() -> None:
    old = Topology.parse(SQUARE)
    new = old.without_link("h1-s1").with_link(Link("h1-s2", "h1", "s2", G, G))
    unchanged = new.unchanged_hops(old)
    assert unchanged == set(old.hops) - {("h1-s1", "ab"), ("h1-s1", "ba")}  # renumbered hops still match
    assert ("h1-s2", "ab") not in unchanged


# -- paths ---------------------------------------------------------------------


def test_path_doc_lists_nodes_and_links_in_order() -> None:
    t = Topology.parse(SQUARE)
    path = [hop(t, "h1-s1", "ab"), hop(t, "s1-s3", "ab"), hop(t, "s3-s2", "ab"), hop(t, "h2-s2", "ba")]
    assert t.path_doc(path) == {"nodes": ["h1", "s1", "s3", "s2", "h2"],
                                "links": ["h1-s1", "s1-s3", "s3-s2", "h2-s2"]}
    assert t.path_doc([hop(t, "h2-s2", "ab")]) == {"nodes": ["h2", "s2"], "links": ["h2-s2"]}


def test_hops_of_a_stored_path_and_of_one_whose_link_is_gone() -> None:
    t = Topology.parse(SQUARE)
    stored = [("h1-s1", "ab"), ("s1-s2", "ab"), ("h2-s2", "ba")]
    assert t.hops_of(stored) == [hop(t, *key) for key in stored]
    assert [t.hops[h] for h in t.hops_of(stored) or []] == stored
    assert t.without_link("s1-s2").hops_of(stored) is None
    assert t.hops_of([]) == []


def test_links_of_a_node() -> None:
    t = Topology.parse(SQUARE)
    assert t.links_of("h3") == ["h3-s1", "h3-s3"]
    assert sorted(t.links_of("s2")) == ["h2-s2", "m1-s2", "s1-s2", "s3-s2"]
    assert t.links_of("ghost") == []


@pytest.mark.parametrize(("middle", "passes"), [("switch", True), ("gateway", True), ("host", False),
                                                ("middlebox", False)])
def test_paths_pass_through_switches_and_gateways_only(middle: str, passes: bool) -> None:
    t = Topology.parse(line("host", middle, "host"))
    path = t.finder.shortest(t.index["n0"], t.index["n2"], lambda h: True)
    assert (path is not None) == passes
    if passes:
        assert path is not None and t.path_doc(path) == {"nodes": ["n0", "n1", "n2"], "links": ["l0", "l1"]}


def test_a_multi_homed_host_is_not_a_shortcut() -> None:
    t = Topology.parse(SQUARE)
    # h1 → c1: via s1 ─ s3 (2 switches), never s1 ─ h3 ─ s3 through the host h3
    path = t.finder.shortest(t.index["h1"], t.index["c1"], lambda h: True)
    assert path is not None and t.path_doc(path)["nodes"] == ["h1", "s1", "s3", "c1"]
    without = t.without_link("s1-s3")
    path = without.finder.shortest(without.index["h1"], without.index["c1"], lambda h: True)
    assert path is not None and "h3" not in without.path_doc(path)["nodes"]
    assert without.path_doc(path)["nodes"] == ["h1", "s1", "s2", "s3", "c1"]
