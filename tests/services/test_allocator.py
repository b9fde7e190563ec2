"""The embedded allocator: chosen scenarios the state machine reaches only by luck, and read errors.

The stateful test (test_allocator_stateful.py) covers the general behaviour;
these pin down a few sequences exactly, on both stores.
"""

from __future__ import annotations

import pytest

from tenure import Allocator
from tenure.domain.access import Principal
from tenure.domain.errors import Conflict, InvalidInput, NotFound, TenureError, Unavailable
from tenure.domain.idspace import MAX_VALUE


def reopen(alloc: Allocator, url: str) -> Allocator:
    alloc.close()
    return Allocator.open(url)


def test_next_fit_cursor_survives_restarts_and_wraps_below_itself(alloc: Allocator, db_url: str) -> None:
    # The top value is reserved, so the cursor stops at it and the next pick must wrap to the bottom.
    alloc.create_pool("p", ranges=[[0, 3], [MAX_VALUE - 3, MAX_VALUE]], reserved=[[MAX_VALUE, MAX_VALUE]],
                      strategy="next")
    values = [alloc.claim("p", f"k{i}").value for i in range(7)]
    assert values == [0, 1, 2, 3, MAX_VALUE - 3, MAX_VALUE - 2, MAX_VALUE - 1]
    alloc.release("p", "k1")
    alloc.release("p", "k5")  # below the cursor too: the cursor sits on the reserved top value
    alloc = reopen(alloc, db_url)
    try:
        assert alloc.claim("p", "a").value == 1  # wrapped: nothing free at or after the cursor
        alloc = reopen(alloc, db_url)
        assert alloc.claim("p", "b").value == MAX_VALUE - 2  # went on from 2, not from the bottom
        alloc.release("p", "k0")
        alloc = reopen(alloc, db_url)
        assert alloc.claim("p", "c").value == 0
        with pytest.raises(Conflict) as info:
            alloc.claim("p", "d")
        assert info.value.code == "pool_exhausted"
        assert (info.value.details["size"], info.value.details["used"]) == (7, 7)
    finally:
        alloc.close()


def test_an_open_audit_survives_a_restart_with_its_marks(alloc: Allocator, db_url: str) -> None:
    alloc.create_pool("p", ranges=[[100, 109]])
    for key in ("re-claimed", "stale", "re-claimed-after-restart"):
        alloc.claim("p", key)
    epoch = alloc.audit_begin("p").audit_epoch
    alloc.claim("p", "re-claimed")
    alloc.claim("p", "created-during-audit")
    alloc = reopen(alloc, db_url)
    try:
        view = alloc.pool("p")
        assert view.auditing and view.audit_epoch == epoch
        with pytest.raises(Conflict) as info:
            alloc.audit_begin("p")
        assert info.value.code == "audit_in_progress"
        alloc.claim("p", "re-claimed-after-restart")
        alloc = reopen(alloc, db_url)
        _, released = alloc.audit_end("p")
        assert [(r.key, r.value) for r in released] == [("stale", 101)]
        alloc = reopen(alloc, db_url)
        assert not alloc.pool("p").auditing
        assert sorted(c.key for c in alloc.claims("p")[0]) == [
            "created-during-audit", "re-claimed", "re-claimed-after-restart"
        ]
        assert alloc.claim("p", "new").value == 101  # the released value is free again
    finally:
        alloc.close()


def test_a_second_owner_of_the_store_is_refused(alloc: Allocator, db_url: str) -> None:
    alloc.create_pool("p", ranges=[[0, 9]])
    with pytest.raises(Unavailable) as info:
        Allocator.open(db_url)
    assert info.value.code == "store_locked"
    assert alloc.claim("p", "still-mine").value == 0


# -- reads answer with errors, never with a driver exception ------------------------------------


