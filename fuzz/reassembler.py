"""Fuzz target: ``Reassembler`` fed one large-message stream in pieces, then ``finish()``.

Input: a byte choosing ``max_size`` from ``BUFFER_SIZES``, ``CUTS`` bytes saying where the
stream is cut into the pieces it is fed in (see ``pieces``), then the stream. Only
``DecodeError`` may escape; after one, every call raises it again; a message that completes
must re-encode to the whole stream (reserved bytes aside).

    python fuzz/reassembler.py [--backend=fast|pure] [libFuzzer flags] [corpus dir]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from _harness import CUTS, MAX_SIZES, Backend, attempt, errors, main, pieces, split, zero_reserved
from _realdata import frames

DecodeError = errors.DecodeError
# The reassembler allocates the whole body when the header arrives, as documented, so the limits
# stop at 64 KiB: a 4 GiB one would only measure the machine's memory.
BUFFER_SIZES = tuple(size for size in MAX_SIZES if size <= 1 << 16)


def check(backend: Backend, data: bytes) -> list[Any]:
    params, stream = split(data, 1 + CUTS)
    reassembler = backend.chunking.Reassembler(BUFFER_SIZES[params[0] % len(BUFFER_SIZES)])
    trace: list[Any] = []
    failure = None
    for piece in pieces(stream, params[1:]):
        step = attempt(lambda piece=piece: reassembler.feed(piece), DecodeError)
        trace.append((step, reassembler.expected, reassembler.received, reassembler.done))
        if step[0] == "error":
            failure = step
            break
        assert step[1] == reassembler.done
    result = attempt(reassembler.finish, DecodeError)
    trace.append(result)
    if failure is not None:  # broken for good: every later call raises the same error
        assert result == failure
        assert attempt(lambda: reassembler.feed(b"\0"), DecodeError) == failure
    if result[0] == "ok":
        flag, body = result[1]
        assert backend.framing.encode_frame(flag, body) == zero_reserved(stream, [(flag, body)])
    return trace


def seeds() -> Iterator[bytes]:
    """Large-message streams as a sender writes them (one frame each), whole and in pieces; one
    cut short, one with a byte too many, and one above a small limit."""
    whole = bytes((BUFFER_SIZES.index(max(BUFFER_SIZES)),))
    for frame in frames():
        yield whole + bytes(CUTS) + frame
    big = frames()[1]
    yield whole + bytes((3, 8, 128, 250)) + big
    yield whole + bytes((1, 2, 3, 4)) + big[:100]
    yield whole + bytes((254, 0, 0, 0)) + big + b"\0"
    yield bytes((BUFFER_SIZES.index(64),)) + bytes(CUTS) + big


if __name__ == "__main__":
    main(check)
