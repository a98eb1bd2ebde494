"""Fuzz target: ``FrameDecoder`` on a stream fed in pieces, then ``finish()``.

Input: a byte choosing ``max_size`` from ``MAX_SIZES``, ``CUTS`` bytes saying where the stream
is cut into the pieces it is fed in (see ``pieces``), then the stream. Only ``DecodeError`` may
escape; after one, the decoder must keep raising it; the frames it returns must re-encode to
the stream they came from (reserved bytes aside), and ``decode_header`` must agree with the
first frame.

    python fuzz/framing_decoder.py [--backend=fast|pure] [libFuzzer flags] [corpus dir]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from _harness import (
    CUTS,
    HEADER_SIZE,
    MAX_SIZES,
    Backend,
    attempt,
    errors,
    main,
    pieces,
    split,
    zero_reserved,
)
from _realdata import frames

DecodeError = errors.DecodeError


def drain(decoder: Any) -> tuple[list[tuple[int, bytes]], tuple[Any, ...] | None]:
    """The frames complete so far, and the error that stopped the decoder (None if none did)."""
    got: list[tuple[int, bytes]] = []
    for _ in range(decoder.buffered // HEADER_SIZE + 1):  # a frame takes at least its header
        step = attempt(decoder.next_frame, DecodeError)
        if step[0] == "error":
            return got, step
        if step[1] is None:
            return got, None
        got.append(step[1])
    raise AssertionError(f"more frames than headers fit in the buffer: {got!r}")


def check(backend: Backend, data: bytes) -> list[Any]:
    params, stream = split(data, 1 + CUTS)
    max_size = MAX_SIZES[params[0] % len(MAX_SIZES)]
    decoder = backend.framing.FrameDecoder(max_size)
    trace: list[Any] = [attempt(lambda: backend.framing.decode_header(stream, max_size), DecodeError)]
    frames_seen: list[tuple[int, bytes]] = []
    failure = None
    for piece in pieces(stream, params[1:]):
        decoder.feed(piece)
        got, failure = drain(decoder)
        frames_seen += got
        trace.append((got, failure, decoder.buffered))
        if failure is not None:
            break
    if failure is None:
        finished = attempt(decoder.finish, DecodeError)
        trace.append(finished)
        if finished[0] == "error":
            failure = finished
    if failure is not None:  # broken for good: every later call raises the same error
        assert attempt(lambda: decoder.feed(b"\0"), DecodeError) == failure
        assert attempt(decoder.next_frame, DecodeError) == failure
    else:
        consumed = sum(HEADER_SIZE + len(body) for _, body in frames_seen)
        assert decoder.buffered == 0 and consumed == len(stream)
    if frames_seen:
        assert trace[0] == ("ok", (frames_seen[0][0], len(frames_seen[0][1])))
    encoded = b"".join(backend.framing.encode_frame(flag, body) for flag, body in frames_seen)
    assert encoded == zero_reserved(stream, frames_seen)
    return trace


def seeds() -> Iterator[bytes]:
    """The frames of every message kind as one stream, fed whole, cut inside headers and bodies,
    and against a small limit; plus a frame with reserved bytes set, and a truncated stream."""
    stream = b"".join(frames())
    whole = bytes((MAX_SIZES.index(max(MAX_SIZES)),))
    for cuts in (bytes(CUTS), bytes((1, 2, 100, 101)), bytes((50, 120, 180, 254))):
        yield whole + cuts + stream
    yield bytes((MAX_SIZES.index(64),)) + bytes(CUTS) + stream
    yield whole + bytes(CUTS) + bytes.fromhex("0001 00000002 00 beef 6869")
    yield whole + bytes((30, 60, 90, 120)) + stream[: len(stream) // 2]


if __name__ == "__main__":
    main(check)
