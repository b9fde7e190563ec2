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
values (claimed or reserved) are kept as maximal runs ``[start, end]``, their
starts and ends in sorted chunks of 32-bit arrays (8 bytes a run), so memory and
start-up time grow with the number of runs, which is at most the number of
claims plus the number of reserved ranges, never with the size of the range.
Finding the next free value at or after ``x`` is two bisections: if ``x`` lies
in a run, the answer is that run's end + 1, which is free because runs are
maximal.
"""

from __future__ import annotations

import bisect
import random
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from itertools import compress
from operator import sub
from typing import Literal

from tenure.domain.errors import InvalidInput

MAX_VALUE = 2**32 - 1
Strategy = Literal["lowest", "next", "random"]
STRATEGIES: tuple[str, ...] = ("lowest", "next", "random")
Range = tuple[int, int]


class RunSet:
    """A set of integers (0 .. 2**32-1) stored as maximal runs of consecutive values.

    The runs' starts and ends are kept in parallel ``array('I')`` chunks of at most
    ``2 * load`` runs each, sorted, with each chunk's first start in ``_firsts``: 8 bytes
    a run (a sorted map of Python ints took about 60), and a look-up is two bisections.
    """

    __slots__ = ("_starts", "_ends", "_firsts", "_count", "_runs", "_load")

    def __init__(self, *, load: int = 512) -> None:
        if load < 1:
            raise ValueError("load must be at least 1")
        self._starts: list[array[int]] = []
        self._ends: list[array[int]] = []
        self._firsts: list[int] = []  # _firsts[c] == _starts[c][0]; no chunk is empty
        self._count = 0  # values
        self._runs = 0
        self._load = load

    @classmethod
    def from_sorted_values(cls, values: Sequence[int], *, load: int = 512) -> RunSet:
        """Build from ascending, distinct values (the restore path: the run breaks are found in C loops)."""
        rs = cls(load=load)
        n = len(values)
        if n == 0:
            return rs
        if not isinstance(values, list):
            values = list(values)
        # A run ends wherever the next value is not one more; every step below is a C loop.
        ends_here = list(map((1).__ne__, map(sub, values[1:], values)))
        starts = array("I", values[:1])
        starts.extend(compress(values[1:], ends_here))
        ends = array("I", compress(values, ends_here))
        ends.append(values[-1])
        step = rs._load
        for lo in range(0, len(starts), step):
            rs._starts.append(starts[lo:lo + step])
            rs._ends.append(ends[lo:lo + step])
            rs._firsts.append(starts[lo])
        rs._runs = len(starts)
        rs._count = n
        return rs

    def __len__(self) -> int:
        return self._count

    @property
    def run_count(self) -> int:
        return self._runs

    def runs(self) -> list[Range]:
        return [r for s, e in zip(self._starts, self._ends) for r in zip(s, e)]

    def _locate(self, v: int) -> tuple[int, int]:
        """(chunk, index) of the run with the greatest start ``<= v``; chunk -1 if there is none."""
        c = bisect_right(self._firsts, v) - 1
        if c < 0:
            return -1, -1
        return c, bisect_right(self._starts[c], v) - 1

    def __contains__(self, v: int) -> bool:
        c, i = self._locate(v)
        return c >= 0 and self._ends[c][i] >= v

    def next_absent(self, x: int) -> int:
        """The smallest value ``>= x`` that is not in the set."""
        c, i = self._locate(x)
        if c >= 0:
            end = self._ends[c][i]
            if end >= x:
                return end + 1
        return x

    def next_start_after(self, x: int) -> int | None:
        """The start of the first run beginning above ``x``, or None."""
        c, i = self._locate(x)
        if c >= 0 and i + 1 < len(self._starts[c]):
            return self._starts[c][i + 1]
        return self._firsts[c + 1] if c + 1 < len(self._firsts) else None

    def _insert(self, c: int, i: int, start: int, end: int) -> None:
        """A new run at index ``i`` of chunk ``c`` (chunk 0 is made if there is none)."""
        if not self._starts:
            self._starts.append(array("I"))
            self._ends.append(array("I"))
            self._firsts.append(start)
        starts, ends = self._starts[c], self._ends[c]
        starts.insert(i, start)
        ends.insert(i, end)
        if i == 0:
            self._firsts[c] = start
        self._runs += 1
        if len(starts) > 2 * self._load:  # split in two halves
            half = len(starts) // 2
            self._starts.insert(c + 1, starts[half:])
            self._ends.insert(c + 1, ends[half:])
            self._firsts.insert(c + 1, starts[half])
            del starts[half:]
            del ends[half:]

    def _delete(self, c: int, i: int) -> None:
        starts = self._starts[c]
        del starts[i]
        del self._ends[c][i]
        self._runs -= 1
        if not starts:
            del self._starts[c], self._ends[c], self._firsts[c]
        elif i == 0:
            self._firsts[c] = starts[0]

    def add_range(self, lo: int, hi: int) -> None:
        """Add ``[lo, hi]``, which must be disjoint from the set."""
        c, i = self._locate(lo)
        self._add_at(c, i, lo, hi)

    def take_from(self, x: int, hi: int) -> int | None:
        """Add and return the smallest absent value in ``[x, hi]``, or None if there is none (one look-up)."""
        c = bisect_right(self._firsts, x) - 1  # _locate, inlined: the bulk path calls this once per value
        i = -1
        v = x
        if c >= 0:
            i = bisect_right(self._starts[c], x) - 1
            end = self._ends[c][i]
            if end >= x:
                v = end + 1  # the run ending at v - 1 stays the one with the greatest start <= v
        if v > hi:
            return None
        self._add_at(c, i, v, v)
        return v

    def _add_at(self, c: int, i: int, lo: int, hi: int) -> None:
        """Add ``[lo, hi]`` (disjoint from the set); ``(c, i)`` is the run with the greatest start ``<= lo``."""
        # the run after it: where a new run would go
        if c < 0:
            nc, ni = 0, 0
        elif i + 1 < len(self._starts[c]):
            nc, ni = c, i + 1
        else:
            nc, ni = c + 1, 0
        left = c >= 0 and self._ends[c][i] == lo - 1
        right = nc < len(self._starts) and self._starts[nc][ni] == hi + 1
        if left and right:
            self._ends[c][i] = self._ends[nc][ni]
            self._delete(nc, ni)
        elif left:
            self._ends[c][i] = hi
        elif right:
            self._starts[nc][ni] = lo
            if ni == 0:
                self._firsts[nc] = lo
        elif c < 0:
            self._insert(0, 0, lo, hi)
        else:
            self._insert(c, i + 1, lo, hi)  # at the end of chunk c rather than the head of the next
        self._count += hi - lo + 1

    def add(self, v: int) -> None:
        """Add ``v``, which must not be in the set."""
        self.add_range(v, v)

    def remove(self, v: int) -> None:
        """Remove ``v``, which must be in the set."""
        c, i = self._locate(v)
        if c < 0 or self._ends[c][i] < v:
            raise KeyError(v)
        start, end = self._starts[c][i], self._ends[c][i]
        if start == end:
            self._delete(c, i)
        elif v == start:
            self._starts[c][i] = v + 1
            if i == 0:
                self._firsts[c] = v + 1
        elif v == end:
            self._ends[c][i] = v - 1
        else:
            self._ends[c][i] = v - 1
            self._insert(c, i + 1, v + 1, end)
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

    def _take_free_from(self, x: int) -> int | None:
        """Take and return what :meth:`_first_free_from` would give."""
        i = max(bisect.bisect_right(self._starts, x) - 1, 0)
        for lo, hi in self.ranges[i:]:
            v = self._taken.take_from(max(lo, x), hi)
            if v is not None:
                return v
        return None

    def _next_free_wrapping(self, x: int) -> int | None:
        y = self._first_free_from(x)
        if y is None:
            y = self._first_free_from(self.ranges[0][0])
        return y

    def _random_point(self) -> int:
        # random() (53 bits, one C call) rather than randrange (a Python loop of calls): over at most 2**32 values
        # the start point's unevenness is of the order of one part in 2**21; the scan from it takes the next free value.
        offset = int(self._rng.random() * (self.size + self._reserved_count))
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

    def take_many(self, n: int) -> list[int]:
        """Pick and take ``n`` values: the ones ``n`` successive :meth:`pick` and ``take(v, advance=True)`` give.

        ``lowest`` and ``next`` take whole free gaps at a time (one run each), ``random`` one value at a
        time. The caller checks that ``n`` values are free (nothing is taken otherwise).
        """
        if not 0 <= n <= self.free:
            raise ValueError(f"{n} values asked for, {self.free} free")
        taken = self._taken
        if self.strategy == "random":
            out = []
            first = self.ranges[0][0]
            if len(self.ranges) == 1:  # the common shape (a VXLAN pool): _random_point and the scan inlined
                last, span, rand, take_from = self.ranges[0][1], self.size + self._reserved_count, \
                    self._rng.random, taken.take_from
                for _ in range(n):
                    v = take_from(first + int(rand() * span), last)
                    if v is None:
                        v = take_from(first, last)
                    assert v is not None  # free > 0
                    out.append(v)
                return out
            for _ in range(n):
                v = self._take_free_from(self._random_point())
                if v is None:
                    v = self._take_free_from(first)
                assert v is not None  # free > 0
                out.append(v)
            return out
        out = []
        top = self.ranges[-1][1]
        x = self.ranges[0][0] if self.strategy == "lowest" else self.cursor
        while len(out) < n:
            y = self._next_free_wrapping(x)
            assert y is not None  # free > 0
            gap_end = self.ranges[bisect.bisect_right(self._starts, y) - 1][1]  # the end of y's range ...
            nxt = taken.next_start_after(y)
            if nxt is not None and nxt <= gap_end:  # ... or the next taken value, whichever comes first
                gap_end = nxt - 1
            last = min(gap_end, y + n - len(out) - 1)
            taken.add_range(y, last)
            out.extend(range(y, last + 1))
            x = last + 1
        if self.strategy == "next":
            self.cursor = x if x - 1 < top else self.ranges[0][0]
        return out

    def release(self, v: int) -> None:
        self._taken.remove(v)

    def load(self, values: Sequence[int]) -> None:
        """Bulk-load claimed values (ascending, distinct, none reserved) on restore."""
        claimed = RunSet.from_sorted_values(values)
        if self.reserved:
            for lo, hi in self.reserved:
                claimed.add_range(lo, hi)
        self._taken = claimed
