"""Live endpoints on 127.0.0.1 under attack while a well-behaved peer uses them.

A plain UDP socket floods an endpoint with random datagrams and mutations of real QUIC packets;
a rogue peer that completed a real handshake writes garbage on raw QUIC streams. The endpoint
must drop or refuse all of it, count it, deliver none of it, and keep serving the good peer
(every message and request intact), and the rogue too once it behaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from rogue import RoguePeer
from waiting import wait_until

import qp2p
from qp2p import wire
from qp2p._speedups import framing, packet
from qp2p.session import CONTROL_SLACK, FRAME_OVERHEAD
from qp2p.transport import CID_LENGTH, MIN_INITIAL_SIZE, SUPPORTED_VERSIONS, TransportStats

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
KiB = 1 << 10
# Transport counters of datagrams that reach no connection; routed ones are only "received".
UNROUTED = ("malformed", "unroutable", "accepted", "version_negotiations", "retries", "bad_tokens")
BURST = 50  # garbage datagrams sent before waiting for the endpoint to count them
BURSTS = 100
INITIAL_BITS, HANDSHAKE_BITS = 0, 2  # long-header type bits of QUIC version 1


def digest(data: bytes | bytearray) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the event loop reports while the test runs: exceptions that escaped a callback such
    as the socket's ``datagram_received``, which asyncio only logs."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


class Service:
    """The application on the attacked endpoint: answers requests with SHA-256 of their data and
    keeps the messages. ``failure`` is what ended its loop early, if anything did."""

    def __init__(self, endpoint: qp2p.Endpoint) -> None:
        self.endpoint = endpoint
        self.messages: list[qp2p.Message] = []
        self.requests: list[qp2p.Message] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async for message in self.endpoint.incoming_messages():
            if message.is_request:
                self.requests.append(message)
                await message.reply(digest(message.data))
            else:
                self.messages.append(message)

    @property
    def failure(self) -> BaseException | None:
        task = self._task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    def received_from(self, endpoint: qp2p.Endpoint) -> list[bytes]:
        return sorted(bytes(m.data) for m in self.messages if m.src == endpoint.local_addr)

    async def __aenter__(self) -> Service:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait([self._task])
        if not self._task.cancelled():
            self._task.exception()  # retrieved, so asyncio does not log it again


class GoodPeer:
    """A well-behaved peer: numbered messages of varied sizes and, every fifth, a request whose
    answer it checks; two in twenty (a message and a request) are above the lane threshold."""

    def __init__(self, connection: qp2p.Connection, seed: int, large: int) -> None:
        self.connection = connection
        self.sent: list[bytes] = []
        self.answered = 0
        self._large = large
        self._rng = random.Random(seed)

    def _payload(self, number: int) -> bytes:
        size = self._large if number % 20 in (18, 19) else self._rng.randrange(1, 2000)
        return number.to_bytes(4, "big") + self._rng.randbytes(size)

    async def run(self, stop: asyncio.Event, at_least: int, at_most: int) -> None:
        """Send until ``stop`` is set, but at least ``at_least`` and at most ``at_most`` times."""
        for number in range(at_most):
            if stop.is_set() and number >= at_least:
                return
            data = self._payload(number)
            if number % 5 == 4:
                assert await self.connection.request(data, timeout=5) == digest(data)
                self.answered += 1
            else:
                await self.connection.send(data)
                self.sent.append(data)
            await asyncio.sleep(0.002)


async def still_served(connection: qp2p.Connection) -> bool:
    """Whether the attacked endpoint still answers a request from ``connection``'s side."""
    try:
        return await connection.request(b"still there?", timeout=1) == digest(b"still there?")
    except qp2p.RequestTimeout:
        return False


def assert_unharmed(loop_errors: list[dict[str, Any]], service: Service) -> None:
    """The event loop caught no stray exception and the victim's service is still running."""
    assert not loop_errors, [context.get("exception") for context in loop_errors]
    assert service.failure is None


