"""The sans-IO session: two real aioquic connections joined in memory, no sockets, no event loop."""

from __future__ import annotations

import dataclasses
import ssl

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import pull_quic_header

from qp2p import Trust, errors, tls, wire
from qp2p import session as s
from qp2p._aioquic_hooks import CheckedQuicConnection
from qp2p._memory import Reservation
from qp2p._speedups import framing

KiB = 1 << 10
MiB = 1 << 20
CLIENT_ADDR = ("10.0.0.1", 1000)
SERVER_ADDR = ("10.0.0.2", 2000)
# Peer 1 is the client, peer 2 the server; a Hello's endpoint id comes from its certificate.
IDENTITIES = {1: tls.self_signed_identity(), 2: tls.self_signed_identity()}
CHECK = tls.peer_check(Trust.encrypt_only())


def hello(peer: int, **changes: int) -> wire.Hello:
    base = wire.Hello(s.endpoint_id_of(IDENTITIES[peer].fingerprint), 64 * MiB, 64 * KiB, 1 * MiB, 4)
    return dataclasses.replace(base, **changes)


def quic_config(is_client: bool) -> QuicConfiguration:
    config = QuicConfiguration(is_client=is_client, alpn_protocols=[s.ALPN], verify_mode=ssl.CERT_NONE)
    config.server_name = tls.SERVER_NAME if is_client else None
    identity = IDENTITIES[1 if is_client else 2]
    config.certificate, config.private_key = identity.certificate, identity.private_key
    return config


def quic(is_client: bool, **args: object) -> CheckedQuicConnection:
    return CheckedQuicConnection(peer_check=CHECK, configuration=quic_config(is_client), **args)


class Pair:
    """A client and a server session whose datagrams are carried by ``pump()``."""

    def __init__(
        self,
        client_hello: wire.Hello,
        server_hello: wire.Hello,
        lanes: int = 4,
        server_memory: Reservation | None = None,
    ) -> None:
        self.now = 0.0
        self.client = s.Session(quic(True), client_hello, lanes)
        self.client.connect(SERVER_ADDR, self.now)
        first = self.client.datagrams_to_send(self.now)
        odcid = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8).destination_cid
        self.server = s.Session(
            quic(False, original_destination_connection_id=odcid), server_hello, lanes, server_memory
        )
        self.events: dict[str, list[s.SessionEvent]] = {"client": [], "server": []}
        for datagram, _ in first:
            self.server.receive_datagram(datagram, CLIENT_ADDR, self.now)
        self.pump()

    def pump(self, rounds: int = 200, settle: bool = True) -> None:
        """Carry datagrams both ways until both sides are quiet; at most ``rounds`` rounds, after
        which it is an error unless ``settle`` is false (a long transfer still under way)."""
        for _ in range(rounds):
            self.now += 0.001
            moved = 0
            for sender, receiver, src in (
                (self.client, self.server, CLIENT_ADDR),
                (self.server, self.client, SERVER_ADDR),
            ):
                for datagram, _ in sender.datagrams_to_send(self.now):
                    receiver.receive_datagram(datagram, src, self.now)
                    moved += 1
            self._collect()
            if not moved:
                return
        if settle:
            raise AssertionError("the sessions never went quiet")

    def _collect(self) -> None:
        for name in ("client", "server"):
            session = getattr(self, name)
            collect(session, self.events[name])

    def take(self, side: str, kind: type) -> list:
        found = [e for e in self.events[side] if isinstance(e, kind)]
        self.events[side] = [e for e in self.events[side] if not isinstance(e, kind)]
        return found


@pytest.fixture
def pair() -> Pair:
    return Pair(hello(1), hello(2))


def test_handshake_and_hello(pair: Pair) -> None:
    (client_up,) = pair.take("client", s.Established)
    (server_up,) = pair.take("server", s.Established)
    assert client_up.peer == hello(2) and server_up.peer == hello(1)
    assert pair.client.credit == pair.server.credit == 1 * MiB
    assert pair.client.established and pair.server.established


def lanes_of(frames: list[s.FrameReceived]) -> dict[int, list[int]]:
    by_lane: dict[int, list[int]] = {}
    for frame in frames:
        by_lane.setdefault(frame.lane, []).append(int.from_bytes(frame.data, "big"))
    return by_lane


