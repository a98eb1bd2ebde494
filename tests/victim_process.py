"""One qp2p endpoint in a process of its own, the victim of tests/test_memory_attacks.py and
scripts/attack_matrix.py (not a test module).

    python victim_process.py [CONFIG_JSON] [--reader normal|never|RATE] [--reply-size N]
                             [--lifetime S] [--rss-ceiling-mib N]

``CONFIG_JSON`` is an object of ``qp2p.Config`` fields, passed through as they are (so fields
being added, such as ``memory_limit``, can be set before this script knows them). The backend
follows ``QP2P_NO_EXTENSIONS`` in the environment.

It prints ``{"ready": [host, port], "fingerprint": ..., "backend": ...}``, then answers one JSON
line per line read on stdin: ``{"rss": bytes, "peak": bytes, "stats": {...}, "received": {...}}``,
its resident set size now and at its peak (``VmRSS``, ``VmHWM`` in /proc/self/status),
``Endpoint.stats()`` and what it received (``count``
user messages, ``unique`` distinct ones by their first 8 bytes, and the ``large`` ones of 1 MiB
or more as ``[size, sha256]``). It exits cleanly at the end of stdin, or by itself after
``--lifetime`` seconds. A watchdog thread ends it at once (exit code 3) if its RSS passes
``--rss-ceiling-mib``, so an unbounded victim dies here instead of exhausting the machine.

Requests are answered with their own bytes (an echo); with ``--reply-size N``, a request whose
bytes start with ``large`` gets N bytes instead, from one buffer allocated at start (so the
replies waiting to leave cost the library's memory, not the application's).
``--reader never`` never takes a message (nor answers a request); a number reads that many
messages per second.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import sys
import threading
import time
from typing import Any

import qp2p

MiB = 1 << 20
LARGE = 1 * MiB
WATCHDOG_PERIOD = 0.01
RSS_CEILING_EXIT = 3


def status(field: str) -> int:
    """A size from /proc/self/status, in bytes: ``VmRSS`` (resident now), ``VmHWM`` (its peak)."""
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss() -> int:
    """Resident set size of this process, in bytes."""
    return status("VmRSS")


def watch_rss(ceiling: int) -> None:
    """Exit the process at once if its RSS passes ``ceiling`` (checked every 10 ms, in a thread:
    it runs even while the event loop is busy)."""

    def watch() -> None:
        while True:
            if rss() > ceiling:
                os._exit(RSS_CEILING_EXIT)
            time.sleep(WATCHDOG_PERIOD)

    threading.Thread(target=watch, name="rss-watchdog", daemon=True).start()


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, default=str), flush=True)


class Received:
    """What the application took: user messages counted, distinct ones, large ones' digests."""

    def __init__(self) -> None:
        self.count = 0
        self.keys: set[tuple[tuple[str, int], bytes]] = set()
        self.large: list[tuple[int, str]] = []

    def add(self, message: qp2p.Message) -> None:
        data = message.data
        self.count += 1
        self.keys.add((message.src, bytes(data[:8])))
        if len(data) >= LARGE:
            self.large.append((len(data), hashlib.sha256(data).hexdigest()))

    def report(self) -> dict[str, Any]:
        return {"count": self.count, "unique": len(self.keys), "large": self.large}


async def take(endpoint: qp2p.Endpoint, received: Received, args: argparse.Namespace) -> None:
    """Read messages as ``--reader`` says; answer requests in tasks of their own."""
    if args.reader == "never":
        await asyncio.Event().wait()
    pause = 0.0 if args.reader == "normal" else 1.0 / float(args.reader)
    large = memoryview(bytes(args.reply_size or 0))
    answers: set[asyncio.Task[None]] = set()
    async for message in endpoint.incoming_messages():
        if message.is_request:
            task = asyncio.create_task(answer(message, large))
            answers.add(task)
            task.add_done_callback(answers.discard)
        else:
            received.add(message)
        if pause:
            await asyncio.sleep(pause)


async def answer(request: qp2p.Message, large: memoryview) -> None:
    """Reply to one request; a peer that does not read its replies only delays its own."""
    asks_large = len(large) > 0 and bytes(request.data[:5]) == b"large"
    reply = large if asks_large else bytes(request.data)
    try:
        await request.reply(reply)
    except qp2p.Error:
        pass


async def commands(endpoint: qp2p.Endpoint, received: Received) -> None:
    """One report per line on stdin, until its end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        stats = dataclasses.asdict(endpoint.stats())
        emit({"rss": rss(), "peak": status("VmHWM"), "stats": stats, "received": received.report()})


async def run(args: argparse.Namespace) -> int:
    config = qp2p.Config(**json.loads(args.config))
    async with qp2p.Endpoint(config) as endpoint:
        received = Received()
        reading = asyncio.create_task(take(endpoint, received, args))
        emit({"ready": list(endpoint.local_addr), "fingerprint": endpoint.peer_id, "backend": qp2p.BACKEND})
        try:
            async with asyncio.timeout(args.lifetime):
                await commands(endpoint, received)
        except TimeoutError:
            pass
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="{}")
    parser.add_argument("--reader", default="normal", help="normal, never, or messages per second")
    parser.add_argument("--reply-size", type=int, default=None)
    parser.add_argument("--lifetime", type=float, default=300.0)
    parser.add_argument("--rss-ceiling-mib", type=int, default=3072)
    args = parser.parse_args()
    watch_rss(args.rss_ceiling_mib * MiB)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
