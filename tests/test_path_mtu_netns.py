"""Path MTU discovery on real paths: two endpoints in network namespaces joined through a router,
with veth MTUs of 1280, 1500 and 9000, a router whose far side is smaller than the near one, and
a router that drops every packet above 1400 bytes without a word (a black hole), from the start
or from the middle of a connection. Needs root (CI runs as root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import netlab
import pytest
from mtu_route import IPV4_UDP, MESSAGE, dial, route, server

from qp2p._pmtud import MIN_STEP


def settled(path: dict[str, Any], carries: int) -> None:
    """The search ended just below what the path carries, and never above it."""
    assert path["state"] == "complete", path
    assert carries - MIN_STEP < path["datagram_size"] <= carries, path


requires_namespaces = netlab.requires("sysctl")  # the router forwards


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


@netlab.requires(*netlab.NAT)
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


@netlab.requires(*netlab.NAT)
def test_a_black_hole_in_the_middle_of_a_connection_falls_back_and_the_message_arrives() -> None:
    with route(1500, 1500) as r, server(r):
        client = dial(r, MESSAGE, "--pause")
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


@requires_namespaces
def test_the_path_bulk_bench_runs_and_finds_a_gain() -> None:
    script = Path(__file__).resolve().parent.parent / "benches" / "path_bulk.py"
    argv = [sys.executable, str(script), "--trials", "1", "--size-mib", "2", "--links", "9000"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| asyncio | 9000 |"))
    assert f"| {9000 - IPV4_UDP} |" in row  # discovery found the jumbo size
