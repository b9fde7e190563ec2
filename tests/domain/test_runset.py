"""RunSet against a plain ``set``: the taken values of an ID space as maximal runs.

The model is a Python set of the same integers. After every step the runs must
describe exactly the model's values, sorted, each ``[start, end]`` with
``start <= end``, and *maximal*: no two runs overlap or touch (a gap of at least
one absent value between them). Maximality is what makes ``next_absent`` one
look-up, so it is checked as an invariant, not assumed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tenure.domain.idspace import MAX_VALUE, RunSet

# A small universe makes collisions, merges and splits frequent; a band at the
# top of the 32-bit space checks that nothing overflows or wraps at 2**32-1.
LOW = st.integers(min_value=0, max_value=60)
HIGH = st.integers(min_value=MAX_VALUE - 20, max_value=MAX_VALUE)
VALUES = st.one_of(LOW, HIGH)


def assert_runs_match(rs: RunSet, model: set[int]) -> None:
    runs = rs.runs()
    for start, end in runs:
        assert start <= end, runs
    for (_, a_end), (b_start, _) in zip(runs, runs[1:]):
        # Sorted, disjoint and not touching: a maximal run never has a neighbour at end + 1.
        assert a_end + 1 < b_start, runs
    expanded = {v for start, end in runs for v in range(start, end + 1)}
    assert expanded == model
    assert len(rs) == len(model)
    assert rs.run_count == len(runs)


class RunSetMachine(RuleBasedStateMachine):
    LOAD = 512  # the default: every run in one chunk at these sizes

    def __init__(self) -> None:
        super().__init__()
        self.rs = RunSet(load=self.LOAD)
        self.model: set[int] = set()

    @rule(v=VALUES)
    def add(self, v: int) -> None:
        if v in self.model:
            return  # precondition of add: v is absent
        self.rs.add(v)
        self.model.add(v)

    @rule(lo=VALUES, length=st.integers(min_value=1, max_value=12))
    def add_range(self, lo: int, length: int) -> None:
        hi = min(lo + length - 1, MAX_VALUE)
        if any(v in self.model for v in range(lo, hi + 1)):
            return  # precondition of add_range: disjoint from the set
        self.rs.add_range(lo, hi)
        self.model.update(range(lo, hi + 1))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove_present(self, data: st.DataObject) -> None:
        v = data.draw(st.sampled_from(sorted(self.model)))
        self.rs.remove(v)
        self.model.remove(v)

    @rule(v=VALUES)
    def remove_absent_raises_key_error(self, v: int) -> None:
        if v in self.model:
            return
        try:
            self.rs.remove(v)
        except KeyError:
            pass
        else:
            raise AssertionError(f"remove({v}) of an absent value did not raise KeyError")

    @rule(v=VALUES)
    def contains(self, v: int) -> None:
        assert (v in self.rs) == (v in self.model)

    @rule(x=VALUES, span=st.integers(min_value=0, max_value=8))
    def take_from(self, x: int, span: int) -> None:
        hi = min(x + span, MAX_VALUE)
        expected = next((v for v in range(x, hi + 1) if v not in self.model), None)
        assert self.rs.take_from(x, hi) == expected
        if expected is not None:
            self.model.add(expected)

    @rule(x=VALUES)
    def next_start_after(self, x: int) -> None:
        if x in self.model:
            return  # asked only of absent values
        after = [s for s, _ in self.rs.runs() if s > x]
        assert self.rs.next_start_after(x) == (after[0] if after else None)

    @rule(x=VALUES)
    def next_absent(self, x: int) -> None:
        expected = x
        while expected in self.model:
            expected += 1
        assert self.rs.next_absent(x) == expected

    @invariant()
    def runs_are_maximal_sorted_and_exact(self) -> None:
        assert_runs_match(self.rs, self.model)


TestRunSetAgainstSet = RunSetMachine.TestCase
TestRunSetAgainstSet.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class SmallChunkMachine(RunSetMachine):
    """Chunks of at most two runs: every add and remove splits, empties or re-heads a chunk."""

    LOAD = 1


TestRunSetInSmallChunks = SmallChunkMachine.TestCase
TestRunSetInSmallChunks.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@settings(max_examples=200, deadline=None)
@given(st.sets(VALUES))
def test_from_sorted_values_builds_maximal_runs(values: set[int]) -> None:
    rs = RunSet.from_sorted_values(sorted(values))
    assert_runs_match(rs, values)


@settings(max_examples=100, deadline=None)
@given(st.sets(LOW), st.lists(st.tuples(st.booleans(), LOW), max_size=30))
@pytest.mark.parametrize("load", [1, 2, 512])
def test_from_sorted_values_then_edits_behaves_like_a_set(
    load: int, values: set[int], edits: list[tuple[bool, int]]
) -> None:
    """A restored set (built in one pass, in chunks of ``load`` runs) is as editable as one built value by value."""
    rs = RunSet.from_sorted_values(sorted(values), load=load)
    model = set(values)
    for add, v in edits:
        if add and v not in model:
            rs.add(v)
            model.add(v)
        elif not add and v in model:
            rs.remove(v)
            model.remove(v)
        assert_runs_match(rs, model)


def test_from_sorted_values_of_nothing_is_empty() -> None:
    rs = RunSet.from_sorted_values([])
    assert len(rs) == 0
    assert rs.runs() == []
    assert rs.next_absent(0) == 0


def test_runs_touching_the_top_of_the_space() -> None:
    rs = RunSet()
    rs.add_range(MAX_VALUE - 3, MAX_VALUE)
    rs.add(MAX_VALUE - 4)
    assert rs.runs() == [(MAX_VALUE - 4, MAX_VALUE)]
    assert rs.next_absent(MAX_VALUE - 2) == MAX_VALUE + 1  # beyond the space: callers compare with hi
    rs.remove(MAX_VALUE)
    assert rs.runs() == [(MAX_VALUE - 4, MAX_VALUE - 1)]


def test_chunk_heads_follow_edits() -> None:
    """Each chunk's first start (what the look-up bisects) moves with its first run."""
    rs = RunSet.from_sorted_values([0, 2, 4, 6, 8, 10], load=2)  # chunks (0, 2) (4, 6) (8, 10)
    rs.remove(4)  # the second chunk's head goes: 6 leads it
    assert 5 not in rs and rs.next_absent(6) == 7 and 6 in rs
    rs.add(5)  # joins 6 at its start: the head is now 5
    assert 5 in rs and rs.runs() == [(0, 0), (2, 2), (5, 6), (8, 8), (10, 10)]
    rs.remove(5)
    rs.remove(6)  # the chunk empties and goes
    assert rs.runs() == [(0, 0), (2, 2), (8, 8), (10, 10)] and rs.next_absent(6) == 6
    rs.add_range(3, 7)  # bridges 2 and 8 across what were chunks
    assert rs.runs() == [(0, 0), (2, 8), (10, 10)] and len(rs) == 9


def test_a_run_set_takes_8_bytes_a_run() -> None:
    """The runs live in 32-bit arrays: a million scattered values are about 8 MB, not the ~60 MB of int objects."""
    import tracemalloc

    values = list(range(0, 2_000_000, 2))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rs = RunSet.from_sorted_values(values)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert rs.run_count == 1_000_000
    assert (after - before) / rs.run_count < 10
