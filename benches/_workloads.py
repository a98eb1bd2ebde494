"""The end-to-end workloads: what one round sends, how it is timed and checked, and its figures.

Shared by bench_e2e.py (pytest-benchmark) and peers.py (every peer in one run). A round is
``work`` on a freshly connected ``Driver`` (a ``Pair``, or one on a peer's own loop); ``check``
runs after it, untimed, and fails when anything sent did not arrive intact; ``figures`` sums
the rounds up as the ``extra_info`` keys that ratios.py shows (``E2E_FIGURES``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

from _inputs import MiB, payload, size_label
from _pairs import Driver
from _peers import DatagramSize
from aioquic_baseline import DATAGRAM_SIZE

__all__ = ("Bulk", "Messages", "Requests", "Workload", "numbered")


def numbered(count: int, size: int) -> list[bytes]:
    """``count`` distinct messages of ``size`` bytes, in ascending order: a 4-byte number, then a pattern."""
    filler = payload(size - 4)
    return [number.to_bytes(4, "big") + filler for number in range(count)]


@dataclass(frozen=True)
class Workload:
    """One workload at one size; ``datagram_size`` None means each peer's default configuration."""

    kind: ClassVar[str]  # "messages", "bulk" or "request": the group's second part
    size: int
    count: int = 1
    datagram_size: DatagramSize = DATAGRAM_SIZE

    @property
    def group(self) -> str:
        """``e2e.<kind>.<size>``, then the datagram size when it is not the 1200-byte default."""
        group = f"e2e.{self.kind}.{size_label(self.size)}"
        if self.datagram_size is None:
            return f"{group}.default-config"
        return group if self.datagram_size == DATAGRAM_SIZE else f"{group}.{self.datagram_size}B-datagrams"

    @property
    def what(self) -> str:
        """What a round moves, for a timeout's message."""
        return f"{self.count} x {self.size} bytes"

    @cached_property
    def inputs(self) -> list[bytes]:
        return numbered(self.count, self.size)

    async def work(self, pair: Driver) -> Any:
        """One timed round."""
        raise NotImplementedError

    def check(self, pair: Driver) -> None:
        """Fails unless the round's messages all arrived, each intact."""
        assert sorted(pair.received) == self.inputs, (
            f"{pair.name}: the messages received are not the ones sent"
        )

    def figures(self, rounds: list[Any]) -> dict[str, Any]:
        """What the rounds come to, as ``extra_info``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Messages(Workload):
    """Many small messages from one sender to one receiver, as fast as flow control allows."""

    kind = "messages"

    async def work(self, pair: Driver) -> float:
        return await pair.deliver(self.inputs)

    def figures(self, rounds: list[float]) -> dict[str, Any]:
        return {
            "count": self.count,
            "size": self.size,
            "msgs_per_s": round(self.count / statistics.median(rounds)),
        }


@dataclass(frozen=True)
class Bulk(Workload):
    """One large message, sent the way each peer sends one (one ``send``, one stream write)."""

    kind = "bulk"

    @cached_property
    def inputs(self) -> list[bytes]:
        return [payload(self.size)]

    async def work(self, pair: Driver) -> float:
        return await pair.deliver(self.inputs)

    def check(self, pair: Driver) -> None:
        assert len(pair.received) == 1, f"{pair.name}: {len(pair.received)} messages arrived, not 1"
        got = pair.received[0]
        assert got == self.inputs[0], f"{pair.name}: the {len(got)} bytes received are wrong"

    def figures(self, rounds: list[float]) -> dict[str, Any]:
        return {"size": self.size, "mib_per_s": round(self.size / MiB / statistics.median(rounds), 1)}


@dataclass(frozen=True)
class Requests(Workload):
    """Sequential round trips of a request and its reply (an echo, checked as it comes)."""

    kind = "request"

    async def work(self, pair: Driver) -> list[float]:
        return await pair.round_trips(self.inputs)

    def check(self, pair: Driver) -> None:
        assert not pair.received, f"{pair.name}: requests arrived as messages"

    def figures(self, rounds: list[list[float]]) -> dict[str, Any]:
        times = [seconds for round_ in rounds for seconds in round_]
        return {
            "count": self.count,
            "size": self.size,
            "rtt_median_us": round(statistics.median(times) * 1e6, 1),
            "rtt_p99_us": round(statistics.quantiles(times, n=100)[98] * 1e6, 1),
        }
