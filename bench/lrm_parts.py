#!/usr/bin/env python3
"""Where a one-shot monitor's time goes in the LRM: its parts, one process, rounds interleaved.

    python3 dev.py bench lrm_parts [--n 200] [--runs 7] [--records 300]

Per round, ``--n`` monitors of ``ocf:heartbeat:Dummy`` (started once) each way, one after another:

- **loop**: ``subprocess.run`` of the agent, as bench/lrm.py's limit;
- **runner**: Tenure's process runner alone (``run_process``: the fork, the pipes, the pidfd), awaited;
- **LRM, no store**: the LRM with a store whose every write is done at once (its queues, the driver, the
  bookkeeping, the long poll; nothing committed);
- **LRM**: the LRM on its SQLite store, each operation accepted and its result committed, as bench/lrm.py's.

Then the store's part alone: ``--records`` results recorded one after another through ``LrmStore.record`` (each
awaited: the writer's round trip, its five statements and the event, the commit), with the engine's
``synchronous=FULL`` and, for the fsync's share, ``synchronous=NORMAL`` on another store. Medians over rounds;
each mode's overhead is the median of its per-round differences with the loop. Reports; never gates.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/http.py shadows http
sys.path.append(str(HERE))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from tenure.clock import RealClock  # noqa: E402
from tenure.domain.driverspec import parse_spec  # noqa: E402
from tenure.drivers.ocf import ocf_env  # noqa: E402
from tenure.drivers.process import run_process  # noqa: E402
from tenure.drivers.spec import DriverRoots  # noqa: E402
from tenure.lrm.executor import Lrm  # noqa: E402
from tenure.lrm.model import Result  # noqa: E402
from tenure.lrm.store import LrmStore  # noqa: E402
from tenure.services.runtime import Runtime  # noqa: E402
from tenure.store import engine as engine_module  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Report, median, paired_median  # noqa: E402

DUMMY = "ocf:heartbeat:Dummy"
AGENT = "/usr/lib/ocf/resource.d/heartbeat/Dummy"


class NoStore:
    """Every write of the LRM's store, done at once (nothing is committed)."""

    def __getattr__(self, name: str) -> Any:
        def done(*_args: Any, **_kwargs: Any) -> asyncio.Future[int]:  # (as the real store's: awaited, no task)
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(0)
            return fut

        return done


async def _lrm(work: Path, store: Any) -> Lrm:
    lrm = Lrm(store=store, roots=DriverRoots(), rsctmp=work / "rsctmp", clock=RealClock(), max_parallel=32)
    if isinstance(store, LrmStore):
        await lrm.restore()
    await lrm.add("d", DUMMY, params={"state": str(work / "d.state")})
    op = await lrm.submit("d", "start")
    assert (await lrm.operation("d", op["id"], wait=60))["result"]["rc"] == 0
    return lrm