# ---- a flood of datagrams ----------------------------------------------------------------------


def tap(endpoint: qp2p.Endpoint, seen: list[bytes]) -> None:
    """Record every datagram ``endpoint`` receives until ``untap``, then let it through."""
    transport = endpoint._transport
    assert transport is not None
    receive = transport.datagram_received

    def record(data: bytes, addr: tuple[object, ...]) -> None:
        seen.append(data)
        receive(data, addr)

    transport.datagram_received = record  # type: ignore[method-assign]


def untap(endpoint: qp2p.Endpoint) -> None:
    del endpoint._transport.datagram_received  # type: ignore[union-attr]


def long_header(rng: random.Random, version: int, type_bits: int, size: int) -> bytes:
    """A long-header packet of ``size`` bytes for random connection ids, with random contents."""
    dcid, scid = rng.randbytes(rng.randrange(8, 21)), rng.randbytes(rng.randrange(21))
    first = 0xC0 | type_bits << 4 | rng.randrange(16)
    head = (
        bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
    )
    if type_bits == INITIAL_BITS:
        head += b"\0"  # no token
    length = size - len(head) - 2
    return head + (0x4000 | length).to_bytes(2, "big") + rng.randbytes(length)


def garbage(rng: random.Random, captured: list[bytes]) -> bytes:
    """One datagram of junk: random bytes; an Initial of full size, a Handshake, an Initial too
    small or a 1-RTT packet for an unknown connection id; an unknown version; a real packet cut
    inside its header or with a few bytes changed."""
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randbytes(rng.randrange(1500))
    if kind == 1:
        return long_header(rng, packet.QUIC_V1, INITIAL_BITS, rng.randrange(MIN_INITIAL_SIZE, 1400))
    if kind == 2:
        return long_header(rng, packet.QUIC_V1, HANDSHAKE_BITS, rng.randrange(MIN_INITIAL_SIZE, 1400))
    if kind == 3:
        return long_header(rng, packet.QUIC_V1, INITIAL_BITS, rng.randrange(100, MIN_INITIAL_SIZE))
    if kind == 4:
        return bytes((0x40 | rng.randrange(64),)) + rng.randbytes(CID_LENGTH + rng.randrange(20, 1200))
    if kind == 5:
        return long_header(rng, rng.choice((0x1A2A3A4A, 0xFF00001D, 3)), INITIAL_BITS, MIN_INITIAL_SIZE)
    if kind == 6:
        longs = [datagram for datagram in captured if datagram[0] & 0x80]
        return rng.choice(longs)[: rng.randrange(1, 60)]
    mutated = bytearray(rng.choice(captured))
    for _ in range(rng.randrange(1, 5)):
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    return bytes(mutated)


def classify(datagram: bytes, routes: set[bytes], retry: bool) -> str:
    """Where the endpoint's transport must put ``datagram``, by its documented rules: the name
    of the counter it adds to, or "routed". An Initial that opens a connection makes its
    connection id route from then on; with stateless retry none does (no garbage token is valid)."""
    try:
        header = packet.peek(datagram, CID_LENGTH)
    except qp2p.MalformedPacket:
        return "malformed"
    if header.destination_cid in routes:
        return "routed"
    if header.is_long_header and len(datagram) >= MIN_INITIAL_SIZE:
        if header.version not in SUPPORTED_VERSIONS and header.packet_type != packet.VERSION_NEGOTIATION:
            return "version_negotiations"
        if header.packet_type == packet.INITIAL:
            if retry:
                return "bad_tokens" if header.token else "retries"
            routes.add(header.destination_cid)
            return "accepted"
    return "unroutable"


def unrouted(victim: qp2p.Endpoint, start: TransportStats) -> dict[str, int]:
    """How much each counter of datagrams that reached no connection grew since ``start``."""
    now = victim.stats().datagrams
    return {name: getattr(now, name) - getattr(start, name) for name in UNROUTED}


