"""Every wait for a peer is bounded: a peer that stops granting credit (it never reads, but keeps
its connection alive) makes a send, a reply or a large send fail with ``SendTimeout`` after
``send_timeout`` seconds without progress, instead of hanging forever."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from rogue import RoguePeer
from waiting import wait_until

import qp2p
from qp2p import wire

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
TIMEOUT = 0.5


async def stalled(victim: qp2p.Endpoint, rogue: RoguePeer) -> qp2p.Connection:
    """The victim's connection to a rogue that never grants credit, its first window spent."""
    await wait_until(lambda: len(victim.connections()) == 1)
    (connection,) = victim.connections()
    body = bytes(60_000)
    async with asyncio.timeout(5):
        while connection.current_link is not None and connection.current_link.session.credit > 0:
            await connection.send(body)
    return connection


@pytest.mark.parametrize(
    ("size", "slack"),
    [(8, 2), (512 << 10, 3)],  # on a lane; above the lane threshold, on a stream of its own
    ids=["small", "large"],
)
async def test_a_send_without_credit_times_out(make_endpoint: MakeEndpoint, size: int, slack: float) -> None:
    victim = await make_endpoint(send_timeout=TIMEOUT)
    async with RoguePeer(victim.local_addr) as rogue:
        connection = await stalled(victim, rogue)
        started = asyncio.get_running_loop().time()
        with pytest.raises(qp2p.SendTimeout):
            await connection.send(bytes(size))
        assert TIMEOUT <= asyncio.get_running_loop().time() - started < TIMEOUT + slack
        assert not connection.is_closed  # the connection goes on; only the send failed (a large one: reset)


async def test_a_reply_without_credit_times_out(make_endpoint: MakeEndpoint) -> None:
    victim = await make_endpoint(send_timeout=TIMEOUT)
    failures: list[BaseException] = []

    async def answer() -> None:
        async for message in victim.incoming_messages():
            try:
                await message.reply(b"too late")
            except qp2p.SendTimeout as exc:
                failures.append(exc)

    async with RoguePeer(victim.local_addr) as rogue:
        task = asyncio.create_task(answer())
        try:
            await stalled(victim, rogue)
            rogue.send(wire.Request(1, b"answer me"))
            await wait_until(lambda: bool(failures), timeout=TIMEOUT + 3)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert rogue.response(1) is None
