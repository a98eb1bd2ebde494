"""A rogue qp2p peer over raw aioquic, and UDP sinks that count what reaches them.

The rogue speaks the public wire format (docs/protocol.md): a real TLS handshake with a
certificate of its own, a Hello, control and user frames on lane 0. It says whatever it likes
in them, counts every byte it sends at its socket, and can run a second QUIC connection to the
victim inside ``RelayData`` frames on the first, as a relay would carry it (``Tunnel``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from waiting import wait_until

import qp2p
from qp2p import tls, wire
from qp2p._aioquic_hooks import closing_event, unacked_bytes
from qp2p._speedups import framing
from qp2p.session import ALPN, endpoint_id_of
from qp2p.transport import CID_LENGTH

__all__ = (
    "PeerRef",
    "RawPeer",
    "RoguePeer",
    "Sink",
    "Sinks",
    "Tunnel",
    "punch",
    "ref_of",
    "relay_incoming",
    "withhold_flow_control",
)

Address = tuple[str, int]
Control = TypeVar("Control", bound=wire.ControlMessage)
KiB = 1 << 10

# ---- naming peers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerRef:
    """A peer as control messages name it: its certificate fingerprint and its Hello's endpoint id."""

    fingerprint: str
    endpoint_id: int

    @classmethod
    def of(cls, fingerprint: str) -> PeerRef:
        return cls(fingerprint, endpoint_id_of(fingerprint))


def ref_of(endpoint: qp2p.Endpoint) -> PeerRef:
    """How control messages name a live endpoint (the oracle an attacker would learn it from)."""
    return PeerRef.of(endpoint.peer_id)


def punch(peer: Address, who: PeerRef, delay_ms: int, padding: bytes = b"") -> wire.Punch:
    """A ``Punch``: "dial ``who`` at ``peer`` in ``delay_ms``"."""
    return wire.Punch(peer, who.fingerprint, delay_ms, padding=padding)


def relay_incoming(peer: Address, who: PeerRef, circuit: int) -> wire.RelayIncoming:
    """A ``RelayIncoming``: "``who`` at ``peer`` reaches you through ``circuit``"."""
    return wire.RelayIncoming(peer, who.fingerprint, circuit)


def withhold_flow_control(quic: QuicConnection) -> None:
    """Never raise MAX_DATA, MAX_STREAM_DATA or MAX_STREAMS: the peer may send us only what the
    first transport parameters allowed, and the rest waits in its send buffers."""
    quic._write_connection_limits = lambda builder, space: None  # type: ignore[method-assign]
    quic._write_stream_limits = lambda builder, space, stream: None  # type: ignore[method-assign]


# ---- a peer on one raw QUIC connection ---------------------------------------------------


