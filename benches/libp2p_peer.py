"""Both ends of the end-to-end benches on py-libp2p, in one trio run: it runs on trio only.

Used as its examples use it: two hosts from ``new_host()`` at their defaults (TCP, the default
security and stream muxer, a fresh Ed25519 identity each), ``host.run`` listening on
127.0.0.1, a stream handler per protocol on the receiving host, and ``host.new_stream`` on the
sending one. Each kind of traffic keeps one stream open for the whole round, so no round trip
pays for a protocol negotiation: messages go on one stream, requests and their echoes on
another, each framed as a 4-byte length and the body (a large message is one ``write`` of the
whole body). ``stream.write`` waits as the muxer's flow control makes it.

py-libp2p cannot share an asyncio loop, so it does not run as a ``_pairs.Pair``: ``measure``
runs each round in a ``trio.run`` of its own, both hosts in it, and drives the same workload
through a ``Driver`` with a trio event; the round is bounded by ``ROUND_TIMEOUT`` like any.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import multiaddr
import trio
from _pairs import ROUND_TIMEOUT, Driver
from _peers import Body, OwnLoop
from _workloads import Workload
from libp2p import new_host
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

__all__ = ("LIBP2P", "measure")

LISTEN = "/ip4/127.0.0.1/tcp/0"
MESSAGES = TProtocol("/qp2p-bench/messages/1.0.0")
REQUESTS = TProtocol("/qp2p-bench/requests/1.0.0")
LENGTH = struct.Struct("!I")


async def _read_exactly(stream: INetStream, size: int) -> bytearray:
    data = bytearray()
    while len(data) < size:
        piece = await stream.read(size - len(data))
        if not piece:
            raise EOFError(f"the stream ended {size - len(data)} bytes short")
        data += piece
    return data


async def _read_frame(stream: INetStream) -> bytearray | None:
    """The next framed body, or None once the stream has ended between frames."""
    try:
        header = await _read_exactly(stream, LENGTH.size)
    except EOFError:
        return None
    return await _read_exactly(stream, LENGTH.unpack(header)[0])


async def _write_frame(stream: INetStream, data: Body) -> None:
    await stream.write(LENGTH.pack(len(data)))
    await stream.write(bytes(data))


class Libp2pSender:
    """The sending host's two streams to the receiving host."""

    def __init__(self, messages: INetStream, requests: INetStream) -> None:
        self._messages = messages
        self._requests = requests

    async def send(self, data: Body) -> None:
        await _write_frame(self._messages, data)

    async def request(self, data: Body) -> Body:
        await _write_frame(self._requests, data)
        reply = await _read_frame(self._requests)
        if reply is None:
            raise EOFError("the request stream ended before the reply")
        return reply

    async def connect(self, contact: Any) -> None:
        raise NotImplementedError("connected by _round, inside its trio run")

    async def close(self) -> None:
        await self._messages.close()
        await self._requests.close()


def _handlers(on_message: Callable[[Body], None]) -> dict[TProtocol, Callable[[INetStream], Any]]:
    async def take_messages(stream: INetStream) -> None:
        while (body := await _read_frame(stream)) is not None:
            on_message(body)

    async def echo_requests(stream: INetStream) -> None:
        while (body := await _read_frame(stream)) is not None:
            await _write_frame(stream, body)

    return {MESSAGES: take_messages, REQUESTS: echo_requests}


async def _round(driver: Driver, workload: Workload) -> Any:
    """Both hosts up and connected, then the timed work, then both closed; all within ``ROUND_TIMEOUT``."""
    with trio.fail_after(ROUND_TIMEOUT):
        receiving, sending = new_host(), new_host()
        async with AsyncExitStack() as hosts:
            for host in (receiving, sending):
                await hosts.enter_async_context(host.run(listen_addrs=[multiaddr.Multiaddr(LISTEN)]))
            for protocol, handler in _handlers(driver.on_message).items():
                receiving.set_stream_handler(protocol, handler)
            await sending.connect(info_from_p2p_addr(receiving.get_addrs()[0]))
            peer = receiving.get_id()
            sender = Libp2pSender(
                await sending.new_stream(peer, [MESSAGES]), await sending.new_stream(peer, [REQUESTS])
            )
            driver.sender = sender
            result = await workload.work(driver)
            await sender.close()
            return result


def measure(workload: Workload, rounds: int) -> dict[str, Any]:
    """The workload's figures over ``rounds`` rounds, each a fresh trio run, checked after it."""
    results = []
    for _ in range(rounds):
        driver = Driver("libp2p", trio.Event())
        try:
            results.append(trio.run(_round, driver, workload))
        except trio.TooSlowError:
            raise AssertionError(
                f"libp2p: {workload.what} not done within {ROUND_TIMEOUT} s ({driver.progress()})"
            ) from None
        workload.check(driver)
    return workload.figures(results)


LIBP2P = OwnLoop("trio", measure)
