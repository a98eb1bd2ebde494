"""``Endpoint``: one UDP socket that both accepts and opens QUIC connections, and the pool of peers.

The port peers see is the port others can reach, which is what NAT traversal and reachability
checks need. The endpoint owns the socket, one ``Connection`` per peer address, and the
queues behind ``incoming_connections()``, ``incoming_messages()`` and ``disconnections()``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aioquic.quic.configuration import QuicConfiguration

from qp2p import errors, tls, wire
from qp2p._aioquic_hooks import CheckedQuicConnection, limit_streams
from qp2p._joining import Membership
from qp2p._link import Link, Refusal
from qp2p._mailbox import Mailbox, MailboxIterator
from qp2p._speedups import retry as retry_tokens
from qp2p.config import Config, Role
from qp2p.connection import BytesLike, Connection, Message
from qp2p.nat.igd import PortMapping
from qp2p.nat.traversal import RelayPath, Traversal
from qp2p.session import ALPN, Closing, Session
from qp2p.transport import CID_LENGTH, Address, PacketPath, Receiver, Transport, TransportStats, normalize

if TYPE_CHECKING:
    from qp2p._speedups import packet

__all__ = ("Endpoint", "EndpointStats")

log = logging.getLogger(__name__)

LinkPath = Literal["direct", "punched", "relayed"]
# Connection and disconnection events nobody reads are kept up to this many, oldest dropped.
EVENT_BACKLOG = 1024


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """A snapshot of an endpoint's counters."""

    connections: int
    routes: int
    datagrams: TransportStats
    queued_messages: int
    failed_handshakes: int  # connections that ended before being established (refused certificates, ...)
    refused_connections: int  # dials refused because ``max_connections`` was reached


