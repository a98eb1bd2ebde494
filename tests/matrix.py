"""The connectivity matrix: every pair of NAT kinds, through real NATs (not a test module).

Used by tests/test_nat_traversal.py and scripts/connectivity_matrix.py. One network holds a
public coordinator ``r`` and, for each kind, one site on each side of the pairs; every site
runs tests/node_process.py. Each side joins through ``r`` as a client (behind most NATs it
could not be a node), and every ``a`` site then connects to every ``b`` site's public address
through ``r``: directly, punched, or relayed.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netlab

__all__ = ("KINDS", "Node", "Outcome", "connect_all", "expected", "matrix_network", "punch_trials")

NODE_PROCESS = Path(__file__).with_name("node_process.py")
KINDS = ("public", "full_cone", "address_restricted", "port_restricted", "symmetric", "igd")
SHORT = {
    "public": "pub",
    "full_cone": "cone",
    "address_restricted": "addr",
    "port_restricted": "restr",
    "symmetric": "sym",
    "igd": "igd",
}
BARE = "+bare"  # a kind with this suffix is behind a bare router (netlab.NatRouter)
REPLY_TIMEOUT = 90.0  # the longest a node may take over one command
JOIN_ATTEMPTS = 3  # the coordinator's joins through r2, at most


def short(kind: str) -> str:
    """The kind's name in a table: "restr", or "restr/bare" behind a bare router."""
    base = kind.removesuffix(BARE)
    return SHORT[base] + ("/bare" if base != kind else "")


def expected(a: str, b: str) -> str:
    """How ``a`` reaches ``b``: a peer that accepts unsolicited packets (public, full cone, a
    mapped port) is dialled directly; every other pair is punched (a symmetric NAT facing a
    port-restricted one by port prediction), except two symmetric NATs, which are relayed."""
    a, b = a.removesuffix(BARE), b.removesuffix(BARE)
    if b in ("public", "full_cone", "igd"):
        return "direct"
    if a == b == "symmetric":
        return "relayed"
    return "punched"


@dataclass(frozen=True)
class Outcome:
    path: str  # direct, punched, relayed, or failed
    seconds: float
    punch_attempts: int
    error: str = ""


