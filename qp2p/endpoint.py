"""``Endpoint``: one UDP socket that both accepts and opens QUIC connections, and the pool of peers.

The port peers see is the port others can reach, which is what NAT traversal and reachability
checks need. The endpoint owns the socket, one ``Connection`` per peer address, and the
queues behind ``incoming_connections()``, ``incoming_messages()`` and ``disconnections()``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from qp2p import errors, tls, wire
from qp2p._link import Link
from qp2p._mailbox import Mailbox, MailboxIterator
from qp2p.config import Config
from qp2p.connection import BytesLike, Connection, Message
from qp2p.session import ALPN, Session
from qp2p.transport import CID_LENGTH, Address, Transport, TransportStats, normalize

if TYPE_CHECKING:
    from qp2p._speedups import packet

__all__ = ("Endpoint", "EndpointStats")

log = logging.getLogger(__name__)

# Connection and disconnection events nobody reads are kept up to this many, oldest dropped.
EVENT_BACKLOG = 1024


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """A snapshot of an endpoint's counters."""

    connections: int
    routes: int
    datagrams: TransportStats
    queued_messages: int


class Endpoint:
    """A peer on the network: ``async with Endpoint(config) as ep: ...``.

    Binding happens on entry (or ``await start()``); ``close()`` releases the socket, every
    connection, timer and waiter, and ends the ``incoming_*()`` and ``disconnections()``
    iterators. Methods raise ``ClosedError`` after that.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config if config is not None else Config()
        self._identity = tls.identity_for(self.config.trust)
        self.endpoint_id = secrets.randbits(64)
        self._hello = wire.Hello(
            self.endpoint_id,
            self.config.max_message_size,
            self.config.lane_threshold,
            self.config.receive_window,
            self.config.large_message_slots,
        )
        self._client_config = self._quic_config(is_client=True)
        self._server_config = self._quic_config(is_client=False)
        self._transport: Transport | None = None
        self._pool: dict[Address, Connection] = {}
        self._messages: Mailbox[Message] = Mailbox()
        self._connections: Mailbox[Connection] = Mailbox(EVENT_BACKLOG)
        self._disconnections: Mailbox[Address] = Mailbox(EVENT_BACKLOG)
        self._state = "new"

    def _quic_config(self, is_client: bool) -> QuicConfiguration:
        config = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            connection_id_length=CID_LENGTH,
            idle_timeout=self.config.idle_timeout,
            max_datagram_size=self.config.max_datagram_size,
            server_name=tls.SERVER_NAME if is_client else None,
            verify_mode=ssl.CERT_NONE,
        )
        config.certificate = self._identity.certificate
        config.private_key = self._identity.private_key
        return config

    def __del__(self) -> None:
        if self._state == "open":
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)

    def __repr__(self) -> str:
        where = ""
        if self._state == "open" and self._transport is not None:
            host, port = self._transport.local_addr
            where = f" {host}:{port}"
        return f"<Endpoint{where} {self._state}>"

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket; ``ConnectionError`` if the address cannot be bound."""
        if self._state == "closed":
            raise errors.ClosedError("the endpoint was closed")
        if self._state == "open":
            return
        loop = asyncio.get_running_loop()
        try:
            _, transport = await loop.create_datagram_endpoint(
                lambda: Transport(self._accept),
                local_addr=(self.config.local_ip, self.config.local_port),
            )
        except OSError as exc:
            raise errors.ConnectionError(
                f"cannot bind {self.config.local_ip}:{self.config.local_port}: {exc}"
            ) from exc
        self._size_buffers(transport)
        self._transport = transport
        self._state = "open"

    def _size_buffers(self, transport: Transport) -> None:
        """Ask for large socket buffers: bursts of handshakes or data otherwise overflow the
        default (about 200 KiB on Linux) and cost retransmissions. The kernel may grant less."""
        size = self.config.socket_buffer_size
        sock = transport.socket
        if size and sock is not None:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, size)
                except OSError as exc:
                    log.debug("cannot set socket buffer size: %s", exc)

    async def close(self) -> None:
        """Close every connection and the socket; idempotent.

        Like ``Connection.close`` it first waits, at most ``close_timeout`` seconds in all, for
        peers to acknowledge what was already sent; then each peer gets a CONNECTION_CLOSE.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        connections = list(self._pool.values())
        self._pool.clear()
        error = errors.ClosedError("the endpoint was closed")
        try:
            await asyncio.gather(*(connection._shutdown(error) for connection in connections))
        finally:
            for connection in connections:
                connection._abort(error)
            self._messages.close()
            self._connections.close()
            self._disconnections.close()
            if self._transport is not None:
                self._transport.close()
                await asyncio.shield(self._transport.closed)

    async def __aenter__(self) -> Endpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _check_open(self) -> Transport:
        if self._state != "open" or self._transport is None:
            raise errors.ClosedError(
                f"the endpoint is {'closed' if self._state == 'closed' else 'not started'}"
            )
        return self._transport

    # ---- addresses -------------------------------------------------------------------------

    @property
    def local_addr(self) -> Address:
        """The address the socket is bound to."""
        return self._check_open().local_addr

    @property
    def public_addr(self) -> Address:
        """The address peers reach us at."""
        return self.local_addr

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint (hex) of our certificate."""
        return self._identity.fingerprint

    def stats(self) -> EndpointStats:
        transport = self._check_open()
        return EndpointStats(len(self._pool), transport.routes, transport.stats, len(self._messages))

    async def _resolve(self, addr: tuple[str, int]) -> Address:
        host, port = addr
        try:
            ipaddress.ip_address(host.partition("%")[0])
            return normalize((host, port))
        except ValueError:
            pass
        family = socket.AF_INET6 if ":" in self.config.local_ip else socket.AF_INET
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=family, type=socket.SOCK_DGRAM
            )
        except OSError as exc:
            raise errors.ConnectionError(f"cannot resolve {host}: {exc}") from exc
        return normalize(infos[0][4])

    # ---- connections -----------------------------------------------------------------------

    def _new_session(self, quic: QuicConnection) -> Session:
        return Session(quic, self._hello, self.config.lanes)

    def _pooled(self, addr: Address) -> Connection:
        connection = self._pool.get(addr)
        if connection is None or connection.is_closed:
            connection = self._pool[addr] = Connection(self, addr)
        return connection

    def _accept(self, header: packet.PacketHeader, addr: Address) -> Link | None:
        """A new Initial from ``addr``: a server-side QUIC connection for it."""
        if self._state != "open" or self._transport is None:
            return None
        quic = QuicConnection(
            configuration=self._server_config, original_destination_connection_id=header.destination_cid
        )
        connection = self._pooled(addr)
        link = Link(
            self._new_session(quic), self._transport, addr, connection, self.config.keep_alive_interval
        )
        link.add_cid(header.destination_cid)  # the client keeps using it until it learns ours
        connection._add_link(link)
        return link

    def _dial(self, connection: Connection, transport: Transport) -> None:
        quic = QuicConnection(configuration=self._client_config)
        link = Link(
            self._new_session(quic),
            transport,
            connection.remote_addr,
            connection,
            self.config.keep_alive_interval,
        )
        connection._add_link(link)
        link.session.connect(connection.remote_addr, asyncio.get_running_loop().time())
        link.transmit()

    async def connect_to(self, addr: tuple[str, int]) -> Connection:
        """The connection to ``addr``: the pooled one (whoever opened it), else a new one.

        Concurrent calls for one peer share one handshake. Raises ``ConnectionError`` when no
        connection is established within ``config.connect_timeout`` seconds.
        """
        transport = self._check_open()
        peer = await self._resolve(addr)
        connection = self._pool.get(peer)
        if connection is None or connection.is_closed:
            connection = self._pooled(peer)
            self._dial(connection, transport)
        timeout = self.config.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                await connection.wait_ready()
        except TimeoutError:
            error = errors.ConnectionError(f"no connection to {peer[0]}:{peer[1]} within {timeout} s")
            if not connection._ready.done():
                connection._abort(error)
            raise error from None
        return connection

    async def send_message(self, data: BytesLike, addr: tuple[str, int]) -> None:
        """Send one message to ``addr``, connecting first if needed."""
        connection = await self.connect_to(addr)
        await connection.send(data)

    async def disconnect_from(self, addr: tuple[str, int]) -> None:
        """Close the connection to ``addr``, if there is one."""
        connection = self._pool.get(await self._resolve(addr))
        if connection is not None:
            await connection.close()

    def connections(self) -> list[Connection]:
        """The connections in the pool now."""
        return [connection for connection in self._pool.values() if not connection.is_closed]

    # ---- events ----------------------------------------------------------------------------

    def incoming_connections(self) -> AsyncIterator[Connection]:
        """Connections peers opened to us, once established; ends when the endpoint closes."""
        return MailboxIterator(self._connections)

    def incoming_messages(self) -> AsyncIterator[Message]:
        """Messages and requests from every peer. Taking one gives its sender credit back, so
        a reader that stops reading slows its peers down instead of filling memory."""
        return MailboxIterator(self._messages, Message._consumed)

    def disconnections(self) -> AsyncIterator[Address]:
        """Addresses of peers whose connection ended (by either side); ends when the endpoint closes."""
        return MailboxIterator(self._disconnections)

    def _connection_ready(self, connection: Connection, dialled: bool) -> None:
        if not dialled:
            self._connections.put(connection)

    def _connection_closed(self, connection: Connection, announced: bool) -> None:
        if self._pool.get(connection.remote_addr) is connection:
            del self._pool[connection.remote_addr]
        if announced and self._state == "open":
            self._disconnections.put(connection.remote_addr)

    def _message_received(self, message: Message) -> None:
        self._messages.put(message)

    def _control_received(self, connection: Connection, link: Link, message: wire.ControlMessage) -> None:
        log.debug("ignored control message %r from %s", message, connection.remote_addr)
