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

The peer, in the same rounds: Pacemaker's executor (``pacemaker-remoted``, which is pacemaker-execd
built standalone; Debian's pacemaker-remote) started in the work directory on its local IPC, driven
through its own client library (liblrmd) by ``bench/execd/execd_monitor.c`` (built here with Debian's
pacemaker-dev) over one connection kept for the round: the same Dummy, started, then ``--n`` monitors each
waited for, and a recurring monitor every 0.1 s: ``--n`` cycles from its first run's result (execd reports
every run to its client), minus ``--n`` intervals. And ``tenure agent`` in its own process on loopback TCP,
driven over its HTTP API by the Python client (one connection): ``--n`` monitors, each one request (submitted
with ``wait``, answered with its result, as the CLI does); the agent process's own CPU from /proc. Goal
(issue 18): its overhead at most 1.5x execd's.
Executor CPU per operation: execd's own utime+stime from /proc (its agents excluded); the LRM's, the
bench process's own CPU (getrusage, children excluded) over the LRM loop, the bench's loop included.
Goals (issue 18): one-shot overhead through the LRM at most execd's; recurring CPU per run at most
execd's. The overheads these goals compare are medians of per-round differences (each column minus the
same round's loop): the columns of a round run back to back, so they share its machine, and a noisy round
shakes both sides. Without the packages the execd column is left out with a note.

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
import signal  # noqa: E402
import socket  # noqa: E402
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
from benchkit import Goal, Report, fmt, median, paired_median  # noqa: E402
from benchkit.server import proc_cpu_seconds, stop_process  # noqa: E402

DUMMY = "ocf:heartbeat:Dummy"
REMOTED = Path("/usr/sbin/pacemaker-remoted")
CLIENT_SRC = HERE / "execd" / "execd_monitor.c"
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


# ------------------------------------------------------------------ the peer: pacemaker-execd


class Execd:
    """pacemaker-remoted in ``work`` (local IPC; its TLS listener on a free port) and the liblrmd client."""

    def __init__(self, work: Path) -> None:
        missing = [str(p) for p in (REMOTED, Path("/usr/include/pacemaker/crm/lrmd.h")) if not p.exists()]
        if missing:
            raise RuntimeError(f"not installed: {', '.join(missing)} (scripts/system-deps installs them)")
        others = _executors_running()
        if others:  # its local IPC name would be taken: the client would measure that one
            raise RuntimeError(f"another Pacemaker executor is running ({', '.join(others)}): stop it first")
        self.client = work / "execd_monitor"
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "pacemaker-lrmd"], capture_output=True,
                               text=True, check=True).stdout.split()
        subprocess.run(["gcc", "-O2", "-o", str(self.client), str(CLIENT_SRC), *flags], check=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PCMK_remote_port": str(port),
               "PCMK_logfile": str(work / "remoted.log"), "PCMK_logfacility": "none"}
        self.log = open(work / "remoted.out", "wb")
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.proc = subprocess.Popen([str(REMOTED)], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            self.state = work / "execd.state"
            deadline = time.monotonic() + 30
            while True:  # ready when its client can connect and run a start
                r = subprocess.run([str(self.client), "oneshot", "1", str(self.state)], capture_output=True,
                                   text=True, timeout=60, check=False)
                if r.returncode == 0 and self.proc.poll() is None:
                    break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pacemaker-remoted did not serve: {r.stderr.strip()} "
                                       f"(see {work / 'remoted.log'})")
                time.sleep(0.1)  # polling a daemon's readiness, not waiting for time to pass
        except BaseException:
            self.close()
            raise

    def _pid(self) -> int:
        assert self.proc is not None and self.proc.poll() is None, "pacemaker-remoted is gone"
        return self.proc.pid

    def oneshot(self, n: int) -> tuple[float, float]:
        """(seconds of n monitors, each waited for; execd's CPU seconds meanwhile)."""
        c0 = proc_cpu_seconds(self._pid())
        r = subprocess.run([str(self.client), "oneshot", str(n), str(self.state)], capture_output=True, text=True,
                           timeout=600, check=True)
        cpu = proc_cpu_seconds(self._pid()) - c0
        times = [float(x) for x in r.stdout.split()]
        assert len(times) == n, r.stdout
        return sum(times) / 1e6, cpu

    def recurring(self, n: int, interval: float) -> tuple[float, float]:
        """(seconds of n recurring runs every ``interval``; execd's CPU seconds meanwhile)."""
        c0 = proc_cpu_seconds(self._pid())
        r = subprocess.run([str(self.client), "recurring", str(n), str(self.state), str(int(interval * 1000))],
                           capture_output=True, text=True, timeout=600, check=True)
        return float(r.stdout) / 1e6, proc_cpu_seconds(self._pid()) - c0

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, grace=30)
        self.log.close()


