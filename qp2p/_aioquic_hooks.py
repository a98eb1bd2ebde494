"""The private aioquic internals qp2p uses, all in one place.

aioquic 1.7 has no public way to:
- ask how much written data is still unacknowledged (a graceful close needs it: a
  CONNECTION_CLOSE abandons whatever is still in flight);
- learn that a connection started closing before its draining period ends;
- read the peer's certificate, or the connection's smoothed round-trip time;
- limit how many streams a peer may open;
- hold what its receive buffers keep for a peer to a window (it doubles its MAX_DATA limit as
  bytes arrive, whether they were delivered or are kept waiting behind a gap);
- authenticate clients: its server never asks for a client certificate, accepts an empty one
  and never checks a client's chain (``verify_mode`` is ignored on the server side);
- tie a session ticket to the certificate the session proved, resume without being asked for
  a certificate again (its server always asks), or refuse early data (its server accepts any
  0-RTT a resuming client offers);
- discover the path MTU: it sends every packet at one configured size, and neither sends
  probes, nor honours the peer's max_udp_payload_size, nor can change the size of a live
  connection (nor keep the probing of another path at the base size once it can);
- end a connection's qlog trace unless the connection reaches its terminated state, which one
  that is dropped without waiting for its closing period never does.

The version is pinned to 1.7.x in pyproject.toml; tests/test_aioquic_hooks.py fails if an
upgrade moves anything used here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic.congestion.base import QuicCongestionControl
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionState, QuicNetworkPath
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicFrameType, QuicPacketType, pull_quic_transport_parameters
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder, QuicSentPacket
from cryptography import x509

from ._pmtud import BASE_SIZE, PathMtu

if TYPE_CHECKING:
    from aioquic.quic.recovery import QuicPacketSpace

    from ._tickets import LinkTickets, Proven, Ticket

__all__ = (
    "CertificateRequired",
    "CheckedQuicConnection",
    "PeerCheck",
    "closing_event",
    "end_qlog_trace",
    "limit_streams",
    "peer_certificate",
    "smoothed_rtt",
    "unacked_bytes",
)

# Raises a ``tls.Alert`` subclass to refuse a peer's certificate (None when it sent none).
PeerCheck = Callable[[x509.Certificate | None, list[x509.Certificate]], None]


class CertificateRequired(tls.Alert):
    """The peer sent no certificate where one is required (TLS alert 116)."""

    description = tls.AlertDescription.certificate_required


class _CheckedContext(tls.Context):
    """aioquic's TLS context with qp2p's check of the peer's certificate, in both roles, and
    session tickets that stand for the certificate their full handshake proved."""

    _qp2p_check: PeerCheck
    _qp2p_tickets: LinkTickets | None
    _qp2p_resuming: Ticket | None  # the ticket offered or found, until the handshake says if it resumed

    def _qp2p_passes(self, proven: Proven) -> bool:
        """Whether a stored identity still passes the check (dates, the CA, the expected peer)."""
        try:
            self._qp2p_check(proven.certificate, list(proven.chain))
        except tls.Alert:
            return False
        return True

    def _qp2p_fetch_ticket(self, key: bytes) -> tls.SessionTicket | None:
        """A server's ``get_session_ticket_cb``: the ticket we issued for ``key``, if its
        identity still passes; else None, and the handshake is a full one."""
        assert self._qp2p_tickets is not None
        ticket = self._qp2p_tickets.find(key)
        if ticket is None or not self._qp2p_passes(ticket.proven):
            return None
        self._qp2p_resuming = ticket
        return ticket.session

    def _qp2p_keep_ticket(self, session: tls.SessionTicket) -> None:
        """``new_session_ticket_cb`` in both roles: the ticket, with the peer's proven certificate."""
        assert self._qp2p_tickets is not None
        certificate = self._peer_certificate
        if certificate is not None:
            self._qp2p_tickets.issued(
                session, certificate, self._peer_certificate_chain, self._session_resumed
            )

    def _qp2p_resume(self) -> None:
        """The peer resumed: its identity is the one the ticket was issued to, checked again."""
        ticket = self._qp2p_resuming
        if ticket is None:  # aioquic resumes only with the ticket we offered or found
            raise tls.AlertHandshakeFailure("resumed without a ticket")
        proven = ticket.proven
        self._peer_certificate = proven.certificate
        self._peer_certificate_chain = list(proven.chain)
        self._qp2p_check(proven.certificate, list(proven.chain))

    def _client_handle_hello(self, input_buf: Buffer, output_buf: Buffer) -> None:
        super()._client_handle_hello(input_buf, output_buf)
        if self._session_resumed:
            self._qp2p_resume()

    def _server_handle_hello(self, input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer) -> None:
        super()._server_handle_hello(input_buf, initial_buf, handshake_buf)
        if self._session_resumed:
            self._qp2p_resume()
            self._server_expect_finished()  # no certificate to wait for: the ticket stands for it

    def _client_handle_certificate_verify(self, input_buf: Buffer) -> None:
        super()._client_handle_certificate_verify(input_buf)  # the signature proves key possession
        self._qp2p_check(self._peer_certificate, self._peer_certificate_chain)

    def _server_handle_certificate(self, input_buf: Buffer) -> None:
        super()._server_handle_certificate(input_buf)
        if self._peer_certificate is None:  # an empty Certificate message
            self._qp2p_check(None, [])

    def _server_handle_certificate_verify(self, input_buf: Buffer) -> None:
        super()._server_handle_certificate_verify(input_buf)
        self._qp2p_check(self._peer_certificate, self._peer_certificate_chain)


