"""The instance service on a real store (SQLite and PostgreSQL), a fake clock, and agents' reports by hand.

Dispatch gating, stitching, failures that propagate, deadlines, deletion, ownership
by reservations, and a restart that preserves everything.
"""

from __future__ import annotations

from typing import Any

import pytest

from tenure.domain.access import Principal
from tenure.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from tenure.domain.instance import Instance
from tenure.domain.reservation import ReservationRequest
from tenure.domain.topology import Topology
from tenure.services.runtime import Runtime
from tenure.services.shaping import mirror_vni

from tests.reservation_support import FakeClock, at, open_rt

AGENT_H1 = Principal("agent", host="h1")


@pytest.fixture
def rt(db_url: str, clock: FakeClock) -> Any:  # no topology (the services' conftest's has the square)
    r = open_rt(db_url, clock)
    yield r
    r.close()


def register(rt: Runtime, host: str) -> None:
    rt.run(rt.agents.register_op(host, kinds=["instance"], version="t", principal=Principal("agent", host=host)))


def create(rt: Runtime, *specs: dict[str, Any], principal: Principal | None = None) -> list[Instance]:
    items = [{"type": "memory", "host": "h1", **s} for s in specs]
    kw = {"principal": principal} if principal else {}
    return [i for i, _ in rt.run(rt.instances.create_op(items, **kw))]


def get(rt: Runtime, ref: str) -> Instance:
    return rt.instances.get(ref)


def report(rt: Runtime, ref: str, state: str, *, gen: int | None = None, host: str = "h1", **kw: Any) -> Any:
    inst = get(rt, ref)
    body = {"generation": gen if gen is not None else inst.dispatched, "state": state, **kw}
    return rt.run(rt.instances.report_op(inst.id, body, principal=Principal("agent", host=host)))


# ------------------------------------------------------------------ dispatch


def test_no_agent_means_pending_with_the_reason_until_one_registers(rt: Runtime) -> None:
    [a] = create(rt, {"name": "a", "parameters": {"value": "1"}})
    assert (a.state, a.reason, a.dispatched) == ("pending", "no agent is registered on host 'h1'", 0)
    register(rt, "h1")
    a = get(rt, "a")
    assert (a.state, a.reason, a.dispatched, a.resolved) == ("provisioning", None, 1, {"value": "1"})
    assert a.deadline is not None


def test_dependencies_wait_then_dispatch_with_resolved_outputs(rt: Runtime) -> None:
    register(rt, "h1")
    net, vm = create(rt, {"name": "net"}, {"name": "vm", "parameters": {"vlan": "${instance:net.outputs.vlan}",
                                                                          "lit": "$${not a ref}"}})
    assert net.state == "provisioning"
    assert (vm.state, vm.reason) == ("pending", "waiting for dependency 'net' (provisioning)")
    report(rt, "net", "active", outputs={"vlan": "101"})
    vm = get(rt, "vm")
    assert vm.state == "provisioning"
    assert vm.resolved == {"vlan": "101", "lit": "${not a ref}"}


def test_a_missing_output_fails_the_dependent_with_a_clear_reason(rt: Runtime) -> None:
    register(rt, "h1")
    create(rt, {"name": "net"}, {"name": "vm", "parameters": {"vlan": "${instance:net.outputs.vlan}"}})
    report(rt, "net", "active", outputs={"vni": "7"})
    vm = get(rt, "vm")
    assert vm.state == "failed"
    assert "instance 'net' has no output 'vlan'" in vm.reason and "vni" in vm.reason
    assert vm.dispatched == 0  # never sent


def test_a_failed_dependency_fails_its_dependents_transitively_and_recovery_retries_them(rt: Runtime) -> None:
    register(rt, "h1")
    create(rt, {"name": "a"}, {"name": "b", "depends_on": ["a"]}, {"name": "c", "depends_on": ["b"]})
    report(rt, "a", "failed", reason="start failed: rc 1")
    b, c = get(rt, "b"), get(rt, "c")
    assert (b.state, b.reason) == ("failed", "dependency 'a' failed: start failed: rc 1")
    assert c.state == "failed" and c.reason.startswith("dependency 'b' failed: dependency 'a' failed")
    report(rt, "a", "active")  # a monitor found it well again
    assert get(rt, "b").state == "provisioning"
    assert get(rt, "c").state == "pending"


def test_claim_references_resolve_and_a_missing_claim_is_refused_before_anything_changes(rt: Runtime) -> None:
    register(rt, "h1")
    rt.run(rt.allocator.create_pool_op("vlans", ranges=[[100, 200]]))
    rt.run(rt.allocator.claim_op("vlans", "net-blue"))
    [a] = create(rt, {"name": "a", "parameters": {"vlan": "${claim:vlans:net-blue}"}})
    assert a.resolved == {"vlan": "100"}
    before = rt.revision
    with pytest.raises(InvalidInput) as exc:
        create(rt, {"name": "b", "parameters": {"vlan": "${claim:vlans:net-red}"}})
    assert exc.value.code == "unresolved_reference" and "net-red" in exc.value.message
    with pytest.raises(InvalidInput) as exc:
        create(rt, {"name": "b", "parameters": {"vlan": "${claim:nopool:k}"}})
    assert exc.value.code == "unresolved_reference"
    assert rt.revision == before and rt.instances.list()[0] == [get(rt, "a")]


