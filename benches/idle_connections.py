"""What many connections cost one node: CPU while they idle, and CPU per message as they all send.

    python benches/idle_connections.py [--connections 1000] [--clients 4] [--idle 30]
                                       [--messages 20000] [--base REV] [--rounds 1] [--repeats 3]
                                       [--keep-alive 10] [--idle-timeout 30] [--quick] [--json FILE]

Real processes on 127.0.0.1: one node, and ``--clients`` client processes holding
``--connections`` connections between them (one endpoint, so one certificate and one socket,
per connection). The node's limits are raised as the loopback crowd tests raise them
(``max_connections``, ``max_half_open_per_address``, ``address_memory_limit``: every client shares
one address), and its ``receive_window`` is 256 KiB, so 1,000 windows fit its memory limit.
Defaults everywhere else: ``keep_alive_interval`` 10 s, ``idle_timeout`` 30 s (``--keep-alive``
and ``--idle-timeout`` change both on every endpoint).

Two figures, both from the node's own process times (user + system, ``getrusage``, in
microseconds):

- idle: the node's CPU over ``--idle`` seconds (at least three keep-alive intervals by default)
  while every connection is up and nothing is sent, in % of one core;
- fan-in: node CPU per message received (1 KiB messages), first from one sender while the
  others stay connected and idle, then from every connection at once, each sending its share
  of the same total, alternated ``--repeats`` times (the median phase counts). The ratio of the
  two is the per-connection overhead of receiving.

With ``--base REV`` (for example ``main``) the whole run is made twice in one invocation: first
with the qp2p package of revision ``REV`` of this repository (exported with ``git archive`` to a
temporary folder put first on ``PYTHONPATH``; the compiled ``_qp2p_fast`` modules stay those
installed), then with the working tree's; ``--rounds`` alternates such pairs, since the load of a
shared machine changes within minutes. ``--quick`` is a smaller run (200 connections, 10 s
idle). Prints one JSON line per run and a table; exits non-zero if a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MESSAGE_SIZE = 1024
MIN_WINDOW = 256 * 1024  # qp2p.session.MIN_WINDOW, a literal: the base revision may not have it
# Handshakes each client process runs at once: 4 processes stay within the node's max_half_open.
CONNECT_CONCURRENCY = 16
CONNECT_ATTEMPTS = 5
# After the last connection is up, before the idle window: handshake leftovers settle.
SETTLE = 3.0
STEP_TIMEOUT = 300.0
TARGET_IDLE_PCT = 3.0
TARGET_FANIN_RATIO = 1.3


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


async def lines(reader: asyncio.StreamReader) -> Any:
    """The next JSON command on stdin, or None at its end."""
    line = (await reader.readline()).strip()
    return json.loads(line) if line else None


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# ---- the node ------------------------------------------------------------------------------


async def node(folder: str, connections: int, timing: dict[str, float | None]) -> None:
    """One node: counts the messages it receives, answers ``times`` and ``{"wait": n}``."""
    import qp2p

    config = qp2p.Config(
        **timing,  # type: ignore[arg-type]
        bootstrap_cache_dir=folder,
        max_connections=connections + 100,
        max_half_open_per_address=100,
        address_memory_limit=qp2p.Config().memory_limit,
        # The smallest window a link is given, so 1,000 of them fit the default memory_limit;
        # it is still some 250 messages in flight per sender.
        receive_window=MIN_WINDOW,
    )
    received = 0
    arrived = asyncio.Event()

    async def count(endpoint: qp2p.Endpoint) -> None:
        nonlocal received
        async for _ in endpoint.incoming_messages():
            received += 1
            arrived.set()

    def times(endpoint: qp2p.Endpoint) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats = endpoint.stats()
        return {
            "cpu": usage.ru_utime + usage.ru_stime,
            "received": received,
            "datagrams": stats.datagrams.received,
            "links": stats.links,
            "keep_alives": getattr(stats, "keep_alives", None),
        }

    reader = await stdin_reader()
    async with qp2p.Endpoint(config) as endpoint:
        counting = asyncio.create_task(count(endpoint))
        emit({"ready": list(endpoint.local_addr), "qp2p": qp2p.__file__, "backend": qp2p.BACKEND})
        while (command := await lines(reader)) is not None:
            if command == "times":
                emit(times(endpoint))
            elif isinstance(command, dict) and "wait" in command:
                async with asyncio.timeout(STEP_TIMEOUT):
                    while received < command["wait"]:
                        arrived.clear()
                        await arrived.wait()
                emit(times(endpoint))
        counting.cancel()


# ---- a client process ----------------------------------------------------------------------


async def clients(folder: str, host: str, port: int, count: int, timing: dict[str, float | None]) -> None:
    """``count`` endpoints, each connected to the node; ``{"send": [k, n]}`` has the first
    ``k`` of them send ``n`` messages each, at once."""
    import qp2p

    config = qp2p.Config(
        **timing,  # type: ignore[arg-type]
        bootstrap_cache_dir=folder,
        role=qp2p.Role.CLIENT,
        socket_buffer_size=0,
        connect_timeout=30.0,
    )
    endpoints = [qp2p.Endpoint(config) for _ in range(count)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failures = 0

    async def connect(endpoint: qp2p.Endpoint) -> qp2p.Connection:
        nonlocal failures
        await endpoint.start()
        for attempt in range(CONNECT_ATTEMPTS):
            async with gate:
                try:
                    return await endpoint.connect_to((host, port))
                except qp2p.Error:
                    failures += 1
                    if attempt == CONNECT_ATTEMPTS - 1:
                        raise
            await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    reader = await stdin_reader()
    try:
        connections = await asyncio.gather(*(connect(endpoint) for endpoint in endpoints))
        emit({"connected": len(connections), "failed_attempts": failures})
        data = bytes(MESSAGE_SIZE)

        async def send(connection: qp2p.Connection, messages: int) -> None:
            for _ in range(messages):
                await connection.send(data)

        while (command := await lines(reader)) is not None:
            if isinstance(command, dict) and "send" in command:
                senders, messages = command["send"]
                await asyncio.gather(*(send(c, messages) for c in connections[:senders]))
                emit({"sent": senders * messages})
    finally:
        await asyncio.gather(*(endpoint.close() for endpoint in endpoints))


# ---- the orchestrator ----------------------------------------------------------------------


class Child:
    """A process of this script, spoken to in JSON lines."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def tell(self, command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a child process ended (exit status {self.process.wait()})")
        record: dict[str, Any] = json.loads(line)
        return record

    def ask(self, command: Any) -> dict[str, Any]:
        self.tell(command)
        return self.answer()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def fan_in(node: Child, crowd: list[Child], senders: list[int], messages: int) -> dict[str, float]:
    """Node CPU per message while the client processes' first ``senders[i]`` connections send
    ``messages`` each; the messages' rate at the node."""
    before = node.ask("times")
    started = time.monotonic()
    for child, count in zip(crowd, senders, strict=True):
        if count:
            child.tell({"send": [count, messages]})
    total = sum(senders) * messages
    after = node.ask({"wait": before["received"] + total})
    elapsed = time.monotonic() - started
    for child, count in zip(crowd, senders, strict=True):
        if count:
            assert child.answer()["sent"] == count * messages
    cpu = after["cpu"] - before["cpu"]
    return {
        "senders": sum(senders),
        "messages": total,
        "cpu_us_per_msg": round(cpu / total * 1e6, 1),
        "node_cpu_pct": round(100 * cpu / elapsed, 1),
        "msgs_per_s": round(total / elapsed),
        "datagrams_per_msg": round((after["datagrams"] - before["datagrams"]) / total, 3),
    }


