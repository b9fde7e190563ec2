"""The reservation service on both stores: admission, lifecycle on a fake clock, modify/cancel, topology
changes, limits, idempotency, concurrency for the last capacity, and restart."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tenure.domain.access import Principal
from tenure.domain.errors import Conflict, InvalidInput, NotFound, Unavailable
from tenure.domain.reservation import ReservationRequest
from tenure.domain.topology import Topology
from tenure.services.runtime import Runtime

from tests.reservation_support import (
    SQUARE,
    FakeClock,
    at,
    check_usage_matches_reservations,
    events_of,
    open_rt,
    reserve,
    shrink,
    square,
    statements_fail,
    usage_of,
)

# ---------------------------------------------------------------- admission


def test_each_direction_is_admitted_on_its_own_path(rt: Runtime) -> None:
    links = [{**lk, "capacity_ab": "1G", "capacity_ba": "100M"} if lk["id"] == "s1-s2" else lk
             for lk in SQUARE["links"]]
    rt.run(rt.topology.set_topology_op(Topology.parse({**SQUARE, "links": links})))
    r = reserve(rt, src="h1", dst="h2", rate_out="600M", rate_in="300M")
    out, back = r.legs
    assert out.nodes == ("h1", "s1", "s2", "h2")
    assert back.nodes == ("h2", "s2", "s3", "s1", "h1")  # s2→s1 has only 100M: the way back goes around
    assert [d for _, d in out.hops] == ["ab", "ab", "ba"] and [d for _, d in back.hops] == ["ab", "ba", "ba", "ba"]
    check_usage_matches_reservations(rt)


def test_exactly_full_is_admitted_and_one_more_bit_is_refused_with_the_bottleneck(rt: Runtime) -> None:
    reserve(rt, kind="oneway", src="h3", dst="h2", rate="700M")
    last = reserve(rt, kind="oneway", src="h3", dst="h2", rate="300M")
    assert last.legs[0].nodes == ("h3", "s1", "s2", "h2")  # h2's link is now exactly full
    with pytest.raises(Conflict) as exc:
        reserve(rt, kind="oneway", src="h1", dst="h2", rate=1, start="+30m")
    err = exc.value.to_dict()
    assert (err["code"], err["link"], err["direction"]) == ("insufficient_capacity", "h2-s2", "ba")
    assert (err["needed"], err["available"]) == (1, 0)
    assert err["when"] == "2026-12-01T12:30:00Z"  # the instant of the peak, within the asked window
    check_usage_matches_reservations(rt)


def test_touching_windows_share_the_capacity(rt: Runtime, clock: FakeClock) -> None:
    reserve(rt, kind="oneway", src="h1", dst="h2", rate="1G", start=at(clock, hours=1), end=at(clock, hours=2))
    reserve(rt, kind="oneway", src="h1", dst="h2", rate="1G", start=at(clock, hours=2), end=at(clock, hours=3))
    reserve(rt, kind="oneway", src="h1", dst="h2", rate="1G", start="now", end=at(clock, hours=1))
    with pytest.raises(Conflict):  # nested inside the first one
        reserve(rt, kind="oneway", src="h1", dst="h2", rate="1", start=at(clock, minutes=70),
                end=at(clock, minutes=80))


def test_steering_admits_every_segment_and_counts_shared_hops_twice(rt: Runtime) -> None:
    r = reserve(rt, kind="steering", src="h1", dst="h2", via=["m1"], rate="400M")
    assert [leg.nodes for leg in r.legs] == [("h1", "s1", "s2", "m1"), ("m1", "s2", "h2")]
    # m1-s2 carries the flow in (s2→m1) and out (m1→s2): two directions, 400M each.
    cap = rt.reservations.cap
    t = rt.reservations.now_us()
    hop = cap.topology.hop_index
    assert cap.use[hop[("m1-s2", "ba")]].usage_at(t) == 400_000_000
    assert cap.use[hop[("m1-s2", "ab")]].usage_at(t) == 400_000_000
    with pytest.raises(InvalidInput) as exc:
        reserve(rt, kind="steering", src="h1", dst="h2", via=["s3"], rate="1M")
    assert exc.value.code == "not_a_middlebox"


def test_mirror_is_admitted_from_the_mirroring_switch_to_the_collector(rt: Runtime) -> None:
    r = reserve(rt, kind="mirror", src="h1", collector="c1", rate="100M")
    assert r.legs[0].nodes == ("s1", "s3", "c1") and r.dst == "c1"
    with pytest.raises(InvalidInput) as exc:  # h3 has two ports: which one is mirrored?
        reserve(rt, kind="mirror", src="h3", collector="c1", rate="100M")
    assert exc.value.code == "port_required"
    r = reserve(rt, kind="mirror", src="h3", port="h3-s3", collector="c1", rate="100M")
    assert r.legs[0].nodes == ("s3", "c1")


def test_multihomed_host_uses_its_other_switch(rt: Runtime) -> None:
    reserve(rt, kind="oneway", src="h3", dst="c1", rate="1G")  # h3→s3→c1 takes all of h3-s3
    r = reserve(rt, kind="oneway", src="h1", dst="h3", rate="500M")
    assert r.legs[0].nodes == ("h1", "s1", "h3")
    r = reserve(rt, kind="oneway", src="h3", dst="h2", rate="500M")
    assert r.legs[0].nodes == ("h3", "s1", "s2", "h2")


@pytest.mark.parametrize(("raw", "code"), [
    ({"src": "nope", "dst": "h2", "rate": "1M"}, "unknown_node"),
    ({"src": "h1", "dst": "h1", "rate": "1M"}, "same_endpoints"),
    ({"src": "h1", "dst": "h2", "rate": 0}, "invalid_rate"),
    ({"src": "h1", "dst": "h2", "rate": -5}, "invalid_rate"),
    ({"src": "h1", "dst": "h2", "rate": "9P"}, "invalid_rate"),
    ({"src": "h1", "dst": "h2", "rate": "fast"}, "invalid_rate"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "now"}, "invalid_window"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "start": "2026-12-01T10:00:00Z"}, "start_in_past"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "+400d"}, "beyond_horizon"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "2026-12-01T14:00:00"}, "invalid_time"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "end": "tomorrow"}, "invalid_time"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "dscp": 64}, "invalid_match"),
    ({"src": "h1", "dst": "h2", "rate": "1M", "dst_port": 80}, "invalid_match"),
    ({"kind": "oneway", "src": "h1", "dst": "h2", "rate": "1M", "rate_in": "1M"}, "invalid_rate"),
    ({"kind": "steering", "src": "h1", "dst": "h2", "rate": "1M"}, "invalid_via"),
    ({"kind": "teleport", "src": "h1", "dst": "h2", "rate": "1M"}, "invalid_kind"),
])
def test_bad_requests_are_refused_and_change_nothing(rt: Runtime, raw: dict[str, Any], code: str) -> None:
    before = (rt.revision, usage_of(rt))
    with pytest.raises(InvalidInput) as exc:
        reserve(rt, **raw)
    assert exc.value.code == code
    assert (rt.revision, usage_of(rt)) == before


def test_a_start_just_past_is_taken_as_now(rt: Runtime, clock: FakeClock) -> None:
    r = reserve(rt, src="h1", dst="h2", rate="1M", start=at(clock, seconds=-30))
    assert r.start == rt.reservations.now_us() and r.state == "active"


def test_no_built_in_end_of_time(db_url: str, clock: FakeClock) -> None:
    clock.now = clock.now.replace(year=2090)
    with open_rt(db_url, clock) as rt:
        rt.run(rt.topology.set_topology_op(square()))
        r = reserve(rt, src="h1", dst="h2", rate="1M", start="+300d", end="+301d")
        assert r.state == "pending" and r.body()["end"].startswith("2091-")


# ---------------------------------------------------------------- lifecycle


def test_reservations_activate_and_expire_on_time_with_an_event_each(rt: Runtime, clock: FakeClock) -> None:
    r = reserve(rt, src="h1", dst="h2", rate="1G", start="+10m", end="+70m")
    assert r.state == "pending"
    sched = rt.reservations.scheduler
    assert sched.next_due == r.start
    clock.advance(minutes=9, seconds=59)
    sched.run_due()
    assert rt.reservations.get(r.id).state == "pending"
    clock.advance(seconds=1)
    sched.run_due()
    assert rt.reservations.get(r.id).state == "active"
    clock.advance(hours=1)
    sched.run_due()
    done = rt.reservations.get(r.id)
    assert done.state == "expired" and done.ended_at == r.end
    assert [e[1:] for e in events_of(rt) if e[0] == r.id] == [
        ("created", "pending"), ("updated", "active"), ("updated", "expired")]
    assert not any(rt.reservations.cap.use)  # an ended reservation holds nothing


def test_ended_reservations_are_purged_after_the_retention(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock, reservation_retention=3600) as rt:
        rt.run(rt.topology.set_topology_op(square()))
        r = reserve(rt, src="h1", dst="h2", rate="1M", request_id="once")
        rt.run(rt.reservations.cancel_op(r.id))
        clock.advance(minutes=59)
        rt.reservations.scheduler.run_due()
        assert rt.reservations.get(r.id).state == "cancelled"
        clock.advance(minutes=1)
        rt.reservations.scheduler.run_due()
        with pytest.raises(NotFound):
            rt.reservations.get(r.id)
        assert events_of(rt)[-1][:2] == (r.id, "deleted")
        again = reserve(rt, src="h1", dst="h2", rate="1M", request_id="once")  # the request id is free again
        assert again.id != r.id


def test_cancel_frees_the_capacity_at_once(rt: Runtime) -> None:
    r = reserve(rt, kind="oneway", src="h1", dst="h2", rate="1G")
    with pytest.raises(Conflict):
        reserve(rt, kind="oneway", src="h1", dst="h2", rate="1G")
    cancelled = rt.run(rt.reservations.cancel_op(r.id))
    assert cancelled.state == "cancelled"
    assert rt.run(rt.reservations.cancel_op(r.id)).revision == cancelled.revision  # idempotent
    reserve(rt, kind="oneway", src="h1", dst="h2", rate="1G")
    check_usage_matches_reservations(rt)


def test_modify_applies_fully_or_leaves_the_reservation_as_it_was(rt: Runtime, clock: FakeClock) -> None:
    r = reserve(rt, kind="oneway", src="h1", dst="h2", rate="600M", start="+1h", end="+2h")
    reserve(rt, kind="oneway", src="h1", dst="h2", rate="600M", start="+2h", end="+3h")
    before = (rt.reservations.get(r.id), usage_of(rt), rt.revision)
    for changes in ({"end": "+150m"}, {"rate": "1.1G"}, {"start": "+30m", "end": "+2h30m"}):
        with pytest.raises(Conflict):
            rt.run(rt.reservations.modify_op(r.id, changes))
        assert (rt.reservations.get(r.id), usage_of(rt), rt.revision) == before
    longer = rt.run(rt.reservations.modify_op(r.id, {"start": "+30m", "rate": "400M"}))[0]
    assert (longer.start, longer.rate_out) == (r.start - 30 * 60 * 10**6, 400_000_000)
    check_usage_matches_reservations(rt)
    shorter = rt.run(rt.reservations.modify_op(r.id, {"end": "+40m"}))[0]
    assert shorter.end == rt.reservations.now_us() + 40 * 60 * 10**6
    check_usage_matches_reservations(rt)


def test_an_active_reservation_keeps_its_start_and_can_be_extended(rt: Runtime, clock: FakeClock) -> None:
    r = reserve(rt, src="h1", dst="h2", rate="100M")
    clock.advance(minutes=10)
    with pytest.raises(InvalidInput) as exc:
        rt.run(rt.reservations.modify_op(r.id, {"start": "+5m"}))
    assert exc.value.code == "start_immutable"
    longer = rt.run(rt.reservations.modify_op(r.id, {"end": "+2h", "rate_in": 0}))[0]
    assert longer.start == r.start and [leg.name for leg in longer.legs] == ["out"]
    check_usage_matches_reservations(rt)


# ---------------------------------------------------------------- topology changes


# ---------------------------------------------------------------- limits


# ---------------------------------------------------------------- idempotency and concurrency


def test_a_retried_create_never_books_twice(rt: Runtime) -> None:
    raw = {"kind": "oneway", "src": "h1", "dst": "h2", "rate": "600M", "start": "now", "end": "+1h",
           "request_id": "req-1"}
    first, created, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(raw)))
    again, created_again, _ = rt.run(rt.reservations.create_op(ReservationRequest.parse(raw)))
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict) as exc:
        rt.run(rt.reservations.create_op(ReservationRequest.parse({**raw, "rate": "100M"})))
    assert exc.value.code == "request_id_conflict"
    # another project's request id does not collide
    rt.run(rt.reservations.create_op(ReservationRequest.parse({**raw, "rate": "100M"}),
                                     principal=Principal("member", project="red")))


def test_concurrent_requests_for_the_last_capacity_exactly_one_wins(rt: Runtime) -> None:
    n = 16
    barrier = threading.Barrier(n)

    def one(i: int) -> str:
        barrier.wait()
        try:
            reserve(rt, kind="oneway", src="h1", dst="h2", rate="600M")
        except Conflict as exc:
            return exc.code
        return "ok"

    with ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(one, range(n)))
    assert outcomes.count("ok") == 1 and outcomes.count("insufficient_capacity") == n - 1
    check_usage_matches_reservations(rt)


def test_identical_concurrent_retries_book_once(rt: Runtime) -> None:
    raw = {"kind": "oneway", "src": "h1", "dst": "h2", "rate": "10M", "start": "now", "end": "+1h",
           "request_id": "same"}
    futures = [rt.writer.submit(rt.reservations.create_op(ReservationRequest.parse(raw))) for _ in range(20)]
    results = [f.result(10) for f in futures]
    assert len({r.id for r, _, _ in results}) == 1 and sum(created for _, created, _ in results) == 1


# ---------------------------------------------------------------- restart


def test_restart_keeps_states_timers_and_identical_usage(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock) as rt:
        rt.run(rt.topology.set_topology_op(square()))
        rt.run(rt.topology.set_limit_op("blue", max_bps="2G"))
        active = reserve(rt, src="h1", dst="h2", rate="300M", end="+2h")
        pending = reserve(rt, kind="steering", src="h3", dst="h2", via=["m1"], rate="200M", start="+1h",
                          end="+3h", project="blue")
        later = reserve(rt, kind="mirror", src="h1", collector="c1", rate="50M", start="+30m", end="+90m")
        cancelled = reserve(rt, kind="oneway", src="h1", dst="c1", rate="1M")
        rt.run(rt.reservations.cancel_op(cancelled.id))
        usage = usage_of(rt)
        views = {r.id: r for r in rt.reservations.list()[0]}
        due = rt.reservations.scheduler.next_due
        topo = rt.topology.body()
    with open_rt(db_url, clock) as rt:
        svc = rt.reservations
        assert {r.id: r for r in svc.list()[0]} == views
        assert usage_of(rt) == usage and rt.topology.body() == topo
        assert svc.scheduler.next_due == due == later.start
        assert rt.topology.get_limit("blue").max_bps == 2_000_000_000
        check_usage_matches_reservations(rt)
    clock.advance(hours=1, minutes=30)  # down while two instants pass: applied before the runtime is ready
    with open_rt(db_url, clock) as rt:
        svc = rt.reservations
        assert (svc.get(active.id).state, svc.get(pending.id).state, svc.get(later.id).state) == (
            "active", "active", "expired")
        assert svc.scheduler.next_due == active.end
        check_usage_matches_reservations(rt)


def test_a_failed_commit_leaves_the_ledgers_as_they_were(rt: Runtime) -> None:
    reserve(rt, kind="oneway", src="h1", dst="h2", rate="100M")
    before = usage_of(rt)
    with statements_fail(rt, "INSERT INTO reservations"), pytest.raises(Unavailable) as exc:
        reserve(rt, kind="oneway", src="h1", dst="h2", rate="100M")
    assert exc.value.code == "store_error"
    assert usage_of(rt) == before
    reserve(rt, kind="oneway", src="h1", dst="h2", rate="900M")  # nothing phantom holds the capacity


def test_a_degraded_reservation_inside_its_window_can_be_modified_back(rt: Runtime, clock: FakeClock) -> None:
    r = reserve(rt, kind="oneway", src="h1", dst="h2", rate="100M")
    clock.advance(minutes=10)
    rt.run(rt.topology.set_topology_op(shrink(SQUARE, "h1-s1", "10M")))
    assert rt.reservations.get(r.id).state == "degraded"
    back = rt.run(rt.reservations.modify_op(r.id, {"rate": "5M", "end": "+30m"}))[0]
    assert (back.state, back.start, back.rate_out) == ("active", r.start, 5_000_000)
    check_usage_matches_reservations(rt)


def test_rates_and_shares_print_exactly() -> None:
    from fractions import Fraction

    from tenure.domain.units import format_rate, parse_rate, share_text

    for bps in (1, 999, 20_000, 100_000_000, 125_000_000, 1_500_000_000, 10**10, 40 * 10**9):
        assert parse_rate(format_rate(bps)) == bps
    assert (format_rate(10**8), format_rate(10**10)) == ("100M", "10G")
    assert (share_text(Fraction(1)), share_text(Fraction(1, 4)), share_text(Fraction(0))) == ("100%", "25%", "0%")


def test_timers_grow_with_reservations_not_with_changes(rt: Runtime) -> None:
    r = reserve(rt, kind="oneway", src="h1", dst="h2", rate="1M", end="+300d")
    for i in range(300):
        rt.run(rt.reservations.modify_op(r.id, {"labels": {"n": str(i)}}))
    for i in range(100):
        rt.run(rt.reservations.modify_op(r.id, {"end": f"+{200 + i % 50}d"}))
    assert len(rt.reservations.scheduler) <= 1024 + 3
    assert rt.reservations.scheduler.next_due == rt.reservations.get(r.id).end


def test_exact_shares_survive_a_restart(db_url: str, clock: FakeClock) -> None:
    doc = {"nodes": [{"id": "a", "kind": "host"}, {"id": "b", "kind": "host"}],
           "links": [{"id": "a-b", "a": "a", "b": "b", "capacity": "7G",
                      "headroom": "14.2857142857142857142857142857%"}]}
    with open_rt(db_url, clock) as rt:
        rt.run(rt.topology.set_topology_op(Topology.parse(doc)))
        usable = list(rt.reservations.cap.topology.usable)
        reserve(rt, kind="oneway", src="a", dst="b", rate=usable[0])
    with open_rt(db_url, clock) as rt:
        assert rt.reservations.cap.topology.usable == usable
        check_usage_matches_reservations(rt)
