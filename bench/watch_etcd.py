#!/usr/bin/env python3
"""The watch against etcd's: same client, same paced load, side by side in one run.

    python3 dev.py bench watch_etcd [--watchers 1000] [--rates 500,1000,2000,...] [--seconds 10] [--rounds 3]

Two servers, each alone on core 0 (``taskset``), the clients sharing core 1:

tenure  ``tenure serve`` on SQLite (a fresh data dir; the commit's fsync on), watchers
        ``GET /v1/watch?kind=claim&selector=host=hN`` (Server-Sent Events), the load bulk claims of
        ``--keys`` keys for one host (``POST /v1/pools/bench/claims:bulk``)
etcd    Debian's etcd 3.4, one member (a fresh data dir; its WAL's fsync on), through its JSON gateway
        (the HTTP API a client without gRPC uses): watchers ``POST /v3/watch`` of the key prefix
        ``/c/hN/``, the load one ``POST /v3/kv/txn`` per request that creates the same ``--keys`` keys
        under ``/c/hN/`` if none exists (compare ``create_revision == 0``: a claim by key)

The client programs are bench/watch.py's (``benchkit/watchclient.py``, raw asyncio protocols on uvloop, no
HTTP library), each with a second target: one process holds every watcher, another sends the paced
open-loop load over ``--connections`` keep-alive connections. The load writes each request's due time into
its keys, and a watcher records ``receive time - due time`` per event: the one latency measured alike on both
(any wait for a free connection, the request, the commit with its fsync, the dispatch, the stream, the client;
a request held back counts its wait, so there is no coordinated omission).

Each round, per server (the servers interleaved, fresh each round): a warm-up; memory per watcher = the
server's RSS with ``--watchers`` idle watchers open minus RSS with none, over the watcher count (each reading
once RSS stopped moving); then the rate ladder, ``--seconds`` per step with the same watchers: a step is
sustained when the server committed at least 95 % of the offered rate, every committed key reached its
host's watcher exactly once and in order, and the p99 delivery was at most ``--p99-bound`` ms. The ladder
stops at the first step not sustained, or when the clients used over ``--client-bound`` of their core (then the
client, not the server, is the bound, and the highest rate is reported as "at least"). Reported: per step
p50/p99/max delivery, achieved rate, server CPU per event; per round the highest sustained rate and memory
per watcher (for etcd also Go's heap and stacks in use, which leave out garbage not yet collected); medians
over the rounds, the servers' order alternating.

Issue 14 asks for this comparison (delivery p99, the highest rate each sustains with 1,000 filtered
watchers, server memory per watcher) with a client efficient enough not to be the bound: the clients' CPU
shares are in every row. The issue sets no goal for it: the tables are the result. Bounded: loopback only,
every phase has a timeout, servers stopped at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/http.py shadows http
sys.path.append(str(HERE))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from typing import Any  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Report, fmt, median  # noqa: E402
from benchkit.server import proc_cpu_seconds, stop_process, taskset  # noqa: E402
from watch import CLIENT, RANGE, Server, WatcherProc, drain, percentile, proc_memory  # noqa: E402

SYSTEMS = ("tenure", "etcd")
RATES = "500,1000,2000,3000,4000,5000,6000,8000,12000,16000"


class EtcdServer:
    """One etcd 3.4 member on loopback, in its own session, optionally pinned."""

    token = "-"  # the JSON gateway needs none (etcd's auth is off)

    def __init__(self, data_dir: Path, cpu: str | None) -> None:
        from tests.support.postgres import free_port

        self.dir = data_dir
        client, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.log = open(data_dir / "etcd.log", "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            taskset(["etcd", "--name", "bench", "--data-dir", str(data_dir / "etcd"),
                     "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                     "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                     "--initial-cluster", f"bench={peer_url}", "--log-level", "warn"], cpu),
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.call("POST", "/v3/kv/range", {"key": "eA=="})[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd not ready within 30 s: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        return (self.dir / "etcd.log").read_text(errors="replace")[-2000:]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode() if body is not None else None,
                                     method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return {k: float(v) for k, _, v in (ln.partition(" ") for ln in r.read().decode().splitlines())
                    if k and not k.startswith("#") and "{" not in k}

    def watchers(self) -> int:
        """Open watchers, from etcd's own gauge."""
        return int(self.metrics().get("etcd_debugging_mvcc_watcher_total", -1))

    def memory(self) -> dict[str, int]:
        """RSS, and what Go's runtime has in use (heap and stacks: RSS can hold garbage not yet collected)."""
        m = self.metrics()
        return {**proc_memory(self.proc.pid),
                "GoInUse": int(m["go_memstats_heap_inuse_bytes"] + m["go_memstats_stack_inuse_bytes"])}

    settled_memory = Server.settled_memory

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)
        self.log.close()


