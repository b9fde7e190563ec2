"""The local resource manager: operations on instances through drivers, one at a time per instance.

Pacemaker's executor is the model (see ../shared/REFERENCE.md). The LRM is
policy-free: it runs what it is asked, and reports.

- **Serialization.** Each instance has a FIFO queue and at most one operation in
  flight; a worker task exists only while the queue is not empty. Instances run
  in parallel up to ``max_parallel`` (a semaphore taken before an operation is
  taken off its queue, so the queue order is the run order).
- **Recurring operations** (a monitor every N s) are schedules, not queue
  entries: when one falls due, one run is queued (never two); the next is due
  ``interval`` after the run *completed*. A duplicate (same action and interval)
  merges into the existing one. Results are recorded on change by default (every
  run with ``report="always"``). A monitor result that is not what was expected is
  also a ``monitor_failed`` event.
- **Stop cancels first**: submitting ``stop`` cancels the instance's recurring
  operations before the stop is queued, so no monitor reports the stop as a failure.
- **Cancel**: a queued one-shot operation ends ``cancelled`` (not a failure); a
  recurring one is unscheduled and reports ``cancelled`` once, at the cancel; a run
  already in flight finishes silently. A one-shot operation already running
  cannot be cancelled (its timeout bounds it).
- **Restart** (:meth:`Lrm.restore`): instances, schedules and last results come
  from the store; client operations that never finished are recorded as
  interrupted; each instance is probed once (a monitor with interval 0), and its
  recurring operations resume ``interval`` after the probe. Nothing is started or
  stopped.

Time is a :class:`~tenure.clock.LoopClock`, so tests move it by hand. All
methods run on the event loop; durable changes go through :class:`LrmStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenure.clock import LoopClock, Timer
from tenure.domain.errors import Conflict, InvalidInput, NotFound, TenureError, Unavailable
from tenure.drivers.base import ACTION_NAME, Driver, RunOutcome, RunRequest
from tenure.drivers.ocf import MetaData
from tenure.drivers.process import signal_group
from tenure.drivers.registry import make_driver
from tenure.drivers.spec import DriverRoots
from tenure.lrm.model import (
    MAX_INTERVAL,
    MAX_TIMEOUT,
    MIN_INTERVAL,
    ONE_SHOT_ONLY,
    REPORT,
    Recurring,
    Result,
    check_labels,
    check_name,
    check_params,
    check_seconds,
    from_iso,
    iso,
    next_state,
    op_key,
)
from tenure.lrm.store import HISTORY_PER_INSTANCE, LrmStore

log = logging.getLogger("tenure.lrm")

DEFAULT_TIMEOUT = 20.0  # seconds, when neither the request nor the agent's meta-data says
META_TIMEOUT = 5.0
RECENT_OPS = 32  # finished one-shot operations kept in memory per instance (older ones: the history)
MAX_QUEUE = 1000  # operations waiting on one instance
REAL_TIME_MARGIN = 5.0  # seconds: how much longer than its clock says a wait of close() may take in real time
RUNNING_STATES = frozenset({"running", "promoted", "degraded", "failed"})


class _Done(asyncio.Event):
    """An operation's end (or a recurring one's first result); it also wakes the long polls on it (a future each)."""

    def __init__(self) -> None:
        super().__init__()
        self.polls: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        super().set()
        _wake(self.polls)


def _pass_on(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    """``source``'s outcome to ``target`` (a cancelled write: its outcome is unknown)."""
    if source.cancelled():
        if not target.done():
            target.set_exception(Unavailable("the store's answer was cancelled", code="outcome_unknown"))
        return
    exc = source.exception()
    if not target.done():
        if exc is not None:
            target.set_exception(exc)
        else:
            target.set_result(source.result())


def _wake(polls: set[asyncio.Future[None]]) -> None:
    for f in polls:
        if not f.done():
            f.set_result(None)
    polls.clear()


@dataclass(eq=False)
class _Rec:
    spec: Recurring
    timer: Timer | None = None
    due_at: float | None = None  # when the next run is due (clock time)
    queued: _Op | None = None  # its run waiting in the queue or running
    last: Result | None = None
    cancelled: bool = False
    held: bool = False  # not scheduled until the restart probe is done
    first: _Done = field(default_factory=_Done)  # set at its first result (long polls)


@dataclass(eq=False)
class _Op:
    id: str
    action: str
    interval: float
    timeout: float
    report: str
    expect: int
    trigger: str  # client | recurring | restore
    submitted: float  # clock time
    submitted_wall: float
    rec: _Rec | None = None
    run: int = 1
    due_at: float | None = None
    state: str = "queued"  # queued | running | done | cancelled
    result: Result | None = None
    has_row: bool = False  # a client operation has a pending history row to complete
    accept: Callable[[], Awaitable[Any]] | None = None  # that row's write, until it is queued (_queue_accept)
    accepted: asyncio.Future[Any] | None = None  # its commit
    refused: bool = False  # the store refused that row before the operation started: taken off the queue
    done: _Done = field(default_factory=_Done)
    pid: int | None = None  # while it runs, a process driver's process (group leader)
    interrupted: bool = False  # stopped by close(): no result, as after a crash


