"""Client-side TLS: which connections must be encrypted, and how to verify.

Remote GPU boxes talk to NATS and the gateway across networks nobody
controls, carrying an API key. So a connection to anything but loopback
must be TLS, verified against a CA we were given (or a pinned certificate),
unless the operator says `GPUBUS_ALLOW_INSECURE=true` (a private network
they trust). Loopback stays plain so a laptop and the tests need nothing.

NATS TLS is "handshake first" (`tls { handshake_first: true }` on the server,
`tls_handshake_first` in nats-py): the client never reads a plaintext INFO
before the handshake, so a forged INFO without `tls_required` cannot trick
it into sending its token in clear.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from schemas.errors import GpubusError

TLS_SCHEMES = frozenset({"tls", "https", "wss"})


class InsecureConnection(GpubusError):
    """A plaintext connection to a host beyond loopback, not explicitly allowed."""

    code = "INSECURE_CONNECTION"


class UntrustedCertificate(GpubusError):
    """The server's certificate is not signed by our CA, or not the pinned one."""

    code = "UNTRUSTED_CERTIFICATE"


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def require_secure(urls: list[str], *, encrypted: bool, allow_insecure: bool, what: str) -> None:
    """Refuse plaintext to anything beyond loopback. `encrypted`: this
    connection runs TLS whatever the URL scheme says (NATS with a context)."""
    if encrypted or allow_insecure:
        return
    for url in urls:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        if parts.scheme not in TLS_SCHEMES and not is_loopback(parts.hostname):
            raise InsecureConnection(
                f"{what} {parts.scheme}://{parts.hostname}:{parts.port or ''} is not TLS and not loopback; "
                "give it TLS (GPUBUS_NATS_CA_FILE / https://) or set GPUBUS_ALLOW_INSECURE=true"
            )


def fingerprint(cert_pem: str) -> str:
    """SHA-256 of the certificate's DER, lowercase hex (what
    `openssl x509 -noout -fingerprint -sha256` shows, without colons)."""
    end = "-----END CERTIFICATE-----"
    first = cert_pem.strip().split(end, 1)[0] + end  # a bundle: its first certificate
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()


def normalize_fingerprint(value: str) -> str:
    return value.replace(":", "").strip().lower().removeprefix("sha256=")


def client_context(*, ca_file: Path | None = None, ca_pem: str | None = None) -> ssl.SSLContext:
    """Verifies the server and its host name against the given CA (the
    system's trust store when neither is given)."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None, cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def pinned_context(host: str, port: int, pin: str, *, timeout_s: float = 10.0) -> ssl.SSLContext:
    """Trust exactly the certificate whose SHA-256 is `pin` (a self-made CA
    the node has no file of). The certificate is fetched once and checked
    against the pin, then becomes the only trust anchor: a server showing
    any other certificate on the real connection fails the handshake."""
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout_s) as raw, probe.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    if der is None or hashlib.sha256(der).hexdigest() != normalize_fingerprint(pin):
        raise UntrustedCertificate(f"{host}:{port} shows a certificate other than the pinned {pin}")
    ctx = ssl.create_default_context(cadata=ssl.DER_cert_to_PEM_cert(der))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf as its own trust anchor
    ctx.check_hostname = False  # the pin names the certificate; the host name adds nothing
    return ctx


def nats_context(
    servers: list[str], *, ca_file: Path | None = None, ca_pem: str | None = None
) -> ssl.SSLContext | None:
    """TLS for NATS when we hold its CA, or when a `tls://` URL asks for it
    (then the system's trust store verifies the server)."""
    if ca_file is not None or ca_pem:
        return client_context(ca_file=ca_file, ca_pem=ca_pem)
    if any(urlsplit(u).scheme == "tls" for u in servers):
        return client_context()
    return None


def gateway_context(url: str, *, ca_file: Path | None, pin: str | None, allow_insecure: bool) -> ssl.SSLContext | None:
    """How a node or the CLI verifies the gateway: a pinned certificate,
    else the given CA, else the system's trust store; None for plain HTTP
    (loopback, or explicitly allowed). Blocking (the pin is fetched)."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        require_secure([url], encrypted=False, allow_insecure=allow_insecure, what="gateway")
        return None
    if pin:
        return pinned_context(parts.hostname or "", parts.port or 443, pin)
    return client_context(ca_file=ca_file)
