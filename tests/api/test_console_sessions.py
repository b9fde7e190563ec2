"""The web console's sign-in (docs/console.md, section 2): one-time codes, the session cookie, and what the cookie
may do, against a real server over HTTP."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from tenure.services.sessions import COOKIE
from tenure.store import schema


def _browser(api) -> httpx.Client:  # a client of its own: a cookie jar and no bearer token, like a browser
    return httpx.Client(base_url=str(api.client.base_url), timeout=30)


def test_a_code_signs_in_once_and_the_session_sees_what_its_token_sees(api):
    member = api.token("member", project="blue")
    r = api.post("/v1/ui/codes", token=member)
    assert r.status_code == 201, r.text
    code, url = r.json()["code"], r.json()["url"]
    assert url.endswith(f"/ui/#code={code}")  # in the fragment: browsers never send it
    with _browser(api) as browser:
        signed = browser.post("/v1/ui/session", json={"code": code})
        assert signed.status_code == 200, signed.text
        assert signed.json()["role"] == "member" and signed.json()["project"] == "blue"
        assert COOKIE not in signed.text and code not in signed.text  # the session's secret only in the cookie
        header = signed.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=strict" in header and "path=/" in header
        assert browser.get("/v1/whoami").json()["project"] == "blue"
        assert browser.get("/v1/pools").status_code == 200  # reads as the member
        assert browser.post("/v1/pools", json={"name": "p", "ranges": [[1, 9]]}).status_code == 403  # no header
        again = browser.post("/v1/ui/session", json={"code": code})  # a code works once
        assert again.status_code == 401 and again.json()["error"]["code"] == "invalid_code"
        assert browser.delete("/v1/ui/session").json() == {"signed_out": True}
        assert browser.get("/v1/whoami").status_code == 401  # signed out: the cookie is gone, and its session


def test_changes_need_the_console_header_and_revoking_the_token_ends_its_sessions(api):
    admin_code = api.post("/v1/ui/codes").json()["code"]
    with _browser(api) as browser:
        assert browser.post("/v1/ui/session", json={"code": admin_code}).status_code == 200
        refused = browser.post("/v1/pools", json={"name": "p1", "ranges": [[1, 9]]})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "console_header_required"
        made = browser.post("/v1/pools", json={"name": "p1", "ranges": [[1, 9]]}, headers={"X-Tenure-Console": "1"})
        assert made.status_code == 201, made.text
    member = api.token("member", project="blue")
    with _browser(api) as browser:
        assert browser.post("/v1/ui/session", json={"token": member}).status_code == 200  # a pasted token
        token_id = browser.get("/v1/whoami").json()["token_id"]
        assert api.delete(f"/v1/tokens/{token_id}").status_code == 200
        gone = browser.get("/v1/whoami")
        assert gone.status_code == 401 and gone.json()["error"]["code"] == "invalid_session"


def test_agents_cannot_sign_in_and_bad_requests_are_400(api):
    agent = api.token("agent", host="h1")
    assert api.post("/v1/ui/codes", token=agent).status_code == 403
    with _browser(api) as browser:
        assert browser.post("/v1/ui/session", json={"token": agent}).status_code == 403
        for body in ({}, {"code": "x", "token": "y"}, {"code": ""}, {"colour": "red"}):
            r = browser.post("/v1/ui/session", json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (body, r.text)
        r = browser.post("/v1/ui/session", json={"code": "tnc_nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_code"
        browser.cookies.set(COOKIE, "tns_forged")
        assert browser.get("/v1/whoami").json()["error"]["code"] == "invalid_session"


def test_the_watch_takes_the_cookie_and_nothing_of_sessions_is_stored_or_evented_in_clear(api):
    code = api.post("/v1/ui/codes").json()["code"]
    with _browser(api) as browser:
        browser.post("/v1/ui/session", json={"code": code})
        secret = browser.cookies[COOKIE]
        with browser.stream("GET", "/v1/watch", params={"kind": "pool"}) as stream:
            assert stream.status_code == 200  # authenticated by the cookie: no token in the URL
    rt = api.app.state.tenure.runtime
    with rt.engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(select(schema.ui_sessions))]
        bodies = [r.body for r in conn.execute(select(schema.events.c.body))]
        kinds = {r.kind for r in conn.execute(select(schema.events.c.kind))}
    assert stored and all(secret not in str(row) and code not in str(row) for row in stored)
    assert all(secret not in b and code not in b for b in bodies) and "session" not in kinds


def test_a_session_cannot_make_codes_nor_change_anything_from_another_origin(api):
    code = api.post("/v1/ui/codes").json()["code"]
    with _browser(api) as browser:
        browser.post("/v1/ui/session", json={"code": code})
        minted = browser.post("/v1/ui/codes", headers={"X-Tenure-Console": "1"})
        assert minted.status_code == 403, minted.text  # (else a stolen cookie would renew itself for ever)
        foreign = browser.post("/v1/pools", json={"name": "p2", "ranges": [[1, 9]]},
                               headers={"X-Tenure-Console": "1", "Origin": "https://evil.example"})
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "foreign_origin"
        own = browser.post("/v1/pools", json={"name": "p2", "ranges": [[1, 9]]},
                           headers={"X-Tenure-Console": "1", "Origin": str(api.client.base_url).rstrip("/")})
        assert own.status_code == 201, own.text


def test_the_watch_reads_the_cookie_among_others_as_every_route_does():
    from tenure.api.auth import cookie_of

    for header in ('foo={"a":1}; tenure_session=tns_abc', "theme=dark mode; tenure_session=tns_abc",
                   "path=/; tenure_session=tns_abc", "a=\u00e9; tenure_session=tns_abc"):
        assert cookie_of([(b"cookie", header.encode("utf-8").decode("latin-1").encode("latin-1"))]) == "tns_abc", header
    assert cookie_of([(b"cookie", b"other=1")]) is None
