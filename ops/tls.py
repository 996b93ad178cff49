"""A small certificate authority, so gpubus runs TLS without openssl recipes.

`gpubus up --tls` and `gpubus tls init` make a CA and one server certificate
signed by it (ECDSA P-256). Remote GPU boxes reach NATS and the gateway over
networks nobody controls: they verify the server against this CA (handed to
them as a file, learnt at bootstrap, or pinned by fingerprint), so no one on
the path can read a node's API key or its jobs. Operators with their own PKI
pass their CA, certificate and key files instead (`TlsFiles.given`).

The server certificate serves both ways: `serverAuth` for clients and the
gateway, `clientAuth` because nats-server routes present it to each other.
Private keys are created 0600 (never world-readable, not even for an
instant) and stay on the machine that made them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bus.settings import Settings
from bus.tls import fingerprint
from ops.private_files import write_private
from schemas.errors import GpubusError

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest browsers accept for a server certificate
DEFAULT_NAMES = ("127.0.0.1", "localhost")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.pem", "ca-key.pem", "server.pem", "server-key.pem"


class TlsSetupError(GpubusError):
    """TLS files are missing, unreadable or do not belong together."""

    code = "TLS_SETUP"


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS server needs, and the CA its clients verify it with."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def given(cls, ca_file: Path, cert_file: Path, key_file: Path) -> TlsFiles:
        """Operator-supplied files: checked to exist now rather than when a
        client first fails its handshake."""
        files = cls(Path(ca_file), Path(cert_file), Path(key_file))
        for path in (files.ca_file, files.cert_file, files.key_file):
            if not path.is_file():
                raise TlsSetupError(f"no TLS file at {path}")
        return files

    @property
    def ca_pem(self) -> str:
        return self.ca_file.read_text()

    @property
    def cert_sha256(self) -> str:
        """What a node pins the gateway by (`--gateway-fingerprint`)."""
        return fingerprint(self.cert_file.read_text())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _subject_alt_names(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys([*DEFAULT_NAMES, *names]):  # order kept, duplicates dropped
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # clock skew between machines
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_ca(directory: Path, common_name: str = "gpubus CA") -> tuple[Path, Path]:
    """(ca.pem, ca-key.pem) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(directory / CA_KEY, _key_pem(key))
    (directory / CA_CERT).write_bytes(_cert_pem(cert))
    return directory / CA_CERT, directory / CA_KEY


def issue_server_cert(ca_file: Path, ca_key_file: Path, directory: Path, names: list[str]) -> TlsFiles:
    """A certificate for the given host names and IPs (plus 127.0.0.1 and
    localhost), signed by the CA, for nats-server and the gateway alike."""
    ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    ca_public = ca_cert.public_key()
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or not isinstance(ca_public, ec.EllipticCurvePublicKey):
        raise TlsSetupError(f"{ca_key_file}: the CA's key is not an EC key (gpubus tls init makes P-256 keys)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ["localhost"])[0])])
    cert = (
        _builder(subject, ca_cert.subject, key.public_key(), SERVER_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
        .add_extension(_subject_alt_names(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    write_private(directory / SERVER_KEY, _key_pem(key))
    (directory / SERVER_CERT).write_bytes(_cert_pem(cert))
    return TlsFiles(ca_file, directory / SERVER_CERT, directory / SERVER_KEY)


def _covers(cert_file: Path, names: list[str]) -> bool:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(sans.get_values_for_type(x509.DNSName))
    fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=30)
    return fresh and set(DEFAULT_NAMES) | set(names) <= have


def load_or_create(directory: Path, names: list[str] | None = None) -> TlsFiles:
    """The CA and server certificate kept in `directory`, made on first use.
    The CA is kept across restarts (nodes trust it); the server certificate
    is re-issued when it does not cover `names` or is about to expire."""
    names = list(names or [])
    ca_file, ca_key = directory / CA_CERT, directory / CA_KEY
    if not (ca_file.is_file() and ca_key.is_file()):
        create_ca(directory)
    cert_file = directory / SERVER_CERT
    if cert_file.is_file() and (directory / SERVER_KEY).is_file() and _covers(cert_file, names):
        return TlsFiles(ca_file, cert_file, directory / SERVER_KEY)
    return issue_server_cert(ca_file, ca_key, directory, names)


def for_settings(settings: Settings, directory: Path) -> TlsFiles:
    """The operator's files when GPUBUS_TLS_CERT_FILE/KEY_FILE/CA_FILE are
    set, else a CA and certificate made (once) in `directory`."""
    if settings.tls_cert_file or settings.tls_key_file:
        ca = settings.tls_ca_file or settings.nats_ca_file
        if not (settings.tls_cert_file and settings.tls_key_file and ca):
            raise TlsSetupError("TLS needs all three: GPUBUS_TLS_CERT_FILE, GPUBUS_TLS_KEY_FILE and GPUBUS_TLS_CA_FILE")
        return TlsFiles.given(ca, settings.tls_cert_file, settings.tls_key_file)
    bound = [] if settings.host in ("0.0.0.0", "::", "") else [settings.host]
    return load_or_create(directory, bound)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """HTTPS for the gateway when it has a certificate; nothing otherwise."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        return {}
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise TlsSetupError("the gateway's HTTPS needs both GPUBUS_TLS_CERT_FILE and GPUBUS_TLS_KEY_FILE")
    return {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}
