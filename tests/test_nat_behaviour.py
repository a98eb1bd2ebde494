"""What two echoes tell of our NAT (``qp2p.nat.behaviour``), without sockets; and on real
endpoints, that joining learns it from two nodes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

import qp2p
from qp2p.nat.behaviour import Mapping, NatBehaviour, observe

LOCAL = ("10.0.0.2", 5000)


def test_no_nat_one_port_for_all_and_a_port_per_destination() -> None:
    assert observe(LOCAL, [LOCAL]) == NatBehaviour(Mapping.INDEPENDENT, open=True, port_kept=True)
    cone = [("198.51.100.1", 5000), ("198.51.100.1", 5000)]
    assert observe(LOCAL, cone) == NatBehaviour(Mapping.INDEPENDENT, port_kept=True)
    moved = [("198.51.100.1", 6000), ("198.51.100.1", 6000)]
    assert observe(LOCAL, moved) == NatBehaviour(Mapping.INDEPENDENT, port_kept=False)
    symmetric = [("198.51.100.1", 6000), ("198.51.100.1", 6001)]
    assert observe(LOCAL, symmetric) == NatBehaviour(Mapping.DEPENDENT)
    assert observe(LOCAL, symmetric).hard and observe(LOCAL, cone).easy


def test_too_little_to_tell_is_unknown_and_a_reachable_endpoint_is_open() -> None:
    assert observe(LOCAL, []) == NatBehaviour()
    assert observe(LOCAL, [("198.51.100.1", 5000)]) == NatBehaviour(port_kept=True)
    # Two public addresses (a NAT with a pool): nothing to compare the ports with.
    assert observe(LOCAL, [("198.51.100.1", 5000), ("198.51.100.9", 5001)]).mapping is Mapping.UNKNOWN
    forwarded = observe(LOCAL, [("198.51.100.1", 7000)], reachable=True)
    assert forwarded.open and not forwarded.hard and not forwarded.easy


@given(st.integers(0, 0xFFFF))
def test_flags_round_trip_and_unknown_bits_are_ignored(flags: int) -> None:
    behaviour = NatBehaviour.from_flags(flags)
    assert NatBehaviour.from_flags(behaviour.flags()) == behaviour
    assert behaviour.flags() == flags & 0b1111 if flags & 3 != 3 else behaviour.mapping is Mapping.UNKNOWN


async def test_joining_learns_our_nat_from_the_contact_and_a_node_it_hands_out() -> None:
    """r2 is a node r reached; the peer joins through r, learns of r2 and asks it for the second
    echo. (On loopback every echo is our own socket address: no NAT at all.)"""
    async with qp2p.Endpoint(qp2p.Config(local_ip="127.0.0.1")) as r2:
        contact = qp2p.Config(local_ip="127.0.0.1", hard_coded_contacts=[r2.local_addr])
        async with qp2p.Endpoint(contact) as r:
            await r.bootstrap()
            client = qp2p.Config(
                local_ip="127.0.0.1", hard_coded_contacts=[r.local_addr], role=qp2p.Role.CLIENT
            )
            async with qp2p.Endpoint(client) as peer:
                assert peer.nat == NatBehaviour()  # nothing known before joining
                await peer.bootstrap()
                learned = await asyncio.wait_for(peer.wait_nat_discovered(), 10)
                assert learned == peer.nat == NatBehaviour(Mapping.INDEPENDENT, open=True, port_kept=True)
                assert peer.connection(r2.peer_id) is not None  # the second echo came from r2


async def test_a_failed_bootstrap_still_ends_the_wait() -> None:
    role = qp2p.Role.CLIENT
    config = qp2p.Config(
        local_ip="127.0.0.1", hard_coded_contacts=[("127.0.0.1", 9)], role=role, bootstrap_timeout=0.5
    )
    async with qp2p.Endpoint(config) as peer:
        with pytest.raises(qp2p.BootstrapError):
            await peer.bootstrap()
        assert await asyncio.wait_for(peer.wait_nat_discovered(), 1) == NatBehaviour()
