"""Leadership of replicas on PostgreSQL: one epoch leads at a time, and a deposed leader commits nothing.

Time passes for a contender through ``skew`` (its idea of the database's clock), never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from tenure.domain.errors import InvalidInput
from tenure.store import schema
from tenure.store.engine import make_engine, migrate
from tenure.store.leadership import Fenced, Leadership
from tenure.store.writer import Batch, Op, Writer
from tests.conftest import make_db_url

LEASE = 5.0
LATER = timedelta(seconds=LEASE + 1)  # a contender whose clock is past the lease


@pytest.fixture
def engine(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    eng = make_engine(make_db_url("postgresql", tmp_path, request))
    migrate(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def replica(engine: Engine, name: str, skew: timedelta = timedelta(0)) -> Leadership:
    return Leadership(engine, name=name, address=f"http://{name}:7470", lease=LEASE, skew=skew)


def event_op(undone: list[bool]) -> Op:
    def apply(batch: Batch) -> int:
        batch.on_undo(lambda: undone.append(True))
        return batch.emit("pool", "p", "created", {}, {"name": "p"})

    return Op(apply)


def events(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(schema.events)).scalar_one()


def test_one_epoch_leads_at_a_time(engine: Engine) -> None:
    a, b = replica(engine, "a"), replica(engine, "b")
    assert a.take() == 1 and a.read().holder == "a" and a.read().live
    assert b.take() is None  # a's lease runs
    assert a.renew() and a.take() is None  # a holder does not take again: its epoch stays
    late = replica(engine, "b", skew=LATER)
    assert late.take() == 2 and late.read().holder == "b"  # past a's lease: b leads, with a new epoch
    assert not a.renew() and a.epoch is None  # a learns it lost the lead
    late.step_down()
    assert a.take() == 3  # a clean step-down hands over at once


def test_a_deposed_leader_commits_nothing_and_undoes_its_batch(engine: Engine) -> None:
    a = replica(engine, "a")
    assert a.take() == 1
    writer = Writer(engine, revision=0, fence=a)
    writer.start()
    try:
        undone: list[bool] = []
        assert writer.execute(event_op(undone)) == 1 and events(engine) == 1
        assert replica(engine, "b", skew=LATER).take() == 2  # a was paused past its lease: b took over
        with pytest.raises(Fenced) as exc:
            writer.execute(event_op(undone))
        assert exc.value.code == "not_leader" and undone == [True]
        assert events(engine) == 1 and writer.revision == 1  # nothing of the deposed leader's batch committed
        with pytest.raises(Fenced):  # and it stays fenced until it leads again
            writer.execute(event_op(undone))
    finally:
        writer.close()


def test_a_leader_whose_lease_ran_out_commits_nothing_even_if_nobody_took_over(engine: Engine) -> None:
    a = replica(engine, "a")
    assert a.take() == 1
    a.skew = LATER  # its lease ran out (a pause): its clock moved on, nobody renewed
    writer = Writer(engine, revision=0, fence=a)
    writer.start()
    try:
        with pytest.raises(Fenced):
            writer.execute(event_op([]))
        assert events(engine) == 0
    finally:
        writer.close()


def test_sqlite_has_no_leadership(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(InvalidInput) as exc:
            Leadership(eng, name="a", address="http://a")
        assert exc.value.code == "replicas_need_postgresql"
    finally:
        eng.dispose()


def test_a_dead_leaders_free_lock_hands_over_without_waiting_for_the_lease(engine: Engine) -> None:
    a, b, c = replica(engine, "a"), replica(engine, "b"), replica(engine, "c")
    assert a.take() == 1
    assert b.take() is None and c.take() is None  # a lives: its lock is held, its lease runs
    a.close()  # its session ends, as at a kill -9: the lock of epoch 1 is free at once, the lease still runs
    assert b.take() == 2  # no clock moved
    assert c.take() is None and b.take() is None  # b holds epoch 2's lock; b does not take twice


def test_a_leader_whose_election_connection_is_terminated_is_replaced_and_fenced(engine: Engine) -> None:
    a, b = replica(engine, "a"), replica(engine, "b")
    assert a.take() == 1
    pid = a._run("SELECT pg_backend_pid() AS pid").pid
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    assert b.take() == 2
    writer = Writer(engine, revision=0, fence=a)
    writer.start()
    try:
        undone: list[bool] = []
        with pytest.raises(Fenced):
            writer.execute(event_op(undone))
        assert undone == [True] and events(engine) == 0
    finally:
        writer.close()
