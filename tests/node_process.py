"""One qp2p endpoint in a process of its own, driven over stdin/stdout (not a test module).

    python node_process.py [--ip IP] [--port N] [--cache DIR] [--contact HOST:PORT ...]
                           [--role node|client] [--client-fallback] [--forward-port]
                           [--lease S] [--connect-timeout S] [--bootstrap-concurrency N]
                           [--identity DIR]

With ``--identity DIR`` the node keeps one certificate (``DIR/node.pem``, made on first use) and
so one peer id across restarts, as a real node does; without it each start has a fresh one.

It prints ``{"ready": [host, port], "peer_id": ...}``, then answers one JSON line per command
read, in order. A command wrapped as ``{"id": K, "do": COMMAND}`` runs alongside the others
instead (a ``"status"`` while a ``"bootstrap"`` is under way), and its answer carries ``"id": K``.

- ``"bootstrap"`` -> ``{"bootstrapped": [host, port], "public": [host, port], "role": ...,
  "seconds": s, "connected": s, "dialled": n, "failed": n}`` or ``{"error": "<class name>",
  "message": ..., "seconds": s, "connected": s, "dialled": n, "failed": n, "attempts": {outcome:
  count}}``. ``connected`` is when the first dial was answered (null if none was), the rest of
  ``seconds`` the echo, the check and the peer exchange; ``dialled`` counts the dials
  ``bootstrap()`` started (contacts and cached nodes, until one answered: the library says what
  each attempt got only when all failed, ``BootstrapError.attempts``), ``failed`` those of them
  that failed;
- ``"cache"`` -> ``{"cache": [[host, port], ...]}`` (what is in memory; saved on exit);
- ``"public"`` -> ``{"public": [host, port]}``;
- ``"status"`` -> ``{"status": {"connections": n, "joined": bool, "role": ..., "public": [host,
  port], "cache": n, "disconnections": n, "refusals": {reason: n}}}``: live connections,
  whether a bootstrap succeeded, entries in the cache, connections ended so far
  (``Endpoint.disconnections()``), what it declined to do for peers (``stats().refusals``);
- ``"peers"`` -> ``{"peers": [[host, port, peer_id, path], ...], "cache": [[host, port,
  fingerprint], ...]}``: the live connections and the cache's entries;
- ``"disconnections"`` -> ``{"disconnections": [[wall time, host, port], ...]}`` (the last 1000);
- ``{"probe": [[host, port, fingerprint or null], ...], "timeout": s, "at_once": n}`` ->
  ``{"probed": [bool, ...]}``: whether each answers a direct dial (as that peer, if a
  fingerprint is given) and a request within ``timeout``; connections it made are closed again;
- ``{"reach": peer_id, "addr": [host, port], "within": s, "timeout": s}`` -> ``{"reached": s or
  null, "tries": n, "path": ...}``: requests to that peer (over the pooled connection, else a new
  one to ``addr``), each given ``timeout``, until one is answered or ``within`` seconds passed;
- ``"nat"`` -> ``{"nat": {"mapping": ..., "open": ..., "port_kept": ...}}``: waits until joining
  learned how our NAT behaves (``Endpoint.wait_nat_discovered``);
- ``"mapped"`` -> ``{"mapped": [host, port] or null}``: waits for the UPnP mapping
  (``--forward-port``), the gateway's address and port forwarded to us;
- ``{"connect": [host, port], "via": [host, port] or null}`` -> ``connect_to`` (through ``via``
  when given), then one request over the connection to prove it carries data ->
  ``{"connected": path, "seconds": ..., "punch_attempts": n}`` or an error;
- ``{"path": [host, port]}`` -> ``{"path": ...}``: how the pooled connection to it travels now;
- ``"renew"`` -> closes the endpoint and opens a new one on a fresh port (fresh NAT mappings
  too), answering ``{"ready": [host, port], "peer_id": ...}``;
- ``"quit"`` (or the end of stdin) closes the endpoint, which writes the cache, and exits.

Requests it receives are answered with their own bytes reversed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import qp2p
from qp2p import tls

ASKED = b"are you there?"
ANSWERED = ASKED[::-1]


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def trust(folder: str | None) -> qp2p.Trust:
    """Our certificate from ``folder``, made there on first use; a fresh one without a folder."""
    if folder is None:
        return qp2p.Trust.encrypt_only()
    certfile, keyfile = Path(folder, "node.pem"), Path(folder, "node.key")
    if not certfile.exists():
        Path(folder).mkdir(parents=True, exist_ok=True)
        tls.write_identity(tls.self_signed_identity(), certfile, keyfile)
    return qp2p.Trust.encrypt_only(str(certfile), str(keyfile))


class Node:
    """An endpoint and what is counted about it: bootstrap's dials, disconnections."""

    def __init__(self, endpoint: qp2p.Endpoint) -> None:
        self.endpoint = endpoint
        self.joined = False
        self.counting = False  # while bootstrap() runs: its dials are counted
        self.dialled = 0
        self.failed = 0
        self.connected_at: float | None = None  # when the first of bootstrap's dials was answered
        self.disconnected = 0
        self.disconnections: collections.deque[list[Any]] = collections.deque(maxlen=1000)
        # Joining dials through the endpoint's connect_to: wrapping it counts bootstrap's dials.
        connect_to = endpoint.connect_to

        async def counted(
            addr: tuple[str, int],
            via: tuple[str, int] | None = None,
            *,
            peer_id: str | None = None,
            direct: bool = False,
        ) -> qp2p.Connection:
            if not self.counting:
                return await connect_to(addr, via, peer_id=peer_id, direct=direct)
            self.dialled += 1
            try:
                connection = await connect_to(addr, via, peer_id=peer_id, direct=direct)
            except qp2p.Error:
                self.failed += 1
                raise
            if self.connected_at is None:
                self.connected_at = time.monotonic()
            return connection

        endpoint.connect_to = counted  # type: ignore[method-assign]

    async def watch(self) -> None:
        """Answers requests with their bytes reversed; notes every connection that ends."""

        async def answer() -> None:
            async for message in self.endpoint.incoming_messages():
                if message.is_request:
                    await message.reply(bytes(message.data)[::-1])

        async def disconnections() -> None:
            async for host, port in self.endpoint.disconnections():
                self.disconnected += 1
                self.disconnections.append([round(time.time(), 3), host, port])

        await asyncio.gather(answer(), disconnections())

    async def bootstrap(self) -> dict[str, Any]:
        endpoint = self.endpoint
        started = time.monotonic()
        self.dialled = self.failed = 0
        self.connected_at = None
        self.counting = True
        try:
            connection = await endpoint.bootstrap()
        except qp2p.Error as exc:
            answer: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
            if isinstance(exc, qp2p.BootstrapError):
                answer["attempts"] = dict(Counter(outcome.split(":")[0] for outcome in exc.attempts.values()))
        else:
            self.joined = True
            answer = {
                "bootstrapped": list(connection.remote_addr),
                "public": list(endpoint.public_addr),
                "role": endpoint.role.value,
            }
        finally:
            self.counting = False
        connected = None if self.connected_at is None else round(self.connected_at - started, 3)
        return {**answer, "seconds": round(time.monotonic() - started, 3), "connected": connected,
                "dialled": self.dialled, "failed": self.failed}  # fmt: skip

    def status(self) -> dict[str, Any]:
        endpoint = self.endpoint
        return {
            "status": {
                "connections": len(endpoint.connections()),
                "joined": self.joined,
                "role": endpoint.role.value,
                "public": list(endpoint.public_addr),
                "cache": len(endpoint.bootstrap_cache),
                "disconnections": self.disconnected,
                "refusals": endpoint.stats().refusals,
            }
        }

    def peers(self) -> dict[str, Any]:
        endpoint = self.endpoint
        return {
            "peers": [[*c.remote_addr, c.peer_id, c.path] for c in endpoint.connections()],
            "cache": [[*e.addr, e.fingerprint] for e in endpoint.bootstrap_cache.entries()],
        }

    async def probe(self, command: dict[str, Any]) -> dict[str, Any]:
        timeout = float(command.get("timeout", 3.0))
        gate = asyncio.Semaphore(int(command.get("at_once", 16)))
        endpoint = self.endpoint

        async def one(host: str, port: int, fingerprint: str | None) -> bool:
            async with gate:
                pooled = endpoint.connection(fingerprint) if fingerprint else None
                connection = None
                try:
                    async with asyncio.timeout(timeout):
                        # Via the peer itself: a direct dial, never a punch or a relay.
                        addr = (host, port)
                        connection = await endpoint.connect_to(addr, addr, peer_id=fingerprint)
                        return await connection.request(ASKED) == ANSWERED
                except (qp2p.Error, TimeoutError):
                    return False
                finally:
                    if connection is not None and connection is not pooled:
                        await connection.close()

        probed = await asyncio.gather(*(one(host, port, fp) for host, port, fp in command["probe"]))
        return {"probed": list(probed)}

    async def reach(self, command: dict[str, Any]) -> dict[str, Any]:
        peer_id, addr = command["reach"], tuple(command["addr"])
        timeout = float(command.get("timeout", 1.0))
        started = time.monotonic()
        deadline = started + float(command.get("within", 30.0))
        tries = 0
        while time.monotonic() < deadline:  # each try takes a while: bounded by the deadline
            tries += 1
            try:
                async with asyncio.timeout(max(0.01, min(timeout, deadline - time.monotonic()))):
                    connection = self.endpoint.connection(peer_id)
                    if connection is None:
                        connection = await self.endpoint.connect_to(addr, peer_id=peer_id)  # type: ignore[arg-type]
                    if await connection.request(ASKED) == ANSWERED:
                        seconds = round(time.monotonic() - started, 3)
                        return {"reached": seconds, "tries": tries, "path": connection.path}
            except (qp2p.Error, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        return {"reached": None, "tries": tries, "path": None}

    async def connect(self, command: dict[str, Any]) -> dict[str, Any]:
        endpoint = self.endpoint
        host, port = command["connect"]
        via = tuple(command["via"]) if command.get("via") else None
        started = asyncio.get_running_loop().time()
        try:
            connection = await endpoint.connect_to((host, port), via=via)  # type: ignore[arg-type]
            CONNECTED[(host, port)] = connection
            if await connection.request(ASKED, timeout=10) != ANSWERED:
                return {"error": "WrongReply", "message": "the request's answer was wrong"}
        except qp2p.Error as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        return {
            "connected": connection.path,
            "seconds": round(asyncio.get_running_loop().time() - started, 3),
            "punch_attempts": endpoint.punch_attempts,
        }

    async def answer(self, command: Any) -> dict[str, Any]:
        """The answer to one command (but "quit" and "renew", which ``serve`` handles)."""
        endpoint = self.endpoint
        if isinstance(command, dict):
            if "connect" in command:
                return await self.connect(command)
            if "path" in command:
                connection = CONNECTED.get(tuple(command["path"]))
                return {"path": None if connection is None or connection.is_closed else connection.path}
            if "probe" in command:
                return await self.probe(command)
            if "reach" in command:
                return await self.reach(command)
        elif command == "bootstrap":
            return await self.bootstrap()
        elif command == "status":
            return self.status()
        elif command == "peers":
            return self.peers()
        elif command == "disconnections":
            return {"disconnections": list(self.disconnections)}
        elif command == "cache":
            return {"cache": [list(e.addr) for e in endpoint.bootstrap_cache.entries()]}
        elif command == "mapped":
            mapped = await endpoint.wait_port_mapped()
            return {"mapped": None if mapped is None else list(mapped)}
        elif command == "public":
            return {"public": list(endpoint.public_addr)}
        elif command == "nat":
            nat = await endpoint.wait_nat_discovered()
            return {"nat": {"mapping": nat.mapping.value, "open": nat.open, "port_kept": nat.port_kept}}
        return {"error": "UnknownCommand", "message": f"unknown command {command!r}"}


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
        trust=trust(args.identity),
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        async with qp2p.Endpoint(config) as endpoint:
            node = Node(endpoint)
            watching = asyncio.create_task(node.watch())
            emit({"ready": list(endpoint.local_addr), "peer_id": endpoint.peer_id})
            command = await serve(node, reader)
            watching.cancel()
        if command != "renew":
            return 0
        config = config.replace(local_port=0)


# The connection each "connect" command made, by the address it named.
CONNECTED: dict[tuple[Any, ...], qp2p.Connection] = {}


async def serve(node: Node, reader: asyncio.StreamReader) -> str:
    """Answers commands until "quit" or "renew" (returned), or the end of stdin."""
    alongside: set[asyncio.Task[None]] = set()

    async def answer_alongside(key: object, command: object) -> None:
        try:
            answer = await node.answer(command)
        except Exception as exc:  # a helper's bug must not leave the caller waiting
            answer = {"error": type(exc).__name__, "message": str(exc)}
        emit({**answer, "id": key})

    try:
        while line := (await reader.readline()).strip():
            command = json.loads(line)
            if command in ("quit", "renew"):
                return str(command)
            if isinstance(command, dict) and "id" in command and "do" in command:
                task = asyncio.create_task(answer_alongside(command["id"], command["do"]))
                alongside.add(task)
                task.add_done_callback(alongside.discard)
            else:
                emit(await node.answer(command))
        return "quit"
    finally:
        for task in alongside:
            task.cancel()
        await asyncio.gather(*alongside, return_exceptions=True)


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
    parser.add_argument("--identity", help="a folder keeping our certificate (one peer id across restarts)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