class CheckedQuicConnection(QuicConnection):
    """A ``QuicConnection`` whose TLS runs ``peer_check`` on the peer's certificate.

    A server asks every client for a certificate. The check runs before the handshake
    completes, so a refused peer never gets 1-RTT keys on our side; a refusal closes the
    connection with CRYPTO_ERROR plus the alert. With ``tickets`` a returning peer may resume
    (1-RTT, never 0-RTT): see ``qp2p._tickets``.
    """

    def __init__(
        self,
        *,
        peer_check: PeerCheck,
        datagram_ceiling: int = BASE_SIZE,
        tickets: LinkTickets | None = None,
        **kwargs: Any,
    ) -> None:
        self._qp2p_check = peer_check
        self._qp2p_tickets = tickets  # None: no session tickets, every handshake is a full one
        # Bytes the peer may have sent that were not delivered yet (None: aioquic's own rule).
        self.receive_window: int | None = None
        # The datagram size this path carries; packets are built at path_mtu.size.
        self.path_mtu = PathMtu(datagram_ceiling)
        self._probed_path: QuicNetworkPath | None = None  # the path path_mtu describes
        self._mtu_probe_out = False  # a probe is in flight, on whichever path
        super().__init__(**kwargs)
        congestion = self._loss._cc
        congestion.__class__ = _watching(type(congestion))
        congestion._qp2p_connection = self  # type: ignore[attr-defined]

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """aioquic's datagrams, then a path MTU probe when one is due. A move of the peer is
        seen first, so that nothing toward its new address is built at the old path's size."""
        if self._probing():
            self._follow_peer()
        datagrams = super().datagrams_to_send(now=now)
        # One probe in flight, on whichever path (the peer may have moved while one was out),
        # and never more than 1200 bytes toward an unproven address.
        if self._probing() and not self._mtu_probe_out:
            network_path = self._network_paths[0]
            if network_path is self._probed_path and network_path.is_validated:
                size = self.path_mtu.probe_size(now)
                if size is not None:
                    self._mtu_probe_out = True
                    datagrams += self._send_mtu_probe(size, network_path, now)
        return datagrams

    def _send_probing_frames(
        self, network_path: QuicNetworkPath, now: float
    ) -> list[tuple[bytes, NetworkAddress]]:
        """aioquic's challenge or response on a path other than the current one, at 1200 bytes:
        that path's size is unknown, and aioquic pads these to the size it builds at, which a
        smaller path would drop (and the challenge is not sent again)."""
        size = self._max_datagram_size
        self._max_datagram_size = BASE_SIZE
        try:
            return super()._send_probing_frames(network_path=network_path, now=now)
        finally:
            self._max_datagram_size = size

    def _probing(self) -> bool:
        """Whether path MTU discovery runs: from the handshake's confirmation until closing."""
        return self._handshake_confirmed and self._state is QuicConnectionState.CONNECTED

    def _follow_peer(self) -> None:
        """When the peer moved, its new path is unknown: restart the search at the base size."""
        network_path = self._network_paths[0]
        if network_path is not self._probed_path:
            if self._probed_path is not None:
                self.path_mtu.restart()
                self._use_size(BASE_SIZE)
            self._probed_path = network_path

    def _send_mtu_probe(
        self, size: int, network_path: QuicNetworkPath, now: float
    ) -> list[tuple[bytes, NetworkAddress]]:
        """One 1-RTT packet of exactly ``size`` bytes toward ``network_path``: a PING, then
        PADDING to fill it. It is sent even when the congestion window is full (one at a time,
        like a PTO probe)."""
        version = self._version
        assert version is not None  # known since the handshake, which is confirmed
        builder = QuicPacketBuilder(
            host_cid=self.host_cid,
            is_client=self._is_client,
            max_datagram_size=size,
            packet_number=self._packet_number,
            peer_cid=self._peer_cid.cid,
            quic_logger=self._quic_logger,
            spin_bit=self._spin_bit,
            version=version,
        )
        builder.start_packet(QuicPacketType.ONE_RTT, self._cryptos[tls.Epoch.ONE_RTT])
        builder.start_frame(
            QuicFrameType.PING, handler=self._mtu_probe_delivered, handler_args=(size, network_path)
        )
        padding = builder.remaining_buffer_space
        builder.start_frame(QuicFrameType.PADDING, capacity=padding).push_bytes(bytes(padding - 1))
        return self._flush_builder(
            builder=builder, network_path=network_path, peer_cid=self._peer_cid.cid, now=now
        )

    def _mtu_probe_delivered(
        self, delivery: QuicDeliveryState, size: int, network_path: QuicNetworkPath
    ) -> None:
        """A probe's fate; one sent on a path the peer has since left tells nothing of the
        current one (a probe of the same size may be out on it)."""
        self._mtu_probe_out = False
        if network_path is not self._probed_path:
            return
        path = self.path_mtu
        if delivery == QuicDeliveryState.ACKED:
            path.probe_acked(size)
        else:
            path.probe_lost(size)
        self._use_size(path.size)

    def large_packets_lost(self, packets: Iterable[QuicSentPacket]) -> None:
        """Packets were declared lost in one event: count it if some were above the base size
        (probes aside), and fall back to the base size when the path turned into a black hole."""
        if any(packet.sent_bytes > BASE_SIZE and not self.is_mtu_probe(packet) for packet in packets):
            if self.path_mtu.large_lost():
                self._use_size(BASE_SIZE)

    def is_mtu_probe(self, packet: QuicSentPacket) -> bool:
        """Whether ``packet`` is one of our path MTU probes."""
        handlers = packet.delivery_handlers
        return bool(handlers) and handlers[0][0] == self._mtu_probe_delivered

    def _use_size(self, size: int) -> None:
        """Build packets at ``size`` from now on, and let congestion control count in it."""
        if size != self._max_datagram_size:
            self._max_datagram_size = size
            loss = self._loss
            loss._pacer._max_datagram_size = size
            congestion = loss._cc
            congestion._max_datagram_size = size  # type: ignore[attr-defined]
            if hasattr(congestion, "additive_increase_factor"):  # cubic
                congestion.additive_increase_factor = size

    def ack_in_next_packet(self) -> None:
        """Acknowledge in the next 1-RTT packet what is due to be acknowledged, instead of
        after aioquic's ack delay (1 ms), which costs a packet of its own: for when a packet
        goes out anyway."""
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is not None:
            space.ack_at = 0.0

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        """aioquic's parsing, then the peer's max_udp_payload_size bounds the path MTU search."""
        super()._parse_transport_parameters(data, from_session_ticket)
        limit = pull_quic_transport_parameters(Buffer(data=data)).max_udp_payload_size
        if limit is not None:
            self.path_mtu.limit(limit)
            self._use_size(self.path_mtu.size)

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        """MAX_DATA held to what was delivered (or given up by a reset) plus ``receive_window``,
        instead of aioquic's doubling; raised once half of that is used."""
        limit = self._local_max_data
        window = self.receive_window
        if window is None:
            super()._write_connection_limits(builder=builder, space=space)
            return
        if limit.value - limit.used < window // 2:
            held = sum(len(stream.receiver._buffer) for stream in self._streams.values())
            limit.value = max(limit.value, limit.used - held + window)
        used, limit.used = limit.used, 0  # aioquic doubles the limit when used passes half of it
        try:
            super()._write_connection_limits(builder=builder, space=space)
        finally:
            limit.used = used

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        context = self.tls
        context.__class__ = _CheckedContext  # tls.Context is built by name, with no factory hook
        assert isinstance(context, _CheckedContext)
        context._qp2p_check = self._qp2p_check
        context._qp2p_tickets = tickets = self._qp2p_tickets
        context._qp2p_resuming = None
        if not self._is_client:
            context._request_client_certificate = True
        if tickets is None:
            return
        context.new_session_ticket_cb = context._qp2p_keep_ticket
        if self._is_client:
            ticket = tickets.offer()
            if ticket is not None and context._qp2p_passes(ticket.proven):
                context.session_ticket = ticket.session
                context._qp2p_resuming = ticket
        else:
            context._max_early_data = None  # our tickets allow no early data
            context.get_session_ticket_cb = context._qp2p_fetch_ticket

    def _update_traffic_key(
        self, direction: tls.Direction, epoch: tls.Epoch, cipher_suite: tls.CipherSuite, secret: bytes
    ) -> None:
        """aioquic's, but for 0-RTT keys, which are never installed: early data is replayable,
        and a server of ours drops it (aioquic's would accept any a resuming client sends). Its
        TLS then tells the client so (its EncryptedExtensions are written after this call)."""
        if epoch == tls.Epoch.ZERO_RTT:
            self.tls.early_data_accepted = False
        else:
            super()._update_traffic_key(direction, epoch, cipher_suite, secret)


