"""Memory attacks on a victim endpoint in a process of its own (tests/victim_process.py), from
rogue peers speaking the public wire format over raw aioquic (tests/rogue.py).

Used by tests/test_memory_attacks.py and scripts/attack_matrix.py (not a test module). Each
attack is an async context manager: on entry the attack is in place (every byte it sent was
acknowledged by the victim, or what the victim sends has piled up), and it stays in place
until exit, so the victim's memory and a legitimate peer's service are measured under it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rogue import RawPeer, RoguePeer
from waiting import wait_until

import qp2p
from qp2p import wire
from qp2p._speedups import framing

__all__ = (
    "HOSTS",
    "Attack",
    "Outcome",
    "Victim",
    "control_flood",
    "delivered",
    "held_large_frames",
    "huge_window_claim",
    "legit_latency",
    "measure",
    "partial_lanes",
    "rogues",
    "slot_fill",
)

KiB = 1 << 10
MiB = 1 << 20
VICTIM_PROCESS = Path(__file__).with_name("victim_process.py")
# The loopback addresses attackers come from when they spread over "8 addresses".
HOSTS = tuple(f"127.0.0.{i}" for i in range(2, 10))
LEGIT_HOST = "127.0.0.100"
# How long a legitimate peer may take to connect and have one request answered.
SERVED_WITHIN = 2.0
# Rogue datagrams: large, as loopback allows, so bulk attacks take seconds, not minutes.
ROGUE_DATAGRAM = 16000
# What the attackers sent has "stopped moving" after this long without an acknowledgement.
STALLED = 2.0
# RSS is "settled" once two readings this far apart differ by less than SETTLED_BY.
SETTLE_STEP = 0.2
SETTLED_BY = 2 * MiB


# ---- the victim ----------------------------------------------------------------------------


class Victim:
    """A victim_process.py child: its address and identity, and its reports on demand."""

    def __init__(self, process: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.process = process
        host, port = ready["ready"]
        self.addr: tuple[str, int] = (host, port)
        self.fingerprint: str = ready["fingerprint"]
        self.backend: str = ready["backend"]

    @classmethod
    async def start(cls, config: dict[str, Any], *options: str, pure: bool | None = None) -> Victim:
        """Spawn a victim with ``config`` (Config fields); ``pure`` forces its backend, None
        leaves it to this process's ``QP2P_NO_EXTENSIONS``. ``RuntimeError`` if it does not
        start (a field this qp2p does not know, for one: its traceback is on stderr)."""
        env = os.environ.copy()
        if pure is not None:
            env["QP2P_NO_EXTENSIONS"] = "1" if pure else ""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(VICTIM_PROCESS),
            json.dumps(config),
            *options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            async with asyncio.timeout(30):
                assert process.stdout is not None
                line = await process.stdout.readline()
            if not line:
                raise RuntimeError(f"the victim did not start (exit code {await process.wait()})")
            return cls(process, json.loads(line))
        except BaseException:
            await _stop(process)
            raise

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def report(self) -> dict[str, Any]:
        """The victim's RSS, ``Endpoint.stats()`` and what it received; ``ProcessLookupError``
        (or ``ConnectionError``) if it died."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"report\n")
        await self.process.stdin.drain()
        async with asyncio.timeout(10):
            line = await self.process.stdout.readline()
        if not line:
            raise ProcessLookupError(f"the victim died (exit code {await self.process.wait()})")
        report: dict[str, Any] = json.loads(line)
        return report

    async def rss(self) -> int:
        return int((await self.report())["rss"])

    async def peak(self) -> int:
        """The highest RSS the victim ever had."""
        return int((await self.report())["peak"])

    async def settled_rss(self, timeout: float = 20.0) -> int:
        """The RSS once it stopped moving (two readings ``SETTLE_STEP`` apart), or the last one."""
        last = await self.rss()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await asyncio.sleep(SETTLE_STEP)
            now = await self.rss()
            if abs(now - last) < SETTLED_BY:
                return now
            last = now
        return last

    async def stop(self) -> None:
        await _stop(self.process)

    async def __aenter__(self) -> Victim:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def _stop(process: asyncio.subprocess.Process) -> None:
    """End of stdin asks it to exit; killed if it has not within 10 s."""
    if process.returncode is None and process.stdin is not None:
        process.stdin.close()
    try:
        async with asyncio.timeout(10):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


