"""Attacks on the control plane by a connected peer: forged relay circuits and unsolicited Punches.

Each test runs one attack with a rogue peer (tests/rogue.py) against a live endpoint V on
127.0.0.1 and asserts what V must do instead: believe no address a peer merely claims, name
every message by the certificate that sent it, never let a second link into a peer's
connection without that peer's certificate, probe nobody but the asker, and do bounded work
for Punches it never asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import test_bad_peers
from rogue import PeerRef, RoguePeer, Sinks, Tunnel, punch, ref_of, relay_incoming
from test_bad_peers import Service, assert_unharmed, digest
from waiting import wait_until

import qp2p
from qp2p import tls, wire

pytestmark = pytest.mark.usefixtures("no_leaks")
loop_errors = test_bad_peers.loop_errors  # a fixture: the tests below take it by name

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
Errors = list[dict[str, Any]]


class Seen(NamedTuple):
    """One message as the victim's application saw it, read while its connection was up."""

    data: bytes
    src: tuple[str, int]
    peer_id: str | None

    def __repr__(self) -> str:
        return f"({self.data!r} from {self.src[0]}:{self.src[1]} as {(self.peer_id or 'nobody')[:16]})"


def seen(service: Service, *payloads: bytes) -> list[Seen]:
    """Every message and request the victim's application received (carrying one of
    ``payloads``, if any are given): data, src and peer id."""
    return [
        Seen(bytes(m.data), m.src, m.peer_id)
        for m in service.messages + service.requests
        if not payloads or bytes(m.data) in payloads
    ]


async def settle(condition: Callable[[], object], timeout: float) -> bool:
    """Wait (``timeout`` s at most) for ``condition``; whether it held."""
    with contextlib.suppress(TimeoutError):
        await wait_until(condition, timeout)
    return bool(condition())


# ---- 1. a relayed connection claiming an address -------------------------------------------

SPOOFED = ("8.8.8.8", 53)


