"""A smoke run of idle_connections.py: 20 connections over two client processes, briefly.

The real figures take minutes and 1,000 connections (``python benches/idle_connections.py``,
see README.md, "Many connections"); this only proves the script still runs end to end and
reports what it should, so it is a plain test, not a timed bench, and stays out of the tables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("idle_connections.py")
CONNECTIONS = 20
# Below pytest's own per-test timeout.
SCRIPT_TIMEOUT = 240.0


def test_idle_connections_smoke(tmp_path: Path) -> None:
    out = tmp_path / "idle.json"
    command = [sys.executable, str(SCRIPT), "--connections", str(CONNECTIONS), "--clients", "2"]
    command += ["--idle", "2", "--messages", "2000", "--keep-alive", "0.5", "--idle-timeout", "5"]
    done = subprocess.run(
        [*command, "--json", str(out)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(out.read_text())
    assert result["connections"] == CONNECTIONS and result["failed_connect_attempts"] == 0
    assert result["fan_in_1"]["messages"] == result["fan_in_all"]["messages"] == 2000
    assert result["fan_in_all"]["senders"] == CONNECTIONS
    assert isinstance(result["idle_keep_alives"], int)  # the node's stats count keep-alives
    assert 0 <= result["idle_cpu_pct"] < 100 and result["fan_in_ratio"] > 0
