"""Fuzz target: ``wire.decode`` on a control body and ``wire.decode_frame`` on a whole frame.

Input: a byte choosing ``decode_frame``'s ``max_size`` from ``MAX_SIZES``, then a frame; its bytes
after the 9-byte header are also decoded as a control body. Only ``DecodeError`` may escape;
whatever decodes must encode back to the same bytes (a frame's reserved header bytes aside):
the format has one encoding per message.

    python fuzz/wire_decode.py [--backend=fast|pure] [libFuzzer flags] [corpus dir]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from _harness import HEADER_SIZE, MAX_SIZES, Backend, attempt, errors, framing_for_wire, main, split, wire
from _realdata import frames


def check(backend: Backend, data: bytes) -> list[Any]:
    params, frame = split(data, 1)
    body = frame[HEADER_SIZE:]
    max_size = MAX_SIZES[params[0] % len(MAX_SIZES)]
    with framing_for_wire(backend.framing):
        control = attempt(lambda: wire.decode(backend.framing.FLAG_CONTROL, body), errors.DecodeError)
        if control[0] == "ok":
            assert wire.encode(control[1]) == backend.framing.encode_frame(backend.framing.FLAG_CONTROL, body)
        whole = attempt(lambda: wire.decode_frame(frame, max_size), errors.DecodeError)
        if whole[0] == "ok":
            assert wire.encode(whole[1]) == frame[: HEADER_SIZE - 2] + b"\0\0" + body
    return [control, whole]


def seeds() -> Iterator[bytes]:
    """A frame of every message kind, with no size limit and with a 64-byte one."""
    for frame in frames():
        yield bytes((MAX_SIZES.index(max(MAX_SIZES)),)) + frame
        yield bytes((MAX_SIZES.index(64),)) + frame


if __name__ == "__main__":
    main(check)
