"""Bearer tokens: created once, shown once, stored only as a SHA-256 hash; they may expire, and be rotated.

Tokens are 256 random bits, so a plain SHA-256 is enough to make a stolen
database useless for authenticating (a slow password hash protects low-entropy
secrets, which these are not), and it keeps authentication a dictionary look-up.
The writer keeps the hash -> principal map current after each commit.

A token may have an expiry (``ttl`` at creation): from then on it is refused with ``token_expired``, and a timer
writes an ``updated`` event that says so (the watches it opened end, as on revocation). A rotation gives a token a
new secret under the same id; the old one keeps working for a grace period (``token_rotated`` after it). The last
use of each token is kept in memory and written in one batch a minute (no event: it is not a change anyone
watches).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from tenure.clock import Clock, utcnow
from tenure.domain.access import ADMIN, Principal, check_scope, require_admin
from tenure.domain.errors import InvalidInput, NotFound, Unauthorized
from tenure.domain.names import validate_text
from tenure.domain.units import to_us
from tenure.services.scheduler import Scheduler
from tenure.store import schema
from tenure.store.inlist import rows_in
from tenure.store.writer import Batch, Op, Writer

MAX_TTL = 10 * 366 * 86400  # seconds: a token may live ten years at most
MAX_GRACE = 30 * 86400  # seconds a rotated-out secret may keep working
RETRY_DUE_US = 5_000_000  # an expiry whose event could not be written is tried again this much later
_T = schema.tokens.c
TOUCH = update(schema.tokens).where(_T.id == bindparam("b_id")).values(last_used_at=bindparam("b_used"))

TOKEN_PREFIX = "tnr_"


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    role: str
    project: str | None
    host: str | None
    description: str | None
    created_at: datetime
    revoked_at: datetime | None
    revision: int
    expires_at: datetime | None = None
    previous_until: datetime | None = None  # a rotation's old secret works until then
    expired: bool = False  # shown: the expiry has passed (its event may not be written yet)
    last_used_at: datetime | None = None
    announced: bool = False  # the expiry's event is written (tokens.expired_at)

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "project": self.project,
            "host": self.host,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "expired": self.expired,
            "previous_secret_until": self.previous_until.isoformat() if self.previous_until else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revision": self.revision,
        }


def _info(row: Any, now: datetime) -> TokenInfo:
    announced = row.expired_at is not None
    expired = announced or (row.expires_at is not None and row.expires_at <= now)
    return TokenInfo(row.id, row.role, row.project, row.host, row.description, row.created_at, row.revoked_at,
                     row.revision, row.expires_at, row.previous_until, expired, row.last_used_at, announced)


class TokenService:
    def __init__(self, *, writer: Writer, clock: Clock = utcnow) -> None:
        self.writer = writer
        self.clock = clock
        self._by_hash: dict[str, Principal] = {}  # hash -> principal, active tokens only (previous secrets too)
        self._hash_of: dict[str, str] = {}  # token id -> hash, active tokens only
        self._previous: dict[str, str] = {}  # token id -> its previous secret's hash, while it may work
        self._tokens: dict[str, TokenInfo] = {}  # id -> info, revoked included
        self._used: dict[str, datetime] = {}  # token id -> last use not yet written
        self.scheduler = Scheduler(now_us=lambda: to_us(self.clock()), run=self._run_due)

    def load(self, conn: Connection) -> None:
        now = self.clock()
        for row in conn.execute(select(schema.tokens)):
            self._put(row, now)

    def _put(self, row: Any, now: datetime | None = None) -> None:
        info = _info(row, now or self.clock())
        self._tokens[row.id] = info
        self.scheduler.disarm(row.id)
        if row.revoked_at is None:
            principal = Principal(row.role, row.project, row.host, row.id)
            self._by_hash[row.hash] = principal
            self._hash_of[row.id] = row.hash
            if row.previous_hash is not None:
                self._by_hash[row.previous_hash] = principal
                self._previous[row.id] = row.previous_hash
            if row.expires_at is not None and not info.announced:  # past or not: its event is still owed
                self.scheduler.arm(to_us(row.expires_at), row.id)

    def refresh(self, batch: Batch, conn: Connection, ids: Collection[str]) -> None:
        """A follower: the tokens that events named, as stored in ``conn``'s snapshot (the hash is only there).

        Applied with the batch's other steps after it, so a token works here once its revision is applied.
        """
        rows = list(rows_in(conn, select(schema.tokens), schema.tokens.c.id, ids))

        def commit() -> None:
            for row in rows:
                self._forget(row.id)
                self._put(row)

        batch.on_commit(commit)

    @property
    def empty(self) -> bool:
        return not self._tokens

    def _forget(self, token_id: str) -> None:
        for digest in (self._hash_of.pop(token_id, None), self._previous.pop(token_id, None)):
            if digest is not None:
                self._by_hash.pop(digest, None)

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("a bearer token is required (Authorization: Bearer ...)", code="missing_token")
        digest = hash_token(token)
        found = self._by_hash.get(digest)
        if found is None:
            raise Unauthorized("the token is not valid or has been revoked", code="invalid_token")
        info = self._tokens[found.token_id]  # type: ignore[index]
        now = self.clock()
        if info.expires_at is not None and now >= info.expires_at:
            raise Unauthorized(f"the token {info.id} expired at {info.expires_at.isoformat()}", code="token_expired",
                               token_id=info.id, expired_at=info.expires_at.isoformat())
        if self._previous.get(info.id) == digest and (info.previous_until is None or now >= info.previous_until):
            raise Unauthorized(f"this secret of token {info.id} was replaced by a rotation; it worked until "
                               f"{info.previous_until.isoformat() if info.previous_until else 'the rotation'}",
                               code="token_rotated", token_id=info.id)
        self._used[info.id] = now
        return found

    def principal_of(self, token_id: str) -> Principal | None:
        """The principal of an active token by its id (None if unknown, revoked or expired)."""
        digest = self._hash_of.get(token_id)
        info = self._tokens.get(token_id)
        if digest is None or info is None or (info.expires_at is not None and self.clock() >= info.expires_at):
            return None
        return self._by_hash.get(digest)

    # -------------------------------------------------------------- expiry, use

    def _run_due(self, ids: list[str]) -> object:
        try:
            return self.writer.execute(self.expire_op(ids))
        except Exception:  # the store was busy or failing: the events are still owed, try again in a while
            retry = to_us(self.clock()) + RETRY_DUE_US
            for token_id in ids:
                self.scheduler.arm(retry, token_id)
            raise

    def expire_op(self, ids: list[str]) -> Op:
        """The tokens among ``ids`` whose expiry has come (by the batch's clock): an ``updated`` event each, with
        ``expired`` true (their watches end). Nothing else changes: authentication refuses them by time."""

        def apply(batch: Batch) -> list[TokenInfo]:
            done = []
            for token_id in ids:
                info = self._tokens.get(token_id)
                if info is None or info.revoked_at is not None or info.announced or info.expires_at is None:
                    continue
                if info.expires_at > batch.now:
                    self.scheduler.arm(to_us(info.expires_at), token_id)  # not yet (a clock that stepped back)
                    continue
                expired = replace(info, expired=True, announced=True, revision=batch.next_revision())
                batch.write(update(schema.tokens).where(_T.id == token_id).values(
                    revision=expired.revision, expired_at=batch.now), {})
                batch.emit("token", token_id, "updated", _labels(expired), expired.body())
                batch.on_commit(lambda e=expired: self._tokens.__setitem__(e.id, e))
                done.append(expired)
            return done

        return Op(apply)

    def flush_use(self) -> int:
        """Write the last use of each token used since the last flush (one command, no event); how many."""
        used, self._used = self._used, {}
        if not used:
            return 0

        def apply(batch: Batch) -> int:
            for token_id, when in used.items():
                batch.write(TOUCH, {"b_id": token_id, "b_used": when})

            def commit() -> None:
                for token_id, when in used.items():
                    info = self._tokens.get(token_id)
                    if info is not None:
                        self._tokens[token_id] = replace(info, last_used_at=when)

            batch.on_commit(commit)
            return len(used)

        try:
            return self.writer.execute(Op(apply))
        except Exception:
            for token_id, when in used.items():  # kept for the next flush
                self._used.setdefault(token_id, when)
            raise


    def create_op(
        self,
        *,
        role: str,
        project: str | None = None,
        host: str | None = None,
        description: str | None = None,
        principal: Principal = ADMIN,
        secret: str | None = None,
        ttl: float | None = None,
    ) -> Op:
        """Returns ``(secret, info)``; the secret is never stored or shown again. ``ttl``: seconds it works for
        (None: until revoked).

        ``secret`` is given only by the bootstrap, which must write it to its file before the commit.
        """
        require_admin(principal, "creating a token")
        check_scope(role, project, host)
        if description is not None:
            validate_text(description, what="description")
        _check_seconds(ttl, "ttl", MAX_TTL)
        secret = secret or new_secret()
        digest = hash_token(secret)

        def apply(batch: Batch) -> tuple[str, TokenInfo]:
            token_id = secrets.token_hex(8)
            expires = batch.now + timedelta(seconds=ttl) if ttl is not None else None
            info = TokenInfo(token_id, role, project, host, description, batch.now, None, batch.next_revision(),
                             expires)
            batch.write(
                schema.tokens.insert(),
                {
                    "id": token_id,
                    "hash": digest,
                    "role": role,
                    "project": project,
                    "host": host,
                    "description": description,
                    "created_at": batch.now,
                    "revoked_at": None,
                    "revision": info.revision,
                    "expires_at": expires,
                },
            )
            batch.emit("token", token_id, "created", _labels(info), info.body())

            def commit() -> None:
                self._tokens[token_id] = info
                self._by_hash[digest] = Principal(role, project, host, token_id)
                self._hash_of[token_id] = digest
                if expires is not None:
                    self.scheduler.arm(to_us(expires), token_id)

            batch.on_commit(commit)
            return secret, info

        return Op(apply)

    def revoke_op(self, token_id: str, *, principal: Principal = ADMIN) -> Op:
        require_admin(principal, "revoking a token")

        def apply(batch: Batch) -> TokenInfo:
            info = self._tokens.get(token_id)
            if info is None or info.revoked_at is not None:
                raise NotFound(f"no active token with id {token_id!r}", code="token_not_found")
            revoked = replace(info, revoked_at=batch.now, revision=batch.next_revision())
            batch.write(
                update(schema.tokens)
                .where(schema.tokens.c.id == token_id)
                .values(revoked_at=batch.now, revision=revoked.revision),
                {},
            )
            batch.emit("token", token_id, "updated", _labels(revoked), revoked.body())

            def commit() -> None:
                self._tokens[token_id] = revoked
                self._forget(token_id)
                self.scheduler.disarm(token_id)

            batch.on_commit(commit)
            return revoked

        return Op(apply)

    def rotate_op(self, token_id: str, *, grace: float = 3600.0, principal: Principal = ADMIN) -> Op:
        """A new secret for the token (same id, role and scope): returns ``(secret, info)``. The old secret keeps
        working for ``grace`` seconds (0: not at all); a secret older than that stops at once."""
        require_admin(principal, "rotating a token")
        _check_seconds(grace, "grace", MAX_GRACE, zero=True)
        secret = new_secret()
        digest = hash_token(secret)

        def apply(batch: Batch) -> tuple[str, TokenInfo]:
            info = self._tokens.get(token_id)
            old = self._hash_of.get(token_id)
            if info is None or info.revoked_at is not None or old is None:
                raise NotFound(f"no active token with id {token_id!r}", code="token_not_found")
            if info.expires_at is not None and info.expires_at <= batch.now:
                raise InvalidInput(f"token {token_id} has expired: create a new one", code="token_expired")
            until = batch.now + timedelta(seconds=grace) if grace > 0 else None
            rotated = replace(info, previous_until=until, revision=batch.next_revision())
            batch.write(update(schema.tokens).where(_T.id == token_id).values(
                hash=digest, previous_hash=old if until else None, previous_until=until, revision=rotated.revision), {})
            batch.emit("token", token_id, "updated", _labels(rotated), rotated.body())

            def commit() -> None:
                self._tokens[token_id] = rotated
                self._forget(token_id)
                principal = Principal(info.role, info.project, info.host, token_id)
                self._by_hash[digest] = principal
                self._hash_of[token_id] = digest
                if until is not None:
                    self._by_hash[old] = principal
                    self._previous[token_id] = old

            batch.on_commit(commit)
            return secret, rotated

        return Op(apply)

    def list_at(
        self, conn: Connection, pins: Mapping[str, frozenset[str]]
    ) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        """Every token (revoked ones included) as of ``conn``'s snapshot: (id, labels, body)."""
        T = schema.tokens.c
        q = select(T.id, T.role, T.project, T.host, T.description, T.created_at, T.revoked_at, T.revision,
                   T.expires_at, T.previous_until, T.last_used_at, T.expired_at)
        if "#id" in pins:
            q = q.where(T.id.in_(sorted(pins["#id"])))
        now = self.clock()
        for row in conn.execute(q.order_by(T.id)).all():
            info = _info(row, now)
            yield info.id, _labels(info), info.body()

    def list(self, *, principal: Principal = ADMIN, include_revoked: bool = False) -> list[TokenInfo]:
        require_admin(principal, "listing tokens")
        now = self.clock()
        infos = sorted(self._tokens.values(), key=lambda t: t.created_at)
        # The last use as written (once a minute, by the leader): the same answer on every replica (this read is
        # the leader's), and not changed by the listing's own request.
        return [replace(t, expired=True) if not t.expired and t.expires_at is not None and t.expires_at <= now else t
                for t in infos if include_revoked or t.revoked_at is None]


def _check_seconds(value: float | None, what: str, most: float, *, zero: bool = False) -> None:
    if value is None:
        return
    if not (value > 0 or (zero and value == 0)) or value > most:
        raise InvalidInput(f"{what} must be {'0 or more' if zero else 'more than 0'} and at most {int(most)} s, "
                           f"got {value}", code=f"invalid_{what}")


def _labels(info: TokenInfo) -> dict[str, str]:
    labels = {"role": info.role}
    if info.project:
        labels["project"] = info.project
    if info.host:
        labels["host"] = info.host
    return labels
