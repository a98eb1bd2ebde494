"""Certificates: our own identity and the fingerprints peers are known by."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qp2p.config import Trust
from qp2p.errors import CertificateError

__all__ = ("SERVER_NAME", "Identity", "fingerprint", "load_identity", "self_signed_identity")

# The TLS server name every qp2p client asks for: DNS-style, never an IP literal (rustls refuses those).
SERVER_NAME = "qp2p"
_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate with its private key, as aioquic's configuration takes them."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, in hex: how peers name each other."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def self_signed_identity(common_name: str = SERVER_NAME) -> Identity:
    """A fresh P-256 key and an end-entity (CA:FALSE) certificate for it, signed by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Identity(certificate, key)


def load_identity(certfile: str, keyfile: str) -> Identity:
    """Certificate and key from PEM files; ``CertificateError`` if they are unreadable or do not match."""
    try:
        certificate = x509.load_pem_x509_certificate(Path(certfile).read_bytes())
        key = serialization.load_pem_private_key(Path(keyfile).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot load {certfile} / {keyfile}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("only elliptic-curve keys are supported")
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
        raise CertificateError(f"{keyfile} is not the key of {certfile}")
    return Identity(certificate, key)


def identity_for(trust: Trust) -> Identity:
    """The identity an endpoint presents under ``trust``."""
    if trust.certfile is not None and trust.keyfile is not None:
        return load_identity(trust.certfile, trust.keyfile)
    return self_signed_identity()
