"""qp2p and raw aioquic behind one small interface, and the peak memory of sending one large message.

    python benches/e2e_memory.py --impl qp2p|aioquic --size-mib 256

``IMPLS`` gives, per implementation, a receiver (hands each message to a callback, echoes each
request) and a sender (``send``, ``request``); bench_e2e.py runs both in one event loop.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import qp2p

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))  # benches/ is not a package
from aioquic_baseline import DATAGRAM_SIZE, Address, AioquicReceiver, AioquicSender, Body  # noqa: E402

__all__ = ("IMPLS", "Impl", "Qp2pReceiver", "Qp2pSender", "Receiver", "Sender", "main")

MiB = 1 << 20
PROC_SELF = Path("/proc/self")
# Room for the largest bench message (qp2p's default limit is 64 MiB); both ends must allow it.
MAX_MESSAGE_SIZE = 1 << 30
# Bounds the whole run of either side: at a few MiB/s a 256 MiB message takes about a minute.
TIMEOUT = 240.0


class Receiver(Protocol):
    """Hands each message to ``on_message`` and echoes each request, from ``start`` to ``close``."""

    async def start(self, on_message: Callable[[Body], None]) -> Address: ...

    async def close(self) -> None: ...


class Sender(Protocol):
    """One connection to a receiver, from ``connect`` to ``close``."""

    async def connect(self, addr: Address) -> None: ...

    async def send(self, data: Body) -> None: ...

    async def request(self, data: Body) -> Body: ...

    async def close(self) -> None: ...


def _endpoint() -> qp2p.Endpoint:
    # A message this large needs more than an address's default share of memory_limit.
    config = qp2p.Config(
        max_datagram_size=DATAGRAM_SIZE,
        max_message_size=MAX_MESSAGE_SIZE,
        address_memory_limit=qp2p.Config().memory_limit,
    )
    return qp2p.Endpoint(config)


class Qp2pReceiver:
    """An endpoint whose ``incoming_messages()`` is read by one task."""

    def __init__(self) -> None:
        self._endpoint = _endpoint()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, on_message: Callable[[Body], None]) -> Address:
        await self._endpoint.start()
        self._reader = asyncio.create_task(self._read(on_message))
        return self._endpoint.local_addr

    async def _read(self, on_message: Callable[[Body], None]) -> None:
        async for message in self._endpoint.incoming_messages():
            if message.is_request:
                await message.reply(message.data)
            else:
                on_message(message.data)

    async def close(self) -> None:
        await self._endpoint.close()
        if self._reader is not None:
            await self._reader  # ends with the endpoint; raises whatever stopped it before


class Qp2pSender:
    """An endpoint with one connection: ``Connection.send`` and ``Connection.request``."""

    _connection: qp2p.Connection  # set by connect()

    def __init__(self) -> None:
        self._endpoint = _endpoint()

    async def connect(self, addr: Address) -> None:
        await self._endpoint.start()
        self._connection = await self._endpoint.connect_to(addr)

    async def send(self, data: Body) -> None:
        await self._connection.send(data)

    async def request(self, data: Body) -> Body:
        return await self._connection.request(data)

    async def close(self) -> None:
        await self._endpoint.close()


class Impl(NamedTuple):
    receiver: Callable[[], Receiver]
    sender: Callable[[], Sender]


IMPLS = {"qp2p": Impl(Qp2pReceiver, Qp2pSender), "aioquic": Impl(AioquicReceiver, AioquicSender)}


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


async def _receive(impl: str) -> None:
    """The child: print the address, then the length and SHA-256 of the one message received."""
    arrived: asyncio.Future[Body] = asyncio.get_running_loop().create_future()
    receiver = IMPLS[impl].receiver()
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


async def _send(impl: str, size_mib: int) -> dict[str, Any]:
    """The measured side: build the payload, connect, then send it and wait for the child's word."""
    size = size_mib * MiB
    command = [sys.executable, __file__, "--impl", impl, "--size-mib", str(size_mib), "--receive"]
    child = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    sender = IMPLS[impl].sender()
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
        "baseline_mib": round(baseline, 1),
        "peak_mib": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=sorted(IMPLS), required=True)
    parser.add_argument("--size-mib", type=int, default=256, help="message size in MiB (default 256)")
    parser.add_argument("--receive", action="store_true", help="be the receiving child")
    args = parser.parse_args(argv)
    if args.size_mib <= 0:
        parser.error("--size-mib must be positive")
    if args.receive:
        asyncio.run(_receive(args.impl))
    else:
        _emit(asyncio.run(_send(args.impl, args.size_mib)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
