"""The topology and limits service on both stores: topology changes (re-routed, degraded, restored, kept; undone
as a whole when the commit fails), malformed topologies, and per-project limits."""

from __future__ import annotations

import pytest

from tenure.domain.access import Principal
from tenure.domain.errors import Conflict, InvalidInput, Unavailable
from tenure.domain.topology import Topology
from tenure.services.runtime import Runtime

from tests.reservation_support import (
    SQUARE,
    check_usage_matches_reservations,
    events_of,
    reserve,
    shrink,
    square,
    statements_fail,
    usage_of,
)


def test_a_topology_change_reroutes_what_no_longer_fits_and_degrades_the_rest(rt: Runtime) -> None:
    a = reserve(rt, kind="oneway", src="h3", dst="h2", rate="400M")  # h3 s1 s2 h2
    b = reserve(rt, kind="oneway", src="h1", dst="h2", rate="400M")  # h1 s1 s2 h2
    out = rt.run(rt.topology.set_topology_op(shrink(SQUARE, "s1-s2", "500M")))
    assert out["recheck"] == {"kept": 1, "rerouted": [b.id], "degraded": [], "restored": []}
    assert rt.reservations.get(b.id).legs[0].nodes == ("h1", "s1", "s3", "s2", "h2")
    check_usage_matches_reservations(rt)
    out = rt.run(rt.topology.set_topology_op(shrink(shrink(SQUARE, "s1-s2", "300M").doc(), "s3-s2", "300M")))
    assert set(out["recheck"]["degraded"]) == {a.id, b.id}
    degraded = rt.reservations.get(a.id)
    assert degraded.state == "degraded" and "topology change" in (degraded.reason or "")
    check_usage_matches_reservations(rt)
    out = rt.run(rt.topology.set_topology_op(square()))
    assert set(out["recheck"]["restored"]) == {a.id, b.id}
    assert rt.reservations.get(a.id).state == "active"
    check_usage_matches_reservations(rt)
    states = [e for e in events_of(rt) if e[0] == a.id]
    assert [s for _, _, s in states] == ["active", "degraded", "active"]


def test_removing_an_endpoint_degrades_its_reservations(rt: Runtime) -> None:
    r = reserve(rt, kind="mirror", src="h1", collector="c1", rate="10M")
    topo = rt.topology
    with pytest.raises(Conflict) as exc:
        rt.run(topo.edit_topology_op(topo.delete_node("c1")))
    assert exc.value.code == "node_in_use"
    rt.run(topo.edit_topology_op(topo.delete_link("c1-s3")))
    rt.run(topo.edit_topology_op(topo.delete_node("c1")))
    assert rt.reservations.get(r.id).state == "degraded"
    assert "c1" not in topo.current.nodes


def test_malformed_topologies_are_refused_by_the_parser_before_any_command(rt: Runtime) -> None:
    before = (rt.revision, rt.topology.body())
    for doc in ({"nodes": [{"id": "a", "kind": "host"}], "links": [{"id": "l", "a": "a", "b": "zz", "capacity": 1}]},
                {"nodes": [{"id": "a", "kind": "host"}, {"id": "a", "kind": "switch"}]},
                {"nodes": [{"id": "a", "kind": "host"}, {"id": "b", "kind": "switch"}],
                 "links": [{"id": "l", "a": "a", "b": "b", "capacity": -1}]},
                {"nodes": [{"id": "a", "kind": "router"}]}):
        with pytest.raises(InvalidInput):
            Topology.parse(doc)
    assert (rt.revision, rt.topology.body()) == before