@pytest.mark.parametrize("value", [2**63, 2**64, -(2**63) - 1], ids=["2**63", "2**64", "below-bigint"])
def test_find_value_outside_the_store_s_integers_is_an_answer(alloc: Allocator, value: int) -> None:
    """Values the store cannot even represent hold no claim; asking must not leak a driver error.

    Today: OverflowError from sqlite3, sqlalchemy DataError (NumericValueOutOfRange) from psycopg.
    The HTTP route validates 0..2**32-1 itself; the library does not.
    """
    alloc.create_pool("p", ranges=[[0, 9]])
    with pytest.raises(TenureError) as info:
        alloc.find_value("p", value)
    assert isinstance(info.value, (NotFound, InvalidInput))


@pytest.mark.parametrize("after", ["\x00", "k\x00", "\ud800"], ids=["nul", "nul-inside", "lone-surrogate"])
def test_claims_after_a_key_no_store_can_hold_is_refused(alloc: Allocator, after: str) -> None:
    """``after`` is a key: the rule that refuses NUL and lone surrogates in keys must refuse it too.

    Today: PostgreSQL raises DataError for NUL (an HTTP 500 through GET /v1/pools/{pool}/claims?after=%00),
    SQLite answers a page for it (so the stores disagree), and a lone surrogate raises
    UnicodeEncodeError on both.
    """
    alloc.create_pool("p", ranges=[[0, 9]])
    alloc.claim("p", "k")
    with pytest.raises(InvalidInput) as info:
        alloc.claims("p", after=after)
    assert info.value.code == "invalid_key"


def test_owners_marks_and_large_revisions_come_back_whole_after_a_restart(alloc: Allocator, db_url: str) -> None:
    """The restore packs most claims in the database (no owner, no mark, a revision below 2**31) and reads
    the rest as rows: each kind must come back with its owner, mark and revision, and act on them."""
    svc, run = alloc.runtime.allocator, alloc.runtime.run
    alloc.create_pool("p", ranges=[[0, 99]])
    run(svc.claim_op("p", "plain"))
    run(svc.claim_op("p", "old"))
    run(svc.claim_op("p", "blue-1", project="blue"))
    run(svc.claim_op("p", "blue-2", project="blue"))
    run(svc.claim_op("p", "h1", host="h1"))
    run(svc.claim_op("p", "blue-h1", project="blue", host="h1"))
    alloc.audit_begin("p")
    alloc.claim("p", "plain")  # marked in this audit: not a plain record any more
    with alloc.runtime.engine.begin() as conn:  # a long-lived store: revisions past 2**31
        conn.exec_driver_sql("UPDATE claims SET revision = revision + 3000000000 WHERE key IN ('old', 'blue-2')")
    with alloc.runtime.engine.connect() as conn:
        stored = sorted(conn.exec_driver_sql("SELECT key, value, project, host, mark, revision FROM claims").all())
    alloc = reopen(alloc, db_url)
    svc, run = alloc.runtime.allocator, alloc.runtime.run
    try:
        pool = svc._entries["p"].pool
        assert sorted((c.key, c.value, c.project, c.host, c.mark, c.revision) for c in pool.claims.values()) == [
            tuple(r) for r in stored
        ]
        assert pool.ids.used == 6 and alloc.pool("p").used == 6
        other = run(svc.claim_op("p", "next", project="red"))
        assert other.value == 6  # 0..5 are taken after the restore
        with pytest.raises(Conflict) as info:  # blue's claim is not red's to take over
            run(svc.claim_op("p", "blue-1", principal=Principal("member", project="red")))
        assert info.value.code == "key_in_use"
        _, released = alloc.audit_end("p")  # every claim but the marked one and the new one
        assert {r.key: (r.project, r.host) for r in released} == {
            "old": (None, None), "blue-1": ("blue", None), "blue-2": ("blue", None), "h1": (None, "h1"),
            "blue-h1": ("blue", "h1"),
        }
    finally:
        alloc.close()
