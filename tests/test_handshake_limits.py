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
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import test_bad_peers
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from rogue import Sinks
from test_bad_peers import Service, assert_unharmed, digest
from test_control_plane_attacks import Errors, served
from waiting import wait_until

import qp2p
from qp2p import tls
from qp2p._half_open import HalfOpen
from qp2p._speedups import packet
from qp2p.session import ALPN
from qp2p.transport import CID_LENGTH

pytestmark = pytest.mark.usefixtures("no_leaks")
loop_errors = test_bad_peers.loop_errors  # a fixture: the tests below take it by name

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
Address = tuple[str, int]
# Handshakes a flood starts per turn of the event loop, and the pause between turns: 400
# handshakes (960 KB) a second, four times what held a table of 1,000 for its 10 s before.
# Faster, and the victim (one datagram read per turn, in this process) drops honest packets.
BATCH = 4
PAUSE = 0.01


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

    async def run(self, handshakes: int, stop: asyncio.Event | None = None) -> None:
        """Start ``handshakes`` handshakes, ``BATCH`` per turn of the event loop (fewer if
        ``stop`` is set first)."""
        for first in range(0, handshakes, BATCH):
            if stop is not None and stop.is_set():
                return
            for _ in range(min(BATCH, handshakes - first)):
                self.start_one()
            await asyncio.sleep(PAUSE)

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
    stop = asyncio.Event()
    try:
        async with Service(victim) as service:
            flooding = asyncio.create_task(flood.run(2000, stop))
            # Well past what used to fill max_connections, and still going.
            await wait_until(lambda: victim.stats().datagrams.accepted >= 110, 10)
            held = victim.stats().links
            refused = await served(trusted, victim)
            ongoing = not flooding.done()
            stop.set()
            await flooding
        assert_unharmed(loop_errors, service)
    finally:
        flood.close()
    figures = (
        f"{flood.started} handshakes ({flood.bytes_sent} bytes) held {held} links; "
        f"the trusted peer: {refused or 'served'}; refusals {victim.stats().refusals}"
    )
    assert not refused and ongoing, figures
    assert held <= victim.config.max_half_open_per_address, figures
    assert victim.stats().refusals["half_open_per_address"] >= 110 - held, figures