@cache
def _watching(base: type[QuicCongestionControl]) -> type[QuicCongestionControl]:
    """``base`` (aioquic's congestion controller) telling its connection about large packets
    acknowledged and lost, and leaving the loss of a path MTU probe out of its window: a probe
    larger than the path is lost for its size, not for congestion (RFC 8899 section 3)."""

    class Watching(base):  # type: ignore[valid-type, misc]
        _qp2p_connection: CheckedQuicConnection

        def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
            super().on_packet_acked(now=now, packet=packet)
            if packet.sent_bytes > BASE_SIZE:
                self._qp2p_connection.path_mtu.large_acked()

        def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
            connection = self._qp2p_connection
            probes: list[QuicSentPacket] = []
            others: list[QuicSentPacket] = []
            for packet in packets:
                (probes if connection.is_mtu_probe(packet) else others).append(packet)
            if probes:
                super().on_packets_expired(packets=probes)
            if others:
                super().on_packets_lost(now=now, packets=others)
                connection.large_packets_lost(others)

        def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
            packets = list(packets)
            super().on_packets_expired(packets=packets)
            self._qp2p_connection.large_packets_lost(packets)

    Watching.__name__ = Watching.__qualname__ = f"Watching{base.__name__}"
    return Watching


def unacked_bytes(quic: QuicConnection) -> int:
    """Bytes written to streams and not yet acknowledged (an unacknowledged FIN counts as one);
    streams that were reset count for nothing, since nothing of them will be delivered."""
    total = 0
    for stream in quic._streams.values():
        sender = stream.sender
        if sender._reset_error_code is None:
            total += sender._buffer_stop - sender._buffer_start
            if sender._buffer_fin is not None and not sender._acked_fin:
                total += 1
    return total


