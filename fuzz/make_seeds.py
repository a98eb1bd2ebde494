"""Writes seed inputs for every fuzz target into DIR/<target>/, built from real qp2p data.

    python fuzz/make_seeds.py DIR

Each file is named by the SHA-1 of its contents, as libFuzzer names the inputs it keeps, so
running this again over an existing corpus adds nothing twice.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

TARGETS = ("framing_decoder", "reassembler", "packet_peek", "retry_token", "wire_decode")


def write_seeds(root: Path) -> dict[str, int]:
    """Every target's seeds under ``root``; returns how many each target has."""
    counts = {}
    for name in TARGETS:
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        seeds = set(importlib.import_module(name).seeds())
        for seed in seeds:
            (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        counts[name] = len(seeds)
    return counts


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for target, count in write_seeds(Path(sys.argv[1])).items():
        print(f"{target}: {count} seeds")
