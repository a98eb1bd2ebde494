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
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from qp2p.transport import Address

__all__ = ("PortMapping",)

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long each SSDP search of gateway discovery waits for answers, in milliseconds.
DISCOVERY_MS = 1000
# External ports tried when our own is taken on the gateway.
PORT_TRIES = 5
DESCRIPTION = "qp2p"


@dataclass(frozen=True)
class _Mapped:
    """A mapping the gateway made for us, and the miniupnpc client that made it."""

    upnp: Any
    external: Address
    internal: str


class PortMapping:
    """One UDP mapping, external port -> our address, kept alive while the endpoint runs.

    The endpoint runs ``start()`` in the background (discovery can take seconds) and waits for
    it only where the public address matters (``bootstrap()``, ``wait_port_mapped()``).

    The UPnP calls run in worker threads, which a cancellation cannot stop. So once ``start()``
    is cancelled or ``close()`` begins, a worker adds nothing more, and what one added meanwhile
    is removed as soon as it has ended: neither leaves a mapping on the gateway.
    """

    def __init__(self, local: Address, lease: int) -> None:
        self._local = local
        self._lease = lease
        self._stopped = threading.Event()  # read by the workers before each change they make
        self._worker: asyncio.Future[Any] | None = None  # the last worker thread's call
        self._mapped: _Mapped | None = None  # set by the worker once the gateway mapped our port
        self._external: Address | None = None
        self._renewal: asyncio.Task[None] | None = None

    @property
    def external(self) -> Address | None:
        """The gateway's public address and the port it forwards to us, once mapped."""
        return self._external

    async def start(self) -> Address | None:
        """Map the port; the public address it gives, or None when no gateway could do it."""
        try:
            mapped = await self._in_thread(self._map)
        except asyncio.CancelledError:
            await self._remove()  # what the worker added before it saw the cancellation
            raise
        except Exception as exc:  # whatever UPnP or the gateway raised: carry on without
            log.info("no UPnP port mapping: %s", exc)
            return None
        if self._stopped.is_set():  # closed meanwhile: close() removes it
            return None
        self._external = mapped.external
        log.info("UPnP gateway forwards %s:%d to %s:%d", *mapped.external, *self._local)
        self._renewal = asyncio.create_task(self._renew())
        return self._external

    async def _in_thread(self, call: Callable[[], T]) -> T:
        """``call`` in a worker thread. Cancelled, it stops the workers and still returns only
        once this one has ended, so that nothing it does comes after the caller's clean-up."""
        worker = asyncio.ensure_future(asyncio.to_thread(call))
        self._worker = worker
        try:
            return await asyncio.shield(worker)
        except asyncio.CancelledError:
            self._stopped.set()
            await _ended(worker)
            raise

    def _map(self) -> _Mapped:
        """Find the gateway and map our port on it (in a worker thread); adds nothing once stopped."""
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
            if self._stopped.is_set():
                raise RuntimeError("stopped before the gateway mapped the port")
            if self._add(upnp, port, internal):
                self._mapped = _Mapped(upnp, (external_ip, port), internal)
                return self._mapped
        raise RuntimeError("the gateway refused every external port tried")

    async def _renew(self) -> None:
        """Renew the lease at half its duration, so it never lapses while we run."""
        while True:
            await asyncio.sleep(max(1.0, self._lease / 2))
            try:
                await self._in_thread(self._refresh)
            except Exception as exc:  # the gateway went away: the next renewal tries again
                log.warning("could not renew the UPnP port mapping: %s", exc)

    def _refresh(self) -> None:
        """Add the mapping again, for a new lease (in a worker thread); not once stopped."""
        mapped = self._mapped
        if mapped is not None and not self._stopped.is_set():
            self._add(mapped.upnp, mapped.external[1], mapped.internal)

    def _add(self, upnp: Any, port: int, internal: str) -> bool:
        """Ask the gateway to forward its ``port`` to our port on ``internal``, for a lease."""
        return bool(upnp.addportmapping(port, "UDP", internal, self._local[1], DESCRIPTION, "", self._lease))

    async def close(self) -> None:
        """Stop renewing and remove the mapping, once no worker can add it any more (best
        effort: the lease ends it anyway)."""
        self._stopped.set()
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
            self._renewal = None
        if self._worker is not None:
            await _ended(self._worker)
        await self._remove()

    async def _remove(self) -> None:
        """Delete the mapping from the gateway, if one was made and is not removed yet."""
        mapped, self._mapped = self._mapped, None
        if mapped is None:
            return
        try:
            await asyncio.to_thread(mapped.upnp.deleteportmapping, mapped.external[1], "UDP")
        except Exception as exc:  # best effort
            log.info("could not remove the UPnP port mapping: %s", exc)


async def _ended(worker: asyncio.Future[Any]) -> None:
    """Until a worker's call has ended; what it raised was for its caller, who gave up on it
    (a stopped worker raises on purpose): retrieved here, so asyncio does not report it."""
    await asyncio.wait([worker])
    if not worker.cancelled():
        worker.exception()
