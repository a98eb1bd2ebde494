"""Send a large file to a peer with a progress bar; both sides check its SHA-256.

    python examples/send_file.py receive copy.bin 127.0.0.1:4000
    python examples/send_file.py send big.bin 127.0.0.1:4000

The file goes as 1 MiB requests, each acknowledged by its (empty) reply, then one last request
with the sender's SHA-256, answered with the SHA-256 of the file as written. (Over a long path,
keep a few pieces in flight, each with its offset.) The progress bar is tqdm's when installed
(pip install 'qp2p[progress]'), else a plain percentage line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
from typing import Any

import qp2p

PIECE = 1 << 20


class Percent:
    """A plain percentage line on stderr, for when tqdm is not installed."""

    def __init__(self, total: int) -> None:
        self.total, self.done = max(1, total), 0

    def update(self, count: int) -> None:
        self.done += count
        print(f"\rsent {100 * self.done // self.total}%", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr)


def progress(total: int) -> Any:
    """tqdm's bar (``update``, ``close``) when it is installed, else a ``Percent``."""
    try:
        from tqdm import tqdm
    except ImportError:
        return Percent(total)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024)


async def receive(args: argparse.Namespace) -> int:
    host, port = args.addr
    async with qp2p.Endpoint(qp2p.Config(local_ip=host, local_port=port)) as endpoint:
        print("listening on {}:{}".format(*endpoint.local_addr), flush=True)
        with open(args.path, "wb") as out:
            async for message in endpoint.incoming_messages():
                if message.data[:1] == b"E":  # the end, with the sender's SHA-256
                    break
                out.write(memoryview(message.data)[1:])  # a piece: b"P", then its bytes
                await message.reply(b"")  # acknowledged: the sender may send another piece
        with open(args.path, "rb") as written:
            digest = hashlib.file_digest(written, "sha256").digest()
        await message.reply(digest)
        verdict = "intact" if digest == message.data[1:] else "BAD"
        print(f"received {os.path.getsize(args.path)} bytes, sha256 {digest.hex()}: {verdict}")
        return 0 if verdict == "intact" else 1


async def send(args: argparse.Namespace) -> int:
    size, hasher = os.path.getsize(args.path), hashlib.sha256()
    async with qp2p.Endpoint(qp2p.Config(local_ip="0.0.0.0")) as endpoint:
        connection = await endpoint.connect_to(args.addr)
        began, bar = time.perf_counter(), progress(size)
        with open(args.path, "rb") as source:
            while piece := source.read(PIECE):
                hasher.update(piece)
                await connection.request(b"P" + piece)
                bar.update(len(piece))
        bar.close()
        theirs = await connection.request(b"E" + hasher.digest())
        seconds = time.perf_counter() - began
        print(f"sent {size} bytes in {seconds:.2f} s: {size / seconds / 1e6:.1f} MB/s")
        verdict = "the receiver has the same" if theirs == hasher.digest() else "the receiver's DIFFERS"
        print(f"sha256 {hasher.hexdigest()}: {verdict}")
        return 0 if theirs == hasher.digest() else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Send a file over qp2p, or receive one.")
    parser.add_argument("command", choices=["send", "receive"])
    parser.add_argument("path", help="the file to send, or where to write the one received")
    parser.add_argument("addr", nargs="?", default="127.0.0.1:0", help="the receiver's HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.addr.rpartition(":")
    args.addr = (host, int(port))
    return asyncio.run(receive(args) if args.command == "receive" else send(args))


if __name__ == "__main__":
    sys.exit(main())
