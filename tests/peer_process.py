"""Peers in a process of their own, driven by tests/test_multiprocess.py (not a test module).

python peer_process.py senders HUB --peers N --messages M --size S [--datagram D]
    N endpoints; each sends M messages of S bytes to HUB, then a request carrying M, and checks
    the reply: SHA-256 over the sorted SHA-256 digests of its messages. Prints one JSON line.
python peer_process.py large HUB --size-mib N [--datagram D]
    connects, prints "sending", sends one N MiB message, prints "sent"; at 1200-byte datagrams
    by default, so that the message takes seconds to cross (a test kills the sender meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time

import qp2p


def digest_of(messages: list[bytes]) -> bytes:
    """Order-independent digest of a set of messages (lanes do not keep order across each other)."""
    return hashlib.sha256(b"".join(sorted(hashlib.sha256(m).digest() for m in messages))).digest()


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def one_sender(index: int, args: argparse.Namespace) -> str | None:
    config = qp2p.Config(max_datagram_size=args.datagram, connect_timeout=30)
    async with qp2p.Endpoint(config) as endpoint:
        connection = await endpoint.connect_to(parse_addr(args.hub))
        messages = [
            index.to_bytes(4, "big") + i.to_bytes(4, "big") + bytes([i % 251]) * (args.size - 8)
            for i in range(args.messages)
        ]
        for message in messages:
            await connection.send(message)
        reply = await connection.request(args.messages.to_bytes(4, "big"), timeout=120)
        if reply != digest_of(messages):
            return f"peer {index}: digest mismatch"
    return None


async def senders(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    results = await asyncio.gather(*(one_sender(i, args) for i in range(args.peers)), return_exceptions=True)
    failures = [repr(r) if isinstance(r, BaseException) else r for r in results if r is not None]
    elapsed = time.perf_counter() - started
    print(json.dumps({"peers": args.peers, "failures": failures, "seconds": elapsed}), flush=True)
    return 1 if failures else 0


async def large(args: argparse.Namespace) -> int:
    async with qp2p.Endpoint(qp2p.Config(max_datagram_size=args.datagram)) as endpoint:
        connection = await endpoint.connect_to(parse_addr(args.hub))
        print("sending", flush=True)
        await connection.send(bytes(args.size_mib << 20))
        print("sent", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    many = commands.add_parser("senders")
    many.add_argument("hub")
    many.add_argument("--peers", type=int, required=True)
    many.add_argument("--messages", type=int, required=True)
    many.add_argument("--size", type=int, required=True)
    many.add_argument("--datagram", type=int, default=1200)
    big = commands.add_parser("large")
    big.add_argument("hub")
    big.add_argument("--size-mib", type=int, required=True)
    big.add_argument("--datagram", type=int, default=1200)
    args = parser.parse_args()
    return asyncio.run(senders(args) if args.command == "senders" else large(args))


if __name__ == "__main__":
    sys.exit(main())
