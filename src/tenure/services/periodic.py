"""A background thread that runs a function every ``interval`` seconds until stopped.

Used for housekeeping that follows real time (compaction of the event log,
marking silent agents down). The work itself reads the injected clock, so tests
call it directly with a fake clock instead of waiting for the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("tenure.periodic")


class Periodic:
    def __init__(self, name: str, interval: float, fn: Callable[[], object]) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.name = name
        self.interval = interval
        self.fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tenure-{name}", daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.fn()
            except Exception:  # keep going: the next round may succeed (say, the store was busy)
                log.exception("%s failed", self.name)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
