"""The cyclic garbage collector's policy for long-running processes (``tenure serve``).

A server's heap is mostly long-lived: claims, pools, open watches and connections.
CPython's full collection walks every tracked object each time, so its pause grows
with the heap (about 100 ms with 1,000 watchers and a few hundred thousand
claims, half a second with 5,000 watchers: docs/benchmarks.md, section 4), and it
lands every few seconds under load while freeing next to nothing.

The policy: after each full collection, the survivors are frozen (moved to the
permanent generation, which the collector skips), so the next full collection
walks only what survived since. Reference counting still frees frozen objects as
usual; only *cyclic* garbage among them would wait. So once per
``complete_every`` seconds, a full collection first unfreezes everything and walks
the whole heap: a garbage cycle is never kept longer than that.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tenure.gc")

COMPLETE_EVERY = 3600.0


class GCPolicy:
    def __init__(
        self,
        *,
        complete_every: float = COMPLETE_EVERY,
        clock: Callable[[], float] = time.monotonic,
        collector: Any = gc,
    ) -> None:
        self.complete_every = complete_every
        self.clock = clock
        self.gc = collector
        self._last_complete = clock()
        self._complete = False
        self._started = 0.0
        self.freezes = 0
        self.completes = 0

    def install(self) -> GCPolicy:
        if self._callback not in self.gc.callbacks:
            self.gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in self.gc.callbacks:
            self.gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            if self.clock() - self._last_complete >= self.complete_every:
                self.gc.unfreeze()  # this collection walks everything, frozen survivors included
                self._complete = True
            return
        if self._complete:
            self._complete = False
            self._last_complete = self.clock()
            self.completes += 1
            log.info("complete garbage collection", extra={
                "seconds": round(time.perf_counter() - self._started, 3), "collected": info.get("collected")})
        self.gc.freeze()
        self.freezes += 1
