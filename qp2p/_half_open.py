"""Handshakes peers started and have not finished: how many, from where, and whether one more may start.

Sans-IO bookkeeping for the endpoint. A handshake is *half-open* from the Initial that opens
it until its TLS handshake and the peer's Hello are done (or it ends). Until then nothing
proves who the peer is, so these handshakes get limits of their own, per source address
and in all (the endpoint gives the table the places established links leave): a flood of
them can never take an authenticated peer's place, and gives way to newcomers.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from qp2p._memory import address_key

__all__ = ("HalfOpen",)

H = TypeVar("H", bound=Hashable)


class HalfOpen(Generic[H]):
    """Which handshakes are half-open, counted per source (an IPv4 address, an IPv6 /64);
    refuses those over the limits.

    When the table is full, a newcomer from a source holding fewer handshakes than the
    busiest one takes the place of that source's oldest (``evictable``): to keep newcomers
    out, a flood must hold the table from about as many addresses as it has places.
    """

    def __init__(self, per_source: int) -> None:
        self._per_source = per_source
        self._sources: dict[H, str] = {}  # handshake -> its source
        self._by_source: dict[str, dict[H, None]] = {}  # source -> its handshakes, oldest first

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, handshake: object) -> bool:
        return handshake in self._sources

    def _count(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def refusal(self, host: str, limit: int) -> str | None:
        """Why a new handshake from ``host`` may not start with ``limit`` places in all:
        "half_open_per_address", "half_open" (the table is full), or None if it may."""
        if self._count(address_key(host)) >= self._per_source:
            return "half_open_per_address"
        if len(self._sources) >= limit:
            return "half_open"
        return None

    def evictable(self, host: str) -> H | None:
        """With the table full: the oldest handshake of the busiest source, if that source
        holds more than ``host``'s does; it gives way to ``host``'s new one."""
        if not self._by_source:
            return None
        busiest = max(self._by_source.values(), key=len)
        if len(busiest) <= self._count(address_key(host)):
            return None
        return next(iter(busiest))

    def add(self, handshake: H, host: str) -> None:
        """``handshake`` from ``host`` started."""
        source = self._sources[handshake] = address_key(host)
        self._by_source.setdefault(source, {})[handshake] = None

    def discard(self, handshake: H) -> None:
        """``handshake`` is over: established, failed or timed out (a no-op if not counted)."""
        source = self._sources.pop(handshake, None)
        if source is None:
            return
        handshakes = self._by_source[source]
        del handshakes[handshake]
        if not handshakes:
            del self._by_source[source]
