"""The allocator service: pools and claims, durable, one command per transaction.

Writes go through the :class:`~tenure.store.writer.Writer`: each command
validates against the in-memory :class:`~tenure.domain.pool.Pool`, changes it,
and records its row writes and events; the caller is answered after the group
commit. Reads of claims go to the store, so a reader only ever sees committed
claims; pool summaries come from views published after each commit.

Memory and start-up grow with the number of claims: at restore each pool loads
its claims' keys and values (raw driver rows, no ORM) and rebuilds its taken
runs in one sorted pass; nothing is proportional to the size of a range.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, select, update

from tenure.domain.access import ADMIN, Principal, claim_scope, may_see_claim, may_use_pool, require_admin
from tenure.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from tenure.domain.idspace import MAX_VALUE, IdSpace
from tenure.domain.names import validate_key
from tenure.domain.pool import Claim, ClaimOutcome, Pool, pack
from tenure.store import schema
from tenure.store.inlist import rows_in
from tenure.store.rawinsert import RawInsert
from tenure.store.writer import Batch, Op, Writer

log = logging.getLogger("tenure.allocator")

MAX_BULK = 10_000
MAX_PAGE = 1000
PAGE_STREAM = 1000  # rows fetched at a time when a snapshot streams every claim

_C = schema.claims.c
INSERT_CLAIM = RawInsert(schema.claims)
# _claim_fresh writes the claims' rows as tuples in this order
assert INSERT_CLAIM.columns == ("pool_id", "key", "value", "project", "host", "mark", "created_at", "revision")
DELETE_CLAIM = schema.claims.delete().where(and_(_C.pool_id == bindparam("b_pool"), _C.key == bindparam("b_key")))
MARK_CLAIM = (
    update(schema.claims)
    .where(and_(_C.pool_id == bindparam("b_pool"), _C.key == bindparam("b_key")))
    .values(mark=bindparam("b_mark"), revision=bindparam("b_revision"))
)
INSERT_POOL = schema.pools.insert()
# The claims whose record the database packs at restore: no owner, no audit mark, a revision below 2**31
# (so value + revision * 2**32 fits a signed 64-bit integer).
_PLAIN = "project IS NULL AND host IS NULL AND mark = 0 AND revision < 2147483648"
_POOL_ID, _KEY_REC = itemgetter(0), itemgetter(1, 2)


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool as committed: what GET /v1/pools/{pool} returns."""

    name: str
    ranges: tuple[tuple[int, int], ...]
    reserved: tuple[tuple[int, int], ...]
    strategy: str
    projects: tuple[str, ...] | None
    size: int
    used: int
    auditing: bool
    audit_epoch: int
    revision: int
    created_at: datetime

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ranges": [list(r) for r in self.ranges],
            "reserved": [list(r) for r in self.reserved],
            "strategy": self.strategy,
            "projects": list(self.projects) if self.projects is not None else None,
            "size": self.size,
            "used": self.used,
            "auditing": self.auditing,
            "audit_epoch": self.audit_epoch,
            "revision": self.revision,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """A claim as the API returns it; ``created`` tells 201 from 200."""

    pool: str
    key: str
    value: int
    project: str | None
    host: str | None
    revision: int
    created: bool = False

    def body(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "key": self.key,
            "value": self.value,
            "project": self.project,
            "host": self.host,
            "revision": self.revision,
        }


@dataclass(slots=True)
class _Entry:
    """A pool as held by the writer: the domain pool plus its storage identity."""

    id: int
    pool: Pool
    created_at: datetime
    revision: int  # revision of the pool's own last change (create, audit)


def _claim_result(pool: str, c: Claim, created: bool = False) -> ClaimResult:
    return ClaimResult(pool, c.key, c.value, c.project, c.host, c.revision, created)


def _log_on_commit(batch: Batch, level: int, msg: str, **fields: Any) -> None:
    """Log a change once it is committed (a refused or failed command leaves no line)."""
    if log.isEnabledFor(level):
        batch.on_commit(lambda: log.log(level, msg, extra=fields))