def _executors_running() -> list[str]:
    """Pacemaker executors already running on this machine (name and pid)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                name = (d / "comm").read_text().strip()
            except OSError:
                continue
            if name.startswith(("pacemaker-execd", "pacemaker-remot")):  # comm is cut at 15 characters
                found.append(f"{name} {d.name}")
    return found


# ------------------------------------------------------------------ tenure agent, over its HTTP API


class AgentApi:
    """``tenure agent`` (its own process, TCP on loopback) and the Python client, as an operator's tool drives it."""

    def __init__(self, work: Path) -> None:
        from tenure.client import TenureClient

        data = work / "agent"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = open(work / "agent.out", "wb")
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tenure", "agent", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
                 "--rsctmp", str(work / "agent-rsctmp"), "--log-level", "warning"],
                stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
            token_file = data / "admin.token"
            deadline = time.monotonic() + 60
            while True:  # ready when its admin token is written and it answers with it
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tenure agent did not serve (see {work / 'agent.out'})")
                if token_file.exists():
                    client = TenureClient(f"http://127.0.0.1:{port}", token_file.read_text().strip())
                    try:
                        client.resources()
                        self.client = client
                        break
                    except Exception:
                        client.close()
                time.sleep(0.1)  # polling a daemon's readiness, not waiting for time to pass
            self.client.add_resource("d", DUMMY, params={"state": str(work / "agent-d.state")})
            self._wait(self.client.submit("d", "start"))
        except BaseException:
            self.close()
            raise

    def _wait(self, op: dict[str, Any]) -> None:
        while op.get("result") is None:
            op = self.client.operation("d", op["id"], wait=60)
        assert op["result"]["rc"] == 0, op

    def oneshot(self, n: int) -> tuple[float, float]:
        """(seconds of n monitors submitted and waited for over HTTP; the agent's own CPU seconds meanwhile).

        Each is one request, as ``tenure resource monitor`` makes it: submitted with ``wait``, answered with its
        result (a long poll follows only if it took longer than the wait)."""
        assert self.proc is not None
        c0, t0 = proc_cpu_seconds(self.proc.pid), time.perf_counter()
        for _ in range(n):
            self._wait(self.client.submit("d", "monitor", wait=60))
        return time.perf_counter() - t0, proc_cpu_seconds(self.proc.pid) - c0

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, grace=30)
        self.log.close()


# ------------------------------------------------------------------ overhead


