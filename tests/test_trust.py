"""Trust modes with real handshakes: who is accepted, who is refused, and by which side."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from rogue import RoguePeer
from waiting import wait_until

import qp2p
from qp2p import tls

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]


class Network:
    """A CA in a temporary folder and node identities issued by it (or by others)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = tls.new_ca()
        tls.write_identity(self.ca, folder / "ca.pem", folder / "ca.key")

    def node(self, name: str, issuer: tls.Identity | None = None, **issue_args: object) -> qp2p.Trust:
        identity = tls.issue(issuer or self.ca, name, **issue_args)  # type: ignore[arg-type]
        tls.write_identity(identity, self.folder / f"{name}.pem", self.folder / f"{name}.key")
        return qp2p.Trust.private_ca(self.folder, name)

    def self_signed(self, name: str) -> tuple[str, str]:
        certfile, keyfile = str(self.folder / f"{name}.pem"), str(self.folder / f"{name}.key")
        tls.write_identity(tls.self_signed_identity(), certfile, keyfile)
        return certfile, keyfile


@pytest.fixture
def network(tmp_path: Path) -> Network:
    return Network(tmp_path)


async def exchange(a: qp2p.Endpoint, b: qp2p.Endpoint) -> None:
    """a dials b and a message crosses: the pair trust each other."""
    await a.send_message(b"trusted", b.local_addr)
    async with asyncio.timeout(5):
        message = await anext(b.incoming_messages())  # type: ignore[call-overload]
    assert message.data == b"trusted"


async def refused(a: qp2p.Endpoint, b: qp2p.Endpoint, match: str) -> None:
    """a's dial to b fails with CertificateError, b never sees a connection or a message."""
    failed_before = b.stats().failed_handshakes
    with pytest.raises(qp2p.CertificateError, match=match):
        await a.connect_to(b.local_addr)
    async with asyncio.timeout(5):
        while b.stats().failed_handshakes == failed_before:
            await asyncio.sleep(0.01)
    assert a.local_addr not in [c.remote_addr for c in b.connections()]
    assert b.stats().queued_messages == 0


async def test_encrypt_only_shows_both_fingerprints(make_endpoint: MakeEndpoint) -> None:
    a, b = await make_endpoint(), await make_endpoint()
    connection = await a.connect_to(b.local_addr)
    incoming = await anext(b.incoming_connections())  # type: ignore[call-overload]
    assert connection.fingerprint == b.fingerprint and incoming.fingerprint == a.fingerprint
    assert a.fingerprint != b.fingerprint and len(a.fingerprint) == 64


async def test_encrypt_only_keeps_a_loaded_identity(make_endpoint: MakeEndpoint, network: Network) -> None:
    certfile, keyfile = network.self_signed("me")
    a = await make_endpoint(trust=qp2p.Trust.encrypt_only(certfile, keyfile))
    assert a.fingerprint == tls.load_identity(certfile, keyfile).fingerprint


async def test_ca_members_trust_each_other(make_endpoint: MakeEndpoint, network: Network) -> None:
    a = await make_endpoint(trust=network.node("a"))
    b = await make_endpoint(trust=network.node("b"))
    await exchange(a, b)
    await exchange(b, a)
    trust = qp2p.Trust.ca(
        network.folder / "ca.pem", str(network.folder / "c.pem"), str(network.folder / "c.key")
    )
    network.node("c")
    c = await make_endpoint(trust=trust)  # Trust.ca with a PEM file: the same check
    await exchange(c, a)


async def test_ca_node_refuses_an_outsider_that_dials_it(
    make_endpoint: MakeEndpoint, network: Network
) -> None:
    member = await make_endpoint(trust=network.node("member"))
    outsider = await make_endpoint()  # encrypt_only: accepts anyone, but presents a self-signed certificate
    await refused(outsider, member, "certificate refused")
    await exchange(await make_endpoint(trust=network.node("friend")), member)  # still serving others


async def test_ca_node_refuses_to_dial_an_outsider(make_endpoint: MakeEndpoint, network: Network) -> None:
    member = await make_endpoint(trust=network.node("member"))
    outsider = await make_endpoint()
    with pytest.raises(qp2p.CertificateError):
        await member.connect_to(outsider.local_addr)
    assert outsider.stats().queued_messages == 0


async def test_certificate_from_another_ca_is_refused(make_endpoint: MakeEndpoint, network: Network) -> None:
    member = await make_endpoint(trust=network.node("member"))
    stranger = await make_endpoint(trust=network.node("stranger", issuer=tls.new_ca("another CA")))
    await refused(stranger, member, "certificate refused")


