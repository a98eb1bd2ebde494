"""qlog traces within bounds: what they hold in memory, all connections together, and what they
write to disk (docs/observability.md).

aioquic's own ``QuicFileLogger`` keeps every event of a connection until it ends, as objects
some five times the size of their text (a peer that fills its packets with one-byte PING
frames makes each byte it sends cost us 200), writes wherever the connection id the client
chose points, following a link found there, and raises into the event loop when a write
fails. ``TraceFolder`` keeps each event as JSON text once it is complete, within one memory
budget for all traces, writes each trace to a new private file, and stops for good (one
warning) at its disk budget or the first write that fails. It relies on the order aioquic
logs in: a received packet's frames are added to its event until the next datagram or packet
is logged (tests/test_observability_attacks.py checks that they are all written).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

from aioquic.quic.logger import QLOG_VERSION, QuicLogger, QuicLoggerTrace

__all__ = ("EVENTS_DROPPED", "QlogBudget", "TraceFolder")

log = logging.getLogger(__name__)

# Held for an event from when aioquic logs it until it is complete and kept as text: its objects
# take more room than their text will ...
EVENT_RESERVE = 4096
# ... and for each byte of a packet it logs, whose frames aioquic adds after logging it: a
# frame is a byte at least, and its object some 200 bytes at most.
FRAME_RESERVE = 256
# Events that start a datagram or a packet: every event aioquic logged before one is complete.
BOUNDARIES = frozenset({"transport:datagrams_received", "transport:packet_received", "transport:packet_sent"})
# The last event of a trace that left events out: how many.
EVENTS_DROPPED = "qp2p:events_dropped"


class QlogBudget:
    """What an endpoint's traces may hold in memory (bytes, all traces together) and write to
    disk (bytes, all files together, for the endpoint's life). Sans-IO: plain numbers."""

    def __init__(self, memory_limit: int, disk_limit: int) -> None:
        self.memory_limit = memory_limit
        self.disk_limit = disk_limit
        self.held = 0  # bytes the traces hold now
        self.written = 0  # bytes of the files written
        self.stopped = False  # no more traces: the disk budget is spent, or a write failed (``stop``)

    def hold(self, size: int) -> bool:
        """Hold ``size`` more bytes, if they fit; False, holding nothing, if not."""
        if self.held + size > self.memory_limit:
            return False
        self.held += size
        return True

    def adjust(self, change: int) -> None:
        """What a trace holds turned out ``change`` bytes off what it reserved."""
        self.held += change

    def release(self, size: int) -> None:
        """A trace ended: let go of the ``size`` bytes it held."""
        self.held -= size

    def write(self, size: int) -> bool:
        """Whether a file of ``size`` bytes may be written; once one may not, none may."""
        if self.stopped or self.written + size > self.disk_limit:
            self.stopped = True
            return False
        self.written += size
        return True

    def stop(self) -> None:
        """No more traces (a write failed)."""
        self.stopped = True


class _Trace(QuicLoggerTrace):
    """One connection's trace: complete events as JSON text, the latest ones as aioquic's
    objects until the next datagram or packet completes them; what does not fit in the budget
    is left out and counted."""

    def __init__(self, budget: QlogBudget, *, is_client: bool, odcid: bytes) -> None:
        super().__init__(is_client=is_client, odcid=odcid)
        self.odcid = odcid.hex()
        self.vantage = "client" if is_client else "server"
        self._budget = budget
        self._texts: list[str] = []
        self._pending: list[dict[str, Any]] = []
        self._reserved = 0  # what is held for the pending events
        self.held = 0  # what the budget holds for this trace: its texts and the reservations
        self.dropped = 0

    def log_event(self, *, category: str, event: str, data: dict[str, Any]) -> None:
        """As aioquic's: one event; left out, and counted, if it does not fit in the budget."""
        name = f"{category}:{event}"
        if name in BOUNDARIES:
            self._complete()
        reserve = EVENT_RESERVE
        raw = data.get("raw")
        if "frames" in data and isinstance(raw, dict):
            reserve += FRAME_RESERVE * int(raw.get("length", 0))
        if not self._budget.hold(reserve):
            self.dropped += 1
            return
        self._reserved += reserve
        self.held += reserve
        self._pending.append({"data": data, "name": name, "time": self.encode_time(time.time())})

    def _complete(self) -> None:
        """The pending events are complete: keep them as text, holding what the text takes."""
        size = 0
        for event in self._pending:
            text = json.dumps(event)
            self._texts.append(text)
            size += sys.getsizeof(text)
        self._budget.adjust(size - self._reserved)
        self.held += size - self._reserved
        self._pending.clear()
        self._reserved = 0

    def finish(self) -> bytes:
        """The trace as a qlog file holds it, letting go of everything it held."""
        self._complete()
        texts = self._texts
        if self.dropped:
            last = json.loads(texts[-1])["time"] if texts else 0.0
            texts.append(json.dumps({"data": {"count": self.dropped}, "name": EVENTS_DROPPED, "time": last}))
        # aioquic's document, its events already text: {"qlog_format": ..., "traces": [trace]}
        fields = json.dumps({"ODCID": self.odcid})
        vantage = json.dumps({"name": "aioquic", "type": self.vantage})
        document = (
            f'{{"qlog_format": "JSON", "qlog_version": {json.dumps(QLOG_VERSION)}, "traces": [{{'
            f'"common_fields": {fields}, "events": [{", ".join(texts)}], "vantage_point": {vantage}}}]}}'
        )
        self._texts = []
        self._budget.release(self.held)
        self.held = 0
        return document.encode()


class TraceFolder(QuicLogger):
    """aioquic's logger for an endpoint (and the throwaway endpoints it probes from): one file
    per connection in ``folder``, ``<ODCID>-<client|server>-<random>.qlog``, made new (never
    one that exists, nor through a link) and readable by its owner only."""

    def __init__(self, folder: str, memory_limit: int, disk_limit: int) -> None:
        super().__init__()
        self.folder = folder
        self.budget = QlogBudget(memory_limit, disk_limit)

    def start_trace(self, is_client: bool, odcid: bytes) -> QuicLoggerTrace | None:  # type: ignore[override]
        """A new connection's trace; None once traces stopped (aioquic then traces nothing)."""
        if self.budget.stopped:
            return None
        return _Trace(self.budget, is_client=is_client, odcid=odcid)

    def end_trace(self, trace: QuicLoggerTrace) -> None:
        """Write the ended connection's trace, within the disk budget; never raises ``OSError``:
        a write that fails stops traces, with a warning."""
        assert isinstance(trace, _Trace)
        data = trace.finish()
        if self.budget.stopped:
            return
        if not self.budget.write(len(data)):
            log.warning(
                "qlog: %d bytes of traces written in %s, the qlog_disk_limit of %d reached: no more traces",
                self.budget.written,
                self.folder,
                self.budget.disk_limit,
            )
            return
        path = None
        try:
            # O_EXCL, mode 0600: a new file, never one that exists nor through a link found there
            fd, path = tempfile.mkstemp(
                prefix=f"{trace.odcid}-{trace.vantage}-", suffix=".qlog", dir=self.folder
            )
            with open(fd, "wb") as file:
                file.write(data)
        except OSError as exc:
            self.budget.stop()
            log.warning("qlog: cannot write a trace in %s (%s): no more traces", self.folder, exc)
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
