"""A local multi-node demo: nodes on 127.0.0.1, each its own process, message each other, check
every byte, and report counts, throughput and round-trip times.

    python examples/demo.py [--nodes 4] [--messages 2000] [--requests 200] [--size 200]
                            [--timeout 60] [--loop auto|asyncio|uvloop]

Every node sends each of the others MESSAGES messages and REQUESTS requests of SIZE bytes. The
exit status is 0 only if no node reported an error and every message and reply arrived once
and intact; the last line then begins with ``OK: all``.

The parent starts each node as ``demo.py --node INDEX ...`` and talks to it in JSON lines:

1. the node binds an endpoint on 127.0.0.1 port 0 and prints ``{"ready": [host, port]}``;
2. it reads ``{"peers": [[host, port], ...]}`` (every node's address, its own at its index),
   connects to every other node and prints ``{"connected": count}``;
3. it reads ``{"go": true}``, sent once every node is connected, so that the timed part starts
   together everywhere, with the handshakes over;
4. it sends to every other node while checking all it receives, and prints ``{"report": {...}}``
   once all it expects has arrived or its timeout passed;
5. it keeps its endpoint open until stdin closes: peers may still be waiting for its replies.

Every payload starts with ``HEADER`` (sender's index, sequence number). The rest of a message is
fixed per sender, so receivers check every byte; a request's rest is random, and its reply is
its SHA-256, which the requester checks. Receivers keep one flag per sequence number, which
finds any message lost or delivered twice.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import importlib
import importlib.util
import json
import math
import os
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

import qp2p

HEADER = struct.Struct(">HI")
# How long a node waits for each line from the parent before the exchange, and the parent for
# every node's "ready", then for every node's "connected".
STARTUP_TIMEOUT = 30.0
# After its last report, how long a node has to exit once told to, before it is killed.
EXIT_GRACE = 5.0
# Beyond the nodes' own timeout, how long the parent waits for their reports.
REPORT_GRACE = 15.0
# Replies being sent at once. Each peer awaits every reply before its next request, so a node
# needs one per peer; the bound only guards against a misbehaving peer.
REPLY_SLOTS = 256
MAX_ERRORS = 10  # error lines a node reports; it counts them all
# Bounds of the options: processes, messages or requests per peer, bytes per message.
BOUNDS = {
    "nodes": (2, 64),
    "messages": (0, 10_000_000),
    "requests": (0, 10_000_000),
    "size": (HEADER.size, 16 << 20),
}

Address = tuple[str, int]


# ---- one node ----------------------------------------------------------------------------------


def message_body(sender: int, size: int) -> bytes:
    """What follows the header in every message ``sender`` sends."""
    return hashlib.shake_256(b"qp2p demo node %d" % sender).digest(size - HEADER.size)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty sequence."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Node:
    """Sends to and receives from every peer, counting and checking everything."""

    def __init__(
        self, endpoint: qp2p.Endpoint, addresses: Sequence[Address], args: argparse.Namespace
    ) -> None:
        self._endpoint, self._index, self._addresses = endpoint, args.node, addresses
        self._messages: int = args.messages
        self._requests: int = args.requests
        self._size: int = args.size
        self._peers = [peer for peer in range(len(addresses)) if peer != self._index]
        self._connections: dict[int, qp2p.Connection] = {}
        self._by_address = {addresses[peer]: peer for peer in self._peers}
        self._own_body = message_body(self._index, self._size)
        self._bodies = {peer: message_body(peer, self._size) for peer in self._peers}
        # One flag per sequence number, per peer: what has arrived.
        self._messages_seen = {peer: bytearray(self._messages) for peer in self._peers}
        self._requests_seen = {peer: bytearray(self._requests) for peer in self._peers}
        self._sent = dict.fromkeys(self._peers, 0)
        self._answered = dict.fromkeys(self._peers, 0)
        self._received_total = self._served_total = self._error_count = 0
        self._round_trips: list[float] = []
        self._errors: list[str] = []
        self._reply_slots = asyncio.Semaphore(REPLY_SLOTS)
        self._all_arrived = asyncio.Event()
        self._started = 0.0
        self._messages_done: float | None = None

    def _error(self, text: str) -> None:
        self._error_count += 1
        if len(self._errors) < MAX_ERRORS:
            self._errors.append(text)

    def _check_arrived(self) -> None:
        expected = len(self._peers)
        if self._messages_done is None and self._received_total == self._messages * expected:
            self._messages_done = time.perf_counter()
        if self._messages_done is not None and self._served_total == self._requests * expected:
            self._all_arrived.set()

    async def connect(self) -> int:
        """Connect to every peer at once; how many connections there are."""

        async def connect_to(peer: int) -> None:
            try:
                self._connections[peer] = await self._endpoint.connect_to(self._addresses[peer])
            except qp2p.Error as exc:
                self._error(f"cannot connect to node {peer}: {exc}")

        await asyncio.gather(*(connect_to(peer) for peer in self._peers))
        return len(self._connections)

    async def exchange(self, tasks: asyncio.TaskGroup, timeout: float) -> dict[str, Any]:
        """Send everything, wait for everything (at most ``timeout`` s); the report."""
        self._started = time.perf_counter()
        self._check_arrived()  # with nothing to receive, all has arrived already
        senders = [
            tasks.create_task(self._send_to(peer, conn, timeout)) for peer, conn in self._connections.items()
        ]
        try:
            async with asyncio.timeout(timeout):
                if senders:
                    await asyncio.wait(senders)
                await self._all_arrived.wait()
        except TimeoutError:
            self._error(f"timed out after {timeout:g} s")
            for sender in senders:
                sender.cancel()
            if senders:
                await asyncio.wait(senders)
        elapsed = time.perf_counter() - self._started
        self._record_missing()
        return self._report(elapsed)

    async def _send_to(self, peer: int, connection: qp2p.Connection, timeout: float) -> None:
        async with asyncio.TaskGroup() as both:
            both.create_task(self._send_messages(peer, connection))
            both.create_task(self._send_requests(peer, connection, timeout))

    async def _send_messages(self, peer: int, connection: qp2p.Connection) -> None:
        try:
            for number in range(self._messages):
                # send() waits while the peer's credit is used up: that bounds what is in flight.
                await connection.send(HEADER.pack(self._index, number) + self._own_body)
                self._sent[peer] += 1
        except qp2p.Error as exc:
            self._error(f"sending to node {peer}: {exc}")

    async def _send_requests(self, peer: int, connection: qp2p.Connection, timeout: float) -> None:
        try:
            for number in range(self._requests):
                data = HEADER.pack(self._index, number) + os.urandom(self._size - HEADER.size)
                began = time.perf_counter()
                reply = await connection.request(data, timeout=timeout)  # the exchange's own bound
                self._round_trips.append(time.perf_counter() - began)
                if reply == hashlib.sha256(data).digest():
                    self._answered[peer] += 1
                else:
                    self._error(f"node {peer} gave a wrong reply to request {number}")
        except qp2p.Error as exc:
            self._error(f"requesting from node {peer}: {exc}")

    async def receive(self, tasks: asyncio.TaskGroup) -> None:
        """Check every message and answer every request (in ``tasks``), until the endpoint closes."""
        async for message in self._endpoint.incoming_messages():
            if self._take(message):
                await self._reply_slots.acquire()
                tasks.create_task(self._reply(message))

    def _take(self, message: qp2p.Message) -> bool:
        """Check and count one message or request; True for a valid request, to be answered."""
        kind = "request" if message.is_request else "message"
        peer = self._by_address.get(message.src)
        data = message.data
        if peer is None:
            self._error(f"a {kind} from {message.src[0]}:{message.src[1]}, which is no peer")
            return False
        if len(data) != self._size:
            self._error(f"a {kind} of {len(data)} bytes from node {peer}, not {self._size}")
            return False
        sender, number = HEADER.unpack_from(data)
        seen = (self._requests_seen if message.is_request else self._messages_seen)[peer]
        if sender != peer or number >= len(seen):
            self._error(f"a {kind} from node {peer} claims sender {sender}, number {number}")
            return False
        if seen[number]:
            self._error(f"{kind} {number} from node {peer} arrived twice")
            return False
        if not message.is_request and memoryview(data)[HEADER.size :] != self._bodies[peer]:
            self._error(f"message {number} from node {peer} arrived corrupted")
            return False
        seen[number] = 1
        if message.is_request:
            self._served_total += 1
        else:
            self._received_total += 1
        self._check_arrived()
        return message.is_request

    async def _reply(self, message: qp2p.Message) -> None:
        try:
            await message.reply(hashlib.sha256(message.data).digest())
        except qp2p.Error as exc:
            self._error(f"replying to node {self._by_address[message.src]}: {exc}")
        finally:
            self._reply_slots.release()

    def _record_missing(self) -> None:
        for peer in self._peers:
            for what, done, expected in (
                ("messages sent to", self._sent[peer], self._messages),
                ("messages received from", self._messages_seen[peer].count(1), self._messages),
                ("requests answered by", self._answered[peer], self._requests),
                ("requests received from", self._requests_seen[peer].count(1), self._requests),
            ):
                if done != expected:
                    self._error(f"{what} node {peer}: {done} of {expected}")

    def _report(self, elapsed: float) -> dict[str, Any]:
        ordered = sorted(self._round_trips)
        round_trip_ms = (
            {"p50": 1000 * percentile(ordered, 0.5), "p99": 1000 * percentile(ordered, 0.99)}
            if ordered
            else None
        )
        return {
            "messages_sent": sum(self._sent.values()),
            "messages_received": self._received_total,
            "bytes_received": self._received_total * self._size,
            "requests_answered": sum(self._answered.values()),
            "requests_served": self._served_total,
            "round_trip_ms": round_trip_ms,
            "receive_s": None if self._messages_done is None else self._messages_done - self._started,
            "elapsed_s": elapsed,
            "errors": self._errors,
            "error_count": self._error_count,
        }


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class ParentError(Exception):
    """The parent's next line did not come in time, or was not what this node expected."""


