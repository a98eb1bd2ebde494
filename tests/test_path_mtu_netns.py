"""Path MTU discovery on real paths: two endpoints in network namespaces joined through a router,
with veth MTUs of 1280, 1500 and 9000, a router whose far side is smaller than the near one, and
a router that drops every packet above 1400 bytes without a word (a black hole), from the start
or from the middle of a connection. Needs root (CI runs as root)."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netlab
import pytest

from qp2p._pmtud import MIN_STEP

SCRIPT = Path(__file__).with_name("mtu_process.py")
SERVER_IP, CLIENT_IP, PORT = "10.91.2.2", "10.91.1.2", 4433
IPV4_UDP = 28
MESSAGE = 1 << 20
LINE_TIMEOUT = 60.0
BLACK_HOLE_RULE = "-A FORWARD -p udp -m length --length 1401:65535 -j DROP"  # IP length, no ICMP


@dataclass
class Route:
    client: netlab.Namespace
    router: netlab.Namespace
    server: netlab.Namespace

    def black_hole(self) -> None:
        """The router drops every UDP packet above 1400 bytes of IP, and sends no ICMP."""
        self.router.iptables_restore(f"*filter\n{BLACK_HOLE_RULE}\nCOMMIT\n")


@contextmanager
def route(near_mtu: int, far_mtu: int) -> Iterator[Route]:
    """client --(near_mtu)-- router --(far_mtu)-- server, in three namespaces."""
    with netlab.Namespace() as client, netlab.Namespace() as router, netlab.Namespace() as server:
        netlab.wire(client, "c0", f"{CLIENT_IP}/24", router, "r0", "10.91.1.1/24")
        netlab.wire(router, "r1", "10.91.2.1/24", server, "s0", f"{SERVER_IP}/24")
        for ns, dev, mtu in ((client, "c0", near_mtu), (router, "r0", near_mtu), (router, "r1", far_mtu)):
            ns.ip("link", "set", "dev", dev, "mtu", str(mtu))
        server.ip("link", "set", "dev", "s0", "mtu", str(far_mtu))
        router.sysctl("net.ipv4.ip_forward=1")
        client.ip("route", "add", "default", "via", "10.91.1.1")
        server.ip("route", "add", "default", "via", "10.91.2.1")
        yield Route(client, router, server)


class Process:
    """mtu_process.py in a namespace, read one JSON line at a time."""

    def __init__(self, ns: netlab.Namespace, *argv: str) -> None:
        self.process = subprocess.Popen(
            ns.command([sys.executable, str(SCRIPT), *argv]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], LINE_TIMEOUT)
        assert ready, f"nothing from {self.process.args} within {LINE_TIMEOUT} s"
        text = self.process.stdout.readline()
        if not text:
            assert self.process.stderr is not None
            raise AssertionError(f"exited {self.process.wait(5)}: {self.process.stderr.read()[-2000:]}")
        answer: dict[str, Any] = json.loads(text)
        return answer

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        self.process.kill()
        self.process.communicate(timeout=10)  # reaps it and closes the pipes


@contextmanager
def server(r: Route) -> Iterator[Process]:
    process = Process(r.server, "serve", SERVER_IP, str(PORT))
    try:
        assert process.line() == {"ready": True}
        yield process
    finally:
        process.stop()


def dial(r: Route, pause: bool = False) -> Process:
    return Process(
        r.client,
        "dial",
        SERVER_IP,
        str(PORT),
        "--local",
        CLIENT_IP,
        "--size",
        str(MESSAGE),
        *(["--pause"] if pause else []),
    )


def settled(path: dict[str, Any], carries: int) -> None:
    """The search ended just below what the path carries, and never above it."""
    assert path["state"] == "complete", path
    assert carries - MIN_STEP < path["datagram_size"] <= carries, path


requires_namespaces = netlab.requires()


@requires_namespaces
@pytest.mark.parametrize("mtu", [1280, 1500, 9000])
def test_each_end_finds_the_link_mtu_and_a_message_crosses_at_it(mtu: int) -> None:
    with route(mtu, mtu) as r, server(r):
        client = dial(r)
        try:
            first = client.line()
            assert first["datagram_size"] == first["ceiling"] == mtu - IPV4_UDP  # the ceiling, at once
            assert first["probes"] == 1
            done = client.line()
            assert done["reply"]["received"] == MESSAGE
            assert done["reply"]["datagram_size"] == mtu - IPV4_UDP  # the server found it too
        finally:
            client.stop()


@requires_namespaces
def test_a_smaller_link_beyond_the_router_is_found_by_search() -> None:
    with route(9000, 1500) as r, server(r):
        client = dial(r)
        try:
            first = client.line()
            assert first["ceiling"] == 9000 - IPV4_UDP  # the interface says 9000; the path carries less
            settled(first, 1500 - IPV4_UDP)
            done = client.line()
            assert done["reply"] == {"received": MESSAGE, "datagram_size": 1500 - IPV4_UDP}
        finally:
            client.stop()


@netlab.requires("iptables")
def test_a_black_hole_router_from_the_start_is_searched_around() -> None:
    with route(1500, 1500) as r, server(r):
        r.black_hole()
        client = dial(r)
        try:
            first = client.line()
            settled(first, 1400 - IPV4_UDP)
            assert first["black_holes"] == 0  # probes were lost, no data
            done = client.line()
            assert done["reply"]["received"] == MESSAGE
            settled({"state": "complete", "datagram_size": done["reply"]["datagram_size"]}, 1400 - IPV4_UDP)
        finally:
            client.stop()


@netlab.requires("iptables")
def test_a_black_hole_in_the_middle_of_a_connection_falls_back_and_the_message_arrives() -> None:
    with route(1500, 1500) as r, server(r):
        client = dial(r, pause=True)
        try:
            first = client.line()
            assert first["datagram_size"] == 1500 - IPV4_UDP
            r.black_hole()  # from now on full-size packets vanish
            client.go()
            done = client.line()
            assert done["reply"]["received"] == MESSAGE
            assert done["black_holes"] == 1
            settled(done, 1400 - IPV4_UDP)
        finally:
            client.stop()
