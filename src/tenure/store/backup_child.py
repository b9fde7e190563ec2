"""The process that reads a running store's snapshot into a backup (``python -m tenure.store.backup_child``).

A running server takes its backups here rather than in a thread of its own (services/backups.py starts it): reading,
encoding and compressing two million rows in the server's process held its writer up for 80–140 ms at a time (the
interpreter's lock), where another process leaves the writer its own core and interpreter.

Protocol (the parent is :class:`tenure.services.backups.Child`):

- standard input: one JSON line ``{"url", "now", "status_fd"}``; then nothing until the parent is done with this
  process, when it closes the pipe. Its end (the parent gone, even by SIGKILL) ends this process at once, so none
  is left behind;
- standard output: the backup, ``tenure-backup/1`` (a pipe the parent streams on, or the backup file itself);
- ``status_fd``: ``{"revision": R}`` once the snapshot is open, then ``{"done": R}`` once the backup is written
  whole and flushed, or ``{"error": MESSAGE}``, one JSON line each.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from datetime import datetime
from typing import IO

NICE = 10


def _end_with_parent() -> None:
    """End this process when the parent closes standard input, or goes away."""
    while sys.stdin.buffer.read(65536):
        pass
    os._exit(3)


class _Trickle:
    """The backup file, its pages handed to the disk as they are written (``POSIX_FADV_DONTNEED`` every ``EVERY``
    bytes starts their write-back without waiting for it): the parent's one fsync of the whole file at its end (130 MB
    for a million claims) otherwise kept the disk busy long enough to hold up the server's next commit by 40-60 ms.
    The pages also leave the cache: a backup does not push the store's own pages out of it."""

    EVERY = 4 << 20

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.pending = 0

    def write(self, data: bytes) -> int:
        n = self.out.write(data)
        self.pending += len(data)
        if self.pending >= self.EVERY:
            self.out.flush()
            os.posix_fadvise(self.out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            self.pending = 0
        return n

    def flush(self) -> None:
        self.out.flush()


def _say(status: IO[str], **what: object) -> None:
    status.write(json.dumps(what) + "\n")
    status.flush()


def main() -> int:
    # Below the server in the CPU's queue: a backup takes what the writer leaves, not the other way round.
    os.nice(NICE)
    request = json.loads(sys.stdin.buffer.readline())
    status = os.fdopen(int(request["status_fd"]), "w", encoding="utf-8")
    threading.Thread(target=_end_with_parent, name="parent-watch", daemon=True).start()
    try:
        from tenure.store import backup
        from tenure.store.engine import make_engine, open_snapshot

        engine = make_engine(request["url"])
        conn, revision = open_snapshot(engine)
        try:
            _say(status, revision=revision)
            out: IO[bytes] = sys.stdout.buffer
            if stat.S_ISREG(os.fstat(out.fileno()).st_mode):
                out = _Trickle(out)  # type: ignore[assignment]
            header = backup.write(conn, revision, out, now=datetime.fromisoformat(request["now"]))
            out.flush()
        finally:
            conn.close()
            engine.dispose()
        _say(status, done=header.revision)
        return 0
    except BrokenPipeError:  # the parent stopped reading: it has given up on this backup
        return 1
    except Exception as exc:  # noqa: BLE001 - any failure is the parent's to report
        _say(status, error=f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    os._exit(main())  # not sys.exit: nothing left to flush, and a closed pipe must not be written to at exit