# ---- measuring -----------------------------------------------------------------------------


async def legit_latency(victim: Victim, within: float = SERVED_WITHIN, requests: int = 50) -> float | None:
    """Seconds a fresh, well-behaved endpoint took to connect and get one request answered,
    or None if that, and ``requests`` more answered exactly (none of the victim's replies
    lost), did not happen within ``within`` seconds."""
    loop = asyncio.get_running_loop()
    # From an address no attacker uses: the attackers' own address is theirs to exhaust.
    async with qp2p.Endpoint(qp2p.Config(local_ip=LEGIT_HOST, connect_timeout=within)) as endpoint:
        started = loop.time()
        try:
            async with asyncio.timeout(within):
                connection = await endpoint.connect_to(victim.addr)
                reply = await connection.request(b"legitimate")
                latency = loop.time() - started
                asks = [b"legitimate %d" % n for n in range(requests)]
                replies = await asyncio.gather(*(connection.request(ask) for ask in asks))
        except (TimeoutError, qp2p.Error):
            return None
        return latency if reply == b"legitimate" and replies == asks else None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attack did: the victim's RSS growth once settled under it and at its peak (from
    before the attack), whether it survived, and how long a legitimate peer waited for an
    answer during the attack (None: not served in time)."""

    growth: int
    peak: int
    alive: bool
    latency: float | None
    cut_off: int  # attacking connections the victim closed

    @property
    def served(self) -> bool:
        return self.latency is not None


Attack = Callable[[Victim], AbstractAsyncContextManager[Sequence[RawPeer]]]


async def measure(victim: Victim, attack: Attack) -> Outcome:
    """Run ``attack`` against ``victim``: RSS before, once settled under it and at its peak, and a
    legitimate request while the attack still holds. A victim started for this one attack
    gives a peak that is the attack's (the peak of its start-up is below its settled RSS)."""
    before = await victim.settled_rss()
    try:
        async with attack(victim) as peers:
            after = await victim.settled_rss()
            latency = await legit_latency(victim)
            cut_off = sum(peer.closed for peer in peers)
        peak = await victim.peak()
    except (ProcessLookupError, ConnectionError):
        return Outcome(0, 0, False, None, 0)
    alive = victim.alive
    if alive:
        try:
            await victim.report()
        except (ProcessLookupError, ConnectionError):
            alive = False
    return Outcome(after - before, peak - before, alive, latency, cut_off)


# ---- attackers -----------------------------------------------------------------------------


@asynccontextmanager
async def rogues(
    victim: Victim, connections: int, hosts: Sequence[str] = ("127.0.0.1",), **settings: Any
) -> AsyncIterator[list[RoguePeer]]:
    """``connections`` rogue peers established with the victim, spread over ``hosts``; those the
    victim refuses are left out. Closed on exit."""
    settings.setdefault("max_datagram_size", ROGUE_DATAGRAM)
    async with AsyncExitStack() as stack:
        peers = [
            RoguePeer(victim.addr, host=hosts[i % len(hosts)], handshake=False, **settings)
            for i in range(connections)
        ]
        for peer in peers:
            await stack.enter_async_context(peer)
        try:
            await wait_until(lambda: all(p.established or p.closed for p in peers), 10 + connections / 10)
        except TimeoutError:
            pass
        yield [peer for peer in peers if peer.established]