async def test_the_global_limit_holds_against_eight_addresses(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint(max_half_open=40, max_half_open_per_address=8)
    member = await make_endpoint(local_ip="127.0.0.10")
    newcomer = await make_endpoint(local_ip="127.0.0.11")
    async with Service(victim) as service:
        connection = await member.connect_to(victim.local_addr)  # established before the flood
        floods = [await flood_from(f"127.0.0.{n}", victim.local_addr) for n in range(2, 10)]
        try:
            await asyncio.gather(*(flood.run(10) for flood in floods))  # 80 handshakes in all
            await wait_until(lambda: victim.stats().datagrams.accepted == 1 + 80, 5)
            stats = victim.stats()
            held = half_open(victim)
            sources = Counter(link.remote_addr[0] for link in victim._links if link in victim._half_open)
            answer = await connection.request(b"still here", timeout=2)
            refused = await served(newcomer, victim)  # the table still full, a ninth address
        finally:
            for flood in floods:
                flood.close()
    assert_unharmed(loop_errors, service)
    refusals = stats.refusals
    figures = f"{held} half-open links {dict(sources)}, refusals {refusals}; newcomer {refused or 'served'}"
    assert held == stats.half_open == 40 and max(sources.values()) <= 8, figures
    assert refusals.get("half_open", 0) + refusals["half_open_evicted"] == 80 - 40, figures
    assert "half_open_per_address" not in refusals, figures  # no address reached its own 8
    assert answer == digest(b"still here") and not connection.is_closed  # never evicted
    assert not refused, figures  # made room for: it came from a source holding nothing


async def test_half_open_handshakes_take_only_the_places_left(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint(max_connections=4)
    members = [await make_endpoint(local_ip=f"127.0.0.{n}") for n in (2, 3)]
    newcomers = [await make_endpoint(local_ip=f"127.0.0.{n}") for n in (4, 5)]
    flood = await flood_from("127.0.0.1", victim.local_addr)
    try:
        async with Service(victim) as service:
            connections = [await member.connect_to(victim.local_addr) for member in members]
            await flood.run(20)
            await wait_until(lambda: victim.stats().datagrams.accepted == 2 + 20, 5)
            flooded = victim.stats()
            refused = [await served(newcomer, victim) for newcomer in newcomers]
            answers = [await connection.request(b"still here", timeout=2) for connection in connections]
            after = victim.stats()
    finally:
        flood.close()
    assert_unharmed(loop_errors, service)
    figures = f"flooded {flooded}; newcomers {refused}; after {after}"
    assert flooded.half_open == 2 and flooded.links == 4, figures  # the two places left, no more
    assert flooded.refusals["max_connections"] == 18, figures
    assert refused == ["", ""] and after.connections == 4 and after.links == 4, figures
    assert after.refusals["half_open_evicted"] == 2, figures
    assert answers == [digest(b"still here")] * 2


async def test_half_open_handshakes_end_after_handshake_timeout(make_endpoint: MakeEndpoint) -> None:
    victim = await make_endpoint(handshake_timeout=0.5)
    flood = await flood_from("127.0.0.1", victim.local_addr)
    try:
        loop = asyncio.get_running_loop()
        await flood.run(8)
        await wait_until(lambda: victim.stats().half_open == 8, 5)
        started = loop.time()
        await wait_until(lambda: victim.stats().links == 0, 3)
        took = loop.time() - started
    finally:
        flood.close()
    assert victim.stats().half_open == 0 and took < 1.5, took


async def test_a_dial_of_our_own_keeps_connect_timeout(make_endpoint: MakeEndpoint) -> None:
    dialler = await make_endpoint(handshake_timeout=0.2, connect_timeout=1.0)
    async with Sinks(["127.0.0.2"], per_host=1) as sinks:  # nobody answers there
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(qp2p.ConnectionError, match="within 1.0 s"):
            await dialler.connect_to(sinks.addrs[0])
        took = loop.time() - started
    assert took >= 0.95, took


async def test_without_stateless_retry_a_retry_comes_past_the_threshold(make_endpoint: MakeEndpoint) -> None:
    victim = await make_endpoint(stateless_retry=False, retry_threshold=4)
    honest = await make_endpoint(local_ip="127.0.0.2")
    await honest.connect_to(victim.local_addr)
    assert victim.stats().datagrams.retries == 0  # a quiet node pays no extra round trip
    flood = await flood_from("127.0.0.1", victim.local_addr)
    try:
        await flood.run(4)  # below the threshold: opened at once, no Retry
        await wait_until(lambda: victim.stats().half_open == 4, 5)
        assert (flood.retried, victim.stats().datagrams.retries) == (0, 0)
        await flood.run(4)  # at the threshold: each must prove its address first
        await wait_until(lambda: flood.retried == 4 and victim.stats().half_open == 8, 5)
        late = await make_endpoint(local_ip="127.0.0.3")
        await late.connect_to(victim.local_addr)  # through a Retry of its own
    finally:
        flood.close()
    assert victim.stats().datagrams.retries == 5 and victim.stats().datagrams.bad_tokens == 0


def test_half_open_sources_and_reasons() -> None:
    table = HalfOpen[str](per_source=2)
    table.add("a", "2001:db8::1")
    table.add("b", "2001:db8::ffff:2")  # the same /64
    assert table.refusal("2001:db8::3", 3) == "half_open_per_address"
    assert table.refusal("2001:db8:0:1::1", 3) is None  # another /64
    table.add("c", "192.0.2.1")
    assert table.refusal("192.0.2.2", 3) == "half_open" and len(table) == 3
    table.discard("a")
    table.discard("a")  # twice is harmless
    assert table.refusal("2001:db8::3", 3) is None and "a" not in table and "b" in table
    assert table.evictable("2001:db8::3") is None  # not full
    table.add("d", "192.0.2.1")
    assert table.evictable("2001:db8::3") == "c" and table.evictable("192.0.2.1") is None


@pytest.mark.parametrize(
    "settings",
    [
        {"max_half_open": 0},
        {"max_half_open_per_address": 0},
        {"max_half_open": 4, "max_half_open_per_address": 5},
        {"retry_threshold": -1},
        {"max_half_open": 10, "retry_threshold": 11},
        {"handshake_timeout": 0},
    ],
)
def test_half_open_settings_are_checked(settings: dict[str, int]) -> None:
    with pytest.raises(qp2p.ConfigError):
        qp2p.Config(**settings)
