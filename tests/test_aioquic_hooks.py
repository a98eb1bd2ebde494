"""Guards the private aioquic internals qp2p relies on: an aioquic upgrade that moves them fails here."""

from __future__ import annotations

import aioquic
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from qp2p._aioquic_hooks import smoothed_rtt, unacked_bytes


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