def test_a_claim_released_before_dispatch_fails_the_instance(rt: Runtime) -> None:
    register(rt, "h1")
    rt.run(rt.allocator.create_pool_op("vlans", ranges=[[100, 200]]))
    rt.run(rt.allocator.claim_op("vlans", "k"))
    create(rt, {"name": "a"}, {"name": "b", "depends_on": ["a"], "parameters": {"v": "${claim:vlans:k}"}})
    rt.run(rt.allocator.release_op("vlans", "k"))
    report(rt, "a", "active")
    b = get(rt, "b")
    assert b.state == "failed" and "no claim for key 'k'" in b.reason


# ------------------------------------------------------------------ bad input, all or nothing


def test_cycles_unknown_types_and_dependencies_are_refused_and_change_nothing(rt: Runtime) -> None:
    register(rt, "h1")
    before = rt.revision
    cases = [
        ([{"name": "a", "depends_on": ["b"]}, {"name": "b", "parameters": {"x": "${instance:a.outputs.y}"}}],
         "dependency_cycle"),
        ([{"name": "a", "depends_on": ["a"]}], "dependency_cycle"),
        ([{"name": "a", "type": "nosuch"}], "unknown_type"),
        ([{"name": "a", "depends_on": ["ghost"]}], "unknown_dependency"),
        ([{"name": "a"}, {"name": "a"}], "duplicate_instance"),
        ([{"name": "a", "parameters": {"x": "${instance:b}"}}], "invalid_reference"),
        ([{"name": "a", "parameters": {"x": "${vault:secret}"}}], "invalid_reference"),
        ([{"name": "a", "parameters": {"bad-name": "1"}}], "invalid_parameters"),
        ([{"name": "a", "parameters": {"x": 1.5}}], "invalid_parameters"),
        ([{"name": "a", "parameters": {"x": "\ud800"}}], "invalid_parameters"),
        ([{"name": "a", "bogus": 1}], "unknown_field"),
        ([{"name": "12345678-1234-1234-1234-123456789abc"}], "invalid_name"),
        ([{"name": "ok"}, {"name": "b", "type": "nosuch"}], "unknown_type"),  # all or nothing
    ]
    for items, code in cases:
        with pytest.raises(InvalidInput) as exc:
            create(rt, *items)
        assert exc.value.code == code, (items, exc.value)
    with pytest.raises(InvalidInput) as exc:
        create(rt, {"name": "x", "depends_on": ["y"]}, {"name": "y", "depends_on": ["z"]},
               {"name": "z", "depends_on": ["x"]})
    assert exc.value.code == "dependency_cycle" and exc.value.details["cycle"][0] == exc.value.details["cycle"][-1]
    assert rt.revision == before
    assert rt.instances.list()[0] == []


def test_a_modification_that_would_close_a_cycle_is_refused(rt: Runtime) -> None:
    create(rt, {"name": "a"}, {"name": "b", "depends_on": ["a"]})
    before = rt.revision
    with pytest.raises(InvalidInput) as exc:
        rt.run(rt.instances.modify_op("a", {"depends_on": ["b"]}))
    assert exc.value.code == "dependency_cycle" and "a -> b -> a" in exc.value.message
    assert rt.revision == before and get(rt, "a").depends_on == ()


def test_same_spec_again_is_answered_a_different_one_conflicts(rt: Runtime) -> None:
    [a] = create(rt, {"name": "a", "parameters": {"v": "1"}})
    out = rt.run(rt.instances.create_op([{"name": "a", "type": "memory", "host": "h1", "parameters": {"v": "1"}}]))
    assert out == [(a, False)]
    with pytest.raises(Conflict) as exc:
        create(rt, {"name": "a", "parameters": {"v": "2"}})
    assert exc.value.code == "instance_exists"


# ------------------------------------------------------------------ reports


def test_reports_of_older_generations_are_stale_and_newer_ones_unknown(rt: Runtime) -> None:
    register(rt, "h1")
    create(rt, {"name": "a", "parameters": {"v": "1"}})
    rt.run(rt.instances.modify_op("a", {"parameters": {"v": "2"}}))
    a = get(rt, "a")
    assert (a.generation, a.dispatched, a.resolved) == (2, 2, {"v": "2"})
    inst, stale = report(rt, "a", "active", gen=1)
    assert stale and inst.state == "provisioning"
    with pytest.raises(Conflict) as exc:
        report(rt, "a", "active", gen=3)
    assert exc.value.code == "unknown_generation"
    inst, stale = report(rt, "a", "active", gen=2, outputs={"k": "v"})
    assert not stale and (inst.state, inst.observed, dict(inst.outputs)) == ("active", 2, {"k": "v"})
    assert inst.deadline is None


