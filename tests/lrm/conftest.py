"""The LRM in-process: a real Runtime over SQLite, the real drivers, a fake clock moved by hand.

``run_lrm(tmp_path, scenario)`` runs ``await scenario(h)`` on a fresh event loop
with a :class:`Harness`: ``h.lrm`` restored from the store in ``tmp_path``,
``h.clock`` a :class:`FakeClock` (recurring intervals, timeouts and the kill
grace move only when the test advances it), ``h.events`` every committed event
in order, ``h.results`` every result the LRM finished. ``await h.restart()``
closes the LRM and its store and opens both again from the same files, as an
agent restart would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tenure.clock import FakeClock
from tenure.drivers.spec import DriverRoots
from tenure.lrm.executor import Lrm
from tenure.lrm.model import Result
from tenure.lrm.store import LrmStore
from tenure.services.runtime import Runtime, Settings
from tenure.store.writer import Event
from tests.lrm_support import TEST_DRIVERS

LRM_DRIVERS = Path(__file__).parent / "bin"
DUMMY = "ocf:heartbeat:Dummy"


class Harness:
    def __init__(self, tmp: Path, **lrm_kwargs: Any) -> None:
        self.tmp = tmp
        self.url = f"sqlite:///{tmp / 'agent.db'}"
        self.clock = FakeClock()
        self.lrm_kwargs = lrm_kwargs
        self.events: list[Event] = []
        self.results: list[tuple[dict[str, Any], Result]] = []
        self._changed = asyncio.Event()
        self.rt: Runtime | None = None
        self.lrm: Lrm | None = None

    def roots(self) -> DriverRoots:
        extra = self.lrm_kwargs.get("exec_dirs", ())
        return DriverRoots(exec_dirs=(TEST_DRIVERS, LRM_DRIVERS, *extra))

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.rt = await asyncio.to_thread(Runtime.open, self.url, settings=Settings(housekeeping=False))

        def on_commit(events: list[Event]) -> None:  # writer thread
            loop.call_soon_threadsafe(self._add_events, events)

        self.rt.writer.subscribe(on_commit)
        kwargs = {k: v for k, v in self.lrm_kwargs.items() if k != "exec_dirs"}
        self.lrm = Lrm(store=LrmStore(self.rt), roots=self.roots(), rsctmp=self.tmp / "rsctmp", clock=self.clock,
                       **kwargs)
        (self.tmp / "rsctmp").mkdir(exist_ok=True)
        self.lrm.listeners.append(self._add_result)
        await self.lrm.restore()

    def _add_events(self, events: list[Event]) -> None:
        self.events.extend(events)
        self._changed.set()

    def _add_result(self, body: dict[str, Any], result: Result) -> None:
        self.results.append((body, result))
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Wait (on events, not time) until ``predicate()`` holds; fail after ``timeout`` real seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def result_of(self, ref: str, op: dict[str, Any]) -> dict[str, Any]:
        """Wait for a one-shot operation's result; the operation view."""
        assert self.lrm is not None
        view = await self.lrm.operation(ref, op["id"], wait=60)
        assert view["result"] is not None, f"no result for {op['action']} within 60 s"
        return view

    async def do(self, ref: str, action: str, **kw: Any) -> dict[str, Any]:
        """Submit and wait: the result dict."""
        assert self.lrm is not None
        op = await self.lrm.submit(ref, action, **kw)
        return (await self.result_of(ref, op))["result"]

    async def runs(self, name: str, n: int, *, action: str = "monitor") -> list[Result]:
        """Wait until ``name`` has at least ``n`` finished ``action`` runs; all of them."""
        def mine() -> list[Result]:
            return [r for b, r in self.results if b["name"] == name and r.action == action]

        await self.until(lambda: len(mine()) >= n)
        return mine()

    def kinds(self, name_or_id: str, since: int = 0) -> list[tuple[str, str]]:
        """(kind, op) of the events about one instance after list index ``since``."""
        out = []
        for e in self.events[since:]:
            if e.kind in ("resource", "operation") and (e.object_id == name_or_id or e.body.get("name") == name_or_id
                                                         or e.body.get("resource") == name_or_id):
                out.append((e.kind, e.op))
        return out

    async def restart(self) -> None:
        await self.close()
        self.results.clear()
        await self.open()

    async def close(self) -> None:
        if self.lrm is not None:
            await self.lrm.close()
            self.lrm = None
        if self.rt is not None:
            await asyncio.to_thread(self.rt.close)
            self.rt = None


def run_lrm(tmp: Path, scenario: Callable[[Harness], Awaitable[None]], **lrm_kwargs: Any) -> None:
    async def main() -> None:
        h = Harness(tmp, **lrm_kwargs)
        await h.open()
        try:
            await scenario(h)
        finally:
            await h.close()

    asyncio.run(main())