async def test_a_relayed_link_cannot_claim_an_address(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint()
    async with Service(victim) as service, RoguePeer(victim.local_addr) as rogue:
        inner = Tunnel(rogue, 7, SPOOFED, idle_timeout=5.0)  # a second certificate, a claimed address
        rogue.send(relay_incoming(SPOOFED, inner.ref, 7))
        inner.start()
        await settle(lambda: inner.established or inner.closed or inner.refused, 5)
        inner.send(wire.UserMessage(b"from the tunnel"))
        asked = inner.request(b"tunnel asks")
        await settle(lambda: inner.response(asked) is not None or inner.closed or inner.refused, 5)
        everything = seen(service)
    assert_unharmed(loop_errors, service)
    spoofed = [m for m in everything if m.src == SPOOFED]
    assert not spoofed, (
        f"V believed the address a relay claimed: {len(spoofed)} message(s) delivered with src "
        f"{SPOOFED}, all sent by {rogue.local_addr} through a circuit of its own: {spoofed}"
    )
    # A relayed message comes from the relay's address, as the certificate inside the circuit.
    assert all(m.src == rogue.local_addr and m.peer_id == inner.fingerprint for m in everything), (
        f"relayed by {rogue.local_addr} as {inner.fingerprint[:16]}: {everything}"
    )


# ---- 2. a second link taking over a peer's connection --------------------------------------


async def answer_to(connection: qp2p.Connection, data: bytes) -> bytes | str:
    """The answer to a request on ``connection`` within 2 s, or what went wrong instead."""
    try:
        return bytes(await connection.request(data, timeout=2))
    except qp2p.Error as exc:
        return f"{type(exc).__name__}: {exc}"


async def test_a_peer_connection_cannot_be_hijacked(make_endpoint: MakeEndpoint, loop_errors: Errors) -> None:
    # V dials P; the attacker's dial then wins V's tie-break between P's two links (the link
    # dialled by the lower endpoint id is kept) when P's id is below V's: order them so.
    first, second = await make_endpoint(), await make_endpoint()
    victim, peer = sorted((first, second), key=lambda e: ref_of(e).endpoint_id, reverse=True)
    async with Service(victim) as service, Service(peer) as peer_service:
        to_peer = await victim.connect_to(peer.local_addr)
        assert await to_peer.request(b"before", timeout=2) == digest(b"before")
        async with RoguePeer(victim.local_addr) as rogue:
            rogue.send(relay_incoming(peer.local_addr, ref_of(peer), 9), wire.EchoRequest())
            # V has read the RelayIncoming once it answers the echo after it (or it closed on us).
            await wait_until(lambda: rogue.controls(wire.EchoResponse) or rogue.closed)
            posing = RoguePeer(
                victim.local_addr, endpoint_id=ref_of(peer).endpoint_id, answer=b"forged", handshake=False
            )
            async with posing:  # a certificate of its own, and P's endpoint id in its Hello
                await settle(lambda: posing.established or posing.closed, 5)
                posing.send(wire.UserMessage(b"posing as P"))
                asked = posing.request(b"posing asks")
                await settle(lambda: posing.response(asked) is not None or posing.closed, 5)
                await to_peer.send(b"V to P")
                await settle(lambda: b"V to P" in posing.user_data() or peer_service.received_from(victim), 3)
                answer = await answer_to(to_peer, b"V asks P")
                stolen = posing.user_data()
                from_rogue = seen(service, b"posing as P", b"posing asks")
        got = peer_service.received_from(victim)
        after = await answer_to(to_peer, b"after")
    assert_unharmed(loop_errors, service)
    assert b"V to P" in got and not stolen and answer == digest(b"V asks P"), (
        f"hijacked: V's connection to P {peer.local_addr} went to the attacker {posing.local_addr}; "
        f"the attacker received {stolen}, P received {got}, V's request to P was answered {answer!r}"
    )
    impostors = [m for m in from_rogue if m.src == peer.local_addr or m.peer_id == peer.fingerprint]
    assert not impostors, f"the attacker's messages arrived as P's: {impostors}"
    assert after == digest(b"after"), f"V's request to P after the attack: {after!r}"


# ---- 3. pinned mode: a forged relayed link joining a pinned peer's connection ---------------


def pinned(folder: Path, names: tuple[str, ...]) -> dict[str, tuple[tls.Identity, qp2p.Trust]]:
    """An identity for each name, and a Trust pinning every other name's certificate."""
    identities = {}
    for name in names:
        identity = tls.self_signed_identity()
        tls.write_identity(identity, folder / f"{name}.pem", folder / f"{name}.key")
        identities[name] = identity
    return {
        name: (
            identity,
            qp2p.Trust.pinned(
                [other.fingerprint for n, other in identities.items() if n != name],
                str(folder / f"{name}.pem"),
                str(folder / f"{name}.key"),
            ),
        )
        for name, identity in identities.items()
    }


async def test_pinned_messages_carry_the_certificate_that_sent_them(
    make_endpoint: MakeEndpoint, loop_errors: Errors, tmp_path: Path
) -> None:
    members = pinned(tmp_path, ("v", "p", "m"))
    victim = await make_endpoint(trust=members["v"][1])
    peer = await make_endpoint(trust=members["p"][1])
    attacker = members["m"][0]
    async with Service(victim) as service:
        await peer.send_message(b"P is here", victim.local_addr)
        await wait_until(lambda: service.received_from(peer))
        async with RoguePeer(victim.local_addr, attacker) as rogue:  # a member, pinned by V
            inner = Tunnel(rogue, 11, peer.local_addr, attacker, idle_timeout=5.0)
            rogue.send(relay_incoming(peer.local_addr, ref_of(peer), 11))
            inner.start()
            await settle(lambda: inner.established or inner.closed or inner.refused, 5)
            inner.request(b"tunnel asks")
            inner.send(wire.UserMessage(b"injected"))  # after the request, on the same lane
            await settle(lambda: seen(service, b"injected") or inner.closed or inner.refused, 8)
            injected = seen(service, b"injected", b"tunnel asks")
    assert_unharmed(loop_errors, service)
    wrong = [m for m in injected if m.peer_id != attacker.fingerprint or m.src == peer.local_addr]
    assert not wrong, (
        f"M's messages were delivered as P's (P is {peer.local_addr[0]}:{peer.local_addr[1]} as "
        f"{peer.fingerprint[:16]}; M is {rogue.local_addr[0]}:{rogue.local_addr[1]} as "
        f"{attacker.fingerprint[:16]}): {wrong}"
    )


# ---- 4. a reachability probe redirected to a third party ------------------------------------


async def test_verification_probes_only_the_asker(make_endpoint: MakeEndpoint, loop_errors: Errors) -> None:
    victim = await make_endpoint(control_timeout=2.0)
    async with Service(victim) as service, Sinks(["127.0.0.5"]) as sinks:
        (third_party,) = sinks.addrs
        async with RoguePeer(victim.local_addr) as rogue:
            inner = Tunnel(rogue, 5, third_party, idle_timeout=5.0)
            rogue.send(relay_incoming(third_party, inner.ref, 5))
            inner.start()
            await settle(lambda: inner.established or inner.closed or inner.refused, 5)
            inner.send(wire.VerificationRequest(third_party))
            answered = await settle(
                lambda: inner.controls(wire.VerificationResponse) or inner.closed or inner.refused, 10
            )
            verdicts = [m.reachable for m in inner.controls(wire.VerificationResponse)]
    assert_unharmed(loop_errors, service)
    assert answered, "V neither answered the VerificationRequest nor refused the circuit within 10 s"
    assert sinks.bytes == 0, (
        f"V probed a third party for the rogue at {rogue.local_addr}: {sinks.bytes} bytes in "
        f"{sinks.datagrams} datagrams reached {third_party} (answer: {verdicts})"
    )
    assert True not in verdicts


# ---- 5. unsolicited Punches: reflection, amplification and exhaustion ------------------------

PUNCHES = 300
PUNCH_BATCH = 30  # Punches written at once: the first batch travels in one datagram today
HUGE_DELAY = 2**32 - 1  # ms: 49 days
NEWCOMER = 2  # what a legitimate newcomer's connection may add to the victim's load, at most
BOUND = 20  # what the Punches may add to it, at most, at any time


def stranger(number: int) -> PeerRef:
    """A peer id of nobody in particular, a different one for each Punch."""
    fingerprint = hashlib.sha256(number.to_bytes(4, "big")).hexdigest()
    return PeerRef.of(fingerprint)


def delay_for(number: int) -> int:
    """Every tenth Punch waits 49 days; the others go within a quarter of a second."""
    return HUGE_DELAY if number % 10 == 9 else number * 7 % 250


class Load:
    """Samples the victim's load every 10 ms while the test runs and keeps the peaks: event-loop
    tasks, QUIC connections (links), pooled connections, and punches under way."""

    def __init__(self, victim: qp2p.Endpoint) -> None:
        self.victim = victim
        self._task: asyncio.Task[None] | None = None
        self.base = self.now()
        self.peak = dict(self.base)

    def now(self) -> dict[str, int]:
        """The load now, from the victim's own counters and the event loop's tasks."""
        stats = self.victim.stats()
        return {
            "tasks": len(asyncio.all_tasks()),
            "links": stats.links,
            "connections": stats.connections,
            "punches": stats.punches,
        }

    def growth(self, of: dict[str, int]) -> dict[str, int]:
        return {name: value - self.base[name] for name, value in of.items()}

    async def _sample(self, seconds: float) -> None:
        for _ in range(int(seconds * 100)):
            for name, value in self.now().items():
                self.peak[name] = max(self.peak[name], value)
            await asyncio.sleep(0.01)

    @contextlib.contextmanager
    def sampling(self, seconds: float) -> Iterator[Load]:
        self._task = asyncio.create_task(self._sample(seconds))
        self.base = self.now()  # the sampler included
        self.peak = dict(self.base)
        try:
            yield self
        finally:
            self._task.cancel()


async def served(legit: qp2p.Endpoint, victim: qp2p.Endpoint) -> str:
    """Connect and have a request answered within 2 s: "" if so, else what went wrong."""
    try:
        async with asyncio.timeout(2):
            connection = await legit.connect_to(victim.local_addr)
            answer = await connection.request(b"legit", timeout=2)
    except (TimeoutError, qp2p.Error) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "" if answer == digest(b"legit") else f"wrong answer {answer!r}"


async def test_unsolicited_punches_do_bounded_work(make_endpoint: MakeEndpoint, loop_errors: Errors) -> None:
    limit = 200
    victim = await make_endpoint(
        max_connections=limit, idle_timeout=6.0, keep_alive_interval=2.0, connect_timeout=3.0
    )
    during, after = await make_endpoint(), await make_endpoint()  # legitimate peers
    hosts = [f"127.0.0.{i}" for i in range(2, 12)]
    async with (
        Service(victim) as service,
        Sinks(hosts, per_host=PUNCHES // len(hosts)) as sinks,
        RoguePeer(victim.local_addr) as rogue,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with Load(victim).sampling(seconds=20) as load:
            targets = sinks.addrs
            before = rogue.bytes_sent
            for first in range(0, PUNCHES, PUNCH_BATCH):
                datagrams = rogue.datagrams_sent
                rogue.send(
                    *(punch(targets[n], stranger(n), delay_for(n)) for n in range(first, first + PUNCH_BATCH))
                )
                if first == 0:
                    one = (rogue.datagrams_sent - datagrams, rogue.bytes_sent - before)
            rogue.send(wire.EchoRequest())  # answered once V has read every Punch before it
            await wait_until(lambda: rogue.controls(wire.EchoResponse) or rogue.closed)
            # Today the flood reaches the connection limit within the Punches' delays (250 ms) and
            # the spraying before each dial (100 ms): wait for that, then a newcomer must be served.
            await settle(lambda: load.growth(load.now())["links"] >= limit, 1.0)
            refused_during = await served(during, victim)
            flooded = load.growth(load.now())

            def settled() -> bool:  # the newcomer's connection aside
                now = load.growth(load.now())
                return max(now.values()) <= NEWCOMER

            calm = await settle(settled, max(1.0, started + 15 - loop.time()))
            left, took = load.growth(load.now()), loop.time() - started
            refused_after = await served(after, victim)
            peak = load.growth(load.peak)
            reflected, spent = sinks.bytes, rogue.bytes_sent
            first_batch = sum(sink.bytes for sink in sinks.all[:PUNCH_BATCH])
    assert_unharmed(loop_errors, service)
    figures = (
        f"V sent {reflected} bytes ({sinks.datagrams} datagrams, to {sinks.hit} sinks) for {spent} bytes "
        f"the rogue sent ({reflected / max(spent, 1):.0f}x); for the first {PUNCH_BATCH} Punches alone "
        f"({one[1]} bytes in {one[0]} datagram(s)) {first_batch} bytes; growth at peak {peak}, "
        f"when the newcomer came {flooded}, {took:.1f} s after the flood {left}; newcomer during the "
        f"flood: {refused_during or 'served'}; after: {refused_after or 'served'}"
    )
    problems = []
    if reflected > 3 * spent:
        problems.append("amplification above 3x")
    if refused_during or refused_after:
        problems.append("a legitimate peer was not served")
    if max(peak.values()) > BOUND:
        problems.append("unbounded growth")
    if not calm:
        problems.append("no return to baseline")
    assert not problems, f"{', '.join(problems)}: {figures}"


# ---- 5b. a patient coordinator, paying or not ----------------------------------------------

PACED = 4  # Punches sent one after the other, each once the last is over


@pytest.mark.parametrize("pays", [False, True], ids=["unpadded", "padded"])
async def test_a_paced_coordinator_gets_at_most_three_times_what_it_sends(
    make_endpoint: MakeEndpoint, loop_errors: Errors, pays: bool
) -> None:
    # Spacing its Punches so that no limit of "how many at once" or "how many in a row" ever
    # bites, the coordinator still gets back no more than three times the bytes it sent.
    victim = await make_endpoint()
    async with (
        Service(victim) as service,
        Sinks(["127.0.0.2"], per_host=PACED) as sinks,
        RoguePeer(victim.local_addr) as rogue,
    ):
        for n in range(PACED):
            padding = bytes(2501 if pays else 0)
            rogue.send(punch(sinks.addrs[n], stranger(n), 0, padding))
            rogue.send(wire.EchoRequest())  # answered once V has read the Punch before it
            await wait_until(lambda n=n: len(rogue.controls(wire.EchoResponse)) > n or rogue.closed)
            await wait_until(lambda: victim.stats().punches == 0, timeout=5)
        reflected, spent = sinks.bytes, rogue.bytes_sent
        refused = victim.stats().refusals.get("punch beyond three times the coordinator's bytes", 0)
    assert_unharmed(loop_errors, service)
    assert reflected <= 3 * spent, f"V sent {reflected} bytes to the sinks for the {spent} the rogue sent"
    assert sinks.hit >= (PACED - 1 if pays else 0) and (refused == 0 if pays else refused >= PACED - 1)


# ---- 6. what else a connected peer may ask, each past its bound -----------------------------


async def test_echo_answers_stay_within_the_budget(make_endpoint: MakeEndpoint, loop_errors: Errors) -> None:
    victim = await make_endpoint()
    async with Service(victim) as service, RoguePeer(victim.local_addr) as rogue:
        rogue.send(*(wire.EchoRequest() for _ in range(50)))
        marker = rogue.request(b"after the echoes")  # answered once V has read all fifty
        await wait_until(lambda: rogue.response(marker) is not None or rogue.closed)
        answered = len(rogue.controls(wire.EchoResponse))
        refused = victim.stats().refusals.get("echo rate", 0)
    assert_unharmed(loop_errors, service)
    assert answered <= 9 and answered + refused == 50, (answered, refused)  # 8, one refilled at most


async def test_circuits_announced_to_us_stay_within_the_bound(
    make_endpoint: MakeEndpoint, loop_errors: Errors
) -> None:
    victim = await make_endpoint()
    async with Service(victim) as service, RoguePeer(victim.local_addr) as rogue:
        rogue.send(*(relay_incoming(("127.0.0.9", 9), PeerRef.of("e" * 64), n) for n in range(1, 21)))
        marker = rogue.request(b"after the circuits")
        await wait_until(lambda: rogue.response(marker) is not None or rogue.closed)
        # Four through one relay are taken; each of the rest is refused with a RelayClose.
        assert sorted(rogue.relay_closed) == list(range(5, 21))
    assert_unharmed(loop_errors, service)


async def test_control_messages_before_the_hello_are_bounded(make_endpoint: MakeEndpoint) -> None:
    victim = await make_endpoint()
    early = tuple(wire.EchoRequest() for _ in range(17))  # one past what may come before a Hello
    async with RoguePeer(victim.local_addr, before_hello=early, handshake=False) as rogue:
        await wait_until(lambda: rogue.closed, timeout=5)
        assert "0x10" in rogue.close_reason and not rogue.controls(wire.EchoResponse)
        assert victim.stats().connections == 0
    async with RoguePeer(victim.local_addr, before_hello=early[:16]) as patient:  # within the bound
        await wait_until(lambda: len(patient.controls(wire.EchoResponse)) == 8, timeout=5)
