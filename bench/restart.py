#!/usr/bin/env python3
"""Restart time with 1,000,000 claims, and the memory of an empty 2**24 pool.

    python3 dev.py bench restart [--claims 1000000] [--runs 3] [--layouts random,dense] ...

Restart: a store is built once per layout with ``--claims`` claims in one VXLAN-like pool
``[1, 2**24-1]`` (strategy ``random``), then ``Allocator.open(path)`` is timed ``--runs`` times, each in a
fresh Python process (imports done before the clock starts; the file is in the page cache, as after a
process restart on a running host). Reported: median wall time of ``open`` (the goal), Tenure's own
``restore_seconds``, RSS growth across ``open`` and peak RSS growth.

Layouts: ``random`` = values drawn uniformly from the range (about one taken run per claim: the worst
case for the run index); ``dense`` = values 1..N (one run). Both have realistic keys (``port:<uuid>``).

How the store is built (``--build``): ``sql`` (default, fast) creates the store and its pool with
Tenure, then inserts the claims rows and one events row per claim (the same rows Tenure writes) straight
into it with ``sqlite3`` in transactions of 100,000, and sets the state row's revision to the last event's;
``claim_many`` makes every claim through ``Allocator.claim_many`` in batches of 10,000 (slower, exact).
Either way the store is opened once and checked (pool used == claims) before the timed runs.

The floor, interleaved with those runs in the same kind of fresh process: the same store's keys and values
read by the same driver into a plain ``dict[str, int]`` (its time and RSS growth). Goals (issue 18): open
at most 1 s and at most 150 bytes of RSS per claim, with the random layout.

Memory: in a fresh process, an Allocator is opened on a fresh store, a small pool is created first (so
statement caches etc. are warm), then tracemalloc measures the bytes still allocated after
``create_pool(.., ranges=[[1, 2**24-1]])`` (and the peak during it); separately the bytes of a bare
``IdSpace([[1, 2**24-1]])``. Goal: <= 1 MB (1,000,000 bytes).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchkit
from benchkit import Goal, Report, fmt, median

POOL = "vnis"
RANGE = (1, 2**24 - 1)

# Runs in a fresh interpreter: import first, then time only Allocator.open.
OPEN_CHILD = r"""
import json, sys, time
t_import = time.perf_counter()
from tenure import Allocator
import benchkit
t_import = time.perf_counter() - t_import
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
rss0, hwm0 = benchkit.rss_bytes(), hwm()
t0 = time.perf_counter()
a = Allocator.open(sys.argv[1])
wall = time.perf_counter() - t0
rss1, hwm1 = benchkit.rss_bytes(), hwm()
v = a.pool(sys.argv[2])
runs = a.runtime.allocator._entries[sys.argv[2]].pool.ids.run_count
out = {"open_s": wall, "restore_s": a.runtime.restore_seconds, "import_s": t_import,
       "rss_before": rss0, "rss_growth": rss1 - rss0, "peak_growth": hwm1 - hwm0, "used": v.used, "runs": runs}
a.close()
print(json.dumps(out))
"""

# The floor, in the same kind of fresh process: the same keys and values read from the same store into a
# plain dict[str, int], by the same driver (what any Python allocator holding the keys must at least pay).
FLOOR_CHILD = r"""
import json, sqlite3, sys, time
from tenure import Allocator
import benchkit
rss0 = benchkit.rss_bytes()
t0 = time.perf_counter()
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
held = dict(conn.execute("SELECT key, value FROM claims NOT INDEXED"))
wall = time.perf_counter() - t0
rss1 = benchkit.rss_bytes()
conn.close()
print(json.dumps({"open_s": wall, "rss_growth": rss1 - rss0, "used": len(held)}))
"""

MEMORY_CHILD = r"""
import gc, json, sys, tempfile, tracemalloc
from tenure import Allocator
from tenure.domain.idspace import IdSpace
lo, hi = int(sys.argv[1]), int(sys.argv[2])
d = tempfile.mkdtemp(prefix="tenure-mem-")
a = Allocator.open(d + "/m.db")
a.create_pool("warm-up", ranges=[[1, 100]], strategy="random")
a.claim("warm-up", "k")
gc.collect()
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
tracemalloc.reset_peak()
a.create_pool("vxlan", ranges=[[lo, hi]], strategy="random")
gc.collect()
cur, peak = tracemalloc.get_traced_memory()
pool_retained, pool_peak = cur - base, peak - base
snap = tracemalloc.take_snapshot()
a.close()
tracemalloc.stop()
gc.collect()
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
ids = IdSpace([[lo, hi]], strategy="random")
cur = tracemalloc.get_traced_memory()[0]
tracemalloc.stop()
print(json.dumps({"pool_retained": pool_retained, "pool_peak": pool_peak, "idspace": cur - base,
                  "size": ids.size}))
