"""The session ticket store on its own: its bounds, expiry, single use, and what a chain keeps."""

from __future__ import annotations

import datetime
import os

from aioquic import tls as aioquic_tls

from qp2p import tls
from qp2p._tickets import TICKETS_PER_PEER, LinkTickets, Proven, Ticket, TicketStore

IDENTITIES = [tls.self_signed_identity() for _ in range(3)]


def session(early_data: int | None = None) -> aioquic_tls.SessionTicket:
    now = datetime.datetime.now(datetime.UTC)
    return aioquic_tls.SessionTicket(
        age_add=0,
        cipher_suite=aioquic_tls.CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=now + datetime.timedelta(days=1),
        not_valid_before=now,
        resumption_secret=os.urandom(32),
        server_name="qp2p",
        ticket=os.urandom(64),
        max_early_data_size=early_data,
    )


def ticket(peer: int = 0, source: object = "10.0.0.1", deadline: float = 100.0) -> Ticket:
    identity = IDENTITIES[peer]
    proven = Proven(identity.certificate, (), identity.fingerprint)
    return Ticket(session(), proven, source, deadline)


def test_a_ticket_is_taken_once() -> None:
    store = TicketStore(limit=8, per_source=8)
    issued = ticket()
    store.add(issued, now=0.0)
    assert store.take(issued.session.ticket, now=1.0) is issued
    assert store.take(issued.session.ticket, now=1.0) is None
    assert len(store) == 0


def test_unknown_and_expired_tickets_give_nothing() -> None:
    store = TicketStore(limit=8, per_source=8)
    issued = ticket(deadline=10.0)
    store.add(issued, now=0.0)
    assert store.take(os.urandom(64), now=1.0) is None
    assert store.take(issued.session.ticket, now=10.0) is None  # expired: gone, and not given
    assert len(store) == 0
    store.add(ticket(deadline=5.0), now=6.0)  # born expired
    assert len(store) == 0


def test_expired_tickets_leave_as_new_ones_come() -> None:
    store = TicketStore(limit=100, per_source=100)
    for peer, source in enumerate(["a", "b", "c"]):
        store.add(ticket(peer, source, deadline=10.0), now=0.0)
    store.add(ticket(0, "d", deadline=30.0), now=20.0)
    assert len(store) == 1


def test_the_count_is_bounded_oldest_first() -> None:
    store = TicketStore(limit=5, per_source=5)
    tickets = [ticket(i % 3, f"10.0.0.{i}") for i in range(50)]
    for i, issued in enumerate(tickets):
        store.add(issued, now=float(i) / 100)
    assert len(store) == 5
    assert store.take(tickets[0].session.ticket, now=1.0) is None
    assert store.take(tickets[-1].session.ticket, now=1.0) is tickets[-1]


def test_one_source_cannot_push_out_the_others() -> None:
    store = TicketStore(limit=10, per_source=3)
    other = ticket(0, "10.0.0.9")
    store.add(other, now=0.0)
    flood = [ticket(i % 3, "10.0.0.1") for i in range(40)]
    for issued in flood:
        store.add(issued, now=0.0)
    assert len(store) == 4  # three from the flooding address, and the other one
    assert store.take(other.session.ticket, now=0.0) is other


def test_one_peer_holds_a_bounded_number() -> None:
    store = TicketStore(limit=100, per_source=100)
    for i in range(20):
        store.add(ticket(1, f"10.0.0.{i}"), now=0.0)
    assert len(store) == TICKETS_PER_PEER


def test_the_newest_from_a_source_for_a_peer() -> None:
    store = TicketStore(limit=10, per_source=2)
    first, second = ticket(0, ("h", 1)), ticket(1, ("h", 1))
    store.add(first, now=0.0)
    store.add(second, now=0.0)
    assert store.take_newest(("h", 1), IDENTITIES[2].fingerprint, now=0.0) is None  # nobody else's
    assert store.take_newest(("h", 2), None, now=0.0) is None
    assert store.take_newest(("h", 1), IDENTITIES[0].fingerprint, now=0.0) is first
    assert store.take_newest(("h", 1), None, now=0.0) is second
    assert len(store) == 0


def test_a_resumed_chain_keeps_the_first_deadline_and_no_early_data() -> None:
    now = [0.0]
    store = TicketStore(limit=10, per_source=10)
    server = IDENTITIES[0]
    first = LinkTickets(store, ("h", 1), 50.0, lambda: now[0])
    assert first.offer() is None
    first.issued(session(early_data=0xFFFFFFFF), server.certificate, [], resumed=False)
    (kept,) = store._tickets.values()
    assert kept.deadline == 50.0 and kept.session.max_early_data_size is None
    assert kept.proven.peer_id == server.fingerprint
    now[0] = 40.0
    second = LinkTickets(store, ("h", 1), 50.0, lambda: now[0], peer_id=server.fingerprint)
    assert second.offer() is kept
    assert second.offer() is kept  # the same one when the handshake starts over
    second.issued(session(), server.certificate, [], resumed=True)
    (chained,) = store._tickets.values()
    assert chained.deadline == 50.0  # not 90: the identity was proven at 0
    third = LinkTickets(store, ("h", 1), 50.0, lambda: now[0])
    third.offer()
    third.issued(session(), server.certificate, [], resumed=False)  # offered but a full handshake
    assert max(t.deadline for t in store._tickets.values()) == 90.0
