#!/usr/bin/env python3
"""Claims per second and latency through HTTP: a real ``tenure serve`` driven by ``wrk``.

    python3 dev.py bench http [--connections 16,64] [--seconds 15] [--runs 3] ...

A ``tenure serve`` subprocess (SQLite, fresh temp data dir, listening on 127.0.0.1 only, log level as
shipped unless ``--server-log-level``) is pinned to core 0 and ``wrk`` to core 1 with ``taskset`` (when
there are 2+ cores), to model a 2-core host where the load generator does not steal the server's CPU.
For every connection count and run, a fresh pool ``[1, 2**24-1]`` (strategy ``random``) is created and
``wrk --latency`` POSTs ``/v1/pools/{pool}/claims`` with unique keys (run prefix, wrk thread id, counter)
and the admin bearer token for ``--seconds``. Reported: claims/s (201 responses per second), p50/p99
latency (wrk's own histogram), and a check that nothing was lost or invented: non-2xx must be 0, and the
pool's ``used`` count must equal the claims the server was sent (every request wrk wrote commits, even
the few still in flight when wrk stops, which is why ``used`` can exceed the 201 count by at most the
number of connections).

Goal: >= 2,000 claims/s with p99 <= 50 ms (checked at every connection count). Bounded: loopback only,
each wrk run ends after ``--seconds``, the server is stopped at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http.py: keep its folder off the front of sys.path, or `import http` (urllib,
# uvicorn, ...) would find this script instead of the standard library. benchkit is found at the end.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.append(str(_HERE))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import benchkit  # noqa: E402
from benchkit import Goal, Report, fmt, median  # noqa: E402
from benchkit.server import TenureServer, taskset  # noqa: E402

RANGE = [1, 2**24 - 1]

LUA_DONE = r"""
function done(summary, latency, requests)
  local s, c, o = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent"); c = c + t:get("created"); o = o + t:get("other")
  end
  local e = summary.errors
  io.write(string.format('WRKJSON {"sent":%d,"created":%d,"other":%d,"requests":%d,"duration_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    s, c, o, summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# The framework floor: the same server answering GET PATH (200 counts as "created").
FLOOR_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  sent, created, other = 0, 0, 0
  wrk.method = "GET"
  if args[1] ~= "-" then wrk.headers["Authorization"] = "Bearer " .. args[1] end
end
function request() sent = sent + 1; return wrk.format() end
function response(status, headers, body)
  if status == 200 then created = created + 1 else other = other + 1 end
end
""" + LUA_DONE

WRK_LUA = r"""
-- POST unique claim keys with a bearer token; count requests sent and answers by status.
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  prefix = args[2]
  sent, created, other = 0, 0, 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. args[1]
end

function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, string.format('{"key":"%s-%d-%d"}', prefix, id, sent))
end

function response(status, headers, body)
  if status == 201 then created = created + 1 else other = other + 1 end
end

""" + LUA_DONE


def run_wrk(url: str, connections: int, seconds: float, threads: int, script: Path, script_args: list[str],
            cpu: str | None) -> dict[str, Any]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
           "-s", str(script), url, "--", *script_args]
    out = subprocess.run(taskset(cmd, cpu), capture_output=True, text=True, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr}")
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"no WRKJSON line from wrk:\n{out.stdout}\n{out.stderr}")
    return json.loads(line.removeprefix("WRKJSON "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", default="16,64", help="comma list of wrk connection counts")
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each wrk run")
    ap.add_argument("--runs", type=int, default=3, help="runs per connection count (median reported)")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="skip the baselines (GET /healthz and GET /v1/whoami on the same server)")
    ap.add_argument("--floor-seconds", type=float, default=5.0, help="duration of each baseline run")
    ap.add_argument("--server-log-level", default="info", help="tenure serve --log-level (shipped default: info)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and wrk to separate cores")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="wait up to this many seconds for other processes to quiet down before starting")
    ap.add_argument("--dir", default=None, help="parent of the temp data dir")
    args = ap.parse_args()
    conns = [int(c) for c in args.connections.split(",") if c]
    if shutil.which("wrk") is None:
        sys.exit("bench http: wrk is not installed (apt-get install wrk)")
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    server_cpu, wrk_cpu = ("0", "1") if pin else (None, None)

    workdir = Path(tempfile.mkdtemp(prefix="tenure-http-", dir=args.dir))
    report = Report("http", benchkit.machine(workdir, quiet_wait=args.quiet_wait), {**vars(args), "pinned": pin})
    benchkit.print_machine(report.machine)
    con = benchkit.console()
    script = workdir / "claims.lua"
    script.write_text(WRK_LUA)
    floor_script = workdir / "floor.lua"
    floor_script.write_text(FLOOR_LUA)
    floors = [("GET /healthz", "/healthz", "-"), ("GET /v1/whoami", "/v1/whoami", None)] if args.floor else []
    floor_results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in floors}
    data_dir = workdir / "data"
    data_dir.mkdir()
    server = TenureServer(data_dir, args.server_log_level, server_cpu)
    rows = []
    try:
        con.print(f"tenure serve at {server.url} (pid {server.proc.pid}, "
                  f"{'server on core 0, wrk on core 1' if pin else 'not pinned'}, log level "
                  f"{args.server_log_level})")
        results: dict[int, list[dict[str, Any]]] = {c: [] for c in conns}
        for run in range(args.runs):
            for c in conns:
                pool = f"bench-c{c}-r{run}"
                status, body = server.call("POST", "/v1/pools", {"name": pool, "ranges": [RANGE],
                                                                 "strategy": "random"})
                if status != 201:
                    raise RuntimeError(f"creating pool {pool}: {status} {body}")
                cpu0 = server.cpu_seconds()
                w = run_wrk(f"{server.url}/v1/pools/{pool}/claims", c, args.seconds, min(args.wrk_threads, c),
                            script, [server.token, f"r{run}c{c}"], wrk_cpu)
                cpu = server.cpu_seconds() - cpu0
                time.sleep(0.5)  # let requests that were in flight when wrk stopped commit
                _, view = server.call("GET", f"/v1/pools/{pool}")
                w["used"] = view["used"]
                w["rate"] = w["created"] / (w["duration_us"] / 1e6)
                w["server_cpu_per_claim_us"] = cpu / max(w["used"], 1) * 1e6
                unanswered = w["sent"] - w["requests"]
                w["consistent"] = (w["other"] == 0 and w["err_status"] == 0 and w["created"] <= w["used"] <= w["sent"]
                                   and w["used"] - w["created"] <= max(unanswered, 0))
                results[c].append(w)
                con.print(f"  run {run + 1}  c={c:<3} {fmt(w['rate']):>7} claims/s  p50 {w['p50_us'] / 1000:.1f} ms  "
                          f"p99 {w['p99_us'] / 1000:.1f} ms  201s {w['created']:,}  non-2xx {w['other']}  "
                          f"used {w['used']:,}  sent {w['sent']:,}  server cpu {w['server_cpu_per_claim_us']:.0f} "
                          f"us/claim  {'ok' if w['consistent'] else 'MISMATCH'}")
            for name, path, tok in floors:  # baselines: the same server doing no claim at all
                c = max(conns)
                cpu0 = server.cpu_seconds()
                f = run_wrk(f"{server.url}{path}", c, args.floor_seconds, min(args.wrk_threads, c), floor_script,
                            [tok or server.token], wrk_cpu)
                f["rate"] = f["created"] / (f["duration_us"] / 1e6)
                f["server_cpu_per_req_us"] = (server.cpu_seconds() - cpu0) / max(f["requests"], 1) * 1e6
                floor_results[name].append(f)
                con.print(f"  run {run + 1}  c={c:<3} {name} (floor) {fmt(f['rate']):>7} req/s  p99 "
                          f"{f['p99_us'] / 1000:.1f} ms  non-200 {f['other']}  server cpu "
                          f"{f['server_cpu_per_req_us']:.0f} us/req")
        for c in conns:
            rs = results[c]
            rate = median([w["rate"] for w in rs])
            p50 = median([w["p50_us"] for w in rs]) / 1000
            p99 = median([w["p99_us"] for w in rs]) / 1000
            created = sum(w["created"] for w in rs)
            used = sum(w["used"] for w in rs)
            non2xx = sum(w["other"] for w in rs)
            errs = sum(w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"] for w in rs)
            ok = all(w["consistent"] for w in rs)
            cpu = median([w["server_cpu_per_claim_us"] for w in rs])
            rows.append((c, fmt(rate), " / ".join(fmt(w["rate"]) for w in rs), f"{p50:.1f}", f"{p99:.1f}",
                         f"{created:,}", f"{used:,}", non2xx, errs, f"{cpu:.0f}", "yes" if ok else "NO"))
            report.results.append({"connections": c, "median_claims_per_s": round(rate, 1),
                                   "median_p50_ms": round(p50, 2), "median_p99_ms": round(p99, 2),
                                   "responses_201": created, "claims_in_pools": used, "non_2xx": non2xx,
                                   "socket_errors": errs, "consistent": ok,
                                   "median_server_cpu_per_claim_us": round(cpu, 1), "runs": rs})
            report.goals.append(Goal(f"http c={c}: claims/s", rate, 2000, "claims/s"))
            report.goals.append(Goal(f"http c={c}: p99 latency", p99, 50, "ms", higher_is_better=False))
            report.goals.append(Goal(f"http c={c}: claims in pool == 201s sent, non-2xx == 0",
                                     1.0 if ok else 0.0, 1.0, "", detail=f"201s {created:,}, in pools {used:,}, "
                                                                        f"non-2xx {non2xx}"))
        for name, _, _ in floors:
            fs = floor_results[name]
            rate = median([f["rate"] for f in fs])
            p99 = median([f["p99_us"] for f in fs]) / 1000
            cpu = median([f["server_cpu_per_req_us"] for f in fs])
            rows.append((f"{max(conns)}: {name} (floor, no claim)", fmt(rate), " / ".join(fmt(f["rate"]) for f in fs),
                         f"{median([f['p50_us'] for f in fs]) / 1000:.1f}", f"{p99:.1f}", "", "",
                         sum(f["other"] for f in fs), "", f"{cpu:.0f}", ""))
            report.results.append({"floor": name, "connections": max(conns), "median_req_per_s": round(rate, 1),
                                   "median_p99_ms": round(p99, 2), "median_server_cpu_per_req_us": round(cpu, 1),
                                   "runs": fs})
        benchkit.print_table(f"HTTP claims through tenure serve + wrk, {args.seconds:g} s runs, median of {args.runs}",
                             ["connections", "claims/s", "runs", "p50 ms", "p99 ms", "201s", "in pools",
                              "non-2xx", "sock err", "server CPU us/claim", "consistent"], rows)
    finally:
        server.stop()
        benchkit.RESULTS.mkdir(parents=True, exist_ok=True)
        (benchkit.RESULTS / "http-server-last.log").write_text(server.log_tail(200) + "\n")
        shutil.rmtree(workdir, ignore_errors=True)
    benchkit.finish(report)


if __name__ == "__main__":
    main()
