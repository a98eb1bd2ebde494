"""What an endpoint tells its operator, over real sockets on 127.0.0.1: qlog traces, the
counters and gauges of ``Endpoint.stats()``, and log records that name their peer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from rogue import Sinks
from test_handshake_limits import flood_from
from waiting import wait_until

import qp2p
from qp2p._peer_log import peer_log

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]


async def received(endpoint: qp2p.Endpoint, count: int) -> list[qp2p.Message]:
    """The next ``count`` messages ``endpoint`` receives."""
    messages = []
    async with asyncio.timeout(10):
        async for message in endpoint.incoming_messages():
            messages.append(message)
            if len(messages) == count:
                return messages
    raise AssertionError("the endpoint closed")


# ---- qlog ----------------------------------------------------------------------------------


def traces(folder: Path) -> dict[str, dict[str, Any]]:
    """The qlog traces in ``folder``, by file name."""
    found = {}
    for path in folder.iterdir():
        document = json.loads(path.read_text())
        (trace,) = document["traces"]
        found[path.name] = trace
    return found


async def test_qlog_writes_one_trace_per_connection(make_endpoint: MakeEndpoint, tmp_path: Path) -> None:
    a = await make_endpoint(qlog_dir=str(tmp_path / "a"))
    b = await make_endpoint(qlog_dir=tmp_path / "b")  # a Path will do
    connection = await a.connect_to(b.local_addr)
    link = connection.current_link
    assert link is not None
    odcid = link.session.quic.original_destination_connection_id.hex()
    await connection.send(b"traced")
    await received(b, 1)
    await connection.close()
    # Our side wrote its trace as it dropped the link; the peer's ends after its draining period.
    await wait_until(lambda: any((tmp_path / "b").iterdir()), timeout=10)

    for side, vantage in (("a", "client"), ("b", "server")):
        ((name, trace),) = traces(tmp_path / side).items()  # one connection, one file
        assert name.startswith(f"{odcid}-{vantage}-") and name.endswith(".qlog")
        assert trace["common_fields"]["ODCID"] == odcid
        assert trace["vantage_point"]["type"] == vantage
        names = {event["name"] for event in trace["events"]}
        assert {"transport:packet_sent", "transport:packet_received"} <= names


async def test_qlog_traces_of_links_the_endpoint_drops_are_written(
    make_endpoint: MakeEndpoint, tmp_path: Path
) -> None:
    a = await make_endpoint(qlog_dir=str(tmp_path / "a"))
    b = await make_endpoint()
    for _ in range(2):
        connection = await a.connect_to(b.local_addr)
        await connection.close()
    await a.close()  # every link dropped at once: none waits for its closing period
    assert len(traces(tmp_path / "a")) == 2


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "empty"])
def test_qlog_dir_must_be_a_folder_we_can_write(tmp_path: Path, where: str) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    folder = {"a-file": str(a_file), "under-a-file": str(a_file / "qlog"), "empty": ""}[where]
    with pytest.raises(qp2p.ConfigError, match="qlog_dir"):
        qp2p.Config(qlog_dir=folder)


def test_qlog_dir_is_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "deep" / "qlog"
    config = qp2p.Config.from_env({"QP2P_QLOG_DIR": str(folder)})
    assert config.qlog_dir == str(folder)
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700


# ---- stats ---------------------------------------------------------------------------------


async def test_stats_count_messages_and_bytes_both_ways_and_keep_them_after_a_close(
    make_endpoint: MakeEndpoint,
) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    for size in (10, 200 * 1024):  # on a lane, and on a stream of its own
        await connection.send(bytes(size))
    request = asyncio.create_task(connection.request(b"ping", timeout=10))
    (asked,) = [message for message in await received(b, 3) if message.is_request]
    await asked.reply(b"pong!")
    assert await request == b"pong!"

    sent = (3, 10 + 200 * 1024 + 4)
    before = a.stats(), b.stats()
    assert [(s.messages_sent, s.bytes_sent, s.messages_received, s.bytes_received) for s in before] == [
        (*sent, 1, 5),
        (1, 5, *sent),
    ]
    for stats in before:
        assert stats.connections_by_path == {"direct": 1, "punched": 0, "relayed": 0}
        assert stats.handshakes_ok == 1 and sum(stats.handshakes_failed.values()) == 0
    await connection.close()
    await wait_until(lambda: not b.connections())
    after = b.stats()
    assert after.connections_by_path == {"direct": 0, "punched": 0, "relayed": 0}
    assert (after.messages_received, after.bytes_received, after.handshakes_ok) == (*sent, 1)


async def test_stats_count_failed_handshakes_by_reason(make_endpoint: MakeEndpoint) -> None:
    full = await make_endpoint(max_connections=1)
    slow = await make_endpoint(handshake_timeout=0.3, stateless_retry=False)
    a, b = await make_endpoint(), await make_endpoint(trust=qp2p.Trust.pinned(["ab" * 32]))
    await a.connect_to(full.local_addr)  # its one place
    with pytest.raises(qp2p.ConnectionError):
        await b.connect_to(full.local_addr)  # refused, before any certificate
    with pytest.raises(qp2p.CertificateError):
        await b.connect_to(a.local_addr)  # a's certificate is not pinned
    flood = await flood_from("127.0.0.1", slow.local_addr)  # an Initial, then silence
    try:
        flood.start_one()
        await wait_until(lambda: slow.stats().handshakes_failed["timeout"] == 1)
    finally:
        flood.close()
    gave_up = await make_endpoint(connect_timeout=0.3)
    async with Sinks(["127.0.0.1"], per_host=2) as sinks:  # nobody answers there
        with pytest.raises(qp2p.ConnectionError):
            await gave_up.connect_to(sinks.addrs[0])
        cancelled = asyncio.create_task(gave_up.connect_to(sinks.addrs[1]))
        await wait_until(lambda: gave_up.stats().links == 1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled

    failed = {"certificate": 0, "tls": 0, "timeout": 0, "refused": 0, "closed_by_peer": 0, "closed": 0}
    await wait_until(lambda: a.stats().handshakes_failed["certificate"] == 1)  # b's alert reached a
    assert b.stats().handshakes_failed == {**failed, "certificate": 1, "refused": 1}
    assert slow.stats().handshakes_failed == {**failed, "timeout": 1}
    assert gave_up.stats().handshakes_failed == {**failed, "timeout": 1, "closed": 1}
    assert b.stats().failed_handshakes == 2 and a.stats().handshakes_ok == full.stats().handshakes_ok == 1


# ---- log records ---------------------------------------------------------------------------


def records(caplog: pytest.LogCaptureFixture, logger: str, start: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == logger and r.getMessage().partition(": ")[2].startswith(start)
    ]


async def test_connection_records_carry_the_peer_id_and_address(
    make_endpoint: MakeEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qp2p")
    a, b = await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    await connection.close()
    await wait_until(lambda: records(caplog, "qp2p.connection", "closed: ConnectionLost("), timeout=10)

    host, port = a.local_addr
    for logger, start, function in [
        ("qp2p.endpoint", "connected (direct, accepted)", "_link_established"),
        ("qp2p.connection", "closed: ConnectionLost(", "_finish"),
    ]:
        (record,) = [r for r in records(caplog, logger, start) if r.peer_id == a.peer_id]  # type: ignore[attr-defined]
        assert record.peer_addr == f"{host}:{port}"  # type: ignore[attr-defined]
        assert record.getMessage().startswith(f"peer {a.peer_id[:16]} at {host}:{port}: ")
        assert record.funcName == function  # the line that logged, not the adapter's


async def test_a_refused_handshake_is_logged_with_the_address_and_no_peer_id(
    make_endpoint: MakeEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qp2p")
    a = await make_endpoint(trust=qp2p.Trust.pinned(["ab" * 32]))  # nobody we will meet
    b = await make_endpoint()
    with pytest.raises(qp2p.CertificateError):
        await a.connect_to(b.local_addr)
    host, port = b.local_addr
    (record, *_) = records(caplog, "qp2p.endpoint", "no connection")
    assert record.peer_id is None and record.peer_addr == f"{host}:{port}"  # type: ignore[attr-defined]
    assert record.getMessage().startswith(f"peer ? at {host}:{port}: no connection: ")


def test_peer_records_survive_a_percent_sign_in_the_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qp2p.test")
    log = peer_log(logging.getLogger("qp2p.test"), "cd" * 32, ("fe80::1%eth0", 4000))
    log.info("with %d argument", 1)
    log.info("without arguments, 100%")
    assert [r.getMessage() for r in caplog.records] == [
        f"peer {'cd' * 8} at [fe80::1%eth0]:4000: with 1 argument",
        f"peer {'cd' * 8} at [fe80::1%eth0]:4000: without arguments, 100%",
    ]
    assert caplog.records[0].peer_addr == "[fe80::1%eth0]:4000"  # type: ignore[attr-defined]
