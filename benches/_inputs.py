"""Input builders shared by the bench files; everything here runs outside the timed code."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from qp2p.tls import Identity

__all__ = ("KiB", "MiB", "identity_pem", "payload", "size_label")

KiB = 1 << 10
MiB = 1 << 20

_PATTERN = bytes(range(1, 256))


def payload(size: int) -> bytes:
    """``size`` bytes of a non-zero pattern: every page of the result is really written."""
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]


def size_label(size: int) -> str:
    """64 -> "64B", 1024 -> "1KiB", 33554432 -> "32MiB": the size part of group names and test ids."""
    for unit, scale in (("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


def identity_pem(identity: Identity) -> tuple[bytes, bytes]:
    """The certificate and its unencrypted PKCS#8 private key, PEM-encoded, for libraries that load PEM."""
    certificate = identity.certificate.public_bytes(serialization.Encoding.PEM)
    key = identity.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate, key
