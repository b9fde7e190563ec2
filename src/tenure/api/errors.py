"""Every error is an answer: ``{"error": {"code", "message", ...}}`` with a 4xx status.

Domain errors map by class; request validation errors (bad JSON, wrong types,
unknown fields) become 400 with the offending locations. Anything else is a bug
and answers 500 with code ``internal`` (and is logged with its traceback).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tenure.domain import errors as E

log = logging.getLogger("tenure.api")

STATUS: dict[type[E.TenureError], int] = {
    E.InvalidInput: 400,
    E.Unauthorized: 401,
    E.Forbidden: 403,
    E.NotFound: 404,
    E.Conflict: 409,
    E.Gone: 410,
    E.TooLarge: 413,
    E.Unavailable: 503,
}


class _AsciiJSON(JSONResponse):
    """Errors quote what the client sent, which may hold lone surrogates: escape, never fail to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _AsciiJSON({"error": {"code": code, "message": message, **details}}, status_code=status, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route serves ``request``'s path with (for a 405's ``Allow``).

    The router's own 405 names the methods of the first route whose path matched, and a path is often
    served by several routes (``GET`` and ``POST /v1/pools`` are two): ask every route, for each method.
    """
    scope = request.scope
    allowed = []
    for method in _METHODS:
        probe = {"type": "http", "method": method, "path": scope["path"], "root_path": scope.get("root_path", ""),
                 "headers": [], "query_string": b""}
        if any(route.matches(dict(probe))[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def status_of(exc: E.TenureError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def _describe_validation(errors: list[dict[str, Any]]) -> tuple[str, str, list[dict[str, Any]]]:
    clean = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
             for e in errors]
    if any(e["type"] == "json_invalid" for e in clean):
        return "malformed_json", "the request body is not valid JSON", clean
    first = clean[0] if clean else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p != "body") or "request"
    return "invalid_request", f"{where}: {first['msg']}", clean


def install(app: FastAPI) -> None:
    @app.exception_handler(E.TenureError)
    async def _tenure(_: Request, exc: E.TenureError) -> JSONResponse:
        return error_response(status_of(exc), exc.code, exc.message, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message, details = _describe_validation(list(exc.errors()))
        return error_response(400, code, message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
        if exc.status_code == 405:  # HTTP requires Allow on a 405: every method the path is served with
            response.headers["Allow"] = ", ".join(allowed_methods(request)) or (exc.headers or {}).get("Allow", "")
        return response

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(500, "internal", "internal error; this is a bug, please report it")
