"""Two endpoints in network namespaces joined through a router, for path MTU tests and benches
(not a test module): ``with route(1500, 1500) as r, server(r): dial(r).line()``. Root only."""

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

__all__ = (
    "CLIENT_IP",
    "IPV4_UDP",
    "MESSAGE",
    "PORT",
    "SERVER_IP",
    "Process",
    "Route",
    "dial",
    "loopback",
    "route",
    "server",
)

SCRIPT = Path(__file__).with_name("mtu_process.py")
SERVER_IP, CLIENT_IP, PORT = "10.91.2.2", "10.91.1.2", 4433
IPV4_UDP = 28
MESSAGE = 1 << 20
LINE_TIMEOUT = 60.0
BLACK_HOLE_RULE = "-A FORWARD -p udp -m length --length 1401:65535 -j DROP"  # IP length, no ICMP


@dataclass
class Route:
    """Where each end runs and the addresses it uses; ``router`` is None on loopback."""

    client: netlab.Namespace
    router: netlab.Namespace | None
    server: netlab.Namespace
    client_ip: str = CLIENT_IP
    server_ip: str = SERVER_IP

    def black_hole(self) -> None:
        """The router drops every UDP packet above 1400 bytes of IP, and sends no ICMP."""
        assert self.router is not None, "a loopback route has no router"
        self.router.iptables_restore(f"*filter\n{BLACK_HOLE_RULE}\nCOMMIT\n")


@contextmanager
def loopback() -> Iterator[Route]:
    """Both ends in one namespace, on 127.0.0.1 (its loopback MTU is 65536)."""
    with netlab.Namespace() as ns:
        yield Route(ns, None, ns, "127.0.0.1", "127.0.0.1")


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
def server(r: Route, *options: str) -> Iterator[Process]:
    """mtu_process.py serving in the server namespace, until the block ends."""
    process = Process(r.server, "serve", r.server_ip, str(PORT), *options)
    try:
        assert process.line() == {"ready": True}
        yield process
    finally:
        process.stop()


def dial(r: Route, size: int = MESSAGE, *options: str) -> Process:
    """mtu_process.py dialling the server from the client namespace (``--pause``, ``--ceiling``, ...)."""
    return Process(
        r.client, "dial", r.server_ip, str(PORT), "--local", r.client_ip, "--size", str(size), *options
    )
