"""Handler classes for the python driver tests (importable as ``tests.drivers.pyhandlers``)."""

from __future__ import annotations

import threading
from typing import Any

# Set by Hang.start once it is running, and once it has seen ctx.cancelled; tests wait on these.
HANG_ENTERED = threading.Event()
HANG_LEFT = threading.Event()


class Boom:
    def start(self, params: dict[str, str], ctx: Any) -> int:
        ctx.log("about to fail")
        raise RuntimeError("boom: " + params.get("why", "no reason"))

    def meta_data(self) -> str:
        raise OSError("cannot describe myself")


class Hang:
    """start blocks until the operation is cancelled (by its timeout), as a well-behaved handler must."""

    def start(self, params: dict[str, str], ctx: Any) -> int:
        HANG_ENTERED.set()
        ctx.cancelled.wait(60)
        HANG_LEFT.set()
        return 0


class Answers:
    """Every way of answering."""

    def plain(self, params: dict[str, str], ctx: Any) -> None:
        return None

    def code(self, params: dict[str, str], ctx: Any) -> int:
        return int(params["rc"])

    def with_reason(self, params: dict[str, str], ctx: Any) -> tuple[int, str]:
        return 7, "not there"

    def nonsense(self, params: dict[str, str], ctx: Any) -> str:
        return "yes"

    def truthy(self, params: dict[str, str], ctx: Any) -> bool:
        return True

    def context(self, params: dict[str, str], ctx: Any) -> int:
        ctx.log(f"{ctx.instance} {ctx.instance_id} {ctx.interval:g} {ctx.timeout:g} {sorted(params.items())}")
        params["mutated"] = "yes"  # a copy: the request is not touched
        return 0

    def meta_data(self) -> str:
        return "<resource-agent name='answers'/>"

    def _private(self, params: dict[str, str], ctx: Any) -> int:
        return 0

    NOT_A_METHOD = 3


class Unconstructible:
    def __init__(self) -> None:
        raise ValueError("needs arguments")
