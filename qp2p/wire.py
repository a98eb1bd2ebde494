"""The messages of wire format version 1 (``docs/protocol.md`` is normative), on top of framing.

A frame's flag says what its body is: a user message (raw bytes), a control message (a
little-endian tagged value), or a request or response (a big-endian u32 request id, then
raw bytes). Sans-IO: bytes in, message objects out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from qp2p._speedups import framing
from qp2p.errors import (
    EmptyMessage,
    MalformedMessage,
    TruncatedFrame,
    TruncatedMessage,
    UnknownFlag,
    UnknownTag,
)

__all__ = (
    "ANY_PEER",
    "Address",
    "ControlMessage",
    "EchoRequest",
    "EchoResponse",
    "Hello",
    "Credit",
    "NatReport",
    "PUNCH_FAN_OUT",
    "PUNCH_PLAIN",
    "PUNCH_PROBE",
    "StreamCancelled",
    "PeersRequest",
    "PeersResponse",
    "Punch",
    "PunchFailed",
    "PunchRequest",
    "RelayClose",
    "RelayData",
    "RelayIncoming",
    "RelayOpen",
    "Request",
    "Response",
    "UserMessage",
    "VerificationRequest",
    "VerificationResponse",
    "WireMessage",
    "decode",
    "decode_frame",
    "encode",
)

Address: TypeAlias = tuple[str, int]

_U32_LE = struct.Struct("<I")
_U16_LE = struct.Struct("<H")
_REQUEST_ID = struct.Struct(">I")
FINGERPRINT_SIZE = 32
# A request's peer id when any peer at the given address will do.
ANY_PEER = "00" * FINGERPRINT_SIZE
_FAMILY_IPV4 = 0
_FAMILY_IPV6 = 1


@dataclass(frozen=True, slots=True)
class UserMessage:
    """Application bytes; never empty."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Request:
    """Application bytes that expect a ``Response`` carrying the same ``request_id``."""

    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to the ``Request`` with the same ``request_id``; ``data`` may be empty."""

    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class EchoRequest:
    """Asks a peer which address our packets come from."""

    TAG: ClassVar[int] = 0
    LAYOUT: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class EchoResponse:
    """The address the peer sees our packets come from."""

    TAG: ClassVar[int] = 1
    LAYOUT: ClassVar[tuple[str, ...]] = ("address",)
    addr: Address


@dataclass(frozen=True, slots=True)
class VerificationRequest:
    """Asks a peer to connect back to ``addr``, to prove it is reachable."""

    TAG: ClassVar[int] = 2
    LAYOUT: ClassVar[tuple[str, ...]] = ("address",)
    addr: Address


@dataclass(frozen=True, slots=True)
class VerificationResponse:
    """Whether the connection back succeeded."""

    TAG: ClassVar[int] = 3
    LAYOUT: ClassVar[tuple[str, ...]] = ("bool",)
    reachable: bool


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each side sends on a new connection: who it is and what it accepts."""

    TAG: ClassVar[int] = 16
    LAYOUT: ClassVar[tuple[str, ...]] = ("u64", "u32", "u32", "u64", "u16", "bool")
    endpoint_id: int
    max_message_size: int
    lane_threshold: int
    receive_window: int
    large_message_slots: int
    node: bool = True  # a node accepts connections; a client does not, and is never cached


@dataclass(frozen=True, slots=True)
class Credit:
    """The sender may send until its count of charged units reaches ``limit``."""

    TAG: ClassVar[int] = 17
    LAYOUT: ClassVar[tuple[str, ...]] = ("u64",)
    limit: int


@dataclass(frozen=True, slots=True)
class StreamCancelled:
    """The sender reset ``stream_id`` after charging ``units`` for it; settles the credit."""

    TAG: ClassVar[int] = 18
    LAYOUT: ClassVar[tuple[str, ...]] = ("u64", "u64")
    stream_id: int
    units: int


@dataclass(frozen=True, slots=True)
class PeersRequest:
    """Asks for up to ``limit`` nodes the peer knows to be reachable."""

    TAG: ClassVar[int] = 19
    LAYOUT: ClassVar[tuple[str, ...]] = ("u16",)
    limit: int


@dataclass(frozen=True, slots=True)
class PeersResponse:
    """Reachable nodes: each an address and the SHA-256 fingerprint (hex) of its certificate."""

    TAG: ClassVar[int] = 20
    LAYOUT: ClassVar[tuple[str, ...]] = ("peers",)
    peers: tuple[tuple[Address, str], ...]


@dataclass(frozen=True, slots=True)
class PunchRequest:
    """Asks a node both peers are connected to for a hole punch to the peer it reaches at
    ``target`` (and whose peer id is ``target_id``, unless that is ``ANY_PEER``)."""

    TAG: ClassVar[int] = 21
    LAYOUT: ClassVar[tuple[str, ...]] = ("address", "fingerprint", "u16")
    target: Address
    target_id: str = ANY_PEER
    port: int = 0  # nonzero: punch us at this port of the address you see us at (a fresh socket)


