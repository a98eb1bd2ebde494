"""Fuzz target: ``peek`` on a datagram, for several connection-id lengths.

Input: a byte choosing one more connection-id length (0 to 20, besides 0, 8 and 20), then the
datagram. Only ``MalformedPacket`` may escape; a header that is returned must be the bytes it
came from: the short header's connection id, or a long header's invariant fields and token.

    python fuzz/packet_peek.py [--backend=fast|pure] [libFuzzer flags] [corpus dir]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from _harness import Backend, attempt, errors, main, split
from _realdata import datagrams

MAX_CID_LENGTH = 20


def check_header(backend: Backend, header: Any, datagram: bytes, cid_length: int) -> None:
    """``header`` says what the datagram's first bytes say, field by field."""
    packet = backend.packet
    if not header.is_long_header:
        assert datagram[0] & 0xC0 == 0x40
        assert (header.version, header.packet_type) == (None, packet.ONE_RTT)
        assert (header.destination_cid, header.source_cid, header.token) == (
            datagram[1 : 1 + cid_length],
            b"",
            b"",
        )
        return
    dcid, scid = header.destination_cid, header.source_cid
    invariant = (
        datagram[:1]
        + header.version.to_bytes(4, "big")
        + bytes((len(dcid),))
        + dcid
        + bytes((len(scid),))
        + scid
    )
    assert datagram.startswith(invariant)
    rest = datagram[len(invariant) :]
    if header.packet_type == packet.RETRY:
        assert header.token == rest[: len(rest) - 16]
    elif header.packet_type == packet.INITIAL:
        token_at = 1 << (rest[0] >> 6)  # after the token length, a varint
        assert header.token == rest[token_at : token_at + len(header.token)]
    else:
        assert header.token == b""
    known = {packet.QUIC_V1, packet.QUIC_V2}
    assert (header.packet_type is None) == (header.version not in known and header.version != 0)


def check(backend: Backend, data: bytes) -> list[Any]:
    params, datagram = split(data, 1)
    trace = []
    for cid_length in sorted({0, 8, MAX_CID_LENGTH, params[0] % (MAX_CID_LENGTH + 1)}):
        step = attempt(lambda n=cid_length: backend.packet.peek(datagram, n), errors.MalformedPacket)
        if step[0] == "ok":
            check_header(backend, step[1], datagram, cid_length)
        trace.append(step)
    return trace


def seeds() -> Iterator[bytes]:
    """Every datagram of a live qp2p exchange (8-byte connection ids), as received."""
    for datagram in datagrams():
        yield bytes((8,)) + datagram


if __name__ == "__main__":
    main(check)
