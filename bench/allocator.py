#!/usr/bin/env python3
"""Durable claims per second through the library, next to the store's own limit and a Neutron-style baseline.

    python3 dev.py bench allocator [--runs 3] [--seconds 5] [--postgres] ...

Modes, each measured ``--runs`` times with the rounds interleaved, medians reported:

tenure bulk        ``Allocator.claim_many`` in batches of ``--batch`` keys (one transaction each)
raw bulk           the limit for (a): the same rows (one ``claims`` row + one ``events`` row per claim,
                   real schema, fresh database made by Tenure) inserted with the raw DB-API driver
                   (``sqlite3``, WAL + synchronous=FULL), one transaction per ``--batch`` claims;
                   rows are built before the clock starts, so this is the store's pure insert rate
tenure 64 threads  ``Allocator.claim`` one key at a time from ``--threads`` threads (group commit)
raw 64 threads     the limit for (b): one transaction per claim (BEGIN IMMEDIATE; 2 inserts; COMMIT)
                   from ``--threads`` threads, each with its own connection, no group commit
neutron ...        the baseline for (c): one row per ID of a ``--neutron-range`` range, pre-populated
                   (allocated flag + key, index on allocated, as Neutron's ml2_*_allocations tables);
                   allocation = pick a free row, then compare-and-swap
                   ``UPDATE .. SET allocated=1, key=? WHERE id=? AND allocated=0``, retry on 0 rows,
                   one transaction per claim, ``--threads`` threads, same durability.
                   ``first100``: ``SELECT .. WHERE allocated=0 LIMIT 100`` + ``random.choice`` (what
                   neutron/plugins/ml2/drivers/helpers.py does, IDPOOL_SELECT_SIZE = 100);
                   ``order-random``: ``SELECT .. WHERE allocated=0 ORDER BY RANDOM() LIMIT 1``.

Every Tenure pool here is a VXLAN-like ``[1, 2**24-1]`` pool with the ``random`` strategy, and the raw
limits insert the same random distinct values, so every mode updates the unique (pool, value) index at
random places. Goals: Tenure >= 0.5x the limit in (a) and (b); Tenure >= 20x the Neutron-style baseline.
With ``--postgres`` the same modes also run on a throwaway PostgreSQL 15 (fsync=on, synchronous_commit=on).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchkit
from benchkit import Goal, Report, fmt, median

from tenure import Allocator  # noqa: E402  (benchkit fixes sys.path first)

POOL = "vnis"
POOL_RANGE = (1, 2**24 - 1)


# --------------------------------------------------------------------------- rows as Tenure writes them


def _sqlite_ts(dt: datetime) -> str:
    # How SQLAlchemy's SQLite DateTime stores a timestamp (UTC, naive string).
    return dt.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def claim_rows(pool_id: int, key: str, value: int, revision: int, now: Any) -> tuple[tuple, tuple]:
    """One claims row and its events row, with the same content Tenure writes for a claim."""
    body = {"pool": POOL, "key": key, "value": value, "project": None, "host": None, "revision": revision}
    claim = (pool_id, key, value, None, None, 0, now, revision)
    event = (revision, now, "claim", f"{POOL}/{key}", "created",
             json.dumps({"pool": POOL}, sort_keys=True), json.dumps(body))
    return claim, event


SQLITE_INSERT_CLAIM = ("INSERT INTO claims (pool_id, key, value, project, host, mark, created_at, revision) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
SQLITE_INSERT_EVENT = ("INSERT INTO events (revision, ts, kind, object_id, op, labels, body) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)")
PG_INSERT_CLAIM = SQLITE_INSERT_CLAIM.replace("?", "%s")
PG_INSERT_EVENT = SQLITE_INSERT_EVENT.replace("?", "%s")


# --------------------------------------------------------------------------- backends


class Backend:
    """Where a mode runs: fresh stores and raw connections with Tenure's durability."""

    name: str
    paramstyle_insert: tuple[str, str]

    def fresh_tenure_store(self) -> str: ...  # a URL/path Allocator.open takes, with the real schema
    def raw_connect(self, url: str) -> Any: ...
    def ts(self, dt: datetime) -> Any: ...
    def fresh_neutron_store(self) -> str: ...
    def close(self) -> None: ...


