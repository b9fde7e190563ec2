"""Authentication as a FastAPI dependency (async: no thread hop per request): a bearer token, or the web
console's session cookie (docs/console.md).

A request that carries a bearer token is that token's. One without, that carries the cookie ``tenure_session``, is
its session's (its token's principal); if it would change something (any method but GET, HEAD and OPTIONS) it must
also carry the header ``X-Tenure-Console: 1``, which a form on another site cannot send, and an ``Origin``, when
it has one, of the host it was sent to (the cookie is ``SameSite=Strict`` already: these are the second and third
locks). Sessions sign in and out through /v1/ui/session.

With ``tenure serve --tls-client-ca FILE`` an agent's token is not enough: its request must come over a connection
whose client certificate (verified against that CA in the handshake, api/tls.py) names the agent's host
(:func:`check_agent_cert`). A stolen agent token alone cannot act as the host.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from starlette.requests import cookie_parser

from tenure.api.tls import CERT_NAMES
from tenure.domain.access import Principal
from tenure.domain.errors import Forbidden
from tenure.services.sessions import COOKIE

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CONSOLE_HEADER = "x-tenure-console"


async def authenticate(request: Request) -> Principal:
    state = request.app.state.tenure
    who = principal_of(state.require(), request.headers.get("authorization"), request.cookies.get(COOKIE),
                       request.method, request.headers.get(CONSOLE_HEADER), request.headers.get("origin"),
                       request.headers.get("host"))
    check_agent_cert(state, who, request.scope)
    return who


def check_agent_cert(state: Any, who: Principal, scope: Any) -> None:
    """On a server with ``--tls-client-ca``, an agent's request must come with a client certificate naming its
    host (``state``: the app's ServerState)."""
    if who.role != "agent" or not state.config.agent_certs:
        return
    names = ((scope.get("extensions") or {}).get("tls") or {}).get(CERT_NAMES)
    if not names:
        raise Forbidden(f"the token of the agent of host {who.host!r} is accepted only with a client certificate "
                        "naming that host (this server has --tls-client-ca); none came with the request",
                        code="client_cert_required")
    if (who.host or "").lower() not in names:
        raise Forbidden(f"the token is the agent of host {who.host!r}'s, but the client certificate was made for "
                        f"{', '.join(sorted(names))}", code="client_cert_mismatch")


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header (None for none, or another scheme)."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def principal_of(rt: object, authorization: str | None, cookie: str | None, method: str,
                 console_header: str | None, origin: str | None = None, host: str | None = None) -> Principal:
    """Who a request is: its bearer token's, else its session cookie's (with the console's header, and its own
    origin, to change anything), else nobody (401, as a missing token)."""
    token = bearer(authorization)
    if token is not None or not cookie:
        return rt.tokens.authenticate(token)  # type: ignore[attr-defined]
    who = rt.sessions.authenticate(cookie)  # type: ignore[attr-defined]
    if method.upper() not in SAFE_METHODS:
        if (console_header or "").strip() != "1":
            raise Forbidden("a change made with the console's session needs the header X-Tenure-Console: 1",
                            code="console_header_required")
        if origin and urlsplit(origin).netloc != (host or ""):
            raise Forbidden("a change made with the console's session must come from the console's own origin",
                            code="foreign_origin")
    return who


def cookie_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The session cookie among raw ASGI headers (for the watch, served in front of the framework), read as the
    framework reads cookies for every other route."""
    for name, value in headers:
        if name == b"cookie":
            found = cookie_parser(value.decode("latin-1")).get(COOKIE)
            if found:
                return found
    return None
