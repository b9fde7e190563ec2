"""The listening side of TLS (``tenure serve --tls-cert FILE --tls-key FILE``, and ``tenure agent``).

One listening ``ssl.SSLContext`` for the server's lifetime. :meth:`ServerTLS.reload` (SIGHUP) loads the
certificate and key into a new context that the next handshakes use: connections already open keep the
certificate they were made with, and nothing is dropped. A pair that does not load (a half-written file, a key
that does not match, an encrypted key) leaves the old one in place and says why.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tenure.tls")


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
        except OSError as exc:
            raise TLSConfigError(f"cannot read {exc.filename or self.cert}: {exc.strerror or exc}") from None
        except (ssl.SSLError, ValueError) as exc:
            raise TLSConfigError(f"the certificate {self.cert} and key {self.key} cannot be used together: "
                                 f"{getattr(exc, 'reason', None) or exc}") from None
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


def _no_password() -> bytes:
    """An encrypted key is refused (OpenSSL would otherwise ask on the terminal, from a signal handler)."""
    raise ValueError("the key is encrypted: give an unencrypted key (readable by the server's user only)")
