"""``python:tenure.drivers.bundled.example:Memory``: a resource that exists only in memory.

The smallest complete handler: it shows the shape of one (methods named after
actions, taking ``params`` and a :class:`~tenure.drivers.pydriver.HandlerContext`,
returning an OCF code) and gives tests and demos a driver with real state and no
side effects. Methods run in worker threads, possibly several at once for
different resources, so the state is behind a lock.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenure.drivers.pydriver import HandlerContext

OCF_SUCCESS = 0
OCF_NOT_RUNNING = 7

META_DATA = """<?xml version="1.0"?>
<resource-agent name="Memory" version="1.0">
  <version>1.0</version>
  <longdesc lang="en">A resource kept in the driver's memory: start records it, stop forgets it.</longdesc>
  <shortdesc lang="en">In-memory example resource</shortdesc>
  <parameters>
    <parameter name="value" unique="0" required="0">
      <longdesc lang="en">An arbitrary value remembered while the resource runs.</longdesc>
      <shortdesc lang="en">Remembered value</shortdesc>
      <content type="string" default="" />
    </parameter>
  </parameters>
  <actions>
    <action name="start" timeout="5s" />
    <action name="stop" timeout="5s" />
    <action name="monitor" timeout="5s" interval="10s" />
    <action name="meta-data" timeout="5s" />
  </actions>
</resource-agent>
"""


class Memory:
    """Running resources are the keys of a dict, by instance id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, dict[str, str]] = {}

    def meta_data(self) -> str:
        return META_DATA

    def start(self, params: dict[str, str], ctx: HandlerContext) -> int:
        with self._lock:
            self._running[ctx.instance_id] = dict(params)  # starting a running resource is a success (OCF)
        ctx.log(f"started {ctx.instance}")
        return OCF_SUCCESS

    def stop(self, params: dict[str, str], ctx: HandlerContext) -> int:
        with self._lock:
            self._running.pop(ctx.instance_id, None)  # stopping a stopped resource is a success too
        ctx.log(f"stopped {ctx.instance}")
        return OCF_SUCCESS

    def monitor(self, params: dict[str, str], ctx: HandlerContext) -> int:
        with self._lock:
            running = ctx.instance_id in self._running
        return OCF_SUCCESS if running else OCF_NOT_RUNNING