class Endpoint:
    """A peer on the network: ``async with Endpoint(config) as ep: ...``.

    Binding happens on entry (or ``await start()``); ``close()`` releases the socket, every
    connection, timer and waiter, and ends the ``incoming_*()`` and ``disconnections()``
    iterators. Methods raise ``ClosedError`` after that.
    """

    def __init__(self, config: Config | None = None, *, _identity: tls.Identity | None = None) -> None:
        self._state = "new"  # first: __del__ reads it even if the rest fails
        self.config = config if config is not None else Config()
        self._identity = _identity or tls.identity_for(self.config.trust)
        self.endpoint_id = secrets.randbits(64)
        self._hello = wire.Hello(
            self.endpoint_id,
            self.config.max_message_size,
            self.config.lane_threshold,
            self.config.receive_window,
            self.config.large_message_slots,
            self.config.role is Role.NODE,
        )
        self._membership = Membership(self)
        self._traversal = Traversal(self)
        self._mapping: PortMapping | None = None
        self._mapping_task: asyncio.Task[Address | None] | None = None
        self._expected: dict[int, Connection] = {}  # endpoint id -> the connection it belongs to
        self._client_config = self._quic_config(is_client=True)
        self._server_config = self._quic_config(is_client=False)
        self._peer_check = tls.peer_check(self.config.trust)
        self._links: set[Link] = set()  # every QUIC connection until it is over, closing ones too
        self._failed_handshakes = 0
        self._refused_connections = 0
        self._transport: Transport | None = None
        self._pool: dict[Address, Connection] = {}
        self._messages: Mailbox[Message] = Mailbox()
        self._connections: Mailbox[Connection] = Mailbox(EVENT_BACKLOG)
        self._disconnections: Mailbox[Address] = Mailbox(EVENT_BACKLOG)

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
        config.certificate_chain = self._identity.chain
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
            retry = retry_tokens.RetryTokens(os.urandom(32)) if self.config.stateless_retry else None
            _, transport = await loop.create_datagram_endpoint(
                lambda: Transport(self._accept, retry),
                local_addr=(self.config.local_ip, self.config.local_port),
            )
        except OSError as exc:
            raise errors.ConnectionError(
                f"cannot bind {self.config.local_ip}:{self.config.local_port}: {exc}"
            ) from exc
        self._size_buffers(transport)
        self._transport = transport
        self._state = "open"
        if self.config.forward_port:  # in the background: discovery takes seconds
            self._mapping = PortMapping(transport.local_addr, self.config.upnp_lease_duration)
            self._mapping_task = asyncio.create_task(self._mapping.start())

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
            await self._membership.close()
            await self._traversal.close()
            if self._mapping_task is not None:
                self._mapping_task.cancel()
                await asyncio.gather(self._mapping_task, return_exceptions=True)
            if self._mapping is not None:
                await self._mapping.close()
            await asyncio.gather(*(connection._shutdown(error) for connection in connections))
        finally:
            for connection in connections:
                connection._abort(error)
            for link in list(self._links):  # still in their closing or draining period
                link.abort()
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
        """The address peers reach us at: ``external_ip``/``external_port`` where configured,
        else the gateway's mapping (``forward_port``), else what the node we bootstrapped
        through saw, else the bound address."""
        local = self.local_addr
        mapped = self._mapping.external if self._mapping is not None else None
        echoed = mapped or self._membership.echoed or local
        host = self.config.external_ip or echoed[0]
        port = self.config.external_port or (echoed[1] if self.config.external_ip is None else local[1])
        return host, port

    @property
    def role(self) -> Role:
        """NODE or CLIENT; a node that could not be reached may have fallen back to CLIENT."""
        return self._membership.role

    async def bootstrap(self) -> Connection:
        """Join the network: the first of the hard-coded contacts and cached nodes to answer.

        Contacts come first, then cached nodes by quality; ``bootstrap_concurrency`` are tried at
        once and the rest cancelled when one answers. A node then learns its public address,
        has the contact check that it can reach us there (``ReachabilityError`` if not, unless
        ``client_fallback``), and learns of other nodes, which enter the cache as they answer.
        Raises ``BootstrapError``, naming what each attempt got, when none answers in time.
        """
        self._check_open()
        if self._mapping_task is not None:
            await self._mapping_task  # our public address may come from the gateway
        return await self._membership.bootstrap()

    async def wait_port_mapped(self) -> Address | None:
        """With ``forward_port``: until the gateway mapped our port (its public address) or
        could not (None, and the endpoint carries on without)."""
        return await self._mapping_task if self._mapping_task is not None else None

    async def is_reachable(self, addr: tuple[str, int]) -> bool:
        """Whether a connection to ``addr`` can be made from a fresh socket (a new port, so no
        NAT mapping ``addr`` opened towards us helps), within ``connect_timeout``."""
        self._check_open()
        return await self._probe(await self._resolve(addr), self.config.connect_timeout) is not None

    async def _probe(self, addr: Address, timeout: float) -> str | None:
        """Dial ``addr`` from a throwaway endpoint with our identity, for at most ``timeout``
        seconds; the peer's fingerprint, or None if no connection could be made."""
        config = self.config.replace(
            local_port=0,
            role=Role.CLIENT,
            keep_alive_interval=None,
            close_timeout=0.5,
            connect_timeout=min(timeout, self.config.connect_timeout),
        )
        async with Endpoint(config, _identity=self._identity) as probe:
            try:
                connection = await probe.connect_to(addr)
            except errors.Error as exc:
                log.info("%s:%d is not reachable: %s", addr[0], addr[1], exc)
                return None
            return connection.fingerprint

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint (hex) of our certificate."""
        return self._identity.fingerprint

    def stats(self) -> EndpointStats:
        transport = self._check_open()
        return EndpointStats(
            connections=len(self._pool),
            routes=transport.routes,
            datagrams=transport.stats,
            queued_messages=len(self._messages),
            failed_handshakes=self._failed_handshakes,
            refused_connections=self._refused_connections,
        )

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

    def _new_link(
        self, connection: Connection, transport: PacketPath, path: LinkPath = "direct", **quic_args: Any
    ) -> Link:
        quic = CheckedQuicConnection(peer_check=self._peer_check, **quic_args)
        # Peers open unidirectional streams only: lanes and large messages, within a bound.
        limit_streams(quic, unidirectional=self.config.max_incoming_streams, bidirectional=0)
        session = Session(quic, self._hello, self.config.lanes)
        link = Link(
            session,
            transport,
            connection.remote_addr,
            connection,
            self.config.keep_alive_interval,
            self._link_forgotten,
            path,
        )
        connection._add_link(link)
        self._links.add(link)
        return link

    def _link_forgotten(self, link: Link) -> None:
        self._links.discard(link)
        if isinstance(link.packet_path, RelayPath):
            self._traversal.relayed_link_gone(link.packet_path)

    def _link_closed(self, link: Link) -> None:
        self._traversal.link_closed(link)

    def _relayed_link(
        self, connection: Connection, path: RelayPath, client: bool, original_dcid: bytes | None = None
    ) -> Link:
        """The end-to-end QUIC connection inside a relay circuit, with its full handshake."""
        if client:
            link = self._new_link(connection, path, "relayed", configuration=self._client_config)
            link.session.connect(path.peer, asyncio.get_running_loop().time())
            link.transmit()
        else:
            link = self._new_link(
                connection,
                path,
                "relayed",
                configuration=self._server_config,
                original_destination_connection_id=original_dcid,
            )
        return link

    def _expect(self, endpoint_id: int, connection: Connection) -> None:
        """A connection from the endpoint ``endpoint_id``, from whatever address, belongs to
        ``connection``: set up before a punch or a relayed connection."""
        self._expected[endpoint_id] = connection

    def _adopter(self, connection: Connection, link: Link) -> Connection | None:
        """The connection an established ``link`` belongs to, if not the one it was made for."""
        peer = link.session.peer
        expected = self._expected.get(peer.endpoint_id) if peer is not None else None
        if expected is None or expected is connection or expected.is_closed:
            return None
        return expected

    def _forget_handle(self, connection: Connection) -> None:
        """A connection left empty after its only link was adopted elsewhere: no events."""
        if self._pool.get(connection.remote_addr) is connection:
            del self._pool[connection.remote_addr]

    def _pooled(self, addr: Address) -> Connection:
        connection = self._pool.get(addr)
        if connection is None or connection.is_closed:
            connection = self._pool[addr] = Connection(self, addr)
        return connection

    def _accept(
        self, header: packet.PacketHeader, addr: Address, original_dcid: bytes, retry_scid: bytes | None
    ) -> Receiver | None:
        """A new Initial from ``addr`` (its address validated by a retry token when retries are
        on): a server-side QUIC connection for it, or a refusal when we have too many."""
        if self._state != "open" or self._transport is None:
            return None
        if sum(not link.closed for link in self._links) >= self.config.max_connections:
            self._refused_connections += 1
            return Refusal(self._server_config, self._transport, original_dcid, retry_scid)
        link = self._new_link(
            self._pooled(addr),
            self._transport,
            configuration=self._server_config,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        link.add_cid(header.destination_cid)  # the client uses it until it learns ours
        return link

    def _dial(
        self,
        connection: Connection,
        transport: Transport,
        addr: Address | None = None,
        path: LinkPath = "direct",
    ) -> None:
        link = self._new_link(connection, transport, path, configuration=self._client_config)
        link.session.connect(addr or connection.remote_addr, asyncio.get_running_loop().time())
        link.transmit()

    async def connect_to(self, addr: tuple[str, int], via: tuple[str, int] | None = None) -> Connection:
        """The connection to ``addr``: the pooled one (whoever opened it), else a new one.

        Concurrent calls for one peer share one handshake. With ``via`` (a node both peers are
        connected to; by default the node we bootstrapped through) a peer behind a NAT is
        reached too: directly if it answers, else through a hole punched in both NATs, else
        relayed by ``via`` (``conn.path`` says which; a relayed connection moves to a punched
        path when a later attempt succeeds). Raises ``ConnectionError`` when no connection is
        established, within ``config.connect_timeout`` seconds when there is no ``via``.
        """
        transport = self._check_open()
        peer = await self._resolve(addr)
        existing = self._pool.get(peer)
        relay = via or self._membership.contact
        if relay is not None and (existing is None or not existing._ready.done()):
            relay = await self._resolve(relay)
            if relay != peer:
                return await self._traversal.connect(peer, relay)
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

    def _handshake_failed(self, connection: Connection, event: Closing) -> None:
        self._failed_handshakes += 1
        host, port = connection.remote_addr
        log.info("no connection with %s:%d: %s (error %#x)", host, port, event.reason, event.error_code)

    def _connection_ready(self, connection: Connection, link: Link, seconds: float) -> None:
        dialled = link.session.is_client
        if not dialled:
            self._connections.put(connection)
        self._membership.connected(connection, link, dialled, seconds)

    def _connection_closed(self, connection: Connection, announced: bool) -> None:
        if self._pool.get(connection.remote_addr) is connection:
            del self._pool[connection.remote_addr]
        if announced and self._state == "open":
            self._disconnections.put(connection.remote_addr)

    def _message_received(self, message: Message) -> None:
        self._messages.put(message)

    def _control_received(self, connection: Connection, link: Link, message: wire.ControlMessage) -> None:
        if not self._traversal.control(connection, link, message):
            self._membership.control(connection, link, message)

    def _abandon_dial(self, addr: Address) -> None:
        """Nobody waits for this dial any more: close it unless it already connected."""
        connection = self._pool.get(addr)
        if connection is not None and not connection._ready.done():
            connection._abort(errors.ClosedError("the dial was abandoned"))
