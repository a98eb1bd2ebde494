"""A look at a QUIC packet's clear-text header, enough to route a datagram without decrypting it.

Follows RFC 8999 (invariants) and RFC 9000/9369 (versions 1 and 2). Short headers carry no
connection-id length, so the caller gives the one length all its connection ids share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qp2p.errors import MalformedPacket

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = (
    "HANDSHAKE",
    "INITIAL",
    "MAX_CID_LENGTH",
    "ONE_RTT",
    "QUIC_V1",
    "QUIC_V2",
    "RETRY",
    "VERSION_NEGOTIATION",
    "ZERO_RTT",
    "PacketHeader",
    "peek",
)

INITIAL = 0
ZERO_RTT = 1
HANDSHAKE = 2
RETRY = 3
VERSION_NEGOTIATION = 4
ONE_RTT = 5

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
MAX_CID_LENGTH = 20
_RETRY_TAG_SIZE = 16
# The two type bits of a long header, per version.
_V1_TYPES = (INITIAL, ZERO_RTT, HANDSHAKE, RETRY)
_V2_TYPES = (RETRY, INITIAL, ZERO_RTT, HANDSHAKE)


@dataclass(frozen=True, slots=True)
class PacketHeader:
    """What a datagram's first packet says in clear text.

    ``version`` is None for short headers; ``packet_type`` is None for long headers of a
    version we do not speak (only the invariant fields are read then); ``token`` is the
    token of an Initial or of a Retry, else empty.
    """

    is_long_header: bool
    version: int | None
    packet_type: int | None
    destination_cid: bytes
    source_cid: bytes
    token: bytes


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise MalformedPacket("packet truncated inside a length field")
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > end:
        raise MalformedPacket("packet truncated inside a length field")
    value = first & 0x3F
    for i in range(pos + 1, pos + size):
        value = (value << 8) | data[i]
    return value, pos + size


def _cid(data: memoryview, pos: int, end: int, what: str) -> tuple[bytes, int]:
    if pos >= end:
        raise MalformedPacket(f"long header truncated before the {what} connection id")
    length = data[pos]
    if length > MAX_CID_LENGTH:
        raise MalformedPacket(f"{what} connection id of {length} bytes exceeds {MAX_CID_LENGTH}")
    pos += 1
    if pos + length > end:
        raise MalformedPacket(f"long header truncated inside the {what} connection id")
    return bytes(data[pos : pos + length]), pos + length


def peek(datagram: Buffer, cid_length: int) -> PacketHeader:
    """The header of the first packet in ``datagram``; ``MalformedPacket`` for anything else."""
    if cid_length < 0 or cid_length > MAX_CID_LENGTH:
        raise ValueError(f"cid_length must be between 0 and {MAX_CID_LENGTH}, got {cid_length}")
    data = memoryview(datagram)
    end = data.nbytes
    if end == 0:
        raise MalformedPacket("empty datagram")
    first = data[0]
    if not first & 0x80:
        if not first & 0x40:
            raise MalformedPacket("fixed bit is zero")
        if end < 1 + cid_length:
            raise MalformedPacket("short header shorter than its connection id")
        return PacketHeader(False, None, ONE_RTT, bytes(data[1 : 1 + cid_length]), b"", b"")
    if end < 5:
        raise MalformedPacket("long header truncated before its version")
    version = int.from_bytes(data[1:5], "big")
    dcid, pos = _cid(data, 5, end, "destination")
    scid, pos = _cid(data, pos, end, "source")
    if version == 0:
        return PacketHeader(True, 0, VERSION_NEGOTIATION, dcid, scid, b"")
    if version != QUIC_V1 and version != QUIC_V2:
        return PacketHeader(True, version, None, dcid, scid, b"")
    if not first & 0x40:
        raise MalformedPacket("fixed bit is zero")
    bits = (first >> 4) & 3
    packet_type = _V1_TYPES[bits] if version == QUIC_V1 else _V2_TYPES[bits]
    token = b""
    if packet_type == RETRY:
        if end - pos < _RETRY_TAG_SIZE:
            raise MalformedPacket("retry packet shorter than its integrity tag")
        token = bytes(data[pos : end - _RETRY_TAG_SIZE])
    else:
        if packet_type == INITIAL:
            token_len, pos = _varint(data, pos, end)
            if token_len > end - pos:
                raise MalformedPacket("initial packet truncated inside its token")
            token = bytes(data[pos : pos + token_len])
            pos += token_len
        length, pos = _varint(data, pos, end)
        if length > end - pos:
            raise MalformedPacket("packet length exceeds the datagram")
    return PacketHeader(True, version, packet_type, dcid, scid, token)
