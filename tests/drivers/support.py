"""Helpers for the driver tests: the test driver executables, and waiting until one is ready.

Tests never sleep to let time pass. Timeouts run on a FakeClock that the test
advances by hand; and before advancing, a test waits until the driver process
has really started, by awaiting the line the test driver writes into a FIFO
(``Ready``): an event, not a guess about how long a fork and exec take.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

BIN = Path(__file__).resolve().parent / "bin"
PATH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def make_executable() -> None:
    """Git keeps the executable bit, but be sure: the tests are about running these."""
    for p in BIN.iterdir():
        if p.is_file():
            p.chmod(0o755)


class Ready:
    """A FIFO a test driver writes ``started <pid>`` into once it is ready to be signalled.

    The read end is opened non-blocking at once, so the driver's open for
    writing never blocks, and :meth:`line` waits for the data with
    ``loop.add_reader``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    async def line(self, *, unless: asyncio.Future | None = None) -> str:
        """The first line written; fails at once if ``unless`` (the run) finishes first."""
        loop = asyncio.get_running_loop()
        got: asyncio.Future[str] = loop.create_future()
        buf = bytearray()

        def readable() -> None:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            buf.extend(chunk)
            if (b"\n" in buf or not chunk) and buf and not got.done():
                got.set_result(buf.decode().splitlines()[0])

        loop.add_reader(self.fd, readable)
        try:
            if unless is None:
                return await got
            done, _ = await asyncio.wait({got, unless}, return_when=asyncio.FIRST_COMPLETED)
            if got not in done:
                raise AssertionError(f"the run ended before the driver was ready: {unless.result()!r}")
            return got.result()
        finally:
            loop.remove_reader(self.fd)

    async def pid(self, *, unless: asyncio.Future | None = None) -> int:
        """The pid announced in the ``started <pid>`` line."""
        word, pid = (await self.line(unless=unless)).split()
        assert word == "started"
        return int(pid)

    def close(self) -> None:
        os.close(self.fd)
