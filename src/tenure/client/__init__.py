"""Python client of the Tenure HTTP API.

Usage::

    from tenure.client import TenureClient, TenureAPIError

    with TenureClient.from_env() as tenure:           # local server + admin token, or TENURE_URL/TENURE_TOKEN
        vlan = tenure.claim("vlans", "web/eth0")["value"]

The public names are re-exported here; the modules behind them are private.
"""

from __future__ import annotations

from tenure.client._async import AsyncTenureClient
from tenure.client._base import MAX_PAGE, segment
from tenure.client._client import TenureClient
from tenure.client._errors import (
    TenureAPIError,
    TenureClientError,
    TenureConfigError,
    TenureConnectionError,
    TenureTLSError,
)
from tenure.client._locate import Target, locate
from tenure.client._tls import ClientCert
from tenure.client._watch import AsyncWatch, Backoff, Watch, WatchEvent, WatchGone

__all__ = [
    "MAX_PAGE",
    "AsyncTenureClient",
    "AsyncWatch",
    "Backoff",
    "ClientCert",
    "Target",
    "TenureAPIError",
    "TenureClient",
    "TenureClientError",
    "TenureConfigError",
    "TenureConnectionError",
    "TenureTLSError",
    "Watch",
    "WatchEvent",
    "WatchGone",
    "locate",
    "segment",
]
