"""Capacity over time on a topology: ledgers per hop, per-project holdings, limits, admission.

:class:`Capacity` is the arithmetic of reservations, without storage or
clocks: one :class:`~tenure.domain.ledger.Ledger` per hop (link direction) for
everything booked, one per (project, hop) for what each project holds (Tegu's
fences are checked against it), and the path search that ties them together.

Admission of a leg of ``rate`` over a window: the fewest-hops path on which,
for every hop, the peak usage over the window plus ``rate`` is at most the
hop's usable capacity (capacity minus headroom), and the project's own peak
plus ``rate`` is at most its limit there. Legs of one reservation are booked
one after another, so a later leg sees the earlier ones (two steering segments
crossing the same hop count twice). A refusal names the first hop that stops
the static shortest path, with what was needed, what was available and when.

Only the future matters: the check runs over ``[max(start, now), end)``; the
booking covers the whole window, so the usage of the past stays what it was.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tenure.domain.errors import Conflict, InvalidInput
from tenure.domain.ledger import Ledger
from tenure.domain.reservation import Leg
from tenure.domain.topology import Topology
from tenure.domain.units import iso, share_text


@dataclass(frozen=True, slots=True)
class Limit:
    """The most a project may hold on any one hop at any instant: absolute, or a share of the hop's capacity."""

    project: str
    max_bps: int | None = None
    share: Fraction | None = None
    revision: int = 0
    updated_at: int = 0

    def cap(self, capacity: int) -> int:
        if self.max_bps is not None:
            return self.max_bps
        assert self.share is not None
        return math.floor(capacity * self.share)

    def body(self) -> dict[str, Any]:
        return {"project": self.project, "max": self.max_bps,
                "share": share_text(self.share) if self.share is not None else None,
                "revision": self.revision, "updated_at": iso(self.updated_at)}