async def flood(
    victim: qp2p.Endpoint, captured: list[bytes], rng: random.Random, bursts: int
) -> Counter[str]:
    """Send ``bursts`` bursts of garbage from a plain UDP socket, each counted by the victim
    before the next (so the kernel drops none); returns what was sent, by expected fate."""
    transport = victim._transport
    assert transport is not None
    start = dataclasses.replace(victim.stats().datagrams)
    sent: Counter[str] = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rogue:
        rogue.bind(("127.0.0.1", 0))
        for _ in range(bursts):
            routes = set(transport._routes)
            for _ in range(BURST):
                datagram = garbage(rng, captured)
                sent[classify(datagram, routes, victim.config.stateless_retry)] += 1
                rogue.sendto(datagram, victim.local_addr)
            await counted(victim, start, {name: sent[name] for name in UNROUTED})
    assert victim.stats().datagrams.received - start.received >= sum(sent.values())
    return sent


async def counted(victim: qp2p.Endpoint, start: TransportStats, expected: dict[str, int]) -> None:
    """Wait (5 s at most) until the victim's counters grew by ``expected``, then insist on it."""
    with contextlib.suppress(TimeoutError):
        await wait_until(lambda: unrouted(victim, start) == expected)
    assert unrouted(victim, start) == expected


@pytest.mark.parametrize("stateless_retry", [True, False], ids=["retry", "no-retry"])
async def test_flood_of_garbage_datagrams_while_serving_a_good_peer(
    make_endpoint: MakeEndpoint, loop_errors: list[dict[str, Any]], stateless_retry: bool
) -> None:
    victim = await make_endpoint(stateless_retry=stateless_retry)
    captured: list[bytes] = []
    tap(victim, captured)  # the good peer's handshake and first messages: real packets to mutate
    good = await make_endpoint()
    async with Service(victim) as service:
        connection = await good.connect_to(victim.local_addr)
        warm_up = [bytes([i]) * (i * 150 + 1) for i in range(8)]
        for data in warm_up:
            await connection.send(data)
        await wait_until(lambda: len(service.messages) == len(warm_up))
        untap(victim)
        routes = victim.stats().routes
        peer = GoodPeer(connection, seed=1, large=100 * KiB)
        stop = asyncio.Event()
        traffic = asyncio.create_task(peer.run(stop, at_least=50, at_most=10_000))
        try:
            sent = await flood(victim, captured, random.Random(2), bursts=BURSTS)
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await traffic
        await wait_until(lambda: len(service.messages) == len(warm_up) + len(peer.sent))
        # With stateless retry the garbage left no state; without, the rogue's address has a
        # link, not established, holding what its Initials opened until it times out.
        stats = victim.stats()
        state = (stats.connections, stats.links == 1, stats.routes == routes)
        # A newcomer is served after the flood; from an address of its own, since without
        # retry the flood's handshakes fill its address's max_half_open_per_address.
        late = await make_endpoint(local_ip="127.0.0.2")
        assert await still_served(await late.connect_to(victim.local_addr))
    assert_unharmed(loop_errors, service)
    assert service.received_from(good) == sorted(warm_up + peer.sent)
    assert peer.answered >= 10 and len(service.requests) == peer.answered + 1
    assert sum(sent.values()) == BURSTS * BURST
    fates = set(UNROUTED) - ({"accepted"} if stateless_retry else {"retries", "bad_tokens"})
    assert all(sent[name] for name in fates)  # every kind of garbage was there
    assert state == ((1, True, True) if stateless_retry else (1, False, False))


# ---- a rogue peer on a real connection ---------------------------------------------------------


class Rogue:
    """A peer with a real, established QUIC connection that writes raw bytes on QUIC streams."""

    def __init__(self, connection: qp2p.Connection) -> None:
        link = connection._current
        assert link is not None
        self.link = link
        self.quic = link.session.quic

    def open(self, bidirectional: bool = False) -> int:
        return self.quic.get_next_available_stream_id(is_unidirectional=not bidirectional)

    def write(self, stream_id: int, data: bytes, end: bool) -> None:
        self.quic.send_stream_data(stream_id, data, end_stream=end)

    def stream(self, data: bytes, end: bool, bidirectional: bool = False) -> None:
        self.write(self.open(bidirectional), data, end)

    def flush(self) -> None:
        self.link.transmit()


