"""One node of ``qp2p demo``, run as its own process: ``python -m qp2p._demo --index N ...``.

The parent (``qp2p demo`` in ``qp2p.cli``) talks to a node in JSON lines, stdout and stdin:

1. the node binds an endpoint on 127.0.0.1 port 0 and prints ``{"ready": [host, port]}``;
2. it reads ``{"peers": [[host, port], ...]}`` (every node's address, its own at its index),
   connects to every other node and prints ``{"connected": count}``;
3. it reads ``{"go": true}``, sent once every node is connected, so that the timed part starts
   together everywhere and handshakes (with both sides of a pair dialling) are over by then;
4. it sends messages and requests to every other node while checking everything it receives,
   and prints ``{"report": {...}}`` once all it expects has arrived or its timeout passed;
5. it keeps its endpoint open until stdin closes: peers may still be waiting for its replies.

Every payload starts with ``HEADER`` (sender's index, sequence number). A message's remaining
bytes are fixed per sender, so receivers check every byte; a request's are random, and its
reply is their SHA-256, which the requester checks. Receivers keep one flag per sequence
number, which finds any message lost or delivered twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

import qp2p
from qp2p import _loops

HEADER = struct.Struct(">HI")
# How long a node waits for each line from the parent before the exchange, and the parent for
# every node's "ready", then for every node's "connected".
STARTUP_TIMEOUT = 30.0
# Replies being sent at once. Each peer awaits every reply before its next request, so a node
# needs one per peer; the bound only guards against a misbehaving peer.
REPLY_SLOTS = 256
MAX_ERRORS = 10

Address = tuple[str, int]


def node_command(
    index: int, messages: int, requests: int, size: int, timeout: float, loop: str = "auto"
) -> list[str]:
    """The command line that starts node ``index`` with the current interpreter, on ``loop``."""
    return [
        sys.executable,
        "-P",  # the current folder may hold a qp2p source tree: run the installed one
        "-m",
        "qp2p._demo",
        f"--index={index}",
        f"--messages={messages}",
        f"--requests={requests}",
        f"--size={size}",
        f"--timeout={timeout}",
        f"--loop={loop}",
    ]


def message_body(sender: int, size: int) -> bytes:
    """What follows the header in every message ``sender`` sends."""
    return hashlib.shake_256(b"qp2p demo node %d" % sender).digest(size - HEADER.size)


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty sequence."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Node:
    """Sends to and receives from every peer, counting and checking everything."""

    def __init__(
        self,
        endpoint: qp2p.Endpoint,
        index: int,
        addresses: Sequence[Address],
        args: argparse.Namespace,
    ) -> None:
        self._endpoint = endpoint
        self._index = index
        self._addresses = addresses
        self._messages: int = args.messages
        self._requests: int = args.requests
        self._size: int = args.size
        self._peers = [peer for peer in range(len(addresses)) if peer != index]
        self._connections: dict[int, qp2p.Connection] = {}
        self._by_address = {addresses[peer]: peer for peer in self._peers}
        self._own_body = message_body(index, self._size)
        self._bodies = {peer: message_body(peer, self._size) for peer in self._peers}
        # One flag per sequence number, per peer: what has arrived.
        self._messages_seen = {peer: bytearray(self._messages) for peer in self._peers}
        self._requests_seen = {peer: bytearray(self._requests) for peer in self._peers}
        self._sent = dict.fromkeys(self._peers, 0)
        self._requested = dict.fromkeys(self._peers, 0)
        self._answered = dict.fromkeys(self._peers, 0)
        self._received_total = 0
        self._served_total = 0
        self._round_trips: list[float] = []
        self._errors: list[str] = []
        self._error_count = 0
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

    # ---- sending ---------------------------------------------------------------------------

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
            tasks.create_task(self._send_to(peer, connection, timeout))
            for peer, connection in self._connections.items()
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
                self._requested[peer] += 1
                # The exchange's own timeout bounds each request.
                reply = await connection.request(data, timeout=timeout)
                self._round_trips.append(time.perf_counter() - began)
                if reply == hashlib.sha256(data).digest():
                    self._answered[peer] += 1
                else:
                    self._error(f"node {peer} gave a wrong reply to request {number}")
        except qp2p.Error as exc:
            self._error(f"requesting from node {peer}: {exc}")

    # ---- receiving -------------------------------------------------------------------------

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

    # ---- the report ------------------------------------------------------------------------

    def _record_missing(self) -> None:
        for peer in self._peers:
            counts = (
                ("messages sent to", self._sent[peer], self._messages),
                ("messages received from", self._messages_seen[peer].count(1), self._messages),
                ("requests answered by", self._answered[peer], self._requests),
                ("requests received from", self._requests_seen[peer].count(1), self._requests),
            )
            for what, done, expected in counts:
                if done != expected:
                    self._error(f"{what} node {peer}: {done} of {expected}")

    def _report(self, elapsed: float) -> dict[str, Any]:
        ordered = sorted(self._round_trips)
        round_trip_ms = (
            {"p50": 1000 * _percentile(ordered, 0.5), "p99": 1000 * _percentile(ordered, 0.99)}
            if ordered
            else None
        )
        messages_sent = sum(self._sent.values())
        receive_s = None if self._messages_done is None else self._messages_done - self._started
        return {
            "index": self._index,
            "messages_sent": messages_sent,
            "messages_received": self._received_total,
            "bytes_sent": messages_sent * self._size,
            "bytes_received": self._received_total * self._size,
            "requests_sent": sum(self._requested.values()),
            "requests_answered": sum(self._answered.values()),
            "requests_served": self._served_total,
            "round_trip_ms": round_trip_ms,
            "receive_s": receive_s,
            "elapsed_s": elapsed,
            "errors": self._errors,
            "error_count": self._error_count,
        }


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class ParentError(Exception):
    """The parent's next line did not come in time, or was not what this node expected."""


async def _expect(stdin: asyncio.StreamReader, key: str) -> Any:
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


async def _run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        async with qp2p.Endpoint(qp2p.Config(local_ip="127.0.0.1")) as endpoint:
            _emit({"ready": list(endpoint.local_addr)})
            peers = await _expect(stdin, "peers")
            addresses = [(str(host), int(port)) for host, port in peers]
            node = Node(endpoint, args.index, addresses, args)
            _emit({"connected": await node.connect()})
            await _expect(stdin, "go")
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(node.receive(tasks))
                _emit({"report": await node.exchange(tasks, args.timeout)})
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one node; the exit status is 0 once it printed its report."""
    parser = argparse.ArgumentParser(prog="python -m qp2p._demo", description="One node of qp2p demo.")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--loop", choices=_loops.LOOPS, default="auto")
    args = parser.parse_args(argv)
    return _loops.run(_run(args), args.loop)


if __name__ == "__main__":
    raise SystemExit(main())
