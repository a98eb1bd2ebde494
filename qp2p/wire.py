"""The messages of wire format version 1 (``docs/protocol.md`` is normative), on top of framing.

A frame's flag says what its body is: a user message (raw bytes), a control message (a
little-endian tagged value), or a request or response (a big-endian u32 request id, then
raw bytes). Sans-IO: bytes in, message objects out.
"""

from __future__ import annotations

import ipaddress
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
    "Address",
    "ControlMessage",
    "EchoRequest",
    "EchoResponse",
    "Hello",
    "Credit",
    "StreamCancelled",
    "PeersRequest",
    "PeersResponse",
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

_U64_LE = struct.Struct("<Q")
_U32_LE = struct.Struct("<I")
_U16_LE = struct.Struct("<H")
_REQUEST_ID = struct.Struct(">I")
_HELLO = struct.Struct("<QIIQHB")
_PEER_COUNT = struct.Struct("<H")
FINGERPRINT_SIZE = 32
_STREAM_CANCELLED = struct.Struct("<QQ")
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


@dataclass(frozen=True, slots=True)
class EchoResponse:
    """The address the peer sees our packets come from."""

    TAG: ClassVar[int] = 1
    addr: Address


@dataclass(frozen=True, slots=True)
class VerificationRequest:
    """Asks a peer to connect back to ``addr``, to prove it is reachable."""

    TAG: ClassVar[int] = 2
    addr: Address


@dataclass(frozen=True, slots=True)
class VerificationResponse:
    """Whether the connection back succeeded."""

    TAG: ClassVar[int] = 3
    reachable: bool


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each side sends on a new connection: who it is and what it accepts."""

    TAG: ClassVar[int] = 16
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
    limit: int


@dataclass(frozen=True, slots=True)
class StreamCancelled:
    """The sender reset ``stream_id`` after charging ``units`` for it; settles the credit."""

    TAG: ClassVar[int] = 18
    stream_id: int
    units: int


@dataclass(frozen=True, slots=True)
class PeersRequest:
    """Asks for up to ``limit`` nodes the peer knows to be reachable."""

    TAG: ClassVar[int] = 19
    limit: int


@dataclass(frozen=True, slots=True)
class PeersResponse:
    """Reachable nodes: each an address and the SHA-256 fingerprint (hex) of its certificate."""

    TAG: ClassVar[int] = 20
    peers: tuple[tuple[Address, str], ...]


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
)
WireMessage: TypeAlias = UserMessage | Request | Response | ControlMessage


def _encode_address(addr: Address) -> bytes:
    host, port = addr[0], addr[1]
    ip = ipaddress.ip_address(host.partition("%")[0])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return _U32_LE.pack(family) + ip.packed + _U16_LE.pack(port)


def _encode_control(msg: ControlMessage) -> bytes:
    tag = _U32_LE.pack(msg.TAG)
    if isinstance(msg, EchoRequest):
        return tag
    if isinstance(msg, EchoResponse | VerificationRequest):
        return tag + _encode_address(msg.addr)
    if isinstance(msg, VerificationResponse):
        return tag + bytes((1 if msg.reachable else 0,))
    if isinstance(msg, Hello):
        return tag + _HELLO.pack(
            msg.endpoint_id,
            msg.max_message_size,
            msg.lane_threshold,
            msg.receive_window,
            msg.large_message_slots,
            1 if msg.node else 0,
        )
    if isinstance(msg, Credit):
        return tag + _U64_LE.pack(msg.limit)
    if isinstance(msg, PeersRequest):
        return tag + _PEER_COUNT.pack(msg.limit)
    if isinstance(msg, PeersResponse):
        parts = [tag, _PEER_COUNT.pack(len(msg.peers))]
        for addr, fingerprint in msg.peers:
            digest = bytes.fromhex(fingerprint)
            if len(digest) != FINGERPRINT_SIZE:
                raise ValueError(f"not a SHA-256 fingerprint: {fingerprint!r}")
            parts += [_encode_address(addr), digest]
        return b"".join(parts)
    return tag + _STREAM_CANCELLED.pack(msg.stream_id, msg.units)


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

    def unpack(self, layout: struct.Struct, what: str) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size, what))

    def u32(self, what: str) -> int:
        value: int = self.unpack(_U32_LE, what)[0]
        return value

    def address(self) -> Address:
        family = self.u32("address family")
        if family == _FAMILY_IPV4:
            host = str(ipaddress.IPv4Address(self.take(4, "IPv4 address")))
        elif family == _FAMILY_IPV6:
            host = str(ipaddress.IPv6Address(self.take(16, "IPv6 address")))
        else:
            raise MalformedMessage(f"unknown address family {family}")
        port: int = _U16_LE.unpack(self.take(2, "port"))[0]
        return host, port

    def fingerprint(self) -> str:
        return self.take(FINGERPRINT_SIZE, "fingerprint").hex()

    def end(self) -> None:
        left = len(self._body) - self._pos
        if left:
            raise MalformedMessage(f"{left} bytes after the end of the control message")


def _decode_control(body: bytes) -> ControlMessage:
    reader = _Reader(body)
    tag = reader.u32("tag")
    msg: ControlMessage
    if tag == EchoRequest.TAG:
        msg = EchoRequest()
    elif tag == EchoResponse.TAG:
        msg = EchoResponse(reader.address())
    elif tag == VerificationRequest.TAG:
        msg = VerificationRequest(reader.address())
    elif tag == VerificationResponse.TAG:
        value = reader.take(1, "verdict")[0]
        if value > 1:
            raise MalformedMessage(f"boolean byte is {value}, not 0 or 1")
        msg = VerificationResponse(value == 1)
    elif tag == Hello.TAG:
        endpoint_id, max_size, threshold, window, slots, node = reader.unpack(_HELLO, "hello")
        if node > 1:
            raise MalformedMessage(f"boolean byte is {node}, not 0 or 1")
        msg = Hello(endpoint_id, max_size, threshold, window, slots, node == 1)
    elif tag == Credit.TAG:
        msg = Credit(reader.unpack(_U64_LE, "credit limit")[0])
    elif tag == StreamCancelled.TAG:
        msg = StreamCancelled(*reader.unpack(_STREAM_CANCELLED, "stream cancellation"))
    elif tag == PeersRequest.TAG:
        msg = PeersRequest(reader.unpack(_PEER_COUNT, "peer count")[0])
    elif tag == PeersResponse.TAG:
        (count,) = reader.unpack(_PEER_COUNT, "peer count")
        msg = PeersResponse(
            tuple(
                (reader.address(), reader.take(FINGERPRINT_SIZE, "fingerprint").hex()) for _ in range(count)
            )
        )
    else:
        raise UnknownTag(f"unknown control tag {tag}")
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
