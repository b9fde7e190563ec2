"""The web console's sign-in: one-time codes and browser sessions (docs/console.md, section 2).

- **A code** is asked for with a token (admin or member; not an agent's): 256 random bits, valid CODE_SECONDS,
  once. ``tenure ui`` prints it in a URL's fragment, which browsers never send, and the page exchanges it.
- **A session** is made from a code, or from a token pasted into the page: another 256 random bits, the secret of
  an HttpOnly cookie, valid SESSION_SECONDS and never longer than its token (revoked, it ends every session made
  from it). A session is its token's principal: the console sees what the token sees.

Both are stored only as the SHA-256 of their secret (a stolen database signs nobody in), with the token they stand
for and when they end, in the table ``ui_sessions``; both are written through the writer, one command each, and
neither is an event (nothing of them reaches the watch or the audit). Expired rows are purged by the next code or
session made. Codes are made and redeemed only by the writer (a follower forwards both to the leader), so they are
looked up in memory (loaded at start: a restart within a code's minute keeps it). Authentication is a look-up of
the sessions read from the store at most CHECK_SECONDS ago (so a sign-out or a session made through another
replica is seen everywhere within that), and a secret of the wrong form is refused before any look-up; an unknown
one is remembered as unknown for CHECK_SECONDS (a flood of forged cookies costs one store read each per
CHECK_SECONDS at most, and the memory of them is bounded).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, delete, insert, select
from sqlalchemy.exc import SQLAlchemyError

from tenure.clock import Clock
from tenure.domain.access import Principal
from tenure.domain.errors import Forbidden, Unauthorized, Unavailable
from tenure.services.tokens import TokenService, hash_token
from tenure.store import schema
from tenure.store.writer import Batch, Op

CODE_PREFIX, SESSION_PREFIX = "tnc_", "tns_"
CODE_SECONDS = 60
SESSION_SECONDS = 12 * 3600
CHECK_SECONDS = 5.0  # how long a session read from the store (or found absent) is trusted without reading it again
MAX_UNKNOWN = 10_000  # forged secrets remembered as unknown; beyond, the oldest are forgotten
SECRET_LENGTH = 4 + 43  # a prefix and token_urlsafe(32)
COOKIE = "tenure_session"
_T = schema.ui_sessions


@dataclass(frozen=True, slots=True)
class Grant:
    """A code or a session just made: its secret (shown once), when it ends, and whose it is."""

    secret: str
    expires_at: datetime
    principal: Principal


class SessionService:
    def __init__(self, *, writer: object, engine: Engine, tokens: TokenService, clock: Clock) -> None:
        self.writer = writer
        self.engine = engine
        self.tokens = tokens
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str | None, datetime | None, float]] = {}  # hash -> (token id, expires at,
        # monotonic time read); (None, None, t): not a session, as of t
        self._codes: dict[str, tuple[str, datetime]] = {}  # hash -> (token id, expires at): the writer's

    def load(self, conn: Connection) -> None:
        now = self.clock()
        for row in conn.execute(select(_T).where(_T.c.kind == "code", _T.c.expires_at > now)):
            self._codes[row.hash] = (row.token_id, row.expires_at)

    def _principal(self, token_id: str) -> Principal | None:
        return self.tokens.principal_of(token_id)

    def code_op(self, principal: Principal) -> Op:
        """A one-time code for ``principal``'s token."""
        if principal.role == "agent" or principal.token_id is None:
            raise Forbidden("an agent's token cannot sign in to the console", code="forbidden")

        def apply(batch: Batch) -> Grant:
            secret = CODE_PREFIX + secrets.token_urlsafe(32)
            expires = batch.now + timedelta(seconds=CODE_SECONDS)
            batch.write(delete(_T).where(_T.c.expires_at <= batch.now), {})
            digest, token_id = hash_token(secret), principal.token_id
            assert token_id is not None
            batch.write(insert(_T), {"hash": digest, "kind": "code", "token_id": token_id,
                                     "created_at": batch.now, "expires_at": expires})

            def commit() -> None:
                with self._lock:
                    for old in [h for h, (_, until) in self._codes.items() if until <= batch.now]:
                        del self._codes[old]
                    self._codes[digest] = (token_id, expires)

            batch.on_commit(commit)
            return Grant(secret, expires, principal)

        return Op(apply)

    def session_op(self, *, code: str | None = None, token: str | None = None) -> Op:
        """A session from a code (used up) or a token; Unauthorized if the code is unknown, used or expired, or the
        token not valid; Forbidden for an agent's token."""
        if (code is None) == (token is None):
            raise Unauthorized("give a code or a token", code="invalid_code")
        from_token = self.tokens.authenticate(token) if token is not None else None
        if from_token is not None and (from_token.role == "agent" or from_token.token_id is None):
            raise Forbidden("an agent's token cannot sign in to the console", code="forbidden")

        def apply(batch: Batch) -> Grant:
            principal = from_token
            if code is not None:
                digest_code = hash_token(code) if len(code) == SECRET_LENGTH and code.startswith(CODE_PREFIX) else ""
                with self._lock:  # taken now (a second use in this batch finds it gone); back if the batch fails
                    found = self._codes.pop(digest_code, None)
                if found is not None:
                    batch.on_undo(lambda: self._give_back(digest_code, found))
                if found is None or found[1] <= batch.now:
                    raise Unauthorized("the sign-in code is not valid: unknown, used or expired (ask `tenure ui` "
                                       "for another)", code="invalid_code")
                principal = self._principal(found[0])
                if principal is None:
                    raise Unauthorized("the token this code was made with has been revoked", code="invalid_code")
                batch.write(delete(_T).where(_T.c.hash == digest_code), {})
            assert principal is not None and principal.token_id is not None
            secret = SESSION_PREFIX + secrets.token_urlsafe(32)
            expires = batch.now + timedelta(seconds=SESSION_SECONDS)
            digest = hash_token(secret)
            batch.write(delete(_T).where(_T.c.expires_at <= batch.now), {})
            batch.write(insert(_T), {"hash": digest, "kind": "session", "token_id": principal.token_id,
                                     "created_at": batch.now, "expires_at": expires})
            token_id = principal.token_id

            def commit() -> None:
                with self._lock:
                    self._sessions[digest] = (token_id, expires, time.monotonic())

            batch.on_commit(commit)
            return Grant(secret, expires, principal)

        return Op(apply)

    def _give_back(self, digest: str, found: tuple[str, datetime]) -> None:
        with self._lock:
            self._codes[digest] = found

    def end_op(self, secret: str) -> Op:
        """Sign out: the session is gone (nothing if it already was)."""
        digest = hash_token(secret)

        def apply(batch: Batch) -> None:
            batch.write(delete(_T).where(_T.c.hash == digest, _T.c.kind == "session"), {})

            def commit() -> None:
                with self._lock:
                    self._sessions.pop(digest, None)

            batch.on_commit(commit)

        return Op(apply)

    def authenticate(self, secret: str | None) -> Principal:
        """The principal of a live session's secret; Unauthorized otherwise. Reads the store when what is known of
        the session is older than CHECK_SECONDS (a few milliseconds, at most once per session per CHECK_SECONDS)."""
        if not secret or len(secret) != SECRET_LENGTH or not secret.startswith(SESSION_PREFIX):
            raise Unauthorized("sign in again: the console session is not valid", code="invalid_session")
        digest = hash_token(secret)
        now = time.monotonic()
        with self._lock:
            known = self._sessions.get(digest)
        if known is None or now - known[2] > CHECK_SECONDS:
            try:
                with self.engine.connect() as conn:
                    row = conn.execute(select(_T.c.token_id, _T.c.expires_at).where(
                        _T.c.hash == digest, _T.c.kind == "session")).first()
            except SQLAlchemyError:
                raise Unavailable("the store could not be read to check the session; retry", code="not_ready") \
                    from None
            known = (row.token_id, row.expires_at, now) if row is not None else (None, None, now)
            with self._lock:
                if len(self._sessions) >= MAX_UNKNOWN:  # (bounded: the oldest readings go first)
                    for old in sorted(self._sessions, key=lambda h: self._sessions[h][2])[:MAX_UNKNOWN // 10]:
                        del self._sessions[old]
                self._sessions[digest] = known
        token_id, expires, _ = known
        if token_id is None or expires is None or expires <= self.clock():
            raise Unauthorized("sign in again: the console session has expired or ended", code="invalid_session")
        principal = self._principal(token_id)
        if principal is None:
            raise Unauthorized("sign in again: the session's token has been revoked", code="invalid_session")
        return principal
