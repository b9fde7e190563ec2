"""The reservation service: reservations as writer commands (the topology and limits: :mod:`.topology`).

Every change is one writer command (DESIGN.md invariants 1 and 2): the
admission check against the ledgers and the booking that consumes the capacity
happen in the same step of the single writer, so two requests can never both
take the last bit/s; the reservation row and its event commit together, and
the caller is answered after the commit. A refused command unbooks whatever it
booked before it raises; a failed commit runs the undo steps, so the ledgers
never run ahead of the store.

The writer thread owns the working state (the reservations, the
:class:`~tenure.domain.capacity.Capacity` with the ledgers); readers see the
reservations as of the last commit. Reads that need the ledgers (link usage, path
queries) run as read-only commands, so they see one consistent state.

Restart: once the topology and limits are loaded, every reservation not yet
purged is; the ledgers are rebuilt from the *stored paths* (not re-routed), so usage after
a restart is identical; every reservation's next instant is re-armed in the
:class:`~tenure.services.scheduler.Scheduler`, and the runtime applies the
overdue transitions before it reports ready.

Idempotency: a create with a ``request_id`` is remembered per project with a
hash of the request as sent; a retry returns the reservation it made (200),
the same id with a different request is a 409. Ended reservations are kept
(with their request ids) for ``reservation_retention``, then purged.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from tenure.clock import Clock, utcnow
from tenure.domain.access import ADMIN, Principal
from tenure.domain.capacity import Capacity, Limit
from tenure.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from tenure.domain.names import validate_name
from tenure.domain.reservation import (
    ACTIVE,
    CANCELLED,
    DEFAULT_MARKS,
    ENDED,
    EXPIRED,
    KINDS,
    LIVE,
    PATH_MODES,
    PENDING,
    STATES,
    Leg,
    Match,
    Reservation,
    ReservationRequest,
    plan_legs,
    request_hash,
    time_state,
    validate_burst,
    validate_labels,
)
from tenure.domain.topology import Topology, empty_topology
from tenure.domain.units import US, iso, parse_instant, parse_rate, to_us
from tenure.services.scheduler import Scheduler
from tenure.store import schema
from tenure.store.inlist import rows_in
from tenure.store.writer import Batch, Op, Published, Writer

log = logging.getLogger("tenure.reservations")

MAX_PAGE = 10_000
MAX_USAGE_STEPS = 10_000
MAX_K = 16
RETRY_DUE_US = 5 * US  # a failed transition command is retried this much later

_R = schema.reservations.c
UPDATE_RES = (
    update(schema.reservations)
    .where(_R.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), start_us=bindparam("b_start"), end_us=bindparam("b_end"),
            body=bindparam("b_body"), revision=bindparam("b_revision"))
)
DELETE_RES = delete(schema.reservations).where(_R.id == bindparam("b_id"))


def _ts(text: str) -> int:
    return to_us(datetime.fromisoformat(text))


def _from_body(body: Mapping[str, Any], request_hash_: str | None, seq: int = 0) -> Reservation:
    legs = tuple(
        Leg(p["leg"], p["from"], p["to"], p["rate"], tuple(zip(p["links"], p["directions"], strict=True)),
            tuple(p["nodes"]))
        for p in body["paths"]
    )
    m = body.get("match", {})
    return Reservation(
        id=body["id"], kind=body["kind"], project=body["project"], owner=body["owner"], src=body["src"],
        dst=body["dst"], via=tuple(body.get("via", ())), port=body.get("port"), rate_out=body["rate_out"],
        rate_in=body["rate_in"], match=Match(m.get("protocol"), m.get("src_port"), m.get("dst_port"), m.get("dscp")),
        start=_ts(body["start"]), end=_ts(body["end"]), state=body["state"], legs=legs, labels=body["labels"],
        path_mode=body["path_mode"], burst=body.get("burst", "cap"),
        mark=body.get("mark", DEFAULT_MARKS[body["kind"]]), direction=body.get("direction", "both"),
        request_id=body["request_id"],
        request_hash=request_hash_,
        reason=body.get("reason"), created_at=_ts(body["created_at"]), updated_at=_ts(body["updated_at"]),
        ended_at=_ts(body["ended_at"]) if "ended_at" in body else None, revision=body["revision"], seq=seq,
    )


def may_see(p: Principal, project: str | None, src: str, dst: str) -> bool:
    """Admins see all; a member its project's reservations; an agent those that begin or end at its host."""
    if p.is_admin:
        return True
    if p.role == "member":
        return project == p.project
    return p.role == "agent" and p.host in (src, dst)


