"""Memory accounting in scopes: the whole endpoint, each source address, each peer, each link.

Every byte the endpoint holds on a peer's behalf is reserved in all the scopes it belongs to
before it is held, and released when it is let go; a reservation that does not fit is refused
and the refusal counted by the scope that refused it. Sans-IO: plain numbers, no clock.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

__all__ = ("MemoryBudget", "MemoryStats", "Reservation", "Scope", "address_key", "unlimited")

# An IPv6 host may use every address of its /64, so the /64 counts as one source address.
IPV6_PREFIX = 64


def address_key(host: str) -> str:
    """The source-address scope a host belongs to: an IPv4 address, or an IPv6 /64."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


@dataclass(slots=True)
class Scope:
    """One limit and what is reserved against it; ``holders`` reservations keep it alive."""

    name: str
    limit: int
    key: str = ""
    used: int = 0
    holders: int = 0

    def fits(self, size: int) -> bool:
        return self.used + size <= self.limit


@dataclass(frozen=True, slots=True)
class MemoryStats:
    """Memory reserved, by scope, and the reservations refused by the scope that refused them."""

    used: int
    limit: int
    addresses: int  # source addresses (IPv4, IPv6 /64) holding memory
    peers: int  # peer ids holding memory
    largest_address: int  # bytes held by the source address holding the most
    largest_peer: int  # bytes held by the peer holding the most
    refused: dict[str, int] = field(default_factory=dict)  # by reason: memory_<scope>, control_backlog


class MemoryBudget:
    """The endpoint's accountant: the endpoint scope, and an address and a peer scope each, made
    when first needed and forgotten when nothing holds them any more."""

    def __init__(self, limit: int, address_limit: int, peer_limit: int) -> None:
        self.endpoint = Scope("endpoint", limit)
        self.address_limit = address_limit
        self.peer_limit = peer_limit
        self._addresses: dict[str, Scope] = {}
        self._peers: dict[str, Scope] = {}
        self.refused: Counter[str] = Counter()

    def open(self, host: str, link_limit: int) -> Reservation:
        """A reservation for one link from ``host``, held at most to ``link_limit`` bytes."""
        scope = _scope(self._addresses, address_key(host), "address", self.address_limit)
        return Reservation(self, [Scope("link", link_limit, holders=1), scope, self.endpoint])

    def peer_scope(self, peer_id: str) -> Scope:
        return _scope(self._peers, peer_id, "peer", self.peer_limit)

    def forget(self, scope: Scope) -> None:
        """A scope nothing holds any more goes (its entry costs memory too)."""
        if scope.holders == 0 and scope.used == 0:
            table = self._addresses if scope.name == "address" else self._peers
            if table.get(scope.key) is scope:
                del table[scope.key]

    def stats(self) -> MemoryStats:
        return MemoryStats(
            used=self.endpoint.used,
            limit=self.endpoint.limit,
            addresses=len(self._addresses),
            peers=len(self._peers),
            largest_address=max((scope.used for scope in self._addresses.values()), default=0),
            largest_peer=max((scope.used for scope in self._peers.values()), default=0),
            refused=dict(self.refused),
        )


def _scope(table: dict[str, Scope], key: str, name: str, limit: int) -> Scope:
    scope = table.get(key)
    if scope is None:
        scope = table[key] = Scope(name, limit, key)
    scope.holders += 1
    return scope


class Reservation:
    """What one link holds, reserved in each of its scopes (link, peer once known, address,
    endpoint) at once or not at all."""

    __slots__ = ("_budget", "_scopes", "held")

    def __init__(self, budget: MemoryBudget, scopes: list[Scope]) -> None:
        self._budget = budget
        self._scopes = scopes
        self.held = 0

    def attach_peer(self, peer_id: str) -> None:
        """The handshake proved who the peer is: from now on its scope counts this link too."""
        scope = self._budget.peer_scope(peer_id)
        scope.used += self.held
        self._scopes.insert(1, scope)

    def refusal(self, size: int) -> str | None:
        """The name of the first scope ``size`` more bytes would not fit in, or None."""
        for scope in self._scopes:
            if not scope.fits(size):
                return scope.name
        return None

    def largest(self) -> int:
        """The most this link could ever reserve on top of what it holds, were it alone."""
        return min(scope.limit - self.held for scope in self._scopes)

    def reserve(self, size: int) -> str | None:
        """Reserve ``size`` bytes in every scope; None when done, else the refusing scope's name
        (counted in the endpoint's refusals) and nothing reserved."""
        refused = self.refusal(size)
        if refused is not None:
            self.count(f"memory_{refused}")
            return refused
        for scope in self._scopes:
            scope.used += size
        self.held += size
        return None

    def count(self, reason: str) -> None:
        """Count a refusal on this link's behalf (``Endpoint.stats().refusals``)."""
        self._budget.refused[reason] += 1

    def release(self, size: int) -> None:
        size = min(size, self.held)
        for scope in self._scopes:
            scope.used -= size
        self.held -= size

    def close(self) -> None:
        """Release everything and let go of the scopes."""
        self.release(self.held)
        for scope in self._scopes:
            scope.holders -= 1
            if scope.name in ("address", "peer"):
                self._budget.forget(scope)
        self._scopes = []


def unlimited() -> Reservation:
    """A reservation with no limit, for a session used on its own (tests, tools)."""
    huge = 1 << 62
    return MemoryBudget(huge, huge, huge).open("0.0.0.0", huge)
