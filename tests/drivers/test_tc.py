"""The tc Shaper against real namespaces, real HTB, real nftables and real iperf3 flows.

Every test builds its own hosts (tests/netns_support.py) and calls the handler
directly with ``netns`` set to the sending host's namespace; what it did is
checked independently with the ``tc`` and ``nft`` commands. Shaping is measured, not assumed:
an iperf3 flow into a 50 Mbit/s class must come out within 10 % of it, and the
same flow unshaped well above.
"""

from __future__ import annotations

import asyncio
import difflib
import errno
import ipaddress
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenure.clock import FakeClock
from tenure.drivers.ocf import parse_meta_data
from tenure.drivers.pydriver import HandlerContext
from tenure.drivers.registry import make_driver
from tenure.drivers.spec import DriverRoots
from tenure.drivers.tc import Mirror, Shaper, nft
from tenure.drivers.tc.mirror import parse_end
from tenure.drivers.tc.params import Leg, parse_params, parse_rate
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
    side_by_side,
    require_netns,
    routing,
    run,
    udp_count,
)

UNSHAPED = 200e6  # bit/s: far above any class here; veth pairs through a bridge carry several Gbit/s


def ctx() -> HandlerContext:
    return HandlerContext(instance="leg", instance_id="id-leg", interval=0.0, timeout=20.0)


@pytest.fixture(scope="module", autouse=True)
def _no_namespace_left() -> Iterator[None]:
    yield
    left = CREATED & netns_names()
    assert not left, f"namespaces left behind: {sorted(left)}"


@pytest.fixture
def lan() -> Iterator[Lan]:
    require_netns()
    with Lan(3) as lan:
        yield lan


CAPACITY = "1G"  # the interface's, for the tree's parent class (veth pairs carry several Gbit/s)


def leg(host: Host, dst: Host, **kw: str) -> dict[str, str]:
    params = {"device": host.ifname, "rate": "50M", "classid": "5", "dst": dst.address, "netns": host.netns,
              "capacity": CAPACITY}
    params.update(kw)
    return params


def layout(host: Host) -> tuple[list[dict], dict[str, dict], list[dict]]:
    """qdiscs, classes and filters as tc shows them, without counters."""
    qdiscs = host.tc_json("qdisc")
    for q in qdiscs:
        q.get("options", {}).pop("direct_packets_stat", None)
    classes = {cid: {k: v for k, v in c.items() if not k.startswith("sent_")} for cid, c in host.tc_classes().items()}
    return qdiscs, classes, host.tc_json("filter")


def nodes(host: Host) -> list[dict]:
    """The u32 key nodes (not hash tables), each with its pref: what legs had before nftables classified them."""
    return [dict(f["options"], pref=f["pref"]) for f in host.tc_json("filter") if "flowid" in f.get("options", {})]


def rules(host: Host, kind: str = "leg") -> dict[str, dict]:
    """Tenure's nftables rules in ``host``, in chain order: the legs' by "DEVICE CLASSID FAMILY", or (``kind``
    "remark") the re-mark rules by "FAMILY MARK", or (``kind`` "steer") the steering rules by "DEVICE CLASSID FAMILY
    CHAIN"; each with its expressions as nft lists them and its handle."""
    out = {}
    for r in host.nft_rules():
        words = r["comment"].split()
        if kind == "remark" and words[1] == "remark":
            out[f"{words[2]} {words[3]}"] = r
        elif words[1] not in ("remark", "dispatch") and words[4] == kind:  # "leg" or "steer"
            out[" ".join(words[1:4]) + (f" {r['chain']}" if kind == "steer" else "")] = r
    return out


def evaluated(host: Host) -> list[str]:
    """The legs' rules in the order a packet meets them (one destination): its port's chain's, its host's chain's,
    then the base chain's (the dispatch rules jump to the port's chain, then to the host's, first)."""
    legs = rules(host)
    table = nft.parse(host.run("nft", "-j", "list", "table", "inet", "tenure").stdout)
    by_port = {target for key, target in table.elements.items() if len(key) == 5}
    return ([k for k, r in legs.items() if r["chain"] in by_port]
            + [k for k, r in legs.items() if r["chain"] not in by_port and r["chain"] != "legs"]
            + [k for k, r in legs.items() if r["chain"] == "legs"])


def matches(rule: dict) -> dict[str, object]:
    """A rule's matches and settings, flattened: {"ip daddr": "10.77.0.2", "meta priority": "1:5", ...}."""
    out: dict[str, object] = {}
    for e in rule["expr"]:
        for what, body in e.items():
            if what in ("match", "mangle"):
                left = body["left"] if what == "match" else body["key"]
                inner = next(iter(left.values()))
                key = f"meta {inner['key']}" if "meta" in left else f"{inner['protocol']} {inner['field']}"
                out[("set " if what == "mangle" else "") + key] = body["right"] if what == "match" else body["value"]
    return out


def root(host: Host) -> dict:
    return next(q for q in host.tc_json("qdisc") if q.get("root"))




# --- parameters (no namespaces needed) --------------------------------------------------------


