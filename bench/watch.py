#!/usr/bin/env python3
"""The watch API under load: commit-to-delivery latency and memory per idle watcher, index vs broadcast.

    python3 dev.py bench watch [--watchers 1000] [--rate 2000] [--seconds 20] [--runs 3] ...

One ``tenure serve`` process (SQLite, fresh temp data dir, 127.0.0.1 only, log level as shipped) per
dispatcher and run, pinned to core 0 with ``taskset``; the clients share core 1 (when there are 2+
cores). Dispatchers, measured in the same run with the rounds interleaved (medians reported):

index      the hub as shipped: a watcher is filed under its most selective pinned label, an event is
           compared only with the watchers filed under its own labels
broadcast  the baseline (``tenure serve --watch-dispatch broadcast``, hidden): every event is compared
           with every watcher's filter, then the matching ones get it

Each run: a pool ``[1, 16000000]``; a warm-up (10 watchers receive a few events, then close); then
``--watchers`` watchers ``GET /v1/watch?kind=claim&selector=host=hN`` (one per host h0..hN-1, admin
token), opened in two halves by a client process (``benchkit/watchclient.py``: raw asyncio protocols,
minimal HTTP/1.1 + SSE reader, uvloop). Memory per idle watcher = server RSS (VmRSS) with every
watcher open and idle minus RSS with none (after the warm-up), over ``--watchers``; each reading is
taken once the server reports the watchers open and RSS stopped moving. The second half alone gives
the slope (``--watchers`` / 2 more watchers), which leaves out one-time growth.

Then a separate load process commits ``--rate`` claims (= events) per second for ``--seconds``, paced
(open loop over ``--connections`` keep-alive connections), as bulk requests of ``--keys`` claims for one
host, the hosts in turn (each watcher gets ``rate / watchers`` events per second). A request the server
makes late is sent at once, but none after ``--seconds`` + ``--grace``: a server that cannot keep up
shows as a lower committed rate over the same window, not as a longer run. Every event the watchers
receive is timed: ``time.time()`` when its bytes arrive minus the event's ``ts``. ``ts`` is taken when the writer starts
the batch, so the latency includes applying the batch and its commit (fsync), then the dispatch, the
SSE write and the client. Reported per dispatcher: p50 / p99 / max latency, events committed vs
delivered (each exactly once, to its own host's watcher, in order), the achieved commit rate, the
server's CPU per event and share of its core during the load, and the clients' CPU (to show that they
are not the bottleneck).

Goals (issue): p99 commit-to-delivery <= 100 ms with 1,000 watchers at 2,000 events/s; memory per idle
watcher <= 20 kB (20,000 bytes; etcd: about 35 kB per connection plus stream). ``--heavy-watchers`` adds
a variant with more watchers (default 5,000, one run, both dispatchers) where broadcast pays for every
watcher on every event. ``--trace-gc`` runs the server under ``benchkit/gctrace.py`` (a ``gc.callbacks``
hook, nothing else changed) and reports its cyclic-GC pauses during the load next to the slow deliveries.
Bounded: loopback only, every phase has a timeout, servers are stopped at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package (urllib.request imports http.client):
# keep this folder off the front of sys.path; benchkit is found at the end.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Goal, Report, fmt, median  # noqa: E402
from benchkit.server import TenureServer, taskset  # noqa: E402

CLIENT = HERE / "benchkit" / "watchclient.py"
GCTRACE = HERE / "benchkit" / "gctrace.py"
RANGE = [1, 16_000_000]
MODES = ("index", "broadcast")


# ------------------------------------------------------------------------------------------- processes


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon (status) and Pss (smaps_rollup) of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon"):
            out[k] = int(v.split()[0]) * 1024
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


class Server(TenureServer):
    """The benchmark's server: a dispatcher mode, optionally under the GC tracing hook."""

    def __init__(self, data_dir: Path, mode: str, log_level: str, cpu: str | None, gc_log: Path | None) -> None:
        self.mode = mode
        self.gc_log = gc_log
        command = [sys.executable, str(GCTRACE), str(gc_log)] if gc_log else None
        super().__init__(data_dir, log_level, cpu, command=command, extra=["--watch-dispatch", mode])

    def log_warnings(self) -> list[str]:
        return [ln for ln in self.log_lines() if "level=warning" in ln or "level=error" in ln or "Traceback" in ln]

    def health(self) -> dict[str, Any]:
        return self.call("GET", "/healthz")[1]

    def watch_metrics(self) -> dict[str, float]:
        status, text = self.call("GET", "/metrics", raw=True)
        out: dict[str, float] = {}
        if status == 200:
            for line in text.splitlines():
                if line.startswith("tenure_watch"):
                    name, _, value = line.rpartition(" ")
                    out[name] = float(value)
        return out

    def memory(self) -> dict[str, int]:
        return proc_memory(self.proc.pid)

    def settled_memory(self, max_wait: float = 8.0) -> dict[str, int]:
        """Memory once RSS stops moving (two readings 0.5 s apart within 16 KiB), or after ``max_wait``."""
        deadline = time.monotonic() + max_wait
        last = self.memory()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.memory()
            if abs(now["VmRSS"] - last["VmRSS"]) <= 16 * 1024:
                return now
            last = now
        return last

    def wait_watchers(self, n: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while True:
            w = self.health().get("watchers", -1)
            if w == n or time.monotonic() > deadline:
                return w
            time.sleep(0.1)


class WatcherProc:
    """One watchers client process (benchkit/watchclient.py watchers), driven by JSON lines."""

    def __init__(self, url: str, token: str, cpu: str | None, log: Path, extra: tuple[str, ...] = ()) -> None:
        self.logpath = log
        self.log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(taskset([sys.executable, str(CLIENT), "watchers", url, token, *extra], cpu),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1, start_new_session=True)
        self.recv()  # {"ready": true}

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = self.logpath.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"watchers client exited ({self.proc.poll()}):\n{tail}")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def ask_all(procs: list[WatcherProc], cmds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for p, c in zip(procs, cmds, strict=True):
        p.send(c)
    return [p.recv() for p in procs]


def drain(procs: list[WatcherProc], expected: int, quiet: float) -> None:
    """Wait until the watchers received ``expected`` events, or nothing more arrived for ``quiet`` seconds."""
    last, changed = -1, time.monotonic()
    while True:
        got = sum(x["events"] for x in ask_all(procs, [{"cmd": "count"}] * len(procs)))
        now = time.monotonic()
        if got != last:
            last, changed = got, now
        if got >= expected or now - changed > quiet:
            return
        time.sleep(0.1)


def split_hosts(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    n = hi - lo
    bounds = [lo + n * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def percentile(sorted_xs: list[float], q: float) -> float:
    if not sorted_xs:
        return float("nan")
    i = min(len(sorted_xs) - 1, max(0, math.ceil(q / 100 * len(sorted_xs)) - 1))  # nearest rank
    return sorted_xs[i]


# ------------------------------------------------------------------------------------------------ one run


def measure(mode: str, run: int, watchers: int, seconds: float, args: argparse.Namespace, workdir: Path, pin: bool,
            con: Any, label: str) -> dict[str, Any]:
    server_cpu, client_cpu = ("0", "1") if pin else (None, None)
    data_dir = workdir / f"data-{label}-{mode}-r{run}"
    data_dir.mkdir()
    gc_log = workdir / f"gc-{label}-{mode}-r{run}.log" if args.trace_gc else None
    server = Server(data_dir, mode, args.server_log_level, server_cpu, gc_log)
    procs: list[WatcherProc] = []
    res: dict[str, Any] = {"mode": mode, "variant": label, "run": run + 1, "watchers": watchers,
                           "offered_rate": args.rate, "seconds": seconds}
    try:
        status, body = server.call("POST", "/v1/pools", {"name": "bench", "ranges": [RANGE], "strategy": "random"})
        if status != 201:
            raise RuntimeError(f"creating the pool: {status} {body}")
        procs = [WatcherProc(server.url, server.token, client_cpu, workdir / f"watchers-{i}.log")
                 for i in range(args.watcher_procs)]

        # Warm-up: the code paths of a watch and of a delivery run once before the baseline reading.
        procs[0].send({"cmd": "open", "hosts": [0, 10]})
        r = procs[0].recv()
        if r["failed"]:
            raise RuntimeError(f"warm-up watchers failed: {r['errors']}")
        for i in range(10):
            server.call("POST", "/v1/pools/bench/claims:bulk", {"claims": [{"key": f"warm-{i}-{k}"} for k in range(4)],
                                                                 "host": f"h{i}"})
        time.sleep(0.5)
        procs[0].send({"cmd": "close"})
        procs[0].recv()
        server.wait_watchers(0)
        mem0 = server.settled_memory()

        # Idle watchers, in two halves: memory with none, half, all.
        opened_s = 0.0
        mems = []
        for lo, hi in ((0, watchers // 2), (watchers // 2, watchers)):
            rs = ask_all(procs, [{"cmd": "open", "hosts": list(h)} for h in split_hosts(lo, hi, len(procs))])
            failed = sum(x["failed"] for x in rs)
            if failed:
                raise RuntimeError(f"{failed} watchers failed to open: {[e for x in rs for e in x['errors']][:5]}")
            opened_s += max(x["seconds"] for x in rs)
            seen = server.wait_watchers(hi)
            if seen != hi:
                raise RuntimeError(f"server reports {seen} watchers, expected {hi}")
            mems.append(server.settled_memory())
        mem_half, mem_full = mems
        per_watcher = (mem_full["VmRSS"] - mem0["VmRSS"]) / watchers
        slope = (mem_full["VmRSS"] - mem_half["VmRSS"]) / (watchers - watchers // 2)
        res["memory"] = {"before": mem0, "half": mem_half, "all": mem_full, "open_seconds": round(opened_s, 2),
                         "rss_per_watcher": round(per_watcher), "rss_slope_per_watcher": round(slope),
                         "pss_per_watcher": round((mem_full.get("Pss", 0) - mem0.get("Pss", 0)) / watchers),
                         "anon_per_watcher": round((mem_full["RssAnon"] - mem0["RssAnon"]) / watchers)}

        # The load.
        ask_all(procs, [{"cmd": "reset"}] * len(procs))
        metrics0 = server.watch_metrics()
        cpu0, t0, epoch0 = server.cpu_seconds(), time.monotonic(), time.time()
        load_cmd = taskset([sys.executable, str(CLIENT), "load", server.url, server.token, "bench",
                             "--hosts", f"0:{watchers}", "--rate", str(args.rate), "--seconds", str(seconds),
                             "--keys", str(args.keys), "--connections", str(args.connections),
                             "--prefix", f"r{run}", "--grace", str(args.grace)], client_cpu)
        out = subprocess.run(load_cmd, capture_output=True, text=True, timeout=seconds * 2 + 120, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"load client failed ({out.returncode}):\n{out.stderr[-3000:]}")
        load = json.loads(out.stdout.strip().splitlines()[-1])
        load_end = time.monotonic()
        drain(procs, load["created"], args.drain)
        drain_s = time.monotonic() - load_end
        cpu = server.cpu_seconds() - cpu0
        wall = time.monotonic() - t0
        stats = ask_all(procs, [{"cmd": "stats"}] * len(procs))
        metrics1 = server.watch_metrics()
        health = server.health()

        lat = sorted(x for s in stats for x in s["lat"])
        # Latency second by second (by commit time): do the slow deliveries cluster?
        pairs = [(t, x) for s in stats for t, x in zip(s["ts"], s["lat"], strict=True)]
        t_first = min((t for t, _ in pairs), default=0.0)
        buckets: dict[int, list[float]] = {}
        for t, x in pairs:
            buckets.setdefault(int(t - t_first), []).append(x)
        per_second = [{"second": k, "events": len(v), "max_ms": round(max(v) * 1000, 1),
                       "p99_ms": round(percentile(sorted(v), 99) * 1000, 1)} for k, v in sorted(buckets.items())]
        res["first_event_ts"] = round(t_first, 3)  # epoch seconds: "second" below counts from here
        res["worst_seconds"] = sorted(per_second, key=lambda b: -b["max_ms"])[:5]
        res["seconds_with_max_over_100ms"] = sum(1 for b in per_second if b["max_ms"] > 100)
        if gc_log is not None:
            res["gc"] = gc_report(gc_log, epoch0, time.time(), [(t, x) for t, x in pairs if x > 0.1])
        revs = [r for s in stats for r in s["revs"]]
        committed = set(load["revisions"])
        delivered = set(revs)
        rev_span = (max(committed) - min(committed) + 1) if committed else 0
        res["load"] = {k: v for k, v in load.items() if k != "revisions"}
        res["load"]["revision_span"] = rev_span
        res["achieved_rate"] = rev_span / load["wall"] if load["wall"] else float("nan")
        res["committed"] = len(committed)
        res["delivered"] = len(revs)
        res["missing"] = len(committed - delivered)
        res["duplicates"] = len(revs) - len(delivered)
        res["unexpected"] = len(delivered - committed)
        res["wrong_host"] = sum(s["wrong_host"] for s in stats)
        res["out_of_order"] = sum(s["out_of_order"] for s in stats)
        res["disconnects"] = sum(s["disconnects"] for s in stats)
        res["client_errors"] = [e for s in stats for e in s["errors"]][:10]
        res["bookmarks"] = sum(s["bookmarks"] for s in stats)
        res["still_open"] = health.get("watchers")
        res["exact"] = (res["missing"] == 0 and res["duplicates"] == 0 and res["unexpected"] == 0
                        and res["wrong_host"] == 0 and res["out_of_order"] == 0 and load["non_2xx"] == 0
                        and not load["errors"] and res["disconnects"] == 0)
        res["latency_ms"] = {"p50": percentile(lat, 50) * 1000, "p90": percentile(lat, 90) * 1000,
                             "p99": percentile(lat, 99) * 1000, "p999": percentile(lat, 99.9) * 1000,
                             "max": (lat[-1] * 1000) if lat else float("nan"),
                             "min": (lat[0] * 1000) if lat else float("nan")}
        res["server_cpu_s"] = round(cpu, 3)
        res["server_cpu_per_event_us"] = cpu / max(len(committed), 1) * 1e6
        res["server_cpu_share"] = cpu / wall
        res["drain_s"] = round(drain_s, 2)
        res["watchers_client_cpu_share"] = max(s["cpu"] / s["wall"] for s in stats)
        res["load_client_cpu_share"] = load["cpu"] / max(load["wall"], 1e-9)
        res["hub"] = {k: metrics1.get(k, 0) - metrics0.get(k, 0) for k in metrics1}
        res["server_warnings"] = server.log_warnings()[-10:]
        la = res["latency_ms"]
        con.print(
            f"  {label:<7} run {run + 1}  {mode:<9} {watchers:>5} watchers  mem/watcher {fmt(per_watcher)} B "
            f"(slope {fmt(slope)})  rate {fmt(res['achieved_rate'])}/s  delivered {res['delivered']:,}/"
            f"{res['committed']:,}  p50 {la['p50']:.1f} ms  p99 {la['p99']:.1f} ms  max {la['max']:.0f} ms  "
            f"server cpu {res['server_cpu_per_event_us']:.0f} us/event ({res['server_cpu_share']:.0%} of its core)  "
            f"clients cpu {res['watchers_client_cpu_share']:.0%}+{res['load_client_cpu_share']:.0%}  "
            f"{'exact' if res['exact'] else 'NOT EXACT'}")
        if "gc" in res:
            g = res["gc"]
            con.print(f"    server GC during the load: {g['full_collections']} full collections (median "
                      f"{g['full_median_ms']} ms, max {g['full_max_ms']} ms), {g['total_pause_ms']:.0f} ms paused "
                      f"in all; "
                      f"deliveries over 100 ms: {g['deliveries_over_100ms']}, of which during or just after a GC pause "
                      f"over 10 ms: {g['of_which_hit_by_a_gc_pause_over_10ms']}")
        if not res["exact"]:
            con.print(f"    missing {res['missing']} dup {res['duplicates']} unexpected {res['unexpected']} wrong host "
                      f"{res['wrong_host']} out of order {res['out_of_order']} disconnects {res['disconnects']} "
                      f"non-2xx {load['non_2xx']} errors {load['errors'][:3]} {res['client_errors'][:3]}")
    finally:
        for p in procs:
            p.stop()
        server.stop()
        benchkit.RESULTS.mkdir(parents=True, exist_ok=True)
        (benchkit.RESULTS / f"watch-server-last-{mode}.log").write_text(server.log_tail(200) + "\n")
    return res


def gc_report(path: Path, t0: float, t1: float, slow: list[tuple[float, float]]) -> dict[str, Any]:
    """The server's GC pauses between t0 and t1, and how many slow deliveries (ts, latency) overlap one.

    A delivery counts as hit by a pause when its span from commit to receipt overlaps a pause of 10 ms or
    more, or begins within 0.25 s after one ended (the events queued behind the pause).
    """
    pauses = []  # (start, end, generation, ms)
    for line in path.read_text().splitlines() if path.exists() else []:
        end, gen, ms, _ = line.split()
        if t0 <= float(end) <= t1:
            pauses.append((float(end) - float(ms) / 1000, float(end), int(gen), float(ms)))
    full = [p for p in pauses if p[2] == 2]
    big = [p for p in pauses if p[3] >= 10]
    overlapping = sum(1 for t, x in slow if any(s < t + x and e + 0.25 > t for s, e, _, _ in big))
    return {"pauses_over_1ms": len(pauses), "total_pause_ms": round(sum(p[3] for p in pauses), 1),
            "full_collections": len(full), "full_max_ms": round(max((p[3] for p in full), default=0.0), 1),
            "full_median_ms": round(median([p[3] for p in full]), 1) if full else 0.0,
            "deliveries_over_100ms": len(slow), "of_which_hit_by_a_gc_pause_over_10ms": overlapping,
            "pauses": [[round(e, 3), g, ms] for _, e, g, ms in pauses if ms >= 10]}


def summarise(rs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(f: Any) -> float:
        return median([f(r) for r in rs])

    return {
        "mode": rs[0]["mode"], "variant": rs[0]["variant"], "watchers": rs[0]["watchers"],
        "offered_rate": rs[0]["offered_rate"],
        "median_achieved_rate": round(med(lambda r: r["achieved_rate"]), 1),
        "median_p50_ms": round(med(lambda r: r["latency_ms"]["p50"]), 2),
        "median_p99_ms": round(med(lambda r: r["latency_ms"]["p99"]), 2),
        "median_max_ms": round(med(lambda r: r["latency_ms"]["max"]), 1),
        "committed": sum(r["committed"] for r in rs), "delivered": sum(r["delivered"] for r in rs),
        "exact": all(r["exact"] for r in rs),
        "median_server_cpu_per_event_us": round(med(lambda r: r["server_cpu_per_event_us"]), 1),
        "median_server_cpu_share": round(med(lambda r: r["server_cpu_share"]), 3),
        "max_watchers_client_cpu_share": round(max(r["watchers_client_cpu_share"] for r in rs), 3),
        "max_load_client_cpu_share": round(max(r["load_client_cpu_share"] for r in rs), 3),
        "median_rss_per_watcher": round(med(lambda r: r["memory"]["rss_per_watcher"])),
        "median_rss_slope_per_watcher": round(med(lambda r: r["memory"]["rss_slope_per_watcher"])),
        "median_pss_per_watcher": round(med(lambda r: r["memory"]["pss_per_watcher"])),
        "runs": rs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--watchers", type=int, default=1000, help="concurrent SSE watchers, one per host")
    ap.add_argument("--rate", type=float, default=2000.0, help="events (claims) committed per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of the load in each run")
    ap.add_argument("--runs", type=int, default=3, help="runs per dispatcher (median reported)")
    ap.add_argument("--modes", default=",".join(MODES), help="dispatchers to measure: index,broadcast")
    ap.add_argument("--keys", type=int, default=4, help="claims per bulk request (all for one host)")
    ap.add_argument("--connections", type=int, default=16, help="load client's keep-alive connections")
    ap.add_argument("--watcher-procs", type=int, default=1, help="client processes sharing the watchers")
    ap.add_argument("--heavy-watchers", type=int, default=5000,
                    help="extra variant with this many watchers (one run per dispatcher, same rate); 0 skips it")
    ap.add_argument("--heavy-seconds", type=float, default=10.0, help="duration of the load in the heavy variant")
    ap.add_argument("--grace", type=float, default=1.0,
                    help="the load sends nothing later than --seconds + this after its start (a server that "
                         "falls behind shows as a lower achieved rate)")
    ap.add_argument("--drain", type=float, default=10.0,
                    help="after the load, wait until every event arrived or none arrived for this many seconds")
    ap.add_argument("--trace-gc", action="store_true",
                    help="run the server under benchkit/gctrace.py (a gc.callbacks hook) and report its cyclic GC "
                         "pauses during the load, and how many deliveries over 100 ms overlap one")
    ap.add_argument("--server-log-level", default="info", help="tenure serve --log-level (shipped default: info)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the server and the clients to separate cores")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="wait up to this many seconds for other processes to quiet down before starting")
    ap.add_argument("--dir", default=None, help="parent of the temp data dirs")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            sys.exit(f"bench watch: unknown dispatcher {m!r} (index, broadcast)")
    if args.watchers < 2:
        sys.exit("bench watch: --watchers must be at least 2")
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2

    workdir = Path(tempfile.mkdtemp(prefix="tenure-watch-", dir=args.dir))
    report = Report("watch", benchkit.machine(workdir, quiet_wait=args.quiet_wait), {**vars(args), "pinned": pin})
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    con.print(f"{'server on core 0, clients (watchers + load) on core 1' if pin else 'not pinned'}; "
              f"latency = client receive time - event ts (ts = start of the commit batch: includes the fsync)")
    variants = [("main", args.watchers, args.runs, args.seconds)]
    if args.heavy_watchers:
        variants.append(("heavy", args.heavy_watchers, 1, args.heavy_seconds))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for label, watchers, runs, seconds in variants:
            for run in range(runs):
                for mode in modes:  # rounds interleaved: drift hits both dispatchers alike
                    r = measure(mode, run, watchers, seconds, args, workdir, pin, con, label)
                    results.setdefault((label, mode), []).append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for (label, mode), rs in results.items():
        s = summarise(rs)
        report.results.append(s)
        p99_runs = " / ".join(f"{r['latency_ms']['p99']:.0f}" for r in rs)
        rows.append((f"{label}: {mode}", f"{s['watchers']:,}",
                     f"{fmt(s['median_achieved_rate'])} / {fmt(s['offered_rate'])}",
                     f"{s['delivered']:,} / {s['committed']:,}", f"{s['median_p50_ms']:.1f}",
                     f"{s['median_p99_ms']:.1f} ({p99_runs})",
                     f"{s['median_max_ms']:.0f}", f"{s['median_server_cpu_per_event_us']:.0f}",
                     f"{s['median_server_cpu_share']:.0%}",
                     f"{s['max_watchers_client_cpu_share']:.0%} + {s['max_load_client_cpu_share']:.0%}",
                     f"{fmt(s['median_rss_per_watcher'])} ({fmt(s['median_rss_slope_per_watcher'])})",
                     "yes" if s["exact"] else "NO"))
        if label == "main" and mode == "index":
            report.goals.append(Goal(f"watch p99 commit-to-delivery, {s['watchers']:,} watchers, "
                                     f"{fmt(args.rate)} events/s", s["median_p99_ms"], 100, "ms",
                                     higher_is_better=False, detail="includes the commit's fsync"))
            report.goals.append(Goal("watch memory per idle watcher (server RSS)", s["median_rss_per_watcher"],
                                     20_000, "bytes", higher_is_better=False,
                                     detail=f"slope {fmt(s['median_rss_slope_per_watcher'])} B; etcd ~35 kB"))
            report.goals.append(Goal("watch load reached the offered rate", s["median_achieved_rate"],
                                     args.rate * 0.98, "events/s", detail="the load is paced: not a throughput test"))
            report.goals.append(Goal("every committed event delivered once, to its host, in order",
                                     1.0 if s["exact"] else 0.0, 1.0, "",
                                     detail=f"{s['delivered']:,} delivered / {s['committed']:,} committed"))
        if s["max_watchers_client_cpu_share"] > 0.7 or s["max_load_client_cpu_share"] > 0.7:
            report.notes.append(f"{label}/{mode}: a client process used over 70 % of its core: the client may limit "
                                f"the measurement (try --watcher-procs 2 or --no-pin)")
    benchkit.print_table(
        f"Watch: SSE watchers filtered to their own host, {fmt(args.rate)} events/s for {args.seconds:g} s "
        f"(heavy: {args.heavy_seconds:g} s, 1 run); "
        f"latency = receive - commit-batch ts (includes fsync); median of {args.runs}",
        ["dispatcher", "watchers", "events/s committed / offered", "delivered / committed", "p50 ms",
         "p99 ms (runs)", "max ms", "server CPU us/event", "server core busy", "client CPU watchers + load",
         "RSS B/idle watcher (slope)", "exact"], rows)
    benchkit.finish(report)


if __name__ == "__main__":
    main()
