"""``Config``: the settings of an endpoint, validated when made; from code, a TOML file or the environment."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import ipaddress
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from qp2p._pmtud import BASE_SIZE
from qp2p.bootstrap_cache import MAX_ENTRIES
from qp2p.errors import ConfigError

__all__ = ("Config", "Role", "Trust")

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
# By default a source address (and a peer) may hold this share of the endpoint's memory_limit,
# so attackers need that many addresses to fill it.
MEMORY_SHARES = 16
# aioquic writes STREAM frame and long-header lengths as 2-byte varints: above this it hangs.
MAX_DATAGRAM_SIZE = 16383
MIN_DATAGRAM_SIZE = BASE_SIZE
# The lifetime aioquic's server announces in every ticket (RFC 8446 caps it at 7 days).
MAX_TICKET_LIFETIME = 86400.0


def _read_pem(source: str | bytes | os.PathLike[str], what: str) -> bytes:
    """PEM text given as bytes or a string holding it, or the path of a file holding it."""
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and "-----BEGIN" in source:
        return source.encode()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {source}: {exc}") from exc


def _fingerprint(text: object) -> str:
    """A SHA-256 fingerprint as 64 lowercase hex digits; colons and letter case as people write it."""
    digest = text.replace(":", "").strip().lower() if isinstance(text, str) else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"not a SHA-256 fingerprint: {text!r}")
    return digest


class Role(enum.Enum):
    """A node accepts connections and is shared with others; a client only dials."""

    NODE = "node"
    CLIENT = "client"


TrustMode = Literal["encrypt_only", "ca", "private_ca", "pinned"]
_MODES: tuple[TrustMode, ...] = typing.get_args(TrustMode)
# The modes that check a peer's chain against ``ca_pem``: without it aioquic would trust the public roots.
_CHAIN_MODES = ("ca", "private_ca")


@dataclass(frozen=True, slots=True)
class Trust:
    """How peers authenticate each other; ``Trust.encrypt_only()`` is the default.

    Build one with a factory: ``encrypt_only``, ``ca``, ``private_ca`` or ``pinned``.
    ``docs/security.md`` says what each mode guarantees and what it does not. Every field is
    checked when made, however it is made: ``ConfigError`` for an unknown mode, a field the
    mode needs that is missing or unusable, or a field that belongs to another mode.
    """

    mode: TrustMode = "encrypt_only"
    certfile: str | None = None
    keyfile: str | None = None
    ca_pem: bytes | None = None
    pins: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _check(self.mode in _MODES, f"unknown trust mode {self.mode!r}: use one of {', '.join(_MODES)}")
        self._check_ca()
        self._check_files()
        self._check_pins()

    def _check_files(self) -> None:
        """Our certificate and key: two paths or none; required where peers check our chain."""
        for name in ("certfile", "keyfile"):
            path = getattr(self, name)
            if isinstance(path, os.PathLike):
                path = os.fspath(path)
                object.__setattr__(self, name, path)  # a Path given is kept as a string
            _check(path is None or (isinstance(path, str) and path != ""), f"{name} must be a file path")
        both = (self.certfile is None) == (self.keyfile is None)
        _check(both, "give both certfile and keyfile, or neither")
        if self.mode in _CHAIN_MODES:
            _check(self.certfile is not None, f"{self.mode} trust needs our certfile and keyfile")

    def _check_ca(self) -> None:
        """The CA certificates: parseable PEM bytes in the chain modes, absent in the others."""
        if self.mode not in _CHAIN_MODES:
            _check(self.ca_pem is None, f"ca_pem is for ca and private_ca trust, not {self.mode}")
            return
        if not isinstance(self.ca_pem, bytes):
            raise ConfigError(
                f"{self.mode} trust needs the CA certificates as PEM bytes (build it with Trust.{self.mode})"
            )
        try:
            x509.load_pem_x509_certificates(self.ca_pem)
        except ValueError as exc:
            raise ConfigError(f"no CA certificate in the PEM data: {exc}") from exc

    def _check_pins(self) -> None:
        """The fingerprints: at least one, each well-formed, in pinned mode; none in the others."""
        if self.mode != "pinned":
            _check(not self.pins, f"pins are for pinned trust, not {self.mode}")
            object.__setattr__(self, "pins", frozenset())  # an empty list or None given is kept as none
            return
        _check(
            isinstance(self.pins, Iterable) and not isinstance(self.pins, str | bytes),
            "pins must be a collection of fingerprints, not a string",
        )
        pins = frozenset(_fingerprint(text) for text in self.pins)
        _check(bool(pins), "pinned trust needs at least one fingerprint")
        object.__setattr__(self, "pins", pins)  # kept as the normalised hex digests

    @classmethod
    def encrypt_only(cls, certfile: str | None = None, keyfile: str | None = None) -> Trust:
        """Encryption without identity: any peer is accepted. Our certificate is self-signed
        and fresh, or loaded from PEM files to keep one fingerprint across restarts."""
        return cls("encrypt_only", certfile, keyfile)

    @classmethod
    def ca(cls, ca: str | bytes | os.PathLike[str], certfile: str, keyfile: str) -> Trust:
        """Every peer must present a certificate that chains to ``ca`` (a PEM file, or PEM
        text, with one or more CA certificates); we present ``certfile``, signed by it."""
        return cls("ca", certfile, keyfile, _read_pem(ca, "CA certificate"))

    @classmethod
    def private_ca(cls, directory: str | os.PathLike[str], name: str) -> Trust:
        """As ``ca``, with a network's own CA as ``qp2p ca init DIR`` and ``qp2p ca issue NAME``
        lay it out: ``DIR/ca.pem``, and our ``DIR/NAME.pem`` with its key ``DIR/NAME.key``."""
        folder = Path(directory)
        pem = _read_pem(folder / "ca.pem", "CA certificate")
        return cls("private_ca", str(folder / f"{name}.pem"), str(folder / f"{name}.key"), pem)

    @classmethod
    def pinned(
        cls, fingerprints: Iterable[str], certfile: str | None = None, keyfile: str | None = None
    ) -> Trust:
        """Only peers whose certificate's SHA-256 fingerprint is listed (hex, colons allowed)
        are accepted. Give our own certificate and key to keep our fingerprint across restarts."""
        return cls("pinned", certfile, keyfile, None, frozenset(fingerprints))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Settings of one ``Endpoint``. Times are in seconds, sizes in bytes.

    Raises ``ConfigError`` when a value is out of range or two values contradict each other.
    """

    local_ip: str = "127.0.0.1"
    local_port: int = 0
    idle_timeout: float = 30.0
    keep_alive_interval: float | None = 10.0
    connect_timeout: float = 10.0
    close_timeout: float = 2.0
    send_timeout: float | None = 60.0
    max_message_size: int = 64 * MiB
    max_datagram_size: int = MAX_DATAGRAM_SIZE  # the ceiling of path MTU discovery (1200: off)
    lanes: int = 4
    lane_threshold: int = 64 * KiB
    receive_window: int = 4 * MiB
    large_message_slots: int = 4
    max_connections: int = 1000
    # Handshakes peers started and have not finished: bounded apart from max_connections
    max_half_open: int = 100
    max_half_open_per_address: int = 8  # per IPv4 address or IPv6 /64
    retry_threshold: int | None = None  # without stateless_retry, Retry from this many (None: half)
    handshake_timeout: float = 5.0  # for a handshake a peer started (at most connect_timeout)
    memory_limit: int = 2 * GiB
    address_memory_limit: int | None = None
    peer_memory_limit: int | None = None
    max_incoming_streams: int = 64
    stateless_retry: bool = True
    # Session tickets: a returning peer resumes its TLS session (1-RTT, no 0-RTT data)
    session_tickets: bool = True
    max_session_tickets: int = 4096  # kept in memory, issued and received each
    session_tickets_per_address: int = 256  # issued to one IPv4 address or IPv6 /64
    session_ticket_lifetime: float = 7200.0  # from the full handshake that proved the identity
    socket_buffer_size: int = 4 * MiB
    trust: Trust = field(default_factory=Trust.encrypt_only)
    # Joining a network
    role: Role = Role.NODE
    client_fallback: bool = False
    hard_coded_contacts: tuple[tuple[str, int], ...] = ()
    bootstrap_cache_dir: str | None = None
    bootstrap_cache_size: int = 200
    bootstrap_cache_per_prefix: int = 4
    bootstrap_concurrency: int = 5
    bootstrap_timeout: float = 30.0
    min_connections: int = 5  # after bootstrap: nodes kept connected, lost ones redialled (0: off)
    control_timeout: float = 5.0
    external_ip: str | None = None
    external_port: int | None = None
    # NAT traversal
    forward_port: bool = False
    upnp_lease_duration: int = 120
    relay_max_circuits: int = 64
    relay_max_bytes: int = 256 * MiB
    relay_service: bool | None = None
    relay_circuits_per_peer: int = 4
    relay_bytes_per_peer: int = 64 * MiB
    relay_window: float = 60.0
    relay_idle_timeout: float = 30.0
    # Observability
    qlog_dir: str | None = None  # a qlog trace per QUIC connection goes there (docs/observability.md)
    qlog_memory_limit: int = 64 * MiB  # what traces not yet written hold, all together
    qlog_disk_limit: int = 1 * GiB  # what the endpoint's trace files take; then no more traces

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.local_ip)
        except ValueError:
            raise ConfigError(f"local_ip is not an IP address: {self.local_ip!r}") from None
        _check(0 <= self.local_port <= 0xFFFF, f"local_port out of range: {self.local_port}")
        _check(self.idle_timeout > 0, "idle_timeout must be positive")
        _check(
            self.keep_alive_interval is None or 0 < self.keep_alive_interval < self.idle_timeout,
            "keep_alive_interval must be positive and shorter than idle_timeout (or None)",
        )
        _check(self.connect_timeout > 0, "connect_timeout must be positive")
        _check(self.close_timeout >= 0, "close_timeout must not be negative")
        _check(self.send_timeout is None or self.send_timeout > 0, "send_timeout must be positive (or None)")
        _check(1 <= self.max_message_size <= 0xFFFFFFFF, "max_message_size must be 1 to 2**32 - 1")
        _check(
            MIN_DATAGRAM_SIZE <= self.max_datagram_size <= MAX_DATAGRAM_SIZE,
            f"max_datagram_size must be {MIN_DATAGRAM_SIZE} to {MAX_DATAGRAM_SIZE} "
            "(aioquic writes some lengths in two bytes and stalls above that)",
        )
        _check(1 <= self.lanes <= 64, "lanes must be 1 to 64")
        _check(1 <= self.lane_threshold <= 16 * MiB, "lane_threshold must be 1 byte to 16 MiB")
        _check(
            self.receive_window >= max(64 * KiB, 2 * self.lane_threshold),
            "receive_window must be at least 64 KiB and twice lane_threshold",
        )
        _check(1 <= self.large_message_slots <= 1024, "large_message_slots must be 1 to 1024")
        _check(self.max_connections >= 1, "max_connections must be at least 1")
        _check(self.memory_limit >= 16 * MiB, "memory_limit must be at least 16 MiB")
        for name in ("address_memory_limit", "peer_memory_limit"):
            value = getattr(self, name)
            _check(
                value is None or MiB <= value <= self.memory_limit,
                f"{name} must be 1 MiB to memory_limit (or None: memory_limit / {MEMORY_SHARES})",
            )
        _check(
            1 <= self.max_half_open_per_address <= self.max_half_open,
            "max_half_open_per_address must be at least 1 and at most max_half_open",
        )
        _check(
            self.retry_threshold is None or 0 <= self.retry_threshold <= self.max_half_open,
            "retry_threshold must be 0 to max_half_open (or None)",
        )
        _check(self.handshake_timeout > 0, "handshake_timeout must be positive")
        _check(
            self.lanes + self.large_message_slots <= self.max_incoming_streams <= 10_000,
            "max_incoming_streams must be at least lanes + large_message_slots, and at most 10000",
        )
        _check(
            1 <= self.session_tickets_per_address <= self.max_session_tickets,
            "session_tickets_per_address must be at least 1 and at most max_session_tickets",
        )
        _check(
            0 < self.session_ticket_lifetime <= MAX_TICKET_LIFETIME,
            f"session_ticket_lifetime must be positive and at most {MAX_TICKET_LIFETIME:.0f} s "
            "(the lifetime a ticket announces)",
        )
        _check(
            0 <= self.socket_buffer_size <= 1 << 30, "socket_buffer_size must be 0 (system default) to 1 GiB"
        )
        _check(isinstance(self.trust, Trust), "trust must be a qp2p.Trust")
        _check(isinstance(self.role, Role), "role must be a qp2p.Role")
        _check(
            self.relay_max_circuits >= 0 and self.relay_max_bytes >= 0, "relay limits must not be negative"
        )
        _check(self.relay_service in (None, True, False), "relay_service must be True, False or None")
        _check(
            self.relay_circuits_per_peer >= 1 and self.relay_bytes_per_peer >= 1,
            "relay_circuits_per_peer and relay_bytes_per_peer must be at least 1",
        )
        _check(
            self.relay_window > 0 and self.relay_idle_timeout > 0,
            "relay_window and relay_idle_timeout must be positive",
        )
        _check(4 <= self.upnp_lease_duration <= 86400, "upnp_lease_duration must be 4 s to a day")
        contacts = tuple(_contact(item) for item in self.hard_coded_contacts)
        object.__setattr__(self, "hard_coded_contacts", contacts)  # a list given is kept as a tuple
        _check(
            1 <= self.bootstrap_cache_size <= MAX_ENTRIES, f"bootstrap_cache_size must be 1 to {MAX_ENTRIES}"
        )
        _check(self.bootstrap_cache_per_prefix >= 1, "bootstrap_cache_per_prefix must be at least 1")
        _check(1 <= self.bootstrap_concurrency <= 100, "bootstrap_concurrency must be 1 to 100")
        _check(0 <= self.min_connections <= 100, "min_connections must be 0 to 100")
        _check(self.bootstrap_timeout > 0 and self.control_timeout > 0, "timeouts must be positive")
        if self.external_ip is not None:
            try:
                ipaddress.ip_address(self.external_ip)
            except ValueError:
                raise ConfigError(f"external_ip is not an IP address: {self.external_ip!r}") from None
        _check(
            self.external_port is None or 0 < self.external_port <= 0xFFFF,
            f"external_port out of range: {self.external_port}",
        )
        _check(self.qlog_memory_limit >= 64 * KiB, "qlog_memory_limit must be at least 64 KiB")
        _check(self.qlog_disk_limit >= 0, "qlog_disk_limit must not be negative")
        self._check_qlog_dir()

    def _check_qlog_dir(self) -> None:
        """The qlog folder: a path, made if it is missing (mode 0700: traces hold connection ids
        and stateless reset tokens), and writable, so that no endpoint learns only when its
        first connection ends that its traces cannot be written."""
        folder = self.qlog_dir
        if folder is None:
            return
        if isinstance(folder, os.PathLike):
            folder = os.fspath(folder)
            object.__setattr__(self, "qlog_dir", folder)  # a Path given is kept as a string
        _check(isinstance(folder, str) and folder != "", "qlog_dir must be a folder path (or None)")
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"qlog_dir: cannot make the folder {folder}: {exc}") from exc
        _check(os.access(folder, os.W_OK | os.X_OK), f"qlog_dir: the folder {folder} is not writable")

    def memory_limits(self) -> tuple[int, int, int]:
        """The memory an endpoint, a source address and a peer may hold, defaults filled in."""
        address = self.address_memory_limit or self.memory_limit // MEMORY_SHARES
        return self.memory_limit, address, self.peer_memory_limit or address

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Config:
        """A config from plain values: TOML's types, or strings as files and the environment hold them."""
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(values) - set(hints))
        _check(not unknown, f"unknown settings: {', '.join(unknown)}")
        return cls(**{name: _convert(name, hints[name], value) for name, value in values.items()})

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Config:
        """A config from a TOML file: the keys of a ``[qp2p]`` table, or of the top level."""
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except (OSError, ValueError) as exc:  # ValueError: not TOML, or not UTF-8
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        table = data.get("qp2p", data)
        try:
            _check(isinstance(table, dict), "the qp2p entry must be a table")
            return cls.from_mapping(table)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str = "QP2P_") -> Config:
        """A config from ``QP2P_<FIELD>`` variables (``QP2P_LOCAL_PORT=4000``); others keep defaults.

        Any other variable with the prefix is refused as a misspelt setting, but for the
        switches qp2p's build, import and tests read (``QP2P_NO_EXTENSIONS`` and the like).
        """
        env = os.environ if environ is None else environ
        names = {prefix + f.name.upper(): f.name for f in dataclasses.fields(cls)}
        unknown = sorted(
            key
            for key in env
            if key.startswith(prefix) and key not in names and key[len(prefix) :] not in _NOT_SETTINGS
        )
        _check(not unknown, f"unknown settings: {', '.join(unknown)}")
        return cls.from_mapping({names[key]: env[key] for key in env if key in names})


