"""Stateful test of the durable reservation service against a brute-force model of usage.

Random creates (bandwidth, oneway, steering, mirror; windows on a 15-minute grid so that nested, touching,
equal-start and equal-end windows are common), modifications, cancels, the clock moving on, topology
changes and restarts. After every step, recomputed by brute force from the reservations alone: the
ledgers hold exactly what the holding reservations' paths say and nothing is over-committed from now on;
every state agrees with the clock; every refusal is justified by the hop it names.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tenure.domain.errors import Conflict, InvalidInput
from tenure.domain.reservation import ReservationRequest
from tenure.domain.topology import Topology
from tenure.domain.units import parse_instant

from tests.reservation_support import SQUARE, FakeClock, check_usage_matches_reservations, open_rt, usage_of

HOSTS = ["h1", "h2", "h3", "c1"]
RATES = ["100M", "250M", "400M", "500M", "1G"]
SLOTS = st.integers(0, 16)  # quarter hours from now


def _window(start_slot: int, length: int) -> tuple[str, str]:
    return f"+{start_slot * 15}m" if start_slot else "now", f"+{(start_slot + length) * 15}m"


class ReservationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.url = f"sqlite:///{self.dir}/r.db"
        self.clock = FakeClock()
        self.rt = open_rt(self.url, self.clock)
        self.rt.run(self.rt.topology.set_topology_op(Topology.parse(SQUARE)))
        self.ids: list[str] = []

    def teardown(self) -> None:
        self.rt.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _justified(self, exc: Conflict, raw_rate: Any) -> None:
        """A capacity refusal names a hop where the usage at ``when`` plus what was needed does not fit."""
        err = exc.to_dict()
        if err["code"] != "insufficient_capacity" or "link" not in err:
            return
        cap = self.rt.reservations.cap
        h = cap.topology.hop_index[(err["link"], err["direction"])]
        when = parse_instant(err["when"], now=0)
        assert cap.use[h].usage_at(when) + err["needed"] > cap.topology.usable[h]

    @rule(kind=st.sampled_from(["bandwidth", "oneway", "steering", "mirror"]), src=st.sampled_from(HOSTS),
          dst=st.sampled_from(HOSTS), rate=st.sampled_from(RATES), rate_in=st.sampled_from([None, "0", "300M"]),
          start=SLOTS, length=st.integers(1, 8))
    def create(self, kind: str, src: str, dst: str, rate: str, rate_in: str | None, start: int, length: int) -> None:
        s, e = _window(start, length)
        raw: dict[str, Any] = {"kind": kind, "src": src, "rate": rate, "start": s, "end": e}
        if kind == "mirror":
            raw["collector"] = dst
            if src == "h3":
                raw["port"] = "h3-s3"
        else:
            raw["dst"] = dst
        if kind == "steering":
            raw["via"] = ["m1"]
        if kind == "bandwidth" and rate_in is not None:
            raw["rate_in"] = rate_in
        try:
            res, _, _ = self.rt.run(self.rt.reservations.create_op(ReservationRequest.parse(raw)))
        except Conflict as exc:
            self._justified(exc, rate)
            return
        except InvalidInput as exc:
            assert src == dst or exc.code == "same_endpoints", exc
            return
        self.ids.append(res.id)

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), start=st.one_of(st.none(), SLOTS), length=st.integers(1, 8),
          rate=st.one_of(st.none(), st.sampled_from(RATES)))
    def modify(self, data: st.DataObject, start: int | None, length: int, rate: str | None) -> None:
        rid = data.draw(st.sampled_from(self.ids))
        svc = self.rt.reservations
        before = (svc.get(rid), usage_of(self.rt))
        changes: dict[str, Any] = {}
        if start is not None:
            changes["start"], changes["end"] = _window(start, length)
        if rate is not None:
            changes["rate"] = rate
        if not changes:
            changes["end"] = _window(0, length)[1]
        try:
            self.rt.run(svc.modify_op(rid, changes))
        except (Conflict, InvalidInput):
            assert (svc.get(rid), usage_of(self.rt)) == before  # all or nothing

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self.ids))
        try:
            assert self.rt.run(self.rt.reservations.cancel_op(rid)).state == "cancelled"
        except Conflict as exc:
            assert exc.code == "reservation_ended"

    @rule(minutes=st.sampled_from([1, 15, 30, 60, 120]))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)
        self.rt.reservations.scheduler.run_due()

    @rule(link=st.sampled_from([lk["id"] for lk in SQUARE["links"]]), capacity=st.sampled_from(["300M", "1G", "2G"]))
    def topology_changes(self, link: str, capacity: str) -> None:
        links = []
        for lk in SQUARE["links"]:
            if lk["id"] == link:
                lk = {k: v for k, v in lk.items() if k not in ("capacity_ab", "capacity_ba")} | {"capacity": capacity}
            links.append(lk)
        self.rt.run(self.rt.topology.set_topology_op(Topology.parse({**SQUARE, "links": links})))

    @rule()
    def restart(self) -> None:
        usage, views = usage_of(self.rt), self.rt.reservations.list(limit=10_000)[0]
        self.rt.close()
        self.rt = open_rt(self.url, self.clock)
        assert usage_of(self.rt) == usage and self.rt.reservations.list(limit=10_000)[0] == views

    @invariant()
    def usage_is_exactly_the_holding_reservations(self) -> None:
        check_usage_matches_reservations(self.rt)

    @invariant()
    def states_follow_the_clock(self) -> None:
        now = self.rt.reservations.now_us()
        for r in self.rt.reservations.list(limit=10_000)[0]:
            if r.state == "pending":
                assert now < r.start
            elif r.state == "active":
                assert r.start <= now < r.end
            elif r.state == "expired":
                assert now >= r.end
            elif r.state == "degraded":
                assert now < r.end and not r.holds_capacity


TestReservationMachine = ReservationMachine.TestCase
TestReservationMachine.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
