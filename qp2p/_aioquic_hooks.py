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
  and never checks a client's chain (``verify_mode`` is ignored on the server side).

The version is pinned to 1.7.x in pyproject.toml; tests/test_aioquic_hooks.py fails if an
upgrade moves anything used here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioquic import tls
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from cryptography import x509

if TYPE_CHECKING:
    from aioquic._buffer import Buffer
    from aioquic.quic.packet_builder import QuicPacketBuilder
    from aioquic.quic.recovery import QuicPacketSpace

__all__ = (
    "CertificateRequired",
    "CheckedQuicConnection",
    "PeerCheck",
    "closing_event",
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
    """aioquic's TLS context with qp2p's check of the peer's certificate, in both roles."""

    _qp2p_check: PeerCheck

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
    connection with CRYPTO_ERROR plus the alert.
    """

    def __init__(self, *, peer_check: PeerCheck, **kwargs: Any) -> None:
        self._qp2p_check = peer_check
        # Bytes the peer may have sent that were not delivered yet (None: aioquic's own rule).
        self.receive_window: int | None = None
        super().__init__(**kwargs)

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
        context._qp2p_check = self._qp2p_check  # type: ignore[attr-defined]
        if not self._is_client:
            context._request_client_certificate = True


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
