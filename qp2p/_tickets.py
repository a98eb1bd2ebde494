"""Session tickets: what lets a returning peer resume, and the identity each one was issued to.

In qp2p a peer is its certificate, and a resumed TLS 1.3 handshake carries none: it proves only
that the peer holds the secret of an earlier session. So every ticket is kept with the
certificate (and chain) that the earlier, full handshake proved, and a resumption takes its
identity from there. Tickets live in memory only and are bounded: in count, per source (an
address scope on a node, a dialled address on a client), per peer id and in time. A ticket is
used once: resuming takes it out, and the resumed connection gets a new one that keeps the
first one's deadline, so an identity is proven again by a full handshake at least once per
lifetime.

The store is sans-IO (the time is passed in); ``LinkTickets`` is one connection's view of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from aioquic import tls
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from qp2p.tls import fingerprint

__all__ = (
    "HELD_PER_ADDRESS",
    "TICKET_BYTES",
    "TICKET_CERTIFICATES",
    "LinkTickets",
    "Proven",
    "Ticket",
    "TicketStore",
)

# A peer may hold this many tickets at once with us (one per connection it resumes in parallel).
TICKETS_PER_PEER = 2
# A client keeps this many tickets per address it dialled.
HELD_PER_ADDRESS = 2
# The most a kept ticket may hold of what its peer chose: the certificate and chain it presented,
# the ticket's bytes and the extensions kept with it, in all and in certificates (a parsed
# certificate costs about twice its DER). A self-signed certificate and aioquic's ticket weigh
# about 500 bytes, a leaf with two intermediates a few KiB; a heavier ticket is not kept, and its
# peer's next handshake is a full one.
TICKET_BYTES = 4096
TICKET_CERTIFICATES = 4


@dataclass(frozen=True, slots=True)
class Proven:
    """A peer's certificate and its chain, as a full handshake proved them."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    peer_id: str


@dataclass(frozen=True, slots=True)
class Ticket:
    """A TLS session ticket, whom it was issued to, where it came from and until when it holds."""

    session: tls.SessionTicket
    proven: Proven
    source: Hashable
    deadline: float


class TicketStore:
    """Tickets by their bytes: at most ``limit`` in all, ``per_source`` per source and
    ``TICKETS_PER_PEER`` per peer id, each until its deadline; a new one pushes out the oldest
    it competes with."""

    def __init__(self, limit: int, per_source: int) -> None:
        self._limit = limit
        self._per_source = per_source
        self._tickets: dict[bytes, Ticket] = {}  # oldest first
        self._by_source: dict[Hashable, list[bytes]] = {}
        self._by_peer: dict[str, list[bytes]] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def add(self, ticket: Ticket, now: float) -> None:
        """Keep ``ticket``, dropping the expired ones and whichever a bound says must go."""
        self._expire(now)
        if ticket.deadline <= now or ticket.session.ticket in self._tickets:
            return
        for group, bound in (
            (self._by_source.get(ticket.source, []), self._per_source),
            (self._by_peer.get(ticket.proven.peer_id, []), TICKETS_PER_PEER),
        ):
            while len(group) >= bound:
                self._drop(group[0])
        while len(self._tickets) >= self._limit:
            self._drop(next(iter(self._tickets)))
        key = ticket.session.ticket
        self._tickets[key] = ticket
        self._by_source.setdefault(ticket.source, []).append(key)
        self._by_peer.setdefault(ticket.proven.peer_id, []).append(key)

    def take(self, key: bytes, now: float) -> Ticket | None:
        """The ticket whose bytes are ``key``, taken out (a ticket is used once); None if it
        is unknown or expired."""
        ticket = self._tickets.get(key)
        if ticket is None:
            return None
        self._drop(key)
        return ticket if now < ticket.deadline else None

    def take_newest(self, source: Hashable, peer_id: str | None, now: float) -> Ticket | None:
        """The newest live ticket from ``source`` (issued by ``peer_id`` when given), taken out."""
        for key in reversed(self._by_source.get(source, [])):
            ticket = self._tickets[key]
            if peer_id is None or ticket.proven.peer_id == peer_id:
                return self.take(key, now)
        return None

    def _expire(self, now: float) -> None:
        """Drop expired tickets from the oldest on (a resumed chain's may linger behind a newer
        one until taken, which finds it expired)."""
        while self._tickets:
            key, ticket = next(iter(self._tickets.items()))
            if ticket.deadline > now:
                return
            self._drop(key)

    def _drop(self, key: bytes) -> None:
        ticket = self._tickets.pop(key)
        _leave(self._by_source, ticket.source, key)
        _leave(self._by_peer, ticket.proven.peer_id, key)


def _leave(index: dict[Any, list[bytes]], group: Hashable, key: bytes) -> None:
    """Take ``key`` out of its group in ``index``, and the group out once empty."""
    members = index[group]
    members.remove(key)
    if not members:
        del index[group]


class LinkTickets:
    """One connection's tickets: on a client, the one it may resume with and those the server
    sends; on a server, those the client offers and those we issue. Tickets a resumed
    connection gets keep the deadline of the one it resumed with."""

    def __init__(
        self,
        store: TicketStore,
        source: Hashable,
        lifetime: float,
        clock: Callable[[], float],
        *,
        peer_id: str | None = None,
    ) -> None:
        self._store = store
        self._source = source
        self._lifetime = lifetime
        self._clock = clock
        self._peer_id = peer_id  # a client: only a ticket this server issued will do
        self._resumed: Ticket | None = None  # the ticket offered or found
        self._offered = False

    def offer(self) -> Ticket | None:
        """A client's ticket to resume with: the newest from this address (and peer id). The
        same one again when the handshake starts over (after a Retry)."""
        if not self._offered:
            self._offered = True
            self._resumed = self._store.take_newest(self._source, self._peer_id, self._clock())
        return self._resumed

    def find(self, key: bytes) -> Ticket | None:
        """A server's ticket for the bytes a client offered."""
        self._resumed = self._store.take(key, self._clock())
        return self._resumed

    def issued(
        self,
        session: tls.SessionTicket,
        certificate: x509.Certificate,
        chain: list[x509.Certificate],
        resumed: bool,
    ) -> None:
        """A ticket this connection issued or received, for the certificate its handshake
        proved (or its resumption took over). Never kept as one that allows early data: qp2p
        does not use 0-RTT."""
        if len(chain) >= TICKET_CERTIFICATES or _weight(session, certificate, chain) > TICKET_BYTES:
            return
        now = self._clock()
        earlier = self._resumed if resumed else None
        deadline = now + self._lifetime if earlier is None else earlier.deadline
        proven = Proven(certificate, tuple(chain), fingerprint(certificate))
        session = dataclasses.replace(session, max_early_data_size=None)
        self._store.add(Ticket(session, proven, self._source, deadline), now)


def _weight(session: tls.SessionTicket, certificate: x509.Certificate, chain: list[x509.Certificate]) -> int:
    """What a ticket would hold that its peer chose: certificates, ticket bytes, extensions."""
    der = sum(len(item.public_bytes(Encoding.DER)) for item in (certificate, *chain))
    return der + len(session.ticket) + sum(len(data) for _, data in session.other_extensions)
