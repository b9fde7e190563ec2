"""``GET /v1/admin/backup`` (admin only): a backup of the store, streamed as it is read (docs/operations.md).

One snapshot (a read transaction: writers go on) is written in the ``tenure-backup/1`` format by another process
(services.backups.Child: the server's writer keeps its interpreter); a thread moves its output into a bounded queue
that the response drains. A client that goes away, or stops reading for ``STALL`` seconds, ends the thread and the
process, and the snapshot with them. The revision of the snapshot is in the ``X-Tenure-Revision`` header and the file
name; the trailer's checksum tells a complete download from a cut one (``tenure backup`` verifies before keeping
it).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from tenure.api.auth import authenticate
from tenure.domain.access import Principal, require_admin
from tenure.domain.errors import Unavailable
from tenure.services.backups import Child, file_name
from tenure.store.backup import BackupError

router = APIRouter()

CHUNK = 256 * 1024  # bytes handed to the response at a time
DEPTH = 8  # chunks queued ahead of a slow client
STALL = 60.0  # seconds a client may stop reading before the backup is abandoned


class _Abandoned(Exception):
    pass


class _Pipe:
    """A file the backup thread writes to; the response reads whole chunks from the other end."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | BaseException | None] = queue.Queue(DEPTH)
        self.buffer = bytearray()
        self.closed = threading.Event()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            self._put(bytes(self.buffer))
            self.buffer.clear()
        return len(data)

    def flush(self) -> None:
        pass

    def _put(self, item: bytes | BaseException | None) -> None:
        waited = 0.0
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                waited += 0.5
                if waited >= STALL:
                    break
        raise _Abandoned

    def get(self) -> bytes | BaseException | None:
        """The next chunk; None at the end, or once the reader has gone (so no thread waits for ever)."""
        while True:
            try:
                return self.queue.get(timeout=0.5)
            except queue.Empty:
                if self.closed.is_set():
                    return None

    def finish(self, error: BaseException | None) -> None:
        if error is None and self.buffer:
            self._put(bytes(self.buffer))
        self._put(error)


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The backup, format tenure-backup/1 (gzip'd JSON lines with a SHA-256 trailer)",
          "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
}


@router.get("/v1/admin/backup", tags=["admin"], response_class=StreamingResponse, responses=RESPONSES,
            summary="A backup of the whole store at one revision (admin)")
async def take_backup(request: Request, who: Annotated[Principal, Depends(authenticate)]) -> StreamingResponse:
    require_admin(who, "taking a backup")
    rt = request.app.state.tenure.require()
    now = rt.clock().astimezone(UTC)
    starting = asyncio.ensure_future(asyncio.to_thread(Child, rt.engine, now))  # the snapshot is open once it is
    try:
        child = await asyncio.shield(starting)
    except BackupError as exc:
        raise Unavailable(f"the backup could not start: {exc}") from None
    except asyncio.CancelledError:  # (the server stops): the process it may yet start is ended when it has
        starting.add_done_callback(lambda t: None if t.cancelled() or t.exception() else t.result().close())
        raise
    revision = child.revision
    pipe = _Pipe()
    done = threading.Event()

    def watch() -> None:  # a process that hangs (or a client gone while it does) must not keep its snapshot
        while not done.wait(1.0):
            if pipe.closed.is_set() or child.overdue():
                child.kill()
                return

    def run() -> None:
        error: BaseException | None = None
        try:
            while data := child.stdout.read(CHUNK):  # (past its limit the watcher ends it: the output ends)
                pipe.write(data)
            child.finish()
        except _Abandoned:
            return
        except BaseException as exc:  # the stream ends without a trailer: the client sees a cut backup
            error = exc
        finally:
            done.set()
            child.close()
        try:
            pipe.finish(error)
        except _Abandoned:
            pass

    threading.Thread(target=watch, name="tenure-backup-watch", daemon=True).start()
    thread = threading.Thread(target=run, name="tenure-backup-stream", daemon=True)
    thread.start()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while True:
                item = await asyncio.to_thread(pipe.get)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            pipe.closed.set()

    name = file_name(revision, now)
    return StreamingResponse(chunks(), media_type="application/gzip",
                             headers={"X-Tenure-Revision": str(revision), "Cache-Control": "no-store",
                                      "Content-Disposition": f'attachment; filename="{name}"'})
