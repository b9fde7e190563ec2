"""End to end: a reservation shapes a real flow through real processes, across a kill -9 of the host agent.

Two hosts h1 and h2 are network namespaces on a bridge (tests/netns_support.py).
A real ``tenure serve`` runs in the root namespace on a unix socket; one real
``tenure agent --host hN --server unix:...`` runs inside each host's namespace
(the filesystem is shared, so the agents reach the server's socket). The
topology names each host's address and interface.

A oneway reservation of 50 Mbit/s from h1 to h2 makes the server create a
``bandwidth`` shaper instance on h1; h1's agent applies it with the tc Shaper
(an HTB class in the interface's tree, and nftables rules classifying the flow into it and marking it EF, in
h1's namespace). Then, measured with iperf3
and checked with the ``tc`` command independently of Tenure:

- the flow h1 -> h2 gets 50 Mbit/s (HTB counts layer-2 bytes, so iperf3's
  goodput is about 48: 45..55 accepted), and the class is 1:<classid> at 50Mbit
  with the classid the instance reports;
- the agent killed with SIGKILL and started again on the same data dir changes
  nothing: the same qdisc and classes (and no TC notification at all in
  h1's namespace), the same nftables rules (handles), the reservation and the instance still active with the same
  classid, and the restarted agent ran no operation (its /healthz sync.operations
  is 0) and sent no report; the flow is still shaped;
- at the reservation's end the server expires it, the shaper is deleted, the
  class is gone from h1 and the flow is no longer shaped (> 200 Mbit/s).

Every wait is on a condition with a deadline; every process is stopped at the
end (SIGTERM, then SIGKILL) and the namespaces are deleted. Failures show the
tails of the server's and agents' logs.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tenure.client import TenureClient
from tenure.client._errors import TenureAPIError
from tests.netns_support import (
    CREATED,
    Host,
    Lan,
    TcEvents,
    best_rate,
    count_dscp,
    count_udp,
    dscp_counts,
    forwarded,
    iperf3,
    netns_names,
    require_iperf3,
    require_netns,
    routing,
    side_by_side,
    udp_count,
)
from tests.system.dataplane_support import Daemon, group_alive, start_cluster, tc_layout, wait_until

RATE = 50_000_000  # bit/s reserved
SHAPED = (45e6, 55e6)  # iperf3 goodput of a 50M class (layer-2 rate): about 48 Mbit/s
UNSHAPED = 200e6  # veth pairs through a bridge carry several Gbit/s
WINDOW = 40  # seconds of the reservation: everything up to the second measurement fits in it
IPERF_SECONDS = 3
WAIT = 30.0  # seconds: the bound of each wait on a condition (never a pause)
ROOT_KINDS = ("noqueue", "pfifo_fast", "fq_codel", "mq")  # a root qdisc the kernel put there


def topology(h1: Host, h2: Host) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "h1", "kind": "host", "labels": {"address": h1.address, "interface": h1.ifname}},
            {"id": "h2", "kind": "host", "labels": {"address": h2.address, "interface": h2.ifname}},
            {"id": "s1", "kind": "switch"},
        ],
        "links": [
            {"id": "h1-s1", "a": "h1", "b": "s1", "capacity": "1G"},
            {"id": "h2-s1", "a": "h2", "b": "s1", "capacity": "1G"},
        ],
    }


def shapers(admin: TenureClient, rid: str) -> list[dict[str, Any]]:
    """The reservation's shaper instances, on any host."""
    return [i for i in admin.instances()["instances"] if owned_by(i, rid)]


def owned_by(inst: dict[str, Any], rid: str) -> bool:
    """The instance is one of reservation ``rid``'s (owner ``reservation:<id>/<leg>``)."""
    return (inst["owner"] or "").partition("/")[0] == f"reservation:{rid}"


def root_qdisc(host: Host) -> dict[str, Any]:
    return next(q for q in host.tc_json("qdisc") if q.get("root"))


