"""The ``qp2p`` command line: ``info``, ``listen``, ``send``, ``demo``, ``ca`` and ``cert``."""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import qp2p
from qp2p import _demo, _loops, _speedups, tls

Address = tuple[str, int]

# Bytes of a received message that ``listen`` shows.
SHOWN_BYTES = 32
# After its last report, how long ``demo`` gives a node to exit once told to, before killing it.
EXIT_GRACE = 5.0
# Beyond the startup and the nodes' own timeout, how long ``demo`` waits for a report.
REPORT_GRACE = 15.0
# Bounds of the demo's options: processes, messages or requests per peer, bytes per message.
MAX_NODES = 64
MAX_COUNT = 10_000_000
MAX_SIZE = 16 << 20


def _info(_args: argparse.Namespace) -> int:
    import aioquic

    print(f"qp2p {qp2p.__version__}")
    print(f"backend: {_speedups.BACKEND}")
    print(f"event loop: {_loops.chosen(_args.loop)}")
    if _speedups.NO_EXTENSIONS:
        print("reason: QP2P_NO_EXTENSIONS is set (or the interpreter is not CPython)")
    elif _speedups.IMPORT_ERROR is not None:
        print(f"reason: the compiled modules did not import: {_speedups.IMPORT_ERROR}")
    for module in (_speedups.framing, _speedups.chunking, _speedups.retry, _speedups.packet):
        print(f"  {module.__name__}: {module.__file__}")
    print(f"aioquic {aioquic.__version__}, Python {sys.version.split()[0]}")
    return 0


# ---- addresses -----------------------------------------------------------------------------


def _address(text: str) -> Address:
    """``HOST:PORT`` (``[IPv6]:PORT``) as a tuple; argparse shows the error."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets, as [::1]:4000: {text!r}")
    if not colon or not host or not port.isdigit() or not 0 < int(port) <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def _format(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---- listen --------------------------------------------------------------------------------


async def _listen(args: argparse.Namespace) -> int:
    """``qp2p listen``: serve until SIGINT or SIGTERM, then close the endpoint and exit 0; with
    ``--metrics-port``, its Prometheus metrics are served over HTTP as long."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with qp2p.Endpoint(qp2p.Config(local_ip=args.ip, local_port=args.port)) as endpoint:
        print(f"listening on {_format(endpoint.local_addr)}", flush=True)
        metrics = None
        if args.metrics_port is not None:
            from qp2p.metrics import start_metrics_server  # prometheus-client only when asked for

            metrics = start_metrics_server(endpoint, args.metrics_port, args.metrics_host)
            print(f"metrics on http://{_format(metrics.address)}/metrics", flush=True)
        try:
            async with asyncio.TaskGroup() as tasks:
                serving = tasks.create_task(_serve(endpoint))
                await stop.wait()
                serving.cancel()
        finally:
            if metrics is not None:
                metrics.close()
    return 0


async def _serve(endpoint: qp2p.Endpoint) -> None:
    """Print every message; answer each request with its own bytes."""
    async for message in endpoint.incoming_messages():
        data = message.data
        shown = repr(bytes(data[:SHOWN_BYTES])) + ("..." if len(data) > SHOWN_BYTES else "")
        kind = "request" if message.is_request else "message"
        print(f"{_format(message.src)} {kind} {len(data)} bytes {shown}", flush=True)
        if message.is_request:
            try:
                await message.reply(data)
            except qp2p.Error as exc:
                print(
                    f"cannot reply to {_format(message.src)}: {_one_line(exc)}", file=sys.stderr, flush=True
                )


# ---- send ----------------------------------------------------------------------------------


async def _send(args: argparse.Namespace) -> int:
    """``qp2p send``: one message or request; a reply is shown as ``_shown`` makes it safe."""
    host, _ = args.addr
    config = qp2p.Config(local_ip="::" if ":" in host else "0.0.0.0", connect_timeout=args.timeout)
    data = args.message.encode("utf-8", "surrogateescape")  # an argument that is not UTF-8: its bytes
    async with qp2p.Endpoint(config) as endpoint:
        deadline = time.monotonic() + args.timeout
        connection = await endpoint.connect_to(args.addr)
        if args.request:
            reply = await connection.request(data, timeout=max(0.0, deadline - time.monotonic()))
            print(_shown(bytes(reply)))
        else:
            await connection.send(data)
            # send() returns once QUIC has the message; closing at once would discard it
            # before it is on the wire, so let the transmit it scheduled run first.
            await asyncio.sleep(0)
            print(f"sent {len(data)} bytes to {_format(connection.remote_addr)}")
    return 0


