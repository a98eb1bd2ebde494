"""Fixtures for tests/ only (the root conftest holds the backend fixtures)."""

from __future__ import annotations

import datetime
import ssl

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _self_signed() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qp2p-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="session")
def quic_traffic() -> list[bytes]:
    """Every datagram of a real in-memory aioquic handshake, then 1-RTT stream data both ways."""
    cert, key = _self_signed()
    client = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["t"], verify_mode=ssl.CERT_NONE)
    )
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["t"])
    server_config.certificate, server_config.private_key = cert, key
    client_addr, server_addr = ("10.0.0.1", 1234), ("10.0.0.2", 4433)
    client.connect(server_addr, now=0.0)
    initial = client.datagrams_to_send(now=0.0)
    odcid = pull_quic_header(Buffer(data=initial[0][0]), host_cid_length=8).destination_cid
    server = QuicConnection(configuration=server_config, original_destination_connection_id=odcid)
    seen: list[bytes] = []
    outbound = [datagram for datagram, _ in initial]
    for round_ in range(12):
        now = round_ * 0.01
        for datagram in outbound:
            seen.append(datagram)
            server.receive_datagram(datagram, client_addr, now=now)
        if round_ == 4:
            server.send_stream_data(1, b"y" * 2000)
            client.send_stream_data(0, b"x" * 3000, end_stream=True)
        inbound = [datagram for datagram, _ in server.datagrams_to_send(now=now)]
        for datagram in inbound:
            seen.append(datagram)
            client.receive_datagram(datagram, server_addr, now=now)
        outbound = [datagram for datagram, _ in client.datagrams_to_send(now=now)]
    return seen
