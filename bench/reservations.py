#!/usr/bin/env python3
"""Admission of bandwidth reservations on a k=16 fat tree with 100,000 reservations booked (issue 4).

    python3 dev.py bench reservations [--runs 3] [--quick] [--no-http] ...

The state: a k-ary fat tree (``--k 16``: 1,024 hosts, 320 switches, 3,072 links; host links
``--host-capacity`` 10G, switch links ``--fabric-capacity`` 40G, both ways) and ``--reservations``
100,000 bandwidth reservations between random host pairs, booked through the library
(``Runtime.open`` on a temporary SQLite file, a fixed clock, housekeeping off; ops submitted
concurrently so group commit batches them). Windows: start uniform in [now, now + 7 d), length uniform
1 min - 2 d, capped at the week; rate_out and rate_in uniform 10M - 500M (whole Mbit/s). "now" is the
real time at the start, rounded down to the minute, so the HTTP server (real clock) sees the same week.

Modes, each measured ``--runs`` times with the rounds interleaved, medians of the per-round numbers:

domain             the admission search alone, in the writer thread, no commit: ``Capacity.route`` for the
                   out leg, ``book``, ``route`` for the in leg, ``book`` (timed); then ``unbook`` (not timed)
library            ``rt.run(rt.reservations.create_op(ReservationRequest.parse(raw)))`` one at a time
                   (validation, search, booking, rows, event, SQLite commit with fsync); afterwards every
                   admitted one is cancelled
library 64 thr     the same from ``--threads`` threads at once (group commit); cancelled afterwards
http               a real ``tenure serve`` on a copy of the preloaded store (pinned to core 0, this process to
                   core 1): ``POST /v1/reservations`` one at a time with httpx, then from ``--http-clients``
                   threads; admitted ones are cancelled afterwards (DELETE)
baseline           brute force in this process on the same state: for every link direction, scan every
                   booked (hop, start, end, rate) of that direction and sweep the overlapping ones for the peak
                   over the window; keep the hops with peak + rate <= usable (into/out of the two end hosts and
                   switch-switch only); ``networkx.shortest_path``; per leg (the in leg's scan sees the out leg)

The baseline's requests are also admitted by the domain search on the same state (and undone): the two
must agree on the hop count of each leg's path, or on a refusal. Memory: breakpoints in every ledger,
bytes per breakpoint (the ledgers' lists and int objects, deduplicated), and under tracemalloc on a fresh
``Capacity`` of the same topology: 1-minute vs 300-day bookings on the same paths add the same number of
breakpoints and bytes. Goals (issue 4): median admission <= 5 ms; >= 50x faster than the baseline; ledger
memory grows with breakpoints, not with time. The script reports and never gates (exit 0).
"""

from __future__ import annotations

import sys  # noqa: E402
from pathlib import Path

# bench/http.py would shadow the standard library's http package (urllib.request and httpx import
# http.client): keep this folder off the front of sys.path; benchkit is found at the end.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.append(str(HERE))

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections import Counter, deque  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import networkx as nx  # noqa: E402

from tenure.config import Settings  # noqa: E402
from tenure.domain.capacity import Capacity  # noqa: E402
from tenure.domain.errors import Conflict, TenureError  # noqa: E402
from tenure.domain.reservation import ReservationRequest, Leg  # noqa: E402
from tenure.domain.topology import TRANSIT_KINDS, Topology  # noqa: E402
from tenure.domain.units import US, iso  # noqa: E402
from tenure.services.runtime import Runtime  # noqa: E402
from tenure.store.writer import Op  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Goal, Report, fmt, median  # noqa: E402
from benchkit.server import TenureServer  # noqa: E402

WEEK_S = 7 * 86400
MIN_LEN_S, MAX_LEN_S = 60, 2 * 86400
RATE_MBPS = (10, 500)

# A raw request and the same as integers for the domain: (src, dst, rate_out, rate_in, start_us, end_us).
Raw = dict[str, Any]
Req = tuple[str, str, int, int, int, int]


# --------------------------------------------------------------------------- topology and requests


def fat_tree(k: int, host_cap: int, fabric_cap: int) -> tuple[dict[str, Any], list[str]]:
    """A k-ary fat tree: k pods of k/2 edge + k/2 aggregation switches, (k/2)^2 cores, k/2 hosts per edge.

    Edge and aggregation switches of a pod are fully meshed; aggregation switch i of every pod connects to
    cores i*k/2 .. i*k/2 + k/2 - 1. Returns the topology document and the host ids.
    """
    if k < 2 or k % 2:
        raise ValueError("k must be even")
    h = k // 2
    nodes: list[dict[str, Any]] = [{"id": f"core{c}", "kind": "switch"} for c in range(h * h)]
    links: list[dict[str, Any]] = []
    hosts: list[str] = []
    for p in range(k):
        nodes += [{"id": f"p{p}-agg{i}", "kind": "switch"} for i in range(h)]
        nodes += [{"id": f"p{p}-edge{i}", "kind": "switch"} for i in range(h)]
        for e in range(h):
            for a in range(h):
                links.append({"id": f"p{p}-edge{e}-agg{a}", "a": f"p{p}-edge{e}", "b": f"p{p}-agg{a}",
                              "capacity": fabric_cap})
        for a in range(h):
            for j in range(h):
                c = a * h + j
                links.append({"id": f"p{p}-agg{a}-core{c}", "a": f"p{p}-agg{a}", "b": f"core{c}",
                              "capacity": fabric_cap})
        for e in range(h):
            for j in range(h):
                host = f"p{p}-e{e}-h{j}"
                hosts.append(host)
                nodes.append({"id": host, "kind": "host"})
                links.append({"id": f"{host}-nic", "a": host, "b": f"p{p}-edge{e}", "capacity": host_cap})
    return {"nodes": nodes, "links": links}, hosts


def link_class(link_id: str) -> str:
    if link_id.endswith("-nic"):
        return "host-edge"
    return "agg-core" if "-core" in link_id else "edge-agg"


