"""The peer implementations the end-to-end benches compare, behind one small interface.

Each peer has a receiver (hands each message to a callback, echoes each request) and a sender
(``send``, ``request``) that are run in one event loop. ``load`` imports a peer's module only
when it is asked for, so a peer whose package is not installed costs nothing until then and is
reported by name (``Missing``) instead of failing the others.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

__all__ = ("CORE", "PEERS", "Body", "Contact", "Impl", "Missing", "OwnLoop", "Receiver", "Sender", "load")

Body = bytes | bytearray
# What a receiver's start returns and a sender's connect takes: (host, port) for a socket
# peer; for a WebRTC peer, the receiving side's answerer (SDP is exchanged directly).
Contact = Any
# The datagram size both ends are configured with; None leaves the implementation's default.
DatagramSize = int | None


class Receiver(Protocol):
    """Hands each message to ``on_message`` and echoes each request, from ``start`` to ``close``."""

    async def start(self, on_message: Callable[[Body], None]) -> Contact: ...

    async def close(self) -> None: ...


class Sender(Protocol):
    """One connection to a receiver, from ``connect`` to ``close``."""

    async def connect(self, contact: Contact) -> None: ...

    async def send(self, data: Body) -> None: ...

    async def request(self, data: Body) -> Body: ...

    async def close(self) -> None: ...


class Impl(NamedTuple):
    """How to make both ends of one peer implementation."""

    receiver: Callable[[DatagramSize], Receiver]
    sender: Callable[[DatagramSize], Sender]
    # Whether its datagram size can be set (QUIC); the others run only at their own.
    sized_datagrams: bool


class OwnLoop(NamedTuple):
    """A peer that cannot share an asyncio loop: it runs a workload itself, on the loop it needs."""

    loop: str
    # (workload, rounds) -> the workload's figures, as _workloads.Workload.figures gives them.
    measure: Callable[[Any, int], dict[str, Any]]


class _Entry(NamedTuple):
    package: str  # the import that must be found, else the peer is "not installed"
    module: str  # the bench module holding the Impl
    attribute: str


PEERS = {
    "qp2p": _Entry("qp2p", "qp2p_peer", "QP2P"),
    "aioquic": _Entry("aioquic", "aioquic_baseline", "AIOQUIC"),
    "qh3": _Entry("qh3", "aioquic_baseline", "QH3"),
    "aiortc": _Entry("aiortc", "aiortc_peer", "AIORTC"),
    "tls": _Entry("ssl", "tls_peer", "TLS"),
    "libp2p": _Entry("libp2p", "libp2p_peer", "LIBP2P"),
}
# Always installed with qp2p: what the pytest benches and e2e_memory.py compare.
CORE = ("qp2p", "aioquic")


class Missing(Exception):
    """A peer that cannot run here, not installed or unsupported; the message says why."""


def load(name: str) -> Impl | OwnLoop:
    """The named peer's ``Impl`` (or ``OwnLoop``); raises ``Missing`` when its package is not installed."""
    entry = PEERS[name]
    if importlib.util.find_spec(entry.package) is None:
        raise Missing(f"not installed: no module {entry.package!r} (pip install -e '.[bench]')")
    try:
        module = importlib.import_module(entry.module)
    except ImportError as error:  # installed, but it does not load on this Python or platform
        raise Missing(f"unsupported here: importing it failed ({error})") from error
    impl: Impl | OwnLoop = getattr(module, entry.attribute)
    return impl
