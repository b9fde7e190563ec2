"""The listening side of TLS (``tenure serve --tls-cert FILE --tls-key FILE``, and ``tenure agent``).

One ``ssl.SSLContext`` for the server's lifetime. :meth:`ServerTLS.reload` (SIGHUP) loads the certificate and key
again into that same context: connections already open keep the certificate they were made with, new handshakes
get the new one, and nothing is dropped. A pair that does not load (a half-written file, a key that does not match)
leaves the old one in place and says why.
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
    cert: Path
    key: Path
    context: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(self.context)

    def _load(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self.cert, self.key)
        except FileNotFoundError as exc:
            raise TLSConfigError(f"cannot read {exc.filename}: no such file") from None
        except PermissionError as exc:
            raise TLSConfigError(f"cannot read {exc.filename}: permission denied") from None
        except ssl.SSLError as exc:
            raise TLSConfigError(f"the certificate {self.cert} and key {self.key} cannot be used together: "
                                 f"{exc.reason or exc}") from None

    def reload(self) -> bool:
        """Load the files again (SIGHUP); whether the new pair is in use (else the old one stays, logged)."""
        try:
            self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))  # checked on a scratch context first
            self._load(self.context)
        except TLSConfigError as exc:
            log.error("TLS certificate not reloaded; the old one stays in use", extra={"error": str(exc)})
            return False
        log.info("TLS certificate reloaded", extra={"cert": str(self.cert)})
        return True