import shutil; shutil.rmtree(d, ignore_errors=True)
"""


def child(code: str, *args: str) -> dict[str, Any]:
    env_path = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def build_store(path: Path, n: int, layout: str, how: str, seed: int = 7) -> float:
    """Make a store with ``n`` claims in pool ``vnis``; returns the seconds it took."""
    from tenure import Allocator

    start = time.perf_counter()
    rng = random.Random(seed)
    values = rng.sample(range(RANGE[0], RANGE[1] + 1), n) if layout == "random" else list(range(1, n + 1))
    keys = [f"port:{uuid.UUID(int=rng.getrandbits(128))}" for _ in range(n)]
    with Allocator.open(str(path)) as a:
        a.create_pool(POOL, ranges=[list(RANGE)], strategy="random")
        if how == "claim_many":
            for lo in range(0, n, 10_000):
                a.claim_many(POOL, [(k, v) for k, v in zip(keys[lo:lo + 10_000], values[lo:lo + 10_000])])
            return time.perf_counter() - start
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # building is not what is measured
        pool_id = conn.execute("SELECT id FROM pools WHERE name = ?", (POOL,)).fetchone()[0]
        rev = conn.execute("SELECT revision FROM state").fetchone()[0]
        now = _ts(datetime.now(UTC))
        labels = json.dumps({"pool": POOL}, sort_keys=True)
        for lo in range(0, n, 100_000):
            claims, events = [], []
            for k, v in zip(keys[lo:lo + 100_000], values[lo:lo + 100_000]):
                rev += 1
                claims.append((pool_id, k, v, None, None, 0, now, rev))
                body = {"pool": POOL, "key": k, "value": v, "project": None, "host": None, "revision": rev}
                events.append((rev, now, "claim", f"{POOL}/{k}", "created", labels, json.dumps(body)))
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO claims (pool_id, key, value, project, host, mark, created_at, revision) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", claims)
            conn.executemany("INSERT INTO events (revision, ts, kind, object_id, op, labels, body) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", events)
            conn.execute("COMMIT")
        conn.execute("UPDATE state SET revision = ? WHERE id = 1", (rev,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="timed opens per layout (median reported)")
    ap.add_argument("--layouts", default="random,dense", help="comma list of random, dense (goal: random)")
    ap.add_argument("--build", choices=("sql", "claim_many"), default="sql")
    ap.add_argument("--memory-runs", type=int, default=3)
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="wait up to this many seconds for other processes to quiet down before starting")
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temp dir)")
    args = ap.parse_args()
    layouts = [x for x in args.layouts.split(",") if x]
    if any(x not in ("random", "dense") for x in layouts):
        ap.error("layouts are random and/or dense")

    workdir = Path(tempfile.mkdtemp(prefix="tenure-restart-", dir=args.dir))
    report = Report("restart", benchkit.machine(workdir, quiet_wait=args.quiet_wait), vars(args))
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    rows = []
    try:
        for layout in layouts:
            path = workdir / f"restart-{layout}.db"
            secs = build_store(path, args.claims, layout, args.build)
            size = sum(p.stat().st_size for p in workdir.glob(f"restart-{layout}.db*"))
            con.print(f"built {layout} store: {args.claims:,} claims in {secs:.1f} s ({size / 2**20:.0f} MiB)")
            first = child(OPEN_CHILD, str(path), POOL)  # check + warm the page cache; not counted
            if first["used"] != args.claims:
                raise RuntimeError(f"store has {first['used']} claims, expected {args.claims}")
            outs, floors = [], []
            for i in range(args.runs):  # interleaved with the floor
                o = child(OPEN_CHILD, str(path), POOL)
                f = child(FLOOR_CHILD, str(path))
                outs.append(o)
                floors.append(f)
                con.print(f"  run {i + 1}  open {o['open_s']:.2f} s  restore {o['restore_s']:.2f} s  "
                          f"rss +{o['rss_growth'] / 2**20:.0f} MiB  peak +{o['peak_growth'] / 2**20:.0f} MiB  |  "
                          f"floor {f['open_s']:.2f} s  rss +{f['rss_growth'] / 2**20:.0f} MiB")
            med = {k: median([o[k] for o in outs]) for k in ("open_s", "restore_s", "rss_growth", "peak_growth",
                                                             "import_s")}
            floor = {k: median([f[k] for f in floors]) for k in ("open_s", "rss_growth")}
            per_claim, floor_per_claim = med["rss_growth"] / args.claims, floor["rss_growth"] / args.claims
            rows.append((layout, f"{args.claims:,}", f"{first['runs']:,}", f"{med['open_s']:.2f}",
                         " / ".join(f"{o['open_s']:.2f}" for o in outs), f"{floor['open_s']:.2f}",
                         f"{med['rss_growth'] / 2**20:.0f}", f"{per_claim:.0f}", f"{floor_per_claim:.0f}",
                         f"{med['peak_growth'] / 2**20:.0f}", f"{med['import_s']:.2f}", f"{size / 2**20:.0f}"))
            report.results.append({"layout": layout, "claims": args.claims, "taken_runs": first["runs"],
                                   "build": args.build, "build_s": round(secs, 1), "store_mib": round(size / 2**20),
                                   "first_open_s": round(first["open_s"], 3),
                                   "median_open_s": round(med["open_s"], 3),
                                   "runs_open_s": [round(o["open_s"], 3) for o in outs],
                                   "median_restore_s": round(med["restore_s"], 3),
                                   "median_rss_growth_mib": round(med["rss_growth"] / 2**20, 1),
                                   "median_peak_growth_mib": round(med["peak_growth"] / 2**20, 1),
                                   "median_import_s": round(med["import_s"], 3),
                                   "rss_bytes_per_claim": round(per_claim), "floor_open_s": round(floor["open_s"], 3),
                                   "floor_rss_bytes_per_claim": round(floor_per_claim),
                                   "floor_runs_open_s": [round(f["open_s"], 3) for f in floors]})
            if layout == layouts[0]:
                report.goals.append(Goal(f"restart: Allocator.open with {args.claims:,} claims ({layout} values)",
                                         med["open_s"], 1.0, "s", higher_is_better=False,
                                         detail=f"floor (a dict of the keys and values) {floor['open_s']:.2f} s"))
                report.goals.append(Goal(f"memory per claim at {args.claims:,} claims ({layout} values, RSS)",
                                         per_claim, 150, "bytes", higher_is_better=False,
                                         detail=f"floor (a dict of the keys and values) {floor_per_claim:.0f} B"))
            path.unlink()
            for extra in workdir.glob(f"restart-{layout}.db*"):
                extra.unlink()
        benchkit.print_table(f"Restart (Allocator.open), median of {args.runs} fresh processes",
                             ["layout", "claims", "taken runs", "open s", "runs", "floor s", "RSS +MiB",
                              "B/claim", "floor B/claim", "peak +MiB", "import s", "store MiB"], rows)

        mems = [child(MEMORY_CHILD, str(RANGE[0]), str(RANGE[1])) for _ in range(args.memory_runs)]
        m = {k: median([x[k] for x in mems]) for k in ("pool_retained", "pool_peak", "idspace")}
        benchkit.print_table(f"Memory of an empty pool of {RANGE[1] - RANGE[0] + 1:,} values (tracemalloc, median "
                             f"of {args.memory_runs})",
                             ["what", "bytes"],
                             [("create_pool in a running Allocator: retained", f"{m['pool_retained']:,.0f}"),
                              ("create_pool in a running Allocator: peak during", f"{m['pool_peak']:,.0f}"),
                              ("bare IdSpace", f"{m['idspace']:,.0f}"),
                              ("for scale: a bitmap of the range (Kubernetes)", f"{2**24 // 8:,}")])
        report.results.append({"memory_empty_pool_2_24": {k: int(v) for k, v in m.items()},
                               "runs": mems})
        report.goals.append(Goal("memory: empty pool of 2^24 values (retained by create_pool)",
                                 m["pool_retained"], 1_000_000, "bytes", higher_is_better=False,
                                 detail=f"peak {fmt(m['pool_peak'])} B; bare IdSpace {fmt(m['idspace'])} B"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    benchkit.finish(report)


if __name__ == "__main__":
    main()
