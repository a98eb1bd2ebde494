"""One end of a path MTU test, run inside a network namespace by tests/test_path_mtu_netns.py
(not a test module). Each line it prints is one JSON object.

python mtu_process.py serve IP PORT
    answers every request with what arrived: {"received": bytes, "datagram_size": n}.
python mtu_process.py dial IP PORT --local IP --size N [--pause]
    connects, prints the path once its MTU search ended; with --pause waits for a line on stdin;
    then sends one request of N bytes and prints the reply and the path again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import qp2p

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


async def serve(args: argparse.Namespace) -> None:
    async with qp2p.Endpoint(qp2p.Config(local_ip=args.ip, local_port=args.port)) as endpoint:
        print(json.dumps({"ready": True}), flush=True)
        async for message in endpoint.incoming_messages():
            if message.is_request:
                answer = {"received": len(message.data), "datagram_size": message.connection.datagram_size}
                await message.reply(json.dumps(answer).encode())


async def dial(args: argparse.Namespace) -> None:
    config = qp2p.Config(local_ip=args.local, connect_timeout=20)
    async with qp2p.Endpoint(config) as endpoint:
        connection = await endpoint.connect_to((args.ip, args.port))
        print(json.dumps(await searched(connection)), flush=True)
        if args.pause:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        reply = await connection.request(bytes(args.size), timeout=REQUEST_TIMEOUT)
        print(json.dumps({"reply": json.loads(reply), **await searched(connection)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("serve", "dial"))
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("--local", default="0.0.0.0")
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--pause", action="store_true")
    args = parser.parse_args()
    asyncio.run(serve(args) if args.mode == "serve" else dial(args))


if __name__ == "__main__":
    main()
