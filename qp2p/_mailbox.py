"""A small closable async queue, behind the endpoint's ``incoming_*()`` and ``disconnections()``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ("Mailbox", "MailboxIterator")

T = TypeVar("T")


class Mailbox(Generic[T]):
    """FIFO of items for any number of readers; after ``close()`` readers drain it, then stop.

    With ``maxlen`` the oldest item is dropped (and counted) when a new one does not fit: for
    event streams nobody may be reading. Without it the producer bounds the size itself.
    """

    def __init__(self, maxlen: int | None = None) -> None:
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        if self._closed:
            return
        if self._maxlen is not None and len(self._items) >= self._maxlen:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._wake_one()

    def put_many(self, items: list[T]) -> None:
        """``put`` each of ``items``, in order, waking as many readers as there are items."""
        if self._closed:
            return
        queue = self._items
        queue.extend(items)
        if self._maxlen is not None:
            while len(queue) > self._maxlen:
                queue.popleft()
                self.dropped += 1
        for _ in range(min(len(items), len(self._waiters))):
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> T:
        """The next item; ``StopAsyncIteration`` once closed and empty."""
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and self._items:
                    self._wake_one()  # pass on the wake-up this reader will not use
                raise
        return self._items.popleft()


class MailboxIterator(Generic[T]):
    """``async for`` over a mailbox; ``on_take`` sees each item as the reader takes it."""

    __slots__ = ("_mailbox", "_on_take")

    def __init__(self, mailbox: Mailbox[T], on_take: Callable[[T], None] | None = None) -> None:
        self._mailbox = mailbox
        self._on_take = on_take

    def __aiter__(self) -> MailboxIterator[T]:
        return self

    async def __anext__(self) -> T:
        mailbox = self._mailbox
        # Items waiting: take one without a second coroutine (the common case under load).
        item = mailbox._items.popleft() if mailbox._items else await mailbox.get()
        if self._on_take is not None:
            self._on_take(item)
        return item
