"""An endpoint's stats for Prometheus: a collector that reads ``Endpoint.stats()`` when
scraped, and an HTTP server for it (docs/observability.md).

Needs the ``metrics`` extra (prometheus-client), imported only once a collector is made:
``MissingDependency`` says so when it is missing. Nothing is counted per event here: every
figure is the endpoint's own, read at scrape time. Label values come from fixed sets (paths,
directions, outcomes, and reasons written in qp2p's code), never from a peer's id or address,
so no peer can grow the number of series. The server binds loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from qp2p import errors
from qp2p.endpoint import Endpoint, EndpointStats

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics_core import Metric

__all__ = ("SCRAPE_TIMEOUT", "EndpointCollector", "MetricsServer", "start_metrics_server")

# How long a scrape waits for the endpoint's event loop to take the snapshot, in seconds.
SCRAPE_TIMEOUT = 5.0


def _require_prometheus() -> None:
    """Import prometheus_client, or raise ``MissingDependency`` naming the extra."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise errors.MissingDependency(
            "Prometheus metrics need prometheus-client: pip install 'qp2p[metrics]'"
        ) from exc


class EndpointCollector:
    """A Prometheus collector of one endpoint's stats: ``registry.register(EndpointCollector(ep))``.

    Made on the endpoint's event loop. A scrape from another thread (Prometheus' own server
    scrapes from its threads) has that loop take the snapshot, as the endpoint is not
    thread-safe; a closed endpoint gives no metrics.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        _require_prometheus()
        self._endpoint = endpoint
        self._loop = asyncio.get_running_loop()

    def collect(self) -> Iterator[Metric]:
        """The metric families of one ``stats()`` snapshot."""
        try:
            stats = self._snapshot()
        except errors.ClosedError:
            return iter(())
        return _families(stats)

    def _snapshot(self) -> EndpointStats:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return self._endpoint.stats()
        return asyncio.run_coroutine_threadsafe(self._stats(), self._loop).result(SCRAPE_TIMEOUT)

    async def _stats(self) -> EndpointStats:
        return self._endpoint.stats()


# A metric: its name after ``qp2p_``, its help text, its value (one, or one per label value)
# and the label those values go under.
_Spec = tuple[str, str, int | Mapping[str, int], str]


def _families(stats: EndpointStats) -> Iterator[Metric]:
    """``stats`` as metric families; prometheus_client adds ``_total`` to each counter's name."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    datagrams = stats.datagrams
    memory = stats.memory
    assert memory is not None  # stats() always reports it
    gauges: list[_Spec] = [
        ("connections", "Connections by the path their packets take now", stats.connections_by_path, "path"),
        ("links", "QUIC connections alive, established or not", stats.links, ""),
        ("half_open_handshakes", "Handshakes peers started that are not done", stats.half_open, ""),
        ("queued_messages", "Messages received, not yet taken by the application", stats.queued_messages, ""),
        ("punches_in_flight", "Hole punches under way", stats.punches, ""),
        ("relay_circuits", "Circuits relayed for others now", stats.relay_circuits, ""),
        ("bootstrap_cache_entries", "Nodes in the bootstrap cache", stats.bootstrap_cache_size, ""),
        ("lost_nodes", "Nodes whose connection was lost, still redialled", stats.lost_nodes, ""),
        ("memory_used_bytes", "Memory peers make the endpoint hold", memory.used, ""),
        ("memory_limit_bytes", "The most memory peers may make the endpoint hold", memory.limit, ""),
    ]
    counters: list[_Spec] = [
        ("handshakes_ok", "Links established", stats.handshakes_ok, ""),
        ("handshakes_failed", "Links that ended before being established", stats.handshakes_failed, "reason"),
        (
            "messages",
            "Messages, requests and replies",
            {"in": stats.messages_received, "out": stats.messages_sent},
            "direction",
        ),
        (
            "message_bytes",
            "Payload bytes of messages, requests and replies",
            {"in": stats.bytes_received, "out": stats.bytes_sent},
            "direction",
        ),
        ("refusals", "Requests, dials and memory declined", stats.refusals, "reason"),
        ("punches_started", "Hole punches begun", stats.punches_started, ""),
        (
            "punches_ended",
            "Hole punches over",
            {"succeeded": stats.punches_succeeded, "failed": stats.punches_failed},
            "outcome",
        ),
        ("relay_circuits_opened", "Circuits relayed for others", stats.relay_circuits_opened, ""),
        ("relayed_bytes", "Datagram bytes relayed for others", stats.relayed_bytes, ""),
        ("upkeep_dials", "Dials made to stay joined", stats.upkeep_dials, ""),
        ("datagrams_received", "Datagrams that reached the socket", datagrams.received, ""),
        (
            "datagrams_dropped",
            "Datagrams dropped on arrival",
            {
                "malformed": datagrams.malformed,
                "unroutable": datagrams.unroutable,
                "bad_token": datagrams.bad_tokens,
            },
            "reason",
        ),
        ("retries_sent", "Retry packets sent to make clients prove their address", datagrams.retries, ""),
        ("keep_alives_sent", "PINGs sent on idle links", stats.keep_alives, ""),
    ]
    for spec in gauges:
        yield _metric(GaugeMetricFamily, *spec)
    for spec in counters:
        yield _metric(CounterMetricFamily, *spec)


def _metric(
    family: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    doc: str,
    value: int | Mapping[str, int],
    label: str,
) -> Metric:
    """One family named ``qp2p_<name>``: one sample, or one per key of ``value`` under ``label``."""
    if not isinstance(value, Mapping):
        return family(f"qp2p_{name}", doc, value=value)
    metric = family(f"qp2p_{name}", doc, labels=[label])
    for key, count in value.items():
        metric.add_metric([key], count)
    return metric


class MetricsServer:
    """The HTTP server ``start_metrics_server`` started, in a thread of its own; ``close()``
    (or leaving ``with``) stops it and frees its port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        """The address the server listens on (the port chosen if 0 was asked for)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving (waiting up to half a second for the server's loop) and close the
        socket; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_metrics_server(endpoint: Endpoint, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``endpoint``'s metrics over HTTP at ``host:port`` (port 0: any free one), until
    closed; call it on the endpoint's event loop. Any path answers with the metrics, in
    Prometheus' text format. ``host`` is loopback by default: binding another address (such as
    ``0.0.0.0``) lets whoever reaches it read them.

    Raises ``ValueError`` for a host that is no IP address or a port out of range,
    ``MissingDependency`` without prometheus-client, ``OSError`` if the port cannot be bound.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the metrics host must be an IP address: {host!r}") from None
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"the metrics port is out of range: {port}")
    collector = EndpointCollector(endpoint)
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()  # ours alone: no other collector, no process-wide state
    registry.register(collector)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
