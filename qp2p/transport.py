"""The endpoint's one UDP socket: every datagram goes to its connection by destination connection id.

Like aioquic's server it parses only the clear-text header (with the compiled packet peek).
Unknown Initials of full size open a connection, unsupported versions get a Version Negotiation,
and everything else unknown is dropped and counted. No protocol logic lives here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aioquic.quic.packet import encode_quic_retry, encode_quic_version_negotiation

from qp2p._speedups import packet
from qp2p._speedups import retry as retry_tokens
from qp2p.errors import MalformedPacket, TokenError

__all__ = (
    "CID_LENGTH",
    "SUPPORTED_VERSIONS",
    "Address",
    "PacketPath",
    "Receiver",
    "RetryRequired",
    "Transport",
    "TransportStats",
    "normalize",
)

log = logging.getLogger(__name__)

Address = tuple[str, int]
# Short headers do not carry their connection id's length, so every connection on a socket uses this one.
CID_LENGTH = 8
SUPPORTED_VERSIONS = (packet.QUIC_V1, packet.QUIC_V2)
# RFC 9000 section 14.1: a client's first datagram is at least this long; smaller Initials are dropped.
MIN_INITIAL_SIZE = 1200


def normalize(addr: tuple[object, ...]) -> Address:
    """``(host, port)`` as aioquic compares it: no flow info or scope, IPv4-mapped IPv6 unwrapped."""
    host, port = str(addr[0]), int(addr[1])  # type: ignore[call-overload]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, port


class Receiver(Protocol):
    """Whatever a connection id routes to."""

    def datagram_received(self, data: bytes, addr: Address) -> None: ...


class PacketPath(Protocol):
    """Where a QUIC connection's datagrams go: the socket (``Transport``) or a relay circuit."""

    def sendto(self, data: bytes, addr: Address) -> None: ...

    def add_route(self, cid: bytes, receiver: Receiver) -> None: ...

    def remove_route(self, cid: bytes) -> None: ...


@dataclass(slots=True)
class TransportStats:
    """Datagram counters of one socket, for tests and monitoring."""

    received: int = 0
    accepted: int = 0
    malformed: int = 0
    unroutable: int = 0
    version_negotiations: int = 0
    retries: int = 0  # Retry packets sent (Initials without a token)
    bad_tokens: int = 0  # Initials dropped for a forged, expired, replayed or foreign token


# (header, client address, original destination CID, retry source CID or None) -> receiver.
Acceptor = Callable[[packet.PacketHeader, Address, bytes, bytes | None], Receiver | None]
# Whether an Initial without a token must prove its client's address first: asked per Initial.
RetryRequired = Callable[[], bool]
# Told of each datagram that is no QUIC packet (a hole punch's probe), with its source.
Stray = Callable[[bytes, "Address"], None]
# A fresh retry key this often; tokens under the previous key stay valid (their lifetime is 10 s).
RETRY_KEY_LIFETIME = 120.0


class Transport(asyncio.DatagramProtocol):
    """Routes datagrams; ``accept`` decides whether an unknown Initial opens a connection.

    With ``retry`` tokens, an Initial without a token gets a stateless Retry (RFC 9000
    section 8.1.2) and nothing else whenever ``retry_required()`` says so (always, by
    default); only an Initial whose token proves the client owns its address reaches
    ``accept`` then. A spoofed flood therefore costs us no state, and each Retry is smaller
    than the Initial it answers, within the anti-amplification limit. An Initial with a token
    is always checked: its client got a Retry from us and expects its handshake to say so.
    Datagrams that are no QUIC packet go to ``stray`` when given (a punch listens for probes).
    """

    def __init__(
        self,
        accept: Acceptor,
        retry: retry_tokens.RetryTokens | None = None,
        retry_required: RetryRequired = lambda: True,
        stray: Stray | None = None,
    ) -> None:
        self._accept = accept
        self._stray = stray
        self._retry = retry
        self._retry_required = retry_required
        self._retry_key_at = time.time()
        self._routes: dict[bytes, Receiver] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._ipv4 = False
        self.stats = TransportStats()
        self.closed = asyncio.get_running_loop().create_future()

    @property
    def local_addr(self) -> Address:
        assert self._transport is not None
        return normalize(self._transport.get_extra_info("sockname"))

    @property
    def socket(self) -> socket.socket | None:
        """The UDP socket, for options such as buffer sizes."""
        if self._transport is None:
            return None
        sock: socket.socket | None = self._transport.get_extra_info("socket")
        return sock

    @property
    def routes(self) -> int:
        """How many connection ids route somewhere."""
        return len(self._routes)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._ipv4 = transport.get_extra_info("socket").family == socket.AF_INET

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable, ...) for some earlier datagram: QUIC recovers by itself.
        log.debug("socket error: %s", exc)

    def accept_connections(self, accept: Acceptor) -> None:
        """From now on unknown Initials go to ``accept`` (a punch's fresh socket takes its peer)."""
        self._accept = accept

    def add_route(self, cid: bytes, receiver: Receiver) -> None:
        self._routes[cid] = receiver

    def remove_route(self, cid: bytes) -> None:
        self._routes.pop(cid, None)

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        stats = self.stats
        stats.received += 1
        # IPv4 sockets give (host, port) already; IPv6 ones add flow info and scope.
        peer: Address = addr if self._ipv4 else normalize(addr)  # type: ignore[assignment]
        try:
            header = packet.peek(data, CID_LENGTH)
        except MalformedPacket:
            stats.malformed += 1
            if self._stray is not None:
                self._stray(data, peer)
            return
        receiver = self._routes.get(header.destination_cid)
        if receiver is not None:
            receiver.datagram_received(data, peer)
            return
        if header.is_long_header and len(data) >= MIN_INITIAL_SIZE:
            if header.version not in SUPPORTED_VERSIONS and header.packet_type != packet.VERSION_NEGOTIATION:
                stats.version_negotiations += 1
                self.sendto(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=list(SUPPORTED_VERSIONS),
                    ),
                    peer,
                )
                return
            if header.packet_type == packet.INITIAL:
                self._initial(header, data, peer)
                return
        stats.unroutable += 1

    def _initial(self, header: packet.PacketHeader, data: bytes, peer: Address) -> None:
        original_dcid, retry_scid = header.destination_cid, None
        if self._retry is not None and (header.token or self._retry_required()):
            now = time.time()
            if not header.token:
                self._send_retry(header, peer, now)
                return
            try:
                original_dcid = self._retry.validate(header.token, peer, now, header.destination_cid)
            except TokenError as exc:
                self.stats.bad_tokens += 1
                log.debug("dropped an Initial from %s: %s", peer, exc)
                return
            retry_scid = header.destination_cid
        receiver = self._accept(header, peer, original_dcid, retry_scid)
        if receiver is not None:
            self.stats.accepted += 1
            receiver.datagram_received(data, peer)

    def _send_retry(self, header: packet.PacketHeader, peer: Address, now: float) -> None:
        assert self._retry is not None and header.version is not None
        if now - self._retry_key_at > RETRY_KEY_LIFETIME:
            self._retry.rotate(os.urandom(32))
            self._retry_key_at = now
        retry_scid = os.urandom(CID_LENGTH)
        token = self._retry.mint(peer, header.destination_cid, now, retry_scid)
        self.stats.retries += 1
        self.sendto(
            encode_quic_retry(
                version=header.version,
                source_cid=retry_scid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=token,
            ),
            peer,
        )
