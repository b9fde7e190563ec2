"""The instance service: desired-state instances, stitching, dispatch to agents and their reports.

Every change is one writer command with its event (kind ``instance``, labels
host, type, state, name and project), so a host agent watching
``kinds=instance`` with ``host=<its host>`` sees exactly its own instances,
in order, and resumes by revision (seed 001).

What the server decides (see :mod:`tenure.domain.instance` for the states):

- **Dispatch.** An instance whose desired generation was not yet sent is
  *evaluated*: every dependency must exist and be active (a failed one fails
  it; a missing or deleting one fails it too), its references must resolve
  (``${claim:...}`` against the allocator, ``${instance:...}`` against the
  dependency's outputs), and an agent must be registered on its host (else it
  stays ``pending`` with that reason). Then it is ``provisioning`` with the
  resolved parameters and a *deadline*.
- **Reports.** The host's agent reports the outcome of a generation:
  ``active`` (with outputs), ``failed`` (with a reason) or ``deleted``. A
  report for an older generation is stale and changes nothing. Each change of
  an instance re-evaluates the instances that depend on it, in the same
  command.
- **Deadlines.** A transitional state (provisioning, deleting) fails with a
  reason when no report arrives within twice the type's operation timeout
  plus ``report_grace`` (the agent may be dead or cut off); a later report
  still counts (FABRIC's known failure is an instance stuck forever).
- **Owned instances.** Services may keep instances of their own (a bandwidth
  reservation's shapers): :meth:`InstanceService.sync_owned` makes the set
  of instances of one owner what it should be, inside the owner's command, so
  the reservation's change and its instances commit together. Clients may
  read them but not change or delete them.

Names are unique per project (an admin's instances without a project share one
scope), because references and ``depends_on`` name instances.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from tenure.clock import Clock, utcnow
from tenure.domain.access import ADMIN, Principal
from tenure.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from tenure.domain.instance import (
    ABSENT,
    ACTIVE,
    DELETED,
    DELETING,
    FAILED,
    PENDING,
    PRESENT,
    PROVISIONING,
    REPORTS,
    STATES,
    TRANSITIONAL,
    Instance,
    Ref,
    Unresolved,
    dependencies_of,
    find_cycle,
    references,
    resolve_parameters,
    validate_depends_on,
    validate_outputs,
    validate_parameters,
    validate_reason,
    validate_type,
)
from tenure.domain.names import validate_name
from tenure.domain.reservation import validate_labels
from tenure.domain.units import US, to_us
from tenure.services.scheduler import Scheduler
from tenure.store import schema
from tenure.store.inlist import rows_in
from tenure.store.writer import Batch, Op, Published, Writer

log = logging.getLogger("tenure.instances")

MAX_BATCH = 1000  # instances in one create
MAX_PAGE = 10_000
MAX_RESULT_BYTES = 8 * 1024
RETRY_DUE_US = 5 * US
# An agent may run a probe ahead of it, then a stop and a start (a modify without reload): three operations.
DEADLINE_TIMEOUTS = 3
SERVICE_TYPES = frozenset({"bandwidth"})  # made by services (a reservation's shapers); by hand only by admins
CREATE_FIELDS = frozenset({"name", "type", "host", "parameters", "labels", "depends_on", "project"})
MODIFY_FIELDS = frozenset({"parameters", "labels", "depends_on"})
REPORT_FIELDS = frozenset({"generation", "state", "reason", "outputs", "result"})

_I = schema.instances.c
UPDATE_INST = (
    update(schema.instances).where(_I.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), body=bindparam("b_body"), revision=bindparam("b_revision"))
)
DELETE_INST = delete(schema.instances).where(_I.id == bindparam("b_id"))


def may_see(p: Principal, inst: Instance) -> bool:
    """As a GET answers: an admin everything, a member its project's, an agent its host's."""
    if p.is_admin:
        return True
    if p.role == "member":
        return inst.project == p.project
    return p.role == "agent" and inst.host == p.host


def _scope(project: str | None) -> str:
    return project or ""


def _from_body(body: Mapping[str, Any]) -> Instance:
    def us(text: str | None) -> int | None:
        return to_us(datetime.fromisoformat(text)) if text else None

    return Instance(
        id=body["id"], name=body["name"], project=body["project"], type=body["type"], host=body["host"],
        parameters=dict(body["parameters"]), labels=dict(body["labels"]), depends_on=tuple(body["depends_on"]),
        desired=body["desired"], state=body["state"], reason=body["reason"], generation=body["generation"],
        dispatched=body["dispatched"], observed=body["observed"],
        resolved=dict(body["resolved"]) if body["resolved"] is not None else None,
        outputs=dict(body["outputs"]), result=body["result"], owner=body["owner"], timeout=body["timeout"],
        deadline=us(body["deadline"]), created_at=us(body["created_at"]) or 0, updated_at=us(body["updated_at"]) or 0,
        revision=body["revision"])


def _validate_result(result: object) -> dict[str, Any] | None:
    if result is None:
        return None
    if not isinstance(result, dict):
        raise InvalidInput("result must be a JSON object", code="invalid_result")
    try:
        text = json.dumps(result, ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except (ValueError, TypeError):
        raise InvalidInput("result must be plain JSON: no NaN or Infinity, no lone surrogates",
                           code="invalid_result") from None
    if size > MAX_RESULT_BYTES:
        raise InvalidInput(f"result is {size} bytes of JSON; the limit is {MAX_RESULT_BYTES}", code="invalid_result")
    if "\\u0000" in text:
        raise InvalidInput("result must not contain the NUL character", code="invalid_result")
    return json.loads(text)


def _unknown_fields(raw: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    extra = sorted(k for k in raw if k not in allowed)
    if extra:
        raise InvalidInput(f"{what}: unknown field {extra[0]!r}; the fields are {', '.join(sorted(allowed))}",
                           code="unknown_field", field=extra[0])


class InstanceService:
    def __init__(self, *, writer: Writer, clock: Clock = utcnow, types: Mapping[str, float] | None = None,
                 claim_value: Callable[[str, str, Principal], int] | None = None,
                 has_agent: Callable[[str], bool] | None = None, report_grace: float = 30.0) -> None:
        self.writer = writer
        self.clock = clock
        self.types: dict[str, float] = dict(types or {})  # type -> operation timeout (seconds)
        self._claim_value = claim_value
        self._has_agent = has_agent or (lambda host: False)
        self.report_grace = report_grace
        self._map: Published[str, Instance] = Published(on_swap=self._reindex, on_publish=self._arm)
        self._inst = self._map.working  # the writer thread's
        self._views = self._map.view  # as of the last commit; read by anyone
        # Indexes of the working map, kept in step by _reindex.
        self._names: dict[tuple[str, str], str] = {}  # (scope, name) -> id
        self._dependents: dict[tuple[str, str], set[str]] = {}  # (scope, name depended on) -> ids
        self._by_host: dict[str, set[str]] = {}
        self._by_owner: dict[str, set[str]] = {}  # "reservation:<id>" -> ids of the instances it owns
        self.scheduler = Scheduler(now_us=self.now_us, run=self._run_due)
        # What agents' monitors found on the wire (heartbeats): id -> (host, at, values). Not stored and not
        # events: this server's memory of the last heartbeats (a new leader has them after the next ones).
        self._observed: dict[str, tuple[str, str, dict[str, str]]] = {}
        self._observed_by_host: dict[str, set[str]] = {}
        self._observed_lock = threading.Lock()

    def now_us(self) -> int:
        return to_us(self.clock())

    # ================================================================ restore

    def load(self, conn: Connection) -> None:
        for r in conn.execute(select(_I.body).order_by(_I.revision)):
            inst = _from_body(json.loads(r.body))
            self._map.load(inst.id, inst)
            if inst.deadline is not None:
                self.scheduler.arm(inst.deadline, inst.id)

    def refresh(self, batch: Batch, conn: Connection, ids: Collection[str]) -> None:
        """A follower: the instances that events named, as stored in ``conn``'s snapshot (indexes and
        deadlines follow through the map, as for a change made here)."""
        stored = {inst.id: inst for inst in (_from_body(json.loads(r.body))
                                             for r in rows_in(conn, select(_I.body), _I.id, ids))}
        ordered = sorted(ids)
        order = [iid for iid in ordered if iid in self._inst]
        order += sorted((iid for iid in ordered if iid not in self._inst and iid in stored),
                        key=lambda iid: stored[iid].revision)
        for iid in order:
            self._map.put(batch, iid, stored.get(iid))

    # ================================================================ bookkeeping

    def _index(self, inst: Instance, *, add: bool) -> None:
        scope = _scope(inst.project)
        owner = inst.owner.partition("/")[0] if inst.owner is not None else None
        if add:
            self._names[(scope, inst.name)] = inst.id
            self._by_host.setdefault(inst.host, set()).add(inst.id)
            if owner is not None:
                self._by_owner.setdefault(owner, set()).add(inst.id)
            for d in inst.dependencies:
                self._dependents.setdefault((scope, d), set()).add(inst.id)
            return
        if self._names.get((scope, inst.name)) == inst.id:
            del self._names[(scope, inst.name)]
        for index, key in ((self._by_host, inst.host), (self._by_owner, owner)):
            ids = index.get(key) if key is not None else None
            if ids is not None:
                ids.discard(inst.id)
                if not ids:
                    del index[key]
        for d in inst.dependencies:
            ids = self._dependents.get((scope, d))
            if ids is not None:
                ids.discard(inst.id)
                if not ids:
                    del self._dependents[(scope, d)]

    def _reindex(self, old: Instance | None, new: Instance | None) -> None:
        if old is not None:
            self._index(old, add=False)
        if new is not None:
            self._index(new, add=True)

    def _arm(self, iid: str, inst: Instance | None) -> None:
        """Once a change commits: the instance's deadline in the scheduler (none without one)."""
        if inst is None or inst.deadline is None:
            self.scheduler.disarm(iid)
        else:
            self.scheduler.arm(inst.deadline, iid)

    def _row(self, inst: Instance) -> dict[str, Any]:
        return {"id": inst.id, "scope": _scope(inst.project), "name": inst.name, "host": inst.host,
                "state": inst.state, "body": json.dumps(inst.body(), ensure_ascii=False), "revision": inst.revision}

    def _changed(self, batch: Batch, inst: Instance, op: str = "updated") -> Instance:
        """Stamp, write, emit and put ``inst``; ``op="deleted"`` removes it (its event says state deleted)."""
        inst = replace(inst, revision=batch.next_revision(), updated_at=to_us(batch.now))
        if op == "created":
            batch.write(insert(schema.instances), self._row(inst))
        elif op == "deleted":
            inst = replace(inst, state=DELETED, deadline=None)
            batch.write(DELETE_INST, {"b_id": inst.id})
        else:
            batch.write(UPDATE_INST, {"b_id": inst.id, "b_state": inst.state,
                                      "b_body": json.dumps(inst.body(), ensure_ascii=False),
                                      "b_revision": inst.revision})
        batch.emit("instance", inst.id, op, inst.event_labels(), inst.body())
        self._map.put(batch, inst.id, None if op == "deleted" else inst)
        if op != "created" and log.isEnabledFor(logging.INFO):
            batch.on_commit(lambda: log.info("instance %s", inst.state, extra={
                "instance": inst.id, "instance_name": inst.name, "host": inst.host, "reason": inst.reason}))
        return inst

    def _lookup(self, iid: str, p: Principal) -> Instance:
        inst = self._inst.get(iid)
        if inst is None:
            pid = self._names.get((_scope(p.project if p.role == "member" else None), iid))
            inst = self._inst.get(pid) if pid is not None else None
        if inst is None or not may_see(p, inst):
            raise NotFound(f"no instance {iid!r}", code="instance_not_found", id=iid)
        return inst

    def _deadline(self, batch: Batch, inst: Instance) -> int:
        return to_us(batch.now) + int((DEADLINE_TIMEOUTS * inst.timeout + self.report_grace) * US)

    # ================================================================ evaluation

    def _resolver(self, inst: Instance) -> Callable[[Ref], str]:
        scope = _scope(inst.project)
        principal = Principal("member", project=inst.project) if inst.project else ADMIN

        def resolve(ref: Ref) -> str:
            if ref.kind == "claim":
                if self._claim_value is None:
                    raise Unresolved(f"{ref.text}: claims cannot be resolved here")
                try:
                    return str(self._claim_value(ref.target, ref.key, principal))
                except NotFound as exc:
                    raise Unresolved(f"{ref.text} does not resolve: {exc.message}") from None
            dep_id = self._names.get((scope, ref.target))
            dep = self._inst.get(dep_id) if dep_id is not None else None
            if dep is None:
                raise Unresolved(f"{ref.text} does not resolve: no instance {ref.target!r}")
            if ref.key not in dep.outputs:
                have = ", ".join(sorted(dep.outputs)) or "none"
                raise Unresolved(f"{ref.text} does not resolve: instance {ref.target!r} has no output "
                                 f"{ref.key!r} (its outputs: {have})")
            return dep.outputs[ref.key]

        return resolve

    def _evaluate(self, batch: Batch, inst: Instance) -> Instance:
        """What ``inst`` should be now (not written): dispatched, pending with a reason, or failed."""
        if inst.desired != PRESENT or inst.dispatched >= inst.generation:
            return inst
        scope = _scope(inst.project)

        def hold(state: str, reason: str) -> Instance:
            return replace(inst, state=state, reason=reason, deadline=None)

        for name in inst.dependencies:
            dep_id = self._names.get((scope, name))
            dep = self._inst.get(dep_id) if dep_id is not None else None
            if dep is None:
                return hold(FAILED, f"dependency {name!r} does not exist")
            if dep.desired == ABSENT:
                return hold(FAILED, f"dependency {name!r} is being deleted")
            if dep.state == FAILED:
                return hold(FAILED, f"dependency {name!r} failed: {dep.reason}")
            if dep.state != ACTIVE:
                return hold(PENDING, f"waiting for dependency {name!r} ({dep.state})")
        try:
            resolved = resolve_parameters(inst.parameters, self._resolver(inst))
        except Unresolved as exc:
            return hold(FAILED, str(exc))
        if not self._has_agent(inst.host):
            return hold(PENDING, f"no agent is registered on host {inst.host!r}")
        return replace(inst, state=PROVISIONING, reason=None, resolved=resolved, dispatched=inst.generation,
                       deadline=self._deadline(batch, inst))

    def _settle(self, batch: Batch, iids: Sequence[str]) -> None:
        """Evaluate ``iids`` and, for each that changed, the instances that depend on it (a worklist)."""
        work = list(iids)
        seen = 0
        while work:
            seen += 1
            if seen > 100 * max(1, len(self._inst)):  # cannot happen without a cycle; never loop forever
                raise RuntimeError("instance evaluation did not settle")
            iid = work.pop(0)
            inst = self._inst.get(iid)
            if inst is None:
                continue
            new = self._evaluate(batch, inst)
            if new != inst:
                self._changed(batch, new)
                work.extend(sorted(self._dependents.get((_scope(new.project), new.name), ())))

    def _touch_dependents(self, batch: Batch, inst: Instance) -> None:
        self._settle(batch, sorted(self._dependents.get((_scope(inst.project), inst.name), ())))

    # ================================================================ client commands

    def _check_create(self, raw: object, principal: Principal) -> Instance:
        if not isinstance(raw, Mapping):
            raise InvalidInput("an instance must be a JSON object", code="invalid_instance")
        _unknown_fields(raw, CREATE_FIELDS, "instance")
        name = validate_name(raw.get("name"), what="instance name")
        if len(name) == 36 and _looks_like_uuid(name):
            raise InvalidInput(f"instance name {name!r} looks like an id; choose another", code="invalid_name")
        type_ = validate_type(raw.get("type"), self.types)
        if type_ in SERVICE_TYPES and not principal.is_admin:
            raise Forbidden(f"instances of type {type_!r} are made by reservations; reserve bandwidth instead")
        host = validate_name(raw.get("host"), what="host")
        project = raw.get("project")
        if principal.role == "member":
            if project is not None and project != principal.project:
                raise Forbidden(f"a {principal.describe()} may create instances only in its own project")
            project = principal.project
        elif principal.role == "agent":
            raise Forbidden(f"creating instances needs an admin or member token; this token is a "
                            f"{principal.describe()}")
        elif project is not None:
            validate_name(project, what="project")
        params = validate_parameters(raw.get("parameters"))
        labels = validate_labels(raw.get("labels"))
        deps = validate_depends_on(raw.get("depends_on"))
        if name in dependencies_of(deps, params):
            raise InvalidInput(f"instance {name!r} depends on itself", code="dependency_cycle", cycle=[name, name])
        return Instance(id=str(uuid.uuid4()), name=name, project=project, type=type_, host=host, parameters=params,
                        labels=labels, depends_on=deps, timeout=self.types[type_])

    def create_op(self, items: Sequence[object], *, principal: Principal = ADMIN) -> Op:
        """Create instances (one, or several that may depend on each other) all or nothing.

        Returns ``[(instance, created)]``; an instance that already exists with the same
        specification is answered again (``created`` False), a different one is a 409.
        """
        if not isinstance(items, list | tuple) or not items or len(items) > MAX_BATCH:
            raise InvalidInput(f"instances must be a list of 1 to {MAX_BATCH}", code="invalid_instance")
        news = [self._check_create(raw, principal) for raw in items]
        names = [n.name for n in news]
        if len(set(zip([n.project for n in news], names, strict=True))) != len(news):
            dup = next(n for i, n in enumerate(names) if n in names[:i])
            raise InvalidInput(f"instance {dup!r} appears twice in one request", code="duplicate_instance")
        cycle = find_cycle({n.name: n.dependencies for n in news})
        if cycle is not None:
            raise InvalidInput(f"dependency cycle: {' -> '.join(cycle)}", code="dependency_cycle", cycle=cycle)

        def apply(batch: Batch) -> list[tuple[Instance, bool]]:
            out: list[tuple[Instance, bool]] = []
            fresh: list[Instance] = []
            batch_names = {(_scope(n.project), n.name) for n in news}
            for new in news:
                scope = _scope(new.project)
                old_id = self._names.get((scope, new.name))
                if old_id is not None:
                    old = self._inst[old_id]
                    if old.owner is None and old.desired == PRESENT and (old.type, old.host, dict(old.parameters),
                                                                         dict(old.labels), old.depends_on) == (
                            new.type, new.host, dict(new.parameters), dict(new.labels), new.depends_on):
                        out.append((old, False))
                        continue
                    raise Conflict(f"an instance named {new.name!r} already exists", code="instance_exists",
                                   id=old_id)
                for d in new.dependencies:
                    if (scope, d) not in self._names and (scope, d) not in batch_names:
                        raise InvalidInput(f"instance {new.name!r} depends on {d!r}, which does not exist",
                                           code="unknown_dependency", dependency=d)
                    self._not_owned_dependency(scope, new.name, d)
                self._check_claims(new)
                fresh.append(replace(new, created_at=to_us(batch.now)))
                out.append((fresh[-1], True))
            # Existing instances may still name one of these (its namesake was deleted): no cycle through them.
            if any((_scope(n.project), n.name) in self._dependents for n in fresh):
                self._check_cycles(news)
            # In dependency order, each evaluated before it is written: one event per new instance.
            for inst in _topological(fresh):
                inst = self._changed(batch, self._evaluate(batch, inst), "created")
                self._touch_dependents(batch, inst)  # any left failed by an earlier instance of this name
            return [(self._inst.get(i.id, i), created) for i, created in out]

        return Op(apply)

    def _not_owned_dependency(self, scope: str, name: str, dep: str) -> None:
        dep_id = self._names.get((scope, dep))
        if dep_id is not None and self._inst[dep_id].owner is not None:
            raise InvalidInput(f"instance {name!r} may not depend on {dep!r}: it belongs to "
                               f"{self._inst[dep_id].owner.partition('/')[0]} and goes when that ends",
                               code="owned_dependency", dependency=dep)

    def _check_cycles(self, changed: Sequence[Instance]) -> None:
        """No cycle through ``changed`` in their scope's graph (only what is reachable from them is walked)."""
        mine = {(_scope(i.project), i.name): i for i in changed}
        for start in mine:
            scope = start[0]
            graph: dict[str, tuple[str, ...]] = {}
            stack = [start[1]]
            while stack:
                name = stack.pop()
                if name in graph:
                    continue
                inst = mine.get((scope, name))
                if inst is None:
                    iid = self._names.get((scope, name))
                    inst = self._inst.get(iid) if iid is not None else None
                graph[name] = inst.dependencies if inst is not None else ()
                stack.extend(graph[name])
            cycle = find_cycle(graph)
            if cycle is not None:
                raise InvalidInput(f"dependency cycle: {' -> '.join(cycle)}", code="dependency_cycle", cycle=cycle)

    def _check_claims(self, inst: Instance) -> None:
        """Refuse (400) a claim reference that does not resolve now: a typo should not wait to fail."""
        resolve = self._resolver(inst)
        for k, v in inst.parameters.items():
            for ref in references(v):
                if ref.kind == "claim":
                    try:
                        resolve(ref)
                    except Unresolved as exc:
                        raise InvalidInput(f"parameter {k!r}: {exc}", code="unresolved_reference",
                                           reference=ref.text) from None

    def modify_op(self, iid: str, changes: object, *, principal: Principal = ADMIN) -> Op:
        """Change parameters, labels or dependencies: a new generation, sent to the agent as a modify."""
        if not isinstance(changes, Mapping) or not changes:
            raise InvalidInput("a modification is an object with parameters, labels or depends_on",
                               code="invalid_instance")
        _unknown_fields(changes, MODIFY_FIELDS, "modification")
        params = validate_parameters(changes["parameters"]) if "parameters" in changes else None
        labels = validate_labels(changes["labels"]) if "labels" in changes else None
        deps = validate_depends_on(changes["depends_on"]) if "depends_on" in changes else None
        _may_change(principal)

        def apply(batch: Batch) -> Instance:
            old = self._lookup(iid, principal)
            _not_owned(old)
            if old.desired == ABSENT:
                raise Conflict(f"instance {old.name!r} is being deleted", code="instance_deleting", id=old.id)
            new = replace(old, parameters=params if params is not None else old.parameters,
                          labels=labels if labels is not None else old.labels,
                          depends_on=deps if deps is not None else old.depends_on)
            if (dict(new.parameters), dict(new.labels), new.depends_on) == (
                    dict(old.parameters), dict(old.labels), old.depends_on):
                return old
            scope = _scope(new.project)
            for d in new.dependencies:
                if (scope, d) not in self._names:
                    raise InvalidInput(f"instance {new.name!r} depends on {d!r}, which does not exist",
                                       code="unknown_dependency", dependency=d)
                self._not_owned_dependency(scope, new.name, d)
            if new.dependencies != old.dependencies:
                self._check_cycles([new])
            self._check_claims(new)
            spec_changed = (dict(new.parameters), new.depends_on) != (dict(old.parameters), old.depends_on)
            if spec_changed:
                new = replace(new, generation=old.generation + 1)
            changed = self._changed(batch, new)
            self._settle(batch, [changed.id])
            return self._inst[changed.id]

        return Op(apply)

    def delete_op(self, iid: str, *, principal: Principal = ADMIN, force: bool = False) -> Op:
        """Desired absent. Never sent to an agent: gone at once. ``force`` (admins): gone without the agent."""
        _may_change(principal)
        if force and not principal.is_admin:
            raise Forbidden("a forced delete needs an admin token")

        def apply(batch: Batch) -> Instance:
            old = self._lookup(iid, principal)
            _not_owned(old)
            return self._delete(batch, old, force=force)

        return Op(apply)

    def _delete(self, batch: Batch, old: Instance, *, force: bool = False, owner: bool = False) -> Instance:
        """``owner``: its owner (a reservation that ended) deletes it; nothing may hold that up."""
        users = sorted(self._inst[d].name for d in self._dependents.get((_scope(old.project), old.name), ())
                       if self._inst[d].desired == PRESENT)
        if users and not (force or owner):
            raise Conflict(f"instance {old.name!r} is a dependency of {', '.join(users)}; delete those first",
                           code="instance_in_use", dependents=users)
        if old.desired == ABSENT and not force:
            return old
        if old.dispatched == 0 or force:
            gone = self._changed(batch, old, "deleted")
        else:
            gen = old.generation + 1
            gone = self._changed(batch, replace(old, desired=ABSENT, generation=gen, dispatched=gen, state=DELETING,
                                                reason=None, deadline=self._deadline(batch, old)))
        self._touch_dependents(batch, old)
        return gone

    # ================================================================ agents

    def report_op(self, iid: str, report: object, *, principal: Principal = ADMIN) -> Op:
        """An agent's outcome for one generation. Returns ``(instance, stale)``."""
        if principal.role == "member":
            raise Forbidden(f"reports come from host agents; this token is a {principal.describe()}")
        if not isinstance(report, Mapping):
            raise InvalidInput("a report is a JSON object", code="invalid_report")
        _unknown_fields(report, REPORT_FIELDS, "report")
        gen = report.get("generation")
        if isinstance(gen, bool) or not isinstance(gen, int) or not 1 <= gen <= 2**53:
            raise InvalidInput("generation must be a positive integer", code="invalid_report")
        state = report.get("state")
        if state not in REPORTS:
            raise InvalidInput(f"state must be one of {', '.join(REPORTS)}", code="invalid_report")
        reason = validate_reason(report.get("reason"))
        outputs = validate_outputs(report.get("outputs"))
        result = _validate_result(report.get("result"))

        def apply(batch: Batch) -> tuple[Instance, bool]:
            inst = self._lookup(iid, principal)
            if gen > inst.dispatched:
                raise Conflict(f"generation {gen} of instance {inst.name!r} was never sent (the latest is "
                               f"{inst.dispatched})", code="unknown_generation", generation=inst.dispatched)
            if gen < inst.dispatched:
                return inst, True
            if state == DELETED:
                if inst.desired != ABSENT:
                    return inst, True
                gone = self._changed(batch, replace(inst, result=result, observed=gen), "deleted")
                self._touch_dependents(batch, inst)
                return gone, False
            if state == ACTIVE:
                if inst.desired != PRESENT:
                    return inst, True
                new = replace(inst, state=ACTIVE, reason=None, outputs=outputs, result=result, observed=gen,
                              deadline=None)
            else:
                why = reason or "the driver failed"
                new = replace(inst, state=FAILED, reason=why if inst.desired == PRESENT else f"delete failed: {why}",
                              result=result, observed=gen, deadline=None)
            if new == inst:
                return inst, False
            changed = self._changed(batch, new)
            self._touch_dependents(batch, changed)
            return changed, False

        return Op(apply)

    def on_agent_registered(self, batch: Batch, host: str) -> None:
        """An agent (re)registered: what waited for one on its host is evaluated (inside its command)."""
        waiting = sorted(i for i in self._by_host.get(host, ()) if self._inst[i].state == PENDING)
        self._settle(batch, waiting)

    # ================================================================ owned instances

    def sync_owned(self, batch: Batch, owner: str, wanted: Mapping[str, Mapping[str, Any]], *,
                   project: str | None) -> None:
        """Make the instances owned by ``owner`` (``<owner>/<part>``) be ``wanted`` (part -> spec).

        A spec has name, type, host, parameters, and optionally ``failed`` (a reason: the
        instance is created failed, e.g. a node without an address). Missing parts are
        deleted; changed parameters are a modify.
        """
        have = {i.owner.partition("/")[2]: i for i in (self._inst[x] for x in sorted(self._by_owner.get(owner, ())))
                if i.owner is not None}
        for part, old in sorted(have.items()):
            if part not in wanted and old.desired == PRESENT:
                self._delete(batch, old, owner=True)
        for part, spec in sorted(wanted.items()):
            old = have.get(part)
            params = {k: str(v) for k, v in spec["parameters"].items()}
            if old is not None and old.desired == PRESENT:
                if spec.get("failed"):
                    if (old.state, old.reason, dict(old.parameters)) != (FAILED, spec["failed"], params):
                        self._changed(batch, replace(old, parameters=params, generation=old.generation + 1,
                                                     state=FAILED, reason=spec["failed"], deadline=None))
                elif dict(old.parameters) != params:
                    changed = self._changed(batch, replace(old, parameters=params, generation=old.generation + 1))
                    self._settle(batch, [changed.id])
                continue
            if old is not None:  # still being deleted: take it back as a new generation
                gen = old.generation + 1
                inst = replace(old, parameters=params, desired=PRESENT, generation=gen, state=PENDING, reason=None)
                inst = self._changed(batch, inst)
                self._settle(batch, [inst.id])
                continue
            name = spec["name"]
            if (_scope(project), name) in self._names:
                name = f"{name}-{uuid.uuid4().hex[:6]}"
            inst = Instance(id=str(uuid.uuid4()), name=name, project=project, type=spec["type"], host=spec["host"],
                            parameters=params, owner=f"{owner}/{part}", timeout=self.types.get(spec["type"], 60.0),
                            created_at=to_us(batch.now))
            if spec.get("failed"):
                inst = replace(inst, state=FAILED, reason=spec["failed"])
            inst = self._changed(batch, inst, "created")
            if not spec.get("failed"):
                self._settle(batch, [inst.id])

    # ================================================================ deadlines

    def _run_due(self, ids: list[str]) -> object:
        try:
            return self.writer.execute(self.due_op(ids))
        except Exception:
            retry = self.now_us() + RETRY_DUE_US
            for iid in ids:
                self.scheduler.arm(retry, iid)
            raise

    def due_op(self, ids: Sequence[str]) -> Op:
        """Fail the transitional instances among ``ids`` whose deadline has passed by the batch's clock."""

        def apply(batch: Batch) -> list[Instance]:
            now = to_us(batch.now)
            out = []
            for iid in ids:
                inst = self._inst.get(iid)
                if inst is None or inst.deadline is None:
                    continue
                if now < inst.deadline:
                    self.scheduler.arm(inst.deadline, iid)
                    continue
                if inst.state not in TRANSITIONAL:
                    continue
                what = "the result of its operation" if inst.desired == PRESENT else "that it was deleted"
                reason = (f"timeout: the agent of host {inst.host!r} did not report {what} within "
                          f"{DEADLINE_TIMEOUTS * inst.timeout + self.report_grace:g}s")
                new = self._changed(batch, replace(inst, state=FAILED, reason=reason, deadline=None))
                self._touch_dependents(batch, new)
                out.append(new)
            return out

        return Op(apply)

    # ================================================================ reads

    # ================================================================ observed state (heartbeats)

    def observe(self, host: str, items: Sequence[Mapping[str, Any]]) -> int:
        """Keep what ``host``'s agent says its monitors found (``{"instance", "at", "values"}``), for instances on
        that host (an agent speaks for its own host only: others are ignored); forget what it said of instances
        that are gone or moved. How many were kept."""
        kept = 0
        with self._observed_lock:
            mine = self._observed_by_host.setdefault(host, set())
            for iid in list(mine):
                inst = self._views.get(iid)
                if inst is None or inst.host != host:
                    mine.discard(iid)
                    self._observed.pop(iid, None)
            for item in items:
                inst = self._views.get(item["instance"])
                if inst is not None and inst.host == host:
                    self._observed[inst.id] = (host, item["at"], dict(item["values"]))
                    mine.add(inst.id)
                    kept += 1
            if len(self._observed) > 2 * len(self._views) + 1000:  # hosts gone silent: a sweep now and then
                for iid, (h, _, _) in list(self._observed.items()):
                    inst = self._views.get(iid)
                    if inst is None or inst.host != h:
                        del self._observed[iid]
                        self._observed_by_host.get(h, set()).discard(iid)
        return kept

    def observed(self, iid: str) -> dict[str, Any]:
        """``{"observed_at", "observed"}``: the last observation of an instance still on the host that made it
        (``observed_at`` None and ``observed`` empty if there is none)."""
        with self._observed_lock:
            found = self._observed.get(iid)
        inst = self._views.get(iid)
        if found is None or inst is None or inst.host != found[0]:
            return {"observed_at": None, "observed": {}}
        return {"observed_at": found[1], "observed": dict(found[2])}

    def wire_of(self, owner: str, *, principal: Principal = ADMIN) -> list[dict[str, Any]]:
        """The instances of ``owner`` (``reservation:<id>``) that ``principal`` may see, each with its part, state
        and last observation."""
        legs = []
        for inst in sorted((i for i in list(self._views.values()) if i.owner is not None
                            and i.owner.partition("/")[0] == owner and may_see(principal, i)),
                           key=lambda i: i.owner or ""):
            legs.append({"leg": (inst.owner or "").partition("/")[2], "instance": inst.id, "host": inst.host,
                         "state": inst.state, "reason": inst.reason, "outputs": dict(inst.outputs),
                         **self.observed(inst.id)})
        return legs

    def get(self, iid: str, *, principal: Principal = ADMIN) -> Instance:
        inst = self._views.get(iid)
        if inst is None:
            scope = _scope(principal.project if principal.role == "member" else None)
            inst = next((i for i in list(self._views.values()) if i.name == iid and _scope(i.project) == scope), None)
        if inst is None or not may_see(principal, inst):
            raise NotFound(f"no instance {iid!r}", code="instance_not_found", id=iid)
        return inst

    def list(self, *, principal: Principal = ADMIN, host: str | None = None, state: str | None = None,
             type_: str | None = None, project: str | None = None, limit: int = 1000,
             after: str | None = None) -> tuple[list[Instance], str | None]:
        if state is not None and state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}", code="invalid_state")
        out = []
        for inst in sorted(self._views.values(), key=lambda i: (i.created_at, i.id)):
            if not may_see(principal, inst) or (host and inst.host != host) or (state and inst.state != state):
                continue
            if (type_ and inst.type != type_) or (project and inst.project != project):
                continue
            out.append(inst)
        if after is not None:
            ids = [i.id for i in out]
            out = out[ids.index(after) + 1:] if after in ids else []
        more = len(out) > limit
        return out[:limit], (out[limit - 1].id if more else None)

    def count_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for inst in self._views.values():
            counts[inst.state] += 1
        return counts

    def list_at(self, conn: Connection, pins: Mapping[str, frozenset[str]]
                ) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        q = select(_I.body).order_by(_I.revision)
        if "#id" in pins:
            q = q.where(_I.id.in_(sorted(pins["#id"])))
        if "host" in pins:
            q = q.where(_I.host.in_(sorted(pins["host"])))
        if "state" in pins:
            q = q.where(_I.state.in_(sorted(pins["state"])))
        for r in conn.execute(q).all():
            body = json.loads(r.body)
            yield body["id"], _from_body(body).event_labels(), body


def _topological(items: Sequence[Instance]) -> list[Instance]:
    """``items`` with each after those of them it depends on (they form no cycle: checked before)."""
    by_name = {i.name: i for i in items}
    done: dict[str, Instance] = {}

    def visit(i: Instance) -> None:
        stack = [(i, iter(i.dependencies))]
        while stack:
            node, deps = stack[-1]
            for d in deps:
                if d in by_name and d not in done and all(d != n.name for n, _ in stack):
                    stack.append((by_name[d], iter(by_name[d].dependencies)))
                    break
            else:
                stack.pop()
                done.setdefault(node.name, node)

    for i in items:
        visit(i)
    return list(done.values())


def _may_change(p: Principal) -> None:
    if p.role == "agent":
        raise Forbidden(f"changing instances needs an admin or member token; this token is a {p.describe()}")


def _not_owned(inst: Instance) -> None:
    if inst.owner is not None:
        raise Conflict(f"instance {inst.name!r} belongs to {inst.owner.partition('/')[0]}; change that instead",
                       code="owned_instance", owner=inst.owner)


def _looks_like_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True