def test_only_the_hosts_agent_may_report_and_members_may_not(rt: Runtime) -> None:
    register(rt, "h1")
    [a] = create(rt, {"name": "a"})
    with pytest.raises(NotFound):
        rt.run(rt.instances.report_op(a.id, {"generation": 1, "state": "active"},
                                      principal=Principal("agent", host="h2")))
    with pytest.raises(Forbidden):
        rt.instances.report_op(a.id, {"generation": 1, "state": "active"},
                               principal=Principal("member", project="p"))
    for bad in ({"generation": 0, "state": "active"}, {"generation": 1, "state": "running"},
                {"generation": True, "state": "active"}, {"generation": 1, "state": "active", "outputs": {"a-b": "1"}},
                {"generation": 1, "state": "active", "result": {"x": float("nan")}}, {"generation": 1}):
        with pytest.raises(InvalidInput):
            rt.instances.report_op(a.id, bad, principal=AGENT_H1)


def test_a_silent_agent_fails_the_instance_at_its_deadline_and_a_late_report_still_counts(
        rt: Runtime, clock: FakeClock) -> None:
    register(rt, "h1")
    [a] = create(rt, {"name": "a"})  # memory: 10 s operations; deadline 3 x 10 + 30 s
    clock.advance(seconds=59)
    rt.instances.scheduler.run_due()
    assert get(rt, "a").state == "provisioning"
    clock.advance(seconds=2)
    rt.instances.scheduler.run_due()
    a = get(rt, "a")
    assert a.state == "failed" and a.reason.startswith("timeout: the agent of host 'h1' did not report")
    assert a.deadline is None
    report(rt, "a", "active")
    assert get(rt, "a").state == "active"


# ------------------------------------------------------------------ deletion


def test_delete_never_sent_is_immediate_sent_waits_for_the_agent(rt: Runtime) -> None:
    [a] = create(rt, {"name": "a"})  # no agent: never sent
    gone = rt.run(rt.instances.delete_op("a"))
    assert gone.state == "deleted" and rt.instances.list()[0] == []
    register(rt, "h1")
    create(rt, {"name": "b"})
    b = rt.run(rt.instances.delete_op("b"))
    assert (b.state, b.desired, b.generation, b.dispatched) == ("deleting", "absent", 2, 2)
    assert rt.run(rt.instances.delete_op("b")) == b  # again: the same answer
    with pytest.raises(Conflict):
        rt.run(rt.instances.modify_op("b", {"parameters": {"x": "1"}}))
    inst, stale = report(rt, "b", "active", gen=2)
    assert stale  # an active report cannot undo a delete
    gone, stale = report(rt, "b", "deleted")
    assert not stale and gone.state == "deleted"
    with pytest.raises(NotFound):
        get(rt, "b")


def test_a_dependency_cannot_be_deleted_under_its_dependents_unless_forced(rt: Runtime) -> None:
    register(rt, "h1")
    create(rt, {"name": "a"}, {"name": "b", "depends_on": ["a"]})
    with pytest.raises(Conflict) as exc:
        rt.run(rt.instances.delete_op("a"))
    assert exc.value.code == "instance_in_use" and exc.value.details["dependents"] == ["b"]
    with pytest.raises(Forbidden):
        rt.instances.delete_op("a", principal=Principal("member", project="p"), force=True)
    rt.run(rt.instances.delete_op("a", force=True))
    b = get(rt, "b")
    assert b.state == "pending" or b.state == "failed"
    assert b.reason == "dependency 'a' does not exist"


# ------------------------------------------------------------------ scopes


def test_members_see_and_name_only_their_projects_instances(rt: Runtime) -> None:
    blue, red = Principal("member", project="blue"), Principal("member", project="red")
    [b] = create(rt, {"name": "web"}, principal=blue)
    [r] = create(rt, {"name": "web"}, principal=red)  # the same name in another project
    assert b.project == "blue" and r.project == "red" and b.id != r.id
    assert rt.instances.get("web", principal=blue).id == b.id
    with pytest.raises(NotFound):
        rt.instances.get(b.id, principal=red)
    assert [i.id for i in rt.instances.list(principal=red)[0]] == [r.id]
    assert {i.id for i in rt.instances.list(principal=AGENT_H1)[0]} == {b.id, r.id}
    assert rt.instances.list(principal=Principal("agent", host="h2"))[0] == []
    with pytest.raises(Forbidden):
        create(rt, {"name": "x", "project": "red"}, principal=blue)
    with pytest.raises(Forbidden):
        create(rt, {"name": "x"}, principal=AGENT_H1)
    with pytest.raises(NotFound):
        rt.run(rt.instances.delete_op(b.id, principal=red))


# ------------------------------------------------------------------ restart


def test_a_restart_keeps_instances_indexes_and_deadlines(db_url: str, clock: FakeClock) -> None:
    rt = open_rt(db_url, clock)
    register(rt, "h1")
    create(rt, {"name": "a"}, {"name": "b", "depends_on": ["a"], "parameters": {"x": "${instance:a.outputs.o}"}})
    before = {i.id: i for i in rt.instances.list()[0]}
    rt.close()
    rt = open_rt(db_url, clock)
    try:
        assert {i.id: i for i in rt.instances.list()[0]} == before
        report(rt, "a", "active", outputs={"o": "42"})  # the dependents index came back
        assert get(rt, "b").resolved == {"x": "42"}
        clock.advance(seconds=200)
        rt.instances.scheduler.run_due()  # the deadline came back
        assert get(rt, "b").state == "failed"
    finally:
        rt.close()


