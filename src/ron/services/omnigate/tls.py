"""TLS for omnigate: the development CA, the server certificate, the server context.

OAP/1 runs over TLS 1.3 with ALPN ``ron/1`` (docs/specs/OAP-1.md §1). A node must work
out of the box, so on first start a private development CA and a server certificate
signed by it are generated under ``<data_dir>/tls/``; clients on the same machine trust
the node by loading ``ca.crt`` (the SDK does). An operator with real certificates sets
``omnigate.cert_file`` and ``omnigate.key_file`` and nothing is generated.

Every file is written atomically (temp file, fsync, rename, directory fsync) and private
keys are created 0600 from their first byte, so a crash never leaves a torn or readable
key. A half-finished generation (say, a new key whose certificate never got written) is
detected on the next start by checking the pair, and redone.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ron.fsutil import atomic_write_bytes, exclusive, make_dirs

ALPN = "ron/1"
TLS_DIR = "tls"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
GENERATE_LOCK = ".generate.lock"  # workers take turns making the development files
CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = datetime.timedelta(days=30)
SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """Where the server's certificate chain and key are, and the CA clients should trust."""

    cert: Path
    key: Path
    ca: Path | None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its key, or None when missing, unreadable or not a pair."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        return None
    return cert, key


def _make_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "RustyOnions"),
            x509.NameAttribute(NameOID.COMMON_NAME, "RustyOnions development CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    atomic_write_bytes(key_path, _key_pem(key), mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _make_server(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    atomic_write_bytes(key_path, _key_pem(key), mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _server_ok(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Signed by this CA and not about to expire."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return cert.not_valid_after_utc - _now() > RENEW_BEFORE


def ensure_dev_certs(
    data_dir: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    ca: Path | None = None,
) -> TlsFiles:
    """The development CA and server certificate, generated when absent or unusable.

    Paths default to ``<data_dir>/tls/{ca,server}.{crt,key}``; the CA key sits next to
    the CA certificate, so a renewed server certificate stays trusted by clients that
    already hold ``ca.crt``. Generation takes a few milliseconds (P-256 keys).
    """
    tls_dir = data_dir / TLS_DIR
    cert = cert or tls_dir / SERVER_CERT
    key = key or tls_dir / SERVER_KEY
    ca = ca or tls_dir / CA_CERT
    ca_key = ca.with_name(CA_KEY)
    for directory in {cert.parent, key.parent, ca.parent}:
        make_dirs(directory)
    # Several OAP workers start at once: without taking turns, each would make its own
    # CA and server certificate, and a worker would serve a certificate signed by a CA
    # another worker had already replaced on disk (clients trusting ca.crt fail there).
    with exclusive(ca.with_name(GENERATE_LOCK)):
        ca_pair = _load_pair(ca, ca_key)
        if ca_pair is None:
            ca_pair = _make_ca(ca, ca_key)
        server = _load_pair(cert, key)
        if server is None or not _server_ok(server[0], ca_pair[0]):
            _make_server(cert, key, *ca_pair)
    return TlsFiles(cert=cert, key=key, ca=ca)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.3 only, ALPN ``ron/1`` offered; the ALPN result is checked per connection.

    Python's server-side ALPN callback does not fail a handshake without a common
    protocol (it just selects none), so the server closes any connection whose
    negotiated protocol is not ``ron/1`` right after the handshake.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN])
    ctx.load_cert_chain(files.cert, files.key)
    return ctx
