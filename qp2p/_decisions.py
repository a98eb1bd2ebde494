"""What the sans-IO deciders (traversal, membership) are told about a link, and the simplest
action they ask for. The endpoint builds the one and carries out the other."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from qp2p import wire
from qp2p.wire import Address

__all__ = ("Peer", "Send")


@dataclass(frozen=True, slots=True)
class Peer:
    """What one link tells of the peer at its other end: proven identity, observed address."""

    link: Hashable  # the link itself, opaque to the deciders
    peer_id: str  # the certificate's fingerprint, as TLS proved it
    addr: Address  # where its packets come from (for a relayed link: the relay's address)
    rtt: float = 0.0  # the link's smoothed round-trip time, seconds
    relayed: bool = False
    node: bool = True  # what its Hello says: a node accepts connections, a client does not
    received: int = 0  # bytes of datagrams the link received from it, handshake included


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` on ``link``."""

    link: Hashable
    message: wire.ControlMessage