def test_lanes_take_turns_per_flush_and_keep_order(pair: Pair) -> None:
    for burst in range(8):
        for i in range(50):
            pair.client.send_frame(framing.FLAG_USER, (burst * 50 + i).to_bytes(4, "big"))
        pair.pump()  # one flush: the burst shares a lane, the next burst takes the next lane
    frames = pair.take("server", s.FrameReceived)
    # Lane 0 (the receiver's first, opened by the Hello) carries control frames and requests;
    # messages go to lanes 1, 2, 3 in turn, a burst at a time.
    by_lane = lanes_of(frames)
    assert sorted(by_lane) == [1, 2, 3]
    bursts = [list(range(b * 50, b * 50 + 50)) for b in range(8)]
    for lane, numbers in by_lane.items():
        assert numbers == [n for b in range(lane - 1, 8, 3) for n in bursts[b]]


def test_requests_and_responses_ride_lane_zero(pair: Pair) -> None:
    pair.client.send_frame(framing.FLAG_USER, b"message")
    pair.client.send_frame(framing.FLAG_REQUEST, (1).to_bytes(4, "big") + b"request")
    pair.pump()
    lanes = {bytes(f.data): f.lane for f in pair.take("server", s.FrameReceived)}
    assert lanes == {b"request": 0, b"message": 1}