# Variables named like settings that are not: read by setup.py, qp2p._speedups and conftest.py.
_NOT_SETTINGS = frozenset({"NO_EXTENSIONS", "REQUIRE_EXTENSIONS", "CYTHON_TRACING", "HYPOTHESIS_PROFILE"})
# The spellings of a boolean in a file or a variable, in any letter case; nothing else is one.
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _contact(item: Any) -> tuple[str, int]:
    """A contact as ``(ip, port)``, from a pair or a ``"host:port"`` / ``"[v6]:port"`` string."""
    if isinstance(item, str):
        text_host, _, text_port = item.rpartition(":")
        item = (text_host.strip("[]"), text_port)
    try:
        host, port_text = item
        ipaddress.ip_address(host)
        port = int(port_text)
    except (TypeError, ValueError):
        raise ConfigError(f"not a contact address (IP, port): {item!r}") from None
    _check(0 < port <= 0xFFFF, f"contact port out of range: {port}")
    return str(host), port


def _convert(name: str, hint: Any, value: Any) -> Any:
    """``value`` as field ``name`` takes it: strings are parsed, and nothing is coerced that
    would change what was meant (4.5 is no integer, "ture" no boolean)."""
    if name in _SPECIAL:
        return _SPECIAL[name](value)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if type(None) in options and _means_none(value):
        return None
    (kind,) = (option for option in options if option is not type(None))
    return _READERS[kind](name, value)