def header(data_len: int, flag: int = 0, version: int = 1) -> bytes:
    """A frame header with any field value, even those the encoder refuses."""
    return struct.pack(">HIB2x", version, data_len, flag)


def control(tag: int, fields: bytes = b"") -> bytes:
    return framing.encode_frame(framing.FLAG_CONTROL, tag.to_bytes(4, "little") + fields)


MAX_MESSAGE = 64 * KiB
LANE_THRESHOLD = KiB
# Streams the victim must stop reading: (bytes, whether the stream ends after them).
REFUSED = [
    (b"\xff" + random.Random(3).randbytes(200), True),  # not a frame: version 0xffxx
    (b"\xfe" + random.Random(4).randbytes(50), False),
    (header(5, version=2) + b"hello", True),
    (header(5, flag=9) + b"hello", False),
    (header(MAX_MESSAGE + 1), False),
    (header(0xFFFFFFFF), False),
    (header(0), True),  # an empty user message
    (header(100) + bytes(50), True),  # a lane's frame cut short
    (header(5000) + bytes(3000), True),  # a large message cut short
    (header(5)[:5], True),  # a header cut short
]
# Frames the victim must drop one by one, on a lane it keeps reading.
REJECTED = [
    control(4),  # a reserved tag
    control(19),
    control(0xFFFFFFFF),
    control(16, b"abc"),  # a Hello cut short
    control(1, (2).to_bytes(4, "little") + bytes(6)),  # an address of family 2
    control(3, b"\x02"),  # a boolean that is 2
    control(0, b"\0"),  # a byte after the end
    framing.encode_frame(framing.FLAG_REQUEST, b""),  # requests and responses without an id
    framing.encode_frame(framing.FLAG_REQUEST, b"\x01\x02\x03"),
    framing.encode_frame(framing.FLAG_RESPONSE, b"ab"),
]


async def test_rogue_streams_are_refused_and_everyone_is_still_served(
    make_endpoint: MakeEndpoint, loop_errors: list[dict[str, Any]]
) -> None:
    victim = await make_endpoint(
        lane_threshold=LANE_THRESHOLD, max_message_size=MAX_MESSAGE, receive_window=MAX_MESSAGE
    )
    good, rogue_endpoint = await make_endpoint(), await make_endpoint()
    expected = (len(REFUSED), len(REJECTED) + 1)  # and the large control frame
    async with Service(victim) as service:
        peer = GoodPeer(await good.connect_to(victim.local_addr), seed=5, large=20 * KiB)
        stop = asyncio.Event()
        traffic = asyncio.create_task(peer.run(stop, at_least=40, at_most=10_000))
        try:
            connection = await rogue_endpoint.connect_to(victim.local_addr)
            await connection.send(b"before the attack")
            await wait_until(lambda: service.received_from(rogue_endpoint))
            (victim_side,) = [c for c in victim.connections() if c.remote_addr == rogue_endpoint.local_addr]
            assert victim_side._current is not None
            session = victim_side._current.session
            rogue = Rogue(connection)
            for data, end in REFUSED:
                rogue.stream(data, end)
            rogue.stream(b"".join(REJECTED), end=False)
            rogue.stream(control(99, bytes(2 * LANE_THRESHOLD)), end=True)  # an unknown tag, large
            rogue.flush()
            await wait_until(lambda: (session.refused_streams, session.rejected_frames) == expected)
            await connection.send(b"after the attack")
            await victim_side.send(b"back to the rogue")
            async with asyncio.timeout(5):
                reply = await anext(rogue_endpoint.incoming_messages())  # type: ignore[call-overload]
            await wait_until(lambda: len(service.received_from(rogue_endpoint)) == 2)
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await traffic
        await wait_until(lambda: len(service.received_from(good)) == len(peer.sent))
    assert_unharmed(loop_errors, service)
    assert reply.data == b"back to the rogue"
    assert service.received_from(rogue_endpoint) == [b"after the attack", b"before the attack"]
    assert [r.src for r in service.requests] == [good.local_addr] * peer.answered
    assert service.received_from(good) == sorted(peer.sent) and peer.answered >= 8
    assert (session.refused_streams, session.rejected_frames) == expected


