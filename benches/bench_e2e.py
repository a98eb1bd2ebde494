"""End to end over 127.0.0.1: qp2p against raw aioquic doing the same work, at 1200-byte datagrams.

Each bench runs once per implementation (``impl`` ids ``qp2p`` and ``aioquic``; how the
baseline carries messages is in aioquic_baseline.py) with the receiver and the sender in one
event loop, and puts both in one group (``e2e.<workload>.<size>``). qp2p runs on whichever
backend it loaded (``qp2p.BACKEND``, recorded in ``extra_info``): ``QP2P_NO_EXTENSIONS=1``
gives the pure figures.

A round is a fresh event loop: both ends are started and connected before the clock starts
and closed after it stops, and what arrived is checked after that, untimed. The benchmark
time is the round's timed call; the ``extra_info`` figures come from the workload's own clock
(first send to last byte in, or each round trip), which leaves out only the loop's start-up.
Every round is bounded by ``ROUND_TIMEOUT``, so a broken implementation fails instead of
hanging. Under ``--benchmark-disable`` (CI smoke mode) each bench runs once at reduced sizes.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

import qp2p

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))  # benches/ is not a package
from _inputs import KiB, MiB, payload, size_label  # noqa: E402
from aioquic_baseline import Body  # noqa: E402
from e2e_memory import IMPLS  # noqa: E402

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

T = TypeVar("T")

ROUNDS = 3
ROUND_TIMEOUT = 120.0
MEMORY_SCRIPT = Path(__file__).with_name("e2e_memory.py")
# Below pytest's own per-test timeout, above the script's bound on its own run.
MEMORY_SCRIPT_TIMEOUT = 270.0
# Full size, then the CI smoke-mode size.
MESSAGES = (20_000, 500)
BULK_SIZE = (32 * MiB, 1 * MiB)
REQUESTS = (1_000, 50)
REQUEST_SIZE = 64
MEMORY_MIB = (256, 16)

with_impl = pytest.mark.parametrize("impl", list(IMPLS))


def _pick(benchmark: BenchmarkFixture, sizes: tuple[T, T]) -> T:
    """The full size when timing, the smoke-mode size under ``--benchmark-disable``."""
    return sizes[1] if benchmark.disabled else sizes[0]


def _numbered(count: int, size: int) -> list[bytes]:
    """``count`` distinct messages of ``size`` bytes, in ascending order: a 4-byte number, then a pattern."""
    filler = payload(size - 4)
    return [number.to_bytes(4, "big") + filler for number in range(count)]


class Pair:
    """A receiver and a sender of one implementation on a fresh event loop, connected."""

    def __init__(self, impl: str) -> None:
        self.impl = impl
        self.received: list[Body] = []
        self._expected = 0
        self._all_in = asyncio.Event()
        self._runner = asyncio.Runner()
        self._receiver = IMPLS[impl].receiver()
        self.sender = IMPLS[impl].sender()
        self._closed = False
        try:
            self.run(self._connect(), "connecting")
        except BaseException:
            self.close()
            raise

    async def _connect(self) -> None:
        await self.sender.connect(await self._receiver.start(self._on_message))

    def _on_message(self, body: Body) -> None:
        self.received.append(body)
        if len(self.received) == self._expected:
            self._all_in.set()

    async def deliver(self, messages: list[bytes]) -> float:
        """Sends every message; seconds from the first send until the receiver has them all."""
        self._expected = len(messages)
        send = self.sender.send
        start = perf_counter()
        for data in messages:
            await send(data)
        await self._all_in.wait()
        return perf_counter() - start

    async def round_trips(self, requests: list[bytes]) -> list[float]:
        """Sends each request once the previous reply is in; the seconds each round trip took."""
        request = self.sender.request
        times = []
        for data in requests:
            start = perf_counter()
            reply = await request(data)
            times.append(perf_counter() - start)
            if reply != data:
                raise AssertionError(f"{self.impl}: the reply to request {data[:4].hex()} is wrong")
        return times

    def run(self, work: Coroutine[Any, Any, T], what: str) -> T:
        """Runs ``work`` on this pair's loop, failing (not hanging) after ``ROUND_TIMEOUT``."""

        async def bounded() -> T:
            deadline = asyncio.timeout(ROUND_TIMEOUT)
            try:
                async with deadline:
                    return await work
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise AssertionError(
                    f"{self.impl}: {what} not done within {ROUND_TIMEOUT} s "
                    f"({len(self.received)} of {self._expected} messages received)"
                ) from None

        return self._runner.run(bounded())

    def close(self) -> None:
        """Closes both ends and the loop; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.run(self._close(), "closing")
        finally:
            self._runner.close()

    async def _close(self) -> None:
        try:
            await self.sender.close()
        finally:
            await self._receiver.close()


def _rounds(
    benchmark: BenchmarkFixture,
    impl: str,
    work: Callable[[Pair], Coroutine[Any, Any, T]],
    check: Callable[[Pair], None],
    what: str,
) -> list[T]:
    """Times ``work`` on a fresh pair per round and returns what each round returned.

    Making the pair, checking what arrived (``check``) and closing the pair are not timed.
    """
    results: list[T] = []
    pairs: list[Pair] = []

    def setup() -> tuple[tuple[Pair], dict[str, Any]]:
        pairs.append(Pair(impl))
        return (pairs[-1],), {}

    def target(pair: Pair) -> None:
        results.append(pair.run(work(pair), what))

    def teardown(pair: Pair) -> None:
        try:
            check(pair)
        finally:
            pair.close()

    try:
        benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=ROUNDS, iterations=1)
        if benchmark.disabled:
            teardown(pairs[-1])  # pytest-benchmark skips teardown when disabled
    finally:
        for pair in pairs:
            pair.close()  # after a failure: whatever is still open
    benchmark.extra_info.update(impl=impl, backend=qp2p.BACKEND)
    return results


@with_impl
@pytest.mark.parametrize("size", [64, KiB], ids=size_label)
def test_e2e_messages(benchmark: BenchmarkFixture, impl: str, size: int) -> None:
    """Many small messages from one sender to one receiver, as fast as flow control allows."""
    count = _pick(benchmark, MESSAGES)
    messages = _numbered(count, size)
    benchmark.group = f"e2e.messages.{size_label(size)}"

    def check(pair: Pair) -> None:
        assert sorted(pair.received) == messages, f"{impl}: the messages received are not the ones sent"

    seconds = _rounds(benchmark, impl, lambda pair: pair.deliver(messages), check, f"{count} messages")
    benchmark.extra_info.update(count=count, size=size, msgs_per_s=round(count / statistics.median(seconds)))


@with_impl
def test_e2e_bulk(benchmark: BenchmarkFixture, impl: str) -> None:
    """One large message; qp2p sends it with one ``send``, aioquic with one stream write."""
    size = _pick(benchmark, BULK_SIZE)
    message = payload(size)
    benchmark.group = f"e2e.bulk.{size_label(size)}"

    def check(pair: Pair) -> None:
        assert len(pair.received) == 1, f"{impl}: {len(pair.received)} messages arrived, not 1"
        assert pair.received[0] == message, f"{impl}: the {len(pair.received[0])} bytes received are wrong"

    seconds = _rounds(benchmark, impl, lambda pair: pair.deliver([message]), check, f"{size} bytes")
    benchmark.extra_info.update(size=size, mib_per_s=round(size / MiB / statistics.median(seconds), 1))


@with_impl
def test_e2e_request(benchmark: BenchmarkFixture, impl: str) -> None:
    """Sequential round trips of a 64-byte request and its 64-byte reply (an echo)."""
    count = _pick(benchmark, REQUESTS)
    requests = _numbered(count, REQUEST_SIZE)
    benchmark.group = f"e2e.request.{size_label(REQUEST_SIZE)}"

    def check(pair: Pair) -> None:
        assert not pair.received, f"{impl}: requests arrived as messages"

    rounds = _rounds(benchmark, impl, lambda pair: pair.round_trips(requests), check, f"{count} requests")
    times = [seconds for round_ in rounds for seconds in round_]
    benchmark.extra_info.update(
        count=count,
        size=REQUEST_SIZE,
        rtt_median_us=round(statistics.median(times) * 1e6, 1),
        rtt_p99_us=round(statistics.quantiles(times, n=100)[98] * 1e6, 1),
    )


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
    benchmark.extra_info.update(figures)
