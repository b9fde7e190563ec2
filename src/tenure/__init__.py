"""Tenure: a resource manager that keeps its promises across time, failures and restarts.

The public library surface: :class:`Allocator` (keyed, durable ID allocation,
embedded over a local SQLite file) and :class:`Runtime` (the store, its writer
and services, as the server uses them).
"""

from __future__ import annotations

from tenure.services.embedded import Allocator
from tenure.services.runtime import Runtime

__version__ = "0.1.0"
__all__ = ["Allocator", "Runtime", "__version__"]
