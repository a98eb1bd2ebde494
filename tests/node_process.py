"""One qp2p endpoint in a process of its own, driven over stdin/stdout (not a test module).

    python node_process.py [--ip IP] [--port N] [--cache DIR] [--contact HOST:PORT ...]
                           [--role node|client] [--client-fallback] [--connect-timeout S]

It prints ``{"ready": [host, port]}``, then answers one JSON line per command read:

- ``"bootstrap"`` -> ``{"bootstrapped": [host, port], "public": [host, port], "role": ...}`` or
  ``{"error": "<class name>", "message": ...}``;
- ``"cache"`` -> ``{"cache": [[host, port], ...]}`` (what is in memory; saved on exit);
- ``"public"`` -> ``{"public": [host, port]}``;
- ``{"connect": [host, port], "via": [host, port] or null}`` -> ``connect_to`` (through ``via``
  when given), then one request over the connection to prove it carries data ->
  ``{"connected": path, "seconds": ..., "punch_attempts": n}`` or an error;
- ``"quit"`` (or the end of stdin) closes the endpoint, which writes the cache, and exits.

Requests it receives are answered with their own bytes reversed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import qp2p


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


async def run(args: argparse.Namespace) -> int:
    config = qp2p.Config(
        local_ip=args.ip,
        local_port=args.port,
        bootstrap_cache_dir=args.cache,
        hard_coded_contacts=args.contact,
        role=qp2p.Role(args.role),
        client_fallback=args.client_fallback,
        connect_timeout=args.connect_timeout,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with qp2p.Endpoint(config) as endpoint:
        answering = asyncio.create_task(answer(endpoint))
        emit({"ready": list(endpoint.local_addr)})
        while line := (await reader.readline()).strip():
            command = json.loads(line)
            if isinstance(command, dict) and "connect" in command:
                emit(await connect(endpoint, command))
            elif command == "bootstrap":
                try:
                    connection = await endpoint.bootstrap()
                except qp2p.Error as exc:
                    emit({"error": type(exc).__name__, "message": str(exc)})
                else:
                    emit(
                        {
                            "bootstrapped": list(connection.remote_addr),
                            "public": list(endpoint.public_addr),
                            "role": endpoint.role.value,
                        }
                    )
            elif command == "cache":
                emit({"cache": [list(e.addr) for e in endpoint._membership.cache.entries()]})
            elif command == "public":
                emit({"public": list(endpoint.public_addr)})
            elif command == "quit":
                break
        answering.cancel()
    return 0


async def answer(endpoint: qp2p.Endpoint) -> None:
    async for message in endpoint.incoming_messages():
        if message.is_request:
            await message.reply(bytes(message.data)[::-1])


async def connect(endpoint: qp2p.Endpoint, command: dict[str, Any]) -> dict[str, Any]:
    host, port = command["connect"]
    via = tuple(command["via"]) if command.get("via") else None
    started = asyncio.get_running_loop().time()
    try:
        connection = await endpoint.connect_to((host, port), via=via)  # type: ignore[arg-type]
        if await connection.request(b"are you there?", timeout=10) != b"?ereht uoy era":
            return {"error": "WrongReply", "message": "the request's answer was wrong"}
    except qp2p.Error as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {
        "connected": connection.path,
        "seconds": round(asyncio.get_running_loop().time() - started, 3),
        "punch_attempts": endpoint._traversal.punch_attempts,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--contact", action="append", default=[])
    parser.add_argument("--role", default="node", choices=["node", "client"])
    parser.add_argument("--client-fallback", action="store_true")
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