class SqliteBackend(Backend):
    name = "sqlite"
    paramstyle_insert = (SQLITE_INSERT_CLAIM, SQLITE_INSERT_EVENT)

    def __init__(self, workdir: Path, neutron_range: int) -> None:
        self.dir = workdir
        self.n = itertools.count()
        self.neutron_range = neutron_range
        self._neutron_template: Path | None = None

    def fresh_tenure_store(self) -> str:
        return str(self.dir / f"tenure-{next(self.n)}.db")

    def raw_connect(self, url: str) -> sqlite3.Connection:
        conn = sqlite3.connect(url, isolation_level=None, timeout=60, check_same_thread=False)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous=FULL")
        assert mode == "wal" and conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        return conn

    def ts(self, dt: datetime) -> str:
        return _sqlite_ts(dt)

    def fresh_neutron_store(self) -> str:
        if self._neutron_template is None:
            self._neutron_template = self.dir / "neutron-template.db"
            conn = self.raw_connect(str(self._neutron_template))
            conn.execute("CREATE TABLE allocs (vni INTEGER PRIMARY KEY, allocated BOOLEAN NOT NULL DEFAULT 0, "
                         "key TEXT)")
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO allocs (vni, allocated) VALUES (?, 0)",
                             ((i,) for i in range(1, self.neutron_range + 1)))
            conn.execute("COMMIT")
            conn.execute("CREATE INDEX ix_allocs_allocated ON allocs (allocated)")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
        path = self.dir / f"neutron-{next(self.n)}.db"
        shutil.copyfile(self._neutron_template, path)
        return str(path)

    def close(self) -> None:
        pass


class PostgresBackend(Backend):
    name = "postgresql"
    paramstyle_insert = (PG_INSERT_CLAIM, PG_INSERT_EVENT)

    def __init__(self, neutron_range: int) -> None:
        import psycopg

        self.psycopg = psycopg
        from tests.support.postgres import PostgresServer

        self.server = PostgresServer(durable=True).start()  # the test one runs with fsync=off
        self.n = itertools.count()
        self.neutron_range = neutron_range
        self._neutron_template = False
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as c:
            got = {k: c.execute(f"SHOW {k}").fetchone()[0] for k in ("fsync", "synchronous_commit",
                                                                      "full_page_writes")}
        if set(got.values()) != {"on"}:
            raise RuntimeError(f"PostgreSQL durability settings not applied: {got}")
        self.settings = got

    def _dsn(self, db: str) -> str:
        return f"host=127.0.0.1 port={self.server.port} user=postgres dbname={db}"

    def fresh_tenure_store(self) -> str:
        return self.server.create_database(f"bench_{next(self.n)}")

    def raw_connect(self, url: str) -> Any:
        db = url.rsplit("/", 1)[1]
        return self.psycopg.connect(self._dsn(db))

    def ts(self, dt: datetime) -> datetime:
        return dt

    def fresh_neutron_store(self) -> str:
        if not self._neutron_template:
            url = self.server.create_database("neutron_template")
            with self.raw_connect(url) as c:
                c.execute("CREATE TABLE allocs (vni INTEGER PRIMARY KEY, allocated BOOLEAN NOT NULL DEFAULT false, "
                          "key TEXT)")
                c.execute("INSERT INTO allocs (vni) SELECT generate_series(1, %s)", (self.neutron_range,))
                c.execute("CREATE INDEX ix_allocs_allocated ON allocs (allocated)")
            with self.psycopg.connect(self._dsn("neutron_template"), autocommit=True) as c:
                c.execute("VACUUM ANALYZE allocs")
            self._neutron_template = True
        name = f"neutron_{next(self.n)}"
        with self.psycopg.connect(self._dsn("postgres"), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name} TEMPLATE neutron_template")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.server.port}/{name}"

    def close(self) -> None:
        self.server.stop()