def start(system: str, work: Path, cpu: str | None, args: argparse.Namespace) -> Any:
    work.mkdir()
    if system == "etcd":
        return EtcdServer(work, cpu)
    server = Server(work, "index", args.server_log_level, cpu, None)
    status, body = server.call("POST", "/v1/pools", {"name": "bench", "ranges": [RANGE], "strategy": "random"})
    if status != 201:
        server.stop()
        raise RuntimeError(f"creating the pool: {status} {body}")
    return server


def open_watchers(server: Any, w: WatcherProc, lo: int, hi: int) -> None:
    w.send({"cmd": "open", "hosts": [lo, hi]})
    r = w.recv()
    if r["failed"]:
        raise RuntimeError(f"{r['failed']} watchers failed to open: {r['errors'][:5]}")
    deadline = time.monotonic() + 30
    while (seen := (server.watchers() if isinstance(server, EtcdServer) else server.wait_watchers(hi))) != hi:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server reports {seen} watchers, expected {hi}")
        time.sleep(0.1)


def load(system: str, server: Any, rate: int, prefix: str, args: argparse.Namespace, cpu: str | None
         ) -> dict[str, Any]:
    cmd = taskset([sys.executable, str(CLIENT), "load", server.url, server.token, "bench", "--hosts",
                   f"0:{args.watchers}", "--rate", str(rate), "--seconds", str(args.seconds), "--keys", str(args.keys),
                   "--connections", str(args.connections), "--prefix", prefix, "--grace", str(args.grace), "--stamp",
                   *(["--etcd"] if system == "etcd" else [])], cpu)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds * 2 + 120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def step(system: str, server: Any, w: WatcherProc, rate: int, prefix: str, args: argparse.Namespace,
         cpu: str | None) -> dict[str, Any]:
    """One rung of the ladder: the paced load at ``rate`` events/s, then every event accounted for."""
    w.send({"cmd": "reset"})
    w.recv()
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    ld = load(system, server, rate, prefix, args, cpu)
    drain([w], ld["created"], args.drain)
    server_cpu = server.cpu_seconds() - cpu0
    wall = time.monotonic() - t0
    w.send({"cmd": "stats"})
    st = w.recv()
    lat = sorted(st["lat_send"])
    committed, delivered = set(ld["keys"]), st["keys"]
    got = set(delivered)
    achieved = ld["created"] / max(ld["wall"], args.seconds)
    exact = (committed == got and len(delivered) == len(got) and not st["wrong_host"] and not st["out_of_order"]
             and not st["disconnects"] and not ld["non_2xx"] and not ld["errors"])
    r = {"rate": rate, "achieved": round(achieved, 1), "committed": len(committed), "delivered": len(delivered),
         "missing": len(committed - got), "duplicates": len(delivered) - len(got), "unexpected": len(got - committed),
         "wrong_host": st["wrong_host"], "out_of_order": st["out_of_order"], "disconnects": st["disconnects"],
         "non_2xx": ld["non_2xx"], "errors": (ld["errors"] + st["errors"])[:5], "exact": exact,
         "p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
         "max_ms": lat[-1] * 1000 if lat else float("nan"),
         "server_cpu_per_event_us": server_cpu / max(len(committed), 1) * 1e6, "server_cpu_share": server_cpu / wall,
         "watchers_client_cpu_share": st["cpu"] / max(st["wall"], 1e-9),
         "load_client_cpu_share": ld["cpu"] / max(ld["wall"], 1e-9), "late_ms_max": ld["late_ms_max"]}
    shares = (r["watchers_client_cpu_share"], r["load_client_cpu_share"])
    r["client_bound"] = (sum(shares) if cpu is not None else max(shares)) > args.client_bound  # pinned: one core
    r["sustained"] = exact and achieved >= 0.95 * rate and r["p99_ms"] <= args.p99_bound
    return r


