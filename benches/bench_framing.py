"""Frame encoding and incremental decoding, compiled against pure (target: decode >= 5x pure)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from qp2p._pure.framing import FLAG_USER, HEADER_SIZE, encode_frame

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))  # benches/ is not a package
from _inputs import KiB, MiB, payload  # noqa: E402

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

FRAMES = 10_000
BODY_SIZE = 64 - HEADER_SIZE  # 55-byte bodies make 64-byte frames on the wire
PIECE_SIZE = 1200  # stream bytes per QUIC packet
MAX_SIZE = MiB


def _body(index: int) -> bytes:
    return bytes((index % 255 + 1,)) * BODY_SIZE


LAST_FRAME = (FLAG_USER, _body(FRAMES - 1))


@pytest.fixture(scope="module")
def stream() -> bytes:
    """10,000 user frames of 64 bytes, encoded by the pure reference so the decoder is judged alone."""
    return b"".join(encode_frame(FLAG_USER, _body(i)) for i in range(FRAMES))


@pytest.fixture(scope="module")
def packets(stream: bytes) -> list[bytes]:
    """The same stream cut into 1200-byte pieces, as QUIC packets deliver it."""
    return [stream[at : at + PIECE_SIZE] for at in range(0, len(stream), PIECE_SIZE)]


@pytest.mark.benchmark(group="framing.decode.10000x64B")
def test_framing_decode_10000x64B(benchmark: BenchmarkFixture, framing: ModuleType, stream: bytes) -> None:
    """One feed of the whole stream, then every frame taken: the per-frame cost of the decoder."""

    def run() -> None:
        decoder = framing.FrameDecoder(MAX_SIZE)
        decoder.feed(stream)
        frames = list(decoder)
        assert len(frames) == FRAMES and frames[-1] == LAST_FRAME and decoder.buffered == 0

    benchmark(run)


@pytest.mark.benchmark(group="framing.decode_pieces.10000x64B")
def test_framing_decode_pieces_10000x64B(
    benchmark: BenchmarkFixture, framing: ModuleType, packets: list[bytes]
) -> None:
    """The stream fed 1200 bytes at a time, frames taken after each feed: buffering and compaction."""

    def run() -> None:
        decoder = framing.FrameDecoder(MAX_SIZE)
        frames: list[tuple[int, bytes]] = []
        for piece in packets:
            decoder.feed(piece)
            frames.extend(decoder)
        assert len(frames) == FRAMES and frames[-1] == LAST_FRAME and decoder.buffered == 0

    benchmark(run)


@pytest.mark.benchmark(group="framing.take_pieces.10000x64B")
def test_framing_take_pieces_10000x64B(
    benchmark: BenchmarkFixture, framing: ModuleType, packets: list[bytes]
) -> None:
    """What a lane does with stream data: feed 1200 bytes, ``take`` the messages as
    ``FrameReceived`` objects within a budget, after each feed."""

    def run() -> None:
        decoder = framing.FrameDecoder(MAX_SIZE)
        frames: list[object] = []
        for piece in packets:
            frames.extend(decoder.take(piece, 1, 1 << 40, 73)[0])
        last = frames[-1]
        assert len(frames) == FRAMES and last.data == LAST_FRAME[1] and decoder.buffered == 0  # type: ignore[attr-defined]

    benchmark(run)


@pytest.mark.benchmark(group="framing.append.10000x55B")
def test_framing_append_10000x55B(benchmark: BenchmarkFixture, framing: ModuleType) -> None:
    """``append_frame`` of 10,000 55-byte bodies to one lane buffer, as sends queue them."""
    bodies = [_body(i) for i in range(FRAMES)]

    def run() -> None:
        out = bytearray()
        append = framing.append_frame
        for body in bodies:
            append(out, FLAG_USER, body)
        assert len(out) == FRAMES * 64 and out[-BODY_SIZE:] == LAST_FRAME[1]

    benchmark(run)


def _bench_encode(benchmark: BenchmarkFixture, framing: ModuleType, size: int) -> None:
    """``encode_frame`` of one user body of ``size`` bytes (header plus a copy of the body)."""
    body = payload(size)
    encode = framing.encode_frame

    def run() -> None:
        assert len(encode(FLAG_USER, body)) == HEADER_SIZE + size

    benchmark(run)


@pytest.mark.benchmark(group="framing.encode.64B")
def test_framing_encode_64B(benchmark: BenchmarkFixture, framing: ModuleType) -> None:
    _bench_encode(benchmark, framing, 64)


@pytest.mark.benchmark(group="framing.encode.4KiB")
def test_framing_encode_4KiB(benchmark: BenchmarkFixture, framing: ModuleType) -> None:
    _bench_encode(benchmark, framing, 4 * KiB)


@pytest.mark.benchmark(group="framing.encode.1MiB")
def test_framing_encode_1MiB(benchmark: BenchmarkFixture, framing: ModuleType) -> None:
    _bench_encode(benchmark, framing, MiB)
