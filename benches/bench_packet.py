"""Clear-text QUIC header peeks, compiled against pure (target: peek >= 5x pure)."""

from __future__ import annotations

import random
from itertools import repeat
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import QuicPacketType, pull_quic_header

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

DATAGRAMS = 10_000
CID_LENGTH = 8
INITIAL_SIZE = 1200
SHORT_SIZE = 1000
QUIC_V1 = 1
# A retry token for an IPv4 client with an 8-byte original CID is 45 bytes long.
TOKEN_SIZE = 45


def _varint(value: int) -> bytes:
    """A QUIC variable-length integer, in the 1- or 2-byte form (values below 16384)."""
    return bytes((value,)) if value < 64 else (0x4000 | value).to_bytes(2, "big")


def _initial(rng: random.Random, dcid: bytes, token: bytes) -> bytes:
    """A client Initial padded to 1200 bytes; its length field covers exactly what follows it."""
    head = (
        bytes((0xC3,))  # long header, fixed bit, type Initial, 4-byte packet number
        + QUIC_V1.to_bytes(4, "big")
        + bytes((CID_LENGTH,))
        + dcid
        + bytes((CID_LENGTH,))
        + rng.randbytes(CID_LENGTH)
        + _varint(len(token))
        + token
    )
    length = INITIAL_SIZE - len(head) - 2
    return head + _varint(length) + rng.randbytes(length)


def _one_rtt(rng: random.Random, dcid: bytes) -> bytes:
    """A short-header packet of 1000 +- 40 bytes (protected bits random, as on the wire)."""
    body_size = SHORT_SIZE - 1 - CID_LENGTH + rng.randrange(-40, 40)
    return bytes((0x40 | rng.randrange(0x40),)) + dcid + rng.randbytes(body_size)


@pytest.fixture(scope="module")
def datagrams() -> list[tuple[bytes, bytes, bytes]]:
    """``(datagram, dcid, token)``: every 4th an Initial (half of them with a token), the rest 1-RTT.

    aioquic parses each Initial to the full 1200 bytes, so the hand-built bytes are real QUIC.
    """
    rng = random.Random(1200)
    built = []
    for i in range(DATAGRAMS):
        dcid = rng.randbytes(CID_LENGTH)
        if i % 4:
            built.append((_one_rtt(rng, dcid), dcid, b""))
            continue
        token = rng.randbytes(TOKEN_SIZE) if i % 8 else b""
        datagram = _initial(rng, dcid, token)
        header = pull_quic_header(Buffer(data=datagram), host_cid_length=CID_LENGTH)
        assert header.packet_type == QuicPacketType.INITIAL and header.packet_length == INITIAL_SIZE
        assert (header.destination_cid, header.token) == (dcid, token)
        built.append((datagram, dcid, token))
    return built


@pytest.mark.benchmark(group="packet.peek.10000")
def test_packet_peek_10000(
    benchmark: BenchmarkFixture, packet: ModuleType, datagrams: list[tuple[bytes, bytes, bytes]]
) -> None:
    """``peek(datagram, 8)`` over 10,000 datagrams: the per-datagram routing cost."""
    peek = packet.peek
    wire = [datagram for datagram, _, _ in datagrams]
    seen = [(h.packet_type, h.destination_cid, h.token) for h in map(peek, wire, repeat(CID_LENGTH))]
    kinds = [packet.INITIAL if i % 4 == 0 else packet.ONE_RTT for i in range(DATAGRAMS)]
    assert seen == [(kind, dcid, token) for kind, (_, dcid, token) in zip(kinds, datagrams, strict=True)]
    expected_tail = seen[-4:]

    def run() -> None:
        headers = list(map(peek, wire, repeat(CID_LENGTH)))
        assert len(headers) == DATAGRAMS
        assert [(h.packet_type, h.destination_cid, h.token) for h in headers[-4:]] == expected_tail

    benchmark(run)
