"""Ledgers: the usage of one link direction over time, as an exact step function.

A ledger answers "how much is booked at instant ``t``" and "what is the most
booked at any instant of ``[start, end)``", which is what admission needs: a
request of ``amount`` fits under ``capacity`` iff ``peak(start, end) + amount <=
capacity``. Windows are half-open, so a booking ending at ``t`` and one starting
at ``t`` never overlap. Times and amounts are plain ints and the arithmetic is
exact; the ledger gives no meaning to the instants, so negative and huge ones
work and there is no built-in "end of time" sentinel to collide with.

Why a step function and not a list of bookings: checking a request against the
bookings one by one, or only at the request's endpoints, is how schedulers
overcommit. A booking wholly inside the request touches neither endpoint and is
missed (Tegu's bug); events keyed by ``(instant, amount)`` merge two equal
bookings that start together into one (the OSCARS bug). Summing every booking
into a single piecewise-constant function removes both: whatever was added is
in the function, and a peak is a ``max()`` over the steps the window covers.

The function is two parallel lists: ``_t``, the breakpoint instants, strictly
increasing, and ``_v``, the usage from each breakpoint up to the next. Usage
before ``_t[0]`` is 0 and, since every booking is finite, so is usage from the
last breakpoint on (``_v[-1] == 0``). No two consecutive values are equal and
``_v[0] != 0``: a breakpoint exists only where the usage changes, so memory
grows with the number of changes, never with the length of time booked, and
removing every booking leaves no breakpoints at all. A booking is two
``bisect`` look-ups, at most two list inserts (a memmove, cheap for thousands of
breakpoints), one in-place update of the covered slice of values and a check at
each edge for a neighbour it has made redundant. Values strictly inside the
slice all move by the same amount, so no other breakpoint can become redundant.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict

Step = tuple[int, int | None, int]


def _check_window(start: int, end: int) -> None:
    if start >= end:
        raise ValueError(f"empty or inverted window [{start}, {end})")


class Ledger:
    """Usage over time as maximal constant steps; see the module docstring."""

    __slots__ = ("_t", "_v")

    def __init__(self) -> None:
        self._t: list[int] = []  # breakpoint instants, strictly increasing
        self._v: list[int] = []  # usage on [_t[i], _t[i + 1]); _v[-1] == 0

    def __len__(self) -> int:
        return len(self._t)

    def __bool__(self) -> bool:
        return bool(self._t)

    @property
    def breakpoints(self) -> int:
        return len(self._t)

    def __repr__(self) -> str:
        return f"Ledger({list(zip(self._t, self._v))!r})"

    def copy(self) -> Ledger:
        led = Ledger()
        led._t, led._v = self._t.copy(), self._v.copy()
        return led

    @classmethod
    def from_bookings(cls, bookings: list[tuple[int, int, int]]) -> Ledger:
        """The ledger of many ``(start, end, amount)`` bookings at once (a restore): one sort and one sweep,
        O(n log n), where booking them one by one costs a list insert each. The same function as adding them."""
        deltas: defaultdict[int, int] = defaultdict(int)
        for start, end, amount in bookings:
            if start >= end:
                _check_window(start, end)
            deltas[start] += amount
            deltas[end] -= amount
        led = cls()
        t, v = led._t, led._v
        level = 0
        for instant in sorted(deltas):
            d = deltas[instant]
            if d:
                level += d
                t.append(instant)
                v.append(level)
        if level:
            raise ValueError("bookings must not leave usage behind after their ends")
        return led

    # -- queries ---------------------------------------------------------

    def usage_at(self, t: int) -> int:
        i = bisect_right(self._t, t) - 1
        return self._v[i] if i >= 0 else 0

    def _covering(self, start: int, end: int) -> tuple[int, int]:
        """Indices ``i, j`` such that the steps ``i .. j-1`` cover ``[start, end)``; ``i == -1`` is the zero prefix."""
        i = bisect_right(self._t, start) - 1
        return i, bisect_left(self._t, end, max(i, 0))

    def peak(self, start: int, end: int) -> int:
        """The maximum usage over ``[start, end)``."""
        _check_window(start, end)
        i, j = self._covering(start, end)
        if i < 0:
            return max(max(self._v[:j], default=0), 0)  # the zero prefix at ``start`` counts too
        return max(self._v[i:j])

    def peak_at(self, start: int, end: int) -> tuple[int, int]:
        """The peak over ``[start, end)`` and the first instant in the window at which it is reached."""
        _check_window(start, end)
        i, j = self._covering(start, end)
        lo = max(i, 0)
        seg = self._v[lo:j]
        if not seg:
            return 0, start  # the window lies wholly before the first breakpoint
        m = max(seg)
        if i < 0 and m <= 0:
            return 0, start  # the zero prefix at ``start`` comes first
        k = lo + seg.index(m)
        return m, max(start, self._t[k])

    def steps(self, start: int | None = None, end: int | None = None) -> list[Step]:
        """The function as maximal steps ``(frm, to, used)`` clipped to ``[start, end)``; ``to`` None is "forever".

        With ``start`` None the steps begin at the first breakpoint (nothing is
        booked before it), so an empty ledger has no steps unless ``start`` is given.
        """
        t, v = self._t, self._v
        if start is None:
            if not t:
                return []
            start = t[0]
            if end is not None and end <= start:
                return []
        elif end is not None:
            _check_window(start, end)
        i = bisect_right(t, start) - 1
        used = v[i] if i >= 0 else 0
        out: list[Step] = []
        frm = start
        for k in range(i + 1, len(t)):
            at = t[k]
            if end is not None and at >= end:
                break
            out.append((frm, at, used))
            frm, used = at, v[k]
        out.append((frm, end, used))
        return out

    # -- changing --------------------------------------------------------

    def _split_at(self, at: int, lo: int) -> int:
        """Make ``at`` a breakpoint (searching from index ``lo``) and return its index."""
        t = self._t
        k = bisect_left(t, at, lo)
        if k == len(t) or t[k] != at:
            t.insert(k, at)
            self._v.insert(k, self._v[k - 1] if k > 0 else 0)
        return k

    def add(self, start: int, end: int, amount: int) -> None:
        """Add ``amount`` (negative to take it away) on ``[start, end)``."""
        _check_window(start, end)
        if amount == 0:
            return
        i = self._split_at(start, 0)
        j = self._split_at(end, i + 1)
        t, v = self._t, self._v
        v[i:j] = [x + amount for x in v[i:j]]
        # Drop the edges the change has made redundant: ``end`` first, so ``i`` stays valid.
        if v[j] == v[j - 1]:
            del t[j], v[j]
        if v[i] == (v[i - 1] if i > 0 else 0):
            del t[i], v[i]

    def remove(self, start: int, end: int, amount: int) -> None:
        """Take ``amount`` away on ``[start, end)``; refuse, changing nothing, if usage would go below 0."""
        _check_window(start, end)
        i, j = self._covering(start, end)
        lowest = min(self._v[max(i, 0) : j], default=0)
        if i < 0:
            lowest = min(lowest, 0)
        if lowest - amount < 0:
            raise ValueError(f"removing {amount} on [{start}, {end}) would leave usage {lowest - amount} < 0")
        self.add(start, end, -amount)
