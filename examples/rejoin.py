"""A node that, after a restart, joins its network again from its bootstrap cache alone.

    python examples/rejoin.py --cache-dir a --port 4000              # the network's first node
    python examples/rejoin.py --cache-dir b --contact 127.0.0.1:4000 # joins through a contact
    python examples/rejoin.py --cache-dir c --contact 127.0.0.1:4000 # learns of b through a
    python examples/rejoin.py --cache-dir c                          # later, a gone: through b

A node stays a member until end of input (Ctrl-D), printing its cache each time it changes:
the nodes it found reachable. Leaving saves the cache to DIR/bootstrap_cache.json; a start
with no contact tries the cached nodes, best first, and joins through the first to answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
from pathlib import Path

import qp2p


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def shown(addresses: list[tuple[str, int]]) -> str:
    return ", ".join(f"{host}:{port}" for host, port in sorted(addresses)) or "nothing"


def wait_for_eof(loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    """In a thread, so that the blocking read never holds the event loop."""
    sys.stdin.read()
    loop.call_soon_threadsafe(done.set)


async def run(args: argparse.Namespace) -> None:
    config = qp2p.Config(
        local_ip="127.0.0.1",
        local_port=args.port,
        bootstrap_cache_dir=args.cache_dir,
        hard_coded_contacts=args.contact,
    )
    async with qp2p.Endpoint(config) as endpoint:
        print("node at {}:{}".format(*endpoint.local_addr), flush=True)
        try:
            contact = await endpoint.bootstrap()  # contacts first, then the cache
            print("joined through {}:{}".format(*contact.remote_addr), flush=True)
        except qp2p.BootstrapError as exc:  # nobody to join, but now a member others can join
            print(f"the first node ({exc})", flush=True)
        left = asyncio.Event()
        threading.Thread(target=wait_for_eof, args=(asyncio.get_running_loop(), left), daemon=True).start()
        cached: list[tuple[str, int]] = []
        while not left.is_set():
            now = [entry.addr for entry in endpoint.bootstrap_cache.entries()]
            if sorted(now) != sorted(cached):
                cached = now
                print(f"cache: {shown(cached)}", flush=True)
            with contextlib.suppress(TimeoutError):  # the cache changes as nodes answer
                await asyncio.wait_for(left.wait(), timeout=0.2)
    # Closing the endpoint wrote the cache (if it ever held a node): read it back.
    path = Path(args.cache_dir, "bootstrap_cache.json")
    saved = json.loads(path.read_text())["peers"] if path.exists() else []
    print(f"saved: {shown([(entry['addr'][0], entry['addr'][1]) for entry in saved])}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="A qp2p node that remembers its network.")
    parser.add_argument("--cache-dir", required=True, help="the folder of this node's cache")
    parser.add_argument("--port", type=int, default=0, help="the port to bind (default: any free one)")
    parser.add_argument("--contact", type=address, action="append", default=[], metavar="HOST:PORT")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
