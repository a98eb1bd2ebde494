"""An endpoint's stats for Prometheus: a collector that reads ``Endpoint.stats()`` when
scraped, and a small HTTP server for it on the endpoint's event loop (docs/observability.md).

Needs the ``metrics`` extra (prometheus-client), imported only once a collector is made:
``MissingDependency`` says so when it is missing. Nothing is counted per event here: every
figure is the endpoint's own, read at scrape time. Label values come from fixed sets (paths,
directions, outcomes, and reasons written in qp2p's code), never from a peer's id or address,
so no peer can grow the number of series. The server binds loopback unless told otherwise, and
whoever reaches it gets bounded service: a few clients at once, each within a deadline, and at
most one snapshot per ``SNAPSHOT_INTERVAL`` however often they ask.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from qp2p import errors
from qp2p.endpoint import Endpoint, EndpointStats

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics_core import Metric

__all__ = (
    "MAX_CLIENTS",
    "REQUEST_TIMEOUT",
    "SCRAPE_TIMEOUT",
    "SNAPSHOT_INTERVAL",
    "EndpointCollector",
    "MetricsServer",
    "start_metrics_server",
)

# How long a scrape from another thread waits for the endpoint's event loop to take the
# snapshot, in seconds.
SCRAPE_TIMEOUT = 5.0
# HTTP clients the server serves at once; a newcomer past them takes the place of the one
# that has waited longest.
MAX_CLIENTS = 8
# How long a client has to send its request's head and take the answer, in seconds.
REQUEST_TIMEOUT = 5.0
# The longest request head (request line and headers) read, in bytes; a longer one gets 431.
MAX_REQUEST = 8 * 1024
# A scrape this soon (seconds) after the one that took a snapshot gets that snapshot again.
SNAPSHOT_INTERVAL = 1.0
# Prometheus' text format, as ``generate_latest`` writes it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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

    Made on the endpoint's event loop. A scrape from another thread (a server of
    prometheus_client's scrapes from its threads) has that loop take the snapshot, as the
    endpoint is not thread-safe, and waits at most ``SCRAPE_TIMEOUT`` (``TimeoutError``: the
    snapshot is then called off); a closed endpoint, or a closed loop, gives no metrics.
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
        future: concurrent.futures.Future[EndpointStats] = concurrent.futures.Future()

        def take() -> None:
            if future.set_running_or_notify_cancel():  # not if the scrape gave up meanwhile
                try:
                    future.set_result(self._endpoint.stats())
                except Exception as exc:
                    future.set_exception(exc)

        try:
            self._loop.call_soon_threadsafe(take)
        except RuntimeError:  # the loop is closed, and the endpoint with it
            raise errors.ClosedError("the endpoint's event loop is closed") from None
        try:
            return future.result(SCRAPE_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise


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


class _Snapshots:
    """The metrics text of the latest snapshot, made again only once ``interval`` seconds have
    passed since: however often clients scrape, the event loop takes one snapshot per interval
    at most. Sans-IO: the time is passed in."""

    def __init__(self, render: Callable[[], bytes], interval: float) -> None:
        self._render = render
        self._interval = interval
        self._text = b""
        self._at: float | None = None

    def text(self, now: float) -> bytes:
        """The latest snapshot's text, taken now if it is older than the interval."""
        if self._at is None or now - self._at >= self._interval:
            self._text = self._render()
            self._at = now
        return self._text


_REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 431: "Request Header Fields Too Large"}


def _response(status: int, body: bytes = b"", send_body: bool = True) -> bytes:
    """A whole HTTP/1.1 answer, after which the server closes the connection."""
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Length: {len(body)}", "Connection: close"]
    if status == 200:
        lines.append(f"Content-Type: {CONTENT_TYPE}")
    if status == 405:
        lines.append("Allow: GET, HEAD")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + (body if send_body else b"")


def _respond(head: bytes | None, metrics: Callable[[], bytes]) -> bytes:
    """The answer to a request ``head`` (None: one longer than ``MAX_REQUEST``): the metrics for
    GET (at any path; parameters change nothing), their headers for HEAD, else an error. Sans-IO:
    ``metrics`` is asked for only when they are answered."""
    if head is None:
        return _response(431)
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400)
    method = parts[0]
    if method not in (b"GET", b"HEAD"):
        return _response(405)
    return _response(200, metrics(), send_body=method == b"GET")


class MetricsServer:
    """The HTTP server ``start_metrics_server`` started, on the endpoint's event loop;
    ``close()`` (or leaving ``with``) stops it and frees its port."""

    def __init__(self, endpoint: Endpoint, sock: socket.socket, snapshots: _Snapshots) -> None:
        self._endpoint = endpoint
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._address = (str(host), int(port))
        self._snapshots = snapshots
        self._loop = asyncio.get_running_loop()
        self._clients: dict[asyncio.StreamWriter, None] = {}  # the connections served, oldest first
        self._server: asyncio.Server | None = None
        self._starting = self._loop.create_task(self._start())

    @property
    def address(self) -> tuple[str, int]:
        """The address the server listens on (the port chosen if 0 was asked for)."""
        return self._address

    async def _start(self) -> None:
        # Not serving until it is ours, so a close() before then leaves nothing of it running.
        server = await asyncio.start_server(
            self._serve, sock=self._sock, limit=MAX_REQUEST, start_serving=False
        )
        self._server = server
        await server.start_serving()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client: one request, read and answered within ``REQUEST_TIMEOUT``, then closed."""
        if len(self._clients) >= MAX_CLIENTS:
            oldest = next(iter(self._clients))
            del self._clients[oldest]
            oldest.close()  # its read or write fails, and its task ends
        self._clients[writer] = None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                try:
                    head: bytes | None = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    head = None
                writer.write(_respond(head, self._metrics))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # too slow, gone (or let go) before its request was whole, or before the answer
        finally:
            self._clients.pop(writer, None)
            writer.close()

    def _metrics(self) -> bytes:
        """The metrics text: none once the endpoint is closed, else the latest snapshot's."""
        if self._endpoint._state != "open":
            return b""
        return self._snapshots.text(self._loop.time())

    def close(self) -> None:
        """Stop listening, free the port and drop the clients being served; idempotent."""
        self._starting.cancel()
        if self._server is not None:
            self._server.close()
        self._sock.close()
        for writer in list(self._clients):
            writer.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_metrics_server(endpoint: Endpoint, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``endpoint``'s metrics over HTTP at ``host:port`` (port 0: any free one), until
    closed; call it on the endpoint's event loop, which serves them. Any path answers GET with
    the metrics, in Prometheus' text format. ``host`` is loopback by default: binding another
    address (such as ``0.0.0.0``) lets whoever reaches it read them.

    Serves ``MAX_CLIENTS`` clients at once (a newcomer takes the place of the one that has
    waited longest), gives each ``REQUEST_TIMEOUT`` seconds for its request and the answer,
    and takes at most one snapshot per ``SNAPSHOT_INTERVAL``.

    Raises ``ValueError`` for a host that is no IP address or a port out of range,
    ``MissingDependency`` without prometheus-client, ``OSError`` if the port cannot be bound.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the metrics host must be an IP address: {host!r}") from None
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"the metrics port is out of range: {port}")
    collector = EndpointCollector(endpoint)
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()  # ours alone: no other collector, no process-wide state
    registry.register(collector)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    return MetricsServer(endpoint, sock, _Snapshots(lambda: generate_latest(registry), SNAPSHOT_INTERVAL))
