"""Wire messages on top of framing: round trips and every malformed body."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qp2p import errors, wire

MESSAGES = [
    wire.UserMessage(b"hello"),
    wire.Request(0, b""),
    wire.Request(0xFFFFFFFF, b"ping"),
    wire.Response(7, b""),
    wire.Response(7, b"pong" * 100),
    wire.EchoRequest(),
    wire.EchoResponse(("192.0.2.1", 4000)),
    wire.EchoResponse(("2001:db8::5", 65535)),
    wire.VerificationRequest(("10.0.0.1", 0)),
    wire.VerificationRequest(("::ffff:10.0.0.1", 9)),
    wire.VerificationResponse(True),
    wire.VerificationResponse(False),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=repr)
def test_round_trip(msg: wire.WireMessage) -> None:
    assert wire.decode_frame(wire.encode(msg)) == msg


def test_addresses_are_normalised_on_decode() -> None:
    frame = wire.encode(wire.EchoResponse(("2001:0db8:0000::0001", 1)))
    assert wire.decode_frame(frame) == wire.EchoResponse(("2001:db8::1", 1))
    # IPv4-mapped addresses read as the socket layer writes them, on every Python.
    mapped = wire.encode(wire.EchoResponse(("::ffff:a00:1", 1)))
    assert wire.decode_frame(mapped) == wire.EchoResponse(("::ffff:10.0.0.1", 1))
    assert wire.decode_frame(wire.encode(wire.EchoResponse(("fe80::1%eth0", 1)))).addr == ("fe80::1", 1)


def control(body_hex: str) -> bytes:
    body = bytes.fromhex(body_hex)
    return bytes.fromhex("0001") + len(body).to_bytes(4, "big") + b"\x01\x00\x00" + body


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (control("04000000"), errors.UnknownTag),
        (control("30000000"), errors.UnknownTag),
        (control("ffffffff"), errors.UnknownTag),
        (control(""), errors.TruncatedMessage),
        (control("000000"), errors.TruncatedMessage),
        (control("01000000"), errors.TruncatedMessage),
        (control("01000000 00000000 c00002"), errors.TruncatedMessage),
        (control("01000000 00000000 c0000201 a0"), errors.TruncatedMessage),
        (control("01000000 01000000" + "00" * 15), errors.TruncatedMessage),
        (control("01000000 02000000 c0000201 a00f"), errors.MalformedMessage),
        (control("01000000 00000000 c0000201 a00f 00"), errors.MalformedMessage),
        (control("00000000 00"), errors.MalformedMessage),
        (control("03000000"), errors.TruncatedMessage),
        (control("03000000 02"), errors.MalformedMessage),
        (control("03000000 01 01"), errors.MalformedMessage),
        (bytes.fromhex("0001 00000003 02 0000 000000"), errors.TruncatedMessage),
        (bytes.fromhex("0001 00000000 03 0000"), errors.TruncatedMessage),
        (bytes.fromhex("0001 00000000 00 0000"), errors.EmptyMessage),
        (bytes.fromhex("0001 00000001 04 0000 00"), errors.UnknownFlag),
        (bytes.fromhex("0002 00000001 00 0000 00"), errors.UnsupportedVersion),
        (bytes.fromhex("0001 00000002 00 0000 00"), errors.TruncatedFrame),
        (bytes.fromhex("0001 000000"), errors.TruncatedFrame),
        (b"", errors.TruncatedFrame),
        (bytes.fromhex("0001 00000001 00 0000 00 ff"), errors.MalformedMessage),
    ],
)
def test_malformed_frames(frame: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        wire.decode_frame(frame)


def test_every_decode_error_is_a_recv_error() -> None:
    for cls in (errors.UnknownTag, errors.TruncatedMessage, errors.MalformedMessage, errors.EmptyMessage):
        assert issubclass(cls, errors.DecodeError) and issubclass(cls, errors.RecvError)


def test_decode_by_flag() -> None:
    assert wire.decode(0, b"x") == wire.UserMessage(b"x")
    assert wire.decode(2, b"\x00\x00\x01\x00abc") == wire.Request(256, b"abc")
    with pytest.raises(errors.EmptyMessage):
        wire.decode(0, b"")
    with pytest.raises(errors.UnknownFlag):
        wire.decode(9, b"x")


def test_size_limit_applies() -> None:
    frame = wire.encode(wire.UserMessage(b"x" * 100))
    with pytest.raises(errors.FrameTooLarge):
        wire.decode_frame(frame, max_size=99)


def test_encoding_refuses_bad_values() -> None:
    with pytest.raises(errors.SendError):
        wire.encode(wire.UserMessage(b""))
    with pytest.raises(ValueError):
        wire.encode(wire.EchoResponse(("not-an-ip", 1)))
    with pytest.raises(ValueError):
        wire.encode(wire.EchoResponse(("1.2.3.4", 70000)))


def _socket_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as sockets write it (inet_ntop), the form decoding yields."""
    return socket.inet_ntop(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, ip.packed)


addresses = st.tuples(st.ip_addresses().map(_socket_text), st.integers(0, 65535))
messages = st.one_of(
    st.binary(min_size=1).map(wire.UserMessage),
    st.builds(wire.Request, st.integers(0, 2**32 - 1), st.binary()),
    st.builds(wire.Response, st.integers(0, 2**32 - 1), st.binary()),
    st.just(wire.EchoRequest()),
    addresses.map(wire.EchoResponse),
    addresses.map(wire.VerificationRequest),
    st.booleans().map(wire.VerificationResponse),
)


@given(messages)
def test_any_message_round_trips(msg: wire.WireMessage) -> None:
    assert wire.decode_frame(wire.encode(msg)) == msg


@given(st.binary(max_size=64))
def test_random_control_bodies_decode_or_fail_typed(body: bytes) -> None:
    try:
        wire.decode(1, body)
    except errors.DecodeError:
        pass
