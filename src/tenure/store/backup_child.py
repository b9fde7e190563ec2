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
import sys
import threading
from datetime import datetime
from typing import IO


def _end_with_parent() -> None:
    """End this process when the parent closes standard input, or goes away."""
    while sys.stdin.buffer.read(65536):
        pass
    os._exit(3)


def _say(status: IO[str], **what: object) -> None:
    status.write(json.dumps(what) + "\n")
    status.flush()


def main() -> int:
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
            out = sys.stdout.buffer
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
