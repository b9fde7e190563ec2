#!/usr/bin/env python3
"""Hostile connections against a real ``tenure serve``: idle ones that never finish their headers, and bodies
over the limit.

    python3 dev.py bench connections [--idle 2000] [--soft-limit 1024] [--header-timeout 10] [--bodies 20]

A ``tenure serve`` subprocess (SQLite, fresh temp data dir, loopback) is started under a soft descriptor
limit of ``--soft-limit`` (``prlimit``; the hard limit is left as it is), as on a host with the common
default of 1,024. Then:

1. ``--bodies`` POSTs of a 2 MiB body to ``/v1/pools/p/claims`` with ``urllib.request`` (which sends the
   whole body before it reads): how many got the 413 JSON error, how many a connection reset or broken pipe.
2. ``--idle`` connections each send a partial request line (``POST /v1/pools/p/claims HTT``) and nothing
   more. With all of them open, ``--probes`` times each: ``GET /healthz`` and a claim, each on a new
   connection, timed from connect to the end of the answer; failures (reset, refused, timeout) counted. The
   server's ``tenure_http_connections`` metric, when it has it.
3. How long the server takes to close the idle connections (a read returning end of stream or a reset),
   waiting at most ``--header-timeout`` + 30 s.

The same probes are timed before the idle connections are opened (the baseline of this run). Goals: with
``--idle`` connections open, every probe answered and the slowest within 1 s; every idle connection closed
by the server within ``--header-timeout`` + 2 s; every oversized body answered 413. ``--header-timeout 0``
passes no ``--header-timeout`` (a server without the option: the idle connections are then never closed).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package: keep this folder off the front of sys.path
# (as bench/http.py does), and find benchkit at the end.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.append(str(_HERE))

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from typing import Any  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Goal, Report, median  # noqa: E402
from benchkit.server import VENV_BIN, TenureServer  # noqa: E402

PARTIAL = b"POST /v1/pools/p/claims HTT"
TWO_MIB = b"x" * (2 * 1024 * 1024)


def probe(host: str, port: int, method: str, path: str, token: str, body: bytes | None) -> float | str:
    """One request on a new connection: its seconds from connect to the end of the answer, or the error."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}",
                                                       "Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status >= 300:
            return f"status {r.status}"
        return time.perf_counter() - start
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


def probes(host: str, port: int, token: str, n: int, tag: str) -> dict[str, list[float | str]]:
    out: dict[str, list[float | str]] = {"healthz": [], "claim": []}
    for i in range(n):
        out["healthz"].append(probe(host, port, "GET", "/healthz", token, None))
        out["claim"].append(probe(host, port, "POST", "/v1/pools/p/claims", token,
                                  json.dumps({"key": f"{tag}-{i}"}).encode()))
    return out


def summary(samples: list[float | str]) -> dict[str, Any]:
    times = [s for s in samples if isinstance(s, float)]
    errors = [s for s in samples if not isinstance(s, float)]
    return {"answered": len(times), "failed": len(errors), "errors": sorted(set(errors)),
            "median_ms": round(median(times) * 1000, 2) if times else None,
            "max_ms": round(max(times) * 1000, 2) if times else None}


