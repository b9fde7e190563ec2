"""Ledger against a brute-force model: the usage of every time unit, enumerated.

Bookings are drawn inside a small domain of instants (``LO .. HI``) so the
model can be a plain list holding the usage of each unit ``t`` (0 outside the
domain). Windows are drawn *relative to earlier bookings* as often as not:
identical, nested, enclosing, overlapping, touching (one's end is the other's
start), sharing a start or an end, and with equal amounts, because those are
the shapes on which schedulers have overcommitted (a booking wholly inside a
request missed; equal amounts starting together counted once).

After every step the ledger must be the model exactly: ``usage_at`` for every
instant, ``peak``/``peak_at`` over windows, ``steps()`` reassembling the model,
and the representation canonical (strictly increasing instants, no redundant
breakpoint, ``_v[-1] == 0``), so that its size is the number of changes of the
model function and not the length of time booked.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tenure.domain.ledger import Ledger

LO, HI = -20, 60  # the model's domain of instants: units LO .. HI-1
AMOUNTS = st.integers(min_value=1, max_value=10)
INSTANTS = st.integers(min_value=LO, max_value=HI)
GRID = range(LO - 4, HI + 5, 8)  # window bounds the invariant checks peaks on (-24 .. 64)
GRID_SET = frozenset(GRID)

Booking = tuple[int, int, int]


# -- the model ---------------------------------------------------------------


def model_at(model: list[int], t: int) -> int:
    return model[t - LO] if LO <= t < HI else 0


def model_book(model: list[int], start: int, end: int, amount: int) -> None:
    for t in range(start, end):
        model[t - LO] += amount


def model_peak_at(model: list[int], start: int, end: int) -> tuple[int, int]:
    """The largest usage over ``[start, end)`` and the first unit with it, by scanning every unit."""
    units = [model_at(model, t) for t in range(start, end)] if start < LO or end > HI else model[start - LO : end - LO]
    best = max(units)
    return best, start + units.index(best)


def model_changes(model: list[int]) -> int:
    """How many times the model function changes value (its breakpoints)."""
    padded = [0, *model, 0]
    return sum(1 for a, b in zip(padded, padded[1:]) if a != b)


def expand(steps: list[tuple[int, int | None, int]], start: int, end: int) -> list[int]:
    """The usage of each unit of ``[start, end)`` according to ``steps`` (0 where no step says otherwise)."""
    out = {t: 0 for t in range(start, end)}
    for frm, to, used in steps:
        for t in range(max(frm, start), min(end if to is None else to, end)):
            out[t] = used
    return [out[t] for t in range(start, end)]


def assert_steps_well_formed(steps: list[tuple[int, int | None, int]]) -> None:
    for frm, to, _ in steps[:-1]:
        assert to is not None and frm < to, steps
    for (_, a_to, a_used), (b_frm, _, b_used) in zip(steps, steps[1:]):
        assert a_to == b_frm, steps  # consecutive
        assert a_used != b_used, steps  # maximal
    if steps and steps[-1][1] is not None:
        assert steps[-1][0] < steps[-1][1], steps


def assert_canonical(ledger: Ledger) -> None:
    t, v = ledger._t, ledger._v
    assert len(t) == len(v)
    assert all(a < b for a, b in zip(t, t[1:])), t
    if v:
        assert v[-1] == 0, v
        assert v[0] != 0, v
    assert all(a != b for a, b in zip(v, v[1:])), v
    assert len(ledger) == ledger.breakpoints == len(t)
    assert bool(ledger) == bool(t)


def ledger_of(bookings: list[Booking]) -> Ledger:
    ledger = Ledger()
    for start, end, amount in bookings:
        ledger.add(start, end, amount)
    return ledger


# -- windows that deliberately collide with earlier ones ---------------------

RELATIONS = (
    "fresh",
    "identical",
    "nested",
    "enclosing",
    "overlapping",
    "touching_after",
    "touching_before",
    "same_start",
    "same_end",
)


def draw_window(data: st.DataObject, bookings: list[Booking]) -> tuple[int, int]:
    relation = data.draw(st.sampled_from(RELATIONS)) if bookings else "fresh"
    length = data.draw(st.integers(min_value=1, max_value=15))
    if relation == "fresh":
        start = data.draw(st.integers(min_value=LO, max_value=HI - 1))
        return start, min(start + length, HI)
    s, e, _ = data.draw(st.sampled_from(bookings))
    if relation == "identical":
        a, b = s, e
    elif relation == "nested":
        a = data.draw(st.integers(min_value=s, max_value=e - 1))
        b = data.draw(st.integers(min_value=a + 1, max_value=e))
    elif relation == "enclosing":
        a, b = s - data.draw(st.integers(min_value=0, max_value=5)), e + length
    elif relation == "overlapping":
        a = data.draw(st.integers(min_value=s, max_value=e - 1))
        b = e + length
    elif relation == "touching_after":
        a, b = e, e + length
    elif relation == "touching_before":
        a, b = s - length, s
    elif relation == "same_start":
        a, b = s, s + length
    else:  # same_end
        a, b = e - length, e
    a, b = max(a, LO), min(b, HI)
    return (a, b) if a < b else (s, e)


def draw_amount(data: st.DataObject, bookings: list[Booking]) -> int:
    if bookings and data.draw(st.booleans()):
        return data.draw(st.sampled_from(bookings))[2]  # an equal amount, often at the same instant
    return data.draw(AMOUNTS)


# -- the stateful comparison -------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.model = [0] * (HI - LO)
        self.bookings: list[Booking] = []

    def _book(self, start: int, end: int, amount: int) -> None:
        self.ledger.add(start, end, amount)
        model_book(self.model, start, end, amount)
        self.bookings.append((start, end, amount))

    def _cancel(self, index: int) -> None:
        start, end, amount = self.bookings.pop(index)
        self.ledger.remove(start, end, amount)
        model_book(self.model, start, end, -amount)

    @rule(data=st.data())
    def book(self, data: st.DataObject) -> None:
        start, end = draw_window(data, self.bookings)
        self._book(start, end, draw_amount(data, self.bookings))

    @rule(data=st.data(), capacity=st.integers(min_value=0, max_value=30))
    def admit(self, data: st.DataObject, capacity: int) -> None:
        start, end = draw_window(data, self.bookings)
        amount = draw_amount(data, self.bookings)
        fits = max(self.model[start - LO : end - LO]) + amount <= capacity
        assert (self.ledger.peak(start, end) + amount <= capacity) == fits
        if fits:
            self._book(start, end, amount)

    @precondition(lambda self: self.bookings)
    @rule(data=st.data(), capacity=st.integers(min_value=0, max_value=30))
    def modify(self, data: st.DataObject, capacity: int) -> None:
        """Change one booking: take the old one out, admit the new one against the rest, else put the old one back."""
        index = data.draw(st.integers(min_value=0, max_value=len(self.bookings) - 1))
        start, end, amount = self.bookings[index]
        change = data.draw(st.sampled_from(("extend_start", "extend_end", "shorten_start", "shorten_end", "amount")))
        delta = data.draw(st.integers(min_value=1, max_value=8))
        if change == "extend_start":
            start = max(LO, start - delta)
        elif change == "extend_end":
            end = min(HI, end + delta)
        elif change == "shorten_start":
            start = min(end - 1, start + delta)
        elif change == "shorten_end":
            end = max(start + 1, end - delta)
        else:
            amount = data.draw(AMOUNTS)
        old = self.bookings[index]
        self._cancel(index)
        fits = max(self.model[start - LO : end - LO]) + amount <= capacity
        assert (self.ledger.peak(start, end) + amount <= capacity) == fits
        self._book(*((start, end, amount) if fits else old))

    @precondition(lambda self: self.bookings)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._cancel(data.draw(st.integers(min_value=0, max_value=len(self.bookings) - 1)))

    @precondition(lambda self: self.bookings)
    @rule()
    def cancel_everything(self) -> None:
        while self.bookings:
            self._cancel(len(self.bookings) - 1)
        assert len(self.ledger) == 0 and not self.ledger

    @rule(data=st.data())
    def remove_too_much_is_refused(self, data: st.DataObject) -> None:
        start, end = draw_window(data, self.bookings)
        amount = min(self.model[start - LO : end - LO]) + data.draw(st.integers(min_value=1, max_value=3))
        before = (list(self.ledger._t), list(self.ledger._v))
        with pytest.raises(ValueError):
            self.ledger.remove(start, end, amount)
        assert (self.ledger._t, self.ledger._v) == before

    @rule(start=st.integers(min_value=LO - 10, max_value=HI + 10), length=st.integers(min_value=1, max_value=40))
    def query(self, start: int, length: int) -> None:
        end = start + length
        assert self.ledger.peak_at(start, end) == model_peak_at(self.model, start, end)
        assert self.ledger.peak(start, end) == model_peak_at(self.model, start, end)[0]
        steps = self.ledger.steps(start, end)
        assert_steps_well_formed(steps)
        assert steps[0][0] == start and steps[-1][1] == end  # the whole window, zero steps included
        assert expand(steps, start, end) == [model_at(self.model, t) for t in range(start, end)]

    @invariant()
    def usage_is_the_model(self) -> None:
        for t in range(LO - 3, HI + 3):
            assert self.ledger.usage_at(t) == model_at(self.model, t), t

    @invariant()
    def representation_is_canonical(self) -> None:
        assert_canonical(self.ledger)
        assert len(self.ledger) == model_changes(self.model)
        if not self.bookings:
            assert len(self.ledger) == 0

    @invariant()
    def peaks_are_the_model(self) -> None:
        """Every window with bounds on ``GRID``, the model's peak kept as a running maximum as ``end`` grows."""
        first, last = GRID[0], GRID[-1]
        units = [0] * (LO - first) + self.model + [0] * (last - HI)  # the usage of each unit first .. last-1
        for start in GRID[:-1]:
            best, at = units[start - first], start
            for t in range(start, last):
                if units[t - first] > best:
                    best, at = units[t - first], t
                if t + 1 in GRID_SET:
                    assert self.ledger.peak_at(start, t + 1) == (best, at), (start, t + 1)

    @invariant()
    def steps_reassemble_the_model(self) -> None:
        whole = [model_at(self.model, t) for t in range(LO - 3, HI + 3)]
        unbounded = self.ledger.steps()
        assert_steps_well_formed(unbounded)
        if any(self.model):
            assert unbounded[0][0] == self.ledger._t[0]
            assert unbounded[-1][1:] == (None, 0)  # forever zero after the last booking
        else:
            assert unbounded == []
        assert expand(unbounded, LO - 3, HI + 3) == whole
        bounded = self.ledger.steps(LO - 3, HI + 3)
        assert_steps_well_formed(bounded)
        assert bounded[0][0] == LO - 3 and bounded[-1][1] == HI + 3
        assert expand(bounded, LO - 3, HI + 3) == whole
        open_ended = self.ledger.steps(LO - 3)
        assert_steps_well_formed(open_ended)
        assert open_ended[0][0] == LO - 3 and open_ended[-1][1:] == (None, 0)


