"""UDP sockets besides the endpoint's own, for hole punching: one fresh port whose public port
is predictable, or many at once to open as many NAT mappings (the birthday punch).

Each is a ``Transport`` that accepts no connection (only a punch's fresh socket does, while
its punch lasts): our own dials run on it. One that carries no link is closed as soon as its
punch lets it go; one that does lives as long as its links, and every one closes with the
endpoint.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from qp2p.transport import Address, Receiver, Transport

__all__ = ("SideSockets",)

log = logging.getLogger(__name__)

# Told of a datagram that is no QUIC packet, with the socket it reached and its source.
Heard = Callable[[Transport, bytes, Address], None]


def _refuse(*_: object) -> Receiver | None:
    return None


def _side_transport(heard: Heard | None) -> Transport:
    """A transport that accepts no connection and tells ``heard`` of its stray datagrams."""
    transport: Transport | None = None

    def stray(data: bytes, addr: Address) -> None:
        if heard is not None and transport is not None:
            heard(transport, data, addr)

    transport = Transport(_refuse, stray=stray)
    return transport


class SideSockets:
    """The extra sockets of one endpoint, bound on ``local_ip``."""

    def __init__(self, local_ip: str) -> None:
        self._local_ip = local_ip
        self._links: dict[Transport, int] = {}  # every socket we hold -> links running on it
        self._released: set[Transport] = set()  # ... of which no punch needs any more

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, transport: object) -> bool:
        return transport in self._links

    async def open(self, count: int, heard: Heard | None = None) -> list[Transport]:
        """Up to ``count`` fresh sockets on ephemeral ports (fewer if the system runs out),
        each telling ``heard`` of the stray datagrams it gets. Cancelled halfway, it closes
        those it opened: nobody else holds them to release."""
        loop = asyncio.get_running_loop()
        opened: list[Transport] = []
        try:
            for _ in range(count):
                try:
                    _, transport = await loop.create_datagram_endpoint(
                        functools.partial(_side_transport, heard), local_addr=(self._local_ip, 0)
                    )
                except OSError as exc:
                    log.info("opened %d of %d side sockets: %s", len(opened), count, exc)
                    break
                self._links[transport] = 0
                opened.append(transport)
        except BaseException:
            for transport in opened:
                self.release(transport)
            raise
        return opened

    def attach(self, transport: object) -> None:
        """A link now runs on ``transport`` (ignored unless it is one of ours)."""
        if isinstance(transport, Transport) and transport in self._links:
            self._links[transport] += 1

    def detach(self, transport: object) -> None:
        """A link on ``transport`` ended: the socket closes with its last link, once released."""
        if isinstance(transport, Transport) and transport in self._links:
            self._links[transport] -= 1
            self._close_if_idle(transport)

    def release(self, transport: Transport) -> None:
        """The punch that opened ``transport`` no longer needs it: it closes now, or with its
        last link, and takes no new connection meanwhile (a punch's fresh socket took them
        without a Retry, for the punch's peer only while the punch lasted)."""
        if transport in self._links:
            transport.accept_connections(_refuse)
            self._released.add(transport)
            self._close_if_idle(transport)

    def _close_if_idle(self, transport: Transport) -> None:
        if self._links[transport] <= 0 and transport in self._released:
            del self._links[transport]
            self._released.discard(transport)
            transport.close()

    def close(self) -> None:
        """Close every socket, links or not (the endpoint is closing)."""
        for transport in self._links:
            transport.close()
        self._links.clear()
        self._released.clear()