class Capacity:
    """Ledgers of one topology. Mutated only by the writer thread."""

    def __init__(self, topology: Topology, limits: dict[str, Limit], *, use: list[Ledger] | None = None) -> None:
        self.topology = topology
        self.limits = limits  # shared with the service: the current limits by project
        self.use: list[Ledger] = use if use is not None else [Ledger() for _ in topology.hops]
        self.held: dict[tuple[str, int], Ledger] = {}  # (project, hop) → what that project holds
        # Ledgers still shared with the Capacity this one was carried over from (copied before the first write,
        # so the old one stays intact for an undo): see carried_over().
        self._shared: set[int] = set()
        self._shared_held: set[tuple[str, int]] = set()

    # ------------------------------------------------------------ topology changes

    @classmethod
    def carried_over(cls, topology: Topology, old: Capacity, unchanged: set[tuple[str, str]]) -> Capacity:
        """A Capacity of ``topology`` that starts from ``old``'s ledgers on the hops whose link, ends and
        capacity did not change (fresh ones elsewhere).

        The ledgers are shared, not copied: a topology change touching a few links costs what those links
        carry, not what the whole network does. Each shared ledger is copied at its first write here, so
        ``old`` is never changed and undoing the change is putting ``old`` back.
        """
        old_index = old.topology.hop_index
        use = [old.use[old_index[key]] if key in unchanged else Ledger() for key in topology.hops]
        cap = cls(topology, old.limits, use=use)
        index = topology.hop_index
        cap._shared = {index[key] for key in unchanged}
        for (project, oh), led in old.held.items():
            key = old.topology.hops[oh]
            if key in unchanged:
                cap.held[(project, index[key])] = led
                cap._shared_held.add((project, index[key]))
        return cap

    def release_shared(self) -> None:
        """The old Capacity is gone (the change committed): nothing is shared any more."""
        self._shared.clear()
        self._shared_held.clear()

    def _use(self, h: int) -> Ledger:
        if h in self._shared:
            self.use[h] = self.use[h].copy()
            self._shared.discard(h)
        return self.use[h]

    def _held(self, key: tuple[str, int]) -> Ledger | None:
        led = self.held.get(key)
        if led is not None and key in self._shared_held:
            led = self.held[key] = led.copy()
            self._shared_held.discard(key)
        return led

    # ------------------------------------------------------------ booking

    def book(self, hops: Sequence[int], start: int, end: int, rate: int, project: str | None) -> None:
        for h in hops:
            self._use(h).add(start, end, rate)
            if project is not None:
                led = self._held((project, h))
                if led is None:
                    led = self.held[(project, h)] = Ledger()
                led.add(start, end, rate)

    def unbook(self, hops: Sequence[int], start: int, end: int, rate: int, project: str | None) -> None:
        for h in hops:
            self._use(h).add(start, end, -rate)
            if project is not None:
                led = self._held((project, h))
                assert led is not None, "unbooking what the project does not hold"
                led.add(start, end, -rate)
                if not led:
                    del self.held[(project, h)]
                    self._shared_held.discard((project, h))

    def load(self, bookings: Iterable[tuple[Sequence[Leg], int, int, str | None]]) -> None:
        """Book many reservations' routed legs at once into empty ledgers (a restore): each ledger is built
        in one sort and sweep (:meth:`Ledger.from_bookings`) instead of one insert per booking."""
        per_hop: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        per_held: dict[tuple[str, int], list[tuple[int, int, int]]] = defaultdict(list)
        for legs, start, end, project in bookings:
            for leg in legs:
                hops = self.topology.hops_of(list(leg.hops))
                for h in hops or ():
                    per_hop[h].append((start, end, leg.rate))
                    if project is not None:
                        per_held[(project, h)].append((start, end, leg.rate))
        for h, items in per_hop.items():
            assert not self.use[h], "load() fills empty ledgers only"
            self.use[h] = Ledger.from_bookings(items)
        for key, items in per_held.items():
            self.held[key] = Ledger.from_bookings(items)

    def book_legs(self, legs: Sequence[Leg], start: int, end: int, project: str | None, sign: int = 1) -> None:
        """Book (or with ``sign=-1`` release) routed legs; legs whose links are gone are skipped."""
        for leg in legs:
            hops = self.topology.hops_of(list(leg.hops))
            if hops is None:
                continue
            if sign > 0:
                self.book(hops, start, end, leg.rate, project)
            else:
                self.unbook(hops, start, end, leg.rate, project)

    # ------------------------------------------------------------ checks

    def _limit_cap(self, project: str | None, h: int) -> int | None:
        limit = self.limits.get(project) if project is not None else None
        return limit.cap(self.topology.capacity[h]) if limit is not None else None

    def hop_ok(self, h: int, start: int, end: int, rate: int, project: str | None) -> bool:
        if self.use[h].peak(start, end) + rate > self.topology.usable[h]:
            return False
        cap = self._limit_cap(project, h)
        if cap is None:
            return True
        led = self.held.get((project, h))  # type: ignore[arg-type]
        return (led.peak(start, end) if led is not None else 0) + rate <= cap

    def fits(self, hops: Sequence[int], start: int, end: int, rate: int, project: str | None) -> bool:
        return all(self.hop_ok(h, start, end, rate, project) for h in hops)

    def residual(self, h: int, start: int, end: int, project: str | None) -> int:
        """What one more booking could take on hop ``h`` over the window (capacity and limit)."""
        free = self.topology.usable[h] - self.use[h].peak(start, end)
        cap = self._limit_cap(project, h)
        if cap is not None:
            led = self.held.get((project, h))  # type: ignore[arg-type]
            free = min(free, cap - (led.peak(start, end) if led is not None else 0))
        return free

    # ------------------------------------------------------------ routing

    def endpoints(self, src: str, dst: str) -> tuple[int, int]:
        index = self.topology.index
        for node in (src, dst):
            if node not in index:
                raise InvalidInput(f"node {node!r} is not in the topology", code="unknown_node", node=node)
        return index[src], index[dst]

    def route(self, leg: Leg, start: int, end: int, project: str | None, *, mode: str = "shortest") -> list[int]:
        """The path for ``leg`` over the window, or a :class:`Conflict` naming why there is none."""
        s, d = self.endpoints(leg.src, leg.dst)
        topo, rate = self.topology, leg.rate
        # Full links at either end (the usual reason to refuse) would otherwise be found only after the
        # search has visited every switch that can reach the destination: look there first.
        if not (any(self.hop_ok(h, start, end, rate, project) for _, h in topo.graph.adj[s])
                and any(self.hop_ok(h, start, end, rate, project) for h in topo.into[d])):
            raise self.refusal(leg, start, end, project)
        spread = zlib.crc32(f"{leg.src}\0{leg.dst}\0{start}".encode()) | 1  # ties: spread, but repeatable
        if mode == "widest":
            path = topo.finder.widest(s, d, lambda h: self.residual(h, start, end, project), rate, spread=spread)
        else:
            path = topo.finder.shortest(s, d, lambda h: self.hop_ok(h, start, end, rate, project), spread=spread)
        if path is None:
            raise self.refusal(leg, start, end, project)
        return path

    def alternatives(self, leg: Leg, start: int, end: int, project: str | None, k: int) -> list[list[int]]:
        s, d = self.endpoints(leg.src, leg.dst)
        return self.topology.finder.k_shortest(
            s, d, lambda h: self.hop_ok(h, start, end, leg.rate, project), k)

    def refusal(self, leg: Leg, start: int, end: int, project: str | None) -> Conflict:
        """Why no path fits: the first hop of the static shortest path that does not (or no path at all)."""
        s, d = self.endpoints(leg.src, leg.dst)
        topo = self.topology
        static = topo.finder.shortest(s, d, lambda h: True)
        if static is None:
            return Conflict(f"no path from {leg.src!r} to {leg.dst!r} in the topology", code="no_path",
                            src=leg.src, dst=leg.dst)
        for h in static:
            link, direction = topo.hops[h]
            peak, when = self.use[h].peak_at(start, end)
            available = topo.usable[h] - peak
            if peak + leg.rate > topo.usable[h]:
                return Conflict(
                    f"link {link} ({direction}) has {max(available, 0)} bit/s free at {iso(when)}; "
                    f"{leg.rate} bit/s are needed from {leg.src} to {leg.dst}",
                    code="insufficient_capacity", link=link, direction=direction, needed=leg.rate,
                    available=max(available, 0), when=iso(when), leg=leg.name)
            cap = self._limit_cap(project, h)
            if cap is not None:
                led = self.held.get((project, h))  # type: ignore[arg-type]
                held, when = led.peak_at(start, end) if led is not None else (0, start)
                if held + leg.rate > cap:
                    return Conflict(
                        f"project {project} may hold at most {cap} bit/s on link {link} ({direction}); "
                        f"it holds {held} at {iso(when)} and {leg.rate} more are needed",
                        code="limit_exceeded", link=link, direction=direction, limit=cap, held=held,
                        needed=leg.rate, when=iso(when), leg=leg.name, project=project)
        # Not reached: had every hop of this path fit, the search would have found it.
        return Conflict(f"no path from {leg.src!r} to {leg.dst!r} fits", code="insufficient_capacity",
                        needed=leg.rate, leg=leg.name)

    def alarms(self, hops: Sequence[int], start: int, end: int) -> list[dict[str, Any]]:
        """Hops whose peak usage over the window is above their alarm threshold."""
        out = []
        for h in hops:
            threshold = self.topology.alarm_at[h]
            if threshold is None:
                continue
            peak, when = self.use[h].peak_at(start, end)
            if peak > threshold:
                link, direction = self.topology.hops[h]
                out.append({"link": link, "direction": direction, "peak": peak, "threshold": threshold,
                            "when": iso(when)})
        return out

    # ------------------------------------------------------------ reads

    def usage_all(self, start: int, end: int | None) -> list[dict[str, Any]]:
        """Every link's usage per direction: at ``start`` (``end`` None), or the peak over ``[start, end)``."""
        topo = self.topology
        out = []
        for link_id in topo.links:
            row: dict[str, Any] = {"link": link_id}
            for d in ("ab", "ba"):
                ledger = self.use[topo.hop_index[(link_id, d)]]
                row[d] = ledger.usage_at(start) if end is None else ledger.peak(start, end)
            out.append(row)
        return out

    def usage(self, link_id: str, start: int | None, end: int | None, *, max_steps: int) -> dict[str, Any]:
        topo = self.topology
        link = topo.links[link_id]
        directions = {}
        for d in ("ab", "ba"):
            h = topo.hop_index[(link_id, d)]
            steps = self.use[h].steps(start, end)
            truncated = len(steps) > max_steps
            frm, to = topo.node_ids[topo.graph.ends[h][0]], topo.node_ids[topo.graph.ends[h][1]]
            directions[d] = {
                "from": frm, "to": to, "capacity": topo.capacity[h], "usable": topo.usable[h],
                "alarm": topo.alarm_at[h], "truncated": truncated,
                "steps": [{"from": iso(a), "to": iso(b) if b is not None else None, "used": u}
                          for a, b, u in steps[:max_steps]],
            }
        return {"link": link.id, "a": link.a, "b": link.b, "directions": directions}
