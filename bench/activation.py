#!/usr/bin/env python3
"""Activation of every kind of reservation to its whole configuration on the wire, against programming the same
objects directly.

    python3 dev.py bench activation [--runs 20] [--lead 1.5]

Everything is real: ``tenure serve`` on a Unix socket and three ``tenure agent`` processes, each in its own network
namespace on a bridge (``tests/netns_support.Lan``): h1 and h3 hosts, h2 a middlebox (forwarding on). The
topology labels each node's address and interface; links are 10G. Each round makes, one after another, with a start
``--lead`` seconds after it is made:

- ``oneway`` h1 -> h3, 100M: one shaper (h1);
- ``steering`` h1 -> h2 -> h3, 100M: two shapers (h1's segment, routed to h2 by policy routing; h2's);
- ``mirror`` of h1 to the collector h3, 100M: two ends (h1's VXLAN tunnel, token bucket and filters; h3's tunnel).

Measured: from the reservation's start (its activation) to the last of its instances reported ``active`` by its
agent on the server (the instance event's time, the server's clock when the report is applied: after the driver
finished its start, so an upper bound of "on the wire" by the report's trip). Each reservation is cancelled and its
instances gone before the next. Baseline in the same rounds, while the agents are idle: the drivers' ``start``
called in this process with the same parameters (``Shaper``, ``Mirror``), one host after the other; the floor of a
kind is its slowest host's (the agents work in parallel), then stopped. Goal (issue 15): median <= 50 ms for every
kind.

Medians over the rounds; reports, never gates (exit 0). Every process and namespace it made is removed at the end.
Results: bench/results/activation-*.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/http.py shadows http
sys.path.append(str(HERE))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import benchkit  # noqa: E402  (puts the repository on sys.path: tests.netns_support)
import provisioning as prov  # noqa: E402  (the server, agents and event tracking it uses)
from benchkit import Goal, Report, fmt, median  # noqa: E402

from tenure.client import TenureClient  # noqa: E402
from tenure.drivers.tc import Mirror, Shaper  # noqa: E402
from tenure.services.shaping import mirror_vni  # noqa: E402
from tests.netns_support import Lan  # noqa: E402

KINDS = {
    "oneway": ({"kind": "oneway", "src": "h1", "dst": "h3", "rate": "100M"}, ("h1",)),
    "steering": ({"kind": "steering", "src": "h1", "dst": "h3", "via": ["h2"], "rate": "100M"}, ("h1", "h2")),
    "mirror": ({"kind": "mirror", "src": "h1", "collector": "h3", "rate": "100M"}, ("h1", "h3")),
}
CAPACITY = "10000000000"


def topology(lan: Lan) -> dict[str, Any]:
    return {"nodes": [{"id": h.name, "kind": "middlebox" if h.name == "h2" else "host",
                       "labels": {"address": h.address, "interface": h.ifname}} for h in lan.hosts]
            + [{"id": "s1", "kind": "switch"}],
            "links": [{"id": f"{h.name}-s1", "a": h.name, "b": "s1", "capacity": "10G"} for h in lan.hosts]}


def baseline(lan: Lan, kind: str, k: int) -> float:
    """The slowest host's in-process start of the kind's objects (then stopped): seconds."""
    h1, h2, h3 = lan.hosts
    leg = {"rate": "100000000", "classid": str(2 + k % 100), "capacity": CAPACITY, "borrow": "no", "mark": "46",
           "src": h1.address, "dst": h3.address}
    if kind == "oneway":
        calls = [(Shaper(), {**leg, "device": h1.ifname, "netns": h1.netns})]
    elif kind == "steering":
        calls = [(Shaper(), {**leg, "device": h1.ifname, "netns": h1.netns, "via": h2.address}),
                 (Shaper(), {**leg, "device": h2.ifname, "netns": h2.netns, "forward": "yes"})]
    else:
        vni = 0x100 + k % 100
        common = {"tunnel": f"tm{vni:06x}", "vni": str(vni)}
        calls = [(Mirror(), {"role": "collector", "local": h3.address, "remote": h1.address, "netns": h3.netns,
                             **common}),
                 (Mirror(), {"role": "source", "local": h1.address, "remote": h3.address, "netns": h1.netns,
                             "device": h1.ifname, "direction": "both", "rate": "100000000", "mark": "8",
                             "slot": str(1 + k % 100), **common})]
    took = []
    for driver, params in calls:
        t0 = time.perf_counter()
        rc = driver.start(params, prov.Ctx())
        took.append(time.perf_counter() - t0)
        assert rc == 0, (kind, rc)
    for driver, params in reversed(calls):
        assert driver.stop(params, prov.Ctx()) == 0
    return max(took)


def gone(admin: TenureClient, rid: str) -> bool:
    return not [i for i in admin.instances()["instances"] if (i["owner"] or "").startswith(f"reservation:{rid}/")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="rounds (each makes one reservation of every kind)")
    ap.add_argument("--warmup", type=int, default=1, help="rounds first, reported apart")
    ap.add_argument("--lead", type=float, default=1.5, help="seconds from making a reservation to its start")
    ap.add_argument("--log-level", default="info", help="of the server and agents (as shipped: info)")
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        sys.exit("bench activation needs root, ip and tc (network namespaces)")

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="tenure-bench-act-"))
    report = Report("activation", benchkit.machine(tmp, quiet_wait=args.quiet_wait), vars(args))
    benchkit.print_machine(report.machine)
    tracker = prov.Tracker()
    world: prov.World | None = None
    lan = Lan(3, subnet="10.79.0.0/24")
    spans: dict[str, list[float]] = {k: [] for k in KINDS}
    floors: dict[str, list[float]] = {k: [] for k in KINDS}
    warm: dict[str, list[float]] = {k: [] for k in KINDS}
    try:
        lan.__enter__()
        subprocess.run(lan.hosts[1].argv("sysctl", "-qw", "net.ipv4.ip_forward=1"), check=True)
        server, admin = prov.start_server(tmp, args.log_level)
        world = prov.World(args=args, tmp=tmp, lan=lan, server=server, admin=admin)
        world.procs.append(server)
        admin.put_topology(topology(lan))
        for h in lan.hosts:
            a = world.agents[h.name] = prov.add_agent(world, h.name, h.netns)
            world.procs.append(a.spawn())
        for a in world.agents.values():
            a.wait(prov.ready)
        tracker.watch_server(TenureClient(admin.base_url, (tmp / "server" / "admin.token").read_text().strip(),
                                          timeout=30))
        for i in range(-args.warmup, args.runs):
            for kind, (body, hosts) in KINDS.items():
                for a in world.agents.values():
                    a.wait(prov.ready)
                t_start = time.time() + args.lead
                rid = admin.reserve(**body, start=prov.now_iso(t_start), end=prov.now_iso(t_start + 60),
                                    labels={"bench": "activation"})["id"]
                act = prov.wall(admin.reservation(rid)["start"])
                assert act is not None
                deadline = time.monotonic() + args.lead + 20
                done = None
                while time.monotonic() < deadline:
                    with tracker.lock:
                        seen = [tracker.inst.get((rid, h, "active")) for h in hosts]
                    if all(s is not None for s in seen):
                        done = max(s for s in seen if s is not None)
                        break
                    time.sleep(0.01)
                admin.cancel_reservation(rid)
                t_gone = time.monotonic() + 30
                while not gone(admin, rid) and time.monotonic() < t_gone:
                    time.sleep(0.02)
                for a in world.agents.values():
                    a.wait(prov.ready)
                floor = baseline(lan, kind, i + args.warmup)
                span = done - act if done is not None else float("nan")
                (warm if i < 0 else spans)[kind].append(span)
                if i >= 0:
                    floors[kind].append(floor)
                print(f"  {'warm-up' if i < 0 else f'round {i + 1}/{args.runs}'} {kind}: activation -> all active "
                      f"{prov.ms(span):.1f} ms; floor {prov.ms(floor):.1f} ms", flush=True)
        rows = []
        for kind in KINDS:
            xs = [x for x in spans[kind] if x == x]
            rows.append((kind, len(xs), fmt(prov.ms(median(xs))), fmt(prov.ms(prov.pct(xs, 0.99))),
                         fmt(prov.ms(median(floors[kind])))))
            report.results.append({"kind": kind, "activation_s": spans[kind], "floor_s": floors[kind],
                                   "warmup_s": warm[kind], "vni_example": mirror_vni("r-example")})
            report.goals.append(Goal(f"{kind}: activation -> every instance active, median", prov.ms(median(xs)),
                                     50.0, "ms", higher_is_better=False,
                                     detail=f"p99 {fmt(prov.ms(prov.pct(xs, 0.99)))} ms, n={len(xs)}; floor "
                                            f"(the drivers' start in-process, slowest host) "
                                            f"{fmt(prov.ms(median(floors[kind])))} ms"))
        benchkit.print_table(f"Activation to the wire (ms; {args.runs} rounds)",
                             ["kind", "n", "p50", "p99", "floor p50"], rows)
    finally:
        tracker.stop()
        if world is not None:
            for proc in reversed(world.procs):
                with contextlib.suppress(Exception):
                    proc.kill(signal.SIGKILL)
            with contextlib.suppress(Exception):
                world.admin.close()
        lan.close()
        shutil.rmtree(tmp, ignore_errors=True)
    benchkit.finish(report)


if __name__ == "__main__":
    main()
