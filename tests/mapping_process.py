"""Stops a UPnP port mapping while its worker thread is inside a call to the LAN's real gateway.

    python mapping_process.py cancel-start|close-endpoint --held discover|addportmapping
                              --ip HOST_IP --cache DIR

The gateway (miniupnpc, wrapped) holds its answer to the ``--held`` call until the mapping was
stopped: ``cancel-start`` cancels ``PortMapping.start`` and never closes it; ``close-endpoint``
closes an ``Endpoint`` with ``forward_port``. A stopped mapping may wait for its worker, so the
answer comes at the latest after ``HOLD`` seconds. Once every worker thread has ended it prints
one JSON line: ``{"local_port": our UDP port, "added": [external ports the gateway mapped]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from typing import Any

import miniupnpc  # type: ignore[import-not-found]

import qp2p
from qp2p.nat import igd

HOLD = 3.0  # seconds the gateway holds its answer at most
LEASE = 120
MAPPED_PORT = 42001  # cancel-start's local port: no socket is needed to map it


class Gate:
    """The held call: ``entered`` once a worker is inside it; it goes on once ``released``."""

    def __init__(self, call: str) -> None:
        self.call = call
        self.entered = threading.Event()
        self.released = threading.Event()
        self.added: list[int] = []

    def hold(self, call: str) -> None:
        if call == self.call:
            self.entered.set()
            self.released.wait(HOLD)


GATE = Gate("")
REAL_UPNP = miniupnpc.UPnP


class HeldGateway:
    """``miniupnpc.UPnP`` (which cannot be subclassed) whose ``GATE.call`` is held, and which
    records the external ports the gateway mapped."""

    def __init__(self) -> None:
        object.__setattr__(self, "_upnp", REAL_UPNP())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._upnp, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self._upnp, name, value)

    def discover(self) -> int:
        GATE.hold("discover")
        found: int = self._upnp.discover()
        return found

    def addportmapping(self, port: int, *args: object) -> bool:
        GATE.hold("addportmapping")
        added = bool(self._upnp.addportmapping(port, *args))
        if added:
            GATE.added.append(port)
        return added


async def inside_held_call() -> None:
    """Returns once a worker thread is inside the held call."""
    assert await asyncio.to_thread(GATE.entered.wait, 30), f"no worker reached {GATE.call}"


async def cancel_start(ip: str, _cache: str) -> int:
    mapping = igd.PortMapping((ip, MAPPED_PORT), LEASE)
    start = asyncio.create_task(mapping.start())
    await inside_held_call()
    start.cancel()
    GATE.released.set()  # the gateway answers only now, after the cancellation
    await asyncio.gather(start, return_exceptions=True)
    return MAPPED_PORT


async def close_endpoint(ip: str, cache: str) -> int:
    config = qp2p.Config(local_ip=ip, forward_port=True, upnp_lease_duration=LEASE, bootstrap_cache_dir=cache)
    endpoint = qp2p.Endpoint(config)
    await endpoint.start()
    local_port = endpoint.local_addr[1]
    await inside_held_call()
    await endpoint.close()
    GATE.released.set()  # the gateway answers now, unless close() waited for it
    return local_port


SCENARIOS = {"cancel-start": cancel_start, "close-endpoint": close_endpoint}


def main() -> int:
    global GATE
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--held", required=True, choices=["discover", "addportmapping"])
    parser.add_argument("--ip", required=True)
    parser.add_argument("--cache", required=True)
    args = parser.parse_args()
    GATE = Gate(args.held)
    miniupnpc.UPnP = HeldGateway
    # asyncio.run returns once the default executor, hence every worker thread, has ended.
    local_port = asyncio.run(SCENARIOS[args.scenario](args.ip, args.cache))
    print(json.dumps({"local_port": local_port, "added": GATE.added}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
