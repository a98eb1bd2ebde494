"""How many datagrams a round trip costs: a reply carries the acknowledgement of its request,
and the next request carries the acknowledgement of that reply, instead of each side sending
an acknowledgement of its own a millisecond later."""

from __future__ import annotations

import asyncio

import qp2p

ROUND_TRIPS = 200


async def test_a_request_and_its_reply_cost_two_datagrams() -> None:
    async with qp2p.Endpoint() as server, qp2p.Endpoint() as client:
        connection = await client.connect_to(server.local_addr)

        async def echo() -> None:
            async for message in server.incoming_messages():
                await message.reply(message.data)

        echoing = asyncio.create_task(echo())
        try:
            async with asyncio.timeout(60):
                await connection.request(b"warm up")  # the handshake's last packets settle
                before = server.stats().datagrams.received + client.stats().datagrams.received
                for number in range(ROUND_TRIPS):
                    assert await connection.request(number.to_bytes(4, "big")) == number.to_bytes(4, "big")
                after = server.stats().datagrams.received + client.stats().datagrams.received
        finally:
            echoing.cancel()
    # A request, its reply, and now and then an acknowledgement that found nothing to ride on.
    assert after - before <= ROUND_TRIPS * 2 + ROUND_TRIPS // 10
