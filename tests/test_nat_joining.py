"""A node behind a real NAT (iptables MASQUERADE in a network namespace) tries to join as a node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import netlab

pytestmark = netlab.requires(*netlab.NAT)

NODE_PROCESS = Path(__file__).with_name("node_process.py")


def start(ns: netlab.Namespace, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ns.command([sys.executable, "-P", str(NODE_PROCESS), *args]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip


def ask(process: subprocess.Popen[str], command: str | None = None) -> dict[str, object]:
    assert process.stdin is not None and process.stdout is not None
    if command is not None:
        process.stdin.write(json.dumps(command) + "\n")
        process.stdin.flush()
    line = process.stdout.readline()
    assert line, f"the node exited with {process.wait(timeout=10)}"
    reply: dict[str, object] = json.loads(line)
    return reply


def test_echo_reports_the_nat_and_the_node_behind_it_is_not_reachable(tmp_path: Path) -> None:
    with netlab.Namespace() as wan, netlab.Namespace() as router, netlab.Namespace() as lan:
        netlab.wire(router, "wan0", "198.18.5.1/24", wan, "eth0", "198.18.5.2/24")
        netlab.wire(router, "lan0", "10.5.0.1/24", lan, "eth0", "10.5.0.2/24")
        lan.ip("route", "add", "default", "via", "10.5.0.1")
        netlab.NatRouter(router, "lan0", "wan0")
        contact = start(wan, "--ip", "198.18.5.2", "--cache", str(tmp_path / "contact"))
        hidden: subprocess.Popen[str] | None = None
        try:
            host, port = ask(contact)["ready"]  # type: ignore[misc]
            ask(contact, "bootstrap")  # the first node: nobody to join, but it caches who joins
            hidden = start(
                lan, "--ip", "10.5.0.2", "--cache", str(tmp_path / "hidden"), "--contact", f"{host}:{port}",
                "--connect-timeout", "2",
            )  # fmt: skip
            ask(hidden)  # ready
            joined = ask(hidden, "bootstrap")
            public = ask(hidden, "public")["public"]
            cache = ask(contact, "cache")["cache"]
        finally:
            for process in (contact, hidden):
                if process is not None:
                    process.kill()
                    process.communicate(timeout=10)  # waits, and closes the pipes
    # The contact saw the NAT's address, not the node's own, and could not connect back to it.
    assert public[0] == "198.18.5.1" and public[1] > 0, public  # type: ignore[index]
    assert joined.get("error") == "ReachabilityError", joined
    assert cache == []  # not handed out as a node
