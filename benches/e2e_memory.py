"""The peak memory of sending one large message, with qp2p or raw aioquic (the peers of _peers.py).

    python benches/e2e_memory.py --impl qp2p|aioquic --size-mib 256

This script measures the sender alone: it runs in this process, the receiver in a child (this
script again, with ``--receive``), so the receiver's copy of the message never counts. The
baseline is the resident set once the payload is built, the child is listening and the
connection is up (on Linux the peak is reset to it first, so no earlier peak can hide growth);
the figure is the peak resident set (``VmHWM``, or ``ru_maxrss`` where there is no ``/proc``)
above it from the first byte sent until the child reports every byte received (length and
SHA-256 checked). Prints one JSON line:

    {"impl": "qp2p", "backend": "fast", "size_mib": 256, "baseline_mib": 296.6, "peak_mib": 10.4}
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import qp2p

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))  # benches/ is not a package
from _peers import CORE, Body, load  # noqa: E402
from aioquic_baseline import DATAGRAM_SIZE  # noqa: E402

__all__ = ("main",)

MiB = 1 << 20
PROC_SELF = Path("/proc/self")
# Bounds the whole run of either side: at a few MiB/s a 256 MiB message takes about a minute.
TIMEOUT = 240.0


def _peak_mib() -> float:
    """The process's peak resident set so far: ``VmHWM`` on Linux, else ``ru_maxrss`` (in KiB).

    Linux's ``ru_maxrss`` also counts the peak of the process that forked this one, before it
    exec'd: run from a large pytest process, it would hide this process's own growth.
    """
    try:
        status = PROC_SELF.joinpath("status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024


def _reset_peak() -> None:
    """Lowers the peak to the current resident set (Linux), so growth below an earlier peak shows."""
    try:
        PROC_SELF.joinpath("clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the baseline is the peak so far, which may hide growth below it


def _emit(value: Any) -> None:
    print(json.dumps(value), flush=True)


async def _receive(impl: str, datagram: int | None) -> None:
    """The child: print the address, then the length and SHA-256 of the one message received."""
    arrived: asyncio.Future[Body] = asyncio.get_running_loop().create_future()
    receiver = load(impl).receiver(datagram)
    try:
        async with asyncio.timeout(TIMEOUT):
            _emit(await receiver.start(arrived.set_result))
            body = await arrived
        _emit({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    finally:
        await receiver.close()


async def _read_line(child: asyncio.subprocess.Process, what: str) -> Any:
    assert child.stdout is not None
    line = await child.stdout.readline()
    if not line:
        raise RuntimeError(f"the receiver exited with status {await child.wait()} before {what}")
    return json.loads(line)


async def _send(impl: str, size_mib: int, datagram: int | None) -> dict[str, Any]:
    """The measured side: build the payload, connect, then send it and wait for the child's word."""
    size = size_mib * MiB
    command = [sys.executable, __file__, "--impl", impl, "--size-mib", str(size_mib), "--receive"]
    command += ["--datagram", str(datagram or 0)]
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    sender = load(impl).sender(datagram)
    try:
        async with asyncio.timeout(TIMEOUT):
            payload = bytearray(size)
            for at in range(0, size, MiB):
                payload[at : at + MiB] = os.urandom(MiB)
            digest = hashlib.sha256(payload).hexdigest()
            host, port = await _read_line(child, "listening")
            await sender.connect((host, port))
            gc.collect()
            _reset_peak()
            baseline = _peak_mib()
            await sender.send(payload)
            report = await _read_line(child, "reporting the message")
            peak = _peak_mib() - baseline
        if report != {"bytes": size, "sha256": digest}:
            raise RuntimeError(f"the receiver got {report['bytes']} bytes of {size}, or other bytes")
    except BaseException:
        if child.returncode is None:
            child.kill()
        raise
    finally:
        await sender.close()
        async with asyncio.timeout(10):
            await child.wait()
    if child.returncode != 0:
        raise RuntimeError(f"the receiver exited with status {child.returncode}")
    return {
        "impl": impl,
        "backend": qp2p.BACKEND,
        "size_mib": size_mib,
        "datagram": datagram or "default",
        "baseline_mib": round(baseline, 1),
        "peak_mib": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=CORE, required=True)
    parser.add_argument("--size-mib", type=int, default=256, help="message size in MiB (default 256)")
    parser.add_argument("--receive", action="store_true", help="be the receiving child")
    parser.add_argument(
        "--datagram",
        type=int,
        default=DATAGRAM_SIZE,
        help=f"max_datagram_size (default {DATAGRAM_SIZE}; 0: the implementation's default config)",
    )
    args = parser.parse_args(argv)
    datagram = args.datagram or None
    if args.size_mib <= 0:
        parser.error("--size-mib must be positive")
    if args.receive:
        asyncio.run(_receive(args.impl, datagram))
    else:
        _emit(asyncio.run(_send(args.impl, args.size_mib, datagram)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
