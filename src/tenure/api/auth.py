"""Bearer-token authentication as a FastAPI dependency (async: no thread hop per request)."""

from __future__ import annotations

from fastapi import Request

from tenure.domain.access import Principal


async def authenticate(request: Request) -> Principal:
    rt = request.app.state.tenure.require()
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return rt.tokens.authenticate(token.strip() if scheme.lower() == "bearer" else None)