def _emit_deleted(batch: Batch, pool: str, c: Claim) -> ClaimResult:
    """The event of a claim's release; its body is what DELETE answers (the release's revision)."""
    result = ClaimResult(pool, c.key, c.value, c.project, c.host, batch.next_revision())
    batch.emit("claim", f"{pool}/{c.key}", "deleted", _labels(pool, c.project, c.host), result.body())
    return result


def _labels(pool: str, project: str | None, host: str | None) -> dict[str, str]:
    labels = {"pool": pool}
    if project is not None:
        labels["project"] = project
    if host is not None:
        labels["host"] = host
    return labels


def _check_new_owner(pool: Pool, project: str | None, host: str | None) -> None:
    """May a new claim in ``pool`` belong to (project, host)?"""
    if pool.projects is None:
        return
    if project is None and host is not None:  # a host's claim where agents may not look (GET refuses)
        raise InvalidInput(
            f"pool {pool.name!r} is restricted to projects {', '.join(pool.projects)}, which agents may "
            f"not use; a claim for host {host!r} in it needs one of those projects",
            code="project_required", pool=pool.name)
    if project is not None and project not in pool.projects:
        raise Forbidden(f"pool {pool.name!r} is not open to project {project!r}")


class AllocatorService:
    def __init__(self, *, writer: Writer, engine: Any, rng: random.Random | None = None) -> None:
        self.writer = writer
        self.engine = engine
        self.rng = rng or random.Random()
        self._entries: dict[str, _Entry] = {}  # owned by the writer thread
        self._views: dict[str, PoolView] = {}  # replaced after each commit; read by anyone
        self._next_id = 1

    # ---------------------------------------------------------------- restore

    def load(self, conn: Connection) -> None:
        """Restore every pool and its claims from the store (before serving).

        ``conn`` is the restore's snapshot (a follower restores while its leader writes: the pools and both
        parts of the scan must see one state). One sequential scan of the claims table through the raw
        driver cursor, in two parts: the claims
        with no owner and no audit mark (most of them) come with their record already packed by the
        database (value + revision * 2**32, see :func:`~tenure.domain.pool.pack`), the others as rows.
        No row object, no Claim: a million claims take about the memory of a plain dict of their keys
        and values. Values are sorted here, not by the database. The caller disables the garbage
        collector meanwhile.
        """
        for row in conn.execute(select(schema.pools).order_by(schema.pools.c.id)):
            self._entries[row.name] = self._entry_from_row(row)
            self._next_id = max(self._next_id, row.id + 1)
        by_id = {e.id: e.pool for e in self._entries.values()}
        held_of: dict[int, dict[str, int]] = {pool_id: {} for pool_id in by_id}
        hint = " NOT INDEXED" if conn.dialect.name == "sqlite" else ""  # a table scan, not an index walk
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(f"SELECT pool_id, key, value + revision * 4294967296 FROM claims{hint} WHERE {_PLAIN}")
            # Rows come in storage order: runs of one pool's claims, each added in one C loop.
            for pool_id, rows in groupby(cursor, _POOL_ID):
                held = held_of.get(pool_id)
                if held is not None:  # (a claim of no pool: nothing can hold it)
                    held.update(map(_KEY_REC, rows))
            cursor.execute(f"SELECT pool_id, key, value, project, host, mark, revision FROM claims{hint} "
                           f"WHERE NOT ({_PLAIN})")
            for pool_id, key, value, project, host, mark, revision in cursor:
                if pool_id in by_id:
                    held_of[pool_id][key] = pack(value, revision, by_id[pool_id].owner(project, host), mark)
        finally:
            cursor.close()
        for pool_id, pool in by_id.items():
            pool.load(held_of.pop(pool_id))
        for name in self._entries:
            self._publish(name)

    # ------------------------------------------------------- a follower's tail

    def refresh(self, batch: Batch, conn: Connection, pools: Collection[str], claims: Collection[str]) -> None:
        """A follower: bring the pools and claims that events named to their rows as of ``conn``'s snapshot.

        ``claims`` are event object ids (``pool/key``). A pool seen for the first time is loaded whole
        (with its claims); a pool gone from the store is dropped; every other touched pool takes its row's
        audit state, revision and next-fit cursor. A claim whose value changed (released, claimed again)
        leaves its old value and takes the new one, so each pool's free/taken index stays the restore's.
        """
        keys: dict[str, list[str]] = {}
        for object_id in claims:
            name, _, key = object_id.partition("/")
            keys.setdefault(name, []).append(key)
        names = sorted(set(pools) | set(keys))
        P = schema.pools.c
        rows = {r.name: r for r in rows_in(conn, select(schema.pools), P.name, names)}
        for name in names:
            row, e = rows.get(name), self._entries.get(name)
            if row is None or (e is not None and e.id != row.id):  # gone (or gone and made again)
                if e is not None:
                    del self._entries[name]
                    e = None
            if row is None:
                keys.pop(name, None)
            elif e is None:
                e = self._entries[name] = self._entry_from_row(row)
                p = e.pool
                p.load({c.key: pack(c.value, c.revision, p.owner(c.project, c.host), c.mark)
                        for c in self._claims_in(conn, row.id, None)})
                keys.pop(name, None)  # loaded whole, its claims included
            else:
                e.pool.audit_epoch, e.pool.auditing, e.revision = row.audit_epoch, row.auditing, row.revision
                e.pool.ids.cursor = row.cursor
            if row is not None:
                self._next_id = max(self._next_id, row.id + 1)
            self._publish_on_commit(batch, name)
        for name, touched in keys.items():
            e = self._entries[name]
            stored = {c.key: c for c in self._claims_in(conn, e.id, touched)}
            # Every old value is freed before any new one is taken: a value released by one key and claimed
            # by another since the last step must not be taken twice, nor freed under its new holder.
            for key in touched:
                old, new = e.pool.claims.get(key), stored.get(key)
                if old is not None and (new is None or new.value != old.value):
                    e.pool.release(key)
            for key in touched:
                old, new = e.pool.claims.get(key), stored.get(key)
                if new is None:
                    continue
                if old is None:
                    e.pool.reinstate(new)
                else:
                    e.pool.replace(new)

    @staticmethod
    def _claims_in(conn: Connection, pool_id: int, keys: Sequence[str] | None) -> list[Claim]:
        """A pool's stored claims (only ``keys``, if given)."""
        q = select(_C.key, _C.value, _C.project, _C.host, _C.mark, _C.revision).where(_C.pool_id == pool_id)
        if keys is None:
            return [Claim(*r) for r in conn.execute(q)]
        return [Claim(*r) for r in rows_in(conn, q, _C.key, keys)]

    def _entry_from_row(self, row: Any) -> _Entry:
        """A pool as restored from its row, with no claims yet."""
        ids = IdSpace(
            json.loads(row.ranges), json.loads(row.reserved), strategy=row.strategy, cursor=row.cursor, rng=self.rng
        )
        projects = tuple(json.loads(row.projects)) if row.projects is not None else None
        pool = Pool(row.name, ids, projects=projects, audit_epoch=row.audit_epoch, auditing=row.auditing)
        return _Entry(row.id, pool, row.created_at, row.revision)

    # ----------------------------------------------------------------- views

    def _make_view(self, e: _Entry) -> PoolView:
        pool = e.pool
        return PoolView(
            name=pool.name,
            ranges=pool.ids.ranges,
            reserved=pool.ids.reserved,
            strategy=pool.ids.strategy,
            projects=pool.projects,
            size=pool.size,
            used=pool.used,
            auditing=pool.auditing,
            audit_epoch=pool.audit_epoch,
            revision=e.revision,
            created_at=e.created_at,
        )

    def _publish(self, name: str) -> None:
        """Make the pool's current (committed) state visible to readers."""
        e = self._entries.get(name)
        if e is None:
            self._views.pop(name, None)
        else:
            self._views[name] = self._make_view(e)

    def _publish_on_commit(self, batch: Batch, name: str) -> None:
        batch.on_commit_once(("publish", name), lambda: self._publish(name))

    def has_pool(self, name: str) -> bool:
        return name in self._views

    def pool_view(self, name: str, principal: Principal = ADMIN) -> PoolView:
        view = self._views.get(name)
        if view is None:
            raise NotFound(f"no pool named {name!r}", code="pool_not_found", pool=name)
        if not may_use_pool(principal, view.projects):
            raise Forbidden(f"pool {name!r} is not open to this {principal.describe()}")
        return view

    def pool_views(self, principal: Principal = ADMIN) -> list[PoolView]:
        views = sorted(self._views.values(), key=lambda v: v.name)
        return [v for v in views if may_use_pool(principal, v.projects)]

    def _entry(self, name: str, principal: Principal) -> _Entry:
        """The writer's entry for a pool the principal may use (writer thread only)."""
        e = self._entries.get(name)
        if e is None:
            raise NotFound(f"no pool named {name!r}", code="pool_not_found", pool=name)
        if not may_use_pool(principal, e.pool.projects):
            raise Forbidden(f"pool {name!r} is not open to this {principal.describe()}")
        return e

    def claimed_value(self, pool: str, key: str, principal: Principal) -> int:
        """The value claimed for ``key`` in ``pool`` as ``principal`` may see it (writer thread only).

        ``NotFound`` names what is missing; used to resolve ``${claim:POOL:KEY}`` in instance parameters.
        """
        e = self._entries.get(pool)
        if e is None or not may_use_pool(principal, e.pool.projects):
            raise NotFound(f"no pool named {pool!r}", code="pool_not_found", pool=pool)
        c = e.pool.claims.get(key)
        if c is None or not may_see_claim(principal, c.project, c.host):
            raise NotFound(f"pool {pool!r} has no claim for key {key!r}", code="claim_not_found", pool=pool, key=key)
        return c.value

    # --------------------------------------------------------------- commands

    def create_pool_op(
        self,
        name: str,
        *,
        ranges: Sequence[Sequence[int]],
        reserved: Sequence[Sequence[int]] = (),
        strategy: str = "lowest",
        projects: Sequence[str] | None = None,
        principal: Principal = ADMIN,
    ) -> Op:
        require_admin(principal, "creating a pool")
        pool = Pool.create(name, ranges=ranges, reserved=reserved, strategy=strategy, projects=projects, rng=self.rng)

        def apply(batch: Batch) -> PoolView:
            if name in self._entries:
                raise Conflict(f"a pool named {name!r} already exists", code="pool_exists", pool=name)
            pool_id = self._next_id
            self._next_id += 1
            revision = batch.next_revision()
            entry = _Entry(pool_id, pool, batch.now, revision)
            self._entries[name] = entry
            batch.on_undo(lambda: self._entries.pop(name, None))
            batch.write(
                INSERT_POOL,
                {
                    "id": pool_id,
                    "name": name,
                    "ranges": json.dumps([list(r) for r in pool.ids.ranges]),
                    "reserved": json.dumps([list(r) for r in pool.ids.reserved]),
                    "strategy": pool.ids.strategy,
                    "projects": json.dumps(list(pool.projects)) if pool.projects is not None else None,
                    "cursor": pool.ids.cursor,
                    "audit_epoch": 0,
                    "auditing": False,
                    "created_at": batch.now,
                    "revision": revision,
                },
            )
            view = self._make_view(entry)
            self._publish_on_commit(batch, name)
            batch.emit("pool", name, "created", {"pool": name}, view.body())
            _log_on_commit(batch, logging.INFO, "pool created", pool=name, revision=revision)
            return view

        return Op(apply)

    def delete_pool_op(self, name: str, *, force: bool = False, principal: Principal = ADMIN) -> Op:
        require_admin(principal, "deleting a pool")

        def apply(batch: Batch) -> int:
            e = self._entry(name, principal)
            if e.pool.claims and not force:
                raise Conflict(
                    f"pool {name!r} still has {e.pool.used} claims; release them or delete with force",
                    code="pool_in_use",
                    pool=name,
                    used=e.pool.used,
                )
            for c in list(e.pool.claims.values()):
                _emit_deleted(batch, name, c)
            del self._entries[name]
            batch.on_undo(lambda: self._entries.__setitem__(name, e))
            # Claims go with the pool (ON DELETE CASCADE is not relied upon: SQLite needs the pragma).
            batch.write(schema.claims.delete().where(_C.pool_id == e.id), {})
            batch.write(schema.pools.delete().where(schema.pools.c.id == e.id), {})
            rev = batch.emit("pool", name, "deleted", {"pool": name}, self._make_view(e).body())
            self._publish_on_commit(batch, name)
            _log_on_commit(batch, logging.INFO, "pool deleted", pool=name, revision=rev, claims=len(e.pool.claims))
            return rev

        return Op(apply)

    def _claim_in(
        self,
        batch: Batch,
        e: _Entry,
        key: str,
        value: int | None,
        project: str | None,
        host: str | None,
        principal: Principal,
    ) -> tuple[ClaimOutcome, ClaimResult]:
        pool = e.pool
        existing = pool.claims.get(key)
        if existing is not None and not may_see_claim(principal, existing.project, existing.host):
            raise Conflict(
                f"key {key!r} in pool {pool.name!r} is held by another owner", code="key_in_use", pool=pool.name
            )
        if existing is None:
            _check_new_owner(pool, project, host)
        cursor, mark, rev = pool.ids.cursor, (existing.mark if existing else 0), (existing.revision if existing else 0)
        try:
            out = pool.claim(key, value=value, project=project, host=host, revision=batch.next_revision())
        except Conflict as exc:
            if exc.code == "pool_exhausted":
                log.warning("pool exhausted", extra={"pool": pool.name, "key": key, "size": pool.size})
            raise
        batch.on_undo(lambda: pool.unclaim(out, cursor=cursor, mark=mark, revision=rev))
        c = out.claim
        if out.created:
            batch.write(
                INSERT_CLAIM,
                {
                    "pool_id": e.id,
                    "key": key,
                    "value": c.value,
                    "project": c.project,
                    "host": c.host,
                    "mark": c.mark,
                    "created_at": batch.now,
                    "revision": c.revision,
                },
            )
            if pool.ids.strategy == "next":
                batch.write_once(("cursor", e.id), lambda: self._cursor_write(e))
        elif out.marked:
            batch.write(MARK_CLAIM, {"b_pool": e.id, "b_key": key, "b_mark": c.mark, "b_revision": c.revision})
        result = _claim_result(pool.name, c, out.created)
        if out.created or out.marked:
            batch.emit("claim", f"{pool.name}/{key}", "created" if out.created else "updated",
                       _labels(pool.name, c.project, c.host), result.body())
            # One line per claim: at debug level only (thousands a second otherwise).
            _log_on_commit(batch, logging.DEBUG, "claim created" if out.created else "claim re-marked",
                           pool=pool.name, key=key, value=c.value, revision=c.revision)
        return out, result

    def _claim_fresh(
        self, batch: Batch, e: _Entry, keys: list[str], project: str | None, host: str | None
    ) -> list[ClaimResult]:
        """Claim new keys with picked values: what one :meth:`_claim_in` after another would do and write,
        with the per-claim work in a few loops (rows as tuples, one undo for all)."""
        pool = e.pool
        _check_new_owner(pool, project, host)
        first, cursor = batch.next_revision(), pool.ids.cursor
        try:
            values = pool.claim_fresh(keys, project=project, host=host, revision=first)
        except Conflict as exc:
            if exc.code == "pool_exhausted":
                log.warning("pool exhausted", extra={"pool": pool.name, "key": keys[0], "size": pool.size})
            raise
        batch.on_undo(lambda: pool.unclaim_fresh(keys, values, cursor=cursor))
        now, mark, name = batch.now, pool.audit_epoch, pool.name
        revisions = range(first, first + len(keys))
        batch.write_rows(INSERT_CLAIM, [(e.id, k, v, project, host, mark, now, r)
                                        for k, v, r in zip(keys, values, revisions)])
        if pool.ids.strategy == "next":
            batch.write_once(("cursor", e.id), lambda: self._cursor_write(e))
        labels = _labels(name, project, host)
        results = [ClaimResult(name, k, v, project, host, r, True) for k, v, r in zip(keys, values, revisions)]
        emit = batch.emit
        for res in results:
            emit("claim", f"{name}/{res.key}", "created", labels, res.body())
        if log.isEnabledFor(logging.DEBUG):
            for res in results:
                _log_on_commit(batch, logging.DEBUG, "claim created", pool=name, key=res.key, value=res.value,
                               revision=res.revision)
        return results

    def _cursor_write(self, e: _Entry) -> tuple[Any, dict[str, Any]]:
        stmt = update(schema.pools).where(schema.pools.c.id == e.id).values(cursor=e.pool.ids.cursor)
        return stmt, {}

    def claim_op(
        self,
        pool: str,
        key: str,
        *,
        value: int | None = None,
        project: str | None = None,
        host: str | None = None,
        principal: Principal = ADMIN,
    ) -> Op:
        validate_key(key)
        project, host = claim_scope(principal, project, host)

        def apply(batch: Batch) -> ClaimResult:
            e = self._entry(pool, principal)
            _, result = self._claim_in(batch, e, key, value, project, host, principal)
            self._publish_on_commit(batch, pool)
            return result

        return Op(apply)

    def claim_many_op(
        self,
        pool: str,
        items: Sequence[tuple[str, int | None]],
        *,
        project: str | None = None,
        host: str | None = None,
        principal: Principal = ADMIN,
    ) -> Op:
        """Claim many keys in one transaction: all succeed, or none does."""
        if not items:
            raise InvalidInput("a bulk claim needs at least one key", code="invalid_bulk")
        if len(items) > MAX_BULK:
            raise InvalidInput(f"a bulk claim takes at most {MAX_BULK} keys, got {len(items)}", code="invalid_bulk")
        seen: set[str] = set()
        for key, _ in items:
            validate_key(key)
            if key in seen:
                raise InvalidInput(f"key {key!r} appears twice in the bulk claim", code="duplicate_key")
            seen.add(key)
        project, host = claim_scope(principal, project, host)
        keys = [k for k, _ in items]
        fresh = all(v is None for _, v in items)  # no value pinned: the bulk path, if no key is held yet

        def apply(batch: Batch) -> list[ClaimResult]:
            e = self._entry(pool, principal)
            used = e.pool.used
            # Any refusal raises; the writer then runs the undo of every claim made so far.
            try:
                if fresh and e.pool.holds_none(keys):
                    results = self._claim_fresh(batch, e, keys, project, host)
                else:
                    # Pinned values first, then the picks: a pick never takes a value a later item pins, so a
                    # bulk claim that can be granted is, whatever the strategy picks. Answers keep the request's order.
                    order = sorted(range(len(items)), key=lambda i: items[i][1] is None)
                    done = {i: self._claim_in(batch, e, *items[i], project, host, principal)[1] for i in order}
                    results = [done[i] for i in range(len(items))]
            except Conflict as exc:
                if exc.code != "pool_exhausted":
                    raise
                # Report the pool as it stays (the bulk is undone), not as it was mid-way.
                raise Conflict(
                    f"pool {pool!r} has {e.pool.size - used} free values, fewer than this bulk claim needs",
                    code="pool_exhausted", pool=pool, size=e.pool.size, used=used, requested=len(items),
                ) from None
            self._publish_on_commit(batch, pool)
            return results

        return Op(apply)

    def release_op(self, pool: str, key: str, *, principal: Principal = ADMIN) -> Op:
        validate_key(key)

        def apply(batch: Batch) -> ClaimResult:
            e = self._entry(pool, principal)
            c = e.pool.get(key)
            if not may_see_claim(principal, c.project, c.host):
                raise Forbidden(f"the claim of key {key!r} belongs to another owner")
            e.pool.release(key)
            batch.on_undo(lambda: e.pool.reinstate(c))
            batch.write(DELETE_CLAIM, {"b_pool": e.id, "b_key": key})
            result = _emit_deleted(batch, pool, c)
            self._publish_on_commit(batch, pool)
            _log_on_commit(batch, logging.DEBUG, "claim released", pool=pool, key=key, value=c.value,
                           revision=result.revision)
            return result

        return Op(apply)

    def _pool_write(self, batch: Batch, e: _Entry) -> None:
        batch.write(
            update(schema.pools)
            .where(schema.pools.c.id == e.id)
            .values(audit_epoch=e.pool.audit_epoch, auditing=e.pool.auditing, revision=e.revision),
            {},
        )

    def audit_begin_op(self, pool: str, *, principal: Principal = ADMIN) -> Op:
        require_admin(principal, "an audit")

        def apply(batch: Batch) -> PoolView:
            e = self._entry(pool, principal)
            old_rev = e.revision
            epoch = e.pool.audit_begin()

            def undo() -> None:
                e.pool.audit_epoch, e.pool.auditing, e.revision = epoch - 1, False, old_rev

            batch.on_undo(undo)
            e.revision = batch.next_revision()
            self._pool_write(batch, e)
            view = self._make_view(e)
            self._publish_on_commit(batch, pool)
            batch.emit("pool", pool, "updated", {"pool": pool}, view.body())
            _log_on_commit(batch, logging.INFO, "audit begun", pool=pool, epoch=epoch)
            return view

        return Op(apply)

    def audit_end_op(self, pool: str, *, principal: Principal = ADMIN) -> Op:
        require_admin(principal, "an audit")

        def apply(batch: Batch) -> tuple[PoolView, list[ClaimResult]]:
            e = self._entry(pool, principal)
            old_rev = e.revision
            stale = e.pool.audit_end()

            def undo() -> None:
                for c in stale:
                    e.pool.reinstate(c)
                e.pool.auditing, e.revision = True, old_rev

            batch.on_undo(undo)
            released = []
            for c in stale:
                batch.write(DELETE_CLAIM, {"b_pool": e.id, "b_key": c.key})
                released.append(_emit_deleted(batch, pool, c))
            e.revision = batch.next_revision()
            self._pool_write(batch, e)
            view = self._make_view(e)
            self._publish_on_commit(batch, pool)
            batch.emit("pool", pool, "updated", {"pool": pool}, view.body())
            _log_on_commit(batch, logging.INFO, "audit ended", pool=pool, released=len(released))
            return view, released

        return Op(apply)

    # ------------------------------------------------------------------ reads

    def _claim_from_row(self, pool: str, row: Any) -> ClaimResult:
        return ClaimResult(pool, row.key, row.value, row.project, row.host, row.revision)

    @staticmethod
    def _claims_of(view: PoolView) -> Any:
        """SELECT of a pool's claims, as committed (reads go to the store, never to the writer's memory)."""
        return (
            select(_C.key, _C.value, _C.project, _C.host, _C.revision)
            .join_from(schema.claims, schema.pools, schema.pools.c.id == _C.pool_id)
            .where(schema.pools.c.name == view.name)
        )

    def get_claim(self, pool: str, key: str, *, principal: Principal = ADMIN) -> ClaimResult:
        validate_key(key)
        view = self.pool_view(pool, principal)
        with self.engine.connect() as conn:
            row = conn.execute(self._claims_of(view).where(_C.key == key)).first()
        if row is None:
            raise NotFound(f"pool {pool!r} has no claim for key {key!r}", code="claim_not_found", pool=pool, key=key)
        if not may_see_claim(principal, row.project, row.host):
            raise Forbidden(f"the claim of key {key!r} belongs to another owner")
        return self._claim_from_row(pool, row)

    def find_value(self, pool: str, value: int, *, principal: Principal = ADMIN) -> ClaimResult:
        view = self.pool_view(pool, principal)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VALUE:
            raise NotFound(f"no claim holds value {value} in pool {pool!r}", code="claim_not_found", pool=pool)
        with self.engine.connect() as conn:
            row = conn.execute(self._claims_of(view).where(_C.value == value)).first()
        if row is None or not may_see_claim(principal, row.project, row.host):
            raise NotFound(f"no claim holds value {value} in pool {pool!r}", code="claim_not_found", pool=pool)
        return self._claim_from_row(pool, row)

    def list_claims(
        self, pool: str, *, limit: int = 100, after: str | None = None, principal: Principal = ADMIN
    ) -> tuple[list[ClaimResult], str | None]:
        """A page of claims in key order, and the cursor for the next page (None at the end)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", code="invalid_limit")
        if after:  # "" means from the start; anything else must be a possible key
            validate_key(after)
        view = self.pool_view(pool, principal)
        q = self._claims_of(view).order_by(_C.key).limit(limit + 1)
        if after:
            q = q.where(_C.key > after)
        if principal.role == "member":
            q = q.where(_C.project == principal.project)
        elif principal.role == "agent":
            q = q.where(_C.host == principal.host, _C.project.is_(None))
        with self.engine.connect() as conn:
            rows = conn.execute(q).fetchall()
        page = [self._claim_from_row(pool, r) for r in rows[:limit]]
        return page, (page[-1].key if len(rows) > limit else None)

    # ------------------------------------------- snapshots (watch initial=true)

    def list_pools_at(
        self, conn: Connection, pins: Mapping[str, frozenset[str]]
    ) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        """Every pool as of ``conn``'s snapshot, as events carry it: (id, labels, body)."""
        P = schema.pools.c
        used = dict(conn.execute(select(_C.pool_id, func.count()).group_by(_C.pool_id)).all())
        q = select(schema.pools).order_by(P.name)
        if "pool" in pins:
            q = q.where(P.name.in_(sorted(pins["pool"])))
        for row in conn.execute(q).all():
            ranges, reserved = json.loads(row.ranges), json.loads(row.reserved)
            view = PoolView(
                name=row.name,
                ranges=tuple((lo, hi) for lo, hi in ranges),
                reserved=tuple((lo, hi) for lo, hi in reserved),
                strategy=row.strategy,
                projects=tuple(json.loads(row.projects)) if row.projects is not None else None,
                size=IdSpace(ranges, reserved, strategy=row.strategy).size,
                used=used.get(row.id, 0),
                auditing=row.auditing,
                audit_epoch=row.audit_epoch,
                revision=row.revision,
                created_at=row.created_at,
            )
            yield row.name, {"pool": row.name}, view.body()

    def list_claims_at(
        self, conn: Connection, pins: Mapping[str, frozenset[str]]
    ) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        """Every claim as of ``conn``'s snapshot, narrowed in SQL by the pinned labels; streamed."""
        name = schema.pools.c.name
        q = (
            select(name, _C.key, _C.value, _C.project, _C.host, _C.revision)
            .join_from(schema.claims, schema.pools, schema.pools.c.id == _C.pool_id)
            .order_by(name, _C.key)
        )
        for label, col in (("pool", name), ("project", _C.project), ("host", _C.host)):
            if label in pins:
                q = q.where(col.in_(sorted(pins[label])))
        for r in conn.execution_options(stream_results=True, yield_per=PAGE_STREAM).execute(q):
            c = ClaimResult(r.name, r.key, r.value, r.project, r.host, r.revision)
            yield f"{r.name}/{r.key}", _labels(r.name, r.project, r.host), c.body()
