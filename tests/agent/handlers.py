"""Handlers for the agent tests, written in handler style (create, modify, delete, probe) with outputs."""

from __future__ import annotations

import threading
from typing import Any


class Thing:
    """An in-memory resource per instance id; ``fail_create=1`` makes create fail. Any parameter is taken."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.things: dict[str, dict[str, str]] = {}
        self.calls: list[tuple[str, str]] = []  # (action, instance id)

    def _call(self, action: str, ctx: Any) -> None:
        with self.lock:
            self.calls.append((action, ctx.instance_id))

    def create(self, params: dict[str, str], ctx: Any) -> Any:
        self._call("create", ctx)
        if params.get("fail_create") == "1":
            return 1, "told to fail"
        with self.lock:
            self.things[ctx.instance_id] = dict(params)
        return {"echo": params.get("value", "")}

    def modify(self, params: dict[str, str], ctx: Any) -> Any:
        self._call("modify", ctx)
        with self.lock:
            self.things[ctx.instance_id] = dict(params)
        return {"echo": params.get("value", "")}

    def delete(self, params: dict[str, str], ctx: Any) -> int:
        self._call("delete", ctx)
        with self.lock:
            self.things.pop(ctx.instance_id, None)
        return 0

    def probe(self, params: dict[str, str], ctx: Any) -> int:
        with self.lock:
            if ctx.instance_id not in self.things:
                return 7
        ctx.set_output("seen", params.get("value", "-"))  # what it found: the agent's observed state
        return 0


class Gate:
    """Like :class:`Thing`, but create blocks until the test opens the gate (class-wide state: one test at a time).

    No reload: a modify is a delete then a create. Delete fails for the value in ``fail_delete``.
    """

    gate = threading.Event()
    entered = threading.Event()
    calls: list[tuple[str, str]] = []  # (action, value)
    fail_delete: str | None = None
    lock = threading.Lock()

    @classmethod
    def reset(cls) -> None:
        cls.gate, cls.entered = threading.Event(), threading.Event()
        cls.calls = []
        cls.fail_delete = None

    def _call(self, action: str, params: dict[str, str]) -> None:
        with self.lock:
            self.calls.append((action, params.get("value", "")))

    def create(self, params: dict[str, str], ctx: Any) -> int:
        self._call("create", params)
        self.entered.set()
        while not self.gate.wait(0.05):
            if ctx.cancelled.is_set():
                return 1
        return 0

    def delete(self, params: dict[str, str], ctx: Any) -> int:
        self._call("delete", params)
        return 1 if self.fail_delete is not None and params.get("value") == self.fail_delete else 0

    def probe(self, params: dict[str, str], ctx: Any) -> int:
        return 0 if self.gate.is_set() else 7


class Knob:
    """An OCF-style handler whose meta-data says which parameters a reload may change (OCF 1.1's ``reloadable``):
    ``value`` may, ``where`` may not (as a shaper's device). Class-wide record of the calls."""

    calls: list[tuple[str, str, str]] = []  # (action, where, value)
    lock = threading.Lock()
    META = """<?xml version="1.0"?>
<resource-agent name="Knob" version="1.0">
  <version>1.1</version>
  <longdesc lang="en">A test knob.</longdesc>
  <shortdesc lang="en">Knob</shortdesc>
  <parameters>
    <parameter name="where" unique="0" required="1" reloadable="0"><content type="string"/></parameter>
    <parameter name="value" unique="0" required="0" reloadable="1"><content type="string"/></parameter>
  </parameters>
  <actions>
    <action name="start" timeout="10s"/>
    <action name="stop" timeout="10s"/>
    <action name="monitor" timeout="10s" interval="0"/>
    <action name="reload" timeout="10s"/>
    <action name="meta-data" timeout="5s"/>
  </actions>
</resource-agent>
"""

    def _call(self, action: str, params: dict[str, str]) -> int:
        with self.lock:
            self.calls.append((action, params.get("where", ""), params.get("value", "")))
        return 0

    def meta_data(self) -> str:
        return self.META

    def start(self, params: dict[str, str], ctx: Any) -> int:
        return self._call("start", params)

    def reload(self, params: dict[str, str], ctx: Any) -> int:
        return self._call("reload", params)

    def stop(self, params: dict[str, str], ctx: Any) -> int:
        return self._call("stop", params)

    def monitor(self, params: dict[str, str], ctx: Any) -> int:
        return 0
