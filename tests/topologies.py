"""Topologies the tests share, as documents (the domain only: usable from any test)."""

from __future__ import annotations

from typing import Any

# h1 ─ s1 ═ s2 ─ h2, with a longer way s1 ─ s3 ─ s2; h3 is on s1 and s3 (multi-homed); m1 is a middlebox on s2.
SQUARE: dict[str, Any] = {
    "nodes": [
        {"id": "h1", "kind": "host"}, {"id": "h2", "kind": "host"}, {"id": "h3", "kind": "host"},
        {"id": "s1", "kind": "switch"}, {"id": "s2", "kind": "switch"}, {"id": "s3", "kind": "switch"},
        {"id": "m1", "kind": "middlebox"}, {"id": "c1", "kind": "host"},
    ],
    "links": [
        {"id": "h1-s1", "a": "h1", "b": "s1", "capacity": "1G"},
        {"id": "h2-s2", "a": "h2", "b": "s2", "capacity": "1G"},
        {"id": "h3-s1", "a": "h3", "b": "s1", "capacity": "1G"},
        {"id": "h3-s3", "a": "h3", "b": "s3", "capacity": "1G"},
        {"id": "s1-s2", "a": "s1", "b": "s2", "capacity_ab": "10G", "capacity_ba": "5G"},
        {"id": "s1-s3", "a": "s1", "b": "s3", "capacity": "1G"},
        {"id": "s3-s2", "a": "s3", "b": "s2", "capacity": "1G"},
        {"id": "m1-s2", "a": "m1", "b": "s2", "capacity": "1G"},
        {"id": "c1-s3", "a": "c1", "b": "s3", "capacity": "1G"},
    ],
}