def closing_event(quic: QuicConnection) -> ConnectionTerminated | None:
    """Why the connection is closing, as soon as it starts to (aioquic reports it only after
    the closing or draining period, three probe timeouts later)."""
    return quic._close_event


def end_qlog_trace(quic: QuicConnection) -> None:
    """Hand the connection's qlog trace to its logger (qp2p's ``TraceFolder`` writes its file),
    as aioquic does on reaching the terminated state; nothing if there is none or it ended."""
    trace = quic._quic_logger
    logger = quic.configuration.quic_logger
    if trace is not None and logger is not None:
        quic._quic_logger = None  # no more events, and aioquic will not end it a second time
        logger.end_trace(trace)


def smoothed_rtt(quic: QuicConnection) -> float:
    """The connection's smoothed round-trip time in seconds (0 before the first sample)."""
    rtt: float = quic._loss._rtt_smoothed
    return rtt


def peer_certificate(quic: QuicConnection) -> x509.Certificate | None:
    """The certificate the peer presented, once the handshake got that far."""
    context = getattr(quic, "tls", None)
    return None if context is None else context._peer_certificate


def limit_streams(quic: QuicConnection, unidirectional: int, bidirectional: int) -> None:
    """How many streams of each kind the peer may have open at once (QUIC's MAX_STREAMS);
    call before the handshake, while the first transport parameters are still to be sent."""
    for limit, value in (
        (quic._local_max_streams_uni, unidirectional),
        (quic._local_max_streams_bidi, bidirectional),
    ):
        limit.value = limit.sent = value
