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


# ---- take: a lane's frames as messages ---------------------------------------------------------

COST = 73  # what the session charges per frame beyond its body


def lane_stream(framing: ModuleType, *frames: tuple[int, bytes]) -> bytearray:
    out = bytearray()
    for flag, body in frames:
        framing.append_frame(out, flag, body)
    return out


def test_append_frame_writes_what_encode_frame_does(framing: ModuleType) -> None:
    out = bytearray(b"kept")
    framing.append_frame(out, framing.FLAG_REQUEST, b"body")
    assert out == b"kept" + framing.encode_frame(framing.FLAG_REQUEST, b"body")
    with pytest.raises(errors.SendError):
        framing.append_frame(out, framing.FLAG_USER, b"")  # what a reader would reject


def test_take_returns_messages_and_cuts_request_ids(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(MiB)
    decoder.feed(lane_stream(framing, (framing.FLAG_USER, b"one"), (framing.FLAG_REQUEST, b"\0\0\0\x09ask")))
    frames, spent, stop, odd = decoder.take(b"", 2, 10_000, COST)
    assert [(f.flag, f.request_id, f.data, f.lane, f.cost, f.large) for f in frames] == [
        (framing.FLAG_USER, 0, b"one", 2, 3 + COST, False),
        (framing.FLAG_REQUEST, 9, b"ask", 2, 7 + COST, False),  # the id counts, though cut off
    ]
    assert type(frames[1].data) is bytes
    assert (spent, stop, odd, decoder.buffered) == (10 + 2 * COST, framing.TAKE_DONE, None, 0)


def test_take_stops_at_a_control_frame_and_hands_it_over(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(MiB)
    decoder.feed(lane_stream(framing, (0, b"a"), (framing.FLAG_CONTROL, b"hello"), (0, b"b")))
    frames, _, stop, odd = decoder.take(b"", 0, 10_000, COST)
    assert [f.data for f in frames] == [b"a"] and stop == framing.TAKE_ODD
    assert odd == (framing.FLAG_CONTROL, b"hello")
    frames, _, stop, _ = decoder.take(b"", 0, 10_000, COST)  # what follows it comes with the next call
    assert [f.data for f in frames] == [b"b"] and stop == framing.TAKE_DONE


def test_take_hands_over_a_request_too_short_for_its_id(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(MiB)
    decoder.feed(lane_stream(framing, (framing.FLAG_RESPONSE, b"\0\0")))
    assert decoder.take(b"", 0, 10_000, COST) == ([], 0, framing.TAKE_ODD, (framing.FLAG_RESPONSE, b"\0\0"))


def test_take_stops_before_a_frame_beyond_the_budget(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(MiB)
    decoder.feed(lane_stream(framing, (0, b"x" * 27), (0, b"y" * 27)))
    frames, spent, stop, _ = decoder.take(b"", 0, 150, COST)  # room for one frame of 100 units, not two
    assert [f.data for f in frames] == [b"x" * 27] and spent == 100 and stop == framing.TAKE_OVER_BUDGET
    assert decoder.buffered == framing.HEADER_SIZE + 27  # the frame that did not fit is still there


def test_take_reads_what_it_is_given_and_keeps_only_the_incomplete_tail(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(MiB)
    stream = lane_stream(framing, (0, b"a" * 10), (0, b"b" * 10), (0, b"c" * 10))
    cut = len(stream) - 5
    frames, _, stop, _ = decoder.take(bytes(stream[:cut]), 0, 10_000, COST)
    assert [f.data for f in frames] == [b"a" * 10, b"b" * 10] and stop == framing.TAKE_DONE
    assert decoder.buffered == framing.HEADER_SIZE + 10 - 5  # the third frame's first bytes
    frames, _, _, _ = decoder.take(bytes(stream[cut:]), 0, 10_000, COST)
    assert [f.data for f in frames] == [b"c" * 10] and decoder.buffered == 0


def test_take_keeps_an_incomplete_frame_and_raises_on_a_bad_header(framing: ModuleType) -> None:
    decoder = framing.FrameDecoder(10)
    stream = lane_stream(framing, (0, b"12345"))
    decoder.feed(stream[:-1])
    assert decoder.take(b"", 0, 10_000, COST) == ([], 0, framing.TAKE_DONE, None)
    decoder.feed(stream[-1:] + framing.encode_header(0, 11))  # complete, then a body above max_size
    frames, _, stop, _ = decoder.take(b"", 0, 10_000, COST)  # what came before the bad header first
    assert [f.data for f in frames] == [b"12345"] and stop == framing.TAKE_BROKEN
    with pytest.raises(errors.FrameTooLarge):
        decoder.take(b"", 0, 10_000, COST)
    with pytest.raises(errors.FrameTooLarge):  # the decoder stays broken
        decoder.take(b"", 0, 10_000, COST)


@pytest.mark.parametrize("burst", [4 * MiB, 300 * 1024])
def test_a_burst_leaves_no_large_buffer_behind_a_small_tail(framing: ModuleType, burst: int) -> None:
    """A peer keeps one byte of a frame pending, sends a burst in one piece (QUIC hands over
    everything behind a gap at once), then stays silent: what the burst grew must not stay
    held for the stream's life while only the tail is counted against its credit."""
    decoder = framing.FrameDecoder(MiB)
    frame = framing.encode_frame(framing.FLAG_USER, b"x" * 1000)
    decoder.take(frame[:1], 0, 1 << 40, COST)
    frames, _, stop, _ = decoder.take(frame[1:] + frame * (burst // len(frame)) + frame[:1], 0, 1 << 40, COST)
    assert len(frames) == 1 + burst // len(frame) and stop == framing.TAKE_DONE
    assert decoder.buffered == 1
    assert decoder.capacity <= 256 * 1024  # what a lane's decoder keeps at most beyond 4x its tail
