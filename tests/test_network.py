"""A network of nodes, each its own OS process on 127.0.0.1: joining, caching, and rejoining."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

NODE_PROCESS = Path(__file__).with_name("node_process.py")
NODES = 10


class Node:
    """A node process and the JSON lines it speaks."""

    def __init__(self, process: asyncio.subprocess.Process, addr: tuple[str, int]) -> None:
        self.process = process
        self.addr = addr

    @classmethod
    async def start(cls, *args: str) -> Node:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-P", str(NODE_PROCESS), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=os.environ.copy(),
        )  # fmt: skip
        node = cls(process, ("", 0))
        ready = await node.read()
        node.addr = (ready["ready"][0], ready["ready"][1])
        return node

    async def read(self) -> Any:
        assert self.process.stdout is not None
        async with asyncio.timeout(60):
            line = await self.process.stdout.readline()
        if not line:
            raise AssertionError(f"node {self.addr} exited with {await self.process.wait()}")
        return json.loads(line)

    async def ask(self, command: object) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()
        return await self.read()

    async def cache(self) -> set[tuple[str, int]]:
        return {(host, port) for host, port in (await self.ask("cache"))["cache"]}

    async def quit(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.write(b'"quit"\n')
            await self.process.stdin.drain()
            async with asyncio.timeout(30):
                assert await self.process.wait() == 0

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    """Started nodes go in here; whatever still runs afterwards is killed."""
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()
        await node.process.wait()


async def until_caches_hold(members: list[Node], wanted: dict[tuple[str, int], set[tuple[str, int]]]) -> None:
    async with asyncio.timeout(60):
        while True:
            caches = {node.addr: await node.cache() for node in members}
            if all(wanted[addr] <= caches[addr] for addr in wanted):
                return
            await asyncio.sleep(0.2)


async def test_ten_nodes_join_through_one_contact_and_find_each_other_from_the_cache(
    nodes: list[Node], tmp_path: Path
) -> None:
    contact = await Node.start("--cache", str(tmp_path / "contact"))
    nodes.append(contact)
    contact_text = f"{contact.addr[0]}:{contact.addr[1]}"
    assert "error" in await contact.ask("bootstrap")  # the first node has nobody to join...
    members = []
    for i in range(NODES - 1):
        node = await Node.start("--cache", str(tmp_path / f"node{i}"), "--contact", contact_text)
        nodes.append(node)
        joined = await node.ask("bootstrap")
        assert joined["bootstrapped"] == list(contact.addr) and joined["role"] == "node", joined
        assert joined["public"] == list(node.addr)
        members.append(node)
    everyone = {contact.addr} | {node.addr for node in members}
    # Every node's cache ends holding all the others (the contact's too).
    await until_caches_hold(
        [contact, *members], {node.addr: everyone - {node.addr} for node in [contact, *members]}
    )

    # The contact dies; the others restart with their caches alone, no contact given.
    contact.kill()
    for node in members:
        await node.quit()  # writes the cache
    addresses = [node.addr for node in members]
    restarted = []
    for i, (host, port) in enumerate(addresses):
        node = await Node.start("--cache", str(tmp_path / f"node{i}"), "--ip", host, "--port", str(port))
        nodes.append(node)
        restarted.append(node)
    for node in restarted:
        rejoined = await node.ask("bootstrap")
        assert "bootstrapped" in rejoined, rejoined
        assert tuple(rejoined["bootstrapped"]) in set(addresses) - {node.addr}
    for node in restarted:
        await node.quit()


async def test_a_client_is_never_cached(nodes: list[Node], tmp_path: Path) -> None:
    contact = await Node.start("--cache", str(tmp_path / "contact"))
    node = await Node.start(
        "--cache", str(tmp_path / "node"), "--contact", f"{contact.addr[0]}:{contact.addr[1]}"
    )
    client = await Node.start(
        "--cache",
        str(tmp_path / "client"),
        "--contact",
        f"{contact.addr[0]}:{contact.addr[1]}",
        "--role",
        "client",
    )
    nodes.extend([contact, node, client])
    await contact.ask("bootstrap")
    assert (await client.ask("bootstrap"))["role"] == "client"
    assert "bootstrapped" in await node.ask("bootstrap")
    await until_caches_hold([contact, node, client], {contact.addr: {node.addr}, client.addr: {contact.addr}})
    # What would cache a client is a node taking its connection: have it answer a request
    # on one to each, then look.
    for other in (contact, node):
        assert "connected" in await client.ask({"connect": list(other.addr)})
    assert client.addr not in await contact.cache() and client.addr not in await node.cache()