def oversized_bodies(url: str, token: str, n: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(n):
        req = urllib.request.Request(f"{url}/v1/pools/p/claims", data=TWO_MIB, method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                outcome = f"status {r.status}"
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()
            try:
                ok = json.loads(body)["error"]["code"] == "too_large"
            except (ValueError, KeyError, TypeError):
                ok = False
            outcome = "413 json" if exc.code == 413 and ok else f"status {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            outcome = type(reason).__name__ if isinstance(reason, BaseException) else str(reason)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def open_idle(host: str, port: int, n: int) -> tuple[list[socket.socket], int]:
    socks: list[socket.socket] = []
    failed = 0
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(PARTIAL)
            socks.append(s)
        except OSError:
            failed += 1
    return socks, failed


def wait_closed(socks: list[socket.socket], opened_at: float, limit: float) -> dict[str, Any]:
    """Wait for the server to close each socket (end of stream or reset): when, and with what answer."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray())
    closed_after: list[float] = []
    answered_408 = 0
    deadline = opened_at + limit
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            s: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                key.data.extend(chunk)
                continue
            closed_after.append(time.monotonic() - opened_at)
            answered_408 += bytes(key.data).startswith(b"HTTP/1.1 408 ")
            sel.unregister(s)
            s.close()
    still_open = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {"closed": len(closed_after), "still_open": still_open, "answered_408": answered_408,
            "first_closed_s": round(min(closed_after), 2) if closed_after else None,
            "last_closed_s": round(max(closed_after), 2) if closed_after else None}


def metric(server: TenureServer, name: str) -> float | None:
    try:
        status, text = server.call("GET", "/metrics", raw=True)
    except (OSError, ValueError):  # urllib's URLError is an OSError
        return None
    if status != 200:
        return None
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split()[-1])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=2000, help="idle connections with a partial request line")
    ap.add_argument("--soft-limit", type=int, default=1024, help="the server's soft descriptor limit at start")
    ap.add_argument("--header-timeout", type=float, default=10.0,
                    help="tenure serve --header-timeout (0: do not pass it, for a server without the option)")
    ap.add_argument("--bodies", type=int, default=20, help="POSTs of a 2 MiB body")
    ap.add_argument("--probes", type=int, default=20, help="healthz and claims timed, each on a new connection")
    ap.add_argument("--server-log-level", default="info")
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    args = ap.parse_args()
    if shutil.which("prlimit") is None:
        sys.exit("bench connections: prlimit (util-linux) is not installed")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # this process holds the idle connections' other ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    hard_text = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)

    workdir = Path(tempfile.mkdtemp(prefix="tenure-conns-"))
    report = Report("connections", benchkit.machine(workdir, quiet_wait=args.quiet_wait),
                    {**vars(args), "pythonpath": os.environ.get("PYTHONPATH")})
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    data_dir = workdir / "data"
    data_dir.mkdir()
    extra = ["--header-timeout", f"{args.header_timeout:g}"] if args.header_timeout > 0 else []
    server = TenureServer(data_dir, args.server_log_level, None, extra=extra,
                          command=["prlimit", f"--nofile={args.soft_limit}:{hard_text}", str(VENV_BIN / "tenure")])
    try:
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        nofile = next(ln for ln in limits.splitlines() if ln.startswith("Max open files")).split()[3:5]
        con.print(f"tenure serve at {server.url} (pid {server.proc.pid}), started with a soft descriptor limit of "
                  f"{args.soft_limit}: now soft {nofile[0]}, hard {nofile[1]}")
        status, body = server.call("POST", "/v1/pools", {"name": "p", "ranges": [[1, 2**24 - 1]],
                                                         "strategy": "random"})
        if status != 201:
            raise RuntimeError(f"creating the pool: {status} {body}")
        host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])

        bodies = oversized_bodies(server.url, server.token, args.bodies)
        con.print(f"{args.bodies} POSTs of 2 MiB: {bodies}")
        base = probes(host, port, server.token, args.probes, "base")

        opened_at = time.monotonic()
        idle, idle_failed = open_idle(host, port, args.idle)
        open_s = time.monotonic() - opened_at
        loaded = probes(host, port, server.token, args.probes, "idle")
        probed_s = time.monotonic() - opened_at
        conns = metric(server, "tenure_http_connections")
        con.print(f"{len(idle)} idle connections opened in {open_s:.2f} s ({idle_failed} failed); probes done "
                  f"{probed_s:.2f} s after the first; tenure_http_connections {conns}")
        closing = wait_closed(idle, opened_at, (args.header_timeout or 30) + 30)
        con.print(f"idle connections closed by the server: {closing}")
        after = probes(host, port, server.token, args.probes, "after")

        rows = []
        for phase, res in (("no idle connections", base), (f"{args.idle} idle connections open", loaded),
                           ("after they were closed", after)):
            for what in ("healthz", "claim"):
                s = summary(res[what])
                rows.append((phase, what, s["answered"], s["failed"], ", ".join(s["errors"]), s["median_ms"],
                             s["max_ms"]))
                report.results.append({"phase": phase, "request": what, **s})
        benchkit.print_table(f"Requests on new connections, {args.probes} each (soft limit at start "
                             f"{args.soft_limit}, header timeout {args.header_timeout:g} s)",
                             ["phase", "request", "answered", "failed", "errors", "median ms", "max ms"], rows)
        report.results.append({"oversized_bodies": bodies, "idle_opened": len(idle), "idle_open_failed": idle_failed,
                               "idle_open_seconds": round(open_s, 2), "tenure_http_connections": conns,
                               "closing": closing, "server_nofile": nofile})
        for what in ("healthz", "claim"):
            s = summary(loaded[what])
            report.goals.append(Goal(f"{what} with {args.idle} idle connections: answered", s["answered"],
                                     args.probes, "", detail=f"failed {s['failed']} {s['errors']}"))
            report.goals.append(Goal(f"{what} with {args.idle} idle connections: slowest", s["max_ms"] or float("nan"),
                                     1000, "ms", higher_is_better=False))
        limit = (args.header_timeout or float("inf")) + 2
        report.goals.append(Goal("idle connections closed by the server", closing["closed"], args.idle, "",
                                 detail=f"last after {closing['last_closed_s']} s (limit {limit:g} s)"))
        if args.header_timeout > 0:
            report.goals.append(Goal("last idle connection closed after", closing["last_closed_s"] or float("nan"),
                                     limit, "s", higher_is_better=False))
        report.goals.append(Goal("2 MiB bodies answered 413 (JSON)", bodies.get("413 json", 0), args.bodies, "",
                                 detail=str(bodies)))
    finally:
        server.stop()
        benchkit.RESULTS.mkdir(parents=True, exist_ok=True)
        (benchkit.RESULTS / "connections-server-last.log").write_text(server.log_tail(200) + "\n")
        shutil.rmtree(workdir, ignore_errors=True)
    benchkit.finish(report)


if __name__ == "__main__":
    os.environ.pop("TENURE_URL", None)
    main()
