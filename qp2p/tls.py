"""Certificates: our own identity, the check we run on a peer's, and the fingerprints peers go by."""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from aioquic import tls
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from qp2p._aioquic_hooks import CertificateRequired, PeerCheck
from qp2p.config import Trust
from qp2p.errors import CertificateError

__all__ = (
    "CERTIFICATE_ALERTS",
    "SERVER_NAME",
    "Identity",
    "expecting",
    "fingerprint",
    "identity_for",
    "issue",
    "load_identity",
    "new_ca",
    "peer_check",
    "self_signed_identity",
    "write_identity",
)

# The TLS server name every qp2p client asks for: DNS-style, never an IP literal (rustls refuses those).
SERVER_NAME = "qp2p"
_VALIDITY = datetime.timedelta(days=3650)
# Certificates start an hour back, so a peer whose clock is a little behind accepts them.
_LEEWAY = datetime.timedelta(hours=1)
# TLS alerts that mean "your certificate was refused" (RFC 8446 section 6.2).
CERTIFICATE_ALERTS = frozenset(
    int(a)
    for a in (
        tls.AlertDescription.bad_certificate,
        tls.AlertDescription.unsupported_certificate,
        tls.AlertDescription.certificate_revoked,
        tls.AlertDescription.certificate_expired,
        tls.AlertDescription.certificate_unknown,
        tls.AlertDescription.unknown_ca,
        tls.AlertDescription.certificate_required,
    )
)


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate with its private key (and any intermediate certificates), as aioquic takes them."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of our certificate, hex: the id peers know us by."""
        return fingerprint(self.certificate)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, in hex: how peers name each other."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What every certificate made here has: names, key, a random serial, validity, basic constraints."""
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )


def self_signed_identity(common_name: str = SERVER_NAME) -> Identity:
    """A fresh P-256 key and an end-entity (CA:FALSE) certificate for it, signed by itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        _certificate(common_name, _name(common_name), key, now - _LEEWAY, now + _VALIDITY, ca=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Identity(certificate, key)


def new_ca(common_name: str = "qp2p network CA", days: int = 3650) -> Identity:
    """A self-signed CA (CA:TRUE, may sign certificates only) with a fresh P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        _certificate(
            common_name, _name(common_name), key, now - _LEEWAY, now + datetime.timedelta(days=days), ca=True
        )
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
        .sign(key, hashes.SHA256())
    )
    return Identity(certificate, key)


def issue(ca: Identity, name: str, days: int = 825, not_before: datetime.datetime | None = None) -> Identity:
    """A node certificate for ``name`` signed by ``ca``: end-entity, for TLS clients and servers.
    It never outlives its CA: ``days`` is cut to the CA's own expiry."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or datetime.datetime.now(datetime.UTC) - _LEEWAY
    end = min(start + datetime.timedelta(days=days), ca.certificate.not_valid_after_utc)
    certificate = (
        _certificate(name, ca.certificate.subject, key, start, end, ca=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(ca.private_key, hashes.SHA256())
    )
    return Identity(certificate, key)


def write_identity(identity: Identity, certfile: str | Path, keyfile: str | Path) -> None:
    """Certificate (and chain) and key as new PEM files, mode 0600: both, or neither. A name
    already taken (a dangling symlink too) raises ``FileExistsError``; nothing is ever written
    through a symlink."""
    for path in (certfile, keyfile):
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists; not overwriting it")
    key_pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (identity.certificate, *identity.chain)
    )
    _create_files([(Path(keyfile), key_pem), (Path(certfile), cert_pem)])


# Windows has no O_NOFOLLOW (making a symlink there takes a privilege).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _create_files(files: list[tuple[Path, bytes]]) -> None:
    """Create each file anew, mode 0600, never through a symlink; if one fails, remove those
    already made, so that a key is never left without its certificate (or the other way)."""
    made: list[Path] = []
    try:
        for path, data in files:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
            made.append(path)
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        raise


def load_identity(certfile: str, keyfile: str) -> Identity:
    """Certificate (then any intermediates) and key from PEM files; ``CertificateError`` if they
    cannot be read or do not belong together."""
    try:
        certificate, *chain = x509.load_pem_x509_certificates(Path(certfile).read_bytes())
        key = serialization.load_pem_private_key(Path(keyfile).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot load {certfile} / {keyfile}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("only elliptic-curve keys are supported")
    if key.public_key() != certificate.public_key():
        raise CertificateError(f"{keyfile} is not the key of {certfile}")
    return Identity(certificate, key, chain)


def identity_for(trust: Trust) -> Identity:
    """The identity an endpoint presents under ``trust``."""
    if trust.certfile is not None and trust.keyfile is not None:
        return load_identity(trust.certfile, trust.keyfile)
    return self_signed_identity()


def _require_any(certificate: x509.Certificate | None, chain: list[x509.Certificate]) -> None:
    """encrypt_only: any certificate will do, but there must be one: its fingerprint, proven by
    the handshake, is the peer's identity."""
    if certificate is None:
        raise CertificateRequired("a certificate is required: it is the peer's identity")


def _check_dates(certificate: x509.Certificate) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if now < certificate.not_valid_before_utc:
        raise tls.AlertCertificateExpired("certificate is not valid yet")
    if now > certificate.not_valid_after_utc:
        raise tls.AlertCertificateExpired("certificate has expired")


def expecting(check: PeerCheck, peer_id: str) -> PeerCheck:
    """``check``, and then the certificate must be the one whose fingerprint is ``peer_id``."""

    def check_peer(certificate: x509.Certificate | None, chain: list[x509.Certificate]) -> None:
        check(certificate, chain)
        if certificate is None or fingerprint(certificate) != peer_id:
            raise tls.AlertBadCertificate(f"not the expected peer {peer_id[:16]}...")

    return check_peer


def peer_check(trust: Trust) -> PeerCheck:
    """The test a peer's certificate must pass under ``trust``; it raises a TLS alert to refuse.

    It runs in both roles, before the handshake completes, so a refused peer never sends or
    receives application data.
    """
    if trust.mode == "encrypt_only":
        return _require_any
    if trust.mode == "pinned":
        pins = trust.pins

        def check_pinned(certificate: x509.Certificate | None, chain: list[x509.Certificate]) -> None:
            if certificate is None:
                raise CertificateRequired("a pinned certificate is required")
            _check_dates(certificate)
            digest = fingerprint(certificate)
            if digest not in pins:
                raise tls.AlertBadCertificate(f"certificate {digest[:16]}... is not pinned")

        return check_pinned
    cadata = trust.ca_pem

    def check_chain(certificate: x509.Certificate | None, chain: list[x509.Certificate]) -> None:
        if certificate is None:
            raise CertificateRequired("a certificate signed by the network's CA is required")
        # Dates, then the chain up to one of the given CAs; no name check: peers are addresses.
        tls.verify_certificate(certificate=certificate, chain=chain, cadata=cadata)

    return check_chain
