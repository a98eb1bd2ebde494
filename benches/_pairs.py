"""A receiver and a sender of one peer, connected on a fresh event loop of a chosen kind.

Both ends share the loop (the loop is what the workloads time). The kinds are asyncio's own
loop and uvloop when it is installed (the ``uvloop`` extra), named as ``qp2p --loop`` names
them; every call into the loop is bounded by ``ROUND_TIMEOUT``, so a hung peer fails instead of
hanging the bench.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any, Protocol, TypeVar

from _peers import Body, DatagramSize, Impl, Sender

from qp2p import ConfigError, _loops

__all__ = (
    "LOOP_CHOICES",
    "LOOPS",
    "ROUND_TIMEOUT",
    "Driver",
    "Pair",
    "installed_loops",
    "loop_factory",
    "loops_for",
)

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")
# What a bench run is asked for: one loop, or "both" (asyncio, and uvloop where it is installed).
LOOP_CHOICES = (*LOOPS, "both")
ROUND_TIMEOUT = 120.0


def installed_loops() -> tuple[str, ...]:
    """asyncio, and uvloop too when it is installed."""
    return tuple(loop for loop in LOOPS if loop == "asyncio" or importlib.util.find_spec(loop) is not None)


def loops_for(choice: str) -> tuple[str, ...]:
    """The loops ``choice`` stands for; raises ``qp2p.ConfigError`` for an unknown or missing one."""
    if choice == "both":
        return installed_loops()
    if choice not in LOOPS:
        raise ConfigError(f"unknown event loop {choice!r}: one of {', '.join(LOOP_CHOICES)}")
    return (_loops.chosen(choice),)


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What ``asyncio.Runner`` takes for ``loop``; raises ``qp2p.ConfigError`` for a missing uvloop."""
    if _loops.chosen(loop) == "asyncio":
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = importlib.import_module("uvloop").new_event_loop
    return factory


class Event(Protocol):
    """What ``Driver`` needs of an event: asyncio's and trio's both have it."""

    def set(self) -> None: ...

    async def wait(self) -> Any: ...


class Driver:
    """The part of a pair the workloads drive, on whatever loop runs it: sends, round trips, arrivals.

    ``sender`` is set by whoever connects the pair; ``on_message`` is the receiver's callback.
    """

    sender: Sender

    def __init__(self, name: str, all_in: Event) -> None:
        self.name = name
        self.received: list[Body] = []
        self._expected = 0
        self._all_in = all_in

    def on_message(self, body: Body) -> None:
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
                raise AssertionError(f"{self.name}: the reply to request {data[:4].hex()} is wrong")
        return times

    def progress(self) -> str:
        """How far the messages have come, for a timeout's message."""
        return f"{len(self.received)} of {self._expected} messages received"


class Pair(Driver):
    """A receiver and a sender of one peer on a fresh event loop, connected."""

    def __init__(self, name: str, impl: Impl, loop: str, datagram_size: DatagramSize) -> None:
        super().__init__(name, asyncio.Event())
        self._runner = asyncio.Runner(loop_factory=loop_factory(loop))
        self._receiver = impl.receiver(datagram_size)
        self.sender = impl.sender(datagram_size)
        self._closed = False
        try:
            self.run(self._connect(), "connecting")
        except BaseException:
            self.close()
            raise

    async def _connect(self) -> None:
        await self.sender.connect(await self._receiver.start(self.on_message))

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
                    f"{self.name}: {what} not done within {ROUND_TIMEOUT} s ({self.progress()})"
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