def _shown(data: bytes) -> str:
    """A peer's bytes as UTF-8 text if every character is printable, else as a bytes literal:
    a peer must not be able to drive our terminal with escape sequences or fake our output."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return repr(data)
    return text if text.isprintable() else repr(data)


# ---- demo ----------------------------------------------------------------------------------


class _Child:
    """One demo node process, from the parent's side: its stdout records and stderr's tail."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.problems: list[str] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=3)

    @classmethod
    async def start(cls, index: int, args: argparse.Namespace) -> _Child:
        command = _demo.node_command(index, args.messages, args.requests, args.size, args.timeout, args.loop)
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(index, process)

    async def drain_stderr(self) -> None:
        """Keep the last lines of stderr, until the process ends."""
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            text = line.decode(errors="replace").rstrip()
            if text:
                self.stderr_tail.append(text)

    async def read(self, key: str, deadline: float) -> Any:
        """The value under ``key`` of the next stdout record; None (and a problem noted) if none comes."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout_at(deadline):
                line = await self.process.stdout.readline()
        except TimeoutError:
            self.problems.append(f"no {key!r} record in time")
            return None
        if not line:
            self.problems.append(f"closed its stdout before its {key!r} record")
            return None
        try:
            return json.loads(line)[key]
        except (ValueError, KeyError, TypeError):
            self.problems.append(f"printed {line[:80]!r} instead of its {key!r} record")
            return None

    def tell(self, record: dict[str, Any]) -> None:
        """Write one record to its stdin (a node that died shows when it does not answer)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(record).encode() + b"\n")

    def failure(self) -> str | None:
        """What went wrong with the process itself, with its last words on stderr."""
        problems = list(self.problems)
        if self.process.returncode != 0:
            problems.append(f"exited with status {self.process.returncode}")
        if not problems:
            return None
        return "; ".join(problems) + "".join(f"\n      stderr: {line}" for line in self.stderr_tail)


async def _stop(children: Sequence[_Child]) -> None:
    """Close every node's stdin, which tells it to exit; kill what still runs after a grace period."""
    for child in children:
        assert child.process.stdin is not None
        child.process.stdin.close()
    waiting = [asyncio.ensure_future(child.process.wait()) for child in children]
    if waiting:
        await asyncio.wait(waiting, timeout=EXIT_GRACE)
    for child in children:
        if child.process.returncode is None:
            child.problems.append(f"still running {EXIT_GRACE:g} s after it was told to exit: killed")
            child.process.kill()
    await asyncio.gather(*waiting)


