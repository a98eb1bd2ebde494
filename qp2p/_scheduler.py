"""The endpoint's one timer and its one transmit pass per loop turn, shared by every link.

An asyncio timer per link (its QUIC timer, its keep-alive, its handshake deadline) puts
thousands of handles in the event loop's heap and wakes it once per link per deadline. Here each
deadline is an ``Alarm`` in one ``Deadlines`` heap, and the endpoint holds a single
``TimerHandle``, set for the earliest of them: re-arming a link costs O(log n) at most (usually
a dict write), a tick pops only what is due, and an idle link costs nothing between its own
deadlines. One more kind of deadline per link is one more ``scheduler.alarm(callback)``.

An alarm is called with the moment its deadline came, as the link should tell its session. The
timer treats deadlines less than a clock tick ahead as come: uvloop's clock moves in whole
milliseconds and fires such a timer at once, and a deadline it then found not yet reached would
re-arm the timer at once, spinning until the clock ticked (aioquic paces in microseconds).

Links with something to send mark themselves (``transmit_soon``); one ``call_soon`` per loop
turn serves all of them, instead of one handle per link.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

from qp2p._deadlines import Deadlines

__all__ = ("CLOCK_TICK", "Alarm", "Callback", "Marked", "Scheduler")

# The coarsest event loop clock we run on (uvloop's, in milliseconds), in seconds.
CLOCK_TICK = 0.001
# Called with the moment the deadline came: the loop's time, or the deadline if that is later
# (by less than ``CLOCK_TICK``).
Callback = Callable[[float], None]


class Marked(Protocol):
    """A link the transmit pass serves."""

    def transmit_pass(self) -> None: ...


class Alarm:
    """One deadline of one link: ``set(at)`` (replacing the last), ``cancel()``; at the
    deadline the scheduler calls ``callback(now)`` once."""

    __slots__ = ("_scheduler", "callback")

    def __init__(self, scheduler: Scheduler, callback: Callback) -> None:
        self._scheduler = scheduler
        self.callback = callback

    def set(self, at: float) -> None:
        self._scheduler.set(self, at)

    def cancel(self) -> None:
        self._scheduler.cancel(self)

    @property
    def armed(self) -> bool:
        """Whether a deadline is set and has not come yet."""
        return self._scheduler.armed(self)


class Scheduler:
    """Every link's deadlines behind one asyncio timer, and the per-turn transmit pass."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._deadlines: Deadlines[Alarm] = Deadlines()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        # Alarms due in the batch the timer is running: one set again or cancelled by an
        # earlier callback of the batch (its link closed, say) leaves it without being called.
        self._firing: set[Alarm] = set()
        self._marked: dict[Marked, None] = {}
        self._pass: asyncio.Handle | None = None
        self.timer_fired = 0  # times the one timer went off, for tests and monitoring

    def alarm(self, callback: Callback) -> Alarm:
        """A new deadline, not set yet, that calls ``callback`` when it comes."""
        return Alarm(self, callback)

    @property
    def deadlines(self) -> int:
        """Deadlines set and not come yet."""
        return len(self._deadlines)

    @property
    def heap_size(self) -> int:
        """Entries in the deadline heap, stale ones included (bounded by twice the live ones)."""
        return self._deadlines.heap_size

    def set(self, alarm: Alarm, at: float) -> None:
        self._firing.discard(alarm)
        self._deadlines.set(alarm, at)
        if at < self._timer_at:
            self._arm(at)

    def cancel(self, alarm: Alarm) -> None:
        """The timer stays set: it goes off early at worst, finds nothing due and waits again."""
        self._firing.discard(alarm)
        self._deadlines.discard(alarm)

    def armed(self, alarm: Alarm) -> bool:
        return alarm in self._deadlines

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.timer_fired += 1
        now = self._loop.time()
        due = self._deadlines.pop_due(now + CLOCK_TICK)
        firing = self._firing
        firing.update(alarm for alarm, _ in due)
        for alarm, at in due:
            if alarm in firing:
                firing.discard(alarm)
                self._run(alarm.callback, max(now, at))
        earliest = self._deadlines.earliest()
        if earliest is not None and earliest < self._timer_at:
            self._arm(earliest)

    def transmit_soon(self, link: Marked) -> None:
        """Have ``link.transmit_pass()`` called at the end of this loop turn."""
        self._marked[link] = None
        if self._pass is None:
            self._pass = self._loop.call_soon(self._transmit_all)

    def _transmit_all(self) -> None:
        self._pass = None
        marked, self._marked = self._marked, {}
        for link in marked:
            self._run(link.transmit_pass)

    def _run(self, callback: Callable[..., None], *args: float) -> None:
        """One link's failure is reported as the loop reports a failed callback; the others still run."""
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - reported, as asyncio.Handle does
            self._loop.call_exception_handler({"message": f"exception in {callback!r}", "exception": exc})

    def close(self) -> None:
        """Forget every deadline and mark; nothing stays armed on the loop."""
        for handle in (self._timer, self._pass):
            if handle is not None:
                handle.cancel()
        self._timer = self._pass = None
        self._timer_at = math.inf
        self._deadlines.clear()
        self._firing.clear()
        self._marked.clear()