def _ratio(everyone: dict[str, float], one: dict[str, float]) -> float:
    """CPU per message from every sender over that from one (0 if one's was too small to see)."""
    per_message = one["cpu_us_per_msg"]
    return round(everyone["cpu_us_per_msg"] / per_message, 2) if per_message else 0.0


def _median(phases: list[dict[str, float]]) -> dict[str, float]:
    """The phase of median CPU per message."""
    return sorted(phases, key=lambda phase: phase["cpu_us_per_msg"])[len(phases) // 2]


def run(label: str, pythonpath: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """One whole run: node, clients, idle window, fan-in from one sender and from all."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as folder:
        timing = ["--keep-alive", str(args.keep_alive), "--idle-timeout", str(args.idle_timeout)]
        node = Child(["--node", folder, "--connections", str(args.connections), *timing], env)
        crowd: list[Child] = []
        try:
            ready = node.answer()
            host, port = ready["ready"]
            whole, extra = divmod(args.connections, args.clients)
            shares = [whole + (i < extra) for i in range(args.clients)]
            started = time.monotonic()
            for share in shares:
                command = [
                    "--client-folder",
                    folder,
                    "--target",
                    f"{host}:{port}",
                    "--connections",
                    str(share),
                    *timing,
                ]
                crowd.append(Child(command, env))
            connected = [child.answer() for child in crowd]
            connect_s = time.monotonic() - started
            time.sleep(SETTLE)
            before = node.ask("times")
            time.sleep(args.idle)
            after = node.ask("times")
            idle_pct = 100 * (after["cpu"] - before["cpu"]) / args.idle
            per_sender = max(1, args.messages // args.connections)
            ones, everyones = [], []
            for _ in range(args.repeats):  # alternated, so a change in the machine's load hits both
                ones.append(fan_in(node, crowd, [1] + [0] * (len(crowd) - 1), per_sender * args.connections))
                everyones.append(fan_in(node, crowd, shares, per_sender))
            one, everyone = _median(ones), _median(everyones)
            return {
                "run": label,
                "qp2p": ready["qp2p"],
                "backend": ready["backend"],
                "connections": after["links"],
                "connect_s": round(connect_s, 1),
                "failed_connect_attempts": sum(c["failed_attempts"] for c in connected),
                "idle_s": args.idle,
                "idle_datagrams": after["datagrams"] - before["datagrams"],
                "keep_alive_interval": args.keep_alive,
                "idle_cpu_pct": round(idle_pct, 2),
                "idle_keep_alives": (
                    None if after["keep_alives"] is None else after["keep_alives"] - before["keep_alives"]
                ),
                "fan_in_1": one,
                "fan_in_all": everyone,
                "fan_in_ratio": _ratio(everyone, one),
                "fan_in_ratios": [_ratio(e, o) for o, e in zip(ones, everyones, strict=True)],
            }
        finally:
            for child in crowd:
                child.close()
            node.close()


def exported(revision: str, folder: str) -> str:
    """The qp2p package of ``revision`` in ``folder`` (returned, for ``PYTHONPATH``)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "qp2p"], capture_output=True, check=True
    ).stdout
    with tempfile.TemporaryFile() as tar_file:
        tar_file.write(archive)
        tar_file.seek(0)
        with tarfile.open(fileobj=tar_file) as tar:
            tar.extractall(folder, filter="data")
    return folder


