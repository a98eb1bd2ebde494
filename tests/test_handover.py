"""A link changes owner (from the endpoint to the peer's Connection) in the very batch of events
that brings the peer's Hello: whatever else that batch carries must reach the Connection, and a
request on a second link of the same peer, being merged into its Connection, is still answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import test_bad_peers
from rogue import RoguePeer
from test_bad_peers import Service, assert_unharmed, digest
from waiting import wait_until

import qp2p
from qp2p import tls, wire

pytestmark = pytest.mark.usefixtures("no_leaks")
loop_errors = test_bad_peers.loop_errors  # a fixture: the tests below take it by name

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
Errors = list[dict[str, object]]


async def test_a_request_in_the_batch_of_the_hello_is_answered(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint()
    ask = wire.Request(1, b"in the same write as the Hello")
    async with Service(victim) as service, RoguePeer(victim.local_addr, after_hello=(ask,)) as rogue:
        await wait_until(lambda: rogue.response(1) is not None or rogue.closed)
        assert rogue.response(1) == digest(ask.data)
        (request,) = service.requests
        assert request.peer_id == rogue.fingerprint and request.src == rogue.local_addr
    assert_unharmed(loop_errors, service)


async def test_a_request_on_a_link_being_merged_is_answered(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint()
    identity = tls.self_signed_identity()
    ask = wire.Request(7, b"on the second link, with its Hello")
    async with Service(victim) as service, RoguePeer(victim.local_addr, identity) as first:
        await wait_until(lambda: len(victim.connections()) == 1)
        async with RoguePeer(victim.local_addr, identity, after_hello=(ask,)) as second:
            # The second link joins the one Connection of that certificate; the answer goes out
            # on the Connection's current link, whichever of the two that is.
            await wait_until(lambda: (first.response(7) or second.response(7)) is not None)
            assert (first.response(7) or second.response(7)) == digest(ask.data)
            (connection,) = victim.connections()
            assert connection.peer_id == identity.fingerprint and len(connection.links) == 2
    assert_unharmed(loop_errors, service)