def u32_nodes(host: Host) -> list[dict[str, Any]]:
    """The u32 key nodes (not hash tables) with their pref."""
    return [dict(f["options"], pref=f["pref"]) for f in host.tc_json("filter") if "flowid" in f.get("options", {})]


@pytest.mark.system
def test_reservation_shapes_a_flow_across_an_agent_kill_9(tmp_path: Path) -> None:
    require_netns()
    require_iperf3()
    began = time.monotonic()
    daemons: list[Daemon] = []
    rates: dict[str, float] = {}
    restart_seconds = float("nan")

    def logs() -> str:
        return "".join(f"\n----- {d.name} log (tail) -----\n{d.tail()}" for d in daemons)

    with Lan(2) as lan, contextlib.ExitStack() as cleanup:
        h1, h2 = lan.hosts
        try:
            # --- the server in the root namespace, one agent per host inside the host's namespace
            admin, agents = start_cluster(tmp_path, (h1, h2), daemons, cleanup, logs)
            admin.put_topology(topology(h1, h2))

            # --- the reservation and its shaper on h1
            res = admin.reserve(kind="oneway", src="h1", dst="h2", rate="50M", start="now", end=f"+{WINDOW}s")
            reserved_at = time.monotonic()
            rid = res["id"]
            assert res["state"] == "active", f"{res}{logs()}"

            def shaper_active() -> dict[str, Any] | None:
                mine = [i for i in admin.instances(host="h1")["instances"] if owned_by(i, rid)]
                return mine[0] if len(mine) == 1 and mine[0]["state"] == "active" else None

            inst = wait_until(shaper_active, timeout=WAIT, what="the shaper active on h1", context=logs)
            assert inst["type"] == "bandwidth" and inst["host"] == "h1", f"{inst}{logs()}"
            assert inst["owner"] == f"reservation:{rid}/out", f"{inst}{logs()}"
            assert [i["id"] for i in shapers(admin, rid)] == [inst["id"]], f"{shapers(admin, rid)}{logs()}"
            classid = inst["outputs"]["classid"]

            classes = h1.tc_classes()
            assert classid in classes, f"class {classid} not on h1: {classes}{logs()}"
            assert classes[classid]["kind"] == "htb" and classes[classid]["rate"] == RATE, f"{classes}{logs()}"
            assert classes[classid]["ceil"] == RATE, f"{classes}{logs()}"
            assert root_qdisc(h1)["kind"] == "htb", f"{h1.tc_json('qdisc')}{logs()}"
            assert u32_nodes(h1) == [], f"{h1.tc_json('filter')}{logs()}"  # classified by nftables instead
            table = h1.run("nft", "list", "table", "inet", "tenure").stdout  # as nft prints it
            assert (f'oifname "{h1.ifname}" ip saddr {h1.address} ip daddr {h2.address} meta priority set {classid} '
                    f'ip dscp set ef counter') in table, f"{table}{logs()}"
            assert h2.tc_classes() == {}, f"h2 is shaped: {h2.tc_classes()}{logs()}"

            rates["shaped"] = iperf3(h1, h2, seconds=IPERF_SECONDS)
            assert SHAPED[0] <= rates["shaped"] <= SHAPED[1], (
                f"shaped flow at {rates['shaped'] / 1e6:.1f} Mbit/s{logs()}")

            # --- kill -9 of h1's agent during the reservation, then the same command line again
            agent = agents["h1"]
            agent.verify_in_netns()  # the pid is the tenure agent itself, not `ip netns exec`
            before = tc_layout(h1)
            rules_before = [(r["handle"], r["comment"]) for r in h1.nft_rules()]
            # the dispatch rules (by port and by host, v4 and v6), the re-marks of EF (v4, v6), the leg's in h2's chain
            assert len(rules_before) == 7, f"{h1.nft_rules()}{logs()}"
            # The kernel announces every change of a qdisc, class or filter in h1's namespace: a pass that
            # touched the wire would show here (the same socket sees the teardown at the end: it is live).
            events = TcEvents(h1.netns)
            cleanup.callback(events.close)
            events.drain()
            killed_at = time.monotonic()
            agent.kill9()
            assert tc_layout(h1) == before, f"the kill changed tc{logs()}"
            agent.start()
            healthy = agent.wait_healthy(lambda b: b["sync"]["registered"] and b["sync"]["synced"]
                                         and b["sync"]["converged"],
                                         what="synced and converged after the restart", context=logs)
            restart_seconds = time.monotonic() - killed_at
            agent.verify_in_netns()
            changes = events.drain()
            assert changes == 0, f"{changes} tc changes in h1 during the restart{logs()}"
            after = tc_layout(h1)
            assert after == before, f"tc changed across the restart:\nbefore {before}\nafter {after}{logs()}"
            assert [(r["handle"], r["comment"]) for r in h1.nft_rules()] == rules_before, (
                f"nftables changed across the restart: {h1.nft_rules()}{logs()}")
            sync = healthy["sync"]
            assert sync["operations"] == 0, f"the restarted agent ran operations: {sync}{logs()}"
            assert sync["reports"] == 0, f"the restarted agent reported again: {sync}{logs()}"
            assert sync["instances"] == 1, f"{sync}{logs()}"
            assert admin.reservation(rid)["state"] == "active", f"{admin.reservation(rid)}{logs()}"
            now = admin.instance(inst["id"])
            assert now["state"] == "active" and now["outputs"].get("classid") == classid, f"{now}{logs()}"
            assert (now["generation"], now["observed"], now["revision"]) == (
                inst["generation"], inst["observed"], inst["revision"]), f"{inst}\n{now}{logs()}"

            left = WINDOW - (time.monotonic() - reserved_at)
            assert left > IPERF_SECONDS + 2, f"only {left:.1f}s of the reservation left for the second measurement"
            rates["after restart"] = iperf3(h1, h2, seconds=IPERF_SECONDS)
            assert SHAPED[0] <= rates["after restart"] <= SHAPED[1], (
                f"flow after the agent restart at {rates['after restart'] / 1e6:.1f} Mbit/s{logs()}")
            assert agent.health()["sync"]["operations"] == 0, logs()  # type: ignore[index]

            # --- the end of the reservation: expired, shaper deleted, class gone, flow unshaped
            until_end = WINDOW - (time.monotonic() - reserved_at)
            wait_until(lambda: admin.reservation(rid)["state"] == "expired", timeout=max(until_end, 0) + 30,
                       what="the reservation expired", context=logs, interval=0.2)
            wait_until(lambda: not shapers(admin, rid), timeout=WAIT, what="the shaper deleted", context=logs)
            with pytest.raises(TenureAPIError) as gone:
                admin.instance(inst["id"])
            assert gone.value.status == 404, gone.value
            wait_until(lambda: classid not in h1.tc_classes(), timeout=WAIT, what=f"class {classid} gone from h1",
                       context=logs)
            assert u32_nodes(h1) == [], f"{h1.tc_json('filter')}{logs()}"
            assert events.drain() > 0, "the TC notifications did not show the teardown: the restart's check is void"
            assert root_qdisc(h1)["kind"] in ROOT_KINDS, f"{h1.tc_json('qdisc')}{logs()}"
            agent.wait_healthy(lambda b: b["sync"]["instances"] == 0 and b["sync"]["converged"],
                               what="without instances", context=logs)
            rates["expired"] = iperf3(h1, h2, seconds=IPERF_SECONDS)
            assert rates["expired"] > UNSHAPED, f"flow after expiry at {rates['expired'] / 1e6:.1f} Mbit/s{logs()}"
            for d in daemons:
                assert d.alive(), f"{d.name} exited{logs()}"
        finally:
            for d in reversed(daemons):
                d.stop()
            print("\niperf3 h1 -> h2: " + ", ".join(f"{k} {v / 1e6:.1f} Mbit/s" for k, v in rates.items())
                  + f"; agent kill -9 to converged {restart_seconds:.1f}s; test {time.monotonic() - began:.1f}s")
        for d in daemons:
            assert not group_alive(d.pid), f"{d.name} left processes behind"
    mine = {name for name in CREATED if lan.suffix in name}
    assert not mine & netns_names(), f"namespaces left behind: {sorted(mine & netns_names())}"