async def _run_nodes(
    args: argparse.Namespace, children: list[_Child], tasks: asyncio.TaskGroup
) -> list[Any] | None:
    """Start the nodes, connect them, and collect their reports (None where one is missing).

    None if some node did not get as far as the exchange: the run is called off.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index in range(args.nodes):
        child = await _Child.start(index, args)
        children.append(child)
        tasks.create_task(child.drain_stderr())
    startup_deadline = started + _demo.STARTUP_TIMEOUT
    addresses = await asyncio.gather(*(child.read("ready", startup_deadline) for child in children))
    if any(address is None for address in addresses):
        return None
    print(
        f"{args.nodes} nodes up in {loop.time() - started:.1f} s: "
        + ", ".join(_format(tuple(a)) for a in addresses)
    )
    for child in children:
        child.tell({"peers": addresses})
    connecting = loop.time()
    connected_deadline = connecting + _demo.STARTUP_TIMEOUT
    connected = await asyncio.gather(*(child.read("connected", connected_deadline) for child in children))
    if any(count is None for count in connected):
        return None
    print(
        f"connected in {loop.time() - connecting:.2f} s: {sum(connected)} of "
        f"{args.nodes * (args.nodes - 1)} connections; go"
    )
    for child in children:
        child.tell({"go": True})
    report_deadline = loop.time() + args.timeout + REPORT_GRACE
    return await asyncio.gather(*(child.read("report", report_deadline) for child in children))


def _rate(amount: float, seconds: float | None, digits: int) -> str:
    return "-" if not seconds else f"{amount / seconds:.{digits}f}"


def _ms(round_trips: dict[str, float] | None, key: str) -> str:
    return "-" if round_trips is None else f"{round_trips[key]:.2f}"


# The counts of a node's report that the totals add up.
COUNTED = ("messages_sent", "messages_received", "bytes_received", "requests_answered", "requests_served")


# The table's columns: heading (two lines) and width.
COLUMNS = (
    ("node", "", 5),
    ("sent", "msgs", 9),
    ("received", "msgs", 9),
    ("requests", "answered", 11),
    ("served", "requests", 9),
    ("msg/s", "received", 10),
    ("MB/s", "received", 8),
    ("rtt p50", "ms", 9),
    ("rtt p99", "ms", 9),
    ("time", "s", 7),
    ("errors", "", 6),
)
TABLE_ROW = " ".join(f"{{:>{width}}}" for _, _, width in COLUMNS)
TABLE_NOTE = """
msg/s, MB/s: messages a node received (and their bytes; 1 MB = 10^6 B), over the time it took to
receive all of them; the 'all' row divides the sums by the slowest node's time. rtt: round trips of
the node's requests, sent while the messages flow. time: until the node had all it expected."""


def _table(args: argparse.Namespace, reports: Sequence[Any]) -> None:
    """Print one row per node and the totals."""
    expected_requests = args.requests * (args.nodes - 1)
    print()
    print(TABLE_ROW.format(*(top for top, _, _ in COLUMNS)))
    print(TABLE_ROW.format(*(bottom for _, bottom, _ in COLUMNS)))
    totals = collections.Counter[str]()
    slowest = 0.0
    for index, report in enumerate(reports):
        if report is None:
            print(TABLE_ROW.format(index, *["-"] * (len(COLUMNS) - 1)))
            continue
        totals.update({key: value for key, value in report.items() if key in COUNTED})
        receive_s = report["receive_s"]
        slowest = max(slowest, receive_s or 0.0)
        print(
            TABLE_ROW.format(
                index,
                report["messages_sent"],
                report["messages_received"],
                f"{report['requests_answered']}/{expected_requests}",
                report["requests_served"],
                _rate(report["messages_received"], receive_s, 0),
                _rate(report["bytes_received"] / 1e6, receive_s, 2),
                _ms(report["round_trip_ms"], "p50"),
                _ms(report["round_trip_ms"], "p99"),
                f"{report['elapsed_s']:.2f}",
                report["error_count"],
            )
        )
    print(
        TABLE_ROW.format(
            "all",
            totals["messages_sent"],
            totals["messages_received"],
            f"{totals['requests_answered']}/{expected_requests * args.nodes}",
            totals["requests_served"],
            _rate(totals["messages_received"], slowest, 0),
            _rate(totals["bytes_received"] / 1e6, slowest, 2),
            *[""] * 4,
        )
    )
    print(TABLE_NOTE)


def _failures(args: argparse.Namespace, children: Sequence[_Child], reports: Sequence[Any]) -> list[str]:
    """Why the run failed, node by node; empty when every node delivered and received everything."""
    messages, requests = args.messages * (args.nodes - 1), args.requests * (args.nodes - 1)
    failures = []
    for child, report in zip(children, reports, strict=True):
        problem = child.failure()
        if problem is not None:
            failures.append(f"node {child.index}: {problem}")
        if report is None:
            continue
        short = [
            f"{what} {report[key]} of {expected}"
            for what, key, expected in (
                ("sent", "messages_sent", messages),
                ("received", "messages_received", messages),
                ("got right replies to", "requests_answered", requests),
                ("answered", "requests_served", requests),
            )
            if report[key] != expected
        ]
        if short:
            failures.append(f"node {child.index}: " + ", ".join(short))
        if report["error_count"]:
            unshown = report["error_count"] - len(report["errors"])
            lines = report["errors"] + ([f"({unshown} more)"] if unshown else [])
            failures.append(
                f"node {child.index} reported {report['error_count']} errors:"
                + "".join(f"\n      {line}" for line in lines)
            )
    return failures