async def test_rogue_bidirectional_stream_costs_it_the_connection(
    make_endpoint: MakeEndpoint, loop_errors: list[dict[str, Any]]
) -> None:
    victim = await make_endpoint()
    rogue_endpoint, good = await make_endpoint(), await make_endpoint()
    async with Service(victim) as service:
        good_connection = await good.connect_to(victim.local_addr)
        connection = await rogue_endpoint.connect_to(victim.local_addr)
        rogue = Rogue(connection)
        rogue.quic._remote_max_streams_bidi = 1  # ignore the victim's limit of 0, as a hostile stack would
        rogue.stream(
            framing.encode_frame(framing.FLAG_USER, b"on a bidirectional stream"),
            end=True,
            bidirectional=True,
        )
        rogue.flush()
        async with asyncio.timeout(5):
            await connection.wait_closed()  # a QUIC protocol violation: the victim closed the connection
        assert await still_served(good_connection)
    assert_unharmed(loop_errors, service)
    assert service.received_from(rogue_endpoint) == []
    assert len(service.requests) == 1


# ---- regressions: each of these once broke the victim -------------------------------------


async def rogue_and_good_peer(
    make_endpoint: MakeEndpoint, **victim_settings: Any
) -> tuple[qp2p.Endpoint, qp2p.Endpoint, qp2p.Connection, qp2p.Connection]:
    """A victim endpoint, a rogue connected to it, and a good peer connected to it."""
    victim = await make_endpoint(**victim_settings)
    rogue_endpoint, good = await make_endpoint(), await make_endpoint()
    rogue_connection = await rogue_endpoint.connect_to(victim.local_addr)
    return victim, rogue_endpoint, rogue_connection, await good.connect_to(victim.local_addr)


async def test_stream_cancelled_with_huge_units(
    make_endpoint: MakeEndpoint, loop_errors: list[dict[str, Any]]
) -> None:
    victim, rogue_endpoint, connection, good = await rogue_and_good_peer(make_endpoint)
    async with Service(victim) as service:
        rogue = Rogue(connection)
        rogue.link.session.send_control(wire.StreamCancelled(3, 2**64 - 1))
        rogue.flush()
        await connection.send(b"after the cancellation")
        await wait_until(lambda: service.failure is not None or service.received_from(rogue_endpoint))
        served = await still_served(good)
    assert_unharmed(loop_errors, service)
    assert served


async def test_stream_cancelled_naming_its_own_lane(
    make_endpoint: MakeEndpoint, loop_errors: list[dict[str, Any]]
) -> None:
    victim, rogue_endpoint, connection, good = await rogue_and_good_peer(make_endpoint)
    async with Service(victim) as service:
        rogue = Rogue(connection)
        lane = rogue.open()
        rogue.write(lane, wire.encode(wire.StreamCancelled(lane, 0)), end=True)
        rogue.flush()
        await connection.send(b"after the cancellation")
        await wait_until(lambda: service.received_from(rogue_endpoint))
        served = await still_served(good)
    assert_unharmed(loop_errors, service)
    assert served


