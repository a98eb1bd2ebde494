"""Both ends of the end-to-end benches on raw aioquic: the baseline qp2p is compared with.

The plain way to carry messages over aioquic's asyncio API: ``serve`` and ``connect`` with a
``QuicConnectionProtocol`` subclass on each side that handles stream events itself (no
``StreamReader`` per stream), both at aioquic's default settings and 1200-byte datagrams.

- A message is one unidirectional stream, written at once with ``end_stream=True``; the
  receiver hands over each stream's whole body when its FIN arrives. Small messages take no
  copy on the way in; a large one is gathered in one ``bytearray``.
- Flow: at most ``WINDOW`` messages are unacknowledged by the receiving application. For each
  message it has handed over, the receiver writes one byte on a unidirectional stream of its
  own; the sender waits for those bytes before it opens more streams. Without this the
  sender would queue every message in aioquic at once (aioquic keeps each byte until it is
  acknowledged and gives streams no backpressure), which is neither bounded nor fair. The
  window is small because aioquic walks every open stream for each packet it builds: of 8
  to 256, 16 gave it the best rates (at 256, 1 KiB messages went about 2.5 times slower).
- A large message is exactly one write of the whole payload, the plain way: aioquic copies it
  into the stream's send buffer and holds it until acknowledged, so a 256 MiB send costs
  256 MiB more.
- A request is one bidirectional stream; the receiver echoes the body on the same stream and
  ends it.

Transmits after local writes are coalesced with ``_transmit_soon``, as aioquic's own stream
writer does. The server presents the same kind of certificate as a qp2p endpoint (P-256,
self-signed), so both handshakes cost the same; handshakes are outside every timed section.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, cast

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.asyncio.protocol import QuicStreamHandler
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StreamDataReceived

from qp2p.tls import self_signed_identity

__all__ = ("DATAGRAM_SIZE", "WINDOW", "Address", "AioquicReceiver", "AioquicSender", "Body")

ALPN = "e2e-bench"
DATAGRAM_SIZE = 1200
# Messages the sender may have out before the receiving application acknowledges them.
WINDOW = 16

Address = tuple[str, int]
Body = bytes | bytearray


def _whole_body(partial_bodies: dict[int, bytearray], event: StreamDataReceived) -> Body | None:
    """The stream's whole body once its FIN has arrived, else None (the data is kept)."""
    if event.end_stream and event.stream_id not in partial_bodies:
        return event.data  # a small message arrives in one event: no copy
    body = partial_bodies.setdefault(event.stream_id, bytearray())
    body += event.data
    return partial_bodies.pop(event.stream_id) if event.end_stream else None


class _ServerPeer(QuicConnectionProtocol):
    """Receives messages (acknowledging each) and echoes requests."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: QuicStreamHandler | None = None,
        *,
        on_message: Callable[[Body], None],
    ) -> None:
        super().__init__(quic, stream_handler)
        self._on_message = on_message
        self._partial: dict[int, bytearray] = {}
        self._ack_stream: int | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        # Called while a datagram is processed; the protocol transmits right after.
        if type(event) is not StreamDataReceived:
            return
        body = _whole_body(self._partial, event)
        if body is None:
            return
        quic = self._quic
        if event.stream_id & 2:  # unidirectional: a message
            self._on_message(body)
            if self._ack_stream is None:
                self._ack_stream = quic.get_next_available_stream_id(is_unidirectional=True)
            quic.send_stream_data(self._ack_stream, b"\x01")
        else:  # bidirectional: a request
            quic.send_stream_data(event.stream_id, body, end_stream=True)


class _ClientPeer(QuicConnectionProtocol):
    """Sends messages within the window and requests; takes acknowledgements and replies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._window = asyncio.Semaphore(WINDOW)
        self._partial: dict[int, bytearray] = {}
        self._replies: dict[int, asyncio.Future[Body]] = {}

    async def send(self, data: Body) -> None:
        await self._window.acquire()
        quic = self._quic
        quic.send_stream_data(
            quic.get_next_available_stream_id(is_unidirectional=True), data, end_stream=True
        )
        self._transmit_soon()

    async def request(self, data: Body) -> Body:
        stream_id = self._quic.get_next_available_stream_id()
        reply = self._replies[stream_id] = self._loop.create_future()
        self._quic.send_stream_data(stream_id, data, end_stream=True)
        self._transmit_soon()
        return await reply

    def quic_event_received(self, event: QuicEvent) -> None:
        if type(event) is not StreamDataReceived:
            return
        if event.stream_id & 2:  # the receiver's acknowledgements, one byte per message
            for _ in range(len(event.data)):
                self._window.release()
            return
        body = _whole_body(self._partial, event)
        if body is not None:
            self._replies.pop(event.stream_id).set_result(body)


class AioquicReceiver:
    """A server that hands every message to ``on_message`` and echoes every request."""

    def __init__(self) -> None:
        self._server: QuicServer | None = None

    async def start(self, on_message: Callable[[Body], None]) -> Address:
        identity = self_signed_identity()
        config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], max_datagram_size=DATAGRAM_SIZE)
        config.certificate, config.private_key = identity.certificate, identity.private_key
        self._server = await serve(
            "127.0.0.1", 0, configuration=config, create_protocol=partial(_ServerPeer, on_message=on_message)
        )
        # QuicServer does not tell its address; its datagram transport does.
        host, port = self._server._transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
        return host, port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


class AioquicSender:
    """A client connection that sends messages and requests."""

    _peer: _ClientPeer  # set by connect()

    def __init__(self) -> None:
        self._exit = AsyncExitStack()

    async def connect(self, addr: Address) -> None:
        config = QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], max_datagram_size=DATAGRAM_SIZE, verify_mode=ssl.CERT_NONE
        )
        protocol = await self._exit.enter_async_context(
            connect(*addr, configuration=config, create_protocol=_ClientPeer)
        )
        self._peer = cast(_ClientPeer, protocol)

    async def send(self, data: Body) -> None:
        await self._peer.send(data)

    async def request(self, data: Body) -> Body:
        return await self._peer.request(data)

    async def close(self) -> None:
        await self._exit.aclose()