# ------------------------------------------------------------------ reservations' shapers


TWO_HOSTS = {
    "nodes": [{"id": "h1", "kind": "host", "labels": {"address": "10.0.0.1", "interface": "eth0"}},
              {"id": "h2", "kind": "host", "labels": {"address": "10.0.0.2"}},
              {"id": "h3", "kind": "host"},
              {"id": "s1", "kind": "switch"}],
    "links": [{"id": f"{h}-s1", "a": h, "b": "s1", "capacity": "1G"} for h in ("h1", "h2", "h3")],
}


def shapers(rt: Runtime, rid: str) -> dict[str, Instance]:
    """The reservation's shapers by leg."""
    out = {}
    for i in rt.instances.list()[0]:
        owner, _, leg = (i.owner or "").partition("/")
        if owner == f"reservation:{rid}":
            out[leg] = i
    return out


def oneway(rt: Runtime, clock: FakeClock, dst: str, *, principal: Principal | None = None) -> Any:
    """On TWO_HOSTS: a 5M oneway reservation h1 -> ``dst``, active now for 5 minutes."""
    rt.run(rt.topology.set_topology_op(Topology.parse(TWO_HOSTS)))
    body = {"kind": "oneway", "src": "h1", "dst": dst, "rate": "5M", "start": "now", "end": at(clock, minutes=5)}
    request = ReservationRequest.parse(body)
    res, _, _ = rt.run(rt.reservations.create_op(request, **({"principal": principal} if principal else {})))
    return res


def test_an_active_reservation_has_shapers_on_its_hosts_until_it_expires(rt: Runtime, clock: FakeClock) -> None:
    register(rt, "h1")
    register(rt, "h2")
    rt.run(rt.topology.set_topology_op(Topology.parse(TWO_HOSTS)))
    res, _, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse({
        "kind": "bandwidth", "src": "h1", "dst": "h2", "rate_out": "50M", "rate_in": "10M",
        "start": at(clock, minutes=1), "end": at(clock, minutes=5), "protocol": "tcp", "dst_port": 5201, "dscp": 10})))
    assert shapers(rt, res.id) == {}  # pending: nothing on the hosts yet
    clock.advance(minutes=1)
    rt.reservations.scheduler.run_due()
    s = shapers(rt, res.id)
    assert set(s) == {"out", "in"}
    assert (s["out"].host, s["out"].type, s["out"].state) == ("h1", "bandwidth", "provisioning")
    assert dict(s["out"].resolved) == {"rate": "50000000", "dst": "10.0.0.2", "src": "10.0.0.1", "device": "eth0",
                                       "protocol": "tcp", "dst_port": "5201", "capacity": "1000000000",
                                       "borrow": "no", "mark": "46", "dscp": "10"}
    # capacity: h1's link, which its interface's tree shares; mark: EF, a bandwidth reservation's default DSCP
    assert dict(s["in"].resolved) == {"rate": "10000000", "dst": "10.0.0.1", "src": "10.0.0.2", "protocol": "tcp",
                                      "src_port": "5201", "capacity": "1000000000", "borrow": "no", "mark": "46",
                                      "dscp": "10"}
    with pytest.raises(Conflict) as exc:
        rt.run(rt.instances.delete_op(s["out"].id))
    assert exc.value.code == "owned_instance"
    rt.run(rt.reservations.modify_op(res.id, {"rate_out": "60M"}))
    out = shapers(rt, res.id)["out"]
    assert out.generation == 2 and out.resolved["rate"] == "60000000"
    rt.run(rt.reservations.modify_op(res.id, {"burst": "borrow"}))  # may use idle capacity: its shapers say so
    assert {leg: i.resolved["borrow"] for leg, i in shapers(rt, res.id).items()} == {"out": "yes", "in": "yes"}
    assert rt.reservations.get(res.id).body()["burst"] == "borrow"
    clock.advance(minutes=4)
    rt.reservations.scheduler.run_due()
    s = shapers(rt, res.id)
    assert {k: (v.state, v.desired) for k, v in s.items()} == {"out": ("deleting", "absent"),
                                                                "in": ("deleting", "absent")}


def test_a_cancelled_reservation_removes_its_shapers_and_a_host_without_address_fails_one(
        rt: Runtime, clock: FakeClock) -> None:
    register(rt, "h1")
    res = oneway(rt, clock, "h3")
    s = shapers(rt, res.id)
    assert set(s) == {"out"} and s["out"].state == "failed" and "'h3' has no 'address' label" in s["out"].reason
    rt.run(rt.reservations.cancel_op(res.id))
    assert shapers(rt, res.id) == {}  # never sent: gone at once