@dataclass(frozen=True, slots=True)
class Punch:
    """From the coordinating node to each side: in ``delay_ms``, open a path to the peer
    ``peer_id``, which the coordinator sees at ``peer``, the way ``mode`` says (``PUNCH_*``).
    ``padding`` (ignored) is how a coordinator pays for a punch the receiver did not ask for
    (docs/protocol.md, section 7)."""

    TAG: ClassVar[int] = 22
    LAYOUT: ClassVar[tuple[str, ...]] = ("address", "fingerprint", "u32", "u16", "blob")
    peer: Address
    peer_id: str
    delay_ms: int
    mode: int = 0  # PUNCH_PLAIN, PUNCH_FAN_OUT or PUNCH_PROBE
    padding: bytes = b""


# How a Punch opens the path: the plain way (spray, then dial); from many fresh ports at once
# (the side behind a symmetric NAT); or also probing many ports of the peer's address (the
# side that faces it). Unknown modes read as plain.
PUNCH_PLAIN = 0
PUNCH_FAN_OUT = 1
PUNCH_PROBE = 2


@dataclass(frozen=True, slots=True)
class NatReport:
    """To a node we may ask to coordinate: how our NAT maps and filters, as we learned it
    (``qp2p.nat.behaviour.NatBehaviour.flags``). A claim, used only to choose how to punch."""

    TAG: ClassVar[int] = 28
    LAYOUT: ClassVar[tuple[str, ...]] = ("u16",)
    nat: int


@dataclass(frozen=True, slots=True)
class PunchFailed:
    """The coordinating node has no connection to ``target``."""

    TAG: ClassVar[int] = 23
    LAYOUT: ClassVar[tuple[str, ...]] = ("address",)
    target: Address


@dataclass(frozen=True, slots=True)
class RelayOpen:
    """Asks a node to relay circuit ``circuit`` (ours on this connection) to the peer it
    reaches at ``target`` (and whose peer id is ``target_id``, unless that is ``ANY_PEER``)."""

    TAG: ClassVar[int] = 24
    LAYOUT: ClassVar[tuple[str, ...]] = ("address", "fingerprint", "u32")
    target: Address
    target_id: str
    circuit: int


@dataclass(frozen=True, slots=True)
class RelayIncoming:
    """From the relay: the peer ``peer_id``, which the relay sees at ``peer`` (a hint, never
    an identity), reaches us through circuit ``circuit``."""

    TAG: ClassVar[int] = 25
    LAYOUT: ClassVar[tuple[str, ...]] = ("address", "fingerprint", "u32")
    peer: Address
    peer_id: str
    circuit: int


@dataclass(frozen=True, slots=True)
class RelayData:
    """One QUIC datagram of the end-to-end connection the circuit carries (ciphertext to the relay)."""

    TAG: ClassVar[int] = 26
    LAYOUT: ClassVar[tuple[str, ...]] = ("u32", "blob")
    circuit: int
    datagram: bytes


@dataclass(frozen=True, slots=True)
class RelayClose:
    """The circuit is over (or was refused)."""

    TAG: ClassVar[int] = 27
    LAYOUT: ClassVar[tuple[str, ...]] = ("u32",)
    circuit: int


ControlMessage: TypeAlias = (
    EchoRequest
    | EchoResponse
    | VerificationRequest
    | VerificationResponse
    | Hello
    | Credit
    | StreamCancelled
    | PeersRequest
    | PeersResponse
    | PunchRequest
    | Punch
    | PunchFailed
    | NatReport
    | RelayOpen
    | RelayIncoming
    | RelayData
    | RelayClose
)
WireMessage: TypeAlias = UserMessage | Request | Response | ControlMessage
CONTROL_MESSAGES: tuple[type[ControlMessage], ...] = (
    EchoRequest,
    EchoResponse,
    VerificationRequest,
    VerificationResponse,
    Hello,
    Credit,
    StreamCancelled,
    PeersRequest,
    PeersResponse,
    PunchRequest,
    Punch,
    PunchFailed,
    NatReport,
    RelayOpen,
    RelayIncoming,
    RelayData,
    RelayClose,
)
_BY_TAG: dict[int, type[ControlMessage]] = {cls.TAG: cls for cls in CONTROL_MESSAGES}
_SCALARS = {"u16": struct.Struct("<H"), "u32": struct.Struct("<I"), "u64": struct.Struct("<Q")}


def _encode_address(addr: Address) -> bytes:
    host, port = addr[0], addr[1]
    ip = ipaddress.ip_address(host.partition("%")[0])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return _U32_LE.pack(family) + ip.packed + _U16_LE.pack(port)


def _encode_fingerprint(fingerprint: str) -> bytes:
    digest = bytes.fromhex(fingerprint)
    if len(digest) != FINGERPRINT_SIZE:
        raise ValueError(f"not a SHA-256 fingerprint: {fingerprint!r}")
    return digest


