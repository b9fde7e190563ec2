"""The web console's sign-in (docs/console.md, section 2): one-time codes and the session cookie.

- ``POST /v1/ui/codes`` (a token: admin or member): a one-time code, valid 60 s, and the console URL that carries it
  in its fragment (which browsers never send: no log holds it).
- ``POST /v1/ui/session`` with ``{"code"}`` or ``{"token"}``: a session, set as the cookie ``tenure_session``
  (HttpOnly, SameSite=Strict, Secure under TLS) and never in the answer's body.
- ``DELETE /v1/ui/session``: signs out (the cookie's session ends, the cookie is cleared).

The API and the watch accept the cookie where they accept a bearer token (:mod:`tenure.api.auth`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict

from tenure.api.auth import authenticate, bearer
from tenure.api.fields import absent, merge, present, text
from tenure.domain.access import Principal
from tenure.domain.errors import Forbidden, InvalidInput
from tenure.services.runtime import Runtime
from tenure.services.sessions import COOKIE, SESSION_SECONDS

router = APIRouter(prefix="/v1/ui", tags=["console"])
Auth = Annotated[Principal, Depends(authenticate)]
Secret = text("invalid_request", 128, min_length=1)


async def runtime(request: Request) -> Runtime:
    return request.app.state.tenure.require()


RT = Annotated[Runtime, Depends(runtime)]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [merge(present("code"), absent("token")), merge(present("token"), absent("code"))]})

    code: Secret | None = None  # type: ignore[valid-type]
    token: Secret | None = None  # type: ignore[valid-type]


@router.post("/codes", status_code=201)
async def create_code(request: Request, rt: RT, who: Auth) -> dict[str, Any]:
    """A one-time sign-in code for the console (60 s, once), and the URL that carries it. Made with a token, not a
    session (a session would otherwise renew itself for as long as its token lives)."""
    if bearer(request.headers.get("authorization")) is None:
        raise Forbidden("a sign-in code is made with a token (Authorization: Bearer), not with a console session",
                        code="forbidden")
    grant = await rt.arun(rt.sessions.code_op(who))
    base = str(request.base_url).rstrip("/")
    return {"code": grant.secret, "expires_at": grant.expires_at.isoformat(), "url": f"{base}/ui/#code={grant.secret}"}


@router.post("/session")
async def create_session(body: SessionCreate, request: Request, response: Response, rt: RT) -> dict[str, Any]:
    """A console session from a code or a token: the cookie ``tenure_session``; the body says whose and until when."""
    if (body.code is None) == (body.token is None):
        raise InvalidInput("give a code or a token, one of them", code="invalid_request")
    grant = await rt.arun(rt.sessions.session_op(code=body.code, token=body.token))
    response.set_cookie(COOKIE, grant.secret, max_age=SESSION_SECONDS, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    who = grant.principal
    return {"role": who.role, "project": who.project, "token_id": who.token_id,
            "expires_at": grant.expires_at.isoformat()}


@router.delete("/session")
async def end_session(request: Request, response: Response, rt: RT) -> dict[str, Any]:
    """Sign out: the cookie's session ends (if there is one) and the cookie is cleared."""
    secret = request.cookies.get(COOKIE)
    if secret:
        await rt.arun(rt.sessions.end_op(secret))
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return {"signed_out": bool(secret)}
