"""Attacks on what an endpoint tells its operator, over real sockets on 127.0.0.1: a peer that
drives our qlog traces (frames stuffed into packets, connection ids of its choosing, a folder
that fails), a client of the metrics port that is slow or rude, and a peer whose words try to
break a log line."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder, QuicPacketBuilderStop
from rogue import RoguePeer
from waiting import wait_until

import qp2p
from qp2p import endpoint as endpoint_module
from qp2p import metrics
from qp2p.metrics import EndpointCollector, start_metrics_server

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
KiB = 1 << 10


# ---- qlog ----------------------------------------------------------------------------------


def trace_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.suffix == ".qlog")


def trace_in(path: Path) -> dict[str, Any]:
    (trace,) = json.loads(path.read_text())["traces"]
    assert isinstance(trace, dict)
    return trace


def stuff_pings(rogue: RoguePeer) -> None:
    """From now on every PING the rogue sends fills its packet: one-byte PING frames, each of
    which a qlog trace records as an object of its own."""

    def pings(builder: QuicPacketBuilder, uids: list[int] | None = None, comment: str = "") -> None:
        while True:
            try:
                builder.start_frame(QuicFrameType.PING)
            except QuicPacketBuilderStop:
                return

    rogue.quic._write_ping_frame = pings  # type: ignore[method-assign]


def rogue_with_odcid(victim: qp2p.Endpoint, odcid: bytes) -> RoguePeer:
    """A rogue whose first Initial goes to ``odcid``: the id a server's trace is named by."""
    rogue = RoguePeer(victim.local_addr)
    rogue.quic._peer_cid.cid = odcid
    rogue.quic._original_destination_connection_id = odcid
    return rogue


async def test_a_peer_stuffing_packets_with_frames_cannot_grow_our_traces_past_their_memory(
    make_endpoint: MakeEndpoint, tmp_path: Path
) -> None:
    limit = 1 << 20
    victim = await make_endpoint(qlog_dir=str(tmp_path), qlog_memory_limit=limit)
    traces = victim._qlog
    assert traces is not None
    async with RoguePeer(victim.local_addr) as rogue:
        stuff_pings(rogue)
        # Each packet is some 1,200 frames: unbounded, 200 packets would make us hold some 40 MB.
        for _ in range(200):
            before = victim.stats().datagrams.received
            rogue.quic.send_ping(0)
            rogue.transmit()
            await wait_until(lambda: victim.stats().datagrams.received > before)  # noqa: B023
            assert traces.budget.held <= limit
    await wait_until(lambda: trace_files(tmp_path) and victim.stats().links == 0, timeout=10)
    assert traces.budget.held == 0  # the trace let go of everything it held

    (path,) = trace_files(tmp_path)
    assert path.stat().st_size <= limit
    events = trace_in(path)["events"]
    assert events[-1]["name"] == "qp2p:events_dropped" and events[-1]["data"]["count"] > 0
    assert events[0]["name"] != "qp2p:events_dropped"  # the handshake was kept: the first come first
    # aioquic adds a received packet's frames after logging it: they were all kept with it.
    received = [event for event in events if event["name"] == "transport:packet_received"]
    assert received and all(event["data"]["frames"] for event in received)
    assert any(frame["frame_type"] == "ping" for event in received for frame in event["data"]["frames"])