def _may_change(p: Principal, action: str) -> None:
    """Agents read the reservations of their host; changing them is for admins and members (of the project)."""
    if p.role == "agent":
        raise Forbidden(f"{action} needs an admin or member token; this token is an {p.describe()}")


def unrouted(legs: Sequence[Leg]) -> tuple[Leg, ...]:
    return tuple(Leg(leg.name, leg.src, leg.dst, leg.rate) for leg in legs)


class ReservationService:
    def __init__(self, *, writer: Writer, clock: Clock = utcnow, horizon: float = 366 * 86400.0,
                 retention: float = 7 * 86400.0, start_grace: float = 300.0,
                 limits: Published[str, Limit] | None = None) -> None:
        self.writer = writer
        self.clock = clock
        self.horizon = int(horizon * US)
        self.retention = int(retention * US)
        self.grace = int(start_grace * US)
        # The per-project limits (the topology service changes them): the Capacity reads the writer's map.
        self.limits = (limits if limits is not None else Published()).working
        self.cap = Capacity(empty_topology(), self.limits)  # the ledgers; the topology service swaps it on a change
        self._map: Published[str, Reservation] = Published(on_publish=self._arm)
        self._res = self._map.working  # the writer thread's; in admission order
        self._views = self._map.view  # as of the last commit; read by anyone
        self._next_seq = 1  # admission order; also the list cursor
        self._requests: dict[tuple[str, str], str] = {}
        self.scheduler = Scheduler(now_us=self.now_us, run=self._run_due)
        # Called inside each reservation's change, as fn(batch, reservation): e.g. its shapers on the hosts.
        self.listeners: list[Callable[[Batch, Reservation], None]] = []

    def now_us(self) -> int:
        return to_us(self.clock())

    # ================================================================ restore

    def load(self, conn: Connection, topology: Topology) -> None:
        """Every stored reservation, booked on ``topology`` (loaded first, with the limits) from its stored paths."""
        for r in conn.execute(select(_R.id, _R.seq, _R.request_hash, _R.body).order_by(_R.seq)):
            res = _from_body(json.loads(r.body), r.request_hash, r.seq)
            self._map.load(res.id, res)
            self._next_seq = max(self._next_seq, r.seq + 1)
            if res.request_id is not None:
                self._requests[(res.project or "", res.request_id)] = res.id
            self.scheduler.arm(res.next_due(self.retention), res.id)
        self._book_all(topology)

    def _book_all(self, topology: Topology) -> None:
        """Fresh ledgers of ``topology`` holding every reservation that holds capacity (a restore)."""
        self.cap = Capacity(topology, self.limits)
        self.cap.load((r.legs, r.start, r.end, r.project) for r in self._res.values() if r.holds_capacity)

    def refresh(self, batch: Batch, conn: Connection, ids: Collection[str], topology: Topology | None) -> None:
        """A follower: the reservations that events named, as stored in ``conn``'s snapshot, booked as a
        restore books them. With a new ``topology`` (the topology changed) every ledger is rebuilt on it."""
        stored = {r.id: _from_body(json.loads(r.body), r.request_hash, r.seq)
                  for r in rows_in(conn, select(_R.id, _R.seq, _R.request_hash, _R.body), _R.id, ids)}
        ordered = sorted(ids)
        # Known ones keep their place; new ones join in admission order, as a restore orders them.
        order = [rid for rid in ordered if rid in self._res]
        order += sorted((rid for rid in ordered if rid not in self._res and rid in stored), key=lambda r: stored[r].seq)
        for rid in order:
            old, new = self._res.get(rid), stored.get(rid)
            if topology is None:
                if old is not None and old.holds_capacity:
                    self.cap.book_legs(old.legs, old.start, old.end, old.project, -1)
                if new is not None and new.holds_capacity:
                    self.cap.book_legs(new.legs, new.start, new.end, new.project)
            if old is not None and old.request_id is not None:
                self._requests.pop((old.project or "", old.request_id), None)
            if new is not None:
                if new.request_id is not None:
                    self._requests[(new.project or "", new.request_id)] = rid
                self._next_seq = max(self._next_seq, new.seq + 1)
            self._map.put(batch, rid, new)
        if topology is not None:
            self._book_all(topology)

    def in_admission_order(self) -> list[Reservation]:
        """Every reservation the writer knows (writer thread), oldest admission first."""
        return list(self._res.values())

    # ================================================================ helpers

    def _arm(self, rid: str, res: Reservation | None) -> None:
        """Once a change commits: the reservation's next instant in the scheduler (none once it is gone)."""
        if res is None:
            self.scheduler.disarm(rid)
        else:
            self.scheduler.arm(res.next_due(self.retention), rid)

    def _book(self, batch: Batch, legs: Sequence[Leg], res: Reservation, sign: int = 1) -> None:
        """Book (or release) ``legs`` for ``res``'s window, undone with the command."""
        self.cap.book_legs(legs, res.start, res.end, res.project, sign)
        cap = self.cap  # a topology change swaps the Capacity: undo must touch the one booked
        batch.on_undo(lambda: cap.book_legs(legs, res.start, res.end, res.project, -sign))

    def _lookup(self, rid: str, p: Principal) -> Reservation:
        res = self._res.get(rid)
        if res is None or not may_see(p, res.project, res.src, res.dst):
            raise NotFound(f"no reservation {rid!r}", code="reservation_not_found", id=rid)
        return res

    def _row(self, res: Reservation) -> dict[str, Any]:
        return {"id": res.id, "seq": res.seq, "project": res.project, "request_id": res.request_id,
                "request_hash": res.request_hash, "state": res.state, "start_us": res.start, "end_us": res.end,
                "body": json.dumps(res.body(), ensure_ascii=False), "revision": res.revision}

    def _write_update(self, batch: Batch, res: Reservation) -> None:
        batch.write(UPDATE_RES, {"b_id": res.id, "b_state": res.state, "b_start": res.start, "b_end": res.end,
                                 "b_body": json.dumps(res.body(), ensure_ascii=False), "b_revision": res.revision})

    def record(self, batch: Batch, res: Reservation, op: str = "updated") -> Reservation:
        """Stamp ``res`` with this change's revision, write it, emit its event, and put it in the map."""
        res = replace(res, revision=batch.next_revision(), updated_at=to_us(batch.now))
        if op == "created":
            batch.write(insert(schema.reservations), self._row(res))
        else:
            self._write_update(batch, res)
        batch.emit("reservation", res.id, op, res.event_labels(), res.body())
        self._map.put(batch, res.id, res)
        for fn in self.listeners:
            fn(batch, res)
        return res

    def _window(self, start: int, end: int, now: int) -> tuple[int, int]:
        """Check a window against the clock: not far in the past, not beyond the horizon; start clamped to now."""
        if end <= start:
            raise InvalidInput(f"end ({iso(end)}) must be after start ({iso(start)})", code="invalid_window")
        if start < now - self.grace:
            raise InvalidInput(f"start ({iso(start)}) is in the past; use 'now' or a later time",
                               code="start_in_past")
        start = max(start, now)
        if end <= start:
            raise InvalidInput(f"end ({iso(end)}) is not in the future", code="invalid_window")
        if end > now + self.horizon:
            raise InvalidInput(f"end ({iso(end)}) is beyond the horizon of {self.horizon // (86400 * US)} days "
                               f"({iso(now + self.horizon)})", code="beyond_horizon",
                               horizon=iso(now + self.horizon))
        return start, end

    def _mirror_point(self, src: str, port: str | None) -> str:
        """Where a mirror's copy starts: the switch at the far end of the mirrored host's port (or that switch)."""
        topo = self.cap.topology
        node = topo.nodes.get(src)
        if node is None:
            raise InvalidInput(f"node {src!r} is not in the topology", code="unknown_node", node=src)
        if port is not None:
            link = topo.links.get(port)
            if link is None or src not in (link.a, link.b):
                raise InvalidInput(f"port {port!r} is not a link of {src!r}", code="invalid_port", port=port)
        if node.kind == "switch":
            return src
        links = [topo.links[port]] if port is not None else [topo.links[i] for i in topo.links_of(src)]
        if not links:
            raise InvalidInput(f"{src!r} has no links to mirror", code="invalid_port")
        if len(links) > 1:
            raise InvalidInput(f"{src!r} has {len(links)} links; say which one with port", code="port_required",
                               ports=[lk.id for lk in links])
        far = links[0].b if links[0].a == src else links[0].a
        return far

    def plan(self, res: Reservation) -> tuple[Leg, ...]:
        """The unrouted legs of ``res`` on the current topology (InvalidInput if an endpoint is gone)."""
        topo = self.cap.topology
        for node in (res.src, res.dst, *res.via):
            if node not in topo.nodes:
                raise InvalidInput(f"node {node!r} is not in the topology", code="unknown_node", node=node)
        for mb in res.via:
            if topo.nodes[mb].kind != "middlebox":
                raise InvalidInput(f"steering goes through middleboxes; {mb!r} is a {topo.nodes[mb].kind}",
                                   code="not_a_middlebox", node=mb)
        mirror_from = self._mirror_point(res.src, res.port) if res.kind == "mirror" else None
        if mirror_from is not None and mirror_from == res.dst:
            raise InvalidInput("the collector is the mirroring switch itself", code="same_endpoints")
        return plan_legs(kind=res.kind, src=res.src, dst=res.dst, via=res.via, rate_out=res.rate_out,
                         rate_in=res.rate_in, mirror_from=mirror_from)

    def _chains(self, hops: list[int], src: str, dst: str) -> bool:
        topo = self.cap.topology
        ends = topo.graph.ends
        if not hops or topo.node_ids[ends[hops[0]][0]] != src or topo.node_ids[ends[hops[-1]][1]] != dst:
            return False
        transit = topo.graph.transit  # a node that became a host is no longer a way through
        return all(ends[a][1] == ends[b][0] and transit[ends[a][1]] for a, b in zip(hops, hops[1:], strict=False))

    def admit(self, batch: Batch, planned: Sequence[Leg], res: Reservation, now: int, *,
               prior: Sequence[Leg] = (), limits: bool = True) -> tuple[Leg, ...]:
        """Route and book every leg over ``res``'s window (a prior path first, if it still fits).

        Legs are booked one by one so a later leg sees the earlier ones; if one cannot be placed, what was
        booked is released and the refusal raised: all or nothing. ``limits=False`` (re-checks after a topology
        change): only capacity is checked, since limits apply to admissions and a lowered limit must not turn
        into degraded reservations at the next, unrelated, topology edit; the holdings are still booked.
        """
        cap, topo = self.cap, self.cap.topology
        check_from = max(res.start, now)
        checked = res.project if limits else None
        old = {leg.name: leg for leg in prior}
        done: list[tuple[list[int], int]] = []
        try:
            routed = []
            for leg in planned:
                hops = None
                if leg.name in old and old[leg.name].hops:
                    hops = topo.hops_of(list(old[leg.name].hops))
                    if hops is not None and not (self._chains(hops, leg.src, leg.dst)
                                                 and cap.fits(hops, check_from, res.end, leg.rate, checked)):
                        hops = None
                if hops is None:
                    hops = cap.route(leg, check_from, res.end, checked, mode=res.path_mode)
                cap.book(hops, res.start, res.end, leg.rate, res.project)
                done.append((hops, leg.rate))
                doc = topo.path_doc(hops)
                routed.append(Leg(leg.name, leg.src, leg.dst, leg.rate, tuple(topo.hops[h] for h in hops),
                                  tuple(doc["nodes"])))
        except BaseException:
            for hops, rate in reversed(done):
                cap.unbook(hops, res.start, res.end, rate, res.project)
            raise

        def undo() -> None:
            for hops, rate in reversed(done):
                cap.unbook(hops, res.start, res.end, rate, res.project)

        batch.on_undo(undo)
        return tuple(routed)

    def _alarms(self, batch: Batch, res: Reservation) -> list[dict[str, Any]]:
        """The hops of ``res`` above their alarm threshold from now on (logged once the change commits)."""
        topo = self.cap.topology
        hops = [h for leg in res.legs for h in (topo.hops_of(list(leg.hops)) or [])]
        alarms = self.cap.alarms(sorted(set(hops)), max(res.start, to_us(batch.now)), res.end)
        if alarms:
            log_on_commit(batch, "link above its alarm threshold", level=logging.WARNING, reservation=res.id,
                           links=",".join(a["link"] for a in alarms))
        return alarms

    # ================================================================ reservations

    def may_reserve(self, principal: Principal, project: object) -> str | None:
        """Whether ``principal`` may make a reservation for ``project`` (as asked): the project it is for.

        Agents may not; a member reserves for its own project only (and by default)."""
        _may_change(principal, "making reservations")
        if principal.role == "member":
            if project is not None and project != principal.project:
                raise Forbidden(f"a {principal.describe()} may reserve only for its own project")
            return principal.project
        return project if isinstance(project, str) else None

    def create_op(self, request: ReservationRequest, *, principal: Principal = ADMIN) -> Op:
        """Returns ``(reservation, created, alarms)``; created is False for an idempotent retry.

        ``request`` is checked already (:meth:`ReservationRequest.parse`); here: who may ask, for which
        project, and the window against the clock."""
        p = principal
        project = self.may_reserve(p, request.project)
        kind, src, dst, via, port = request.kind, request.src, request.dst, request.via, request.port
        rate_out, rate_in, match, labels = request.rate_out, request.rate_in, request.match, dict(request.labels)
        request_id, mode, burst = request.request_id, request.path_mode, request.burst
        now = self.now_us()
        start = parse_instant(request.start, now=now, what="start")
        end = parse_instant(request.end, now=now, what="end")
        digest = request_hash({**request.sent, "project": project})
        owner = p.token_id

        def apply(batch: Batch) -> tuple[Reservation, bool, list[dict[str, Any]]]:
            bnow = to_us(batch.now)
            if request_id is not None:
                rid = self._requests.get((project or "", request_id))
                if rid is not None:
                    old = self._res[rid]
                    if old.request_hash != digest:
                        raise Conflict(f"request_id {request_id!r} was used for a different request ({rid})",
                                       code="request_id_conflict", id=rid)
                    return old, False, []
            w_start, w_end = self._window(start, end, bnow)
            rid = "r-" + secrets.token_hex(8)
            res = Reservation(
                id=rid, kind=kind, project=project, owner=owner, src=src, dst=dst, via=via, port=port,
                rate_out=rate_out, rate_in=rate_in, match=match, start=w_start, end=w_end,
                state=time_state(w_start, w_end, bnow), legs=(), labels=labels, path_mode=mode, burst=burst,
                mark=request.mark, direction=request.direction, request_id=request_id, request_hash=digest,
                created_at=bnow, updated_at=bnow,
            )
            legs = self.admit(batch, self.plan(res), res, bnow)
            seq = self._next_seq
            self._next_seq += 1

            def undo_seq() -> None:
                self._next_seq = seq

            batch.on_undo(undo_seq)
            if request_id is not None:
                key = (project or "", request_id)
                self._requests[key] = rid
                batch.on_undo(lambda: self._requests.pop(key, None))
            res = self.record(batch, replace(res, legs=legs, seq=seq), "created")
            log_on_commit(batch, "reservation admitted", reservation=rid, kind=kind, project=project,
                           src=src, dst=dst, rate=rate_out)
            return res, True, self._alarms(batch, res)

        return Op(apply)

    def modify_op(self, rid: str, changes: Mapping[str, Any], *, principal: Principal = ADMIN) -> Op:
        """Change the window, rates, burst or labels of a reservation, re-admitted atomically: all or nothing."""
        _may_change(principal, "modifying reservations")
        now = self.now_us()
        start = parse_instant(changes["start"], now=now, what="start") if changes.get("start") is not None else None
        end = parse_instant(changes["end"], now=now, what="end") if changes.get("end") is not None else None
        new_rate = changes.get("rate_out", changes.get("rate"))
        rate_out = parse_rate(new_rate, what="rate_out") if new_rate is not None else None
        rate_in = parse_rate(changes["rate_in"], what="rate_in", allow_zero=True) \
            if changes.get("rate_in") is not None else None
        labels = validate_labels(changes["labels"]) if changes.get("labels") is not None else None
        burst = validate_burst(changes["burst"]) if changes.get("burst") is not None else None

        def apply(batch: Batch) -> tuple[Reservation, list[dict[str, Any]]]:
            bnow = to_us(batch.now)
            old = self._lookup(rid, principal)
            if old.state in ENDED:
                raise Conflict(f"reservation {rid} has {old.state}; make a new one", code="reservation_ended",
                               state=old.state)
            if burst is not None and burst != "cap" and old.kind == "mirror":
                raise InvalidInput("a mirror is held to its rate: burst borrow is for the other kinds",
                                   code="invalid_burst")
            if rate_in is not None and old.kind != "bandwidth" and rate_in != 0:
                raise InvalidInput(f"a {old.kind} reservation has no rate_in", code="invalid_rate")
            new_start = old.start if start is None else start
            started = old.start <= bnow  # active, or degraded while its window runs: the start is history
            if started and start is not None and start != old.start:
                raise InvalidInput("the reservation has started: its start cannot move", code="start_immutable")
            new_end = old.end if end is None else end
            if started:
                if new_end <= bnow:
                    raise InvalidInput("end must be in the future; cancel to end it now", code="invalid_window")
                if new_end > bnow + self.horizon:
                    raise InvalidInput(f"end ({iso(new_end)}) is beyond the horizon", code="beyond_horizon")
            else:
                new_start, new_end = self._window(new_start, new_end, bnow)
            new = replace(
                old, start=new_start, end=new_end,
                rate_out=old.rate_out if rate_out is None else rate_out,
                rate_in=(old.rate_in if rate_in is None else rate_in) if old.kind == "bandwidth" else 0,
                labels=old.labels if labels is None else labels, reason=None,
                burst=old.burst if burst is None else burst,
            )
            # Release the old booking, then admit the new one; a refusal rolls the command back, which
            # books the old one again (the writer runs this command's undo steps): all or nothing.
            if old.holds_capacity:
                self._book(batch, old.legs, old, -1)
            legs = self.admit(batch, self.plan(new), new, bnow, prior=old.legs)
            new = self.record(batch, replace(new, legs=legs, state=time_state(new_start, new_end, bnow)))
            log_on_commit(batch, "reservation modified", reservation=rid)
            return new, self._alarms(batch, new)

        return Op(apply)

    def cancel_op(self, rid: str, *, principal: Principal = ADMIN) -> Op:
        """Cancel: the capacity is free at once. Cancelling a cancelled reservation answers it again."""
        _may_change(principal, "cancelling reservations")

        def apply(batch: Batch) -> Reservation:
            old = self._lookup(rid, principal)
            if old.state == CANCELLED:
                return old
            if old.state == EXPIRED:
                raise Conflict(f"reservation {rid} has expired", code="reservation_ended", state=old.state)
            if old.holds_capacity:
                self._book(batch, old.legs, old, -1)
            new = self.record(batch, replace(old, state=CANCELLED, ended_at=to_us(batch.now)))
            log_on_commit(batch, "reservation cancelled", reservation=rid)
            return new

        return Op(apply)

    # ---------------------------------------------------------------- timers

    def _run_due(self, ids: list[str]) -> list[Reservation]:
        try:
            changed = self.writer.execute(self.due_op(ids))
        except Exception:
            retry = self.now_us() + RETRY_DUE_US
            for rid in ids:
                self.scheduler.arm(retry, rid)
            raise
        for rid in ids:  # popped: arm the next instant of those that did not change (changed ones are armed)
            res = self._views.get(rid)
            if res is not None:
                self.scheduler.arm(res.next_due(self.retention), rid)
        return changed

    def due_op(self, ids: Sequence[str]) -> Op:
        """Activate, expire or purge the given reservations if they are due by the batch's clock."""

        def apply(batch: Batch) -> list[Reservation]:
            now = to_us(batch.now)
            changed = []
            for rid in ids:
                res = self._res.get(rid)
                if res is None:
                    continue
                if res.state in ENDED:
                    if now >= res.next_due(self.retention):
                        self._purge(batch, res)
                    continue
                if res.state == PENDING and res.start <= now < res.end:
                    changed.append(self.record(batch, replace(res, state=ACTIVE)))
                elif res.state in LIVE and now >= res.end:
                    if res.holds_capacity:
                        self._book(batch, res.legs, res, -1)
                    changed.append(self.record(batch, replace(res, state=EXPIRED, ended_at=res.end)))
            return changed

        return Op(apply)

    def _purge(self, batch: Batch, res: Reservation) -> None:
        batch.write(DELETE_RES, {"b_id": res.id})
        gone = replace(res, revision=batch.next_revision())
        batch.emit("reservation", res.id, "deleted", gone.event_labels(), gone.body())
        if res.request_id is not None:
            key = (res.project or "", res.request_id)
            self._requests.pop(key, None)
            batch.on_undo(lambda: self._requests.__setitem__(key, res.id))
        self._map.put(batch, res.id, None)

    # ================================================================ reads

    def active_touching(self, hosts: Collection[str] | None) -> list[Reservation]:
        """The active reservations with an end, or a leg from or to one of ``hosts`` (None: all of them; writer
        thread)."""
        return [r for r in self._res.values() if r.state == ACTIVE and (
            hosts is None or r.src in hosts or r.dst in hosts or any(leg.src in hosts or leg.dst in hosts
                                                                     for leg in r.legs))]

    def get(self, rid: str, *, principal: Principal = ADMIN) -> Reservation:
        res = self._views.get(rid)
        if res is None or not may_see(principal, res.project, res.src, res.dst):
            raise NotFound(f"no reservation {rid!r}", code="reservation_not_found", id=rid)
        return res

    def list(self, *, principal: Principal = ADMIN, state: str | None = None, project: str | None = None,
             after: str | None = None, limit: int = 1000, kind: str | None = None, node: str | None = None,
             link: str | None = None) -> tuple[list[Reservation], str | None]:
        """Reservations in admission order, filtered; a page and the cursor of the next one (opaque to clients:
        the admission number of the last one given, so it reveals nothing and survives a purge). ``node``: one of
        its ends, a middlebox it is steered through, or a node of any of its paths; ``link``: on any of its paths."""
        if state is not None and state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}", code="invalid_state")
        if kind is not None and kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", code="invalid_kind")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be 1 to {MAX_PAGE}", code="invalid_limit")
        if principal.role == "member" and project is not None and project != principal.project:
            raise Forbidden(f"a {principal.describe()} sees only its own project's reservations")
        cursor = 0
        if after is not None:
            if not (after.isascii() and after.isdigit() and len(after) <= 18):
                raise InvalidInput("after must be the next cursor of a previous page", code="invalid_cursor")
            cursor = int(after)
        page: list[Reservation] = []
        for r in list(self._views.values()):  # one atomic copy: the writer may publish meanwhile
            if r.seq > cursor and (state is None or r.state == state) and (project is None or r.project == project) \
                    and (kind is None or r.kind == kind) and (node is None or _touches_node(r, node)) \
                    and (link is None or any(h[0] == link for leg in r.legs for h in leg.hops)) \
                    and may_see(principal, r.project, r.src, r.dst):
                if len(page) == limit:
                    return page, str(page[-1].seq)
                page.append(r)
        return page, None

    def count_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for r in list(self._views.values()):
            counts[r.state] += 1
        return counts

    def usage_op(self, link_id: str, *, start: object = None, end: object = None) -> Op:
        """A link's usage steps per direction (read-only command: consistent with the ledgers)."""
        now = self.now_us()
        s = parse_instant(start, now=now, what="from") if start is not None else None
        e = parse_instant(end, now=now, what="to") if end is not None else None
        if s is not None and e is not None and e <= s:
            raise InvalidInput("to must be after from", code="invalid_window")

        def apply(batch: Batch) -> dict[str, Any]:
            if link_id not in self.cap.topology.links:
                raise NotFound(f"no link {link_id!r}", code="link_not_found", link=link_id)
            return self.cap.usage(link_id, s, e, max_steps=MAX_USAGE_STEPS)

        return Op(apply)

    def usage_all_op(self, *, at: object = None, start: object = None, end: object = None) -> Op:
        """Every link's usage per direction at one instant (``at``, default now), or its peak over ``[from, to)``
        (read-only command: one consistent view of every ledger)."""
        now = self.now_us()
        if at is not None and (start is not None or end is not None):
            raise InvalidInput("give at, or from and to, not both", code="invalid_window")
        if (start is None) != (end is None):
            raise InvalidInput("from and to go together", code="invalid_window")
        s = parse_instant(start, now=now, what="from") if start is not None else None
        e = parse_instant(end, now=now, what="to") if end is not None else None
        if s is not None and e is not None and e <= s:
            raise InvalidInput("to must be after from", code="invalid_window")
        instant = parse_instant(at, now=now, what="at") if at is not None else None

        def apply(batch: Batch) -> dict[str, Any]:
            # ``revision``: the ledgers as the writer holds them at this command, i.e. after every change up to it.
            if s is not None:
                return {"from": iso(s), "to": iso(e), "links": self.cap.usage_all(s, e), "revision": batch.revision}
            t = instant if instant is not None else to_us(batch.now)
            return {"at": iso(t), "links": self.cap.usage_all(t, None), "revision": batch.revision}

        return Op(apply)

    def paths_op(self, query: Mapping[str, Any], *, principal: Principal = ADMIN) -> Op:
        """Up to ``k`` feasible paths for a one-way demand over a window (nothing is booked)."""
        _may_change(principal, "querying paths")
        src, dst = query.get("src"), query.get("dst")
        if not isinstance(src, str) or not isinstance(dst, str) or src == dst:
            raise InvalidInput("src and dst must name two different nodes", code="invalid_endpoint")
        validate_name(src, what="src")
        validate_name(dst, what="dst")
        rate = parse_rate(query.get("rate"), what="rate")
        k = query.get("k", 1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise InvalidInput(f"k must be 1 to {MAX_K}", code="invalid_k")
        mode = query.get("path_mode") or "shortest"
        if mode not in PATH_MODES:
            raise InvalidInput(f"path_mode must be one of {', '.join(PATH_MODES)}", code="invalid_path_mode")
        project = principal.project if principal.role == "member" else query.get("project")
        now = self.now_us()
        start = parse_instant(query.get("start", "now"), now=now, what="start")
        end = parse_instant(query.get("end"), now=now, what="end") if query.get("end") is not None else None
        if end is None:
            raise InvalidInput("end is required", code="invalid_window")

        def apply(batch: Batch) -> dict[str, Any]:
            bnow = to_us(batch.now)
            s, e = self._window(start, end, bnow)
            leg = Leg("out", src, dst, rate)
            cap, topo = self.cap, self.cap.topology
            if mode == "widest" and k == 1:
                paths = [cap.route(leg, s, e, project, mode="widest")]
            else:
                paths = cap.alternatives(leg, s, e, project, k)
            if not paths:
                raise cap.refusal(leg, s, e, project)
            return {"paths": [{**topo.path_doc(h), "hops": len(h),
                               "residual": min(cap.residual(x, s, e, project) for x in h)} for h in paths],
                    "start": iso(s), "end": iso(e)}

        return Op(apply)

    # ---------------------------------------------------------------- watch listers

    def list_reservations_at(self, conn: Connection, pins: Mapping[str, frozenset[str]]
                             ) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        q = select(_R.id, _R.request_hash, _R.body).order_by(_R.seq)
        if "#id" in pins:
            q = q.where(_R.id.in_(sorted(pins["#id"])))
        if "project" in pins:
            q = q.where(_R.project.in_(sorted(pins["project"])))
        if "state" in pins:
            q = q.where(_R.state.in_(sorted(pins["state"])))
        for r in conn.execute(q).all():
            body = json.loads(r.body)
            res = _from_body(body, r.request_hash)
            yield res.id, res.event_labels(), body

def log_on_commit(batch: Batch, msg: str, *, level: int = logging.DEBUG, logger: logging.Logger = log,
                  **fields: Any) -> None:
    """Log a change once committed: each reservation's at debug (like claims), the rest at the level given."""
    if logger.isEnabledFor(level):
        batch.on_commit(lambda: logger.log(level, msg, extra=fields))


def _touches_node(r: Reservation, node: str) -> bool:
    return node in (r.src, r.dst) or node in r.via or any(node in leg.nodes for leg in r.legs)
