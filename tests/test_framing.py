"""The v1 frame header and the incremental FrameDecoder, on both backends."""

from __future__ import annotations

import random
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qp2p import errors

MiB = 1 << 20


def header(version: int, data_len: int, flag: int, reserved: bytes = b"\0\0") -> bytes:
    return version.to_bytes(2, "big") + data_len.to_bytes(4, "big") + bytes([flag]) + reserved


def test_header_layout(framing: ModuleType) -> None:
    assert framing.encode_header(framing.FLAG_USER, 5) == bytes.fromhex("0001 00000005 00 0000")
    assert framing.encode_header(framing.FLAG_RESPONSE, 0x01020304) == bytes.fromhex("0001 01020304 03 0000")
    assert framing.encode_frame(framing.FLAG_CONTROL, b"\0\0\0\0") == bytes.fromhex(
        "0001 00000004 01 0000 00000000"
    )
    assert framing.HEADER_SIZE == 9 and framing.VERSION == 1


@pytest.mark.parametrize("body", [b"x", bytearray(b"xyz"), memoryview(b"hello world")[2:7]])
def test_encode_frame_accepts_bytes_like(framing: ModuleType, body: bytes) -> None:
    frame = framing.encode_frame(framing.FLAG_USER, body)
    assert frame == framing.encode_header(0, len(body)) + bytes(body)
    assert type(frame) is bytes


