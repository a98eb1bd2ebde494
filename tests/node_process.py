"""One qp2p endpoint in a process of its own, driven over stdin/stdout (not a test module).

    python node_process.py [--ip IP] [--port N] [--cache DIR] [--contact HOST:PORT ...]
                           [--role node|client] [--client-fallback] [--forward-port]
                           [--lease S] [--connect-timeout S] [--bootstrap-concurrency N]

It prints ``{"ready": [host, port]}``, then answers one JSON line per command read:

- ``"bootstrap"`` -> ``{"bootstrapped": [host, port], "public": [host, port], "role": ...}`` or
  ``{"error": "<class name>", "message": ...}``;
- ``"cache"`` -> ``{"cache": [[host, port], ...]}`` (what is in memory; saved on exit);
- ``"public"`` -> ``{"public": [host, port]}``;
- ``"nat"`` -> ``{"nat": {"mapping": ..., "open": ..., "port_kept": ...}}``: waits until joining
  learned how our NAT behaves (``Endpoint.wait_nat_discovered``);
- ``"mapped"`` -> ``{"mapped": [host, port] or null}``: waits for the UPnP mapping
  (``--forward-port``), the gateway's address and port forwarded to us;
- ``{"connect": [host, port], "via": [host, port] or null}`` -> ``connect_to`` (through ``via``
  when given), then one request over the connection to prove it carries data ->
  ``{"connected": path, "seconds": ..., "punch_attempts": n}`` or an error;
- ``{"path": [host, port]}`` -> ``{"path": ...}``: how the pooled connection to it travels now;
- ``"renew"`` -> closes the endpoint and opens a new one on a fresh port (fresh NAT mappings
  too), answering ``{"ready": [host, port]}``;
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
        forward_port=args.forward_port,
        upnp_lease_duration=args.lease,
        connect_timeout=args.connect_timeout,
        bootstrap_concurrency=args.bootstrap_concurrency,
        # The nodes of a test network share 127.0.0.1 (or a namespace's NAT address): as for
        # hosts behind one NAT, an address may hold all of a node's memory.
        address_memory_limit=qp2p.Config().memory_limit,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        async with qp2p.Endpoint(config) as endpoint:
            answering = asyncio.create_task(answer(endpoint))
            emit({"ready": list(endpoint.local_addr)})
            command = await serve(endpoint, reader)
            answering.cancel()
        if command != "renew":
            return 0
        config = config.replace(local_port=0)


# The connection each "connect" command made, by the address it named.
CONNECTED: dict[tuple[Any, ...], qp2p.Connection] = {}


async def serve(endpoint: qp2p.Endpoint, reader: asyncio.StreamReader) -> str:
    """Answers commands until "quit" or "renew" (returned), or the end of stdin."""
    while line := (await reader.readline()).strip():
        command = json.loads(line)
        if isinstance(command, dict) and "connect" in command:
            emit(await connect(endpoint, command))
        elif isinstance(command, dict) and "path" in command:
            connection = CONNECTED.get(tuple(command["path"]))
            emit({"path": None if connection is None or connection.is_closed else connection.path})
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
            emit({"cache": [list(e.addr) for e in endpoint.bootstrap_cache.entries()]})
        elif command == "mapped":
            mapped = await endpoint.wait_port_mapped()
            emit({"mapped": None if mapped is None else list(mapped)})
        elif command == "public":
            emit({"public": list(endpoint.public_addr)})
        elif command == "nat":
            nat = await endpoint.wait_nat_discovered()
            emit({"nat": {"mapping": nat.mapping.value, "open": nat.open, "port_kept": nat.port_kept}})
        elif command in ("quit", "renew"):
            return str(command)
    return "quit"


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
        CONNECTED[(host, port)] = connection
        if await connection.request(b"are you there?", timeout=10) != b"?ereht uoy era":
            return {"error": "WrongReply", "message": "the request's answer was wrong"}
    except qp2p.Error as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {
        "connected": connection.path,
        "seconds": round(asyncio.get_running_loop().time() - started, 3),
        "punch_attempts": endpoint.punch_attempts,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--contact", action="append", default=[])
    parser.add_argument("--role", default="node", choices=["node", "client"])
    parser.add_argument("--client-fallback", action="store_true")
    parser.add_argument("--forward-port", action="store_true")
    parser.add_argument("--lease", type=int, default=120)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--bootstrap-concurrency", type=int, default=qp2p.Config().bootstrap_concurrency)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
