"""Promotion in place, on PostgreSQL (docs/replication.md, "Promotion"), with a fake clock: no sleeping.

A reservation falls due while its leader is gone: the follower that takes the lead applies the transition
before it takes a write, exactly once; the old leader, back, is fenced and commits nothing; the new leader's
memory is what a restore builds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tenure.domain.errors import Unavailable
from tenure.domain.reservation import ReservationRequest
from tenure.services.runtime import Runtime
from tenure.store import schema
from tenure.store.leadership import Fenced, Leadership

from tests.conftest import make_db_url
from tests.reservation_support import FakeClock, open_rt, square
from tests.services.test_follower import assert_same, digest

LEASE = 5.0


@pytest.fixture
def url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return make_db_url("postgresql", tmp_path, request)


def leadership(rt: Runtime, name: str, skew: timedelta = timedelta(0)) -> Leadership:
    return Leadership(rt.engine, name=name, address=f"http://{name}", lease=LEASE, skew=skew)


@pytest.fixture
def pair(url: str) -> Iterator[tuple[Runtime, Runtime, FakeClock, Leadership]]:
    clock = FakeClock()
    open_rt(url, clock).close()  # migrated
    a = open_rt(url, clock, follower=True, replica=True)
    la = leadership(a, "a")
    assert la.take() == 1
    a.promote(la, 1)
    b = open_rt(url, clock, follower=True, replica=True)
    try:
        yield a, b, clock, la
    finally:
        b.close()
        a.close()
        la.close()


def activations(rt: Runtime, rid: str) -> list[tuple[str, int | None]]:
    E = schema.events.c
    with rt.engine.connect() as conn:
        rows = conn.execute(select(E.body, E.epoch).where(E.kind == "reservation", E.object_id == rid)
                            .order_by(E.revision)).all()
    return [(json.loads(r.body)["state"], r.epoch) for r in rows]


def test_a_timer_due_during_a_failover_is_applied_once_by_the_new_leader(pair: Any) -> None:
    a, b, clock, la = pair
    a.run(a.topology.set_topology_op(square()))
    res, _, _ = a.run(a.reservations.create_op(ReservationRequest.parse(
        {"kind": "bandwidth", "src": "h1", "dst": "h2", "rate": "1G", "start": "+10m", "end": "+70m"})))
    while b.tailer.poll():
        pass
    clock.advance(minutes=10)  # due now; the leader (paused, say) does not run it
    lb = leadership(b, "b", skew=timedelta(seconds=LEASE + 1))  # b's view: a's lease ran out
    assert lb.take() == 2
    while b.tailer.poll():
        pass
    b.promote(lb, 2)  # the overdue activation is applied here, before any write is taken
    assert b.reservations.get(res.id).state == "active"
    before = a.writer.revision
    with pytest.raises(Fenced):  # the old leader wakes up and tries the same transition: fenced
        a.reservations.scheduler.run_due()
    assert a.writer.revision == before and a.reservations.get(res.id).state == "pending"  # nothing committed
    with pytest.raises(Unavailable) as refused:
        a.run(a.allocator.create_pool_op("late", ranges=[[1, 10]]))
    assert refused.value.code == "not_leader"
    assert activations(b, res.id) == [("pending", 1), ("active", 2)]  # once, by epoch 2
    fresh = open_rt(b.url, clock, follower=True)
    try:
        assert_same(digest(fresh), digest(b))
    finally:
        fresh.close()
    lb.close()


def test_writes_to_a_follower_are_refused_at_once(pair: Any) -> None:
    _, b, _, _ = pair
    with pytest.raises(Fenced):
        b.run(b.allocator.create_pool_op("p", ranges=[[1, 10]]))
