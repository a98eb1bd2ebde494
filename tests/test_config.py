"""``Trust`` and ``Config`` validation; a config read from a mapping, a TOML file or the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

import qp2p
from qp2p import tls

FINGERPRINT = "ab" * 32


@pytest.fixture
def ca_pem(tmp_path: Path) -> bytes:
    tls.write_identity(tls.new_ca(), tmp_path / "ca.pem", tmp_path / "ca.key")
    return (tmp_path / "ca.pem").read_bytes()


# ---- Trust -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ca", "private_ca"])
def test_chain_trust_without_ca_data_is_refused(mode: str) -> None:
    # Without CA data the chain check would run with cadata=None: aioquic then trusts the public roots.
    with pytest.raises(qp2p.ConfigError, match="CA certificates"):
        qp2p.Trust(mode, "a.pem", "a.key")  # type: ignore[arg-type]
    with pytest.raises(qp2p.ConfigError, match="CA certificates"):
        qp2p.Config(trust=qp2p.Trust(mode))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["CA", "private-ca", "pin", "", "none"])
def test_unknown_trust_mode_is_refused(mode: str) -> None:
    with pytest.raises(qp2p.ConfigError, match="unknown trust mode"):
        qp2p.Trust(mode)  # type: ignore[arg-type]


def test_chain_trust_needs_our_certificate_and_key(ca_pem: bytes) -> None:
    with pytest.raises(qp2p.ConfigError, match="certfile and keyfile"):
        qp2p.Trust("ca", ca_pem=ca_pem)
    with pytest.raises(qp2p.ConfigError, match="certfile and keyfile"):
        qp2p.Trust("private_ca", "a.pem", None, ca_pem)


@pytest.mark.parametrize(
    "ca_data", [b"", b"not PEM", "-----BEGIN CERTIFICATE-----\n...", b"-----BEGIN CERTIFICATE-----\nx\n"]
)
def test_chain_trust_with_unusable_ca_data_is_refused(ca_data: object) -> None:
    with pytest.raises(qp2p.ConfigError, match="CA certificate"):
        qp2p.Trust("ca", "a.pem", "a.key", ca_data)  # type: ignore[arg-type]


def test_pinned_trust_needs_well_formed_pins() -> None:
    with pytest.raises(qp2p.ConfigError, match="at least one fingerprint"):
        qp2p.Trust("pinned")
    with pytest.raises(qp2p.ConfigError, match="not a SHA-256 fingerprint"):
        qp2p.Trust("pinned", pins=frozenset({"ab" * 31}))
    for pins in (FINGERPRINT, 5):
        with pytest.raises(qp2p.ConfigError, match="collection of fingerprints"):
            qp2p.Trust("pinned", pins=pins)  # type: ignore[arg-type]
    built = qp2p.Trust("pinned", pins=frozenset({FINGERPRINT.upper()}))
    assert built.pins == {FINGERPRINT}  # normalised as the factory does


def test_fields_of_another_mode_are_refused(ca_pem: bytes) -> None:
    with pytest.raises(qp2p.ConfigError, match="ca_pem"):
        qp2p.Trust("pinned", ca_pem=ca_pem, pins=frozenset({FINGERPRINT}))
    with pytest.raises(qp2p.ConfigError, match="pins"):
        qp2p.Trust("encrypt_only", pins=frozenset({FINGERPRINT}))
    with pytest.raises(qp2p.ConfigError, match="pins"):
        qp2p.Trust("ca", "a.pem", "a.key", ca_pem, frozenset({FINGERPRINT}))


@pytest.mark.parametrize("certfile, keyfile", [("a.pem", None), (None, "a.key"), ("", ""), (3, 4)])
def test_certificate_files_must_be_a_pair_of_paths(certfile: object, keyfile: object) -> None:
    with pytest.raises(qp2p.ConfigError, match="certfile|keyfile"):
        qp2p.Trust("encrypt_only", certfile, keyfile)  # type: ignore[arg-type]


def test_factories_still_build_every_mode(tmp_path: Path, ca_pem: bytes) -> None:
    assert qp2p.Trust().mode == "encrypt_only"
    assert qp2p.Trust("encrypt_only", pins=[]).pins == frozenset()  # type: ignore[arg-type]
    loaded = qp2p.Trust.encrypt_only(tmp_path / "a.pem", tmp_path / "a.key")  # type: ignore[arg-type]
    assert loaded.certfile == str(tmp_path / "a.pem")  # a Path given is kept as a string
    assert qp2p.Trust.ca(ca_pem, "a.pem", "a.key").ca_pem == ca_pem
    assert qp2p.Trust.private_ca(tmp_path, "node").certfile == str(tmp_path / "node.pem")
    assert qp2p.Trust.pinned([FINGERPRINT.upper()]).pins == {FINGERPRINT}