class RawPeer:
    """One qp2p connection to a victim, driven by hand; a subclass says where its datagrams go.

    Frames the victim sends are decoded into ``received``; requests are answered with ``answer``
    when it is set. ``hello_fields`` replaces fields of our Hello (claims such as a huge
    ``receive_window``); ``flow_window`` set makes us grant the victim that many bytes of QUIC flow
    control and never more (``withhold_flow_control``). Sans-IO like aioquic:
    ``datagram_received`` in, ``_send_datagram`` out, one timer on the event loop.
    """

    def __init__(
        self,
        remote: Address,
        identity: tls.Identity | None = None,
        *,
        endpoint_id: int | None = None,
        answer: bytes | None = None,
        idle_timeout: float = 10.0,
        before_hello: tuple[wire.WireMessage, ...] = (),
        after_hello: tuple[wire.WireMessage, ...] = (),
        hello_fields: Mapping[str, Any] | None = None,
        flow_window: int | None = None,
        max_datagram_size: int = 1200,
    ) -> None:
        self.remote = remote
        # Frames written with the Hello, in the same write: before it, and after it.
        self.before_hello, self.after_hello = before_hello, after_hello
        self.identity = identity if identity is not None else tls.self_signed_identity()
        self.hello = wire.Hello(
            endpoint_id_of(self.fingerprint) if endpoint_id is None else endpoint_id,
            max_message_size=1 << 20,
            lane_threshold=64 * KiB,
            receive_window=4 << 20,
            large_message_slots=4,
            node=True,
        )
        self.hello = dataclasses.replace(self.hello, **(hello_fields or {}))
        self.answer = answer
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=[ALPN],
            server_name=tls.SERVER_NAME,
            verify_mode=ssl.CERT_NONE,
            connection_id_length=CID_LENGTH,
            idle_timeout=idle_timeout,
            max_datagram_size=max_datagram_size,
        )
        if flow_window is not None:
            config.max_data = config.max_stream_data = flow_window
        config.certificate = self.identity.certificate
        config.certificate_chain = self.identity.chain
        config.private_key = self.identity.private_key
        self.quic = QuicConnection(configuration=config)
        if flow_window is not None:
            withhold_flow_control(self.quic)
        self.received: list[wire.WireMessage] = []
        self.undecodable = 0
        self.peer_hello: wire.Hello | None = None
        self.handshake_done = False
        self.tunnels: dict[int, Tunnel] = {}
        self.relay_closed: set[int] = set()  # circuits the victim closed (or refused)
        self._decoders: dict[int, Any] = {}
        self._lane: int | None = None
        self._request_ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._done = False

    # ---- who we are and how it went ------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint (hex) of the certificate we present."""
        return self.identity.fingerprint

    @property
    def ref(self) -> PeerRef:
        """How control messages name us."""
        return PeerRef(self.fingerprint, self.hello.endpoint_id)

    @property
    def closed(self) -> bool:
        """True once the connection began closing, by either side."""
        return self._done or closing_event(self.quic) is not None

    @property
    def close_reason(self) -> str:
        """Why the connection closed, as aioquic reported it (empty while open)."""
        event = closing_event(self.quic)
        return "" if event is None else f"error {event.error_code:#x} {event.reason_phrase!r}"

    @property
    def established(self) -> bool:
        """Handshake complete, the victim's Hello in, and not closing."""
        return self.handshake_done and self.peer_hello is not None and not self.closed

    def controls(self, kind: type[Control]) -> list[Control]:
        """The control messages of type ``kind`` the victim sent us, in order."""
        return [m for m in self.received if isinstance(m, kind)]

    def user_data(self) -> list[bytes]:
        """The bytes of every user message and request the victim sent us."""
        return [bytes(m.data) for m in self.received if isinstance(m, wire.UserMessage | wire.Request)]

    def response(self, request_id: int) -> bytes | None:
        """The victim's answer to our request ``request_id``, once it came."""
        found = (m for m in self.received if isinstance(m, wire.Response) and m.request_id == request_id)
        answer = next(found, None)
        return None if answer is None else bytes(answer.data)

    # ---- sending -------------------------------------------------------------------------

    def start(self) -> None:
        """Send the first Initial."""
        self.quic.connect(self.remote, now=self._loop.time())
        self.transmit()

    async def establish(self, timeout: float = 5.0) -> None:
        """Handshake and Hellos; ``AssertionError`` if the victim did not let us in within ``timeout``."""
        self.start()
        try:
            await wait_until(lambda: self.established or self.closed, timeout)
        except TimeoutError:
            pass
        assert self.established, f"no connection to the victim within {timeout} s ({self.close_reason})"

    def write(self, frames: bytes) -> None:
        """Queue encoded frames on our lane 0 (opened, as a unidirectional stream, on first use)."""
        if self.closed:
            return
        if self._lane is None:
            self._lane = self.quic.get_next_available_stream_id(is_unidirectional=True)
        self.quic.send_stream_data(self._lane, frames)

    def open_stream(self, data: bytes, end_stream: bool = False) -> int:
        """Write ``data`` on a new unidirectional stream of ours (left open unless ``end_stream``)
        and send; returns its id, for ``write_stream``."""
        stream_id = self.quic.get_next_available_stream_id(is_unidirectional=True)
        self.write_stream(stream_id, data, end_stream)
        return stream_id

    def write_stream(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """More bytes on a stream of ours, then send."""
        if not self.closed:
            self.quic.send_stream_data(stream_id, data, end_stream=end_stream)
            self.transmit()

    @property
    def unacked(self) -> int:
        """Bytes we queued or sent that the victim did not acknowledge yet."""
        return unacked_bytes(self.quic)

    def send(self, *messages: wire.WireMessage) -> None:
        """Encode ``messages`` back to back on lane 0 (one write: as few packets as fit) and send."""
        self.write(b"".join(wire.encode(message) for message in messages))
        self.transmit()

    def request(self, data: bytes) -> int:
        """Send a request; returns its id, for ``response``."""
        request_id = next(self._request_ids)
        self.send(wire.Request(request_id, data))
        return request_id

    def transmit(self) -> None:
        """Send what QUIC has queued and re-arm the timer."""
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        if self._done:
            return
        for data, _ in self.quic.datagrams_to_send(now=self._loop.time()):
            self._send_datagram(data)
        self._handle_events()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.quic.get_timer()
        if at is not None and not self._done:
            self._timer = self._loop.call_at(at, self._on_timer)

    def transmit_soon(self) -> None:
        """Transmit at the end of this turn of the event loop."""
        if self._soon is None and not self._done:
            self._soon = self._loop.call_soon(self.transmit)

    def _send_datagram(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection (and our tunnels inside it) with one CONNECTION_CLOSE; forget it."""
        for tunnel in list(self.tunnels.values()):
            tunnel.close()
        if not self._done:
            if closing_event(self.quic) is None:
                self.quic.close(error_code=0, reason_phrase="rogue done")
            self.transmit()
            self._done = True
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None

    # ---- receiving -----------------------------------------------------------------------

    def datagram_received(self, data: bytes) -> None:
        """One datagram from the victim."""
        if self._done:
            return
        self.quic.receive_datagram(data, self.remote, now=self._loop.time())
        self._handle_events()
        self.transmit()

    def _on_timer(self) -> None:
        self._timer = None
        self.quic.handle_timer(now=self._loop.time())
        self._handle_events()
        self.transmit()

    def _handle_events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, events.HandshakeCompleted):
                self.handshake_done = True
                frames = (*self.before_hello, self.hello, *self.after_hello)
                self.write(b"".join(wire.encode(m) for m in frames))
                self.transmit_soon()
            elif isinstance(event, events.StreamDataReceived):
                self._stream_data(event.stream_id, event.data)
            elif isinstance(event, events.StopSendingReceived):
                # As RFC 9000 asks: a stream the victim will not read is reset, not resent.
                self.quic.reset_stream(event.stream_id, event.error_code)
            elif isinstance(event, events.ConnectionTerminated):
                self._done = True

    def _stream_data(self, stream_id: int, data: bytes) -> None:
        decoder = self._decoders.get(stream_id)
        if decoder is None:
            decoder = self._decoders[stream_id] = framing.FrameDecoder(framing.MAX_DATA_LEN)
        decoder.feed(data)
        for flag, body in decoder:
            try:
                message = wire.decode(flag, bytes(body))
            except qp2p.DecodeError:
                self.undecodable += 1
                continue
            self.received.append(message)
            self._message(message)

    def _message(self, message: wire.WireMessage) -> None:
        if isinstance(message, wire.Hello) and self.peer_hello is None:
            self.peer_hello = message
        elif isinstance(message, wire.Request) and self.answer is not None:
            self.write(wire.encode(wire.Response(message.request_id, self.answer)))
            self.transmit_soon()
        elif isinstance(message, wire.RelayData):
            tunnel = self.tunnels.get(message.circuit)
            if tunnel is not None:
                tunnel.datagram_received(message.datagram)
        elif isinstance(message, wire.RelayClose):
            self.relay_closed.add(message.circuit)


class RoguePeer(RawPeer):
    """A rogue peer on a UDP socket of its own; ``bytes_sent`` counts every byte it sent there.

    ``async with RoguePeer(victim_addr) as rogue:`` binds (on ``host``, any of 127/8 on Linux),
    shakes hands and sends the Hello; with ``handshake=False`` it only sends the first Initial,
    for a victim that may refuse it.
    """

    def __init__(
        self,
        remote: Address,
        identity: tls.Identity | None = None,
        *,
        handshake: bool = True,
        host: str = "127.0.0.1",
        **settings: Any,
    ) -> None:
        super().__init__(remote, identity, **settings)
        self.handshake = handshake
        self.host = host
        self.bytes_sent = 0
        self.datagrams_sent = 0
        self._socket: asyncio.DatagramTransport | None = None

    @property
    def local_addr(self) -> Address:
        """The address the victim sees us at."""
        assert self._socket is not None
        host, port = self._socket.get_extra_info("sockname")[:2]
        return host, port

    async def bind(self) -> None:
        """Open our socket on ``host``."""
        peer = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                peer.datagram_received(data)

        self._socket, _ = await self._loop.create_datagram_endpoint(Protocol, local_addr=(self.host, 0))

    def _send_datagram(self, data: bytes) -> None:
        if self._socket is not None and not self._socket.is_closing():
            self.bytes_sent += len(data)
            self.datagrams_sent += 1
            self._socket.sendto(data, self.remote)

    async def __aenter__(self) -> RoguePeer:
        await self.bind()
        try:
            if self.handshake:
                await self.establish()
            else:
                self.start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        if self._socket is not None:
            self._socket.close()


class Tunnel(RawPeer):
    """A second QUIC connection to the victim inside circuit ``circuit`` of ``outer``: its datagrams
    travel as ``RelayData`` on ``outer``'s lane 0, as a relay would carry them, and the victim's
    ``RelayData`` for that circuit come back to it. ``remote`` is the address it claims."""

    def __init__(
        self,
        outer: RawPeer,
        circuit: int,
        remote: Address,
        identity: tls.Identity | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(remote, identity, **settings)
        self.outer = outer
        self.circuit = circuit
        outer.tunnels[circuit] = self

    @property
    def refused(self) -> bool:
        """The victim closed our circuit, or the connection that carries it."""
        return self.circuit in self.outer.relay_closed or self.outer.closed

    def _send_datagram(self, data: bytes) -> None:
        self.outer.write(wire.encode(wire.RelayData(self.circuit, data)))
        self.outer.transmit_soon()


# ---- sinks ---------------------------------------------------------------------------------


class Sink(asyncio.DatagramProtocol):
    """A UDP socket that answers nothing and counts the datagrams and bytes that reach it."""

    def __init__(self) -> None:
        self.bytes = 0
        self.datagrams = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.bytes += len(data)
        self.datagrams += 1

    @property
    def addr(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


class Sinks:
    """``per_host`` sinks on each of ``hosts`` (any of 127/8 works on Linux); closed on exit."""

    def __init__(self, hosts: list[str], per_host: int = 1) -> None:
        self._hosts = hosts
        self._per_host = per_host
        self.all: list[Sink] = []

    async def __aenter__(self) -> Sinks:
        loop = asyncio.get_running_loop()
        for host in self._hosts:
            for _ in range(self._per_host):
                _, sink = await loop.create_datagram_endpoint(Sink, local_addr=(host, 0))
                self.all.append(sink)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for sink in self.all:
            if sink.transport is not None:
                sink.transport.close()

    @property
    def addrs(self) -> list[Address]:
        return [sink.addr for sink in self.all]

    @property
    def bytes(self) -> int:
        """Bytes that reached any of the sinks."""
        return sum(sink.bytes for sink in self.all)

    @property
    def datagrams(self) -> int:
        return sum(sink.datagrams for sink in self.all)

    @property
    def hit(self) -> int:
        """How many sinks received anything."""
        return sum(1 for sink in self.all if sink.datagrams)
