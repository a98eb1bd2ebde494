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
    handle = a._pooled(b.local_addr)
    await a._traversal._relay(handle, await a.connect_to(r.local_addr))
    assert handle.path == "relayed"
    # The TLS handshake ran between a and b: a saw b's own certificate, not the relay's.
    assert handle.fingerprint == b.fingerprint
    assert len(r._traversal._circuits) == 2  # one circuit, both its ends
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
        while r._traversal._circuits:
            await asyncio.sleep(0.02)


async def test_a_relay_at_its_limit_refuses(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint, relay_max_circuits=0)
    handle = a._pooled(b.local_addr)
    with pytest.raises(qp2p.ConnectionError):
        async with asyncio.timeout(5):
            await a._traversal._relay(handle, await a.connect_to(r.local_addr))
    assert not r._traversal._circuits


async def test_a_circuit_past_its_byte_budget_is_closed(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint, relay_max_bytes=200_000)
    handle = a._pooled(b.local_addr)
    await a._traversal._relay(handle, await a.connect_to(r.local_addr))
    with pytest.raises((qp2p.ConnectionLost, qp2p.ClosedError)):
        async with asyncio.timeout(10):
            for _ in range(1000):
                await handle.send(bytes(1000))
                await asyncio.sleep(0)
            await handle.wait_closed()
            await handle.send(b"too late")
    assert not r._traversal._circuits


async def test_coordinated_punch_connects_both_sides(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint)
    handle = a._pooled(b.local_addr)
    assert await a._traversal._punch(handle, await a.connect_to(r.local_addr))
    assert handle.path == "punched" and handle.fingerprint == b.fingerprint
    server = asyncio.create_task(answer(b, 1))
    await handle.send(b"punched through")
    assert await server == [b"punched through"]


async def test_a_relayed_connection_moves_to_a_punched_one(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint)
    handle = a._pooled(b.local_addr)
    coordinator = await a.connect_to(r.local_addr)
    await a._traversal._relay(handle, coordinator)
    assert handle.path == "relayed"
    assert await a._traversal._punch(handle, coordinator)
    assert handle.path == "punched"
    server = asyncio.create_task(answer(b, 1))
    await handle.send(b"same connection object, better path")
    assert await server == [b"same connection object, better path"]
    async with asyncio.timeout(10):  # the relayed connection is closed, and with it the circuit
        while r._traversal._circuits:
            await asyncio.sleep(0.05)


async def test_punch_towards_an_unknown_peer_fails_at_once(make_endpoint: MakeEndpoint) -> None:
    a, _, r = await trio(make_endpoint)
    handle = a._pooled(("127.0.0.1", 9))
    started = asyncio.get_running_loop().time()
    assert not await a._traversal._punch(handle, await a.connect_to(r.local_addr))
    assert asyncio.get_running_loop().time() - started < 2  # PunchFailed, not a timeout
    handle._abort(qp2p.ClosedError("test over"))


async def test_a_connection_from_another_address_is_matched_by_endpoint_id(
    make_endpoint: MakeEndpoint,
) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    # What a symmetric NAT does: b's packets come from another port than the one a was told.
    told = (b.local_addr[0], b.local_addr[1] + 1 if b.local_addr[1] < 65535 else 1024)
    expected = a._pooled(told)
    a._expect(b.endpoint_id, expected)
    await b.connect_to(a.local_addr)
    await expected.wait_ready()
    assert expected.fingerprint == b.fingerprint and a.connections() == [expected]


async def test_connect_via_goes_direct_when_it_can(make_endpoint: MakeEndpoint) -> None:
    a, b, r = await trio(make_endpoint)
    connection = await a.connect_to(b.local_addr, via=r.local_addr)
    assert connection.path == "direct"