def _encode_field(kind: str, value: Any) -> bytes:
    if kind in _SCALARS:
        return _SCALARS[kind].pack(value)
    if kind == "bool":
        return b"\x01" if value else b"\x00"
    if kind == "address":
        return _encode_address(value)
    if kind == "blob":
        return _U16_LE.pack(len(value)) + bytes(value)
    if kind == "fingerprint":
        return _encode_fingerprint(value)
    peers: tuple[tuple[Address, str], ...] = value  # "peers"
    return _U16_LE.pack(len(peers)) + b"".join(_encode_address(a) + _encode_fingerprint(f) for a, f in peers)


def _encode_control(msg: ControlMessage) -> bytes:
    values = [getattr(msg, field.name) for field in dataclasses.fields(msg)]
    fields = (_encode_field(kind, value) for kind, value in zip(msg.LAYOUT, values, strict=True))
    return _U32_LE.pack(msg.TAG) + b"".join(fields)


def encode(msg: WireMessage) -> bytes:
    """The whole frame, header included, for ``msg``."""
    if isinstance(msg, UserMessage):
        return framing.encode_frame(framing.FLAG_USER, msg.data)
    if isinstance(msg, Request | Response):
        flag = framing.FLAG_REQUEST if isinstance(msg, Request) else framing.FLAG_RESPONSE
        return framing.encode_frame(flag, _REQUEST_ID.pack(msg.request_id) + msg.data)
    return framing.encode_frame(framing.FLAG_CONTROL, _encode_control(msg))


class _Reader:
    """Reads the fields of one control body in order; every short read is ``TruncatedMessage``."""

    __slots__ = ("_body", "_pos")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._pos = 0

    def take(self, size: int, what: str) -> bytes:
        end = self._pos + size
        if end > len(self._body):
            raise TruncatedMessage(f"control message ends inside its {what}")
        chunk = self._body[self._pos : end]
        self._pos = end
        return chunk

    def scalar(self, kind: str) -> int:
        value: int = _SCALARS[kind].unpack(self.take(_SCALARS[kind].size, kind))[0]
        return value

    def address(self) -> Address:
        family = self.scalar("u32")
        if family == _FAMILY_IPV4:
            host = socket.inet_ntop(socket.AF_INET, self.take(4, "IPv4 address"))
        elif family == _FAMILY_IPV6:
            # As the socket layer writes addresses (``::ffff:10.0.0.1``), so a peer's claim and a
            # packet's source compare equal; ``ipaddress`` changed its text for these in 3.13.
            host = socket.inet_ntop(socket.AF_INET6, self.take(16, "IPv6 address"))
        else:
            raise MalformedMessage(f"unknown address family {family}")
        return host, self.scalar("u16")

    def fingerprint(self) -> str:
        return self.take(FINGERPRINT_SIZE, "fingerprint").hex()

    def field(self, kind: str) -> Any:
        if kind in _SCALARS:
            return self.scalar(kind)
        if kind == "bool":
            value = self.take(1, "boolean")[0]
            if value > 1:
                raise MalformedMessage(f"boolean byte is {value}, not 0 or 1")
            return value == 1
        if kind == "address":
            return self.address()
        if kind == "blob":
            return self.take(self.scalar("u16"), "blob")
        if kind == "fingerprint":
            return self.fingerprint()
        count = self.scalar("u16")  # "peers"
        return tuple((self.address(), self.fingerprint()) for _ in range(count))

    def end(self) -> None:
        left = len(self._body) - self._pos
        if left:
            raise MalformedMessage(f"{left} bytes after the end of the control message")


def _decode_control(body: bytes) -> ControlMessage:
    reader = _Reader(body)
    tag = reader.scalar("u32")
    cls = _BY_TAG.get(tag)
    if cls is None:
        raise UnknownTag(f"unknown control tag {tag}")
    msg = cls(*(reader.field(kind) for kind in cls.LAYOUT))
    reader.end()
    return msg


def decode(flag: int, body: bytes) -> WireMessage:
    """The message in a frame body, given the frame's flag (as ``FrameDecoder`` returns them)."""
    if flag == framing.FLAG_USER:
        if not body:
            raise EmptyMessage("empty user message")
        return UserMessage(body)
    if flag == framing.FLAG_REQUEST or flag == framing.FLAG_RESPONSE:
        if len(body) < _REQUEST_ID.size:
            raise TruncatedMessage("request or response body shorter than its request id")
        (request_id,) = _REQUEST_ID.unpack_from(body)
        cls = Request if flag == framing.FLAG_REQUEST else Response
        return cls(request_id, body[_REQUEST_ID.size :])
    if flag == framing.FLAG_CONTROL:
        return _decode_control(body)
    raise UnknownFlag(f"unknown frame flag {flag}")


def decode_frame(frame: bytes, max_size: int = framing.MAX_DATA_LEN) -> WireMessage:
    """The message in one complete frame; anything short of or beyond one frame is an error."""
    decoder = framing.FrameDecoder(max_size)
    decoder.feed(frame)
    got = decoder.next_frame()
    if got is None:
        raise TruncatedFrame(f"{len(frame)} bytes hold no complete frame")
    if decoder.buffered:
        raise MalformedMessage(f"{decoder.buffered} bytes after the end of the frame")
    return decode(*got)
