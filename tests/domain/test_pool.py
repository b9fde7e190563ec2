"""Pool: keyed, idempotent claims, pinned values, release, and mark-and-sweep audit."""

from __future__ import annotations

import pytest

from tenure.domain.errors import Conflict, InvalidInput, NotFound
from tenure.domain.names import MAX_KEY_LENGTH
from tenure.domain.pool import Pool


def make_pool(**kw: object) -> Pool:
    kw.setdefault("ranges", [[10, 19]])
    kw.setdefault("reserved", [[12, 12]])
    return Pool.create("p", **kw)  # type: ignore[arg-type]


def claim(pool: Pool, key: str, value: int | None = None) -> int:
    return pool.claim(key, value=value, revision=1).claim.value


# -- claiming -----------------------------------------------------------------


def test_claim_is_idempotent_per_key() -> None:
    pool = make_pool()
    first = pool.claim("vrf:blue", revision=1)
    again = pool.claim("vrf:blue", revision=2)
    assert first.created and not again.created and not again.marked
    assert again.claim.value == first.claim.value == 10
    assert again.claim.revision == 1  # nothing changed, nothing recorded
    assert pool.used == 1 and pool.ids.used == 1


def test_claims_skip_reserved_values_and_exhaust() -> None:
    pool = make_pool()
    values = [claim(pool, f"k{i}") for i in range(9)]
    assert values == [10, 11, 13, 14, 15, 16, 17, 18, 19]
    with pytest.raises(Conflict) as info:
        claim(pool, "one-too-many")
    assert info.value.code == "pool_exhausted"
    assert info.value.details == {"pool": "p", "size": 9, "used": 9}
    assert "one-too-many" not in pool.claims


def test_pinned_claim_of_a_free_value_is_honoured() -> None:
    pool = make_pool()
    assert claim(pool, "a", 17) == 17
    assert claim(pool, "a", 17) == 17  # same key, same value: idempotent
    assert claim(pool, "b") == 10
    assert pool.ids.is_taken(17)


@pytest.mark.parametrize(
    ("value", "error", "code"),
    [
        pytest.param(10, Conflict, "value_taken", id="taken"),
        pytest.param(12, Conflict, "value_reserved", id="reserved"),
        pytest.param(9, InvalidInput, "value_out_of_range", id="below-range"),
        pytest.param(20, InvalidInput, "value_out_of_range", id="above-range"),
        pytest.param(2**32, InvalidInput, "value_out_of_range", id="beyond-32-bits"),
        pytest.param(-1, InvalidInput, "value_out_of_range", id="negative"),
        pytest.param("11", InvalidInput, "invalid_value", id="string"),
        pytest.param(True, InvalidInput, "invalid_value", id="bool"),
        pytest.param(11.0, InvalidInput, "invalid_value", id="float"),
    ],
)
def test_pinned_claim_is_refused_without_change(value: object, error: type, code: str) -> None:
    pool = make_pool()
    claim(pool, "holder")  # takes 10
    before = (dict(pool.claims), pool.ids.used, pool.ids.cursor, pool.ids.run_count)
    with pytest.raises(error) as info:
        pool.claim("newcomer", value=value, revision=2)  # type: ignore[arg-type]
    assert info.value.code == code
    assert (dict(pool.claims), pool.ids.used, pool.ids.cursor, pool.ids.run_count) == before


def test_pinned_claim_of_a_key_holding_another_value_is_refused() -> None:
    pool = make_pool()
    claim(pool, "a")  # 10
    with pytest.raises(Conflict) as info:
        pool.claim("a", value=15, revision=2)
    assert info.value.code == "key_holds_other_value"
    assert info.value.details["value"] == 10
    assert pool.claims["a"].value == 10
    assert not pool.ids.is_taken(15)


def test_pinned_claim_does_not_move_the_next_fit_cursor() -> None:
    pool = make_pool(strategy="next")
    assert claim(pool, "a") == 10
    assert claim(pool, "pinned", 18) == 18
    assert claim(pool, "b") == 11


# -- releasing ----------------------------------------------------------------


def test_release_frees_the_value() -> None:
    pool = make_pool()
    claim(pool, "a")
    claim(pool, "b")
    released = pool.release("a")
    assert released.key == "a" and released.value == 10
    assert "a" not in pool.claims and pool.used == 1
    assert not pool.ids.is_taken(10)
    assert claim(pool, "c") == 10  # lowest: reused at once


def test_release_of_a_missing_key_is_not_found() -> None:
    pool = make_pool()
    with pytest.raises(NotFound) as info:
        pool.release("ghost")
    assert info.value.code == "claim_not_found"


def test_releasing_a_claim_never_frees_a_reserved_value() -> None:
    pool = make_pool(ranges=[[0, 2]], reserved=[[1, 1]])
    claim(pool, "a")  # 0
    claim(pool, "b")  # 2
    pool.release("a")
    pool.release("b")
    assert pool.ids.is_taken(1)
    assert [claim(pool, k) for k in "xy"] == [0, 2]


# -- audit --------------------------------------------------------------------


