"""Memory scopes: the accountant on its own, then sessions that reserve in it before they hold.

Sessions are the sans-IO ones of test_session.py (two real aioquic connections joined in
memory); a bare aioquic client plays the peer that breaks the rules.
"""

from __future__ import annotations

import pytest
from test_session import CLIENT_ADDR, SERVER_ADDR, Pair, hello, raw_client_and_session

from qp2p import session as s
from qp2p import wire
from qp2p._aioquic_hooks import CheckedQuicConnection
from qp2p._memory import MemoryBudget, Reservation, address_key
from qp2p._speedups import framing
from qp2p.errors import MessageTooLarge

KiB = 1 << 10
MiB = 1 << 20
WINDOW = hello(2).receive_window  # the server's window in these tests
FOOTPRINT = 3 * (WINDOW + hello(2).lane_threshold + s.FRAME_OVERHEAD + framing.HEADER_SIZE + s.CONTROL_SLACK)
PEER = "ab" * 32
ANSWER = wire.PeersResponse(tuple(((f"192.0.2.{n}", 1), PEER) for n in range(12)))  # about a kilobyte


def budget(limit: int = 64 * MiB, address: int = 64 * MiB, peer: int = 64 * MiB) -> MemoryBudget:
    return MemoryBudget(limit, address, peer)


def server_memory(memory: MemoryBudget, host: str = CLIENT_ADDR[0]) -> Reservation:
    return memory.open(host, s.link_memory(hello(2)))


# ---- the accountant ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::9%eth0", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
    ],
)
def test_an_ipv6_64_is_one_source_address(host: str, key: str) -> None:
    assert address_key(host) == key


def test_a_reservation_fits_every_scope_or_none() -> None:
    memory = budget(limit=10 * MiB, address=4 * MiB)
    first = memory.open("192.0.2.1", 8 * MiB)
    second = memory.open("192.0.2.1", 8 * MiB)
    assert first.reserve(3 * MiB) is None
    assert second.reserve(2 * MiB) == "address"  # 3 + 2 > 4: refused, and nothing reserved
    assert (second.held, memory.endpoint.used) == (0, 3 * MiB)
    other = memory.open("192.0.2.2", 8 * MiB)
    assert other.reserve(4 * MiB) is None
    assert other.reserve(MiB) == "address"
    third = memory.open("192.0.2.3", 8 * MiB)
    assert third.reserve(4 * MiB) == "endpoint"  # 7 of 10 are taken
    assert third.reserve(9 * MiB) == "link"
    assert memory.stats().refused == {"memory_address": 2, "memory_endpoint": 1, "memory_link": 1}


def test_the_peer_scope_counts_every_link_of_a_peer() -> None:
    memory = budget(peer=5 * MiB)
    one, two = memory.open("192.0.2.1", 8 * MiB), memory.open("198.51.100.1", 8 * MiB)
    assert one.reserve(MiB) is None
    one.attach_peer(PEER)  # what it held before counts from now on
    two.attach_peer(PEER)
    assert two.reserve(3 * MiB) is None
    assert two.reserve(2 * MiB) == "peer"
    assert memory.stats().largest_peer == 4 * MiB


def test_scopes_go_once_nothing_holds_them() -> None:
    memory = budget()
    reservation = memory.open("192.0.2.1", MiB)
    reservation.attach_peer(PEER)
    assert reservation.reserve(KiB) is None
    assert (memory.stats().addresses, memory.stats().peers) == (1, 1)
    reservation.close()
    stats = memory.stats()
    assert (stats.used, stats.addresses, stats.peers) == (0, 0, 0)


# ---- sessions ------------------------------------------------------------------------------


def run_out(pair: Pair) -> None:
    """Let the closing and draining periods pass: both sessions terminate."""
    for _ in range(10):
        pair.pump()
        pair.now += 1.0
        for session in (pair.client, pair.server):
            if session.get_timer() is not None:
                session.handle_timer(pair.now)


class Clock:
    """Time for a bare client and a server session, moved on at every exchange (aioquic paces
    and acknowledges by the clock)."""

    def __init__(self) -> None:
        self.now = 1.0

    def exchange(
        self, client: CheckedQuicConnection, server: s.Session, events: list[s.SessionEvent]
    ) -> None:
        for _ in range(4):
            self.now += 0.01
            for datagram, _ in client.datagrams_to_send(self.now):
                server.receive_datagram(datagram, CLIENT_ADDR, self.now)
            for datagram, _ in server.datagrams_to_send(self.now):
                client.receive_datagram(datagram, SERVER_ADDR, self.now)
            while (event := server.next_event()) is not None:
                events.append(event)


