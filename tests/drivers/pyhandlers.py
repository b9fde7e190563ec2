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


class Switch:
    """Handler-style names (create/modify/delete/probe), with outputs every way: VLANs by instance id."""

    def __init__(self) -> None:
        self.vlans: dict[str, str] = {}

    def create(self, params: dict[str, str], ctx: Any) -> None:
        self.vlans[ctx.instance_id] = params["vlan"]
        ctx.set_output("vlan", int(params["vlan"]))  # converted with str()
        ctx.set_output("port", "eth0")
        ctx.set_output("port", "eth1")  # the last value wins

    def modify(self, params: dict[str, str], ctx: Any) -> dict[str, Any]:
        self.vlans[ctx.instance_id] = params["vlan"]
        ctx.set_output("vlan", "overridden by the returned dict")
        return {"vlan": params["vlan"], "changed": "yes"}

    def delete(self, params: dict[str, str], ctx: Any) -> int:
        self.vlans.pop(ctx.instance_id, None)
        return 0

    def probe(self, params: dict[str, str], ctx: Any) -> tuple[int, str | None, dict[str, str]]:
        if ctx.instance_id in self.vlans:
            return 0, None, {"vlan": self.vlans[ctx.instance_id]}
        return 7, "no such vlan", {}


class Both:
    """A class with start and create: the method named after the action wins; create stays an action of its own."""

    def start(self, params: dict[str, str], ctx: Any) -> dict[str, str]:
        return {"called": "start"}

    def create(self, params: dict[str, str], ctx: Any) -> dict[str, str]:
        return {"called": "create"}


class Outputs:
    """Outputs at and beyond the limits (64 names of up to 64 characters, values of up to 4096 characters)."""

    def at_limits(self, params: dict[str, str], ctx: Any) -> dict[str, Any]:
        out: dict[str, Any] = {f"k{i}": "v" * 4096 for i in range(63)}
        out["_" + "x" * 63] = 12  # ints are converted
        return out

    def too_many(self, params: dict[str, str], ctx: Any) -> dict[str, str]:
        return {f"k{i}": "v" for i in range(65)}

    def too_many_set(self, params: dict[str, str], ctx: Any) -> None:
        for i in range(65):
            ctx.set_output(f"k{i}", i)

    def too_long(self, params: dict[str, str], ctx: Any) -> dict[str, str]:
        return {"k": "v" * 4097}

    def long_name(self, params: dict[str, str], ctx: Any) -> dict[str, str]:
        return {"x" * 65: "v"}

    def bad_name(self, params: dict[str, str], ctx: Any) -> tuple[int, str, dict[str, str]]:
        return 0, "fine", {"1st": "v"}

    def bad_set_name(self, params: dict[str, str], ctx: Any) -> None:
        ctx.set_output("vlan id", 100)

    def not_a_string(self, params: dict[str, str], ctx: Any) -> dict[str, Any]:
        return {"k": [1, 2]}

    def a_bool(self, params: dict[str, str], ctx: Any) -> dict[str, Any]:
        return {"k": True}

    def not_a_name(self, params: dict[str, str], ctx: Any) -> dict[Any, str]:
        return {3: "v"}

    def bad_third(self, params: dict[str, str], ctx: Any) -> tuple[int, str, list[str]]:
        return 0, "x", ["v"]

    def four(self, params: dict[str, str], ctx: Any) -> tuple[int, str, dict[str, str], int]:
        return 0, "x", {}, 1

    def then_raises(self, params: dict[str, str], ctx: Any) -> None:
        ctx.set_output("vlan", 1)
        raise RuntimeError("after setting an output")
