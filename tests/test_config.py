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


# ---- Config from text ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["true", "TRUE", "True", "1", "yes", "Yes", "on", " on "])
def test_true_spellings(text: str) -> None:
    assert qp2p.Config.from_mapping({"forward_port": text}).forward_port is True


@pytest.mark.parametrize("text", ["false", "FALSE", "0", "no", "NO", "off", "Off"])
def test_false_spellings(text: str) -> None:
    assert qp2p.Config.from_mapping({"stateless_retry": text}).stateless_retry is False


@pytest.mark.parametrize("value", ["ture", "flase", "", "none", "2", "-1", "y", "enabled", 1, 0, 2.0, None])
def test_anything_else_is_not_a_boolean(value: object) -> None:
    # "ture" used to read as False: a typo silently turned stateless retry off.
    with pytest.raises(qp2p.ConfigError, match="stateless_retry"):
        qp2p.Config.from_mapping({"stateless_retry": value})


def test_numbers_from_text_and_toml_values() -> None:
    config = qp2p.Config.from_mapping(
        {
            "local_port": "4000",
            "lanes": 8,
            "idle_timeout": "12.5",
            "close_timeout": 1,
            "max_connections": " 7 ",
        }
    )
    assert (config.local_port, config.lanes, config.max_connections) == (4000, 8, 7)
    assert (config.idle_timeout, config.close_timeout) == (12.5, 1.0)
    assert isinstance(config.close_timeout, float)


@pytest.mark.parametrize(
    "name, value",
    [
        ("lanes", "four"),
        ("lanes", "4.0"),
        ("lanes", 4.5),  # int() would cut it to 4
        ("lanes", True),  # int() would read it as 1
        ("idle_timeout", "soon"),
        ("idle_timeout", "nan"),
        ("idle_timeout", "inf"),
        ("idle_timeout", float("inf")),
        ("idle_timeout", False),
        ("local_ip", 127),
        ("local_port", ""),
    ],
)
def test_unreadable_values_name_their_field(name: str, value: object) -> None:
    with pytest.raises(qp2p.ConfigError, match=name):
        qp2p.Config.from_mapping({name: value})


def test_optional_fields_read_empty_or_none_as_none() -> None:
    config = qp2p.Config.from_mapping(
        {"keep_alive_interval": "none", "external_port": "", "external_ip": "None"}
    )
    assert (config.keep_alive_interval, config.external_port, config.external_ip) == (None, None, None)
    assert qp2p.Config.from_mapping({"keep_alive_interval": "5"}).keep_alive_interval == 5.0


def test_contacts_from_a_string_or_a_list() -> None:
    text = qp2p.Config.from_mapping({"hard_coded_contacts": "10.0.0.1:4000, [::1]:5000"})
    listed = qp2p.Config.from_mapping({"hard_coded_contacts": ["10.0.0.1:4000", ["::1", 5000]]})
    assert text.hard_coded_contacts == listed.hard_coded_contacts == (("10.0.0.1", 4000), ("::1", 5000))
    assert qp2p.Config.from_mapping({"hard_coded_contacts": ""}).hard_coded_contacts == ()
    for bad in ("10.0.0.1", "10.0.0.1:0", "host:4000", 4000, ["10.0.0.1", 4000]):
        with pytest.raises(qp2p.ConfigError, match="contact"):
            qp2p.Config.from_mapping({"hard_coded_contacts": bad})


def test_role_values() -> None:
    assert qp2p.Config.from_mapping({"role": "client"}).role is qp2p.Role.CLIENT
    assert qp2p.Config.from_mapping({"role": "Node"}).role is qp2p.Role.NODE
    assert qp2p.Config.from_mapping({"role": qp2p.Role.CLIENT}).role is qp2p.Role.CLIENT
    for bad in ("server", "", 1):
        with pytest.raises(qp2p.ConfigError, match="role"):
            qp2p.Config.from_mapping({"role": bad})


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(qp2p.ConfigError, match="unknown settings: local_prot, tls"):
        qp2p.Config.from_mapping({"tls": "on", "local_prot": "4000"})


def test_trust_is_given_in_code_not_as_text(ca_pem: bytes) -> None:
    trust = qp2p.Trust.ca(ca_pem, "a.pem", "a.key")
    assert qp2p.Config.from_mapping({"trust": trust}).trust is trust
    for text in ("ca", {"mode": "ca"}):  # it used to be dropped without a word: encrypt_only instead
        with pytest.raises(qp2p.ConfigError, match="trust"):
            qp2p.Config.from_mapping({"trust": text})


