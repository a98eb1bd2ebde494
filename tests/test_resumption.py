"""Session resumption with real handshakes: a returning peer resumes as the identity it proved,
and nothing else resumes: another server, another peer id, a stolen ticket, an identity the
trust mode no longer accepts. The ticket stores stay within their bounds."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import aioquic.quic.connection
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from waiting import wait_until

import qp2p
from qp2p import tls
from qp2p._aioquic_hooks import peer_certificate
from qp2p._tickets import TICKET_BYTES, TICKET_CERTIFICATES, Ticket

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]


def resumed(connection: qp2p.Connection) -> bool:
    link = connection.current_link
    assert link is not None
    return bool(link.session.quic.tls.session_resumed)


async def accepted(server: qp2p.Endpoint) -> qp2p.Connection:
    return await anext(server.incoming_connections())  # type: ignore[call-overload]


async def visit(client: qp2p.Endpoint, server: qp2p.Endpoint, **dial: str) -> tuple[bool, bool]:
    """``client`` connects, a request crosses, and it leaves again: whether each side resumed."""
    connection = await client.connect_to(server.local_addr, **dial)  # type: ignore[arg-type]
    incoming = await accepted(server)
    assert connection.peer_id == server.peer_id and incoming.peer_id == client.peer_id
    await connection.send(b"hello")
    message = await anext(server.incoming_messages())  # type: ignore[call-overload]
    assert message.data == b"hello" and message.src == client.local_addr
    sides = resumed(connection), resumed(incoming)
    await connection.close()
    await wait_until(lambda: not server.connections())
    return sides


def private_ca(tmp_path: Path, *names: str, **issue_args: object) -> list[qp2p.Trust]:
    ca = tls.new_ca()
    tls.write_identity(ca, tmp_path / "ca.pem", tmp_path / "ca.key")
    trusts = []
    for name in names:
        identity = tls.issue(ca, name, **issue_args)  # type: ignore[arg-type]
        tls.write_identity(identity, tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        trusts.append(qp2p.Trust.private_ca(tmp_path, name))
    return trusts


def pinned(tmp_path: Path, *names: str) -> list[qp2p.Trust]:
    files = {name: (str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key")) for name in names}
    for certfile, keyfile in files.values():
        tls.write_identity(tls.self_signed_identity(), certfile, keyfile)
    prints = [tls.load_identity(*pair).fingerprint for pair in files.values()]
    return [qp2p.Trust.pinned(prints, *files[name]) for name in names]


@pytest.mark.parametrize("mode", ["encrypt_only", "private_ca", "pinned"])
async def test_a_returning_peer_resumes_as_itself(
    make_endpoint: MakeEndpoint, tmp_path: Path, mode: str
) -> None:
    if mode == "encrypt_only":
        trusts = [qp2p.Trust.encrypt_only()] * 2
    else:
        trusts = (private_ca if mode == "private_ca" else pinned)(tmp_path, "server", "client")
    server = await make_endpoint(trust=trusts[0])
    client = await make_endpoint(trust=trusts[1])
    assert await visit(client, server) == (False, False)
    assert server.stats().tickets_issued == 1 and client.stats().tickets_held == 1
    assert await visit(client, server) == (True, True)
    assert await visit(client, server, peer_id=server.peer_id) == (True, True)  # a chain: resumed again
    assert server.stats().tickets_issued == 1 and client.stats().tickets_held == 1


async def test_tickets_can_be_turned_off(make_endpoint: MakeEndpoint) -> None:
    server = await make_endpoint(session_tickets=False)
    client = await make_endpoint()
    for _ in range(2):
        assert await visit(client, server) == (False, False)
    assert server.stats().tickets_issued == 0 and client.stats().tickets_held == 0


async def test_a_new_server_instance_resumes_nothing(make_endpoint: MakeEndpoint) -> None:
    identity = tls.self_signed_identity()
    first = qp2p.Endpoint(qp2p.Config(), _identity=identity)
    await first.start()
    client = await make_endpoint()
    try:
        assert await visit(client, first) == (False, False)
        port = first.local_addr[1]
    finally:
        await first.close()
    assert client.stats().tickets_held == 1
    again = qp2p.Endpoint(qp2p.Config(local_port=port), _identity=identity)  # a restart, on the same port
    await again.start()
    try:
        assert again.peer_id == first.peer_id and again.local_addr[1] == port
        assert await visit(client, again, peer_id=identity.fingerprint) == (False, False)
        assert client.stats().tickets_held == 1  # the new instance's ticket
    finally:
        await again.close()


async def test_a_ticket_for_another_peer_id_is_not_offered(make_endpoint: MakeEndpoint) -> None:
    server = await make_endpoint()
    client = await make_endpoint()
    assert await visit(client, server) == (False, False)
    someone_else = tls.self_signed_identity().fingerprint
    with pytest.raises(qp2p.CertificateError):
        await client.connect_to(server.local_addr, peer_id=someone_else)
    assert client.stats().tickets_held == 1  # not spent on a dial it cannot serve
    assert server.stats().tickets_issued == 1
    assert await visit(client, server, peer_id=server.peer_id) == (True, True)


async def test_a_stolen_ticket_without_its_secret_is_refused(make_endpoint: MakeEndpoint) -> None:
    server = await make_endpoint()
    owner = await make_endpoint()
    thief = await make_endpoint(connect_timeout=3.0)
    assert await visit(owner, server) == (False, False)
    (ticket,) = owner._tickets_held._tickets.values()
    # What crosses the wire in a ClientHello, and what anyone may learn of the server; the
    # resumption secret never crosses it.
    forged = dataclasses.replace(
        ticket.session, resumption_secret=os.urandom(len(ticket.session.resumption_secret))
    )
    thief._tickets_held.add(Ticket(forged, ticket.proven, server.local_addr, ticket.deadline), now=0.0)
    failed = server.stats().failed_handshakes
    with pytest.raises(qp2p.ConnectionError):
        await thief.connect_to(server.local_addr)
    await wait_until(lambda: server.stats().failed_handshakes > failed)
    assert not server.connections()
    assert server.stats().tickets_issued == 0  # used once, even by a thief: the owner's next visit is full
    assert await visit(owner, server) == (False, False)


async def test_resumption_checks_the_identity_again(make_endpoint: MakeEndpoint, tmp_path: Path) -> None:
    lifetime = 4.0  # the client's certificate expires this long after it was issued
    start = (
        datetime.datetime.now(datetime.UTC)
        - datetime.timedelta(days=1)
        + datetime.timedelta(seconds=lifetime)
    )
    (server_trust,) = private_ca(tmp_path, "server")
    client_trust = qp2p.Trust.private_ca(tmp_path, "client")
    ca = tls.load_identity(str(tmp_path / "ca.pem"), str(tmp_path / "ca.key"))
    client_identity = tls.issue(ca, "client", days=1, not_before=start)
    tls.write_identity(client_identity, tmp_path / "client.pem", tmp_path / "client.key")
    server = await make_endpoint(trust=server_trust)
    client = await make_endpoint(trust=client_trust)
    assert await visit(client, server) == (False, False)
    assert server.stats().tickets_issued == 1
    expiry = client_identity.certificate.not_valid_after_utc
    await wait_until(lambda: datetime.datetime.now(datetime.UTC) > expiry, timeout=lifetime + 5)
    with pytest.raises(qp2p.CertificateError):
        await client.connect_to(server.local_addr)
    assert not server.connections()
    assert server.stats().tickets_issued == 0


async def test_the_server_store_is_bounded(make_endpoint: MakeEndpoint) -> None:
    server = await make_endpoint(max_session_tickets=4, session_tickets_per_address=3)
    for _ in range(6):
        assert await visit(await make_endpoint(), server) == (False, False)
    assert server.stats().tickets_issued == 3  # every client came from 127.0.0.1


async def test_one_peer_holds_two_tickets_at_most(make_endpoint: MakeEndpoint) -> None:
    server = await make_endpoint()
    identity = tls.self_signed_identity()
    clients = [qp2p.Endpoint(qp2p.Config(), _identity=identity) for _ in range(4)]
    try:
        for client in clients:
            await client.start()
            assert await visit(client, server) == (False, False)
        assert server.stats().tickets_issued == 2
    finally:
        for client in clients:
            await client.close()


async def test_the_client_store_is_bounded(make_endpoint: MakeEndpoint) -> None:
    client = await make_endpoint(max_session_tickets=2, session_tickets_per_address=1)
    servers = [await make_endpoint() for _ in range(4)]
    for server in servers:
        assert await visit(client, server) == (False, False)
    assert client.stats().tickets_held == 2
    assert await visit(client, servers[-1]) == (True, True)  # the newest ones stayed
    assert await visit(client, servers[0]) == (False, False)


def weight(ticket: Ticket) -> int:
    """The bytes a kept ticket holds that its peer chose: its certificate, chain, ticket and extensions."""
    session, proven = ticket.session, ticket.proven
    certificates = (proven.certificate, *proven.chain)
    return (
        sum(len(certificate.public_bytes(Encoding.DER)) for certificate in certificates)
        + len(session.ticket)
        + sum(len(data) for _, data in session.other_extensions)
    )


def padded_identity(certificates: int) -> tls.Identity:
    """An identity that sends a long chain of certificates nobody checks (``encrypt_only``)."""
    identity = tls.self_signed_identity()
    filler = [tls.self_signed_identity().certificate for _ in range(4)]
    return dataclasses.replace(identity, chain=[filler[i % 4] for i in range(certificates)])


@pytest.mark.parametrize("certificates", [250, TICKET_CERTIFICATES])  # about 100 KiB; a few small ones
@pytest.mark.parametrize("hostile", ["client", "server"])
async def test_a_peer_with_a_huge_chain_gets_no_huge_ticket(
    make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch, hostile: str, certificates: int
) -> None:
    # aioquic sends at most 16 KiB of handshake per epoch; a peer need not (and aioquic takes 512 KiB).
    monkeypatch.setattr(aioquic.quic.connection, "CRYPTO_BUFFER_SIZE", 1 << 18)
    padded = qp2p.Endpoint(qp2p.Config(), _identity=padded_identity(certificates))
    await padded.start()
    try:
        plain = await make_endpoint()
        client, server = (padded, plain) if hostile == "client" else (plain, padded)
        assert await visit(client, server) == (False, False)
        store = server._tickets_issued if hostile == "client" else client._tickets_held
        for ticket in store._tickets.values():
            assert weight(ticket) <= TICKET_BYTES and len(ticket.proven.chain) < TICKET_CERTIFICATES
        assert await visit(client, server) == (False, False)  # so it has a full handshake each time
    finally:
        await padded.close()


async def test_a_peer_with_a_short_chain_resumes(make_endpoint: MakeEndpoint) -> None:
    client = qp2p.Endpoint(qp2p.Config(), _identity=padded_identity(TICKET_CERTIFICATES - 1))
    await client.start()
    try:
        server = await make_endpoint()
        assert await visit(client, server) == (False, False)
        assert await visit(client, server) == (True, True)
    finally:
        await client.close()


async def test_simultaneous_resumptions_each_keep_their_identity(make_endpoint: MakeEndpoint) -> None:
    """Both peers hold a ticket of the other and dial each other at once: both links may resume,
    and each side sees the other's identity on both."""
    first, second = await make_endpoint(), await make_endpoint()
    assert await visit(first, second) == (False, False)
    assert await visit(second, first) == (False, False)
    ours, theirs = await asyncio.gather(
        first.connect_to(second.local_addr, peer_id=second.peer_id),
        second.connect_to(first.local_addr, peer_id=first.peer_id),
    )
    assert ours.peer_id == second.peer_id and theirs.peer_id == first.peer_id
    links = {first: set(first._links), second: set(second._links)}  # one or two each
    await wait_until(
        lambda: all(peer_certificate(link.session.quic) for each in links.values() for link in each)
    )
    for endpoint, other in ((first, second), (second, first)):
        for link in links[endpoint]:
            certificate = peer_certificate(link.session.quic)
            assert certificate is not None and tls.fingerprint(certificate) == other.peer_id
    assert any(link.session.quic.tls.session_resumed for link in links[first])
    await ours.close()
    await theirs.close()
    await wait_until(lambda: not first.connections() and not second.connections())
