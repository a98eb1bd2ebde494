"""Chunker (zero-copy split) and Reassembler (one buffer per message), on both backends."""

from __future__ import annotations

import random
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qp2p import errors

KiB = 1 << 10
MiB = 1 << 20


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_chunks_are_views_of_the_payload(chunking: ModuleType, framing: ModuleType, kind: type) -> None:
    original = bytearray(random.Random(1).randbytes(200 * KiB + 7))
    payload = kind(original) if kind is not bytes else bytes(original)
    chunker = chunking.Chunker(framing.FLAG_USER, payload, 64 * KiB)
    assert chunker.total == 9 + len(original)
    pieces = list(chunker)
    assert pieces[0] == framing.encode_header(0, len(original))
    assert [len(p) for p in pieces[1:]] == [64 * KiB] * 3 + [8 * KiB + 7]
    assert b"".join(pieces[1:]) == original
    exporter = payload.obj if isinstance(payload, memoryview) else payload
    for piece in pieces[1:]:
        assert isinstance(piece, memoryview)
        assert piece.obj is exporter  # a window on the caller's buffer, not a copy
    assert chunker.remaining == 0
    assert list(chunker) == []


def test_a_view_sees_later_changes_to_a_mutable_payload(chunking: ModuleType) -> None:
    payload = bytearray(b"a" * 10)
    chunker = chunking.Chunker(0, payload, 4)
    next(chunker)
    first = next(chunker)
    payload[0:4] = b"zzzz"
    assert bytes(first) == b"zzzz"


def test_remaining_counts_down(chunking: ModuleType) -> None:
    chunker = chunking.Chunker(2, b"x" * 10, 4)
    seen = [chunker.remaining]
    for _ in chunker:
        seen.append(chunker.remaining)
    assert seen == [19, 10, 6, 2, 0]


def test_prefix_goes_after_the_header(chunking: ModuleType, framing: ModuleType) -> None:
    payload = bytearray(b"p" * 10)
    chunker = chunking.Chunker(framing.FLAG_REQUEST, payload, 4, prefix=b"\x00\x00\x00\x07")
    assert chunker.total == 9 + 4 + 10
    pieces = list(chunker)
    assert pieces[0] == framing.encode_header(framing.FLAG_REQUEST, 14) + b"\x00\x00\x00\x07"
    assert all(piece.obj is payload for piece in pieces[1:])
    assert chunker.remaining == 0


def test_chunker_refuses_bad_input(chunking: ModuleType) -> None:
    with pytest.raises(errors.SendError):
        chunking.Chunker(0, b"", 10)
    with pytest.raises(errors.SendError):
        chunking.Chunker(7, b"x", 10)
    with pytest.raises(ValueError):
        chunking.Chunker(0, b"x", 0)
    assert list(chunking.Chunker(1, b"", 10)) == [bytes.fromhex("0001 00000000 01 0000")]


def test_multibyte_formats_are_split_by_bytes(chunking: ModuleType) -> None:
    words = memoryview(bytearray(range(16))).cast("I")
    assert b"".join(list(chunking.Chunker(0, words, 5))[1:]) == bytes(range(16))


def frame(framing: ModuleType, flag: int, body: bytes) -> bytes:
    return framing.encode_frame(flag, body)


@pytest.mark.parametrize(
    ("size", "step"),
    [(3000, 1), (3 * MiB + 1, 8), (3 * MiB + 1, 9), (3 * MiB + 1, 10), (3 * MiB + 1, 65536), (MiB, 2 * MiB)],
)
def test_reassembles_in_any_pieces(chunking: ModuleType, framing: ModuleType, size: int, step: int) -> None:
    body = random.Random(size).randbytes(size)
    data = frame(framing, 0, body)
    reassembler = chunking.Reassembler(4 * MiB)
    assert reassembler.expected == -1
    results = [reassembler.feed(data[i : i + step]) for i in range(0, len(data), step)]
    assert results[-1] is True and not any(results[:-1])
    assert reassembler.done and reassembler.expected == reassembler.received == size
    flag, got = reassembler.finish()
    assert (flag, type(got)) == (0, bytearray)
    assert got == body


def test_header_is_checked_before_the_body_is_allocated(chunking: ModuleType) -> None:
    reassembler = chunking.Reassembler(MiB)
    with pytest.raises(errors.FrameTooLarge) as info:
        reassembler.feed(bytes.fromhex("0001 ffffffff 00 0000"))
    assert info.value.size == 0xFFFFFFFF
    assert reassembler.expected == -1  # nothing was allocated
    with pytest.raises(errors.FrameTooLarge):
        reassembler.feed(b"x")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (bytes.fromhex("0002 00000001 00 0000 78"), errors.UnsupportedVersion),
        (bytes.fromhex("0001 00000001 09 0000 78"), errors.UnknownFlag),
        (bytes.fromhex("0001 00000000 00 0000"), errors.EmptyMessage),
        (bytes.fromhex("0001 00000001 00 0000 7878"), errors.MalformedMessage),
    ],
)
def test_reassembler_rejects(chunking: ModuleType, data: bytes, error: type[Exception]) -> None:
    reassembler = chunking.Reassembler(100)
    with pytest.raises(error):
        reassembler.feed(data)
    with pytest.raises(error):
        reassembler.finish()


@pytest.mark.parametrize("cut", [0, 5, 9, 12])
def test_reassembler_reports_a_stream_that_ends_early(
    chunking: ModuleType, framing: ModuleType, cut: int
) -> None:
    reassembler = chunking.Reassembler(100)
    reassembler.feed(frame(framing, 0, b"0123456789")[:cut])
    assert not reassembler.done
    with pytest.raises(errors.TruncatedFrame):
        reassembler.finish()


def test_empty_control_body_completes_at_once(chunking: ModuleType) -> None:
    reassembler = chunking.Reassembler(100)
    assert reassembler.feed(bytes.fromhex("0001 00000000 01 0000")) is True
    assert reassembler.finish() == (1, bytearray())


def test_reassembler_max_size_bounds(chunking: ModuleType) -> None:
    for bad in (-1, 2**32):
        with pytest.raises(ValueError):
            chunking.Reassembler(bad)


@given(
    body=st.binary(min_size=1, max_size=5000),
    chunk_size=st.integers(1, 700),
    step=st.integers(1, 900),
    flag=st.integers(0, 3),
)
def test_split_then_reassemble(
    chunking: ModuleType, body: bytes, chunk_size: int, step: int, flag: int
) -> None:
    stream = b"".join(chunking.Chunker(flag, body, chunk_size))
    reassembler = chunking.Reassembler(len(body))
    for i in range(0, len(stream), step):
        reassembler.feed(stream[i : i + step])
    assert reassembler.finish() == (flag, bytearray(body))
