"""Fixtures for tests/ only (the root conftest holds the backend fixtures)."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header

import qp2p
from qp2p import tls


@pytest.fixture(scope="session")
def quic_traffic() -> list[bytes]:
    """Every datagram of a real in-memory aioquic handshake, then 1-RTT stream data both ways."""
    identity = tls.self_signed_identity()
    client = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["t"], verify_mode=ssl.CERT_NONE)
    )
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["t"])
    server_config.certificate, server_config.private_key = identity.certificate, identity.private_key
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


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    """After the test: no new task, no pending timer, no new file descriptor."""
    loop = asyncio.get_running_loop()
    tasks_before = asyncio.all_tasks()
    fds_before = _open_fds()
    yield
    for _ in range(3):
        await asyncio.sleep(0)
    leaked_tasks = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
    assert not leaked_tasks, leaked_tasks
    timers = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert not timers, timers
    assert _open_fds() <= fds_before, _open_fds() - fds_before


@pytest.fixture
async def make_endpoint(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[qp2p.Endpoint]]]:
    """Starts endpoints on 127.0.0.1 (any ``Config`` field as keyword); closes them afterwards.
    Their bootstrap caches live in a temporary folder, never in the user's cache."""
    made: list[qp2p.Endpoint] = []

    async def make(**settings: Any) -> qp2p.Endpoint:
        settings.setdefault("bootstrap_cache_dir", str(tmp_path / f"cache-{len(made)}"))
        endpoint = qp2p.Endpoint(qp2p.Config(**settings))
        await endpoint.start()
        made.append(endpoint)
        return endpoint

    yield make
    for endpoint in made:
        await endpoint.close()
