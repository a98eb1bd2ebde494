"""Hole-punch coordination and relaying over 127.0.0.1 (real NATs: tests/test_nat_traversal.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import pytest

import qp2p

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]


async def trio(
    make_endpoint: MakeEndpoint, **relay_settings: object
) -> tuple[qp2p.Endpoint, qp2p.Endpoint, qp2p.Endpoint]:
    """A and B, each connected to R."""
    r = await make_endpoint(**relay_settings)
    a, b = await make_endpoint(), await make_endpoint()
    await a.connect_to(r.local_addr)
    await b.connect_to(r.local_addr)
    async with asyncio.timeout(5):
        while len(r.connections()) < 2:
            await asyncio.sleep(0.01)
    return a, b, r


async def answer(endpoint: qp2p.Endpoint, count: int) -> list[bytes]:
    """Replies to requests with their SHA-256; returns the plain messages, ``count`` of them."""
    got: list[bytes] = []
    async with asyncio.timeout(20):
        async for message in endpoint.incoming_messages():
            if message.is_request:
                await message.reply(hashlib.sha256(message.data).digest())
            else:
                got.append(bytes(message.data))
                if len(got) == count:
                    return got
    return got


async def test_relayed_connection_is_end_to_end(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint)
    handle = await a._relay(await a.connect_to(r.local_addr), b.local_addr, None)
    assert handle.path == "relayed"
    # The TLS handshake ran between a and b: a saw b's own certificate, not the relay's.
    assert handle.peer_id == b.peer_id
    # The address a relayed connection reports is the relay's: the only one a observed.
    assert handle.remote_addr == r.local_addr
    assert r.stats().relay_circuits == 1
    server = asyncio.create_task(answer(b, 50))
    for i in range(50):
        await handle.send(i.to_bytes(4, "big") * 100)
    assert (
        await handle.request(b"through the relay", timeout=10)
        == hashlib.sha256(b"through the relay").digest()
    )
    assert sorted(await server) == [i.to_bytes(4, "big") * 100 for i in range(50)]
    assert r.stats().queued_messages == 0  # the relay read nothing
    await handle.close()
    async with asyncio.timeout(5):
        while r.stats().relay_circuits:
            await asyncio.sleep(0.02)


async def test_relayed_messages_come_from_the_relay_and_the_proven_peer(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint)
    handle = await a._relay(await a.connect_to(r.local_addr), b.local_addr, b.peer_id)
    await handle.send(b"hello through r")
    async with asyncio.timeout(5):
        message = await anext(aiter(b.incoming_messages()))
    assert (message.peer_id, message.src, message.connection.path) == (a.peer_id, r.local_addr, "relayed")


async def test_a_relay_at_its_limit_refuses(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint, relay_max_circuits=0)
    with pytest.raises(qp2p.ConnectionError):
        async with asyncio.timeout(5):
            await a._relay(await a.connect_to(r.local_addr), b.local_addr, None)
    assert r.stats().relay_circuits == 0


async def test_a_circuit_past_its_byte_budget_is_closed(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint, relay_max_bytes=200_000)
    handle = await a._relay(await a.connect_to(r.local_addr), b.local_addr, None)
    with pytest.raises((qp2p.ConnectionLost, qp2p.ClosedError)):
        async with asyncio.timeout(10):
            for _ in range(1000):
                await handle.send(bytes(1000))
                await asyncio.sleep(0)
            await handle.wait_closed()
            await handle.send(b"too late")
    assert r.stats().relay_circuits == 0


async def test_coordinated_punch_connects_both_sides(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint)
    handle = await a._punch(await a.connect_to(r.local_addr), b.local_addr, None)
    assert handle is not None
    assert handle.path == "punched" and handle.peer_id == b.peer_id
    server = asyncio.create_task(answer(b, 1))
    await handle.send(b"punched through")
    assert await server == [b"punched through"]
    async with asyncio.timeout(5):  # the punch is over on both sides: nothing left in flight
        while a.stats().punches or b.stats().punches:
            await asyncio.sleep(0.02)


async def test_a_relayed_connection_moves_to_a_punched_one(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint)
    coordinator = await a.connect_to(r.local_addr)
    handle = await a._relay(coordinator, b.local_addr, b.peer_id)
    assert handle.path == "relayed"
    assert await a._punch(coordinator, b.local_addr, b.peer_id) is handle
    assert handle.path == "punched"
    server = asyncio.create_task(answer(b, 1))
    await handle.send(b"same connection object, better path")
    assert await server == [b"same connection object, better path"]
    async with asyncio.timeout(10):  # the relayed connection is closed, and with it the circuit
        while r.stats().relay_circuits:
            await asyncio.sleep(0.05)


async def test_punch_towards_an_unknown_peer_fails_at_once(make_endpoint: MakeEndpoint) -> None:
    a, _, r = await trio(make_endpoint)
    started = asyncio.get_running_loop().time()
    assert await a._punch(await a.connect_to(r.local_addr), ("127.0.0.1", 9), None) is None
    assert asyncio.get_running_loop().time() - started < 2  # PunchFailed, not a timeout


async def test_a_link_from_another_address_joins_the_peers_connection(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    first = await a.connect_to(b.local_addr)
    # What a symmetric NAT does: the same peer's packets come from another port.
    twin = qp2p.Endpoint(b.config.replace(local_port=0), _identity=b._identity)
    async with twin:
        await twin.connect_to(a.local_addr)
        async with asyncio.timeout(5):
            while len(first.links) < 2:
                await asyncio.sleep(0.01)
        assert a.connections() == [first] and first.peer_id == b.peer_id


async def test_connect_via_goes_direct_when_it_can(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint)
    connection = await a.connect_to(b.local_addr, via=r.local_addr)
    assert connection.path == "direct"


async def test_connect_via_stops_at_a_refused_certificate(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint)
    started = asyncio.get_running_loop().time()
    with pytest.raises(qp2p.CertificateError):
        await a.connect_to(b.local_addr, via=r.local_addr, peer_id="ab" * 32)
    assert asyncio.get_running_loop().time() - started < 1.0  # no punch, no relay
    assert a.stats().punches == 0 and r.stats().relay_circuits == 0
