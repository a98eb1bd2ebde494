"""Real inputs the seed corpora are built from: every kind of wire message, and the datagrams of a
live qp2p exchange on 127.0.0.1 (Retry and handshake, messages, a large message, a request, the
close)."""

from __future__ import annotations

import asyncio

from _harness import wire

import qp2p

MESSAGES: tuple[wire.WireMessage, ...] = (
    wire.UserMessage(b"hello"),
    wire.UserMessage(bytes(range(256))),
    wire.Request(7, b"ping"),
    wire.Request(0xFFFFFFFF, b""),
    wire.Response(7, b"pong"),
    wire.EchoRequest(),
    wire.EchoResponse(("192.0.2.1", 4000)),
    wire.EchoResponse(("2001:db8::5", 65535)),
    wire.VerificationRequest(("::ffff:10.0.0.1", 9)),
    wire.VerificationResponse(True),
    wire.VerificationResponse(False),
    wire.Hello(0x0102030405060708, 64 << 20, 65536, 4 << 20, 4),
    wire.Credit(0x0102030405),
    wire.StreamCancelled(6, 70000),
)


def frames() -> list[bytes]:
    """One encoded frame per message in ``MESSAGES``."""
    return [wire.encode(message) for message in MESSAGES]


def _tap(endpoint: qp2p.Endpoint, seen: list[bytes]) -> None:
    """Record every datagram ``endpoint`` receives, then let it through."""
    transport = endpoint._transport
    assert transport is not None
    receive = transport.datagram_received

    def record(data: bytes, addr: tuple[object, ...]) -> None:
        seen.append(data)
        receive(data, addr)

    transport.datagram_received = record  # type: ignore[method-assign]


async def _exchange() -> list[bytes]:
    seen: list[bytes] = []
    async with qp2p.Endpoint() as a, qp2p.Endpoint() as b:
        _tap(a, seen)
        _tap(b, seen)
        connection = await a.connect_to(b.local_addr)
        await connection.send(b"hello")
        await connection.send(bytes(100_000))  # above the lane threshold: a stream of its own
        messages = b.incoming_messages()
        for _ in range(2):
            await anext(messages)  # type: ignore[call-overload]
        request = asyncio.ensure_future(connection.request(b"ping", timeout=5))
        await (await anext(messages)).reply(b"pong")  # type: ignore[call-overload]
        await request
    return seen


def datagrams() -> list[bytes]:
    """Every datagram both endpoints of a short qp2p exchange received, in order."""
    return asyncio.run(asyncio.wait_for(_exchange(), 20))
