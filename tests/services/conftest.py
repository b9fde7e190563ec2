"""Fixtures of the services' tests: a fake clock, and a runtime on it with the square topology of
tests/reservation_support.py (modules that need another one define their own)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reservation_support import FakeClock, open_rt, square


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rt(db_url: str, clock: FakeClock) -> Any:
    r = open_rt(db_url, clock)
    r.run(r.topology.set_topology_op(square()))
    try:
        yield r
    finally:
        r.close()