TestLedgerAgainstModel = LedgerMachine.TestCase
TestLedgerAgainstModel.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


# -- whole-history properties ------------------------------------------------

BOOKINGS = st.lists(
    st.tuples(st.integers(min_value=LO, max_value=HI - 1), st.integers(min_value=1, max_value=20), AMOUNTS).map(
        lambda b: (b[0], min(b[0] + b[1], HI), b[2])
    ),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(BOOKINGS, st.randoms(use_true_random=False))
def test_the_function_does_not_depend_on_booking_order(bookings: list[Booking], rng: random.Random) -> None:
    shuffled = list(bookings)
    rng.shuffle(shuffled)
    a, b = ledger_of(bookings), ledger_of(shuffled)
    assert (a._t, a._v) == (b._t, b._v)


@settings(max_examples=100, deadline=None)
@given(BOOKINGS, st.randoms(use_true_random=False))
def test_cancelling_every_booking_in_any_order_leaves_nothing(bookings: list[Booking], rng: random.Random) -> None:
    ledger = ledger_of(bookings)
    rng.shuffle(bookings)
    for start, end, amount in bookings:
        ledger.remove(start, end, amount)
        assert_canonical(ledger)
    assert len(ledger) == 0 and not ledger and ledger.steps() == []


@settings(max_examples=50, deadline=None)
@given(BOOKINGS, st.sampled_from((2**62, -(2**62), 10**30)))
def test_shifting_every_booking_in_time_shifts_the_function(bookings: list[Booking], offset: int) -> None:
    here = ledger_of(bookings)
    there = ledger_of([(s + offset, e + offset, a) for s, e, a in bookings])
    assert there._t == [t + offset for t in here._t] and there._v == here._v
    assert there.peak_at(LO + offset, HI + offset) == (lambda p: (p[0], p[1] + offset))(here.peak_at(LO, HI))


# -- focused examples --------------------------------------------------------


def test_nested_window_cannot_overcommit() -> None:
    """A booking wholly inside a request touches neither of its endpoints and must still count."""
    ledger = Ledger()
    ledger.add(40, 50, 7)
    assert ledger.usage_at(0) == ledger.usage_at(100) == 0  # both endpoints of the request are free
    assert ledger.peak(0, 100) == 7
    assert ledger.peak(0, 100) + 5 > 10  # a 5 on a capacity of 10 is refused


def test_touching_windows_do_not_overlap() -> None:
    ledger = Ledger()
    ledger.add(0, 10, 6)
    ledger.add(10, 20, 6)
    assert ledger.peak(0, 20) == 6
    assert ledger.usage_at(9) == ledger.usage_at(10) == 6
    assert ledger.usage_at(20) == 0
    assert ledger.peak(10, 20) == 6 and ledger.peak(20, 30) == 0
    assert ledger.steps() == [(0, 20, 6), (20, None, 0)]  # one step: the shared instant is not a breakpoint
    assert len(ledger) == 2


def test_equal_amounts_at_the_same_instant_both_count() -> None:
    ledger = Ledger()
    ledger.add(5, 15, 4)
    ledger.add(5, 15, 4)
    ledger.add(5, 25, 4)
    assert ledger.usage_at(5) == 12
    assert ledger.steps() == [(5, 15, 12), (15, 25, 4), (25, None, 0)]
    ledger.remove(5, 15, 4)
    assert ledger.usage_at(5) == 8


def test_no_end_of_time() -> None:
    ledger = Ledger()
    for base in (2**62, -(2**62)):
        ledger.add(base, base + 10, 3)
        ledger.add(base + 5, base + 2**40, 2)
        assert ledger.peak_at(base - 1, base + 2**50) == (5, base + 5)
        assert ledger.usage_at(base + 2**40 - 1) == 2 and ledger.usage_at(base + 2**40) == 0
    assert len(ledger) == 8
    assert ledger.steps(-(2**63))[-1] == (2**62 + 2**40, None, 0)
    assert ledger.peak_at(-(2**100), 2**100) == (5, -(2**62) + 5)
    ledger.add(2**62 + 2**40, 2**100, 1)  # far beyond any 64-bit "end of time"
    assert ledger.usage_at(2**99) == 1 and ledger.steps()[-1] == (2**100, None, 0)


def test_memory_grows_with_breakpoints_not_time() -> None:
    short, long = Ledger(), Ledger()
    short.add(0, 1, 100)
    long.add(0, 10**15, 100)
    assert len(short) == len(long) == short.breakpoints == long.breakpoints == 2
    long.add(0, 10**15, 100)  # another booking on the same window changes no breakpoint
    assert len(long) == 2


def test_remove_below_zero_refused_and_changes_nothing() -> None:
    ledger = Ledger()
    ledger.add(0, 10, 5)
    ledger.add(5, 10, 3)
    before = (list(ledger._t), list(ledger._v))
    for start, end, amount in ((0, 10, 6), (0, 11, 1), (-1, 5, 1), (0, 10, 8)):
        with pytest.raises(ValueError):
            ledger.remove(start, end, amount)
        assert (ledger._t, ledger._v) == before
    ledger.remove(5, 10, 8)
    assert ledger.steps() == [(0, 5, 5), (5, None, 0)]


def test_peak_at_reports_first_instant() -> None:
    ledger = Ledger()
    ledger.add(10, 20, 4)
    ledger.add(30, 40, 4)
    assert ledger.peak_at(0, 50) == (4, 10)
    assert ledger.peak_at(15, 50) == (4, 15)  # the window's start when the peak is already on
    assert ledger.peak_at(20, 35) == (4, 30)
    assert ledger.peak_at(20, 30) == (0, 20)
    assert Ledger().peak_at(-5, 5) == (0, -5)


def test_amount_zero_is_a_no_op_and_empty_ledger_has_no_breakpoints() -> None:
    ledger = Ledger()
    ledger.add(0, 10, 0)
    assert len(ledger) == 0 and not ledger
    assert ledger.steps() == [] and ledger.steps(end=5) == []
    assert ledger.steps(3) == [(3, None, 0)]
    assert ledger.steps(3, 8) == [(3, 8, 0)]


def test_steps_are_clipped_to_the_window() -> None:
    ledger = Ledger()
    ledger.add(0, 10, 2)
    ledger.add(5, 15, 1)
    assert ledger.steps(-5, 20) == [(-5, 0, 0), (0, 5, 2), (5, 10, 3), (10, 15, 1), (15, 20, 0)]
    assert ledger.steps(7, 12) == [(7, 10, 3), (10, 12, 1)]
    assert ledger.steps(end=7) == [(0, 5, 2), (5, 7, 3)]
    assert ledger.steps(12) == [(12, 15, 1), (15, None, 0)]


@pytest.mark.parametrize("start, end", [(5, 5), (6, 5), (0, -(2**62))])
def test_empty_or_inverted_windows_are_refused(start: int, end: int) -> None:
    ledger = Ledger()
    ledger.add(0, 10, 1)
    before = (list(ledger._t), list(ledger._v))
    for call in (ledger.add, ledger.remove):
        with pytest.raises(ValueError):
            call(start, end, 1)
    with pytest.raises(ValueError):
        ledger.peak(start, end)
    with pytest.raises(ValueError):
        ledger.peak_at(start, end)
    with pytest.raises(ValueError):
        ledger.steps(start, end)
    assert (ledger._t, ledger._v) == before


def test_a_negative_add_is_unchecked_but_unbooked_time_still_counts_as_zero() -> None:
    """``add`` trusts its caller (``remove`` is the checked way out); a peak still sees the zero before and after."""
    ledger = Ledger()
    ledger.add(0, 10, -3)
    assert ledger.usage_at(5) == -3 and ledger.steps() == [(0, 10, -3), (10, None, 0)]
    assert ledger.peak_at(-5, 5) == (0, -5)
    assert ledger.peak_at(0, 20) == (0, 10)
    assert ledger.peak(0, 10) == -3
    with pytest.raises(ValueError):
        ledger.remove(0, 10, 0)  # already below zero: nothing more may come off
    ledger.add(0, 10, 3)
    assert len(ledger) == 0


@given(st.lists(st.tuples(st.integers(-20, 40), st.integers(1, 20), st.integers(-3, 9)), max_size=40))
@settings(max_examples=300, deadline=None)
def test_from_bookings_is_the_same_function_as_adding_one_by_one(items: list[tuple[int, int, int]]) -> None:
    bookings = [(s, s + n, a) for s, n, a in items]
    one_by_one = Ledger()
    for s, e, a in bookings:
        one_by_one.add(s, e, a)
    at_once = Ledger.from_bookings(bookings)
    assert (at_once._t, at_once._v) == (one_by_one._t, one_by_one._v)
