"""Many instances at once, and an agent restart in the middle of their lives."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from tenure.clock import RealClock
from tenure.drivers.process import group_alive, wait_group_gone
from tenure.lrm.model import Result
from tests.lrm.conftest import DUMMY, Harness, run_lrm


def test_25_instances_with_1s_monitors_never_overlap(tmp_path: Path) -> None:
    """25 instances, 1 s monitors, starts and stops submitted in between, from several places at once.

    The ``exclusive`` driver holds a lock directory per instance for each run and fails with "overlap" if
    it finds one held: never two operations in flight for one instance, seen from the driver's side.
    """
    names = [f"r{i:02d}" for i in range(25)]
    rng = random.Random(7)

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        for n in names:
            await h.lrm.add(n, "exec:exclusive")
        submitted: list[str] = []
        for n in names:
            submitted.append((await h.lrm.submit(n, "start"))["id"])
            await h.lrm.submit(n, "monitor", interval=1, report="always")
        for _ in range(12):
            for n in rng.sample(names, 8):  # starts and stops queued behind and between the monitors
                submitted.append((await h.lrm.submit(n, rng.choice(["start", "stop", "monitor"])))["id"])
            h.clock.advance(1)
            for n in rng.sample(names, 4):
                await h.lrm.submit(n, "monitor", interval=1, report="always")  # re-register (after a stop)
        await h.lrm.wait_idle()
        # every client operation ended exactly once (a worker that died on the way would lose some)
        client = [r.op_id for _, r in h.results if r.trigger == "client"]
        assert sorted(client) == sorted(submitted)
        overlaps = [r for _, r in h.results if r.exit_reason and "overlap" in r.exit_reason]
        assert overlaps == []
        assert all(r.status == "done" for _, r in h.results), [r for _, r in h.results if r.status != "done"]
        per_instance = {n: [r for b, r in h.results if b["name"] == n] for n in names}
        assert all(len(rs) >= 3 for rs in per_instance.values())
        # recurring monitors ran while the clock moved (not only the first run of each registration)
        assert sum(1 for _, r in h.results if r.trigger == "recurring") > 25 * 3

    run_lrm(tmp_path, scenario)


def test_restart_in_the_middle(tmp_path: Path) -> None:
    """Last results survive, one probe per instance, monitors resume, nothing is started or stopped."""

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        for i in range(4):
            await h.lrm.add(f"d{i}", DUMMY, params={"state": str(tmp_path / f"d{i}.state")})
        for i in (0, 1, 2):
            await h.do(f"d{i}", "start")
            await h.lrm.submit(f"d{i}", "monitor", interval=10)
        await h.do("d2", "stop")  # stopped again: its monitor cancelled by the stop
        await h.lrm.submit("d1", "monitor", interval=30, expect=0)
        await h.lrm.wait_idle()
        (tmp_path / "d1.state").unlink()  # d1 died while the agent was down
        # a slow instance with a client operation queued behind a running one: the queued one never ran
        await h.lrm.add("slow", "exec:slowstart")
        t0 = h.clock.now()
        await h.lrm.submit("slow", "start", timeout=2)
        queued = await h.lrm.submit("slow", "stop")
        await h.clock.timer_armed(t0 + 2)
        closing = asyncio.ensure_future(h.close())  # waits for the running start, drops the queued stop
        await asyncio.sleep(0)  # let the close begin (a yield to the loop, not a wait for time)
        h.clock.advance(2)  # the start times out
        await closing
        h.results.clear()
        await h.open()
        lrm = h.lrm
        assert lrm is not None
        views = {v["name"]: v for v in lrm.list()}
        assert set(views) == {"d0", "d1", "d2", "d3", "slow"}
        assert views["d0"]["last"]["start"]["rc"] == 0 and views["d2"]["last"]["stop"]["rc"] == 0
        assert [r["interval"] for r in views["d1"]["recurring"]] == [10.0, 30.0]
        assert views["d2"]["recurring"] == [] and views["d3"]["last"] == {}
        await lrm.wait_idle()
        probes = [(b["name"], r) for b, r in h.results if r.trigger == "restore"]
        assert sorted(n for n, _ in probes) == ["d0", "d1", "d2", "d3", "slow"]  # one probe each
        assert {n: r.rc for n, r in probes if n != "slow"} == {"d0": 0, "d1": 7, "d2": 7, "d3": 7}
        assert all(r.action == "monitor" and r.interval == 0 for _, r in probes)
        interrupted = [r for _, r in h.results if r.op_id == queued["id"]]
        assert len(interrupted) == 1 and interrupted[0].status == "cancelled" and not interrupted[0].failed
        assert "interrupted" in (interrupted[0].exit_reason or "")
        # nothing started or stopped by the restart: only probes and the interruption record
        assert {r.action for _, r in h.results} == {"monitor", "stop"} and \
            [r for _, r in h.results if r.action == "stop"] == interrupted
        assert (tmp_path / "d0.state").exists() and not (tmp_path / "d1.state").exists()
        assert lrm.get("d1")["state"] == "stopped" and lrm.get("d0")["state"] == "running"
        # the monitors resume an interval after the probe
        h.clock.advance(10)
        runs: list[Result] = await h.runs("d0", 2)
        assert runs[-1].trigger == "recurring" and runs[-1].rc == 0
        d1 = await h.runs("d1", 2)
        assert d1[-1].trigger == "recurring" and d1[-1].rc == 7 and d1[-1].failed
        assert not (tmp_path / "d1.state").exists()  # reported, not repaired: the LRM has no policy

    run_lrm(tmp_path, scenario)


def test_every_run_recorded_across_restarts(tmp_path: Path, caplog: Any) -> None:
    """Runs of a recurring operation each get their own history row, before and after a restart."""

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("a", DUMMY, params={"state": str(tmp_path / "a.state")})
        await h.do("a", "start")
        await h.lrm.submit("a", "monitor", interval=5, report="always")
        await h.runs("a", 1)
        h.clock.advance(5)
        await h.runs("a", 2)
        await h.restart()
        assert h.lrm is not None
        await h.lrm.wait_idle()  # the probe
        for n in (2, 3):
            h.clock.advance(5)
            await h.runs("a", n)
        await h.lrm.wait_idle()
        history = await h.lrm.history("a")
        assert [(e["action"], e["interval"]) for e in reversed(history)] == [
            ("start", 0.0), ("monitor", 5.0), ("monitor", 5.0), ("monitor", 0.0), ("monitor", 5.0), ("monitor", 5.0)]
        assert len({(e["id"], e["result"]["finished_at"]) for e in history}) == 6

    run_lrm(tmp_path, scenario)
    assert "result not recorded" not in caplog.text


def test_closing_stops_what_still_runs_and_the_next_start_reports_it_interrupted(tmp_path: Path) -> None:
    """A shutdown waits ``close_wait`` (the LRM's clock) for what runs, then stops it as a timeout would (SIGTERM,
    SIGKILL after the grace period): nothing outlives the agent; the operation is reported interrupted at the next
    start, as after a crash, and the instance is probed."""
    fifos = {name: tmp_path / f"ready-{name}" for name in ("stubborn", "polite")}
    for fifo in fifos.values():
        os.mkfifo(fifo)

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        pids, ops = {}, {}
        for name, ignore in (("stubborn", "1"), ("polite", "0")):  # stubborn's start ignores SIGTERM
            await h.lrm.add(name, "exec:sleeper", params={"ignore_term": ignore, "ready": str(fifos[name])})
            ops[name] = await h.lrm.submit(name, "start", timeout=3600)
            line = await asyncio.to_thread(fifos[name].read_text)  # the driver runs and says so (an event)
            pids[name] = int(line.split()[1])
        grace = h.lrm.grace
        closing = asyncio.ensure_future(h.close())
        await asyncio.sleep(0)  # let the close begin: it arms its wait before its first await (a yield, not time)
        assert not closing.done() and all(group_alive(p) for p in pids.values())  # it waits for what runs...
        t0 = h.clock.now()
        h.clock.advance(10)  # ...for close_wait: then SIGTERM, which ends polite's start
        await h.clock.timer_armed(t0 + 10 + grace)
        assert await wait_group_gone(pids["polite"], clock=RealClock(), timeout=30)  # on an event (pidfd), not time
        assert group_alive(pids["stubborn"]) and not closing.done()
        h.clock.advance(grace)  # then SIGKILL for what ignored it
        await closing
        assert not group_alive(pids["stubborn"]), "a driver process outlived the LRM"
        await h.open()
        assert h.lrm is not None
        await h.until(lambda: all(any(r.op_id == op["id"] for _, r in h.results) for op in ops.values()))
        for op in ops.values():
            mine = [r for _, r in h.results if r.op_id == op["id"]]
            assert len(mine) == 1 and mine[0].status == "cancelled" and "interrupted" in (mine[0].exit_reason or "")
        # the probes of the restart run (this driver's monitor sleeps too: they end at their timeout)
        await h.clock.timer_armed(h.clock.now() + h.lrm.default_timeout)
        h.clock.advance(h.lrm.default_timeout)
        for name in ops:
            probes = await h.runs(name, 1)
            assert [(r.trigger, r.status) for r in probes] == [("restore", "timeout")]

    run_lrm(tmp_path, scenario, close_wait=10)


def test_an_operation_that_ends_at_once_is_recorded_before_and_after_a_restart(tmp_path: Path) -> None:
    """A client operation's pending row is queued a loop turn after its submit (so an idle instance's process is
    spawned first); one that ends before then (its agent gone: no process at all) has that row written first and
    then completed, so it is not reported interrupted by the next start."""
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    shutil.copy(Path(__file__).parent / "bin" / "exclusive", drivers / "vanishing")

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("v", "exec:vanishing")
        (drivers / "vanishing").unlink()
        r = await h.do("v", "start")
        assert (r["status"], r["rc"]) == ("not_installed", 5)
        await h.restart()
        assert h.lrm is not None
        await h.lrm.wait_idle()  # the probe
        history = await h.lrm.history("v")
        assert [(e["action"], e["result"]["status"]) for e in reversed(history)] == [
            ("start", "not_installed"), ("monitor", "not_installed")]

    run_lrm(tmp_path, scenario, exec_dirs=(drivers,))


def test_a_submit_whose_caller_goes_away_still_records_the_operation(tmp_path: Path) -> None:
    """The caller of submit is cancelled while it waits for the pending row (a client that hung up): the operation
    is queued already, so it runs, and its row is written and completed all the same."""

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("a", DUMMY, params={"state": str(tmp_path / "a.state")})
        await h.do("a", "start")
        caller = asyncio.get_running_loop().create_task(h.lrm.submit("a", "monitor"))
        await asyncio.sleep(0)  # the submit runs up to its wait for the pending row
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await h.lrm.wait_idle()
        await h.restart()
        assert h.lrm is not None
        await h.lrm.wait_idle()  # the probe
        history = await h.lrm.history("a")
        assert [(e["action"], e["interval"], e["result"]["status"], e["result"]["rc"]) for e in reversed(history)] == [
            ("start", 0.0, "done", 0), ("monitor", 0.0, "done", 0), ("monitor", 0.0, "done", 0)]

    run_lrm(tmp_path, scenario)
