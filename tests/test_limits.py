"""Stateless retry and resource limits on live endpoints over 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

import qp2p
from qp2p._speedups import packet

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]


async def test_retry_validates_every_new_client(make_endpoint: MakeEndpoint) -> None:
    server = await make_endpoint()
    clients = [await make_endpoint() for _ in range(3)]
    for client in clients:
        await client.send_message(b"hi", server.local_addr)
    stats = server.stats().datagrams
    assert (stats.retries, stats.accepted, stats.bad_tokens) == (3, 3, 0)


async def test_retry_can_be_turned_off(make_endpoint: MakeEndpoint) -> None:
    server = await make_endpoint(stateless_retry=False)
    client = await make_endpoint()
    await client.connect_to(server.local_addr)
    assert (server.stats().datagrams.retries, server.stats().datagrams.accepted) == (0, 1)


def hold_first_token_initial(client: qp2p.Endpoint) -> list[bytes]:
    """Keeps (and does not send) the client's first Initial that carries a retry token."""
    transport = client._transport
    assert transport is not None
    send, held = transport.sendto, []

    def sendto(data: bytes, addr: tuple[str, int]) -> None:
        try:
            header = packet.peek(data, 8)
        except qp2p.MalformedPacket:
            header = None
        if not held and header is not None and header.packet_type == packet.INITIAL and header.token:
            held.append(data)
            return
        send(data, addr)

    transport.sendto = sendto  # type: ignore[method-assign]
    return held


async def test_tokens_from_another_address_or_tampered_are_refused(make_endpoint: MakeEndpoint) -> None:
    server, client = await make_endpoint(), await make_endpoint()
    held = hold_first_token_initial(client)
    connecting = asyncio.create_task(client.connect_to(server.local_addr))
    async with asyncio.timeout(5):
        while not held:
            await asyncio.sleep(0.005)
    (initial,) = held
    token = packet.peek(initial, 8).token
    at = initial.index(token)
    tampered = initial[:at] + bytes([initial[at] ^ 1]) + initial[at + 1 :]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as thief:
        thief.sendto(initial, server.local_addr)  # a genuine token, from another address
        thief.sendto(tampered, server.local_addr)
        await asyncio.sleep(0.1)
    stats = server.stats().datagrams
    assert (stats.bad_tokens, stats.accepted) == (2, 0) and server.stats().routes == 0
    await connecting  # the client retransmits its Initial, from its own address, and gets in
    assert server.stats().datagrams.accepted == 1


async def test_too_many_connections_are_refused_at_once(make_endpoint: MakeEndpoint) -> None:
    server = await make_endpoint(max_connections=2)
    members = [await make_endpoint() for _ in range(2)]
    for member in members:
        await member.connect_to(server.local_addr)
    late = await make_endpoint(connect_timeout=5)
    with pytest.raises(qp2p.ConnectionError, match="too many connections"):
        async with asyncio.timeout(2):  # refused outright, not left to time out
            await late.connect_to(server.local_addr)
    assert server.stats().refused_connections >= 1
    for member in members:
        await member.send_message(b"still served", server.local_addr)


async def test_a_closed_connection_gives_its_place_back(make_endpoint: MakeEndpoint) -> None:
    server = await make_endpoint(max_connections=2)
    for _ in range(4):  # twice the limit, one after the other: each leaves before the next comes
        member = await make_endpoint()
        connection = await member.connect_to(server.local_addr)
        await member.close()
        await connection.wait_closed()
        async with asyncio.timeout(5):
            while server.connections():
                await asyncio.sleep(0.01)
    assert server.stats().refused_connections == 0
    assert server._settled_links() == 0


async def test_a_peer_opening_too_many_streams_is_cut_off(make_endpoint: MakeEndpoint) -> None:
    victim = await make_endpoint(max_incoming_streams=8)
    rogue, friend = await make_endpoint(), await make_endpoint()
    connection = await rogue.connect_to(victim.local_addr)
    link = connection._current
    assert link is not None
    quic = link.session.quic
    quic._remote_max_streams_uni = 1000  # ignore the victim's limit, as a hostile stack would
    for _ in range(20):  # beyond the 8 streams it may open: a QUIC STREAM_LIMIT_ERROR
        quic.send_stream_data(quic.get_next_available_stream_id(is_unidirectional=True), b"\x00")
    link.transmit()
    async with asyncio.timeout(5):
        await connection.wait_closed()
    await friend.send_message(b"served", victim.local_addr)
    async with asyncio.timeout(5):
        async for message in victim.incoming_messages():
            assert message.data == b"served"
            break
