"""Endpoints over real UDP sockets on 127.0.0.1 with real aioquic connections, in one process."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import socket
from collections.abc import Awaitable, Callable

import pytest
from waiting import wait_until

import qp2p

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
KiB = 1 << 10
MiB = 1 << 20


async def first(iterator: object, timeout: float = 5.0) -> object:
    async with asyncio.timeout(timeout):
        return await anext(iterator)  # type: ignore[call-overload]


async def collect(endpoint: qp2p.Endpoint, count: int, timeout: float = 20.0) -> list[qp2p.Message]:
    messages = []
    async with asyncio.timeout(timeout):
        async for message in endpoint.incoming_messages():
            messages.append(message)
            if len(messages) == count:
                break
    return messages


class Responder:
    """Answers every request on an endpoint with SHA-256 of its data, in a task it owns."""

    def __init__(self, endpoint: qp2p.Endpoint) -> None:
        self.endpoint = endpoint
        self.messages: list[qp2p.Message] = []
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async for message in self.endpoint.incoming_messages():
            if message.is_request:
                await message.reply(hashlib.sha256(message.data).digest())
            else:
                self.messages.append(message)

    async def __aenter__(self) -> Responder:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def test_connect_and_send_one_message(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    assert connection.remote_addr == b.local_addr and connection.path == "direct"
    await connection.send(b"hello")
    (message,) = await collect(b, 1)
    assert (message.src, message.data, message.is_request, message.lane) == (a.local_addr, b"hello", False, 1)
    incoming = await first(b.incoming_connections())
    assert incoming.remote_addr == a.local_addr  # type: ignore[attr-defined]


async def test_outgoing_connection_is_reused(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    first_connection = await a.connect_to(b.local_addr)
    await a.send_message(b"one", b.local_addr)
    await a.send_message(b"two", b.local_addr)
    assert await a.connect_to(b.local_addr) is first_connection
    assert [m.data for m in await collect(b, 2)] in ([b"one", b"two"], [b"two", b"one"])
    assert b.stats().datagrams.accepted == 1 and len(a.connections()) == 1


async def test_incoming_connection_is_reused_for_sending(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    await a.connect_to(b.local_addr)
    incoming = await first(b.incoming_connections())
    await b.send_message(b"back", a.local_addr)  # no new handshake: the pooled connection
    assert await b.connect_to(a.local_addr) is incoming
    (message,) = await collect(a, 1)
    assert message.data == b"back"
    assert a.stats().datagrams.accepted == 0 and b.stats().datagrams.accepted == 1


async def test_disconnection_is_seen_by_the_other_side(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    await first(b.incoming_connections())
    await a.disconnect_from(b.local_addr)
    assert connection.is_closed
    assert await first(b.disconnections()) == a.local_addr
    assert b.connections() == []
    with pytest.raises(qp2p.ClosedError):
        await connection.send(b"late")


def delay_outgoing(endpoint: qp2p.Endpoint, seconds: float) -> Callable[[], None]:
    """Hold every datagram the endpoint sends for ``seconds``: a long path, on loopback.
    Returns the function that ends the delay and sends what is still held."""
    transport = endpoint._transport
    assert transport is not None
    send, loop = transport.sendto, asyncio.get_running_loop()
    held: list[tuple[asyncio.TimerHandle, bytes, tuple[str, int]]] = []

    def delayed(data: bytes, addr: tuple[str, int]) -> None:
        held.append((loop.call_later(seconds, send, data, addr), data, addr))

    transport.sendto = delayed  # type: ignore[method-assign]

    def undo() -> None:
        del transport.sendto  # the class's own method again
        for handle, data, addr in held:
            if handle.when() > loop.time() and not handle.cancelled():
                handle.cancel()
                send(data, addr)

    return undo


async def test_simultaneous_connects_end_with_one_connection(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    undo = [delay_outgoing(endpoint, 0.05) for endpoint in (a, b)]
    ab, ba = await asyncio.gather(a.connect_to(b.local_addr), b.connect_to(a.local_addr))
    count = 3000
    for i in range(count):  # some of these go out on the connection that loses the race
        await ab.send(i.to_bytes(4, "big"))
    await ba.send(b"from b")
    assert [m.data for m in await collect(a, 1)] == [b"from b"]
    numbers = sorted(int.from_bytes(m.data, "big") for m in await collect(b, count))
    assert numbers == list(range(count))  # nothing sent on the retired connection is lost
    async with asyncio.timeout(5):
        while (
            len(ab._links) < 2
            or len(ba._links) < 2
            or not all(link.established.done() for link in ab._links + ba._links)
        ):
            await asyncio.sleep(0.02)
    # Both sides keep the connection dialled by the endpoint with the lower peer id; the other
    # is retired (no keep-alives) and left to time out, so nothing in flight on it is cut off.
    assert ab.current_link is not None and ba.current_link is not None
    assert ab.current_link.session.is_client == (a.peer_id < b.peer_id)
    assert ba.current_link.session.is_client == (b.peer_id < a.peer_id)
    assert [link.retired for link in ab.links if link is not ab.current_link] == [True]
    assert [link.retired for link in ba.links if link is not ba.current_link] == [True]
    assert a.connections() == [ab] and b.connections() == [ba]
    for end_delay in undo:
        end_delay()


async def test_close_right_after_send_still_delivers(make_endpoint: MakeEndpoint) -> None:
    a, b, c = await make_endpoint(), await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    for i in range(500):
        await connection.send(i.to_bytes(4, "big") + bytes(200))
    await connection.close()  # waits until the peer acknowledged everything sent
    assert len(await collect(b, 500)) == 500
    await c.send_message(b"last words", b.local_addr)
    await c.close()
    assert [m.data for m in await collect(b, 1)] == [b"last words"]


async def test_large_messages_beyond_the_buffer_slots_wait_and_arrive(make_endpoint: MakeEndpoint) -> None:
    a = await make_endpoint()
    b = await make_endpoint(large_message_slots=2)
    connection = await a.connect_to(b.local_addr)
    for i in range(6):
        await connection.send(bytes([i]) * 100_000)
    link = connection.current_link
    assert link is not None
    # Every stream has reached b (acknowledged whole) while most wait there for a slot.
    await wait_until(lambda: link.session.unacked == 0)
    messages = await collect(b, 6)
    assert sorted(bytes(m.data) for m in messages) == [bytes([i]) * 100_000 for i in range(6)]


async def test_concurrent_connects_share_one_handshake(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    connections = await asyncio.gather(*(a.connect_to(b.local_addr) for _ in range(20)))
    assert all(c is connections[0] for c in connections)
    assert b.stats().datagrams.accepted == 1
    assert len(connections[0].links) == 1


async def test_ten_thousand_messages_none_lost_in_order_per_lane(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    count = 10_000

    async def send_all() -> None:
        for i in range(count):
            await connection.send(i.to_bytes(4, "big") + bytes(60))

    sender = asyncio.create_task(send_all())
    messages = await collect(b, count, timeout=60)
    await sender
    numbers = [int.from_bytes(m.data[:4], "big") for m in messages]
    assert sorted(numbers) == list(range(count))  # none lost, none duplicated
    by_lane: dict[int, list[int]] = {}
    for message, number in zip(messages, numbers, strict=True):
        by_lane.setdefault(message.lane, []).append(number)
    assert len(by_lane) > 1  # the sender yields now and then, and the lanes take turns
    for lane_numbers in by_lane.values():
        assert lane_numbers == sorted(lane_numbers)


async def test_concurrent_requests_on_one_connection(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    async with Responder(b):
        connection = await a.connect_to(b.local_addr)
        payloads = [bytes([i]) * (i + 1) for i in range(200)]
        replies = await asyncio.gather(*(connection.request(p, timeout=10) for p in payloads))
        assert replies == [hashlib.sha256(p).digest() for p in payloads]


async def test_requests_with_large_payloads(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    async with Responder(b):
        connection = await a.connect_to(b.local_addr)
        payload = bytes(range(256)) * (3 * MiB // 256)
        assert await connection.request(payload, timeout=30) == hashlib.sha256(payload).digest()


async def test_large_message_arrives_whole(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    payload = bytes(range(256)) * (5 * MiB // 256)
    await a.send_message(payload, b.local_addr)
    (message,) = await collect(b, 1, timeout=30)
    assert message.data == payload and message.lane == -1 and isinstance(message.data, bytearray)


async def test_request_timeout(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    with pytest.raises(qp2p.RequestTimeout):
        await connection.request(b"anyone?", timeout=0.3)
    (message,) = await collect(b, 1)
    assert message.is_request
    await message.reply(b"too late")  # dropped quietly by the requester
    with pytest.raises(qp2p.SendError):
        await message.reply(b"twice")


async def test_reply_to_a_plain_message_is_refused(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    await a.send_message(b"plain", b.local_addr)
    (message,) = await collect(b, 1)
    with pytest.raises(qp2p.SendError):
        await message.reply(b"no")


async def test_keep_alive_holds_an_idle_connection_open(make_endpoint: MakeEndpoint) -> None:
    a = await make_endpoint(idle_timeout=1.0, keep_alive_interval=0.3)
    b = await make_endpoint(idle_timeout=1.0, keep_alive_interval=None)
    connection = await a.connect_to(b.local_addr)
    # Eight keep-alives reach b: 2.4 s, more than twice the idle timeout, with no data.
    base = b.stats().datagrams.received
    await wait_until(lambda: b.stats().datagrams.received >= base + 8 or connection.is_closed)
    assert not connection.is_closed
    assert a.stats().keep_alives >= 3  # the PINGs, sent because nothing else was
    await connection.send(b"still here")
    assert [m.data for m in await collect(b, 1)] == [b"still here"]


async def test_without_keep_alive_idle_connection_times_out(make_endpoint: MakeEndpoint) -> None:
    a = await make_endpoint(idle_timeout=1.0, keep_alive_interval=None)
    b = await make_endpoint(idle_timeout=1.0, keep_alive_interval=None)
    connection = await a.connect_to(b.local_addr)
    await first(b.incoming_connections())
    assert await first(b.disconnections(), timeout=4) == a.local_addr
    assert await first(a.disconnections(), timeout=4) == b.local_addr
    assert connection.is_closed
    with pytest.raises(qp2p.ConnectionLost):
        await connection.send(b"gone")


async def test_oversized_message_refused_then_normal_one_delivered(make_endpoint: MakeEndpoint) -> None:
    a = await make_endpoint()
    b = await make_endpoint(max_message_size=100 * KiB)
    connection = await a.connect_to(b.local_addr)
    with pytest.raises(qp2p.MessageTooLarge) as info:
        await connection.send(bytes(200 * KiB))
    assert (info.value.limit, info.value.size) == (100 * KiB, 200 * KiB)
    # A peer that ignores the limit it was told: the receiver refuses the frame by its header.
    link = connection.current_link
    assert link is not None
    assert link is not None and link.session.peer is not None
    link.session._peer = dataclasses.replace(link.session.peer, max_message_size=MiB)
    try:
        await connection.send(bytes(200 * KiB))  # may already be all with QUIC when the refusal comes
    except qp2p.SendError:
        pass
    await connection.send(b"normal")
    assert [m.data for m in await collect(b, 1)] == [b"normal"]  # the oversized one never arrives
    (incoming,) = b.connections()
    assert incoming.current_link is not None and incoming.current_link.session.refused_streams == 1


async def test_empty_message_is_refused(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    with pytest.raises(qp2p.SendError):
        await connection.send(b"")


async def test_connect_to_nobody_fails_in_time(make_endpoint: MakeEndpoint) -> None:
    a = await make_endpoint(connect_timeout=0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # a port that takes datagrams and never answers
        with pytest.raises(qp2p.ConnectionError):
            await a.connect_to(silent.getsockname())
    assert a.connections() == []


async def test_slow_reader_slows_the_sender(make_endpoint: MakeEndpoint) -> None:
    a = await make_endpoint()
    b = await make_endpoint(receive_window=256 * KiB)
    connection = await a.connect_to(b.local_addr)
    body = bytes(1000)
    sent = 0

    async def send_forever() -> None:
        nonlocal sent
        while True:
            await connection.send(body)
            sent += 1

    sender = asyncio.create_task(send_forever())
    link = connection.current_link
    assert link is not None
    # Until the sender is held back: its credit spent, and all it sent arrived at b.
    await wait_until(lambda: link.session.credit <= 0 and b.stats().queued_messages >= sent > 0)
    queued = b.stats().queued_messages
    assert queued * (1000 + 9 + 64) <= 256 * KiB + 2 * (1000 + 9 + 64)  # bounded by the window
    assert sent <= queued + 1
    await collect(b, 300)  # reading lets the sender go on
    await wait_until(lambda: sent > queued + 200)
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender


async def test_garbage_datagrams_are_counted_and_ignored(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rogue:
        for datagram in (
            b"",
            b"\x00",
            b"\xc0\x00\x00\x00\x01\xff" + bytes(300),
            b"\x41" + bytes(30),
            bytes(1300),
        ):
            rogue.sendto(datagram, b.local_addr)
        await wait_until(lambda: b.stats().datagrams.received == 5)
    stats = b.stats().datagrams
    # Empty, 1 byte, a 255-byte CID, zeros: malformed. A short header for no connection: unroutable.
    assert (stats.received, stats.malformed, stats.unroutable, stats.accepted) == (5, 4, 1, 0)
    await a.send_message(b"served", b.local_addr)
    assert [m.data for m in await collect(b, 1)] == [b"served"]


async def test_closed_endpoint_releases_everything(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    a_addr = a.local_addr
    messages, disconnections = a.incoming_messages(), a.disconnections()
    waiting = asyncio.create_task(anext(messages))  # type: ignore[arg-type]
    await a.close()
    await a.close()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await waiting
    with pytest.raises(StopAsyncIteration):
        await anext(disconnections)  # type: ignore[call-overload]
    for call in (lambda: a.connect_to(b.local_addr), lambda: connection.send(b"x")):
        with pytest.raises(qp2p.ClosedError):
            await call()
    with pytest.raises(qp2p.ClosedError):
        a.local_addr  # noqa: B018
    assert await first(b.disconnections()) == a_addr


async def test_endpoint_as_context_manager() -> None:
    async with qp2p.Endpoint() as a, qp2p.Endpoint() as b:
        await a.send_message(b"ctx", b.local_addr)
        assert [m.data for m in await collect(b, 1)] == [b"ctx"]
    with pytest.raises(qp2p.ClosedError):
        await a.connect_to(b.local_addr)
