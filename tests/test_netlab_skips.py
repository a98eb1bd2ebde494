"""Without a system tool they need, the netlab-based tests skip saying which one, never error.

Each case runs those test modules in a pytest of its own whose PATH lacks the tools named.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import netlab
import pytest

pytestmark = netlab.requires()

HERE = Path(__file__).resolve().parent
# The test modules in which every test builds NAT routers, loss or delay (iptables-restore).
NAT_MODULES = ("test_netlab.py", "test_nat_traversal.py", "test_nat_joining.py", "test_network_sim.py")


def path_without(hidden: set[str], folder: Path) -> str:
    """A PATH of one folder holding a link to every program on this PATH but ``hidden``."""
    folder.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for program in sorted(Path(directory).glob("*")) if Path(directory).is_dir() else ():
            link = folder / program.name
            if program.name not in hidden and not link.exists() and os.access(program, os.X_OK):
                link.symlink_to(program)
    return str(folder)


def outcomes(junit: Path) -> dict[str, str]:
    """Test id -> "passed", "failed", "error" or "skipped: <reason>", from a JUnit XML report."""
    found = {}
    for case in ET.parse(junit).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        found[name] = "passed"
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                found[name] = f"skipped: {element.get('message')}" if kind == "skipped" else kind
    return found


@pytest.mark.parametrize(
    ("hidden", "reason"),
    [
        pytest.param({"iptables", "iptables-restore"}, "not installed: iptables-restore", id="no-iptables"),
        pytest.param({"sysctl"}, "not installed: sysctl", id="no-sysctl"),
    ],
)
def test_nat_tests_skip_naming_the_missing_tool(tmp_path: Path, hidden: set[str], reason: str) -> None:
    junit = tmp_path / "junit.xml"
    modules = [str(HERE / module) for module in NAT_MODULES]
    argv = [sys.executable, "-m", "pytest", "-q", f"--junit-xml={junit}", *modules]
    # QP2P_NETWORK_SIM: test_network_sim.py's tests too are selected, to skip for the tool alone.
    env = {**os.environ, "PATH": path_without(hidden, tmp_path / "bin"), "QP2P_NETWORK_SIM": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    found = outcomes(junit)
    assert len(found) >= 20, done.stdout[-3000:]  # every test of the three modules was collected
    # A test that needs more (miniupnpd, say) names those after it, should they be missing too.
    assert all(outcome.startswith(f"skipped: {reason}") for outcome in found.values()), found
