"""Run the memory and control-plane attacks against a victim endpoint in its own process and
print a markdown table: attack, victim RSS growth, legitimate peer served (and how fast).

    python scripts/attack_matrix.py [--memory-limit MIB] [--connections N] [--only TEXT]

Each attack gets a fresh victim (tests/victim_process.py, backend from QP2P_NO_EXTENSIONS) with
``memory_limit`` passed through to its Config. Runs as a normal user; every attack is bounded in
time (``--timeout`` each). Attacks 1 to 4 are those of tests/test_memory_attacks.py; 5 is the
half-open flood (Initial, Retry, Initial with the token, then silence, from one socket);
6 forges 60 RelayIncoming circuits; 7 has one peer open every relay circuit the victim allows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from aioquic.buffer import Buffer  # noqa: E402
from aioquic.quic.packet import pull_quic_header  # noqa: E402
from memory_attacks import (  # noqa: E402
    HOSTS,
    Attack,
    MiB,
    Victim,
    control_flood,
    delivered,
    held_large_frames,
    huge_window_claim,
    measure,
    partial_lanes,
    rogues,
    slot_fill,
)
from rogue import RawPeer, RoguePeer, relay_incoming  # noqa: E402
from waiting import wait_until  # noqa: E402

import qp2p  # noqa: E402
from qp2p import wire  # noqa: E402
from qp2p.transport import CID_LENGTH  # noqa: E402


class FloodSocket(asyncio.DatagramProtocol):
    """One UDP socket for many half-open handshakes: answers go to the one whose CID they name."""

    def __init__(self) -> None:
        self.peers: dict[bytes, RawPeer] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except ValueError:
            return
        peer = self.peers.get(header.destination_cid)
        if peer is not None:
            peer.datagram_received(data)


class HalfOpen(RawPeer):
    """Sends its Initial and, after the victim's Retry, the Initial carrying the token; then nothing."""

    def __init__(self, remote: tuple[str, int], socket: FloodSocket) -> None:
        super().__init__(remote)
        self.socket = socket
        self.token_sent = False
        socket.peers[self.quic.host_cid] = self

    def _send_datagram(self, data: bytes) -> None:
        retried = self.quic._retry_count > 0  # noqa: SLF001
        if not self.token_sent and self.socket.transport is not None:
            self.token_sent = retried
            self.socket.transport.sendto(data, self.remote)


@asynccontextmanager
async def half_open_flood(victim: Victim, handshakes: int = 300) -> AsyncIterator[Sequence[RawPeer]]:
    """Attack 5: from one socket, ``handshakes`` half-open connections: Initial, Retry, Initial
    with the token, then silence."""
    loop = asyncio.get_running_loop()
    transport, socket = await loop.create_datagram_endpoint(FloodSocket, local_addr=("127.0.0.1", 0))
    flood = [HalfOpen(victim.addr, socket) for _ in range(handshakes)]
    try:
        for peer in flood:
            peer.start()
        try:
            await wait_until(lambda: all(p.token_sent for p in flood), 10)
        except TimeoutError:
            pass
        yield flood
    finally:
        for peer in flood:
            peer.close()
        transport.close()


@asynccontextmanager
async def forged_relay_incoming(victim: Victim, circuits: int = 60) -> AsyncIterator[Sequence[RoguePeer]]:
    """Attack 6: one peer claims ``circuits`` relayed peers are reaching the victim through it."""
    async with rogues(victim, 1) as peers:
        for peer in peers:
            forged = [
                relay_incoming(("127.0.0.1", 40000 + i), peer.ref, circuit=i + 1) for i in range(circuits)
            ]
            peer.send(*forged)
            for i in range(circuits):  # an Initial's worth of bytes into each circuit
                peer.send(wire.RelayData(i + 1, bytes(1200)))
        await delivered(victim, peers)
        yield peers


