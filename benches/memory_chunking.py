"""Peak memory of one large message split by ``Chunker`` and rebuilt by ``Reassembler``.

    python benches/memory_chunking.py --backend fast|pure --size-mib 256

``ru_maxrss`` is a high-water mark that never comes down, so each side runs in a fresh process
of its own (this script again, with ``--side``) and reports its peak above a baseline taken just
before its payload exists. Prints one JSON line with both figures, in MiB.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
from types import ModuleType

__all__ = ("PACKAGES", "main", "reassemble_peak_mib", "split_extra_mib")

PACKAGES = {"fast": "_qp2p_fast", "pure": "qp2p._pure"}
MiB = 1 << 20
CHUNK_SIZE = 65536


def _peak_mib() -> float:
    """The process's peak resident set so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _modules(package: str) -> tuple[ModuleType, ModuleType]:
    """The backend's ``chunking`` and ``framing`` modules, imported before any baseline is taken."""
    return importlib.import_module(f"{package}.chunking"), importlib.import_module(f"{package}.framing")


def split_extra_mib(package: str, size: int) -> float:
    """Peak growth beyond the payload while it is split and "sent": about 0 when nothing is copied."""
    chunking, framing = _modules(package)
    payload = bytearray(size)
    for at in range(0, size, MiB):
        payload[at : at + MiB] = os.urandom(MiB)
    loaded = _peak_mib()
    sent = sum(map(len, chunking.Chunker(0, payload, CHUNK_SIZE)))
    if sent != framing.HEADER_SIZE + size:
        raise RuntimeError(f"Chunker handed out {sent} bytes for a {size}-byte payload")
    return _peak_mib() - loaded


def reassemble_peak_mib(package: str, size: int) -> float:
    """Peak growth while a message arrives in 1 MiB pieces: the one body buffer and little else."""
    chunking, framing = _modules(package)
    baseline = _peak_mib()
    piece = memoryview(os.urandom(MiB))
    collector = chunking.Reassembler(size)
    collector.feed(framing.encode_header(0, size))
    for _ in range(size // MiB):
        collector.feed(piece)
    if not collector.done:
        raise RuntimeError(f"Reassembler holds {collector.received} of {size} bytes")
    return _peak_mib() - baseline


SIDES = {"split": split_extra_mib, "reassemble": reassemble_peak_mib}


def _run_side(side: str, backend: str, size_mib: int) -> float:
    """One side measured in a fresh interpreter, so neither side's peak hides the other's."""
    command = [sys.executable, __file__, "--backend", backend, "--size-mib", str(size_mib), "--side", side]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    figure: float = json.loads(done.stdout)
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(PACKAGES), required=True)
    parser.add_argument("--size-mib", type=int, default=256, help="message size in MiB (default 256)")
    parser.add_argument("--side", choices=sorted(SIDES), help="measure one side in this process")
    args = parser.parse_args(argv)
    if args.size_mib <= 0:
        parser.error("--size-mib must be positive")
    if args.side is not None:
        print(json.dumps(SIDES[args.side](PACKAGES[args.backend], args.size_mib * MiB)))
        return 0
    result = {
        "backend": args.backend,
        "size_mib": args.size_mib,
        "split_extra_mib": round(_run_side("split", args.backend, args.size_mib), 1),
        "reassemble_peak_mib": round(_run_side("reassemble", args.backend, args.size_mib), 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
