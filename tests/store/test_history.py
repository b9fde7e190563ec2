"""Retention of the event log: compaction by count and by age (injected clock), and replays that notice it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from tenure.config import Settings
from tenure.domain.errors import Gone
from tenure.services.runtime import Runtime
from tenure.store import schema


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rt(db_url: str, clock: Clock) -> Iterator[Runtime]:
    r = Runtime.open(db_url, clock=clock, settings=Settings(history_age=3600, history_events=50, housekeeping=False))
    try:
        r.run(r.allocator.create_pool_op("p", ranges=[[1, 100000]]))
        yield r
    finally:
        r.close()


def _claims(rt: Runtime, n: int, prefix: str) -> None:
    rt.run(rt.allocator.claim_many_op("p", [(f"{prefix}{i}", None) for i in range(n)]))


def _stored(rt: Runtime) -> tuple[int, int, int]:
    with rt.engine.connect() as conn:
        lo, hi, n = conn.execute(select(func.min(schema.events.c.revision), func.max(schema.events.c.revision),
                                        func.count())).one()
        compacted = conn.execute(select(schema.state.c.compacted_revision)).scalar_one()
    assert compacted == rt.history.compacted
    return lo, hi, n


def test_compaction_by_count(rt: Runtime) -> None:
    _claims(rt, 120, "a")
    assert rt.history.compact() == rt.revision - 50
    assert _stored(rt) == (rt.revision - 49, rt.revision, 50)
    assert rt.history.compact() == rt.revision - 50  # nothing more to do


def test_compaction_by_age(rt: Runtime, clock: Clock) -> None:
    _claims(rt, 10, "old")
    old = rt.revision
    clock.now += timedelta(minutes=50)
    _claims(rt, 10, "mid")
    mid = rt.revision
    assert rt.history.compact() == 0  # nothing is an hour old yet
    clock.now += timedelta(minutes=20)
    assert rt.history.compact() == old  # the first ten are over an hour old now
    clock.now += timedelta(hours=2)
    assert rt.history.compact() == mid
    assert _stored(rt)[2] == 0


def test_compaction_survives_a_restart(db_url: str, clock: Clock) -> None:
    settings = Settings(history_events=5, housekeeping=False)
    with Runtime.open(db_url, clock=clock, settings=settings) as r:
        r.run(r.allocator.create_pool_op("p", ranges=[[1, 100]]))
        _claims(r, 20, "k")
        upto = r.history.compact()
    with Runtime.open(db_url, clock=clock, settings=settings) as r:
        assert r.history.compacted == r.history.floor == upto
        with pytest.raises(Gone):
            r.history.page(upto - 1, None)
        assert [row.revision for row in r.history.page(upto, None)] == list(range(upto + 1, r.revision + 1))


def test_large_compaction_goes_in_chunks(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tenure.store.history.CHUNK", 7)
    _claims(rt, 100, "c")
    batches = rt.writer.batches
    assert rt.history.compact() == rt.revision - 50
    assert rt.writer.batches - batches >= (rt.revision - 50) // 7


def test_a_page_thinned_by_compaction_is_gone(rt: Runtime) -> None:
    _claims(rt, 30, "x")
    history = rt.history
    real_connect = rt.engine.connect

    def connect_then_compact() -> object:
        conn = real_connect()
        history.floor = 10  # announced by a compaction starting meanwhile
        return conn

    rt.engine.connect = connect_then_compact  # type: ignore[method-assign]
    try:
        with pytest.raises(Gone) as e:
            history.page(5, None)
    finally:
        rt.engine.connect = real_connect  # type: ignore[method-assign]
    assert e.value.details["compacted_revision"] == 10


def test_background_compactor_runs(db_url: str, clock: Clock) -> None:
    settings = Settings(history_events=5, compact_interval=0.01)
    with Runtime.open(db_url, clock=clock, settings=settings) as r:
        r.run(r.allocator.create_pool_op("p", ranges=[[1, 100]]))
        _claims(r, 20, "k")
        done = r.revision - 5
        # Wait for the outcome (the compactor's commit), bounded; no assumption on when it runs.
        tick = threading.Event()
        for _ in range(1000):
            if r.history.compacted >= done:
                break
            tick.wait(0.01)
        assert r.history.compacted == done
