"""One qp2p connection as a sans-IO state machine around aioquic's ``QuicConnection``.

Datagrams in (``receive_datagram``), datagrams out (``datagrams_to_send``), a deadline
(``get_timer``/``handle_timer``) and events (``next_event``): the asyncio layer only carries
bytes and time. Inside: the Hello exchange, the lanes (long-lived unidirectional streams holding
small frames back to back), large messages on streams of their own, and the credit that gives
end-to-end backpressure.

Credit. aioquic keeps every byte written until it is acknowledged and widens its flow-control
window as bytes arrive, not as they are used, so a fast sender or a slow reader would make
memory grow without bound. On top of QUIC, each side therefore grants the other a limit of
"units": a user, request or response frame costs its length plus ``FRAME_OVERHEAD``; control
frames are free. The receiver grants more as the application consumes messages (a large
message's bytes count as consumed when they are stored in its buffer, which was allocated in
full when its header arrived; at most ``large_message_slots`` such buffers exist at once).

Memory. What a session holds for its peer is reserved in the endpoint's scopes first
(``qp2p._memory``): at the handshake, the window it grants (the bytes of frames, complete or
not, it may hold) and as much again for what it sends the peer (``unacked`` may not pass it,
whatever credit the peer claims to grant); then each large message's buffer, before it is
allocated. A window that does not fit is halved down to ``MIN_WINDOW``, then the connection is
refused; a buffer that does not fit waits for the peer's own messages to be taken (its link or
peer scope is full) or is refused (its address or the whole endpoint is full).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from aioquic.quic import events as quic_events
from aioquic.quic.connection import NetworkAddress

from qp2p import wire
from qp2p._aioquic_hooks import CheckedQuicConnection, closing_event, peer_certificate, unacked_bytes
from qp2p._memory import Reservation, unlimited
from qp2p._peer_log import peer_log
from qp2p._speedups import chunking, framing
from qp2p.errors import (
    DecodeError,
    MalformedMessage,
    MemoryRefused,
    MessageTooLarge,
    SendError,
    TruncatedMessage,
)
from qp2p.tls import fingerprint

__all__ = (
    "ALPN",
    "endpoint_id_of",
    "link_memory",
    "CHUNK_SIZE",
    "FRAME_OVERHEAD",
    "CidIssued",
    "CidRetired",
    "Closing",
    "ControlReceived",
    "CreditGranted",
    "Established",
    "FrameReceived",
    "FramesReceived",
    "LargeSendDone",
    "LargeSendFailed",
    "Session",
    "SessionEvent",
    "StreamRefused",
    "Terminated",
)

log = logging.getLogger(__name__)

ALPN = "qp2p"
FRAME_OVERHEAD = 64
CHUNK_SIZE = 64 * 1024

# Application error codes on QUIC streams and connections.
STREAM_REFUSED = 0x1  # we will not read this stream (malformed, oversized, unexpected)
STREAM_CANCELLED = 0x2  # the sender gave up on this stream
STREAM_NO_MEMORY = 0x3  # we have no memory for this message now: the sender may try again later
CLOSE_NORMAL = 0x0
CLOSE_PROTOCOL = 0x10  # the peer broke the qp2p protocol at the connection level
CLOSE_NO_MEMORY = 0x11  # we have no memory for another connection now
# The smallest window a session grants when memory is short; below it the connection is refused.
MIN_WINDOW = 256 * 1024
# Control frames, complete or not, a peer may have us hold beyond its credit; and the bytes of
# ours it may leave unacknowledged beyond its window before we stop answering its requests.
CONTROL_SLACK = 16 * 1024
# Control messages a peer may send before its Hello; more breaks the protocol.
HELD_CONTROL = 16

_FLAG_USER = framing.FLAG_USER
_FLAG_CONTROL = framing.FLAG_CONTROL
_FLAG_REQUEST = framing.FLAG_REQUEST
_FLAG_RESPONSE = framing.FLAG_RESPONSE
_HEADER_SIZE = framing.HEADER_SIZE
_FRAME_COST = _HEADER_SIZE + FRAME_OVERHEAD
_append_frame = framing.append_frame
_TAKE_ODD, _TAKE_OVER_BUDGET, _TAKE_BROKEN = framing.TAKE_ODD, framing.TAKE_OVER_BUDGET, framing.TAKE_BROKEN


def _overshoot(lane_threshold: int) -> int:
    """How far a peer may pass the credit granted: one lane frame, and control frames (free of
    credit) in the making."""
    return lane_threshold + _FRAME_COST + CONTROL_SLACK


def _footprint(window: int, lane_threshold: int) -> int:
    """The memory a connection granting ``window`` may make us hold: the peer's frames within
    its credit, what QUIC keeps of them behind a gap, and ours it has not acknowledged yet."""
    return 3 * (window + _overshoot(lane_threshold))


def link_memory(hello: wire.Hello) -> int:
    """The most one link may hold for its peer, given our Hello: its window's footprint and a
    buffer per large-message slot."""
    footprint = _footprint(hello.receive_window, hello.lane_threshold)
    return footprint + hello.large_message_slots * hello.max_message_size


def endpoint_id_of(peer_id: str) -> int:
    """The Hello's endpoint id for a peer id: the fingerprint's first 8 bytes, big-endian."""
    return int(peer_id[:16], 16)


# ---- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Established:
    """The handshake is complete and the peer's Hello has arrived: the connection is usable."""

    peer: wire.Hello


