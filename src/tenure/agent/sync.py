"""The host agent's sync loop: watch this host's instances on the server, converge each through the LRM, report.

Seed 001's scalable agent: the agent registers, then watches
``kinds=instance`` with ``host=<its host>`` only, resuming from the revision it
last took in (kept in its own store). A 410 (the history was compacted past
that revision) is the only time it re-lists everything; then instances it
holds that the server no longer has are torn down.

Each instance converges in its own task, one pass at a time (a newer desired
body during a pass makes one more pass), through the driver of its type
(:mod:`tenure.instance_types`): create = start, modify = reload (stop then start for
a driver without reload), delete = stop and remove, probe = the recurring
monitor. The outcome of each generation is reported to the server
(``active`` with the outputs, ``failed`` with a reason, ``deleted``); a report
that cannot be sent is retried with backoff until it is, or until a newer
generation makes it moot.

Restart (kill -9 included): the LRM restores its resources and probes each one
once; the sync loop loads what it knew and resumes the watch where it was.
An instance whose generation was applied and reported and whose resource the
probe finds running needs nothing: no operation runs, the dataplane is not
touched. An instance whose operation was cut short is applied again (start and
reload are idempotent). Nothing is torn down unless the server says so.

Recovery: when a monitor finds an active instance's resource not running, the
instance is reported ``failed`` and started again, at most
``max_restarts`` times per generation; a later monitor that finds it well
reports it ``active`` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenure.agent.state import Local, SyncState
from tenure.client import AsyncTenureClient, WatchGone
from tenure.client._errors import TenureAPIError, TenureClientError
from tenure.domain.errors import TenureError
from tenure.drivers.registry import make_driver
from tenure.instance_types import InstanceType
from tenure.lrm.executor import Lrm
from tenure.lrm.model import Result, iso

log = logging.getLogger("tenure.agent.sync")

VERSION = "tenure-agent/0.1"
OK_STATES = frozenset({"running", "promoted"})
MAX_OBSERVATIONS = 2000  # per heartbeat; more wait for the next (the server takes at most this many)
MAX_OBSERVATION_BYTES = 256 * 1024  # of them in one heartbeat (the server takes requests up to 1 MiB)
OBSERVATION_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")  # what the server takes: at most 32 values of 256 characters
MAX_OBSERVATION_VALUES, MAX_OBSERVATION_VALUE = 32, 256


class Retry(Exception):
    """A pass that must run again later (with backoff)."""


def _reason(action: str, res: dict[str, Any]) -> str:
    status, rc = res.get("status"), res.get("rc")
    why = res.get("exit_reason")
    if status == "timeout":
        return f"timeout: {action} did not finish within its timeout" + (f" ({why})" if why else "")
    if status != "done":
        return f"{action}: {status}" + (f": {why}" if why else "")
    return f"{action} failed: rc {rc} ({res.get('rc_name')})" + (f": {why}" if why else "")


@dataclass
class SyncConfig:
    """``tenure agent --host NAME --server URL``: which host this agent is, and the server it follows."""

    host: str
    server_url: str
    token: str
    types: dict[str, InstanceType]
    heartbeat_interval: float = 20.0
    max_restarts: int = 3
    token_file: Path | None = None  # re-read when it changes (a rotated token needs no restart)
    ca_file: str | None = None  # the CA of an https:// server's certificate
    client_cert: tuple[str, str] | None = None  # (cert, key): shown to a server that asks (--tls-client-ca)


class TokenFile:
    """The file an agent's token comes from, read again (a few bytes) before each heartbeat and after a 401: a
    token rotated on the server and written here is used from then on, with no restart. Its content decides, not
    its time or size (every token has the same length, and a file system's times may be coarse)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token: str | None = None
        self.changed()

    def changed(self) -> str | None:
        """The token, if the file now holds another one than last read (None: unchanged, empty or unreadable)."""
        try:
            text = self.path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read the token file", extra={"path": str(self.path), "error": str(exc)})
            return None
        if not text or text == self.token:
            return None
        self.token = text
        return text


class SyncLoop:
    def __init__(self, *, host: str, client: AsyncTenureClient, lrm: Lrm, state: SyncState,
                 types: dict[str, InstanceType], heartbeat_interval: float = 20.0, max_restarts: int = 3,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 rng: random.Random | None = None,
                 network: Callable[[], dict[str, Any]] | None = None,
                 token_file: TokenFile | None = None) -> None:
        """``network`` reads the host's interfaces and addresses for the registration (None: not reported);
        ``token_file``: where the token comes from, looked at before each heartbeat and after a 401."""
        self.host = host
        self.client = client
        self.token_file = token_file
        self.lrm = lrm
        self.state = state
        self.types = types
        self.heartbeat_interval = heartbeat_interval
        self.max_restarts = max_restarts
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.network = network
        self._reported_network: dict[str, Any] | None = None  # as last registered
        self.since: int | None = None
        self.local: dict[str, Local] = {}
        self._passes: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._lost: dict[str, str] = {}  # instance id -> why a monitor found its resource not running
        self._pending_kicks: set[str] = set()  # remembered at start, run once the watch has caught up
        # instance id -> {"at", "values"}: what its last good monitor found on the wire (its outputs), for the server
        self.observed: dict[str, dict[str, Any]] = {}
        self._unsent: set[str] = set()  # observed since the last heartbeat that carried them
        self._observations_refused = False  # the server does not take them (older than the agent)
        self._tasks: list[asyncio.Task[None]] = []
        self.registered = asyncio.Event()
        self.synced = asyncio.Event()  # the watch is live (caught up once)
        self.converged = asyncio.Event()  # no pass running
        self.converged.set()
        self.passes = 0  # convergence passes run (for tests and benchmarks)
        self.operations = 0  # LRM operations submitted by the loop
        self.reports = 0  # reports accepted by the server
        self._closing = False

    def status(self) -> dict[str, Any]:
        """For the agent's /healthz: following the server, caught up, converged, and what it did."""
        return {"host": self.host, "registered": self.registered.is_set(), "synced": self.synced.is_set(),
                "converged": self.converged.is_set() and self.lrm.idle(), "since": self.since,
                "instances": len(self.local), "passes": self.passes, "operations": self.operations,
                "reports": self.reports}

    # ================================================================ lifecycle

    def _preload(self) -> None:
        """Load each type's driver now (importing pyroute2 or a handler module takes 0.3 s): not in the
        first instance's operation. A driver missing here is said once, at start."""
        for t in self.types.values():
            try:
                if not make_driver(t.driver, self.lrm.roots, rsctmp=self.lrm.rsctmp).installed():
                    log.warning("instance type driver not installed", extra={"type": t.name, "driver": t.driver})
            except TenureError as exc:
                log.warning("instance type driver refused", extra={"type": t.name, "driver": t.driver,
                                                             "error": exc.message})

    async def start(self) -> None:
        self.since, self.local = await asyncio.to_thread(self.state.load)
        await asyncio.to_thread(self._preload)
        self.lrm.listeners.append(self._on_result)
        self._tasks = [asyncio.create_task(self._run(), name="tenure-sync"),
                       asyncio.create_task(self._heartbeats(), name="tenure-heartbeat")]
        # What was in flight when the agent stopped goes on, but only once the watch has caught up (DESIGN.md
        # invariant 3: resync before acting): the server may have changed or deleted it meanwhile.
        self._pending_kicks = set(self.local)
        log.info("sync loop started", extra={"host": self.host, "since": self.since, "instances": len(self.local)})

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(ValueError):
            self.lrm.listeners.remove(self._on_result)
        tasks = self._tasks + list(self._passes.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _backoff(self, attempt: int) -> None:
        await self.sleep(min(30.0, 0.2 * 2 ** min(attempt, 8)) * (0.5 + self.rng.random()))

    async def _read_network(self) -> dict[str, Any] | None:
        if self.network is None:
            return None
        try:
            return await asyncio.to_thread(self.network)
        except Exception as exc:  # a report, never a reason not to register or heartbeat
            log.warning("cannot read the host's interfaces", extra={"host": self.host, "error": str(exc)})
            return None

    async def _register(self, network: dict[str, Any] | None = None) -> None:
        """Register (again), with the instance types this agent runs and the host's interfaces and addresses."""
        if network is None:
            network = await self._read_network()
        caps: dict[str, Any] = {"types": sorted(self.types)}
        if network:
            caps["network"] = network
        attempt = 0
        while True:
            try:
                await self.client.register_agent(self.host, kinds=["instance"], version=VERSION, capabilities=caps)
                self._reported_network = network
                self._observations_refused = False  # (a server upgraded meanwhile takes them)
                self.registered.set()
                return
            except TenureAPIError as exc:
                if exc.code == "invalid_capabilities" and "network" in caps:  # the server would not take it
                    log.warning("the server refused the host's interfaces; registering without them",
                                extra={"host": self.host, "error": str(exc)})
                    del caps["network"]  # (and not offered again until it changes: it is kept as reported)
                    continue
                if exc.status == 401 and self.reload_token():
                    continue  # the token file had a newer token (a rotation): at once
                log.warning("registration failed; retrying", extra={"host": self.host, "error": str(exc)})
                await self._backoff(attempt)
                attempt += 1
            except (TenureClientError, TenureError) as exc:
                log.warning("registration failed; retrying", extra={"host": self.host, "error": str(exc)})
                await self._backoff(attempt)
                attempt += 1

    async def _heartbeats(self) -> None:
        await self.registered.wait()
        while True:
            await self.sleep(self.heartbeat_interval)
            try:
                self.reload_token()
                self._reload_client_cert()
                network = await self._read_network()
                if network and network != self._reported_network:  # addresses changed: say so
                    log.info("host interfaces changed; registering again", extra={"host": self.host})
                    await self._register(network)
                    continue
                await self._heartbeat()
            except TenureAPIError as exc:
                if exc.code == "agent_not_registered":
                    await self._register()
                elif exc.status == 401 and self.reload_token():
                    await self._heartbeat()  # the new token, at once
                else:
                    log.warning("heartbeat refused", extra={"host": self.host, "error": str(exc)})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat failed", extra={"host": self.host, "error": str(exc)})

    def _reload_client_cert(self) -> None:
        """A renewed client certificate (its files changed) is shown from the next connection on."""
        try:
            if self.client.reload_client_cert():
                log.info("the client certificate changed: using it", extra={"host": self.host})
        except TenureClientError as exc:  # a half-written renewal: the pair in use stays, and it is tried again
            log.warning("the client certificate was not reloaded", extra={"host": self.host, "error": str(exc)})

    def reload_token(self) -> bool:
        """Take the token file's token if it changed (a rotation); whether it did."""
        token = self.token_file.changed() if self.token_file is not None else None
        if token is None:
            return False
        self.client.set_token(token)
        log.info("the token file changed: using its token", extra={"host": self.host})
        return True

    async def _heartbeat(self) -> None:
        """One heartbeat, carrying the observations made since the last one that carried them (at most
        MAX_OBSERVATIONS, MAX_OBSERVATION_BYTES). Observations never cost the agent its heartbeat: if the server
        refuses a heartbeat with them, it gets one without them, and those are dropped (the next monitors make
        new ones); a server that does not know them at all (one older than this agent, ``invalid_request``) gets
        none until the agent registers again."""
        sending: dict[str, dict[str, Any]] = {}
        size = 0
        for iid in [] if self._observations_refused else list(self._unsent):
            o = self.observed.get(iid)
            if o is None:
                self._unsent.discard(iid)
                continue
            size += len(json.dumps(o)) + len(iid) + 16
            if len(sending) >= MAX_OBSERVATIONS or size > MAX_OBSERVATION_BYTES:
                break
            sending[iid] = o
        try:
            await self.client.heartbeat(self.host, observations=[{"instance": iid, **o} for iid, o in sending.items()]
                                        or None)
        except TenureAPIError as exc:
            if not sending or exc.code == "agent_not_registered" or not 400 <= exc.status < 500 \
                    or exc.status in (401, 403):  # the token's fault, not the observations'
                raise
            log.warning("the server refused the heartbeat's observations; sent again without them",
                        extra={"host": self.host, "error": str(exc), "observations": len(sending)})
            self._observations_refused = exc.code == "invalid_request"
            self._unsent -= set(sending)
            await self.client.heartbeat(self.host)
            return
        for iid, o in sending.items():
            if self.observed.get(iid) is o:  # (not observed again meanwhile)
                self._unsent.discard(iid)

    # ================================================================ the watch

    async def _run(self) -> None:
        await self._register()
        while not self._closing:
            try:
                await self._watch()
            except WatchGone:
                log.warning("watch history compacted past our revision: full resync", extra={
                    "host": self.host, "since": self.since})
                self.since = None
                await self.state.forget_since()
            except TenureAPIError as exc:
                if exc.code == "invalid_since":  # our revision is ahead of the server's (its store was replaced)
                    log.warning("the server is behind our revision: full resync", extra={
                        "host": self.host, "since": self.since})
                    self.since = None
                    await self.state.forget_since()
                elif exc.status == 401 and self.reload_token():
                    log.info("watch refused with the old token; restarting with the token file's")
                else:
                    log.warning("watch refused; restarting", extra={"host": self.host, "error": str(exc)})
                    await self._backoff(3)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch gave up, or our own store failed: never stop following
                log.warning("watch ended; restarting", extra={"host": self.host, "error": str(exc)})
                self.synced.clear()
                await self._backoff(3)

    async def _watch(self) -> None:
        initial = self.since is None
        listed: set[str] = set()
        # Caught up once what the server had committed when the watch began has been taken in (a resumed
        # watch's first bookmark is where it resumes from, before the replay: not a sign of being caught up).
        target = int((await self.client.health()).get("revision") or 0)
        watch = self.client.watch("instance", selectors=f"host={self.host}", since=self.since, initial=initial)
        async with watch:
            async for ev in watch:
                if ev.type == "resync":
                    listed.clear()
                    continue
                if ev.is_bookmark:
                    if ev.initial_end and initial:
                        await self._end_of_listing(listed)
                        initial = False
                    if ev.revision is not None and ev.revision != self.since:
                        await self.state.save(since=ev.revision)
                        self.since = ev.revision
                    if not initial and (self.since or 0) >= target:
                        self._caught_up()
                    continue
                if ev.id is None or ev.object is None:
                    continue
                if ev.initial:
                    listed.add(ev.id)
                await self._desired(ev.id, None if ev.type == "deleted" else ev.object, ev.revision)
                if not initial and (self.since or 0) >= target:
                    self._caught_up()
        self.synced.clear()

    def _caught_up(self) -> None:
        if not self.synced.is_set():
            self.synced.set()
            kicks, self._pending_kicks = self._pending_kicks, set()
            for iid in sorted(kicks):
                self._kick(iid)

    async def _end_of_listing(self, listed: set[str]) -> None:
        """After a full listing: what we hold that the server no longer has is gone there; tear it down."""
        for iid in [i for i in self.local if i not in listed]:
            await self._desired(iid, None, None)

    async def _desired(self, iid: str, body: dict[str, Any] | None, revision: int | None) -> None:
        loc = self.local.get(iid)
        if loc is None:
            if body is None:
                if revision is not None:
                    await self.state.save(since=revision)
                    self.since = revision
                return
            loc = self.local[iid] = Local(id=iid)
        if body is not None and loc.desired is not None and body.get("revision", 0) < loc.desired.get("revision", 0):
            return  # older than what we have (a listing after events)
        loc.desired = body
        if body is not None:
            loc.type = body.get("type", loc.type)
        await self.state.save(loc, since=revision)  # a failure here restarts the watch from the last saved one
        if revision is not None:
            self.since = revision
        self._pending_kicks.discard(iid)
        self._kick(iid)

    # ================================================================ convergence

    def _kick(self, iid: str) -> None:
        if self._closing or iid in self._pending_kicks:  # (a remembered one waits for the watch to catch up)
            return
        task = self._passes.get(iid)
        if task is not None and not task.done():
            self._again.add(iid)
            return
        self.converged.clear()
        self._passes[iid] = asyncio.create_task(self._converge(iid), name=f"tenure-converge-{iid[:8]}")

    async def _converge(self, iid: str) -> None:
        try:
            attempt = 0
            while True:
                self._again.discard(iid)
                self.passes += 1
                try:
                    await self._pass(iid)
                    attempt = 0
                except (TenureClientError, TenureError, Retry) as exc:
                    log.warning("convergence pass failed; retrying", extra={"instance": iid, "error": str(exc)})
                    self._again.add(iid)
                    await self._backoff(attempt)
                    attempt += 1
                if iid not in self._again or self._closing:
                    return
        finally:
            if self._passes.get(iid) is asyncio.current_task():
                del self._passes[iid]
            if not self._passes:
                self.converged.set()

    async def _pass(self, iid: str) -> None:
        loc = self.local.get(iid)
        if loc is None:
            return
        d = loc.desired
        if d is None:  # the server no longer has it (deleted, or forced): nothing of it may stay here
            failure = await self._teardown(loc)
            if failure is not None:  # keep it, and try again (with backoff): never forget what runs
                raise Retry(f"teardown of {iid}: {failure}")
            self._forget(iid)
            await self.state.save(drop=iid)
            return
        if d["desired"] == "absent":
            gen = d["dispatched"]
            if loc.reported == (gen, "deleted"):
                return
            failure = await self._teardown(loc)
            if failure is None:
                await self._report(loc, gen, "deleted")
            else:
                await self._report(loc, gen, "failed", reason=failure)
            return
        gen = d["dispatched"]
        if gen < 1 or d.get("resolved") is None or gen < loc.applied:
            return  # pending on the server: nothing to do yet
        itype = self.types.get(d["type"])
        if itype is None:
            await self._report(loc, gen, "failed", reason=f"the agent of host {self.host!r} has no instance type "
                                                          f"{d['type']!r}")
            return
        res = self._resource(loc)
        if res is not None and res["state"] not in OK_STATES and loc.reported == (gen, "active"):
            # A probe found it not running: say so first, then recover (below) if there are tries left.
            await self._report(loc, gen, "failed", reason=self._lost.pop(loc.id, None)
                               or f"probe: the resource is {res['state']}")
        if loc.done == gen and res is not None and res["state"] in OK_STATES:
            if loc.reported != (gen, "active"):
                await self._report(loc, gen, "active", outputs=loc.outputs)
            return  # converged: nothing runs (an agent restart changes nothing)
        if loc.applied == gen and loc.reported == (gen, "failed") and loc.restarts >= self.max_restarts:
            return  # given up on this generation until it changes
        await self._apply(loc, itype, gen, res)

    def _resource(self, loc: Local) -> dict[str, Any] | None:
        """The LRM resource carrying ``loc`` (its name is fixed: ``i-<id>``, so one added just before a crash is
        found too)."""
        try:
            res = self.lrm.get(loc.resource or f"i-{loc.id}")
        except TenureError:
            return None
        loc.resource = res["name"]
        return res

    async def _params(self, loc: Local, itype: InstanceType) -> dict[str, str]:
        d = loc.desired
        assert d is not None
        params = {**d["resolved"], **itype.properties}  # the operator's properties are not the client's to change
        for name, ranges in itype.locals.items():
            if name not in loc.locals:  # (not saved here: the claim is by key, so asking again gives the same)
                loc.locals[name] = await self.state.local_id(f"local.{itype.name}.{name}", ranges, loc.id)
            params[name] = str(loc.locals[name])
        return params

    async def _run_op(self, loc: Local, action: str, timeout: float) -> dict[str, Any]:
        assert loc.resource is not None
        self.operations += 1
        op = await self.lrm.submit(loc.resource, action, timeout=timeout)
        view = await self.lrm.operation(loc.resource, op["id"], wait=timeout * 2 + 30)
        return view["result"] or {"status": "timeout", "rc": None, "exit_reason": "no result in time"}

    async def _apply(self, loc: Local, itype: InstanceType, gen: int, res: dict[str, Any] | None) -> None:
        d = loc.desired
        assert d is not None
        timeout = float(d.get("timeout") or itype.timeout)
        try:
            params = await self._params(loc, itype)
        except TenureError as exc:
            await self._report(loc, gen, "failed", reason=f"local IDs: {exc.message}")
            return
        if res is None:
            name = f"i-{loc.id}"
            try:
                res = await self.lrm.add(name, itype.driver, params=params,
                                         labels={"instance": d["name"], "type": d["type"]})
            except TenureError as exc:
                await self._report(loc, gen, "failed", reason=f"{itype.driver}: {exc.message}")
                return
            loc.resource = name  # (saved with the report: the name is fixed, so a crash before that loses nothing)
        action = "start"
        running = res["state"] in OK_STATES
        current = res["params"]  # what the LRM holds (a modify cut short by a crash may have changed it)
        before = loc.applied_params if loc.applied_params is not None else current
        if loc.applied == gen and loc.reported == (gen, "failed"):
            loc.restarts += 1
        elif loc.applied != gen:
            loc.restarts = 0
        loc.applied = gen  # attempted: a failure below is retried at most max_restarts times
        in_doubt = res["state"] == "failed"  # a failed start, stop or monitor: it may still be (half) there
        changed = {k for k in set(before) | set(params) if before.get(k) != params.get(k)}
        # Reload when the driver can apply the change in place; a parameter it marks not reloadable (the device a
        # shaper is on) needs stop with the old parameters, then start with the new.
        reload = (running and bool(changed) and "reload" in (self.lrm.actions(res["name"]) or {"reload"})
                  and self.lrm.reloadable(res["name"], changed))
        if reload:
            action = "reload"
        elif in_doubt or (running and before != params):
            # Stop what may run, with the parameters it runs with, before starting (with the new ones).
            if current != before:
                await self.lrm.update(res["name"], before)
                current = before
            stopped = await self._run_op(loc, "stop", timeout)
            if stopped.get("status") != "done" or stopped.get("rc") != 0:
                what = "modify (stop)" if before != params else "recovery (stop)"
                await self._report(loc, gen, "failed", reason=_reason(what, stopped))
                return
        if current != params:
            try:
                await self.lrm.update(res["name"], params)
            except TenureError as exc:
                await self._report(loc, gen, "failed", reason=f"{itype.driver}: {exc.message}")
                return
        result = await self._run_op(loc, action, timeout)
        if result.get("failed") or result.get("status") != "done":
            await self._report(loc, gen, "failed", reason=_reason({"start": "create", "reload": "modify"}[action],
                                                                   result))
            return
        loc.applied_params, loc.done = params, gen
        loc.outputs = dict(result.get("outputs") or {})
        for name, value in loc.locals.items():
            loc.outputs.setdefault(name, str(value))
        if itype.monitor > 0:
            await self.lrm.submit(loc.resource, "monitor", interval=itype.monitor, timeout=timeout)
        await self._report(loc, gen, "active", outputs=loc.outputs, result=_brief(result))

    async def _teardown(self, loc: Local) -> str | None:
        """Stop and remove the resource, release the local IDs; the failure's reason, or None."""
        d = loc.desired
        res = self._resource(loc)
        if res is not None:
            timeout = float((d or {}).get("timeout") or 60.0)
            if res["state"] not in ("stopped",) or res.get("running") or res.get("queued"):
                result = await self._run_op(loc, "stop", timeout)
                if result.get("status") != "done" or result.get("rc") != 0:
                    return _reason("delete", result)
            with contextlib.suppress(TenureError):
                await self.lrm.remove(res["name"])
        loc.resource = None
        type_ = (d or {}).get("type") or loc.type
        itype = self.types.get(type_ or "")
        # Every local ID the type declares (one claimed just before a crash is not in loc.locals yet).
        for name in sorted({*loc.locals, *(itype.locals if itype else ())}):
            await self.state.release_local(f"local.{type_}.{name}", loc.id)
            loc.locals.pop(name, None)
        await self.state.save(loc)
        return None

    # ================================================================ reports

    async def _report(self, loc: Local, gen: int, state: str, *, reason: str | None = None,
                      outputs: dict[str, str] | None = None, result: dict[str, Any] | None = None) -> None:
        if loc.reported == (gen, state) and state != "failed":
            return
        attempt = 0
        while True:
            if loc.desired is None or loc.desired.get("dispatched") != gen:
                return  # moot: a newer generation came meanwhile (its own pass reports it)
            try:
                answer = await self.client.report_instance(loc.id, gen, state, reason=reason, outputs=outputs,
                                                           result=result)
                break
            except TenureAPIError as exc:
                if exc.code == "instance_not_found":  # gone on the server: tear down here
                    loc.desired = None
                    self._again.add(loc.id)
                    return
                if exc.status < 500:
                    log.error("report refused", extra={"instance": loc.id, "error": str(exc)})
                    if exc.status == 409 or (state == "failed" and outputs is None and result is None):
                        return  # (409: not this generation's report to make)
                    # Say why instead (e.g. outputs the server does not take), so the instance does not wait for
                    # its deadline while the resource runs.
                    state, outputs, result = "failed", None, None
                    reason = f"the server refused the agent's report: {exc.message}"[:1000]
                    continue
            except TenureClientError as exc:
                log.warning("report failed; retrying", extra={"instance": loc.id, "error": str(exc)})
            await self._backoff(attempt)
            attempt += 1
        self.reports += 1
        loc.reported = (gen, state)
        body = answer.get("instance")
        if state != "deleted" and body and loc.desired is not None and body.get("revision", 0) > loc.desired.get(
                "revision", 0):
            loc.desired = body  # the server's state after our report (its event follows on the watch)
        if state == "deleted":
            self._forget(loc.id)
            await self.state.save(drop=loc.id)
        else:
            await self.state.save(loc)

    def _forget(self, iid: str) -> None:
        self.local.pop(iid, None)
        self.observed.pop(iid, None)
        self._unsent.discard(iid)

    def _on_result(self, body: dict[str, Any], result: Result) -> None:
        """An LRM result: a monitor that disagrees with what was reported starts a pass; one that found the resource
        well and said what it found (outputs) is the instance's observed state, for the next heartbeat."""
        if result.action != "monitor" or self._closing:
            return
        labels = body.get("labels") or {}
        if "instance" not in labels or not body["name"].startswith("i-"):
            return
        iid = body["name"][2:]
        loc = self.local.get(iid)
        if loc is None or loc.desired is None or loc.desired.get("desired") != "present":
            return
        gen = loc.desired.get("dispatched", 0)
        ok = body.get("state") in OK_STATES
        values = _observable(result.outputs)
        if ok and values and not result.failed:
            self.observed[iid] = {"at": iso(result.finished_at), "values": values}
            self._unsent.add(iid)
        if ok and loc.reported == (gen, "failed") and loc.done == gen:
            self._kick(iid)  # well again: the pass reports it active
        elif not ok and loc.reported == (gen, "active"):
            self._lost[iid] = _reason("probe", result.to_dict()) if result.rc != 7 else (
                "probe: the resource is not running")
            self._kick(iid)  # the pass reports the failure, then recovers


def _observable(outputs: dict[str, str]) -> dict[str, str]:
    """The outputs the server takes as an observation: keys of lower-case letters, digits and _ (at most 32, in
    order), values cut to MAX_OBSERVATION_VALUE characters; a driver may output more than that."""
    out: dict[str, str] = {}
    for key in sorted(outputs):
        if OBSERVATION_KEY.fullmatch(key) and "\x00" not in outputs[key] and len(out) < MAX_OBSERVATION_VALUES:
            out[key] = outputs[key][:MAX_OBSERVATION_VALUE]
    return out


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result.get(k) for k in ("action", "rc", "rc_name", "status", "exit_reason", "run_ms", "finished_at")}