async def delivered(victim: Victim, peers: Sequence[RoguePeer], timeout: float = 30.0) -> None:
    """Until the victim acknowledged every byte the peers sent, cut them off or died, or what
    is left stopped moving for ``STALLED`` seconds (the victim holds it back)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    left, moved = -1, loop.time()
    while loop.time() < deadline and victim.alive:
        now = sum(0 if peer.closed else peer.unacked for peer in peers)
        if now == 0 or loop.time() - moved > STALLED:
            return
        if now != left:
            left, moved = now, loop.time()
        await asyncio.sleep(0.05)


def _header(size: int) -> bytes:
    return framing.encode_header(framing.FLAG_USER, size)


def _stream_all(peers: Sequence[RoguePeer], streams: int, declared: int, body: int) -> None:
    """On each peer, ``streams`` streams whose frame header declares ``declared`` bytes, followed
    by ``body`` bytes of it; the frames are never finished."""
    for peer in peers:
        for _ in range(streams):
            peer.open_stream(_header(declared) + bytes(body))


@asynccontextmanager
async def partial_lanes(
    victim: Victim,
    connections: int = 1,
    hosts: Sequence[str] = ("127.0.0.1",),
    streams: int = 60,
    lane_threshold: int = 64 * KiB,
) -> AsyncIterator[Sequence[RoguePeer]]:
    """Attack 1: many lanes, each holding one frame of ``lane_threshold`` bytes less one byte,
    never finished (a lane frame is charged only once complete)."""
    async with rogues(victim, connections, hosts) as peers:
        _stream_all(peers, streams, lane_threshold, lane_threshold - 1)
        await delivered(victim, peers)
        yield peers


@asynccontextmanager
async def held_large_frames(
    victim: Victim,
    connections: int = 1,
    hosts: Sequence[str] = ("127.0.0.1",),
    streams: int = 16,
    body: int = 4 * MiB,
    declared: int = 64 * MiB - 1,
) -> AsyncIterator[Sequence[RoguePeer]]:
    """Attack 1, as observed: ``streams`` large frames declaring ``declared`` bytes, ``body`` of
    each sent, never finished (more streams than buffer slots: the rest wait, held)."""
    async with rogues(victim, connections, hosts) as peers:
        _stream_all(peers, streams, declared, body)
        await delivered(victim, peers)
        yield peers


@asynccontextmanager
async def control_flood(
    victim: Victim,
    frames: int = 200_000,
    message: wire.ControlMessage | None = None,
    connections: int = 1,
    hosts: Sequence[str] = ("127.0.0.1",),
) -> AsyncIterator[Sequence[RoguePeer]]:
    """Attack 2: ``frames`` control requests (``PeersRequest`` unless ``message`` says) on one
    lane, while we grant the victim almost no QUIC flow control for its replies."""
    frame = wire.encode(message if message is not None else wire.PeersRequest(32))
    async with rogues(victim, connections, hosts, flow_window=4 * KiB) as peers:
        batch = 1000
        for peer in peers:
            for start in range(0, frames, batch):
                peer.write(frame * min(batch, frames - start))
            peer.transmit()
        await delivered(victim, peers)
        yield peers


@asynccontextmanager
async def huge_window_claim(
    victim: Victim, requests: int = 30, connections: int = 1, hosts: Sequence[str] = ("127.0.0.1",)
) -> AsyncIterator[Sequence[RoguePeer]]:
    """Attack 3: a Hello claiming a receive window of 2**63 units, QUIC flow control withheld,
    then ``requests`` small requests for a large reply (the victim, run with ``--reply-size``,
    answers each with that many bytes, which cannot leave)."""
    claims = {"receive_window": 1 << 63, "max_message_size": 0xFFFFFFFF, "large_message_slots": 1024}
    settings = {"hello_fields": claims, "flow_window": 4 * KiB}
    async with rogues(victim, connections, hosts, **settings) as peers:
        for peer in peers:
            for _ in range(requests):
                peer.request(b"large reply, please")
        await delivered(victim, peers)
        yield peers


@asynccontextmanager
async def slot_fill(
    victim: Victim,
    connections: int = 1,
    hosts: Sequence[str] = ("127.0.0.1",),
    slots: int = 4,
    body: int = 0,
    declared: int = 64 * MiB - 1,
) -> AsyncIterator[Sequence[RoguePeer]]:
    """Attack 4: on every connection, one large frame per buffer slot, declaring ``declared``
    bytes, with ``body`` of them sent (0: the header alone), never finished."""
    async with rogues(victim, connections, hosts) as peers:
        _stream_all(peers, slots, declared, body)
        await delivered(victim, peers)
        yield peers
