"""Network namespaces for tests that need a network of their own (root only; not a test module).

Every namespace is named ``qp2p-<pid>-<n>`` and deleted on exit together with whatever still
runs in it, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ("Namespace", "NatRouter", "unavailable", "wire")

_counter = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"qp2p-{os.getpid()}-probe"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"the kernel refuses network namespaces: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Namespace:
    """One network namespace with its loopback up; ``with Namespace() as ns: ns.run([...])``."""

    def __init__(self) -> None:
        self.name = f"qp2p-{os.getpid()}-{next(_counter)}"

    def __enter__(self) -> Namespace:
        _ip("netns", "add", self.name)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def ip(self, *args: str) -> None:
        """``ip -n NAME ...``; raises on failure."""
        _ip("-n", self.name, *args)

    def sysctl(self, setting: str) -> None:
        self.run(["sysctl", "-qw", setting], check=True)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, check=check
        )

    def delete(self) -> None:
        """Kill every process still in the namespace, then delete it (idempotent)."""
        pids = _ip("netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _ip("netns", "del", self.name, check=False)

    @property
    def exists(self) -> bool:
        return Path("/run/netns", self.name).exists()


def wire(a: Namespace, a_name: str, a_cidr: str, b: Namespace, b_name: str, b_cidr: str) -> None:
    """A veth pair between two namespaces, addressed and up (never in the root namespace)."""
    a.ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name)
    for ns, name, cidr in ((a, a_name, a_cidr), (b, b_name, b_cidr)):
        ns.ip("addr", "add", cidr, "dev", name)
        ns.ip("link", "set", name, "up")


class NatRouter:
    """A home router in ``router``: LAN behind ``lan_if``, WAN out of ``wan_if``.

    It masquerades LAN traffic to its WAN address and, like a home router, drops what comes
    from the WAN unsolicited: to the router itself, and forwarded traffic that belongs to no
    connection the LAN opened (no ICMP answer, so no conntrack entry is left behind).
    """

    def __init__(self, router: Namespace, lan_if: str, wan_if: str) -> None:
        router.sysctl("net.ipv4.ip_forward=1")
        rules = [
            ["-t", "nat", "-A", "POSTROUTING", "-o", wan_if, "-j", "MASQUERADE"],
            ["-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-A", "FORWARD", "-i", lan_if, "-o", wan_if, "-j", "ACCEPT"],
            ["-P", "FORWARD", "DROP"],
            [
                "-A",
                "INPUT",
                "-i",
                wan_if,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
            ["-A", "INPUT", "-i", wan_if, "-j", "DROP"],
        ]
        for rule in rules:
            router.run(["iptables", *rule], check=True)
