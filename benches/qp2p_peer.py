"""Both ends of the end-to-end benches on qp2p, used the way its documentation shows.

The receiver reads ``incoming_messages()`` in one task and replies to requests with
``msg.reply``; the sender awaits ``Connection.send`` per message (it waits only when the
receiver's credit is spent), sends a large message with one ``send`` and uses
``Connection.request`` for round trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from _peers import Body, DatagramSize, Impl

import qp2p

__all__ = ("QP2P", "Qp2pReceiver", "Qp2pSender")

Address = tuple[str, int]
# Room for the largest bench message (qp2p's default limit is 64 MiB); both ends must allow it.
MAX_MESSAGE_SIZE = 1 << 30


def _endpoint(datagram_size: DatagramSize) -> qp2p.Endpoint:
    # A message this large needs more than an address's default share of memory_limit.
    defaults = qp2p.Config()
    config = qp2p.Config(
        max_datagram_size=defaults.max_datagram_size if datagram_size is None else datagram_size,
        max_message_size=MAX_MESSAGE_SIZE,
        address_memory_limit=defaults.memory_limit,
    )
    return qp2p.Endpoint(config)


class Qp2pReceiver:
    """An endpoint whose ``incoming_messages()`` is read by one task."""

    def __init__(self, datagram_size: DatagramSize) -> None:
        self._endpoint = _endpoint(datagram_size)
        self._reader: asyncio.Task[None] | None = None

    async def start(self, on_message: Callable[[Body], None]) -> Address:
        await self._endpoint.start()
        self._reader = asyncio.create_task(self._read(on_message))
        return self._endpoint.local_addr

    async def _read(self, on_message: Callable[[Body], None]) -> None:
        async for message in self._endpoint.incoming_messages():
            if message.is_request:
                await message.reply(message.data)
            else:
                on_message(message.data)

    async def close(self) -> None:
        await self._endpoint.close()
        if self._reader is not None:
            await self._reader  # ends with the endpoint; raises whatever stopped it before


class Qp2pSender:
    """An endpoint with one connection: ``Connection.send`` and ``Connection.request``."""

    _connection: qp2p.Connection  # set by connect()

    def __init__(self, datagram_size: DatagramSize) -> None:
        self._endpoint = _endpoint(datagram_size)

    async def connect(self, contact: Address) -> None:
        await self._endpoint.start()
        self._connection = await self._endpoint.connect_to(contact)

    async def send(self, data: Body) -> None:
        await self._connection.send(data)

    async def request(self, data: Body) -> Body:
        return await self._connection.request(data)

    async def close(self) -> None:
        await self._endpoint.close()


QP2P = Impl(Qp2pReceiver, Qp2pSender, sized_datagrams=True)
