"""CPU per accepted handshake: one node process on 127.0.0.1, clients in a few other processes.

    python benches/handshakes.py [--quick] [--connections N] [--clients P] [--checkout PATH ...]
                                 [--trials T] [--profile FILE]

Every client process opens its share of N endpoints (their identities made before the clock
starts), then all of them connect to the node at once, at most ``--concurrency`` dials in flight
per process. The node measures its own process time (``getrusage``, user plus system) from
the go signal until N peers are connected, and its resident memory before and after. The
clients then close every connection, wait until the node saw them all go, and connect again from
the same endpoints: a returning peer, which resumes its TLS session where the checkout issues
session tickets. Each round is reported as the node's CPU milliseconds per accepted handshake,
the wall time until all were up, and (first round) the memory per connection.

``--checkout PATH`` runs the same rounds against another source tree (its directory first on
the child processes' ``sys.path``), so before and after come from one invocation; the tree this
script lives in always runs first. ``--profile FILE`` writes a cProfile of the node's first
round (this tree only) and prints its top functions. ``--trials T`` runs every checkout T times,
alternating, and the table shows each one's median run. One JSON line per run and the table go
to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import resource
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
DEADLINE = 600.0  # seconds any one step may take before the bench fails
CROWD_MEMORY = 1 << 40
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    """This process's resident set in bytes (Linux); 0 where /proc is missing."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE
    except OSError:
        return 0


def _cpu() -> float:
    """Process time used so far (user plus system), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


async def _lines(stream: asyncio.StreamReader) -> str:
    line = await asyncio.wait_for(stream.readline(), DEADLINE)
    if not line:
        raise SystemExit("the orchestrator went away")
    return line.decode().strip()


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _crowd_config(qp2p: Any, connections: int, **settings: Any) -> Any:
    """A config for many peers sharing 127.0.0.1: the per-address limits that protect a public
    node from one source are raised, as a node behind which a whole NAT sits would raise them."""
    if "session_tickets_per_address" in qp2p.Config.__dataclass_fields__:  # a tree without has none
        settings["max_session_tickets"] = settings["session_tickets_per_address"] = connections + 64
    return qp2p.Config(
        max_connections=connections + 64,
        max_half_open=256,
        max_half_open_per_address=256,
        memory_limit=CROWD_MEMORY,  # what the budget reserves per link is a bound, not a cost
        address_memory_limit=CROWD_MEMORY,
        connect_timeout=60.0,
        handshake_timeout=30.0,
        idle_timeout=120.0,
        keep_alive_interval=None,
        **settings,
    )


# ---- the node --------------------------------------------------------------------------------


async def node(args: argparse.Namespace) -> None:
    import qp2p

    commands = await _stdin()
    async with qp2p.Endpoint(_crowd_config(qp2p, args.connections)) as endpoint:
        arrived = asyncio.Event()
        accepted = [0]  # connections accepted this round (counted, not listed: that costs O(N) each)

        async def accept() -> None:
            async for _ in endpoint.incoming_connections():
                accepted[0] += 1
                if accepted[0] == args.connections:
                    arrived.set()

        accepting = asyncio.create_task(accept())
        _emit({"ready": list(endpoint.local_addr), "qp2p": qp2p.__file__})
        for round_name in ("first", "returning"):
            assert await _lines(commands) == "go"
            profile = cProfile.Profile(time.process_time) if args.profile and round_name == "first" else None
            arrived.clear()
            accepted[0] = 0
            memory, cpu, started = _rss(), _cpu(), time.perf_counter()
            counted = endpoint.stats().datagrams
            before = counted.received, counted.retries  # the counters live on: read them now
            if profile is not None:
                profile.enable()
            await asyncio.wait_for(arrived.wait(), DEADLINE)
            if profile is not None:
                profile.disable()
                profile.dump_stats(args.profile)
            seconds, used = time.perf_counter() - started, _cpu() - cpu
            stats = endpoint.stats()
            _emit(
                {
                    "round": round_name,
                    "connections": len(endpoint.connections()),
                    "cpu_ms_per_handshake": 1000 * used / args.connections,
                    "seconds": seconds,
                    "bytes_per_connection": (_rss() - memory) / args.connections,
                    "datagrams_per_handshake": (stats.datagrams.received - before[0]) / args.connections,
                    "retries_per_handshake": (stats.datagrams.retries - before[1]) / args.connections,
                    "failed_handshakes": stats.failed_handshakes,
                    "resumed": _resumed(endpoint),
                }
            )
            assert await _lines(commands) == "closed"
            async with asyncio.timeout(DEADLINE):
                while endpoint.connections():
                    await asyncio.sleep(0.05)
            _emit({"empty": round_name})
        accepting.cancel()


def _resumed(endpoint: Any) -> int:
    """How many live connections resumed a TLS session (0 where the checkout has none)."""
    return sum(
        link.session.quic.tls.session_resumed
        for connection in endpoint.connections()
        for link in connection.links
    )


# ---- a client process ------------------------------------------------------------------------


async def clients(args: argparse.Namespace) -> None:
    import qp2p

    commands = await _stdin()
    target = (args.host, args.port)
    endpoints = [qp2p.Endpoint(_crowd_config(qp2p, 1)) for _ in range(args.peers)]
    for endpoint in endpoints:
        await endpoint.start()
    gate = asyncio.Semaphore(args.concurrency)

    async def dial(endpoint: Any) -> Any:
        async with gate:
            return await endpoint.connect_to(target)

    try:
        _emit({"ready": args.peers})
        for _ in ("first", "returning"):
            assert await _lines(commands) == "go"
            try:
                async with asyncio.timeout(DEADLINE):
                    connections = await asyncio.gather(*(dial(endpoint) for endpoint in endpoints))
            except (TimeoutError, qp2p.Error) as exc:
                _emit({"error": repr(exc)})
                return
            _emit({"up": len(connections)})
            assert await _lines(commands) == "close"
            await asyncio.gather(*(connection.close() for connection in connections))
            _emit({"closed": len(connections)})
    finally:
        await asyncio.gather(*(endpoint.close() for endpoint in endpoints))


# ---- the orchestrator ------------------------------------------------------------------------


class Child:
    """A child process spoken to by lines of text on its stdin and JSON lines from its stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, checkout: Path, *args: str) -> Child:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")])}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            *args,
            "--checkout-root",
            str(checkout),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(process)

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def hear(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), DEADLINE)
        if not line:
            raise RuntimeError(f"a child process ended early (exit {await self.process.wait()})")
        record: dict[str, Any] = json.loads(line)
        return record

    async def finish(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 60)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def measure(checkout: Path, args: argparse.Namespace, profile: str | None) -> dict[str, Any]:
    """Both rounds against the qp2p of ``checkout``: what the node reported."""
    node_args = ["node", "--connections", str(args.connections)]
    hub = await Child.start(checkout, *node_args, *(["--profile", profile] if profile else []))
    ready = await hub.hear()
    host, port = ready["ready"]
    shares = [
        args.connections // args.clients + (i < args.connections % args.clients) for i in range(args.clients)
    ]
    crowd = [
        await Child.start(
            checkout,
            "clients",
            host,
            str(port),
            "--peers",
            str(share),
            "--concurrency",
            str(args.concurrency),
        )
        for share in shares
    ]
    try:
        for child in crowd:
            await child.hear()
        result: dict[str, Any] = {"checkout": str(checkout), "qp2p": ready["qp2p"]}
        for _ in ("first", "returning"):
            hub.say("go")
            for child in crowd:
                child.say("go")
            for child in crowd:
                up = await child.hear()
                if "error" in up:
                    raise RuntimeError(f"a client failed: {up['error']}")
            report = await hub.hear()
            result[report.pop("round")] = report
            for child in crowd:
                child.say("close")
            for child in crowd:
                await child.hear()
            hub.say("closed")
            await hub.hear()
        return result
    finally:
        for child in (*crowd, hub):
            await child.finish()