def test_rates_are_parsed_strictly() -> None:
    assert parse_rate("50M") == 50_000_000
    assert parse_rate("64") == 64
    assert parse_rate("1500k") == parse_rate("1500K") == 1_500_000
    assert parse_rate("1000G") == 10**12
    for bad in ("", "0", "63", "1001G", "1.5G", "50 M", "50m", "50Mbit", "-5", "+5", "050M", "5e6", "0x10", "1T"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_every_classid_has_its_own_filter_place() -> None:
    places = set()
    for classid in range(2, 65534):
        lg = Leg(device="eth0", classid=classid, netns=None)
        assert 1 <= lg.node <= 0xFFF and 100 <= lg.prio <= 116
        places.add((lg.prio, lg.node))
    assert len(places) == 65532
    assert [(Leg(device="x", classid=c, netns=None).prio, Leg(device="x", classid=c, netns=None).node)
            for c in (2, 4095, 4096, 65533)] == [(100, 2), (100, 4095), (101, 1), (116, 13)]


def test_meta_data_declares_parameters_and_actions() -> None:
    meta = parse_meta_data(Shaper().meta_data())
    required = {p.name for p in meta.parameters if p.required}
    assert required == {"device", "rate", "classid", "dst"}
    assert {p.name for p in meta.parameters} - required == {"src", "protocol", "dst_port", "src_port", "netns", "burst",
                                                            "capacity", "borrow", "dscp", "mark", "via", "forward"}
    assert {a.name for a in meta.actions} == {"start", "stop", "monitor", "reload", "meta-data"}
    # OCF 1.1's reloadable: where the leg lives and how it is steered are not (a change is a stop, then a start, so
    # the stop takes the old routing with it); the rest is
    assert {p.name for p in meta.parameters if not p.reloadable} == {"device", "classid", "netns", "via", "forward"}
    assert meta.reloadable({"rate", "dst", "mark"}) and not meta.reloadable({"rate", "device"})
    assert all(a.timeout for a in meta.actions)
    assert meta.action("monitor").interval == 10.0

    d = make_driver("python:tenure.drivers.tc:Shaper", DriverRoots(python_packages=("tenure.drivers.tc",)),
                    rsctmp=Path("/nonexistent"))
    assert asyncio.run(d.meta_data(FakeClock())).name == "Shaper"  # type: ignore[union-attr]
    assert {"start", "stop", "monitor", "reload"} <= d.actions(None) <= {"start", "stop", "monitor", "reload",
                                                                         "meta-data"}  # no helper leaks out


BAD = [
    ({"device": None}, "device"),
    ({"rate": None}, "rate"),
    ({"classid": None}, "classid"),
    ({"dst": None}, "dst"),
    ({"rate": "5.5M"}, "rate"),
    ({"rate": "0"}, "rate"),
    ({"rate": "2000G"}, "rate"),
    ({"classid": "1"}, "classid"),
    ({"classid": "65535"}, "classid"),
    ({"classid": "65534"}, "classid"),  # 1:fffe is the default class
    ({"classid": "0x5"}, "classid"),
    ({"classid": "05"}, "classid"),
    ({"dst": "10.77.0.2/24"}, "dst"),
    ({"dst": "fd77::2/64"}, "dst"),  # host bits set
    ({"dst": "10.77.0.2,10.77.0.3"}, "dst"),  # one of each family at most
    ({"src": "fd77::1"}, "src"),  # no family in common with dst
    ({"dst": "h2"}, "dst"),
    ({"src": "10.77.0"}, "src"),
    ({"protocol": "gre"}, "protocol"),
    ({"protocol": "tcp", "dst_port": "0"}, "dst_port"),
    ({"protocol": "udp", "src_port": "65536"}, "src_port"),
    ({"dst_port": "5201"}, "ports"),
    ({"protocol": "icmp", "dst_port": "5201"}, "ports"),
    ({"device": "a/b"}, "device"),
    ({"device": "sixteen-chars-xx"}, "device"),
    ({"netns": "../etc"}, "netns"),
    ({"burst": "0"}, "burst"),
    ({"rate": "64", "burst": "100000"}, "burst"),
    ({"dst-port": "5201"}, "unknown parameter"),
    ({"capacity": "fast"}, "capacity"),
    ({"capacity": "10M"}, "capacity"),  # less than the leg's rate
    ({"borrow": "maybe"}, "borrow"),
    ({"dscp": "64"}, "dscp"),
    ({"mark": "ef"}, "mark"),
    ({"mark": "-1"}, "mark"),
]


@pytest.mark.parametrize(("change", "word"), BAD, ids=[f"{sorted(c.items())}" for c, _ in BAD])
def test_bad_parameters_are_refused_and_nothing_is_created(lan: Lan, change: dict[str, str | None],
                                                           word: str) -> None:
    h1, h2, _ = lan.hosts
    params = leg(h1, h2)
    for key, value in change.items():
        if value is None:
            params.pop(key)
        else:
            params[key] = value
    shaper = Shaper()
    before = layout(h1)
    for action in (shaper.start, shaper.monitor, shaper.reload):
        rc, reason = action(params, ctx())
        assert rc == 6 and word in reason
    assert layout(h1) == before
    assert root(h1)["kind"] == "noqueue"


def test_stop_needs_only_where_the_leg_is(lan: Lan) -> None:
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    assert shaper.start(leg(h1, h2), ctx()) == 0
    assert shaper.stop({"device": h1.ifname, "classid": "5", "netns": h1.netns, "rate": "garbage"}, ctx()) == 0
    assert root(h1)["kind"] == "noqueue"
    rc, reason = shaper.stop({"device": h1.ifname, "classid": "70000", "netns": h1.netns}, ctx())
    assert rc == 6 and "classid" in reason


# --- the layout on the wire ---------------------------------------------------------------------


def test_start_builds_the_tree_the_class_and_the_rules(lan: Lan) -> None:
    h1, h2, _ = lan.hosts
    c = ctx()
    assert Shaper().start(leg(h1, h2, classid="10", src=f"{h1.address}/32", protocol="tcp", dst_port="5201"), c) == 0
    assert c.outputs == {"classid": "1:a"}  # hex, as tc prints it

    q = root(h1)
    assert (q["kind"], q["handle"], q["options"]["default"]) == ("htb", "1:", "0xfffe")
    classes = h1.tc_classes()
    assert set(classes) == {"1:1", "1:a", "1:fffe"}
    tree = {cid: (c["parent"], c["rate"], c["ceil"], c.get("prio")) for cid, c in classes.items() if cid != "1:a"}
    assert tree == {"1:1": ("root", 10**9, 10**9, None), "1:fffe": ("1:1", 950_000_000, 10**9, 1)}  # what is left
    cls = classes["1:a"]
    assert (cls["kind"], cls["parent"], cls["rate"], cls["ceil"], cls["prio"]) == ("htb", "1:1", 50_000_000,
                                                                                   50_000_000, 0)
    assert cls["burst"] == cls["cburst"] == 62_500  # 10 ms at 50 Mbit/s
    assert h1.tc_json("filter") == []  # classified by nftables, not by a tc filter
    assert list(rules(h1)) == [f"{h1.ifname} 1:a ip"] and not rules(h1, "remark")  # no mark: nothing re-marked
    assert matches(rules(h1)[f"{h1.ifname} 1:a ip"]) == {
        "meta oifname": h1.ifname, "ip saddr": h1.address, "ip daddr": h2.address, "tcp dport": 5201,
        "set meta priority": "1:a"}


def test_rates_up_to_a_terabit_go_through_64_bit_attributes(lan: Lan) -> None:
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    for rate, bps in (("1000G", 10**12), ("64", 64), ("5G", 5 * 10**9)):
        assert shaper.start(leg(h1, h2, rate=rate, capacity="1000G"), ctx()) == 0
        assert h1.tc_classes()["1:5"]["rate"] == bps and h1.tc_classes()["1:1"]["rate"] == 10**12
        assert shaper.monitor(leg(h1, h2, rate=rate, capacity="1000G"), ctx()) == 0


def test_second_start_changes_nothing_on_the_wire(lan: Lan) -> None:
    require_iperf3()
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    events = TcEvents(h1.netns)
    try:
        assert shaper.start(leg(h1, h2), ctx()) == 0
        assert events.drain() >= 3  # the watch works: root and classes were announced
        iperf3(h1, h2, seconds=1)
        before_layout, before_counts = layout(h1), h1.tc_classes()["1:5"]["sent_bytes"]
        before_rules = h1.nft_rules()
        assert before_counts > 0

        c = ctx()
        assert shaper.start(leg(h1, h2), c) == 0  # what an agent restart does
        assert shaper.reload(leg(h1, h2), c) == 0
        assert events.drain() == 0  # nothing was sent to the kernel
        assert c.output == "" and c.outputs == {"classid": "1:5"}
        assert layout(h1) == before_layout
        assert h1.tc_classes()["1:5"]["sent_bytes"] >= before_counts  # counters kept: the class is the same one
        assert h1.nft_rules() == before_rules  # the same rules (handles), their counters not reset
    finally:
        events.close()


# --- shaping, measured ------------------------------------------------------------------------------


def test_class_shapes_its_flow_and_nothing_else(lan: Lan) -> None:
    require_iperf3()
    h1, h2, h3 = lan.hosts
    shaper = Shaper()
    assert shaper.start(leg(h1, h2), ctx()) == 0

    shaped = iperf3(h1, h2, seconds=3)
    other_destination = iperf3(h1, h3, seconds=1)  # unclassified: the default class, up to the capacity
    print(f"shaped {shaped / 1e6:.1f} Mbit/s, unclassified {other_destination / 1e6:.0f} Mbit/s")
    assert 45e6 <= shaped <= 55e6
    assert other_destination > UNSHAPED
    assert h1.tc_classes()["1:fffe"]["sent_bytes"] > 0

    assert shaper.stop(leg(h1, h2), ctx()) == 0
    assert root(h1)["kind"] == "noqueue"  # the kernel's default is back
    after = iperf3(h1, h2, seconds=1)
    print(f"after stop {after / 1e6:.0f} Mbit/s")
    assert after > UNSHAPED


def test_ports_select_the_flow(lan: Lan) -> None:
    require_iperf3()
    h1, h2, _ = lan.hosts
    assert Shaper().start(leg(h1, h2, protocol="tcp", dst_port="5201", rate="20M"), ctx()) == 0
    # A leg to one port of one host is in that port's chain: traffic to the host's other ports never walks it.
    by_port = h1.run("nft", "list", "map", "inet", "tenure", "to4p").stdout
    by_host = h1.run("nft", "list", "map", "inet", "tenure", "to4").stdout
    assert f'"{h1.ifname}" . {h2.address} . tcp . 5201 : jump to-' in by_port and h2.address not in by_host, (
        by_port, by_host)
    shaped = iperf3(h1, h2, seconds=2, port=5201)
    other_port = iperf3(h1, h2, seconds=1, port=5202)
    print(f"port 5201 {shaped / 1e6:.1f} Mbit/s, port 5202 {other_port / 1e6:.0f} Mbit/s")
    assert 17e6 <= shaped <= 22e6
    assert other_port > UNSHAPED


def test_a_reserved_flow_keeps_its_rate_against_a_bulk_transfer(lan: Lan) -> None:
    """The guarantee: a 50 Mbit/s leg on a 200 Mbit/s interface while an unreserved flow from the same host
    wants everything. The leg keeps what it gets alone (iperf3; its class's layer-2 rate is printed), the bulk
    flow gets the rest, and their sum stays within the capacity."""
    require_iperf3()
    h1, h2, h3 = lan.hosts
    shaper = Shaper()
    assert shaper.start(leg(h1, h2, capacity="200M", protocol="tcp", dst_port="5201"), ctx()) == 0
    alone = iperf3(h1, h2, seconds=2, port=5201)
    sent0 = h1.tc_classes()["1:5"]["sent_bytes"]
    t0 = time.monotonic()
    reserved, bulk = side_by_side(lambda: iperf3(h1, h2, seconds=4, port=5201),
                             lambda: iperf3(h1, h3, seconds=4, port=5202))
    wire = (h1.tc_classes()["1:5"]["sent_bytes"] - sent0) * 8 / (time.monotonic() - t0)
    print(f"alone {alone / 1e6:.1f}, contended {reserved / 1e6:.1f} Mbit/s (class on the wire {wire / 1e6:.1f}), "
          f"bulk {bulk / 1e6:.1f} Mbit/s")
    # Goodput: about 48 of the 50 on the wire (HTB counts layer-2 bytes). Contention costs it under 5 %.
    assert reserved >= 0.95 * alone and reserved >= 45e6
    assert 120e6 <= bulk <= 200e6  # the rest: the default class holds 150 of the 200
    assert reserved + bulk <= 200e6


def test_borrow_lets_a_leg_use_idle_capacity_and_cap_does_not(lan: Lan) -> None:
    require_iperf3()
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    assert shaper.start(leg(h1, h2, capacity="200M", borrow="yes"), ctx()) == 0
    assert h1.tc_classes()["1:5"]["ceil"] == 200_000_000 and shaper.monitor(leg(h1, h2, capacity="200M",
                                                                                  borrow="yes"), ctx()) == 0
    borrowed = iperf3(h1, h2, seconds=2)
    assert shaper.reload(leg(h1, h2, capacity="200M", borrow="no"), ctx()) == 0
    capped = iperf3(h1, h2, seconds=2)
    print(f"borrow {borrowed / 1e6:.0f} Mbit/s, cap {capped / 1e6:.1f} Mbit/s")
    assert borrowed > 100e6  # well above its 50: the idle capacity
    assert capped <= 55e6


def test_the_layout_before_the_tree_is_made_again(lan: Lan) -> None:
    """An interface left by a shaper from before the guarantee (htb 1: default 0, classes under the root):
    monitors say not running, and the first start makes the tree."""
    h1, h2, _ = lan.hosts
    h1.run("tc", "qdisc", "add", "dev", h1.ifname, "root", "handle", "1:", "htb", "default", "0")
    h1.run("tc", "class", "add", "dev", h1.ifname, "parent", "1:", "classid", "1:5", "htb", "rate", "50mbit")
    shaper = Shaper()
    assert shaper.monitor(leg(h1, h2), ctx()) == 7
    c = ctx()
    assert shaper.start(leg(h1, h2), c) == 0
    assert "layout before" in c.output
    assert root(h1)["options"]["default"] == "0xfffe" and h1.tc_classes()["1:5"]["parent"] == "1:1"
    assert shaper.monitor(leg(h1, h2), ctx()) == 0


def test_a_u32_filter_from_before_nftables_is_replaced_by_the_rules(lan: Lan) -> None:
    """A leg on the tree classified by the u32 filter an agent before nftables made: monitor reports the rules
    missing (so the agent starts it again), and the start deletes the filter and adds the rules."""
    h1, h2, _ = lan.hosts
    h1.run("tc", "qdisc", "add", "dev", h1.ifname, "root", "handle", "1:", "htb", "default", "fffe")
    h1.run("tc", "class", "add", "dev", h1.ifname, "parent", "1:", "classid", "1:1", "htb", "rate", "1gbit")
    h1.run("tc", "class", "add", "dev", h1.ifname, "parent", "1:1", "classid", "1:fffe", "htb", "rate", "950mbit",
           "ceil", "1gbit", "prio", "1")
    h1.run("tc", "class", "add", "dev", h1.ifname, "parent", "1:1", "classid", "1:5", "htb", "rate", "50mbit",
           "ceil", "50mbit", "burst", "62500", "cburst", "62500", "prio", "0")
    h1.run("tc", "filter", "add", "dev", h1.ifname, "parent", "1:", "protocol", "ip", "prio", "100", "handle", "::5",
           "u32", "match", "ip", "dst", f"{h2.address}/32", "flowid", "1:5")
    shaper = Shaper()
    rc, reason = shaper.monitor(leg(h1, h2), ctx())
    assert rc == 1 and "missing" in reason
    c = ctx()
    assert shaper.start(leg(h1, h2), c) == 0
    assert "deleted filter pref 100" in c.output and "changed class" not in c.output
    assert nodes(h1) == [] and list(rules(h1)) == [f"{h1.ifname} 1:5 ip"]
    assert shaper.monitor(leg(h1, h2), ctx()) == 0


def test_the_layout_before_the_tree_is_left_alone_without_a_capacity(lan: Lan) -> None:
    """A leg made by an older server has no capacity: its start changes nothing (the server re-syncs its shapers
    with one when it starts), and stopping legs of the old layout still works, the root going with the last."""
    h1, h2, h3 = lan.hosts
    h1.run("tc", "qdisc", "add", "dev", h1.ifname, "root", "handle", "1:", "htb", "default", "0")
    for c in ("5", "6", "fffe"):  # an old agent's pool reached 65534 = 1:fffe
        h1.run("tc", "class", "add", "dev", h1.ifname, "parent", "1:", "classid", f"1:{c}", "htb", "rate", "5mbit")
    before = layout(h1)
    old = {k: v for k, v in leg(h1, h2).items() if k != "capacity"}
    rc, reason = Shaper().start(old, ctx())
    assert rc == 6 and "capacity" in reason and layout(h1) == before
    assert Shaper().stop({"device": h1.ifname, "classid": "65534", "netns": h1.netns}, ctx()) == 0
    assert Shaper().stop(old, ctx()) == 0
    assert set(h1.tc_classes()) == {"1:6"} and root(h1)["handle"] == "1:"  # another leg is still there
    assert Shaper().stop(leg(h1, h3, classid="6"), ctx()) == 0
    assert root(h1)["kind"] == "noqueue"

    assert Shaper().start(leg(h1, h2), ctx()) == 0  # on the tree, 1:fffe is the default class, not an old leg
    assert Shaper().stop({"device": h1.ifname, "classid": "65534", "netns": h1.netns}, ctx()) == 0
    assert set(h1.tc_classes()) == {"1:1", "1:5", "1:fffe"}


def test_the_default_class_follows_every_leg_and_legs_may_disagree_about_the_capacity(lan: Lan) -> None:
    h1, h2, h3 = lan.hosts
    shaper = Shaper()
    a, b = leg(h1, h2, capacity="100M", rate="30M"), leg(h1, h3, classid="6", rate="20M", capacity="100M")
    assert shaper.start(a, ctx()) == 0 and shaper.start(b, ctx()) == 0
    assert h1.tc_classes()["1:fffe"]["rate"] == 50_000_000
    assert shaper.reload({**a, "rate": "70M"}, ctx()) == 0  # grows: the default gives it up
    assert h1.tc_classes()["1:fffe"]["rate"] == 10_000_000
    assert shaper.reload({**a, "rate": "80M"}, ctx()) == 0  # the link is full: the default class at HTB's floor
    assert h1.tc_classes()["1:fffe"]["rate"] == 64
    no_capacity = {k: v for k, v in b.items() if k != "capacity"}
    assert shaper.start(no_capacity, ctx()) == 0 and shaper.monitor(no_capacity, ctx()) == 0  # the tree's
    # A topology change reaches the legs one by one: until it has, they disagree, and neither fails the other.
    assert shaper.reload({**a, "rate": "80M", "capacity": "200M", "borrow": "yes"}, ctx()) == 0
    assert h1.tc_classes()["1:1"]["rate"] == 200_000_000 and h1.tc_classes()["1:fffe"]["rate"] == 100_000_000
    assert shaper.monitor({**a, "rate": "80M", "capacity": "200M", "borrow": "yes"}, ctx()) == 0
    assert shaper.monitor(b, ctx()) == 0


def test_legs_over_the_capacity_on_the_wire_are_refused_not_fought(lan: Lan) -> None:
    """Admission keeps the legs within the capacity; if the wire says otherwise (a class changed by hand), a
    start reports what it found and changes nothing."""
    h1, h2, h3 = lan.hosts
    shaper = Shaper()
    assert shaper.start(leg(h1, h2, capacity="100M"), ctx()) == 0
    h1.run("tc", "class", "change", "dev", h1.ifname, "parent", "1:1", "classid", "1:5", "htb", "rate", "90mbit",
           "ceil", "90mbit")
    before = layout(h1)
    rc, reason = shaper.start(leg(h1, h3, classid="6", capacity="100M"), ctx())
    assert rc == 1 and "over its capacity" in reason
    assert layout(h1) == before


def test_a_leg_marks_its_flow_and_others_marking_themselves_are_made_best_effort(lan: Lan) -> None:
    """DSCP as the receiver sees it (nftables counters in h2 and h3, an independent judge): every packet of the
    reserved flow arrives marked EF; a flow that marks itself EF without a reservation arrives as CS0."""
    require_iperf3()
    h1, h2, h3 = lan.hosts
    for h in (h2, h3):
        count_dscp(h, h1)
    shaper = Shaper()
    assert shaper.start(leg(h1, h2, protocol="tcp", dst_port="5201", mark="46"), ctx()) == 0
    assert list(rules(h1)) == [f"{h1.ifname} 1:5 ip"] and list(rules(h1, "remark")) == ["ip 46", "ip6 46"]
    iperf3(h1, h2, seconds=1, port=5201)
    iperf3(h1, h3, seconds=1, port=5202, tos=46 << 2)  # pre-marked EF, no reservation
    at2, at3 = dscp_counts(h2), dscp_counts(h3)
    print(f"h2 {at2}, h3 {at3}")
    assert at2["ef 5201"] > 100 and at2["cs0 5201"] == at2["other 5201"] == 0
    assert at3["cs0 5202"] > 100 and at3["ef 5202"] == at3["other 5202"] == 0
    remark = rules(h1, "remark")["ip 46"]
    assert next(e["counter"]["packets"] for e in remark["expr"] if "counter" in e) > 100
    c = ctx()  # the observed state: the monitor's outputs, against tc's and nft's own counters
    assert shaper.monitor(leg(h1, h2, protocol="tcp", dst_port="5201", mark="46"), c) == 0
    seen = {k: int(v) if v.isdigit() else v for k, v in c.outputs.items()}
    tc_sent = h1.tc_classes()["1:5"]["sent_bytes"]
    assert (seen["classid"], seen["rate"], seen["ceil"]) == ("1:5", 50_000_000, 50_000_000)
    assert 0 < seen["sent_bytes"] <= tc_sent and seen["sent_packets"] > 0 and seen["dropped"] >= 0
    assert seen["classified_packets"] > 0 and seen["classified_bytes"] >= seen["sent_bytes"] * 0.9
    assert seen["remarked_packets"] > 100 and {"overlimits", "backlog"} <= set(seen)


def test_re_mark_rules_are_shared_by_the_legs_marking_alike_and_go_with_the_last(lan: Lan) -> None:
    h1, h2, h3 = lan.hosts
    shaper = Shaper()
    a, b = leg(h1, h2, classid="5", mark="46"), leg(h1, h3, classid="6", mark="46")
    c = leg(h1, h3, classid="7", mark="34", protocol="udp")
    for params in (a, b, c):
        assert shaper.start(params, ctx()) == 0
    assert list(rules(h1, "remark")) == ["ip 46", "ip6 46", "ip 34", "ip6 34"]  # once per mark, after the legs
    base = [r["comment"] for r in h1.nft_rules() if r["chain"] == "legs"]  # the legs are in their hosts' chains
    assert base == ["tenure dispatch ip port", "tenure dispatch ip6 port", "tenure dispatch ip", "tenure dispatch ip6",
                    "tenure remark ip 46", "tenure remark ip6 46", "tenure remark ip 34", "tenure remark ip6 34"]
    assert shaper.stop(c, ctx()) == 0
    assert list(rules(h1, "remark")) == ["ip 46", "ip6 46"]
    assert shaper.stop(a, ctx()) == 0
    assert list(rules(h1, "remark")) == ["ip 46", "ip6 46"] and shaper.monitor(b, ctx()) == 0  # b still marks EF
    h1.run("nft", "delete", "rule", "inet", "tenure", "legs", "handle", str(rules(h1, "remark")["ip6 46"]["handle"]))
    rc, reason = shaper.monitor(b, ctx())
    assert rc == 1 and "tenure remark ip6 46" in reason
    assert shaper.start(b, ctx()) == 0 and shaper.monitor(b, ctx()) == 0
    assert shaper.stop(b, ctx()) == 0
    assert h1.nft_rules() == [] and h1.run("nft", "list", "tables").stdout == ""


def test_overlapping_legs_resolve_the_same_way_whatever_their_history(lan: Lan) -> None:
    """Legs to one port of one host address come first, then the host's other legs (their chains are looked up
    before the base chain's legs to networks), and within a chain the more specific (it wins the packets both
    match), however the legs were started or changed; then by device and class."""
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    broad, narrow = leg(h1, h2, classid="5", rate="10M"), leg(h1, h2, classid="6", protocol="tcp", dst_port="5201")
    other = leg(h1, h2, classid="4", rate="10M", src=h1.address)
    subnet = {**leg(h1, h2, classid="3", rate="10M"), "dst": "10.77.0.0/24"}
    subnet_port = {**leg(h1, h2, classid="7", rate="10M", protocol="tcp", dst_port="5201"), "dst": "10.77.0.0/24"}
    for params in (subnet, broad, subnet_port, narrow, other):
        assert shaper.start(params, ctx()) == 0
    # h2's port 5201's chain; h2's chain: 2 fields matched, 1. Then the networks': 3 fields; 1 (whatever their
    # class numbers).
    order = [f"{h1.ifname} 1:6 ip", f"{h1.ifname} 1:4 ip", f"{h1.ifname} 1:5 ip", f"{h1.ifname} 1:7 ip",
             f"{h1.ifname} 1:3 ip"]
    assert evaluated(h1) == order
    assert shaper.reload({**broad, "mark": "10"}, ctx()) == 0  # its rule written again: the same place
    assert shaper.reload({**narrow, "dst_port": "5202"}, ctx()) == 0
    assert evaluated(h1) == order
    assert [shaper.monitor(p, ctx()) for p in (other, {**broad, "mark": "10"}, {**narrow, "dst_port": "5202"})] == [
        0, 0, 0]


def test_dispatch_rules_deleted_or_moved_by_hand_are_put_back_in_their_order(lan: Lan) -> None:
    """A leg to a port of h2 and one to h2: with a host dispatch rule deleted (or moved to the head), the host leg's
    monitor says so and its start puts all four back at the head, by port first, so the port leg keeps its
    packets."""
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    port, host = leg(h1, h2, classid="5", protocol="tcp", dst_port="5201"), leg(h1, h2, classid="6", rate="10M")
    for params in (port, host):
        assert shaper.start(params, ctx()) == 0
    order = ["tenure dispatch ip port", "tenure dispatch ip6 port", "tenure dispatch ip", "tenure dispatch ip6"]
    base = [r for r in h1.nft_rules() if r["chain"] == "legs"]
    assert [r["comment"] for r in base][:4] == order
    h1.run("nft", "delete", "rule", "inet", "tenure", "legs", "handle", str(base[2]["handle"]))
    rc, why = shaper.monitor(host, ctx())
    assert rc == 1 and "tenure dispatch ip' is missing" in why, why
    assert shaper.start(host, ctx()) == 0
    assert [r["comment"] for r in h1.nft_rules() if r["chain"] == "legs"][:4] == order
    ip6 = next(r for r in h1.nft_rules() if r["comment"] == "tenure dispatch ip6")  # moved to the head by hand
    h1.run("nft", "delete", "rule", "inet", "tenure", "legs", "handle", str(ip6["handle"]))
    h1.run("nft", "insert", "rule", "inet", "tenure", "legs", "oifname", ".", "ip6", "daddr", "vmap", "@to6",
           "comment", '"tenure dispatch ip6"')
    rc, why = shaper.monitor(port, ctx())
    assert rc == 1 and "out of its place" in why, why
    assert shaper.start(port, ctx()) == 0 and shaper.monitor(host, ctx()) == 0
    assert [r["comment"] for r in h1.nft_rules() if r["chain"] == "legs"][:4] == order


def test_a_source_of_one_family_limits_the_leg_to_that_family(lan: Lan) -> None:
    h1, h2, _ = lan.hosts
    params = {**leg(h1, h2, src=h1.address), "dst": f"{h2.address},fd77::2"}
    assert Shaper().start(params, ctx()) == 0
    assert list(rules(h1)) == [f"{h1.ifname} 1:5 ip"]  # no IPv6 rule claiming every sender's packets
    assert Shaper().monitor(params, ctx()) == 0


def test_without_nft_a_start_says_so_and_a_stop_has_nothing_to_remove(
        lan: Lan, monkeypatch: pytest.MonkeyPatch) -> None:
    h1, h2, _ = lan.hosts
    with monkeypatch.context() as m:  # (the test's own tools need PATH: only the shaper's calls go without)
        m.setattr(nft, "SEARCH_PATH", "/nonexistent")
        m.setattr(nft, "_BINARIES", {})
        m.setenv("PATH", "/nonexistent")
        rc, reason = Shaper().start(leg(h1, h2), ctx())
        assert rc == 1 and "nft is not installed" in reason and "nftables" in reason
        assert Shaper().stop(leg(h1, h2), ctx()) == 0
    assert root(h1)["kind"] == "noqueue"


def test_a_dscp_match_takes_only_the_packets_that_carry_it(lan: Lan) -> None:
    require_iperf3()
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    assert shaper.start(leg(h1, h2, dscp="10", rate="20M"), ctx()) == 0  # AF11
    assert matches(rules(h1)[f"{h1.ifname} 1:5 ip"])["ip dscp"] == "af11"
    marked = iperf3(h1, h2, seconds=2, tos=10 << 2)
    unmarked = iperf3(h1, h2, seconds=1)
    print(f"AF11 {marked / 1e6:.1f} Mbit/s, unmarked {unmarked / 1e6:.0f} Mbit/s")
    assert 17e6 <= marked <= 22e6
    assert unmarked > UNSHAPED


def test_the_guarantee_holds_over_ipv6_on_a_dual_stack_host() -> None:
    """The guarantee test again, over IPv6: a leg to both of h2's addresses keeps its rate against a bulk IPv6
    transfer from the same host."""
    require_netns()
    require_iperf3()
    with Lan(3, ipv6=True) as lan:
        h1, h2, h3 = lan.hosts
        assert h2.address6 is not None and h3.address6 is not None
        shaper = Shaper()
        params = {**leg(h1, h2, src=f"{h1.address},{h1.address6}", capacity="200M", protocol="tcp",
                        dst_port="5201", mark="46"), "dst": f"{h2.address},{h2.address6}"}
        assert shaper.start(params, ctx()) == 0 and shaper.monitor(params, ctx()) == 0
        assert sorted(rules(h1)) == [f"{h1.ifname} 1:5 ip", f"{h1.ifname} 1:5 ip6"]
        assert matches(rules(h1)[f"{h1.ifname} 1:5 ip6"])["ip6 daddr"] == h2.address6
        alone = iperf3(h1, h2, seconds=2, port=5201, address=h2.address6)
        reserved, bulk = side_by_side(lambda: iperf3(h1, h2, seconds=4, port=5201, address=h2.address6),
                                      lambda: iperf3(h1, h3, seconds=4, port=5202, address=h3.address6))
        print(f"IPv6: alone {alone / 1e6:.1f}, contended {reserved / 1e6:.1f}, bulk {bulk / 1e6:.1f} Mbit/s")
        assert reserved >= 0.95 * alone and reserved >= 45e6
        assert 120e6 <= bulk <= 200e6
        assert shaper.stop(params, ctx()) == 0
        assert h1.nft_rules() == [] and root(h1)["kind"] == "noqueue"


# --- monitor, reload, stop ----------------------------------------------------------------------


def test_a_steered_flow_goes_through_the_middlebox_at_its_rate_and_nothing_else_does(lan: Lan) -> None:
    """Steering h1 -> h2 (the middlebox) -> h3: h1's leg (via h2) routes the flow (TCP to port 5201) to h2, whose
    leg (forward) sends it on to h3; both shape it. Counted in h2's forward hook (nftables, an independent judge):
    the flow passes h2 and arrives at h3 at the leg's rate; a flow to another port goes straight to h3, unshaped.
    A restart's starts change nothing; the stops take every rule, route and class away, and nothing else."""
    require_iperf3()
    h1, h2, h3 = lan.hosts
    h2.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    forwarded(h2, h1, h3)
    base = {"protocol": "tcp", "dst_port": "5201", "src": h1.address, "rate": "20M"}
    first, second = leg(h1, h3, via=h2.address, **base), leg(h2, h3, forward="yes", classid="9", **base)
    before = {h: routing(h) for h in (h1, h2)}
    shaper = Shaper()
    c1, c2 = ctx(), ctx()
    assert shaper.start(first, c1) == 0
    assert shaper.start(second, c2) == 0
    mark = 0x54450005
    assert f"fwmark {mark:#x} lookup {mark}" in h1.run("ip", "rule").stdout
    assert h1.run("ip", "route", "show", "table", str(mark)).stdout.split()[:5] == [
        h3.address, "via", h2.address, "dev", h1.ifname]
    assert sorted(rules(h1, "steer")) == [f"{h1.ifname} 1:5 ip steer-in", f"{h1.ifname} 1:5 ip steer-out"]
    assert h2.run("ip", "rule").stdout == before[h2][0]  # the last segment: no routing of its own

    steered = iperf3(h1, h3, seconds=2, port=5201)
    other = iperf3(h1, h3, seconds=1, port=5202)
    counts = dscp_counts(h2)
    print(f"steered {steered / 1e6:.1f} Mbit/s, other port {other / 1e6:.0f} Mbit/s, through h2: {counts}")
    assert 17e6 <= steered <= 22e6
    through = {r["comment"]: next(e["counter"]["bytes"] for e in r["expr"] if "counter" in e)
               for r in h2.nft_rules("count")}
    assert through["fwd 5201"] >= 0.9 * steered * 2 / 8 and counts["fwd 5202"] == through["fwd 5202"] == 0
    assert other > UNSHAPED
    assert h2.tc_classes()["1:9"]["sent_bytes"] > 0 and h1.tc_classes()["1:5"]["sent_bytes"] > 0
    m = ctx()
    assert shaper.monitor(first, m) == 0 and int(m.outputs["steered_packets"]) > 100
    assert int(m.outputs["steered_bytes"]) >= through["fwd 5201"]
    assert shaper.monitor(second, ctx()) == 0

    wire = {h: (layout(h), [(r["handle"], r["comment"]) for r in h.nft_rules()], routing(h)) for h in (h1, h2)}
    assert shaper.start(first, ctx()) == 0 and shaper.start(second, ctx()) == 0  # as after an agent restart
    assert {h: (layout(h), [(r["handle"], r["comment"]) for r in h.nft_rules()], routing(h)) for h in (h1, h2)} == wire

    h1.run("ip", "rule", "del", "fwmark", hex(mark))  # drift: reported, and a start repairs it
    rc, why = shaper.monitor(first, ctx())
    assert rc == 1 and "ip rule" in why, why
    assert shaper.start(first, ctx()) == 0 and shaper.monitor(first, ctx()) == 0
    h1.run("ip", "rule", "add", "priority", "100", "lookup", str(mark))  # everything into the leg's table
    h1.run("ip", "route", "add", "default", "via", h2.address, "table", str(mark))
    h1.run("ip", "route", "add", h3.address, "via", h2.address, "metric", "5", "table", str(mark))
    rc, why = shaper.monitor(first, ctx())
    assert rc == 1 and "other ip rule" in why, why
    assert shaper.start(first, ctx()) == 0 and shaper.monitor(first, ctx()) == 0
    assert routing(h1) == wire[h1][2]  # converged: the strays gone, the leg's own kept

    assert shaper.stop(first, ctx()) == 0 and shaper.stop(second, ctx()) == 0
    for h in (h1, h2):
        assert routing(h) == before[h], "".join(difflib.unified_diff(
            "".join(before[h]).splitlines(True), "".join(routing(h)).splitlines(True)))
    assert h1.nft_rules() == [] and h2.nft_rules() == []
    assert root(h1)["kind"] == root(h2)["kind"] == "noqueue"
    assert shaper.stop(first, ctx()) == 0  # stopped is stopped


def test_a_steered_flow_goes_through_the_middlebox_over_ipv6_too() -> None:
    """Dual stack: the leg steers both families (a next hop of each); the IPv6 flow passes h2 too, and a second
    start changes nothing (the kernel's IPv6 metric on the route is the one it gives)."""
    require_netns()
    require_iperf3()
    with Lan(3, ipv6=True) as lan:
        h1, h2, h3 = lan.hosts
        h2.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        h2.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        h2.nft("table inet count {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
               f"    ip6 saddr {h1.address6} ip6 daddr {h3.address6} tcp dport 5201 counter\n  }}\n}}\n")
        both = {"protocol": "tcp", "dst_port": "5201", "rate": "20M", "src": f"{h1.address},{h1.address6}"}
        first = {**leg(h1, h3, via=f"{h2.address},{h2.address6}", **both), "dst": f"{h3.address},{h3.address6}"}
        second = {**leg(h2, h3, forward="yes", classid="9", **both), "dst": f"{h3.address},{h3.address6}"}
        shaper = Shaper()
        assert shaper.start(first, ctx()) == 0 and shaper.start(second, ctx()) == 0
        wire = routing(h1)
        assert shaper.start(first, ctx()) == 0 and routing(h1) == wire
        assert shaper.monitor(first, ctx()) == 0 and shaper.monitor(second, ctx()) == 0
        steered = iperf3(h1, h3, seconds=2, port=5201, address=h3.address6)  # 2 s: a late end of 1 s is 10 %
        [rule] = h2.nft_rules("count")
        through = next(e["counter"]["bytes"] for e in rule["expr"] if "counter" in e)
        print(f"IPv6 steered {steered / 1e6:.1f} Mbit/s, {through} bytes through h2")
        assert 17e6 <= steered <= 22e6 and through >= 0.9 * steered * 2 / 8
        assert shaper.stop(first, ctx()) == 0 and shaper.stop(second, ctx()) == 0
        assert f"{0x54450005:#x}" not in h1.run("ip", "-6", "rule").stdout


def test_a_middlebox_that_does_not_forward_says_so(lan: Lan) -> None:
    h1, h2, h3 = lan.hosts
    params = leg(h2, h3, forward="yes", src=h1.address)
    rc, why = Shaper().start(params, ctx())
    assert rc == 1 and "forwarding is off" in why and "net.ipv4.conf" in why, why
    assert h2.tc_classes() == {} and h2.nft_rules() == []  # refused before anything changed
    assert Shaper().monitor(params, ctx()) == 7


def test_a_steered_leg_needs_a_source_and_a_next_hop_of_each_family() -> None:
    base = {"device": "eth0", "rate": "1M", "classid": "5", "dst": "10.0.0.3"}
    for bad, why in (({"via": "10.0.0.2"}, "needs src"), ({"forward": "yes"}, "needs src"),
                     ({"via": "10.0.0.0/24", "src": "10.0.0.1"}, "not networks"),
                     ({"via": "fd00::2", "src": "10.0.0.1"}, "no next hop"),
                     ({"forward": "maybe", "src": "10.0.0.1"}, "yes or no")):
        with pytest.raises(ValueError, match=why):
            parse_params({**base, **bad})
    assert parse_params({**base, "via": "10.0.0.2", "src": "10.0.0.1"}).steer_mark == 0x54450005


def mirror_ends(source: Host, collector: Host, **kw: str) -> tuple[dict[str, str], dict[str, str]]:
    """The two ends' parameters of a mirror of ``source``'s device to ``collector`` (VNI 0x5a, slot 3)."""
    common = {"tunnel": "tm00005a", "vni": "90"}
    src = {"role": "source", "device": source.ifname, "local": source.address, "remote": collector.address,
           "rate": "100M", "slot": "3", "netns": source.netns, "mark": "8", **common, **kw}
    dst = {"role": "collector", "local": collector.address, "remote": source.address, "netns": collector.netns,
           **common}
    return src, dst


def test_a_mirror_copies_every_frame_to_the_collector_and_never_more_than_its_rate(lan: Lan) -> None:
    """A mirror of h2's incoming frames to h3 over VXLAN: h3 receives a copy of every UDP datagram h2 receives from
    h1 (counted by nftables at both ends: within 1 %), the original flow keeps its rate; held to 10 Mbit/s, the
    copies of a 50 Mbit/s flow take no more than that (the bucket drops the rest) while the flow is untouched. A
    second start changes nothing; stop takes the tunnels, filters and clsact away, and nothing else."""
    require_iperf3()
    h1, h2, h3 = lan.hosts
    source, collector = mirror_ends(h2, h3, direction="in")
    mirror = Mirror()
    assert mirror.start(collector, ctx()) == 0 and mirror.start(source, ctx()) == 0
    count_udp(h2)
    count_udp(h3, device="tm00005a")
    rate = iperf3(h1, h2, seconds=2, udp=True, bitrate="20M", length=1000)
    (sent, _), (copied, _) = udp_count(h2), udp_count(h3, device="tm00005a")
    print(f"flow {rate / 1e6:.1f} Mbit/s: {sent} datagrams at h2, {copied} copies at h3")
    assert 19e6 <= rate <= 21e6 and sent > 4000
    assert abs(copied - sent) <= 0.01 * sent
    m = ctx()
    assert mirror.monitor(source, m) == 0 and int(m.outputs["mirrored_packets"]) >= sent
    c = ctx()
    assert mirror.monitor(collector, c) == 0 and int(c.outputs["received_packets"]) >= copied
    link = json.loads(h2.run("ip", "-j", "-d", "link", "show", "dev", "tm00005a").stdout)[0]
    assert link["linkinfo"]["info_data"]["tos"] == "0x20"  # CS1: the copies give way to everything else

    wire = (layout(h2), h2.tc_json("-s", "qdisc"), h2.run("ip", "-d", "link", "show", "dev", "tm00005a").stdout)
    assert mirror.start(source, ctx()) == 0  # as after an agent restart: nothing changes
    assert (layout(h2), h2.tc_json("-s", "qdisc"))[0] == wire[0]

    slow, _ = mirror_ends(h2, h3, direction="in", rate="10M")
    assert mirror.reload(slow, ctx()) == 0
    # The original is untouched (best of three), the copies over the rate dropped (in every try).
    def one_try() -> float:
        before = udp_count(h3, device="tm00005a")[1]
        rate = iperf3(h1, h2, seconds=2, udp=True, bitrate="50M", length=1000)
        through = udp_count(h3, device="tm00005a")[1] - before
        m = ctx()
        assert mirror.monitor(slow, m) == 0
        print(f"flow {rate / 1e6:.1f} Mbit/s, copies {through * 8 / 2 / 1e6:.1f} Mbit/s, "
              f"dropped {m.outputs['dropped']}")
        assert through * 8 <= 10e6 * 2 * 1.1 and int(m.outputs["dropped"]) > 0
        return rate

    assert best_rate(one_try, 49e6) >= 49e6

    assert mirror.stop(slow, ctx()) == 0 and mirror.stop(collector, ctx()) == 0
    for h in (h2, h3):
        assert "tm00005a" not in h.run("ip", "link").stdout
    assert not [q for q in h2.tc_json("qdisc") if q["kind"] == "clsact"]
    assert mirror.stop(slow, ctx()) == 0 and mirror.monitor(slow, ctx()) == 7  # stopped is stopped


def test_a_mirror_out_skips_its_own_tunnel_and_two_mirrors_share_the_device(lan: Lan) -> None:
    """Egress mirroring: the copies leaving by the mirrored device are not copied again (the exclusion filter), and
    a second mirror on the device keeps its filters when the first stops (the clsact goes with the last)."""
    require_iperf3()
    h1, h2, h3 = lan.hosts
    first, collector = mirror_ends(h1, h3, direction="out")
    second = {**first, "tunnel": "tm00005b", "vni": "91", "slot": "4", "direction": "both"}
    mirror = Mirror()
    for params in (collector, first, second):
        assert mirror.start(params, ctx()) == 0
    count_udp(h3, device="tm00005a")
    iperf3(h1, h2, seconds=1, udp=True, bitrate="10M", length=1000)
    m = ctx()
    assert mirror.monitor(first, m) == 0
    copied = udp_count(h3, device="tm00005a")[0]
    assert copied > 1000 and int(m.outputs["mirrored_packets"]) < 1.2 * copied + 200, m.outputs  # no copies of copies
    assert mirror.stop(first, ctx()) == 0
    assert mirror.monitor(second, ctx()) == 0
    assert [q for q in h1.tc_json("qdisc") if q["kind"] == "clsact"]
    assert mirror.stop(second, ctx()) == 0 and mirror.stop(collector, ctx()) == 0
    assert not [q for q in h1.tc_json("qdisc") if q["kind"] == "clsact"]


def test_a_mirror_never_takes_or_removes_what_is_not_its_own(lan: Lan) -> None:
    """A foreign filter at the mirror's preference makes its start refuse (nothing changed); a foreign ingress filter
    keeps the clsact qdisc (and itself) through the mirror's stop; a device by the tunnel's name that is another
    mirror's is refused by start and left by stop; stop works from the identity alone, whatever else is wrong."""
    h1, h2, h3 = lan.hosts
    source, collector = mirror_ends(h2, h3, direction="out")
    mirror = Mirror()
    h2.run("tc", "qdisc", "add", "dev", h2.ifname, "clsact")
    h2.run("tc", "filter", "add", "dev", h2.ifname, "egress", "pref", "3", "protocol", "ip", "u32", "match", "ip",
           "dst", "10.9.9.9/32", "action", "mirred", "egress", "mirror", "dev", "lo")
    rc, why = mirror.start(source, ctx())
    assert rc == 1 and "not this mirror's" in why, why
    assert "tm00005a" in h2.run("ip", "link").stdout  # (the tunnel came first: it goes with the stop below)
    h2.run("tc", "filter", "del", "dev", h2.ifname, "egress", "pref", "3")
    h2.run("tc", "filter", "add", "dev", h2.ifname, "ingress", "pref", "3", "protocol", "ip", "u32", "match", "ip",
           "dst", "10.9.9.9/32", "action", "mirred", "egress", "mirror", "dev", "lo")
    assert mirror.start(source, ctx()) == 0 and mirror.monitor(source, ctx()) == 0
    assert mirror.stop({**source, "rate": "1", "mark": "64", "direction": "x"}, ctx()) == 0  # identity is enough
    assert "tm00005a" not in h2.run("ip", "link").stdout
    [foreign] = [f for f in json.loads(h2.run("tc", "-j", "filter", "show", "dev", h2.ifname, "ingress").stdout)
                 if "options" in f and "actions" in f["options"]]
    assert foreign["pref"] == 3  # someone else's: kept, and the clsact it is on
    other = {**source, "remote": h1.address, "local": h3.address, "netns": h3.netns, "device": h3.ifname}
    assert mirror.start(collector, ctx()) == 0  # h3's tunnel tm00005a: the collector end
    rc, why = mirror.start(other, ctx())  # another mirror's source wanting the same name on h3
    assert rc == 1 and "another mirror's tunnel" in why, why
    assert mirror.stop(other, ctx()) == 0 and mirror.monitor(collector, ctx()) == 0  # left to its owner
    assert mirror.stop(collector, ctx()) == 0
    rc, why = mirror.start({**source, "rate": "999"}, ctx())
    assert rc == 6 and "below 1000" in why, why


def test_mirror_meta_data_declares_parameters_and_actions() -> None:
    meta = parse_meta_data(Mirror().meta_data())
    assert {p.name for p in meta.parameters if p.required} == {"role", "tunnel", "vni", "local", "remote"}
    assert {p.name for p in meta.parameters if p.reloadable} == {"rate"}  # anything else is a stop, then a start
    assert {a.name for a in meta.actions} == {"start", "stop", "monitor", "reload", "meta-data"}


def test_a_mirror_refuses_what_it_cannot_take() -> None:
    src = {"role": "source", "tunnel": "tm00005a", "vni": "90", "local": "10.0.0.1", "remote": "10.0.0.3",
           "device": "eth0", "rate": "10M", "slot": "3"}
    assert parse_end(src).hooks == ("ingress", "egress")
    for bad, why in (({"role": "sink"}, "role"), ({"tunnel": "eth0"}, "tm and six hex"), ({"vni": "91"}, "vni"),
                     ({"remote": "fd00::3"}, "different families"), ({"direction": "up"}, "direction"),
                     ({"slot": "4001"}, "slot"), ({"rate": None}, "rate"), ({"device": None}, "device and slot"),
                     ({"colour": "red"}, "unknown parameter")):
        params = {k: v for k, v in {**src, **bad}.items() if v is not None}
        with pytest.raises(ValueError, match=why):
            parse_end(params)
    assert parse_end({"role": "source", "tunnel": "tm00005a", "device": "eth0", "slot": "3"},
                     identity_only=True).slot == 3  # stop needs only where it is


def test_monitor_reports_running_absent_and_drift_and_reload_repairs_in_place(lan: Lan) -> None:
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    params = leg(h1, h2)
    assert shaper.monitor(params, ctx()) == 7
    assert shaper.start(params, ctx()) == 0
    assert shaper.monitor(params, ctx()) == 0

    h1.run("tc", "class", "change", "dev", h1.ifname, "parent", "1:1", "classid", "1:5", "htb", "rate", "40mbit",
           "ceil", "40mbit", "burst", "62500", "cburst", "62500")  # behind the shaper's back
    rc, reason = shaper.monitor(params, ctx())
    assert rc == 1 and "rate 40Mbit/s" in reason and "expected rate 50Mbit/s" in reason
    rules_before = h1.nft_rules()
    c = ctx()
    assert shaper.reload(params, c) == 0
    assert "changed class 1:5" in c.output and "nftables" not in c.output and "1:fffe" not in c.output
    assert h1.tc_classes()["1:5"]["rate"] == 50_000_000
    assert h1.nft_rules() == rules_before  # the rules were not touched
    assert shaper.monitor(params, ctx()) == 0

    gone = rules(h1)[f"{h1.ifname} 1:5 ip"]
    h1.run("nft", "delete", "rule", "inet", "tenure", gone["chain"], "handle", str(gone["handle"]))  # behind its back
    rc, reason = shaper.monitor(params, ctx())
    assert rc == 1 and "missing" in reason and "1:5 ip leg" in reason
    assert shaper.start(params, ctx()) == 0
    assert shaper.monitor(params, ctx()) == 0
    h1.run("nft", "flush", "ruleset")  # a firewall reload: every table goes
    rc, reason = shaper.monitor(params, ctx())
    assert rc == 1 and "chain inet tenure legs" in reason and "missing" in reason
    assert shaper.start(params, ctx()) == 0 and shaper.monitor(params, ctx()) == 0

    assert shaper.stop(params, ctx()) == 0
    assert shaper.monitor(params, ctx()) == 7
    assert shaper.stop(params, ctx()) == 0  # stopping a stopped leg


def test_reload_changes_rate_and_match_in_place(lan: Lan) -> None:
    require_iperf3()
    h1, h2, h3 = lan.hosts
    shaper = Shaper()
    assert shaper.start(leg(h1, h2), ctx()) == 0
    iperf3(h1, h2, seconds=1)
    sent = h1.tc_classes()["1:5"]["sent_bytes"]

    assert shaper.reload(leg(h1, h2, rate="20M"), ctx()) == 0
    cls = h1.tc_classes()["1:5"]
    assert cls["rate"] == 20_000_000 and cls["sent_bytes"] >= sent  # the same class, changed
    assert shaper.monitor(leg(h1, h2), ctx())[0] == 1  # the old rate is not what runs any more

    assert shaper.reload(leg(h1, h3, rate="20M"), ctx()) == 0  # a new destination: the leg's rules replaced
    [rule] = rules(h1).values()
    assert matches(rule)["ip daddr"] == h3.address and matches(rule)["set meta priority"] == "1:5"
    assert shaper.monitor(leg(h1, h3, rate="20M"), ctx()) == 0
    rc, reason = shaper.monitor(leg(h1, h2, rate="20M"), ctx())
    assert rc == 1 and "other parameters" in reason
    assert iperf3(h1, h2, seconds=1) > UNSHAPED


def test_two_classids_on_one_device_from_threads(lan: Lan) -> None:
    h1, h2, h3 = lan.hosts
    shaper = Shaper()
    legs = [leg(h1, h2, classid="5", rate="30M"), leg(h1, h3, classid="4100", rate="60M")]  # prefs 100 and 101
    barrier = threading.Barrier(8)
    results: list[object] = []

    def run(action: str, params: dict[str, str]) -> None:
        barrier.wait()
        results.append(getattr(shaper, action)(params, ctx()))

    def all_at_once(action: str) -> None:
        threads = [threading.Thread(target=run, args=(action, legs[i % 2])) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    all_at_once("start")
    assert results == [0] * 8
    classes = h1.tc_classes()
    assert (classes["1:5"]["rate"], classes["1:1004"]["rate"]) == (30_000_000, 60_000_000)
    assert sorted(rules(h1)) == [f"{h1.ifname} 1:1004 ip", f"{h1.ifname} 1:5 ip"]
    assert [shaper.monitor(p, ctx()) for p in legs] == [0, 0]

    results.clear()
    all_at_once("stop")
    assert results == [0] * 8
    assert root(h1)["kind"] == "noqueue" and not h1.tc_classes()
    assert h1.run("nft", "list", "tables").stdout == ""  # the table went with the last leg


def test_stop_keeps_the_root_while_another_leg_uses_it(lan: Lan) -> None:
    h1, h2, h3 = lan.hosts
    shaper = Shaper()
    assert shaper.start(leg(h1, h2, classid="5"), ctx()) == 0
    assert shaper.start(leg(h1, h3, classid="6"), ctx()) == 0
    assert shaper.stop(leg(h1, h2, classid="5"), ctx()) == 0
    assert root(h1)["handle"] == "1:" and set(h1.tc_classes()) == {"1:1", "1:6", "1:fffe"}
    assert h1.tc_classes()["1:fffe"]["rate"] == 950_000_000  # the stopped leg's rate went back to the rest
    assert list(rules(h1)) == [f"{h1.ifname} 1:6 ip"]
    to4 = h1.run("nft", "list", "map", "inet", "tenure", "to4").stdout  # h2's chain went with its last leg
    chains = h1.run("nft", "list", "chains", "inet").stdout
    assert h3.address in to4 and h2.address not in to4 and chains.count("chain to-") == 1, (to4, chains)
    assert shaper.monitor(leg(h1, h3, classid="6"), ctx()) == 0
    assert shaper.stop(leg(h1, h3, classid="6"), ctx()) == 0
    assert root(h1)["kind"] == "noqueue"


def fill(host: Host, classids: range, dst: Host, batch: Path) -> None:
    """The tree and classes for ``classids`` made with ``tc -batch``, and their nftables rules with one ``nft -j -f``,
    exactly as the Shaper lays out a 1M leg from ``host`` to ``dst`` on a 1G interface."""
    dev = host.ifname
    left = 10**9 - len(classids) * 10**6
    lines = [f"qdisc add dev {dev} root handle 1: htb default fffe",
             f"class add dev {dev} parent 1: classid 1:1 htb rate 1gbit ceil 1gbit",
             f"class add dev {dev} parent 1:1 classid 1:fffe htb rate {left}bit ceil 1gbit prio 1"]
    for c in classids:
        lines.append(f"class add dev {dev} parent 1:1 classid 1:{c:x} htb rate 1000000bit ceil 1000000bit "
                     f"burst 1600 cburst 1600 quantum 12500")
    batch.write_text("\n".join(lines) + "\n")
    host.run("tc", "-batch", str(batch), timeout=120)
    commands = nft.bulk([parse_params(leg(host, dst, classid=str(c), rate="1000000", src=host.address))
                         for c in classids])
    proc = subprocess.run(host.argv("nft", "-j", "-f", "-"), input=json.dumps({"nftables": commands}), text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_one_leg_among_500_on_a_device(lan: Lan, tmp_path: Path) -> None:
    """Reads of one leg on a device full of others (monitor's kept View, start's fresh one) are still right."""
    h1, h2, h3 = lan.hosts
    fill(h1, range(2, 502), h2, tmp_path / "batch")
    shaper = Shaper()
    params = leg(h1, h2, classid="300", rate="1000000", src=h1.address)
    listing = [h1.run("tc", what, "show", "dev", h1.ifname).stdout for what in ("class", "filter")] + [
        h1.run("nft", "-a", "list", "ruleset").stdout]
    events = TcEvents(h1.netns)
    try:
        assert shaper.monitor(params, ctx()) == 0
        assert shaper.monitor(params, ctx()) == 0
        c = ctx()
        assert shaper.start(params, c) == 0 and shaper.reload(params, c) == 0
        assert c.output == "" and events.drain() == 0  # idempotent: nothing sent to the kernel
        assert [h1.run("tc", what, "show", "dev", h1.ifname).stdout for what in ("class", "filter")] + [
            h1.run("nft", "-a", "list", "ruleset").stdout] == listing
        assert shaper.monitor(leg(h1, h2, classid="600", rate="1000000", src=h1.address), ctx()) == 7
        assert shaper.monitor(leg(h1, h3, classid="300", rate="1000000", src=h1.address), ctx())[0] == 1
    finally:
        events.close()

    h1.run("tc", "class", "change", "dev", h1.ifname, "parent", "1:1", "classid", "1:12c", "htb", "rate", "2mbit",
           "ceil", "2mbit", "burst", "1600", "cburst", "1600")  # behind the shaper's back, right after a monitor
    rc, reason = shaper.monitor(params, ctx())
    assert rc == 1 and "rate 2Mbit/s" in reason
    assert shaper.reload(params, ctx()) == 0
    assert shaper.monitor(params, ctx()) == 0
    gone = rules(h1)[f"{h1.ifname} 1:12c ip"]
    h1.run("nft", "delete", "rule", "inet", "tenure", gone["chain"], "handle", str(gone["handle"]))
    rc, reason = shaper.monitor(params, ctx())
    assert rc == 1 and "missing" in reason
    assert shaper.start(params, ctx()) == 0
    assert shaper.monitor(params, ctx()) == 0

    other = leg(h1, h3, classid="4100")  # pref 101, next to the 500 in pref 100
    assert shaper.start(other, ctx()) == 0 and shaper.monitor(other, ctx()) == 0
    assert shaper.stop(params, ctx()) == 0 and shaper.monitor(params, ctx()) == 7
    classes = h1.tc_classes()
    assert len(classes) == 502 and "1:12c" not in classes and "1:1004" in classes
    assert len(rules(h1)) == 500 and root(h1)["handle"] == "1:"
    assert shaper.monitor(leg(h1, h2, classid="301", rate="1000000", src=h1.address), ctx()) == 0


def _gone(lan: Lan, port: str, timeout: float = 60.0) -> bool:
    """Whether the switch's end of a host's veth goes away (it does when the host's namespace is freed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run(["ip", "-n", lan.switch, "link", "show", port], check=False).returncode != 0:
            return True
        time.sleep(0.05)
    return False


def test_deleted_or_recreated_namespace_is_not_kept_alive(lan: Lan) -> None:
    """Kept sockets and watches pin their namespace: none survives the namespace's name going away."""
    h1, h2, h3 = lan.hosts
    shaper = Shaper()
    for h in (h1, h3):
        assert shaper.start(leg(h, h2), ctx()) == 0 and shaper.monitor(leg(h, h2), ctx()) == 0  # sockets kept

    run(["ip", "netns", "del", h1.netns])
    assert shaper.monitor(leg(h1, h2), ctx()) == 7
    rc, reason = shaper.start(leg(h1, h2), ctx())
    assert rc == 1 and "does not exist" in reason
    assert shaper.stop(leg(h1, h2), ctx()) == 0
    assert _gone(lan, f"t{lan.suffix}s1")

    run(["ip", "netns", "del", h3.netns])  # and made again under the same name, without a call in between
    run(["ip", "netns", "add", h3.netns])
    assert shaper.monitor(leg(h3, h2), ctx()) == 7  # the new namespace has no such device
    assert _gone(lan, f"t{lan.suffix}s3")


# --- what is not ours, or not there ------------------------------------------------------------------


@pytest.mark.parametrize("qdisc", [["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms"],
                                   ["handle", "1:", "htb", "default", "10"]], ids=["tbf", "htb-with-default"])
def test_foreign_root_qdisc_is_left_alone(lan: Lan, qdisc: list[str]) -> None:
    h1, h2, _ = lan.hosts
    h1.run("tc", "qdisc", "add", "dev", h1.ifname, "root", *qdisc)
    before = layout(h1)
    shaper = Shaper()
    rc, reason = shaper.start(leg(h1, h2), ctx())
    assert rc == 1 and "Tenure did not create" in reason and qdisc[-1 if qdisc[0] == "handle" else 0] in reason
    assert shaper.monitor(leg(h1, h2), ctx()) == 7
    assert shaper.stop(leg(h1, h2), ctx()) == 0
    assert layout(h1) == before


def test_missing_device_or_namespace(lan: Lan) -> None:
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    for params, what in ((leg(h1, h2, device="nosuch0"), "device nosuch0"),
                         (leg(h1, h2, netns=f"{h1.netns}-gone"), "namespace")):
        rc, reason = shaper.start(params, ctx())
        assert rc == 1 and what in reason and "does not exist" in reason
        assert shaper.monitor(params, ctx()) == 7
        assert shaper.stop(params, ctx()) == 0
    assert f"{h1.netns}-gone" not in netns_names()  # looking for a namespace never creates it


def test_device_vanishing_after_start(lan: Lan) -> None:
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    assert shaper.start(leg(h1, h2, mark="46"), ctx()) == 0
    h1.run("ip", "link", "del", h1.ifname)
    assert shaper.monitor(leg(h1, h2), ctx()) == 7
    assert shaper.stop(leg(h1, h2), ctx()) == 0
    assert h1.nft_rules() == []  # its rules (and the re-marks of its mark) went all the same


def test_netlink_errors_are_reasons_not_exceptions(lan: Lan, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    from tenure.drivers.tc.wire import Wire

    h1, h2, _ = lan.hosts

    def refuse(self: object, command: str, capacity: int | None = None) -> None:
        raise NetlinkError(errno.EPERM)

    monkeypatch.setattr(Wire, "put_class", refuse)
    rc, reason = Shaper().start(leg(h1, h2), ctx())
    assert rc == 1 and "Operation not permitted" in reason


def test_parse_params_gives_the_leg() -> None:
    lg = parse_params({"device": "eth0", "rate": "50M", "classid": "5", "dst": "10.0.0.0/8", "protocol": "udp",
                       "src_port": "53"})
    assert (lg.rate, lg.rate_bytes, lg.classid_text, [str(n) for n in lg.dst], lg.src_port, lg.netns) == (
        50_000_000, 6_250_000, "1:5", ["10.0.0.0/8"], 53, None)
    dual = parse_params({"device": "eth0", "rate": "50M", "classid": "5", "dst": "fd00::/64, 10.0.0.2",
                         "dscp": "0", "mark": "46"})
    assert ([str(n) for n in dual.dst], dual.dscp, dual.mark) == (["10.0.0.2/32", "fd00::/64"], 0, 46)


def test_map_elements_are_read_whatever_their_form() -> None:
    """Elements listed wrapped (with a comment or counter), with another verdict, or with an IPv4-mapped IPv6
    address as nft prints it, are all read (a missed one would make every start add it and every stop fail)."""
    listing = json.dumps({"nftables": [
        {"table": {"family": "inet", "name": "tenure"}},
        {"map": {"family": "inet", "table": "tenure", "name": "to4", "type": ["ifname", "ipv4_addr"], "map": "verdict",
                 "elem": [[{"elem": {"val": {"concat": ["eth0", "10.0.0.2"]}, "comment": "x"}},
                           {"jump": {"target": "to-0123456789ab"}}],
                          [{"concat": ["eth0", "10.0.0.3"]}, {"accept": None}]]}},
        {"map": {"family": "inet", "table": "tenure", "name": "to6", "type": ["ifname", "ipv6_addr"], "map": "verdict",
                 "elem": [[{"concat": ["eth0", "::ffff:10.0.0.7"]}, {"jump": {"target": "to-ba9876543210"}}]]}},
        {"map": {"family": "inet", "table": "tenure", "name": "to4p", "map": "verdict",
                 "type": ["ifname", "ipv4_addr", "inet_proto", "inet_service"],
                 "elem": [[{"concat": ["eth0", "10.0.0.2", "tcp", 6001]}, {"jump": {"target": "to-00000000000a"}}]]}},
        {"map": {"family": "inet", "table": "tenure", "name": "to6p", "map": "verdict",
                 "type": ["ifname", "ipv6_addr", "inet_proto", "inet_service"],
                 "elem": [[{"concat": ["eth0", "fd00::2", 17, 53]}, {"jump": {"target": "to-00000000000b"}}]]}},
    ]})
    table = nft.parse(listing)
    mapped = str(ipaddress.ip_address("::ffff:10.0.0.7"))  # as this code writes it (Python's form)
    assert table.elements == {(4, "eth0", "10.0.0.2"): "to-0123456789ab", (4, "eth0", "10.0.0.3"): None,
                              (6, "eth0", mapped): "to-ba9876543210",
                              (4, "eth0", "10.0.0.2", 6, 6001): "to-00000000000a",
                              (6, "eth0", "fd00::2", 17, 53): "to-00000000000b"}
    assert table.maps == {"to4", "to6", "to4p", "to6p"} and not table.unread


def test_an_empty_host_chain_something_else_points_at_is_left_alone() -> None:
    """Sweeping an empty host chain that a goto (or an element it cannot read) points at would fail every
    transaction of the namespace: it is left."""
    def listing(elements: list) -> str:
        return json.dumps({"nftables": [
            {"table": {"family": "inet", "name": "tenure"}},
            {"map": {"family": "inet", "table": "tenure", "name": "to4", "type": ["ifname", "ipv4_addr"],
                     "map": "verdict", "elem": elements}},
            {"chain": {"family": "inet", "table": "tenure", "name": "legs", "type": "filter", "hook": "postrouting",
                       "prio": -150, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "tenure", "name": "to-aaaaaaaaaaaa"}}]})

    jump = [[{"concat": ["eth0", "10.0.0.2"]}, {"jump": {"target": "to-aaaaaaaaaaaa"}}]]
    goto = [[{"concat": ["eth0", "10.0.0.2"]}, {"goto": {"target": "to-aaaaaaaaaaaa"}}]]
    unreadable = [["something", "else"]]
    swept = nft._emptied(nft.parse(listing(jump)), set(), [], set())
    assert [c["delete"].get("chain", {}).get("name") for c in swept] == [None, "to-aaaaaaaaaaaa"]  # element, chain
    assert nft._emptied(nft.parse(listing(goto)), set(), [], set()) == []
    assert nft._emptied(nft.parse(listing(unreadable)), set(), [], set()) == []


def test_a_map_element_changed_by_hand_is_reported_and_repaired(lan: Lan) -> None:
    h1, h2, _ = lan.hosts
    shaper = Shaper()
    params = leg(h1, h2)
    assert shaper.start(params, ctx()) == 0
    h1.run("nft", "delete", "element", "inet", "tenure", "to4", "{", f'"{h1.ifname}"', ".", h2.address, "}")
    h1.run("nft", "add", "element", "inet", "tenure", "to4", "{", f'"{h1.ifname}"', ".", h2.address, ":", "accept",
           "}")
    rc, reason = shaper.monitor(params, ctx())
    assert rc == 1 and "map to4 does not send" in reason
    c = ctx()
    assert shaper.start(params, c) == 0 and "set the nftables map to4" in c.output
    assert shaper.monitor(params, ctx()) == 0
    assert shaper.stop(params, ctx()) == 0 and h1.nft_rules() == []
    assert h1.run("nft", "list", "tables").stdout == ""