class Node:
    """tests/node_process.py inside a site's host namespace, spoken to in JSON lines."""

    def __init__(self, site: netlab.Site, cache: Path, *args: str) -> None:
        argv = [sys.executable, "-P", str(NODE_PROCESS), "--ip", site.host_ip, "--cache", str(cache), *args]
        self.process = subprocess.Popen(
            site.host.command(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        self.site = site
        self.addr = tuple(self.read()["ready"])
        self.public: tuple[str, int] | None = None  # as the contact saw it, once joined
        self.nat: dict[str, Any] = {}  # what the node learned of its NAT, once joined

    def read(self) -> Any:
        """The node's next line (it writes one per command), within REPLY_TIMEOUT."""
        assert self.process.stdout is not None
        if not select.select([self.process.stdout], [], [], REPLY_TIMEOUT)[0]:
            raise RuntimeError(f"the node in {self.site.name} did not answer in {REPLY_TIMEOUT} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the node in {self.site.name} exited with {self.process.wait(timeout=10)}")
        return json.loads(line)

    def tell(self, command: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def ask(self, command: object) -> Any:
        self.tell(command)
        return self.read()

    def quit(self) -> int:
        """Closes the endpoint (it saves its cache, removes its port mapping) and ends the node."""
        self.tell("quit")
        return self.process.wait(timeout=REPLY_TIMEOUT)

    def join(self) -> tuple[str, int]:
        """Bootstrap through the contact, and learn how our NAT behaves; our public address as
        the contact sees it."""
        joined = self.ask("bootstrap")
        if "error" in joined:
            raise RuntimeError(f"{self.site.name} could not join: {joined}")
        self.nat = self.ask("nat")["nat"]
        self.public = tuple(joined["public"])  # type: ignore[assignment]
        assert self.public is not None
        return self.public

    def connect(self, target: tuple[str, int], via: tuple[str, int] | None) -> Outcome:
        """``connect_to(target, via=via)`` in the node, and a request over the connection."""
        reply = self.ask({"connect": list(target), "via": None if via is None else list(via)})
        if "error" in reply:
            return Outcome("failed", 0.0, 0, f"{reply['error']}: {reply['message']}")
        return Outcome(reply["connected"], reply["seconds"], reply["punch_attempts"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


def _site(net: netlab.Network, name: str, kind: str, loss: float, delay_ms: float) -> netlab.Site:
    if kind == "public":
        return net.public_site(name, loss=loss, delay_ms=delay_ms)
    base = kind.removesuffix(BARE)
    return net.nat_site(name, base, loss=loss, delay_ms=delay_ms, bare=base != kind)


def _coordinators(net: netlab.Network, folder: Path, loss: float, delay_ms: float) -> list[Node]:
    """The public coordinator ``r`` and a second public node ``r2``, which r joins through (so
    that r hands r2 out to the peers that join through r, and they ask r2 for the second echo
    that tells a symmetric NAT from a cone); r first."""
    r_site, r2_site = (_site(net, name, "public", loss, delay_ms) for name in ("r", "r2"))
    r2 = Node(r2_site, folder / "r2")
    r = Node(r_site, folder / "r", "--contact", f"{r2.addr[0]}:{r2.addr[1]}")
    for attempt in range(JOIN_ATTEMPTS):  # setting up, not measured: loss may cost an attempt
        try:
            r.join()
            break
        except RuntimeError:
            if attempt == JOIN_ATTEMPTS - 1:
                raise
    return [r, r2]


def _peer(site: netlab.Site, folder: Path, contact: tuple[str, int]) -> Node:
    """A client that joins through ``contact`` (always: its cache, which learns of r2, is
    tried only after it), as the coordinator needs; behind an igd router it maps its port."""
    extra = ["--forward-port"] if site.kind == "igd" else []
    contact_arg = f"{contact[0]}:{contact[1]}"
    return Node(
        site,
        folder / site.name,
        "--contact",
        contact_arg,
        "--role",
        "client",
        "--bootstrap-concurrency",
        "1",
        *extra,
    )


@contextmanager
def matrix_network(
    folder: Path, kinds: tuple[str, ...] = KINDS, *, loss: float = 0.0, delay_ms: float = 0.0
) -> Iterator[tuple[tuple[str, int], dict[str, Node], dict[str, Node]]]:
    """A network with coordinator ``r`` and an ``a`` and a ``b`` site of every kind, all joined:
    yields r's address and the nodes of the a and b sites by kind."""
    nodes: list[Node] = []
    with netlab.Network() as net:
        try:
            nodes += _coordinators(net, folder, loss, delay_ms)
            r = nodes[0]
            sides: dict[str, dict[str, Node]] = {"a": {}, "b": {}}
            for side, kind in ((side, kind) for side in ("a", "b") for kind in kinds):
                node = _peer(_site(net, f"{side}{SHORT[kind]}", kind, loss, delay_ms), folder, r.addr)  # type: ignore[arg-type]
                nodes.append(node)
                sides[side][kind] = node
            for node in nodes[2:]:
                node.join()
            yield r.addr, sides["a"], sides["b"]  # type: ignore[misc]
        finally:
            for node in nodes:
                node.stop()


def connect_all(
    coordinator: tuple[str, int], a_nodes: dict[str, Node], b_nodes: dict[str, Node]
) -> dict[tuple[str, str], Outcome]:
    """Every ``a`` node connects to every ``b`` node's public address through ``coordinator``,
    one pair at a time: the outcome of each, by (a kind, b kind)."""
    outcomes = {}
    for a_kind, a in a_nodes.items():
        for b_kind, b in b_nodes.items():
            assert b.public is not None
            outcomes[a_kind, b_kind] = a.connect(b.public, coordinator)
    return outcomes


def punch_trials(
    folder: Path, a_kind: str, b_kind: str, trials: int, *, delay_ms: float = 40.0, loss: float = 0.0
) -> list[Outcome]:
    """``trials`` fresh connections from an ``a_kind`` peer to a ``b_kind`` one through a
    coordinator: before each, both start a new endpoint (new ports, so new NAT mappings; an
    address-restricted router also forgets whom its host sent to) and join again."""
    outcomes = []
    nodes: list[Node] = []
    with netlab.Network() as net:
        try:
            nodes += _coordinators(net, folder, loss, delay_ms)
            coordinator = nodes[0]
            a, b = (
                _peer(_site(net, name, kind, loss, delay_ms), folder, coordinator.addr)
                for name, kind in (("a", a_kind), ("b", b_kind))
            )  # type: ignore[arg-type]
            nodes += [a, b]
            for _ in range(trials):
                for node in (a, b):
                    node.ask("renew")
                a.join()
                target = b.join()
                for node in (a, b):  # after the old endpoints' last packets have passed
                    node.site.forget_contacts()
                outcomes.append(a.connect(target, coordinator.addr))  # type: ignore[arg-type]
        finally:
            for node in nodes:
                node.stop()
    return outcomes
