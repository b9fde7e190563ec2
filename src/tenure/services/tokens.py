"""Bearer tokens: created once, shown once, stored only as a SHA-256 hash.

Tokens are 256 random bits, so a plain SHA-256 is enough to make a stolen
database useless for authenticating (a slow password hash protects low-entropy
secrets, which these are not), and it keeps authentication a dictionary look-up.
The writer keeps the hash -> principal map current after each commit.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from tenure.domain.access import ADMIN, Principal, check_scope, require_admin
from tenure.domain.errors import NotFound, Unauthorized
from tenure.domain.names import validate_text
from tenure.store import schema
from tenure.store.inlist import rows_in
from tenure.store.writer import Batch, Op, Writer

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

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "project": self.project,
            "host": self.host,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revision": self.revision,
        }


class TokenService:
    def __init__(self, *, writer: Writer) -> None:
        self.writer = writer
        self._by_hash: dict[str, Principal] = {}  # hash -> principal, active tokens only
        self._hash_of: dict[str, str] = {}  # token id -> hash, active tokens only
        self._tokens: dict[str, TokenInfo] = {}  # id -> info, revoked included

    def load(self, conn: Connection) -> None:
        for row in conn.execute(select(schema.tokens)):
            self._put(row)

    def _put(self, row: Any) -> None:
        info = TokenInfo(row.id, row.role, row.project, row.host, row.description, row.created_at,
                         row.revoked_at, row.revision)
        self._tokens[row.id] = info
        if row.revoked_at is None:
            self._by_hash[row.hash] = Principal(row.role, row.project, row.host, row.id)
            self._hash_of[row.id] = row.hash

    def refresh(self, batch: Batch, conn: Connection, ids: Collection[str]) -> None:
        """A follower: the tokens that events named, as stored in ``conn``'s snapshot (the hash is only there).

        Applied with the batch's other steps after it, so a token works here once its revision is applied.
        """
        rows = list(rows_in(conn, select(schema.tokens), schema.tokens.c.id, ids))

        def commit() -> None:
            for row in rows:
                digest = self._hash_of.pop(row.id, None)
                if digest is not None:
                    self._by_hash.pop(digest, None)
                self._put(row)

        batch.on_commit(commit)

    @property
    def empty(self) -> bool:
        return not self._tokens

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("a bearer token is required (Authorization: Bearer ...)", code="missing_token")
        found = self._by_hash.get(hash_token(token))
        if found is None:
            raise Unauthorized("the token is not valid or has been revoked", code="invalid_token")
        return found

    def principal_of(self, token_id: str) -> Principal | None:
        """The principal of an active token by its id (None if unknown or revoked)."""
        digest = self._hash_of.get(token_id)
        return None if digest is None else self._by_hash.get(digest)

    def create_op(
        self,
        *,
        role: str,
        project: str | None = None,
        host: str | None = None,
        description: str | None = None,
        principal: Principal = ADMIN,
        secret: str | None = None,
    ) -> Op:
        """Returns ``(secret, info)``; the secret is never stored or shown again.

        ``secret`` is given only by the bootstrap, which must write it to its file before the commit.
        """
        require_admin(principal, "creating a token")
        check_scope(role, project, host)
        if description is not None:
            validate_text(description, what="description")
        secret = secret or new_secret()
        digest = hash_token(secret)

        def apply(batch: Batch) -> tuple[str, TokenInfo]:
            token_id = secrets.token_hex(8)
            info = TokenInfo(token_id, role, project, host, description, batch.now, None, batch.next_revision())
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
                },
            )
            batch.emit("token", token_id, "created", _labels(info), info.body())

            def commit() -> None:
                self._tokens[token_id] = info
                self._by_hash[digest] = Principal(role, project, host, token_id)
                self._hash_of[token_id] = digest

            batch.on_commit(commit)
            return secret, info

        return Op(apply)

    def revoke_op(self, token_id: str, *, principal: Principal = ADMIN) -> Op:
        require_admin(principal, "revoking a token")

        def apply(batch: Batch) -> TokenInfo:
            info = self._tokens.get(token_id)
            if info is None or info.revoked_at is not None:
                raise NotFound(f"no active token with id {token_id!r}", code="token_not_found")
            revoked = TokenInfo(info.id, info.role, info.project, info.host, info.description, info.created_at,
                                batch.now, batch.next_revision())
            batch.write(
                update(schema.tokens)
                .where(schema.tokens.c.id == token_id)
                .values(revoked_at=batch.now, revision=revoked.revision),
                {},
            )
            batch.emit("token", token_id, "updated", _labels(revoked), revoked.body())

            def commit() -> None:
                self._tokens[token_id] = revoked
                self._by_hash.pop(self._hash_of.pop(token_id), None)

            batch.on_commit(commit)
            return revoked

        return Op(apply)

    def list_at(
        self, conn: Connection, pins: Mapping[str, frozenset[str]]
    ) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        """Every token (revoked ones included) as of ``conn``'s snapshot: (id, labels, body)."""
        T = schema.tokens.c
        q = select(T.id, T.role, T.project, T.host, T.description, T.created_at, T.revoked_at, T.revision)
        if "#id" in pins:
            q = q.where(T.id.in_(sorted(pins["#id"])))
        for row in conn.execute(q.order_by(T.id)).all():
            info = TokenInfo(*row)
            yield info.id, _labels(info), info.body()

    def list(self, *, principal: Principal = ADMIN, include_revoked: bool = False) -> list[TokenInfo]:
        require_admin(principal, "listing tokens")
        infos = sorted(self._tokens.values(), key=lambda t: t.created_at)
        return [t for t in infos if include_revoked or t.revoked_at is None]


def _labels(info: TokenInfo) -> dict[str, str]:
    labels = {"role": info.role}
    if info.project:
        labels["project"] = info.project
    if info.host:
        labels["host"] = info.host
    return labels