@asynccontextmanager
async def relay_circuits(victim: Victim, circuits: int = 80) -> AsyncIterator[Sequence[RoguePeer]]:
    """Attack 7: one peer asks the victim to relay ``circuits`` circuits to another peer."""
    async with rogues(victim, 2) as peers:
        if len(peers) == 2:
            asker, target = peers
            opens = [wire.RelayOpen(target.local_addr, target.fingerprint, i + 1) for i in range(circuits)]
            asker.send(*opens)
            for i in range(circuits):
                asker.send(wire.RelayData(i + 1, bytes(1200)))
        await delivered(victim, peers)
        yield peers


def attacks(connections: int) -> list[tuple[str, tuple[str, ...], Attack]]:
    """(name, victim options, attack) for every row of the table."""
    spread = HOSTS[: max(1, min(len(HOSTS), connections))]
    return [
        (
            f"1 partial lane frames ({connections} conn)",
            (),
            lambda v: partial_lanes(v, connections=connections),
        ),
        ("1 held large frames (16 streams)", (), lambda v: held_large_frames(v, streams=16)),
        ("2 PeersRequest flood, flow control withheld", (), lambda v: control_flood(v)),
        (
            "2 VerificationRequest flood, flow control withheld",
            (),
            lambda v: control_flood(v, 100_000, wire.VerificationRequest(("127.0.0.9", 9))),
        ),
        (
            "3 Hello window 2**63, 30 x 8 MiB replies",
            ("--reply-size", str(8 * MiB)),
            lambda v: huge_window_claim(v),
        ),
        (
            f"4 buffer slots, headers only ({connections} conn)",
            (),
            lambda v: slot_fill(v, connections=connections),
        ),
        (
            f"4 buffer slots, 8 MiB each ({connections} conn, {len(spread)} addr)",
            (),
            lambda v: slot_fill(v, connections=connections, hosts=spread, body=8 * MiB),
        ),
        ("5 half-open flood x 300 (one socket)", (), lambda v: half_open_flood(v)),
        ("6 forged RelayIncoming x 60", (), lambda v: forged_relay_incoming(v)),
        ("7 one peer opens every relay circuit", (), lambda v: relay_circuits(v)),
    ]


async def row(
    name: str, config: dict[str, Any], options: tuple[str, ...], attack: Attack, timeout: float
) -> str:
    try:
        victim = await Victim.start(config, *options)
    except RuntimeError as exc:
        return f"| {name} | {exc} | - | - | - |"
    async with victim:
        try:
            async with asyncio.timeout(timeout):
                outcome = await measure(victim, attack)
        except TimeoutError:
            return f"| {name} | timed out after {timeout:.0f} s | - | - | - |"
    if not outcome.alive:
        return f"| {name} | - | - | no | DEAD (exit code {victim.process.returncode}) |"
    served = "no" if outcome.latency is None else f"yes, {outcome.latency * 1000:.0f} ms"
    growth = f"{outcome.growth / MiB:+.0f} MiB | {outcome.peak / MiB:+.0f} MiB"
    return f"| {name} | {growth} | {served} | alive, {outcome.cut_off} attacking connections cut off |"


async def main(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {} if args.memory_limit is None else {"memory_limit": args.memory_limit * MiB}
    limit = "unset" if args.memory_limit is None else f"{args.memory_limit} MiB"
    print(f"Victim backend {qp2p.BACKEND}, memory_limit {limit}, {args.connections} connections.\n")
    print("| attack | victim RSS growth (settled) | at its peak | legitimate peer served | victim |")
    print("|---|---|---|---|---|")
    for name, options, attack in attacks(args.connections):
        if args.only and args.only not in name:
            continue
        print(await row(name, extra, options, attack, args.timeout), flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memory-limit", type=int, default=None, help="victim memory_limit, MiB")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--only", default="", help="run only the attacks whose name contains this")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per attack")
    sys.exit(asyncio.run(main(parser.parse_args())))