# --------------------------------------------------------------------------- helpers


@dataclass
class Outcome:
    claims: int
    seconds: float
    extra: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.claims / self.seconds if self.seconds > 0 else float("nan")


def run_threads(n: int, seconds: float, work: Callable[[int, Callable[[], bool]], int]) -> tuple[int, float]:
    """Run ``work(thread_index, keep_going)`` in ``n`` threads for about ``seconds``; claims done and wall time.

    Operations in flight at the deadline finish and count; the clock stops when the last thread ends.
    """
    barrier = threading.Barrier(n + 1)
    counts = [0] * n
    errors: list[BaseException] = []
    deadline = [0.0]

    def keep_going() -> bool:
        return time.perf_counter() < deadline[0]

    def body(i: int) -> None:
        try:
            barrier.wait()
            counts[i] = work(i, keep_going)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts), elapsed


def distinct_values(n: int, rng: random.Random) -> list[int]:
    return rng.sample(range(POOL_RANGE[0], POOL_RANGE[1] + 1), n)


def open_tenure(backend: Backend) -> tuple[Allocator, str]:
    url = backend.fresh_tenure_store()
    alloc = Allocator.open(url)
    alloc.create_pool(POOL, ranges=[list(POOL_RANGE)], strategy="random")
    return alloc, url


def check_tenure_durability(alloc: Allocator) -> dict[str, Any]:
    """What the writer's connections really run with (read back, not assumed)."""
    eng = alloc.runtime.engine
    with eng.connect() as c:
        if eng.dialect.name == "sqlite":
            return {"journal_mode": c.exec_driver_sql("PRAGMA journal_mode").scalar(),
                    "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
                        c.exec_driver_sql("PRAGMA synchronous").scalar()]}
        return {k: c.exec_driver_sql(f"SHOW {k}").scalar() for k in ("fsync", "synchronous_commit")}


# --------------------------------------------------------------------------- modes


def tenure_bulk(backend: Backend, args: argparse.Namespace, run: int) -> Outcome:
    alloc, _ = open_tenure(backend)
    try:
        keys = [f"port:{run}-{i:08d}" for i in range(args.bulk_claims)]
        batches = [keys[i:i + args.batch] for i in range(0, len(keys), args.batch)]
        start = time.perf_counter()
        for b in batches:
            alloc.claim_many(POOL, b)
        elapsed = time.perf_counter() - start
        assert alloc.pool(POOL).used == len(keys)
        return Outcome(len(keys), elapsed, {"durability": check_tenure_durability(alloc)})
    finally:
        alloc.close()


def _raw_store(backend: Backend) -> tuple[str, int, int]:
    """A fresh store with the real schema and a matching pool, made by Tenure; (url, pool_id, revision)."""
    alloc, url = open_tenure(backend)
    alloc.close()
    conn = backend.raw_connect(url.removeprefix("sqlite:///"))
    try:
        pool_id = conn.execute("SELECT id FROM pools WHERE name = 'vnis'").fetchone()[0]
        revision = conn.execute("SELECT revision FROM state").fetchone()[0]
    finally:
        conn.close()
    return url, pool_id, revision


def _raw_batches(pool_id: int, rev0: int, values: list[int], run: int, lo: int, hi: int, batch: int,
                 now: Any) -> list[tuple[list[tuple], list[tuple]]]:
    batches = []
    for b in range(lo, hi, batch):
        claims, events = [], []
        for i in range(b, min(b + batch, hi)):
            c, e = claim_rows(pool_id, f"port:{run}-{i:08d}", values[i], rev0 + 1 + i, now)
            claims.append(c)
            events.append(e)
        batches.append((claims, events))
    return batches