@pytest.mark.system
def test_a_guaranteed_reservation_keeps_its_rate_against_a_bulk_transfer(tmp_path: Path) -> None:
    """End to end, on dual-stack hosts and a topology without address or interface labels (the agents report
    them): a 50 Mbit/s reservation h1 -> h2 on h1's 200 Mbit/s link keeps its rate, over IPv4 and over IPv6, while
    an unreserved bulk transfer from h1 to h3 wants everything; its packets arrive at h2 marked EF, while the bulk
    transfer's, which mark themselves EF, arrive best effort (counted by nftables in h2 and h3); modified to
    ``burst: borrow`` it uses the idle link; cancelled, its tree and its rules are gone."""
    require_netns()
    require_iperf3()
    daemons: list[Daemon] = []
    rates: dict[str, float] = {}

    def logs() -> str:
        return "".join(f"\n----- {d.name} log (tail) -----\n{d.tail()}" for d in daemons)

    with Lan(3, ipv6=True) as lan, contextlib.ExitStack() as cleanup:
        h1, h2, h3 = lan.hosts
        try:
            admin, agents = start_cluster(tmp_path, lan.hosts, daemons, cleanup, logs)
            for h in (h2, h3):
                count_dscp(h, h1)
            capacity = {"h1": "200M", "h2": "1G", "h3": "1G"}
            admin.put_topology({"nodes": [{"id": h.name, "kind": "host"} for h in lan.hosts]
                                + [{"id": "s1", "kind": "switch"}],
                                "links": [{"id": f"{h.name}-s1", "a": h.name, "b": "s1", "capacity": capacity[h.name]}
                                          for h in lan.hosts]})
            rid = admin.reserve(kind="oneway", src="h1", dst="h2", rate="50M", start="now", end="+120s")["id"]

            def shaper(generation: int) -> dict[str, Any] | None:
                mine = shapers(admin, rid)
                ok = len(mine) == 1 and mine[0]["state"] == "active" and mine[0]["observed"] == generation
                return mine[0] if ok else None

            inst = wait_until(lambda: shaper(1), timeout=WAIT, what="the shaper active on h1", context=logs)
            params = inst["parameters"]
            assert (params["dst"], params["src"], params["device"], params["capacity"], params["mark"]) == (
                f"{h2.address},{h2.address6}", f"{h1.address},{h1.address6}", h1.ifname, "200000000",
                "46"), f"{inst}{logs()}"  # from the agents' reports, both families; EF

            rates["alone"] = iperf3(h1, h2, seconds=IPERF_SECONDS)
            ef = 46 << 2  # the bulk transfer marks itself EF
            rates["contended"], rates["bulk"] = side_by_side(lambda: iperf3(h1, h2, seconds=4, port=5201),
                                                             lambda: iperf3(h1, h3, seconds=4, port=5202, tos=ef))
            assert rates["contended"] >= 0.95 * rates["alone"] and rates["contended"] >= SHAPED[0], logs()
            assert 120e6 <= rates["bulk"] <= 200e6 and rates["contended"] + rates["bulk"] <= 200e6, logs()
            rates["contended v6"], rates["bulk v6"] = side_by_side(
                lambda: iperf3(h1, h2, seconds=4, port=5201, address=h2.address6),
                lambda: iperf3(h1, h3, seconds=4, port=5202, address=h3.address6, tos=ef))
            assert rates["contended v6"] >= 0.95 * rates["alone"] and rates["contended v6"] >= SHAPED[0], logs()
            assert 120e6 <= rates["bulk v6"] <= 200e6, logs()
            with agents["h1"].admin_client() as h1_agent:  # a probe now (the recurring one runs every 60 s)
                h1_agent.submit(f"i-{inst['id']}", "monitor")

            def observed() -> dict[str, Any] | None:  # the agent's monitor, through its heartbeat, on the server
                [leg] = admin.reservation_wire(rid)["legs"]
                seen = leg["observed"]
                busy = int(seen.get("sent_bytes", "0")) > 0 and int(seen.get("classified_packets", "0")) > 0
                return leg if busy else None

            leg = wait_until(observed, timeout=WAIT, what="the shaper's observed state on the server", context=logs)
            assert (leg["host"], leg["state"], leg["observed"]["rate"], leg["observed"]["classid"]) == (
                "h1", "active", "50000000", inst["outputs"]["classid"]), f"{leg}{logs()}"
            at_h2, at_h3 = dscp_counts(h2), dscp_counts(h3)
            assert at_h2["ef 5201"] > 1000 and at_h2["cs0 5201"] == at_h2["other 5201"] == 0, f"{at_h2}{logs()}"
            assert at_h3["cs0 5202"] > 1000 and at_h3["ef 5202"] == at_h3["other 5202"] == 0, f"{at_h3}{logs()}"

            admin.modify_reservation(rid, burst="borrow")
            wait_until(lambda: shaper(2), timeout=WAIT, what="the shaper modified to borrow", context=logs)
            rates["borrowing"] = iperf3(h1, h2, seconds=IPERF_SECONDS)
            assert 100e6 < rates["borrowing"] <= 200e6, logs()

            admin.cancel_reservation(rid)
            wait_until(lambda: root_qdisc(h1)["kind"] in ROOT_KINDS, timeout=WAIT, what="h1's tree gone",
                       context=logs)
            assert h1.tc_classes() == {} and h1.nft_rules() == [], logs()
        finally:
            for d in reversed(daemons):
                d.stop()
            print("\niperf3: " + ", ".join(f"{k} {v / 1e6:.1f} Mbit/s" for k, v in rates.items()))
        for d in daemons:
            assert not group_alive(d.pid), f"{d.name} left processes behind"


