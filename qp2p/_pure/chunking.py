"""Large messages on a stream of their own: split without copying, reassemble into one buffer.

A stream that carries one large message holds exactly one frame. ``Chunker`` hands out its
header and then memoryview slices of the caller's payload (never a copy); ``Reassembler``
allocates the whole body once, when the header arrives, and fills it in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qp2p._pure.framing import HEADER_SIZE, MAX_DATA_LEN, decode_header, encode_header
from qp2p.errors import MalformedMessage, TruncatedFrame

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ("Chunker", "Reassembler")


def _byte_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class Chunker:
    """Iterates over one frame: the 9-byte header (with ``prefix`` after it), then payload slices
    of at most ``chunk_size``. The body is ``prefix`` then ``payload``; a short prefix such as a
    request id is copied, the payload never."""

    __slots__ = ("_chunk_size", "_head", "_head_size", "_offset", "_view")

    def __init__(self, flag: int, payload: Buffer, chunk_size: int, prefix: bytes = b"") -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._view = _byte_view(payload)
        self._head: bytes | None = encode_header(flag, len(prefix) + self._view.nbytes) + prefix
        self._head_size = len(self._head)
        self._chunk_size = chunk_size
        self._offset = 0

    @property
    def total(self) -> int:
        """Header, prefix and payload, in bytes."""
        return self._head_size + self._view.nbytes

    @property
    def remaining(self) -> int:
        """Bytes not yet handed out, header included."""
        pending_head = self._head_size if self._head is not None else 0
        return pending_head + self._view.nbytes - self._offset

    def __iter__(self) -> Chunker:
        return self

    def __next__(self) -> bytes | memoryview:
        head = self._head
        if head is not None:
            self._head = None
            return head
        offset = self._offset
        if offset >= self._view.nbytes:
            raise StopIteration
        piece = self._view[offset : offset + self._chunk_size]
        self._offset = offset + piece.nbytes
        return piece


class Reassembler:
    """Collects one frame into a ``bytearray`` allocated once, when its header is complete.

    The header is checked (version, flag, ``max_size``) before the allocation. Bytes past the
    end of the frame, or a stream that ends early, are errors; after one, every call raises it.
    """

    __slots__ = ("_body", "_error", "_filled", "_flag", "_header", "_max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < 0 or max_size > MAX_DATA_LEN:
            raise ValueError(f"max_size must be between 0 and {MAX_DATA_LEN}, got {max_size}")
        self._max_size = max_size
        self._header = bytearray()
        self._flag = -1
        self._body: bytearray | None = None
        self._filled = 0
        self._error: Exception | None = None

    @property
    def expected(self) -> int:
        """Body length announced by the header, or -1 while the header is incomplete."""
        return -1 if self._body is None else len(self._body)

    @property
    def received(self) -> int:
        """Body bytes stored so far."""
        return self._filled

    @property
    def done(self) -> bool:
        """True once the whole body has arrived."""
        return self._body is not None and self._filled == len(self._body)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error.with_traceback(None)

    def feed(self, data: Buffer) -> bool:
        """Store stream bytes; True once the message is complete."""
        self._raise_if_failed()
        view = _byte_view(data)
        if self._body is None:
            missing = HEADER_SIZE - len(self._header)
            self._header += view[:missing]
            view = view[missing:]
            if len(self._header) < HEADER_SIZE:
                return False
            try:
                self._flag, data_len = decode_header(self._header, self._max_size)
            except Exception as exc:
                self._error = exc
                raise
            self._body = bytearray(data_len)
        body = self._body
        filled = self._filled
        if view.nbytes > len(body) - filled:
            self._error = MalformedMessage(
                f"{view.nbytes - (len(body) - filled)} bytes after the end of the message"
            )
            raise self._error
        body[filled : filled + view.nbytes] = view
        self._filled = filled + view.nbytes
        return self._filled == len(body)

    def finish(self) -> tuple[int, bytearray]:
        """``(flag, body)`` at the end of the stream; ``TruncatedFrame`` if it ended early."""
        self._raise_if_failed()
        body = self._body
        if body is None:
            self._error = TruncatedFrame(
                f"stream ended inside a frame header, after {len(self._header)} bytes"
            )
            raise self._error
        if self._filled != len(body):
            self._error = TruncatedFrame(f"stream ended after {self._filled} of {len(body)} message bytes")
            raise self._error
        return self._flag, body
