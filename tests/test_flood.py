"""A flood of spoofed Initials against a server with stateless retry, in a network namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import netlab

pytestmark = netlab.requires("sysctl")

FLOOD_PROCESS = Path(__file__).with_name("flood_process.py")
INITIALS = 20000
CLIENTS = 20


def test_spoofed_flood_costs_no_state_and_real_clients_get_through() -> None:
    with netlab.Namespace() as ns:
        # Forged sources must not be answered anywhere real: their replies go into a blackhole.
        ns.ip("route", "add", "blackhole", "198.18.0.0/15")
        ns.sysctl("net.ipv4.conf.all.rp_filter=0")
        done = ns.run(
            [
                sys.executable,
                "-P",
                str(FLOOD_PROCESS),
                "--initials",
                str(INITIALS),
                "--clients",
                str(CLIENTS),
            ],
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
    assert not ns.exists
    report = json.loads(done.stdout)
    print(report)
    assert report["clients_ok"] == CLIENTS  # every real client connected and was answered
    # The server created state for the real clients only, not for one forged Initial.
    assert report["accepted"] == report["connections"] == CLIENTS
    assert report["peak_links"] <= CLIENTS
    # Each forged Initial got at most a Retry, far below the 3x anti-amplification limit.
    assert report["retries"] >= CLIENTS
    assert report["bytes_to_spoofed"] <= report["initial_bytes"] // 10
    assert report["received"] >= INITIALS // 2  # the flood reached the server (a full socket drops some)