def wire_state(host: Host) -> tuple[Any, ...]:
    """What a restart must not change on ``host``: tc (the root's and clsact's), the nftables rules (handles), the
    ip rules and routes, the links (a mirror's tunnel), without counters."""
    clsact = [json.loads(host.run("tc", "-j", "filter", "show", "dev", host.ifname, hook).stdout or "[]")
              for hook in ("ingress", "egress")]
    return (tc_layout(host), clsact, [(r["handle"], r["comment"]) for r in host.nft_rules()], routing(host),
            host.run("ip", "-d", "link", "show").stdout)


@pytest.mark.system
def test_steering_a_mirror_and_a_guarantee_at_once_across_agent_kill_9s(tmp_path: Path) -> None:
    """End to end, on a topology without labels, three reservations at once:

    - steering h1 -> h2 (a middlebox, forwarding) -> h3 for TCP to port 5201 at 20 Mbit/s: h1's agent shapes the
      first segment and routes the flow to h2, h2's agent shapes the second. Counted in h2's forward hook
      (nftables): the flow passes h2 and arrives at h3 at its rate; a flow to another port goes straight to h3;
    - a mirror of what h3 receives to the collector h4 at 30 Mbit/s: h4 gets a copy of every datagram of a
      20 Mbit/s UDP flow into h3 over 10 s (counted at both ends by nftables: within 1 %), the flow keeps its rate,
      and copies of a 60 Mbit/s flow stay within the mirror's 30 (the original untouched); the mirror's observed
      state reaches the server;
    - a oneway 50 Mbit/s h1 -> h4, shaped.

    Every agent killed with SIGKILL and started again changes nothing on any host (tc, clsact filters, nftables,
    ip rules and routes, links) and runs no operation. Cancelled, everything the reservations put on the wire is
    gone, and nothing else."""
    require_netns()
    require_iperf3()
    daemons: list[Daemon] = []
    rates: dict[str, float] = {}

    def logs() -> str:
        return "".join(f"\n----- {d.name} log (tail) -----\n{d.tail()}" for d in daemons)

    with Lan(4) as lan, contextlib.ExitStack() as cleanup:
        h1, h2, h3, h4 = lan.hosts
        try:
            h2.run("sysctl", "-qw", "net.ipv4.ip_forward=1")  # a middlebox forwards (the operator's choice)
            forwarded(h2, h1, h3)
            count_udp(h3, 5204)
            before = {h.name: wire_state(h) for h in lan.hosts}
            admin, agents = start_cluster(tmp_path, lan.hosts, daemons, cleanup, logs)
            admin.put_topology({"nodes": [{"id": h.name, "kind": "middlebox" if h is h2 else "host"}
                                          for h in lan.hosts] + [{"id": "s1", "kind": "switch"}],
                                "links": [{"id": f"{h.name}-s1", "a": h.name, "b": "s1", "capacity": "1G"}
                                          for h in lan.hosts]})
            window = {"start": "now", "end": "+180s"}
            steer = admin.reserve(kind="steering", src="h1", dst="h3", via=["h2"], rate="20M", protocol="tcp",
                                  dst_port=5201, **window)["id"]
            mirror = admin.reserve(kind="mirror", src="h3", collector="h4", rate="30M", direction="in",
                                   **window)["id"]
            oneway = admin.reserve(kind="oneway", src="h1", dst="h4", rate="50M", protocol="tcp", dst_port=5203,
                                   **window)["id"]

            def active(rid: str, parts: int) -> dict[str, dict[str, Any]] | None:
                mine = {i["owner"].partition("/")[2]: i for i in shapers(admin, rid)}
                return mine if len(mine) == parts and all(i["state"] == "active" for i in mine.values()) else None

            legs = wait_until(lambda: active(steer, 2), timeout=WAIT, what="both segments active", context=logs)
            ends = wait_until(lambda: active(mirror, 2), timeout=WAIT, what="both mirror ends active", context=logs)
            wait_until(lambda: active(oneway, 1), timeout=WAIT, what="the oneway shaper active", context=logs)
            assert (legs["seg0"]["host"], legs["seg1"]["host"]) == ("h1", "h2"), f"{legs}{logs()}"
            assert legs["seg0"]["parameters"]["via"] == h2.address, f"{legs}{logs()}"
            assert (ends["mirror"]["host"], ends["collector"]["host"]) == ("h3", "h4"), f"{ends}{logs()}"
            tunnel = ends["mirror"]["parameters"]["tunnel"]
            count_udp(h4, 5204, device=tunnel)

            # --- steering: through h2, at its rate; another port straight to h3
            rates["steered"] = iperf3(h1, h3, seconds=IPERF_SECONDS, port=5201)
            rates["other port"] = iperf3(h1, h3, seconds=1, port=5202)
            through = {r["comment"]: next(e["counter"]["bytes"] for e in r["expr"] if "counter" in e)
                       for r in h2.nft_rules("count")}
            assert 17e6 <= rates["steered"] <= 22e6, logs()
            assert through["fwd 5201"] >= 0.9 * rates["steered"] * IPERF_SECONDS / 8, f"{through}{logs()}"
            assert through["fwd 5202"] == 0 and rates["other port"] > UNSHAPED, f"{through}{logs()}"
            for h, leg in ((h1, "seg0"), (h2, "seg1")):  # each segment shaped at its source
                cls = h.tc_classes()[legs[leg]["outputs"]["classid"]]
                assert cls["rate"] == 20_000_000 and cls["sent_bytes"] > 0, f"{h.name} {cls}{logs()}"
            rates["oneway"] = iperf3(h1, h4, seconds=2, port=5203)
            assert SHAPED[0] <= rates["oneway"] <= SHAPED[1], logs()

            # --- the mirror: a copy of every datagram, the original's rate kept, the copies within the mirror's
            rates["mirrored flow"] = iperf3(h1, h3, seconds=10, udp=True, bitrate="20M", length=1000,
                                            port=5204)
            (received, _), (copies, _) = udp_count(h3, 5204), udp_count(h4, 5204, device=tunnel)
            # 3 % for the flow and 2 % for its copies: a stalled iperf3 client catches up in a burst, which a busy
            # CI machine's receiver (or the mirror's 30M bucket) may not take whole; a mirror that held the flow or
            # copied a part of it still fails.
            assert rates["mirrored flow"] >= 19.4e6 and received > 24000, f"{received}{logs()}"
            assert abs(copies - received) <= 0.02 * received, f"{received} received, {copies} copies{logs()}"
            # A flow over the mirror's rate keeps its own rate (only the copies are held): best of three. Every
            # try's copies count.
            copy_rates: list[float] = []

            def fast_flow() -> float:
                copied_before = udp_count(h4, 5204, device=tunnel)[1]
                rate = iperf3(h1, h3, seconds=2, udp=True, bitrate="60M", length=1000, port=5204)
                copy_rates.append((udp_count(h4, 5204, device=tunnel)[1] - copied_before) * 8 / 2)
                return rate

            rates["fast flow"] = best_rate(fast_flow, 59e6)
            rates["its copies"] = max(copy_rates)
            assert rates["fast flow"] >= 59e6, f"{rates}{logs()}"
            assert rates["its copies"] <= 30e6 * 1.1, f"{rates}{logs()}"
            with agents["h3"].admin_client() as h3_agent:  # a probe now (the recurring one runs every 60 s)
                h3_agent.submit(f"i-{ends['mirror']['id']}", "monitor")

            def observed() -> dict[str, Any] | None:
                seen = {leg["leg"]: leg["observed"] for leg in admin.reservation_wire(mirror)["legs"]}
                return seen if int(seen.get("mirror", {}).get("mirrored_packets", "0")) >= received else None

            seen = wait_until(observed, timeout=WAIT, what="the mirror's observed state on the server", context=logs)
            assert int(seen["mirror"]["dropped"]) > 0, f"{seen}{logs()}"  # the fast flow's copies over the rate

            # --- kill -9 of every agent, and the same command lines again: nothing changes on the wire
            wire = {h.name: wire_state(h) for h in lan.hosts}
            for h in lan.hosts:
                agent = agents[h.name]
                agent.kill9()
                agent.start()
                healthy = agent.wait_healthy(lambda b: b["sync"]["registered"] and b["sync"]["synced"]
                                             and b["sync"]["converged"], what="converged after the restart",
                                             context=logs)
                assert healthy["sync"]["operations"] == 0, f"{h.name} ran operations: {healthy}{logs()}"
            after = {h.name: wire_state(h) for h in lan.hosts}
            changed = [name for name in wire if after[name] != wire[name]]
            assert not changed, f"the restarts changed the wire on {changed}{logs()}"
            rates["after restarts"] = iperf3(h1, h3, seconds=2, port=5201)
            assert 17e6 <= rates["after restarts"] <= 22e6, logs()

            # --- cancelled: everything they put on the wire is gone, and nothing else
            for rid in (steer, mirror, oneway):
                admin.cancel_reservation(rid)
            wait_until(lambda: {h.name: wire_state(h) for h in lan.hosts} == before, timeout=WAIT,
                       what="every host's wire as before the reservations", context=logs)
        finally:
            for d in reversed(daemons):
                d.stop()
            print("\niperf3: " + ", ".join(f"{k} {v / 1e6:.1f} Mbit/s" for k, v in rates.items()))
        for d in daemons:
            assert not group_alive(d.pid), f"{d.name} left processes behind"
