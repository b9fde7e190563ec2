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

import ssl
from typing import Any

import httpx

#: A base URL of this form (``unix:/run/tenure/agent.sock``) talks HTTP over a Unix socket.
UNIX_PREFIX = "unix:"


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


# ------------------------------------------------------------ answers and failures


def api_error(response: httpx.Response) -> TenureAPIError:
    """The server's ``{"error": {...}}`` as an exception; something sensible for any other body."""
    try:
        body = response.json()["error"]
        details = {k: v for k, v in body.items() if k not in ("code", "message")}
        return TenureAPIError(response.status_code, str(body["code"]), str(body["message"]), details)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return TenureAPIError(response.status_code, f"http_{response.status_code}", text)


def transport_error(base_url: str, timeout: float | None, exc: Exception) -> TenureClientError:
    """An httpx failure to reach ``base_url`` (or to hear from it in time) as a client error."""
    if isinstance(exc, httpx.TimeoutException):
        return TenureConnectionError(base_url, f"no answer within {timeout:g}s" if timeout else "timed out")
    if isinstance(exc, httpx.ConnectError):
        refused = tls_error(base_url, exc)
        if refused is not None:
            return refused
        which = "tenure agent" if base_url.startswith(UNIX_PREFIX) else "tenure serve"
        return TenureConnectionError(base_url, f"{str(exc) or 'connection failed'} (is `{which}` running there?)")
    if isinstance(exc, httpx.InvalidURL):
        return TenureConfigError(f"invalid server URL {base_url!r}: {exc}")
    return TenureConnectionError(base_url, str(exc) or type(exc).__name__)


def decode(response: httpx.Response) -> Any:
    """The answer's JSON; ``invalid_response`` if it is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise TenureAPIError(
            response.status_code, "invalid_response", f"the server's answer is not JSON: {response.text[:200]!r}"
        ) from None


def created(response: httpx.Response) -> dict[str, Any]:
    """A POST answered 201 (new) or 200 (already there): the JSON plus ``created``."""
    if response.is_error:
        raise api_error(response)
    return {**decode(response), "created": response.status_code == 201}


# ------------------------------------------------------------------------ TLS


class TenureTLSError(TenureConnectionError):
    """The server's certificate was refused (or the TLS handshake failed)."""

    code = "tls_refused"


def tls_refusal(exc: BaseException) -> str | None:
    """Why a connection failed in TLS, in words (None: it did not fail in TLS)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            code, said = seen.verify_code, seen.verify_message or str(seen)
            if code == 10:
                return "the server's certificate has expired"
            if code == 9:
                return "the server's certificate is not valid yet"
            if code == 62 or "mismatch" in said.lower():
                return f"the server's certificate is not for this host name ({said})"
            if code in (18, 19, 20, 21, 2):
                return ("the server's certificate is not signed by a CA this client trusts (the CA file given "
                        "with --ca-file or TENURE_CA_FILE, else the system's trust store)")
            return f"the server's certificate was refused: {said}"
        if isinstance(seen, ssl.SSLError):
            return f"the TLS handshake failed: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return None


def tls_error(base_url: str, exc: BaseException) -> TenureTLSError | None:
    why = tls_refusal(exc)
    return TenureTLSError(base_url, why) if why is not None else None
