"""Races a client can cause: operations submitted, cancelled and removed while others are in flight.

Each case fixes its interleaving with ``asyncio.gather`` (submissions start in list order and their first
step, up to the first await, runs before the next begins), so the race is the same on every run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tenure.domain.errors import InvalidInput
from tenure.lrm.store import HISTORY_PER_INSTANCE
from tests.lrm.conftest import DUMMY, Harness, run_lrm


def test_stop_then_start_run_in_the_order_submitted(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("o", DUMMY, params={"state": str(tmp_path / "o.state")})
        await h.do("o", "start")
        await h.lrm.submit("o", "monitor", interval=10)
        await h.runs("o", 1)
        h.results.clear()
        stop, start = await asyncio.gather(h.lrm.submit("o", "stop"), h.lrm.submit("o", "start"))
        await h.result_of("o", start)
        assert [r.action for _, r in h.results] == ["stop", "start"]
        assert h.lrm.get("o")["state"] == "running"

    run_lrm(tmp_path, scenario)


def test_remove_cancels_what_is_queued_and_nothing_runs_after(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("g", "exec:sleeper")
        t0 = h.clock.now()
        await h.lrm.submit("g", "monitor", interval=30, timeout=4)  # its first run sleeps until its timeout
        await h.clock.timer_armed(t0 + 4)
        start = await h.lrm.submit("g", "start", timeout=2)  # queued behind the monitor run
        stop_task = asyncio.ensure_future(h.lrm.submit("g", "stop"))
        gone = await h.lrm.remove("g")  # no force needed: what runs is a monitor, not a client's operation
        assert gone["deleted"]
        with pytest.raises(Exception):
            await stop_task  # it came after the remove: refused (404), never queued
        h.clock.advance(4)  # the monitor run times out (SIGTERM ends the sleeper); then the rows go
        await h.until(lambda: h.events[-1].kind == "resource" and h.events[-1].op == "deleted")
        h.clock.advance(60)
        await h.lrm.wait_idle()
        ran = [r for _, r in h.results if r.op_id == start["id"]]
        assert len(ran) == 1 and ran[0].status == "cancelled" and ran[0].started_at is None
        assert not any(r.action == "start" and r.status != "cancelled" for _, r in h.results)
        assert h.events[-1].kind == "resource" and h.events[-1].op == "deleted"
        rows = await asyncio.to_thread(h.lrm.store.read_history, gone["id"], 100)
        assert rows == []  # no row outlives the instance

    run_lrm(tmp_path, scenario)


def test_cancelling_the_restart_probe_still_resumes_the_monitors(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("p", DUMMY, params={"state": str(tmp_path / "p.state")})
        await h.do("p", "start")
        await h.lrm.submit("p", "monitor", interval=10)
        await h.runs("p", 1)
        await h.restart()
        lrm = h.lrm
        assert lrm is not None
        probe = next((o for o in lrm.operations("p") if o["trigger"] == "restore" and o["state"] == "queued"), None)
        if probe is not None:  # still queued: cancel it (if it already ran, the schedules resumed anyway)
            await lrm.cancel("p", probe["id"])
        await lrm.wait_idle()
        h.clock.advance(10)
        await h.until(lambda: any(r.trigger == "recurring" for _, r in h.results))

    run_lrm(tmp_path, scenario)


def test_queued_operations_keep_their_history_rows(tmp_path: Path) -> None:
    """More operations queued behind a slow one than the history keeps: none loses its row or its result."""
    n = HISTORY_PER_INSTANCE + 20

    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        await h.lrm.add("s", "exec:slowstart")
        t0 = h.clock.now()
        await h.lrm.submit("s", "start", timeout=3)
        ops = [await h.lrm.submit("s", "monitor") for _ in range(n)]
        await h.clock.timer_armed(t0 + 3)
        closing = asyncio.ensure_future(h.close())
        await asyncio.sleep(0)
        h.clock.advance(3)
        await closing
        h.results.clear()
        await h.open()
        assert h.lrm is not None
        await h.lrm.wait_idle()
        interrupted = {r.op_id for _, r in h.results if r.status == "cancelled"}
        missing = {o["id"] for o in ops} - interrupted
        assert not missing, f"{len(missing)} of {n} queued operations were never reported"

    run_lrm(tmp_path, scenario)


def test_names_and_numbers_that_are_refused(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert h.lrm is not None
        d = await h.lrm.add("n", DUMMY, params={"state": str(tmp_path / "n.state")})
        for bad_name in ("123e4567-e89b-12d3-a456-426614174000", d["id"]):
            with pytest.raises(InvalidInput) as exc:
                await h.lrm.add(bad_name, DUMMY)
            assert exc.value.code == "invalid_name"
        with pytest.raises(InvalidInput) as exc:
            await h.lrm.add("x", DUMMY, labels={"k": "\ud800"})
        assert exc.value.code == "invalid_labels"
        with pytest.raises(InvalidInput) as exc:
            await h.lrm.add("x", DUMMY, params={"state": "\udfff"})
        assert exc.value.code == "invalid_parameter"
        for value in (float("inf"), float("nan"), 10 ** 400, -(10 ** 400), 1e308):
            for field in ("interval", "timeout"):
                with pytest.raises(InvalidInput) as exc:
                    await h.lrm.submit("n", "monitor", **{field: value})
                assert exc.value.code == f"invalid_{field}" and "inf" not in exc.value.to_dict().get(field, "")

    run_lrm(tmp_path, scenario)