def test_a_pinned_lane_keeps_its_own_order(pair: Pair) -> None:
    for i in range(300):
        pair.client.send_frame(framing.FLAG_USER, i.to_bytes(4, "big"), lane=2 if i % 3 == 0 else None)
        if i % 50 == 49:
            pair.pump()
    pair.pump()
    by_lane = lanes_of(pair.take("server", s.FrameReceived))
    pinned = [numbers for numbers in by_lane.values() if numbers[0] == 0]
    # Unpinned bursts rotate over lanes 1, 2, 3: the third burst also lands on lane 2.
    assert pinned == [[n for n in range(300) if n % 3 == 0 or n // 50 % 3 == 1]]
    assert sum(len(numbers) for numbers in by_lane.values()) == 300


def test_requests_and_responses_carry_their_ids(pair: Pair) -> None:
    pair.client.send_frame(framing.FLAG_REQUEST, (7).to_bytes(4, "big") + b"ping")
    pair.pump()
    (request,) = pair.take("server", s.FrameReceived)
    assert (request.flag, request.request_id, request.data) == (framing.FLAG_REQUEST, 7, b"ping")
    pair.server.send_frame(framing.FLAG_RESPONSE, (7).to_bytes(4, "big"))
    pair.pump()
    (response,) = pair.take("client", s.FrameReceived)
    assert (response.flag, response.request_id, response.data) == (framing.FLAG_RESPONSE, 7, b"")


def test_credit_stops_the_sender_until_the_reader_consumes(pair: Pair) -> None:
    body = bytes(1000)
    sent = 0
    while pair.client.credit > 0:
        pair.client.send_frame(framing.FLAG_USER, body)
        sent += 1
    assert sent == -(-MiB // (1000 + 9 + s.FRAME_OVERHEAD))
    pair.pump()
    frames = pair.take("server", s.FrameReceived)
    assert len(frames) == sent
    assert not pair.take("client", s.CreditGranted)  # nothing consumed, nothing granted
    for frame in frames[: len(frames) // 2]:
        pair.server.consumed(frame)
    pair.pump()
    assert pair.take("client", s.CreditGranted)
    assert pair.client.credit > MiB // 3


def large_pair(**server: int) -> Pair:
    return Pair(hello(1), hello(2, receive_window=256 * KiB, **server))


def test_large_message_flows_with_a_small_window() -> None:
    pair = large_pair()
    payload = bytes(range(256)) * (5 * MiB // 256)
    stream_id = pair.client.start_large(framing.FLAG_USER, payload)
    for _ in range(100):
        pair.pump(settle=False)
        if pair.take("client", s.LargeSendDone):
            break
    else:
        raise AssertionError("the large send never finished")
    pair.pump(2000)
    (frame,) = pair.take("server", s.FrameReceived)
    assert frame.large and frame.lane == -1 and frame.data == payload and type(frame.data) is bytearray
    assert stream_id % 4 == 2  # a client-initiated unidirectional stream


def test_large_request_keeps_its_id_and_the_payload_uncopied() -> None:
    pair = large_pair()
    payload = bytearray(b"q" * (300 * KiB))
    pair.client.start_large(framing.FLAG_REQUEST, payload, prefix=(99).to_bytes(4, "big"))
    pair.pump(2000)
    (frame,) = pair.take("server", s.FrameReceived)
    assert (frame.flag, frame.request_id, bytes(frame.data)) == (framing.FLAG_REQUEST, 99, bytes(payload))


def test_buffer_slots_hold_back_extra_large_messages() -> None:
    pair = large_pair(large_message_slots=1)
    first, second = b"a" * (200 * KiB), b"b" * (200 * KiB)
    pair.client.start_large(framing.FLAG_USER, first)
    pair.client.start_large(framing.FLAG_USER, second)
    pair.pump(2000)
    (frame,) = pair.take("server", s.FrameReceived)  # the second waits for the only slot
    assert frame.data == first
    pair.server.consumed(frame)
    pair.pump(2000)
    (frame,) = pair.take("server", s.FrameReceived)
    assert frame.data == second


def settle(pair: Pair) -> None:
    """Consume everything delivered and pump until credit stops moving."""
    for _ in range(20):
        for frame in pair.take("server", s.FrameReceived):
            pair.server.consumed(frame)
        pair.pump(2000)


def test_cancelled_large_send_gives_its_credit_back() -> None:
    pair = large_pair()
    stream_id = pair.client.start_large(framing.FLAG_USER, bytes(2 * MiB))
    pair.pump(5, settle=False)
    pair.client.cancel_large(stream_id)
    settle(pair)
    assert not pair.take("server", s.FrameReceived)  # nothing partial is delivered
    assert pair.client.credit >= 256 * KiB * 7 // 8  # all the cancelled bytes were credited back
    pair.client.send_frame(framing.FLAG_USER, b"after")
    pair.pump()
    assert [f.data for f in pair.take("server", s.FrameReceived)] == [b"after"]


def test_oversized_frame_is_refused_and_the_connection_goes_on() -> None:
    pair = Pair(hello(1), hello(2, max_message_size=100 * KiB, receive_window=256 * KiB))
    # A peer that ignores our limit: pretend the server accepts anything.
    pair.client._peer = dataclasses.replace(pair.client.peer, max_message_size=MiB)
    stream_id = pair.client.start_large(framing.FLAG_USER, bytes(500 * KiB))
    settle(pair)
    (refused,) = pair.take("server", s.StreamRefused)
    assert refused.stream_id == stream_id and isinstance(refused.error, errors.FrameTooLarge)
    (failed,) = pair.take("client", s.LargeSendFailed)
    assert failed.stream_id == stream_id
    assert not pair.take("server", s.FrameReceived)
    assert pair.client.credit >= 256 * KiB * 7 // 8
    pair.client.send_frame(framing.FLAG_USER, b"still here")
    pair.pump()
    assert [f.data for f in pair.take("server", s.FrameReceived)] == [b"still here"]


def test_local_size_check_uses_the_peer_limit() -> None:
    pair = Pair(hello(1), hello(2, max_message_size=1000))
    with pytest.raises(errors.MessageTooLarge):
        pair.client.send_frame(framing.FLAG_USER, bytes(1001))
    with pytest.raises(errors.MessageTooLarge):
        pair.client.start_large(framing.FLAG_USER, bytes(2000))


def test_garbage_stream_is_refused_others_go_on(pair: Pair) -> None:
    quic = pair.client.quic
    bad = quic.get_next_available_stream_id(is_unidirectional=True)
    quic.send_stream_data(bad, b"\x00\x09garbage-that-is-no-frame", end_stream=True)
    pair.client.send_frame(framing.FLAG_USER, b"fine")
    pair.pump()
    (refused,) = pair.take("server", s.StreamRefused)
    assert refused.stream_id == bad and isinstance(refused.error, errors.UnsupportedVersion)
    assert [f.data for f in pair.take("server", s.FrameReceived)] == [b"fine"]


def test_truncated_lane_is_refused(pair: Pair) -> None:
    quic = pair.client.quic
    stream = quic.get_next_available_stream_id(is_unidirectional=True)
    quic.send_stream_data(
        stream, framing.encode_frame(0, b"whole") + framing.encode_frame(0, b"cut")[:-1], True
    )
    pair.pump()
    assert [f.data for f in pair.take("server", s.FrameReceived)] == [b"whole"]
    (refused,) = pair.take("server", s.StreamRefused)
    assert isinstance(refused.error, errors.TruncatedFrame)


def test_bad_control_frame_is_skipped_not_the_lane(pair: Pair) -> None:
    quic = pair.client.quic
    stream = quic.get_next_available_stream_id(is_unidirectional=True)
    unknown = framing.encode_frame(framing.FLAG_CONTROL, (0x99).to_bytes(4, "little"))
    quic.send_stream_data(stream, framing.encode_frame(0, b"one") + unknown + framing.encode_frame(0, b"two"))
    pair.pump()
    assert [f.data for f in pair.take("server", s.FrameReceived)] == [b"one", b"two"]
    assert pair.server.rejected_frames == 1
    assert not pair.take("server", s.StreamRefused)


def test_bidirectional_streams_are_refused(pair: Pair) -> None:
    quic = pair.client.quic
    quic.send_stream_data(quic.get_next_available_stream_id(), b"hello?")
    pair.pump()
    (refused,) = pair.take("server", s.StreamRefused)
    assert refused.stream_id == 0


def test_control_messages_reach_the_layer_above(pair: Pair) -> None:
    pair.client.send_control(wire.EchoRequest())
    pair.pump()
    (event,) = pair.take("server", s.ControlReceived)
    assert event.message == wire.EchoRequest()


def test_close_is_seen_by_both_sides(pair: Pair) -> None:
    pair.client.close(reason="bye")
    pair.pump()
    # Closing comes at once, on both sides; Terminated after the closing and draining periods.
    (mine,) = pair.take("client", s.Closing)
    (theirs,) = pair.take("server", s.Closing)
    assert not mine.by_peer and theirs.by_peer and theirs.reason == "bye"
    assert not pair.take("client", s.Terminated) and not pair.take("server", s.Terminated)
    for _ in range(5):  # aioquic moves to "terminated" when its closing timer fires
        pair.now += 1.0
        for session in (pair.client, pair.server):
            if session.get_timer() is not None:
                session.handle_timer(pair.now)
        pair.pump()
    assert len(pair.take("client", s.Terminated)) == len(pair.take("server", s.Terminated)) == 1
    with pytest.raises(errors.SendError):
        pair.client.send_frame(framing.FLAG_USER, b"late")


def raw_client_and_session(
    server_memory: Reservation | None = None, withhold: bool = False, **client_args: int
) -> tuple[CheckedQuicConnection, s.Session, list[s.SessionEvent]]:
    """A bare aioquic client (it writes whatever bytes a test gives it; ``client_args`` set its
    QUIC configuration; ``withhold`` keeps its flow-control limits where they start) against a
    server session, handshake done, no Hello sent by the client yet."""
    now = 0.0
    config = quic_config(True)
    for name, value in client_args.items():
        setattr(config, name, value)
    client = CheckedQuicConnection(peer_check=CHECK, configuration=config)
    if withhold:  # a peer that never raises our flow-control limits, however much it reads
        client._write_connection_limits = lambda **_: None  # type: ignore[method-assign]
        client._write_stream_limits = lambda **_: None  # type: ignore[method-assign]
    client.connect(SERVER_ADDR, now)
    first = client.datagrams_to_send(now)
    odcid = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8).destination_cid
    server = s.Session(quic(False, original_destination_connection_id=odcid), hello(2), 4, server_memory)
    events: list[s.SessionEvent] = []
    outbound = [datagram for datagram, _ in first]
    for _ in range(20):
        now += 0.001
        for datagram in outbound:
            server.receive_datagram(datagram, CLIENT_ADDR, now)
        for datagram, _ in server.datagrams_to_send(now):
            client.receive_datagram(datagram, SERVER_ADDR, now)
        outbound = [datagram for datagram, _ in client.datagrams_to_send(now)]
        collect(server, events)
    return client, server, events


def collect(session: s.Session, events: list[s.SessionEvent]) -> None:
    """The session's events, each frame of a ``FramesReceived`` batch on its own."""
    while (event := session.next_event()) is not None:
        if isinstance(event, s.FramesReceived):
            events.extend(event.frames)  # type: ignore[arg-type]
        else:
            events.append(event)


def deliver(client: CheckedQuicConnection, server: s.Session, events: list[s.SessionEvent]) -> None:
    for datagram, _ in client.datagrams_to_send(1.0):
        server.receive_datagram(datagram, CLIENT_ADDR, 1.0)
    server.datagrams_to_send(1.0)  # a close the data caused begins here
    collect(server, events)


def test_frames_before_the_hello_are_held_until_it_arrives() -> None:
    client, server, events = raw_client_and_session()
    assert not any(isinstance(e, s.Established) for e in events)
    lane1, lane0 = client.get_next_available_stream_id(True), None
    client.send_stream_data(lane1, framing.encode_frame(framing.FLAG_USER, b"early"))
    deliver(client, server, events)
    assert not [e for e in events if isinstance(e, s.FrameReceived | s.Established)]  # held, not delivered
    lane0 = client.get_next_available_stream_id(True)
    client.send_stream_data(lane0, wire.encode(hello(1)))
    deliver(client, server, events)
    kinds = [type(e) for e in events if isinstance(e, s.FrameReceived | s.Established)]
    assert kinds == [s.Established, s.FrameReceived]  # established first, then what was held


def test_a_request_right_after_the_hello_in_one_batch_is_delivered() -> None:
    client, server, events = raw_client_and_session()
    lane0 = client.get_next_available_stream_id(True)
    request = framing.encode_frame(framing.FLAG_REQUEST, (5).to_bytes(4, "big") + b"ask")
    client.send_stream_data(lane0, wire.encode(hello(1)) + request)
    deliver(client, server, events)
    frames = [e for e in events if isinstance(e, s.FrameReceived)]
    assert [(f.request_id, bytes(f.data)) for f in frames] == [(5, b"ask")]


def test_a_hello_that_is_not_the_certificates_closes_the_connection() -> None:
    client, server, events = raw_client_and_session()
    client.send_stream_data(client.get_next_available_stream_id(True), wire.encode(hello(2)))  # not ours
    deliver(client, server, events)
    assert not any(isinstance(e, s.Established) for e in events)
    (closing,) = [e for e in events if isinstance(e, s.Closing)]
    assert closing.error_code == s.CLOSE_PROTOCOL


def test_concurrent_large_sends_get_their_own_streams() -> None:
    pair = large_pair()
    # The first takes all the credit the reserve leaves; the others cannot write a byte yet.
    ids = [pair.client.start_large(framing.FLAG_USER, bytes(1 * MiB)) for _ in range(4)]
    assert len(set(ids)) == 4
    done = 0
    for _ in range(400):
        pair.pump(settle=False)
        for frame in pair.take("server", s.FrameReceived):
            pair.server.consumed(frame)
        done += len(pair.take("client", s.LargeSendDone))
        if done == 4:
            break
    else:
        raise AssertionError(f"{done} of 4 large sends finished")


def test_a_bad_header_after_good_frames_delivers_them_then_refuses_the_stream(pair: Pair) -> None:
    quic = pair.client.quic
    stream = quic.get_next_available_stream_id(is_unidirectional=True)
    good = framing.encode_frame(0, b"one") + framing.encode_frame(framing.FLAG_REQUEST, b"\0\0\0\x05two")
    quic.send_stream_data(stream, good + b"\x00\x02" + bytes(7) + framing.encode_frame(0, b"never"))
    pair.pump()
    frames = pair.take("server", s.FrameReceived)
    assert [(f.flag, f.request_id, f.data) for f in frames] == [
        (0, 0, b"one"),
        (framing.FLAG_REQUEST, 5, b"two"),
    ]
    (refused,) = pair.take("server", s.StreamRefused)
    assert refused.stream_id == stream and isinstance(refused.error, errors.UnsupportedVersion)


def raw_lane(pair: Pair, *bodies: int) -> None:
    """The client writes user frames of these sizes on lanes of its own, ignoring its credit."""
    quic = pair.client.quic
    for body in bodies:
        stream = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(stream, framing.encode_frame(0, bytes(body)))
    pair.pump()


def test_a_peer_spending_its_credit_to_the_unit_gets_all_and_one_unit_more_closes(pair: Pair) -> None:
    server = pair.server
    budget = server._advertised + server._overshoot  # what it may spend, slack included
    cost = 32 * KiB + s._FRAME_COST
    count, rest = divmod(budget, cost)
    assert rest > s._FRAME_COST
    raw_lane(pair, *[32 * KiB] * count, rest - s._FRAME_COST)
    assert len(pair.take("server", s.FrameReceived)) == count + 1  # exactly at the budget: all of it
    assert pair.server.quic._close_event is None
    raw_lane(pair, 1)  # one frame past it
    assert not pair.take("server", s.FrameReceived)
    event = pair.server.quic._close_event
    assert event is not None and event.error_code == s.CLOSE_PROTOCOL
