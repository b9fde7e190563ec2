"""What can go wrong when talking to Tenure, as three kinds a caller can tell apart.

The server's errors are answers (DESIGN.md invariant 8): a 4xx/5xx with
``{"error": {"code", "message", ...}}``; :class:`TenureAPIError` carries them
unchanged, so a caller branches on the stable ``code``, never on the message.
Not reaching the server at all is a different failure with a different remedy
(start it, fix the URL), hence :class:`TenureConnectionError`. Not knowing where
the server is, or with which token, is found before any request is sent:
:class:`TenureConfigError`. All three share :class:`TenureClientError`, so a
command line can catch one class and print one line.
"""

from __future__ import annotations

from typing import Any


class TenureClientError(Exception):
    """Base of every error the client raises: a stable ``code`` and a one-line ``message``."""

    code: str = "client_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TenureConfigError(TenureClientError):
    """No server URL or no token could be found (argument, environment or data dir)."""

    code = "not_configured"


class TenureConnectionError(TenureClientError):
    """The server could not be reached, or did not answer in time."""

    code = "unreachable"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the Tenure server at {url}: {reason}")
        self.url = url
        self.reason = reason


class TenureAPIError(TenureClientError):
    """The server answered with an error: HTTP ``status``, stable ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or {}

    def __repr__(self) -> str:
        return f"TenureAPIError(status={self.status}, code={self.code!r}, message={self.message!r})"
