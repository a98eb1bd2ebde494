"""Guards the private aioquic internals qp2p relies on: an aioquic upgrade that moves them fails here."""

from __future__ import annotations

import dataclasses
import json
import ssl
from collections.abc import Callable
from pathlib import Path

import aioquic
from aioquic import tls as aioquic_tls
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.logger import QuicFileLogger
from aioquic.quic.packet import pull_quic_header

from qp2p import tls
from qp2p._aioquic_hooks import CheckedQuicConnection, end_qlog_trace, smoothed_rtt, unacked_bytes
from qp2p._tickets import LinkTickets, TicketStore
from qp2p.config import Trust


def test_pinned_aioquic_version() -> None:
    assert aioquic.__version__.startswith("1.7.")


def test_unacked_bytes_reads_the_send_buffers() -> None:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
    assert unacked_bytes(quic) == 0
    stream = quic.get_next_available_stream_id(is_unidirectional=True)
    quic.send_stream_data(stream, b"x" * 1000)
    assert unacked_bytes(quic) == 1000
    quic.send_stream_data(stream, b"", end_stream=True)
    assert unacked_bytes(quic) == 1001
    other = quic.get_next_available_stream_id(is_unidirectional=True)
    quic.send_stream_data(other, b"y" * 10)
    quic.reset_stream(other, 1)
    assert unacked_bytes(quic) == 1001  # a reset stream will deliver nothing more


def test_smoothed_rtt_is_zero_before_the_first_sample() -> None:
    assert smoothed_rtt(QuicConnection(configuration=QuicConfiguration(is_client=True))) == 0.0


def test_end_qlog_trace_writes_the_trace_of_a_connection_never_terminated(tmp_path: Path) -> None:
    quic = QuicConnection(
        configuration=QuicConfiguration(is_client=True, quic_logger=QuicFileLogger(str(tmp_path)))
    )
    quic.connect(("10.0.0.2", 4433), now=0.0)
    quic.datagrams_to_send(now=0.0)
    end_qlog_trace(quic)
    end_qlog_trace(quic)  # ended once: aioquic would not end it again either
    (path,) = tmp_path.iterdir()
    assert path.name == quic.original_destination_connection_id.hex() + ".qlog"
    (trace,) = json.loads(path.read_text())["traces"]
    assert "transport:packet_sent" in {event["name"] for event in trace["events"]}


def _pump(
    client: QuicConnection, server: Callable[[bytes], CheckedQuicConnection], rounds: int = 8
) -> tuple[CheckedQuicConnection, list[events.QuicEvent]]:
    """A server for the client's first Initial, datagrams back and forth in memory; the server
    and its events."""
    client_addr, server_addr = ("10.0.0.1", 1234), ("10.0.0.2", 4433)
    outbound = [datagram for datagram, _ in client.datagrams_to_send(now=0.0)]
    quic = server(pull_quic_header(Buffer(data=outbound[0]), host_cid_length=8).destination_cid)
    seen: list[events.QuicEvent] = []
    for step in range(rounds):
        now = step * 0.01
        for datagram in outbound:
            quic.receive_datagram(datagram, client_addr, now=now)
        while (event := quic.next_event()) is not None:
            seen.append(event)
        for datagram, _ in quic.datagrams_to_send(now=now):
            client.receive_datagram(datagram, server_addr, now=now)
        outbound = [datagram for datagram, _ in client.datagrams_to_send(now=now)]
    return quic, seen


def test_a_resuming_client_gets_no_early_data_through() -> None:
    """aioquic's server accepts any 0-RTT a resuming client offers; ours installs no 0-RTT key,
    so early data never arrives, while the resumption itself works."""
    server_identity, client_identity = tls.self_signed_identity(), tls.self_signed_identity()
    store = TicketStore(limit=8, per_source=8)

    def server(original_cid: bytes) -> CheckedQuicConnection:
        configuration = QuicConfiguration(is_client=False, alpn_protocols=["t"])
        configuration.certificate, configuration.private_key = (
            server_identity.certificate,
            server_identity.private_key,
        )
        tickets = LinkTickets(store, "10.0.0.1", 60.0, lambda: 0.0)
        return CheckedQuicConnection(
            peer_check=tls.peer_check(Trust()),
            tickets=tickets,
            configuration=configuration,
            original_destination_connection_id=original_cid,
        )

    received: list[aioquic_tls.SessionTicket] = []

    def client(ticket: aioquic_tls.SessionTicket | None) -> QuicConnection:
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=["t"], verify_mode=ssl.CERT_NONE, server_name="qp2p"
        )
        configuration.certificate, configuration.private_key = (
            client_identity.certificate,
            client_identity.private_key,
        )
        configuration.session_ticket = ticket
        quic = QuicConnection(configuration=configuration, session_ticket_handler=received.append)
        quic.connect(("10.0.0.2", 4433), now=0.0)
        return quic

    first, _ = _pump(client(None), server)
    assert first.tls._peer_certificate == client_identity.certificate
    assert len(store) == 1 and received
    (issued,) = store._tickets.values()
    assert issued.session.max_early_data_size is None
    forced = dataclasses.replace(received[-1], max_early_data_size=0xFFFFFFFF)  # asks for 0-RTT
    returning = client(forced)
    stream = returning.get_next_available_stream_id(is_unidirectional=True)
    returning.send_stream_data(stream, b"early", end_stream=True)
    assert returning._cryptos[aioquic_tls.Epoch.ZERO_RTT].send.is_valid()  # so it goes as 0-RTT
    second, seen = _pump(returning, server)
    assert second.tls.session_resumed
    assert second.tls._peer_certificate == client_identity.certificate  # the identity the ticket holds
    assert not second._cryptos[aioquic_tls.Epoch.ZERO_RTT].recv.is_valid()
    kinds = [type(event) for event in seen]
    # The data arrives only once resent in 1-RTT packets, after the handshake: never replayable.
    assert kinds.index(events.HandshakeCompleted) < kinds.index(events.StreamDataReceived)
    # And it is not told its early data was accepted: it would then count on what we dropped.
    assert not returning.tls.early_data_accepted
    (completed,) = (event for event in seen if isinstance(event, events.HandshakeCompleted))
    assert not completed.early_data_accepted
