"""Capacity: ledgers per hop and per (project, hop), limits, admission, refusals, alarms, carry-over.

Admission is ``route`` then ``book`` (what the reservation service does for
each leg). The heart of this file is a stateful comparison against a
brute-force model on a small topology with small capacities, so that windows
and rates collide all the time: the model keeps the list of bookings and sums
them instant by instant, and enumerates every simple path (through switches
only) to know whether a request fits, how short the shortest fitting path is,
and how wide the widest. After every step no hop carries more than its usable
capacity at any instant, no project more than its limit, a refusal changed
nothing and names the first hop of the static shortest path that does not fit,
and unbooking restores the ledgers exactly. Focused examples then pin the shapes
on which schedulers overcommit (nested and touching windows, equal bookings
starting together), the refusal's details, limits, alarms, usage steps and the
carry-over of ledgers across a topology change.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tenure.domain.capacity import Capacity, Limit
from tenure.domain.errors import Conflict, InvalidInput
from tenure.domain.ledger import Ledger
from tenure.domain.reservation import Leg
from tenure.domain.topology import Link, Node, Topology
from tenure.domain.units import iso

# h1 ─ s1 ═ s2 ─ h2, a longer way s1 ─ s3 ─ s2 (s1-s3 has 20% headroom), h3 on s1 and s3 (multi-homed),
# m1 a middlebox on s2. Capacities are tiny so that a few bookings fill a hop.
SMALL: dict[str, Any] = {
    "nodes": [
        {"id": "h1", "kind": "host"}, {"id": "h2", "kind": "host"}, {"id": "h3", "kind": "host"},
        {"id": "s1", "kind": "switch"}, {"id": "s2", "kind": "switch"}, {"id": "s3", "kind": "switch"},
        {"id": "m1", "kind": "middlebox"},
    ],
    "links": [
        {"id": "h1-s1", "a": "h1", "b": "s1", "capacity": 10},
        {"id": "h2-s2", "a": "h2", "b": "s2", "capacity": 10},
        {"id": "h3-s1", "a": "h3", "b": "s1", "capacity": 8},
        {"id": "h3-s3", "a": "h3", "b": "s3", "capacity": 8},
        {"id": "s1-s2", "a": "s1", "b": "s2", "capacity_ab": 6, "capacity_ba": 4},
        {"id": "s1-s3", "a": "s1", "b": "s3", "capacity": 5, "headroom": "20%"},
        {"id": "s3-s2", "a": "s3", "b": "s2", "capacity": 5},
        {"id": "m1-s2", "a": "m1", "b": "s2", "capacity": 6},
    ],
}
TRANSIT = {n["id"] for n in SMALL["nodes"] if n["kind"] in ("switch", "gateway")}
ENDS: dict[tuple[str, str], tuple[str, str]] = {}  # hop → (from, to), straight from the document
CAPACITY: dict[tuple[str, str], int] = {}
USABLE: dict[tuple[str, str], int] = {}
for _lk in SMALL["links"]:
    for _d, (_u, _v) in (("ab", (_lk["a"], _lk["b"])), ("ba", (_lk["b"], _lk["a"]))):
        ENDS[(_lk["id"], _d)] = (_u, _v)
        CAPACITY[(_lk["id"], _d)] = _lk.get("capacity", _lk.get(f"capacity_{_d}"))
USABLE.update(CAPACITY)
USABLE[("s1-s3", "ab")] = USABLE[("s1-s3", "ba")] = 4  # 5 less 20%

LIMITS = {"a": Limit("a", max_bps=5), "b": Limit("b", share=Fraction(1, 2))}
PROJECTS = (None, "a", "b", "c")  # c has no limit; None is checked against capacity only


def limit_of(project: str | None, key: tuple[str, str]) -> int | None:
    if project == "a":
        return 5
    if project == "b":
        return CAPACITY[key] // 2
    return None


def simple_paths(src: str, dst: str) -> list[tuple[tuple[str, str], ...]]:
    """Every simple path from src to dst whose inner nodes are switches, by brute force over the document."""
    out: list[tuple[tuple[str, str], ...]] = []

    def walk(node: str, visited: set[str], path: tuple[tuple[str, str], ...]) -> None:
        for key, (u, v) in ENDS.items():
            if u != node or v in visited:
                continue
            if v == dst:
                out.append((*path, key))
            elif v in TRANSIT:
                walk(v, visited | {v}, (*path, key))

    walk(src, {src}, ())
    return out


Booking = tuple[tuple[tuple[str, str], ...], int, int, int, str | None]


class Model:
    """The bookings, summed instant by instant."""

    def __init__(self) -> None:
        self.bookings: list[Booking] = []

    def usage(self, key: tuple[str, str], t: int) -> int:
        return sum(r for path, s, e, r, _ in self.bookings if key in path and s <= t < e)

    def held(self, project: str, key: tuple[str, str], t: int) -> int:
        return sum(r for path, s, e, r, p in self.bookings if p == project and key in path and s <= t < e)

    def peak_at(self, values: Iterator[tuple[int, int]]) -> tuple[int, int]:
        best = max(values, key=lambda tv: (tv[1], -tv[0]))  # the highest, first reached
        return best[1], best[0]

    def usage_peak_at(self, key: tuple[str, str], start: int, end: int) -> tuple[int, int]:
        return self.peak_at((t, self.usage(key, t)) for t in range(start, end))

    def held_peak_at(self, project: str, key: tuple[str, str], start: int, end: int) -> tuple[int, int]:
        return self.peak_at((t, self.held(project, key, t)) for t in range(start, end))

    def residual(self, key: tuple[str, str], start: int, end: int, project: str | None) -> int:
        free = USABLE[key] - self.usage_peak_at(key, start, end)[0]
        cap = limit_of(project, key)
        if cap is not None:
            assert project is not None
            free = min(free, cap - self.held_peak_at(project, key, start, end)[0])
        return free

    def fits(self, path: tuple[tuple[str, str], ...], start: int, end: int, rate: int, project: str | None) -> bool:
        return all(self.residual(key, start, end, project) >= rate for key in path)


def state(cap: Capacity) -> tuple[Any, ...]:
    """Everything a booking may change: each hop's steps and each holding's."""
    return (tuple(led.steps() for led in cap.use),
            {key: led.steps() for key, led in cap.held.items()})


class AdmissionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.topo = Topology.parse(SMALL)
        self.cap = Capacity(self.topo, dict(LIMITS))
        self.model = Model()

    def hops(self, path: tuple[tuple[str, str], ...]) -> list[int]:
        return [self.topo.hop_index[key] for key in path]

    @rule(
        ends=st.sampled_from([(a, b) for a in ("h1", "h2", "h3", "m1", "s3") for b in ("h1", "h2", "h3", "m1")
                              if a != b]),
        start=st.integers(min_value=0, max_value=11),
        length=st.integers(min_value=1, max_value=6),
        rate=st.integers(min_value=1, max_value=6),
        project=st.sampled_from(PROJECTS),
        mode=st.sampled_from(("shortest", "widest")),
    )
    def admit(self, ends: tuple[str, str], start: int, length: int, rate: int, project: str | None,
              mode: str) -> None:
        src, dst = ends
        end = start + length
        leg = Leg("out", src, dst, rate)
        candidates = simple_paths(src, dst)
        fitting = [p for p in candidates if self.model.fits(p, start, end, rate, project)]
        before = state(self.cap)
        try:
            hops = self.cap.route(leg, start, end, project, mode=mode)
        except Conflict as exc:
            event(f"refused: {exc.code}")
            assert not fitting, (exc.to_dict(), fitting)
            assert state(self.cap) == before  # a refused admission changes nothing
            self.check_refusal(exc, leg, start, end, project, candidates)
            return
        event(f"admitted: {mode}, {'the only' if len(fitting) == 1 else 'one of several'} path that fits")
        path = tuple(self.topo.hops[h] for h in hops)
        assert path in candidates, path  # chained, simple, through switches only
        assert self.model.fits(path, start, end, rate, project), path
        assert state(self.cap) == before  # routing books nothing
        if mode == "shortest":
            assert len(path) == min(len(p) for p in fitting)
        else:
            def width(p: tuple[tuple[str, str], ...]) -> int:
                return min(self.model.residual(key, start, end, project) for key in p)

            best = max(width(p) for p in fitting)
            assert width(path) == best
            assert len(path) == min(len(p) for p in fitting if width(p) == best)
        self.cap.book(hops, start, end, rate, project)
        self.model.bookings.append((path, start, end, rate, project))

    def check_refusal(self, exc: Conflict, leg: Leg, start: int, end: int, project: str | None,
                      candidates: list[tuple[tuple[str, str], ...]]) -> None:
        if not candidates:
            assert exc.code == "no_path" and exc.details == {"src": leg.src, "dst": leg.dst}
            return
        topo = self.topo
        static = topo.finder.shortest(topo.index[leg.src], topo.index[leg.dst], lambda h: True)
        assert static is not None
        static_path = tuple(topo.hops[h] for h in static)
        assert static_path in candidates and len(static_path) == min(len(p) for p in candidates)
        for key in static_path:  # the first hop of the static shortest path that does not fit is named
            peak, when = self.model.usage_peak_at(key, start, end)
            if peak + leg.rate > USABLE[key]:
                assert exc.code == "insufficient_capacity"
                assert exc.details == {"link": key[0], "direction": key[1], "needed": leg.rate,
                                       "available": max(USABLE[key] - peak, 0), "when": iso(when), "leg": "out"}
                assert key[0] in exc.message
                return
            limit = limit_of(project, key)
            if limit is not None:
                assert project is not None
                held, when = self.model.held_peak_at(project, key, start, end)
                if held + leg.rate > limit:
                    assert exc.code == "limit_exceeded"
                    assert exc.details == {"link": key[0], "direction": key[1], "limit": limit, "held": held,
                                           "needed": leg.rate, "when": iso(when), "leg": "out", "project": project}
                    return
        raise AssertionError(f"every hop of {static_path} fits, yet {exc.to_dict()}")

    @precondition(lambda self: self.model.bookings)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(min_value=0, max_value=len(self.model.bookings) - 1))
        path, start, end, rate, project = self.model.bookings.pop(i)
        self.cap.unbook(self.hops(path), start, end, rate, project)

    @rule(
        ends=st.sampled_from([("h1", "h2"), ("h3", "h2"), ("h2", "m1"), ("s3", "h1")]),
        data=st.data(),
        start=st.integers(min_value=-3, max_value=15),
        length=st.integers(min_value=1, max_value=8),
        rate=st.integers(min_value=1, max_value=20),
        project=st.sampled_from(PROJECTS),
    )
    def unbook_restores_exactly(self, ends: tuple[str, str], data: st.DataObject, start: int, length: int,
                                rate: int, project: str | None) -> None:
        """Any booking (checked or not), unbooked at once, leaves every ledger as it was, breakpoints included."""
        path = data.draw(st.sampled_from(simple_paths(*ends)))
        before = state(self.cap)
        self.cap.book(self.hops(path), start, start + length, rate, project)
        assert state(self.cap) != before
        self.cap.unbook(self.hops(path), start, start + length, rate, project)
        assert state(self.cap) == before

    @precondition(lambda self: self.model.bookings)
    @rule()
    def cancel_everything(self) -> None:
        while self.model.bookings:
            path, start, end, rate, project = self.model.bookings.pop()
            self.cap.unbook(self.hops(path), start, end, rate, project)
        assert not any(self.cap.use) and self.cap.held == {}

    @invariant()
    def ledgers_are_the_model_and_never_over_usable(self) -> None:
        for key, h in self.topo.hop_index.items():
            for t in range(-1, 19):
                used = self.model.usage(key, t)
                assert self.cap.use[h].usage_at(t) == used, (key, t)
                assert used <= self.topo.usable[h] == USABLE[key], ("over-committed", key, t)
            if not any(key in b[0] for b in self.model.bookings):
                assert not self.cap.use[h], key

    @invariant()
    def holdings_are_the_model_and_never_over_the_limit(self) -> None:
        holders = {(p, self.topo.hop_index[key]) for path, _, _, _, p in self.model.bookings if p is not None
                   for key in path}
        assert set(self.cap.held) == holders  # an emptied holding is forgotten
        for (project, h), led in self.cap.held.items():
            key = self.topo.hops[h]
            limit = limit_of(project, key)
            for t in range(-1, 19):
                held = self.model.held(project, key, t)
                assert led.usage_at(t) == held, (project, key, t)
                assert limit is None or held <= limit, ("over the limit", project, key, t)


TestAdmissionAgainstModel = AdmissionMachine.TestCase
TestAdmissionAgainstModel.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)


# -- helpers for the examples ----------------------------------------------------


def small(limits: dict[str, Limit] | None = None) -> Capacity:
    return Capacity(Topology.parse(SMALL), dict(limits or {}))


def line(*capacities: int, **extra: Any) -> Capacity:
    """h1 ─ s1 ─ ... ─ h2: one path only; link i is ``l{i}``."""
    n = len(capacities)
    names = ["h1", *(f"s{i}" for i in range(1, n)), "h2"]
    doc = {"nodes": [{"id": v, "kind": "switch" if v.startswith("s") else "host"} for v in names],
           "links": [{"id": f"l{i}", "a": names[i], "b": names[i + 1], "capacity": c}
                     for i, c in enumerate(capacities)], **extra}
    return Capacity(Topology.parse(doc), {})


def hops_of(cap: Capacity, *keys: tuple[str, str]) -> list[int]:
    return [cap.topology.hop_index[key] for key in keys]


def route_names(cap: Capacity, hops: list[int]) -> list[str]:
    return cap.topology.path_doc(hops)["nodes"]


def refusal(cap: Capacity, leg: Leg, start: int, end: int, project: str | None = None) -> Conflict:
    before = state(cap)
    with pytest.raises(Conflict) as info:
        cap.route(leg, start, end, project)
    assert state(cap) == before
    return info.value


H1_H2 = [("h1-s1", "ab"), ("s1-s2", "ab"), ("h2-s2", "ba")]


# -- windows ---------------------------------------------------------------------


def test_nested_window_cannot_overcommit_a_hop() -> None:
    """A booking wholly inside the request touches neither of its ends and still counts."""
    cap = line(10, 10)
    hops = cap.route(Leg("out", "h1", "h2", 7), 40, 50, None)
    cap.book(hops, 40, 50, 7, None)
    exc = refusal(cap, Leg("out", "h1", "h2", 5), 0, 100)
    assert exc.details["available"] == 3 and exc.details["when"] == iso(40)
    assert cap.route(Leg("out", "h1", "h2", 5), 0, 40, None) == hops  # before it
    assert cap.route(Leg("out", "h1", "h2", 5), 50, 100, None) == hops  # after it


def test_touching_windows_do_not_overlap() -> None:
    cap = line(10, 10)
    hops = cap.route(Leg("out", "h1", "h2", 10), 0, 10, None)
    cap.book(hops, 0, 10, 10, None)
    assert cap.route(Leg("out", "h1", "h2", 10), 10, 20, None) == hops
    cap.book(hops, 10, 20, 10, None)
    assert cap.route(Leg("out", "h1", "h2", 10), -10, 0, None) == hops
    refusal(cap, Leg("out", "h1", "h2", 1), 9, 11)


def test_equal_bookings_starting_together_both_count() -> None:
    cap = line(10, 10)
    for _ in range(2):
        cap.book(cap.route(Leg("out", "h1", "h2", 5), 0, 10, None), 0, 10, 5, None)
    exc = refusal(cap, Leg("out", "h1", "h2", 1), 5, 6)
    assert exc.details["available"] == 0


def test_each_direction_of_a_link_is_booked_on_its_own() -> None:
    cap = small()
    hops = cap.route(Leg("out", "h1", "h2", 6), 0, 10, None)
    cap.book(hops, 0, 10, 6, None)
    back = cap.route(Leg("in", "h2", "h1", 4), 0, 10, None)  # s2 → s1 is its own 4, untouched
    assert route_names(cap, back) == ["h2", "s2", "s1", "h1"]


# -- routing ---------------------------------------------------------------------


def test_route_takes_the_fewest_hops_that_fit() -> None:
    cap = small()
    hops = cap.route(Leg("out", "h1", "h2", 4), 0, 10, None)
    assert [cap.topology.hops[h] for h in hops] == H1_H2
    cap.book(hops, 0, 10, 4, None)
    longer = cap.route(Leg("out", "h1", "h2", 4), 0, 10, None)  # s1 → s2 has 2 left: around by s3
    assert route_names(cap, longer) == ["h1", "s1", "s3", "s2", "h2"]


def test_a_later_leg_sees_the_earlier_one() -> None:
    cap = small()
    legs = [Leg("seg0", "h1", "h2", 4), Leg("seg1", "h1", "h2", 4), Leg("seg2", "h1", "h2", 4)]
    first = cap.route(legs[0], 0, 10, None)
    cap.book(first, 0, 10, 4, None)
    second = cap.route(legs[1], 0, 10, None)
    cap.book(second, 0, 10, 4, None)
    assert first != second
    exc = refusal(cap, legs[2], 0, 10)  # h1 → s1 carries 8 of 10
    assert exc.details == {"link": "h1-s1", "direction": "ab", "needed": 4, "available": 2, "when": iso(0),
                           "leg": "seg2"}


def test_usable_capacity_holds_back_the_headroom() -> None:
    cap = line(10, 10, headroom="25%")  # usable 7
    assert cap.fits(hops_of(cap, ("l0", "ab"), ("l1", "ab")), 0, 10, 7, None)
    assert not cap.fits(hops_of(cap, ("l0", "ab"), ("l1", "ab")), 0, 10, 8, None)
    assert refusal(cap, Leg("out", "h1", "h2", 8), 0, 10).details["available"] == 7


def test_widest_mode_takes_the_path_with_the_most_room() -> None:
    cap = small()
    via_s1 = cap.route(Leg("out", "h3", "h2", 1), 0, 10, None, mode="widest")
    assert route_names(cap, via_s1) == ["h3", "s1", "s2", "h2"]  # bottleneck 6, against 5 by s3
    cap.book(via_s1, 0, 10, 3, None)
    via_s3 = cap.route(Leg("out", "h3", "h2", 1), 0, 10, None, mode="widest")
    assert route_names(cap, via_s3) == ["h3", "s3", "s2", "h2"]  # now 5 against 3
    assert cap.route(Leg("out", "h3", "h2", 1), 10, 20, None, mode="widest") == via_s1  # free again later


def test_alternatives_list_the_paths_that_fit_by_length() -> None:
    cap = small()
    paths = cap.alternatives(Leg("out", "h1", "h2", 4), 0, 10, None, 5)
    assert [route_names(cap, p) for p in paths] == [["h1", "s1", "s2", "h2"], ["h1", "s1", "s3", "s2", "h2"]]
    cap.book(paths[0], 0, 10, 4, None)
    assert cap.alternatives(Leg("out", "h1", "h2", 4), 0, 10, None, 5) == [paths[1]]
    assert cap.alternatives(Leg("out", "h1", "h2", 7), 0, 10, None, 5) == []


def test_a_multi_homed_host_is_not_a_way_through() -> None:
    doc = {"nodes": [{"id": v, "kind": k} for v, k in (("h1", "host"), ("s1", "switch"), ("h3", "host"),
                                                        ("s3", "switch"), ("h2", "host"))],
           "links": [{"id": f"{a}-{b}", "a": a, "b": b, "capacity": 10}
                     for a, b in (("h1", "s1"), ("s1", "h3"), ("h3", "s3"), ("s3", "h2"))]}
    cap = Capacity(Topology.parse(doc), {})
    exc = refusal(cap, Leg("out", "h1", "h2", 1), 0, 10)
    assert exc.code == "no_path" and exc.details == {"src": "h1", "dst": "h2"}


def test_unknown_node_is_invalid_input() -> None:
    cap = small()
    for leg in (Leg("out", "ghost", "h2", 1), Leg("out", "h1", "ghost", 1)):
        with pytest.raises(InvalidInput) as info:
            cap.route(leg, 0, 10, None)
        assert info.value.code == "unknown_node" and info.value.details == {"node": "ghost"}


# -- refusals --------------------------------------------------------------------


def test_refusal_names_the_bottleneck_link() -> None:
    cap = line(10, 4, 10)
    cap.book(hops_of(cap, ("l1", "ab")), 5, 8, 3, None)
    exc = refusal(cap, Leg("out", "h1", "h2", 2), 0, 10)
    assert exc.code == "insufficient_capacity"
    assert exc.details == {"link": "l1", "direction": "ab", "needed": 2, "available": 1, "when": iso(5),
                           "leg": "out"}
    assert exc.message == (f"link l1 (ab) has 1 bit/s free at {iso(5)}; 2 bit/s are needed from h1 to h2")


def test_refusal_names_the_first_full_hop_of_the_shortest_path() -> None:
    cap = line(10, 4, 10)
    cap.book(hops_of(cap, ("l2", "ab")), 0, 10, 10, None)  # the last hop, into h2
    cap.book(hops_of(cap, ("l1", "ab")), 0, 10, 4, None)  # and the one before it
    exc = refusal(cap, Leg("out", "h1", "h2", 1), 0, 10)
    assert (exc.details["link"], exc.details["direction"]) == ("l1", "ab")
    exc = refusal(cap, Leg("in", "h2", "h1", 11), 0, 10)  # more than any hop could carry: the first one
    assert (exc.details["link"], exc.details["direction"], exc.details["available"]) == ("l2", "ba", 10)


def test_refusal_reports_when_the_peak_is_first_reached() -> None:
    cap = line(10, 10)
    hop = hops_of(cap, ("l0", "ab"))
    cap.book(hop, 2, 4, 6, None)
    cap.book(hop, 6, 9, 6, None)
    cap.book(hop, 7, 8, 1, None)
    exc = refusal(cap, Leg("out", "h1", "h2", 4), 0, 10)
    assert exc.details["available"] == 3 and exc.details["when"] == iso(7)
    exc = refusal(cap, Leg("out", "h1", "h2", 5), 3, 10)  # the window starts inside a booking
    assert exc.details["available"] == 3 and exc.details["when"] == iso(7)
    exc = refusal(cap, Leg("out", "h1", "h2", 5), 3, 7)
    assert exc.details["available"] == 4 and exc.details["when"] == iso(3)


def test_refusal_never_reports_negative_free_capacity() -> None:
    cap = line(10, 10)
    cap.book(hops_of(cap, ("l0", "ab")), 0, 10, 15, None)  # book() trusts its caller
    exc = refusal(cap, Leg("out", "h1", "h2", 1), 0, 10)
    assert exc.details["available"] == 0 and "has 0 bit/s free" in exc.message


def test_a_link_of_no_capacity_refuses_everything() -> None:
    cap = line(10, 0)
    exc = refusal(cap, Leg("out", "h1", "h2", 1), 0, 10)
    assert (exc.details["link"], exc.details["available"]) == ("l1", 0)


# -- limits ----------------------------------------------------------------------


def test_limit_counts_only_the_projects_own_holdings() -> None:
    cap = line(20, 20)
    cap.limits["a"] = Limit("a", max_bps=5)
    hops = hops_of(cap, ("l0", "ab"), ("l1", "ab"))
    cap.book(hops, 0, 10, 10, "b")  # another project's 10 leave a's 5 whole
    cap.book(hops, 0, 10, 3, None)
    assert cap.fits(hops, 0, 10, 5, "a")
    cap.book(hops, 0, 10, 5, "a")
    assert not cap.fits(hops, 0, 10, 1, "a")
    assert cap.fits(hops, 10, 20, 5, "a")  # the limit holds at each instant, not over all time
    assert cap.fits(hops, 0, 10, 2, None) and cap.fits(hops, 0, 10, 2, "b")  # capacity is 20: 2 left


def test_limit_refusal_names_the_project_and_the_hop() -> None:
    cap = line(20, 20)
    cap.limits["a"] = Limit("a", max_bps=5)
    hops = cap.route(Leg("out", "h1", "h2", 4), 0, 10, "a")
    cap.book(hops, 2, 10, 4, "a")
    exc = refusal(cap, Leg("out", "h1", "h2", 2), 0, 10, "a")
    assert exc.code == "limit_exceeded"
    assert exc.details == {"link": "l0", "direction": "ab", "limit": 5, "held": 4, "needed": 2, "when": iso(2),
                           "leg": "out", "project": "a"}
    assert "project a may hold at most 5 bit/s on link l0 (ab)" in exc.message
    assert cap.route(Leg("out", "h1", "h2", 2), 0, 10, None) == hops  # no project: no limit


def test_a_capacity_refusal_comes_before_a_limit_refusal_on_the_same_hop() -> None:
    cap = line(10, 10)
    cap.limits["a"] = Limit("a", max_bps=5)
    cap.book(hops_of(cap, ("l0", "ab")), 0, 10, 5, "a")
    cap.book(hops_of(cap, ("l0", "ab")), 0, 10, 5, None)
    assert refusal(cap, Leg("out", "h1", "h2", 1), 0, 10, "a").code == "insufficient_capacity"


def test_share_limit_is_a_share_of_each_hops_capacity() -> None:
    cap = small({"b": Limit("b", share=Fraction(1, 2))})
    ab, ba = hops_of(cap, ("s1-s2", "ab"), ("s1-s2", "ba"))  # 6 and 4
    assert cap.residual(ab, 0, 10, "b") == 3 and cap.residual(ba, 0, 10, "b") == 2
    assert cap.hop_ok(ab, 0, 10, 3, "b") and not cap.hop_ok(ab, 0, 10, 4, "b")
    assert cap.hop_ok(ab, 0, 10, 6, "c") and not cap.hop_ok(ab, 0, 10, 7, "c")  # no limit: capacity only
    assert Limit("b", share=Fraction(1, 3)).cap(10) == 3  # rounded down
    assert Limit("a", max_bps=7).cap(10**12) == 7


def test_residual_is_the_least_of_free_capacity_and_what_the_limit_leaves() -> None:
    cap = line(10, 10)
    cap.limits["a"] = Limit("a", max_bps=6)
    (h,) = hops_of(cap, ("l0", "ab"))
    assert cap.residual(h, 0, 10, None) == 10 and cap.residual(h, 0, 10, "a") == 6
    cap.book([h], 0, 5, 2, "a")
    cap.book([h], 3, 8, 5, None)
    assert cap.residual(h, 0, 10, None) == 3  # 7 used on [3, 5)
    assert cap.residual(h, 0, 10, "a") == 3
    assert cap.residual(h, 5, 10, "a") == 5  # a holds nothing there; 5 used by others
    assert cap.residual(h, 8, 10, "a") == 6


def test_limit_body() -> None:
    assert Limit("a", max_bps=5, revision=3, updated_at=0).body() == {
        "project": "a", "max": 5, "share": None, "revision": 3, "updated_at": "1970-01-01T00:00:00Z"}
    assert Limit("b", share=Fraction(1, 8)).body()["share"] == "12.5%"


# -- booking ---------------------------------------------------------------------


def test_unbook_restores_the_ledgers_and_forgets_the_holding() -> None:
    cap = small({"a": Limit("a", max_bps=5)})
    hops = hops_of(cap, *H1_H2)
    cap.book(hops, 0, 10, 3, "a")
    cap.book(hops, 5, 15, 2, None)
    assert set(cap.held) == {("a", h) for h in hops}
    cap.unbook(hops, 0, 10, 3, "a")
    assert cap.held == {}
    assert all(cap.use[h].steps() == [(5, 15, 2), (15, None, 0)] for h in hops)
    cap.unbook(hops, 5, 15, 2, None)
    assert not any(cap.use)


def test_book_legs_books_and_releases_routed_legs_and_skips_links_that_are_gone() -> None:
    cap = small()
    legs = [Leg("out", "h1", "h2", 3, tuple(H1_H2)),
            Leg("in", "h2", "h1", 2, (("h2-s2", "ab"), ("s1-s2", "ba"), ("h1-s1", "ba"))),
            Leg("seg9", "h1", "h2", 1, (("gone", "ab"), ("h2-s2", "ba")))]
    cap.book_legs(legs, 0, 10, "a")
    topo = cap.topology
    assert cap.use[topo.hop_index[("h2-s2", "ba")]].usage_at(0) == 3  # not 4: the third leg is skipped
    assert cap.use[topo.hop_index[("s1-s2", "ba")]].usage_at(0) == 2
    assert len(cap.held) == 6
    cap.book_legs(legs, 0, 10, "a", sign=-1)
    assert not any(cap.use) and cap.held == {}


BOOKINGS = st.lists(
    st.tuples(st.sampled_from(simple_paths("h1", "h2") + simple_paths("h3", "m1")),
              st.integers(min_value=-5, max_value=20), st.integers(min_value=1, max_value=10),
              st.integers(min_value=1, max_value=5), st.sampled_from(PROJECTS)),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(BOOKINGS)
def test_load_builds_the_same_ledgers_as_booking_one_by_one(items: list[Any]) -> None:
    one_by_one, at_once = small(), small()
    reservations = []
    for path, start, length, rate, project in items:
        one_by_one.book([one_by_one.topology.hop_index[k] for k in path], start, start + length, rate, project)
        reservations.append(([Leg("out", "x", "y", rate, path)], start, start + length, project))
    at_once.load(reservations)
    assert state(at_once) == state(one_by_one)


# -- alarms and usage ------------------------------------------------------------


def test_alarms_name_the_hops_above_their_threshold() -> None:
    cap = line(10, 10, 10, alarm="50%")
    hops = hops_of(cap, ("l0", "ab"), ("l1", "ab"), ("l2", "ab"))
    cap.book(hops[:1], 0, 10, 5, None)  # at the threshold: not above it
    cap.book(hops[1:], 4, 6, 6, None)
    assert cap.alarms(hops, 0, 10) == [
        {"link": "l1", "direction": "ab", "peak": 6, "threshold": 5, "when": iso(4)},
        {"link": "l2", "direction": "ab", "peak": 6, "threshold": 5, "when": iso(4)},
    ]
    assert cap.alarms(hops, 6, 10) == []  # only the window asked about
    assert cap.alarms(hops_of(cap, ("l1", "ba")), 0, 10) == []


def test_hops_without_an_alarm_threshold_never_alarm() -> None:
    cap = line(10, 10)
    hops = hops_of(cap, ("l0", "ab"), ("l1", "ab"))
    cap.book(hops, 0, 10, 10, None)
    assert cap.alarms(hops, 0, 10) == []


def test_usage_lists_the_steps_of_both_directions() -> None:
    cap = Capacity(Topology.parse({**SMALL, "alarm": "50%"}), {})
    cap.book(hops_of(cap, ("s1-s2", "ab")), 0, 10, 2, None)
    cap.book(hops_of(cap, ("s1-s2", "ab")), 5, 20, 3, None)
    usage = cap.usage("s1-s2", None, None, max_steps=10)
    assert usage["link"] == "s1-s2" and (usage["a"], usage["b"]) == ("s1", "s2")
    ab, ba = usage["directions"]["ab"], usage["directions"]["ba"]
    assert (ab["from"], ab["to"], ab["capacity"], ab["usable"], ab["alarm"]) == ("s1", "s2", 6, 6, 3)
    assert (ba["from"], ba["to"], ba["capacity"], ba["usable"], ba["alarm"]) == ("s2", "s1", 4, 4, 2)
    assert ab["steps"] == [{"from": iso(0), "to": iso(5), "used": 2}, {"from": iso(5), "to": iso(10), "used": 5},
                           {"from": iso(10), "to": iso(20), "used": 3}, {"from": iso(20), "to": None, "used": 0}]
    assert not ab["truncated"] and ba["steps"] == [] and not ba["truncated"]
    clipped = cap.usage("s1-s2", 7, 12, max_steps=10)["directions"]
    assert clipped["ab"]["steps"] == [{"from": iso(7), "to": iso(10), "used": 5},
                                      {"from": iso(10), "to": iso(12), "used": 3}]
    assert clipped["ba"]["steps"] == [{"from": iso(7), "to": iso(12), "used": 0}]
    truncated = cap.usage("s1-s2", None, None, max_steps=1)["directions"]["ab"]
    assert truncated["truncated"] and truncated["steps"] == ab["steps"][:1]


# -- topology changes --------------------------------------------------------------


def booked_small() -> Capacity:
    cap = small({"a": Limit("a", max_bps=5)})
    cap.book(hops_of(cap, *H1_H2), 0, 10, 3, "a")
    cap.book(hops_of(cap, ("h3-s3", "ab"), ("s3-s2", "ab"), ("h2-s2", "ba")), 5, 15, 2, None)
    return cap


def test_unchanged_hops_keep_their_ledgers() -> None:
    old = booked_small()
    topo = old.topology.with_link(Link("s3-s2", "s3", "s2", 7, 7))  # a bigger s3 ─ s2
    unchanged = topo.unchanged_hops(old.topology)
    new = Capacity.carried_over(topo, old, unchanged)
    assert new.limits is old.limits
    for key, h in topo.hop_index.items():
        if key[0] == "s3-s2":
            assert key not in unchanged and not new.use[h]  # a changed hop starts empty
        else:
            assert key in unchanged
            assert new.use[h].steps() == old.use[old.topology.hop_index[key]].steps()
    assert {(p, topo.hops[h]) for p, h in new.held} == {(p, old.topology.hops[h]) for p, h in old.held}


def test_ledgers_follow_their_hops_when_links_are_renumbered() -> None:
    old = booked_small()
    topo = old.topology.without_link("h1-s1").with_link(Link("h1-s2", "h1", "s2", 10, 10))
    new = Capacity.carried_over(topo, old, topo.unchanged_hops(old.topology))
    for key in (("s1-s2", "ab"), ("h2-s2", "ba"), ("h3-s3", "ab")):
        assert topo.hop_index[key] != old.topology.hop_index[key]
        assert new.use[topo.hop_index[key]].steps() == old.use[old.topology.hop_index[key]].steps() != []
    assert not new.use[topo.hop_index[("h1-s2", "ab")]]
    assert ("a", topo.hop_index[("s1-s2", "ab")]) in new.held
    assert all(topo.hops[h][0] != "h1-s1" for _, h in new.held)


def test_writing_the_carried_over_capacity_leaves_the_old_one_intact() -> None:
    old = booked_small()
    before = state(old)
    topo = old.topology.with_node(Node("s3", "switch", {"rack": "r2"}))  # nothing admission sees
    new = Capacity.carried_over(topo, old, topo.unchanged_hops(old.topology))
    assert state(new) == before
    everything = list(range(len(topo.hops)))
    new.book(everything, 0, 20, 1, "a")
    new.unbook(hops_of(new, *H1_H2), 0, 10, 3, "a")
    new.unbook(hops_of(new, ("h3-s3", "ab"), ("s3-s2", "ab"), ("h2-s2", "ba")), 5, 15, 2, None)
    assert state(old) == before  # copied at the first write
    assert all(led.steps() == [(0, 20, 1), (20, None, 0)] for led in new.use)
    assert all(led.steps() == [(0, 20, 1), (20, None, 0)] for led in new.held.values())
    new.unbook(everything, 0, 20, 1, "a")
    assert not any(new.use) and new.held == {}
    assert state(old) == before


EDITS = {
    "nothing": lambda t: t,
    "capacity": lambda t: t.with_link(Link("s1-s2", "s1", "s2", 6, 9)),
    "headroom": lambda t: t.with_link(Link("h1-s1", "h1", "s1", 10, 10, headroom=Fraction(1, 2))),
    "alarm": lambda t: t.with_link(Link("h2-s2", "h2", "s2", 10, 10, alarm=Fraction(1, 2))),
    "link gone": lambda t: t.without_link("s1-s3"),
    "link added": lambda t: t.with_link(Link("h1-s3", "h1", "s3", 10, 10)),
    "switch to host": lambda t: t.with_node(Node("s3", "host")),
    "ends swapped": lambda t: t.with_link(Link("h3-s1", "s1", "h3", 8, 8)),
}


@settings(max_examples=100, deadline=None)
@given(BOOKINGS, st.sampled_from(sorted(EDITS)), st.integers(min_value=1, max_value=5))
def test_a_topology_change_carries_over_exactly_the_unchanged_hops(items: list[Any], edit: str, rate: int) -> None:
    old = small({"a": Limit("a", max_bps=5)})
    for path, start, length, r, project in items:
        old.book(hops_of(old, *path), start, start + length, r, project)
    before = state(old)
    topo = EDITS[edit](old.topology)
    unchanged = topo.unchanged_hops(old.topology)
    new = Capacity.carried_over(topo, old, unchanged)
    old_index = old.topology.hop_index
    for key, h in topo.hop_index.items():
        expected = old.use[old_index[key]].steps() if key in unchanged else []
        assert new.use[h].steps() == expected, key
    carried = {(p, old.topology.hops[h]): led.steps() for (p, h), led in old.held.items()
               if old.topology.hops[h] in unchanged}
    assert {(p, topo.hops[h]): led.steps() for (p, h), led in new.held.items()} == carried
    # Whatever the new one does, the old one stays as it was (the undo of the change).
    everything = list(range(len(topo.hops)))
    new.book(everything, -10, 30, rate, "a")
    for path, start, length, r, project in items:
        kept = [topo.hop_index[k] for k in path if k in unchanged]
        new.unbook(kept, start, start + length, r, project)
    assert state(old) == before
    assert all(led.steps() == [(-10, 30, rate), (30, None, 0)] for led in new.use)
    new.release_shared()
    new.unbook(everything, -10, 30, rate, "a")
    assert not any(new.use) and new.held == {}
    assert state(old) == before


def test_a_fresh_capacity_has_an_empty_ledger_per_hop() -> None:
    cap = small()
    assert len(cap.use) == len(cap.topology.hops) == 16
    assert all(isinstance(led, Ledger) and not led for led in cap.use)
    assert cap.held == {}
