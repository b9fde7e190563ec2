"""The LRM with real drivers: Debian's ocf:heartbeat:Dummy and the project's failure-case drivers.

Pacemaker's executor tests (cts-exec) are the checklist: start/stop with idempotence,
monitor then cancel (no events after the cancel), duplicate monitors merge, stop
implies cancel, a monitor failure after the state file is removed, a start timeout,
an uninstalled agent, cancelled pending operations, 25 instances with 1 s monitors.
Time is a fake clock moved by hand; processes are real.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tenure.domain.errors import Conflict, InvalidInput, NotFound
from tenure.drivers.process import group_alive
from tests.lrm.conftest import DUMMY, Harness, run_lrm


def dummy_params(tmp: Path, name: str = "d1") -> dict[str, str]:
    return {"state": str(tmp / f"{name}.state")}


def test_dummy_start_monitor_stop_idempotent(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        view = await h.lrm.add("d1", DUMMY, params=dummy_params(tmp_path))
        assert view["state"] == "unknown" and not (tmp_path / "d1.state").exists()  # adding runs nothing
        probe = await h.do("d1", "monitor")
        assert (probe["rc"], probe["rc_name"], probe["status"], probe["failed"]) == (7, "not_running", "done", False)
        for _ in range(2):  # start on a running instance succeeds too
            r = await h.do("d1", "start")
            assert (r["rc"], r["status"], r["failed"]) == (0, "done", False)
            assert h.lrm.get("d1")["state"] == "running" and (tmp_path / "d1.state").exists()
        assert (await h.do("d1", "monitor"))["rc"] == 0
        for _ in range(2):  # and stop on a stopped one
            r = await h.do("d1", "stop")
            assert (r["rc"], r["status"]) == (0, "done")
            assert h.lrm.get("d1")["state"] == "stopped" and not (tmp_path / "d1.state").exists()
        assert (await h.do("d1", "monitor"))["rc"] == 7
        history = await h.lrm.history("d1")
        assert [e["action"] for e in reversed(history)] == ["monitor", "start", "start", "monitor", "stop", "stop",
                                                             "monitor"]
        assert all(e["state"] == "done" and e["result"]["run_ms"] >= 0 for e in history)
        assert h.lrm.get("d1")["last"]["start"]["rc"] == 0

    run_lrm(tmp_path, scenario)


def test_monitor_failure_event_then_cancel_silences(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("web", DUMMY, params=dummy_params(tmp_path, "web"))
        await h.do("web", "start")
        mon = await h.lrm.submit("web", "monitor", interval=10)
        assert mon["recurring"] and not mon["merged"]
        first = (await h.runs("web", 1))[0]
        assert (first.rc, first.trigger) == (0, "recurring")
        again = await h.lrm.submit("web", "monitor", interval=10)  # a duplicate merges
        assert again["merged"] and again["id"] == mon["id"]
        assert len(h.lrm.get("web")["recurring"]) == 1

        h.clock.advance(10)
        await h.runs("web", 2)  # nothing changed: recorded in memory, no event (report on change)
        before = len(h.events)
        (tmp_path / "web.state").unlink()
        h.clock.advance(10)
        third = (await h.runs("web", 3))[-1]
        assert (third.rc, third.failed) == (7, True)
        await h.until(lambda: ("resource", "monitor_failed") in h.kinds("web", before))
        failed = [e for e in h.events[before:] if e.op == "monitor_failed"]
        assert len(failed) == 1
        ev = failed[0]
        assert ev.body["name"] == "web" and ev.object_id == h.lrm.get("web")["id"]
        assert ev.body["result"]["rc"] == 7 and ev.body["result"]["rc_name"] == "not_running"
        assert h.lrm.get("web")["state"] == "stopped"

        h.clock.advance(10)
        await h.runs("web", 4)  # the same failure again: not reported again
        assert [e.op for e in h.events[before:]].count("monitor_failed") == 1

        cancelled = await h.lrm.cancel("web", mon["id"])
        assert cancelled["state"] == "cancelled"
        await h.until(lambda: len(h.events) > 0 and h.events[-1].body.get("state") == "cancelled")
        after_cancel = len(h.events)
        for _ in range(5):
            h.clock.advance(10)
        await h.lrm.wait_idle()
        assert len([r for b, r in h.results if b["name"] == "web"]) == 5  # start + 4 monitors: no more runs
        assert h.events[after_cancel:] == [] and h.lrm.get("web")["recurring"] == []
        assert h.clock.pending == 0

    run_lrm(tmp_path, scenario)


def test_stop_cancels_recurring_first(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("s1", DUMMY, params=dummy_params(tmp_path, "s1"))
        await h.do("s1", "start")
        await h.lrm.submit("s1", "monitor", interval=5)
        await h.runs("s1", 1)
        before = len(h.events)
        r = await h.do("s1", "stop")
        assert r["rc"] == 0 and h.lrm.get("s1")["recurring"] == []
        h.clock.advance(60)
        await h.lrm.wait_idle()
        assert ("resource", "monitor_failed") not in h.kinds("s1", before)
        assert len(await h.runs("s1", 1)) == 1  # the monitor never ran after the stop

    run_lrm(tmp_path, scenario)


def test_start_timeout_kills_the_process_group(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("slow", "exec:sleeper", params={"ignore_term": "1"})
        t0 = h.clock.now()
        op = await h.lrm.submit("slow", "start", timeout=5)
        await h.clock.timer_armed(t0 + 5)  # spawned, its timeout armed
        h.clock.advance(5)  # SIGTERM to the group: ignored by this driver
        await h.clock.timer_armed(t0 + 5 + h.lrm.grace)
        h.clock.advance(h.lrm.grace)  # SIGKILL
        view = await h.result_of("slow", op)
        r = view["result"]
        assert (r["status"], r["rc"], r["failed"]) == ("timeout", 1, True)
        assert "timed out" in r["exit_reason"]
        assert r["pid"] and not group_alive(r["pid"]), "a process of the timed-out start is left"
        assert h.lrm.get("slow")["state"] == "failed"

    run_lrm(tmp_path, scenario)


def test_uninstalled_agent(tmp_path: Path) -> None:
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    shutil.copy(Path(__file__).parent / "bin" / "exclusive", drivers / "vanishing")

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        with pytest.raises(InvalidInput) as exc:
            await h.lrm.add("x", "ocf:heartbeat:NoSuchAgent")
        assert exc.value.code == "driver_not_found"
        await h.lrm.add("v", "exec:vanishing")
        (drivers / "vanishing").unlink()  # uninstalled after it was added
        r = await h.do("v", "start")
        assert (r["status"], r["rc"], r["rc_name"]) == ("not_installed", 5, "not_installed")

    run_lrm(tmp_path, scenario, exec_dirs=(drivers,))


def test_cancelled_pending_operation_is_not_a_failure(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("q", "exec:slowstart")
        t0 = h.clock.now()
        running = await h.lrm.submit("q", "start", timeout=3)
        queued = await h.lrm.submit("q", "stop")
        with pytest.raises(Conflict) as exc:
            await h.lrm.cancel("q", running["id"])
        assert exc.value.code == "operation_running"
        view = await h.lrm.cancel("q", queued["id"])
        assert view["state"] == "cancelled"
        assert view["result"]["status"] == "cancelled" and view["result"]["failed"] is False
        await h.clock.timer_armed(t0 + 3)
        h.clock.advance(3)  # SIGTERM ends it
        await h.result_of("q", running)
        await h.lrm.wait_idle()
        assert [r.action for b, r in h.results] == ["stop", "start"]  # the stop never ran: cancelled first
        assert h.results[0][1].status == "cancelled" and h.results[0][1].started_at is None

    run_lrm(tmp_path, scenario)


def test_daemon_holding_stdout_does_not_hang(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("dmn", "exec:daemonize")
        r = await h.do("dmn", "start")
        assert (r["status"], r["rc"]) == ("done", 0)
        assert (await h.do("dmn", "monitor"))["rc"] == 0
        assert (await h.do("dmn", "stop"))["rc"] == 0
        assert (await h.do("dmn", "monitor"))["rc"] == 7

    run_lrm(tmp_path, scenario)


def test_ocf_environment(tmp_path: Path) -> None:
    os.environ["TENURE_TEST_SECRET"] = "must-not-leak"
    try:
        async def scenario(h: Harness) -> None:
            assert h.lrm is not None
            await h.lrm.add("env-1", "exec:envdump", params={"color": "blue", "OCF_CHECK_LEVEL": "10"})
            r = await h.do("env-1", "monitor", timeout=7.5)
            env = dict(line.split("=", 1) for line in r["stdout"].splitlines() if "=" in line)
            assert env["OCF_RESOURCE_INSTANCE"] == "env-1" and env["OCF_RESKEY_color"] == "blue"
            assert env["OCF_CHECK_LEVEL"] == "10" and "OCF_RESKEY_OCF_CHECK_LEVEL" not in env
            assert env["OCF_RESKEY_CRM_meta_timeout"] == "7500" and env["OCF_RESKEY_CRM_meta_interval"] == "0"
            assert (env["OCF_RA_VERSION_MAJOR"], env["OCF_RA_VERSION_MINOR"]) == ("1", "1")
            assert env["HA_RSCTMP"] == str(tmp_path / "rsctmp") and env["OCF_EXIT_REASON_PREFIX"] == "ocf-exit-reason:"
            assert "TENURE_TEST_SECRET" not in env
            await h.lrm.submit("env-1", "monitor", interval=2.5, report="always")
            run = (await h.runs("env-1", 2))[-1]
            env = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
            assert env["OCF_RESKEY_CRM_meta_interval"] == "2500"

        run_lrm(tmp_path, scenario)
    finally:
        del os.environ["TENURE_TEST_SECRET"]


def test_python_handler(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("mem", "python:tenure.drivers.bundled.example:Memory")
        assert (await h.do("mem", "monitor"))["rc"] == 7
        assert (await h.do("mem", "start"))["rc"] == 0
        assert (await h.do("mem", "monitor"))["rc"] == 0 and h.lrm.get("mem")["state"] == "running"
        assert (await h.do("mem", "stop"))["rc"] == 0
        with pytest.raises(InvalidInput) as exc:
            await h.lrm.add("evil", "python:os:system")
        assert exc.value.code == "invalid_driver"

    run_lrm(tmp_path, scenario)


def test_bad_input_runs_nothing(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("d", DUMMY, params=dummy_params(tmp_path, "d"))
        bad = [
            (h.lrm.add("x", "ocf:heartbeat:../../bin/sh"), "invalid_driver"),
            (h.lrm.add("x", "nosuch:thing"), "invalid_driver"),
            (h.lrm.add("x", "exec:../bin/sh"), "invalid_driver"),
            (h.lrm.add("x", "ocf:heartbeat:NoSuch"), "driver_not_found"),
            (h.lrm.add("x", "exec:meta"), "missing_parameter"),
            (h.lrm.add("x", DUMMY, params={"no_such_param": "1"}), "unknown_parameter"),
            (h.lrm.add("x y", DUMMY), "invalid_name"),
            (h.lrm.submit("d", "explode"), "unknown_action"),
            (h.lrm.submit("d", "monitor", interval=-1), "invalid_interval"),
            (h.lrm.submit("d", "start", timeout=-5), "invalid_timeout"),
            (h.lrm.submit("d", "start", timeout=0), "invalid_timeout"),
            (h.lrm.submit("d", "start", interval=10), "invalid_interval"),
            (h.lrm.submit("d", "monitor", report="sometimes"), "invalid_report"),
        ]
        for coro, code in bad:
            with pytest.raises(InvalidInput) as exc:
                await coro
            assert exc.value.code == code, (code, exc.value.message)
        with pytest.raises(Conflict) as cexc:
            await h.lrm.add("d", DUMMY, params=dummy_params(tmp_path, "d"))
        assert cexc.value.code == "name_taken"
        with pytest.raises(NotFound):
            await h.lrm.submit("nobody", "start")
        await h.lrm.wait_idle()
        assert h.results == [] and [x["name"] for x in h.lrm.list()] == ["d"]
        assert not (tmp_path / "d.state").exists()
        assert [e.op for e in h.events] == ["created"]  # only the one good add

    run_lrm(tmp_path, scenario)


def test_remove(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("r", DUMMY, params=dummy_params(tmp_path, "r"))
        await h.do("r", "start")
        await h.lrm.submit("r", "monitor", interval=5)
        with pytest.raises(Conflict) as exc:
            await h.lrm.remove("r")
        assert exc.value.code == "resource_running"
        await h.do("r", "stop")
        gone = await h.lrm.remove("r")
        assert gone["deleted"] and h.lrm.list() == []
        with pytest.raises(NotFound):
            h.lrm.get("r")
        h.clock.advance(60)
        await h.lrm.wait_idle()
        await h.lrm.add("r", DUMMY, params=dummy_params(tmp_path, "r"))  # the name is free again
        await h.restart()
        assert h.lrm is not None
        await h.lrm.wait_idle()
        assert [x["name"] for x in h.lrm.list()] == ["r"]
        assert [e["action"] for e in await h.lrm.history("r")] == ["monitor"]  # the restart's probe only

    run_lrm(tmp_path, scenario)


def test_forced_remove_while_an_operation_runs(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("busy", "exec:slowstart")
        t0 = h.clock.now()
        op = await h.lrm.submit("busy", "start", timeout=5)
        queued = await h.lrm.submit("busy", "stop")
        await h.clock.timer_armed(t0 + 5)
        with pytest.raises(Conflict) as exc:
            await h.lrm.remove("busy")
        assert exc.value.code == "operation_running"
        gone = await h.lrm.remove("busy", force=True)
        assert gone["deleted"] and gone["pending_operation"] == op["id"]
        with pytest.raises(NotFound):
            h.lrm.get("busy")  # gone from every read at once
        cancelled = [r for _, r in h.results if r.op_id == queued["id"]]
        assert len(cancelled) == 1 and cancelled[0].status == "cancelled"
        h.clock.advance(5)  # the start ends (timeout); then its rows go
        await h.until(lambda: h.events[-1].kind == "resource" and h.events[-1].op == "deleted")
        await h.restart()
        assert h.lrm is not None and h.lrm.list() == []

    run_lrm(tmp_path, scenario)


def test_long_polls_answer_at_the_result_and_at_shutdown(tmp_path: Path) -> None:
    """``operation(wait=...)`` answers once the operation has its result; at shutdown (``stop_waiting``) every
    long poll still waiting answers at once with the operation as it stands."""

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        lrm = h.lrm
        await lrm.add("q", "exec:slowstart")
        t0 = h.clock.now()
        first = await lrm.submit("q", "start", timeout=3)
        second = await lrm.submit("q", "start", timeout=3)
        loop = asyncio.get_running_loop()
        polls = [loop.create_task(lrm.operation("q", op["id"], wait=30)) for op in (first, first, second)]
        await h.clock.timer_armed(t0 + 3)
        assert not any(p.done() for p in polls)
        h.clock.advance(3)  # the first start times out: its two polls answer with its result
        a, b = await asyncio.gather(polls[0], polls[1])
        assert a["state"] == b["state"] == "done" and a["result"]["status"] == b["result"]["status"] == "timeout"
        await h.clock.timer_armed(h.clock.now() + 3)  # the second start runs now
        assert not polls[2].done()
        lrm.stop_waiting()
        view = await polls[2]
        assert (view["id"], view["state"], view["result"]) == (second["id"], "running", None)
        again = await lrm.operation("q", second["id"], wait=30)  # after the shutdown began: at once
        assert again["state"] == "running"
        h.clock.advance(3)  # (it ends as a timeout, so the harness closes at once)

    run_lrm(tmp_path, scenario)


def test_submit_with_wait_and_a_recurring_first_result_that_never_comes(tmp_path: Path) -> None:
    """``submit(wait=...)`` answers with the result; a wait for a recurring operation's first result ends when
    that operation is cancelled before its first run."""

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        lrm = h.lrm
        await lrm.add("d", DUMMY, params={"state": str(tmp_path / "d.state")})
        done = await lrm.submit("d", "start", wait=30)
        assert (done["state"], done["result"]["rc"]) == ("done", 0)
        await lrm.add("q", "exec:slowstart")
        t0 = h.clock.now()
        running = await lrm.submit("q", "start", timeout=3)
        waiting = asyncio.get_running_loop().create_task(lrm.submit("q", "monitor", interval=60, wait=30))
        await h.until(lambda: bool(lrm.get("q")["recurring"]))  # added; its first run waits behind the start
        mon = lrm.get("q")["recurring"][0]
        await lrm.cancel("q", mon["id"])
        view = await waiting
        assert (view["id"], view["state"], view["result"], view["merged"]) == (mon["id"], "cancelled", None, False)
        await h.clock.timer_armed(t0 + 3)
        h.clock.advance(3)
        await h.result_of("q", running)

    run_lrm(tmp_path, scenario)


def test_pending_rows_are_written_in_submission_order(tmp_path: Path) -> None:
    """Operations submitted in one loop turn on two instances: their pending rows (``operation created``) are
    written in the order of submission, even when the second ends first (its instance removed at once)."""

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        lrm = h.lrm
        await lrm.add("x", DUMMY, params={"state": str(tmp_path / "x.state")})
        await lrm.add("y", "exec:slowstart")
        t0 = h.clock.now()
        await lrm.submit("y", "start", timeout=3)
        loop = asyncio.get_running_loop()
        first = loop.create_task(lrm.submit("x", "monitor"))
        second = loop.create_task(lrm.submit("y", "stop"))  # queued behind y's start
        removal = loop.create_task(lrm.remove("y", force=True))  # settles it (cancelled) in the same turn
        one, two, _ = await asyncio.gather(first, second, removal)

        def created() -> list[str]:
            return [e.body["id"] for e in h.events if (e.kind, e.op) == ("operation", "created")]

        await h.until(lambda: {one["id"], two["id"]} <= set(created()))
        order = created()
        assert order.index(one["id"]) < order.index(two["id"]), order
        await h.clock.timer_armed(t0 + 3)
        h.clock.advance(3)
        await lrm.wait_idle()

    run_lrm(tmp_path, scenario)


@pytest.mark.parametrize("busy", [True, False])
def test_a_pending_row_the_store_refuses(tmp_path: Path, busy: bool) -> None:
    """The store refuses a client operation's pending row: one that has not started is taken off the queue and
    never runs (the submit fails as the store did); one already running is answered ``outcome_unknown``."""
    from tenure.domain.errors import TenureError, Unavailable

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        lrm = h.lrm
        await lrm.add("q", "exec:slowstart")
        t0 = h.clock.now()
        ahead = await lrm.submit("q", "start", timeout=3) if busy else None

        def refused(*_args: Any) -> asyncio.Future[Any]:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(Unavailable("the store failed to commit", code="store_error"))
            return fut

        lrm.store.accepted = refused  # type: ignore[method-assign]
        with pytest.raises(TenureError) as exc:
            await lrm.submit("q", "start", timeout=3)
        if busy:
            assert exc.value.code == "store_error"
            assert lrm.get("q")["queued"] == []
        else:
            assert exc.value.code == "outcome_unknown"
            assert lrm.get("q")["running"] is not None
        await h.clock.timer_armed(t0 + 3)
        h.clock.advance(3)
        await lrm.wait_idle()
        ran = [r for _, r in h.results if r.action == "start" and r.status != "cancelled"]
        assert len(ran) == 1, ran  # the refused one never ran (busy), or is the one that ran
        assert ahead is None or ran[0].op_id == ahead["id"]
        # Either way it ends, and its end is in the history in a row of its own (its pending row is not there).
        history = [(e["action"], e["result"]["status"]) for e in reversed(await lrm.history("q"))]
        assert history == ([("start", "cancelled"), ("start", "timeout")] if busy else [("start", "timeout")])
        if busy:
            refused = next(o for o in lrm.operations("q") if o["state"] == "cancelled")
            assert "did not record it" in refused["result"]["exit_reason"]

    run_lrm(tmp_path, scenario)


@pytest.mark.parametrize("committed", [True, False])
def test_an_add_whose_caller_goes_away_follows_its_write(tmp_path: Path, committed: bool) -> None:
    """The caller of ``add`` is cancelled while the instance's write is in flight: the write is not cancelled with
    it, and the instance shows once that write commits (or is dropped if it fails), as the store will have it."""
    from tenure.domain.errors import NotFound, Unavailable

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        lrm = h.lrm
        loop = asyncio.get_running_loop()
        write: asyncio.Future[Any] = loop.create_future()
        reached = asyncio.Event()

        def add_instance(_body: Any) -> asyncio.Future[Any]:
            reached.set()
            return write

        lrm.store.add_instance = add_instance  # type: ignore[method-assign]
        caller = loop.create_task(lrm.add("a", DUMMY, params={"state": str(tmp_path / "a.state")}))
        await reached.wait()  # (the meta-data ran; the write is in flight)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        with pytest.raises(NotFound):
            lrm.get("a")  # hidden until committed
        if committed:
            write.set_result(1)
        else:
            write.set_exception(Unavailable("the store failed to commit", code="store_error"))
        await asyncio.sleep(0)  # (one loop turn: the write's callbacks)
        if committed:
            assert lrm.get("a")["name"] == "a"
        else:
            with pytest.raises(NotFound):
                lrm.get("a")
            assert "a" not in lrm._by_name

    run_lrm(tmp_path, scenario)
