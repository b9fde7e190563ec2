"""What a host agent remembers of its sync with the server, in its own store (survives kill -9).

Per instance (``agent_instances``): the server's latest desired body, the
generation last applied, what was last reported, the LRM resource that
carries it, its outputs and its local IDs' values. And where the watch resumes
(``agent_state``, key ``since``). Each change is a writer command of the
agent's runtime: the desired body is written before the revision that
delivered it, in the same commit or an earlier one, so a restart resumes with
nothing lost and nothing applied twice.

Local IDs (a shaper's class id) come from the agent's embedded allocator:
pool ``local.<type>.<parameter>`` with the ranges of the instance type's
``locals``, the key being the instance id: the same key gets the same value
after any restart (DESIGN.md invariant 4).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select

from tenure.domain.errors import NotFound
from tenure.services.runtime import Runtime
from tenure.store import schema
from tenure.store.writer import Batch, Op

_A = schema.agent_instances
_S = schema.agent_state


@dataclass
class Local:
    """One instance as the agent knows it."""

    id: str
    desired: dict[str, Any] | None = None  # the server's body (None: the server deleted it)
    type: str | None = None  # its type, kept when the server forgets the instance (to release its local IDs)
    resource: str | None = None  # the LRM resource's name, once added
    applied: int = 0  # the generation whose operation last ran here
    applied_params: dict[str, str] | None = None  # the parameters of the last create or modify that succeeded
    done: int = 0  # the generation whose create or modify succeeded here
    reported: tuple[int, str] | None = None  # (generation, state) last reported and accepted
    outputs: dict[str, str] = field(default_factory=dict)
    locals: dict[str, int] = field(default_factory=dict)  # parameter -> local ID
    restarts: int = 0  # recoveries tried for the current generation

    def body(self) -> dict[str, Any]:
        d = asdict(self)
        d["reported"] = list(self.reported) if self.reported else None
        return d

    @classmethod
    def from_body(cls, d: dict[str, Any]) -> Local:
        rep = d.get("reported")
        return cls(id=d["id"], desired=d.get("desired"), type=d.get("type"), resource=d.get("resource"),
                   applied=d.get("applied", 0), applied_params=d.get("applied_params"), done=d.get("done", 0),
                   reported=(rep[0], rep[1]) if rep else None, outputs=dict(d.get("outputs") or {}),
                   locals=dict(d.get("locals") or {}), restarts=d.get("restarts", 0))


class SyncState:
    """The sync loop's persistence, over the agent's runtime (SQLite)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def load(self) -> tuple[int | None, dict[str, Local]]:
        with self.runtime.engine.connect() as conn:
            since = conn.execute(select(_S.c.value).where(_S.c.key == "since")).scalar()
            rows = conn.execute(select(_A.c.body)).all()
        return (int(since) if since is not None else None), {
            (loc := Local.from_body(json.loads(r.body))).id: loc for r in rows}

    async def save(self, local: Local | None = None, *, since: int | None = None, drop: str | None = None) -> None:
        body = json.dumps(local.body(), ensure_ascii=False) if local is not None else None

        def apply(batch: Batch) -> None:
            if drop is not None:
                batch.write(delete(_A).where(_A.c.id == drop), {})
            if local is not None:
                batch.write(delete(_A).where(_A.c.id == local.id), {})
                batch.write(insert(_A), {"id": local.id, "body": body})
            if since is not None:
                batch.write(delete(_S).where(_S.c.key == "since"), {})
                batch.write(insert(_S), {"key": "since", "value": str(since)})

        await self.runtime.arun(Op(apply))

    async def forget_since(self) -> None:
        await self.runtime.arun(Op(lambda batch: batch.write(delete(_S).where(_S.c.key == "since"), {})))

    # ---------------------------------------------------------------- local IDs

    async def local_id(self, pool: str, ranges: tuple[tuple[int, int], ...], key: str) -> int:
        alloc = self.runtime.allocator
        if not alloc.has_pool(pool):
            try:
                await self.runtime.arun(alloc.create_pool_op(pool, ranges=[list(r) for r in ranges]))
            except Exception:
                if not alloc.has_pool(pool):  # (a concurrent first claim created it: fine)
                    raise
        claimed = await self.runtime.arun(alloc.claim_op(pool, key))
        return claimed.value

    async def release_local(self, pool: str, key: str) -> None:
        alloc = self.runtime.allocator
        if not alloc.has_pool(pool):
            return
        try:
            await self.runtime.arun(alloc.release_op(pool, key))
        except NotFound:
            pass

