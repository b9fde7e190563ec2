"""Where the server is and which token to present, with no flags in the common case.

``tenure serve`` writes ``server.json`` (its URL) and, on first start,
``admin.token`` into the data dir (see :mod:`tenure.config`). So on the machine
that runs the server, a client needs nothing; elsewhere it takes ``TENURE_URL``
and ``TENURE_TOKEN``; an explicit argument wins over both. The URL and the token
are resolved independently: a remote URL with the local admin token is odd but
legal, and the error says which of the two is missing and how to supply it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tenure.client._errors import TenureConfigError
from tenure.config import ADMIN_TOKEN_FILE, SERVER_FILE, default_data_dir, local_admin_token, local_server_url


@dataclass(frozen=True, slots=True)
class Target:
    """A server URL and the bearer token to use there."""

    url: str
    token: str


def locate(url: str | None = None, token: str | None = None, data_dir: Path | str | None = None) -> Target:
    """Resolve URL and token: argument, else ``TENURE_URL``/``TENURE_TOKEN``, else the local data dir."""
    where = Path(data_dir) if data_dir is not None else default_data_dir()
    url = url or os.environ.get("TENURE_URL") or local_server_url(where)
    if not url:
        raise TenureConfigError(
            f"no server URL: pass --url or set TENURE_URL, or run `tenure serve` locally "
            f"(it writes {where / SERVER_FILE})"
        )
    token = token or os.environ.get("TENURE_TOKEN") or local_admin_token(where)
    if not token:
        raise TenureConfigError(
            f"no token: pass --token or set TENURE_TOKEN (no admin token found at {where / ADMIN_TOKEN_FILE})"
        )
    return Target(url, token)
