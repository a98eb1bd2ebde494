"""Both ends of the end-to-end benches on raw aioquic, the baseline qp2p is compared with, and on qh3.

The plain way to carry messages over aioquic's asyncio API: ``serve`` and ``connect`` with a
``QuicConnectionProtocol`` subclass on each side that handles stream events itself (no
``StreamReader`` per stream), both at aioquic's default settings and 1200-byte datagrams
unless a workload sets another size. qh3, a fork of aioquic, keeps the same asyncio API
(``qh3.asyncio``, ``qh3.quic``), so the same code runs on it (``QH3``); only its certificate
is loaded its own documented way, from PEM (``QuicConfiguration.load_cert_chain``).

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
self-signed), so the handshakes cost the same; handshakes are outside every timed section.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import ssl
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from _inputs import identity_pem
from _peers import Body, DatagramSize, Impl

from qp2p.tls import Identity, self_signed_identity

__all__ = ("AIOQUIC", "DATAGRAM_SIZE", "QH3", "WINDOW", "Flavour", "QuicReceiver", "QuicSender")

ALPN = "e2e-bench"
DATAGRAM_SIZE = 1200
# Messages the sender may have out before the receiving application acknowledges them.
WINDOW = 16

Address = tuple[str, int]


def _set_objects(config: Any, identity: Identity) -> None:
    """aioquic takes ``cryptography`` objects as they are."""
    config.certificate, config.private_key = identity.certificate, identity.private_key


def _load_pem(config: Any, identity: Identity) -> None:
    """qh3 has its own key types: the documented way in is PEM through ``load_cert_chain``."""
    config.load_cert_chain(*identity_pem(identity))


@dataclass(frozen=True)
class Flavour:
    """A QUIC library with aioquic's asyncio API, and how its server takes a certificate."""

    package: str
    load_identity: Callable[[Any, Identity], None]

    def configuration(self, *, is_client: bool, datagram_size: DatagramSize) -> Any:
        """A ``QuicConfiguration`` at this library's defaults but the ALPN and the datagram size."""
        module = importlib.import_module(f"{self.package}.quic.configuration")
        sizes = {} if datagram_size is None else {"max_datagram_size": datagram_size}
        config = module.QuicConfiguration(is_client=is_client, alpn_protocols=[ALPN], **sizes)
        if is_client:
            config.verify_mode = ssl.CERT_NONE
        else:
            self.load_identity(config, self_signed_identity())
        return config


def _whole_body(partial_bodies: dict[int, bytearray], event: Any) -> Body | None:
    """The stream's whole body once its FIN has arrived, else None (the data is kept)."""
    if event.end_stream and event.stream_id not in partial_bodies:
        return event.data  # type: ignore[no-any-return]  # a small message arrives in one event: no copy
    body = partial_bodies.setdefault(event.stream_id, bytearray())
    body += event.data
    return partial_bodies.pop(event.stream_id) if event.end_stream else None


@functools.cache
def _protocols(package: str) -> tuple[type[Any], type[Any]]:
    """The server and client protocol classes on ``package``'s ``QuicConnectionProtocol``."""
    base = importlib.import_module(f"{package}.asyncio").QuicConnectionProtocol
    stream_data = importlib.import_module(f"{package}.quic.events").StreamDataReceived

    class ServerPeer(base):  # type: ignore[misc, valid-type]
        """Receives messages (acknowledging each) and echoes requests."""

        def __init__(self, *args: Any, on_message: Callable[[Body], None], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._on_message = on_message
            self._partial: dict[int, bytearray] = {}
            self._ack_stream: int | None = None

        def quic_event_received(self, event: Any) -> None:
            # Called while a datagram is processed; the protocol transmits right after.
            if type(event) is not stream_data:
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

    class ClientPeer(base):  # type: ignore[misc, valid-type]
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

        def quic_event_received(self, event: Any) -> None:
            if type(event) is not stream_data:
                return
            if event.stream_id & 2:  # the receiver's acknowledgements, one byte per message
                for _ in range(len(event.data)):
                    self._window.release()
                return
            body = _whole_body(self._partial, event)
            if body is not None:
                self._replies.pop(event.stream_id).set_result(body)

    return ServerPeer, ClientPeer


class QuicReceiver:
    """A server that hands every message to ``on_message`` and echoes every request."""

    def __init__(self, flavour: Flavour, datagram_size: DatagramSize) -> None:
        self._flavour = flavour
        self._datagram_size = datagram_size
        self._server: Any = None

    async def start(self, on_message: Callable[[Body], None]) -> Address:
        config = self._flavour.configuration(is_client=False, datagram_size=self._datagram_size)
        serve = importlib.import_module(f"{self._flavour.package}.asyncio").serve
        server_peer = _protocols(self._flavour.package)[0]
        self._server = await serve(
            "127.0.0.1",
            0,
            configuration=config,
            create_protocol=functools.partial(server_peer, on_message=on_message),
        )
        # The server does not tell its address; its datagram transport does.
        host, port = self._server._transport.get_extra_info("sockname")[:2]
        return host, port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


class QuicSender:
    """A client connection that sends messages and requests."""

    _peer: Any  # the ClientPeer protocol, set by connect()

    def __init__(self, flavour: Flavour, datagram_size: DatagramSize) -> None:
        self._flavour = flavour
        self._datagram_size = datagram_size
        self._exit = AsyncExitStack()

    async def connect(self, contact: Address) -> None:
        config = self._flavour.configuration(is_client=True, datagram_size=self._datagram_size)
        connect = importlib.import_module(f"{self._flavour.package}.asyncio").connect
        client_peer = _protocols(self._flavour.package)[1]
        self._peer = await self._exit.enter_async_context(
            connect(*contact, configuration=config, create_protocol=client_peer)
        )

    async def send(self, data: Body) -> None:
        await self._peer.send(data)

    async def request(self, data: Body) -> Body:
        reply: Body = await self._peer.request(data)
        return reply

    async def close(self) -> None:
        await self._exit.aclose()


def _impl(flavour: Flavour) -> Impl:
    return Impl(
        functools.partial(QuicReceiver, flavour), functools.partial(QuicSender, flavour), sized_datagrams=True
    )


AIOQUIC = _impl(Flavour("aioquic", _set_objects))
QH3 = _impl(Flavour("qh3", _load_pem))