@dataclass(eq=False)
class _Inst:
    id: str
    name: str
    driver_spec: str
    driver: Driver
    params: dict[str, str]
    labels: dict[str, str]
    created_at: float
    state: str = "unknown"
    state_at: float | None = None
    queue: deque[_Op] = field(default_factory=deque)
    running: _Op | None = None
    worker: asyncio.Task[None] | None = None
    recurring: dict[tuple[str, int], _Rec] = field(default_factory=dict)
    last: dict[str, Result] = field(default_factory=dict)
    recent: deque[_Op] = field(default_factory=lambda: deque(maxlen=RECENT_OPS))
    removing: bool = False

    def body(self) -> dict[str, Any]:
        """What is persisted (and the body of ``resource`` events)."""
        return {"id": self.id, "name": self.name, "driver": self.driver_spec, "params": self.params,
                "labels": self.labels, "created_at": iso(self.created_at), "state": self.state,
                "state_at": iso(self.state_at)}


async def _nothing() -> None:
    return None


class _Unavailable(Driver):
    """Stands in for a driver that can no longer be made (its root was removed from the configuration)."""

    def __init__(self, spec: Any, reason: str) -> None:
        self.spec = spec
        self.reason = reason

    def installed(self) -> bool:
        return False

    async def meta_data(self, clock: LoopClock) -> MetaData | None:
        return None

    def actions(self, meta: MetaData | None) -> frozenset[str] | None:
        return None

    def validate_params(self, meta: MetaData | None, params: Any) -> None:
        return None

    async def run(self, req: RunRequest, clock: LoopClock, on_spawn: Any = None) -> RunOutcome:
        return RunOutcome(rc=5, status="not_installed", exit_reason=self.reason, stdout="", stderr="")