def test_a_session_reserves_its_window_and_gives_it_back_when_over() -> None:
    memory = budget()
    pair = Pair(hello(1), hello(2), server_memory=server_memory(memory))
    assert memory.endpoint.used == FOOTPRINT and memory.stats().peers == 1
    pair.client.close()
    run_out(pair)
    assert pair.server.terminated
    assert (memory.endpoint.used, memory.stats().addresses, memory.stats().peers) == (0, 0, 0)


def test_messages_not_taken_stay_reserved_after_the_connection_ends() -> None:
    memory = budget()
    pair = Pair(hello(1), hello(2), server_memory=server_memory(memory))
    pair.client.send_frame(framing.FLAG_USER, bytes(1000))
    pair.pump()
    (frame,) = pair.take("server", s.FrameReceived)
    pair.server.close()
    run_out(pair)
    assert pair.server.terminated and memory.endpoint.used == frame.cost  # the reader still has to take it
    pair.server.consumed(frame)
    assert (memory.endpoint.used, memory.stats().addresses) == (0, 0)


def test_a_window_that_does_not_fit_is_halved() -> None:
    memory = budget(address=FOOTPRINT * 3 // 4)
    pair = Pair(hello(1), hello(2), server_memory=server_memory(memory))
    (up,) = pair.take("client", s.Established)
    assert up.peer.receive_window == WINDOW // 2 and pair.client.credit == WINDOW // 2
    # The largest message the server takes is what its address could still hold.
    assert up.peer.max_message_size == memory.address_limit - memory.endpoint.used
    with pytest.raises(MessageTooLarge):
        pair.client.start_large(framing.FLAG_USER, bytes(up.peer.max_message_size + 1))


def test_no_room_for_the_smallest_window_refuses_the_connection() -> None:
    memory = budget(address=2 * s.MIN_WINDOW)
    pair = Pair(hello(1), hello(2), server_memory=server_memory(memory))
    closing = pair.take("client", s.Closing)
    assert [c.error_code for c in closing] == [s.CLOSE_NO_MEMORY] and not pair.client.established
    assert memory.stats().refused == {"memory_address": 1}


def test_an_unfinished_lane_frame_is_held_to_the_credit() -> None:
    """Attack 1: a lane frame whose header declares 60 MiB, its body sent and never finished;
    before, those bytes cost nothing until complete."""
    clock = Clock()
    client, server, events = raw_client_and_session()
    lane = client.get_next_available_stream_id(True)
    client.send_stream_data(lane, wire.encode(hello(1)) + framing.encode_frame(framing.FLAG_USER, b"first"))
    clock.exchange(client, server, events)
    client.send_stream_data(lane, framing.encode_header(framing.FLAG_USER, 60 * MiB))
    for _ in range(4 * WINDOW // (64 * KiB)):
        client.send_stream_data(lane, bytes(64 * KiB))
        clock.exchange(client, server, events)
    closing = [e for e in events if isinstance(e, s.Closing)]
    assert [c.error_code for c in closing] == [s.CLOSE_PROTOCOL]
    assert "beyond the credit" in closing[0].reason


def test_a_large_message_reserves_its_buffer_and_waits_for_the_peers_own() -> None:
    memory = budget(peer=FOOTPRINT + 5 * MiB)
    pair = Pair(hello(1), hello(2), server_memory=server_memory(memory))
    first, second = b"a" * (3 * MiB), b"b" * (3 * MiB)
    pair.client.start_large(framing.FLAG_USER, first)
    pair.client.start_large(framing.FLAG_USER, second)
    for _ in range(40):
        pair.pump(settle=False)
    (frame,) = pair.take("server", s.FrameReceived)  # the second does not fit beside it: it waits
    assert frame.data == first and memory.endpoint.used == FOOTPRINT + len(first)
    pair.server.consumed(frame)
    for _ in range(40):
        pair.pump(settle=False)
    (frame,) = pair.take("server", s.FrameReceived)
    assert frame.data == second and not pair.take("client", s.LargeSendFailed)


def test_a_large_message_the_address_cannot_hold_is_refused_with_a_reason() -> None:
    """Two connections from one address: the second's message does not fit beside the first's,
    so it is refused (typed, on both sides) and the connection goes on."""
    memory = budget(address=2 * FOOTPRINT + 5 * MiB)
    one = Pair(hello(1), hello(2), server_memory=server_memory(memory))
    two = Pair(hello(1), hello(2), server_memory=server_memory(memory))
    one.client.start_large(framing.FLAG_USER, bytes(3 * MiB))
    for _ in range(40):
        one.pump(settle=False)
    (held,) = one.take("server", s.FrameReceived)
    stream_id = two.client.start_large(framing.FLAG_USER, bytes(3 * MiB))
    for _ in range(40):
        two.pump(settle=False)
    (refused,) = two.take("server", s.StreamRefused)
    assert refused.stream_id == stream_id and "address" in str(refused.error)
    (failed,) = two.take("client", s.LargeSendFailed)
    assert "no memory" in failed.reason
    two.client.send_frame(framing.FLAG_USER, b"still here")
    two.pump()
    assert [f.data for f in two.take("server", s.FrameReceived)] == [b"still here"]
    one.server.consumed(held)
    assert memory.endpoint.used == 2 * FOOTPRINT


def test_the_peers_hello_is_held_to_our_ceilings() -> None:
    """Attack 3: a Hello claiming a huge window and lane threshold; we still keep no more of
    ours in flight than our own window, and put no larger frame on a lane than our own limit."""
    clock = Clock()
    client, server, events = raw_client_and_session(
        withhold=True, max_stream_data=64 * KiB, max_data=64 * KiB
    )
    greedy = wire.Hello(hello(1).endpoint_id, 64 * MiB, 1 << 31, 1 << 62, 4)
    client.send_stream_data(client.get_next_available_stream_id(True), wire.encode(greedy))
    clock.exchange(client, server, events)
    overshoot = hello(2).lane_threshold + s.FRAME_OVERHEAD + framing.HEADER_SIZE + s.CONTROL_SLACK
    assert server.established and server.credit <= WINDOW + overshoot
    assert not server.try_send(framing.FLAG_USER, bytes(hello(2).lane_threshold + 1))
    sent = 0
    while server.try_send(framing.FLAG_USER, bytes(1000)) and sent < 100_000:
        sent += 1
        clock.exchange(client, server, events)
    # Our frames the peer does not acknowledge are all we hold for it: held to our window.
    assert server.unacked <= WINDOW + overshoot and sent < 100_000
    # The peer grants credit without acknowledging: only what keeps us within the window counts.
    client.send_stream_data(2, wire.encode(wire.Credit(1 << 62)))
    clock.exchange(client, server, events)
    assert 0 < server.unacked + server.credit <= WINDOW + overshoot


def test_control_requests_go_unanswered_while_the_peer_leaves_our_answers_unacknowledged() -> None:
    """Attack 2: control requests while the peer withholds flow control on our replies."""
    clock = Clock()
    client, server, events = raw_client_and_session(
        withhold=True, max_stream_data=16 * KiB, max_data=16 * KiB
    )
    lane = client.get_next_available_stream_id(True)
    client.send_stream_data(lane, wire.encode(hello(1)))
    clock.exchange(client, server, events)
    asked = answered = 0
    for _ in range(200):
        client.send_stream_data(lane, wire.encode(wire.PeersRequest(8)) * 100)
        asked += 100
        clock.exchange(client, server, events)
        for event in events:
            if isinstance(event, s.ControlReceived):
                answered += 1  # the layer above answers with a kilobyte
                server.send_control(ANSWER)
        events.clear()
    assert server.dropped_control > 0 and answered < asked
    # Answers stop once ours pass the peer's window and the slack; one batch may come on top.
    bound = WINDOW + hello(2).lane_threshold + s.FRAME_OVERHEAD + framing.HEADER_SIZE + 2 * s.CONTROL_SLACK
    assert server.unacked <= bound + 100 * len(wire.encode(ANSWER))


def receive_buffers(session: s.Session) -> int:
    """Bytes aioquic keeps in its receive buffers (behind a gap, not deliverable yet)."""
    return sum(len(stream.receiver._buffer) for stream in session.quic._streams.values())


def test_bytes_behind_a_gap_are_held_to_the_window() -> None:
    """A peer that never sends a stream's first bytes: aioquic keeps the rest, waiting for the
    gap to fill, and used to raise its flow-control limit as they came, without end."""
    clock = Clock()
    client, server, events = raw_client_and_session()
    lane = client.get_next_available_stream_id(True)
    client.send_stream_data(lane, wire.encode(hello(1)))
    clock.exchange(client, server, events)
    stream = client.get_next_available_stream_id(True)
    client.send_stream_data(stream, bytes(16 * MiB))
    client._streams[stream].sender._pending.subtract(0, 1000)  # the gap: never sent
    for _ in range(100):
        clock.exchange(client, server, events)
    overshoot = hello(2).lane_threshold + s.FRAME_OVERHEAD + framing.HEADER_SIZE + s.CONTROL_SLACK
    assert WINDOW // 2 < receive_buffers(server) <= WINDOW + overshoot
    assert server.established and not [e for e in events if isinstance(e, s.Closing)]