async def test_waiting_large_stream_with_bytes_after_its_frame(
    make_endpoint: MakeEndpoint, loop_errors: list[dict[str, Any]]
) -> None:
    victim, rogue_endpoint, connection, good = await rogue_and_good_peer(
        make_endpoint, lane_threshold=LANE_THRESHOLD, large_message_slots=1
    )
    rogue = Rogue(connection)
    rogue.stream(framing.encode_frame(framing.FLAG_USER, b"A" * 2000), end=True)  # takes the only slot
    waiting = rogue.open()
    rogue.write(waiting, framing.encode_frame(framing.FLAG_USER, b"B" * 2000), end=False)
    async with asyncio.timeout(5):
        await rogue.link.drain()  # the victim has it all: the frame ends a read of its own
        rogue.write(waiting, b"!", end=True)  # one byte too many, in a later packet
        await rogue.link.drain()  # read too; nobody took a message yet
    async with Service(victim) as service:  # taking the first message frees the slot
        await wait_until(lambda: service.failure is not None or service.received_from(rogue_endpoint))
        served = await still_served(good)
    assert_unharmed(loop_errors, service)
    assert served


async def test_rogue_ignoring_credit_is_held_to_the_receive_window(
    make_endpoint: MakeEndpoint, loop_errors: list[dict[str, Any]]
) -> None:
    window = 64 * KiB
    victim = await make_endpoint(receive_window=window, lane_threshold=LANE_THRESHOLD)
    connection = await (await make_endpoint()).connect_to(victim.local_addr)
    rogue = Rogue(connection)
    lane = rogue.open()
    frame = framing.encode_frame(framing.FLAG_USER, bytes(1000))
    async with asyncio.timeout(10):
        for _ in range(32):  # a window's worth at a time, each acknowledged before the next
            rogue.write(lane, frame * (window // len(frame)), end=False)
            await rogue.link.drain()
    assert not loop_errors
    cost = len(frame) + FRAME_OVERHEAD  # what one frame counts against the window
    # Held to the window (a sender may pass it by one frame, and by control frames in the
    # making), then cut off for cheating.
    assert victim.stats().queued_messages * cost <= window + LANE_THRESHOLD + 2 * cost + CONTROL_SLACK
    await connection.wait_closed()


async def test_a_peer_claiming_a_huge_lane_threshold_still_gets_large_messages_on_their_own_stream(
    make_endpoint: MakeEndpoint, loop_errors: list[dict[str, Any]]
) -> None:
    """A Hello claiming lanes take frames of 2 GiB: we hold it to our own threshold, so a
    200 KiB message goes on a stream of its own (before, the send waited for credit forever)."""
    victim = await make_endpoint(send_timeout=5.0)
    payload = bytes(range(256)) * 800
    async with RoguePeer(victim.local_addr, hello_fields={"lane_threshold": 1 << 31}) as rogue:
        await wait_until(lambda: victim.connection(rogue.fingerprint) is not None)
        connection = victim.connection(rogue.fingerprint)
        assert connection is not None
        await connection.send(payload)
        await wait_until(lambda: payload in rogue.user_data())
    assert not loop_errors


async def test_control_messages_for_a_peer_withholding_flow_control_are_dropped_not_queued(
    make_endpoint: MakeEndpoint, loop_errors: list[dict[str, Any]]
) -> None:
    """Our own control messages to a peer that never raises QUIC flow control: once it leaves a
    window's worth unacknowledged, Connection.send_control drops them and says so."""
    window = 256 * KiB
    victim = await make_endpoint(receive_window=window)
    padding = wire.PeersResponse(tuple(((f"192.0.2.{n}", 1), "ab" * 32) for n in range(12)))
    async with RoguePeer(victim.local_addr, flow_window=16 * KiB) as rogue:
        await wait_until(lambda: victim.connection(rogue.fingerprint) is not None)
        connection = victim.connection(rogue.fingerprint)
        assert connection is not None
        sent = 0
        for _ in range(2000):  # about 2 MB offered, eight windows
            if not connection.send_control(padding):
                break
            sent += 1
        link = connection.current_link
        assert link is not None
        assert not connection.send_control(padding)
        assert victim.stats().refusals["control_backlog"] >= 2
        # The window, the lane-frame and control slack, and the last message.
        assert link.session.unacked <= window + 64 * KiB + 100 + 2 * 16 * KiB + len(wire.encode(padding))
        assert sent < 2000
    assert not loop_errors
