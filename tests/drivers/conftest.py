"""Fixtures for the driver tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.drivers.support import Ready, make_executable


@pytest.fixture(scope="session", autouse=True)
def _executable_bins() -> None:
    make_executable()


@pytest.fixture
def ready(tmp_path: Path) -> Iterator[Ready]:
    r = Ready(tmp_path / "ready.fifo")
    try:
        yield r
    finally:
        r.close()