def _paired(xs: list[float], base: list[float], n: int) -> float:
    """The median over rounds of ``xs[i] - base[i]``, per operation, in ms."""
    return paired_median(xs, base) / n * 1000


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def overhead(work: Path, n: int, runs: int, execd: Execd | None, api: AgentApi | None) -> dict[str, Any]:
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
        lrm_cpu: list[float] = []
        rec_cpu: list[float] = []
        ex_s: list[float] = []
        ex_cpu: list[float] = []
        ex_rec_s: list[float] = []
        ex_rec_cpu: list[float] = []
        api_s: list[float] = []
        api_cpu: list[float] = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for _ in range(n):
                r = subprocess.run([str(AGENT), "monitor"], env=env, stdin=subprocess.DEVNULL,
                                   capture_output=True, start_new_session=True, cwd="/", check=False)
                assert r.returncode == 0, r
            direct_s.append(time.perf_counter() - t0)
            if execd is not None:
                secs, cpu = await asyncio.to_thread(execd.oneshot, n)
                ex_s.append(secs)
                ex_cpu.append(cpu)
            if api is not None:
                secs, cpu = await asyncio.to_thread(api.oneshot, n)
                api_s.append(secs)
                api_cpu.append(cpu)
            t0, c0 = time.perf_counter(), _own_cpu()
            for _ in range(n):
                op = await lrm.submit("d", "monitor")
                res = (await lrm.operation("d", op["id"], wait=60))["result"]
                assert res["rc"] == 0, res
            lrm_s.append(time.perf_counter() - t0)
            lrm_cpu.append(_own_cpu() - c0)
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
            c0 = _own_cpu()
            mon = await lrm.submit("d", "monitor", interval=RECURRING_INTERVAL)
            await got.wait()
            rec_cpu.append(_own_cpu() - c0)
            await lrm.cancel("d", mon["id"])
            lrm.listeners.remove(seen)
            rec_s.append((t_first[1] - t_first[0]) - n * RECURRING_INTERVAL)
            if execd is not None:
                secs, cpu = await asyncio.to_thread(execd.recurring, n, RECURRING_INTERVAL)
                ex_rec_s.append(secs - n * RECURRING_INTERVAL)
                ex_rec_cpu.append(cpu)
            peer = (f"; execd {ex_s[-1] / n * 1000:.2f} ms/op one-shot, {ex_rec_s[-1] / n * 1000:.2f} recurring"
                    if execd is not None else "")
            if api is not None:
                peer += f"; tenure agent over HTTP {api_s[-1] / n * 1000:.2f} ms/op"
            print(f"  round: direct {direct_s[-1] / n * 1000:.2f} ms/op, LRM {lrm_s[-1] / n * 1000:.2f} ms/op "
                  f"(one-shot, recorded), {rec_s[-1] / n * 1000:.2f} ms/op (recurring, beyond the interval)"
                  f"{peer}", flush=True)
        out = {"n": n, "runs": runs, "direct_s": direct_s, "lrm_s": lrm_s, "recurring_s": rec_s,
               "recurring_ms_per_op": median(rec_s) / n * 1000,
               "recurring_overhead_pct": (median(rec_s) / median(direct_s) - 1) * 100,
               "direct_ms_per_op": median(direct_s) / n * 1000, "lrm_ms_per_op": median(lrm_s) / n * 1000,
               "overhead_pct": (median(lrm_s) / median(direct_s) - 1) * 100,
               "lrm_cpu_ms_per_op": median(lrm_cpu) / n * 1000, "recurring_cpu_ms_per_op": median(rec_cpu) / n * 1000,
               "writer_commits": rt.writer.batches}
        # Paired by round (each round's columns ran back to back, so they share that round's machine): the
        # overheads the goals compare are medians of per-round differences, less shaken by a noisy round.
        out["lrm_over_ms"] = _paired(lrm_s, direct_s, n)
        if api is not None:
            out["api_over_ms"] = _paired(api_s, direct_s, n)
        if execd is not None:
            out["execd_over_ms"] = _paired(ex_s, direct_s, n)
            out["recurring_cpu_minus_execd_ms"] = _paired(rec_cpu, ex_rec_cpu, n)
        if api is not None:
            out.update({"api_s": api_s, "api_ms_per_op": median(api_s) / n * 1000,
                        "api_overhead_pct": (median(api_s) / median(direct_s) - 1) * 100,
                        "api_cpu_ms_per_op": median(api_cpu) / n * 1000})
        if execd is not None:
            out.update({"execd_s": ex_s, "execd_recurring_s": ex_rec_s,
                        "execd_ms_per_op": median(ex_s) / n * 1000,
                        "execd_overhead_pct": (median(ex_s) / median(direct_s) - 1) * 100,
                        "execd_recurring_ms_per_op": median(ex_rec_s) / n * 1000,
                        "execd_cpu_ms_per_op": median(ex_cpu) / n * 1000,
                        "execd_recurring_cpu_ms_per_op": median(ex_rec_cpu) / n * 1000})
        return out
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
    ap.add_argument("--no-execd", dest="execd", action="store_false", help="leave out pacemaker-execd")
    ap.add_argument("--no-api", dest="api", action="store_false", help="leave out tenure agent over HTTP")
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
        execd = api = None
        try:
            if args.execd:
                try:
                    execd = Execd(work)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    report.notes.append(f"pacemaker-execd not measured: {exc}")
            if args.api:
                try:
                    api = AgentApi(work)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    report.notes.append(f"tenure agent over HTTP not measured: {exc}")
            ov = asyncio.run(overhead(work / "overhead", args.n, args.runs, execd, api))
        finally:
            for peer in (execd, api):
                if peer is not None:
                    peer.close()
        report.results.append({"mode": "overhead", **ov})
        rows = [("direct loop (the limit)", f"{ov['direct_ms_per_op']:.2f}", "", "", args.runs),
                ("LRM, one-shot (accepted and result committed)", f"{ov['lrm_ms_per_op']:.2f}",
                 f"{ov['overhead_pct']:+.0f} %", f"{ov['lrm_cpu_ms_per_op']:.2f}", args.runs),
                ("LRM, recurring (per cycle minus the interval)", f"{ov['recurring_ms_per_op']:.2f}",
                 f"{ov['recurring_overhead_pct']:+.0f} %", f"{ov['recurring_cpu_ms_per_op']:.2f}", args.runs)]
        if api is not None:
            rows.append(("tenure agent over HTTP, one-shot (Python client, one connection)",
                         f"{ov['api_ms_per_op']:.2f}", f"{ov['api_overhead_pct']:+.0f} %",
                         f"{ov['api_cpu_ms_per_op']:.2f}", args.runs))
        if execd is not None:
            rows += [("pacemaker-execd, one-shot (liblrmd, one connection)", f"{ov['execd_ms_per_op']:.2f}",
                      f"{ov['execd_overhead_pct']:+.0f} %", f"{ov['execd_cpu_ms_per_op']:.2f}", args.runs),
                     ("pacemaker-execd, recurring (per cycle minus the interval)",
                      f"{ov['execd_recurring_ms_per_op']:.2f}", "", f"{ov['execd_recurring_cpu_ms_per_op']:.2f}",
                      args.runs)]
        benchkit.print_table("Monitor of Dummy, one at a time",
                             ("mode", "ms/op (median)", "over the loop", "executor CPU ms/op", "rounds"), rows)
        if execd is not None:
            report.goals.append(Goal("LRM one-shot overhead vs pacemaker-execd's (issue 18)",
                                     ov["lrm_over_ms"], ov["execd_over_ms"], "ms/op", higher_is_better=False,
                                     detail="over the loop, medians of per-round differences"))
            if api is not None:
                report.goals.append(Goal("tenure agent over HTTP: one-shot overhead vs 1.5x execd's (issue 18)",
                                         ov["api_over_ms"], 1.5 * ov["execd_over_ms"], "ms/op",
                                         higher_is_better=False,
                                         detail="over the loop, medians of per-round differences"))
            report.goals.append(Goal("recurring monitor CPU per run vs pacemaker-execd's (issue 18)",
                                     ov["recurring_cpu_ms_per_op"], ov["execd_recurring_cpu_ms_per_op"], "ms",
                                     higher_is_better=False,
                                     detail=f"the executor's own CPU, agents excluded; per round, LRM minus execd: "
                                            f"{ov['recurring_cpu_minus_execd_ms']:+.2f} ms (median)"))
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
