"""Every error is an answer: ``{"error": {"code", "message", ...}}`` with a 4xx status.

Domain errors map by class; request validation errors become 400 with the offending locations:
bad JSON is ``malformed_json``, a field that breaks its rule has its domain code (the field's type
says which: :mod:`tenure.api.fields`), and a request not of the right shape (wrong types, missing or
unknown fields) is ``invalid_request``. Anything else is a bug
and answers 500 with code ``internal`` (and is logged with its traceback).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tenure.api.fields import CODES
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
    # 503: the server cannot answer now (restoring, electing a leader, the store away): say when to retry.
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {"Retry-After": "1"} if status == 503 else None
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


def _where(loc: list[str]) -> str:
    """A location as the client wrote it: the member or parameter (no ``body``/``query`` prefix), without the
    forms of a union (``constrained-int``)."""
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    where = ".".join(p for p in parts if not _FORM.match(p)) or "request"
    return where.replace(".[key]", " (the key)")


# How pydantic names the forms of a union in a location (they are not members of the request).
_FORM = re.compile(r"(constrained-|function-|lax-|strict-|nullable\[|literal\[|list\[|dict\[)|(str|int|float|bool)$")


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str, str, list[dict[str, Any]]]:
    """The code and message of a refused request: the domain's code when a field broke its rule
    (:func:`tenure.api.fields.coded`), ``invalid_request`` when the request is not of the right shape."""
    clean = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
             for e in errors]
    if any(e["type"] == "json_invalid" for e in clean):
        return "malformed_json", "the request body is not valid JSON", clean
    if not clean:
        return "invalid_request", "request: invalid request", clean
    first = clean[0]
    where = _where(first["loc"])
    if first["type"] in CODES:
        return str(first["type"]), f"{where} {first['msg']}", clean  # as the domain says it: "rate must be ..."
    # A union's forms each fail on their own: say what each wanted, once.
    said = list(dict.fromkeys(e["msg"] for e in clean if _where(e["loc"]) == where))
    return "invalid_request", f"{where}: {'; '.join(said)}", clean


def install(app: FastAPI) -> None:
    @app.exception_handler(E.TenureError)
    async def _tenure(_: Request, exc: E.TenureError) -> JSONResponse:
        return error_response(status_of(exc), exc.code, exc.message, **exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message, details = describe_validation(list(exc.errors()))
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
