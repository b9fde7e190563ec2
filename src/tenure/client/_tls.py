"""TLS for the client: which certificates it trusts, and a refusal said plainly.

``ca_file`` (``--ca-file``, ``TENURE_CA_FILE``): the CA that signs the server's certificate, for a server whose
certificate the system does not trust (a private CA, the usual case); without it, the system's trust store. A
refused certificate becomes :class:`TenureTLSError` naming why: not signed by a trusted CA, expired, or made for
another host name.
"""

from __future__ import annotations

import os
import ssl

from tenure.client._errors import TenureConfigError

CA_ENV = "TENURE_CA_FILE"


def verify_with(ca_file: str | None) -> ssl.SSLContext | bool:
    """What httpx verifies servers with: ``ca_file``, else ``$TENURE_CA_FILE``, else the system's trust store."""
    ca = ca_file or os.environ.get(CA_ENV) or None
    if ca is None:
        return ssl.create_default_context()  # the system's store (httpx's own default is certifi's bundle)
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TenureConfigError(f"cannot use the CA file {ca}: {getattr(exc, 'strerror', None) or exc}") from None
