"""The allocator as a library inside another process, over a local SQLite file.

Same guarantees as the server: a claim returns only once it is durably
committed, the same key gets the same value after any restart, and only one
process may own the file. The host agent uses it for its local IDs::

    from tenure import Allocator

    with Allocator.open("/var/lib/tenure-agent/ids.db") as ids:
        ids.ensure_pool("tc-classes", ranges=[(16, 0xFFFE)])
        classid = ids.claim("tc-classes", "reservation:42").value

Calls are thread-safe; concurrent callers share group commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tenure.domain.errors import Conflict
from tenure.services.allocator import ClaimResult, PoolView
from tenure.services.runtime import Runtime


class Allocator:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._svc = runtime.allocator

    @classmethod
    def open(cls, path_or_url: str, **kwargs: Any) -> Allocator:
        url = path_or_url if "://" in path_or_url else f"sqlite:///{path_or_url}"
        return cls(Runtime.open(url, **kwargs))

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> Allocator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_pool(
        self,
        name: str,
        *,
        ranges: Sequence[Sequence[int]],
        reserved: Sequence[Sequence[int]] = (),
        strategy: str = "lowest",
        projects: Sequence[str] | None = None,
    ) -> PoolView:
        return self.runtime.run(
            self._svc.create_pool_op(name, ranges=ranges, reserved=reserved, strategy=strategy, projects=projects)
        )

    def ensure_pool(self, name: str, **kwargs: Any) -> PoolView:
        """Create the pool unless it exists (its definition is then left as it is)."""
        try:
            return self.create_pool(name, **kwargs)
        except Conflict:
            return self.pool(name)

    def delete_pool(self, name: str, *, force: bool = False) -> int:
        return self.runtime.run(self._svc.delete_pool_op(name, force=force))

    def pool(self, name: str) -> PoolView:
        return self._svc.pool_view(name)

    def pools(self) -> list[PoolView]:
        return self._svc.pool_views()

    def claim(self, pool: str, key: str, *, value: int | None = None) -> ClaimResult:
        return self.runtime.run(self._svc.claim_op(pool, key, value=value))

    def claim_many(self, pool: str, keys: Sequence[str | tuple[str, int | None]]) -> list[ClaimResult]:
        items = [(k, None) if isinstance(k, str) else (k[0], k[1]) for k in keys]
        return self.runtime.run(self._svc.claim_many_op(pool, items))

    def release(self, pool: str, key: str) -> ClaimResult:
        return self.runtime.run(self._svc.release_op(pool, key))

    def get(self, pool: str, key: str) -> ClaimResult:
        return self._svc.get_claim(pool, key)

    def find_value(self, pool: str, value: int) -> ClaimResult:
        return self._svc.find_value(pool, value)

    def claims(self, pool: str, *, limit: int = 100, after: str | None = None) -> tuple[list[ClaimResult], str | None]:
        return self._svc.list_claims(pool, limit=limit, after=after)

    def audit_begin(self, pool: str) -> PoolView:
        return self.runtime.run(self._svc.audit_begin_op(pool))

    def audit_end(self, pool: str) -> tuple[PoolView, list[ClaimResult]]:
        return self.runtime.run(self._svc.audit_end_op(pool))
