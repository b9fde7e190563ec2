"""ID spaces: which values of a pool are free, and which one to hand out next.

An ID space is a set of inclusive ranges (values 0 .. 2**32-1) minus reserved
values, and a strategy for choosing a free value:

- ``lowest``: the lowest free value, so freed values are reused at once
  (Contrail's ``IndexVector``);
- ``next``: next-fit from a cursor that moves past each allocation and wraps
  around (OVN northd's hint), so a released value is not reused soon;
- ``random``: a uniformly random start, then the next free value from there
  (Kubernetes' random-scan allocator).

Why runs and not a bitmap: Neutron builds a Python set of the whole VXLAN range
(16.7M integers) at start-up and Kubernetes keeps a 2 MB bitmap. Here the taken
values (claimed or reserved) are kept as maximal runs ``[start, end]`` in a
sorted map, so memory and start-up time grow with the number of runs, which is
at most the number of claims plus the number of reserved ranges, never with the
size of the range. Finding the next free value at or after ``x`` is one
``O(log n)`` look-up: if ``x`` lies in a run, the answer is that run's end + 1,
which is free because runs are maximal.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from typing import Literal

from sortedcontainers import SortedDict

from tenure.domain.errors import InvalidInput

MAX_VALUE = 2**32 - 1
Strategy = Literal["lowest", "next", "random"]
STRATEGIES: tuple[str, ...] = ("lowest", "next", "random")
Range = tuple[int, int]


class RunSet:
    """A set of integers stored as maximal runs of consecutive values."""

    __slots__ = ("_runs", "_count")

    def __init__(self) -> None:
        self._runs: SortedDict = SortedDict()  # start -> end (inclusive)
        self._count = 0

    @classmethod
    def from_sorted_values(cls, values: Iterable[int]) -> RunSet:
        """Build from ascending, distinct values in one linear pass (the restore path: keep it lean)."""
        starts: list[int] = []
        ends: list[int] = []
        count = 0
        for v in values:
            count += 1
            if ends and v == ends[-1] + 1:
                ends[-1] = v
            else:
                starts.append(v)
                ends.append(v)
        rs = cls()
        rs._runs = SortedDict(zip(starts, ends))
        rs._count = count
        return rs

    def __len__(self) -> int:
        return self._count

    @property
    def run_count(self) -> int:
        return len(self._runs)

    def runs(self) -> list[Range]:
        return list(self._runs.items())

    def _run_at(self, v: int) -> Range | None:
        """The run containing ``v``, if any."""
        i = self._runs.bisect_right(v) - 1
        if i < 0:
            return None
        start, end = self._runs.peekitem(i)
        return (start, end) if end >= v else None

    def __contains__(self, v: int) -> bool:
        return self._run_at(v) is not None

    def next_absent(self, x: int) -> int:
        """The smallest value ``>= x`` that is not in the set."""
        run = self._run_at(x)
        return x if run is None else run[1] + 1

    def add_range(self, lo: int, hi: int) -> None:
        """Add ``[lo, hi]``, which must be disjoint from the set."""
        runs = self._runs
        start, end = lo, hi
        left = self._run_at(lo - 1)
        if left is not None:
            start = left[0]
            del runs[left[0]]
        right_end = runs.pop(hi + 1, None)
        if right_end is not None:
            end = right_end
        runs[start] = end
        self._count += hi - lo + 1

    def add(self, v: int) -> None:
        """Add ``v``, which must not be in the set."""
        self.add_range(v, v)

    def remove(self, v: int) -> None:
        """Remove ``v``, which must be in the set."""
        run = self._run_at(v)
        if run is None:
            raise KeyError(v)
        start, end = run
        del self._runs[start]
        if start < v:
            self._runs[start] = v - 1
        if v < end:
            self._runs[v + 1] = end
        self._count -= 1


def normalize_ranges(raw: Sequence[Sequence[int]], *, what: str = "ranges") -> tuple[Range, ...]:
    """Validate ``[[lo, hi], ...]`` (inclusive, 0..2**32-1, disjoint) and sort it."""
    out: list[Range] = []
    for item in raw:
        if len(item) != 2:
            raise InvalidInput(f"each of {what} must be [lo, hi], got {list(item)!r}", code="invalid_range")
        lo, hi = item
        if isinstance(lo, bool) or isinstance(hi, bool) or not isinstance(lo, int) or not isinstance(hi, int):
            raise InvalidInput(f"{what} bounds must be integers, got {list(item)!r}", code="invalid_range")
        if not 0 <= lo <= hi <= MAX_VALUE:
            raise InvalidInput(
                f"{what} entry [{lo}, {hi}] must satisfy 0 <= lo <= hi <= {MAX_VALUE}", code="invalid_range"
            )
        out.append((lo, hi))
    out.sort()
    for (alo, ahi), (blo, bhi) in zip(out, out[1:]):
        if blo <= ahi:
            raise InvalidInput(f"{what} [{alo}, {ahi}] and [{blo}, {bhi}] overlap", code="overlapping_ranges")
    return tuple(out)


class IdSpace:
    """Free and taken values of one pool, and the strategy to pick the next one.

    ``taken`` holds claimed and reserved values together; claims never land on
    reserved values, so releasing a claim never frees a reserved value.
    """

    __slots__ = ("ranges", "reserved", "strategy", "cursor", "size", "_taken", "_reserved_count", "_starts", "_rng")

    def __init__(
        self,
        ranges: Sequence[Sequence[int]],
        reserved: Sequence[Sequence[int]] = (),
        *,
        strategy: str = "lowest",
        cursor: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise InvalidInput(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}", code="invalid_strategy"
            )
        self.ranges = normalize_ranges(ranges)
        if not self.ranges:
            raise InvalidInput("a pool needs at least one range", code="invalid_range")
        self.reserved = normalize_ranges(reserved, what="reserved")
        self._starts = [lo for lo, _ in self.ranges]
        for lo, hi in self.reserved:
            if self._values_in_ranges(lo, hi) != hi - lo + 1:
                raise InvalidInput(f"reserved [{lo}, {hi}] is not inside the pool's ranges", code="invalid_reserved")
        self.strategy = strategy
        self.cursor = self.ranges[0][0] if cursor is None else cursor
        self._rng = rng or random.Random()
        self._taken = RunSet()
        for lo, hi in self.reserved:
            self._taken.add_range(lo, hi)
        self._reserved_count = len(self._taken)
        self.size = sum(hi - lo + 1 for lo, hi in self.ranges) - self._reserved_count

    # -- queries ---------------------------------------------------------

    def _values_in_ranges(self, lo: int, hi: int) -> int:
        n = 0
        for rlo, rhi in self.ranges:
            a, b = max(lo, rlo), min(hi, rhi)
            if a <= b:
                n += b - a + 1
        return n

    def in_range(self, v: int) -> bool:
        i = bisect.bisect_right(self._starts, v) - 1
        return i >= 0 and v <= self.ranges[i][1]

    def is_reserved(self, v: int) -> bool:
        return any(lo <= v <= hi for lo, hi in self.reserved)

    def is_taken(self, v: int) -> bool:
        return v in self._taken

    @property
    def used(self) -> int:
        """Number of claimed values (reserved values are not counted)."""
        return len(self._taken) - self._reserved_count

    @property
    def free(self) -> int:
        return self.size - self.used

    @property
    def run_count(self) -> int:
        return self._taken.run_count

    # -- choosing --------------------------------------------------------

    def _first_free_from(self, x: int) -> int | None:
        """The lowest free value ``>= x`` inside the ranges, without wrapping."""
        i = max(bisect.bisect_right(self._starts, x) - 1, 0)
        for lo, hi in self.ranges[i:]:
            y = self._taken.next_absent(max(lo, x))
            if y <= hi:
                return y
        return None

    def _next_free_wrapping(self, x: int) -> int | None:
        y = self._first_free_from(x)
        if y is None:
            y = self._first_free_from(self.ranges[0][0])
        return y

    def _random_point(self) -> int:
        offset = self._rng.randrange(self.size + self._reserved_count)
        for lo, hi in self.ranges:
            span = hi - lo + 1
            if offset < span:
                return lo + offset
            offset -= span
        raise AssertionError("offset beyond the ranges")  # unreachable by construction

    def pick(self) -> int | None:
        """The value the strategy would hand out now, or None when exhausted."""
        if self.free <= 0:
            return None
        if self.strategy == "lowest":
            return self._first_free_from(self.ranges[0][0])
        if self.strategy == "next":
            return self._next_free_wrapping(self.cursor)
        return self._next_free_wrapping(self._random_point())

    # -- changing --------------------------------------------------------

    def take(self, v: int, *, advance: bool = False) -> None:
        """Mark ``v`` taken. ``advance`` moves the next-fit cursor past it."""
        self._taken.add(v)
        if advance and self.strategy == "next":
            self.cursor = v + 1 if v < self.ranges[-1][1] else self.ranges[0][0]

    def release(self, v: int) -> None:
        self._taken.remove(v)

    def load(self, values: Sequence[int]) -> None:
        """Bulk-load claimed values (ascending, distinct, none reserved) on restore."""
        claimed = RunSet.from_sorted_values(values)
        if self.reserved:
            for lo, hi in self.reserved:
                claimed.add_range(lo, hi)
        self._taken = claimed
