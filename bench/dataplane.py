#!/usr/bin/env python3
"""The cost of the guarantee: unreserved throughput through the tree and the rules, against no qdisc at all.

    python3 dev.py bench dataplane [--runs 5] [--seconds 3] [--legs 1,100,1000]

Three hosts on a bridge (``tests/netns_support.Lan``, veth pairs: a few Gbit/s, so the cost of the per-packet work
shows). In each round, side by side in the same run:

1. **no qdisc**: iperf3 h1 -> h3 (TCP, ``--seconds``) with h1's interface as the kernel leaves it (noqueue), no
   nftables table: the baseline;
2. **tree, N legs**: for each N of ``--legs``, N legs from h1 to h2 (1 Mbit/s each, 1:2..1:N+1, marking EF) put
   in place by ``tenure.drivers.tc:Shaper`` on h1's interface with the capacity at 100 Gbit/s (above what the
   veth carries: on a real NIC the capacity is the line rate, so the link, not the tree, is the limit; the default
   class holds what the legs leave), then the same iperf3 h1 -> h3: unreserved traffic, classified into the
   default class after two map lookups (the legs are all to h2, in h2's chain, which traffic to h3 never enters)
   and the re-mark rules. What it measures is the CPU cost of HTB and the rules per byte, on a path where CPU is
   the limit;
3. **same host, N legs**: the same legs, and iperf3 h1 -> h2 on a port none of them matches: unreserved traffic to
   a host that has legs walks that host's chain (every leg's rule) before it reaches the default class.

Not measured here: legs to networks (in the base chain, walked by every packet).

The rounds alternate the order of the modes; the medians are compared. Goal (issue 15): unreserved throughput
with the tree in place at least 0.95x no qdisc. (With no reservation active the agent leaves no tree and no table
at all: then the cost is nothing by construction.) Reports and never gates (exit 0); every namespace goes at the
end. Results: bench/results/dataplane-*.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/http.py shadows http
sys.path.append(str(HERE))

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

import benchkit  # noqa: E402  (puts the repository on sys.path: tests.netns_support)
from benchkit import Goal, Report, fmt, median  # noqa: E402

from tenure.drivers.pydriver import HandlerContext  # noqa: E402
from tenure.drivers.tc import Shaper  # noqa: E402
from tests.netns_support import Host, Lan, iperf3  # noqa: E402

CAPACITY = "100G"  # above what the veth carries (~20 Gbit/s): as on a real NIC, the link is the limit, not the tree


def ctx() -> HandlerContext:
    return HandlerContext(instance="bench", instance_id="bench", interval=0.0, timeout=300.0)


def legs(h1: Host, h2: Host, n: int) -> list[dict[str, str]]:
    return [{"device": h1.ifname, "rate": "1M", "classid": str(2 + i), "dst": h2.address, "src": h1.address,
             "netns": h1.netns, "capacity": CAPACITY, "protocol": "tcp", "dst_port": str(6000 + i), "mark": "46"}
            for i in range(n)]


def put(shaper: Shaper, params: list[dict[str, str]]) -> None:
    for p in params:
        rc = shaper.start(p, ctx())
        assert rc == 0, rc


def clear(shaper: Shaper, params: list[dict[str, str]]) -> None:
    for p in reversed(params):
        rc = shaper.stop(p, ctx())
        assert rc == 0, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="rounds; the medians are compared")
    ap.add_argument("--seconds", type=float, default=3.0, help="of each iperf3 measurement")
    ap.add_argument("--legs", default="1,100,1000", help="leg counts of the tree modes")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("iperf3") is None or shutil.which("nft") is None:
        sys.exit("bench dataplane needs root, iperf3 and nft (network namespaces)")
    counts = [int(x) for x in args.legs.split(",") if x.strip()]
    report = Report("dataplane", benchkit.machine(measure_fsync=False), vars(args))
    modes = ["no qdisc"] + [f"tree, {n} legs" for n in counts] + [f"same host, {n} legs" for n in counts]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    shaper = Shaper()
    with Lan(3) as lan:
        h1, h2, h3 = lan.hosts
        iperf3(h1, h3, seconds=1)  # warm-up: ARP, the first connection
        for r in range(args.runs):
            order = modes if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                n = 0 if mode == "no qdisc" else int(mode.split()[-2])
                params = legs(h1, h2, n)
                put(shaper, params)
                try:
                    to = h2 if mode.startswith("same host") else h3
                    rates[mode].append(iperf3(h1, to, seconds=args.seconds, port=5202))
                finally:
                    clear(shaper, params)
                print(f"  round {r + 1}/{args.runs} {mode}: {rates[mode][-1] / 1e9:.2f} Gbit/s", flush=True)
    base = median(rates["no qdisc"])
    rows = []
    for mode in modes:
        m = median(rates[mode])
        rows.append((mode, fmt(m / 1e9), " / ".join(fmt(x / 1e9) for x in rates[mode]), fmt(m / base)))
        report.results.append({"mode": mode, "median_bps": m, "runs_bps": rates[mode], "ratio": m / base})
    benchkit.print_table("Unreserved throughput h1 -> h3 (iperf3, TCP)", ["mode", "median (Gbit/s)", "runs",
                                                                         "x no qdisc"], rows)
    for n in counts:
        for mode, what in ((f"tree, {n} legs", "to another host"), (f"same host, {n} legs", "to the legs' host")):
            report.goals.append(Goal(f"unreserved throughput {what} with the tree and {n} legs' rules, against no "
                                     f"qdisc", median(rates[mode]) / base, 0.95, "x",
                                     detail=f"{fmt(median(rates[mode]) / 1e9)} vs {fmt(base / 1e9)} Gbit/s"))
    benchkit.finish(report)


if __name__ == "__main__":
    main()
