"""Structure-aware fuzzing of the five decoders, on both backends: valid inputs, then mutated.

Each test starts from real, valid bytes (frame streams, single frames, large-message streams,
the datagrams of a real QUIC handshake, genuine retry tokens) and applies a few mutations:
bit flips, byte and length-field overwrites, truncations, deletions, duplicated chunks and
splices from another valid input. Whatever comes out, only the documented errors may escape,
and what the mutation left intact must still decode as before. (tests/test_twins.py compares
the backends on the same inputs; here each backend is held to the format itself.)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib
import itertools
from types import ModuleType
from unittest import mock

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.packet import pull_quic_header
from hypothesis import given
from hypothesis import strategies as st

import qp2p
from qp2p import wire
from qp2p._pure.framing import HEADER_SIZE

Mutation = tuple[str, int, int]

LIMIT = 1 << 20  # above every body built here
QUIC_CID_LENGTH = 8  # what quic_traffic's connections use
OPS = ("flip", "set", "truncate", "delete", "duplicate", "splice", "length")
# Values written over 4 bytes by the "length" mutation: around the edges of lengths and limits.
BOUNDARIES = (0, 1, 3, 4, 8, 9, 0xFF, 0x100, 0xFFFF, 0x10000, LIMIT, LIMIT + 1, 0x7FFFFFFF, 0xFFFFFFFF)
KEY = bytes(range(32))
NOW = 1_700_000_000.0
ADDRESSES = [("192.0.2.1", 443), ("2001:db8::1", 1), ("::ffff:192.0.2.1", 443), ("10.1.2.3", 0)]

u16, u32, u64 = st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
addresses = st.tuples(st.ip_addresses().map(str), st.integers(0, 0xFFFF))
messages = st.one_of(
    st.binary(min_size=1, max_size=64).map(wire.UserMessage),
    st.builds(wire.Request, u32, st.binary(max_size=64)),
    st.builds(wire.Response, u32, st.binary(max_size=64)),
    st.just(wire.EchoRequest()),
    st.builds(wire.EchoResponse, addresses),
    st.builds(wire.VerificationRequest, addresses),
    st.builds(wire.VerificationResponse, st.booleans()),
    st.builds(wire.Hello, u64, u32, u32, u64, u16),
    st.builds(wire.Credit, u64),
    st.builds(wire.StreamCancelled, u64, u64),
)
mutations = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 1 << 16), st.integers(0, 1 << 16)), min_size=1, max_size=4
)


def mutate(data: bytes, ops: list[Mutation], donor: bytes) -> bytes:
    """``data`` after each operation in turn; ``donor`` is the other valid input splices take from."""
    out = bytearray(data)
    for op, a, b in ops:
        at = a % (len(out) + 1)
        if op == "flip" and out:
            out[a % len(out)] ^= 1 << (b % 8)
        elif op == "set" and out:
            out[a % len(out)] = b % 256
        elif op == "truncate":
            del out[at:]
        elif op == "delete":
            del out[at : at + 1 + b % 16]
        elif op == "duplicate":
            out[at:at] = out[at : at + 1 + b % 64]
        elif op == "splice":
            start = b % (len(donor) + 1)
            out[at:at] = donor[start : start + 1 + a % 64]
        elif op == "length":
            out[at : at + 4] = BOUNDARIES[b % len(BOUNDARIES)].to_bytes(4, "big")
    return bytes(out)


def intact_prefix(original: bytes, mutated: bytes) -> int:
    """How many leading bytes of ``original`` the mutations left as they were."""
    common = min(len(original), len(mutated))
    return next((i for i in range(common) if original[i] != mutated[i]), common)


def canonical(frame: bytes) -> bytes:
    """A frame as an encoder writes it: reserved header bytes zeroed."""
    return frame[: HEADER_SIZE - 2] + b"\0\0" + frame[HEADER_SIZE:]


# ---- framing: streams of frames, as on a lane ------------------------------------------------


def decode_stream(
    framing: ModuleType, stream: bytes, stride: int
) -> tuple[list[tuple[int, bytes]], Exception | None]:
    """Frames of ``stream`` fed ``stride`` bytes at a time, and the error that ended it, if any."""
    decoder = framing.FrameDecoder(LIMIT)
    frames: list[tuple[int, bytes]] = []
    try:
        for at in range(0, len(stream), stride):
            decoder.feed(stream[at : at + stride])
            for _ in range(decoder.buffered // HEADER_SIZE + 1):
                frame = decoder.next_frame()
                if frame is None:
                    break
                frames.append(frame)
        decoder.finish()
    except qp2p.DecodeError as exc:
        return frames, exc
    return frames, None


@given(st.lists(messages, min_size=1, max_size=8), mutations, st.integers(0, 100), st.integers(1, 64))
def test_mutated_lane_streams_keep_their_intact_frames(
    framing: ModuleType, sent: list[wire.WireMessage], ops: list[Mutation], donor: int, stride: int
) -> None:
    frames = [wire.encode(message) for message in sent]
    stream = b"".join(frames)
    mutated = mutate(stream, ops, frames[donor % len(frames)])
    got, error = decode_stream(framing, mutated, stride)
    intact = intact_prefix(stream, mutated)
    whole = sum(1 for end in itertools.accumulate(map(len, frames)) if end <= intact)
    assert len(got) >= whole
    for (flag, body), frame in zip(got[:whole], frames, strict=False):
        assert wire.encode(wire.decode(flag, body)) == frame
    for flag, body in got[whole:]:
        with contextlib.suppress(qp2p.DecodeError):
            wire.decode(flag, body)
    if mutated == stream:
        assert error is None and len(got) == len(frames)


# ---- wire: single frames and control bodies ------------------------------------------------


@given(messages, mutations, messages)
def test_mutated_frames_decode_canonically_or_fail_cleanly(
    framing: ModuleType, message: wire.WireMessage, ops: list[Mutation], donor: wire.WireMessage
) -> None:
    frame = wire.encode(message)
    mutated = mutate(frame, ops, wire.encode(donor))
    with mock.patch.object(wire, "framing", framing):
        try:
            decoded = wire.decode_frame(mutated)
        except qp2p.DecodeError as exc:
            error: Exception | None = exc
        else:
            error = None
            assert wire.encode(decoded) == canonical(mutated)
    try:
        control = wire.decode(framing.FLAG_CONTROL, mutated[HEADER_SIZE:])
    except qp2p.DecodeError:
        pass
    else:
        assert wire.encode(control)[HEADER_SIZE:] == mutated[HEADER_SIZE:]
    if mutated == frame:
        assert error is None
    elif frame.startswith(mutated):
        assert isinstance(error, qp2p.TruncatedFrame)
    elif mutated.startswith(frame):
        assert isinstance(error, qp2p.MalformedMessage)


# ---- chunking: one large message on a stream of its own -------------------------------------


@given(
    st.tuples(st.integers(0, 3), st.binary(min_size=1, max_size=300)),
    st.tuples(st.integers(0, 3), st.binary(min_size=1, max_size=300)),
    mutations,
    st.integers(1, 97),
)
def test_mutated_large_message_streams(
    chunking: ModuleType,
    framing: ModuleType,
    sent: tuple[int, bytes],
    donor: tuple[int, bytes],
    ops: list[Mutation],
    stride: int,
) -> None:
    frame = framing.encode_frame(*sent)
    mutated = mutate(frame, ops, framing.encode_frame(*donor))
    reassembler = chunking.Reassembler(LIMIT)
    try:
        for at in range(0, len(mutated), stride):
            reassembler.feed(mutated[at : at + stride])
        flag, body = reassembler.finish()
    except qp2p.DecodeError as exc:
        error: Exception | None = exc
    else:
        error = None
        assert framing.encode_frame(flag, body) == canonical(mutated)
    if len(mutated) == len(frame) and mutated[: HEADER_SIZE - 2] == frame[: HEADER_SIZE - 2]:
        assert error is None and (flag, bytes(body)) == (sent[0], mutated[HEADER_SIZE:])
    elif frame.startswith(mutated):
        assert isinstance(error, qp2p.TruncatedFrame)
    elif mutated.startswith(frame):
        assert isinstance(error, qp2p.MalformedMessage)


# ---- packet: datagrams of a real handshake ---------------------------------------------------


@given(st.integers(0, 1000), st.integers(0, 1000), mutations)
def test_mutated_quic_datagrams_keep_an_intact_first_header(
    packet: ModuleType, quic_traffic: list[bytes], pick: int, donor: int, ops: list[Mutation]
) -> None:
    datagram = quic_traffic[pick % len(quic_traffic)]
    mutated = mutate(datagram, ops, quic_traffic[donor % len(quic_traffic)])
    for cid_length in (0, QUIC_CID_LENGTH, packet.MAX_CID_LENGTH):
        with contextlib.suppress(qp2p.MalformedPacket):
            packet.peek(mutated, cid_length)
    original = packet.peek(datagram, QUIC_CID_LENGTH)
    if original.is_long_header:
        needed = pull_quic_header(Buffer(data=datagram), host_cid_length=QUIC_CID_LENGTH).packet_length
    else:
        needed = 1 + QUIC_CID_LENGTH
    if intact_prefix(datagram, mutated) >= needed:
        assert packet.peek(mutated, QUIC_CID_LENGTH) == original


# ---- retry: genuine tokens ---------------------------------------------------------------------


@given(
    st.sampled_from(ADDRESSES),
    st.binary(max_size=20),
    st.binary(max_size=20),
    st.sampled_from(ADDRESSES),
    mutations,
)
def test_mutated_tokens_never_validate(
    retry: ModuleType,
    addr: tuple[str, int],
    odcid: bytes,
    rscid: bytes,
    other_addr: tuple[str, int],
    ops: list[Mutation],
) -> None:
    tokens = retry.RetryTokens(KEY)
    token = tokens.mint(addr, odcid, NOW, rscid)
    # Splices come from a genuine token for another retry source id: never valid for this one.
    mutated = mutate(token, ops, tokens.mint(other_addr, odcid[::-1], NOW + 1, rscid + b"\0"))
    if mutated == token:
        assert tokens.validate(mutated, addr, NOW, rscid) == odcid
    else:
        with pytest.raises(qp2p.TokenError):
            tokens.validate(mutated, addr, NOW, rscid)


def retry_module(package: str) -> ModuleType:
    return importlib.import_module(f"{package}.retry")


@pytest.mark.fast_ext
def test_backends_word_the_refusal_of_far_future_tokens_alike() -> None:
    token = bytearray(retry_module("qp2p._pure").RetryTokens(KEY).mint(ADDRESSES[0], b"odcid", NOW))
    token[5:13] = (2**64 - 1).to_bytes(8, "big")  # the issue time, in ms: as late as it gets
    body = bytes(token[:-16])
    signed = body + hmac.digest(KEY, body, hashlib.sha256)[:16]  # genuine: what only the key holder makes
    messages = []
    for package in ("_qp2p_fast", "qp2p._pure"):
        with pytest.raises(qp2p.TokenExpired) as refused:
            retry_module(package).RetryTokens(KEY).validate(signed, ADDRESSES[0], NOW)
        messages.append(str(refused.value))
    assert messages[0] == messages[1]