def test_nothing_may_depend_on_a_shaper_and_members_may_not_make_shapers(rt: Runtime, clock: FakeClock) -> None:
    """A member naming a reservation's shaper as a dependency could hold up its expiry (and with it every
    transition due at the same time); a member's own `bandwidth` instance would shape without admission."""
    register(rt, "h1")
    p1 = Principal("member", project="p1")
    res = oneway(rt, clock, "h2", principal=p1)
    [shaper] = shapers(rt, res.id).values()
    with pytest.raises(InvalidInput) as exc:
        create(rt, {"name": "x", "depends_on": [shaper.name]}, principal=p1)
    assert exc.value.code == "owned_dependency"
    with pytest.raises(InvalidInput) as exc:
        create(rt, {"name": "x", "parameters": {"v": f"${{instance:{shaper.name}.outputs.classid}}"}}, principal=p1)
    assert exc.value.code == "owned_dependency"
    create(rt, {"name": "y"}, principal=p1)
    with pytest.raises(InvalidInput):
        rt.run(rt.instances.modify_op("y", {"depends_on": [shaper.name]}, principal=p1))
    with pytest.raises(Forbidden):
        create(rt, {"name": "z", "type": "bandwidth", "parameters": {"rate": "1000", "dst": "10.0.0.0/8"}},
               principal=p1)
    clock.advance(minutes=5)
    rt.reservations.scheduler.run_due()
    assert rt.reservations.get(res.id).state == "expired"
    assert shapers(rt, res.id)["out"].state == "deleting"


def test_no_cycle_through_a_name_that_was_deleted_and_created_again(rt: Runtime) -> None:
    create(rt, {"name": "a"}, {"name": "b", "depends_on": ["a"]})
    rt.run(rt.instances.delete_op("a", force=True))  # b still names a
    before = rt.revision
    with pytest.raises(InvalidInput) as exc:
        create(rt, {"name": "a", "depends_on": ["b"]})
    assert exc.value.code == "dependency_cycle" and exc.value.details["cycle"] in (["a", "b", "a"], ["b", "a", "b"])
    assert rt.revision == before
    [a] = create(rt, {"name": "a"})  # without the cycle it may come back, and b waits for it again
    assert get(rt, "b").reason == "waiting for dependency 'a' (pending)"
    assert a.name == "a"


def test_a_shaper_without_an_address_stays_failed_when_its_reservation_is_modified(
        rt: Runtime, clock: FakeClock) -> None:
    register(rt, "h1")
    res = oneway(rt, clock, "h3")
    rt.run(rt.reservations.modify_op(res.id, {"rate_out": "6M"}))
    out = shapers(rt, res.id)["out"]
    assert out.state == "failed" and "no 'address' label" in out.reason and out.dispatched == 0


BARE = {  # no address or interface labels: the agents tell
    "nodes": [{"id": h, "kind": "host"} for h in ("h1", "h2")] + [{"id": "s1", "kind": "switch"}],
    "links": [{"id": f"{h}-s1", "a": h, "b": "s1", "capacity": "1G"} for h in ("h1", "h2")],
}


def network(*interfaces: tuple[str, list[str]], default: str | None = None) -> dict[str, Any]:
    return {"interfaces": [{"name": n, "addresses": a} for n, a in interfaces], "default": default}


def register_with(rt: Runtime, host: str, net: dict[str, Any]) -> None:
    rt.run(rt.agents.register_op(host, kinds=["instance"], version="t", capabilities={"network": net},
                                 principal=Principal("agent", host=host)))


