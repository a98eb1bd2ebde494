"""How long loading a bootstrap cache file takes: ``python benches/cache_load.py --entries 20000``.

Writes a file of distinct public nodes in the format ``CacheFile`` writes (``--bytes``: as many
as fit in that many bytes), then times one ``CacheFile.load`` into a cache of ``--capacity``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from qp2p.bootstrap_cache import FILE_NAME, FORMAT_VERSION, BootstrapCache, CacheFile


def entry(i: int, now: float, rng: random.Random) -> dict[str, object]:
    """Node ``i``: a public /24 of its own, seen ``i`` seconds ago."""
    return {
        "addr": [f"{20 + i // 65536}.{i // 256 % 256}.{i % 256}.1", 4000],
        "fingerprint": rng.randbytes(32).hex(),
        "last_seen": now - i,
        "successes": rng.randrange(1, 1000),
        "failures": rng.randrange(0, 10),
        "rtt": rng.uniform(0.001, 0.5),
    }


def cache_text(entries: int) -> str:
    """A cache file of ``entries`` nodes."""
    rng, now = random.Random(7), time.time()
    peers = [entry(i, now, rng) for i in range(entries)]
    return json.dumps({"version": FORMAT_VERSION, "peers": peers}, indent=1)


def cache_text_within(size: int) -> str:
    """A cache file of as many nodes as fit in ``size`` bytes."""
    entries = size // len(cache_text(1))  # a lower bound: one entry pays for the header too
    text = cache_text(entries)
    while len(text) <= size:
        entries += max(1, (size - len(text)) // 300)
        text, fitting = cache_text(entries), text
    return fitting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    how_many = parser.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--entries", type=int, help="this many nodes in the file")
    how_many.add_argument("--bytes", type=int, help="as many nodes as fit in this many bytes")
    parser.add_argument("--capacity", type=int, default=200, help="the cache's capacity (Config's default)")
    args = parser.parse_args()
    text = cache_text(args.entries) if args.bytes is None else cache_text_within(args.bytes)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, FILE_NAME).write_text(text)
        cache = BootstrapCache(capacity=args.capacity)
        started = time.perf_counter()
        CacheFile(folder).load(cache)
        seconds = time.perf_counter() - started
    written = text.count('"addr"')
    print(f"{written} entries, {len(text) / 1e6:.2f} MB: loaded {len(cache)} in {seconds:.3f} s")


if __name__ == "__main__":
    main()
