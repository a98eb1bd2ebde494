"""Many peers in real OS processes against one hub endpoint in the test process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import qp2p

pytestmark = pytest.mark.usefixtures("no_leaks")

PEER_PROCESS = Path(__file__).with_name("peer_process.py")


def digest_of(messages: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(sorted(hashlib.sha256(m).digest() for m in messages))).digest()


class Hub:
    """An endpoint that keeps every message per peer and answers a peer's request carrying a count
    with the digest of that many messages from it, once they all arrived."""

    def __init__(self, endpoint: qp2p.Endpoint) -> None:
        self.endpoint = endpoint
        self.received: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self.arrived = asyncio.Condition()
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def addr(self) -> str:
        host, port = self.endpoint.local_addr
        return f"{host}:{port}"

    async def run(self) -> None:
        async for message in self.endpoint.incoming_messages():
            if message.is_request:
                task = asyncio.create_task(self._answer(message))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                async with self.arrived:
                    self.received[message.src].append(bytes(message.data))
                    self.arrived.notify_all()

    async def _answer(self, request: qp2p.Message) -> None:
        count = int.from_bytes(request.data, "big")
        async with asyncio.timeout(120), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received[request.src]) >= count)
        await request.reply(digest_of(self.received[request.src][:count]))


@pytest.fixture
async def hub(make_endpoint: object, request: pytest.FixtureRequest) -> AsyncIterator[Hub]:
    """A hub endpoint; ``@pytest.mark.parametrize("hub", [settings], indirect=True)`` changes its Config."""
    settings = getattr(request, "param", {})
    # Every peer comes from 127.0.0.1: as for a node many peers reach through one NAT, the
    # address may hold all of the endpoint's memory, not the default share, and all the
    # handshakes the peers start at once.
    settings = {
        "address_memory_limit": qp2p.Config().memory_limit,
        "max_half_open_per_address": 100,
        **settings,
    }
    endpoint = await make_endpoint(max_datagram_size=8000, **settings)  # type: ignore[operator]
    hub = Hub(endpoint)
    runner = asyncio.create_task(hub.run())
    yield hub
    runner.cancel()
    for task in (runner, *hub.tasks):
        task.cancel()
    await asyncio.gather(runner, *hub.tasks, return_exceptions=True)


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(PEER_PROCESS), *args, stdout=asyncio.subprocess.PIPE, env=os.environ.copy()
    )


async def run_senders(hub: Hub, processes: int, peers: int, messages: int, size: int, datagram: int) -> None:
    workers = [
        await spawn(
            "senders",
            hub.addr,
            "--peers",
            str(peers),
            "--messages",
            str(messages),
            "--size",
            str(size),
            "--datagram",
            str(datagram),
        )
        for _ in range(processes)
    ]
    async with asyncio.timeout(300):
        outputs = await asyncio.gather(*(worker.communicate() for worker in workers))
    for worker, (stdout, _) in zip(workers, outputs, strict=True):
        report = json.loads(stdout)
        assert worker.returncode == 0 and report["failures"] == [], report
    assert len(hub.received) == processes * peers
    assert all(len(got) == messages for got in hub.received.values())


async def test_hundred_peers_hundred_small_messages_each(hub: Hub) -> None:
    await run_senders(hub, processes=4, peers=25, messages=100, size=200, datagram=1200)


async def test_ten_peers_hundred_one_mib_messages_each(hub: Hub) -> None:
    await run_senders(hub, processes=2, peers=5, messages=100, size=1 << 20, datagram=8000)


@pytest.mark.parametrize("hub", [{"idle_timeout": 3.0, "keep_alive_interval": 1.0}], indirect=True)
async def test_peer_killed_mid_message_delivers_nothing_partial(hub: Hub) -> None:
    victim = await spawn("large", hub.addr, "--size-mib", "48")
    async with asyncio.timeout(30):
        assert victim.stdout is not None
        assert (await victim.stdout.readline()).strip() == b"sending"
    await asyncio.sleep(0.5)  # let part of the message cross
    victim.send_signal(signal.SIGKILL)
    await victim.wait()
    # The hub keeps serving others while the dead peer's connection times out.
    await run_senders(hub, processes=1, peers=3, messages=50, size=300, datagram=1200)
    async with asyncio.timeout(15):
        async for gone in hub.endpoint.disconnections():
            if gone not in hub.received:  # not one of the senders: the killed peer, timed out
                break
    assert all(len(m) == 300 for got in hub.received.values() for m in got)
    assert len(hub.received) == 3  # nothing, partial or whole, from the killed peer
