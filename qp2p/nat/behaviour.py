"""What our NAT does, told from the addresses peers see us at (RFC 4787's terms), without I/O.

Two nodes at two addresses each echo the address our packets come from. One public port for
both is an endpoint-independent mapping (a "cone", easy to punch); two ports for two
destinations is an endpoint-dependent one (a "symmetric" NAT, hard: the port the coordinator
saw is not the one the peer will see). An echo equal to our own socket address means no NAT,
and a port the gateway forwards to us (UPnP) is open to anyone. ``Traversal`` uses the
behaviour of both sides to choose how to punch (docs/nat.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qp2p.wire import Address

__all__ = ("Mapping", "NatBehaviour", "observe")


class Mapping(enum.Enum):
    """How the NAT maps our socket to a public port."""

    UNKNOWN = "unknown"  # fewer than two echoes from two addresses
    INDEPENDENT = "endpoint-independent"  # one public port whoever we send to
    DEPENDENT = "endpoint-dependent"  # a public port per destination: a symmetric NAT


_MAPPING_BITS = {Mapping.UNKNOWN: 0, Mapping.INDEPENDENT: 1, Mapping.DEPENDENT: 2}
_OPEN = 4  # the wire's bit for ``open``
_PORT_KEPT = 8  # ... and for ``port_kept``


@dataclass(frozen=True, slots=True)
class NatBehaviour:
    """What we learned of our NAT; every field may be a guess a lying peer made for us, so
    it only chooses among punching techniques, each bounded on its own."""

    mapping: Mapping = Mapping.UNKNOWN
    open: bool = False  # anyone reaches us unsolicited: no NAT, or a forwarded port
    port_kept: bool = False  # the public port is the socket's own, so a fresh socket's is predictable

    @property
    def hard(self) -> bool:
        """A symmetric NAT that does not let strangers in: only port prediction punches it
        from behind another filtering NAT."""
        return self.mapping is Mapping.DEPENDENT and not self.open

    @property
    def easy(self) -> bool:
        """One public port for every destination, behind a NAT that may filter: it can probe
        for a hard peer's ports."""
        return self.mapping is Mapping.INDEPENDENT and not self.open

    def flags(self) -> int:
        """The u16 the wire carries (docs/protocol.md, ``NatReport``)."""
        return (
            _MAPPING_BITS[self.mapping] | (_OPEN if self.open else 0) | (_PORT_KEPT if self.port_kept else 0)
        )

    @classmethod
    def from_flags(cls, flags: int) -> NatBehaviour:
        """The behaviour a peer reported; bits we do not know, and a mapping of 3, read as unknown."""
        mapping = {1: Mapping.INDEPENDENT, 2: Mapping.DEPENDENT}.get(flags & 3, Mapping.UNKNOWN)
        return cls(mapping, bool(flags & _OPEN), bool(flags & _PORT_KEPT))


def observe(local: Address, echoes: list[Address], reachable: bool = False) -> NatBehaviour:
    """Our behaviour from ``echoes`` (our address as nodes at distinct addresses saw it, the
    node we joined through first) and our socket's ``local`` address; ``reachable``: a node
    dialled us from a fresh socket (we are a node), or the gateway forwards our port to us."""
    if not echoes:
        return NatBehaviour(Mapping.INDEPENDENT, True, True) if reachable else NatBehaviour()
    first = echoes[0]
    kept = first[1] == local[1]
    if first == local:  # no NAT between us and the node
        return NatBehaviour(Mapping.INDEPENDENT, True, True)
    if reachable:
        return NatBehaviour(Mapping.INDEPENDENT, True, kept)
    others = [echo for echo in echoes[1:] if echo[0] == first[0]]
    if not others:  # one echo, or echoes from other public IPs (a NAT with a pool of them)
        return NatBehaviour(Mapping.UNKNOWN, False, kept)
    if all(echo[1] == first[1] for echo in others):
        return NatBehaviour(Mapping.INDEPENDENT, False, kept)
    return NatBehaviour(Mapping.DEPENDENT, False, False)
