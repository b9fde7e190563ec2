"""Errors that are answers.

Every error a client can cause is one of these classes. Each carries a stable
machine-readable ``code``, a human ``message`` and optional ``details``; the API
layer maps the class to an HTTP status (400, 401, 403, 404, 409, 410, 413, 503) and
renders ``{"error": {"code", "message", ...details}}``. The domain layer knows
nothing of HTTP: the class says what kind of failure it is, not how to send it.
"""

from __future__ import annotations

from typing import Any


class TenureError(Exception):
    """Base of every client-visible error."""

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class InvalidInput(TenureError):
    """The request is malformed or violates a rule of the model (400)."""

    default_code = "invalid"


class Unauthorized(TenureError):
    """No valid credentials (401)."""

    default_code = "unauthorized"


class Forbidden(TenureError):
    """Valid credentials, but outside their scope (403)."""

    default_code = "forbidden"


class NotFound(TenureError):
    """The named object does not exist, or is not visible to the caller (404)."""

    default_code = "not_found"


class Conflict(TenureError):
    """The request is valid but conflicts with the current state (409)."""

    default_code = "conflict"


class Gone(TenureError):
    """What was asked for is no longer kept, e.g. event history older than the compaction (410)."""

    default_code = "gone"


class TooLarge(TenureError):
    """The request body is over the size limit (413)."""

    default_code = "too_large"


class Unavailable(TenureError):
    """The service cannot answer now (503): not ready, or the store failed."""

    default_code = "unavailable"
