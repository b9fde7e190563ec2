"""RunSet against a plain ``set``: the taken values of an ID space as maximal runs.

The model is a Python set of the same integers. After every step the runs must
describe exactly the model's values, sorted, each ``[start, end]`` with
``start <= end``, and *maximal*: no two runs overlap or touch (a gap of at least
one absent value between them). Maximality is what makes ``next_absent`` one
look-up, so it is checked as an invariant, not assumed.
"""

from __future__ import annotations

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
    def __init__(self) -> None:
        super().__init__()
        self.rs = RunSet()
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


@settings(max_examples=200, deadline=None)
@given(st.sets(VALUES))
def test_from_sorted_values_builds_maximal_runs(values: set[int]) -> None:
    rs = RunSet.from_sorted_values(sorted(values))
    assert_runs_match(rs, values)


@settings(max_examples=100, deadline=None)
@given(st.sets(LOW), st.lists(st.tuples(st.booleans(), LOW), max_size=30))
def test_from_sorted_values_then_edits_behaves_like_a_set(values: set[int], edits: list[tuple[bool, int]]) -> None:
    """A restored set (built in one pass) is as editable as one built value by value."""
    rs = RunSet.from_sorted_values(sorted(values))
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
