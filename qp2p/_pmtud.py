"""Path MTU discovery (DPLPMTUD, RFC 8899) for one QUIC path, as a state machine without I/O.

The path starts at ``BASE_SIZE``, the size every QUIC path must carry. Once the handshake is
confirmed the connection sends probes: one ack-eliciting packet padded to the size tried, one at
a time. The first probe tries the ceiling (the interface MTU usually is the path MTU); if it is
lost ``MAX_PROBES`` times, a binary search between the largest confirmed size and the smallest
failed one follows, until they are less than ``MIN_STEP`` apart. An acknowledged probe raises the
size at once. A black hole (a path that starts dropping full-size packets, with no ICMP to say
so) shows as ``BLACK_HOLE_LOSSES`` loss events of packets above the base size in a row, with none
of them acknowledged in between: the size falls back to the base and the search starts again
below the size that failed. A complete search is tried again after ``RAISE_INTERVAL`` seconds,
in case the path grew. A move to another path starts again from the base size.

The owner asks ``probe_size(now)`` when it is about to send, reports each probe's fate, and
reports acknowledged and lost packets above the base size; ``size`` is what to send at.
"""

from __future__ import annotations

from typing import Literal

__all__ = ("BASE_SIZE", "PathMtu")

BASE_SIZE = 1200  # RFC 9000 section 14: every QUIC path carries this
MIN_STEP = 20  # the search ends when confirmed and failed sizes are closer than this
MAX_PROBES = 3  # a size fails after this many of its probes are lost (RFC 8899 MAX_PROBES)
BLACK_HOLE_LOSSES = 3  # loss events of large packets in a row, none acknowledged, mean a black hole
RAISE_INTERVAL = 600.0  # seconds before a complete search looks for a larger size (PMTU_RAISE_TIMER)

State = Literal["searching", "probing", "complete"]


class PathMtu:
    """The datagram size one path carries, as confirmed by probes.

    ``ceiling`` is the largest size worth trying: the local interface's MTU less the IP and
    UDP headers, the peer's max_udp_payload_size and the configured maximum. A ceiling at the
    base size disables discovery.
    """

    def __init__(self, ceiling: int) -> None:
        self.size = BASE_SIZE  # confirmed: what packets are built at
        self.ceiling = max(ceiling, BASE_SIZE)
        self.probes_sent = 0
        self.black_holes = 0
        self._failed = self.ceiling + 1  # the smallest size known not to pass
        self._probe: int | None = None  # the size of the probe in flight
        self._losses = 0  # probes of the size tried that were lost
        self._large_losses = 0  # loss events of large packets since one was acknowledged
        self._resume_at: float | None = None  # when a complete search looks again
        self._state: State = "searching"
        self._settle()

    @property
    def state(self) -> State:
        """``searching`` (a probe is due), ``probing`` (one is in flight) or ``complete``."""
        return self._state

    def restart(self) -> None:
        """The path changed (the peer moved): back to the base size, and search again."""
        self.size = BASE_SIZE
        self._failed = self.ceiling + 1
        self._probe = None
        self._losses = self._large_losses = 0
        self._resume_at = None
        self._state = "searching"
        self._settle()

    def limit(self, ceiling: int) -> None:
        """Lower the ceiling (the peer's transport parameters name its own limit)."""
        ceiling = max(ceiling, BASE_SIZE)
        if ceiling < self.ceiling:
            self.ceiling = ceiling
            self._failed = min(self._failed, ceiling + 1)
            if self.size > ceiling:
                self.size = ceiling
            self._settle()

    def probe_size(self, now: float) -> int | None:
        """The size to probe now, if a probe is due; the caller sends it and reports its fate.
        A complete search below the ceiling starts again RAISE_INTERVAL after it was first
        asked here."""
        if self._state == "complete":
            if self.size >= self.ceiling:
                return None
            if self._resume_at is None:
                self._resume_at = now + RAISE_INTERVAL
            if now < self._resume_at:
                return None
            self._resume_at = None
            self._failed = self.ceiling + 1
            self._state = "searching"
        elif self._state != "searching":
            return None
        size = self._next_size()
        self._probe = size
        self._state = "probing"
        self.probes_sent += 1
        return size

    def probe_acked(self, size: int) -> None:
        """The peer acknowledged a probe of ``size`` bytes: the path carries it."""
        if size != self._probe:
            return
        self._probe = None
        self._losses = 0
        self.size = max(self.size, size)
        self._large_losses = 0
        self._state = "searching"
        self._settle()

    def probe_lost(self, size: int) -> None:
        """A probe of ``size`` bytes was declared lost; after MAX_PROBES the size fails."""
        if size != self._probe:
            return
        self._probe = None
        self._losses += 1
        if self._losses >= MAX_PROBES:
            self._losses = 0
            self._failed = min(self._failed, size)
        self._state = "searching"
        self._settle()

    def large_acked(self) -> None:
        """A packet above the base size (not a probe) was acknowledged: the size still passes."""
        self._large_losses = 0

    def large_lost(self) -> bool:
        """Packets above the base size (not probes) were declared lost in one event; True when
        that makes a black hole, and the size fell back to the base."""
        if self.size <= BASE_SIZE:
            return False
        self._large_losses += 1
        if self._large_losses < BLACK_HOLE_LOSSES:
            return False
        self.black_holes += 1
        self._failed = self.size
        self.size = BASE_SIZE
        self._large_losses = 0
        self._losses = 0
        self._probe = None  # a probe still in flight reports to nobody
        self._state = "searching"
        self._settle()
        return True

    def _next_size(self) -> int:
        """The ceiling first, then halfway between what passed and what failed."""
        if self._failed > self.ceiling:
            return self.ceiling
        return (self.size + self._failed) // 2

    def _settle(self) -> None:
        """End the search once there is nothing worth trying."""
        if self._state == "searching" and (
            self.size >= self.ceiling
            or (self._failed <= self.ceiling and self._failed - self.size < MIN_STEP)
        ):
            self._state = "complete"
            self._resume_at = None