async def expect(stdin: asyncio.StreamReader, key: str) -> Any:
    """The value under ``key`` of the parent's next line."""
    try:
        line = await asyncio.wait_for(stdin.readline(), STARTUP_TIMEOUT)
    except TimeoutError:
        raise ParentError(f"no {key} from the parent within {STARTUP_TIMEOUT:g} s") from None
    if not line:
        raise ParentError(f"stdin closed before the {key}")
    try:
        return json.loads(line)[key]
    except (ValueError, KeyError, TypeError):
        raise ParentError(f"the parent sent {line[:80]!r}, not the {key}") from None


async def run_node(args: argparse.Namespace) -> int:
    """One node, driven by the parent over stdin and stdout; 0 once it printed its report."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        async with qp2p.Endpoint(qp2p.Config(local_ip="127.0.0.1")) as endpoint:
            emit({"ready": list(endpoint.local_addr)})
            node = Node(
                endpoint, [(str(host), int(port)) for host, port in await expect(stdin, "peers")], args
            )
            emit({"connected": await node.connect()})
            await expect(stdin, "go")
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(node.receive(tasks))
                emit({"report": await node.exchange(tasks, args.timeout)})
                # Until the parent has every report (it closes stdin then), or this long at most.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stdin.read(), args.timeout)
                await endpoint.close()  # ends node.receive(); replies still pending fail
    except ParentError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        pipe.close()
    return 0


# ---- the parent --------------------------------------------------------------------------------


class Child:
    """One node process, from the parent's side: its stdout records and stderr's tail."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index, self.process = index, process
        self.problems: list[str] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=3)

    @classmethod
    async def start(cls, index: int, args: argparse.Namespace) -> Child:
        options = [
            f"--{name}={getattr(args, name)}" for name in ("messages", "requests", "size", "timeout", "loop")
        ]
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, f"--node={index}", *options,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(index, process)

    async def drain_stderr(self) -> None:
        """Keep the last lines of stderr, until the process ends."""
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            if text := line.decode(errors="replace").rstrip():
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


