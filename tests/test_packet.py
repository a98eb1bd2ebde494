"""The clear-text header peek used to route datagrams, checked against aioquic's own parser."""

from __future__ import annotations

from types import ModuleType

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import (
    QuicProtocolVersion,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from hypothesis import given
from hypothesis import strategies as st

from qp2p import errors

DCID = bytes.fromhex("8394c8f03e515708")
SCID = bytes.fromhex("f067a5502a4262b5")


def assert_matches_aioquic(packet: ModuleType, datagram: bytes) -> None:
    ours = packet.peek(datagram, 8)
    theirs = pull_quic_header(Buffer(data=datagram), host_cid_length=8)
    assert ours.is_long_header == (theirs.version is not None)
    assert ours.version == theirs.version
    assert ours.packet_type == theirs.packet_type.value
    assert ours.destination_cid == theirs.destination_cid
    assert ours.source_cid == theirs.source_cid
    assert ours.token == theirs.token


def coalesced_packets(datagram: bytes) -> list[bytes]:
    """Each packet of a datagram, through to the datagram's end, as aioquic delimits them."""
    starts, offset = [], 0
    while offset < len(datagram) and datagram[offset] != 0:  # zeros after the last packet are padding
        starts.append(offset)
        offset += pull_quic_header(Buffer(data=datagram[offset:]), host_cid_length=8).packet_length
    return [datagram[start:] for start in starts]


def test_real_handshake_and_stream_traffic(packet: ModuleType, quic_traffic: list[bytes]) -> None:
    kinds = set()
    for datagram in quic_traffic:
        for rest in coalesced_packets(datagram):
            assert_matches_aioquic(packet, rest)
            kinds.add(packet.peek(rest, 8).packet_type)
    assert kinds == {packet.INITIAL, packet.HANDSHAKE, packet.ONE_RTT}


@pytest.mark.parametrize("version", [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2])
def test_retry(packet: ModuleType, version: int) -> None:
    datagram = encode_quic_retry(version, SCID, DCID, b"odcid123", b"TOKEN-BYTES")
    header = packet.peek(datagram, 8)
    assert (header.packet_type, header.token, header.version) == (packet.RETRY, b"TOKEN-BYTES", version)
    assert_matches_aioquic(packet, datagram)


def test_version_negotiation(packet: ModuleType) -> None:
    datagram = encode_quic_version_negotiation(SCID, DCID, [1, 0x6B3343CF])
    header = packet.peek(datagram, 8)
    assert (header.version, header.packet_type) == (0, packet.VERSION_NEGOTIATION)
    assert (header.destination_cid, header.source_cid) == (DCID, SCID)


def long_header(first: int, version: int, dcid: bytes = DCID, scid: bytes = SCID, rest: bytes = b"") -> bytes:
    return (
        bytes([first])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + rest
    )


def test_initial_token_and_varints(packet: ModuleType) -> None:
    token = bytes(range(70))
    # token length 70 as a 2-byte varint, then a 4-byte varint length of 3
    datagram = long_header(0xC0, 1, rest=b"\x40\x46" + token + b"\x80\x00\x00\x03" + b"abc")
    header = packet.peek(datagram, 8)
    assert (header.packet_type, header.token) == (packet.INITIAL, token)
    assert_matches_aioquic(packet, datagram)


def test_version_2_type_bits(packet: ModuleType) -> None:
    # In QUIC v2 the long-header type bits 01 mean Initial and 00 mean Retry.
    assert packet.peek(long_header(0xD0, packet.QUIC_V2, rest=b"\x00\x01z"), 8).packet_type == packet.INITIAL
    assert packet.peek(long_header(0xC0, packet.QUIC_V2, rest=bytes(16)), 8).packet_type == packet.RETRY
    assert packet.peek(long_header(0xE0, packet.QUIC_V2, rest=b"\x01z"), 8).packet_type == packet.ZERO_RTT


def test_unknown_version_reads_only_invariant_fields(packet: ModuleType) -> None:
    header = packet.peek(long_header(0x80, 0x1A2A3A4A, rest=b"\xff" * 3), 8)
    assert (header.version, header.packet_type, header.token) == (0x1A2A3A4A, None, b"")
    assert (header.destination_cid, header.source_cid) == (DCID, SCID)


def test_short_header(packet: ModuleType) -> None:
    header = packet.peek(b"\x41" + DCID + b"payload", 8)
    assert (header.is_long_header, header.version, header.packet_type) == (False, None, packet.ONE_RTT)
    assert (header.destination_cid, header.source_cid, header.token) == (DCID, b"", b"")
    assert packet.peek(b"\x40", 0).destination_cid == b""


def test_results_compare_and_hash_by_value(packet: ModuleType) -> None:
    a, b = packet.peek(b"\x41" + DCID, 8), packet.peek(bytearray(b"\x41" + DCID), 8)
    assert a == b and hash(a) == hash(b) and a != packet.peek(b"\x41" + SCID, 8)
    assert repr(a).startswith("PacketHeader(is_long_header=False, version=None")


MALFORMED = [
    pytest.param(b"", id="empty-datagram"),
    pytest.param(b"\x00", id="one-byte-fixed-bit-zero"),
    pytest.param(b"\x40", id="one-byte-short-header"),
    pytest.param(b"\xc0", id="one-byte-long-header"),
    pytest.param(b"\x41" + DCID[:7], id="short-header-truncated-cid"),
    pytest.param(b"\x01" + DCID, id="short-header-fixed-bit-zero"),
    pytest.param(b"\xc0\x00\x00\x00", id="truncated-version"),
    pytest.param(b"\xc0\x00\x00\x00\x01", id="no-dcid-length"),
    pytest.param(b"\xc0\x00\x00\x00\x01\xff" + bytes(255) + b"\x00\x00\x00", id="claims-255-byte-cid"),
    pytest.param(b"\xc0\x00\x00\x00\x01\xff", id="claims-255-byte-cid-truncated"),
    pytest.param(long_header(0xC0, 1, dcid=bytes(21)), id="21-byte-dcid"),
    pytest.param(long_header(0xC0, 1, scid=bytes(21)), id="21-byte-scid"),
    pytest.param(long_header(0xC0, 1)[:10], id="truncated-dcid"),
    pytest.param(long_header(0xC0, 1)[:15], id="no-scid-length"),
    pytest.param(long_header(0xC0, 1)[:20], id="truncated-scid"),
    pytest.param(long_header(0x80, 1, rest=b"\x00\x01z"), id="long-fixed-bit-zero"),
    pytest.param(long_header(0xC0, 1), id="initial-without-token-length"),
    pytest.param(long_header(0xC0, 1, rest=b"\x05ab"), id="initial-truncated-token"),
    pytest.param(long_header(0xC0, 1, rest=b"\x00"), id="initial-without-length"),
    pytest.param(long_header(0xC0, 1, rest=b"\x00\x40"), id="truncated-varint"),
    pytest.param(long_header(0xC0, 1, rest=b"\x00\x05abcd"), id="length-beyond-datagram"),
    pytest.param(long_header(0xC0, 1, rest=b"\x00\xff\xff\xff\xff\xff\xff\xff\xff"), id="huge-length"),
    pytest.param(long_header(0xE0, 1, rest=b"\x09abc"), id="handshake-length-beyond-datagram"),
    pytest.param(long_header(0xF0, 1, rest=bytes(15)), id="retry-shorter-than-tag"),
]


@pytest.mark.parametrize("datagram", MALFORMED)
def test_malformed_datagrams(packet: ModuleType, datagram: bytes) -> None:
    with pytest.raises(errors.MalformedPacket):
        packet.peek(datagram, 8)


def test_cid_length_argument(packet: ModuleType) -> None:
    for bad in (-1, 21):
        with pytest.raises(ValueError):
            packet.peek(b"\x41" + DCID, bad)


@given(st.binary(max_size=80), st.integers(0, 20))
def test_garbage_gives_a_header_or_malformed_packet(packet: ModuleType, data: bytes, cid_length: int) -> None:
    try:
        header = packet.peek(data, cid_length)
    except errors.MalformedPacket:
        return
    if header.is_long_header:
        assert len(header.destination_cid) <= 20 and len(header.source_cid) <= 20
    else:
        assert len(header.destination_cid) == cid_length