def test_audit_keeps_reclaimed_and_new_claims_and_releases_the_rest() -> None:
    pool = make_pool()
    for key in ("kept", "stale-1", "stale-2", "pinned-kept"):
        claim(pool, key)
    epoch = pool.audit_begin()
    assert pool.auditing and epoch == 1
    out = pool.claim("kept", revision=7)
    assert out.marked and not out.created and out.claim.mark == epoch and out.claim.revision == 7
    again = pool.claim("kept", revision=8)
    assert not again.marked  # already marked in this epoch: no stored change
    assert pool.claim("pinned-kept", value=pool.claims["pinned-kept"].value, revision=9).marked
    new_value = claim(pool, "created-during-audit")
    stale = pool.audit_end()
    assert sorted(c.key for c in stale) == ["stale-1", "stale-2"]
    assert sorted(pool.claims) == ["created-during-audit", "kept", "pinned-kept"]
    assert pool.claims["created-during-audit"].value == new_value
    assert not pool.auditing
    for c in stale:
        assert not pool.ids.is_taken(c.value)
    assert pool.ids.used == pool.used == 3


def test_a_second_audit_needs_a_fresh_reclaim() -> None:
    pool = make_pool()
    claim(pool, "a")
    pool.audit_begin()
    pool.claim("a", revision=2)
    assert pool.audit_end() == []
    pool.audit_begin()  # epoch 2: a's mark (1) is old again
    assert [c.key for c in pool.audit_end()] == ["a"]


def test_audit_begin_twice_is_a_conflict() -> None:
    pool = make_pool()
    pool.audit_begin()
    with pytest.raises(Conflict) as info:
        pool.audit_begin()
    assert info.value.code == "audit_in_progress"
    assert pool.audit_epoch == 1 and pool.auditing


def test_audit_end_without_begin_is_a_conflict() -> None:
    pool = make_pool()
    claim(pool, "a")
    with pytest.raises(Conflict) as info:
        pool.audit_end()
    assert info.value.code == "no_audit"
    assert "a" in pool.claims


# -- keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("k" * (MAX_KEY_LENGTH + 1), id="257-chars"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\ud800b", id="lone-high-surrogate"),
        pytest.param("\udfff", id="lone-low-surrogate"),
        pytest.param(None, id="none"),
        pytest.param(42, id="int"),
        pytest.param(b"bytes", id="bytes"),
    ],
)
def test_invalid_keys_are_refused(key: object) -> None:
    pool = make_pool()
    with pytest.raises(InvalidInput) as info:
        pool.claim(key, revision=1)  # type: ignore[arg-type]
    assert info.value.code == "invalid_key"
    assert pool.used == 0 and pool.ids.used == 0


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * MAX_KEY_LENGTH, id="256-chars"),
        pytest.param("🦀" * MAX_KEY_LENGTH, id="256-emoji"),  # 256 characters, 1024 UTF-8 bytes
        pytest.param("route:blue/10.0.0.0/24", id="slash"),
        pytest.param("vmi:Ünïcødé-日本語-עברית", id="unicode"),
        pytest.param(" ", id="space"),
        pytest.param("a\nb\tc", id="control-chars"),
        pytest.param("\U0010ffff", id="last-code-point"),
    ],
)
def test_any_unicode_key_up_to_256_characters_is_accepted(key: str) -> None:
    pool = make_pool()
    value = claim(pool, key)
    assert pool.get(key).value == value
    assert claim(pool, key) == value
    assert pool.release(key).key == key


@pytest.mark.parametrize("strategy", ["lowest", "next", "random"])
def test_claim_fresh_is_one_claim_after_another_and_undoes_whole(strategy: str) -> None:
    import random

    one = Pool.create("p", ranges=[[10, 40]], reserved=[[12, 13]], strategy=strategy, rng=random.Random(5))
    many = Pool.create("p", ranges=[[10, 40]], reserved=[[12, 13]], strategy=strategy, rng=random.Random(5))
    for pool in (one, many):
        pool.claim("pinned", value=20, project="blue", revision=1)
        pool.audit_begin()
    keys = [f"k{i}" for i in range(12)]
    expected = [one.claim(k, project="red", host="h", revision=10 + i).claim for i, k in enumerate(keys)]
    before = (dict(many.claims), many.ids._taken.runs(), many.ids.cursor)
    values = many.claim_fresh(keys, project="red", host="h", revision=10)
    assert values == [c.value for c in expected]
    assert dict(many.claims) == dict(one.claims)  # owner, mark and revision of each, as claim() records them
    assert many.ids._taken.runs() == one.ids._taken.runs() and many.ids.cursor == one.ids.cursor
    many.unclaim_fresh(keys, values, cursor=before[2])
    assert (dict(many.claims), many.ids._taken.runs(), many.ids.cursor) == before


def test_claim_fresh_refuses_held_repeated_or_too_many_keys_and_changes_nothing() -> None:
    pool = make_pool()  # 9 free values
    pool.claim("a", revision=1)
    before = (dict(pool.claims), pool.ids._taken.runs())
    for keys in (["b", "a"], ["b", "b"]):
        with pytest.raises(ValueError):
            pool.claim_fresh(keys, revision=2)
    with pytest.raises(Conflict) as info:
        pool.claim_fresh([f"k{i}" for i in range(9)], revision=2)
    assert info.value.code == "pool_exhausted"
    assert (dict(pool.claims), pool.ids._taken.runs()) == before
