"""The listening side of TLS (``tenure serve --tls-cert FILE --tls-key FILE``, and ``tenure agent``).

One listening ``ssl.SSLContext`` for the server's lifetime. :meth:`ServerTLS.reload` (SIGHUP) loads the
certificate and key into a new context that the next handshakes use: connections already open keep the
certificate they were made with, and nothing is dropped. A pair that does not load (a half-written file, a key
that does not match, an encrypted key) leaves the old one in place and says why.

With ``client_ca`` (``tenure serve --tls-client-ca FILE``) the server also asks each client for a certificate
signed by that CA. A client without one still connects (users and the console sign in with tokens); one with a
certificate the CA did not sign, or an expired one, is refused in the handshake. :func:`cert_names` gives the names a
verified certificate was made for; an agent's token is accepted only with a certificate naming the agent's host
(api/auth.py). The CA file is re-read on SIGHUP with the pair.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("tenure.tls")

CERT_NAMES = "tenure_client_cert_names"  # in a request's scope["extensions"]["tls"] (api/server.py)


class TLSConfigError(ValueError):
    """The certificate or key cannot be used."""


@dataclass
class ServerTLS:
    """``context`` is the listening one; each handshake is handed to ``current`` (its ``sni_callback``, which
    OpenSSL calls for every ClientHello, with or without a server name), so a reload swaps whole contexts: no
    certificate of the old pair can linger (OpenSSL keeps one per key type in a context), and a pair that fails to
    load never half-replaces the one in use."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    context: ssl.SSLContext = field(init=False)
    current: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.current = self._load()
        self.context = self._load()  # the listening context holds a valid pair too
        self.context.sni_callback = self._pick

    def _pick(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.context = self.current

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key, password=_no_password)
        except (ssl.SSLError, ValueError) as exc:  # (an SSLError is an OSError: first)
            raise TLSConfigError(f"the certificate {self.cert} and key {self.key} cannot be used together: "
                                 f"{getattr(exc, 'reason', None) or exc}") from None
        except OSError as exc:
            raise TLSConfigError(f"cannot read {exc.filename or self.cert}: {exc.strerror or exc}") from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except ssl.SSLError as exc:
                raise TLSConfigError(f"{self.client_ca} holds no CA certificate (PEM): "
                                     f"{getattr(exc, 'reason', None) or exc}") from None
            except OSError as exc:
                raise TLSConfigError(f"cannot read {self.client_ca}: {exc.strerror or exc}") from None
            context.verify_mode = ssl.CERT_OPTIONAL  # asked for, verified when given; tokens still sign users in
        return context

    def reload(self) -> bool:
        """Load the files again (SIGHUP); whether the new pair is in use (else the old one stays, logged)."""
        try:
            self.current = self._load()
        except TLSConfigError as exc:
            log.error("TLS certificate not reloaded; the old one stays in use", extra={"error": str(exc)})
            return False
        log.info("TLS certificate reloaded", extra={"cert": str(self.cert)})
        return True


def cert_names(peercert: dict[str, object] | None) -> frozenset[str]:
    """The host names a verified client certificate was made for: its DNS subject alternative names, or, when it
    has none, its subject's common name (RFC 6125's fallback). Empty for no certificate."""
    if not peercert:
        return frozenset()
    alt: Any = peercert.get("subjectAltName") or ()
    names = frozenset(str(v).lower() for k, v in alt if k == "DNS")
    if names:
        return names
    subject: Any = peercert.get("subject") or ()
    return frozenset(str(v).lower() for rdn in subject for k, v in rdn if k == "commonName")


def _no_password() -> bytes:
    """An encrypted key is refused (OpenSSL would otherwise ask on the terminal, from a signal handler)."""
    raise ValueError("the key is encrypted: give an unencrypted key (readable by the server's user only)")
