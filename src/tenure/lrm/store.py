"""The LRM's durable part: writer commands over the agent's local store, and the load at start.

The LRM's live state (queues, timers, processes) lives on the event loop; what
must survive a restart is written here, each change as one writer command with
its event (DESIGN.md invariant 1): an instance added, changed or removed; a
recurring schedule added or removed; a result recorded (the last result per
operation key, one history row, the ``operation`` event, and a ``monitor_failed``
event when a monitor found the instance not as expected).

Events: kind ``resource`` (op created / updated / deleted / monitor_failed) and
kind ``operation`` (op created when a client's operation is accepted, updated
when its result is in). Both use the instance's id as object id, so a watch
with ``ids=<instance>`` follows everything about one instance.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from tenure.lrm.model import Recurring, Result
from tenure.services.runtime import Runtime
from tenure.store import schema
from tenure.store.writer import Batch, Op

HISTORY_PER_INSTANCE = 200  # results kept per instance (oldest dropped first)
STORED_OUTPUT = 4096  # characters of stdout and stderr kept per result in the history (64 KiB in memory)

_I, _H, _L, _R = schema.lrm_instances, schema.lrm_history, schema.lrm_results, schema.lrm_recurring
UPDATE_INSTANCE = update(_I).where(_I.c.id == bindparam("b_id")).values(body=bindparam("b_body"),
                                                                        revision=bindparam("b_revision"))
UPDATE_HISTORY = update(_H).where(_H.c.run_id == bindparam("b_run")).values(body=bindparam("b_body"),
                                                                           revision=bindparam("b_revision"))
DELETE_HISTORY = delete(_H).where(_H.c.run_id == bindparam("b_run"))
DELETE_LAST = delete(_L).where(_L.c.instance_id == bindparam("b_id"), _L.c.op_key == bindparam("b_key"))


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, sort_keys=True)


@dataclass
class Loaded:
    """What the store held at start, for :meth:`tenure.lrm.executor.Lrm.restore`."""

    instances: list[dict[str, Any]] = field(default_factory=list)  # bodies, in creation order
    recurring: dict[str, list[Recurring]] = field(default_factory=dict)  # by instance id
    last: dict[str, dict[str, Result]] = field(default_factory=dict)  # instance id -> op key -> result
    history: dict[str, deque[str]] = field(default_factory=dict)  # instance id -> run ids, oldest first
    pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (instance id, op body) never finished


class LrmStore:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._history: dict[str, deque[str]] = {}  # run ids per instance, oldest first (owned by the writer)
        self._pending: set[str] = set()  # history rows still waiting for their result: never pruned

    # ------------------------------------------------------------------ load

    def load(self) -> Loaded:
        out = Loaded()
        with self.runtime.engine.connect() as conn:
            for r in conn.execute(select(_I.c.body).order_by(_I.c.revision)).all():
                out.instances.append(json.loads(r.body))
            for r in conn.execute(select(_R.c.instance_id, _R.c.body).order_by(_R.c.revision)).all():
                b = json.loads(r.body)
                out.recurring.setdefault(r.instance_id, []).append(Recurring(**b))
            for r in conn.execute(select(_L.c.instance_id, _L.c.op_key, _L.c.body)).all():
                out.last.setdefault(r.instance_id, {})[r.op_key] = Result.from_dict(json.loads(r.body))
            out.history = self._load_history(conn, out)
        self._history = {k: deque(v) for k, v in out.history.items()}
        self._pending = set()  # the LRM settles every pending row at restore
        return out

    def _load_history(self, conn: Connection, out: Loaded) -> dict[str, deque[str]]:
        history: dict[str, deque[str]] = {}
        for r in conn.execute(select(_H.c.run_id, _H.c.instance_id, _H.c.body).order_by(_H.c.revision)).all():
            history.setdefault(r.instance_id, deque()).append(r.run_id)
            body = json.loads(r.body)
            if body.get("result") is None:
                out.pending.append((r.instance_id, body))
        return history

    def read_history(self, instance_id: str, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` entries of an instance's history, newest first (a plain read)."""
        with self.runtime.engine.connect() as conn:
            rows = conn.execute(select(_H.c.body).where(_H.c.instance_id == instance_id)
                                .order_by(_H.c.revision.desc()).limit(limit)).all()
        return [json.loads(r.body) for r in rows]

    def list_instances_at(self, conn: Connection, pins: Any) -> Any:
        """Lister of the watch's initial state (kind ``resource``)."""
        q = select(_I.c.id, _I.c.body).order_by(_I.c.revision)
        if "#id" in pins:
            q = q.where(_I.c.id.in_(sorted(pins["#id"])))
        for r in conn.execute(q).all():
            body = json.loads(r.body)
            yield r.id, dict(body.get("labels", {})), body

    # -------------------------------------------------------------- commands
    # Each method queues its writer command *now* (the writer applies commands in the order they are
    # queued) and returns an awaitable of the commit, so the LRM fixes the order of its writes when it calls
    # them (a client operation's pending row: a loop turn after its submit, always before its result).

    def _go(self, op: Op) -> Awaitable[Any]:
        # Shielded: a caller cancelled while it waits (a task cancelled at shutdown) does not cancel the write,
        # which the LRM's memory already counts on.
        return self.runtime.asubmit(op, shielded=True)

    def add_instance(self, body: dict[str, Any]) -> Awaitable[int]:
        def apply(batch: Batch) -> int:
            rev = batch.emit("resource", body["id"], "created", dict(body["labels"]), body)
            batch.write(insert(_I), {"id": body["id"], "name": body["name"], "driver": body["driver"],
                                     "body": _dumps(body), "revision": rev})
            return rev

        return self._go(Op(apply))

    def update_instance(self, body: dict[str, Any]) -> Awaitable[int]:
        def apply(batch: Batch) -> int:
            rev = batch.emit("resource", body["id"], "updated", dict(body["labels"]), body)
            batch.write(update(_I).where(_I.c.id == body["id"]).values(body=_dumps(body), revision=rev), {})
            return rev

        return self._go(Op(apply))

    def remove_instance(self, body: dict[str, Any]) -> Awaitable[int]:
        iid = body["id"]

        def apply(batch: Batch) -> int:
            rev = batch.emit("resource", iid, "deleted", dict(body["labels"]), body)
            batch.write(delete(_I).where(_I.c.id == iid), {})
            batch.write(delete(_R).where(_R.c.instance_id == iid), {})
            batch.write(delete(_L).where(_L.c.instance_id == iid), {})
            batch.write(delete(_H).where(_H.c.instance_id == iid), {})
            dropped = self._history.pop(iid, None)
            if dropped is not None:
                batch.on_undo(lambda: self._history.__setitem__(iid, dropped))
            return rev

        return self._go(Op(apply))

    def add_recurring(self, instance: dict[str, Any], rec: Recurring, view: dict[str, Any]) -> Awaitable[None]:
        body = {k: v for k, v in rec.__dict__.items() if k != "runs"}

        def apply(batch: Batch) -> None:
            rev = batch.emit("operation", instance["id"], "created", dict(instance["labels"]), view)
            batch.write(insert(_R), {"op_id": rec.op_id, "instance_id": instance["id"], "body": _dumps(body),
                                     "revision": rev})

        return self._go(Op(apply))

    def cancel_recurring(self, instance: dict[str, Any], ops: list[dict[str, Any]]) -> Awaitable[None]:
        """Recurring operations unscheduled: their rows go, and each says so once (state ``cancelled``)."""
        labels = dict(instance["labels"])

        def apply(batch: Batch) -> None:
            for op in ops:
                batch.emit("operation", instance["id"], "updated", labels, op)
            batch.write(delete(_R).where(_R.c.op_id.in_([op["id"] for op in ops])), {})

        return self._go(Op(apply))

    def accepted(self, instance: dict[str, Any], op: dict[str, Any]) -> Awaitable[int]:
        """A client's one-shot operation is queued: a pending history row (an interrupted run is then known)."""
        iid = instance["id"]

        def apply(batch: Batch) -> int:
            rev = batch.emit("operation", iid, "created", dict(instance["labels"]), op)
            self._pending.add(op["id"])  # first: the pruning in _append must not take the new row itself
            batch.on_undo(lambda: self._pending.discard(op["id"]))
            self._append(batch, iid, op["id"], op, rev)
            return rev

        return self._go(Op(apply))

    def record(self, instance: dict[str, Any], op: dict[str, Any], result: Result, *,
               key: str, state_changed: bool, monitor_failed: bool, existing_row: bool) -> Awaitable[int]:
        """One result: last result of ``key``, a history entry, and its events, in one transaction."""
        iid = instance["id"]
        labels = dict(instance["labels"])
        full = result.to_dict()
        res = {**full, "stdout": full["stdout"][:STORED_OUTPUT], "stderr": full["stderr"][:STORED_OUTPUT]}
        stored = {**op, "result": res}

        def apply(batch: Batch) -> int:
            rev = batch.emit("operation", iid, "updated", labels, stored)  # capped like the history
            if existing_row:
                batch.write(UPDATE_HISTORY, {"b_run": op["id"], "b_body": _dumps(stored), "b_revision": rev})
                if op["id"] in self._pending:
                    self._pending.discard(op["id"])
                    batch.on_undo(lambda: self._pending.add(op["id"]))
            else:  # a recurring run or a probe: its own row, named uniquely by its event's revision
                self._append(batch, iid, f"{op['id']}.{rev}", stored, rev)
            batch.write(DELETE_LAST, {"b_id": iid, "b_key": key})
            batch.write(insert(_L), {"instance_id": iid, "op_key": key, "body": _dumps(res)})
            if state_changed:
                srev = batch.emit("resource", iid, "updated", labels, instance)
                batch.write(UPDATE_INSTANCE, {"b_id": iid, "b_body": _dumps(instance), "b_revision": srev})
            if monitor_failed:
                batch.emit("resource", iid, "monitor_failed", labels,
                           {"id": iid, "name": instance["name"], "driver": instance["driver"], "result": res})
            return rev

        return self._go(Op(apply))

    def _append(self, batch: Batch, iid: str, run_id: str, body: dict[str, Any], rev: int) -> None:
        """A new history row, dropping the oldest beyond the cap (undone with the command if it is refused)."""
        batch.write(insert(_H), {"run_id": run_id, "instance_id": iid, "revision": rev, "body": _dumps(body)})
        ids = self._history.setdefault(iid, deque())
        ids.append(run_id)
        dropped: list[str] = []
        kept: list[str] = []  # pending rows met on the way: kept (a queued operation's row must survive)
        while len(ids) + len(kept) > HISTORY_PER_INSTANCE and ids:
            old = ids.popleft()
            if old in self._pending:
                kept.append(old)
                continue
            dropped.append(old)
            batch.write(DELETE_HISTORY, {"b_run": old})
        ids.extendleft(reversed(kept))

        def undo() -> None:
            ids.pop()
            for _ in kept:
                ids.popleft()
            ids.extendleft(reversed(dropped))
            ids.extendleft(reversed(kept))

        batch.on_undo(undo)