async def _demo_run(args: argparse.Namespace) -> int:
    """``qp2p demo``: run the nodes, print the table; 0 only if nothing went missing or wrong."""
    pairs = args.nodes * (args.nodes - 1)
    print(f"qp2p {qp2p.__version__} demo, backend: {qp2p.BACKEND}, event loop: {_loops.chosen(args.loop)}")
    print(
        f"{args.nodes} nodes on 127.0.0.1, one process each; every node sends each of the other "
        f"{args.nodes - 1}\n{args.messages} messages of {args.size} bytes and {args.requests} requests "
        f"of {args.size} bytes (the reply is their SHA-256)"
    )
    began = time.monotonic()
    children: list[_Child] = []
    async with asyncio.TaskGroup() as tasks:
        try:
            reports = await _run_nodes(args, children, tasks)
        finally:
            await _stop(children)
    if reports is None:
        failures = [f"node {child.index}: {child.failure()}" for child in children if child.problems]
        print("FAILED: the run was called off before the exchange:\n" + "\n".join(f"  {f}" for f in failures))
        return 1
    _table(args, reports)
    print(f"\nwall time {time.monotonic() - began:.1f} s")
    failures = _failures(args, children, reports)
    if failures:
        print("FAILED:\n" + "\n".join(f"  {failure}" for failure in failures))
        return 1
    print(
        f"OK: all {args.nodes} nodes reported no errors; each of the {args.messages * pairs} messages "
        f"({args.messages * pairs * args.size / 1e6:.2f} MB)\narrived once and intact, and all "
        f"{args.requests * pairs} requests got the right reply"
    )
    return 0


# ---- the parser ----------------------------------------------------------------------------


def _count(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``minimum`` to ``maximum``."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {minimum} to {maximum}: {value}")
        return value

    return integer


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _run(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """A command as ``main`` calls it: the coroutine run in a fresh event loop."""

    def run(args: argparse.Namespace) -> int:
        return _loops.run(command(args), args.loop)

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qp2p", description="Peer-to-peer messaging over QUIC.")
    parser.add_argument(
        "--loop",
        choices=_loops.LOOPS,
        default="auto",
        help="the event loop: uvloop if installed (auto, the default), or asyncio's own",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the version, the active backend and its modules")
    info.set_defaults(run=_info)

    listen = commands.add_parser(
        "listen", help="print every message received; answer each request with its own bytes"
    )
    listen.add_argument("--ip", default="127.0.0.1", help="address to bind (default: %(default)s)")
    listen.add_argument("--port", type=int, default=0, help="port to bind, 0 for any (default: %(default)s)")
    listen.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus metrics over HTTP on this port, 0 for any (needs the metrics extra)",
    )
    listen.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="IP",
        help="address the metrics server binds (default: %(default)s; 0.0.0.0 lets anyone read them)",
    )
    listen.set_defaults(run=_run(_listen))

    send = commands.add_parser("send", help="send one message, or a request and print its reply")
    send.add_argument("addr", type=_address, metavar="ADDR", help="HOST:PORT, or [IPv6]:PORT")
    send.add_argument("message", metavar="MESSAGE", help="text to send, encoded as UTF-8")
    send.add_argument("--request", action="store_true", help="send a request and print the reply")
    send.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        help="seconds to connect and get a reply (default: %(default)s)",
    )
    send.set_defaults(run=_run(_send))

    demo = commands.add_parser(
        "demo",
        help="run nodes as separate processes that message each other, check everything and report",
        description="Start NODES nodes on 127.0.0.1, one process each. Every node sends MESSAGES messages "
        "and REQUESTS requests to every other node and checks everything it receives; a table of "
        "counts, throughput and round trips follows. Exit status 0 only if no node reported an error "
        "and every message and reply arrived once and intact.",
    )
    demo.add_argument(
        "--nodes", type=_count(2, MAX_NODES), default=4, help="processes (default: %(default)s)"
    )
    demo.add_argument(
        "--messages",
        type=_count(0, MAX_COUNT),
        default=2000,
        help="messages to each peer (default: %(default)s)",
    )
    demo.add_argument(
        "--requests",
        type=_count(0, MAX_COUNT),
        default=200,
        help="requests to each peer (default: %(default)s)",
    )
    demo.add_argument(
        "--size",
        type=_count(_demo.HEADER.size, MAX_SIZE),
        default=200,
        help="bytes per message (default: %(default)s)",
    )
    demo.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        help="seconds a node waits for all it expects (default: %(default)s)",
    )
    demo.set_defaults(run=_run(_demo_run))

    ca = commands.add_parser("ca", help="a network's own certificate authority (Trust.private_ca)")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = ca_commands.add_parser("init", help="create DIR/ca.pem and DIR/ca.key")
    ca_init.add_argument("dir", metavar="DIR", type=Path)
    ca_init.set_defaults(run=_ca_init)
    ca_issue = ca_commands.add_parser(
        "issue", help="create DIR/NAME.pem and DIR/NAME.key, signed by DIR's CA"
    )
    ca_issue.add_argument("name", metavar="NAME", type=_file_name)
    ca_issue.add_argument("--dir", type=Path, default=Path("."), help="the CA's folder (default: .)")
    ca_issue.add_argument(
        "--days", type=_count(1, 36500), default=825, help="validity (default: %(default)s)"
    )
    ca_issue.set_defaults(run=_ca_issue)

    cert = commands.add_parser(
        "cert", help="create a self-signed NAME.pem and NAME.key (for Trust.pinned or encrypt_only)"
    )
    cert.add_argument("name", metavar="NAME", type=_file_name)
    cert.add_argument("--dir", type=Path, default=Path("."), help="where to write (default: .)")
    cert.set_defaults(run=_cert)
    return parser