def raw_bulk(backend: Backend, args: argparse.Namespace, run: int, *, build_in_loop: bool = False) -> Outcome:
    url, pool_id, rev0 = _raw_store(backend)
    ins_claim, ins_event = backend.paramstyle_insert
    rng = random.Random(run)
    values = distinct_values(args.bulk_claims, rng)
    now = backend.ts(datetime.now(UTC))
    n = args.bulk_claims
    conn = backend.raw_connect(url)
    try:
        start = time.perf_counter()
        if build_in_loop:  # one batch's rows built just before it is inserted, inside the clock
            batches = (_raw_batches(pool_id, rev0, values, run, lo, min(lo + args.batch, n), args.batch, now)[0]
                       for lo in range(0, n, args.batch))
        else:  # every row built before the clock starts: the store's pure insert rate
            batches = iter(_raw_batches(pool_id, rev0, values, run, 0, n, args.batch, now))
            start = time.perf_counter()
        if backend.name == "sqlite":
            for claims, events in batches:
                conn.execute("BEGIN")
                conn.executemany(ins_claim, claims)
                conn.executemany(ins_event, events)
                conn.execute("COMMIT")
        else:
            for claims, events in batches:
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(ins_claim, claims)
                    cur.executemany(ins_event, events)
        elapsed = time.perf_counter() - start
        n = conn.execute("SELECT count(*) FROM claims").fetchone()[0]
        assert n == args.bulk_claims, n
    finally:
        conn.close()
    return Outcome(args.bulk_claims, elapsed, {})


def raw_bulk_build(backend: Backend, args: argparse.Namespace, run: int) -> Outcome:
    return raw_bulk(backend, args, run, build_in_loop=True)


def tenure_threads(backend: Backend, args: argparse.Namespace, run: int) -> Outcome:
    alloc, _ = open_tenure(backend)
    try:
        w = alloc.runtime.writer
        b0, c0 = w.batches, w.commands

        def work(i: int, keep_going: Callable[[], bool]) -> int:
            n = 0
            while keep_going():
                alloc.claim(POOL, f"port:{run}-{i}-{n:08d}")
                n += 1
            return n

        done, elapsed = run_threads(args.threads, args.seconds, work)
        assert alloc.pool(POOL).used == done
        batches, commands = w.batches - b0, w.commands - c0
        return Outcome(done, elapsed, {"batches": batches, "claims_per_commit": commands / max(batches, 1)})
    finally:
        alloc.close()


def raw_threads(backend: Backend, args: argparse.Namespace, run: int) -> Outcome:
    url, pool_id, rev0 = _raw_store(backend)
    ins_claim, ins_event = backend.paramstyle_insert
    rng = random.Random(1000 + run)
    # More values than any run can use; handed out in order under the GIL (itertools.count is atomic).
    values = distinct_values(max(200_000, int(args.seconds * 20_000)), rng)
    seq = itertools.count()
    conns = [backend.raw_connect(url) for _ in range(args.threads)]
    now_fn = datetime.now

    def work(i: int, keep_going: Callable[[], bool]) -> int:
        conn, n = conns[i], 0
        while keep_going():
            j = next(seq)
            c, e = claim_rows(pool_id, f"port:{run}-{i}-{n:08d}", values[j], rev0 + 1 + j, backend.ts(now_fn(UTC)))
            if backend.name == "sqlite":
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(ins_claim, c)
                conn.execute(ins_event, e)
                conn.execute("COMMIT")
            else:
                with conn.transaction():
                    conn.execute(ins_claim, c)
                    conn.execute(ins_event, e)
            n += 1
        return n

    try:
        done, elapsed = run_threads(args.threads, args.seconds, work)
        got = conns[0].execute("SELECT count(*) FROM claims").fetchone()[0]
        assert got == done, (got, done)
    finally:
        for c in conns:
            c.close()
    return Outcome(done, elapsed, {})


