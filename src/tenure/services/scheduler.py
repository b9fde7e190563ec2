"""Timers for reservations: activate, expire and purge each one at its instant, not by polling.

The scheduler keeps a heap of ``(instant, reservation id)`` and one thread that
sleeps until the earliest instant (or until a nearer one is armed), then hands
every due id to the service as one writer command. Each reservation has one
armed instant (``_armed``); arming it again at the same instant is free, and
arming it at another leaves the old heap entry behind as stale: skipped when
popped, and dropped when stale entries outnumber the live ones (so the heap
grows with reservations, not with how often they change). The command
re-checks against the batch's clock and the reservation's current instants, so
arming needs no coordination with undo.

Time comes from the injected clock. Tests run with ``housekeeping`` off and
call :meth:`Scheduler.run_due` after moving their fake clock; the thread only
exists in a real server. Its sleep is capped (60 s) so that a step of the wall
clock is noticed within a minute.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("tenure.scheduler")

MAX_SLEEP = 60.0


class Scheduler:
    def __init__(self, *, now_us: Callable[[], int], run: Callable[[list[str]], object]) -> None:
        self._now_us = now_us
        self._run = run  # applies the due ids (a writer command); must not hold our lock
        self._heap: list[tuple[int, str]] = []
        self._armed: dict[str, int] = {}  # each reservation's current instant
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def arm(self, instant: int, rid: str) -> None:
        with self._cond:
            if self._armed.get(rid) == instant:
                return
            self._armed[rid] = instant
            heapq.heappush(self._heap, (instant, rid))
            if len(self._heap) > 2 * len(self._armed) + 1024:  # mostly stale: rebuild from the live instants
                self._heap = [(t, r) for r, t in self._armed.items()]
                heapq.heapify(self._heap)
            if self._heap[0] == (instant, rid):
                self._cond.notify()

    def disarm(self, rid: str) -> None:
        with self._cond:
            self._armed.pop(rid, None)

    def __len__(self) -> int:
        """Heap entries, stale ones included (a test and metrics hook)."""
        return len(self._heap)

    @property
    def next_due(self) -> int | None:
        with self._cond:
            self._drop_stale()
            return self._heap[0][0] if self._heap else None

    def _drop_stale(self) -> None:
        while self._heap and self._armed.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def pop_due(self, now: int) -> list[str]:
        with self._cond:
            due = []
            while self._heap and self._heap[0][0] <= now:
                instant, rid = heapq.heappop(self._heap)
                if self._armed.get(rid) == instant:
                    del self._armed[rid]
                    due.append(rid)
            return due

    def run_due(self) -> object:
        """Apply every transition due by the clock now (what the thread does; tests call it directly)."""
        due = self.pop_due(self._now_us())
        return self._run(due) if due else None

    # ---------------------------------------------------------------- thread

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name="tenure-scheduler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = self._now_us()
                    self._drop_stale()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    wait = MAX_SLEEP if not self._heap else min(MAX_SLEEP, (self._heap[0][0] - now) / 1e6)
                    self._cond.wait(wait)
                if self._stopped:
                    return
            try:
                self.run_due()
            except Exception:  # the entries are gone from the heap: re-arm them from the service
                log.exception("reservation transitions failed")

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