@dataclass(frozen=True, slots=True)
class CidIssued:
    """A connection id of ours now routes to this session."""

    cid: bytes


@dataclass(frozen=True, slots=True)
class CidRetired:
    """A connection id of ours no longer routes to this session."""

    cid: bytes


# A user message, request or response (compiled with the lane decoder that makes them).
FrameReceived = framing.FrameReceived


@dataclass(frozen=True, slots=True)
class FramesReceived:
    """Frames of one lane, in order, as one piece of stream data held them: delivered together,
    so a burst of small messages costs one event, not one each."""

    frames: list[FrameReceived]


@dataclass(frozen=True, slots=True)
class ControlReceived:
    """A control message for the layers above (echo, verification, ...)."""

    message: wire.ControlMessage


@dataclass(frozen=True, slots=True)
class CreditGranted:
    """The peer raised our credit limit: blocked senders may go on."""


@dataclass(frozen=True, slots=True)
class LargeSendDone:
    """Every byte of the large message on ``stream_id`` is handed to QUIC."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class LargeSendFailed:
    """The large message on ``stream_id`` was refused by the peer or the connection ended."""

    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class StreamRefused:
    """We stopped reading a stream the peer sent, because of ``error``; the connection goes on."""

    stream_id: int
    error: Exception


@dataclass(frozen=True, slots=True)
class Closing:
    """The connection is closing: nothing more can be sent. ``by_peer`` is False only when we
    closed it ourselves; a refused certificate or another protocol failure counts as the peer's."""

    error_code: int
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class Terminated:
    """The QUIC connection is over (its closing or draining period too): forget it."""


SessionEvent = (
    Established
    | CidIssued
    | CidRetired
    | FramesReceived
    | ControlReceived
    | CreditGranted
    | LargeSendDone
    | LargeSendFailed
    | StreamRefused
    | Closing
    | Terminated
)


# ---- per-stream state ----------------------------------------------------------------------


class _LargeSend:
    __slots__ = ("charged", "chunker", "rest")

    def __init__(self, chunker: Any) -> None:
        self.chunker = chunker
        self.charged = FRAME_OVERHEAD
        self.rest: bytes | memoryview | None = None  # what credit did not allow of the last slice


class _Incoming:
    """What we know of one stream the peer opened: still classifying, a lane, or a large frame."""

    __slots__ = (
        "credited",
        "decoder",
        "ended",
        "head",
        "held",
        "lane",
        "partial",
        "reassembler",
        "reserved",
        "size",
    )

    def __init__(self) -> None:
        self.ended = False  # the stream's FIN arrived (it may still wait for a buffer slot)
        self.head = bytearray()
        self.decoder: Any = None
        self.lane = -1
        self.reassembler: Any = None
        self.held: list[bytes] | None = None  # a large frame's bytes while it waits for a buffer slot
        self.credited = 0
        self.partial = 0  # bytes of an incomplete frame a lane's decoder holds
        self.size = 0  # a large frame's declared body length
        self.reserved = 0  # memory reserved for a large frame's buffer


def _peer_initiated_uni(stream_id: int, is_client: bool) -> bool:
    # bit 0: 0 = client-initiated, 1 = server-initiated; bit 1: unidirectional.
    return stream_id & 2 == 2 and (stream_id & 1 == 1) == is_client