async def _monitors(lrm: Lrm, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        op = await lrm.submit("d", "monitor")
        assert (await lrm.operation("d", op["id"], wait=60))["result"]["rc"] == 0
    return time.perf_counter() - t0


async def parts(work: Path, n: int, runs: int) -> dict[str, list[float]]:
    (work / "rsctmp").mkdir(parents=True)
    rt = await asyncio.to_thread(Runtime.open, f"sqlite:///{work / 'agent.db'}")
    lrms: list[Lrm] = []
    try:
        lrms.append(await _lrm(work, LrmStore(rt)))
        lrms.append(await _lrm(work, NoStore()))
        stored, bare = lrms
        env = ocf_env(root=Path("/usr/lib/ocf"), spec=parse_spec(DUMMY), instance="d",
                      params={"state": str(work / "d.state")}, timeout=20.0, interval=0.0, rsctmp=work / "rsctmp")
        clock = RealClock()
        out: dict[str, list[float]] = {"loop": [], "runner": [], "lrm_no_store": [], "lrm": []}
        for _ in range(runs):
            t0 = time.perf_counter()
            for _ in range(n):
                r = subprocess.run([AGENT, "monitor"], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                   start_new_session=True, cwd="/", check=False)
                assert r.returncode == 0, r
            out["loop"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(n):
                res = await run_process([AGENT, "monitor"], env=env, timeout=20.0, grace=5.0, clock=clock)
                assert res.returncode == 0, res
            out["runner"].append(time.perf_counter() - t0)
            out["lrm_no_store"].append(await _monitors(bare, n))
            out["lrm"].append(await _monitors(stored, n))
        return out
    finally:
        for lrm in lrms:
            await lrm.close()
        await asyncio.to_thread(rt.close)


async def records(work: Path, n: int, synchronous: str) -> list[float]:
    """Seconds of each of ``n`` results recorded one after another (a one-shot's accepted row, then its result)."""
    work.mkdir(parents=True)
    pragmas = engine_module._sqlite_pragmas
    if synchronous != "FULL":  # every connection of this store (the writer's among them): the engine's, then this

        def relaxed(conn: Any, record: Any) -> None:
            pragmas(conn, record)
            conn.execute(f"PRAGMA synchronous={synchronous}")

        engine_module._sqlite_pragmas = relaxed  # (make_engine looks it up when it makes the engine)
    try:
        rt = await asyncio.to_thread(Runtime.open, f"sqlite:///{work / 'agent.db'}")
    finally:
        engine_module._sqlite_pragmas = pragmas
    try:
        store = LrmStore(rt)
        await asyncio.to_thread(store.load)
        body = {"id": "i1", "name": "d", "driver": DUMMY, "params": {}, "labels": {},
                "created_at": "2026-01-01T00:00:00Z", "state": "running", "state_at": None}
        await store.add_instance(body)
        took = []
        for i in range(n):
            view = {"id": f"op-{i}", "resource_id": "i1", "resource": "d", "action": "monitor", "interval": 0.0,
                    "timeout": 20.0, "report": "change", "expect": 0, "trigger": "client", "recurring": False,
                    "run": 1, "state": "queued", "submitted_at": "2026-01-01T00:00:00Z", "result": None}
            await store.accepted(body, view)
            now = time.time()
            result = Result(op_id=view["id"], run=1, action="monitor", interval=0.0, rc=0, status="done",
                            exit_reason=None, queued_at=now, started_at=now, finished_at=now, queue_ms=0, run_ms=3,
                            stdout="", stderr="", expect=0, trigger="client", pid=1, outputs={})
            t0 = time.perf_counter()
            await store.record(body, {**view, "state": "done"}, result, key="monitor_0", state_changed=False,
                               monitor_failed=False, existing_row=True)
            took.append(time.perf_counter() - t0)
        return took
    finally:
        await asyncio.to_thread(rt.close)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="monitors per round and mode")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--records", type=int, default=300, help="results recorded per durability setting")
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tenure-lrm-parts-"))
    report = Report("lrm_parts", benchkit.machine(work, quiet_wait=args.quiet_wait), vars(args))
    try:
        out = asyncio.run(parts(work / "parts", args.n, args.runs))
        rec = {s: asyncio.run(records(work / f"records-{s.lower()}", args.records, s)) for s in ("FULL", "NORMAL")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = args.n

    def per_op(mode: str) -> float:
        return median(out[mode]) / n * 1000

    def over(mode: str) -> float:
        return paired_median(out[mode], out["loop"]) / n * 1000

    rows = [(mode, f"{per_op(mode):.2f}", "" if mode == "loop" else f"{over(mode):+.2f}",
             " / ".join(f"{x / n * 1000:.2f}" for x in out[mode])) for mode in out]
    benchkit.print_table(f"One-shot monitor of Dummy, its parts ({args.runs} rounds of {n})",
                         ("mode", "ms/op (median)", "over the loop (ms, median of rounds)", "rounds"), rows)
    recs = [(f"synchronous={s}", f"{median(v) * 1000:.3f}", f"{sorted(v)[int(len(v) * 0.9)] * 1000:.3f}")
            for s, v in rec.items()]
    benchkit.print_table(f"One result recorded ({args.records} each)", ("store", "p50 ms", "p90 ms"), recs)
    report.results.append({"mode": "parts", "n": n, "runs": args.runs, **{f"{k}_s": v for k, v in out.items()},
                           **{f"{k}_ms_per_op": per_op(k) for k in out},
                           **{f"{k}_over_ms": over(k) for k in out if k != "loop"}})
    report.results.append({"mode": "records", **{f"record_{s.lower()}_p50_ms": median(v) * 1000
                                                 for s, v in rec.items()}})
    benchkit.finish(report)


if __name__ == "__main__":
    main()
