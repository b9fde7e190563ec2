"""The single writer: group commit, refusals inside a batch, and undo.

To put several commands in one batch without sleeping, a test *holds* the
writer: it submits a command that blocks inside the writer thread until the
test releases it. Everything submitted meanwhile queues up, and the writer
takes the whole queue as the next batch, so which commands share a batch is
decided by the test, not by timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from tenure import Allocator
from tenure.domain.errors import Conflict, InvalidInput, NotFound, Unavailable
from tenure.store import schema
from tenure.store.writer import Batch, Op, Published, Writer

WAIT = 30  # seconds; a bound on a synchronisation wait, never a sleep


@contextmanager
def writer_held(writer: Writer) -> Iterator[None]:
    """Block the writer thread inside one command until the ``with`` block ends."""
    entered, release = threading.Event(), threading.Event()

    def hold(_: Batch) -> None:
        entered.set()
        assert release.wait(WAIT), "the test never released the writer"

    fut = writer.submit(Op(hold))
    assert entered.wait(WAIT), "the writer did not start the holding command"
    try:
        yield
    finally:
        release.set()
        fut.result(WAIT)


def events_count(alloc: Allocator) -> int:
    with alloc.runtime.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(schema.events)).scalar_one()


def event_rows(alloc: Allocator, after: int) -> list[Any]:
    with alloc.runtime.engine.connect() as conn:
        return conn.execute(
            select(schema.events.c.revision, schema.events.c.object_id, schema.events.c.op)
            .where(schema.events.c.revision > after)
            .order_by(schema.events.c.revision)
        ).fetchall()


def stored_claims(alloc: Allocator, pool: str) -> dict[str, int]:
    out: dict[str, int] = {}
    after = None
    while True:
        page, after = alloc.claims(pool, limit=1000, after=after)
        out.update({c.key: c.value for c in page})
        if after is None:
            return out


def outcome(fut: Future[Any]) -> Any:
    try:
        return fut.result(WAIT)
    except Exception as exc:  # noqa: BLE001 - the test inspects the refusal
        return exc


# -- group commit -----------------------------------------------------------------


def test_64_concurrent_claimers_get_distinct_durable_values(db_url: str) -> None:
    n = 64
    with Allocator.open(db_url) as a:
        a.create_pool("p", ranges=[[1000, 1000 + n - 1]], strategy="random")
        start = threading.Barrier(n)
        results: dict[str, int] = {}
        errors: list[BaseException] = []

        def claimer(i: int) -> None:
            try:
                start.wait(WAIT)
                results[f"k{i}"] = a.claim("p", f"k{i}").value
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert not errors, errors
        assert len(results) == n
        assert sorted(results.values()) == list(range(1000, 1000 + n))  # distinct, and so the pool is full
        assert a.pool("p").used == n
        assert events_count(a) == 1 + n  # the pool, then one event per claim
    with Allocator.open(db_url) as again:
        assert stored_claims(again, "p") == results
        assert again.pool("p").used == n
        with pytest.raises(Conflict) as info:
            again.claim("p", "one-more")
        assert info.value.code == "pool_exhausted"


def test_concurrent_claims_share_a_group_commit(alloc: Allocator, db_url: str) -> None:
    """64 callers of Allocator.claim queued while one commit is in flight cost one more commit, not 64."""
    n = 64
    alloc.create_pool("p", ranges=[[0, 99]])
    writer = alloc.runtime.writer
    submitted = threading.Semaphore(0)
    real_submit = writer.submit

    def counting_submit(command: Any) -> Future[Any]:
        fut = real_submit(command)
        submitted.release()
        return fut

    writer.submit = counting_submit  # type: ignore[method-assign] - observe when each caller is queued
    batches_before, commands_before = writer.batches, writer.commands
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def claimer(i: int) -> None:
        try:
            results[f"k{i:02d}"] = alloc.claim("p", f"k{i:02d}").value
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with writer_held(writer):
        submitted.acquire()  # the holding command itself
        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for _ in range(n):
            assert submitted.acquire(timeout=WAIT)
    for t in threads:
        t.join(WAIT)
    assert not errors, errors
    assert sorted(results.values()) == list(range(n))
    assert writer.commands - commands_before == n + 1
    assert writer.batches - batches_before == 2  # the holding command, then all 64 claims together
    assert writer.batches - batches_before < n
    alloc.close()
    with Allocator.open(db_url) as again:
        assert stored_claims(again, "p") == results


# -- refusals and undo inside a batch -------------------------------------------------


def test_a_refused_command_in_a_batch_does_not_affect_the_others(alloc: Allocator, db_url: str) -> None:
    alloc.create_pool("p", ranges=[[0, 9]], strategy="next")
    alloc.claim("p", "taken")  # 0
    rt, svc = alloc.runtime, alloc.runtime.allocator
    revision = rt.revision
    batches_before = rt.writer.batches
    with writer_held(rt.writer):
        futs = [
            rt.writer.submit(svc.claim_op("p", "a")),
            rt.writer.submit(svc.claim_op("p", "pinned-on-taken", value=0)),
            # Key by key (a value is pinned): z takes 9, x0..x6 take 2..8, and x7 finds the pool exhausted.
            rt.writer.submit(svc.claim_many_op("p", [(f"x{i}", None) for i in range(8)] + [("z", 9)])),
            rt.writer.submit(svc.claim_op("p", "b")),
            rt.writer.submit(svc.release_op("p", "missing")),
            rt.writer.submit(svc.claim_op("p", "c", value=7)),
            rt.writer.submit(svc.release_op("p", "taken")),
        ]
    a, pinned, bulk, b, missing, c, released = (outcome(f) for f in futs)
    assert rt.writer.batches - batches_before == 2  # the holding command, then these seven together
    assert isinstance(pinned, Conflict) and pinned.code == "value_taken"
    assert isinstance(bulk, Conflict) and bulk.code == "pool_exhausted"
    assert isinstance(missing, NotFound) and missing.code == "claim_not_found"
    # The refused commands neither took values nor moved the next-fit cursor.
    assert (a.value, b.value, c.value, released.value) == (1, 2, 7, 0)
    # Revisions are contiguous: the refused commands left no gap and no event.
    rows = event_rows(alloc, revision)
    assert [(r.object_id, r.op) for r in rows] == [
        ("p/a", "created"), ("p/b", "created"), ("p/c", "created"), ("p/taken", "deleted")
    ]
    assert [r.revision for r in rows] == list(range(revision + 1, revision + 5))
    assert (a.revision, b.revision, c.revision, released.revision) == tuple(r.revision for r in rows)
    assert rt.revision == revision + 4
    expected = {"a": 1, "b": 2, "c": 7}
    assert stored_claims(alloc, "p") == expected
    assert alloc.claim("p", "d").value == 3
    alloc.close()
    with Allocator.open(db_url) as again:
        assert stored_claims(again, "p") == {**expected, "d": 3}
        assert again.claim("p", "e").value == 4  # the cursor went on from d, and was persisted


def test_a_bulk_claim_failing_at_its_last_item_leaves_no_trace(alloc: Allocator, db_url: str) -> None:
    alloc.create_pool("p", ranges=[[10, 29]], reserved=[[15, 15]], strategy="next")
    for key in ("old", "kept", "blocker"):
        alloc.claim("p", key)  # 10, 11, 12
    alloc.audit_begin("p")
    alloc.claim("p", "kept")  # marked in this audit
    revision, events, view = alloc.runtime.revision, events_count(alloc), alloc.pool("p")
    before = stored_claims(alloc, "p")

    # n3 takes 16 (pins go first), "old" is re-marked, n1 and n2 take 13 and 14, x0..x12 take the other thirteen
    # free values and x13, the last pick, finds the pool exhausted.
    items = [("old", None), ("n1", None), ("n2", None), ("n3", 16)] + [(f"x{i}", None) for i in range(14)]
    with pytest.raises(Conflict) as info:
        alloc.claim_many("p", items)
    assert info.value.code == "pool_exhausted" and info.value.details == {
        "pool": "p", "size": 19, "used": 3, "requested": len(items)
    }

    assert stored_claims(alloc, "p") == before
    assert events_count(alloc) == events
    assert alloc.runtime.revision == revision
    assert alloc.pool("p") == view
    for key in ("n1", "n2", "n3", "x0", "x12"):
        with pytest.raises(NotFound):
            alloc.get("p", key)
    with pytest.raises(NotFound):
        alloc.find_value("p", 16)

    # The undo reaches what is not visible in the claims table: the cursor and the audit mark.
    alloc.close()
    with Allocator.open(db_url) as again:
        assert stored_claims(again, "p") == before
        assert events_count(again) == events
        assert again.claim("p", "after").value == 13  # the cursor did not move past 13, 14
        _, released = again.audit_end("p")
        assert sorted(r.key for r in released) == ["blocker", "old"]  # "old"'s mark was undone


def test_bulk_claim_validation_is_refused_before_the_writer(alloc: Allocator) -> None:
    alloc.create_pool("p", ranges=[[0, 9]])
    events = events_count(alloc)
    with pytest.raises(InvalidInput) as info:
        alloc.claim_many("p", [("a", None), ("a", None)])
    assert info.value.code == "duplicate_key"
    with pytest.raises(InvalidInput) as info:
        alloc.claim_many("p", [])
    assert info.value.code == "invalid_bulk"
    with pytest.raises(InvalidInput) as info:
        alloc.claim_many("p", [("ok", None), ("", None)])
    assert info.value.code == "invalid_key"
    assert stored_claims(alloc, "p") == {}
    assert events_count(alloc) == events


def test_a_failed_commit_is_retried_command_by_command(alloc: Allocator, db_url: str) -> None:
    """A batch whose commit fails is undone, then each command is committed alone: those that can
    commit do, the one that broke it (and only what it keeps breaking) fails, and memory stays the store."""
    alloc.create_pool("p", ranges=[[0, 9]], strategy="next")
    alloc.claim("p", "r")  # 0
    alloc.claim("p", "s")  # 1
    rt, svc = alloc.runtime, alloc.runtime.allocator
    revision, view = rt.revision, alloc.pool("p")
    # A row squatting on revision + 3 makes every commit that would write that revision fail.
    squatter = {
        "revision": revision + 3, "ts": view.created_at, "kind": "test", "object_id": "x", "op": "created",
        "labels": "{}", "body": "{}",
    }
    with rt.engine.begin() as conn:
        conn.execute(insert(schema.events), squatter)
    with writer_held(rt.writer):
        futs = [
            rt.writer.submit(svc.claim_op("p", "new")),  # alone: revision + 1, commits
            rt.writer.submit(svc.release_op("p", "r")),  # alone: revision + 2, commits
            rt.writer.submit(svc.claim_op("p", "reuses-r", value=0)),  # revision + 3: fails
            rt.writer.submit(svc.claim_op("p", "refused", value=1)),  # refused before any commit
            rt.writer.submit(svc.audit_begin_op("p")),  # revision + 3 again: fails
            rt.writer.submit(svc.claim_many_op("p", [("m1", None), ("m2", None)])),  # fails
        ]
    results = [outcome(f) for f in futs]
    assert results[0].value == 2 and results[1].value == 0
    assert isinstance(results[3], Conflict) and results[3].code == "value_taken"  # its own refusal
    for res in (results[2], results[4], results[5]):
        assert isinstance(res, Unavailable) and res.code == "store_error", res
    # Memory is where the store is.
    assert rt.revision == revision + 2
    assert stored_claims(alloc, "p") == {"s": 1, "new": 2}
    assert alloc.pool("p").used == 2 and not alloc.pool("p").auditing
    with rt.engine.begin() as conn:
        conn.execute(schema.events.delete().where(schema.events.c.kind == "test"))
    assert alloc.claim("p", "reuses-r", value=0).value == 0
    with pytest.raises(Conflict):
        alloc.audit_end("p")  # the failed audit_begin left no audit open
    alloc.close()
    with Allocator.open(db_url) as again:
        assert stored_claims(again, "p") == {"s": 1, "new": 2, "reuses-r": 0}
        assert again.claim("p", "next").value == 3



def test_an_unchanged_reclaim_writes_nothing(alloc: Allocator) -> None:
    alloc.create_pool("p", ranges=[[0, 9]])
    first = alloc.claim("p", "k")
    revision, events = alloc.runtime.revision, events_count(alloc)
    again = alloc.claim("p", "k")
    assert (again.value, again.revision, again.created) == (first.value, first.revision, False)
    assert (alloc.runtime.revision, events_count(alloc)) == (revision, events)
    # During an audit the first re-claim is a change (the mark), the second is not.
    alloc.audit_begin("p")
    revision = alloc.runtime.revision
    marked = alloc.claim("p", "k")
    assert marked.revision == revision + 1 and events_count(alloc) == events + 2
    assert alloc.claim("p", "k").revision == marked.revision
    assert events_count(alloc) == events + 2


def test_a_failing_after_commit_step_is_logged_and_the_writer_goes_on(alloc: Allocator) -> None:
    """An after-commit step (publish, log line) runs once the batch is durable: its bug must not stop the writer."""
    rt = alloc.runtime

    def apply(batch: Batch) -> str:
        batch.emit("pool", "x", "updated", {}, {})
        batch.on_commit(lambda: {}["a bad log call"])
        return "committed"

    assert rt.run(Op(apply)) == "committed"
    assert rt.writer.failure is None
    rt.run(rt.allocator.create_pool_op("after", ranges=[[1, 5]]))  # the writer still applies commands
    assert rt.allocator.has_pool("after")


def test_a_revision_is_seen_only_once_what_it_changed_is_published(alloc: Allocator) -> None:
    """A reader that takes the revision and then reads a published view (a list, then a watch from its revision)
    must find every change the revision counts: the writer publishes a batch's changes before its revision moves.
    (Found by a review of the web console, whose views list and then watch from the list's revision.)"""
    rt = alloc.runtime
    seen: list[tuple[int, dict[str, int]]] = []
    m: Published[str, int] = Published(on_publish=lambda k, v: seen.append((rt.revision, dict(m.view))))

    def apply(batch: Batch) -> int:
        m.put(batch, "a", 1)
        return batch.emit("pool", "a", "updated", {}, {})

    before = rt.revision
    made = rt.run(Op(apply))
    assert made == before + 1 and rt.revision == made
    # While the change was being published, a reader still saw the revision before it: never `made` with an old view.
    assert seen == [(before, {"a": 1})]
