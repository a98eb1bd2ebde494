"""The 9-byte version-1 frame header and an incremental frame decoder.

Header, big-endian: ``version u16 (=1) | data_len u32 | flag u8 | 2 reserved bytes``, then
``data_len`` bytes of body. Reserved bytes are written as zero and ignored on read.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from qp2p.errors import (
    EmptyMessage,
    FrameTooLarge,
    MessageTooLarge,
    SendError,
    TruncatedFrame,
    UnknownFlag,
    UnsupportedVersion,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = (
    "FLAG_CONTROL",
    "FLAG_REQUEST",
    "FLAG_RESPONSE",
    "FLAG_USER",
    "HEADER_SIZE",
    "MAX_DATA_LEN",
    "TAKE_BROKEN",
    "TAKE_DONE",
    "TAKE_ODD",
    "TAKE_OVER_BUDGET",
    "VERSION",
    "FrameDecoder",
    "FrameReceived",
    "append_frame",
    "decode_header",
    "encode_frame",
    "encode_header",
)

VERSION = 1
HEADER_SIZE = 9
MAX_DATA_LEN = 0xFFFFFFFF
FLAG_USER = 0
FLAG_CONTROL = 1
FLAG_REQUEST = 2
FLAG_RESPONSE = 3

# What ``FrameDecoder.take`` stopped at.
TAKE_DONE = 0  # no complete frame is left
TAKE_ODD = 1  # a frame that is not a message: a control frame, or a request too short for its id
TAKE_OVER_BUDGET = 2  # the next frame costs more than the budget left (it stays in the decoder)
TAKE_BROKEN = 3  # a bad header follows the frames returned: the next call raises its error

_HEADER = struct.Struct(">HIB2x")
# Consumed bytes are dropped from the front of the buffer once they pass this mark.
_COMPACT_AT = 1 << 16


def encode_header(flag: int, data_len: int) -> bytes:
    """The header announcing a body of ``data_len`` bytes; refuses what a reader would reject."""
    if flag < FLAG_USER or flag > FLAG_RESPONSE:
        raise SendError(f"unknown frame flag {flag}")
    if data_len < 0:
        raise SendError(f"negative frame length {data_len}")
    if data_len > MAX_DATA_LEN:
        raise MessageTooLarge(MAX_DATA_LEN, data_len)
    if data_len == 0 and flag == FLAG_USER:
        raise SendError("a user message cannot be empty")
    return _HEADER.pack(VERSION, data_len, flag)


def encode_frame(flag: int, body: Buffer) -> bytes:
    """Header and body in one ``bytes`` (a copy: meant for small frames)."""
    view = memoryview(body)
    return encode_header(flag, view.nbytes) + view


def append_frame(out: bytearray, flag: int, body: bytes) -> None:
    """Append header and body to ``out``: how lanes queue small frames, in one call."""
    out += encode_header(flag, len(body))
    out += body


class FrameReceived:
    """A user message, request or response. ``cost`` units are granted back once the
    application consumed it; ``large`` frames also give back their buffer slot and the
    ``held`` bytes of memory they had there."""

    __slots__ = ("cost", "data", "flag", "held", "lane", "large", "request_id")

    def __init__(
        self,
        flag: int,
        request_id: int,
        data: bytes | bytearray,
        lane: int,
        cost: int,
        large: bool,
        held: int = 0,
    ) -> None:
        self.flag = flag
        self.request_id = request_id
        self.data = data
        self.lane = lane
        self.cost = cost
        self.large = large
        self.held = held

    def __repr__(self) -> str:
        return (
            f"FrameReceived(flag={self.flag}, request_id={self.request_id}, {len(self.data)} bytes, "
            f"lane={self.lane}, cost={self.cost}, large={self.large}, held={self.held})"
        )


def _check_header(version: int, data_len: int, flag: int, max_size: int) -> None:
    if version != VERSION:
        raise UnsupportedVersion(f"frame version {version}, expected {VERSION}")
    if flag > FLAG_RESPONSE:
        raise UnknownFlag(f"unknown frame flag {flag}")
    if data_len > max_size:
        raise FrameTooLarge(max_size, data_len)
    if data_len == 0 and flag == FLAG_USER:
        raise EmptyMessage("empty user message")


def _check_max_size(max_size: int) -> int:
    if max_size < 0 or max_size > MAX_DATA_LEN:
        raise ValueError(f"max_size must be between 0 and {MAX_DATA_LEN}, got {max_size}")
    return max_size


def decode_header(data: Buffer, max_size: int) -> tuple[int, int]:
    """``(flag, data_len)`` of the header at the start of ``data``, checked against ``max_size``."""
    _check_max_size(max_size)
    view = memoryview(data)
    if view.nbytes < HEADER_SIZE:
        raise TruncatedFrame(f"frame header needs {HEADER_SIZE} bytes, got {view.nbytes}")
    version, data_len, flag = _HEADER.unpack_from(view)
    _check_header(version, data_len, flag, max_size)
    return flag, data_len


class FrameDecoder:
    """Cuts a byte stream, fed in pieces of any size, into ``(flag, body)`` frames.

    ``feed()`` only buffers; ``next_frame()`` (or iteration) returns frames as they complete
    and raises on the first bad header, before buffering its body. After an error the decoder
    stays broken: every later call raises the same error again.
    """

    __slots__ = ("_buf", "_error", "_max_size", "_pos")

    def __init__(self, max_size: int) -> None:
        self._max_size = _check_max_size(max_size)
        self._buf = bytearray()
        self._pos = 0
        self._error: Exception | None = None

    @property
    def max_size(self) -> int:
        """The largest body this decoder accepts."""
        return self._max_size

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned in a frame."""
        return len(self._buf) - self._pos

    @property
    def capacity(self) -> int:
        """Bytes the buffer holds: what is buffered, and what was taken but not yet let go."""
        return len(self._buf)

    def _fail(self, exc: Exception) -> Exception:
        self._error = exc
        return exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error.with_traceback(None)

    def feed(self, data: Buffer) -> None:
        """Append stream bytes; never parses, so it raises only if the decoder already failed."""
        self._raise_if_failed()
        buf = self._buf
        if self._pos == len(buf):
            buf.clear()
            self._pos = 0
        elif self._pos >= _COMPACT_AT:
            del buf[: self._pos]
            self._pos = 0
        buf += data

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete frame, or None until more bytes arrive."""
        self._raise_if_failed()
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        version, data_len, flag = _HEADER.unpack_from(buf, pos)
        try:
            _check_header(version, data_len, flag, self._max_size)
        except Exception as exc:
            raise self._fail(exc) from None
        start = pos + HEADER_SIZE
        end = start + data_len
        if end > len(buf):
            return None
        self._pos = end
        return flag, bytes(buf[start:end])

    def take(
        self, data: Buffer, lane: int, budget: int, frame_cost: int
    ) -> tuple[list[FrameReceived], int, int, tuple[int, bytes] | None]:
        """Feed ``data`` (may be empty), then take every complete message frame, as a
        ``FrameReceived`` of ``lane`` costing its body's length plus ``frame_cost``, while
        their cost fits ``budget``.

        Returns ``(frames, spent, stop, odd)``: ``stop`` says why it stopped (``TAKE_*``);
        for ``TAKE_ODD``, ``odd`` is the ``(flag, body)`` of the frame it stopped at, taken
        from the stream. A bad header raises, unless frames came before it: those are
        returned first (``TAKE_BROKEN``), and the next call raises. Each body is one copy of
        what was fed, a request's or response's id cut off (the compiled decoder reads
        ``data`` in place while nothing is buffered, and keeps only an incomplete tail).
        """
        self.feed(data)
        try:
            return self._take(lane, budget, frame_cost)
        finally:
            self._let_go()

    def _let_go(self) -> None:
        """Drop what was taken once it passes the mark, now: a burst fed at once must not stay
        held behind a small tail until the next ``feed``, which may never come."""
        if self._pos >= _COMPACT_AT:
            del self._buf[: self._pos]
            self._pos = 0

    def _take(
        self, lane: int, budget: int, frame_cost: int
    ) -> tuple[list[FrameReceived], int, int, tuple[int, bytes] | None]:
        """``take`` on what is buffered."""
        frames: list[FrameReceived] = []
        spent = 0
        while True:
            self._raise_if_failed()
            buf = self._buf
            pos = self._pos
            if len(buf) - pos < HEADER_SIZE:
                return frames, spent, TAKE_DONE, None
            version, data_len, flag = _HEADER.unpack_from(buf, pos)
            try:
                _check_header(version, data_len, flag, self._max_size)
            except Exception as exc:
                self._fail(exc)
                if frames:
                    return frames, spent, TAKE_BROKEN, None
                raise exc from None
            start = pos + HEADER_SIZE
            end = start + data_len
            if end > len(buf):
                return frames, spent, TAKE_DONE, None
            if flag == FLAG_CONTROL or (flag != FLAG_USER and data_len < 4):
                self._pos = end
                return frames, spent, TAKE_ODD, (flag, bytes(buf[start:end]))
            cost = data_len + frame_cost
            if spent + cost > budget:
                return frames, spent, TAKE_OVER_BUDGET, None
            self._pos = end
            spent += cost
            if flag == FLAG_USER:
                frames.append(FrameReceived(flag, 0, bytes(buf[start:end]), lane, cost, False))
            else:
                request_id = int.from_bytes(buf[start : start + 4], "big")
                frames.append(FrameReceived(flag, request_id, bytes(buf[start + 4 : end]), lane, cost, False))

    def __iter__(self) -> FrameDecoder:
        return self

    def __next__(self) -> tuple[int, bytes]:
        frame = self.next_frame()
        if frame is None:
            raise StopIteration
        return frame

    def finish(self) -> None:
        """Declare the end of the stream; raises ``TruncatedFrame`` if it ended inside a frame."""
        self._raise_if_failed()
        left = len(self._buf) - self._pos
        if left:
            raise self._fail(TruncatedFrame(f"stream ended inside a frame, {left} bytes unused"))
