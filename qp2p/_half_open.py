"""Handshakes peers started and have not finished: how many, from where, and whether one more may start.

Sans-IO bookkeeping for the endpoint. A handshake is *half-open* from the Initial that opens
it until its TLS handshake and the peer's Hello are done (or it ends). Until then nothing
proves who the peer is, so these handshakes get their own limits, global and per source
address, apart from ``max_connections``: a flood of them can never take an authenticated
peer's place.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Hashable

__all__ = ("HalfOpen", "source_of")

# IPv6 hosts usually hold a whole /64: counting per address would give one host 2**64 quotas.
IPV6_PREFIX = 64


def source_of(host: str) -> str:
    """The source a handshake is counted under: the IPv4 address, or the IPv6 address's /64."""
    address = ipaddress.ip_address(host.partition("%")[0])
    if address.version == 4:
        return str(address)
    return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))


class HalfOpen:
    """Which handshakes are half-open, counted per source; refuses those over the limits."""

    def __init__(self, limit: int, per_source: int) -> None:
        self._limit = limit
        self._per_source = per_source
        self._sources: dict[Hashable, str] = {}  # handshake -> its source
        self._counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, handshake: Hashable) -> bool:
        return handshake in self._sources

    def refusal(self, host: str) -> str | None:
        """Why a new handshake from ``host`` may not start ("half_open" or
        "half_open_per_address"), or None if it may."""
        if len(self._sources) >= self._limit:
            return "half_open"
        if self._counts[source_of(host)] >= self._per_source:
            return "half_open_per_address"
        return None

    def add(self, handshake: Hashable, host: str) -> None:
        """``handshake`` from ``host`` started."""
        source = self._sources[handshake] = source_of(host)
        self._counts[source] += 1

    def discard(self, handshake: Hashable) -> None:
        """``handshake`` is over: established, failed or timed out (a no-op if not counted)."""
        source = self._sources.pop(handshake, None)
        if source is None:
            return
        self._counts[source] -= 1
        if not self._counts[source]:
            del self._counts[source]
