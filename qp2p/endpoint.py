"""``Endpoint``: one UDP socket that both accepts and opens QUIC connections, and the pool of peers.

The port peers see is the port others can reach, which is what NAT traversal and reachability
checks need. The endpoint owns the socket, every QUIC connection (a *link*), one ``Connection``
per peer id (the fingerprint of the certificate TLS proved), and the queues behind
``incoming_connections()``, ``incoming_messages()`` and ``disconnections()``.

Events flow up: a link reports to the endpoint until its handshake and the peer's Hello are
done, then to the ``Connection`` of the peer it proved; connections report to the endpoint.
The NAT traversal and membership rules are sans-IO deciders (``Traversal``, ``Membership``):
the endpoint feeds them what each link proved and observed, and carries out their actions.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
import ssl
import time
import typing
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import platformdirs
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import QuicErrorCode

from qp2p import errors, tls, wire
from qp2p._aioquic_hooks import CheckedQuicConnection, end_qlog_trace, limit_streams, smoothed_rtt
from qp2p._decisions import Peer, Send
from qp2p._half_open import HalfOpen
from qp2p._joining import Joining
from qp2p._link import Link, LinkPath, Refusal, RelayPath
from qp2p._mailbox import Mailbox, MailboxIterator
from qp2p._memory import MemoryBudget, MemoryStats, address_key
from qp2p._mtu import forbid_fragmentation, route_payload
from qp2p._peer_log import peer_log
from qp2p._pmtud import BASE_SIZE
from qp2p._qlog import TraceFolder
from qp2p._scheduler import Alarm, Scheduler
from qp2p._side_sockets import SideSockets
from qp2p._speedups import packet
from qp2p._speedups import retry as retry_tokens
from qp2p._tasks import BackgroundTasks
from qp2p._tickets import HELD_PER_ADDRESS, LinkTickets, TicketStore
from qp2p.bootstrap_cache import BootstrapCache
from qp2p.config import Config, Role
from qp2p.connection import BytesLike, Connection, Message, Traffic, message_taken
from qp2p.membership import Membership, Probe
from qp2p.nat import traversal as t
from qp2p.nat.behaviour import Mapping, NatBehaviour, observe
from qp2p.nat.igd import PortMapping
from qp2p.session import ALPN, CLOSE_NO_MEMORY, Closing, FrameReceived, Session, endpoint_id_of, link_memory
from qp2p.transport import CID_LENGTH, Address, PacketPath, Receiver, Transport, TransportStats, normalize

if TYPE_CHECKING:
    from qp2p._aioquic_hooks import PeerCheck

__all__ = ("Endpoint", "EndpointStats")

log = logging.getLogger(__name__)

# Connection and disconnection events nobody reads are kept up to this many, oldest dropped.
EVENT_BACKLOG = 1024
# Probes of a birthday punch go out this many at a time, paced to ``PROBE_RATE`` between.
PROBE_BATCH = 4
# QUIC carries a TLS alert as this plus the alert's number (RFC 9001 section 4.8).
CRYPTO_ERROR = 0x100
# Why a handshake failed, as ``EndpointStats.handshakes_failed`` counts it: a certificate refused
# (by either side), another TLS failure, our deadline for it passed (or connect_to's), the peer
# refused the connection (too many, or no memory), the peer or the network ended it, or we gave
# it up (a dial whose callers were cancelled, a punch over, the endpoint closing).
HANDSHAKE_FAILURES = ("certificate", "tls", "timeout", "refused", "closed_by_peer", "closed")
# The reason our CONNECTION_CLOSE gives when a handshake took longer than it may.
HANDSHAKE_TIMEOUT = "handshake timeout"
# What a refused dial's CONNECTION_CLOSE says, by the reason ``EndpointStats.refusals`` counts.
REFUSED_BECAUSE = {
    "max_connections": "too many connections",
    "half_open": "too many handshakes under way",
    "half_open_per_address": "too many handshakes from this address",
}


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """A snapshot of an endpoint's counters and gauges (docs/observability.md).

    A counter is a total since the endpoint was made: it only grows. A gauge is a value now.
    Label-like keys (paths, reasons) come from fixed sets, never from peers.
    """

    connections: int  # gauge: connections in the pool
    routes: int  # gauge: connection ids that route to a link
    datagrams: TransportStats  # counters: datagrams on our socket, by fate
    queued_messages: int  # gauge: messages received that the application has not taken
    failed_handshakes: int  # counter: links that ended before being established (all reasons)
    refused_connections: int  # counter: dials refused because ``max_connections`` was reached
    links: int = 0  # gauge: QUIC connections alive, established or not
    punches: int = 0  # gauge: hole punches under way
    relay_circuits: int = 0  # gauge: circuits we relay for others
    half_open: int = 0  # gauge: handshakes peers started that are not done (``max_half_open``)
    refusals: dict[str, int] = field(default_factory=dict)  # counters: requests and dials declined, by reason
    memory: MemoryStats | None = None  # gauges: what peers make us hold, by scope (its refusals: counters)
    tickets_issued: int = 0  # gauge: session tickets we issued that peers may resume with
    tickets_held: int = 0  # gauge: session tickets peers issued us, to resume with when we dial them
    keep_alives: int = 0  # counter: PINGs sent on links idle for a whole keep_alive_interval
    deadlines: int = 0  # gauge: link deadlines (QUIC timers, keep-alives, handshakes) behind the one timer
    side_sockets: int = 0  # gauge: sockets besides our own, opened to punch (docs/nat.md)
    # gauge: connections by how their packets travel now, every path of ``LinkPath`` a key
    connections_by_path: dict[str, int] = field(default_factory=dict)
    handshakes_ok: int = 0  # counter: links established (handshake done, the peer's Hello in)
    # counters: links that ended before being established, every reason of ``HANDSHAKE_FAILURES`` a key
    handshakes_failed: dict[str, int] = field(default_factory=dict)
    messages_sent: int = 0  # counter: messages, requests and replies queued to QUIC
    bytes_sent: int = 0  # counter: their payload bytes
    messages_received: int = 0  # counter: messages, requests and replies received
    bytes_received: int = 0  # counter: their payload bytes
    punches_started: int = 0  # counter: hole punches of ours begun, asked for or not
    punches_succeeded: int = 0  # counter: ... that brought a direct link to the peer
    punches_failed: int = 0  # counter: ... given up
    relay_circuits_opened: int = 0  # counter: circuits we relayed for others
    relayed_bytes: int = 0  # counter: datagram bytes we carried on them, both ways
    bootstrap_cache_size: int = 0  # gauge: nodes in the bootstrap cache
    lost_nodes: int = 0  # gauge: nodes whose connection was lost, still redialled (min_connections)
    upkeep_dials: int = 0  # counter: dials made to stay joined: redials, top-ups, cache checks


@dataclass(eq=False, slots=True)
class _Dial:
    """Links we opened towards one address, and who waits for the connection they bring."""

    addr: Address
    peer_id: str | None
    result: asyncio.Future[Connection]
    started: float
    links: set[Link] = field(default_factory=set)
    waiters: int = 0


class _Router:
    """The endpoint's side of links not yet established (``LinkOwner``). The session holds a
    peer's frames until its Hello, so only the two ends of a handshake reach here."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def link_established(self, link: Link) -> None:
        self._endpoint._link_established(link)

    def frames_received(self, link: Link, frames: list[FrameReceived]) -> None:
        raise AssertionError("the session delivers no frame before the link is established")

    def control_received(self, link: Link, message: wire.ControlMessage) -> None:
        raise AssertionError("the session delivers no control message before the link is established")

    def link_closed(self, link: Link, event: Closing) -> None:
        self._endpoint._handshake_ended(link, event)