async def test_expired_certificate_is_refused(make_endpoint: MakeEndpoint, network: Network) -> None:
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    member = await make_endpoint(trust=network.node("member"))
    expired = await make_endpoint(trust=network.node("old", not_before=long_ago, days=10))
    await refused(expired, member, "certificate refused")
    with pytest.raises(qp2p.CertificateError):
        await member.connect_to(expired.local_addr)


async def test_pinned_peers(make_endpoint: MakeEndpoint, network: Network) -> None:
    files = {name: network.self_signed(name) for name in ("a", "b", "c")}
    prints = {name: tls.load_identity(*files[name]).fingerprint for name in files}
    a = await make_endpoint(trust=qp2p.Trust.pinned([prints["b"]], *files["a"]))
    b = await make_endpoint(trust=qp2p.Trust.pinned([prints["a"], prints["c"].upper()], *files["b"]))
    c = await make_endpoint(trust=qp2p.Trust.pinned([prints["a"]], *files["c"]))
    await exchange(a, b)  # each pins the other
    await refused(b, c, "not pinned")  # b pins c (letter case does not matter), but c pins only a
    await refused(c, a, "not pinned")  # c pins a, but a pins only b


async def test_a_client_without_a_certificate_is_refused(
    make_endpoint: MakeEndpoint, network: Network
) -> None:
    member = await make_endpoint(trust=network.node("member"))
    bare = QuicConfiguration(
        is_client=True, alpn_protocols=["qp2p"], verify_mode=ssl.CERT_NONE, server_name="qp2p"
    )
    host, port = member.local_addr
    # TLS 1.3 lets the client finish before the server judges it, so the refusal can only
    # show when the connection is used: the server never lets it in.
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(5), connect(host, port, configuration=bare) as client:
            await client.ping()
    assert member.connections() == [] and member.stats().failed_handshakes == 1


def test_trust_arguments_are_validated(network: Network) -> None:
    with pytest.raises(qp2p.ConfigError):
        qp2p.Trust.pinned([])
    with pytest.raises(qp2p.ConfigError):
        qp2p.Trust.pinned(["ab" * 31])
    with pytest.raises(qp2p.ConfigError):
        qp2p.Trust.encrypt_only(certfile="x.pem")
    with pytest.raises(qp2p.ConfigError):
        qp2p.Trust.ca(network.folder / "missing.pem", "a.pem", "a.key")
    with pytest.raises(qp2p.ConfigError):
        qp2p.Trust.ca(b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n", "a.pem", "a.key")
    with pytest.raises(qp2p.CertificateError):
        qp2p.Endpoint(qp2p.Config(trust=qp2p.Trust.private_ca(network.folder, "nobody")))


def test_ca_command_line(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-P", "-m", "qp2p", *args], capture_output=True, text=True, timeout=60
        )

    folder = tmp_path / "ca"
    assert run("ca", "init", str(folder)).returncode == 0
    issued = run("ca", "issue", "node1", "--dir", str(folder))
    assert issued.returncode == 0, issued.stderr
    for name in ("ca.pem", "ca.key", "node1.pem", "node1.key"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    identity = tls.load_identity(str(folder / "node1.pem"), str(folder / "node1.key"))
    assert f"fingerprint: {identity.fingerprint}" in issued.stdout
    tls.peer_check(qp2p.Trust.private_ca(folder, "node1"))(identity.certificate, [])  # chains to the CA
    assert run("ca", "issue", "node1", "--dir", str(folder)).returncode == 1  # never overwrites
    assert run("ca", "issue", "x", "--dir", str(tmp_path / "nowhere")).returncode == 1
    assert run("cert", "me", "--dir", str(tmp_path)).returncode == 0


def test_an_issued_certificate_never_outlives_its_ca() -> None:
    ca = tls.new_ca(days=30)
    node = tls.issue(ca, "node", days=36500).certificate
    assert node.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_certificates_name_only_qp2p() -> None:
    ca = tls.new_ca()
    for identity in (tls.self_signed_identity(), tls.issue(ca, "node")):
        names = identity.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [tls.SERVER_NAME] == ["qp2p"]
        assert len(list(names)) == 1


async def test_a_peer_without_a_certificate_is_refused_in_every_mode(make_endpoint: MakeEndpoint) -> None:
    victim = await make_endpoint()  # encrypt_only: any certificate, but one there must be
    anonymous = RoguePeer(victim.local_addr, handshake=False)
    anonymous.quic.configuration.certificate = anonymous.quic.configuration.private_key = None
    async with anonymous:
        await wait_until(lambda: anonymous.closed)
        assert "0x174" in anonymous.close_reason  # CRYPTO_ERROR + certificate_required (116)
    assert victim.stats().connections == 0 and victim.stats().failed_handshakes == 1
