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
            return 0 if ctx.instance_id in self.things else 7