def neutron_threads(variant: str) -> Callable[[Backend, argparse.Namespace, int], Outcome]:
    def mode(backend: Backend, args: argparse.Namespace, run: int) -> Outcome:
        url = backend.fresh_neutron_store()
        retries = [0]
        lock = threading.Lock()
        pg = backend.name != "sqlite"
        f = "false" if pg else "0"
        t = "true" if pg else "1"
        p = "%s" if pg else "?"
        pick = (f"SELECT vni FROM allocs WHERE allocated = {f} LIMIT 100" if variant == "first100"
                else f"SELECT vni FROM allocs WHERE allocated = {f} ORDER BY random() LIMIT 1")
        cas = f"UPDATE allocs SET allocated = {t}, key = {p} WHERE vni = {p} AND allocated = {f}"
        conns = [backend.raw_connect(url.removeprefix("sqlite:///")) for _ in range(args.threads)]

        def work(i: int, keep_going: Callable[[], bool]) -> int:
            conn, n, mine = conns[i], 0, 0
            rng = random.Random(run * 1000 + i)
            while keep_going():
                key = f"port:{run}-{i}-{n:08d}"
                while True:
                    if pg:
                        # As Neutron: select and compare-and-swap in one transaction (READ COMMITTED: the
                        # UPDATE re-checks the row after any concurrent writer commits).
                        try:
                            with conn.transaction():
                                rows = conn.execute(pick).fetchall()
                                vni = rng.choice(rows)[0]
                                ok = conn.execute(cas, (key, vni)).rowcount == 1
                                if not ok:
                                    raise _Retry  # rolls the transaction back
                        except _Retry:
                            pass
                    else:
                        # SQLite has no row locks: the read is its own snapshot, the CAS is the write
                        # transaction (BEGIN IMMEDIATE takes the write lock, so it sees the newest rows).
                        rows = conn.execute(pick).fetchall()
                        vni = rng.choice(rows)[0]
                        conn.execute("BEGIN IMMEDIATE")
                        ok = conn.execute(cas, (key, vni)).rowcount == 1
                        conn.execute("COMMIT" if ok else "ROLLBACK")
                    if ok:
                        break
                    mine += 1
                n += 1
            with lock:
                retries[0] += mine
            return n

        try:
            done, elapsed = run_threads(args.threads, args.seconds, work)
            c0 = conns[0]
            allocated = c0.execute(f"SELECT count(*) FROM allocs WHERE allocated = {t}").fetchone()[0]
            if pg:
                c0.rollback()
        finally:
            for c in conns:
                c.close()
        assert allocated == done, (allocated, done)
        return Outcome(done, elapsed, {"retries": retries[0], "range": backend.neutron_range})

    return mode


