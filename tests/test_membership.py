"""The membership decider without sockets: echo, verification and peer exchange answer only
about what the link observed, each within a budget per peer."""

from __future__ import annotations

from qp2p import Config, wire
from qp2p._decisions import Peer, Send
from qp2p.membership import PEERS_BUDGET, Membership, Probe

A = "a" * 64
ADDR = ("198.51.100.1", 1000)
ASKER = Peer("la", A, ADDR)


def test_echo_is_the_observed_address_and_never_over_a_relay() -> None:
    rules = Membership(Config())
    assert rules.request(ASKER, wire.EchoRequest(), 0.0) == Send("la", wire.EchoResponse(ADDR))
    assert rules.request(Peer("lr", A, ADDR, relayed=True), wire.EchoRequest(), 0.0) is None


def test_verification_only_of_the_askers_own_ip_one_at_a_time() -> None:
    rules = Membership(Config())
    no = Send("la", wire.VerificationResponse(False))
    assert rules.request(ASKER, wire.VerificationRequest(("203.0.113.5", 1000)), 0.0) == no
    relayed = Peer("la", A, ADDR, relayed=True)
    assert rules.request(relayed, wire.VerificationRequest(ADDR), 0.0) == no
    probe = rules.request(ASKER, wire.VerificationRequest(("198.51.100.1", 4444)), 0.0)
    assert probe == Probe(ASKER, ("198.51.100.1", 4444))
    assert rules.request(ASKER, wire.VerificationRequest(ADDR), 0.0) == no  # one check at a time
    assert isinstance(probe, Probe)
    answer, changed = rules.probe_done(probe, A, 0.0)
    assert answer == Send("la", wire.VerificationResponse(True)) and not changed  # not joined: no cache


def test_a_check_caches_only_the_peer_that_asked() -> None:
    rules = Membership(Config())
    rules.active = True
    probe = rules.request(ASKER, wire.VerificationRequest(ADDR), 0.0)
    assert isinstance(probe, Probe)
    _, changed = rules.probe_done(probe, "f" * 64, 0.0)  # someone else answered there
    assert not changed and ADDR not in rules.cache
    probe = rules.request(ASKER, wire.VerificationRequest(ADDR), 0.0)
    assert isinstance(probe, Probe)
    assert rules.probe_done(probe, A, 0.0)[1] and rules.cache.get(ADDR).fingerprint == A  # type: ignore[union-attr]


def test_peer_exchange_within_a_budget() -> None:
    rules = Membership(Config())
    rules.cache.reachable(("198.51.100.7", 7), 0.0, "7" * 64)
    answers = [rules.request(ASKER, wire.PeersRequest(32), 0.0) for _ in range(10)]
    burst, interval = PEERS_BUDGET
    assert sum(answer is not None for answer in answers) == burst
    assert answers[0] == Send("la", wire.PeersResponse(((("198.51.100.7", 7), "7" * 64),)))
    assert rules.request(ASKER, wire.PeersRequest(32), interval) is not None
    assert rules.refusals["peers rate"] == 10 - burst


def test_only_nodes_we_dialled_directly_enter_the_cache() -> None:
    rules = Membership(Config())
    rules.active = True
    assert not rules.connected(ASKER, dialled=False, seconds=0.1, wall_time=0.0)
    assert not rules.connected(Peer("lr", A, ADDR, relayed=True), dialled=True, seconds=0.1, wall_time=0.0)
    assert not rules.connected(Peer("la", A, ADDR, node=False), dialled=True, seconds=0.1, wall_time=0.0)
    assert rules.connected(ASKER, dialled=True, seconds=0.1, wall_time=0.0) and ADDR in rules.cache


def test_a_busy_node_queues_checks_instead_of_calling_the_askers_unreachable() -> None:
    """Many nodes joining through one contact: the checks past its four places wait their turn
    (a bounded queue), and only past that are they refused."""
    from qp2p.membership import CHECKS_AT_ONCE, CHECKS_QUEUED

    rules = Membership(Config())
    askers = [Peer(f"l{i}", f"{i:064x}", (f"198.51.100.{i + 1}", 1000)) for i in range(20)]
    decisions = [rules.request(p, wire.VerificationRequest(p.addr), 0.0) for p in askers]
    running = [d for d in decisions if isinstance(d, Probe)]
    assert len(running) == CHECKS_AT_ONCE
    assert decisions[CHECKS_AT_ONCE : CHECKS_AT_ONCE + CHECKS_QUEUED] == [None] * CHECKS_QUEUED  # queued
    refused = decisions[CHECKS_AT_ONCE + CHECKS_QUEUED :]
    assert refused and all(
        isinstance(d, Send) and d.message == wire.VerificationResponse(False) for d in refused
    )
    assert rules.next_probe() is None  # every place is taken
    started = []
    for probe in running:
        rules.probe_done(probe, probe.peer.peer_id, 0.0)
        started.append(rules.next_probe())
    # Each freed place goes to the longest waiting, in order; the rest follow as those end.
    assert [p.peer for p in started if p is not None] == askers[CHECKS_AT_ONCE : 2 * CHECKS_AT_ONCE]
    queued = askers[CHECKS_AT_ONCE]
    assert rules.request(queued, wire.VerificationRequest(queued.addr), 1.0) == Send(
        queued.link, wire.VerificationResponse(False)
    )  # its check is under way: one at a time