def test_addresses_and_interfaces_come_from_the_agents_when_the_topology_has_none(
        rt: Runtime, clock: FakeClock) -> None:
    """A node without labels takes what its agent reported: the destination's address of each family the source
    has (both when both have two stacks), the source's interface whose network holds it (not the default one) and
    its address there; an explicit label still wins; and when an
    agent registers late, or reports new addresses, the shapers of active reservations follow."""
    register_with(rt, "h1", network(("mgmt0", ["192.168.9.1/24"]), ("eth1", ["10.5.0.1/24", "fd00:5::1/64"]),
                                    default="mgmt0"))
    rt.run(rt.topology.set_topology_op(Topology.parse(BARE)))
    body = {"kind": "oneway", "src": "h1", "dst": "h2", "rate": "5M", "start": "now", "end": at(clock, minutes=5)}
    res, _, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(body)))
    [out] = shapers(rt, res.id).values()
    assert out.state == "failed" and "'h2' has no 'address' label and its agent reported no" in out.reason

    register_with(rt, "h2", network(("eth0", ["fe80::1/64", "10.5.0.2/24"]), default="eth0"))
    [out] = shapers(rt, res.id).values()
    assert out.state == "provisioning" and out.generation == 2
    assert {k: out.resolved[k] for k in ("dst", "src", "device")} == {
        "dst": "10.5.0.2", "src": "10.5.0.1", "device": "eth1"}  # the interface toward h2 (not the default)

    register_with(rt, "h2", network(("eth0", ["10.5.0.7/24"]), default="eth0"))  # h2 moved
    [out] = shapers(rt, res.id).values()
    assert out.generation == 3 and out.parameters["dst"] == "10.5.0.7"

    register_with(rt, "h2", network(("eth0", ["10.5.0.7/24", "fd00:5::7/64"]), default="eth0"))  # dual stack
    [out] = shapers(rt, res.id).values()
    assert {k: out.resolved[k] for k in ("dst", "src", "device")} == {
        "dst": "10.5.0.7,fd00:5::7", "src": "10.5.0.1,fd00:5::1", "device": "eth1"}  # both families matched
    register_with(rt, "h2", network(("eth0", ["fd00:5::7/64"]), default="eth0"))  # IPv6 only
    [out] = shapers(rt, res.id).values()
    assert {k: out.resolved[k] for k in ("dst", "src", "device")} == {
        "dst": "fd00:5::7", "src": "fd00:5::1", "device": "eth1"}
    register_with(rt, "h2", network(("eth0", ["10.5.0.7/24", "fd00:6::7/64"]), default="eth0"))
    register_with(rt, "h1", network(("mgmt0", ["192.168.9.1/24"]), ("eth1", ["10.5.0.1/24"]),
                                    ("eth2", ["fd00:6::1/64"]), default="mgmt0"))
    [out] = shapers(rt, res.id).values()
    assert {k: out.resolved[k] for k in ("dst", "src", "device")} == {
        "dst": "10.5.0.7", "src": "10.5.0.1", "device": "eth1"}  # IPv6 leaves by eth2: not matched on eth1
    register_with(rt, "h1", network(("mgmt0", ["192.168.9.1/24"]), ("eth1", ["10.5.0.1/24", "fd00:5::1/64"]),
                                    default="mgmt0"))
    register_with(rt, "h2", network(("eth0", ["10.5.0.7/24"]), default="eth0"))

    labelled = {**BARE, "nodes": [{"id": "h1", "kind": "host", "labels": {"interface": "bond0"}},
                                  *BARE["nodes"][1:]]}
    rt.run(rt.topology.set_topology_op(Topology.parse(labelled)))
    rt.run(rt.reservations.modify_op(res.id, {"rate_out": "6M"}))
    [out] = shapers(rt, res.id).values()
    assert out.parameters["device"] == "bond0" and out.parameters["dst"] == "10.5.0.7"  # the label wins

    register_with(rt, "h2", network(("eth0", ["10.5.0.7/24", "fd00:5::7/64"]), default="eth0"))
    v4_source = {**BARE, "nodes": [{"id": "h1", "kind": "host", "labels": {"address": "10.5.0.1"}},
                                   *BARE["nodes"][1:]]}
    rt.run(rt.topology.set_topology_op(Topology.parse(v4_source)))
    [out] = shapers(rt, res.id).values()
    assert {k: out.resolved[k] for k in ("dst", "src")} == {"dst": "10.5.0.7", "src": "10.5.0.1"}  # its family
    v6_dest = {**v4_source, "nodes": [v4_source["nodes"][0], {"id": "h2", "kind": "host",
                                                              "labels": {"address": "fd00:5::7"}},
                                      *BARE["nodes"][2:]]}
    rt.run(rt.topology.set_topology_op(Topology.parse(v6_dest)))
    [out] = shapers(rt, res.id).values()
    assert out.state == "failed" and "different families" in out.reason


def test_a_steering_reservation_shapes_every_segment_and_routes_each_to_the_next_stop(
        rt: Runtime, clock: FakeClock) -> None:
    """h1 -> fw1 -> fw2 -> h2: a shaper on each segment's source (middleboxes too), each matching the flow end to end
    (h1's address to h2's), leaving by the interface toward the next stop and routed to it (``via``; the last
    segment has none, the main table reaches h2), forwarded on the middleboxes; a flow family without a next hop is
    not steered, and a middlebox without a reachable address fails the segment that leads to it, saying so."""
    topo = {"nodes": [{"id": n, "kind": "host" if n[0] == "h" else "middlebox"} for n in ("h1", "h2", "fw1", "fw2")]
            + [{"id": "s1", "kind": "switch"}],
            "links": [{"id": f"{n}-s1", "a": n, "b": "s1", "capacity": "1G"} for n in ("h1", "h2", "fw1", "fw2")]}
    register_with(rt, "h1", network(("eth0", ["10.5.0.1/24", "fd00:5::1/64"]), default="eth0"))
    register_with(rt, "h2", network(("eth0", ["10.5.0.2/24", "fd00:5::2/64"]), default="eth0"))
    register_with(rt, "fw1", network(("eth0", ["10.5.0.11/24", "fd00:5::11/64"]), default="eth0"))
    register_with(rt, "fw2", network(("mgmt", ["192.168.0.12/24"]), ("eth1", ["10.5.0.12/24"]), default="mgmt"))
    rt.run(rt.topology.set_topology_op(Topology.parse(topo)))
    body = {"kind": "steering", "src": "h1", "dst": "h2", "via": ["fw1", "fw2"], "rate": "5M", "start": "now",
            "end": at(clock, minutes=5), "protocol": "tcp", "dst_port": 5201}
    res, _, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(body)))
    s = shapers(rt, res.id)
    assert {leg: (i.host, i.state) for leg, i in s.items()} == {
        "seg0": ("h1", "provisioning"), "seg1": ("fw1", "provisioning"), "seg2": ("fw2", "provisioning")}
    pick = ("dst", "src", "device", "via", "forward", "protocol", "dst_port", "rate")
    assert {k: s["seg0"].resolved.get(k) for k in pick} == {
        "dst": "10.5.0.2", "src": "10.5.0.1", "device": "eth0", "via": "10.5.0.11", "forward": None,
        "protocol": "tcp", "dst_port": "5201", "rate": "5000000"}  # fw2 has no IPv6: no segment steers that family
    assert {k: s["seg1"].resolved.get(k) for k in pick} == {
        "dst": "10.5.0.2", "src": "10.5.0.1", "device": "eth0", "via": "10.5.0.12", "forward": "yes",
        "protocol": "tcp", "dst_port": "5201", "rate": "5000000"}
    assert {k: s["seg2"].resolved.get(k) for k in pick} == {
        "dst": "10.5.0.2", "src": "10.5.0.1", "device": "eth1", "via": None, "forward": "yes",
        "protocol": "tcp", "dst_port": "5201", "rate": "5000000"}  # the last stop: the main table reaches h2

    register_with(rt, "fw2", network(("mgmt", ["192.168.0.12/24"]), default="mgmt"))  # fw2 left the flow's network
    s = shapers(rt, res.id)
    assert all(i.state == "failed" and "'fw2'" in i.reason for i in s.values()), {k: i.reason for k, i in s.items()}

    # The middleboxes only in a family the flow is not: no family left, every segment fails naming one.
    register_with(rt, "fw2", network(("eth1", ["fd00:5::12/64"]), default="eth1"))
    register_with(rt, "h2", network(("eth0", ["10.5.0.2/24"]), default="eth0"))
    register_with(rt, "fw1", network(("eth0", ["fd00:5::11/64"]), default="eth0"))
    s = shapers(rt, res.id)
    assert all(i.state == "failed" and "'fw1'" in i.reason for i in s.values()), {k: i.reason for k, i in s.items()}

    # A DSCP match is the source's: past it the flow carries the reservation's mark, so a middlebox matches without.
    register_with(rt, "fw1", network(("eth0", ["10.5.0.11/24"]), default="eth0"))
    register_with(rt, "fw2", network(("eth1", ["10.5.0.12/24"]), default="eth1"))
    body = {**body, "dscp": 10, "end": at(clock, minutes=5)}
    dscp, _, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(body)))
    s = shapers(rt, dscp.id)
    assert {leg: (i.state, i.resolved.get("dscp")) for leg, i in s.items()} == {
        "seg0": ("provisioning", "10"), "seg1": ("provisioning", None), "seg2": ("provisioning", None)}



