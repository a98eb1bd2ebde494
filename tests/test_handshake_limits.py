"""Handshakes that never finish cannot fill an endpoint: half-open limits, their timeout, and Retry.

The flood is a raw UDP socket that starts QUIC handshakes (aioquic clients), answers each
Retry with the Initial carrying its token, as a real client would, then goes silent: its
address is proven, its handshake never ends. ``max_connections`` was reached this way
without any certificate; now such handshakes count against ``max_half_open`` (and per
address ``max_half_open_per_address``) and end after ``handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import pytest
import test_bad_peers
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from test_bad_peers import Service, assert_unharmed
from test_control_plane_attacks import Errors, served
from waiting import wait_until

import qp2p
from qp2p import tls
from qp2p._speedups import packet
from qp2p.session import ALPN
from qp2p.transport import CID_LENGTH

pytestmark = pytest.mark.usefixtures("no_leaks")
loop_errors = test_bad_peers.loop_errors  # a fixture: the tests below take it by name

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
Address = tuple[str, int]
# Handshakes each flood starts, in batches; every wait below is bounded too.
BATCH = 20


class HalfOpenFlood(asyncio.DatagramProtocol):
    """Half-open handshakes from one UDP socket: Initial, then (if a Retry comes) the Initial
    with its token, then silence. Counts the handshakes and the bytes it sent."""

    def __init__(self, target: Address) -> None:
        self.target = target
        self.started = 0
        self.retried = 0  # Retries answered
        self.bytes_sent = 0
        self._waiting: dict[bytes, QuicConnection] = {}  # by our connection id, until the server answers
        self._transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._config = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN],
            connection_id_length=CID_LENGTH,
            server_name=tls.SERVER_NAME,
            verify_mode=ssl.CERT_NONE,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def _flush(self, quic: QuicConnection) -> None:
        assert self._transport is not None
        for datagram, addr in quic.datagrams_to_send(now=self._loop.time()):
            self.bytes_sent += len(datagram)
            self._transport.sendto(datagram, addr)

    def start_one(self) -> None:
        """One more handshake: its first Initial goes out now."""
        quic = QuicConnection(configuration=self._config)
        quic.connect(self.target, now=self._loop.time())
        self._waiting[quic.host_cid] = quic
        self.started += 1
        self._flush(quic)

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        try:
            header = packet.peek(data, CID_LENGTH)
        except qp2p.MalformedPacket:
            return
        quic = self._waiting.pop(header.destination_cid, None)
        if quic is not None and header.packet_type == packet.RETRY:
            quic.receive_datagram(data, self.target, now=self._loop.time())
            self.retried += 1
            self._flush(quic)  # the Initial with the token: the last thing this handshake sends

    async def run(self, handshakes: int) -> None:
        """Start ``handshakes`` handshakes, ``BATCH`` per turn of the event loop."""
        for first in range(0, handshakes, BATCH):
            for _ in range(min(BATCH, handshakes - first)):
                self.start_one()
            await asyncio.sleep(0)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def flood_from(host: str, target: Address) -> HalfOpenFlood:
    """A flood on a socket of its own, bound to ``host`` (any of 127.0.0.0/8 works on Linux)."""
    loop = asyncio.get_running_loop()
    _, flood = await loop.create_datagram_endpoint(lambda: HalfOpenFlood(target), local_addr=(host, 0))
    return flood


def half_open(victim: qp2p.Endpoint) -> int:
    """Links alive on ``victim`` that are not part of an established connection."""
    established = sum(len(c.links) for c in victim.connections())
    return victim.stats().links - established


async def test_a_flood_from_one_address_does_not_lock_out_a_trusted_peer(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    trusted = await make_endpoint(local_ip="127.0.0.2")  # not the flood's address
    victim = await make_endpoint(max_connections=100, trust=qp2p.Trust.pinned([trusted.peer_id]))
    flood = await flood_from("127.0.0.1", victim.local_addr)
    try:
        async with Service(victim) as service:
            await flood.run(110)
            await wait_until(lambda: flood.retried == flood.started, 5)
            await wait_until(lambda: victim.stats().datagrams.accepted >= flood.started, 5)
            held = victim.stats().links
            refused = await served(trusted, victim)
        assert_unharmed(loop_errors, service)
    finally:
        flood.close()
    figures = (
        f"{flood.started} handshakes ({flood.bytes_sent} bytes) held {held} links; "
        f"the trusted peer: {refused or 'served'}; refusals {victim.stats().refusals}"
    )
    assert not refused, figures
    assert held <= victim.config.max_half_open_per_address, figures
    assert victim.stats().refusals.get("half_open_per_address", 0) >= flood.started - held, figures
