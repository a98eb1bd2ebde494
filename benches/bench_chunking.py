"""Splitting large messages without copying and reassembling them in one buffer, compiled against pure."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from qp2p._pure.framing import FLAG_USER, HEADER_SIZE, encode_header

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))  # benches/ is not a package
from _inputs import KiB, MiB, payload, size_label  # noqa: E402

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

CHUNK_SIZE = 65536
SIZES = (64, 4 * KiB, MiB, 64 * MiB)
MAX_SIZE = 64 * MiB
# At this size one call takes tens of milliseconds: a few fixed rounds bound the run time.
HEAVY_SIZE = 64 * MiB
HEAVY_ROUNDS = 5


@pytest.fixture(scope="module")
def frame_of() -> Callable[[int], bytes]:
    """The frame (header + payload) carrying a payload of the given size, built once per size."""
    return cache(lambda size: encode_header(FLAG_USER, size) + payload(size))


def _measure(benchmark: BenchmarkFixture, run: Callable[[], None], size: int) -> None:
    if size >= HEAVY_SIZE:
        benchmark.pedantic(run, rounds=HEAVY_ROUNDS, iterations=1, warmup_rounds=1)
    else:
        benchmark(run)


def _bench_split(
    benchmark: BenchmarkFixture, chunking: ModuleType, frame_of: Callable[[int], bytes], size: int
) -> None:
    """Every piece of ``Chunker(0, payload, 65536)`` taken and "sent" by adding up its length."""
    data = memoryview(frame_of(size))[HEADER_SIZE:]
    chunker = chunking.Chunker

    def run() -> None:
        assert sum(map(len, chunker(FLAG_USER, data, CHUNK_SIZE))) == HEADER_SIZE + size

    _measure(benchmark, run, size)


def _bench_reassemble(
    benchmark: BenchmarkFixture, chunking: ModuleType, frame_of: Callable[[int], bytes], size: int
) -> None:
    """A fresh ``Reassembler`` fed the whole frame in 65536-byte pieces, as a stream delivers it."""
    frame = memoryview(frame_of(size))
    pieces = [frame[at : at + CHUNK_SIZE] for at in range(0, len(frame), CHUNK_SIZE)]
    reassembler = chunking.Reassembler

    def run() -> None:
        collector = reassembler(MAX_SIZE)
        for piece in pieces:
            collector.feed(piece)
        assert collector.done and collector.received == size

    _measure(benchmark, run, size)


@pytest.mark.parametrize("size", SIZES, ids=size_label)
def test_chunking_split(
    benchmark: BenchmarkFixture, chunking: ModuleType, frame_of: Callable[[int], bytes], size: int
) -> None:
    benchmark.group = f"chunking.split.{size_label(size)}"
    _bench_split(benchmark, chunking, frame_of, size)


@pytest.mark.parametrize("size", SIZES, ids=size_label)
def test_chunking_reassemble(
    benchmark: BenchmarkFixture, chunking: ModuleType, frame_of: Callable[[int], bytes], size: int
) -> None:
    benchmark.group = f"chunking.reassemble.{size_label(size)}"
    _bench_reassemble(benchmark, chunking, frame_of, size)