def test_a_mirror_has_a_source_and_a_collector_end_while_active(rt: Runtime, clock: FakeClock) -> None:
    """A mirror of h1 to h2: the source end on h1 (its interface, the direction, the rate, CS1) and the collector
    end on h2, sharing a tunnel named after the VNI; modified, the source follows; cancelled, both go; a collector
    that shares no address family with the source fails both ends, saying so; a mirror of a switch has none."""
    register_with(rt, "h1", network(("eth0", ["10.5.0.1/24"]), default="eth0"))
    register_with(rt, "h2", network(("eth0", ["10.5.0.2/24"]), default="eth0"))
    rt.run(rt.topology.set_topology_op(Topology.parse(BARE)))
    body = {"kind": "mirror", "src": "h1", "collector": "h2", "rate": "10M", "direction": "in", "start": "now",
            "end": at(clock, minutes=5)}
    res, _, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(body)))
    assert res.body()["direction"] == "in" and res.mark == 8
    ends = shapers(rt, res.id)
    vni = mirror_vni(res.id)
    assert {part: (i.host, i.type, i.state) for part, i in ends.items()} == {
        "mirror": ("h1", "mirror", "provisioning"), "collector": ("h2", "mirror", "provisioning")}
    assert dict(ends["mirror"].parameters) == {
        "role": "source", "tunnel": f"tm{vni:06x}", "vni": str(vni), "direction": "in", "rate": "10000000",
        "mark": "8", "device": "eth0", "local": "10.5.0.1", "remote": "10.5.0.2"}
    assert dict(ends["collector"].parameters) == {
        "role": "collector", "tunnel": f"tm{vni:06x}", "vni": str(vni), "local": "10.5.0.2", "remote": "10.5.0.1"}
    rt.run(rt.reservations.modify_op(res.id, {"rate_out": "20M"}))
    assert shapers(rt, res.id)["mirror"].parameters["rate"] == "20000000"

    register_with(rt, "h2", network(("eth0", ["fd00:5::2/64"]), default="eth0"))  # no family in common now
    ends = shapers(rt, res.id)
    assert all(i.state == "failed" and "cannot be reached by a tunnel" in i.reason for i in ends.values()), {
        k: i.reason for k, i in ends.items()}
    rt.run(rt.reservations.cancel_op(res.id))
    assert {i.desired for i in shapers(rt, res.id).values()} == {"absent"}  # (sent once: their agents stop them)

    two_switches = {"nodes": BARE["nodes"] + [{"id": "s2", "kind": "switch", "labels": {"address": "10.5.0.9"}}],
                    "links": BARE["links"] + [{"id": "s1-s2", "a": "s1", "b": "s2", "capacity": "1G"}]}
    rt.run(rt.topology.set_topology_op(Topology.parse(two_switches)))
    register_with(rt, "h2", network(("eth0", ["10.5.0.2/24"]), default="eth0"))
    to_switch = {**body, "collector": "s2", "end": at(clock, minutes=5)}  # a collector that is not a host
    res, _, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(to_switch)))
    assert {i.reason for i in shapers(rt, res.id).values()} == {
        "the collector 's2' is a switch: a mirror's copies go to a host, whose agent ends their tunnel"}
    rt.run(rt.reservations.cancel_op(res.id))

    switch = {**body, "src": "s1", "end": at(clock, minutes=5)}
    res, _, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(switch)))
    assert shapers(rt, res.id) == {}  # a switch mirrors its own port: no host agent has anything to do
    with pytest.raises(InvalidInput) as exc:
        ReservationRequest.parse({**body, "kind": "oneway", "dst": "h2", "collector": None})
    assert exc.value.code == "invalid_direction"
    with pytest.raises(InvalidInput) as exc:
        ReservationRequest.parse({**body, "direction": "sideways"})
    assert exc.value.code == "invalid_direction"


