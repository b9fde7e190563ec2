"""A commit that fails undoes every command of its batch: memory never runs ahead of the store."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from tenure import Allocator
from tenure.domain.errors import Unavailable


class FailNextInsertIntoClaims:
    """Fault injection at the driver boundary: the next INSERT into claims raises, once."""

    def __init__(self, engine) -> None:
        self.armed = True
        event.listen(engine, "before_cursor_execute", self)

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.armed and statement.lstrip().upper().startswith("INSERT INTO CLAIMS"):
            self.armed = False
            raise RuntimeError("injected: disk full")


def test_failed_commit_is_undone_and_the_writer_recovers(db_url):
    with Allocator.open(db_url) as ids:
        ids.create_pool("p", ranges=[[1, 10]], strategy="next")
        assert ids.claim("p", "before").value == 1
        revision = ids.runtime.revision
        FailNextInsertIntoClaims(ids.runtime.engine)
        with pytest.raises(Unavailable) as exc:
            ids.claim("p", "lost")
        assert exc.value.code == "store_error"
        # Nothing of the failed command remains: count, revision, cursor and the key itself.
        assert ids.pool("p").used == 1
        assert ids.runtime.revision == revision
        assert ids.claim("p", "after").value == 2
        assert ids.claims("p")[0] == [ids.get("p", "after"), ids.get("p", "before")]
    with Allocator.open(db_url) as ids:
        assert {c.key: c.value for c in ids.claims("p")[0]} == {"before": 1, "after": 2}
        assert ids.claim("p", "lost").value == 3


class FailRowsWithKey:
    """Fault injection: any INSERT INTO claims whose rows include ``key`` raises (a value the driver refuses)."""

    def __init__(self, engine, key: str) -> None:
        self.key = key
        event.listen(engine, "before_cursor_execute", self)

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO CLAIMS") and self.key in repr(parameters):
            raise RuntimeError("injected: the driver refuses this row")


def test_one_bad_command_does_not_fail_the_others_in_its_batch(db_url):
    from tests.store.test_writer import writer_held

    with Allocator.open(db_url) as ids:
        ids.create_pool("p", ranges=[[1, 100]])
        FailRowsWithKey(ids.runtime.engine, "poison")
        svc, writer = ids.runtime.allocator, ids.runtime.writer
        with writer_held(writer):  # everything submitted now lands in one batch
            futures = {k: writer.submit(svc.claim_op("p", k)) for k in ("a", "poison", "b", "c")}
        results = {}
        for k, f in futures.items():
            try:
                results[k] = f.result(30).value
            except Unavailable as exc:
                results[k] = exc.code
        assert results["poison"] == "store_error"
        assert sorted(v for k, v in results.items() if k != "poison") == [1, 2, 3]
        assert ids.pool("p").used == 3
    with Allocator.open(db_url) as ids:
        assert {c.key for c in ids.claims("p")[0]} == {"a", "b", "c"}


@pytest.mark.parametrize("strategy", ["lowest", "next", "random"])
def test_a_failed_bulk_commit_is_undone_whole(db_url, strategy):
    """A bulk claim of new keys (rows as tuples, one undo for all) whose commit fails leaves the pool as it was."""
    with Allocator.open(db_url) as ids:
        ids.create_pool("p", ranges=[[1, 50]], strategy=strategy)
        ids.claim_many("p", ["a", "b", ("pinned", 30)])
        entry = ids.runtime.allocator._entries["p"]
        before = (dict(entry.pool.claims), entry.pool.ids._taken.runs(), entry.pool.ids.cursor, ids.runtime.revision)
        FailNextInsertIntoClaims(ids.runtime.engine)
        with pytest.raises(Unavailable):
            ids.claim_many("p", [f"k{i}" for i in range(20)])
        assert (dict(entry.pool.claims), entry.pool.ids._taken.runs(), entry.pool.ids.cursor,
                ids.runtime.revision) == before
        again = ids.claim_many("p", [f"k{i}" for i in range(20)])
        assert len({r.value for r in again}) == 20 and 30 not in {r.value for r in again}
    with Allocator.open(db_url) as ids:
        assert ids.pool("p").used == 23