def _means_none(value: Any) -> bool:
    """None itself, or how a file or a variable writes it: an empty string or "none"."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))


def _boolean(name: str, value: Any) -> bool:
    """A bool, or one of its documented spellings (``_TRUE``, ``_FALSE``)."""
    word = value.strip().lower() if isinstance(value, str) else value
    if value is True or word in _TRUE:
        return True
    if value is False or word in _FALSE:
        return False
    raise ConfigError(f"{name}: {value!r} is not a boolean; write true or false (or yes/no, on/off, 1/0)")


def _integer(name: str, value: Any) -> int:
    """An int, or a string of one; not a bool or a float, which ``int()`` would quietly change."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value)
    _refuse(name, value, "an integer")


def _number(name: str, value: Any) -> float:
    """A finite float from an int, a float or a string of one; not a bool."""
    number = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number):
        return float(number)
    _refuse(name, value, "a finite number")


def _text(name: str, value: Any) -> str:
    """A string as it is; a number given for a path or an address is a mistake."""
    return value if isinstance(value, str) else _refuse(name, value, "a string")


def _refuse(name: str, value: Any, kind: str) -> typing.NoReturn:
    """Raise the one message every reader gives: the field, the value as written, what it must be."""
    raise ConfigError(f"{name}: {value!r} is not {kind}")


def _role(value: Any) -> Role:
    """A ``Role``, or its value in any letter case."""
    try:
        return value if isinstance(value, Role) else Role(value.strip().lower())
    except (AttributeError, ValueError):
        raise ConfigError(f"role must be one of {[r.value for r in Role]}, got {value!r}") from None


def _contacts(value: Any) -> tuple[Any, ...]:
    """A list of contacts, or a comma-separated string of them; each is parsed by ``_contact``."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    raise ConfigError(f"hard_coded_contacts: {value!r} is neither a list of contacts nor a string of them")


def _trust(value: Any) -> Trust:
    """A ``Trust`` object: a file or a variable cannot hold one, and must not be dropped unread."""
    if isinstance(value, Trust):
        return value
    raise ConfigError(
        f"trust: {value!r} cannot be read as text; build a qp2p.Trust in code and pass it "
        "with config.replace(trust=...)"
    )


_SPECIAL: dict[str, Callable[[Any], Any]] = {
    "trust": _trust,
    "role": _role,
    "hard_coded_contacts": _contacts,
}
_READERS: dict[type, Callable[[str, Any], Any]] = {
    bool: _boolean,
    int: _integer,
    float: _number,
    str: _text,
}