def test_from_file_reads_a_qp2p_table_or_the_top_level(tmp_path: Path) -> None:
    nested, flat = tmp_path / "nested.toml", tmp_path / "flat.toml"
    nested.write_text(
        '[other]\nlanes = "not ours"\n\n[qp2p]\nlocal_port = 4000\nstateless_retry = false\n'
        'role = "client"\nhard_coded_contacts = ["10.0.0.1:4000"]\nidle_timeout = 20\n'
    )
    flat.write_text('local_port = 4000\nstateless_retry = "off"\nrole = "client"\n')
    config = qp2p.Config.from_file(nested)
    assert (config.local_port, config.stateless_retry, config.role) == (4000, False, qp2p.Role.CLIENT)
    assert (config.hard_coded_contacts, config.idle_timeout) == ((("10.0.0.1", 4000),), 20.0)
    assert qp2p.Config.from_file(flat) == config.replace(hard_coded_contacts=(), idle_timeout=30.0)


@pytest.mark.parametrize(
    "content, match",
    [
        ("lanes = 4\nlane = 2\n", "unknown settings: lane"),
        ('stateless_retry = "ture"\n', "stateless_retry"),
        ("lanes = 0\n", "lanes must be"),
        ("qp2p = 5\n", "table"),
        ("lanes = = 4\n", "cannot read"),
        (b"lanes = '\xff'\n", "cannot read"),
    ],
)
def test_from_file_errors_name_the_file(tmp_path: Path, content: str | bytes, match: str) -> None:
    path = tmp_path / "node.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(qp2p.ConfigError, match=match) as raised:
        qp2p.Config.from_file(path)
    assert str(path) in str(raised.value)


def test_from_file_without_a_file(tmp_path: Path) -> None:
    with pytest.raises(qp2p.ConfigError, match="cannot read"):
        qp2p.Config.from_file(tmp_path / "missing.toml")


def test_from_env() -> None:
    env = {
        "QP2P_LOCAL_PORT": "4000",
        "QP2P_FORWARD_PORT": "yes",
        "QP2P_ROLE": "client",
        "QP2P_HARD_CODED_CONTACTS": "10.0.0.1:4000,10.0.0.2:4000",
        "QP2P_KEEP_ALIVE_INTERVAL": "none",
        "QP2P_NO_EXTENSIONS": "1",  # read by qp2p's import, not a setting
        "HOME": "/root",
    }
    config = qp2p.Config.from_env(env)
    assert (config.local_port, config.forward_port, config.role) == (4000, True, qp2p.Role.CLIENT)
    assert config.hard_coded_contacts == (("10.0.0.1", 4000), ("10.0.0.2", 4000))
    assert config.keep_alive_interval is None and config.lanes == qp2p.Config().lanes
    assert qp2p.Config.from_env({"NODE_LANES": "8"}, prefix="NODE_").lanes == 8


@pytest.mark.parametrize(
    "env, match",
    [
        ({"QP2P_FORWARD_PORT": "ture"}, "forward_port"),
        ({"QP2P_LOCAL_PROT": "4000"}, "unknown settings: QP2P_LOCAL_PROT"),
        ({"QP2P_TRUST": "ca"}, "trust"),
        ({"QP2P_LANES": "0"}, "lanes must be"),
    ],
)
def test_from_env_refuses(env: dict[str, str], match: str) -> None:
    with pytest.raises(qp2p.ConfigError, match=match):
        qp2p.Config.from_env(env)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_session_tickets": 0},
        {"session_tickets_per_address": 0},
        {"max_session_tickets": 10, "session_tickets_per_address": 11},
        {"session_ticket_lifetime": 0.0},
        {"session_ticket_lifetime": 86401.0},  # longer than the lifetime a ticket announces
    ],
)
def test_session_ticket_bounds_are_checked(settings: dict[str, object]) -> None:
    with pytest.raises(qp2p.ConfigError):
        qp2p.Config(**settings)  # type: ignore[arg-type]


def test_session_tickets_from_the_environment() -> None:
    config = qp2p.Config.from_env({"QP2P_SESSION_TICKETS": "off", "QP2P_SESSION_TICKET_LIFETIME": "600"})
    assert config.session_tickets is False and config.session_ticket_lifetime == 600.0