def gen_requests(rng: random.Random, hosts: Sequence[str], n: int, base_s: int) -> list[Raw]:
    """Bandwidth requests between random host pairs with random windows in [base, base + 7 d)."""
    out = []
    for _ in range(n):
        a, b = rng.sample(hosts, 2)
        start = base_s + rng.randrange(WEEK_S)
        end = min(start + rng.randint(MIN_LEN_S, MAX_LEN_S), base_s + WEEK_S)
        out.append({"kind": "bandwidth", "src": a, "dst": b, "rate_out": rng.randint(*RATE_MBPS) * 10**6,
                    "rate_in": rng.randint(*RATE_MBPS) * 10**6, "start": start, "end": end})
    return out


def as_req(raw: Raw) -> Req:
    return raw["src"], raw["dst"], raw["rate_out"], raw["rate_in"], raw["start"] * US, raw["end"] * US


def pct(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


# --------------------------------------------------------------------------- the library


class Store:
    """The preloaded runtime: fixed clock, housekeeping off."""

    def __init__(self, db: Path, now: datetime) -> None:
        self.db = db
        self.now = now
        self.rt = Runtime.open(f"sqlite:///{db}", clock=lambda: now, settings=Settings(housekeeping=False))
        self.svc = self.rt.reservations

    def breakpoints(self) -> int:
        return sum(len(led) for led in self.svc.cap.use) + sum(len(led) for led in self.svc.cap.held.values())

    def submit_all(self, raws: Sequence[Raw], inflight: int = 4096,
                   progress: Callable[[int], None] | None = None) -> tuple[list[str], Counter[str]]:
        """Create every request with up to ``inflight`` futures pending; (admitted ids, refusals by code)."""
        ids: list[str] = []
        refused: Counter[str] = Counter()
        pending: deque[Any] = deque()

        def collect(fut: Any) -> None:
            try:
                ids.append(fut.result(timeout=600)[0].id)
            except TenureError as exc:
                refused[exc.code] += 1

        for i, raw in enumerate(raws):
            pending.append(self.rt.writer.submit(self.svc.create_op(ReservationRequest.parse(raw))))
            if len(pending) >= inflight:
                collect(pending.popleft())
            if progress is not None and (i + 1) % 10_000 == 0:
                progress(i + 1)
        while pending:
            collect(pending.popleft())
        return ids, refused

    def cancel_all(self, ids: Sequence[str]) -> None:
        futs = [self.rt.writer.submit(self.svc.cancel_op(rid)) for rid in ids]
        for f in futs:
            f.result(timeout=600)

    def in_writer(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` as a writer command that writes nothing (so nothing is committed)."""
        return self.rt.run(Op(lambda batch: fn()), timeout=3600)

    def close(self) -> None:
        self.rt.close()


def refusal_place(cap: Capacity, exc: Conflict, req: Req) -> str:
    """Why a leg was refused: its source's NIC (the first hop) is full over the window, its destination's
    NIC (the last hop) is, or both fit and the fabric between them has no path that does."""
    src, dst, ro, ri, s, e = req
    leg_src, leg_dst, rate = (src, dst, ro) if exc.details.get("leg") == "out" else (dst, src, ri)
    hop = cap.topology.hop_index
    if not cap.hop_ok(hop[(f"{leg_src}-nic", "ab")], s, e, rate, None):  # a = host, b = edge switch
        return "source NIC"
    if not cap.hop_ok(hop[(f"{leg_dst}-nic", "ba")], s, e, rate, None):
        return "destination NIC"
    return "fabric"


def domain_admissions(cap: Capacity, reqs: Sequence[Req]) -> list[tuple[int, tuple[int, ...] | None, str | None]]:
    """Admit each request's two legs in ``cap`` (route + book, timed), then unbook (not timed).

    Returns (ns, hop counts per leg or None if refused, why a refusal) per request. Call in the writer thread.
    """
    out: list[tuple[int, tuple[int, ...] | None, str | None]] = []
    clock = time.perf_counter_ns
    for src, dst, ro, ri, s, e in reqs:
        booked: list[tuple[list[int], int]] = []
        why = None
        t0 = clock()
        try:
            p1 = cap.route(Leg("out", src, dst, ro), s, e, None)
            cap.book(p1, s, e, ro, None)
            booked.append((p1, ro))
            p2 = cap.route(Leg("in", dst, src, ri), s, e, None)
            cap.book(p2, s, e, ri, None)
            booked.append((p2, ri))
            hops: tuple[int, ...] | None = (len(p1), len(p2))
        except Conflict as exc:
            hops = None
            why = exc
        t1 = clock()
        place = refusal_place(cap, why, (src, dst, ro, ri, s, e)) if why is not None else None
        for p, r in reversed(booked):
            cap.unbook(p, s, e, r, None)
        out.append((t1 - t0, hops, place))
    return out


def library_sequential(store: Store, raws: Sequence[Raw]) -> dict[str, Any]:
    lat, ids, refused = [], [], 0
    w = store.rt.writer
    b0 = w.batches
    cpu0 = time.process_time()
    start = time.perf_counter()
    ok_lat, no_lat = [], []
    for raw in raws:
        t0 = time.perf_counter()
        try:
            res, _, _ = store.rt.run(store.svc.create_op(ReservationRequest.parse(raw)))
            ids.append(res.id)
            ok = True
        except Conflict:
            refused += 1
            ok = False
        dt = time.perf_counter() - t0
        lat.append(dt)
        (ok_lat if ok else no_lat).append(dt)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    commits = w.batches - b0
    store.cancel_all(ids)
    return {"n": len(raws), "admitted": len(ids), "refused": refused, "wall_s": wall, "rate": len(raws) / wall,
            "p50_ms": median(lat) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "max_ms": max(lat) * 1e3,
            "commits": commits, "cpu_per_adm_us": cpu / len(raws) * 1e6, "admitted_p50_ms": median(ok_lat) * 1e3,
            "admitted_p99_ms": pct(ok_lat, 99) * 1e3, "refused_p50_ms": median(no_lat) * 1e3,
            "refused_p99_ms": pct(no_lat, 99) * 1e3}


def run_threads(n: int, work: Callable[[int], list[float]]) -> tuple[list[list[float]], float]:
    barrier = threading.Barrier(n + 1)
    results: list[list[float]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return results, wall


def library_concurrent(store: Store, raws: Sequence[Raw], threads: int) -> dict[str, Any]:
    ids: list[str] = []
    refused = [0]
    lock = threading.Lock()
    w = store.rt.writer
    b0, c0 = w.batches, w.commands
    cpu0 = time.process_time()

    def work(i: int) -> list[float]:
        lat = []
        for raw in raws[i::threads]:
            t0 = time.perf_counter()
            try:
                res, _, _ = store.rt.run(store.svc.create_op(ReservationRequest.parse(raw)))
                with lock:
                    ids.append(res.id)
            except Conflict:
                with lock:
                    refused[0] += 1
            lat.append(time.perf_counter() - t0)
        return lat

    per_thread, wall = run_threads(threads, work)
    cpu = time.process_time() - cpu0
    lat = [x for xs in per_thread for x in xs]
    batches, commands = w.batches - b0, w.commands - c0
    store.cancel_all(ids)
    return {"n": len(raws), "admitted": len(ids), "refused": refused[0], "wall_s": wall,
            "rate": len(raws) / wall, "p50_ms": median(lat) * 1e3, "p99_ms": pct(lat, 99) * 1e3,
            "max_ms": max(lat) * 1e3, "commits": batches, "per_commit": commands / max(batches, 1),
            "cpu_per_adm_us": cpu / len(raws) * 1e6}


# --------------------------------------------------------------------------- HTTP


class Server(TenureServer):
    """``tenure serve`` on a preloaded store: its restore can take longer than the usual 60 s."""

    def _wait_ready(self, timeout: float = 900) -> tuple[str, str]:
        return super()._wait_ready(timeout)


def http_client(server: TenureServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=60)


def http_post(client: httpx.Client, raw: Raw) -> tuple[float, int, str | None]:
    t0 = time.perf_counter()
    r = client.post("/v1/reservations", json=raw)
    dt = time.perf_counter() - t0
    rid = r.json()["id"] if r.status_code == 201 else None
    return dt, r.status_code, rid


def http_cancel_all(server: TenureServer, ids: Sequence[str], threads: int = 16) -> int:
    bad = [0]

    def work(i: int) -> list[float]:
        with http_client(server) as c:
            for rid in ids[i::threads]:
                if c.delete(f"/v1/reservations/{rid}").status_code != 200:
                    bad[0] += 1
        return []

    run_threads(threads, work)
    return bad[0]


def http_floor(server: TenureServer, n: int) -> dict[str, Any]:
    """``GET /v1/whoami`` one at a time (auth, no store): the HTTP stack's own latency and CPU right now."""
    lat = []
    cpu0 = server.cpu_seconds()
    with http_client(server) as c:
        c.get("/v1/whoami")
        start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            if c.get("/v1/whoami").status_code != 200:
                raise RuntimeError("GET /v1/whoami failed")
            lat.append(time.perf_counter() - t0)
        wall = time.perf_counter() - start
    return {"n": n, "refused": 0, "wall_s": wall, "rate": n / wall, "p50_ms": median(lat) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3, "max_ms": max(lat) * 1e3,
            "server_cpu_per_req_us": (server.cpu_seconds() - cpu0) / n * 1e6}


def http_mode(server: TenureServer, raws: Sequence[Raw], clients: int) -> dict[str, Any]:
    """``clients`` threads with a keep-alive connection each (1: one request at a time)."""
    statuses: Counter[int] = Counter()
    ids: list[str] = []
    lock = threading.Lock()
    cpu0 = server.cpu_seconds()

    def work(i: int) -> list[float]:
        lat = []
        with http_client(server) as c:
            c.get("/v1/whoami")  # connect before the clock starts
            for raw in raws[i::clients]:
                dt, status, rid = http_post(c, raw)
                lat.append(dt)
                with lock:
                    statuses[status] += 1
                    if rid is not None:
                        ids.append(rid)
        return lat

    per_thread, wall = run_threads(clients, work)
    cpu = server.cpu_seconds() - cpu0
    lat = [x for xs in per_thread for x in xs]
    bad_cancels = http_cancel_all(server, ids)
    other = sum(v for k, v in statuses.items() if k not in (201, 409))
    return {"n": len(raws), "admitted": statuses[201], "refused": statuses[409], "other_status": other,
            "statuses": {str(k): v for k, v in statuses.items()}, "wall_s": wall, "rate": len(raws) / wall,
            "p50_ms": median(lat) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "max_ms": max(lat) * 1e3,
            "server_cpu_per_req_us": cpu / len(raws) * 1e6, "cancel_failures": bad_cancels}


# --------------------------------------------------------------------------- the brute-force baseline


class Baseline:
    """Every booking as (start, end, rate) in a list per hop; peaks by scanning and sweeping; networkx paths."""

    def __init__(self, topo: Topology, bookings: list[list[tuple[int, int, int]]]) -> None:
        self.hops = [(topo.node_ids[u], topo.node_ids[v]) for u, v in topo.graph.ends]
        self.usable = list(topo.usable)
        self.transit = {n.id: n.kind in TRANSIT_KINDS for n in topo.nodes.values()}
        self.per_hop = bookings
        self.entries = sum(len(x) for x in bookings)
        self.scan_s = 0.0
        self.graph_s = 0.0

    def peaks(self, ws: int, we: int) -> list[int]:
        """The peak usage of every hop over [ws, we): scan all its bookings, sweep the overlapping ones."""
        out = []
        for lst in self.per_hop:
            ev = []
            for s, e, r in lst:
                if s < we and e > ws:
                    ev.append((s if s > ws else ws, r))
                    ev.append((e if e < we else we, -r))  # sorts before a start at the same instant
            peak = cur = 0
            if ev:
                ev.sort()
                for _, d in ev:
                    cur += d
                    if cur > peak:
                        peak = cur
            out.append(peak)
        return out

    def leg(self, src: str, dst: str, rate: int, ws: int, we: int) -> list[int] | None:
        t0 = time.perf_counter()
        peaks = self.peaks(ws, we)
        t1 = time.perf_counter()
        g = nx.DiGraph()
        g.add_nodes_from((src, dst))
        transit = self.transit
        for h, (u, v) in enumerate(self.hops):
            if peaks[h] + rate <= self.usable[h] and (u == src or transit[u]) and (v == dst or transit[v]):
                g.add_edge(u, v, hop=h)
        try:
            path = nx.shortest_path(g, src, dst)
        except nx.NetworkXNoPath:
            path = None
        self.scan_s += t1 - t0
        self.graph_s += time.perf_counter() - t1
        return None if path is None else [g[a][b]["hop"] for a, b in zip(path, path[1:], strict=False)]

    def admit(self, req: Req) -> tuple[int, ...] | None:
        """Both legs (the in leg sees the out leg's booking); nothing stays booked. Hop counts or None."""
        src, dst, ro, ri, s, e = req
        p1 = self.leg(src, dst, ro, s, e)
        if p1 is None:
            return None
        for h in p1:
            self.per_hop[h].append((s, e, ro))
        try:
            p2 = self.leg(dst, src, ri, s, e)
        finally:
            for h in p1:
                self.per_hop[h].pop()
        return None if p2 is None else (len(p1), len(p2))


def baseline_bookings(store: Store) -> list[list[tuple[int, int, int]]]:
    """What the ledgers hold, as the baseline's flat per-hop lists (read in the writer thread)."""

    def read() -> list[list[tuple[int, int, int]]]:
        topo = store.svc.cap.topology
        per_hop: list[list[tuple[int, int, int]]] = [[] for _ in topo.hops]
        for res in store.svc._res.values():
            if not res.holds_capacity:
                continue
            for leg in res.legs:
                for h in topo.hops_of(list(leg.hops)) or ():
                    per_hop[h].append((res.start, res.end, leg.rate))
        return per_hop

    return store.in_writer(read)


# --------------------------------------------------------------------------- memory


def ledger_bytes(cap: Capacity) -> tuple[int, int, int]:
    """(bytes of the Ledger objects and their lists, bytes of the distinct int objects in them, breakpoints)."""
    seen: set[int] = set()
    structure = ints = bps = 0
    for led in cap.use:
        t, v = led._t, led._v  # noqa: SLF001 - the benchmark measures the representation
        structure += sys.getsizeof(led) + sys.getsizeof(t) + sys.getsizeof(v)
        bps += len(t)
        for x in (*t, *v):
            if id(x) not in seen:
                seen.add(id(x))
                ints += sys.getsizeof(x)
    return structure, ints, bps


def _traced_bookings(topo: Topology, bookings: Sequence[tuple[str, str, int, int, int]]) -> dict[str, Any]:
    """Route and book (both legs) every (src, dst, rate, start, length) on a fresh Capacity under tracemalloc."""
    gc.collect()
    tracemalloc.start()
    cap = Capacity(topo, {})
    before, _ = tracemalloc.get_traced_memory()
    refused = 0
    for src, dst, rate, start, length in bookings:
        s, e = start + 0, start + length  # new int objects, allocated under tracemalloc
        for leg in (Leg("out", src, dst, rate), Leg("in", dst, src, rate)):
            try:
                cap.book(cap.route(leg, s, e, None), s, e, rate, None)
            except Conflict:
                refused += 1
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    bps = sum(len(led) for led in cap.use)
    return {"breakpoints": bps, "bytes": after - before, "bytes_per_breakpoint": (after - before) / bps,
            "legs_refused": refused}


def growth_test(topo: Topology, hosts: Sequence[str], base_us: int, n: int, seed: int) -> dict[str, Any]:
    """The same n reservations (pairs, rates, order of their instants) booked as 1-minute and as 300-day ones.

    ``stretched``: every instant is scaled by 432,000 (starts spread over 10 lengths: 10 minutes, resp.
    3,000 days), so only the distances between instants change, not their order. ``week``: starts uniform in
    the week, lengths 1 minute vs 300 days (the long ones overlap each other, the short ones mostly do not).
    Each on a fresh Capacity of ``topo`` under tracemalloc: breakpoints and bytes added."""
    rng = random.Random(seed)
    pairs = [(*rng.sample(hosts, 2), rng.randint(*RATE_MBPS) * 10**6, rng.random(), rng.randrange(WEEK_S * US))
             for _ in range(n)]
    out: dict[str, Any] = {"reservations": n}
    for name, length in (("1 minute", 60 * US), ("300 days", 300 * 86400 * US)):
        out[f"stretched {name}"] = _traced_bookings(
            topo, [(a, b, r, base_us + int(u * 10 * length), length) for a, b, r, u, _ in pairs])
        out[f"week {name}"] = _traced_bookings(topo, [(a, b, r, base_us + w, length) for a, b, r, _, w in pairs])
    return out


def service_growth(store: Store, hosts: Sequence[str], now_s: int) -> dict[str, Any]:
    """Breakpoints added by one 1-minute and by one 300-day reservation through the service (then cancelled)."""
    out = {}
    for name, length in (("1 minute", 60), ("300 days", 300 * 86400)):
        raw = {"kind": "bandwidth", "src": hosts[1], "dst": hosts[-2], "rate_out": 100 * 10**6,
               "start": now_s + 3600, "end": now_s + 3600 + length}
        b0 = store.breakpoints()
        res, _, _ = store.rt.run(store.svc.create_op(ReservationRequest.parse(raw)))
        added = store.breakpoints() - b0
        store.cancel_all([res.id])
        out[name] = {"breakpoints_added": added, "hops": sum(len(leg.hops) for leg in res.legs)}
    return out


# --------------------------------------------------------------------------- main


def summarize(rs: list[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in rs])


def cpu_column(rs: list[dict[str, Any]]) -> str:
    """CPU per admission: this process (library), the server process (HTTP), the search itself (domain)."""
    for key, label in (("cpu_per_adm_us", ""), ("server_cpu_per_req_us", " (server)")):
        if key in rs[0]:
            return f"{summarize(rs, key):,.0f}{label}"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: k=8, 10,000 reservations, fewer requests")
    ap.add_argument("--k", type=int, default=None, help="fat tree arity (default 16; 8 with --quick)")
    ap.add_argument("--reservations", type=int, default=None, help="preloaded (default 100,000; 10,000 --quick)")
    ap.add_argument("--host-capacity", type=float, default=10e9, help="host links, bit/s each way")
    ap.add_argument("--fabric-capacity", type=float, default=40e9, help="switch-switch links, bit/s each way")
    ap.add_argument("--runs", type=int, default=3, help="rounds (medians reported)")
    ap.add_argument("--domain-n", type=int, default=None, help="domain admissions per round (default 2,000)")
    ap.add_argument("--library-n", type=int, default=None, help="one-at-a-time library admissions per round (1,000)")
    ap.add_argument("--threads", type=int, default=64, help="concurrent library submitters")
    ap.add_argument("--library-conc-n", type=int, default=None, help="admissions per concurrent round (2,000)")
    ap.add_argument("--http-n", type=int, default=None, help="one-at-a-time HTTP admissions per round (500)")
    ap.add_argument("--http-clients", type=int, default=32, help="concurrent HTTP clients (threads)")
    ap.add_argument("--http-conc-n", type=int, default=None, help="admissions per concurrent HTTP round (1,500)")
    ap.add_argument("--baseline-n", type=int, default=None, help="baseline admissions per round (15)")
    ap.add_argument("--growth-n", type=int, default=2000, help="reservations per tracemalloc growth test")
    ap.add_argument("--no-http", dest="http", action="store_false", help="skip the HTTP modes")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the server and this process to cores")
    ap.add_argument("--server-log-level", default="info", help="tenure serve --log-level (shipped default: info)")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="wait up to this many seconds for other processes to quiet down before starting")
    ap.add_argument("--dir", default=None, help="parent of the temp data dir")
    args = ap.parse_args()
    q = args.quick
    k = args.k or (8 if q else 16)
    n_res = args.reservations or (10_000 if q else 100_000)
    domain_n = args.domain_n or (500 if q else 2000)
    library_n = args.library_n or (200 if q else 1000)
    conc_n = args.library_conc_n or (500 if q else 2000)
    http_n = args.http_n or (100 if q else 500)
    http_conc_n = args.http_conc_n or (300 if q else 1500)
    baseline_n = args.baseline_n or (5 if q else 15)
    growth_n = min(args.growth_n, 500) if q else args.growth_n

    pin = args.http and not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {1})  # this process (library, clients, baseline) on core 1; the server on core 0
    workdir = Path(tempfile.mkdtemp(prefix="tenure-res-", dir=args.dir))
    config = {**vars(args), "k": k, "reservations": n_res, "domain_n": domain_n, "library_n": library_n,
              "library_conc_n": conc_n, "http_n": http_n, "http_conc_n": http_conc_n, "baseline_n": baseline_n,
              "growth_n": growth_n, "pinned": pin}
    report = Report("reservations", benchkit.machine(workdir, quiet_wait=args.quiet_wait), config)
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    now_s = int(now.timestamp())
    now_us = now_s * US
    rng = random.Random(args.seed)

    doc, hosts = fat_tree(k, int(args.host_capacity), int(args.fabric_capacity))
    topo = Topology.parse(doc)
    switches = sum(1 for nd in topo.nodes.values() if nd.kind == "switch")
    con.print(f"fat tree k={k}: {len(hosts):,} hosts, {switches:,} switches, {len(topo.links):,} links "
              f"({len(topo.hops):,} hops); now = {iso(now_us)} (fixed library clock)")

    server: Server | None = None
    server_box: dict[str, Any] = {}
    starter: threading.Thread | None = None
    try:
        # ------------------------------------------------------------ preload
        store = Store(workdir / "lib.db", now)
        store.rt.run(store.rt.topology.set_topology_op(topo))
        preload = gen_requests(rng, hosts, n_res, now_s)
        rss0 = benchkit.rss_bytes()
        w = store.rt.writer
        b0, c0 = w.batches, w.commands
        t0 = time.perf_counter()
        ids, refused = store.submit_all(
            preload, progress=lambda i: con.print(f"  preloaded {i:,} ({time.perf_counter() - t0:.0f} s)"))
        load_s = time.perf_counter() - t0
        gc.collect()
        gc.freeze()  # as a restored runtime does: the preloaded objects are out of the collector's sight
        rss1 = benchkit.rss_bytes()
        load = {"reservations": n_res, "admitted": len(ids), "refused": dict(refused),
                "refused_total": sum(refused.values()), "seconds": load_s, "per_s": n_res / load_s,
                "commits": w.batches - b0, "per_commit": (w.commands - c0) / max(w.batches - b0, 1),
                "rss_growth_bytes": rss1 - rss0, "db_bytes": (workdir / "lib.db").stat().st_size}
        con.print(f"preload: {n_res:,} requests in {load_s:.1f} s = {fmt(load['per_s'])} reservations/s "
                  f"({load['per_commit']:.0f} per commit); refused {load['refused_total']:,} {dict(refused)}; "
                  f"RSS +{(rss1 - rss0) / 2**20:.0f} MiB")
        report.results.append({"preload": load})

        # ------------------------------------------------------------ the server, restoring in the background
        if args.http:
            data_dir = workdir / "server"
            data_dir.mkdir()
            src = sqlite3.connect(store.db)
            dst = sqlite3.connect(data_dir / "tenure.db")
            src.backup(dst)
            dst.close()
            src.close()

            def start_server() -> None:
                t = time.perf_counter()
                try:
                    server_box["server"] = Server(data_dir, args.server_log_level, "0" if pin else None)
                    server_box["ready_s"] = time.perf_counter() - t
                except BaseException as exc:  # surfaced when joined
                    server_box["error"] = exc

            starter = threading.Thread(target=start_server, daemon=True)
            starter.start()

        # ------------------------------------------------------------ ledger state and memory (not timed)
        cap = store.svc.cap
        structure, ints, bps = ledger_bytes(cap)
        per_class: dict[str, list[int]] = {}
        for h, (lid, _d) in enumerate(topo.hops):
            per_class.setdefault(link_class(lid), []).append(len(cap.use[h]))
        dist = {c: {"median": statistics.median(v), "max": max(v), "total": sum(v)} for c, v in per_class.items()}
        busy = Counter()
        for h, (lid, _d) in enumerate(topo.hops):
            if cap.use[h] and cap.use[h].peak(now_us, now_us + WEEK_S * US) > 0.9 * topo.usable[h]:
                busy[link_class(lid)] += 1
        empty = sum(sys.getsizeof(led) + sys.getsizeof(led._t) + sys.getsizeof(led._v)  # noqa: SLF001
                    for led in Capacity(topo, {}).use)
        state = {"breakpoints": bps, "structure_bytes": structure, "int_bytes": ints,
                 "bytes_per_breakpoint": (structure - empty + ints) / bps,
                 "list_bytes_per_breakpoint": (structure - empty) / bps, "per_link_class": dist,
                 "hops_over_90pct_at_peak": dict(busy)}
        con.print(f"ledgers: {bps:,} breakpoints, {(structure + ints) / 2**20:.1f} MiB = "
                  f"{state['bytes_per_breakpoint']:.0f} B per breakpoint (lists "
                  f"{state['list_bytes_per_breakpoint']:.0f} B + ints); per hop class {dist}; hops whose week "
                  f"peak is over 90 % of capacity: {dict(busy)}")
        growth = growth_test(topo, hosts, now_us, growth_n, args.seed + 99)
        svc_growth = service_growth(store, hosts, now_s)
        for name in ("stretched 1 minute", "stretched 300 days", "week 1 minute", "week 300 days"):
            g = growth[name]
            con.print(f"  {growth_n:,} x {name:<18}: {g['breakpoints']:,} breakpoints, {g['bytes']:,} B traced = "
                      f"{g['bytes_per_breakpoint']:.1f} B per breakpoint ({g['legs_refused']} legs refused)")
        con.print(f"  one reservation through the service: {svc_growth}")
        report.results.append({"ledger_state": state, "growth_tracemalloc": growth, "growth_service": svc_growth})

        # ------------------------------------------------------------ topology changes (a link down, then up)
        svc = store.rt.topology
        changes = []
        for lid in (next(x for x in topo.links if link_class(x) == "agg-core"),
                    next(x for x in topo.links if link_class(x) == "host-edge")):
            link = svc.current.links[lid]
            t = time.perf_counter()
            down = store.rt.run(svc.edit_topology_op(svc.delete_link(lid)), timeout=3600)["recheck"]
            down_s = time.perf_counter() - t
            t = time.perf_counter()
            up = store.rt.run(svc.edit_topology_op(svc.put_link(link)), timeout=3600)["recheck"]
            up_s = time.perf_counter() - t
            change = {"link": lid, "down_s": down_s, "up_s": up_s, "down_rerouted": len(down["rerouted"]),
                      "down_degraded": len(down["degraded"]), "down_kept": down["kept"],
                      "up_restored": len(up["restored"])}
            changes.append(change)
            con.print(f"topology: {lid} down in {down_s * 1000:.0f} ms ({change['down_rerouted']} re-routed, "
                      f"{change['down_degraded']} degraded, {down['kept']:,} kept), up again in {up_s * 1000:.0f} ms "
                      f"({change['up_restored']} restored)")
        # The same topology again, whole: the re-added links go back to their places (and hop numbers, which
        # the baseline below shares), and nothing else changes: the cost of a no-op PUT /v1/topology.
        t = time.perf_counter()
        same = store.rt.run(svc.set_topology_op(topo), timeout=3600)["recheck"]
        same_s = time.perf_counter() - t
        assert store.svc.cap.topology.hops == topo.hops
        con.print(f"topology: the whole topology again in {same_s * 1000:.0f} ms ({same['kept']:,} kept, "
                  f"{len(same['rerouted'])} re-routed)")
        report.results.append({"topology_changes": changes, "same_topology_s": same_s})
        report.notes.append("a fabric link and a host link were taken down and up again after the preload: the "
                            "reservations re-routed off the fabric link stay on their new paths")

        bookings = baseline_bookings(store)
        baseline = Baseline(topo, bookings)
        con.print(f"baseline: {baseline.entries:,} (hop, start, end, rate) entries over {len(bookings):,} hops")

        if args.http:
            starter.join()
            if "error" in server_box:
                raise server_box["error"]
            server = server_box["server"]
            restored = next((ln for ln in server.log_lines() if "store restored" in ln), "")
            con.print(f"tenure serve at {server.url} ready {server_box['ready_s']:.1f} s after start "
                      f"({'server on core 0, this process on core 1' if pin else 'not pinned'}); {restored[:200]}")
            report.results.append({"server_ready_s": server_box["ready_s"], "server_restore_log": restored})

        # ------------------------------------------------------------ rounds
        modes = ["domain", "library", f"library {args.threads} threads"]
        if args.http:
            modes += ["http", f"http {args.http_clients} clients", "http floor: GET /v1/whoami"]
        modes.append("baseline")
        res: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        agreement: list[dict[str, Any]] = []
        for run in range(args.runs):
            rr = random.Random(args.seed * 1000 + run)
            # domain
            reqs = [as_req(r) for r in gen_requests(rr, hosts, domain_n, now_s)]
            got = store.in_writer(lambda reqs=reqs: domain_admissions(store.svc.cap, reqs))
            ns = [t for t, _, _ in got]
            ok_ns = [t for t, h, _ in got if h is not None]
            no_ns = [t for t, h, _ in got if h is None]
            by_place: dict[str, list[int]] = {}
            for t, _, why in got:
                if why is not None:
                    by_place.setdefault(why, []).append(t)
            d = {"n": len(got), "refused": len(no_ns), "p50_ms": median(ns) / 1e6,
                 "p99_ms": pct(ns, 99) / 1e6, "max_ms": max(ns) / 1e6, "rate": len(ns) / (sum(ns) / 1e9),
                 "admitted_p50_ms": median(ok_ns) / 1e6, "admitted_p99_ms": pct(ok_ns, 99) / 1e6,
                 "refused_p50_ms": median(no_ns) / 1e6, "refused_max_ms": max(no_ns, default=float("nan")) / 1e6,
                 "hop_counts": dict(Counter(str(h) for _, h, _ in got)),
                 "refusals": {k: {"n": len(v), "p50_ms": median(v) / 1e6, "max_ms": max(v) / 1e6}
                              for k, v in sorted(by_place.items())}}
            res["domain"].append(d)
            con.print(f"  run {run + 1}  domain        p50 {d['p50_ms']:.3f} ms  p99 {d['p99_ms']:.3f} ms  "
                      f"{fmt(d['rate'])} adm/s  refused {d['refused']}/{d['n']} "
                      f"(admitted p50 {d['admitted_p50_ms']:.3f} p99 "
                      f"{d['admitted_p99_ms']:.3f} ms; refused: " + ", ".join(
                          f"{k}: {v['n']} p50 {v['p50_ms']:.2f} max {v['max_ms']:.1f} ms" for k, v in
                          d["refusals"].items()) + ")")
            # library, one at a time
            d = library_sequential(store, gen_requests(rr, hosts, library_n, now_s))
            res["library"].append(d)
            con.print(f"  run {run + 1}  library       p50 {d['p50_ms']:.3f} ms  p99 {d['p99_ms']:.3f} ms  "
                      f"{fmt(d['rate'])} adm/s  refused {d['refused']}/{d['n']}  cpu {d['cpu_per_adm_us']:.0f} us/adm "
                      f"(admitted p50 {d['admitted_p50_ms']:.2f} p99 {d['admitted_p99_ms']:.2f} ms, refused p50 "
                      f"{d['refused_p50_ms']:.2f} p99 {d['refused_p99_ms']:.2f} ms)")
            # library, concurrent
            d = library_concurrent(store, gen_requests(rr, hosts, conc_n, now_s), args.threads)
            res[modes[2]].append(d)
            con.print(f"  run {run + 1}  library x{args.threads}   p50 {d['p50_ms']:.2f} ms  p99 {d['p99_ms']:.2f} ms  "
                      f"{fmt(d['rate'])} adm/s  refused {d['refused']}/{d['n']}  {d['per_commit']:.1f} per commit  "
                      f"cpu {d['cpu_per_adm_us']:.0f} us/adm")
            # HTTP
            if server is not None:
                for name, clients, n in (("http", 1, http_n), (modes[4], args.http_clients, http_conc_n)):
                    base_s = int(time.time()) + 60  # the server's clock is real time
                    d = http_mode(server, gen_requests(rr, hosts, n, base_s), clients)
                    res[name].append(d)
                    con.print(f"  run {run + 1}  {name:<13} p50 {d['p50_ms']:.2f} ms  p99 {d['p99_ms']:.2f} ms  "
                              f"{fmt(d['rate'])} adm/s  refused {d['refused']}/{d['n']}  other {d['other_status']}  "
                              f"server cpu {d['server_cpu_per_req_us']:.0f} us/req")
                d = http_floor(server, http_n)
                res[modes[5]].append(d)
                con.print(f"  run {run + 1}  GET whoami    p50 {d['p50_ms']:.2f} ms  p99 {d['p99_ms']:.2f} ms  "
                          f"{fmt(d['rate'])} req/s  server cpu {d['server_cpu_per_req_us']:.0f} us/req")
            # baseline, and ours on the same requests and state
            reqs = [as_req(r) for r in gen_requests(rr, hosts, baseline_n, now_s)]
            scan0, graph0 = baseline.scan_s, baseline.graph_s
            times, answers = [], []
            for req in reqs:
                t = time.perf_counter()
                answers.append(baseline.admit(req))
                times.append(time.perf_counter() - t)
            ours = store.in_writer(lambda reqs=reqs: domain_admissions(store.svc.cap, reqs))
            agree = sum(1 for a, (_, b, _) in zip(answers, ours, strict=True) if a == b)
            d = {"n": len(reqs), "p50_ms": median(times) * 1e3, "p99_ms": max(times) * 1e3, "max_ms": max(times) * 1e3,
                 "rate": len(times) / sum(times), "refused": sum(1 for a in answers if a is None),
                 "scan_s_per_adm": (baseline.scan_s - scan0) / len(reqs),
                 "graph_s_per_adm": (baseline.graph_s - graph0) / len(reqs),
                 "ours_same_p50_ms": median([t for t, _, _ in ours]) / 1e6, "agree": agree}
            res["baseline"].append(d)
            agreement.append({"answers_baseline": [list(a) if a else None for a in answers],
                              "answers_ours": [list(b) if b else None for _, b, _ in ours]})
            con.print(f"  run {run + 1}  baseline      p50 {d['p50_ms']:.0f} ms (scan {d['scan_s_per_adm'] * 1e3:.0f} "
                      f"ms, graph+nx {d['graph_s_per_adm'] * 1e3:.0f} ms)  ours on the same {d['ours_same_p50_ms']:.3f}"
                      f" ms  agree {agree}/{len(reqs)}  refused {d['refused']}")

        # ------------------------------------------------------------ summary
        rows = []
        for m in modes:
            rs = res[m]
            rows.append((m, f"{summarize(rs, 'p50_ms'):.3f}", f"{summarize(rs, 'p99_ms'):.3f}",
                         " / ".join(f"{r['p50_ms']:.3f}" for r in rs), fmt(summarize(rs, "rate")),
                         " / ".join(fmt(r["rate"]) for r in rs),
                         f"{sum(r['refused'] for r in rs)}/{sum(r['n'] for r in rs)}", cpu_column(rs)))
            report.results.append({"mode": m, "median_p50_ms": round(summarize(rs, "p50_ms"), 4),
                                   "median_p99_ms": round(summarize(rs, "p99_ms"), 4),
                                   "median_rate_per_s": round(summarize(rs, "rate"), 2), "runs": rs})
        benchkit.print_table(
            f"Admissions on a k={k} fat tree with {n_res:,} reservations booked (median of {args.runs} rounds; "
            f"baseline p99 column = max)",
            ["mode", "p50 ms", "p99 ms", "p50 runs", "admissions/s", "rate runs", "refused", "CPU us/adm"], rows)
        b = res["baseline"]
        base_p50 = summarize(b, "p50_ms")
        dom_p50 = summarize(res["domain"], "p50_ms")
        lib_p50 = summarize(res["library"], "p50_ms")
        same_p50 = summarize(b, "ours_same_p50_ms")
        agree = sum(r["agree"] for r in b)
        total = sum(r["n"] for r in b)
        report.results.append({"baseline_agreement": {"agree": agree, "of": total, "runs": agreement}})
        con.print(f"speedup vs baseline (median per admission): domain {base_p50 / dom_p50:,.0f}x, on the "
                  f"baseline's own requests {base_p50 / same_p50:,.0f}x; library end to end {base_p50 / lib_p50:,.0f}x;"
                  f" agreement on hop counts / refusals {agree}/{total}")

        report.goals += [
            Goal("domain admission, median", dom_p50, 5, "ms", higher_is_better=False,
                 detail=f"p99 {summarize(res['domain'], 'p99_ms'):.2f} ms"),
            Goal("library end to end (commit + fsync), median", lib_p50, 5, "ms", higher_is_better=False,
                 detail=f"p99 {summarize(res['library'], 'p99_ms'):.2f} ms, "
                        f"{fmt(summarize(res['library'], 'rate'))} adm/s; "
                        f"{args.threads} threads {fmt(summarize(res[modes[2]], 'rate'))} adm/s"),
        ]
        if server is not None:
            report.goals.append(Goal("HTTP one at a time, median", summarize(res["http"], "p50_ms"), 5, "ms",
                                     higher_is_better=False,
                                     detail=f"p99 {summarize(res['http'], 'p99_ms'):.2f} ms; {args.http_clients} "
                                            f"clients {fmt(summarize(res[modes[4]], 'rate'))} adm/s"))
        report.goals += [
            Goal("speedup vs brute-force baseline: domain admission", base_p50 / dom_p50, 50, "x",
                 detail=f"baseline {base_p50:.0f} ms vs {dom_p50:.3f} ms"),
            Goal("speedup vs brute-force baseline: library end to end", base_p50 / lib_p50, 50, "x",
                 detail=f"baseline {base_p50:.0f} ms vs {lib_p50:.3f} ms"),
            Goal("baseline and domain agree (hop counts or refusal)", agree / total, 1.0, "",
                 detail=f"{agree}/{total}"),
            Goal("breakpoints: 300-day / 1-minute bookings, same order of instants", growth["stretched 300 days"]
                 ["breakpoints"] / growth["stretched 1 minute"]["breakpoints"], 1.0, "x", higher_is_better=False,
                 detail=f"{growth['stretched 1 minute']['breakpoints']:,} vs "
                        f"{growth['stretched 300 days']['breakpoints']:,} for {growth_n:,} reservations; random "
                        f"starts in the week: {growth['week 1 minute']['breakpoints']:,} vs "
                        f"{growth['week 300 days']['breakpoints']:,}; one through the service: "
                        f"{svc_growth['1 minute']['breakpoints_added']} vs "
                        f"{svc_growth['300 days']['breakpoints_added']}"),
            # Not exactly 1: tracemalloc counts allocator noise, and a Python int's size grows with the number
            # of its digits (log of the magnitude), never with the length of a window. 1.05 is that margin.
            Goal("bytes: 300-day / 1-minute bookings, same order of instants (tracemalloc)",
                 growth["stretched 300 days"]["bytes"] / growth["stretched 1 minute"]["bytes"], 1.05, "x",
                 higher_is_better=False,
                 detail=f"{growth['stretched 1 minute']['bytes_per_breakpoint']:.0f} vs "
                        f"{growth['stretched 300 days']['bytes_per_breakpoint']:.0f} B per breakpoint; random "
                        f"starts in the week {growth['week 1 minute']['bytes_per_breakpoint']:.0f} vs "
                        f"{growth['week 300 days']['bytes_per_breakpoint']:.0f}; loaded state "
                        f"{state['bytes_per_breakpoint']:.0f} B per breakpoint over {bps:,}"),
        ]
        report.notes.append(f"preload: {n_res:,} requests in {load_s:.1f} s ({fmt(load['per_s'])}/s), "
                            f"{load['refused_total']:,} refused")
        report.notes.append("library rounds cancel what they admitted: the ledgers return to the preloaded state "
                            "(the cancelled reservations stay in the store, as retention keeps them)")
        store.close()
    finally:
        if starter is not None:
            starter.join()
        if server is None and "server" in server_box:
            server = server_box["server"]
        if server is not None:
            server.stop()
            benchkit.RESULTS.mkdir(parents=True, exist_ok=True)
            (benchkit.RESULTS / "reservations-server-last.log").write_text(server.log_tail(200) + "\n")
        shutil.rmtree(workdir, ignore_errors=True)
    benchkit.finish(report)


if __name__ == "__main__":
    main()
