"""The server's GC policy: freeze after each full collection, walk everything once per period."""

from __future__ import annotations

import gc
from typing import Any

from tenure.gcpolicy import GCPolicy


class FakeGC:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.calls: list[str] = []

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self, generation: int) -> None:
        for cb in self.callbacks:
            cb("start", {"generation": generation})
        self.calls.append(f"collect{generation}")
        for cb in self.callbacks:
            cb("stop", {"generation": generation, "collected": 0})


def test_freezes_after_full_collections_and_walks_everything_once_per_period() -> None:
    now = [0.0]
    fake = FakeGC()
    policy = GCPolicy(complete_every=3600, clock=lambda: now[0], collector=fake).install()
    fake.collect(0)
    fake.collect(1)
    assert fake.calls == ["collect0", "collect1"]  # young collections: untouched
    fake.collect(2)
    assert fake.calls[-2:] == ["collect2", "freeze"]
    now[0] = 3599.0
    fake.collect(2)
    assert "unfreeze" not in fake.calls
    now[0] = 3600.0
    fake.calls.clear()
    fake.collect(2)
    assert fake.calls == ["unfreeze", "collect2", "freeze"] and policy.completes == 1
    now[0] = 3700.0
    fake.calls.clear()
    fake.collect(2)
    assert fake.calls == ["collect2", "freeze"]  # the period restarts at the complete collection
    policy.uninstall()
    assert fake.callbacks == []


def test_with_the_real_collector() -> None:
    policy = GCPolicy(complete_every=3600).install()
    try:
        before = gc.get_freeze_count()
        keep = [[i] for i in range(1000)]  # long-lived containers
        gc.collect()
        assert gc.get_freeze_count() >= before + len(keep)
        assert policy.freezes >= 1
    finally:
        policy.uninstall()
        gc.unfreeze()