def one(system: str, rnd: int, rates: list[int], args: argparse.Namespace, work: Path, pin: bool, con: Any
        ) -> dict[str, Any]:
    server_cpu, client_cpu = ("0", "1") if pin else (None, None)
    server = start(system, work / f"{system}-{rnd}", server_cpu, args)
    w: WatcherProc | None = None
    res: dict[str, Any] = {"system": system, "round": rnd + 1, "steps": []}
    try:
        w = WatcherProc(server.url, server.token, client_cpu, work / f"watchers-{system}-{rnd}.log",
                        ("--etcd",) if system == "etcd" else ())
        open_watchers(server, w, 0, 10)  # warm-up: open, deliver, close
        warm = argparse.Namespace(**{**vars(args), "seconds": 1.0, "watchers": 10})
        step(system, server, w, 40, f"warm{rnd}", warm, client_cpu)
        w.send({"cmd": "close"})
        w.recv()
        mem0 = server.settled_memory()
        open_watchers(server, w, 0, args.watchers)
        mem1 = server.settled_memory()
        res["rss_per_watcher"] = round((mem1["VmRSS"] - mem0["VmRSS"]) / args.watchers)
        res["anon_per_watcher"] = round((mem1["RssAnon"] - mem0["RssAnon"]) / args.watchers)
        if "GoInUse" in mem1:
            res["go_in_use_per_watcher"] = round((mem1["GoInUse"] - mem0["GoInUse"]) / args.watchers)
        go = res.get("go_in_use_per_watcher")
        con.print(f"  round {rnd + 1}  {system:<6} {args.watchers:,} watchers: RSS per watcher "
                  f"{fmt(res['rss_per_watcher'])} B{'' if go is None else f' (Go heap and stacks in use {fmt(go)} B)'}")
        for i, rate in enumerate(rates):
            s = step(system, server, w, rate, f"r{rnd}s{i}", args, client_cpu)
            res["steps"].append(s)
            con.print(f"    {system:<6} {fmt(rate):>6}/s  achieved {fmt(s['achieved']):>6}/s  delivered "
                      f"{s['delivered']:,}/{s['committed']:,}  p50 {s['p50_ms']:.1f}  p99 {s['p99_ms']:.1f}  max "
                      f"{s['max_ms']:.0f} ms  server {s['server_cpu_per_event_us']:.0f} us/event "
                      f"({s['server_cpu_share']:.0%})  clients {s['watchers_client_cpu_share']:.0%}+"
                      f"{s['load_client_cpu_share']:.0%}  {'sustained' if s['sustained'] else 'NOT sustained'}"
                      f"{' (client-bound)' if s['client_bound'] else ''}"
                      f"{'' if s['exact'] else '  NOT EXACT: ' + str(s['errors'][:2])}")
            if not s["sustained"] or s["client_bound"]:
                break
        ok = [s for s in res["steps"] if s["sustained"]]
        res["highest_sustained"] = max((s["rate"] for s in ok), default=0)
        res["client_bound"] = any(s["client_bound"] for s in res["steps"])
    finally:
        if w is not None:
            w.stop()
        server.stop()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--watchers", type=int, default=1000, help="filtered watchers, one per host")
    ap.add_argument("--rates", default=RATES, help="the ladder of offered events/s, ascending")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each step's load")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (servers interleaved; medians reported)")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--keys", type=int, default=4, help="keys (events) per request, all for one host")
    ap.add_argument("--connections", type=int, default=64,
                    help="the load's keep-alive connections (enough that waiting for one is not the bound)")
    ap.add_argument("--p99-bound", type=float, default=100.0, help="a step is sustained with p99 at most this (ms)")
    ap.add_argument("--client-bound", type=float, default=0.8,
                    help="a client over this share of its core ends the ladder (the client is the bound)")
    ap.add_argument("--grace", type=float, default=1.0, help="the load sends nothing later than seconds + this")
    ap.add_argument("--drain", type=float, default=10.0, help="wait this long for the last events after a step")
    ap.add_argument("--server-log-level", default="info")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    rates = sorted(int(x) for x in args.rates.split(",") if x)
    systems = [s for s in args.systems.split(",") if s]
    if not rates or any(s not in SYSTEMS for s in systems):
        sys.exit(f"bench watch_etcd: --rates needs at least one rate; --systems is a subset of {SYSTEMS}")
    if "etcd" in systems and args.keys > 16:
        sys.exit("bench watch_etcd: --keys at most 16 (the load client reads answers with a Content-Length only)")
    if "etcd" in systems and shutil.which("etcd") is None:
        sys.exit("bench watch_etcd: etcd is missing (scripts/system-deps installs etcd-server)")
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    work = Path(tempfile.mkdtemp(prefix="tenure-watch-etcd-", dir=args.dir))
    report = Report("watch_etcd", benchkit.machine(work, quiet_wait=args.quiet_wait), {**vars(args), "pinned": pin})
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    con.print(f"{'each server alone on core 0, the clients on core 1' if pin else 'not pinned'}; latency = the "
              f"watcher's receive time - the request's due time written in its keys")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    try:
        for rnd in range(args.rounds):
            for system in systems if rnd % 2 == 0 else systems[::-1]:  # alternate who goes first
                runs[system].append(one(system, rnd, rates, args, work, pin, con))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows, summary = [], {}
    for system, rs in runs.items():
        by_rate: dict[int, list[dict[str, Any]]] = {}
        for r in rs:
            for s in r["steps"]:
                by_rate.setdefault(s["rate"], []).append(s)
        steps = {rate: {"rounds": len(ss), "sustained": sum(s["sustained"] for s in ss),
                        "median_achieved": median([s["achieved"] for s in ss]),
                        "median_p50_ms": round(median([s["p50_ms"] for s in ss]), 2),
                        "median_p99_ms": round(median([s["p99_ms"] for s in ss]), 2),
                        "p99_runs": [round(s["p99_ms"], 1) for s in ss],
                        "median_max_ms": round(median([s["max_ms"] for s in ss]), 1),
                        "median_server_cpu_per_event_us": round(median([s["server_cpu_per_event_us"] for s in ss])),
                        "max_client_cpu_share": round(max(s["watchers_client_cpu_share"] + s["load_client_cpu_share"]
                                                          for s in ss), 3),
                        "exact": all(s["exact"] for s in ss)} for rate, ss in sorted(by_rate.items())}
        s = {"system": system, "rss_per_watcher": median([r["rss_per_watcher"] for r in rs]),
             "anon_per_watcher": median([r["anon_per_watcher"] for r in rs]),
             "go_in_use_per_watcher": (median([r["go_in_use_per_watcher"] for r in rs])
                                       if all("go_in_use_per_watcher" in r for r in rs) else None),
             "highest_sustained": median([r["highest_sustained"] for r in rs]),
             "highest_runs": [r["highest_sustained"] for r in rs],
             "client_bound": any(r["client_bound"] for r in rs), "steps": steps, "runs": rs}
        summary[system] = s
        report.results.append(s)
        for rate, st in steps.items():
            rows.append((system, fmt(rate), f"{fmt(st['median_achieved'])}", f"{st['median_p50_ms']:.1f}",
                         f"{st['median_p99_ms']:.1f} ({' / '.join(f'{x:.0f}' for x in st['p99_runs'])})",
                         f"{st['median_max_ms']:.0f}", f"{st['median_server_cpu_per_event_us']}",
                         f"{st['max_client_cpu_share']:.0%}", f"{st['sustained']}/{st['rounds']}",
                         "yes" if st["exact"] else "NO"))
    benchkit.print_table(
        f"Watch, Tenure against etcd 3.4: {args.watchers:,} filtered watchers, the ladder {args.seconds:g} s a step; "
        f"latency from the request's due time to the watcher; medians of {args.rounds} rounds",
        ["server", "offered/s", "achieved/s", "p50 ms", "p99 ms (rounds)", "max ms", "server CPU us/event",
         "clients' CPU (max)", "sustained", "exact"], rows)
    benchkit.print_table(
        "Per server: highest rate sustained (p99 <= "
        f"{args.p99_bound:g} ms, >= 95 % committed, exact) and memory per idle watcher",
        ["server", "highest sustained events/s (rounds)", "RSS B per watcher", "anon B per watcher",
         "Go heap+stacks in use B per watcher"],
        [(k, f"{'>= ' if v['client_bound'] else ''}{fmt(v['highest_sustained'])} "
             f"({' / '.join(fmt(x) for x in v['highest_runs'])})", fmt(v["rss_per_watcher"]),
          fmt(v["anon_per_watcher"]), "" if v["go_in_use_per_watcher"] is None else fmt(v["go_in_use_per_watcher"]))
         for k, v in summary.items()])
    for s in summary.values():
        if s["client_bound"]:
            report.notes.append(f"{s['system']}: a client used over {args.client_bound:.0%} of its core at the top of "
                                f"the ladder: its highest rate is a lower bound")
    benchkit.finish(report)


if __name__ == "__main__":
    main()
