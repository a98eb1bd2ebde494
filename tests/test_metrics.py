"""The Prometheus exporter, scraped over real HTTP on 127.0.0.1 while endpoints talk on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from processes import ENV, Running, env_without
from prometheus_client.parser import text_string_to_metric_families
from test_cli import one_line_error, qp2p_command, run
from test_observability import received

import qp2p
from qp2p.metrics import start_metrics_server

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
# A sample by its name and labels, as the text format writes them.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


async def scrape(addr: tuple[str, int]) -> str:
    """A real HTTP GET, from a thread: the collector has the event loop take its snapshot."""
    host, port = addr
    return await asyncio.to_thread(get, f"http://{host}:{port}/metrics")


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_a_scrape_reflects_the_traffic(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    with start_metrics_server(b, 0) as server:
        assert server.address[0] == "127.0.0.1"
        connection = await a.connect_to(b.local_addr)
        for _ in range(5):
            await connection.send(b"x" * 100)
        await received(b, 5)
        text = await scrape(server.address)

    samples = parse(text)
    assert sample(samples, "qp2p_messages_total", direction="in") == 5
    assert sample(samples, "qp2p_message_bytes_total", direction="in") == 500
    assert sample(samples, "qp2p_messages_total", direction="out") == 0
    assert sample(samples, "qp2p_connections", path="direct") == 1
    assert sample(samples, "qp2p_connections", path="relayed") == 0
    assert sample(samples, "qp2p_handshakes_ok_total") == 1
    assert sample(samples, "qp2p_handshakes_failed_total", reason="certificate") == 0
    assert sample(samples, "qp2p_links") >= 1 and sample(samples, "qp2p_datagrams_received_total") > 0
    assert all(name.startswith("qp2p_") for name, _ in samples)
    # No series names a peer: neither its id nor its address is ever a label value.
    values = {value for _, labels in samples for _, value in labels}
    assert not any(a.peer_id[:16] in value or str(a.local_addr[1]) in value for value in values)


async def test_a_closed_endpoint_gives_no_metrics_and_the_server_closes(make_endpoint: MakeEndpoint) -> None:
    endpoint = await make_endpoint()
    server = start_metrics_server(endpoint, 0)
    try:
        assert "qp2p_links 0.0" in await scrape(server.address)
        await endpoint.close()
        assert "qp2p_" not in await scrape(server.address)
    finally:
        server.close()
    server.close()  # idempotent
    with pytest.raises(OSError):
        await scrape(server.address)  # nobody listens any more


async def test_bad_addresses_are_refused(make_endpoint: MakeEndpoint) -> None:
    endpoint = await make_endpoint()
    for host, port in [("localhost", 0), ("127.0.0.1", 70000), ("127.0.0.1", -1)]:
        with pytest.raises(ValueError, match="metrics"):
            start_metrics_server(endpoint, port, host)


async def test_without_prometheus_client_the_error_names_the_extra(
    make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = await make_endpoint()
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if not installed
    with pytest.raises(qp2p.MissingDependency, match=r"qp2p\[metrics\]") as raised:
        start_metrics_server(endpoint, 0)
    assert isinstance(raised.value, ImportError)


# ---- qp2p listen --metrics-port ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_listen_serves_its_metrics_while_it_runs() -> None:
    listener = Running(qp2p_command("listen", "--port", "0", "--metrics-port", "0"), env=ENV)
    try:
        addr = listener.next().split()[-1]
        announced = listener.next()
        assert announced.startswith("metrics on http://127.0.0.1:") and announced.endswith("/metrics")
        url = announced.split()[-1]
        assert run("send", addr, "counted", timeout=30).returncode == 0
        assert " message 7 bytes " in listener.next()

        samples = parse(get(url))
        assert sample(samples, "qp2p_messages_total", direction="in") == 1
        assert sample(samples, "qp2p_message_bytes_total", direction="in") == 7
        assert sample(samples, "qp2p_handshakes_ok_total") == 1

        listener.process.send_signal(signal.SIGINT)
        assert listener.wait(timeout=10) == 0
        assert listener.stderr == ""
        with pytest.raises(OSError):
            get(url)  # the metrics went with the endpoint
    finally:
        listener.stop()


@pytest.mark.timeout(60)
def test_listen_metrics_errors_are_one_line(tmp_path: Path) -> None:
    line = one_line_error(run("listen", "--metrics-port", "0", "--metrics-host", "localhost", timeout=30))
    assert "must be an IP address" in line
    result = subprocess.run(
        qp2p_command("listen", "--metrics-port", "0"),
        env=env_without("prometheus_client", tmp_path),  # as if it were not installed
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "pip install 'qp2p[metrics]'" in one_line_error(result)