class _Retry(Exception):
    pass


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="repetitions of every mode (median reported)")
    ap.add_argument("--bulk-claims", type=int, default=50_000, help="claims per bulk run")
    ap.add_argument("--batch", type=int, default=1000, help="keys per claim_many / per raw bulk transaction")
    ap.add_argument("--threads", type=int, default=64, help="concurrent claimers in the one-at-a-time modes")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each one-at-a-time run")
    ap.add_argument("--neutron-range", type=int, default=1_000_000, help="rows pre-populated for the baseline")
    ap.add_argument("--neutron-variants", default="first100,order-random",
                    help="comma list of: first100 (Neutron's own), order-random")
    ap.add_argument("--postgres", action="store_true", help="also run every mode on a throwaway PostgreSQL")
    ap.add_argument("--no-sqlite", action="store_true", help="skip SQLite (with --postgres)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="wait up to this many seconds for other processes to quiet down before starting")
    ap.add_argument("--dir", default=None, help="where the SQLite files go (default: a temp dir on /tmp's disk)")
    args = ap.parse_args()
    variants = [v for v in args.neutron_variants.split(",") if v]
    for v in variants:
        if v not in ("first100", "order-random"):
            ap.error(f"unknown Neutron variant {v!r}")

    workdir = Path(tempfile.mkdtemp(prefix="tenure-bench-", dir=args.dir))
    report = Report("allocator", benchkit.machine(workdir, quiet_wait=args.quiet_wait), dict(vars(args)))
    benchkit.print_machine(report.machine)
    modes: list[tuple[str, str, Callable[[Backend, argparse.Namespace, int], Outcome]]] = [
        ("tenure bulk", "a", tenure_bulk),
        ("raw bulk (limit)", "a", raw_bulk),
        ("raw bulk, rows built in the clock", "info", raw_bulk_build),
        (f"tenure {args.threads} threads", "b", tenure_threads),
        (f"raw {args.threads} threads (limit)", "b", raw_threads),
    ]
    for v in variants:
        modes.append((f"neutron {v} {args.threads} threads", "c", neutron_threads(v)))

    backends: list[Backend] = []
    try:
        if not args.no_sqlite:
            backends.append(SqliteBackend(workdir, args.neutron_range))
        if args.postgres:
            try:
                backends.append(PostgresBackend(args.neutron_range))
            except Exception as exc:  # report, do not gate
                report.notes.append(f"PostgreSQL not measured: {type(exc).__name__}: {exc}")
        for backend in backends:
            benchkit.console().print(f"[bold]{backend.name}[/]: {len(modes)} modes x {args.runs} runs ...")
            results: dict[str, list[Outcome]] = {m: [] for m, _, _ in modes}
            for run in range(args.runs):
                for name, _, fn in modes:
                    out = fn(backend, args, run)
                    results[name].append(out)
                    benchkit.console().print(f"  run {run + 1}  {name:<34} {fmt(out.rate):>10} claims/s "
                                             f"[dim]({out.claims} in {out.seconds:.2f} s) {out.extra}[/]")
            summarize(report, backend, modes, results, args)
    finally:
        for b in backends:
            b.close()
        shutil.rmtree(workdir, ignore_errors=True)
    benchkit.finish(report)


def _detail(extra: dict[str, Any]) -> str:
    out = []
    for k, v in extra.items():
        if k == "durability":
            out.append("/".join(str(x) for x in v.values()))
        elif isinstance(v, float):
            out.append(f"{k} {v:.1f}")
        else:
            out.append(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}")
    return ", ".join(out)


def summarize(report: Report, backend: Backend, modes: list, results: dict[str, list[Outcome]],
              args: argparse.Namespace) -> None:
    rows, med = [], {}
    for name, group, _ in modes:
        rates = [o.rate for o in results[name]]
        med[name] = median(rates)
        extra = results[name][-1].extra
        rows.append((name, group, fmt(med[name]), " / ".join(fmt(r) for r in rates), _detail(extra)))
        report.results.append({"backend": backend.name, "mode": name, "group": group,
                               "median_claims_per_s": round(med[name], 1),
                               "runs_claims_per_s": [round(r, 1) for r in rates],
                               "claims": [o.claims for o in results[name]],
                               "seconds": [round(o.seconds, 3) for o in results[name]],
                               "extra": [o.extra for o in results[name]]})
    benchkit.print_table(f"Durable claims per second, {backend.name} (median of {args.runs})",
                         ["mode", "goal", "median claims/s", "runs", "last run detail"], rows)
    t = args.threads
    bulk, raw_bulk_ = med["tenure bulk"], med["raw bulk (limit)"]
    one, raw_one = med[f"tenure {t} threads"], med[f"raw {t} threads (limit)"]
    b = backend.name
    report.goals.append(Goal(f"({b}) a: bulk vs raw insert limit", bulk / raw_bulk_, 0.5, "x",
                             detail=f"{fmt(bulk)} vs {fmt(raw_bulk_)} claims/s"))
    report.goals.append(Goal(f"({b}) b: {t} threads vs raw one-txn-per-claim limit", one / raw_one, 0.5, "x",
                             detail=f"{fmt(one)} vs {fmt(raw_one)} claims/s"))
    for name, group, _ in modes:
        if group == "c":
            report.goals.append(Goal(f"({b}) c: {t} threads vs {name}", one / med[name], 20, "x",
                                     detail=f"{fmt(one)} vs {fmt(med[name])} claims/s, "
                                            f"range {backend.neutron_range:,} rows"))
    if isinstance(backend, PostgresBackend):
        report.notes.append(f"PostgreSQL settings: {backend.settings}")


if __name__ == "__main__":
    main()
