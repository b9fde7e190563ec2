"""Paths for bandwidth reservations: shortest, widest and k-shortest.

The network arrives already reduced to integers (``topology.py`` builds the
:class:`Graph`): nodes are ``0 .. n-1`` and each *direction* of a link is a
*hop* with its own index, so a path is a list of hop indices and parallel links
stay distinct. A path may start and end at any node, but every node it passes
*through* must be a transit node: switches forward traffic, hosts and
middleboxes do not, so no path may use a multi-homed host as a shortcut.

Capacity is not known here. The caller passes a callback (``ok(hop)`` or
``residual(hop)``) that asks the ledger, and that is the expensive part: a
ledger peak costs ~5-20 µs, while a heap operation costs well under one. A
textbook search that checks every hop leaving each node it expands would, on a
k=16 fat tree (16 hops out of each switch), ask the ledger about hundreds of
hops to find a six-hop path. So the searches here are built to ask as little
as possible:

- *A\\* with the static hop distance as heuristic.* ``distances_to(dst)`` is a
  reverse breadth-first search honouring the transit rule, cached per
  destination in a bounded LRU (destinations repeat: the same hosts are asked
  for over and over). It ignores capacity, so it never overestimates, and with
  unit costs it is consistent (``h(u) <= 1 + h(v)`` along every hop), so the
  first time A* settles a node it has its fewest-hop route. Banning hops or
  nodes (Yen's algorithm) only removes hops, so the heuristic stays valid.
- *Lazy feasibility.* Expanding a node pushes its out-hops *unchecked*; a hop
  is checked only when it is popped to settle its head node, and hops to
  already-settled nodes are dropped without asking. An infeasible hop that was
  pushed but never popped costs nothing. This pops the feasible hops in exactly
  the order an eager search would, so the answer is the same.
- *Ties toward deeper nodes.* Among equal ``f = g + h`` the larger ``g`` pops
  first, so when everything fits the search walks straight down one shortest
  path and asks the ledger about roughly as many hops as the path has.
- *Spreading ties.* With ``spread=0`` equal entries pop in the order they were
  pushed, so every search between two pods takes the same first aggregation
  switch and core: correct, but it piles every reservation onto a few links
  (denser ledgers, slower peaks, a lopsided fabric). A non-zero ``spread`` (the
  caller derives it from the request) orders ties by a hash of the hop mixed
  with it instead, so different requests take different equal-length paths and
  the same request always the same one.
- *Memoization within a search.* ``ok``/``residual`` is called at most once per
  hop per public call (all spur searches of ``k_shortest`` share one memo).

``widest`` maximizes the bottleneck, then minimizes hops. That order is not
isotone (a wider prefix may be longer, and extending both by a narrow hop
makes the longer one worse), so one Dijkstra over ``(width, hops)`` labels can
be wrong. It runs in two phases instead: a max-min Dijkstra (lazy too: an
unchecked hop is queued at its parent's width, an upper bound, and re-queued at
its true width once checked) finds the best bottleneck ``B``, then the A* above
finds the fewest-hop path using only hops with ``residual >= B``.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

UNREACHABLE = 1 << 60  # distance of a node that cannot reach the destination
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Graph:
    """Nodes ``0..n-1``; ``adj[u] = ((v, hop), ...)``; ``ends[hop] = (u, v)``; ``transit[u]``."""

    adj: tuple[tuple[tuple[int, int], ...], ...]
    ends: tuple[tuple[int, int], ...]
    transit: tuple[bool, ...]

    @classmethod
    def build(cls, n: int, hops: Sequence[tuple[int, int]], transit: Sequence[bool]) -> Graph:
        """``hops[i] = (u, v)`` is hop ``i``; each ``adj[u]`` lists its hops in hop order."""
        if len(transit) != n:
            raise ValueError(f"transit has {len(transit)} flags for {n} nodes")
        adj: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for hop, (u, v) in enumerate(hops):
            if not (0 <= u < n and 0 <= v < n):
                raise ValueError(f"hop {hop} = ({u}, {v}) has an end outside 0..{n - 1}")
            adj[u].append((v, hop))
        return cls(
            adj=tuple(tuple(out) for out in adj),
            ends=tuple((u, v) for u, v in hops),
            transit=tuple(bool(t) for t in transit),
        )

    @property
    def n(self) -> int:
        return len(self.adj)


def _mix(hop: int, salt: int) -> int:
    """A well-scattered 32-bit hash of (hop, salt): the order of ties under one salt (murmur3's finalizer)."""
    h = (hop * 0x9E3779B1 + salt) & 0xFFFFFFFF
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
    return h ^ (h >> 13)


def path_nodes(graph: Graph, path: Sequence[int]) -> list[int]:
    """The node sequence of a hop path: ``len(path) + 1`` nodes (none for an empty path)."""
    if not path:
        return []
    return [graph.ends[path[0]][0], *(graph.ends[h][1] for h in path)]


def _memoize(fn: Callable[[int], T]) -> Callable[[int], T]:
    memo: dict[int, T] = {}

    def call(hop: int) -> T:
        if hop not in memo:
            memo[hop] = fn(hop)
        return memo[hop]

    return call


class PathFinder:
    """Searches one Graph; caches per-destination hop distances (a bounded LRU, default 4096 destinations)."""

    __slots__ = ("_cache", "_cache_size", "_radj", "graph")

    def __init__(self, graph: Graph, *, cache_size: int = 4096) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.graph = graph
        radj: list[list[tuple[int, int]]] = [[] for _ in range(graph.n)]
        for hop, (u, v) in enumerate(graph.ends):
            radj[v].append((u, hop))
        self._radj = tuple(tuple(into) for into in radj)
        self._cache: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self._cache_size = cache_size

    # -- static distances ------------------------------------------------

    def distances_to(self, dst: int) -> Sequence[int]:
        """Fewest hops from every node to ``dst`` through transit nodes only (``UNREACHABLE`` if none)."""
        cached = self._cache.get(dst)
        if cached is not None:
            self._cache.move_to_end(dst)
            return cached
        transit = self.graph.transit
        preds = {u for u, _hop in self._radj[dst] if u != dst}
        if not transit[dst] and preds and len(preds) <= 4 and all(transit[p] for p in preds):
            # An end node (a host) is one hop past the switches it hangs off: derive its distances from
            # theirs (cached once per switch) instead of a search per host. No path passes through dst.
            arrays = [self.distances_to(p) for p in sorted(preds)]
            nearest = arrays[0] if len(arrays) == 1 else list(map(min, *arrays))
            derived = [d + 1 if d < UNREACHABLE else UNREACHABLE for d in nearest]
            derived[dst] = 0
            return self._remember(dst, tuple(derived))
        dist = [UNREACHABLE] * self.graph.n
        dist[dst] = 0
        queue = deque([dst])
        while queue:
            v = queue.popleft()
            if v != dst and not transit[v]:
                continue  # v may start a path to dst, but no path may pass through it
            for u, _hop in self._radj[v]:
                if dist[u] == UNREACHABLE:
                    dist[u] = dist[v] + 1
                    queue.append(u)
        return self._remember(dst, tuple(dist))

    def _remember(self, dst: int, dist: tuple[int, ...]) -> tuple[int, ...]:
        self._cache[dst] = dist
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return dist

    def _check(self, src: int, dst: int) -> None:
        n = self.graph.n
        if not (0 <= src < n and 0 <= dst < n):
            raise ValueError(f"nodes must lie in 0..{n - 1}, got {src} -> {dst}")
        if src == dst:
            raise ValueError(f"a path needs two distinct ends, got {src} -> {dst}")

    # -- searches --------------------------------------------------------

    def shortest(self, src: int, dst: int, ok: Callable[[int], bool], *, spread: int = 0) -> list[int] | None:
        """The fewest-hop path from ``src`` to ``dst`` using only hops with ``ok(hop)``, or None."""
        self._check(src, dst)
        return self._astar(src, dst, _memoize(ok), spread=spread)

    def widest(self, src: int, dst: int, residual: Callable[[int], int], need: int, *,
               spread: int = 0) -> list[int] | None:
        """The path with the largest ``min(residual)`` (all ``>= need``), then the fewest hops, or None."""
        self._check(src, dst)
        res = _memoize(residual)
        width = self._max_bottleneck(src=src, dst=dst, residual=res, need=need)
        if width is None:
            return None
        return self._astar(src, dst, lambda hop: res(hop) >= width, spread=spread)

    def k_shortest(self, src: int, dst: int, ok: Callable[[int], bool], k: int) -> list[list[int]]:
        """Up to ``k`` distinct loopless feasible paths by non-decreasing hop count (Yen's algorithm)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self._check(src, dst)
        ok = _memoize(ok)
        first = self._astar(src, dst, ok)
        if first is None:
            return []
        found = [first]
        seen = {tuple(first)}
        candidates: list[tuple[int, tuple[int, ...]]] = []
        while len(found) < k:
            prev = found[-1]
            nodes = path_nodes(self.graph, prev)
            for i in range(len(prev)):
                root = prev[:i]
                # Hops that would rebuild a path already found with this root, and the root's nodes (loopless).
                banned_hops = {p[i] for p in found if p[:i] == root}
                spur = self._astar(nodes[i], dst, ok, banned_hops=banned_hops, banned_nodes=set(nodes[:i]))
                if spur is not None:
                    candidate = tuple(root + spur)
                    if candidate not in seen:
                        seen.add(candidate)
                        heapq.heappush(candidates, (len(candidate), candidate))
            if not candidates:
                break
            found.append(list(heapq.heappop(candidates)[1]))
        return found

    # -- the engines -----------------------------------------------------

    def _astar(
        self,
        src: int,
        dst: int,
        ok: Callable[[int], bool],
        *,
        banned_hops: Collection[int] = (),
        banned_nodes: Collection[int] = (),
        spread: int = 0,
    ) -> list[int] | None:
        """Lazy A*: hops are checked with ``ok`` only when popped to settle their head node."""
        dist = self.distances_to(dst)
        if dist[src] >= UNREACHABLE:
            return None
        adj, transit = self.graph.adj, self.graph.transit
        reached_by: dict[int, int] = {src: -1}  # settled node -> the hop that settled it
        heap: list[tuple[int, int, int, int, int]] = []  # (f, -g, seq, head, hop)
        seq = 0
        u, g = src, 0
        while True:
            g1 = g + 1
            for v, hop in adj[u]:
                if (
                    v not in reached_by
                    and dist[v] < UNREACHABLE
                    and (v == dst or transit[v])
                    and hop not in banned_hops
                    and v not in banned_nodes
                ):
                    tie = seq if not spread else _mix(hop, spread)
                    heapq.heappush(heap, (g1 + dist[v], -g1, tie, v, hop))
                    seq += 1
            while heap:
                _f, neg_g, _seq, v, hop = heapq.heappop(heap)
                if v not in reached_by and ok(hop):
                    break
            else:
                return None
            reached_by[v] = hop
            if v == dst:
                return self._trace(reached_by, src, dst)
            u, g = v, -neg_g  # only transit nodes are ever pushed, so v may be passed through

    def _max_bottleneck(self, *, src: int, dst: int, residual: Callable[[int], int], need: int) -> int | None:
        """The largest ``min(residual)`` over paths whose every hop has ``residual >= need``, or None."""
        dist = self.distances_to(dst)
        if dist[src] >= UNREACHABLE:
            return None
        adj, transit = self.graph.adj, self.graph.transit
        settled: set[int] = {src}
        # (-width, f, -g, seq, head, hop, checked): widest first, then A*-like toward dst.
        heap: list[tuple[float, int, int, int, int, int, bool]] = []
        seq = 0

        def push_out(u: int, width: float, g: int) -> None:
            nonlocal seq
            for v, hop in adj[u]:
                if v not in settled and dist[v] < UNREACHABLE and (v == dst or transit[v]):
                    heapq.heappush(heap, (-width, g + 1 + dist[v], -(g + 1), seq, v, hop, False))
                    seq += 1

        push_out(src, float("inf"), 0)
        while heap:
            neg_width, f, neg_g, _seq, v, hop, checked = heapq.heappop(heap)
            if v in settled:
                continue
            width = -neg_width
            if not checked:
                r = residual(hop)
                if r < need:
                    continue
                if r < width:  # the queued width was an upper bound: re-queue at the true one
                    heapq.heappush(heap, (-r, f, neg_g, _seq, v, hop, True))
                    continue
            settled.add(v)
            if v == dst:
                return int(width)
            push_out(v, width, -neg_g)
        return None

    def _trace(self, reached_by: dict[int, int], src: int, dst: int) -> list[int]:
        path: list[int] = []
        v = dst
        while v != src:
            hop = reached_by[v]
            path.append(hop)
            v = self.graph.ends[hop][0]
        path.reverse()
        return path