class Session:
    """The qp2p protocol on one QUIC connection. Not thread-safe; never blocks; no I/O."""

    def __init__(
        self, quic: CheckedQuicConnection, hello: wire.Hello, lanes: int, memory: Reservation | None = None
    ) -> None:
        self._quic = quic
        self._hello = hello  # ours; its window and largest message are set at the handshake
        self._memory = memory or unlimited()
        self._outstanding = 0  # memory held by frames handed up and not yet consumed
        self._is_client = quic.configuration.is_client
        self._events: deque[SessionEvent] = deque()
        self._peer: wire.Hello | None = None
        self._handshake_done = False
        self._established = False
        self._peer_id: str | None = None
        # Frames and control messages that arrive before the peer's Hello wait here, bounded by
        # the credit we granted (frames) and by HELD_CONTROL (control messages).
        self._held: list[SessionEvent] = []
        self._held_control = 0
        self._deliver = self._held.append  # where frames for the layer above go: held, then events
        self._closing = False  # we called close()
        self._closing_seen = False  # a close began, by anyone
        self._terminated = False
        # sending
        self._lane_ids: list[int | None] = [None] * lanes
        # Frames for each lane since the last flush: one aioquic write per lane per transmit,
        # not one per message (each write costs a stream lookup and a range-set update).
        self._lane_out = [bytearray() for _ in range(lanes)]
        self._lanes = lanes
        self._next_lane = 1 % lanes  # lane 0 carries control frames, requests and responses
        self._ready = False  # established, not closing, not terminated: frames may be queued
        self.queued = 0  # bytes of frames (control frames too) queued on lanes since the last flush
        self._inline_limit = 0  # the largest body that travels on a lane, once the peer said
        self._user_queued = False  # a frame on the current lane since the last flush
        self._sent = 0
        self._limit = 0
        self._peer_limit = 0  # the limit the peer granted; ours is also held by what it acknowledged
        self._send_bound = 0  # bytes of ours the peer may leave unacknowledged
        self._large: dict[int, _LargeSend] = {}
        # receiving
        self._incoming: dict[int, _Incoming] = {}
        self._lanes_seen = 0
        self._consumed = 0
        self._advertised = 0  # set with our window at the handshake; nothing arrives before
        self._partial = 0  # bytes of incomplete frames held by the lanes' decoders
        self._free_slots = hello.large_message_slots
        self._slot_queue: deque[int] = deque()
        self._refused: dict[int, int] = {}  # stream id -> units credited, until the sender settles
        self._settled: set[int] = set()
        self._cancelled: set[int] = set()  # streams a StreamCancelled already settled
        self._received = 0  # units of the peer's frames received: held to what we granted
        # A sender may pass its limit by one lane frame at most (large messages never pass it),
        # and control frames are free of credit.
        self._overshoot = _overshoot(hello.lane_threshold)
        self.rejected_frames = 0  # malformed frames skipped on an otherwise sound lane
        self.refused_streams = 0  # streams we stopped reading (bad header, oversized, truncated, ...)
        self.dropped_control = (
            0  # control messages not answered or not sent: the peer leaves ours unacknowledged
        )

    # ---- state -----------------------------------------------------------------------------

    @property
    def quic(self) -> CheckedQuicConnection:
        return self._quic

    @property
    def is_client(self) -> bool:
        return self._is_client

    @property
    def established(self) -> bool:
        return self._established

    @property
    def terminated(self) -> bool:
        return self._terminated

    @property
    def closing(self) -> bool:
        """A close began (ours, the peer's or aioquic's), though its ``Closing`` event may
        still be to come: nothing more can be sent."""
        return self._closing or self._closing_seen

    @property
    def peer_id(self) -> str | None:
        """The peer's identity: SHA-256 fingerprint (hex) of the certificate TLS proved it holds
        the key of; known once the handshake completed, None before."""
        if self._peer_id is None and self._handshake_done:
            certificate = peer_certificate(self._quic)
            self._peer_id = None if certificate is None else fingerprint(certificate)
        return self._peer_id

    @property
    def peer(self) -> wire.Hello | None:
        """The peer's Hello, once it arrived."""
        return self._peer

    @property
    def inline_limit(self) -> int:
        """The largest body sent on a lane; larger ones take a stream of their own."""
        return self._inline_limit

    @property
    def datagram_size(self) -> int:
        """The size packets are built at: what path MTU discovery confirmed."""
        return self._quic.path_mtu.size

    @property
    def credit(self) -> int:
        """Units we may still send before the peer grants more (negative after an overshoot)."""
        return self._limit - self._sent

    @property
    def unacked(self) -> int:
        """Bytes queued or written and not yet acknowledged by the peer."""
        return unacked_bytes(self._quic) + sum(len(pending) for pending in self._lane_out)

    def next_event(self) -> SessionEvent | None:
        return self._events.popleft() if self._events else None

    # ---- QUIC plumbing ---------------------------------------------------------------------

    def connect(self, addr: NetworkAddress, now: float) -> None:
        self._quic.connect(addr, now=now)

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self._quic.receive_datagram(data, addr, now=now)
        self._process_quic_events()
        if self._limit < self._peer_limit and self._ready:
            self._raise_limit()  # acknowledgements may have made room

    def handle_timer(self, now: float) -> None:
        self._quic.handle_timer(now=now)
        self._process_quic_events()

    def get_timer(self) -> float | None:
        return self._quic.get_timer()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        if self.queued:
            self._flush()
            # A packet goes now anyway: it carries the acknowledgement aioquic would otherwise
            # send on its own a millisecond later (a request's reply, the next request).
            self._quic.ack_in_next_packet()
        datagrams = self._quic.datagrams_to_send(now=now)
        # aioquic queues ConnectionIdIssued while it writes NEW_CONNECTION_ID frames, i.e. here.
        self._process_quic_events()
        return datagrams

    def send_ping(self, uid: int) -> None:
        self._quic.send_ping(uid)

    def close(self, error_code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if not self._closing:
            self._closing = True
            self._ready = False
            for pending in self._lane_out:
                pending.clear()
            self._quic.close(error_code=error_code, reason_phrase=reason)

    def _flush(self) -> None:
        """Hand each lane's queued frames to QUIC in one write; a lane's stream opens here."""
        self.queued = 0
        if self._user_queued:
            self._user_queued = False
            lane = self._next_lane + 1
            self._next_lane = lane if lane < self._lanes else 1 % self._lanes
        for lane, pending in enumerate(self._lane_out):
            if pending:
                stream_id = self._lane_ids[lane]
                if stream_id is None:
                    stream_id = self._lane_ids[lane] = self._quic.get_next_available_stream_id(
                        is_unidirectional=True
                    )
                # aioquic copies it into its buffer (typed bytes; any buffer works)
                self._quic.send_stream_data(stream_id, pending)  # type: ignore[arg-type]
                pending.clear()

    # ---- sending ---------------------------------------------------------------------------

    def _check_size(self, body_len: int) -> None:
        assert self._peer is not None
        if body_len > self._peer.max_message_size:
            raise MessageTooLarge(self._peer.max_message_size, body_len)

    def _queue(self, flag: int, body: bytes, lane: int | None) -> None:
        size = len(body)
        if lane is None:
            # Requests and responses share lane 0 with control frames, out of the way of bulk
            # messages (aioquic serves the streams with data in turn, packet by packet).
            # Unpinned messages share one of the other lanes until the next flush, then the
            # next takes over: a burst packs into few STREAM frames, and lanes take turns.
            lane = 0 if flag != _FLAG_USER else self._next_lane
        _append_frame(self._lane_out[lane % self._lanes], flag, body)
        self._sent += size + _FRAME_COST
        self.queued += size + _HEADER_SIZE
        self._user_queued = self._user_queued or flag == _FLAG_USER

    def send_frame(self, flag: int, body: bytes, lane: int | None = None) -> None:
        """Queue one small frame on a lane whatever the credit (the caller waited for it)."""
        if not self._ready:
            raise SendError("the connection is not open")
        self._check_size(len(body))
        self._queue(flag, body, lane)

    def try_send(self, flag: int, body: bytes, lane: int | None = None) -> bool:
        """Queue a small frame now if nothing stands in the way (open, credit left, a non-empty
        body that fits a lane); otherwise do nothing and return False."""
        if not (self._ready and self._sent < self._limit and 0 < len(body) <= self._inline_limit):
            return False
        self._queue(flag, body, lane)
        return True

    def start_large(self, flag: int, payload: Any, prefix: bytes = b"") -> int:
        """Begin sending a frame (body: ``prefix`` then ``payload``) on a stream of its own.

        Returns the stream id. The bytes go out as credit allows (``LargeSendDone`` when all are
        handed to QUIC). The payload is never copied here: QUIC copies each 64 KiB slice as it
        takes it.
        """
        if not self._ready:
            raise SendError("the connection is not open")
        chunker = chunking.Chunker(flag, payload, CHUNK_SIZE, prefix)
        self._check_size(chunker.total - _HEADER_SIZE)
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
        # Opens the stream now, even when no credit lets a byte through yet: the next large
        # send must get the next stream id, never this one again.
        self._quic.send_stream_data(stream_id, b"")
        self._large[stream_id] = _LargeSend(chunker)
        self._sent += FRAME_OVERHEAD
        self._pump()
        return stream_id

    def cancel_large(self, stream_id: int) -> None:
        """Abandon a large send: reset its stream and tell the peer what it was charged."""
        send = self._large.pop(stream_id, None)
        if send is None or self._terminated:
            return
        self._quic.reset_stream(stream_id, STREAM_CANCELLED)
        self._send_control(wire.StreamCancelled(stream_id, send.charged))

    def _pump(self) -> None:
        """Hand large-message slices to QUIC while credit lasts, oldest message first.

        A quarter of the peer's window is left to the lanes, so small messages keep flowing
        beside a bulk transfer.
        """
        if not self._large or self._peer is None:
            return
        reserve = min(self._peer.receive_window, self._hello.receive_window) // 4
        for stream_id in list(self._large):
            send = self._large[stream_id]
            chunker = send.chunker
            while (allowed := self._limit - self._sent - reserve) > 0:
                piece = send.rest if send.rest is not None else next(chunker, None)
                if piece is None:
                    break
                # Never past the limit: a slice larger than the credit left is cut, the rest waits.
                send.rest = piece[allowed:] if len(piece) > allowed else None
                piece = piece[:allowed] if send.rest is not None else piece
                last = send.rest is None and chunker.remaining == 0
                self._quic.send_stream_data(stream_id, piece, end_stream=last)  # type: ignore[arg-type]
                send.charged += len(piece)
                self._sent += len(piece)
                if last:
                    del self._large[stream_id]
                    self._events.append(LargeSendDone(stream_id))
                    break
            else:
                return

    def send_control(self, message: wire.ControlMessage) -> bool:
        """Queue a control message (free of credit) on the first lane; while the peer is
        ``backlogged`` it is dropped instead (counted as control_backlog) and False returned."""
        if self._closing:
            raise SendError("the connection is closing")
        if self.backlogged:
            self._drop_control()
            return False
        self._send_control(message)
        return True

    def _drop_control(self) -> None:
        self.dropped_control += 1
        self._memory.count("control_backlog")

    def _send_control(self, message: wire.ControlMessage) -> None:
        frame = wire.encode(message)
        self._lane_out[0] += frame
        self.queued += len(frame)

    # ---- receiving -------------------------------------------------------------------------

    def consumed(self, event: FrameReceived) -> None:
        """The application took ``event``'s message: grant its units back, free its slot and
        its memory."""
        self._consumed += event.cost
        self._outstanding -= event.cost + event.held
        if event.large:
            self._memory.release(event.held)
            self._free_slot()
        if self._terminated:
            self._release_memory()
        else:
            self._grant()

    def _release_memory(self) -> None:
        """The connection is over: keep reserved only what frames handed up and not taken yet
        hold; once they are all taken, let go of the scopes."""
        if not self._established:
            self._outstanding = 0  # frames held before the Hello never reach anyone
        self._memory.release(self._memory.held - self._outstanding)
        if self._outstanding == 0:
            self._memory.close()

    def _reserve_window(self) -> bool:
        """Reserve our window, halved while it does not fit (down to ``MIN_WINDOW``), and set
        our Hello's window and largest message from it; False, and the connection closes, when
        not even the smallest fits."""
        peer_id = self.peer_id
        if peer_id is not None:
            self._memory.attach_peer(peer_id)
        window = self._hello.receive_window
        threshold = self._hello.lane_threshold
        while window // 2 >= MIN_WINDOW and self._memory.refusal(_footprint(window, threshold)) is not None:
            window //= 2
        refused = self._memory.reserve(_footprint(window, threshold))
        if refused is not None:
            self.close(CLOSE_NO_MEMORY, f"no memory for another connection (the {refused} limit)")
            return False
        largest = max(1, min(self._hello.max_message_size, self._memory.largest()))
        self._hello = replace(self._hello, receive_window=window, max_message_size=largest)
        self._advertised = window
        self._quic.receive_window = window + self._overshoot
        return True

    def _grant(self) -> None:
        limit = self._consumed + self._hello.receive_window
        if limit - self._advertised >= self._hello.receive_window // 8 and not self._closing:
            self._advertised = limit
            self._send_control(wire.Credit(limit))

    def _credit_received(self, units: int) -> None:
        self._consumed += units
        self._grant()

    def _process_quic_events(self) -> None:
        quic = self._quic
        if not self._closing_seen and closing_event(quic) is not None:
            self._closing_begun()
        while (event := quic.next_event()) is not None:
            kind = type(event)
            if kind is quic_events.StreamDataReceived:
                self._stream_data(event.stream_id, event.data, event.end_stream)  # type: ignore[attr-defined]
            elif kind is quic_events.ConnectionIdIssued:
                self._events.append(CidIssued(event.connection_id))  # type: ignore[attr-defined]
            elif kind is quic_events.ConnectionIdRetired:
                self._events.append(CidRetired(event.connection_id))  # type: ignore[attr-defined]
            elif kind is quic_events.HandshakeCompleted:
                self._handshake_completed(event)  # type: ignore[arg-type]
            elif kind is quic_events.StreamReset:
                self._stream_reset(event.stream_id)  # type: ignore[attr-defined]
            elif kind is quic_events.StopSendingReceived:
                self._stop_sending(event.stream_id, event.error_code)  # type: ignore[attr-defined]
            elif kind is quic_events.ConnectionTerminated:
                self._connection_terminated(event)  # type: ignore[arg-type]

    def _handshake_completed(self, event: quic_events.HandshakeCompleted) -> None:
        if event.alpn_protocol != ALPN:
            self.close(CLOSE_PROTOCOL, f"ALPN {event.alpn_protocol!r} is not {ALPN!r}")
            return
        self._handshake_done = True
        if self._reserve_window():
            self._send_control(self._hello)
            self._check_established()

    def _check_established(self) -> None:
        peer = self._peer
        if self._handshake_done and peer is not None and not self._established:
            peer_id = self.peer_id
            if peer_id is None or peer.endpoint_id != endpoint_id_of(peer_id):
                self.close(CLOSE_PROTOCOL, "the Hello's endpoint id is not the certificate's")
                return
            self._established = True
            self._ready = not self._closing and not self._terminated
            # The peer's claims are held to our own ceilings: a lane frame no larger than ours,
            # and no more of ours in flight than the window we grant.
            self._inline_limit = min(peer.lane_threshold, peer.max_message_size, self._hello.lane_threshold)
            window = min(peer.receive_window, self._hello.receive_window)
            self._send_bound = window + self._overshoot
            self._peer_limit = peer.receive_window
            self._limit = window
            self._events.append(Established(peer))
            self._events.extend(self._held)
            self._held.clear()
            self._deliver = self._events.append

    def _closing_begun(self) -> None:
        """Report a close as soon as it starts (ours, the peer's, or aioquic's own on an error)."""
        event = closing_event(self._quic)
        assert event is not None
        self._closing_seen = True
        self._ready = False
        for stream_id in list(self._large):
            self._events.append(LargeSendFailed(stream_id, "the connection ended"))
        self._large.clear()
        self._events.append(Closing(event.error_code, event.reason_phrase, by_peer=not self._closing))

    def _connection_terminated(self, event: quic_events.ConnectionTerminated) -> None:
        if not self._closing_seen:
            self._closing_begun()
        self._terminated = True
        self._release_memory()
        self._events.append(Terminated())

    def _refuse(
        self, stream_id: int, incoming: _Incoming | None, error: Exception, code: int = STREAM_REFUSED
    ) -> None:
        """Stop reading a stream, keeping what it was credited until the sender settles it."""
        self.refused_streams += 1
        if incoming is not None:
            self._release(stream_id, incoming)
            self._refused[stream_id] = incoming.credited
        self._incoming.pop(stream_id, None)
        self._settled.add(stream_id)
        if not self._terminated:
            try:
                self._quic.stop_stream(stream_id, code)
            except ValueError:  # aioquic already discarded the stream: it ended, nothing to stop
                pass
        self._events.append(StreamRefused(stream_id, error))

    def _release(self, stream_id: int, incoming: _Incoming) -> None:
        """A stream we stop reading lets go of what it holds: its partial frame, its buffer,
        its memory, its slot or its place in the queue for one."""
        self._partial -= incoming.partial
        incoming.partial = 0
        self._memory.release(incoming.reserved)
        incoming.reserved = 0
        if incoming.reassembler is not None:
            incoming.reassembler = None
            self._free_slot()
        elif incoming.held is not None and stream_id in self._slot_queue:
            self._slot_queue.remove(stream_id)

    def _free_slot(self) -> None:
        self._free_slots += 1
        self._assign_slots()

    def _stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        incoming = self._incoming.get(stream_id)
        if incoming is None:
            if stream_id in self._settled:
                return
            if not _peer_initiated_uni(stream_id, self._is_client):
                if stream_id & 2 == 0:  # a bidirectional stream: qp2p never opens one
                    self._quic.reset_stream(stream_id, STREAM_REFUSED)
                self._refuse(stream_id, None, MalformedMessage("unexpected stream type"))
                return
            incoming = self._incoming[stream_id] = _Incoming()
        try:
            if incoming.decoder is not None:
                self._lane_data(incoming, data)
            elif incoming.reassembler is not None or incoming.held is not None:
                self._charge(len(data))
                self._large_data(stream_id, incoming, data)
            else:
                self._classify(stream_id, incoming, data)
            if end_stream:
                self._stream_end(stream_id, incoming)
        except DecodeError as exc:
            self._refuse(stream_id, incoming, exc)

    def _classify(self, stream_id: int, incoming: _Incoming, data: bytes) -> None:
        """First bytes of a stream: its first header says lane (small) or large frame."""
        head = incoming.head
        head += data
        if len(head) < _HEADER_SIZE:
            return
        _, data_len = framing.decode_header(head, self._hello.max_message_size)
        incoming.head = bytearray()
        if data_len > self._hello.lane_threshold:
            self._charge(FRAME_OVERHEAD + len(head))
            incoming.size = data_len
            incoming.held = [bytes(head)]
            self._slot_queue.append(stream_id)
            self._assign_slots()
        else:
            incoming.decoder = framing.FrameDecoder(self._hello.max_message_size)
            incoming.lane = self._lanes_seen
            self._lanes_seen += 1
            self._lane_data(incoming, head)

    def _lane_data(self, incoming: _Incoming, data: bytes | bytearray) -> None:
        decoder = incoming.decoder
        lane = incoming.lane
        self._partial -= incoming.partial  # counted again below, once complete frames are out
        incoming.partial = 0
        while True:
            budget = self._advertised + self._overshoot - self._received - self._partial
            frames, spent, stop, odd = decoder.take(data, lane, budget, _FRAME_COST)
            data = b""
            if frames:
                self._received += spent
                self._outstanding += spent
                self._deliver(FramesReceived(frames))
            if stop == _TAKE_OVER_BUDGET:
                self._overspent()  # nothing more of what it sent is delivered
                return
            if stop == _TAKE_BROKEN:
                continue  # the frames before a bad header are delivered; now it raises
            if stop != _TAKE_ODD:
                break
            flag, body = odd
            if flag == _FLAG_CONTROL:
                self._control_frame(body)  # it may be the Hello: what follows is not held
                continue
            cost = len(body) + _FRAME_COST
            if not self._charge(cost):
                return
            # The frame boundary is intact, so only this frame is lost; its units are returned.
            self._reject_frame(TruncatedMessage("request or response shorter than its request id"))
            self._credit_received(cost)
        # An incomplete frame's bytes are held too: within the credit, like complete ones.
        incoming.partial = decoder.buffered
        if incoming.partial:
            self._partial += incoming.partial
            self._charge(0)

    def _charge(self, units: int) -> bool:
        """Count units the peer spent; a peer that spends beyond what we granted (more than one
        frame and one slice over) breaks the protocol, and its connection is closed. False once
        that happened."""
        self._received += units
        if self._received + self._partial > self._advertised + self._overshoot:
            self._overspent()
            return False
        return True

    def _overspent(self) -> None:
        if not self._closing:
            self.close(CLOSE_PROTOCOL, "sent beyond the credit granted")

    def _reject_frame(self, error: DecodeError) -> None:
        self.rejected_frames += 1
        addr = self._quic.get_peer_address()
        assert addr is not None  # frames came: the peer has an address
        peer_log(log, self.peer_id, addr).warning("dropped a malformed frame: %s", error)

    def _control_frame(self, body: bytes | bytearray) -> None:
        try:
            message = wire.decode(_FLAG_CONTROL, bytes(body))
        except DecodeError as exc:
            self._reject_frame(exc)
            return
        self._control(message)

    def _assign_slots(self) -> None:
        """Give waiting large frames a buffer slot and the memory for their whole body, in the
        order they came. One that does not fit waits if the peer's own messages hold the memory
        (taking one frees it), and is refused if others do (its address, or the endpoint)."""
        while self._free_slots > 0 and self._slot_queue:
            stream_id = self._slot_queue[0]
            incoming = self._incoming[stream_id]
            refused = self._memory.refusal(incoming.size)
            if refused in ("link", "peer"):
                return
            self._slot_queue.popleft()
            if self._memory.reserve(incoming.size) is not None:
                self._refuse(
                    stream_id,
                    incoming,
                    MemoryRefused(f"no memory for {incoming.size} bytes now (the {refused} limit)"),
                    STREAM_NO_MEMORY,
                )
                continue
            incoming.reserved = incoming.size
            held, incoming.held = incoming.held or [], None
            self._free_slots -= 1
            incoming.reassembler = chunking.Reassembler(self._hello.max_message_size)
            incoming.credited = FRAME_OVERHEAD
            self._credit_received(FRAME_OVERHEAD)
            try:
                for data in held:
                    self._large_data(stream_id, incoming, data)
                if incoming.ended and stream_id in self._incoming:
                    self._stream_end(stream_id, incoming)
            except DecodeError as exc:
                self._refuse(stream_id, incoming, exc)

    def _large_data(self, stream_id: int, incoming: _Incoming, data: bytes) -> None:
        """Store a large frame's bytes; it is delivered when its stream ends (``_stream_end``),
        so bytes after the frame, in any later packet, still refuse the whole stream."""
        if incoming.held is not None:
            incoming.held.append(data)
            return
        reassembler = incoming.reassembler
        if reassembler.done:
            if data:
                raise MalformedMessage(f"{len(data)} bytes after the end of the message")
            return
        reassembler.feed(data)
        incoming.credited += len(data)
        self._credit_received(len(data))

    def _deliver_large(self, stream_id: int, incoming: _Incoming, flag: int, body: bytearray) -> None:
        self._incoming.pop(stream_id, None)
        self._settled.add(stream_id)  # a complete frame: anything more on this stream is ignored
        request_id = 0
        held, incoming.reserved = incoming.reserved, 0
        if flag == _FLAG_CONTROL or (flag != _FLAG_USER and len(body) < 4):
            self._memory.release(held)
            self._free_slot()  # nothing is handed to the application, so the buffer goes now
            if flag == _FLAG_CONTROL:
                self._control_frame(body)
            else:
                self._reject_frame(TruncatedMessage("request or response shorter than its request id"))
            return
        if flag != _FLAG_USER:
            request_id = int.from_bytes(body[:4], "big")
            del body[:4]
        self._outstanding += held
        self._deliver(FramesReceived([FrameReceived(flag, request_id, body, -1, 0, True, held)]))

    def _stream_end(self, stream_id: int, incoming: _Incoming) -> None:
        incoming.ended = True
        if incoming.decoder is not None:
            incoming.decoder.finish()
            self._incoming.pop(stream_id, None)
        elif incoming.held is not None:
            return  # a large frame waiting for a buffer slot: judged once it has one
        elif incoming.reassembler is not None:
            flag, body = incoming.reassembler.finish()  # TruncatedFrame if the frame is incomplete
            incoming.reassembler = None
            self._deliver_large(stream_id, incoming, flag, body)
        elif stream_id in self._incoming:
            raise MalformedMessage("stream ended before its first frame header was complete")

    def _stream_cancelled(self, stream_id: int, units: int) -> None:
        """The peer gave up a large message: count as consumed what it spent on it that we did
        not count yet. Only once per stream, never for a lane, and never beyond what we granted."""
        incoming = self._incoming.get(stream_id)
        if incoming is not None and incoming.decoder is not None:
            self._reject_frame(MalformedMessage(f"a lane ({stream_id}) cannot be cancelled"))
            return
        if stream_id in self._cancelled or not _peer_initiated_uni(stream_id, self._is_client):
            self._reject_frame(MalformedMessage(f"stream {stream_id} cannot be cancelled"))
            return
        self._cancelled.add(stream_id)
        if incoming is not None:
            del self._incoming[stream_id]
            self._release(stream_id, incoming)
            credited = incoming.credited
        else:
            credited = self._refused.pop(stream_id, 0)
        self._settled.add(stream_id)
        self._credit_received(min(max(0, units - credited), self._advertised - self._consumed))

    def _stream_reset(self, stream_id: int) -> None:
        incoming = self._incoming.pop(stream_id, None)
        if incoming is None:
            return
        self._release(stream_id, incoming)
        if stream_id not in self._settled:
            self._refused[stream_id] = incoming.credited
            self._settled.add(stream_id)

    def _stop_sending(self, stream_id: int, error_code: int) -> None:
        if stream_id in self._large:
            self.cancel_large(stream_id)
            reason = (
                "the peer has no memory for the message now"
                if error_code == STREAM_NO_MEMORY
                else "the peer refused the message"
            )
            self._events.append(LargeSendFailed(stream_id, reason))
        elif stream_id in self._lane_ids:
            # The peer will not read this lane any more: the next frame opens a fresh one.
            self._lane_ids[self._lane_ids.index(stream_id)] = None

    def _raise_limit(self) -> None:
        """Take up the peer's limit, but never with more of ours unacknowledged than
        ``_send_bound``: a peer that grants credit without acknowledging makes us hold nothing."""
        room = self._send_bound - self.unacked
        limit = min(self._peer_limit, self._sent + room)
        if limit > self._limit:
            self._limit = limit
            self._pump()
            self._events.append(CreditGranted())

    @property
    def backlogged(self) -> bool:
        """The peer leaves more of ours unacknowledged than its window allows and our answers
        may add (a peer withholding flow control to make us queue replies): control messages
        for it are better dropped than queued."""
        return self.unacked > self._send_bound + CONTROL_SLACK

    def _control(self, message: wire.WireMessage) -> None:
        if isinstance(message, wire.Credit):
            if message.limit > self._peer_limit:
                self._peer_limit = message.limit
                self._raise_limit()
        elif isinstance(message, wire.StreamCancelled):
            self._stream_cancelled(message.stream_id, message.units)
        elif isinstance(message, wire.Hello):
            if self._peer is None:
                self._peer = message
                self._check_established()
        elif self._established:
            if self.backlogged:  # the peer does not take our answers: ask no more of us
                self._drop_control()
                return
            self._events.append(ControlReceived(message))  # type: ignore[arg-type]
        elif self._held_control < HELD_CONTROL:
            self._held_control += 1
            self._held.append(ControlReceived(message))  # type: ignore[arg-type]
        elif not self._closing:
            self.close(CLOSE_PROTOCOL, "too many control messages before the Hello")
