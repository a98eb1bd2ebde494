"""Attacks on the NAT additions over 127.0.0.1: port prediction (fan-out and probes), punches
from a fresh port, and learning our NAT from two echoes.

Loopback has no NAT, so a test sets what the victim believes of its own (``_traversal.behaviour``)
where a real NAT would have told it; every other step runs on real sockets and endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from rogue import RoguePeer, Sinks
from waiting import wait_until

import qp2p
from qp2p import wire
from qp2p.nat import traversal as t
from qp2p.nat.behaviour import Mapping, NatBehaviour
from qp2p.wire import Address

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]

HARD = NatBehaviour(Mapping.DEPENDENT)  # a symmetric NAT: it fans out
EASY = NatBehaviour(Mapping.INDEPENDENT, port_kept=True)  # a cone that keeps ports: a fresh port
NOBODY = "e" * 64  # a peer id no endpoint has


async def settle(condition: Callable[[], object], timeout: float) -> bool:
    """Wait (``timeout`` s at most) for ``condition``; whether it held."""
    with contextlib.suppress(TimeoutError):
        await wait_until(condition, timeout)
    return bool(condition())


@contextlib.asynccontextmanager
async def asking_rogue(victim: qp2p.Endpoint) -> AsyncIterator[tuple[RoguePeer, Address, asyncio.Task[Any]]]:
    """The victim dials an address that never answers through a rogue coordinator, which has
    just got its PunchRequest: yields the coordinator, another silent address to name in a
    Punch, and the dialling task."""
    async with RoguePeer(victim.local_addr) as coordinator, Sinks(["127.0.0.1"], per_host=2) as sinks:
        dead, far = sinks.addrs
        dialling = asyncio.create_task(victim.connect_to(dead, via=coordinator.local_addr, peer_id=NOBODY))
        try:
            await wait_until(lambda: coordinator.controls(wire.PunchRequest))
            yield coordinator, far, dialling
        finally:
            dialling.cancel()
            await asyncio.gather(dialling, return_exceptions=True)


# ---- learning our NAT ------------------------------------------------------------------------


async def test_the_wait_for_our_nat_ends_when_the_endpoint_closes_right_after_bootstrap(
    make_endpoint: MakeEndpoint,
) -> None:
    # The discovery of other nodes (and the second echo) is a task bootstrap() leaves behind;
    # closing at once cancels it before it ever ran.
    contact = await make_endpoint()
    peer = await make_endpoint(hard_coded_contacts=[contact.local_addr], role=qp2p.Role.CLIENT)
    await peer.bootstrap()
    await peer.close()
    assert await asyncio.wait_for(peer.wait_nat_discovered(), 2) == peer.nat


async def test_a_bootstrap_the_endpoint_closes_under_ends_with_a_qp2p_error(
    make_endpoint: MakeEndpoint,
) -> None:
    # The close ends the wait for our NAT; the bootstrap failing after must not end it again.
    async with Sinks(["127.0.0.1"]) as sinks:  # a contact that never answers
        peer = await make_endpoint(
            hard_coded_contacts=sinks.addrs, role=qp2p.Role.CLIENT, bootstrap_timeout=3
        )
        joining = asyncio.create_task(peer.bootstrap())
        await wait_until(lambda: sinks.datagrams > 0)  # dialling the contact
        await peer.close()
        with pytest.raises(qp2p.Error):
            await asyncio.wait_for(joining, 5)
    assert await asyncio.wait_for(peer.wait_nat_discovered(), 1) == NatBehaviour()


# ---- sockets a punch opens -------------------------------------------------------------------


async def test_fan_out_sockets_close_when_the_punch_is_cancelled_while_they_open(
    make_endpoint: MakeEndpoint,
) -> None:
    victim = await make_endpoint()
    victim._traversal.behaviour = HARD
    async with asking_rogue(victim) as (coordinator, far, dialling):
        coordinator.send(wire.Punch(far, NOBODY, 0, wire.PUNCH_FAN_OUT))
        for _ in range(100_000):  # each socket opens in a turn of the loop of its own
            if victim.stats().side_sockets:
                break
            await asyncio.sleep(0)
        opening = victim.stats().side_sockets
        dialling.cancel()  # the application gives up on connect_to while the fan-out opens
        await asyncio.gather(dialling, return_exceptions=True)
        assert 0 < opening < t.FAN_OUT_PORTS
        assert await settle(lambda: victim.stats().side_sockets == 0, 2.0), victim.stats().side_sockets


async def test_a_fresh_port_accepts_no_handshake_once_its_punch_is_over(make_endpoint: MakeEndpoint) -> None:
    # The punched link keeps its fresh socket open; the socket took Initials without a Retry
    # for the punch's peer, and must not go on taking them from anyone once the punch is over.
    victim, coordinator, target = await make_endpoint(), await make_endpoint(), await make_endpoint()
    victim._traversal.behaviour = EASY
    await target.connect_to(coordinator.local_addr)
    async with Sinks(["127.0.0.1"]) as sinks:  # an address where the target does not answer
        via = coordinator.local_addr
        connection = await victim.connect_to(sinks.addrs[0], via=via, peer_id=target.peer_id)
    assert connection.path == "punched" and victim.stats().side_sockets == 1
    (fresh,) = victim._side._links
    accepted, received = fresh.stats.accepted, fresh.stats.received
    async with RoguePeer(fresh.local_addr, handshake=False):
        assert await settle(lambda: fresh.stats.received > received, 2.0)
    assert fresh.stats.accepted == accepted


async def test_a_punch_from_a_fresh_port_stops_when_the_endpoint_closes(make_endpoint: MakeEndpoint) -> None:
    victim = await make_endpoint()
    victim._traversal.behaviour = EASY
    async with asking_rogue(victim) as (coordinator, far, dialling):
        assert coordinator.controls(wire.PunchRequest)[0].port != 0  # from a fresh port
        coordinator.send(wire.Punch(far, NOBODY, 500))
        await wait_until(lambda: victim.stats().punches == 1)
        await victim.close()  # while the punch waits for its moment
        with pytest.raises(qp2p.ClosedError):
            await asyncio.wait_for(dialling, 2.0)  # the punch's delay, and a margin
    # (no_leaks: no dial of the punch re-armed the closed endpoint's timer)