def _file_name(text: str) -> str:
    if not text or "/" in text or text.startswith(".") or text == "ca":
        raise argparse.ArgumentTypeError(f"not usable as a file name here: {text!r}")
    return text


def _write(identity: tls.Identity, folder: Path, name: str) -> None:
    """Write NAME.pem and NAME.key (0600) into ``folder``: both, or neither if either name is taken."""
    certfile, keyfile = folder / f"{name}.pem", folder / f"{name}.key"
    tls.write_identity(identity, certfile, keyfile)
    print(f"wrote {certfile} and {keyfile}")
    print(f"fingerprint: {identity.fingerprint}")


def _ca_init(args: argparse.Namespace) -> int:
    """``qp2p ca init DIR``: a new CA in DIR (made 0700 if it is new)."""
    folder: Path = args.dir
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(tls.new_ca(), folder, "ca")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    """``qp2p ca issue NAME``: a node certificate from DIR's CA, expiring no later than the CA."""
    folder: Path = args.dir
    try:
        ca = tls.load_identity(str(folder / "ca.pem"), str(folder / "ca.key"))
    except qp2p.CertificateError as exc:
        raise qp2p.CertificateError(f"{exc} (create the CA with: qp2p ca init {folder})") from None
    days = _days_within(ca, args.days, folder)
    _write(tls.issue(ca, args.name, days=days), folder, args.name)
    if days < args.days:
        expires = ca.certificate.not_valid_after_utc
        print(
            f"clamped --days {args.days} to {days}: "
            f"the CA expires on {expires:%Y-%m-%d}, and {args.name} no later"
        )
    return 0


def _days_within(ca: tls.Identity, days: int, folder: Path) -> int:
    """``days``, or the whole days the CA has left if fewer: a certificate must not outlive its CA."""
    expires = ca.certificate.not_valid_after_utc
    days_left = (expires - datetime.datetime.now(datetime.UTC)) // datetime.timedelta(days=1)
    if days_left < 1:
        raise qp2p.CertificateError(
            f"the CA in {folder} is valid until {expires:%Y-%m-%d %H:%M} UTC: not a whole day left "
            "to issue for; create a new CA with: qp2p ca init"
        )
    return min(days, days_left)


def _cert(args: argparse.Namespace) -> int:
    """``qp2p cert NAME``: a self-signed certificate and key."""
    _write(tls.self_signed_identity(), args.dir, args.name)
    return 0


def _one_line(exc: BaseException) -> str:
    """An error's message on one printable line: it may quote a peer, so nothing raw passes."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status: 0, 1 when a command fails (one line
    on stderr, never a traceback), or argparse's 2 for a command line it cannot parse."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except (qp2p.Error, OSError, ValueError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return status