def test_shapers_follow_a_topology_change_and_a_restart_writes_nothing_new(
        db_url: str, rt: Runtime, clock: FakeClock) -> None:
    """A kept reservation's shapers follow a new link capacity (and any label) of a topology change; a server
    starting to write re-syncs every active reservation's shapers, and with nothing changed writes nothing."""
    register(rt, "h1")
    res = oneway(rt, clock, "h2")
    [out] = shapers(rt, res.id).values()
    assert out.parameters["capacity"] == "1000000000"
    faster = {**TWO_HOSTS, "links": [{**lk, "capacity": "2G"} for lk in TWO_HOSTS["links"]]}
    rt.run(rt.topology.set_topology_op(Topology.parse(faster)))
    [out] = shapers(rt, res.id).values()
    assert out.parameters["capacity"] == "2000000000" and out.generation == 2
    revision = rt.revision
    rt.close()
    again = open_rt(db_url, clock)
    try:
        assert again.revision == revision  # the start's re-sync found nothing to change
        [out] = shapers(again, res.id).values()
        assert out.generation == 2
    finally:
        again.close()


def test_an_address_two_agents_report_or_another_node_is_labelled_with_is_nobodys(
        rt: Runtime, clock: FakeClock) -> None:
    """An agent vouches for its own host only: an address another agent reports too, or another node's label,
    is not taken from it (a shaper on a third host must not be pointed at someone else's traffic)."""
    topo = {"nodes": [{"id": "h1", "kind": "host"}, {"id": "h2", "kind": "host"},
                      {"id": "h3", "kind": "host", "labels": {"address": "10.5.0.3"}},
                      {"id": "s1", "kind": "switch"}],
            "links": [{"id": f"{h}-s1", "a": h, "b": "s1", "capacity": "1G"} for h in ("h1", "h2", "h3")]}
    rt.run(rt.topology.set_topology_op(Topology.parse(topo)))
    register_with(rt, "h1", network(("eth0", ["10.5.0.1/24"]), default="eth0"))
    register_with(rt, "h2", network(("eth0", ["10.5.0.3/24", "10.5.0.9/24"]), default="eth0"))  # h3's, and h4's
    register_with(rt, "h4", network(("eth0", ["10.5.0.9/24"]), default="eth0"))
    body = {"kind": "oneway", "src": "h1", "dst": "h2", "rate": "5M", "start": "now", "end": at(clock, minutes=5)}
    res, _, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(body)))
    [out] = shapers(rt, res.id).values()
    assert out.state == "failed" and "reported no address of its own" in out.reason
    register_with(rt, "h4", network(("eth0", ["10.5.0.4/24"]), default="eth0"))  # h4 lets go of .9: h2 has it
    [out] = shapers(rt, res.id).values()
    assert out.parameters["dst"] == "10.5.0.9" and out.state == "provisioning"


def test_a_server_starting_to_write_brings_every_shaper_up_to_date(
        db_url: str, rt: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    register(rt, "h1")
    res = oneway(rt, clock, "h2")
    [out] = shapers(rt, res.id).values()
    assert out.parameters["capacity"] == "1000000000"
    rt.close()
    monkeypatch.setattr("tenure.services.shaping.MAX_SHAPED", 10**8)  # as a newer version would shape it
    again = open_rt(db_url, clock)
    try:
        [out] = shapers(again, res.id).values()
        assert out.parameters["capacity"] == "100000000" and out.generation == 2
    finally:
        again.close()


def test_a_host_labelled_with_its_own_address_keeps_the_interface_that_holds_it(
        rt: Runtime, clock: FakeClock) -> None:
    """Another node's label takes an address away from an agent; the node's own label does not."""
    topo = {**BARE, "nodes": [{"id": "h1", "kind": "host", "labels": {"address": "10.0.0.1"}}, *BARE["nodes"][1:]]}
    rt.run(rt.topology.set_topology_op(Topology.parse(topo)))
    register_with(rt, "h1", network(("eth1", ["192.168.9.1/24"]), ("eth0", ["10.0.0.1/24"]), default="eth1"))
    register_with(rt, "h2", network(("eth0", ["10.0.0.2/24"]), default="eth0"))
    body = {"kind": "oneway", "src": "h1", "dst": "h2", "rate": "5M", "start": "now", "end": at(clock, minutes=5)}
    res, _, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(body)))
    [out] = shapers(rt, res.id).values()
    assert {k: out.parameters[k] for k in ("dst", "src", "device")} == {
        "dst": "10.0.0.2", "src": "10.0.0.1", "device": "eth0"}
