"""End to end over 127.0.0.1: qp2p against raw aioquic doing the same work, at 1200-byte datagrams.

Each bench runs once per implementation (``impl`` ids ``qp2p`` and ``aioquic``; how each side
carries messages is in qp2p_peer.py and aioquic_baseline.py) and once per event loop (``loop``
ids ``asyncio`` and, when it is installed, ``uvloop``; ``QP2P_BENCH_LOOP=asyncio|uvloop|both``
narrows it, default both), with the receiver and the sender in one event loop, and puts both
implementations in one group (``e2e.<workload>.<size>``). qp2p runs on whichever backend it
loaded (``qp2p.BACKEND``, recorded in ``extra_info``): ``QP2P_NO_EXTENSIONS=1`` gives the pure
figures. The workloads themselves (what is sent, checked and reported) are in _workloads.py,
shared with peers.py.

A round is a fresh event loop: both ends are started and connected before the clock starts
and closed after it stops, and what arrived is checked after that, untimed. The benchmark
time is the round's timed call; the ``extra_info`` figures come from the workload's own clock
(first send to last byte in, or each round trip), which leaves out only the loop's start-up.
Every round is bounded by ``ROUND_TIMEOUT``, so a broken implementation fails instead of
hanging. Under ``--benchmark-disable`` (CI smoke mode) each bench runs once at reduced sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

import qp2p

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))  # benches/ is not a package
from _inputs import KiB, MiB, size_label  # noqa: E402
from _pairs import Pair, loops_for  # noqa: E402
from _peers import CORE, load  # noqa: E402
from _workloads import Bulk, Messages, Requests, Workload  # noqa: E402

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

T = TypeVar("T")

ROUNDS = 3
# Which event loops to run on: asyncio, uvloop or both (uvloop only where it is installed).
LOOP_ENV = "QP2P_BENCH_LOOP"
MEMORY_SCRIPT = Path(__file__).with_name("e2e_memory.py")
# Below pytest's own per-test timeout, above the script's bound on its own run.
MEMORY_SCRIPT_TIMEOUT = 270.0
# Full size, then the CI smoke-mode size.
MESSAGES = (20_000, 500)
BULK_SIZE = (32 * MiB, 1 * MiB)
REQUESTS = (1_000, 50)
REQUEST_SIZE = 64
MEMORY_MIB = (256, 16)

with_impl = pytest.mark.parametrize("impl", CORE)
with_loop = pytest.mark.parametrize("loop", loops_for(os.environ.get(LOOP_ENV, "both")))


def _pick(benchmark: BenchmarkFixture, sizes: tuple[T, T]) -> T:
    """The full size when timing, the smoke-mode size under ``--benchmark-disable``."""
    return sizes[1] if benchmark.disabled else sizes[0]


def _rounds(benchmark: BenchmarkFixture, impl: str, loop: str, workload: Workload) -> None:
    """Times ``workload`` on a fresh pair per round and records its figures in ``extra_info``.

    Making the pair, checking what arrived and closing the pair are not timed.
    """
    results: list[Any] = []
    pairs: list[Pair] = []
    benchmark.group = workload.group

    def setup() -> tuple[tuple[Pair], dict[str, Any]]:
        pairs.append(Pair(impl, load(impl), loop, workload.datagram_size))
        return (pairs[-1],), {}

    def target(pair: Pair) -> None:
        results.append(pair.run(workload.work(pair), workload.what))

    def teardown(pair: Pair) -> None:
        try:
            workload.check(pair)
        finally:
            pair.close()

    try:
        benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=ROUNDS, iterations=1)
        if benchmark.disabled:
            teardown(pairs[-1])  # pytest-benchmark skips teardown when disabled
    finally:
        for pair in pairs:
            pair.close()  # after a failure: whatever is still open
    benchmark.extra_info.update(impl=impl, loop=loop, backend=qp2p.BACKEND, **workload.figures(results))


@with_loop
@with_impl
@pytest.mark.parametrize("size", [64, KiB], ids=size_label)
def test_e2e_messages(benchmark: BenchmarkFixture, impl: str, loop: str, size: int) -> None:
    """Many small messages from one sender to one receiver, as fast as flow control allows."""
    _rounds(benchmark, impl, loop, Messages(size, _pick(benchmark, MESSAGES)))


@with_loop
@with_impl
def test_e2e_bulk(benchmark: BenchmarkFixture, impl: str, loop: str) -> None:
    """One large message; qp2p sends it with one ``send``, aioquic with one stream write."""
    _rounds(benchmark, impl, loop, Bulk(_pick(benchmark, BULK_SIZE)))


@with_loop
@with_impl
def test_e2e_request(benchmark: BenchmarkFixture, impl: str, loop: str) -> None:
    """Sequential round trips of a 64-byte request and its 64-byte reply (an echo)."""
    _rounds(benchmark, impl, loop, Requests(REQUEST_SIZE, _pick(benchmark, REQUESTS)))


@with_impl
def test_e2e_memory(benchmark: BenchmarkFixture, impl: str) -> None:
    """Peak memory of the sending process for one large message, measured by e2e_memory.py."""
    size_mib = _pick(benchmark, MEMORY_MIB)
    benchmark.group = f"e2e.memory.{size_mib}MiB"
    command = [sys.executable, str(MEMORY_SCRIPT), "--impl", impl, "--size-mib", str(size_mib)]
    figures: dict[str, Any] = {}

    def run() -> None:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=MEMORY_SCRIPT_TIMEOUT, check=False
        )
        assert done.returncode == 0, done.stderr
        figures.update(json.loads(done.stdout))

    benchmark.pedantic(run, rounds=1, iterations=1)
    assert figures["impl"] == impl and figures["backend"] == qp2p.BACKEND, figures
    benchmark.extra_info.update(figures, loop="asyncio")
