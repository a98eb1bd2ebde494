"""Memory attacks 1 to 4 of issue 11, against a victim endpoint in a process of its own whose RSS
is read from /proc, from rogue peers speaking the public wire format (tests/memory_attacks.py).

Under every attack: (a) the victim stays alive, (b) a legitimate endpoint connecting during the
attack has a request answered within 2 s, (c) the victim's RSS, at its peak, grows by at most
``memory_limit`` (128 MiB) plus ``OVERHEAD``. The overhead is what connections cost without
holding any data (64 idle connections measured at +5 MiB: ``test_idle_connections``) plus the
interpreter's own slack (arenas it keeps, aioquic's packet buffers), with a wide margin.
Honest traffic must still get through under the same limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import Any

import pytest
from memory_attacks import (
    HOSTS,
    Outcome,
    Victim,
    control_flood,
    held_large_frames,
    huge_window_claim,
    measure,
    partial_lanes,
    rogues,
    slot_fill,
)

import qp2p
from qp2p import wire

pytestmark = pytest.mark.usefixtures("no_leaks")

KiB = 1 << 10
MiB = 1 << 20
MEMORY_LIMIT = 128 * MiB
OVERHEAD = 64 * MiB


def victim_config(memory_limit: int = MEMORY_LIMIT, **fields: Any) -> dict[str, Any]:
    """The victim's Config fields: ``memory_limit`` once this qp2p has that setting."""
    if "memory_limit" in {f.name for f in dataclasses.fields(qp2p.Config)}:
        fields["memory_limit"] = memory_limit
    return fields


def check(outcome: Outcome) -> None:
    """Alive, a legitimate peer served in time, and memory held to the limit."""
    assert outcome.alive, "the victim died"
    assert outcome.served, "a legitimate peer was not served within 2 s"
    bound = MEMORY_LIMIT + OVERHEAD
    assert outcome.peak <= bound, (
        f"RSS grew {outcome.peak / MiB:.0f} MiB at its peak, over {bound / MiB:.0f} MiB"
    )


async def test_idle_connections_cost_less_than_the_overhead() -> None:
    async with await Victim.start(victim_config()) as victim:
        outcome = await measure(victim, lambda v: rogues(v, 64))
    assert outcome.alive and outcome.served
    assert outcome.peak <= OVERHEAD, f"64 idle connections took {outcome.peak / MiB:.0f} MiB"


# ---- 1: unfinished frames ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connections", "hosts"),
    [
        pytest.param(1, 1, id="1-conn"),
        pytest.param(8, 1, id="8-conn"),
        pytest.param(64, 1, id="64-conn"),
        pytest.param(64, 8, id="64-conn-8-addr"),
    ],
)
async def test_partial_lane_frames(connections: int, hosts: int) -> None:
    """60 lanes per connection, each one byte short of a 64 KiB frame: charged only when complete."""
    async with await Victim.start(victim_config()) as victim:
        check(await measure(victim, lambda v: partial_lanes(v, connections, HOSTS[:hosts])))


@pytest.mark.parametrize(
    "pure",
    [
        pytest.param(False, marks=pytest.mark.fast_ext, id="fast"),
        pytest.param(True, id="pure"),
    ],
)
async def test_held_large_frames(pure: bool) -> None:
    """16 large frames declaring 64 MiB - 1, 4 MiB of each sent: more than the buffer slots."""
    async with await Victim.start(victim_config(), pure=pure) as victim:
        check(await measure(victim, lambda v: held_large_frames(v, streams=16, body=4 * MiB)))


# ---- 2: control frames ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [wire.PeersRequest(32), wire.VerificationRequest(("127.0.0.9", 9)), wire.EchoRequest()],
    ids=["peers", "verification", "echo"],
)
async def test_control_flood_with_flow_control_withheld(message: wire.ControlMessage) -> None:
    """200,000 control requests while the attacker lets none of the victim's answers through."""
    async with await Victim.start(victim_config()) as victim:
        check(await measure(victim, lambda v: control_flood(v, 200_000, message)))


# ---- 3: what the Hello claims --------------------------------------------------------------