@pytest.mark.parametrize(
    ("flag", "data_len", "error"),
    [
        (4, 1, errors.SendError),
        (-1, 1, errors.SendError),
        (255, 1, errors.SendError),
        (0, -1, errors.SendError),
        (0, 0, errors.SendError),
        (1, 2**32, errors.MessageTooLarge),
        (1, 2**70, errors.MessageTooLarge),
    ],
)
def test_encode_refuses_what_a_reader_rejects(
    framing: ModuleType, flag: int, data_len: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        framing.encode_header(flag, data_len)


def test_message_too_large_carries_numbers(framing: ModuleType) -> None:
    with pytest.raises(errors.MessageTooLarge) as info:
        framing.encode_header(0, 2**32 + 5)
    assert (info.value.limit, info.value.size) == (2**32 - 1, 2**32 + 5)


def test_empty_non_user_frames_are_legal(framing: ModuleType) -> None:
    for flag in (1, 2, 3):
        assert framing.decode_header(framing.encode_header(flag, 0), 10) == (flag, 0)


def test_reserved_bytes_are_ignored(framing: ModuleType) -> None:
    assert framing.decode_header(header(1, 3, 0, b"\xff\xee"), 10) == (0, 3)


MALFORMED_HEADERS = [
    pytest.param(b"", errors.TruncatedFrame, id="empty"),
    pytest.param(b"\x00", errors.TruncatedFrame, id="one-byte"),
    pytest.param(header(1, 1, 0)[:8], errors.TruncatedFrame, id="eight-bytes"),
    pytest.param(header(0, 1, 0), errors.UnsupportedVersion, id="version-0"),
    pytest.param(header(2, 1, 0), errors.UnsupportedVersion, id="version-2"),
    pytest.param(header(0xFFFF, 1, 0), errors.UnsupportedVersion, id="version-ffff"),
    pytest.param(header(1, 1, 4), errors.UnknownFlag, id="flag-4"),
    pytest.param(header(1, 1, 255), errors.UnknownFlag, id="flag-255"),
    pytest.param(header(1, 1001, 0), errors.FrameTooLarge, id="over-limit"),
    pytest.param(header(1, 0xFFFFFFFF, 1), errors.FrameTooLarge, id="4GiB"),
    pytest.param(header(1, 0, 0), errors.EmptyMessage, id="empty-user-message"),
]


@pytest.mark.parametrize(("data", "error"), MALFORMED_HEADERS)
def test_decode_header_rejects(framing: ModuleType, data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        framing.decode_header(data, 1000)


@pytest.mark.parametrize(("data", "error"), MALFORMED_HEADERS[3:])
def test_decoder_rejects_bad_header_before_its_body(
    framing: ModuleType, data: bytes, error: type[Exception]
) -> None:
    decoder = framing.FrameDecoder(1000)
    decoder.feed(framing.encode_frame(0, b"ok") + data)
    assert decoder.next_frame() == (0, b"ok")
    with pytest.raises(error):
        decoder.next_frame()
    # The decoder is broken for good: every later call raises the same error.
    for call in (decoder.next_frame, decoder.finish, lambda: decoder.feed(b"x")):
        with pytest.raises(error):
            call()


def test_frame_too_large_is_raised_on_the_header_alone(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(MiB)
    decoder.feed(header(1, 0xFFFFFFFF, 0))
    with pytest.raises(errors.FrameTooLarge) as info:
        decoder.next_frame()
    assert (info.value.limit, info.value.size) == (MiB, 0xFFFFFFFF)
    assert decoder.buffered == 9


def test_max_size_bounds(framing: ModuleType) -> None:
    for bad in (-1, 2**32):
        with pytest.raises(ValueError):
            framing.FrameDecoder(bad)
        with pytest.raises(ValueError):
            framing.decode_header(header(1, 1, 0), bad)
    decoder = framing.FrameDecoder(5)
    decoder.feed(header(1, 5, 0) + b"12345")
    assert decoder.next_frame() == (0, b"12345")
    assert decoder.max_size == 5


def frames_for(framing: ModuleType, count: int, seed: int = 1) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    frames = []
    for i in range(count):
        flag = i % 4
        size = rng.choice([1, 2, 9, 55, 200, 4096]) if flag == 0 else rng.choice([0, 4, 30])
        frames.append((flag, rng.randbytes(size)))
    return frames


def test_decoder_byte_at_a_time(framing: ModuleType) -> None:
    frames = frames_for(framing, 60)
    stream = b"".join(framing.encode_frame(flag, body) for flag, body in frames)
    decoder = framing.FrameDecoder(MiB)
    got = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        got.extend(decoder)
    decoder.finish()
    assert got == frames


def test_decoder_ten_thousand_frames_in_packet_sized_pieces(framing: ModuleType) -> None:
    frames = frames_for(framing, 10_000, seed=2)
    stream = b"".join(framing.encode_frame(flag, body) for flag, body in frames)
    decoder = framing.FrameDecoder(MiB)
    got = []
    for i in range(0, len(stream), 1200):
        decoder.feed(memoryview(stream)[i : i + 1200])
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    decoder.finish()
    assert got == frames
    assert decoder.buffered == 0


def test_decoder_large_frames_in_one_feed(framing: ModuleType) -> None:
    bodies = [bytes([n]) * (3 * MiB + n) for n in range(1, 4)]
    stream = b"".join(framing.encode_frame(0, body) for body in bodies)
    decoder = framing.FrameDecoder(4 * MiB)
    decoder.feed(bytearray(stream))
    assert [body for _, body in decoder] == bodies


def test_frames_are_bytes_not_views(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(100)
    source = bytearray(framing.encode_frame(0, b"abc"))
    decoder.feed(source)
    source[9:12] = b"zzz"
    flag, body = decoder.next_frame()
    assert (flag, body, type(body)) == (0, b"abc", bytes)


def test_finish_reports_a_truncated_stream(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(100)
    decoder.finish()  # an empty stream is a clean end
    decoder.feed(framing.encode_frame(0, b"abcdef")[:-1])
    assert decoder.next_frame() is None
    with pytest.raises(errors.TruncatedFrame):
        decoder.finish()
    with pytest.raises(errors.TruncatedFrame):
        decoder.next_frame()


def test_truncated_header_at_end(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(100)
    decoder.feed(b"\x00\x01\x00")
    assert decoder.next_frame() is None
    with pytest.raises(errors.TruncatedFrame):
        decoder.finish()


def test_decoder_errors_are_decode_errors(framing: ModuleType) -> None:
    for _, error in [p.values for p in MALFORMED_HEADERS]:
        assert issubclass(error, errors.DecodeError)
        assert issubclass(error, errors.RecvError)
        assert issubclass(error, errors.Error)


frame_lists = st.lists(
    st.tuples(st.integers(0, 3), st.binary(min_size=0, max_size=300)).map(
        lambda f: (f[0], f[1] or b"x") if f[0] == 0 else f
    ),
    max_size=30,
)


@given(frames=frame_lists, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_round_trip_under_any_split(
    framing: ModuleType, frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(framing.encode_frame(flag, body) for flag, body in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = framing.FrameDecoder(1000)
    got: list[tuple[int, bytes]] = []
    for start, end in zip(points, points[1:], strict=False):
        decoder.feed(stream[start:end])
        got.extend(decoder)
    decoder.finish()
    assert got == frames
