"""Attacks on the NAT additions over 127.0.0.1: port prediction (fan-out and probes), punches
from a fresh port, and learning our NAT from two echoes.

Loopback has no NAT, so a test sets what the victim believes of its own (``_traversal.behaviour``)
where a real NAT would have told it; every other step runs on real sockets and endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from waiting import wait_until

import qp2p
from qp2p.nat.behaviour import Mapping, NatBehaviour

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
