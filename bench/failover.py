#!/usr/bin/env python3
"""Failover time of Tenure's replicas, next to etcd's leader election, on this machine.

    python3 dev.py bench failover [--kills 20] [--stops 5] [--lease 5] [--etcd-kills 20]

Tenure: three `tenure serve --replica-name` processes on a throwaway PostgreSQL (durable settings), two client
threads claiming keys through every replica the whole time (the load). Each round finds the leader and either
kills it with SIGKILL (``--kills`` rounds) or stops it with SIGSTOP (``--stops`` rounds, detected by the lease
only). The failover time is from the signal until a claim sent straight to the surviving replicas (round robin,
each try bounded by 1 s) is accepted: writes work again. The killed replica is restarted (the stopped one
resumed) and the set is let settle before the next round.

etcd: three `etcd` members (Debian's etcd-server, 3.4) on loopback, default heartbeat (100 ms) and election
(1000 ms) timeouts. Each round kills the leader with SIGKILL and times until a put through the survivors
succeeds, then restarts the member. Kubernetes' lease-based leader election is not run here: its defaults
(15 s lease, 10 s renew deadline, 2 s retry) put a failover after a crash at up to the lease plus a retry.

Goals (issue 14): kill -9: median <= 2 s, max <= 5 s; SIGSTOP: <= lease + 2 s.
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
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Goal, Report, median  # noqa: E402


# ------------------------------------------------------------------ Tenure


def tenure_rounds(args: argparse.Namespace, work: Path, con: Any) -> dict[str, list[float]]:
    from tenure.client import TenureClient, TenureClientError
    from tests.support.postgres import PostgresServer
    from tests.system.replica_support import ReplicaSet, wait_for

    out: dict[str, list[float]] = {"kill": [], "stop": []}
    with PostgresServer(durable=True) as pg:
        rs = ReplicaSet(work, pg.create_database("failover"), lease=args.lease)
        try:
            rs.start()
            with TenureClient(",".join(rs.urls()), rs.token) as c:
                c.create_pool("vlan", [[1, 10_000_000]])
            stop = threading.Event()
            acked = [0]

            def writer(i: int) -> None:
                with TenureClient(",".join(random.sample(rs.urls(), 3)), rs.token, timeout=5) as cl:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        try:
                            cl.claim("vlan", f"load-{i}-{n}")
                            acked[0] += 1
                        except TenureClientError:
                            pass

            threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(2)]
            for t in threads:
                t.start()
            headers = {"Authorization": f"Bearer {rs.token}"}
            plan = ["kill"] * args.kills + ["stop"] * args.stops
            for n, fault in enumerate(plan):
                leader = rs.leader(timeout=60)
                others = [r for r in rs if r is not leader]
                urls = [r.url for r in others]
                t0 = time.monotonic()
                leader.kill() if fault == "kill" else leader.stop()
                k = 0
                while True:
                    k += 1
                    try:
                        r = httpx.post(f"{urls[k % len(urls)]}/v1/pools/vlan/claims", json={"key": f"probe-{n}"},
                                       headers=headers, timeout=1.0)
                        if r.status_code in (200, 201):
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() - t0 > 60:
                        raise RuntimeError(f"no failover within 60 s after {fault}")
                    time.sleep(0.01)
                took = time.monotonic() - t0
                out[fault].append(took)
                con.print(f"  tenure {fault:5} {n + 1:3}/{len(plan)}  {took:6.3f} s   (load: {acked[0]:,} claims)")
                if fault == "kill":
                    leader.start()
                else:
                    leader.cont()
                rs.wait_ok(leader)
                wait_for(lambda: rs.leader(), timeout=60, what="a settled set")
                before = acked[0]
                wait_for(lambda b=before: acked[0] >= b + 50, timeout=120, what="the load going on")
            stop.set()
            for t in threads:
                t.join(30)
        finally:
            rs.close()
    return out


# ------------------------------------------------------------------ etcd


class Etcd:
    def __init__(self, work: Path, n: int = 3) -> None:
        self.names = [f"e{i}" for i in range(n)]
        from tests.support.postgres import free_port

        self.peer = {m: free_port() for m in self.names}
        self.client = {m: free_port() for m in self.names}
        self.work = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cluster = ",".join(f"{m}=http://127.0.0.1:{self.peer[m]}" for m in self.names)

    def start(self, m: str, state: str = "new") -> None:
        log = open(self.work / f"{m}.log", "ab")  # noqa: SIM115 - the child's
        self.procs[m] = subprocess.Popen(
            ["etcd", "--name", m, "--data-dir", str(self.work / m),
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer[m]}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[m]}",
             "--listen-client-urls", f"http://127.0.0.1:{self.client[m]}",
             "--advertise-client-urls", f"http://127.0.0.1:{self.client[m]}",
             "--initial-cluster", self.cluster, "--initial-cluster-state", state,
             "--initial-cluster-token", "bench"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def endpoints(self, names: list[str] | None = None) -> str:
        return ",".join(f"http://127.0.0.1:{self.client[m]}" for m in (names or self.names))

    def ctl(self, *argv: str, endpoints: str | None = None, timeout: float = 5) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["etcdctl", "--endpoints", endpoints or self.endpoints(), "--command-timeout=1s",
                               "--dial-timeout=1s", *argv], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "ETCDCTL_API": "3"})

    def leader(self) -> str | None:
        out = self.ctl("endpoint", "status", "-w", "json")
        try:
            status = json.loads(out.stdout)
        except ValueError:
            return None
        for s in status:
            if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
                port = int(s["Endpoint"].rsplit(":", 1)[1])
                return next(m for m in self.names if self.client[m] == port)
        return None

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


def etcd_rounds(args: argparse.Namespace, work: Path, con: Any) -> list[float]:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        con.print("[yellow]etcd is missing: scripts/system-deps installs it (etcd-server, etcd-client)[/]")
        return []
    ec = Etcd(work)
    times: list[float] = []
    try:
        for m in ec.names:
            ec.start(m)
        deadline = time.monotonic() + 60
        while ec.leader() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not elect a leader")
            time.sleep(0.1)
        for n in range(args.etcd_kills):
            lead = ec.leader()
            while lead is None:
                time.sleep(0.05)
                lead = ec.leader()
            survivors = [m for m in ec.names if m != lead]
            t0 = time.monotonic()
            ec.procs[lead].kill()
            ec.procs[lead].wait(10)
            while ec.ctl("put", f"probe-{n}", "x", endpoints=ec.endpoints(survivors)).returncode != 0:
                if time.monotonic() - t0 > 60:
                    raise RuntimeError("etcd: no write within 60 s")
            took = time.monotonic() - t0
            times.append(took)
            con.print(f"  etcd   kill  {n + 1:3}/{args.etcd_kills}  {took:6.3f} s")
            ec.start(lead, state="existing")
            deadline = time.monotonic() + 60
            while not all(ec.ctl("endpoint", "health", endpoints=ec.endpoints([m])).returncode == 0
                          for m in ec.names):
                if time.monotonic() > deadline:
                    raise RuntimeError("etcd member did not rejoin")
                time.sleep(0.1)
    finally:
        ec.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--stops", type=int, default=5)
    ap.add_argument("--lease", type=float, default=5.0, help="the replicas' --lease (Tenure's default: 5)")
    ap.add_argument("--etcd-kills", type=int, default=20)
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tenure-failover-"))
    report = Report("failover", benchkit.machine(work, quiet_wait=args.quiet_wait), vars(args))
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    try:
        t = tenure_rounds(args, work / "tenure", con)
        (work / "etcd").mkdir()
        e = etcd_rounds(args, work / "etcd", con)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, xs in (("Tenure replicas, kill -9 of the leader", t["kill"]),
                     (f"Tenure replicas, SIGSTOP of the leader (lease {args.lease:g} s)", t["stop"]),
                     ("etcd 3.4, 3 members, kill -9 of the leader", e)):
        if xs:
            rows.append((name, len(xs), f"{median(xs):.3f}", f"{min(xs):.3f}", f"{max(xs):.3f}"))
    rows.append(("Kubernetes lease election, defaults (not run: 15 s lease + 2 s retry)", "-", "-", "-", "~17"))
    benchkit.print_table("Time from the fault until writes are accepted again (s)",
                         ["what", "rounds", "median", "min", "max"], rows)
    report.results.append({"tenure_kill_s": [round(x, 3) for x in t["kill"]],
                           "tenure_stop_s": [round(x, 3) for x in t["stop"]],
                           "etcd_kill_s": [round(x, 3) for x in e]})
    if t["kill"]:
        report.goals.append(Goal("failover after kill -9 of the leader: median", median(t["kill"]), 2.0, "s",
                                 higher_is_better=False, detail=f"{len(t['kill'])} kills"))
        report.goals.append(Goal("failover after kill -9 of the leader: max", max(t["kill"]), 5.0, "s",
                                 higher_is_better=False))
    if t["stop"]:
        report.goals.append(Goal("failover after SIGSTOP of the leader: max", max(t["stop"]), args.lease + 2, "s",
                                 higher_is_better=False, detail=f"lease {args.lease:g} s"))
    benchkit.finish(report)


if __name__ == "__main__":
    main()
