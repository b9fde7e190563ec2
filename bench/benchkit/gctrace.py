"""Run ``tenure`` with the cyclic GC's pauses logged (``bench/watch.py --trace-gc``; not a benchmark).

    python bench/benchkit/gctrace.py LOGFILE serve ...   (the arguments of ``tenure`` after LOGFILE)

Adds a ``gc.callbacks`` hook to the process (nothing else changes) that appends one line per collection
longer than 1 ms to LOGFILE: ``<epoch end time> <generation> <pause ms> <objects collected>``.
"""

from __future__ import annotations

import gc
import sys
import time


def main() -> None:
    log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    started = [0.0]

    def hook(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - started[0]
        if pause > 0.001:
            log.write(f"{time.time():.4f} {info['generation']} {pause * 1000:.2f} {info['collected']}\n")

    gc.callbacks.append(hook)
    sys.argv = ["tenure", *sys.argv[2:]]
    from tenure.cli.main import main as tenure

    tenure()


if __name__ == "__main__":
    main()
