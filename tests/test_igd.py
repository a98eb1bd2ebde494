"""UPnP port mapping stopped mid-way against a real miniupnpd (an igd site of netlab's network):
a cancelled ``PortMapping.start`` or a closed ``Endpoint`` leaves no mapping on the gateway,
even when the gateway maps the port only after the cancellation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import netlab
import pytest

pytestmark = netlab.requires(*netlab.IGD)

MAPPING_PROCESS = Path(__file__).with_name("mapping_process.py")
# Every mapping the gateway holds, as [external port, internal host, internal port, description].
LIST_MAPPINGS = """
import json, miniupnpc
upnp = miniupnpc.UPnP()
upnp.discoverdelay = 1000
upnp.discover()
upnp.selectigd()
mappings, index = [], 0
while (found := upnp.getgenericportmapping(index)) is not None:
    mappings.append([found[0], *found[2], found[3]])
    index += 1
print(json.dumps(mappings))
"""


@pytest.fixture
def site() -> Iterator[netlab.Site]:
    """An igd site, a host behind a home router that runs miniupnpd, new for each test."""
    with netlab.Network() as net:
        yield net.nat_site("g", "igd")


def gateway_mappings(site: netlab.Site) -> list[list[object]]:
    """What the site's gateway forwards, as listed to its host."""
    argv = site.host.command([sys.executable, "-c", LIST_MAPPINGS])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    mappings: list[list[object]] = json.loads(done.stdout)
    return mappings


@pytest.mark.parametrize("scenario", ["cancel-start", "close-endpoint"])
@pytest.mark.parametrize("held", ["discover", "addportmapping"])
def test_a_stopped_mapping_leaves_nothing_on_the_gateway(
    site: netlab.Site, tmp_path: Path, scenario: str, held: str
) -> None:
    argv = [sys.executable, str(MAPPING_PROCESS), scenario, "--held", held]
    argv += ["--ip", site.host_ip, "--cache", str(tmp_path / "cache")]
    done = subprocess.run(site.host.command(argv), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "never retrieved" not in done.stderr, done.stderr  # the stopped worker's error is not lost
    report = json.loads(done.stdout)
    if held == "discover":
        assert report["added"] == []  # stopped before it asked the gateway: it never did
    else:
        assert len(report["added"]) == 1  # the gateway mapped our port after the cancellation
    ours = [m for m in gateway_mappings(site) if m[1:3] == [site.host_ip, report["local_port"]]]
    assert ours == []
