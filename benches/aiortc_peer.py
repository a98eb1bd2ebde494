"""Both ends of the end-to-end benches on aiortc data channels (WebRTC's SCTP over DTLS over UDP).

Two ``RTCPeerConnection``s in one loop hand their SDP offer and answer to each other directly
(no signalling server). The channels are aiortc's default kind, reliable and ordered, opened
by the sender: "messages" carries each message as one data-channel message, "requests" each
request and its echo, and "bulk" a message above the data-channel size limit (aiortc takes
at most 64 KiB per message from a peer that states no limit) as an 8-byte length and then
16 KiB pieces, the piece size WebRTC guides give for portable channels. The sender keeps to the
documented backpressure: past ``HIGH_WATER`` bytes in ``bufferedAmount`` it waits for the
``bufferedamountlow`` event (``bufferedAmountLowThreshold`` = ``LOW_WATER``).

Everything stays on 127.0.0.1: no STUN server is configured (aiortc otherwise uses a public
one), and the only host candidate gathered is the loopback address. aioice leaves 127.0.0.1
out of its candidates and has no setting for it, so its address lookup is replaced for the
duration of the SDP exchange.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from unittest import mock

import aioice.ice
from _peers import Body, DatagramSize, Impl
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

__all__ = ("AIORTC", "AiortcReceiver", "AiortcSender")

CHANNELS = ("messages", "requests", "bulk")
# The most bytes in one data-channel message (the default limit for a peer that states none).
MAX_MESSAGE = 64 * 1024
PIECE = 16 * 1024
HIGH_WATER = 1 << 20
LOW_WATER = 256 * 1024
LENGTH_BYTES = 8


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]


def _connection() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class AiortcReceiver:
    """The answering peer connection: takes messages and bulk, echoes requests."""

    def __init__(self, datagram_size: DatagramSize) -> None:
        self._pc: RTCPeerConnection | None = None
        self._on_message: Callable[[Body], None] = lambda body: None
        self._bulk = bytearray()
        self._bulk_size: int | None = None
        self._channels: dict[str, RTCDataChannel] = {}
        self.ready: asyncio.Future[None] | None = None

    async def start(self, on_message: Callable[[Body], None]) -> AiortcReceiver:
        self._on_message = on_message
        self.ready = asyncio.get_running_loop().create_future()
        self._pc = _connection()
        self._pc.on("datachannel", self._channel_opened)
        return self

    def _channel_opened(self, channel: RTCDataChannel) -> None:
        self._channels[channel.label] = channel
        handler = {"messages": self._on_message, "requests": channel.send, "bulk": self._bulk_piece}
        channel.on("message", handler[channel.label])
        if len(self._channels) == len(CHANNELS) and self.ready is not None and not self.ready.done():
            self.ready.set_result(None)

    def _bulk_piece(self, piece: bytes) -> None:
        if self._bulk_size is None:
            self._bulk_size = int.from_bytes(piece, "big")
            return
        self._bulk += piece
        if len(self._bulk) >= self._bulk_size:
            body, self._bulk, self._bulk_size = self._bulk, bytearray(), None
            self._on_message(body)

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Takes the sender's offer; returns this side's answer with its candidates gathered."""
        assert self._pc is not None
        await self._pc.setRemoteDescription(offer)
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        return self._pc.localDescription

    async def close(self) -> None:
        if self._pc is not None:
            await self._pc.close()


class AiortcSender:
    """The offering peer connection, which opens the three channels."""

    def __init__(self, datagram_size: DatagramSize) -> None:
        self._pc: RTCPeerConnection | None = None  # made by connect(), in the running loop
        self._channels: dict[str, RTCDataChannel] = {}
        self._replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def connect(self, contact: AiortcReceiver) -> None:
        loop = asyncio.get_running_loop()
        pc = self._pc = _connection()
        opened = [loop.create_future() for _ in CHANNELS]
        for label, done in zip(CHANNELS, opened, strict=True):
            channel = self._channels[label] = pc.createDataChannel(label)  # reliable, ordered
            channel.bufferedAmountLowThreshold = LOW_WATER
            channel.once("open", lambda done=done: done.set_result(None))
        self._channels["requests"].on("message", self._replies.put_nowait)
        with mock.patch.object(aioice.ice, "get_host_addresses", _loopback_only):
            await pc.setLocalDescription(await pc.createOffer())
            await pc.setRemoteDescription(await contact.answer(pc.localDescription))
        assert contact.ready is not None
        await asyncio.gather(contact.ready, *opened)

    async def _put(self, channel: RTCDataChannel, data: bytes) -> None:
        channel.send(data)
        if channel.bufferedAmount > HIGH_WATER:
            low: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            channel.once("bufferedamountlow", lambda: low.done() or low.set_result(None))
            await low

    async def send(self, data: Body) -> None:
        if len(data) <= MAX_MESSAGE:
            await self._put(self._channels["messages"], bytes(data))
            return
        bulk = self._channels["bulk"]
        await self._put(bulk, len(data).to_bytes(LENGTH_BYTES, "big"))
        view = memoryview(data)
        for at in range(0, len(data), PIECE):
            await self._put(bulk, bytes(view[at : at + PIECE]))

    async def request(self, data: Body) -> Body:
        await self._put(self._channels["requests"], bytes(data))
        return await self._replies.get()

    async def close(self) -> None:
        if self._pc is not None:
            await self._pc.close()


AIORTC = Impl(AiortcReceiver, AiortcSender, sized_datagrams=False)
