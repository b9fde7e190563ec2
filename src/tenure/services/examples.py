"""Example data for ``tenure serve --example`` (``python3 dev.py serve``): a few pools and a small leaf-spine.

Created once, on a store that has none of it; an operator's own changes are never undone at a later start.
"""

from __future__ import annotations

from typing import Any

from tenure.domain.topology import Topology
from tenure.services.runtime import Runtime

EXAMPLE_POOLS: list[dict[str, Any]] = [
    {"name": "mpls-labels", "ranges": [[16, 1048575]], "strategy": "lowest"},
    {"name": "vlans", "ranges": [[1, 4094]], "reserved": [[1, 1], [1002, 1005]], "strategy": "lowest"},
    {"name": "vxlan-vnis", "ranges": [[1, 16777215]], "strategy": "random"},
    {"name": "ifindexes", "ranges": [[1, 65535]], "strategy": "next"},
]


# A small leaf-spine: two spines, two leaves, four hosts, a middlebox (firewall).
EXAMPLE_TOPOLOGY: dict[str, Any] = {
    "alarm": "90%",
    "nodes": [{"id": n, "kind": "switch"} for n in ("spine1", "spine2", "leaf1", "leaf2")]
    + [{"id": f"h{i}", "kind": "host"} for i in range(1, 5)] + [{"id": "fw1", "kind": "middlebox"}],
    "links": [{"id": f"{leaf}-{spine}", "a": leaf, "b": spine, "capacity": "40G"}
              for leaf in ("leaf1", "leaf2") for spine in ("spine1", "spine2")]
    + [{"id": f"h{i}-leaf{1 + (i - 1) // 2}", "a": f"h{i}", "b": f"leaf{1 + (i - 1) // 2}", "capacity": "10G"}
       for i in range(1, 5)]
    + [{"id": "fw1-leaf2", "a": "fw1", "b": "leaf2", "capacity": "10G"}],
}


def ensure_examples(runtime: Runtime) -> None:
    """The example topology (if there never was one) and each example pool that does not exist."""
    if not runtime.topology.current.nodes and runtime.topology.body()["revision"] == 0:
        runtime.run(runtime.topology.set_topology_op(Topology.parse(EXAMPLE_TOPOLOGY)))
    svc = runtime.allocator
    for spec in EXAMPLE_POOLS:
        if spec["name"] not in {v.name for v in svc.pool_views()}:
            runtime.run(svc.create_pool_op(spec["name"], ranges=spec["ranges"], reserved=spec.get("reserved", ()),
                                           strategy=spec["strategy"]))