class Lrm:
    def __init__(self, *, store: LrmStore, roots: DriverRoots, rsctmp: Path, clock: LoopClock,
                 max_parallel: int = 32, default_timeout: float = DEFAULT_TIMEOUT, grace: float = 5.0,
                 close_wait: float = 30.0) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.store = store
        self.roots = roots
        self.rsctmp = rsctmp
        self.clock = clock
        self.default_timeout = default_timeout
        self.grace = grace
        self.close_wait = close_wait
        self._stopping = asyncio.Event()  # set at shutdown: long polls answer at once
        self._polls: set[asyncio.Future[None]] = set()  # the long polls waiting now (woken at shutdown)
        self._accepts: deque[_Op] = deque()  # client operations whose pending row is not queued yet, in order
        self.max_parallel = max_parallel
        self._slots = asyncio.Semaphore(max_parallel)
        self._by_id: dict[str, _Inst] = {}
        self._by_name: dict[str, _Inst] = {}
        self._meta: dict[str, MetaData | None] = {}
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task[None]] = set()
        self._busy = 0  # instances with a worker task (so "idle?" costs nothing per operation)
        self.in_flight = 0  # operations running now, all instances
        self.finished: dict[tuple[str, str], int] = {}  # (action, status) -> operations finished (a counter)
        self.jitter: deque[float] = deque(maxlen=100_000)  # recurring runs: start minus due, seconds
        self.listeners: list[Callable[[dict[str, Any], Result], None]] = []  # called after each recorded result

    # ----------------------------------------------------------------- reads

    def _get(self, ref: str) -> _Inst:
        inst = self._by_id.get(ref) or self._by_name.get(ref)
        if inst is None or inst.removing:
            raise NotFound(f"no resource {ref!r}", code="resource_not_found", resource=ref)
        return inst

    def list(self) -> list[dict[str, Any]]:
        return [self.view(i) for i in self._by_id.values() if not i.removing]

    def get(self, ref: str) -> dict[str, Any]:
        return self.view(self._get(ref))

    def view(self, inst: _Inst) -> dict[str, Any]:
        return {
            **inst.body(),
            "running": self._op_view(inst, inst.running) if inst.running else None,
            "queued": [self._op_view(inst, op) for op in inst.queue],
            "recurring": [self._rec_view(inst, r) for r in inst.recurring.values()],
            "last": {k: r.to_dict() for k, r in sorted(inst.last.items())},
        }

    def actions(self, ref: str) -> frozenset[str] | None:
        """The actions the instance's driver declares; None when any well-formed action may be tried."""
        inst = self._get(ref)
        return inst.driver.actions(self._meta.get(inst.driver_spec))

    def reloadable(self, ref: str, changed: set[str]) -> bool:
        """Whether the instance's driver says a reload may apply a change of ``changed`` parameters (OCF 1.1's
        ``reloadable``); True when its meta-data is unknown or marks none (its reload action says)."""
        meta = self._meta.get(self._get(ref).driver_spec)
        return meta is None or meta.reloadable(changed)

    def _op_view(self, inst: _Inst, op: _Op) -> dict[str, Any]:
        return {"id": op.id, "resource_id": inst.id, "resource": inst.name, "action": op.action,
                "interval": op.interval, "timeout": op.timeout, "report": op.report, "expect": op.expect,
                "trigger": op.trigger, "recurring": op.rec is not None, "run": op.run, "state": op.state,
                "submitted_at": iso(op.submitted_wall),
                "result": op.result.to_dict() if op.result is not None else None}

    def _rec_view(self, inst: _Inst, rec: _Rec) -> dict[str, Any]:
        s = rec.spec
        return {"id": s.op_id, "resource_id": inst.id, "resource": inst.name, "action": s.action,
                "interval": s.interval, "timeout": s.timeout, "report": s.report, "expect": s.expect,
                "trigger": "client", "recurring": True, "run": s.runs,
                "state": "cancelled" if rec.cancelled else "recurring", "submitted_at": iso(s.created_at),
                "result": rec.last.to_dict() if rec.last is not None else None}

    def operations(self, ref: str) -> list[dict[str, Any]]:
        """Running, queued, recurring and recently finished operations of an instance."""
        inst = self._get(ref)
        seen: set[str] = set()
        out = []
        for op in ([inst.running] if inst.running else []) + list(inst.queue):
            if op.rec is None:
                out.append(self._op_view(inst, op))
                seen.add(op.id)
        out += [self._rec_view(inst, r) for r in inst.recurring.values()]
        out += [self._op_view(inst, op) for op in reversed(inst.recent) if op.id not in seen]
        return out

    def _find_op(self, inst: _Inst, op_id: str) -> _Op | _Rec | None:
        for op in ([inst.running] if inst.running else []) + list(inst.queue) + list(inst.recent):
            if op.id == op_id and op.rec is None:
                return op
        for rec in inst.recurring.values():
            if rec.spec.op_id == op_id:
                return rec
        return None

    async def operation(self, ref: str, op_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """One operation; with ``wait``, answer once it has a result or ``wait`` seconds have passed."""
        inst = self._get(ref)
        found = self._find_op(inst, op_id)
        if found is not None:
            done = found.done if isinstance(found, _Op) else found.first  # a recurring one: its first result
            await self._wait_done(done, wait)
            return self._op_view(inst, found) if isinstance(found, _Op) else self._rec_view(inst, found)
        for entry in await asyncio.to_thread(self.store.read_history, inst.id, HISTORY_PER_INSTANCE):
            if entry["id"] == op_id:
                return entry
        raise NotFound(f"resource {inst.name!r} has no operation {op_id!r}", code="operation_not_found",
                       operation=op_id)

    async def _wait_done(self, done: _Done, wait: float) -> None:
        """Until ``done`` is set, ``wait`` seconds have passed, or the agent shuts down: one future that either
        wakes, no task of its own."""
        if wait <= 0 or done.is_set() or self._stopping.is_set():
            return
        poll: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.polls.add(poll)
        self._polls.add(poll)
        try:
            async with asyncio.timeout(wait):
                await poll
        except TimeoutError:
            pass
        finally:
            done.polls.discard(poll)
            self._polls.discard(poll)

    async def history(self, ref: str, limit: int = 50) -> list[dict[str, Any]]:
        inst = self._get(ref)
        return await asyncio.to_thread(self.store.read_history, inst.id, limit)

    async def drivers(self) -> list[dict[str, Any]]:
        """The drivers found under the configured roots (python: the packages handlers may come from)."""
        return await asyncio.to_thread(_scan_drivers, self.roots)

    async def meta_data(self, spec: str) -> MetaData | None:
        driver = make_driver(spec, self.roots, rsctmp=self.rsctmp)
        if not driver.installed():
            raise NotFound(f"driver {spec!r} is not installed", code="driver_not_found", driver=spec)
        return await self._fetch_meta(driver)

    async def _fetch_meta(self, driver: Driver) -> MetaData | None:
        try:
            meta = await driver.meta_data(self.clock)
        except ValueError as exc:  # InvalidMetaData
            raise InvalidInput(f"driver {driver.spec.text!r} gave unreadable meta-data: {exc}",
                               code="invalid_meta_data", driver=driver.spec.text) from None
        self._meta[driver.spec.text] = meta
        return meta

    # -------------------------------------------------------------- instances

    async def add(self, name: str, driver: str, *, params: dict[str, str] | None = None,
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Register an instance: the driver must be installed and the parameters valid for it. Runs nothing."""
        self._open()
        check_name(name)
        labels = check_labels(labels or {})
        params = check_params(params or {})
        drv = make_driver(driver, self.roots, rsctmp=self.rsctmp)
        self._name_free(name)
        if not drv.installed():
            raise InvalidInput(f"driver {drv.spec.text!r} is not installed under the configured roots",
                               code="driver_not_found", driver=drv.spec.text)
        meta = await self._fetch_meta(drv)
        drv.validate_params(meta, params)
        self._name_free(name)  # (it may have been taken while the meta-data ran)
        self._open()  # (the agent may have begun to shut down while the meta-data ran)
        inst = _Inst(id=str(uuid.uuid4()), name=name, driver_spec=drv.spec.text, driver=drv, params=params,
                     labels=labels, created_at=self.clock.wall(), removing=True)  # hidden until committed
        self._by_id[inst.id] = inst
        self._by_name[name] = inst
        write = asyncio.ensure_future(self.store.add_instance(inst.body()))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:  # the write goes on: the instance shows once it is committed
            write.add_done_callback(lambda w: self._added(inst, w))
            raise
        except BaseException:
            self._added(inst, write)
            raise
        inst.removing = False
        log.info("resource added", extra={"resource": name, "id": inst.id, "driver": inst.driver_spec})
        return self.view(inst)

    def _added(self, inst: _Inst, write: asyncio.Future[Any]) -> None:
        """An add whose caller went away: the instance shows if its write committed, and is dropped if not."""
        if not write.cancelled() and write.exception() is None:
            inst.removing = False
        elif self._by_id.get(inst.id) is inst:
            del self._by_id[inst.id], self._by_name[inst.name]

    async def update(self, ref: str, params: dict[str, str]) -> dict[str, Any]:
        """Change an instance's parameters (for the next operation: a reload applies them). Runs nothing."""
        self._open()
        inst = self._get(ref)
        params = check_params(params)
        inst.driver.validate_params(self._meta.get(inst.driver_spec), params)
        if params == inst.params:
            return self.view(inst)
        before = inst.params
        inst.params = params  # before any await: an operation queued after this call sees the new ones

        def settled(w: asyncio.Future[Any]) -> None:  # not committed: the old ones again (unless changed since)
            if (w.cancelled() or w.exception() is not None) and inst.params is params:
                inst.params = before

        write = asyncio.ensure_future(self.store.update_instance(inst.body()))
        write.add_done_callback(settled)
        await asyncio.shield(write)  # (a caller that goes away leaves the write, and its outcome, to settled)
        log.info("resource updated", extra={"resource": inst.name, "id": inst.id})
        return self.view(inst)

    def _name_free(self, name: str) -> None:
        holder = self._by_name.get(name)
        if holder is not None:
            why = " (it is being removed: its last operation is still running)" if holder.removing else ""
            raise Conflict(f"a resource named {name!r} exists{why}", code="name_taken", name=name)

    async def remove(self, ref: str, *, force: bool = False) -> dict[str, Any]:
        """Forget an instance. It must be stopped (or ``force``); queued operations end cancelled.

        A client's operation still running refuses the removal unless ``force``; a monitor run or a probe
        does not. Either way the answer comes at once: the instance is gone from every read, and its rows
        are deleted when that operation ends (within its timeout).
        """
        inst = self._get(ref)
        if inst.state in RUNNING_STATES and not force:
            raise Conflict(f"resource {inst.name!r} is {inst.state}; stop it first, or remove with force",
                           code="resource_running", resource=inst.name, state=inst.state)
        if inst.running is not None and inst.running.trigger == "client" and not force:
            op = inst.running
            raise Conflict(f"resource {inst.name!r} has {op.action} running (it ends within {op.timeout:g} s); "
                           "retry then, or remove with force", code="operation_running",
                           resource=inst.name, operation=op.id)
        # In memory first, with no await in between: from here no submit reaches it and nothing more runs.
        inst.removing = True
        unscheduled = self._unschedule(inst, list(inst.recurring.values()))
        writes = [unscheduled] if unscheduled is not None else []
        queued = [op for op in inst.queue if op.rec is None]
        inst.queue.clear()
        writes += [self._settle(inst, op, self._cancelled_result(op, "cancelled: the resource was removed"))
                   for op in queued]
        running = inst.running
        if running is None:
            writes.append(self._forget(inst))
        else:
            task = asyncio.get_running_loop().create_task(self._forget_after(inst, running))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        failed = [r for r in await asyncio.gather(*writes, return_exceptions=True) if isinstance(r, BaseException)]
        if failed:  # (every write awaited first: each cancelled operation ends, whatever the first one did)
            raise failed[0]
        log.info("resource removed", extra={"resource": inst.name, "id": inst.id,
                                            "pending": running.action if running else None})
        return {**inst.body(), "deleted": True, "pending_operation": running.id if running is not None else None}

    async def _forget_after(self, inst: _Inst, running: _Op) -> None:
        await running.done.wait()
        try:
            await self._forget(inst)
        except TenureError as exc:
            log.error("resource not removed", extra={"resource": inst.name, "error": exc.message})

    def _forget(self, inst: _Inst) -> Awaitable[Any]:
        """Drop the instance from memory and queue the deletion of its rows (with its event)."""
        self._by_id.pop(inst.id, None)
        self._by_name.pop(inst.name, None)
        return self.store.remove_instance(inst.body())

    # ------------------------------------------------------------- operations

    def _timeout_for(self, inst: _Inst, action: str, interval: float) -> float:
        meta = self._meta.get(inst.driver_spec)
        spec = (meta.action(action, interval) or meta.action(action)) if meta is not None else None
        if spec is not None and spec.timeout:
            return min(max(spec.timeout, 0.001), MAX_TIMEOUT)
        return self.default_timeout

    async def submit(self, ref: str, action: str, *, interval: float = 0.0, timeout: float | None = None,
                     report: str = "change", expect: int = 0, wait: float = 0.0) -> dict[str, Any]:
        """Queue an operation and return it at once; its result comes as an event and in the history.

        With ``wait`` (seconds): return once the operation has its result (a recurring one: its first), after
        ``wait`` seconds, or at shutdown, as it then stands.
        """
        self._open()
        inst = self._get(ref)
        if not isinstance(action, str) or not ACTION_NAME.fullmatch(action):
            raise InvalidInput("an action is a lower-case name like start, stop or monitor", code="invalid_action")
        meta = self._meta.get(inst.driver_spec)
        declared = inst.driver.actions(meta)
        if declared is not None and action not in declared:
            raise InvalidInput(f"driver {inst.driver_spec!r} has no action {action!r}; it has: "
                               f"{', '.join(sorted(declared))}", code="unknown_action", action=action,
                               actions=sorted(declared))
        interval = check_seconds(interval, "interval", lo=MIN_INTERVAL, hi=MAX_INTERVAL, zero_ok=True) or 0.0
        timeout = check_seconds(timeout, "timeout", lo=0.001, hi=MAX_TIMEOUT)
        if report not in REPORT:
            raise InvalidInput(f"report must be one of {', '.join(REPORT)}", code="invalid_report")
        if isinstance(expect, bool) or not isinstance(expect, int) or not 0 <= expect <= 255:
            raise InvalidInput("expect must be an exit code 0-255", code="invalid_expect")
        if interval and action in ONE_SHOT_ONLY:
            raise InvalidInput(f"{action} cannot be recurring", code="invalid_interval", action=action)
        if action == "start":
            inst.driver.validate_params(meta, inst.params)
        timeout = timeout or self._timeout_for(inst, action, interval)
        if interval:
            rec, merged = await self._add_recurring(inst, action, interval, timeout, report, expect)
            await self._wait_done(rec.first, wait)
            return {**self._rec_view(inst, rec), "merged": merged}
        if len(inst.queue) >= MAX_QUEUE:
            raise Conflict(f"resource {inst.name!r} has {len(inst.queue)} operations queued; wait for some to end",
                           code="queue_full", resource=inst.name)
        # Everything below happens before the first await, so the queue order is the order of submission.
        unscheduled = self._unschedule(inst, list(inst.recurring.values())) if action == "stop" else None
        loop = asyncio.get_running_loop()
        op = _Op(id=str(uuid.uuid4()), action=action, interval=0.0, timeout=timeout, report=report, expect=expect,
                 trigger="client", submitted=self.clock.now(), submitted_wall=self.clock.wall(), has_row=True,
                 accepted=loop.create_future())
        op.accepted.add_done_callback(functools.partial(self._accept_settled, inst, op))
        view = self._op_view(inst, op)
        body = inst.body()
        op.accept = lambda: self.store.accepted(body, view)
        self._enqueue(inst, op)
        # The pending row is queued on the loop's next turn, after the worker's first step: on an idle instance the
        # process is spawned first, and the commit runs while it does (before, the two contended for the GIL, and
        # the spawn waited about 0.9 ms). Pending rows are queued in submission order, each before its operation's
        # result (_settle queues them first if the operation ends sooner). Whatever happens to this task, the row
        # is queued and written.
        self._accepts.append(op)
        loop.call_soon(self._queue_accept, op)
        if unscheduled is not None:
            await unscheduled
        try:
            await asyncio.shield(op.accepted)
        except TenureError:
            if op.refused:  # it had not started: taken off the queue, it does not run
                raise
            raise Unavailable(f"{action} of {inst.name!r} runs (or ran), but the store did not record it; see the "
                              "resource's state", code="outcome_unknown", resource=inst.name) from None
        log.debug("operation queued", extra={"resource": inst.name, "action": action, "op": op.id})
        if wait > 0:
            await self._wait_done(op.done, wait)
            return self._op_view(inst, op)
        return view

    async def _add_recurring(self, inst: _Inst, action: str, interval: float, timeout: float, report: str,
                             expect: int) -> tuple[_Rec, bool]:
        """The recurring operation, and whether it merged into an existing one."""
        key = (action, round(interval * 1000))
        if (rec := inst.recurring.get(key)) is not None:  # a duplicate merges into the existing one
            return rec, True
        rec = _Rec(Recurring(op_id=str(uuid.uuid4()), action=action, interval=interval, timeout=timeout,
                             report=report, expect=expect, created_at=self.clock.wall()))
        inst.recurring[key] = rec
        added = self.store.add_recurring(inst.body(), rec.spec, self._rec_view(inst, rec))
        self._queue_run(inst, rec, due=self.clock.now())  # the first run at once (queued after the write)
        await added
        log.info("recurring operation added", extra={"resource": inst.name, "action": action,
                                                     "interval": interval, "op": rec.spec.op_id})
        return rec, False

    async def cancel(self, ref: str, op_id: str) -> dict[str, Any]:
        inst = self._get(ref)
        found = self._find_op(inst, op_id)
        if isinstance(found, _Rec):
            await self._cancel_recurring(inst, [found])
            return self._rec_view(inst, found)
        if found is None:
            raise NotFound(f"resource {inst.name!r} has no pending operation {op_id!r}", code="operation_not_found",
                           operation=op_id)
        if found.state == "queued":
            await self._cancel_queued(inst, found)
            return self._op_view(inst, found)
        if found.state == "running":
            raise Conflict(f"operation {op_id} ({found.action}) is running and ends by itself within its timeout "
                           f"({found.timeout:g} s)", code="operation_running", operation=op_id)
        raise Conflict(f"operation {op_id} has already finished", code="operation_finished", operation=op_id)

    async def _cancel_queued(self, inst: _Inst, op: _Op) -> None:
        if op not in inst.queue:
            return
        inst.queue.remove(op)
        await self._settle(inst, op, self._cancelled_result(op, "cancelled before it ran"))

    def _accept_settled(self, inst: _Inst, op: _Op, fut: asyncio.Future[Any]) -> None:
        """The pending row's write ended (whether or not anyone still waits for it). Refused: an operation that
        has not started is taken off the queue and ends cancelled; one already running gets its own history row
        for its result if the pending one surely is not there."""
        if fut.cancelled() or (exc := fut.exception()) is None:
            return
        if op in inst.queue:
            inst.queue.remove(op)
            op.refused = True
            op.has_row = False
            task = asyncio.ensure_future(self._settle(inst, op, self._cancelled_result(
                op, f"cancelled: the store did not record it ({getattr(exc, 'code', type(exc).__name__)})")))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif getattr(exc, "code", None) in ("store_error", "store_timeout", "store_closed"):
            op.has_row = False

    def _queue_accept(self, op: _Op) -> None:
        """Queue the pending rows of client operations, in submission order, up to ``op``'s (each once)."""
        if op.accept is None:
            return
        while self._accepts:
            first = self._accepts.popleft()
            accept, first.accept = first.accept, None
            assert accept is not None and first.accepted is not None
            try:
                write = accept()
            except Exception as exc:  # a bug: the submitter hears of it instead of waiting forever
                log.exception("queueing a pending row failed", extra={"op": first.id})
                write = asyncio.get_running_loop().create_future()
                write.set_exception(Unavailable(f"the store refused the operation's record: {exc}",
                                                code="store_error"))
            asyncio.ensure_future(write).add_done_callback(functools.partial(_pass_on, first.accepted))
            if first is op:
                return

    def _cancelled_result(self, op: _Op, reason: str) -> Result:
        return Result(op_id=op.id, run=op.run, action=op.action, interval=op.interval, rc=None, status="cancelled",
                      exit_reason=reason, queued_at=op.submitted_wall, started_at=None, finished_at=self.clock.wall(),
                      queue_ms=round((self.clock.now() - op.submitted) * 1000), run_ms=0, expect=op.expect,
                      trigger=op.trigger)

    async def _cancel_recurring(self, inst: _Inst, recs: list[_Rec]) -> None:
        write = self._unschedule(inst, recs)
        if write is not None:
            await write

    def _unschedule(self, inst: _Inst, recs: list[_Rec]) -> Awaitable[None] | None:
        """Cancel recurring operations in memory now (timers, queued runs); their rows and events are queued."""
        live = [r for r in recs if not r.cancelled]
        if not live:
            return None
        for rec in live:
            rec.cancelled = True
            rec.first.set()  # a long poll on its first result answers now (it will have none)
            if rec.timer is not None:
                rec.timer.cancel()
                rec.timer = None
            if rec.queued is not None and rec.queued in inst.queue:
                inst.queue.remove(rec.queued)
                rec.queued = None
            inst.recurring.pop((rec.spec.action, round(rec.spec.interval * 1000)), None)
            log.info("recurring operation cancelled", extra={"resource": inst.name, "action": rec.spec.action,
                                                             "interval": rec.spec.interval, "op": rec.spec.op_id})
        return self.store.cancel_recurring(inst.body(), [self._rec_view(inst, r) for r in live])

    # --------------------------------------------------------------- running

    def _open(self) -> None:
        if self._closing:
            raise Unavailable("the agent is shutting down", code="shutting_down")

    def _enqueue(self, inst: _Inst, op: _Op) -> None:
        inst.queue.append(op)
        self._idle.clear()
        if inst.worker is None:
            self._start_worker(inst)

    def _start_worker(self, inst: _Inst) -> None:
        self._busy += 1
        inst.worker = asyncio.get_running_loop().create_task(self._work(inst), name=f"lrm:{inst.name}")

    def _queue_run(self, inst: _Inst, rec: _Rec, *, due: float) -> None:
        rec.timer = None
        if rec.cancelled or rec.queued is not None or inst.removing or self._closing:
            return
        s = rec.spec
        op = _Op(id=s.op_id, action=s.action, interval=s.interval, timeout=s.timeout, report=s.report,
                 expect=s.expect, trigger="recurring", submitted=self.clock.now(), submitted_wall=self.clock.wall(),
                 rec=rec, run=s.runs + 1, due_at=due)
        rec.queued = op
        self._enqueue(inst, op)

    def _schedule(self, inst: _Inst, rec: _Rec, after: float) -> None:
        if rec.cancelled or inst.removing or self._closing:
            return
        due = after + rec.spec.interval
        rec.due_at = due
        rec.timer = self.clock.call_at(due, lambda: self._queue_run(inst, rec, due=due))

    async def _work(self, inst: _Inst) -> None:
        try:
            while inst.queue:
                async with self._slots:
                    if not inst.queue:
                        break
                    op = inst.queue.popleft()
                    await self._run_one(inst, op)
        finally:
            inst.worker = None
            self._busy -= 1
            if inst.queue and not self._closing:  # queued after the loop's last look
                self._start_worker(inst)
            elif self._busy == 0:
                self._idle.set()

    async def _run_one(self, inst: _Inst, op: _Op) -> None:
        assert inst.running is None, f"two operations in flight on {inst.name}"
        inst.running = op
        op.state = "running"
        self.in_flight += 1
        started, started_wall = self.clock.now(), self.clock.wall()
        if op.due_at is not None:
            self.jitter.append(started - op.due_at)
        req = RunRequest(action=op.action, params=inst.params, instance=inst.name, instance_id=inst.id,
                         interval=op.interval, timeout=op.timeout, grace=self.grace)
        try:
            outcome = await inst.driver.run(req, self.clock, on_spawn=lambda pid: setattr(op, "pid", pid))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a driver bug must not take the LRM down: the operation fails
            log.exception("driver raised", extra={"resource": inst.name, "action": op.action})
            outcome = RunOutcome(rc=1, status="error", exit_reason=f"{type(exc).__name__}: {exc}"[:512],
                                 stdout="", stderr="")
        finally:
            self.in_flight -= 1
        finished = self.clock.now()
        if op.interrupted:  # stopped by close(): its pending row says "interrupted" at the next start
            inst.running = None
            op.done.set()
            return
        result = Result(op_id=op.id, run=op.run, action=op.action, interval=op.interval, rc=outcome.rc,
                        status=outcome.status, exit_reason=outcome.exit_reason, queued_at=op.submitted_wall,
                        started_at=started_wall, finished_at=started_wall + (finished - started),
                        queue_ms=round((started - op.submitted) * 1000), run_ms=round((finished - started) * 1000),
                        stdout=outcome.stdout, stderr=outcome.stderr, expect=op.expect, trigger=op.trigger,
                        pid=outcome.pid, outputs=dict(outcome.outputs))
        try:
            await self._settle(inst, op, result)
        finally:
            inst.running = None
            rec = op.rec
            if rec is not None:
                rec.queued = None
                if not rec.held:
                    self._schedule(inst, rec, finished)

    def _settle(self, inst: _Inst, op: _Op, result: Result) -> Awaitable[None]:
        """A result, in memory at once (state, last result, the schedules a probe held); the store write queued.

        The returned awaitable ends once the result is recorded (or failed to be, which is logged); only then
        is the operation ``done`` for those waiting on it. Nothing here awaits, so callers can fix the order of
        several writes before they yield.
        """
        rec = op.rec
        silent = rec is not None and rec.cancelled  # a run that finished after its cancel
        key = op_key(op.action, op.interval)
        prev = inst.last.get(key)
        if rec is not None:
            rec.spec.runs = op.run
            rec.last = result
            rec.first.set()
        op.result = result
        op.state = "cancelled" if result.status == "cancelled" or silent else "done"
        self.finished[(op.action, result.status)] = self.finished.get((op.action, result.status), 0) + 1
        if op.rec is None:
            inst.recent.append(op)
        if inst.running is op:  # before anyone hears of the result: the instance is free for what comes next
            inst.running = None
        if op.trigger == "restore":  # the probe is in (or was cancelled): resume the schedules, interval from now
            for r in inst.recurring.values():
                if r.held:
                    r.held = False
                    self._schedule(inst, r, self.clock.now())
        if silent:
            op.done.set()
            return _nothing()
        inst.last[key] = result
        old_state = inst.state
        inst.state = next_state(old_state, result)
        changed = inst.state != old_state
        if changed:
            inst.state_at = result.finished_at
        report = rec is None or rec.spec.report == "always" or not result.same_outcome(prev) or changed
        monitor_failed = report and op.action == "monitor" and result.failed
        write: Awaitable[Any] | None = None
        if op.accept is not None:  # ended before its pending row was queued: that row first, then the result
            self._queue_accept(op)
        if report:
            view = self._rec_view(inst, rec) if rec is not None else self._op_view(inst, op)
            write = self.store.record(inst.body(), view, result, key=key, state_changed=changed,
                                      monitor_failed=monitor_failed, existing_row=op.has_row)
            level = logging.WARNING if result.failed else logging.INFO
            log.log(level, "operation finished", extra={
                "resource": inst.name, "id": inst.id, "action": op.action, "interval": op.interval,
                "rc": result.rc, "status": result.status, "reason": result.exit_reason, "run_ms": result.run_ms})
        if changed:
            log.info("resource state changed", extra={"resource": inst.name, "from": old_state, "to": inst.state})
        return self._recorded(inst, op, result, write)

    async def _recorded(self, inst: _Inst, op: _Op, result: Result, write: Awaitable[Any] | None) -> None:
        try:
            if write is not None:
                await write
        except TenureError as exc:  # the store is failing: the result stays in memory, and is logged
            log.error("result not recorded", extra={"resource": inst.name, "action": op.action, "error": exc.message})
        finally:
            op.done.set()  # whatever happened: nobody waits forever
        if self.listeners:
            body = inst.body()
            for fn in self.listeners:
                try:
                    fn(body, result)
                except Exception:  # an observer's bug is not the operation's
                    log.exception("result listener failed", extra={"resource": inst.name})

    # ------------------------------------------------------- restart, close

    async def restore(self) -> None:
        """Load what the store holds, record interrupted operations, and probe every instance once."""
        loaded = await asyncio.to_thread(self.store.load)
        for body in loaded.instances:
            try:
                drv: Driver = make_driver(body["driver"], self.roots, rsctmp=self.rsctmp)
            except TenureError as exc:
                drv = _Unavailable(None, f"driver {body['driver']!r} is no longer allowed: {exc.message}")
            inst = _Inst(id=body["id"], name=body["name"], driver_spec=body["driver"], driver=drv,
                         params=dict(body["params"]), labels=dict(body["labels"]),
                         created_at=from_iso(body["created_at"]) or 0.0, state=body.get("state", "unknown"),
                         state_at=from_iso(body.get("state_at")))
            inst.last = loaded.last.get(inst.id, {})
            for spec in loaded.recurring.get(inst.id, []):
                rec = _Rec(spec, held=True)
                rec.last = inst.last.get(op_key(spec.action, spec.interval))
                if rec.last is not None:  # it has had its first result
                    rec.first.set()
                inst.recurring[(spec.action, round(spec.interval * 1000))] = rec
            self._by_id[inst.id] = inst
            self._by_name[inst.name] = inst
        for spec_text in {i.driver_spec for i in self._by_id.values()}:
            drv = next(i.driver for i in self._by_id.values() if i.driver_spec == spec_text)
            if drv.installed():
                try:
                    await self._fetch_meta(drv)
                except TenureError:
                    self._meta[spec_text] = None
        for iid, body in loaded.pending:
            inst = self._by_id.get(iid)
            if inst is None:
                continue
            op = _Op(id=body["id"], action=body["action"], interval=0.0, timeout=body["timeout"],
                     report=body.get("report", "change"), expect=body.get("expect", 0), trigger="client",
                     submitted=self.clock.now(), submitted_wall=from_iso(body.get("submitted_at")) or self.clock.wall(),
                     has_row=True)
            # Not known to have failed (it may never have run): "cancelled", with the reason; the probe that
            # follows says what state the instance is really in.
            result = self._cancelled_result(op, "interrupted: the agent stopped before this operation finished")
            await self._settle(inst, op, result)
        for inst in self._by_id.values():
            probe = _Op(id=str(uuid.uuid4()), action="monitor", interval=0.0,
                        timeout=self._timeout_for(inst, "monitor", 0.0), report="change", expect=0, trigger="restore",
                        submitted=self.clock.now(), submitted_wall=self.clock.wall())
            self._enqueue(inst, probe)
        log.info("resources restored", extra={"resources": len(self._by_id), "interrupted": len(loaded.pending)})

    def stats(self) -> dict[str, Any]:
        """For /metrics: instances by state, work in progress, finished operations."""
        states: dict[str, int] = {}
        queued = recurring = 0
        for inst in self._by_id.values():
            states[inst.state] = states.get(inst.state, 0) + 1
            queued += len(inst.queue)
            recurring += len(inst.recurring)
        return {"states": states, "queued": queued, "recurring": recurring, "in_flight": self.in_flight,
                "long_polls": len(self._polls), "finished": dict(self.finished)}

    def idle(self) -> bool:
        """Nothing running or queued on any instance (recurring schedules may still be armed)."""
        return self._busy == 0 and all(not i.queue for i in self._by_id.values())

    async def wait_idle(self) -> None:
        while not self.idle():
            self._idle.clear()
            await self._idle.wait()

    def stop_waiting(self) -> None:
        """The agent shuts down: long polls (``operation`` with ``wait``) answer now, with what they have."""
        self._stopping.set()
        _wake(self._polls)

    async def close(self) -> None:
        """Stop scheduling, drop what is queued, wait for what runs, then stop what still runs.

        The wait is at most ``close_wait`` seconds of the LRM's clock. What still runs then is stopped as a
        timeout is: SIGTERM to a process driver's group, SIGKILL ``grace`` seconds later (a cancel), so nothing
        outlives the agent. As after a crash, a client's operation that did not finish keeps its pending row
        and is reported interrupted at the next start, where every instance is probed. Each wait also has a
        real-time bound, so a close ends even if the clock it waits on does not move.
        """
        self._closing = True
        if self._accepts:  # pending rows of operations submitted in this very turn: to the writer before it closes
            self._queue_accept(self._accepts[-1])
        self.stop_waiting()
        for inst in self._by_id.values():
            for rec in inst.recurring.values():
                if rec.timer is not None:
                    rec.timer.cancel()
                    rec.timer = None
            inst.queue.clear()  # client operations keep their pending row: reported interrupted at the next start
        running = [asyncio.ensure_future(i.running.done.wait()) for i in self._by_id.values()
                   if i.running is not None]
        running += list(self._background)
        if not running:
            return
        pending = await self._wait_for(running, self.close_wait)
        if not pending:
            return
        stuck = sorted(i.name for i in self._by_id.values() if i.running is not None)
        log.warning("operations still running at shutdown: stopped (SIGTERM, then SIGKILL after the grace period)",
                    extra={"count": len(stuck), "resources": ",".join(stuck)})
        for inst in self._by_id.values():
            if inst.running is not None:
                inst.running.interrupted = True
                if inst.running.pid is not None:
                    signal_group(inst.running.pid, signal.SIGTERM)
        pending = await self._wait_for(list(pending), self.grace)
        workers = [i.worker for i in self._by_id.values() if i.worker is not None and not i.worker.done()]
        for task in (*workers, *pending):
            task.cancel()  # a process driver's run kills its group (SIGKILL) as it is cancelled
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REAL_TIME_MARGIN):
                await asyncio.gather(*workers, *pending, return_exceptions=True)

    async def _wait_for(self, tasks: list[asyncio.Future[Any]], seconds: float) -> set[asyncio.Future[Any]]:
        """Wait until ``tasks`` are done, at most ``seconds`` of the clock (and of real time, plus a margin):
        those still pending."""
        expired = asyncio.Event()
        timer = self.clock.call_at(self.clock.now() + seconds, expired.set)
        deadline = asyncio.ensure_future(expired.wait())
        try:
            async with asyncio.timeout(seconds + REAL_TIME_MARGIN):
                _, pending = await _wait_all_or(tasks, deadline)
                return pending
        except TimeoutError:
            return {t for t in tasks if not t.done()}
        finally:
            timer.cancel()
            deadline.cancel()


async def _wait_all_or(tasks: list[asyncio.Future[Any]], stop: asyncio.Future[Any]
                       ) -> tuple[set[asyncio.Future[Any]], set[asyncio.Future[Any]]]:
    """Wait until every one of ``tasks`` is done or ``stop`` is: (done, pending) of ``tasks``."""
    pending = set(tasks)
    while pending and not stop.done():
        _, pending = await asyncio.wait({*pending, stop}, return_when=asyncio.FIRST_COMPLETED)
        pending.discard(stop)
    return set(tasks) - pending, pending


def _executables(d: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(d)
                      if e.is_file() and os.access(e.path, os.X_OK) and not e.name.startswith("."))
    except OSError:
        return []


def _scan_drivers(roots: DriverRoots) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base = roots.ocf_root / "resource.d"
    try:
        providers = sorted(e.name for e in os.scandir(base) if e.is_dir())
    except OSError:
        providers = []
    for provider in providers:
        out += [{"driver": f"ocf:{provider}:{t}", "class": "ocf"} for t in _executables(base / provider)]
    out += [{"driver": f"lsb:{n}", "class": "lsb"} for n in _executables(roots.lsb_root)]
    for d in roots.exec_dirs:
        out += [{"driver": f"exec:{n}", "class": "exec", "dir": str(d)} for n in _executables(d)]
    out += [{"driver": f"python:{pkg}.*", "class": "python"} for pkg in roots.python_packages]
    for d in roots.playbook_dirs:
        try:
            books = sorted(e.name for e in os.scandir(d) if e.is_file() and e.name.endswith((".yml", ".yaml")))
        except OSError:
            books = []
        out += [{"driver": f"ansible:{n}", "class": "ansible", "dir": str(d)} for n in books]
    return out
