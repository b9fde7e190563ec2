"""Time, for the whole package: wall-clock instants, and a monotonic clock that schedules callbacks on the loop.

Two kinds of time, each injected (DESIGN.md invariant 5), never read directly:

- :data:`Clock` (``() -> datetime``, default :func:`utcnow`): the instants that are stored and
  compared, such as a batch's ``now``, a reservation's window, an agent's ``last_seen``. The writer,
  the services and the scheduler take one; tests pass a function of a variable they move.
- :class:`LoopClock`: monotonic seconds and timers on the event loop. Everything in
  :mod:`tenure.lrm` and :mod:`tenure.drivers` that waits for time
(timeouts, the kill grace period, recurring intervals) asks a :class:`LoopClock`,
never ``asyncio.sleep`` or ``loop.call_later`` directly. :class:`RealClock` is the
event loop's own clock; :class:`FakeClock` moves only when a test calls
:meth:`FakeClock.advance`, which runs what fell due, in order, on the loop thread.
So tests wait on events and move time by hand (DESIGN.md invariant 5).

Both must be used from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current instant in UTC (the default :data:`Clock`)."""
    return datetime.now(UTC)


class Timer(Protocol):
    def cancel(self) -> None: ...


class LoopClock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (only differences mean anything)."""

    def wall(self) -> float:
        """Seconds since the Unix epoch, for timestamps shown to people."""

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the loop once ``now() >= when``."""

    async def sleep_until(self, when: float) -> None:
        """Return once ``now() >= when``."""


class RealClock:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    def wall(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self.loop.call_at(when, callback)

    async def sleep_until(self, when: float) -> None:
        delay = when - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class _FakeTimer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock that moves only in :meth:`advance`; timers fire in order of their instants."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._heap: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()
        self._watchers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = _FakeTimer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        for w in [w for w in self._watchers if when >= w[0]]:
            self._watchers.remove(w)
            if not w[1].done():
                w[1].set_result(None)
        return timer

    async def timer_armed(self, at: float) -> None:
        """Return once a timer due at ``at`` or later is armed (e.g. an operation's timeout, after its spawn)."""
        if any(when >= at and not t.cancelled for when, _, t in self._heap):
            return
        fut = asyncio.get_running_loop().create_future()
        self._watchers.append((at, fut))
        await fut

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            return
        fut = asyncio.get_running_loop().create_future()
        self.call_at(when, lambda: fut.done() or fut.set_result(None))
        await fut

    @property
    def pending(self) -> int:
        """Timers armed and not cancelled."""
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    def next_due(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer that falls due on the way, in order."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        target = self._now + seconds
        while (due := self.next_due()) is not None and due <= target:
            _, _, timer = heapq.heappop(self._heap)
            self._now = max(self._now, timer.when)
            timer.callback()
        self._now = target
