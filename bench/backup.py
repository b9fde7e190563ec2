#!/usr/bin/env python3
"""Backup and restore of a store with 1,000,000 claims and 100,000 reservations (issue 17).

    python3 dev.py bench backup [--claims 1000000] [--reservations 100000] [--runs 3] [--no-postgres | --no-sqlite]

The store is built once with Tenure (a temporary SQLite file): ``--claims`` claims through ``claim_many`` in one
pool, then ``--reservations`` bandwidth reservations on a k=16 fat tree (bench/reservations.py's requests: random
host pairs and windows in the coming week). For PostgreSQL the same store is moved there with Tenure's own restore
(the move the README shows), on a throwaway durable PostgreSQL 15.

Per backend, ``--runs`` rounds, medians reported:

backup        ``services.backups.write_file`` of the running store's snapshot, read by another process
              (``services.backups.in_child``: what ``tenure backup`` and the schedule do: gzip'd JSON lines, fsync,
              verify, rename) while one thread of the store's process claims one key at a time; the longest claim
              during the backup is the longest write pause. The same claims
              for as long, without a backup, give the pause of the machine itself (baseline).
restore       ``services.backups.restore`` of that file into a new empty store (verify, schema, rows,
              migrations, one transaction).
floor         SQLite: copying the database file (after a checkpoint) and fsyncing the copy; PostgreSQL:
              ``pg_dump -Fc`` of the same database, and ``pg_restore`` of that dump into a new one.

Goals (issue 17): backup <= 30 s, restore <= 30 s, longest write pause during a backup <= 50 ms. The script
reports and never gates (exit 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/http.py shadows http
sys.path.append(str(HERE))

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Goal, Report, median  # noqa: E402

POOL = "ports"


def build(path: Path, claims: int, reservations: int, log: Any) -> dict[str, Any]:
    from reservations import fat_tree, gen_requests

    from tenure.domain.errors import TenureError
    from tenure.domain.reservation import ReservationRequest
    from tenure.domain.topology import Topology
    from tenure.services.embedded import Allocator
    from tenure.services.runtime import Runtime, Settings

    started = time.perf_counter()
    rt = Runtime.open(f"sqlite:///{path}", settings=Settings(housekeeping=False))
    try:
        a = Allocator(rt)
        a.create_pool(POOL, ranges=[[1, 2**24 - 1]], strategy="random")
        rng = random.Random(7)
        for lo in range(0, claims, 10_000):
            a.claim_many(POOL, [f"port:{uuid.UUID(int=rng.getrandbits(128))}"
                                for _ in range(min(10_000, claims - lo))])
        log(f"  {claims:,} claims in {time.perf_counter() - started:.0f} s")
        doc, hosts = fat_tree(16, 10 * 10**9, 40 * 10**9)
        rt.run(rt.topology.set_topology_op(Topology.parse(doc)))
        base = int(time.time()) // 60 * 60 + 3600
        booked, refused, pending = 0, 0, []

        def settle() -> None:
            nonlocal booked, refused
            for f in pending:
                try:
                    f.result(timeout=600)
                    booked += 1
                except TenureError:
                    refused += 1
            pending.clear()

        for raw in gen_requests(rng, hosts, reservations, base):
            pending.append(rt.writer.submit(rt.reservations.create_op(ReservationRequest.parse(raw))))
            if len(pending) >= 2048:
                settle()
        settle()
        revision = rt.revision
    finally:
        rt.close()
    return {"claims": claims, "reservations": booked, "refused": refused, "revision": revision,
            "build_s": round(time.perf_counter() - started, 1)}


class Claimer:
    """Claims one key at a time in the store's process (as a server's writer goes on while a backup is taken),
    timing each."""

    def __init__(self, rt: Any) -> None:
        from tenure.services.embedded import Allocator

        self.a = Allocator(rt)
        self.n = 0

    def run_while(self, busy: threading.Event | None, seconds: float | None) -> list[float]:
        out: list[float] = []
        end = time.perf_counter() + (seconds or 0)
        while (busy is not None and busy.is_set()) or (seconds is not None and time.perf_counter() < end):
            self.n += 1
            t0 = time.perf_counter()
            self.a.claim(POOL, f"pause-{uuid.uuid4()}")
            out.append(time.perf_counter() - t0)
        return out


def backup_under_writes(url: str, out_dir: Path) -> dict[str, Any]:
    from tenure.services import backups
    from tenure.services.runtime import Runtime, Settings

    rt = Runtime.open(url, settings=Settings(housekeeping=False))
    try:
        claimer = Claimer(rt)
        busy = threading.Event()
        busy.set()
        lat: list[float] = []
        t = threading.Thread(target=lambda: lat.extend(claimer.run_while(busy, None)))
        t.start()
        time.sleep(0.5)  # the claimer is going before the backup starts
        lat.clear()
        t0 = time.perf_counter()
        header, path = backups.write_file(lambda f: backups.in_child(rt.engine, f, datetime.now(UTC)), out_dir)
        seconds = time.perf_counter() - t0
        busy.clear()
        t.join()
        during = list(lat)
        base = claimer.run_while(None, seconds)  # as long again, no backup
    finally:
        rt.close()
    return {"backup_s": seconds, "bytes": path.stat().st_size, "path": path, "revision": header.revision,
            "pause_ms": max(during) * 1000 if during else float("nan"), "claims_during": len(during),
            "p99_ms": sorted(during)[int(len(during) * 0.99)] * 1000 if during else float("nan"),
            "base_pause_ms": max(base) * 1000 if base else float("nan")}


def restore(path: Path, url: str) -> float:
    from tenure.services import backups

    t0 = time.perf_counter()
    backups.restore(url, path)
    return time.perf_counter() - t0


def sqlite_copy(db: Path, dest: Path) -> float:
    import sqlite3

    c = sqlite3.connect(db)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    t0 = time.perf_counter()
    shutil.copyfile(db, dest)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=int, default=1_000_000)
    ap.add_argument("--reservations", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--no-sqlite", action="store_true", help="measure PostgreSQL only (the store is still built on "
                                                            "SQLite and moved there)")
    args = ap.parse_args()
    from tenure.gcpolicy import GCPolicy

    GCPolicy().install()  # as tenure serve does: a full collection of a million claims is a pause of its own
    con = benchkit.console()
    work = Path(tempfile.mkdtemp(prefix="tenure-bench-backup-"))
    report = Report("backup", benchkit.machine(work), vars(args))
    try:
        con.print(f"building the store ({args.claims:,} claims, {args.reservations:,} reservations)...")
        db = work / "source.db"
        info = build(db, args.claims, args.reservations, con.print)
        con.print(f"  built: {info}")
        report.notes.append(f"store: {info}")
        backends: list[tuple[str, str, Any]] = [("sqlite", f"sqlite:///{db}", None)]
        pg = None
        if not args.no_postgres:
            from tests.support.postgres import PostgresServer

            pg = PostgresServer(durable=True).start()
            url = pg.create_database("source")
            first = work / "move"
            first.mkdir()
            from tenure.services import backups

            _, moved = backups.write_file(
                lambda f: backups.from_stopped_store(f"sqlite:///{db}", f, datetime.now(UTC)), first)
            t = restore(moved, url)
            con.print(f"  moved to PostgreSQL in {t:.1f} s")
            backends.append(("postgresql", url, pg))
        if args.no_sqlite:
            backends = [b for b in backends if b[0] != "sqlite"]
        rows = []
        for name, url, server in backends:
            runs: list[dict[str, Any]] = []
            for i in range(args.runs):
                os.sync()  # the last run's restore (hundreds of MB) is on the disk before this one is timed
                benchkit.wait_quiet(30)
                out = work / f"{name}-{i}"
                out.mkdir()
                r = backup_under_writes(url, out)
                target = (f"sqlite:///{work / f'restored-{name}-{i}.db'}" if server is None
                          else server.create_database(f"restored_{i}"))
                r["restore_s"] = restore(r["path"], target)
                if server is None:
                    r["floor_s"] = sqlite_copy(db, work / f"copy-{i}.db")
                    r["floor_restore_s"] = float("nan")
                else:
                    dump = work / f"dump-{i}.pgc"
                    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
                    dsn = url.replace("postgresql+psycopg://", "postgresql://")
                    t0 = time.perf_counter()
                    subprocess.run([str(server.bin_dir / "pg_dump"), "-Fc", "-f", str(dump), dsn], check=True,
                                   env=env, timeout=600)
                    r["floor_s"] = time.perf_counter() - t0
                    again = server.create_database(f"pgrestored_{i}").replace("postgresql+psycopg://",
                                                                              "postgresql://")
                    t0 = time.perf_counter()
                    subprocess.run([str(server.bin_dir / "pg_restore"), "-d", again, str(dump)], check=True,
                                   env=env, timeout=600)
                    r["floor_restore_s"] = time.perf_counter() - t0
                r["path"] = str(r["path"])
                runs.append(r)
                con.print(f"  {name} run {i + 1}: " + ", ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if k != "path"))
            med = {k: median([r[k] for r in runs]) for k in ("backup_s", "restore_s", "floor_s", "floor_restore_s",
                                                           "pause_ms", "p99_ms", "base_pause_ms", "bytes")}
            worst_pause = max(r["pause_ms"] for r in runs)
            report.results.append({"backend": name, "median": med, "runs": runs})
            floor = "file copy" if server is None else "pg_dump -Fc"
            rows.append((name, f"{med['backup_s']:.1f} s", f"{med['floor_s']:.1f} s ({floor})",
                         f"{med['restore_s']:.1f} s", "-" if server is None else f"{med['floor_restore_s']:.1f} s",
                         f"{med['pause_ms']:.1f} ms (worst {worst_pause:.1f})", f"{med['base_pause_ms']:.1f} ms",
                         f"{med['bytes'] / 1e6:.0f} MB"))
            report.goals.append(Goal(f"({name}) backup", med["backup_s"], 30, "s", higher_is_better=False,
                                     detail=f"floor {floor}: {med['floor_s']:.1f} s"))
            report.goals.append(Goal(f"({name}) restore", med["restore_s"], 30, "s", higher_is_better=False,
                                     detail="" if server is None else f"pg_restore: {med['floor_restore_s']:.1f} s"))
            report.goals.append(Goal(f"({name}) longest write pause during a backup", worst_pause, 50, "ms",
                                     higher_is_better=False,
                                     detail=f"median of runs {med['pause_ms']:.1f} ms; without a backup "
                                            f"{med['base_pause_ms']:.1f} ms"))
        benchkit.print_table(f"Backup and restore, {args.claims:,} claims and {info['reservations']:,} reservations "
                             f"(median of {args.runs})",
                             ["backend", "backup", "floor", "restore", "pg_restore", "longest write pause",
                              "pause without backup", "file"], rows)
        for g in report.goals:
            con.print(f"  {'met' if g.met else 'NOT MET'}: {g.name}: {g.value:.2f} {g.unit} (goal {g.target})"
                      f" {g.detail}")
        con.print(f"saved {report.save()}")
        if pg is not None:
            pg.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
