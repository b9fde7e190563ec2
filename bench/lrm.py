#!/usr/bin/env python3
"""The local resource manager: overhead per operation against the limit, and 500 instances' monitors.

    python3 dev.py bench lrm [--n 200] [--runs 5] [--instances 500] [--interval 30] [--minutes 5] [--quick]

Overhead: one ``ocf:heartbeat:Dummy`` instance (started), then ``--n`` monitors through the LRM, next to
the limit: the same agent run directly ``--n`` times by a plain loop (``subprocess.run``, same argv, the
same environment the LRM builds, own session, pipes captured). Two LRM paths: one-shot monitors
submitted one after another, each awaited (``Lrm.submit`` + the result; each written to the store twice,
accepted and finished, as every client operation is), and a recurring monitor every 0.1 s reporting on
change (nothing written while the answer stays 0): ``--n`` cycles, minus ``--n`` intervals. Rounds
alternate; medians of ``--runs``. Goal (issue 5): at most 15% overhead.

Scale: in a fresh process (so its CPU is the LRM's alone), ``--instances`` Dummy instances are added and
started one by one, each given a recurring monitor every ``--interval`` seconds (report on change, the
default) right after its start, as a host whose resources came up over time. After one interval of warm-up,
``--minutes`` are measured: the process's own CPU time (``getrusage(RUSAGE_SELF)``: children excluded) over
wall time, and the jitter of each recurring run (its start minus its due time: completion of the previous
run plus the interval). Goals: CPU <= 5% of one core; jitter p99 <= 1 s. The script reports and never
gates (exit 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/http.py shadows http
sys.path.append(str(HERE))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from tenure.clock import RealClock  # noqa: E402
from tenure.domain.driverspec import parse_spec  # noqa: E402
from tenure.drivers.ocf import ocf_env  # noqa: E402
from tenure.drivers.spec import DriverRoots  # noqa: E402
from tenure.lrm.executor import Lrm  # noqa: E402
from tenure.lrm.store import LrmStore  # noqa: E402
from tenure.services.runtime import Runtime  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Goal, Report, fmt, median  # noqa: E402

DUMMY = "ocf:heartbeat:Dummy"
AGENT = Path("/usr/lib/ocf/resource.d/heartbeat/Dummy")
RECURRING_INTERVAL = 0.1  # the shortest the LRM accepts


async def _open(work: Path, max_parallel: int = 32) -> tuple[Runtime, Lrm]:
    rt = await asyncio.to_thread(Runtime.open, f"sqlite:///{work / 'agent.db'}")
    (work / "rsctmp").mkdir(exist_ok=True)
    lrm = Lrm(store=LrmStore(rt), roots=DriverRoots(), rsctmp=work / "rsctmp", clock=RealClock(),
              max_parallel=max_parallel)
    await lrm.restore()
    return rt, lrm


async def _close(rt: Runtime, lrm: Lrm) -> None:
    await lrm.close()
    await asyncio.to_thread(rt.close)


# ------------------------------------------------------------------ overhead


async def overhead(work: Path, n: int, runs: int) -> dict[str, Any]:
    rt, lrm = await _open(work)
    try:
        params = {"state": str(work / "d.state")}
        await lrm.add("d", DUMMY, params=params)
        op = await lrm.submit("d", "start")
        assert (await lrm.operation("d", op["id"], wait=60))["result"]["rc"] == 0
        env = ocf_env(root=Path("/usr/lib/ocf"), spec=parse_spec(DUMMY), instance="d", params=params,
                      timeout=20.0, interval=0.0, rsctmp=work / "rsctmp")
        lrm_s: list[float] = []
        direct_s: list[float] = []
        rec_s: list[float] = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for _ in range(n):
                r = subprocess.run([str(AGENT), "monitor"], env=env, stdin=subprocess.DEVNULL,
                                   capture_output=True, start_new_session=True, cwd="/", check=False)
                assert r.returncode == 0, r
            direct_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(n):
                op = await lrm.submit("d", "monitor")
                res = (await lrm.operation("d", op["id"], wait=60))["result"]
                assert res["rc"] == 0, res
            lrm_s.append(time.perf_counter() - t0)
            # The recurring path (how monitors run all day): a monitor every 0.1 s, results on change, so
            # nothing is written while Dummy keeps answering 0. A cycle is due + queue + run + bookkeeping;
            # minus the interval it is the LRM's cost of one monitor, next to the direct loop's per-op time.
            t_first: list[float] = []
            count = [0]
            got = asyncio.Event()

            def seen(body: dict[str, Any], result: Any) -> None:
                if result.trigger == "recurring":
                    count[0] += 1
                    if count[0] == 1:
                        t_first.append(time.perf_counter())
                    if count[0] == n + 1:
                        t_first.append(time.perf_counter())
                        got.set()

            lrm.listeners.append(seen)
            mon = await lrm.submit("d", "monitor", interval=RECURRING_INTERVAL)
            await got.wait()
            await lrm.cancel("d", mon["id"])
            lrm.listeners.remove(seen)
            rec_s.append((t_first[1] - t_first[0]) - n * RECURRING_INTERVAL)
            print(f"  round: direct {direct_s[-1] / n * 1000:.2f} ms/op, LRM {lrm_s[-1] / n * 1000:.2f} ms/op "
                  f"(one-shot, recorded), {rec_s[-1] / n * 1000:.2f} ms/op (recurring, beyond the interval)",
                  flush=True)
        return {"n": n, "runs": runs, "direct_s": direct_s, "lrm_s": lrm_s, "recurring_s": rec_s,
                "recurring_ms_per_op": median(rec_s) / n * 1000,
                "recurring_overhead_pct": (median(rec_s) / median(direct_s) - 1) * 100,
                "direct_ms_per_op": median(direct_s) / n * 1000, "lrm_ms_per_op": median(lrm_s) / n * 1000,
                "overhead_pct": (median(lrm_s) / median(direct_s) - 1) * 100,
                "writer_commits": rt.writer.batches}
    finally:
        await _close(rt, lrm)


# --------------------------------------------------------------------- scale


async def scale(work: Path, instances: int, interval: float, minutes: float) -> dict[str, Any]:
    rt, lrm = await _open(work)
    try:
        t_setup = time.perf_counter()
        for i in range(instances):
            name = f"r{i:04d}"
            await lrm.add(name, DUMMY, params={"state": str(work / f"{name}.state")})
            op = await lrm.submit(name, "start")
            assert (await lrm.operation(name, op["id"], wait=60))["result"]["rc"] == 0
            await lrm.submit(name, "monitor", interval=interval)
        setup_s = time.perf_counter() - t_setup
        print(f"  {instances} instances added, started and monitored in {setup_s:.1f} s; warming up "
              f"{interval:g} s", flush=True)
        await asyncio.sleep(interval)  # a benchmark may wait for time: this is the steady state it measures
        j0 = len(lrm.jitter)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = time.perf_counter()
        done0 = sum(lrm.finished.values())
        await asyncio.sleep(minutes * 60)
        wall = time.perf_counter() - w0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        jit = sorted(list(lrm.jitter)[j0:])
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        children = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)

        def q(p: float) -> float:
            return jit[min(len(jit) - 1, int(p * len(jit)))] if jit else float("nan")

        bad = sum(1 for (a, s), v in lrm.finished.items() if s != "done" for _ in range(v))
        return {"instances": instances, "interval": interval, "minutes": minutes, "setup_s": setup_s,
                "wall_s": wall, "cpu_s": cpu, "cpu_pct_of_core": cpu / wall * 100,
                "children_cpu_s": children, "runs": len(jit), "finished_ops": sum(lrm.finished.values()) - done0,
                "jitter_p50_s": q(0.50), "jitter_p99_s": q(0.99), "jitter_max_s": jit[-1] if jit else float("nan"),
                "jitter_mean_s": statistics.fmean(jit) if jit else float("nan"), "not_done": bad,
                "states": lrm.stats()["states"]}
    finally:
        await _close(rt, lrm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="monitors per round and mode")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--interval", type=float, default=30.0)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="n=50, runs=3, 100 instances, 10 s interval, 1 minute")
    ap.add_argument("--no-scale", dest="scale", action="store_false")
    ap.add_argument("--child-scale", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    args = ap.parse_args()
    if args.quick:
        args.n, args.runs, args.instances, args.interval, args.minutes = 50, 3, 100, 10.0, 1.0
    if args.child_scale:
        out = asyncio.run(scale(Path(args.dir), args.instances, args.interval, args.minutes))
        print("RESULT " + json.dumps(out), flush=True)
        return
    work = Path(tempfile.mkdtemp(prefix="tenure-lrm-", dir=args.dir))
    report = Report("lrm", benchkit.machine(work, quiet_wait=args.quiet_wait), vars(args))
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    try:
        con.print(f"overhead: {args.n} monitors of Dummy per round, {args.runs} rounds")
        (work / "overhead").mkdir()
        ov = asyncio.run(overhead(work / "overhead", args.n, args.runs))
        report.results.append({"mode": "overhead", **ov})
        benchkit.print_table("Monitor of Dummy, one at a time", ("mode", "ms/op (median)", "rounds"), [
            ("direct loop (the limit)", f"{ov['direct_ms_per_op']:.2f}", args.runs),
            ("LRM, one-shot (accepted and result committed)", f"{ov['lrm_ms_per_op']:.2f}", args.runs),
            ("LRM, recurring (per cycle minus the interval)", f"{ov['recurring_ms_per_op']:.2f}", args.runs)])
        report.goals.append(Goal("LRM overhead, one-shot monitors (each recorded durably)", ov["overhead_pct"], 15.0,
                                 "%", higher_is_better=False,
                                 detail=f"{ov['lrm_ms_per_op']:.2f} vs {ov['direct_ms_per_op']:.2f} ms/op"))
        report.goals.append(Goal("LRM overhead, recurring monitors (report on change)", ov["recurring_overhead_pct"],
                                 15.0, "%", higher_is_better=False,
                                 detail=f"{ov['recurring_ms_per_op']:.2f} vs {ov['direct_ms_per_op']:.2f} ms/op"))
        if args.scale:
            (work / "scale").mkdir()
            con.print(f"scale: {args.instances} instances, monitors every {args.interval:g} s, measured "
                      f"{args.minutes:g} min (in a fresh process)")
            cmd = [sys.executable, __file__, "--child-scale", "--dir", str(work / "scale"),
                   "--instances", str(args.instances), "--interval", str(args.interval),
                   "--minutes", str(args.minutes)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                report.notes.append(f"scale run failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
            else:
                sc = json.loads(line[7:])
                report.results.append({"mode": "scale", **sc})
                benchkit.print_table("Recurring monitors", ("measure", "value"), [
                    ("runs measured", sc["runs"]), ("LRM process CPU", f"{sc['cpu_pct_of_core']:.2f}% of a core"),
                    ("children CPU", f"{sc['children_cpu_s']:.1f} s"),
                    ("jitter p50 / p99 / max", f"{fmt(sc['jitter_p50_s'] * 1000)} / "
                     f"{fmt(sc['jitter_p99_s'] * 1000)} / {fmt(sc['jitter_max_s'] * 1000)} ms"),
                    ("operations not done", sc["not_done"])])
                report.goals.append(Goal("LRM process CPU, children excluded", sc["cpu_pct_of_core"], 5.0,
                                         "% of a core", higher_is_better=False,
                                         detail=f"{args.instances} instances, {args.interval:g} s monitors"))
                report.goals.append(Goal("monitor start jitter p99", sc["jitter_p99_s"], 1.0, "s",
                                         higher_is_better=False, detail=f"{sc['runs']} recurring runs"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    benchkit.finish(report)


if __name__ == "__main__":
    main()
