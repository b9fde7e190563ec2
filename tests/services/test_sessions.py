"""The console's codes and sessions against the clock (services/sessions.py): a code ends after 60 s, a session after
12 hours, both with their token; a session made here is known to another runtime on the same store."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete

from tenure.domain.errors import Unauthorized
from tenure.services import sessions
from tenure.services.runtime import Runtime
from tenure.services.sessions import CODE_SECONDS, SESSION_SECONDS
from tenure.store import schema
from tests.reservation_support import FakeClock, open_rt


def member(rt: Runtime) -> Any:
    secret, info = rt.run(rt.tokens.create_op(role="member", project="blue"))
    return secret, rt.tokens.authenticate(secret)


def test_a_code_expires_and_a_session_ends_with_its_time_or_its_token(rt: Runtime, clock: FakeClock) -> None:
    _, who = member(rt)
    late = rt.run(rt.sessions.code_op(who))
    clock.advance(seconds=CODE_SECONDS)
    with pytest.raises(Unauthorized) as exc:
        rt.run(rt.sessions.session_op(code=late.secret))
    assert exc.value.code == "invalid_code"
    grant = rt.run(rt.sessions.session_op(code=rt.run(rt.sessions.code_op(who)).secret))
    assert rt.sessions.authenticate(grant.secret) == who
    clock.advance(seconds=SESSION_SECONDS - 1)
    assert rt.sessions.authenticate(grant.secret) == who
    clock.advance(seconds=1)
    with pytest.raises(Unauthorized):
        rt.sessions.authenticate(grant.secret)
    other = rt.run(rt.sessions.session_op(code=rt.run(rt.sessions.code_op(who)).secret))
    rt.run(rt.tokens.revoke_op(who.token_id))
    with pytest.raises(Unauthorized):
        rt.sessions.authenticate(other.secret)


def test_two_uses_of_one_code_in_one_batch_make_one_session(rt: Runtime) -> None:
    _, who = member(rt)
    code = rt.run(rt.sessions.code_op(who)).secret
    futures = [rt.writer.submit(rt.sessions.session_op(code=code)) for _ in range(4)]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(30).principal)
        except Unauthorized as exc:
            outcomes.append(exc.code)
    assert sorted(map(str, outcomes)).count("invalid_code") == 3 and who in outcomes


def test_a_session_is_known_to_another_runtime_on_the_store_and_survives_a_restart(db_url: str,
                                                                                   clock: FakeClock) -> None:
    first = open_rt(db_url, clock)
    try:
        _, who = member(first)
        grant = first.run(first.sessions.session_op(code=first.run(first.sessions.code_op(who)).secret))
    finally:
        first.close()
    second = open_rt(db_url, clock)
    try:
        assert second.sessions.authenticate(grant.secret) == who
        second.run(second.sessions.end_op(grant.secret))
        with pytest.raises(Unauthorized):
            second.sessions.authenticate(grant.secret)
    finally:
        second.close()


def test_a_session_ended_elsewhere_ends_here_within_the_check(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replica's sign-out deletes the row; this process trusts what it read for CHECK_SECONDS only."""
    _, who = member(rt)
    grant = rt.run(rt.sessions.session_op(code=rt.run(rt.sessions.code_op(who)).secret))
    assert rt.sessions.authenticate(grant.secret) == who
    with rt.engine.begin() as conn:
        conn.execute(delete(schema.ui_sessions))
    assert rt.sessions.authenticate(grant.secret) == who  # within the check: still known
    monkeypatch.setattr(sessions, "CHECK_SECONDS", 0.0)
    with pytest.raises(Unauthorized):
        rt.sessions.authenticate(grant.secret)
    for forged in ("tns_short", "x" * 47, "tns_" + "A" * 43):
        with pytest.raises(Unauthorized):
            rt.sessions.authenticate(forged)