async def stop(children: Sequence[Child]) -> None:
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


async def run_nodes(
    args: argparse.Namespace, children: list[Child], tasks: asyncio.TaskGroup
) -> list[Any] | None:
    """Start the nodes, connect them, and collect their reports (None where one is missing).
    None if some node did not get as far as the exchange: the run is called off."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index in range(args.nodes):
        children.append(await Child.start(index, args))
        tasks.create_task(children[-1].drain_stderr())
    addresses = await asyncio.gather(*(c.read("ready", started + STARTUP_TIMEOUT) for c in children))
    if any(address is None for address in addresses):
        return None
    up = ", ".join(f"{host}:{port}" for host, port in addresses)
    print(f"{args.nodes} nodes up in {loop.time() - started:.1f} s: {up}")
    for child in children:
        child.tell({"peers": addresses})
    connecting = loop.time()
    connected = await asyncio.gather(*(c.read("connected", connecting + STARTUP_TIMEOUT) for c in children))
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


def rate(amount: float, seconds: float | None, digits: int) -> str:
    return "-" if not seconds else f"{amount / seconds:.{digits}f}"


def ms(round_trips: dict[str, float] | None, key: str) -> str:
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


def table(args: argparse.Namespace, reports: Sequence[Any]) -> None:
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
                rate(report["messages_received"], receive_s, 0),
                rate(report["bytes_received"] / 1e6, receive_s, 2),
                ms(report["round_trip_ms"], "p50"),
                ms(report["round_trip_ms"], "p99"),
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
            rate(totals["messages_received"], slowest, 0),
            rate(totals["bytes_received"] / 1e6, slowest, 2),
            *[""] * 4,
        )
    )
    print(TABLE_NOTE)


def failures(children: Sequence[Child], reports: Sequence[Any]) -> list[str]:
    """Why the run failed, node by node; empty when every node delivered and received everything
    (a node counts as an error each message or request missing, see ``Node._record_missing``)."""
    found = []
    for child, report in zip(children, reports, strict=True):
        if (problem := child.failure()) is not None:
            found.append(f"node {child.index}: {problem}")
        if report is None:
            continue
        if report["error_count"]:
            unshown = report["error_count"] - len(report["errors"])
            lines = report["errors"] + ([f"({unshown} more)"] if unshown else [])
            found.append(
                f"node {child.index} reported {report['error_count']} errors:"
                + "".join(f"\n      {line}" for line in lines)
            )
    return found


async def run_demo(args: argparse.Namespace) -> int:
    """Run the nodes and print the table; 0 only if nothing went missing or wrong."""
    pairs = args.nodes * (args.nodes - 1)
    print(f"qp2p {qp2p.__version__} demo, event loop: {args.loop}")
    print(f"backend: {qp2p.BACKEND}")
    print(
        f"{args.nodes} nodes on 127.0.0.1, one process each; every node sends each of the other "
        f"{args.nodes - 1}\n{args.messages} messages of {args.size} bytes and {args.requests} requests "
        f"of {args.size} bytes (the reply is their SHA-256)"
    )
    began = time.monotonic()
    children: list[Child] = []
    async with asyncio.TaskGroup() as tasks:
        try:
            reports = await run_nodes(args, children, tasks)
        finally:
            await stop(children)
    if reports is None:
        called_off = [f"node {child.index}: {child.failure()}" for child in children if child.problems]
        print(
            "FAILED: the run was called off before the exchange:\n" + "\n".join(f"  {f}" for f in called_off)
        )
        return 1
    table(args, reports)
    print(f"\nwall time {time.monotonic() - began:.1f} s")
    if found := failures(children, reports):
        print("FAILED:\n" + "\n".join(f"  {failure}" for failure in found))
        return 1
    print(
        f"OK: all {args.nodes} nodes reported no errors; each of the {args.messages * pairs} messages "
        f"({args.messages * pairs * args.size / 1e6:.2f} MB)\narrived once and intact, and all "
        f"{args.requests * pairs} requests got the right reply"
    )
    return 0


# ---- the command line --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=4, help="processes")
    parser.add_argument("--messages", type=int, default=2000, help="messages to each peer")
    parser.add_argument("--requests", type=int, default=200, help="requests to each peer")
    parser.add_argument("--size", type=int, default=200, help="bytes per message")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a node waits for all it expects")
    parser.add_argument(
        "--loop", choices=["auto", "asyncio", "uvloop"], default="auto", help="auto: uvloop if installed"
    )
    parser.add_argument("--node", type=int, help=argparse.SUPPRESS)  # the parent starts its nodes with it
    args = parser.parse_args()
    for name, (low, high) in BOUNDS.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be {low} to {high}")
    if not 0 < args.timeout < math.inf:
        parser.error("--timeout must be a positive number of seconds")
    uvloop = importlib.util.find_spec("uvloop") is not None
    if args.loop == "uvloop" and not uvloop:
        parser.error("uvloop is not installed: pip install 'qp2p[uvloop]'")
    args.loop = "uvloop" if args.loop == "uvloop" or (args.loop == "auto" and uvloop) else "asyncio"
    factory = importlib.import_module("uvloop").new_event_loop if args.loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_demo(args) if args.node is None else run_node(args))


if __name__ == "__main__":
    sys.exit(main())
