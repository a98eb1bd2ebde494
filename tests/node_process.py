"""One qp2p endpoint in a process of its own, driven over stdin/stdout (not a test module).

    python node_process.py [--ip IP] [--port N] [--cache DIR] [--contact HOST:PORT ...]
                           [--role node|client] [--client-fallback] [--connect-timeout S]

It prints ``{"ready": [host, port]}``, then answers one JSON line per command read:

- ``"bootstrap"`` -> ``{"bootstrapped": [host, port], "public": [host, port], "role": ...}`` or
  ``{"error": "<class name>", "message": ...}``;
- ``"cache"`` -> ``{"cache": [[host, port], ...]}`` (what is in memory; saved on exit);
- ``"public"`` -> ``{"public": [host, port]}``;
- ``"quit"`` (or the end of stdin) closes the endpoint, which writes the cache, and exits.
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
        emit({"ready": list(endpoint.local_addr)})
        while line := (await reader.readline()).strip():
            command = json.loads(line)
            if command == "bootstrap":
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
    return 0


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
