"""Path finding against oracles: networkx and a brute-force list of all simple paths.

Two kinds of graphs. Fat trees (hosts under edge switches, plus one host
homed on two edge switches in different pods) are the shape the searches are
tuned for: they check the transit rule where it bites (a multi-homed host must
never be used as a shortcut between its two switches) and that feasibility is
asked *lazily*, about once per hop of the answer. Random multigraphs from
hypothesis (directed hops and undirected links, parallel hops, self-loops,
random transit flags and random feasible sets) check the answers in general.

The oracle enumerates every simple hop path from ``src`` to ``dst`` with
networkx on a multigraph keyed by hop index, after deleting the hops the
transit rule forbids: into ``src``, out of ``dst``, and into or out of a
non-transit node other than the two ends. From that list it reads off the
fewest hops, the best bottleneck and the ``k`` smallest lengths. Answers are
checked for validity (chained, loopless, feasible, through transit nodes only)
and for *value* against the oracle, never for the identity of a path, since
ties may be broken either way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenure.domain.paths import UNREACHABLE, Graph, PathFinder, path_nodes

# -- fat trees ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FatTree:
    graph: Graph
    cores: list[int]
    aggs: list[list[int]]  # aggs[pod]
    edges: list[list[int]]  # edges[pod]
    hosts: list[list[int]]  # hosts[pod] = host nodes of that pod (the multi-homed host excluded)
    multihomed: int  # a host linked to an edge switch of pod 0 and one of pod 1
    homing_hops: tuple[int, int]  # its two uplink hops (host -> switch), pod 0's first
    link: dict[tuple[int, int], int]  # (u, v) -> the hop u -> v


def fat_tree(k: int) -> FatTree:
    """A k-ary fat tree: k pods of k/2 edge and k/2 aggregation switches, (k/2)**2 cores, k/2 hosts per edge."""
    half = k // 2
    transit: list[bool] = []
    hops: list[tuple[int, int]] = []

    def node(is_switch: bool) -> int:
        transit.append(is_switch)
        return len(transit) - 1

    def connect(a: int, b: int) -> None:
        hops.extend([(a, b), (b, a)])

    cores = [node(True) for _ in range(half * half)]
    hosts: list[list[int]] = []
    pod_aggs: list[list[int]] = []
    pod_edges: list[list[int]] = []
    for _pod in range(k):
        aggs = [node(True) for _ in range(half)]
        edges = [node(True) for _ in range(half)]
        pod_aggs.append(aggs)
        pod_edges.append(edges)
        for j, agg in enumerate(aggs):
            for core in cores[j * half : (j + 1) * half]:
                connect(agg, core)
            for edge in edges:
                connect(agg, edge)
        pod_hosts = []
        for edge in edges:
            for _ in range(half):
                host = node(False)
                connect(host, edge)
                pod_hosts.append(host)
        hosts.append(pod_hosts)
    multihomed = node(False)
    connect(multihomed, pod_edges[0][0])
    connect(multihomed, pod_edges[1][0])
    graph = Graph.build(len(transit), hops, transit)
    link = {uv: hop for hop, uv in enumerate(hops)}
    homing = (link[(multihomed, pod_edges[0][0])], link[(multihomed, pod_edges[1][0])])
    return FatTree(
        graph=graph,
        cores=cores,
        aggs=pod_aggs,
        edges=pod_edges,
        hosts=hosts,
        multihomed=multihomed,
        homing_hops=homing,
        link=link,
    )


FAT4 = fat_tree(4)
FAT8 = fat_tree(8)


def everything(_hop: int) -> bool:
    return True


# -- oracle and validity --------------------------------------------------


def all_paths(graph: Graph, src: int, dst: int, ok: Callable[[int], bool]) -> list[list[int]]:
    """Every simple feasible hop path from src to dst whose intermediate nodes are transit nodes."""
    g = nx.MultiDiGraph()
    g.add_nodes_from(range(graph.n))
    for hop, (u, v) in enumerate(graph.ends):
        inner_u = u not in (src, dst)
        inner_v = v not in (src, dst)
        if not ok(hop) or v == src or u == dst or (inner_u and not graph.transit[u]):
            continue
        if inner_v and not graph.transit[v]:
            continue
        g.add_edge(u, v, key=hop)
    return [[key for _u, _v, key in p] for p in nx.all_simple_edge_paths(g, src, dst)]


def assert_valid(graph: Graph, path: Sequence[int], src: int, dst: int, ok: Callable[[int], bool]) -> None:
    assert path, "a path between distinct nodes has at least one hop"
    for a, b in pairwise(path):
        assert graph.ends[a][1] == graph.ends[b][0], f"hops {a} and {b} do not chain in {path}"
    nodes = path_nodes(graph, path)
    assert len(nodes) == len(path) + 1
    assert nodes[0] == src and nodes[-1] == dst, nodes
    assert len(set(nodes)) == len(nodes), f"loop in {nodes}"
    assert all(ok(h) for h in path), path
    assert all(graph.transit[v] for v in nodes[1:-1]), f"{nodes} passes through a non-transit node"


class CountingOk:
    """An ``ok`` callback over a feasible set that records how often each hop is asked about."""

    def __init__(self, feasible: Callable[[int], bool]) -> None:
        self.feasible = feasible
        self.calls: Counter[int] = Counter()

    def __call__(self, hop: int) -> bool:
        self.calls[hop] += 1
        return self.feasible(hop)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def asked_at_most_once(self) -> bool:
        return all(c == 1 for c in self.calls.values())


# -- random multigraphs ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    graph: Graph
    src: int
    dst: int
    feasible: tuple[bool, ...]
    residual: tuple[int, ...]


@st.composite
def cases(draw: st.DrawFn, *, weights: str = "") -> Case:
    """A random multigraph and two distinct ends; ``weights`` is "", "feasible" or "residual"."""
    n = draw(st.integers(min_value=2, max_value=12))
    node = st.integers(min_value=0, max_value=n - 1)
    links = draw(st.lists(st.tuples(node, node, st.booleans()), min_size=n, max_size=3 * n))
    hops: list[tuple[int, int]] = []
    for u, v, both_ways in links:
        hops.append((u, v))
        if both_ways:
            hops.append((v, u))
    hosts = draw(st.sets(node, max_size=max(1, n // 3)))  # mostly switches
    transit = [v not in hosts for v in range(n)]
    feasible = [True] * len(hops)
    residual = [0] * len(hops)
    if weights == "feasible" and hops:
        for hop in draw(st.sets(st.integers(0, len(hops) - 1), max_size=len(hops) // 3)):  # mostly ok
            feasible[hop] = False
    elif weights == "residual":
        residual = draw(st.lists(st.integers(0, 5), min_size=len(hops), max_size=len(hops)))
    src = draw(node)
    dst = draw(node.filter(lambda v: v != src))
    return Case(Graph.build(n, hops, transit), src, dst, tuple(feasible), tuple(residual))


@settings(max_examples=250, deadline=None)
@given(case=cases(weights="feasible"))
def test_shortest_matches_the_oracle(case: Case) -> None:
    ok = CountingOk(case.feasible.__getitem__)
    path = PathFinder(case.graph).shortest(case.src, case.dst, ok)
    assert ok.asked_at_most_once(), ok.calls
    oracle = all_paths(case.graph, case.src, case.dst, case.feasible.__getitem__)
    if not oracle:
        assert path is None
        return
    assert path is not None
    assert_valid(case.graph, path, case.src, case.dst, case.feasible.__getitem__)
    assert len(path) == min(len(p) for p in oracle)


@settings(max_examples=200, deadline=None)
@given(case=cases(weights="residual"), need=st.integers(min_value=0, max_value=4))
def test_widest_matches_the_oracle(case: Case, need: int) -> None:
    calls: Counter[int] = Counter()

    def residual(hop: int) -> int:
        calls[hop] += 1
        return case.residual[hop]

    path = PathFinder(case.graph).widest(case.src, case.dst, residual, need)
    assert all(c == 1 for c in calls.values()), calls

    def fits(hop: int) -> bool:
        return case.residual[hop] >= need

    oracle = all_paths(case.graph, case.src, case.dst, fits)
    if not oracle:
        assert path is None
        return
    assert path is not None
    assert_valid(case.graph, path, case.src, case.dst, fits)
    best = max(min(case.residual[h] for h in p) for p in oracle)
    assert min(case.residual[h] for h in path) == best
    assert len(path) == min(len(p) for p in oracle if min(case.residual[h] for h in p) == best)


@settings(max_examples=150, deadline=None)
@given(case=cases(weights="feasible"), k=st.integers(min_value=1, max_value=6))
def test_k_shortest_matches_the_oracle(case: Case, k: int) -> None:
    ok = CountingOk(case.feasible.__getitem__)
    finder = PathFinder(case.graph)
    paths = finder.k_shortest(case.src, case.dst, ok, k)
    assert ok.asked_at_most_once(), ok.calls
    oracle = all_paths(case.graph, case.src, case.dst, case.feasible.__getitem__)
    for p in paths:
        assert_valid(case.graph, p, case.src, case.dst, case.feasible.__getitem__)
    assert len({tuple(p) for p in paths}) == len(paths), "paths are not distinct"
    assert [len(p) for p in paths] == sorted(len(p) for p in oracle)[:k]
    if paths:
        assert paths[0] == finder.shortest(case.src, case.dst, case.feasible.__getitem__)


@settings(max_examples=100, deadline=None)
@given(case=cases())
def test_distances_honour_the_transit_rule(case: Case) -> None:
    finder = PathFinder(case.graph)
    dist = finder.distances_to(case.dst)
    assert dist[case.dst] == 0
    for u in range(case.graph.n):
        if u == case.dst:
            continue
        lengths = [len(p) for p in all_paths(case.graph, u, case.dst, everything)]
        assert dist[u] == (min(lengths) if lengths else UNREACHABLE), u


# -- fat trees ------------------------------------------------------------


@pytest.mark.parametrize("tree", [FAT4, FAT8], ids=["k4", "k8"])
def test_fat_tree_shortest_is_six_hops_between_pods_and_matches_networkx(tree: FatTree) -> None:
    finder = PathFinder(tree.graph)
    src, dst = tree.hosts[0][0], tree.hosts[-1][-1]
    path = finder.shortest(src, dst, everything)
    assert path is not None
    assert_valid(tree.graph, path, src, dst, everything)
    switches = [v for v in range(tree.graph.n) if tree.graph.transit[v]]
    g = nx.DiGraph(tree.graph.ends).subgraph([*switches, src, dst])
    assert len(path) == nx.shortest_path_length(g, src, dst) == 6


def test_ok_is_evaluated_lazily_on_a_fat_tree() -> None:
    # With everything feasible the search walks straight down one shortest path: it asks exactly
    # once per hop of the answer today; the bound leaves room for a different tie-break.
    finder = PathFinder(FAT8.graph)
    pairs = [(FAT8.hosts[0][0], FAT8.hosts[7][-1]), (FAT8.hosts[3][5], FAT8.hosts[1][2])]
    pairs.append((FAT8.hosts[0][0], FAT8.hosts[0][1]))  # same edge switch: two hops
    pairs.append((FAT8.hosts[0][0], FAT8.hosts[0][-1]))  # same pod, other edge switch: four hops
    pairs.append((FAT8.multihomed, FAT8.hosts[5][0]))  # two uplinks to choose from
    for src, dst in pairs:
        ok = CountingOk(everything)
        path = finder.shortest(src, dst, ok)
        assert path is not None
        assert ok.asked_at_most_once(), ok.calls
        assert ok.total <= 2 * len(path), (len(path), ok.total)
        assert set(path) <= set(ok.calls), "every hop of the answer was checked"


def test_search_backs_off_when_most_core_uplinks_are_full() -> None:
    # Every core uplink of pod 0 is full but one: the search must try the others and back off.
    tree = FAT8
    last_agg, last_core = tree.aggs[0][-1], tree.cores[-1]
    full = {
        tree.link[(agg, core)]
        for agg in tree.aggs[0]
        for core in tree.cores
        if (agg, core) in tree.link and (agg, core) != (last_agg, last_core)
    }

    def feasible(hop: int) -> bool:
        return hop not in full

    ok = CountingOk(feasible)
    src, dst = tree.hosts[0][0], tree.hosts[5][0]
    path = PathFinder(tree.graph).shortest(src, dst, ok)
    assert path is not None and len(path) == 6
    assert_valid(tree.graph, path, src, dst, feasible)
    assert {last_agg, last_core} <= set(path_nodes(tree.graph, path))
    assert ok.asked_at_most_once(), ok.calls


def test_path_never_transits_a_host() -> None:
    # The multi-homed host joins its two switches in two hops; through the switches it takes four.
    tree = FAT4
    finder = PathFinder(tree.graph)
    src, dst = tree.edges[0][0], tree.edges[1][0]  # the host's two switches
    paths = finder.k_shortest(src, dst, everything, 8)
    assert [len(p) for p in paths] == [4] * 4 + [6] * 4
    for path in paths:
        assert tree.multihomed not in path_nodes(tree.graph, path)
    # With its switch's uplinks full, a host under edge 0 of pod 0 has no way out but through the
    # multi-homed host, which is forbidden: no path.
    uplinks = {tree.link[(src, agg)] for agg in tree.aggs[0]}
    assert finder.shortest(tree.hosts[0][0], tree.hosts[1][0], lambda hop: hop not in uplinks) is None
    assert finder.k_shortest(tree.hosts[0][0], tree.hosts[1][0], lambda hop: hop not in uplinks, 3) == []
    # A line switch - host - switch: the ends are fine, the middle is not.
    line = PathFinder(Graph.build(3, [(0, 1), (1, 2)], [True, False, True]))
    assert line.shortest(0, 2, everything) is None
    assert line.shortest(0, 1, everything) == [0]
    assert line.shortest(1, 2, everything) == [1]


def test_multihomed_host_uses_its_other_switch_when_one_link_is_full() -> None:
    tree = FAT4
    finder = PathFinder(tree.graph)
    first, second = tree.homing_hops
    dst = tree.hosts[2][0]
    path = finder.shortest(tree.multihomed, dst, lambda hop: hop != first)
    assert path is not None and path[0] == second
    path = finder.shortest(tree.multihomed, dst, lambda hop: hop != second)
    assert path is not None and path[0] == first
    # And widest prefers the uplink with room.
    path = finder.widest(tree.multihomed, dst, lambda hop: 1 if hop == first else 10, need=1)
    assert path is not None and path[0] == second
    assert finder.widest(tree.multihomed, dst, lambda hop: 0 if hop in (first, second) else 10, need=1) is None
    # Into the host: the last hop may come from either switch.
    back = {tree.link[(tree.graph.ends[h][1], tree.multihomed)] for h in tree.homing_hops}
    path = finder.shortest(dst, tree.multihomed, lambda hop: hop != min(back))
    assert path is not None and path[-1] == max(back)


def test_widest_prefers_width_then_fewer_hops() -> None:
    # 0 -> 3 directly (width 2), via 1 (width 5, two hops), via 1 and 2 (width 5, three hops).
    graph = Graph.build(4, [(0, 3), (0, 1), (1, 3), (1, 2), (2, 3)], [True] * 4)
    width = [2, 5, 5, 9, 9]
    finder = PathFinder(graph)
    assert finder.widest(0, 3, width.__getitem__, need=1) == [1, 2]
    assert finder.widest(0, 3, width.__getitem__, need=6) is None
    assert finder.shortest(0, 3, everything) == [0]
    assert finder.k_shortest(0, 3, everything, 5) == [[0], [1, 2], [1, 3, 4]]


def test_widest_is_not_fooled_by_a_wider_but_longer_prefix() -> None:
    # Node 2 is reached widest via 1 (width 10, two hops) and narrower directly (width 5, one hop);
    # the last hop has width 5, so both routes tie at 5 and the direct one is shorter. A single
    # Dijkstra over (width, hops) labels would settle 2 via 1 and answer with three hops.
    graph = Graph.build(4, [(0, 1), (1, 2), (0, 2), (2, 3)], [True] * 4)
    width = [10, 10, 5, 5]
    assert PathFinder(graph).widest(0, 3, width.__getitem__, need=1) == [2, 3]


def test_src_equal_to_dst_is_rejected() -> None:
    finder = PathFinder(FAT4.graph)
    host = FAT4.hosts[0][0]
    with pytest.raises(ValueError):
        finder.shortest(host, host, everything)
    with pytest.raises(ValueError):
        finder.widest(host, host, lambda hop: 1, need=1)
    with pytest.raises(ValueError):
        finder.k_shortest(host, host, everything, 1)
    with pytest.raises(ValueError):
        finder.k_shortest(host, FAT4.hosts[1][0], everything, 0)


def test_unreachable_is_none() -> None:
    # 0 -> 1 only; 2 is isolated.
    graph = Graph.build(3, [(0, 1)], [True, True, True])
    finder = PathFinder(graph)
    assert finder.shortest(1, 0, everything) is None
    assert finder.shortest(0, 2, everything) is None
    assert finder.widest(1, 0, lambda hop: 9, need=1) is None
    assert finder.k_shortest(0, 2, everything, 3) == []
    assert finder.distances_to(0) == (0, UNREACHABLE, UNREACHABLE)
    # Reachable statically, but the only hop is infeasible.
    assert finder.shortest(0, 1, lambda hop: False) is None


def test_distance_cache_is_a_bounded_lru() -> None:
    finder = PathFinder(FAT4.graph, cache_size=2)
    a, b, c = FAT4.cores[0], FAT4.cores[1], FAT4.cores[2]  # switches: one cache entry each
    da = finder.distances_to(a)
    assert finder.distances_to(a) is da
    finder.distances_to(b)
    finder.distances_to(a)  # a is now the most recent; b is evicted next
    finder.distances_to(c)
    assert finder.distances_to(a) is da
    db = finder.distances_to(b)
    assert finder.distances_to(b) is db and db == PathFinder(FAT4.graph).distances_to(b)


def bfs_distances(graph: Graph, dst: int) -> list[int]:
    """Hop distances to dst by networkx on the graph without hops through non-transit nodes (the oracle)."""
    g = nx.DiGraph()
    g.add_nodes_from(range(graph.n))
    g.add_edges_from((u, v) for u, v in graph.ends if v == dst or graph.transit[v])
    lengths = nx.single_target_shortest_path_length(g, dst)
    return [dict(lengths).get(u, UNREACHABLE) for u in range(graph.n)]


def test_a_hosts_distances_come_from_its_switches() -> None:
    finder = PathFinder(FAT8.graph)
    for host in (FAT8.hosts[0][0], FAT8.hosts[3][5], FAT8.multihomed):
        assert list(finder.distances_to(host)) == bfs_distances(FAT8.graph, host)


def test_spread_ties_use_the_whole_fabric_and_repeat_for_the_same_request() -> None:
    tree = FAT8
    finder = PathFinder(tree.graph)
    src, dst = tree.hosts[0][0], tree.hosts[1][0]
    plain = {tuple(finder.shortest(src, dst, everything) or ()) for _ in range(5)}
    assert len(plain) == 1  # without spread every request takes the same path
    spread = [finder.shortest(src, dst, everything, spread=salt) for salt in range(1, 65)]
    assert all(p is not None and len(p) == 6 for p in spread)
    cores = {path_nodes(tree.graph, p)[3] for p in spread if p}
    assert len(cores) >= 8  # the 16 cores are shared out, not one taken by everyone
    assert finder.shortest(src, dst, everything, spread=7) == finder.shortest(src, dst, everything, spread=7)
    counting = CountingOk(everything)
    finder.shortest(src, dst, counting, spread=12345)
    assert counting.total <= 12 and counting.asked_at_most_once()  # still lazy: about one check per hop