class _ConnectionEvents:
    """What connections report, routed to the endpoint (``ConnectionEvents``)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def messages_received(self, messages: list[Message]) -> None:
        self._endpoint._messages.put_many(messages)

    def control_received(self, connection: Connection, link: Link, message: wire.ControlMessage) -> None:
        self._endpoint._control(connection, link, message)

    def link_closed(self, link: Link) -> None:
        self._endpoint._connection_link_closed(link)

    def connection_closed(self, connection: Connection) -> None:
        self._endpoint._connection_closed(connection)


class Endpoint:
    """A peer on the network: ``async with Endpoint(config) as ep: ...``.

    Binding happens on entry (or ``await start()``); ``close()`` releases the socket, every
    connection, timer and waiter, and ends the ``incoming_*()`` and ``disconnections()``
    iterators. Methods raise ``ClosedError`` after that.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        _identity: tls.Identity | None = None,
        _qlog: TraceFolder | None = None,
    ) -> None:
        self._state = "new"  # first: __del__ reads it even if the rest fails
        self.config = config if config is not None else Config()
        self._identity = _identity or tls.identity_for(self.config.trust)
        self.peer_id = self._identity.fingerprint
        self._hello = wire.Hello(
            endpoint_id_of(self.peer_id),
            self.config.max_message_size,
            self.config.lane_threshold,
            self.config.receive_window,
            self.config.large_message_slots,
            self.config.role is Role.NODE,
        )
        self._membership = Membership(self.config)
        self._memory = MemoryBudget(*self.config.memory_limits())
        folder = self.config.bootstrap_cache_dir or platformdirs.user_cache_dir("qp2p")
        self._joining = Joining(self, self._membership, folder, self._become_client, self._nat_seen)
        self._traversal = t.Traversal(_traversal_limits(self.config))
        self._nat_discovered: asyncio.Future[None] | None = None  # set once bootstrap learned our NAT
        self.punch_attempts = 0  # punch attempts the last connect_to(via=) made
        self._mapping: PortMapping | None = None
        self._mapping_task: asyncio.Task[Address | None] | None = None
        # One qlog file per QUIC connection, within bounds; a probe's throwaway endpoint shares ours.
        traces = self.config.qlog_dir
        if _qlog is None and traces is not None:
            _qlog = TraceFolder(traces, self.config.qlog_memory_limit, self.config.qlog_disk_limit)
        self._qlog = _qlog
        self._client_config = self._quic_config(is_client=True)
        self._server_config = self._quic_config(is_client=False)
        self._peer_check = tls.peer_check(self.config.trust)
        # Tickets live and die with this endpoint: a new one (a restart) resumes nothing.
        self._tickets_issued = TicketStore(
            self.config.max_session_tickets, self.config.session_tickets_per_address
        )
        self._tickets_held = TicketStore(self.config.max_session_tickets, HELD_PER_ADDRESS)
        self._router = _Router(self)
        self._events = _ConnectionEvents(self)
        self._links: set[Link] = set()  # every QUIC connection until it is over, closing ones too
        self._open_links: set[Link] = set()  # those not reported closing: max_connections counts them
        self._scheduler: Scheduler | None = None  # every link's deadlines and transmits, once started
        self._pending: dict[Link, Alarm] = {}  # links not established yet, and their handshake deadline
        self._keep_alives = 0  # keep-alives of the links forgotten
        self._half_open: HalfOpen[Link] = HalfOpen(self.config.max_half_open_per_address)
        self._dial_refusals: Counter[str] = Counter()  # handshakes peers started that we refused
        threshold = self.config.retry_threshold
        self._retry_threshold = self.config.max_half_open // 2 if threshold is None else threshold
        self._link_dials: dict[Link, _Dial] = {}
        self._dials: dict[Address, _Dial] = {}  # dials by address, shared by concurrent callers
        self._arrivals: dict[str, list[asyncio.Future[None]]] = {}  # who waits for a direct link to a peer
        self._relay_paths: dict[tuple[Link, int], RelayPath] = {}
        self._relay_sweep: asyncio.TimerHandle | None = None  # closes idle circuits we relay
        self._tasks = BackgroundTasks(log, "background work failed")
        self._failed_handshakes = 0
        self._handshakes_ok = 0
        self._handshake_failures = dict.fromkeys(HANDSHAKE_FAILURES, 0)
        self._closed_traffic = Traffic()  # what connections no longer in the pool carried
        self._refused_connections = 0
        self._transport: Transport | None = None
        self._side = SideSockets(self.config.local_ip)
        self._unfragmented = False  # the socket sets don't-fragment: path MTU probes mean something
        self._peers: dict[str, Connection] = {}
        self._messages: Mailbox[Message] = Mailbox()
        self._connections: Mailbox[Connection] = Mailbox(EVENT_BACKLOG)
        self._disconnections: Mailbox[Address] = Mailbox(EVENT_BACKLOG)

    def _quic_config(self, is_client: bool) -> QuicConfiguration:
        config = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            connection_id_length=CID_LENGTH,
            idle_timeout=self.config.idle_timeout,
            max_datagram_size=BASE_SIZE,  # path MTU discovery raises it per connection
            quic_logger=self._qlog,
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
            retry = retry_tokens.RetryTokens(os.urandom(32))
            _, transport = await loop.create_datagram_endpoint(
                lambda: Transport(self._accept, retry, self._retry_required),
                local_addr=(self.config.local_ip, self.config.local_port),
            )
        except OSError as exc:
            raise errors.ConnectionError(
                f"cannot bind {self.config.local_ip}:{self.config.local_port}: {exc}"
            ) from exc
        self._size_buffers(transport)
        sock = transport.socket
        self._unfragmented = sock is not None and forbid_fragmentation(sock)
        self._transport = transport
        self._scheduler = Scheduler(loop)
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
        connections = list(self._peers.values())
        self._peers.clear()
        error = errors.ClosedError("the endpoint was closed")
        try:
            await self._joining.close()
            await self._tasks.close()
            if self._mapping_task is not None:
                self._mapping_task.cancel()
                await asyncio.gather(self._mapping_task, return_exceptions=True)
            if self._mapping is not None:
                await self._mapping.close()
            await asyncio.gather(*(connection.shutdown(error) for connection in connections))
        finally:
            for connection in connections:
                connection.abort(error)
            for dial in list(self._dials.values()):
                self._fail_dial(dial, error)
            if self._relay_sweep is not None:
                self._relay_sweep.cancel()
            for path in list(self._relay_paths.values()):
                self._close_relay_path(path, tell_relay=False)
            for link in list(self._links):  # pending, or in their closing or draining period
                link.abort()
            if self._nat_discovered is not None and not self._nat_discovered.done():
                # Joining's discovery may have been cancelled before it ran: nothing more to learn.
                self._nat_discovered.set_result(None)
            self._messages.close()
            self._connections.close()
            self._disconnections.close()
            if self._scheduler is not None:
                self._scheduler.close()
            self._side.close()
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

    @property
    def _serves_relay(self) -> bool:
        """Whether we relay circuits for others: ``config.relay_service``, else only as a node
        (a client, or a node fallen back to client, relays for nobody)."""
        service = self.config.relay_service
        return self.role is Role.NODE if service is None else service

    @property
    def bootstrap_cache(self) -> BootstrapCache:
        """The nodes this endpoint found reachable (read and written once ``bootstrap()`` ran)."""
        return self._membership.cache

    @property
    def fingerprint(self) -> str:
        """The same as ``peer_id``: SHA-256 fingerprint (hex) of our certificate."""
        return self.peer_id

    async def bootstrap(self) -> Connection:
        """Join the network: the first of the hard-coded contacts and cached nodes to answer.

        Contacts come first, then cached nodes by quality, each dialled 0.25 s after the one
        before (at once when it failed), ``bootstrap_concurrency`` at most under way, the rest
        cancelled when one answers. A node then learns its public address,
        has the contact check that it can reach us there (``ReachabilityError`` if not, unless
        ``client_fallback``), and learns of other nodes, which enter the cache as they answer.
        Raises ``BootstrapError``, naming what each attempt got, when none answers in time.
        """
        self._check_open()
        if self._mapping_task is not None:
            await self._mapping_task  # our public address may come from the gateway
        if self._nat_discovered is None or self._nat_discovered.done():
            self._nat_discovered = asyncio.get_running_loop().create_future()
        try:
            return await self._joining.bootstrap()
        except BaseException:
            if not self._nat_discovered.done():  # closing the endpoint may have ended the wait
                self._nat_discovered.set_result(None)  # nobody to learn it from
            raise

    def _become_client(self) -> None:
        self._membership.become_client()
        self._hello = replace(self._hello, node=False)

    @property
    def nat(self) -> NatBehaviour:
        """What we learned of our NAT while joining (docs/nat.md): how it maps our port, and
        whether anyone reaches us unsolicited. Unknown before ``bootstrap()``."""
        return self._traversal.behaviour

    async def wait_nat_discovered(self) -> NatBehaviour:
        """Once ``bootstrap()`` ran: until the second node we were told of echoed our address
        (or none could, or the endpoint closed), then ``nat``. Before ``bootstrap()``, ``nat``
        at once."""
        if self._nat_discovered is not None:
            await asyncio.shield(self._nat_discovered)
        return self.nat

    def _nat_seen(self, echoes: list[Address], final: bool) -> None:
        """Joining got the echoes of our address so far: what they tell of our NAT is ours, and
        our contact (the default coordinator) is told, so it can choose how to punch us."""
        if self._state == "open":
            mapped = self._mapping is not None and self._mapping.external is not None
            behaviour = observe(self.local_addr, echoes, self._membership.role is Role.NODE or mapped)
            self._traversal.behaviour = behaviour
            for connection in self.connections():
                self._report_nat(connection)
        if final:
            if self._nat_discovered is None:
                self._nat_discovered = asyncio.get_running_loop().create_future()
            if not self._nat_discovered.done():
                self._nat_discovered.set_result(None)

    def _report_nat(self, connection: Connection) -> None:
        """Tell ``connection``'s peer our NAT's behaviour if it is a node (it may coordinate a
        punch towards us) and we know something of it."""
        link = connection.current_link
        hello = link.session.peer if link is not None else None
        behaviour = self._traversal.behaviour
        if hello is not None and hello.node and behaviour != NatBehaviour():
            connection.send_control(wire.NatReport(behaviour.flags()))

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
        seconds; the peer's id, or None if no connection could be made."""
        config = self.config.replace(
            local_port=0,
            role=Role.CLIENT,
            keep_alive_interval=None,
            close_timeout=0.5,
            connect_timeout=min(timeout, self.config.connect_timeout),
        )
        async with Endpoint(config, _identity=self._identity, _qlog=self._qlog) as probe:
            try:
                connection = await probe.connect_to(addr)
            except errors.Error as exc:
                peer_log(log, None, addr).info("not reachable from a fresh socket: %r", exc)
                return None
            return connection.peer_id

    def stats(self) -> EndpointStats:
        """The counters and gauges now (docs/observability.md; ``ClosedError`` once closed): a
        walk of the pool, not kept up per event, so as cheap as the pool is small."""
        transport = self._check_open()
        traversal = self._traversal
        traffic = Traffic()
        traffic.add(self._closed_traffic)
        paths = dict.fromkeys(typing.get_args(LinkPath), 0)
        for connection in self._peers.values():
            traffic.add(connection.traffic)
            paths[connection.path] += 1
        return EndpointStats(
            connections=len(self._peers),
            routes=transport.routes,
            datagrams=transport.stats,
            queued_messages=len(self._messages),
            failed_handshakes=self._failed_handshakes,
            refused_connections=self._refused_connections,
            links=sum(not link.closed for link in self._links),
            punches=self._traversal.punches,
            relay_circuits=self._traversal.circuits,
            half_open=len(self._half_open),
            refusals=dict(
                self._traversal.refusals
                + self._membership.refusals
                + self._memory.refused
                + self._dial_refusals
            ),
            memory=self._memory.stats(),
            tickets_issued=len(self._tickets_issued),
            tickets_held=len(self._tickets_held),
            keep_alives=self._keep_alives + sum(link.keep_alives for link in self._links),
            deadlines=self._scheduler.deadlines if self._scheduler is not None else 0,
            side_sockets=len(self._side),
            connections_by_path=paths,
            handshakes_ok=self._handshakes_ok,
            handshakes_failed=dict(self._handshake_failures),
            messages_sent=traffic.messages_sent,
            bytes_sent=traffic.bytes_sent,
            messages_received=traffic.messages_received,
            bytes_received=traffic.bytes_received,
            punches_started=traversal.punches_started,
            punches_succeeded=traversal.punches_succeeded,
            punches_failed=traversal.punches_failed,
            relay_circuits_opened=traversal.circuits_opened,
            relayed_bytes=traversal.relayed_bytes,
            bootstrap_cache_size=len(self.bootstrap_cache),
            lost_nodes=self._joining.lost_nodes,
            upkeep_dials=self._joining.upkeep_dials,
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

    # ---- links -----------------------------------------------------------------------------

    def _new_link(
        self,
        path_out: PacketPath,
        remote_addr: Address,
        path: LinkPath,
        peer_check: PeerCheck | None = None,
        tickets: LinkTickets | None = None,
        **quic_args: Any,
    ) -> Link:
        """A link owned by the endpoint until it is established; one a peer opened is half-open
        until then, and aborted if that takes longer than ``handshake_timeout``."""
        quic = CheckedQuicConnection(
            peer_check=peer_check or self._peer_check,
            datagram_ceiling=self._datagram_ceiling(remote_addr, path),
            tickets=tickets,
            **quic_args,
        )
        # Peers open unidirectional streams only: lanes and large messages, within a bound.
        limit_streams(quic, unidirectional=self.config.max_incoming_streams, bidirectional=0)
        memory = self._memory.open(remote_addr[0], link_memory(self._hello))
        session = Session(quic, self._hello, self.config.lanes, memory)
        scheduler = self._scheduler
        assert scheduler is not None  # links exist only once the endpoint started
        link = Link(
            session,
            path_out,
            remote_addr,
            self._router,
            scheduler,
            self.config.keep_alive_interval,
            self._forgotten,
            path,
            self.config.send_timeout,
        )
        self._links.add(link)
        self._open_links.add(link)
        self._side.attach(path_out)
        # A handshake a peer started ends by this timer; a dial is given up by whoever waits
        # for it, and the timer is only its backstop.
        if session.is_client:
            timeout = self.config.connect_timeout * 2
        else:
            timeout = min(self.config.handshake_timeout, self.config.connect_timeout)
            self._half_open.add(link, remote_addr[0])
        alarm = self._pending[link] = scheduler.alarm(lambda _: self._handshake_too_slow(link))
        alarm.set(asyncio.get_running_loop().time() + timeout)
        return link

    def _datagram_ceiling(self, remote_addr: Address, path: LinkPath) -> int:
        """The largest datagram path MTU discovery tries toward ``remote_addr``: the configured
        maximum, held to what the local interface carries. A relayed link stays at the base size
        (its datagrams ride inside the relay's), as does every link of a socket that cannot set
        don't-fragment."""
        if path == "relayed" or not self._unfragmented:
            return BASE_SIZE
        interface = route_payload(remote_addr[0])
        ceiling = self.config.max_datagram_size
        return ceiling if interface is None else min(ceiling, interface)

    def _tickets(self, addr: Address, dialled: bool, peer_id: str | None = None) -> LinkTickets | None:
        """A new link's session tickets, or None with them off: for a dial, those ``peer_id``
        (or anyone, without one) issued us at ``addr``; else those we issue, counted by the
        address scope of ``addr``."""
        if not self.config.session_tickets:
            return None
        clock = asyncio.get_running_loop().time
        lifetime = self.config.session_ticket_lifetime
        if not dialled:
            return LinkTickets(self._tickets_issued, address_key(addr[0]), lifetime, clock)
        named = None if peer_id == wire.ANY_PEER else peer_id
        return LinkTickets(self._tickets_held, addr, lifetime, clock, peer_id=named)

    def _checker(self, peer_id: str | None) -> PeerCheck | None:
        if peer_id is None or peer_id == wire.ANY_PEER:
            return None
        return tls.expecting(self._peer_check, peer_id)

    def _client_link(
        self,
        path_out: PacketPath,
        addr: Address,
        path: LinkPath,
        peer_id: str | None,
        remote: Address | None = None,
    ) -> Link:
        link = self._new_link(
            path_out,
            remote or addr,
            path,
            self._checker(peer_id),
            self._tickets(addr, dialled=True, peer_id=peer_id),
            configuration=self._client_config,
        )
        link.target = addr
        link.session.connect(remote or addr, asyncio.get_running_loop().time())
        link.transmit()
        return link

    def _handshake_too_slow(self, link: Link) -> None:
        if self._pending.pop(link, None) is not None:
            peer_log(log, link.peer_id, link.remote_addr).info("no handshake in time: closing")
            link.abort(HANDSHAKE_TIMEOUT)  # the peer learns why, and so does the count

    def _settled(self, link: Link) -> None:
        """``link`` is no longer waiting for its handshake: its timer goes, and it is no
        longer half-open."""
        self._half_open.discard(link)
        alarm = self._pending.pop(link, None)
        if alarm is not None:
            alarm.cancel()

    def _forgotten(self, link: Link) -> None:
        end_qlog_trace(link.session.quic)  # an aborted link never reaches aioquic's own end
        self._links.discard(link)
        self._open_links.discard(link)
        self._keep_alives += link.keep_alives
        self._settled(link)
        path = link.packet_path
        self._side.detach(path)
        if isinstance(path, RelayPath) and self._relay_paths.get((path.relay, path.circuit)) is path:
            self._close_relay_path(path, tell_relay=True)

    def _accept(
        self, header: packet.PacketHeader, addr: Address, original_dcid: bytes, retry_scid: bytes | None
    ) -> Receiver | None:
        """A new Initial from ``addr`` (its address validated by a retry token when retries are
        on): a server-side QUIC connection for it, or a refusal when we have too many."""
        if self._state != "open" or self._transport is None:
            return None
        return self._accept_on(self._transport, None, header, addr, original_dcid, retry_scid)

    def _accept_side(
        self,
        out: Transport,
        peer_id: str,
        header: packet.PacketHeader,
        addr: Address,
        original_dcid: bytes,
        retry_scid: bytes | None,
    ) -> Receiver | None:
        """A new Initial on a punch's fresh socket: only ``peer_id`` may complete it."""
        if self._state != "open":
            return None
        return self._accept_on(out, peer_id, header, addr, original_dcid, retry_scid)

    def _accept_on(
        self,
        out: Transport,
        peer_id: str | None,
        header: packet.PacketHeader,
        addr: Address,
        original_dcid: bytes,
        retry_scid: bytes | None,
    ) -> Receiver | None:
        """A server-side QUIC connection on ``out`` for a new Initial from ``addr``, accepting
        only ``peer_id`` if given, or a refusal when we have too many."""
        reason = self._refusal(addr[0])
        if reason is not None:
            return Refusal(out, header, REFUSED_BECAUSE[reason])
        link = self._new_link(
            out,
            addr,
            "direct",
            self._checker(peer_id),
            tickets=self._tickets(addr, dialled=False),
            configuration=self._server_config,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
        )
        link.add_cid(header.destination_cid)  # the client uses it until it learns ours
        return link

    def _refusal(self, host: str) -> str | None:
        """Why a handshake from ``host`` may not start now (counted by reason), or None.

        Half-open handshakes take the places established links and our own dials leave of
        ``max_connections``, at most ``max_half_open``: the bound holds however many of them
        complete, and a full table makes room for a newcomer rather than refuse it."""
        room = self.config.max_connections - self._settled_links()
        limit = min(room, self.config.max_half_open)
        reason = "max_connections" if room <= 0 else self._half_open.refusal(host, limit)
        if reason == "half_open":
            if self._make_room(host):
                return None
            if len(self._half_open) >= room:
                reason = "max_connections"
        if reason == "max_connections":
            self._refused_connections += 1
        if reason is not None:
            self._dial_refusals[reason] += 1
        return reason

    def _make_room(self, host: str) -> bool:
        """With the half-open table full: end the busiest source's oldest handshake for one
        from ``host``, if ``host`` holds fewer (counted as "half_open_evicted")."""
        evicted = self._half_open.evictable(host)
        if evicted is None:
            return False
        peer_log(log, evicted.peer_id, evicted.remote_addr).info("too many handshakes: ending this one")
        evicted.abort()  # its end takes it out of the table
        self._dial_refusals["half_open_evicted"] += 1
        return True

    def _settled_links(self) -> int:
        """Links open but for half-open ones: established, and our own dials. Counted, not
        walked (every accepted handshake asks); a link counts until its closing is reported."""
        return len(self._open_links) - len(self._half_open)

    def _retry_required(self) -> bool:
        """Whether a new client must prove its address with a Retry first: always with
        ``stateless_retry``, else once ``retry_threshold`` handshakes are half-open."""
        return self.config.stateless_retry or len(self._half_open) >= self._retry_threshold

    def _link_established(self, link: Link) -> None:
        """The handshake proved a certificate and the Hello arrived: the link joins the
        connection of that peer id, made now if there is none."""
        self._settled(link)
        self._handshakes_ok += 1
        peer_id = link.peer_id
        assert peer_id is not None  # the session establishes only with a certificate
        now = asyncio.get_running_loop().time()
        if link.path == "direct" and self._traversal.punching(peer_id, now):
            link.path = "punched"
        connection = self._peers.get(peer_id)
        new = connection is None or connection.is_closed
        if new:
            connection = self._peers[peer_id] = Connection(
                peer_id, self.peer_id, self._events, self.config.close_timeout
            )
        assert connection is not None
        link.owner = connection
        connection.link_established(link)
        dial = self._link_dials.pop(link, None)
        if new:
            dialled = link.session.is_client
            peer_log(log, peer_id, link.remote_addr).info(
                "connected (%s, %s)", link.path, "dialled" if dialled else "accepted"
            )
            if not dialled:
                self._connections.put(connection)
            started = dial.started if dial is not None else now
            if self._membership.connected(self._peer(link), dialled, now - started, time.time()):
                self._joining.schedule_save()
            self._report_nat(connection)
        if dial is not None and not dial.result.done():
            dial.result.set_result(connection)
        if link.path != "relayed":
            for waiter in self._arrivals.pop(peer_id, []):
                if not waiter.done():
                    waiter.set_result(None)

    def _handshake_ended(self, link: Link, event: Closing) -> None:
        """A link closed before it was established: a failed handshake."""
        self._open_links.discard(link)
        self._settled(link)
        self._failed_handshakes += 1
        self._handshake_failures[_handshake_failure(event)] += 1
        dial = self._link_dials.pop(link, None)
        # The reason may be the peer's words: quoted, so no line of it passes as a record.
        peer_id = link.peer_id or (dial.peer_id if dial is not None else None)
        peer_log(log, peer_id, link.remote_addr).info(
            "no connection: %r (error %#x)", event.reason, event.error_code
        )
        if dial is None:
            return
        dial.links.discard(link)
        if not dial.result.done() and not any(not other.closed for other in dial.links):
            self._fail_dial(dial, _dial_error(dial.addr, event))

    def _connection_link_closed(self, link: Link) -> None:
        """A connection's link ended: circuits relayed through it end too, and ours through it."""
        self._open_links.discard(link)
        sends, ours = self._traversal.link_closed(link)
        self._carry_out(sends)
        for number in ours:
            path = self._relay_paths.get((link, number))
            if path is not None:
                self._close_relay_path(path, tell_relay=False)

    def _connection_closed(self, connection: Connection) -> None:
        self._closed_traffic.add(connection.traffic)
        if self._peers.get(connection.peer_id) is connection:
            del self._peers[connection.peer_id]
        if self._state == "open":
            self._disconnections.put(connection.remote_addr)
            if isinstance(connection.close_error, errors.ConnectionLost):
                self._joining.lost(connection)

    def _peer(self, link: Link) -> Peer:
        """What ``link`` proved and observed, for the deciders."""
        peer_id = link.peer_id
        assert peer_id is not None
        hello = link.session.peer
        return Peer(
            link,
            peer_id,
            link.remote_addr,
            smoothed_rtt(link.session.quic),
            link.path == "relayed",
            hello.node if hello is not None else False,
            link.received,
        )

    # ---- dialling --------------------------------------------------------------------------

    def _dial(self, addr: Address, peer_id: str | None) -> _Dial:
        """The dial to ``addr`` under way (for ``peer_id``), else a new one."""
        dial = self._dials.get(addr)
        if dial is not None and not dial.result.done() and dial.peer_id in (None, peer_id):
            return dial
        dial = self._dials[addr] = self._new_dial(addr, peer_id)
        self._add_dial_link(dial, self._client_link(self._check_open(), addr, "direct", peer_id))
        return dial

    def _new_dial(self, addr: Address, peer_id: str | None) -> _Dial:
        loop = asyncio.get_running_loop()
        dial = _Dial(addr, peer_id, loop.create_future(), loop.time())
        dial.result.add_done_callback(lambda _: self._dial_over(dial))
        return dial

    def _add_dial_link(self, dial: _Dial, link: Link) -> None:
        dial.links.add(link)
        self._link_dials[link] = dial

    def _dial_over(self, dial: _Dial) -> None:
        if self._dials.get(dial.addr) is dial:
            del self._dials[dial.addr]
        if not dial.result.cancelled():
            dial.result.exception()  # retrieved: nobody may be waiting any more

    def _fail_dial(self, dial: _Dial, error: Exception, reason: str = "") -> None:
        """End ``dial`` with ``error``; its links nobody answered close, giving ``reason``."""
        if not dial.result.done():
            dial.result.set_exception(error)
        for link in list(dial.links):
            self._link_dials.pop(link, None)
            # A link the peer answered may be established on its side already, and carry its
            # replies: it is left to complete (it joins the peer's connection) or to time out.
            # Closing it could drop what the peer already sent on it.
            if link in self._pending and not link.heard:
                link.abort(reason)

    async def _await_dial(self, dial: _Dial, timeout: float, what: str = "") -> Connection:
        """The connection ``dial`` brings, within ``timeout``; the dial is abandoned (its links
        closed) when its last waiter gives up."""
        dial.waiters += 1
        timed_out = False
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(dial.result)
        except TimeoutError:
            timed_out = True
            host, port = dial.addr
            raise errors.ConnectionError(f"no connection to {host}:{port}{what} within {timeout} s") from None
        finally:
            self._release(dial, HANDSHAKE_TIMEOUT if timed_out else "")

    def _release(self, dial: _Dial, reason: str = "") -> None:
        """One waiter less: the dial is abandoned (its links closed, giving ``reason``) when
        none is left."""
        dial.waiters -= 1
        if dial.waiters == 0 and not dial.result.done():
            self._fail_dial(dial, errors.ConnectionError("the dial was abandoned"), reason)

    def _existing(self, addr: Address, peer_id: str | None) -> Connection | None:
        """An open connection to ``peer_id``, or (without one) to whoever we reach at ``addr``
        over a link that observed that address or that we dialled there ourselves."""
        if peer_id is not None:
            return self.connection(peer_id)
        for connection in self._peers.values():
            for link in connection.links:
                if not link.closed and (
                    (link.path != "relayed" and link.remote_addr == addr) or link.target == addr
                ):
                    return connection
        return None

    async def connect_to(
        self,
        addr: tuple[str, int],
        via: tuple[str, int] | None = None,
        *,
        peer_id: str | None = None,
        direct: bool = False,
    ) -> Connection:
        """The connection to the peer at ``addr``: the pooled one (whoever opened it), else a new one.

        With ``peer_id`` (a certificate fingerprint) only that peer will do: any other
        certificate is refused with ``CertificateError``, as dialling by node id does. Concurrent
        calls for one peer share one handshake. With ``via`` (a node both peers are connected
        to; by default the node we bootstrapped through) a peer behind a NAT is reached too:
        directly if it answers, else through a hole punched in both NATs, else relayed by
        ``via`` (``conn.path`` says which; a relayed connection moves to a punched path when a
        later attempt succeeds). ``direct=True`` dials ``addr`` alone, through no other node:
        for a peer known to answer there (a node from a bootstrap cache), whose silence means
        it is gone, not hidden. Raises ``ConnectionError`` when no connection is established,
        within ``config.connect_timeout`` seconds when dialled directly; a refused
        certificate ends every attempt at once.
        """
        self._check_open()
        target = await self._resolve(addr)
        existing = self._existing(target, peer_id)
        if existing is not None:
            return existing
        relay = None if direct else via or self._membership.contact
        if relay is not None:
            relay = await self._resolve(relay)
            if relay != target:
                return await self._traverse(target, relay, peer_id)
        return await self._await_dial(self._dial(target, peer_id), self.config.connect_timeout)

    async def send_message(self, data: BytesLike, addr: tuple[str, int]) -> None:
        """Send one message to ``addr``, connecting first if needed."""
        connection = await self.connect_to(addr)
        await connection.send(data)

    async def disconnect_from(self, addr: tuple[str, int]) -> None:
        """Close the connection to ``addr``, if there is one."""
        connection = self._existing(await self._resolve(addr), None)
        if connection is not None:
            await connection.close()

    def connections(self) -> list[Connection]:
        """The connections in the pool now."""
        return [connection for connection in self._peers.values() if not connection.is_closed]

    def connection(self, peer_id: str) -> Connection | None:
        """The open connection to ``peer_id``, if there is one."""
        connection = self._peers.get(peer_id)
        return connection if connection is not None and not connection.is_closed else None

    # ---- NAT traversal: carrying out what ``Traversal`` decides ----------------------------

    async def _traverse(self, target: Address, relay: Address, peer_id: str | None) -> Connection:
        """Direct, else punched, else relayed through ``relay``."""
        dial = self._dial(target, peer_id)
        dial.waiters += 1
        try:
            self.punch_attempts = 0
            try:
                async with asyncio.timeout(min(t.DIRECT_FIRST, self.config.connect_timeout)):
                    return await asyncio.shield(dial.result)
            except errors.CertificateError:
                raise
            except (TimeoutError, errors.Error):
                pass
            coordinator = await self.connect_to(relay)
            for _ in range(t.PUNCH_ATTEMPTS):
                self.punch_attempts += 1
                connection = await self._punch(coordinator, target, peer_id)
                if connection is not None:
                    return connection
                if dial.result.done() and not dial.result.cancelled():
                    error = dial.result.exception()
                    if error is None:
                        return dial.result.result()  # the direct dial came through late
                    if isinstance(error, errors.CertificateError):
                        raise error
            connection = await self._relay(coordinator, target, peer_id)
            self._tasks.spawn(self._upgrade(connection, coordinator, target))
            return connection
        finally:
            self._release(dial)

    async def _punch(
        self, coordinator: Connection, target: Address, peer_id: str | None
    ) -> Connection | None:
        """One punch attempt through ``coordinator``: the connection, or None.

        Our direct attempt may have left the far router owning the pair of ports it used (a
        bare router, docs/nat.md), and the far side's NAT then moves its port for us for good:
        so the punch comes from a fresh socket whenever our NAT keeps ports, which makes that
        socket's public port known. An open peer needs none: it takes the far side's packets
        from whatever port they come."""
        behaviour = self._traversal.behaviour
        out: Transport | None = None
        if behaviour.port_kept and behaviour.mapping is Mapping.INDEPENDENT and not behaviour.open:
            out = next(iter(await self._side.open(1)), None)
        try:
            # The coordinator may not be our contact: tell it our NAT first (the lane keeps order).
            coordinator.send_control(wire.NatReport(behaviour.flags()))
            port = out.local_addr[1] if out is not None else 0
            request = wire.PunchRequest(target, peer_id or wire.ANY_PEER, port)
            try:
                answer = await coordinator.control_request(
                    request, wire.Punch, self.config.control_timeout, wire.PunchFailed
                )
            except errors.Error as exc:
                peer_log(log, peer_id, target).info("no punch towards it: %r", exc)
                return None
            link = coordinator.current_link
            if link is None or (peer_id is not None and answer.peer_id != peer_id):
                return None
            loop = asyncio.get_running_loop()
            path = self._traversal.punch(self._peer(link), answer, True, loop.time(), asked=target)
            if path is None:
                return None
            if out is not None:  # the peer may dial us there too (the hard side of a birthday does)
                out.accept_connections(functools.partial(self._accept_side, out, path.peer_id))
            return await self._punched(path, out)
        finally:
            if out is not None:
                self._side.release(out)

    async def _punched(self, path: t.OpenPath, out: Transport | None = None) -> Connection | None:
        """Carry out ``path``: at its time spray and dial, from ``out`` if given (else our own
        socket), fanning out or probing as its mode says; until its end wait for a direct or
        punched link to its peer, or a while longer for a dial of ours the peer answered. A
        refused certificate raises."""
        loop = asyncio.get_running_loop()
        arrived: asyncio.Future[None] = loop.create_future()
        self._arrivals.setdefault(path.peer_id, []).append(arrived)
        links: list[Link] = []
        helpers: list[asyncio.Task[None]] = []
        punched: Connection | None = None
        try:
            await asyncio.sleep(max(0.0, path.at - loop.time()))
            own = self._check_open()  # closed while we waited: no punch, from any socket
            transport = out or own
            if path.mode == wire.PUNCH_FAN_OUT:
                helpers.append(asyncio.create_task(self._fan_out(path, arrived, links)))
            elif path.mode == wire.PUNCH_PROBE:
                helpers.append(asyncio.create_task(self._probe_ports(path, transport, arrived)))
            for _ in range(t.SPRAY):
                transport.sendto(b"\x00", path.addr)  # not a QUIC packet: the peer drops it, its NAT opens
                await asyncio.sleep(t.SPRAY_GAP)
            if not self._has_direct_link(path.peer_id):
                links.append(self._punch_dial(transport, path.addr, path.peer_id, arrived))
            deadline = path.until
            while True:
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await asyncio.shield(arrived)
                    break
                except TimeoutError:
                    # A dial the peer answered is a handshake under way, slowed by loss: it gets
                    # one more attempt's time before this attempt counts as failed.
                    answered = any(link in self._pending and link.heard for link in links)
                    if deadline != path.until or not answered:
                        return None
                    deadline += t.PUNCH_TIMEOUT
                except errors.CertificateError:
                    raise
                except errors.Error:
                    return None
            punched = self.connection(path.peer_id) if self._has_direct_link(path.peer_id) else None
            return punched
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self._traversal.punch_over(path.punch, succeeded=punched is not None)
            waiters = self._arrivals.get(path.peer_id, [])
            if arrived in waiters:
                waiters.remove(arrived)
            if not waiters:
                self._arrivals.pop(path.peer_id, None)
            # A dial nobody answered ends with the punch. One that was answered may already be
            # established on the other side (its last packets lost or late): it completes, or
            # its handshake timer ends it, and is never cut off under the peer's feet.
            for link in links:
                if link in self._pending and not link.heard:
                    link.abort()

    def _punch_dial(
        self, out: PacketPath, addr: Address, peer_id: str, arrived: asyncio.Future[None]
    ) -> Link:
        """A punch's dial to ``addr`` from ``out``, accepting only ``peer_id``; its end wakes
        ``arrived``."""
        link = self._client_link(out, addr, "punched", peer_id)
        dial = self._new_dial(addr, peer_id)
        self._add_dial_link(dial, link)
        dial.result.add_done_callback(lambda done: _wake(arrived, done))
        return link

    async def _fan_out(self, path: t.OpenPath, arrived: asyncio.Future[None], links: list[Link]) -> None:
        """The hard side of a birthday punch: ``FAN_OUT_PORTS`` fresh sockets each send one
        datagram towards the peer, opening as many mappings in our NAT; the first that hears
        from the peer's host dials it from there. The others close when the punch ends."""
        landed: asyncio.Future[tuple[Transport, Address]] = asyncio.get_running_loop().create_future()

        def heard(transport: Transport, _data: bytes, source: Address) -> None:
            if source[0] == path.addr[0] and not landed.done():
                landed.set_result((transport, source))

        sockets = await self._side.open(t.FAN_OUT_PORTS, heard)
        try:
            for transport in sockets:
                transport.sendto(b"\x00", path.addr)
            transport, source = await landed
            if not arrived.done() and not self._has_direct_link(path.peer_id):
                links.append(self._punch_dial(transport, source, path.peer_id, arrived))
            await asyncio.shield(arrived)  # the sockets stay open until the punch ends
        finally:
            for transport in sockets:
                self._side.release(transport)

    async def _probe_ports(
        self, path: t.OpenPath, transport: Transport, arrived: asyncio.Future[None]
    ) -> None:
        """The easy side of a birthday punch: from ``transport``, one datagram to each of
        ``path.ports`` on the peer's host, at ``PROBE_RATE``, until a link to the peer stands;
        the one that lands in a mapping the peer's fan-out opened lets its dial in."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for sent, port in enumerate(path.ports, 1):
            if arrived.done() or loop.time() >= path.until:
                return
            transport.sendto(b"\x00", (path.addr[0], port))
            if sent % PROBE_BATCH == 0:
                await asyncio.sleep(max(0.0, started + sent / t.PROBE_RATE - loop.time()))

    def _has_direct_link(self, peer_id: str) -> bool:
        connection = self._peers.get(peer_id)
        current = connection.current_link if connection is not None else None
        return current is not None and not current.closed and current.path != "relayed"

    async def _upgrade(self, connection: Connection, coordinator: Connection, target: Address) -> None:
        """While relayed, try again now and then to punch through to a direct path."""
        for pause in t.UPGRADE_AFTER:
            await asyncio.sleep(pause)
            if connection.is_closed or connection.path != "relayed" or coordinator.is_closed:
                return
            if await self._punch(coordinator, target, connection.peer_id) is not None:
                return

    async def _relay(self, coordinator: Connection, target: Address, peer_id: str | None) -> Connection:
        """A circuit through ``coordinator`` to the peer, and a QUIC connection inside it."""
        relay = coordinator.current_link
        if relay is None or relay.closed:
            raise errors.ConnectionError(f"no connection to {target[0]}:{target[1]}: the relay is gone")
        named = peer_id or wire.ANY_PEER
        circuit = self._traversal.new_circuit_number(relay)
        self._traversal.path_opened(relay, circuit, named)
        path = self._relay_paths[(relay, circuit)] = RelayPath(relay, circuit)
        coordinator.send_control(wire.RelayOpen(target, named, circuit))
        dial = self._new_dial(target, peer_id)
        path.link = self._client_link(path, target, "relayed", peer_id, remote=relay.remote_addr)
        self._add_dial_link(dial, path.link)
        return await self._await_dial(dial, self.config.connect_timeout, ", even relayed")

    def _relayed_datagram(self, path: RelayPath, datagram: bytes) -> None:
        """A datagram for a circuit of ours; the first of a circuit opened to us is an Initial."""
        if path.link is None:
            try:
                header = packet.peek(datagram, CID_LENGTH)
            except errors.MalformedPacket:
                return
            if header.packet_type != packet.INITIAL:
                return
            if self._refusal(path.relay.remote_addr[0]) is not None:
                self._close_relay_path(path, tell_relay=True)
                return
            path.cancel_expiry()
            path.link = self._new_link(
                path,
                path.relay.remote_addr,
                "relayed",
                self._checker(self._traversal.path_peer(path.relay, path.circuit)),
                self._tickets(path.relay.remote_addr, dialled=False),
                configuration=self._server_config,
                original_destination_connection_id=header.destination_cid,
            )
        path.link.datagram_received(datagram, path.relay.remote_addr)

    def _close_relay_path(self, path: RelayPath, tell_relay: bool) -> None:
        path.cancel_expiry()
        self._relay_paths.pop((path.relay, path.circuit), None)
        self._traversal.path_closed(path.relay, path.circuit)
        if tell_relay and not path.relay.closed:
            path.relay.session.send_control(wire.RelayClose(path.circuit))
            path.relay.transmit_soon()
        if path.link is not None:
            path.link.abort()

    def _take_circuit(self, relay: Link, circuit: int) -> None:
        """A circuit a relay opened to us: closed (and the relay told) unless its first
        Initial comes within ``connect_timeout``, so an unused one holds no slot for long."""
        path = self._relay_paths[(relay, circuit)] = RelayPath(relay, circuit)
        path.expiry = asyncio.get_running_loop().call_later(
            self.config.connect_timeout, self._close_relay_path, path, True
        )

    def _arm_relay_sweep(self) -> None:
        """Have ``_sweep_relay`` run when the first circuit we relay may have fallen idle."""
        at = self._traversal.next_idle_check()
        if at is not None and self._relay_sweep is None:
            self._relay_sweep = asyncio.get_running_loop().call_at(at, self._sweep_relay)

    def _sweep_relay(self) -> None:
        """Close the circuits we relay that carried nothing for ``relay_idle_timeout``."""
        self._relay_sweep = None
        self._carry_out(self._traversal.idle_circuits(asyncio.get_running_loop().time()))
        self._arm_relay_sweep()

    def _find_peer(self, addr: Address, peer_id: str, asker: Connection) -> Peer | None:
        """The peer a request names: by peer id, else whoever we see at ``addr`` directly."""
        if peer_id != wire.ANY_PEER:
            found = self._peers.get(peer_id)
        else:
            found = next(
                (
                    c
                    for c in self._peers.values()
                    if c.current_link is not None
                    and not c.current_link.closed
                    and c.path != "relayed"
                    and c.remote_addr == addr
                ),
                None,
            )
        if found is None or found is asker or found.is_closed or found.current_link is None:
            return None
        return self._peer(found.current_link)

    def _carry_out(self, sends: Iterable[Send]) -> None:
        for send in sends:
            link = send.link
            assert isinstance(link, Link)
            if not link.closed and link.session.send_control(send.message):
                link.transmit_soon()

    def _control(self, connection: Connection, link: Link, message: wire.ControlMessage) -> None:
        """A control message nobody waited for: a request of the peer's, for a decider."""
        now = asyncio.get_running_loop().time()
        peer = self._peer(link)
        traversal = self._traversal
        if isinstance(message, wire.PunchRequest):
            target = self._find_peer(message.target, message.target_id, connection)
            self._carry_out(traversal.punch_request(peer, message, target, now))
        elif isinstance(message, wire.NatReport):
            traversal.nat_report(peer, message)
        elif isinstance(message, wire.Punch):
            opening = traversal.punch(peer, message, solicited=False, now=now)
            if opening is not None:
                self._tasks.spawn(self._punched(opening))
        elif isinstance(message, wire.RelayOpen):
            target = self._find_peer(message.target, message.target_id, connection)
            self._carry_out(traversal.relay_open(peer, message, target, now, serving=self._serves_relay))
            self._arm_relay_sweep()
        elif isinstance(message, wire.RelayIncoming):
            if traversal.relay_incoming(peer, message):
                self._take_circuit(link, message.circuit)
            else:
                self._carry_out([Send(link, wire.RelayClose(message.circuit))])
        elif isinstance(message, wire.RelayData | wire.RelayClose):
            path = self._relay_paths.get((link, message.circuit))
            if path is not None:
                if isinstance(message, wire.RelayData):
                    self._relayed_datagram(path, message.datagram)
                else:
                    self._close_relay_path(path, tell_relay=False)
                return
            sends = traversal.relay(link, message, now)
            if sends is None:
                peer_log(log, connection.peer_id, connection.remote_addr).debug(
                    "a relay message for an unknown circuit"
                )
            else:
                self._carry_out(sends)
        elif not isinstance(message, wire.PunchFailed):  # a late answer: nobody waits for it
            decision = self._membership.request(peer, message, now)
            if isinstance(decision, Probe):
                self._tasks.spawn(self._verify(decision))
            elif decision is not None:
                self._carry_out([decision])

    async def _verify(self, probe: Probe) -> None:
        """Dial ``probe.addr`` from a fresh socket (no NAT mapping the peer opened to us helps),
        then answer the peer."""
        fingerprint: str | None = None
        try:
            fingerprint = await self._probe(probe.addr, self.config.control_timeout)
        finally:
            answer, changed = self._membership.probe_done(probe, fingerprint, time.time())
            self._carry_out([answer])
            if changed:
                self._joining.schedule_save()
            if (waiting := self._membership.next_probe()) is not None and self._state == "open":
                self._tasks.spawn(self._verify(waiting))

    # ---- events ----------------------------------------------------------------------------

    def incoming_connections(self) -> AsyncIterator[Connection]:
        """Connections peers opened to us, once established; ends when the endpoint closes."""
        return MailboxIterator(self._connections)

    def incoming_messages(self) -> AsyncIterator[Message]:
        """Messages and requests from every peer. Taking one gives its sender credit back, so
        a reader that stops reading slows its peers down instead of filling memory."""
        return MailboxIterator(self._messages, message_taken)

    def disconnections(self) -> AsyncIterator[Address]:
        """Addresses of peers whose connection ended (by either side); ends when the endpoint closes."""
        return MailboxIterator(self._disconnections)


def _traversal_limits(config: Config) -> t.TraversalLimits:
    """The traversal rules' bounds as ``config`` sets them."""
    return t.TraversalLimits(
        relay_circuits=config.relay_max_circuits,
        relay_circuits_per_peer=config.relay_circuits_per_peer,
        relay_bytes=config.relay_max_bytes,
        relay_bytes_per_peer=config.relay_bytes_per_peer,
        relay_window=config.relay_window,
        relay_idle=config.relay_idle_timeout,
        relayed_paths_per_relay=config.relay_circuits_per_peer,
    )


def _wake(waiter: asyncio.Future[None], done: asyncio.Future[Connection]) -> None:
    if waiter.done():
        return
    error = None if done.cancelled() else done.exception()
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)
        waiter.exception()  # retrieved: the punch may be over, nobody waiting any more


def _handshake_failure(event: Closing) -> str:
    """Why a link ended before being established: one of ``HANDSHAKE_FAILURES``."""
    alert = event.error_code - CRYPTO_ERROR  # a TLS alert, either side's
    if 0 <= alert < 0x100:
        return "certificate" if alert in tls.CERTIFICATE_ALERTS else "tls"
    if not event.by_peer:
        return "timeout" if event.reason == HANDSHAKE_TIMEOUT else "closed"
    if event.error_code in (QuicErrorCode.CONNECTION_REFUSED, CLOSE_NO_MEMORY):
        return "refused"
    return "closed_by_peer"


def _dial_error(addr: Address, event: Closing) -> Exception:
    """Why no connection could be made: a refused certificate (either side's refusal) or
    anything else."""
    host, port = addr
    reason = event.reason or f"error code {event.error_code:#x}"
    if _handshake_failure(event) == "certificate":
        return errors.CertificateError(f"{host}:{port}: certificate refused: {reason}")
    return errors.ConnectionError(f"could not connect to {host}:{port}: {reason}")