async def test_hello_claiming_a_huge_window() -> None:
    """A Hello claiming 2**63 units of window, then 30 requests for 8 MiB replies that cannot leave."""
    async with await Victim.start(victim_config(), "--reply-size", str(8 * MiB)) as victim:
        check(await measure(victim, lambda v: huge_window_claim(v, requests=30)))


# ---- 4: buffer slots times connections -----------------------------------------------------


@pytest.mark.parametrize(
    ("connections", "hosts", "body"),
    [
        pytest.param(1, 1, 56 * MiB, id="1-conn"),
        pytest.param(8, 1, 8 * MiB, id="8-conn"),
        pytest.param(64, 1, 1 * MiB, id="64-conn"),
        pytest.param(64, 8, 1 * MiB, id="64-conn-8-addr"),
    ],
)
async def test_buffer_slots(backend: Any, connections: int, hosts: int, body: int) -> None:
    """Every connection fills the victim's 4 buffer slots with frames declaring 64 MiB - 1 bytes,
    never finished: ``body`` bytes of each on the fast backend, the headers alone on the pure
    one (which allocates a buffer in full when its header arrives)."""
    pure = backend.name == "pure"
    attack_body = 0 if pure else body
    async with await Victim.start(victim_config(), pure=pure) as victim:
        check(await measure(victim, lambda v: slot_fill(v, connections, HOSTS[:hosts], body=attack_body)))


# ---- honest traffic under the limits -------------------------------------------------------


async def test_a_256_mib_message_arrives_intact() -> None:
    size = 256 * MiB
    # One honest sender of a message larger than an address's default share of memory_limit.
    config = victim_config(
        1 << 30, max_message_size=size, max_datagram_size=16000, address_memory_limit=1 << 30
    )
    payload = bytes(range(256)) * (size // 256)
    async with await Victim.start(config) as victim:
        async with qp2p.Endpoint(qp2p.Config(max_datagram_size=16000)) as sender:
            connection = await sender.connect_to(victim.addr)
            async with asyncio.timeout(60):
                await connection.send(payload)
                while not (await victim.report())["received"]["large"]:
                    await asyncio.sleep(0.1)
        report = await victim.report()
    assert report["received"]["large"] == [[size, hashlib.sha256(payload).hexdigest()]]


async def test_twenty_senders_five_hundred_messages_each_arrive_exactly_once() -> None:
    senders, messages = 20, 500
    async with await Victim.start(victim_config()) as victim:
        # Twenty hosts: each from an address of its own, with the default limits.
        endpoints = [qp2p.Endpoint(qp2p.Config(local_ip=f"127.0.1.{1 + i}")) for i in range(senders)]
        for endpoint in endpoints:
            await endpoint.start()
        try:
            connections = [await endpoint.connect_to(victim.addr) for endpoint in endpoints]

            async def send_all(index: int, connection: qp2p.Connection) -> None:
                for i in range(messages):
                    await connection.send(index.to_bytes(4, "big") + i.to_bytes(4, "big") + bytes(100))

            async with asyncio.timeout(60):
                await asyncio.gather(*(send_all(i, c) for i, c in enumerate(connections)))
                while (await victim.report())["received"]["count"] < senders * messages:
                    await asyncio.sleep(0.1)
            received = (await victim.report())["received"]
        finally:
            for endpoint in endpoints:
                await endpoint.close()
    assert received["count"] == received["unique"] == senders * messages


async def test_a_victim_that_never_reads_holds_only_its_window() -> None:
    """A sender facing a reader that takes nothing is held back by credit, not by our memory."""
    async with await Victim.start(victim_config(), "--reader", "never") as victim:
        before = await victim.settled_rss()
        async with qp2p.Endpoint() as sender:
            connection = await sender.connect_to(victim.addr)
            sent = 0

            async def send_all() -> None:
                nonlocal sent
                for _ in range(1000):
                    await connection.send(bytes(60 * KiB))
                    sent += 1

            sending = asyncio.create_task(send_all())
            try:
                last = -1
                async with asyncio.timeout(20):
                    while sent != last:  # until the sender is held back
                        last = sent
                        await asyncio.sleep(1.0)
            finally:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
        peak = await victim.peak()
    assert 0 < sent < 1000
    assert peak - before <= OVERHEAD, f"{sent} messages held took {(peak - before) / MiB:.0f} MiB"
