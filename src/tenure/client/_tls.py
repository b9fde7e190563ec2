"""TLS for the client: which certificates it trusts, and a refusal said plainly.

``ca_file`` (``--ca-file``, ``TENURE_CA_FILE``): the CA that signs the server's certificate, for a server whose
certificate the system does not trust (a private CA, the usual case); without it, the system's trust store. A
refused certificate becomes :class:`TenureTLSError` naming why: not signed by a trusted CA, expired, or made for
another host name.

``client_cert`` (``tenure agent --client-cert FILE --client-key FILE``): the certificate the client shows a server
that asks for one (``tenure serve --tls-client-ca``); :class:`ClientCert` loads it again when its files change.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile

from tenure.client._errors import TenureConfigError

CA_ENV = "TENURE_CA_FILE"


def verify_with(ca_file: str | None, client_cert: ClientCert | None = None) -> ssl.SSLContext:
    """What httpx verifies servers with: ``ca_file``, else ``$TENURE_CA_FILE``, else the system's trust store; with
    ``client_cert`` loaded into it."""
    ca = ca_file or os.environ.get(CA_ENV) or None
    try:
        # without a CA file, the system's store (httpx's own default is certifi's bundle)
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TenureConfigError(f"cannot use the CA file {ca}: {getattr(exc, 'strerror', None) or exc}") from None
    if client_cert is not None:
        client_cert.load_into(context)
    return context


class ClientCert:
    """A client certificate and its key (PEM files). :meth:`load_into` loads them into a context when their
    content changed since it last did (a renewed certificate is used for the connections made after it; those
    open keep theirs). A renewal should keep the key's type: OpenSSL keeps one certificate per key type in a
    context, so an RSA one would linger beside a new EC one."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self._loaded: bytes | None = None

    def load_into(self, context: ssl.SSLContext) -> bool:
        """Load the pair if it changed; whether it did. :class:`TenureConfigError` if it cannot be used (the
        context keeps the pair it had)."""
        try:
            with open(self.cert, "rb") as f:
                cert = f.read()
            with open(self.key, "rb") as f:
                key = f.read()
        except OSError as exc:
            raise TenureConfigError(f"cannot read {exc.filename or self.cert}: {exc.strerror or exc}") from None
        digest = hashlib.sha256(cert + b"\0" + key).digest()
        if digest == self._loaded:
            return False
        # The bytes read once, loaded from a private copy (OpenSSL loads from files): a renewal written meanwhile
        # cannot give the two loads different pairs. First into a scratch context: a pair that does not load (a
        # renewal half-written) must not reach the live one, where OpenSSL would already have replaced the
        # certificate when the key fails.
        try:
            with tempfile.TemporaryDirectory(prefix="tenure-cert-") as private:  # 0700
                copy_cert, copy_key = os.path.join(private, "cert.pem"), os.path.join(private, "key.pem")
                for path, data in ((copy_cert, cert), (copy_key, key)):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(copy_cert, copy_key, password=_no_password)
                context.load_cert_chain(copy_cert, copy_key, password=_no_password)
        except (ssl.SSLError, ValueError) as exc:  # (an SSLError is an OSError: first)
            raise TenureConfigError(f"the client certificate {self.cert} and key {self.key} cannot be used "
                                    f"together: {getattr(exc, 'reason', None) or exc}") from None
        except OSError as exc:
            raise TenureConfigError(f"cannot load the client certificate {self.cert}: {exc.strerror or exc}") from None
        self._loaded = digest
        return True


def _no_password() -> bytes:
    raise ValueError("the key is encrypted: give an unencrypted key")
