"""``/ui/``: the web console's files (docs/console.md, section 1), served from the package with their headers.

The console is a client of the API (same origin, the session cookie of :mod:`tenure.api.console`); this module only
serves its files:

- a Content-Security-Policy that lets the page run only the server's own scripts and styles and talk only to the
  server (no inline script, no other origin, no framing), ``Referrer-Policy: no-referrer`` (the sign-in code is in
  the fragment, which is never sent, but nothing of a console URL should leave either), ``nosniff``;
- caching: a vendored library lives in a directory named by its version and a digest of its files
  (``vendor/uplot-1.6.32-3dad594259/``), so browsers keep it for good; the console's own files are revalidated on
  every load (ETag), so an upgrade is seen at once.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenure.api.errors import error_response

STATIC = Path(str(files("tenure.ui") / "static"))
PREFIX = "/ui"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# vendor/NAME-X.Y.Z-DIGEST/...: named by the version and a digest of its files (scripts/vendor-ui), never changes
VERSIONED = re.compile(r"^/vendor/[a-z0-9-]+-\d+\.\d+\.\d+-[0-9a-f]{10}/")
FOREVER = b"public, max-age=31536000, immutable"
REVALIDATE = b"no-cache"

router = APIRouter(include_in_schema=False)


@router.api_route(PREFIX, methods=["GET", "HEAD"])
def ui_slash(request: Request) -> RedirectResponse:
    return RedirectResponse(request.scope.get("root_path", "") + PREFIX + "/", status_code=308)


class ConsoleFiles:
    """The static files with the console's headers on every answer (a 404 or 405 as the API's JSON error)."""

    def __init__(self, directory: Path = STATIC) -> None:
        self.files: ASGIApp = StaticFiles(directory=directory, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        inner = path[len(root):] if root and path.startswith(root) else path
        cache = FOREVER if VERSIONED.match(inner) else REVALIDATE

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                ok = message.get("status", 500) in (200, 304)
                message["headers"] = headers + HEADERS + [(b"cache-control", cache if ok else b"no-store")]
            await send(message)

        try:
            await self.files(scope, receive, with_headers)
        except HTTPException as exc:  # raised before any byte was sent: answer as the API does
            # A file the server may not read (Starlette's 401) is, to a client, no file of the console.
            status = 404 if exc.status_code == 401 else exc.status_code
            code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
            message = "no such file in the console" if status == 404 else str(exc.detail)
            response = error_response(status, code, message)
            response.headers.update(exc.headers or {})
            await response(scope, receive, with_headers)