def table(results: list[dict[str, Any]]) -> str:
    """The runs side by side, and whether the last one meets the targets."""
    rows = [
        "| run | connections | idle CPU (% of a core) | keep-alives | µs/msg, 1 sender | µs/msg, all "
        "| ratio | msg/s, 1 / all |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        one, everyone = r["fan_in_1"], r["fan_in_all"]
        rows.append(
            f"| {r['run']} | {r['connections']} | {r['idle_cpu_pct']:.1f} | {r['idle_keep_alives']} "
            f"| {one['cpu_us_per_msg']:.0f} | {everyone['cpu_us_per_msg']:.0f} | {r['fan_in_ratio']:.2f}x "
            f"| {one['msgs_per_s']:,} / {everyone['msgs_per_s']:,} |"
        )
    summary: dict[str, tuple[float, float]] = {}
    for label in dict.fromkeys(r["run"] for r in results):
        runs = [r for r in results if r["run"] == label]
        summary[label] = (
            statistics.median(r["idle_cpu_pct"] for r in runs),
            statistics.median(r["fan_in_ratio"] for r in runs),
        )
        rows.append(
            f"\n{label}, median of {len(runs)} run(s): idle {summary[label][0]:.1f}% of a core, "
            f"fan-in ratio {summary[label][1]:.2f}x"
        )
    idle_pct, ratio = summary[results[-1]["run"]]
    rows.append(
        f"targets: idle <= {TARGET_IDLE_PCT}% ({'met' if idle_pct <= TARGET_IDLE_PCT else 'MISSED'}), "
        f"fan-in ratio <= {TARGET_FANIN_RATIO}x ({'met' if ratio <= TARGET_FANIN_RATIO else 'MISSED'})"
    )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--idle", type=float, default=None, help="seconds of the idle window")
    parser.add_argument("--messages", type=int, default=None, help="total messages per fan-in phase")
    parser.add_argument("--base", metavar="REV", help="first run the qp2p package of this git revision")
    parser.add_argument("--quick", action="store_true", help="200 connections, 10 s idle, 4,000 messages")
    parser.add_argument("--json", metavar="FILE", help="also write the results there")
    parser.add_argument("--rounds", type=int, default=1, help="whole runs of each package, alternated")
    parser.add_argument("--repeats", type=int, default=3, help="fan-in phases per run (the median counts)")
    parser.add_argument("--node", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--target", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--client-folder", help=argparse.SUPPRESS)
    parser.add_argument(
        "--keep-alive", type=float, default=10.0, help="keep_alive_interval of every endpoint (0: none)"
    )
    parser.add_argument("--idle-timeout", type=float, default=30.0, help="idle_timeout of every endpoint")
    args = parser.parse_args()
    timing = {
        "keep_alive_interval": None if args.keep_alive == 0 else args.keep_alive,
        "idle_timeout": args.idle_timeout,
    }
    if args.node is not None:
        asyncio.run(node(args.node, args.connections, timing))
        return 0
    if args.target is not None:
        host, _, port = args.target.rpartition(":")
        asyncio.run(clients(args.client_folder, host, int(port), args.connections, timing))
        return 0
    args.connections = args.connections or (200 if args.quick else 1000)
    args.idle = args.idle or (10.0 if args.quick else 30.0)
    args.messages = args.messages or (4000 if args.quick else 20000)
    results = []
    with tempfile.TemporaryDirectory() as base_folder:
        plan: list[tuple[str, str | None]] = []
        if args.base:
            plan.append((f"base ({args.base})", exported(args.base, base_folder)))
        plan.append(("working tree", str(ROOT)))
        for label, path in plan * args.rounds:
            result = run(label, path, args)
            emit(result)
            results.append(result)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
