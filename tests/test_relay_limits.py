"""The relay service and relayed links under attack: who relays, how much one peer may hold and
move through us, how long an idle circuit lives, and what forged circuits may cost.

Each test runs live endpoints on 127.0.0.1 against rogue peers (tests/rogue.py): as the relay
V, an asker and a target that are both rogues; as the relayed peer V, a rogue relay forging
``RelayIncoming`` circuits and running QUIC connections inside them (``Tunnel``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import test_bad_peers
from rogue import PeerRef, RoguePeer, Tunnel, relay_incoming
from test_bad_peers import Service, assert_unharmed
from waiting import wait_until

import qp2p
from qp2p import wire

pytestmark = pytest.mark.usefixtures("no_leaks")
loop_errors = test_bad_peers.loop_errors  # a fixture: the tests below take it by name

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
Errors = list[dict[str, Any]]
KiB = 1 << 10
NOBODY = ("127.0.0.9", 9)


async def processed(rogue: RoguePeer, label: bytes) -> None:
    """Until the victim answered a request sent after everything before it (or closed on us)."""
    marker = rogue.request(label)
    await wait_until(lambda: rogue.response(marker) is not None or rogue.closed, timeout=20)
    assert not rogue.closed, rogue.close_reason


def incoming(target: RoguePeer) -> list[int]:
    """The circuits the victim announced to ``target``."""
    return [m.circuit for m in target.controls(wire.RelayIncoming)]


def open_circuit(asker: RoguePeer, target: RoguePeer, number: int) -> None:
    asker.send(wire.RelayOpen(target.local_addr, target.fingerprint, number))


# ---- who relays ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "relays"),
    [
        ({"role": qp2p.Role.CLIENT}, False),
        ({}, True),
        ({"role": qp2p.Role.CLIENT, "relay_service": True}, True),
        ({"relay_service": False}, False),
    ],
)
async def test_only_a_node_relays_unless_configured(
    make_endpoint: MakeEndpoint, loop_errors: Errors, settings: dict[str, Any], relays: bool
) -> None:
    victim = await make_endpoint(**settings)
    async with (
        Service(victim) as service,
        RoguePeer(victim.local_addr) as target,
        RoguePeer(victim.local_addr) as asker,
    ):
        open_circuit(asker, target, 1)
        await processed(asker, b"after the RelayOpen")
        await wait_until(lambda: incoming(target) or 1 in asker.relay_closed)
        assert bool(incoming(target)) is relays and (1 in asker.relay_closed) is not relays
        assert victim.stats().refusals.get("relay_off", 0) == (not relays)
    assert_unharmed(loop_errors, service)


# ---- how much one peer may hold and move -----------------------------------------------------


async def test_one_peer_cannot_hold_every_circuit(make_endpoint: MakeEndpoint, loop_errors: Errors) -> None:
    victim = await make_endpoint(relay_max_circuits=8, relay_circuits_per_peer=4)
    async with Service(victim) as service, RoguePeer(victim.local_addr) as target:
        async with RoguePeer(victim.local_addr) as asker, RoguePeer(victim.local_addr) as other:
            for number in range(1, 9):
                open_circuit(asker, target, number)
            await processed(asker, b"after eight RelayOpens")
            await wait_until(lambda: len(asker.relay_closed) == 4)
            open_circuit(other, target, 1)  # a legitimate peer still gets a circuit
            await wait_until(lambda: len(incoming(target)) == 5 or 1 in other.relay_closed)
            assert len(incoming(target)) == 5 and not other.relay_closed
            assert asker.relay_closed == {5, 6, 7, 8} and victim.stats().relay_circuits == 5
            assert victim.stats().refusals["relay_circuits_per_peer"] == 4
    assert_unharmed(loop_errors, service)


async def test_successive_circuits_cannot_reset_the_byte_budget(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    budget = 200 * KiB
    victim = await make_endpoint(relay_bytes_per_peer=budget, relay_max_bytes=budget)
    async with Service(victim) as service, RoguePeer(victim.local_addr) as target:
        async with RoguePeer(victim.local_addr) as asker:
            for number in range(1, 11):  # ten circuits, 120 KiB offered through each
                open_circuit(asker, target, number)
                for _ in range(10):
                    asker.send(*(wire.RelayData(number, bytes(1200)) for _ in range(10)))
                    await processed(asker, b"after a batch")
                asker.send(wire.RelayClose(number))
            carried = sum(len(m.datagram) for m in target.controls(wire.RelayData))
            refused = victim.stats().refusals.get("relay_bytes_per_peer", 0)
    assert_unharmed(loop_errors, service)
    # The window (60 s) refills 200 KiB per minute: a few KiB more while the test runs.
    assert carried <= budget * 1.1 and refused >= 1, (carried, refused)


# ---- idle circuits ---------------------------------------------------------------------------


async def test_an_idle_circuit_is_closed_on_both_sides(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint(relay_idle_timeout=0.5)
    async with Service(victim) as service, RoguePeer(victim.local_addr) as target:
        async with RoguePeer(victim.local_addr) as asker:
            open_circuit(asker, target, 1)
            await wait_until(lambda: incoming(target))
            (theirs,) = incoming(target)
            await wait_until(lambda: 1 in asker.relay_closed and theirs in target.relay_closed, timeout=5)
            assert victim.stats().relay_circuits == 0 and victim.stats().refusals["relay_idle"] == 1
    assert_unharmed(loop_errors, service)


# ---- forged circuits: the relayed side ------------------------------------------------------


async def test_forged_circuits_stay_within_max_connections(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint(max_connections=20, relay_circuits_per_peer=4)
    async with Service(victim) as service, RoguePeer(victim.local_addr) as rogue:
        tunnels = []
        for number in range(1, 61):  # each with a certificate of its own, as the circuit names
            inner = Tunnel(rogue, number, NOBODY, idle_timeout=10.0)
            rogue.send(relay_incoming(NOBODY, inner.ref, number))
            inner.start()
            tunnels.append(inner)
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: inner.established or inner.refused, 2)  # noqa: B023
        links = victim.stats().links
        established = sum(inner.established for inner in tunnels)
        for inner in tunnels:
            inner.close()
    assert_unharmed(loop_errors, service)
    assert established <= 4 and links <= 1 + 4, (established, links)


async def test_relayed_links_count_against_max_connections(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint(max_connections=3)
    async with Service(victim) as service, RoguePeer(victim.local_addr) as rogue:
        tunnels = [Tunnel(rogue, number, NOBODY, idle_timeout=10.0) for number in range(1, 5)]
        for inner in tunnels:
            rogue.send(relay_incoming(NOBODY, inner.ref, inner.circuit))
            inner.start()
        await wait_until(lambda: all(inner.established or inner.refused for inner in tunnels))
        assert sum(inner.established for inner in tunnels) == 2 and victim.stats().links <= 3
        assert victim.stats().refused_connections >= 2
        for inner in tunnels:
            inner.close()
    assert_unharmed(loop_errors, service)


async def test_an_unused_circuit_gives_its_slot_back(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint(connect_timeout=0.5, relay_circuits_per_peer=4)
    who = PeerRef.of("e" * 64)
    async with Service(victim) as service, RoguePeer(victim.local_addr) as rogue:
        rogue.send(*(relay_incoming(NOBODY, who, number) for number in range(1, 5)))  # no Initial follows
        await wait_until(lambda: rogue.relay_closed == {1, 2, 3, 4}, timeout=5)
        rogue.send(relay_incoming(NOBODY, who, 5))
        await processed(rogue, b"after circuit 5")
        assert 5 not in rogue.relay_closed  # taken: the four before it gave their slots back
    assert_unharmed(loop_errors, service)


async def test_a_flood_of_forged_circuits_leaves_bounded_state(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint(relay_circuits_per_peer=4)
    who = PeerRef.of("e" * 64)
    frames, batch = 100_000, 10_000
    async with Service(victim) as service, RoguePeer(victim.local_addr) as rogue:
        for start in range(0, frames, batch):
            rogue.send(*(relay_incoming(NOBODY, who, start + n + 1) for n in range(batch)))
            await processed(rogue, b"after a batch")
            rogue.received.clear()  # the rogue's own memory, not the victim's
            traversal = victim._traversal
            assert len(victim._relay_paths) <= 4 and len(traversal._paths) <= 4
            assert victim.stats().links == 1
        assert victim.stats().refusals["relayed circuit"] == frames - 4
    assert_unharmed(loop_errors, service)
