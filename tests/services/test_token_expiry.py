"""Tokens that end (issue 17, docs/operations.md section 5): an expiry refuses the token with ``token_expired`` and
writes an event at its instant; a rotation gives a new secret while the old one works for a grace period; the last
use is written in batches and survives a restart. A fake clock moves time; timers are run by hand."""

from __future__ import annotations

from typing import Any

import pytest

from tenure.domain.errors import InvalidInput, NotFound, Unauthorized
from tenure.services.runtime import Runtime
from tests.reservation_support import FakeClock, open_rt

# `clock` and `rt` (a runtime on the fake clock): tests/services/conftest.py.


def _token_events(rt: Runtime, token_id: str) -> list[tuple[str, dict[str, Any]]]:
    import json

    from sqlalchemy import text

    with rt.engine.connect() as conn:
        return [(op, json.loads(body)) for op, body in conn.execute(text(
            "SELECT op, body FROM events WHERE kind = 'token' AND object_id = :id ORDER BY revision"),
            {"id": token_id})]


def test_a_token_with_a_ttl_works_until_then_and_its_expiry_is_an_event(rt: Runtime, clock: FakeClock) -> None:
    secret, info = rt.run(rt.tokens.create_op(role="member", project="blue", ttl=3600))
    assert info.expires_at == clock.now + __import__("datetime").timedelta(hours=1)
    assert rt.tokens.authenticate(secret).token_id == info.id
    clock.advance(minutes=59, seconds=59)
    assert rt.tokens.authenticate(secret).token_id == info.id
    clock.advance(seconds=1)
    with pytest.raises(Unauthorized) as caught:
        rt.tokens.authenticate(secret)
    assert caught.value.code == "token_expired"
    assert rt.tokens.principal_of(info.id) is None  # console sessions on it end too
    rt.tokens.scheduler.run_due()
    ops = _token_events(rt, info.id)
    assert [op for op, _ in ops] == ["created", "updated"] and ops[-1][1]["expired"] is True
    [listed] = [t for t in rt.tokens.list() if t.id == info.id]
    assert listed.expired and listed.body()["expires_at"] == info.expires_at.isoformat()


def test_an_expiry_that_fell_due_while_nobody_ran_is_still_refused(db_url: str, clock: FakeClock) -> None:
    rt = open_rt(db_url, clock)
    secret, info = rt.run(rt.tokens.create_op(role="admin", ttl=60))
    rt.close()
    clock.advance(minutes=5)
    rt = open_rt(db_url, clock)
    try:
        with pytest.raises(Unauthorized, match="expired"):
            rt.tokens.authenticate(secret)
        assert [t for t in rt.tokens.list() if t.id == info.id][0].expired
        # The event that ends its watches (on every replica) is written once a leader runs again, and only once.
        assert [op for op, body in _token_events(rt, info.id) if body["expired"]] == ["updated"]
    finally:
        rt.close()
    rt = open_rt(db_url, clock)
    try:
        assert [op for op, body in _token_events(rt, info.id) if body["expired"]] == ["updated"]
    finally:
        rt.close()


def test_a_revoked_token_keeps_its_expiry_and_rotation_in_what_is_shown(rt: Runtime) -> None:
    _, info = rt.run(rt.tokens.create_op(role="admin", ttl=3600))
    rt.run(rt.tokens.rotate_op(info.id, grace=60))
    revoked = rt.run(rt.tokens.revoke_op(info.id))
    assert revoked.expires_at == info.expires_at and revoked.previous_until is not None
    assert _token_events(rt, info.id)[-1][1]["expires_at"] == info.expires_at.isoformat()


@pytest.mark.parametrize("ttl", [0, -1, 10 * 366 * 86400 + 1])
def test_a_ttl_out_of_bounds_is_refused(rt: Runtime, ttl: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        rt.tokens.create_op(role="admin", ttl=ttl)
    assert caught.value.code == "invalid_ttl"


def test_a_rotation_keeps_the_old_secret_for_its_grace_then_refuses_it(rt: Runtime, clock: FakeClock) -> None:
    old, info = rt.run(rt.tokens.create_op(role="agent", host="h1"))
    new, rotated = rt.run(rt.tokens.rotate_op(info.id, grace=600))
    assert new != old and rotated.id == info.id
    assert rt.tokens.authenticate(new).host == "h1"
    assert rt.tokens.authenticate(old).token_id == info.id  # within the grace
    clock.advance(minutes=10)
    with pytest.raises(Unauthorized) as caught:
        rt.tokens.authenticate(old)
    assert caught.value.code == "token_rotated"
    assert rt.tokens.authenticate(new).token_id == info.id
    # Rotating again at once: the secret before is gone for good, the one just replaced gets the grace.
    newer, _ = rt.run(rt.tokens.rotate_op(info.id, grace=0))
    for gone in (old, new):
        with pytest.raises(Unauthorized):
            rt.tokens.authenticate(gone)
    assert rt.tokens.authenticate(newer).token_id == info.id


def test_a_rotation_survives_a_restart(db_url: str, clock: FakeClock) -> None:
    rt = open_rt(db_url, clock)
    old, info = rt.run(rt.tokens.create_op(role="admin"))
    new, _ = rt.run(rt.tokens.rotate_op(info.id, grace=600))
    rt.close()
    rt = open_rt(db_url, clock)
    try:
        assert rt.tokens.authenticate(old).token_id == rt.tokens.authenticate(new).token_id == info.id
        clock.advance(minutes=11)
        with pytest.raises(Unauthorized):
            rt.tokens.authenticate(old)
    finally:
        rt.close()


def test_rotating_a_revoked_or_expired_token_is_refused(rt: Runtime, clock: FakeClock) -> None:
    _, revoked = rt.run(rt.tokens.create_op(role="admin"))
    rt.run(rt.tokens.revoke_op(revoked.id))
    with pytest.raises(NotFound):
        rt.run(rt.tokens.rotate_op(revoked.id))
    _, short = rt.run(rt.tokens.create_op(role="admin", ttl=1))
    clock.advance(seconds=2)
    with pytest.raises(InvalidInput, match="expired"):
        rt.run(rt.tokens.rotate_op(short.id))


def test_the_last_use_is_written_in_a_batch_and_survives_a_restart(db_url: str, clock: FakeClock) -> None:
    rt = open_rt(db_url, clock)
    secret, info = rt.run(rt.tokens.create_op(role="admin"))
    assert rt.tokens.list()[0].last_used_at is None
    rt.tokens.authenticate(secret)
    used = clock.now
    assert [t.last_used_at for t in rt.tokens.list() if t.id == info.id] == [None]  # shown once written
    before = rt.revision
    assert rt.tokens.flush_use() == 1
    assert rt.revision == before  # no event
    assert rt.tokens.flush_use() == 0
    assert [t.last_used_at for t in rt.tokens.list() if t.id == info.id] == [used]
    rt.close()
    rt = open_rt(db_url, clock)
    try:
        assert [t.last_used_at for t in rt.tokens.list() if t.id == info.id] == [used]
    finally:
        rt.close()
