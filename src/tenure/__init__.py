"""Tenure: a resource manager that keeps its promises across time, failures and restarts.

The public library surface: :class:`Allocator` (keyed, durable ID allocation,
embedded over a local SQLite file) and :class:`Runtime` (the store, its writer
and services, as the server uses them). Both are imported when first used, so
that importing a part of the package (the pure domain, the client) does not
load the store and the services with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tenure.services.embedded import Allocator
    from tenure.services.runtime import Runtime

__version__ = "0.1.0"
__all__ = ["Allocator", "Runtime", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Allocator":
        from tenure.services.embedded import Allocator

        return Allocator
    if name == "Runtime":
        from tenure.services.runtime import Runtime

        return Runtime
    raise AttributeError(f"module 'tenure' has no attribute {name!r}")
