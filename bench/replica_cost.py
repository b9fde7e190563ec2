#!/usr/bin/env python3
"""The cost of being a replica: claims per second through the leader of three replicas, against one server.

    python3 dev.py bench replica_cost [--runs 3] [--seconds 10] [--connections 64]

Both on the same throwaway PostgreSQL 15 (durable settings), each round on a fresh database: ``single`` is one
``tenure serve --db postgresql://...``; ``replicas`` is three ``tenure serve --replica-name`` on another database,
the load sent to the leader (its two followers tail every batch and apply it). ``wrk`` POSTs unique claim keys
(bench/http.py's script) over ``--connections`` connections for ``--seconds``; rounds alternate the two modes, and
the median of ``--runs`` rounds each is reported. A third mode, ``alone``, is one replica with no followers:
the leader's own cost (the fence, the notification, the lease) without the followers' work. Everything runs
on this machine: on two cores the followers' work competes with the leader's and with PostgreSQL, so the ratio
is a floor for separate machines.

Goal (issue 14): replicas >= 0.9 x single.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/http.py shadows http
sys.path.append(str(HERE))

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Goal, Report, median  # noqa: E402


def _bench_http() -> Any:
    spec = importlib.util.spec_from_file_location("tenure_bench_http", HERE / "http.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def single(work: Path, db: str) -> tuple[str, str, Any]:
    from tests.support.postgres import free_port
    from tests.system.replica_support import TENURE, wait_for

    port = free_port()
    work.mkdir(parents=True)
    log = open(work / "server.log", "ab")  # noqa: SIM115 - the child's
    proc = subprocess.Popen([str(TENURE), "serve", "--db", db, "--listen", f"127.0.0.1:{port}", "--data-dir",
                             str(work), "--log-level", "warning"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, timeout=60, what="the server")
    return url, (work / "admin.token").read_text().strip(), proc


def measure(url: str, token: str, args: argparse.Namespace, script: Path, tag: str, http: Any) -> float:
    pool = f"p{tag}"
    r = httpx.post(f"{url}/v1/pools", json={"name": pool, "ranges": [[1, 100_000_000]]},
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    w = http.run_wrk(f"{url}/v1/pools/{pool}/claims", args.connections, args.seconds, 2, script, [token, tag], None)
    if w["other"]:
        raise RuntimeError(f"{w['other']} claims were not answered 201")
    return w["created"] / args.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench replica_cost: wrk is not installed (scripts/system-deps)")
    from tests.support.postgres import PostgresServer
    from tests.system.replica_support import ReplicaSet

    http = _bench_http()
    work = Path(tempfile.mkdtemp(prefix="tenure-replica-cost-"))
    report = Report("replica_cost", benchkit.machine(work, quiet_wait=args.quiet_wait), vars(args))
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    script = work / "claims.lua"
    script.write_text(http.WRK_LUA)
    rates: dict[str, list[float]] = {"single": [], "replicas": [], "alone": []}
    try:
        with PostgresServer(durable=True) as pg:
            for run in range(args.runs):
                order = ("single", "replicas", "alone")
                for mode in (order if run % 2 == 0 else order[::-1]):
                    db = pg.create_database(f"{mode}_{run}")
                    if mode == "single":
                        url, token, proc = single(work / f"single-{run}", db)
                        try:
                            rate = measure(url, token, args, script, f"s{run}", http)
                        finally:
                            proc.terminate()
                            proc.wait(60)
                    else:
                        names = ("a", "b", "c") if mode == "replicas" else ("a",)
                        rs = ReplicaSet(work / f"{mode}-{run}", db, names=names, lease=5.0).start()
                        try:
                            rate = measure(rs.leader().url, rs.token, args, script, f"r{run}", http)
                            lags = [r.health()["replica"]["lag_revisions"] for r in rs]
                        finally:
                            rs.close()
                        con.print(f"  followers' lag at the end: {lags}")
                    rates[mode].append(rate)
                    con.print(f"  run {run + 1} {mode:8} {rate:,.0f} claims/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s, r, a = median(rates["single"]), median(rates["replicas"]), median(rates["alone"])
    benchkit.print_table(f"Claims/s over HTTP, {args.connections} connections, median of {args.runs}",
                         ["deployment", "claims/s", "runs", "vs single"],
                         [("one server", f"{s:,.0f}", " / ".join(f"{x:,.0f}" for x in rates["single"]), "1.00"),
                          ("leader of 3 replicas", f"{r:,.0f}", " / ".join(f"{x:,.0f}" for x in rates["replicas"]),
                           f"{r / s:.2f}"),
                          ("a replica alone (no followers): the leader's own cost", f"{a:,.0f}",
                           " / ".join(f"{x:,.0f}" for x in rates["alone"]), f"{a / s:.2f}")])
    report.results.append({mode: [round(x) for x in xs] for mode, xs in rates.items()})
    report.goals.append(Goal("claims/s through the leader of 3 replicas vs one server", r / s, 0.9, "x",
                             detail=f"{r:,.0f} vs {s:,.0f} claims/s, all on one machine"))
    benchkit.finish(report)


if __name__ == "__main__":
    main()
