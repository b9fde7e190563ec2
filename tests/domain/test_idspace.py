"""IdSpace against a brute-force model: every value of a small pool, enumerated.

Pools are drawn small (ranges inside 0..200, sometimes one range ending at or
just below 2**32-1) so that the model can be a plain set of every value, and
exhaustion, wrap-around and reserved values next to claimed ones happen often.
The model of each strategy is the definition in idspace.py's docstring:

- ``lowest``: the smallest free value;
- ``next``: the first free value at or after the cursor, else the first free
  value from the bottom; the cursor moves to just past each picked value and
  wraps to the bottom after the top value;
- ``random``: any free value.
"""

from __future__ import annotations

import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenure.domain.errors import InvalidInput
from tenure.domain.idspace import MAX_VALUE, STRATEGIES, IdSpace


@st.composite
def pool_shapes(draw: st.DrawFn) -> tuple[list[list[int]], list[list[int]]]:
    """Disjoint inclusive ranges (sometimes adjacent) and reserved runs inside them."""
    ranges: list[list[int]] = []
    start = draw(st.integers(min_value=0, max_value=20))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        length = draw(st.integers(min_value=1, max_value=25))
        end = min(start + length - 1, 200)
        if start > 200:
            break
        ranges.append([start, end])
        start = end + 1 + draw(st.integers(min_value=0, max_value=15))
    if draw(st.booleans()) or not ranges:
        gap_to_top = draw(st.sampled_from([0, 0, 1, 5]))
        length = draw(st.integers(min_value=1, max_value=10))
        hi = MAX_VALUE - gap_to_top
        ranges.append([hi - length + 1, hi])
    values = sorted(v for lo, hi in ranges for v in range(lo, hi + 1))
    reserved_values = sorted(draw(st.sets(st.sampled_from(values), max_size=len(values) // 2)))
    # Reserved values as runs of consecutive values; a run may be cut anywhere
    # (two touching reserved entries are fine, they do not overlap).
    reserved: list[list[int]] = []
    for v in reserved_values:
        if reserved and reserved[-1][1] + 1 == v and draw(st.booleans()):
            reserved[-1][1] = v
        else:
            reserved.append([v, v])
    ranges = draw(st.permutations(ranges))
    reserved = draw(st.permutations(reserved))
    return [list(r) for r in ranges], [list(r) for r in reserved]


class Model:
    """Every value of the pool, by brute force."""

    def __init__(self, ranges: list[list[int]], reserved: list[list[int]], strategy: str) -> None:
        self.values = sorted(v for lo, hi in ranges for v in range(lo, hi + 1))
        self.reserved = {v for lo, hi in reserved for v in range(lo, hi + 1)}
        self.taken: set[int] = set()
        self.strategy = strategy
        self.cursor = self.values[0]

    def free_values(self) -> list[int]:
        return [v for v in self.values if v not in self.reserved and v not in self.taken]

    def expected_pick(self) -> int | None:
        free = self.free_values()
        if not free:
            return None
        if self.strategy == "lowest":
            return free[0]
        if self.strategy == "next":
            return next((v for v in free if v >= self.cursor), free[0])
        raise AssertionError("random has no single expected value")

    def take(self, v: int, *, advance: bool) -> None:
        self.taken.add(v)
        if advance and self.strategy == "next":
            self.cursor = v + 1 if v < self.values[-1] else self.values[0]


def check_against_model(ids: IdSpace, model: Model) -> None:
    free = model.free_values()
    assert ids.size == len(model.values) - len(model.reserved)
    assert ids.used == len(model.taken)
    assert ids.free == len(free)
    picked = ids.pick()
    if not free:
        assert picked is None
    elif model.strategy == "random":
        assert picked in free
    else:
        assert picked == model.expected_pick()


@settings(max_examples=300, deadline=None)
@given(shape=pool_shapes(), strategy=st.sampled_from(STRATEGIES), seed=st.integers(0, 2**32), data=st.data())
def test_pick_follows_the_strategy_until_exhaustion(
    shape: tuple[list[list[int]], list[list[int]]], strategy: str, seed: int, data: st.DataObject
) -> None:
    ranges, reserved = shape
    ids = IdSpace(ranges, reserved, strategy=strategy, rng=random.Random(seed))
    model = Model(ranges, reserved, strategy)
    assert ids.cursor == model.cursor
    check_against_model(ids, model)
    for _ in range(data.draw(st.integers(min_value=0, max_value=60), label="steps")):
        op = data.draw(st.sampled_from(["pick", "pick", "pick", "pin", "release"]), label="op")
        if op == "pick":
            v = ids.pick()
            if v is None:
                assert not model.free_values()
                continue
            ids.take(v, advance=True)
            model.take(v, advance=True)
        elif op == "pin":
            free = model.free_values()
            if not free:
                continue
            v = data.draw(st.sampled_from(free), label="pinned")
            ids.take(v)  # a pinned claim: the cursor stays where it is
            model.take(v, advance=False)
        else:
            if not model.taken:
                continue
            v = data.draw(st.sampled_from(sorted(model.taken)), label="released")
            ids.release(v)
            model.taken.remove(v)
        if strategy == "next":
            assert ids.cursor == model.cursor
        check_against_model(ids, model)
        for v in (data.draw(st.sampled_from(model.values), label="probe"), -1 + model.values[0]):
            assert ids.in_range(v) == (v in model.values)
            assert ids.is_reserved(v) == (v in model.reserved)
            assert ids.is_taken(v) == (v in model.taken or v in model.reserved)

    # Restore: the same definition plus the claimed values, loaded in one pass,
    # is the same space (and, with the persisted cursor, picks the same next value).
    restored = IdSpace(ranges, reserved, strategy=strategy, cursor=ids.cursor, rng=random.Random(seed))
    restored.load(sorted(model.taken))
    assert restored.used == ids.used
    assert restored.free == ids.free
    assert restored.run_count == ids.run_count
    check_against_model(restored, model)


@settings(max_examples=100, deadline=None)
@given(shape=pool_shapes(), strategy=st.sampled_from(STRATEGIES), seed=st.integers(0, 2**32))
def test_picking_until_exhausted_hands_out_every_free_value_once(
    shape: tuple[list[list[int]], list[list[int]]], strategy: str, seed: int
) -> None:
    ranges, reserved = shape
    ids = IdSpace(ranges, reserved, strategy=strategy, rng=random.Random(seed))
    model = Model(ranges, reserved, strategy)
    handed: list[int] = []
    while (v := ids.pick()) is not None:
        ids.take(v, advance=True)
        handed.append(v)
    assert sorted(handed) == model.free_values()  # each free value exactly once, no reserved one
    assert ids.free == 0 and ids.used == ids.size


def test_next_strategy_does_not_reuse_a_released_value_at_once() -> None:
    ids = IdSpace([[10, 14]], strategy="next")
    for expected in (10, 11, 12):
        assert ids.pick() == expected
        ids.take(expected, advance=True)
    ids.release(10)
    assert ids.pick() == 13  # lowest would answer 10
    for expected in (13, 14):
        ids.take(ids.pick(), advance=True)
        assert ids.is_taken(expected)
    assert ids.cursor == 10  # wrapped after the top value
    assert ids.pick() == 10


def test_next_strategy_wraps_at_the_top_of_the_32_bit_space() -> None:
    ids = IdSpace([[0, 1], [MAX_VALUE - 1, MAX_VALUE]], strategy="next")
    picks = []
    for _ in range(4):
        v = ids.pick()
        ids.take(v, advance=True)
        picks.append(v)
    assert picks == [0, 1, MAX_VALUE - 1, MAX_VALUE]
    assert ids.cursor == 0
    assert ids.pick() is None
    ids.release(1)
    assert ids.pick() == 1


def test_random_strategy_spreads_its_picks() -> None:
    """Not a statistical test: a seeded generator must not always start at the bottom."""
    ids = IdSpace([[0, 999]], strategy="random", rng=random.Random(1234))
    picks = set()
    for _ in range(20):
        v = ids.pick()
        ids.take(v, advance=True)
        picks.add(v)
    assert len(picks) == 20
    assert picks != set(range(20))


def test_lowest_strategy_reuses_a_released_value_at_once() -> None:
    ids = IdSpace([[5, 9]], reserved=[[5, 5]])
    for _ in range(3):
        ids.take(ids.pick(), advance=True)
    assert ids.is_taken(6) and ids.is_taken(8)
    ids.release(7)
    assert ids.pick() == 7


# -- validation ---------------------------------------------------------------

BAD_DEFINITIONS = [
    pytest.param({"ranges": []}, "invalid_range", id="no-range"),
    pytest.param({"ranges": [[5, 4]]}, "invalid_range", id="empty-range-lo-above-hi"),
    pytest.param({"ranges": [[0, 10], [10, 20]]}, "overlapping_ranges", id="ranges-share-a-value"),
    pytest.param({"ranges": [[0, 10], [3, 4]]}, "overlapping_ranges", id="range-inside-another"),
    pytest.param({"ranges": [[20, 30], [0, 25]]}, "overlapping_ranges", id="overlap-given-unsorted"),
    pytest.param({"ranges": [[1, 5], [1, 5]]}, "overlapping_ranges", id="same-range-twice"),
    pytest.param({"ranges": [[-1, 5]]}, "invalid_range", id="below-zero"),
    pytest.param({"ranges": [[0, MAX_VALUE + 1]]}, "invalid_range", id="above-2**32-1"),
    pytest.param({"ranges": [[MAX_VALUE + 1, MAX_VALUE + 2]]}, "invalid_range", id="wholly-above-2**32-1"),
    pytest.param({"ranges": [[0, 5, 9]]}, "invalid_range", id="three-bounds"),
    pytest.param({"ranges": [[0]]}, "invalid_range", id="one-bound"),
    pytest.param({"ranges": [[0.0, 5]]}, "invalid_range", id="float-bound"),
    pytest.param({"ranges": [[False, True]]}, "invalid_range", id="bool-bounds"),
    pytest.param({"ranges": [["0", "5"]]}, "invalid_range", id="string-bounds"),
    pytest.param({"ranges": [[0, 10]], "reserved": [[11, 11]]}, "invalid_reserved", id="reserved-above"),
    pytest.param({"ranges": [[5, 10]], "reserved": [[4, 6]]}, "invalid_reserved", id="reserved-straddles-lo"),
    pytest.param(
        {"ranges": [[0, 5], [7, 10]], "reserved": [[5, 7]]}, "invalid_reserved", id="reserved-spans-a-gap"
    ),
    pytest.param({"ranges": [[0, 10]], "reserved": [[2, 5], [5, 6]]}, "overlapping_ranges", id="reserved-overlap"),
    pytest.param({"ranges": [[0, 10]], "reserved": [[6, 3]]}, "invalid_range", id="reserved-lo-above-hi"),
    pytest.param({"ranges": [[0, 10]], "reserved": [[-1, 0]]}, "invalid_range", id="reserved-below-zero"),
    pytest.param({"ranges": [[0, 10]], "strategy": "highest"}, "invalid_strategy", id="unknown-strategy"),
    pytest.param({"ranges": [[0, 10]], "strategy": "Lowest"}, "invalid_strategy", id="strategy-case"),
    pytest.param({"ranges": [[0, 10]], "strategy": ""}, "invalid_strategy", id="empty-strategy"),
]


@pytest.mark.parametrize(("definition", "code"), BAD_DEFINITIONS)
def test_invalid_definitions_are_refused(definition: dict, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        IdSpace(definition["ranges"], definition.get("reserved", ()), strategy=definition.get("strategy", "lowest"))
    assert info.value.code == code


def test_valid_edge_definitions_are_accepted() -> None:
    whole = IdSpace([[0, MAX_VALUE]])
    assert whole.size == 2**32
    touching = IdSpace([[0, 5], [6, 10]], reserved=[[4, 7]])  # reserved across two touching ranges
    assert touching.size == 7
    all_reserved = IdSpace([[3, 4]], reserved=[[3, 4]])
    assert all_reserved.size == 0 and all_reserved.pick() is None


# -- cost grows with what is used, not with the size of the range --------------


def test_an_empty_pool_of_2_pow_24_values_is_small_in_memory() -> None:
    IdSpace([[0, 1]])  # warm up imports and caches outside the measurement
    tracemalloc.start()
    try:
        ids = IdSpace([[1, 2**24 - 1]], strategy="lowest")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids.size == 2**24 - 1
    assert ids.pick() == 1
    assert peak < 100 * 1024, f"constructing an empty 2**24 pool allocated {peak} bytes"


def test_taken_values_are_stored_as_runs() -> None:
    """Consecutive claims collapse into one run; memory follows the runs, not the range."""
    ids = IdSpace([[0, 2**24 - 1]], reserved=[[100, 199]], strategy="lowest")
    for _ in range(1000):
        ids.take(ids.pick(), advance=True)
    assert ids.run_count == 1  # 0..1099 including the reserved block
    assert ids.pick() == 1100
    for v in range(200, 1100, 2):  # every other claim above the reserved block
        ids.release(v)
    assert ids.run_count == 1 + 450  # [0, 199], then [201], [203], ... [1099]
    assert ids.pick() == 200


@settings(max_examples=300, deadline=None)
@given(shape=pool_shapes(), strategy=st.sampled_from(STRATEGIES), seed=st.integers(0, 2**32), data=st.data())
def test_take_many_gives_what_one_pick_after_another_gives(
    shape: tuple[list[list[int]], list[list[int]]], strategy: str, seed: int, data: st.DataObject
) -> None:
    """The bulk path (whole gaps at a time for lowest and next) against pick() and take() one by one, from the
    same state and the same random stream: the same values in the same order, the same runs and cursor."""
    ranges, reserved = shape
    one = IdSpace(ranges, reserved, strategy=strategy, rng=random.Random(seed))
    many = IdSpace(ranges, reserved, strategy=strategy, rng=random.Random(seed))
    free = Model(ranges, reserved, strategy).free_values()
    for v in data.draw(st.lists(st.sampled_from(free), unique=True)) if free else []:
        one.take(v)  # some values taken already, by pinned claims: gaps of every size
        many.take(v)
    cursor = data.draw(st.sampled_from([lo for lo, _ in one.ranges] + [hi for _, hi in one.ranges]))
    one.cursor = many.cursor = cursor
    n = data.draw(st.integers(0, one.free))
    expected = []
    for _ in range(n):
        v = one.pick()
        assert v is not None
        one.take(v, advance=True)
        expected.append(v)
    assert many.take_many(n) == expected
    assert (many._taken.runs(), many.used, many.cursor) == (one._taken.runs(), one.used, one.cursor)
    with pytest.raises(ValueError):
        many.take_many(many.free + 1)
    assert many._taken.runs() == one._taken.runs()  # refused: nothing taken
