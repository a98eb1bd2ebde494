"""The earliest of many deadlines, one per key, as a sans-IO heap: what one endpoint timer waits for.

Each key (a link's QUIC timer, its keep-alive, ...) has at most one deadline. The heap holds
``(at, seq, key)`` entries; a dict holds each key's true deadline and its one live entry.

- Moving a deadline earlier pushes a new entry (O(log n)); the old one goes stale.
- Moving it later only updates the dict: the live entry stays where it was and, when it comes
  up, is pushed again at the true deadline. A QUIC connection's deadline moves later at almost
  every packet, so most updates cost a dict write and no heap work.
- Removing a key leaves its entry stale. Stale entries are dropped as they surface, and the
  heap is rebuilt from the dict once they outnumber the live ones (plus ``SLACK``): it never
  holds more than ``2 * live + SLACK`` entries after a call, whatever the churn.

``earliest()`` is therefore a lower bound: a timer set for it may find nothing due (an entry
whose deadline moved later) and simply waits again, as aioquic's own loop does.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ("SLACK", "Deadlines")

K = TypeVar("K", bound=Hashable)

# Stale entries tolerated beyond the live ones before the heap is rebuilt.
SLACK = 16


class Deadlines(Generic[K]):
    """At most one deadline per key; the due ones, earliest first, on request."""

    __slots__ = ("_heap", "_live", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        # key -> (its true deadline, its one live heap entry, due no later than that)
        self._live: dict[K, tuple[float, tuple[float, int, K]]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Keys with a deadline."""
        return len(self._live)

    def __contains__(self, key: K) -> bool:
        return key in self._live

    @property
    def heap_size(self) -> int:
        """Entries in the heap, stale ones included (bounded, see the module docstring)."""
        return len(self._heap)

    def get(self, key: K) -> float | None:
        """``key``'s deadline, or None."""
        live = self._live.get(key)
        return None if live is None else live[0]

    def set(self, key: K, at: float) -> None:
        """Give ``key`` the deadline ``at``, replacing the one it had."""
        live = self._live.get(key)
        if live is not None and live[1][0] <= at:
            if live[0] != at:  # later: the entry stays, and is pushed again when it comes up
                self._live[key] = (at, live[1])
            return
        entry = (at, next(self._seq), key)
        self._live[key] = (at, entry)
        heapq.heappush(self._heap, entry)
        self._bound()

    def discard(self, key: K) -> None:
        """``key`` has no deadline any more (if it had one)."""
        if self._live.pop(key, None) is not None:
            self._bound()

    def earliest(self) -> float | None:
        """No later than the earliest deadline (None without any): when to look again."""
        heap, live = self._heap, self._live
        while heap:
            entry = heap[0]
            current = live.get(entry[2])
            if current is not None and current[1] is entry:
                return entry[0]
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[tuple[K, float]]:
        """The keys whose deadline is at or before ``now``, with it, earliest first; they lose it."""
        due: list[tuple[K, float]] = []
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            key = entry[2]
            current = live.get(key)
            if current is None or current[1] is not entry:
                continue  # stale
            at = current[0]
            if at == entry[0]:
                del live[key]
                due.append((key, at))
            else:  # it moved later: its entry goes back at the true deadline, due or not
                moved = (at, next(self._seq), key)
                live[key] = (at, moved)
                heapq.heappush(heap, moved)
        if due:
            self._bound()
        return due

    def clear(self) -> None:
        """No deadline for any key."""
        self._heap.clear()
        self._live.clear()

    def _bound(self) -> None:
        """Rebuild the heap from the live deadlines once stale entries outnumber them."""
        live = self._live
        if len(self._heap) <= 2 * len(live) + SLACK:
            return
        seq = self._seq
        rebuilt = {key: (at, (at, next(seq), key)) for key, (at, _) in live.items()}
        self._live = rebuilt
        self._heap = [entry for _, entry in rebuilt.values()]
        heapq.heapify(self._heap)
