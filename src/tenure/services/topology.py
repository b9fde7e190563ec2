"""The topology and the per-project limits as writer commands; a topology change re-admits what it touches.

The topology is one document (nodes and links, validated as a whole by
:class:`~tenure.domain.topology.Topology`); the API edits it whole or a node or
a link at a time, each edit one writer command that builds the new topology
from the current one. A change swaps in a :class:`~tenure.domain.capacity.Capacity`
that carries over the ledgers of every hop whose link, ends and capacity are
unchanged, and re-admits (through the :class:`~tenure.services.reservations.ReservationService`)
only the live reservations the change touches, oldest first: on the old path if
it still fits, else on a new one, else ``degraded``. The whole change, its
re-admissions and its event are one command: undone as a whole.

Limits (Tegu's per-user fences) cap what a project may hold on each link
direction, as bit/s or a share of its capacity; the Capacity checks them at
admission. They are a :class:`~tenure.store.writer.Published` map, shared (its
working dict) with the reservations' Capacity.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import replace
from fractions import Fraction
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from tenure.domain.access import ADMIN, Principal, require_admin
from tenure.domain.capacity import Capacity, Limit
from tenure.domain.errors import Conflict, InvalidInput, NotFound, TenureError
from tenure.domain.names import validate_name
from tenure.domain.reservation import DEGRADED, LIVE, Reservation, time_state
from tenure.domain.topology import Link, Node, Topology, empty_topology
from tenure.domain.units import iso, parse_rate, parse_share, to_us
from tenure.services.reservations import ReservationService, log_on_commit, unrouted
from tenure.store import schema
from tenure.store.inlist import rows_in
from tenure.store.writer import Batch, Op, Published, Writer

log = logging.getLogger("tenure.topology")


def _limit_from_row(row: Any) -> Limit:
    share = Fraction(row.share) if row.share is not None else None
    return Limit(row.project, row.max_bps, share, row.revision, to_us(row.updated_at))


class TopologyService:
    def __init__(self, *, writer: Writer, reservations: ReservationService, limits: Published[str, Limit]) -> None:
        self.writer = writer
        self.reservations = reservations
        self._limits = limits  # its working dict is the reservations' Capacity's
        self._topology_revision = 0
        self._topology_updated = 0
        self._topology_view: tuple[Topology, int, int] = (empty_topology(), 0, 0)
        self.on_changed: list[Callable[[Batch], None]] = []  # called inside every topology change's command

    def load(self, conn: Connection) -> Topology:
        """The stored topology and limits (before the reservations, which are booked on them)."""
        topo = self._read_topology(conn)
        for lr in conn.execute(select(schema.limits)):
            self._limits.load(lr.project, _limit_from_row(lr))
        self._topology_view = (topo, self._topology_revision, self._topology_updated)
        return topo

    def _read_topology(self, conn: Connection) -> Topology:
        row = conn.execute(select(schema.topology)).first()
        if row is None:
            self._topology_revision, self._topology_updated = 0, 0
            return empty_topology()
        self._topology_revision, self._topology_updated = row.revision, to_us(row.updated_at)
        return Topology.parse(json.loads(row.doc))

    def refresh(self, batch: Batch, conn: Connection, *, topology: bool, limits: Collection[str]) -> Topology | None:
        """A follower: the limits that events named, and the topology if an event named it, as stored in
        ``conn``'s snapshot. Returns the new topology (the reservations re-book on it), or None if unchanged."""
        if limits:
            rows = rows_in(conn, select(schema.limits), schema.limits.c.project, limits)
            stored = {r.project: _limit_from_row(r) for r in rows}
            for project in limits:
                self._limits.put(batch, project, stored.get(project))
        if not topology:
            return None
        topo = self._read_topology(conn)
        batch.on_commit_once("topology", self._publish_topology)
        return topo

    # ================================================================ topology

    def set_topology_op(self, topology: Topology, *, principal: Principal = ADMIN) -> Op:
        """Replace the whole topology; re-check every live reservation on it."""
        require_admin(principal, "changing the topology")
        return Op(lambda batch: self._change_topology(batch, topology))

    def edit_topology_op(self, edit: Callable[[Topology], Topology], *, principal: Principal = ADMIN) -> Op:
        """One node or link changed (``edit`` builds the new topology from the current one, in the writer)."""
        require_admin(principal, "changing the topology")
        return Op(lambda batch: self._change_topology(batch, edit(self.reservations.cap.topology)))

    def put_node(self, node: Node) -> Callable[[Topology], Topology]:
        return lambda t: t.with_node(node)

    def delete_node(self, node_id: str) -> Callable[[Topology], Topology]:
        def edit(t: Topology) -> Topology:
            if node_id not in t.nodes:
                raise NotFound(f"no node {node_id!r}", code="node_not_found", node=node_id)
            links = t.links_of(node_id)
            if links:
                raise Conflict(f"node {node_id!r} still has links; delete them first", code="node_in_use",
                               links=links)
            return t.without_node(node_id)
        return edit

    def put_link(self, link: Link) -> Callable[[Topology], Topology]:
        return lambda t: t.with_link(link)

    def delete_link(self, link_id: str) -> Callable[[Topology], Topology]:
        def edit(t: Topology) -> Topology:
            if link_id not in t.links:
                raise NotFound(f"no link {link_id!r}", code="link_not_found", link=link_id)
            return t.without_link(link_id)
        return edit

    def _change_topology(self, batch: Batch, topo: Topology) -> dict[str, Any]:
        """Swap in ``topo`` and re-check what the change touches, oldest first.

        Hops whose link, ends and capacity are unchanged keep their ledgers (carried over, shared until the
        commit), and so do the reservations that use only such hops: a link going down costs what that link
        carried. Every other live reservation (on a changed or removed hop, with an endpoint gone or changed,
        or degraded) is re-admitted: on its old path if that still fits, else on a new one, else it becomes
        ``degraded`` (holding nothing). Undone as a whole by putting the old Capacity back.
        """
        now = to_us(batch.now)
        r = self.reservations
        old_cap = r.cap
        unchanged = topo.unchanged_hops(old_cap.topology)
        cap = Capacity.carried_over(topo, old_cap, unchanged)
        r.cap = cap

        def undo() -> None:
            r.cap = old_cap

        batch.on_undo(undo)
        batch.on_commit(cap.release_shared)
        changed = set(old_cap.topology.hop_index) - unchanged  # hops removed or changed (few, usually)
        old_nodes = old_cap.topology.nodes
        moved = {n for n, node in old_nodes.items() if n not in topo.nodes or topo.nodes[n].kind != node.kind}
        moved |= set(topo.nodes) - set(old_nodes)

        def touched(res: Reservation) -> bool:  # per reservation: a few C-level set look-ups
            if moved and not moved.isdisjoint((res.src, res.dst, *res.via)):
                return True
            return any(not changed.isdisjoint(leg.hops) for leg in res.legs)

        outcome: dict[str, Any] = {"kept": 0, "rerouted": [], "degraded": [], "restored": []}
        index = topo.hop_index
        for res in r.in_admission_order():
            if res.state not in LIVE:
                continue
            if res.state != DEGRADED and not touched(res):
                outcome["kept"] += res.end > now
                continue
            if res.holds_capacity:  # release what was carried over for it
                for leg in res.legs:
                    cap.unbook([index[k] for k in leg.hops if k in unchanged], res.start, res.end, leg.rate,
                               res.project)
            if res.end <= now:  # due to expire: keep its booking (where its links remain) until the scheduler
                if res.holds_capacity:
                    cap.book_legs(res.legs, res.start, res.end, res.project)
                continue
            try:
                legs = r.admit(batch, r.plan(res), res, now,
                                   prior=res.legs if res.holds_capacity else (), limits=False)
            except TenureError as exc:
                if res.state != DEGRADED:
                    r.record(batch, replace(res, state=DEGRADED, legs=unrouted(res.legs),
                                                 reason=f"topology change: {exc.message}"))
                    outcome["degraded"].append(res.id)
                continue
            if res.state == DEGRADED:
                r.record(batch, replace(res, legs=legs, state=time_state(res.start, res.end, now), reason=None))
                outcome["restored"].append(res.id)
            elif legs != res.legs:
                r.record(batch, replace(res, legs=legs, reason="re-routed after a topology change"))
                outcome["rerouted"].append(res.id)
            else:
                outcome["kept"] += 1
        revision = batch.next_revision()
        values = {"doc": json.dumps(topo.doc(), ensure_ascii=False), "updated_at": batch.now, "revision": revision}
        if self._topology_revision == 0:
            batch.write(insert(schema.topology), {"id": 1, **values})
        else:
            batch.write(update(schema.topology).where(schema.topology.c.id == 1).values(**values), {})
        old_meta = (self._topology_revision, self._topology_updated)
        self._topology_revision, self._topology_updated = revision, now

        def undo_meta() -> None:
            self._topology_revision, self._topology_updated = old_meta

        batch.on_undo(undo_meta)
        body = self._topology_body(topo, revision, now)
        batch.emit("topology", "topology", "updated" if old_meta[0] else "created", {}, body)
        for fn in self.on_changed:  # e.g. the shapers of kept reservations follow new capacities and addresses
            fn(batch)
        batch.on_commit_once("topology", self._publish_topology)
        if outcome["degraded"]:
            log_on_commit(batch, "reservations degraded by a topology change", logger=log, level=logging.WARNING,
                          count=len(outcome["degraded"]))
        log_on_commit(batch, "topology changed", logger=log, level=logging.INFO, nodes=len(topo.nodes),
                      links=len(topo.links), kept=outcome["kept"], rerouted=len(outcome["rerouted"]),
                      restored=len(outcome["restored"]))
        return {**body, "recheck": outcome}

    def _publish_topology(self) -> None:
        self._topology_view = (self.reservations.cap.topology, self._topology_revision, self._topology_updated)

    @staticmethod
    def _topology_body(topo: Topology, revision: int, updated: int) -> dict[str, Any]:
        return {**topo.doc(), "revision": revision, "updated_at": iso(updated) if revision else None}

    # ================================================================ limits

    def set_limit_op(self, project: str, *, max_bps: object = None, share: object = None,
                     principal: Principal = ADMIN) -> Op:
        require_admin(principal, "setting limits")
        validate_name(project, what="project")
        if (max_bps is None) == (share is None):
            raise InvalidInput("a limit is either max (bit/s) or share (of each link's capacity)",
                               code="invalid_limit")
        m = parse_rate(max_bps, what="max") if max_bps is not None else None
        s = parse_share(share, what="share") if share is not None else None
        if s is not None and s == 0:
            raise InvalidInput("share must be more than 0", code="invalid_limit")

        def apply(batch: Batch) -> Limit:
            old = self._limits.working.get(project)
            limit = Limit(project, m, s, batch.next_revision(), to_us(batch.now))
            row = {"max_bps": m, "share": str(s) if s is not None else None, "updated_at": batch.now,
                   "revision": limit.revision}
            if old is None:
                batch.write(insert(schema.limits), {"project": project, **row})
            else:
                batch.write(update(schema.limits).where(schema.limits.c.project == project).values(**row), {})
            self._limits.put(batch, project, limit)
            batch.emit("limit", project, "created" if old is None else "updated", {"project": project},
                       limit.body())
            return limit

        return Op(apply)

    def delete_limit_op(self, project: str, *, principal: Principal = ADMIN) -> Op:
        require_admin(principal, "removing limits")

        def apply(batch: Batch) -> Limit:
            old = self._limits.working.get(project)
            if old is None:
                raise NotFound(f"project {project!r} has no limit", code="limit_not_found", project=project)
            batch.write(delete(schema.limits).where(schema.limits.c.project == project), {})
            self._limits.put(batch, project, None)
            gone = replace(old, revision=batch.next_revision())
            batch.emit("limit", project, "deleted", {"project": project}, gone.body())
            return gone

        return Op(apply)

    # ================================================================ reads

    def body(self) -> dict[str, Any]:
        topo, revision, updated = self._topology_view
        return self._topology_body(topo, revision, updated)

    @property
    def current(self) -> Topology:
        """The topology as of the last commit."""
        return self._topology_view[0]

    def node(self, node_id: str) -> Node:
        node = self.current.nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node {node_id!r}", code="node_not_found", node=node_id)
        return node

    def link(self, link_id: str) -> Link:
        link = self.current.links.get(link_id)
        if link is None:
            raise NotFound(f"no link {link_id!r}", code="link_not_found", link=link_id)
        return link

    def list_limits(self, *, principal: Principal = ADMIN) -> list[Limit]:
        views = sorted(self._limits.view.values(), key=lambda lim: lim.project)
        if principal.is_admin:
            return views
        return [lim for lim in views if principal.role == "member" and lim.project == principal.project]

    def get_limit(self, project: str, *, principal: Principal = ADMIN) -> Limit:
        limit = self._limits.view.get(project)
        if limit is None or not (principal.is_admin or (principal.role == "member" and principal.project == project)):
            raise NotFound(f"project {project!r} has no limit", code="limit_not_found", project=project)
        return limit

    # ---------------------------------------------------------------- watch listers

    def list_topology_at(self, conn: Connection, pins: Mapping[str, frozenset[str]]
                         ) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        row = conn.execute(select(schema.topology)).first()
        if row is not None:
            yield "topology", {}, {**json.loads(row.doc), "revision": row.revision,
                                   "updated_at": iso(to_us(row.updated_at))}

    def list_limits_at(self, conn: Connection, pins: Mapping[str, frozenset[str]]
                       ) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        q = select(schema.limits).order_by(schema.limits.c.project)
        if "project" in pins:
            q = q.where(schema.limits.c.project.in_(sorted(pins["project"])))
        for lr in conn.execute(q).all():
            yield lr.project, {"project": lr.project}, _limit_from_row(lr).body()
