"""A server under a flood of spoofed Initials while real clients connect (not a test module).

Run inside a network namespace of its own (tests/test_flood.py does): raw IPv4 packets give
every Initial a forged source in 198.18.0.0/15, which the namespace routes into a blackhole.

    python flood_process.py --initials N --clients M

Prints one JSON line with what the flood cost the server and how the real clients fared.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import random
import socket
import struct
import sys
import time

import qp2p

SPOOFED = ipaddress.ip_network("198.18.0.0/15")
BATCH = 1  # Initials per turn of the event loop: one turn reads one datagram, so none is dropped


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4 header with a forged source, then a UDP datagram with a correct checksum."""
    length = 8 + len(payload)
    addresses = socket.inet_aton(src) + socket.inet_aton(dst)
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + length, 0, 0, 64, socket.IPPROTO_UDP, 0) + addresses
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    pseudo = addresses + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    checksum = _checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload) or 0xFFFF
    return ip + struct.pack("!HHHH", sport, dport, length, checksum) + payload


def initial(rng: random.Random) -> bytes:
    """A 1200-byte QUIC v1 Initial without a token: what a new client's first datagram looks like."""
    head = b"\xc3\x00\x00\x00\x01" + b"\x08" + rng.randbytes(8) + b"\x08" + rng.randbytes(8) + b"\x00"
    rest = 1200 - len(head) - 2
    return head + struct.pack("!H", 0x4000 | rest) + rng.randbytes(rest)


async def flood(server: qp2p.Endpoint, count: int, peak: list[int]) -> None:
    """Sends ``count`` forged Initials; ``peak`` keeps the most QUIC connections the server held."""
    target = server.local_addr
    rng = random.Random(7)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        for sent in range(count):
            source = str(SPOOFED[rng.randrange(2, SPOOFED.num_addresses - 1)])
            raw.sendto(
                udp_packet(source, rng.randrange(1024, 65536), target[0], target[1], initial(rng)), target
            )
            if sent % BATCH == BATCH - 1:
                await asyncio.sleep(0)
                peak[0] = max(peak[0], len(server._links))
    finally:
        raw.close()


async def client(server: tuple[str, int], all_done: asyncio.Event) -> bool:
    """Connects, sends and asks; stays connected until every client is done."""
    async with qp2p.Endpoint(qp2p.Config(connect_timeout=30)) as endpoint:
        connection = await endpoint.connect_to(server)
        await connection.send(b"hello")
        ok = await connection.request(b"real", timeout=30) == hashlib.sha256(b"real").digest()
        await all_done.wait()
        return ok


async def answer(server: qp2p.Endpoint) -> None:
    async for message in server.incoming_messages():
        if message.is_request:
            await message.reply(hashlib.sha256(message.data).digest())


async def main(args: argparse.Namespace) -> int:
    sent_to = {"spoofed": 0, "real": 0}
    # The real clients all come from 127.0.0.1: that address may hold all the server's memory,
    # and all the handshakes they start at once.
    config = qp2p.Config(address_memory_limit=qp2p.Config().memory_limit, max_half_open_per_address=100)
    async with qp2p.Endpoint(config) as server:
        transport = server._transport
        assert transport is not None
        send = transport.sendto

        def counted(data: bytes, addr: tuple[str, int]) -> None:
            sent_to["spoofed" if ipaddress.ip_address(addr[0]) in SPOOFED else "real"] += len(data)
            send(data, addr)

        transport.sendto = counted  # type: ignore[method-assign]
        answering = asyncio.create_task(answer(server))
        started = time.perf_counter()
        peak, all_done = [0], asyncio.Event()
        async with asyncio.timeout(120):
            flooding = asyncio.create_task(flood(server, args.initials, peak))
            clients = [asyncio.create_task(client(server.local_addr, all_done)) for _ in range(args.clients)]
            await flooding
            await asyncio.sleep(0.5)  # let the server read what is still queued
            while server.stats().connections < args.clients and not any(c.done() for c in clients):
                await asyncio.sleep(0.05)
            stats = server.stats()
            all_done.set()
            results = await asyncio.gather(*clients)
        report = {
            "initials": args.initials,
            "initial_bytes": args.initials * 1200,
            "clients_ok": sum(results),
            "clients": args.clients,
            "accepted": stats.datagrams.accepted,
            "retries": stats.datagrams.retries,
            "received": stats.datagrams.received,
            "connections": stats.connections,
            "peak_links": max(peak[0], stats.connections),
            "bytes_to_spoofed": sent_to["spoofed"],
            "seconds": round(time.perf_counter() - started, 2),
        }
        answering.cancel()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--initials", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    sys.exit(asyncio.run(main(parser.parse_args())))