async def test_qlog_stops_at_its_disk_limit_and_probes_share_it(
    make_endpoint: MakeEndpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qp2p")
    folder = tmp_path / "traces"
    limit = 64 * KiB
    victim = await make_endpoint(qlog_dir=str(folder), qlog_disk_limit=limit)
    for _ in range(40):  # every handshake writes some 10 KB
        async with RoguePeer(victim.local_addr):
            pass
        await wait_until(lambda: victim.stats().links == 0, timeout=10)
        if victim._qlog is not None and victim._qlog.budget.stopped:
            break
    assert victim._qlog is not None and victim._qlog.budget.stopped
    written = trace_files(folder)
    assert sum(path.stat().st_size for path in written) <= limit
    (warning,) = [r for r in caplog.records if "qlog" in r.getMessage()]  # one, not one per connection
    assert "qlog_disk_limit" in warning.getMessage()

    other = await make_endpoint()
    assert await victim.is_reachable(other.local_addr)  # a probe's throwaway endpoint writes nothing either
    async with RoguePeer(victim.local_addr):
        pass
    await wait_until(lambda: victim.stats().links == 0, timeout=10)
    assert trace_files(folder) == written


async def test_a_folder_that_fails_costs_no_link_and_raises_nowhere(
    make_endpoint: MakeEndpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qp2p")
    folder = tmp_path / "gone"
    a = await make_endpoint(qlog_dir=str(folder))
    b = await make_endpoint(qlog_dir=str(folder))
    folder.rmdir()  # as a full disk would, every write now fails
    for _ in range(3):
        connection = await a.connect_to(b.local_addr)
        await connection.close()  # our trace fails to be written: the close does not
        await wait_until(lambda: not a._links and not b._links, timeout=10)
    for side in (a, b):
        assert side._qlog is not None and side._qlog.budget.stopped
    assert len([r for r in caplog.records if "qlog" in r.getMessage()]) == 2  # one per endpoint
    assert not folder.exists()


async def test_a_peer_choosing_our_trace_names_overwrites_nothing_and_follows_no_link(
    make_endpoint: MakeEndpoint, tmp_path: Path
) -> None:
    folder = tmp_path / "traces"
    folder.mkdir(mode=0o755)  # made by someone else, and not private
    odcid = bytes.fromhex("00112233445566778899")
    precious = tmp_path / "precious"
    precious.write_text("precious\n")
    (folder / f"{odcid.hex()}.qlog").symlink_to(precious)  # where traces were named before
    victim = await make_endpoint(qlog_dir=str(folder))
    for _ in range(2):  # the same id twice: two traces
        async with rogue_with_odcid(victim, odcid):
            pass
        await wait_until(lambda: victim.stats().links == 0, timeout=10)
    await wait_until(lambda: len(trace_files(folder)) == 3, timeout=10)

    assert precious.read_text() == "precious\n"
    written = [path for path in trace_files(folder) if not path.is_symlink()]
    assert len(written) == 2
    for path in written:
        assert path.name.startswith(f"{odcid.hex()}-server-")
        assert path.stat().st_mode & 0o777 == 0o600  # they hold stateless reset tokens
        assert trace_in(path)["common_fields"]["ODCID"] == odcid.hex()


# ---- the metrics server --------------------------------------------------------------------


async def http(addr: tuple[str, int], request: bytes) -> bytes:
    """Send ``request`` over a new TCP connection; everything that comes back until the server
    closes it. On the event loop, as Prometheus would be from outside: no thread."""
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(request)
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(10):
            return await reader.read() == b""
    except ConnectionResetError:
        return True


async def test_idle_metrics_clients_hold_no_thread_and_are_cut_off(
    make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.5)
    endpoint = await make_endpoint()
    threads = threading.active_count()
    with start_metrics_server(endpoint, 0) as server:
        idle = [await asyncio.open_connection(*server.address) for _ in range(3 * metrics.MAX_CLIENTS)]
        try:
            for _, writer in idle:
                writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            response = await http(server.address, GET)  # a real scraper still gets in
            assert response.startswith(b"HTTP/1.1 200 ") and b"qp2p_links 0.0" in response
            assert threading.active_count() == threads
            assert len(server._clients) <= metrics.MAX_CLIENTS
            for reader, _ in idle:  # each was let go: made room for another, or out of time
                assert await closed_by_server(reader)
            assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
        finally:
            for _, writer in idle:
                writer.close()
            await asyncio.gather(*(writer.wait_closed() for _, writer in idle), return_exceptions=True)


async def test_a_client_sending_a_byte_at_a_time_is_cut_off(
    make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.5)
    endpoint = await make_endpoint()
    with start_metrics_server(endpoint, 0) as server:
        reader, writer = await asyncio.open_connection(*server.address)
        try:
            try:
                for byte in GET[:-2]:  # 1.7 s in all, each byte well in time: the whole is not
                    if reader.at_eof():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)
            except ConnectionError:
                pass  # the server closed it, as it should, before the last bytes
            assert await closed_by_server(reader)
        finally:
            writer.close()
            await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def test_scrapes_in_a_burst_take_one_snapshot(
    make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "SNAPSHOT_INTERVAL", 60.0)  # the burst is well within it
    endpoint = await make_endpoint()
    stats = endpoint.stats
    calls = 0

    def counted() -> qp2p.EndpointStats:
        nonlocal calls
        calls += 1
        return stats()

    monkeypatch.setattr(endpoint, "stats", counted)
    with start_metrics_server(endpoint, 0) as server:
        responses = [await http(server.address, GET) for _ in range(50)]
    assert calls == 1
    assert len(set(responses)) == 1


def test_a_snapshot_is_taken_again_once_its_interval_has_passed() -> None:
    taken: list[float] = []

    def render() -> bytes:
        taken.append(0.0)
        return str(len(taken)).encode()

    snapshots = metrics._Snapshots(render, 1.0)
    assert [snapshots.text(now) for now in (0.0, 0.5, 0.99, 1.0, 1.5, 2.5)] == [
        b"1",
        b"1",
        b"1",
        b"2",
        b"2",
        b"3",
    ]


async def test_the_metrics_server_answers_get_and_head_and_refuses_the_rest(
    make_endpoint: MakeEndpoint,
) -> None:
    endpoint = await make_endpoint()
    with start_metrics_server(endpoint, 0) as server:
        head = await http(server.address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # headers, no body
        assert b"Content-Length: 0\r\n" not in head
        for request, status in [
            (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"405"),
            (b"\x16\x03\x01\x02\x00\r\n\r\n", b"400"),  # TLS spoken to a plain port
            (b"GET /metrics?name[]=qp2p_links HTTP/1.1\r\n\r\n", b"200"),  # parameters change nothing
            (b"GET / HTTP/1.1\r\nX: " + b"y" * (16 * KiB) + b"\r\n\r\n", b"431"),
        ]:
            assert (await http(server.address, request)).startswith(b"HTTP/1.1 " + status + b" ")
        full = await http(server.address, b"GET /metrics?name[]=qp2p_links HTTP/1.1\r\n\r\n")
        assert b"qp2p_handshakes_ok_total" in full


async def test_a_scrape_that_times_out_calls_its_snapshot_off(
    make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "SCRAPE_TIMEOUT", 0.2)
    endpoint = await make_endpoint()
    collector = EndpointCollector(endpoint)
    stats = endpoint.stats
    calls = 0

    def counted() -> qp2p.EndpointStats:
        nonlocal calls
        calls += 1
        return stats()

    monkeypatch.setattr(endpoint, "stats", counted)
    outcome: list[str] = []

    def scrape() -> None:
        try:
            list(collector.collect())
            outcome.append("metrics")
        except TimeoutError:
            outcome.append("timeout")

    thread = threading.Thread(target=scrape)
    thread.start()
    thread.join(timeout=10)  # the event loop is stuck meanwhile: the scrape gives up
    assert outcome == ["timeout"]
    for _ in range(3):
        await asyncio.sleep(0)
    assert calls == 0  # nothing left queued on the loop once the scrape gave up


def test_a_collector_whose_loop_is_gone_gives_no_metrics(tmp_path: Path) -> None:
    async def made() -> EndpointCollector:
        async with qp2p.Endpoint(qp2p.Config(bootstrap_cache_dir=str(tmp_path))) as endpoint:
            return EndpointCollector(endpoint)

    collector = asyncio.run(made())
    assert list(collector.collect()) == []


# ---- log records ---------------------------------------------------------------------------


async def test_a_peers_close_reason_never_breaks_a_log_line(
    make_endpoint: MakeEndpoint, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="qp2p")
    forged = "full\nCRITICAL qp2p.endpoint: forged"
    rogue = await make_endpoint(max_connections=1)
    victim, other = await make_endpoint(), await make_endpoint()
    await other.connect_to(rogue.local_addr)  # the rogue's one place: it refuses the next dial
    monkeypatch.setitem(endpoint_module.REFUSED_BECAUSE, "max_connections", forged)  # in its words
    assert not await victim.is_reachable(rogue.local_addr)
    await wait_until(lambda: any("not reachable" in r.getMessage() for r in caplog.records))
    for record in caplog.records:
        text = record.getMessage()
        assert "\n" not in text and forged not in text, text
    assert any("full\\nCRITICAL" in r.getMessage() for r in caplog.records)  # quoted, not lost