def test_limits_cap_what_a_project_holds_on_any_link(rt: Runtime) -> None:
    blue = Principal("member", project="blue")
    rt.run(rt.topology.set_limit_op("blue", max_bps="500M"))
    reserve(rt, blue, kind="oneway", src="h1", dst="h2", rate="300M")
    with pytest.raises(Conflict) as exc:
        reserve(rt, blue, kind="oneway", src="h1", dst="h2", rate="300M")
    err = exc.value.to_dict()
    assert (err["code"], err["limit"], err["held"]) == ("limit_exceeded", 500_000_000, 300_000_000)
    reserve(rt, blue, kind="oneway", src="h1", dst="h2", rate="300M", start="+1h", end="+2h")  # later: fine
    reserve(rt, kind="oneway", src="h1", dst="h2", rate="300M")  # another project (none): not limited
    rt.run(rt.topology.set_limit_op("blue", share="10%"))  # 10% of 1G host links
    with pytest.raises(Conflict) as exc:
        reserve(rt, blue, kind="oneway", src="h3", dst="c1", rate="101M", start="+3h", end="+4h")
    assert exc.value.code == "limit_exceeded"
    reserve(rt, blue, kind="oneway", src="h3", dst="c1", rate="100M", start="+3h", end="+4h")


def test_a_node_that_stops_being_a_switch_is_no_longer_a_way_through(rt: Runtime) -> None:
    r = reserve(rt, kind="oneway", src="h1", dst="h2", rate="100M")
    assert r.legs[0].nodes == ("h1", "s1", "s2", "h2")
    topo = rt.topology
    from tenure.domain.topology import Node

    out = rt.run(topo.edit_topology_op(topo.put_node(Node("s2", "host"))))
    assert out["recheck"]["degraded"] == [r.id]  # h2 hangs off s2 only: no other way in
    check_usage_matches_reservations(rt)


def test_a_lowered_limit_does_not_degrade_holdings_at_an_unrelated_topology_edit(rt: Runtime) -> None:
    r = reserve(rt, kind="oneway", src="h1", dst="h2", rate="600M", project="blue")
    rt.run(rt.topology.set_limit_op("blue", max_bps="300M"))
    topo = rt.topology
    from tenure.domain.topology import Node

    out = rt.run(topo.edit_topology_op(topo.put_node(Node("c1", "host", {"rack": "r7"}))))
    assert out["recheck"]["kept"] == 1 and rt.reservations.get(r.id).state == "active"
    with pytest.raises(Conflict) as exc:  # the limit applies to what is admitted from now on
        reserve(rt, kind="oneway", src="h1", dst="h2", rate="1M", project="blue", start="+5m")
    assert exc.value.code == "limit_exceeded"
    check_usage_matches_reservations(rt)


def test_a_failed_topology_commit_leaves_the_old_ledgers_intact(rt: Runtime) -> None:
    a = reserve(rt, kind="oneway", src="h1", dst="h2", rate="400M")
    reserve(rt, kind="oneway", src="h3", dst="c1", rate="300M")
    before = usage_of(rt)
    with statements_fail(rt, "UPDATE topology"), pytest.raises(Unavailable) as exc:
        rt.run(rt.topology.set_topology_op(shrink(SQUARE, "s1-s2", "100M")))
    assert exc.value.code == "store_error"
    assert usage_of(rt) == before and rt.reservations.get(a.id).legs[0].nodes == ("h1", "s1", "s2", "h2")
    check_usage_matches_reservations(rt)
    out = rt.run(rt.topology.set_topology_op(shrink(SQUARE, "s1-s2", "100M")))  # now it goes through
    assert out["recheck"]["rerouted"] == [a.id] and out["recheck"]["kept"] == 1
    check_usage_matches_reservations(rt)


def test_an_unchanged_topology_keeps_everything_without_re_admitting(rt: Runtime) -> None:
    ids = [reserve(rt, kind="oneway", src="h1", dst="h2", rate="100M").id for _ in range(5)]
    before = usage_of(rt)
    out = rt.run(rt.topology.set_topology_op(square()))
    assert out["recheck"] == {"kept": 5, "rerouted": [], "degraded": [], "restored": []}
    assert usage_of(rt) == before and all(rt.reservations.get(i).state == "active" for i in ids)
    reserve(rt, kind="oneway", src="h1", dst="h2", rate="500M")  # the carried-over ledgers take writes
    check_usage_matches_reservations(rt)
