"""UPnP IGD port mapping: ask the LAN's Internet gateway to forward our UDP port to us.

With ``Config.forward_port`` the endpoint maps its port on the gateway when it starts, renews
the lease before ``upnp_lease_duration`` runs out, and removes the mapping when it closes.
Without a gateway (or without the ``miniupnpc`` package) it carries on quietly: the mapping
is a help, never a requirement. The UPnP calls block, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from typing import Any

from qp2p.transport import Address

__all__ = ("PortMapping",)

log = logging.getLogger(__name__)

# How long each SSDP search of gateway discovery waits for answers, in milliseconds.
DISCOVERY_MS = 1000
# External ports tried when our own is taken on the gateway.
PORT_TRIES = 5
DESCRIPTION = "qp2p"


class PortMapping:
    """One UDP mapping, external port -> our address, kept alive while the endpoint runs.

    The endpoint runs ``start()`` in the background (discovery can take seconds) and waits for
    it only where the public address matters (``bootstrap()``, ``wait_port_mapped()``).
    """

    def __init__(self, local: Address, lease: int) -> None:
        self._local = local
        self._lease = lease
        self._upnp: Any = None
        self._internal = local[0]
        self._external: Address | None = None
        self._renewal: asyncio.Task[None] | None = None

    @property
    def external(self) -> Address | None:
        """The gateway's public address and the port it forwards to us, once mapped."""
        return self._external

    async def start(self) -> Address | None:
        """Map the port; the public address it gives, or None when no gateway could do it."""
        try:
            self._external = await asyncio.to_thread(self._map)
        except Exception as exc:  # whatever UPnP or the gateway raised: carry on without
            log.info("no UPnP port mapping: %s", exc)
            return None
        log.info("UPnP gateway forwards %s:%d to %s:%d", *self._external, *self._local)
        self._renewal = asyncio.create_task(self._renew())
        return self._external

    def _map(self) -> Address:
        try:
            import miniupnpc  # type: ignore[import-not-found]
        except ImportError as exc:
            raise RuntimeError("the miniupnpc package is not installed (pip install 'qp2p[upnp]')") from exc
        upnp = miniupnpc.UPnP()
        upnp.discoverdelay = DISCOVERY_MS
        if upnp.discover() == 0:
            raise RuntimeError("no UPnP device answered on the LAN")
        upnp.selectigd()  # raises when none of them is an Internet gateway
        external_ip = upnp.externalipaddress()
        ipaddress.ip_address(external_ip)  # an empty or garbled answer: no usable gateway
        internal = self._local[0]
        if ipaddress.ip_address(internal).is_unspecified:
            internal = upnp.lanaddr  # bound to every address: the one facing the gateway
        ports = [self._local[1]] + [random.randrange(1024, 65536) for _ in range(PORT_TRIES - 1)]
        for port in ports:
            if upnp.addportmapping(port, "UDP", internal, self._local[1], DESCRIPTION, "", self._lease):
                self._upnp = upnp
                self._internal = internal
                return external_ip, port
        raise RuntimeError("the gateway refused every external port tried")

    async def _renew(self) -> None:
        """Renew the lease at half its duration, so it never lapses while we run."""
        assert self._external is not None
        while True:
            await asyncio.sleep(max(1.0, self._lease / 2))
            try:
                await asyncio.to_thread(
                    self._upnp.addportmapping,
                    self._external[1],
                    "UDP",
                    self._internal,
                    self._local[1],
                    DESCRIPTION,
                    "",
                    self._lease,
                )
            except Exception as exc:  # the gateway went away: the next renewal tries again
                log.warning("could not renew the UPnP port mapping: %s", exc)

    async def close(self) -> None:
        """Stop renewing and remove the mapping (best effort: the lease ends it anyway)."""
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
            self._renewal = None
        if self._upnp is not None and self._external is not None:
            try:
                await asyncio.to_thread(self._upnp.deleteportmapping, self._external[1], "UDP")
            except Exception as exc:  # best effort
                log.info("could not remove the UPnP port mapping: %s", exc)
            self._upnp = None