def _table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| tree | round | CPU ms / accept | all up in | memory / conn. | datagrams in | resumed | vs 1st |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for round_name in ("first", "returning"):
            report = result[round_name]
            base = results[0][round_name]["cpu_ms_per_handshake"]
            memory = f"{report['bytes_per_connection'] / 1024:.0f} KiB" if round_name == "first" else ""
            rows.append(
                f"| {result['checkout']} | {round_name} | {report['cpu_ms_per_handshake']:.2f} | "
                f"{report['seconds']:.1f} s | {memory} | {report['datagrams_per_handshake']:.1f} | "
                f"{report['resumed']} | "
                f"{report['cpu_ms_per_handshake'] / base:.2f}x |"
            )
    return "\n".join(rows)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose first-round CPU per handshake is the median of ``runs``."""
    return sorted(runs, key=lambda run: run["first"]["cpu_ms_per_handshake"])[len(runs) // 2]


async def orchestrate(args: argparse.Namespace) -> None:
    checkouts = [HERE, *(Path(p).resolve() for p in args.checkout)]
    runs: dict[Path, list[dict[str, Any]]] = {checkout: [] for checkout in checkouts}
    for trial in range(args.trials):  # checkouts alternate, so a busy spell hits all of them
        for checkout in checkouts:
            profile = args.profile if checkout == HERE and trial == 0 else None
            result = await measure(checkout, args, profile)
            _emit(result)
            runs[checkout].append(result)
    print(_table([_median(runs[checkout]) for checkout in checkouts]))
    if args.profile:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(45)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout-root", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command")
    serving = commands.add_parser("node")
    serving.add_argument("--connections", type=int, required=True)
    serving.add_argument("--profile")
    serving.add_argument("--checkout-root")
    dialling = commands.add_parser("clients")
    dialling.add_argument("host")
    dialling.add_argument("port", type=int)
    dialling.add_argument("--peers", type=int, required=True)
    dialling.add_argument("--concurrency", type=int, required=True)
    dialling.add_argument("--checkout-root")
    parser.add_argument("--quick", action="store_true", help="100 connections instead of 1000")
    parser.add_argument("--connections", type=int)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32, help="dials in flight per client process")
    parser.add_argument("--trials", type=int, default=1, help="runs per checkout (the median is shown)")
    parser.add_argument("--checkout", action="append", default=[], help="another source tree to measure")
    parser.add_argument("--profile", help="write a cProfile of the node's first round here")
    args = parser.parse_args()
    if args.checkout_root:  # a child: the checkout under test comes first
        sys.path.insert(0, args.checkout_root)
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1:] * 2)
    if args.command == "node":
        asyncio.run(node(args))
    elif args.command == "clients":
        asyncio.run(clients(args))
    else:
        args.connections = args.connections or (100 if args.quick else 1000)
        asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()
