"""One end of a path MTU test, run inside a network namespace by tests/test_path_mtu_netns.py
(not a test module). Each line it prints is one JSON object.

python mtu_process.py serve IP PORT [--ceiling N] [--loop L]
    answers every request with what arrived: {"received": bytes, "datagram_size": n}.
python mtu_process.py dial IP PORT --local IP --size N [--pause] [--ceiling N] [--loop L]
    connects, prints the path once its MTU search ended; with --pause waits for a line on stdin;
    then sends one request of N bytes and prints the reply, the seconds it took and the path.
    benches/path_bulk.py times bulk transfers with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import qp2p
from qp2p import _loops

SEARCH_TIMEOUT = 20.0
REQUEST_TIMEOUT = 60.0


def path_of(connection: qp2p.Connection) -> dict[str, object]:
    link = connection.current_link
    assert link is not None
    mtu = link.session.quic.path_mtu
    return {
        "datagram_size": connection.datagram_size,
        "state": mtu.state,
        "probes": mtu.probes_sent,
        "black_holes": mtu.black_holes,
        "ceiling": mtu.ceiling,
    }


async def searched(connection: qp2p.Connection) -> dict[str, object]:
    """The path once its search is complete, or as it is after SEARCH_TIMEOUT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SEARCH_TIMEOUT
    while path_of(connection)["state"] != "complete" and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return path_of(connection)


def config(args: argparse.Namespace, **settings: object) -> qp2p.Config:
    if args.ceiling is not None:
        settings["max_datagram_size"] = args.ceiling
    return qp2p.Config(**settings)  # type: ignore[arg-type]


async def serve(args: argparse.Namespace) -> None:
    async with qp2p.Endpoint(config(args, local_ip=args.ip, local_port=args.port)) as endpoint:
        print(json.dumps({"ready": True}), flush=True)
        async for message in endpoint.incoming_messages():
            if message.is_request:
                answer = {"received": len(message.data), "datagram_size": message.connection.datagram_size}
                await message.reply(json.dumps(answer).encode())


async def dial(args: argparse.Namespace) -> None:
    async with qp2p.Endpoint(config(args, local_ip=args.local, connect_timeout=20)) as endpoint:
        connection = await endpoint.connect_to((args.ip, args.port))
        print(json.dumps(await searched(connection)), flush=True)
        if args.pause:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        data = bytes(args.size)
        started = time.perf_counter()
        reply = await connection.request(data, timeout=REQUEST_TIMEOUT)
        seconds = time.perf_counter() - started
        print(
            json.dumps({"reply": json.loads(reply), "seconds": seconds, **await searched(connection)}),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("serve", "dial"))
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("--local", default="0.0.0.0")
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--pause", action="store_true")
    parser.add_argument("--ceiling", type=int, default=None, help="max_datagram_size (default: Config's)")
    parser.add_argument("--loop", choices=_loops.LOOPS, default="asyncio")
    args = parser.parse_args()
    _loops.run(serve(args) if args.mode == "serve" else dial(args), args.loop)


if __name__ == "__main__":
    main()
