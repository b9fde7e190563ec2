"""Shared by the reservation tests: small topologies, a fake clock, and what "the same usage" means."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select

from tenure.domain.access import Principal
from tenure.domain.reservation import ReservationRequest
from tenure.domain.topology import Topology
from tenure.services.runtime import Runtime, Settings
from tenure.store import schema

from tests.topologies import SQUARE

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def open_rt(db_url: str, clock: FakeClock, *, follower: bool = False, replica: bool = False,
            **settings: Any) -> Runtime:
    return Runtime.open(db_url, clock=clock, settings=Settings(**{"housekeeping": False, **settings}),
                        follower=follower, replica=replica)


def at(clock: FakeClock, **delta: float) -> str:
    """An ISO instant relative to the fake clock's now."""
    return (clock.now + timedelta(**delta)).isoformat()




def square() -> Topology:
    return Topology.parse(SQUARE)


@contextlib.contextmanager
def statements_fail(rt: Runtime, fragment: str) -> Iterator[None]:
    """Every SQL statement containing ``fragment`` fails (a store that breaks mid-commit) inside the block."""

    def fail(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if fragment in statement:
            raise RuntimeError("disk on fire")

    event.listen(rt.engine, "before_cursor_execute", fail)
    try:
        yield
    finally:
        event.remove(rt.engine, "before_cursor_execute", fail)


def usage_of(rt: Runtime) -> dict[tuple[str, str], list[tuple[int, int | None, int]]]:
    """Every hop's usage steps: equal dicts mean identical usage."""
    cap = rt.reservations.cap
    return {cap.topology.hops[h]: cap.use[h].steps() for h in range(len(cap.topology.hops))}


def check_usage_matches_reservations(rt: Runtime) -> None:
    """The ledgers hold exactly what the holding reservations' paths say, and from now on never more than usable."""
    now = rt.reservations.now_us()
    svc = rt.reservations
    cap = svc.cap
    topo = cap.topology
    expected: dict[int, list[tuple[int, int, int]]] = {}
    for res in svc._res.values():
        if not res.holds_capacity:
            continue
        for leg in res.legs:
            for key in leg.hops:
                expected.setdefault(topo.hop_index[key], []).append((res.start, res.end, leg.rate))
    for h in range(len(topo.hops)):
        bookings = expected.get(h, [])
        instants = sorted({t for s, e, _ in bookings for t in (s, e)} | {now})
        for t in instants:
            want = sum(r for s, e, r in bookings if s <= t < e)
            assert cap.use[h].usage_at(t) == want, (topo.hops[h], t)
            if t >= now:
                assert want <= topo.usable[h], ("over-committed", topo.hops[h], t)
        if not bookings:
            assert not cap.use[h], topo.hops[h]


def reserve(rt: Runtime, principal: Principal | None = None, **raw: Any) -> Any:
    raw.setdefault("kind", "bandwidth")
    raw.setdefault("start", "now")
    raw.setdefault("end", "+1h")
    kwargs = {"principal": principal} if principal else {}
    res, _created, _alarms = rt.run(rt.reservations.create_op(ReservationRequest.parse(raw), **kwargs))
    return res


def events_of(rt: Runtime, kind: str = "reservation") -> list[tuple[str, str, str]]:
    import json

    with rt.engine.connect() as conn:
        rows = conn.execute(select(schema.events).where(schema.events.c.kind == kind)
                            .order_by(schema.events.c.revision)).all()
    return [(r.object_id, r.op, json.loads(r.labels).get("state", "")) for r in rows]


def shrink(doc: dict[str, Any], link: str, capacity: str) -> Topology:
    links = [{**lk, "capacity": capacity} if lk["id"] == link else lk for lk in doc["links"]]
    for lk in links:
        if lk["id"] == link:
            lk.pop("capacity_ab", None)
            lk.pop("capacity_ba", None)
    return Topology.parse({**doc, "links": links})
