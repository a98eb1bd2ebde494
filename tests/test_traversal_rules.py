"""The traversal decider without sockets or clocks: every rule and bound of punching and relaying."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from qp2p import wire
from qp2p._decisions import Peer, Send
from qp2p.nat import traversal as t
from qp2p.nat.behaviour import Mapping, NatBehaviour

A, B, R = "a" * 64, "b" * 64, "c" * 64
ADDR_A, ADDR_B, ADDR_R = ("198.51.100.1", 1000), ("198.51.100.2", 2000), ("198.51.100.3", 3000)


# Bytes a coordinator must have sent us for this many punches we did not ask for.
PAID = 100 * t.UNSOLICITED_COST


def peer(
    peer_id: str,
    addr: tuple[str, int],
    link: str,
    rtt: float = 0.05,
    relayed: bool = False,
    received: int = PAID,
) -> Peer:
    return Peer(link, peer_id, addr, rtt, relayed, received=received)


ASKER, TARGET, COORD = peer(A, ADDR_A, "la", 0.02), peer(B, ADDR_B, "lb", 0.1), peer(R, ADDR_R, "lr")


def test_coordinator_names_each_side_by_proven_id_and_observed_address() -> None:
    rules = t.Traversal()
    # The asker names an address of its choosing; the Punch carries what the coordinator saw.
    sends = rules.punch_request(ASKER, wire.PunchRequest(("203.0.113.9", 9)), TARGET, now=0.0)
    assert sends == [
        Send("la", wire.Punch(ADDR_B, B, 40)),  # (0.1 - 0.02) / 2 s later than the nearer side
        Send("lb", wire.Punch(ADDR_A, A, 0, padding=bytes(t.PUNCH_PADDING))),  # B did not ask: we pay
    ]


def test_coordinator_refuses_without_a_target_over_a_relay_or_past_the_budget() -> None:
    rules = t.Traversal()
    failed = [Send("la", wire.PunchFailed(ADDR_B))]
    assert rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), None, 0.0) == failed
    relayed = peer(A, ADDR_A, "la", relayed=True)
    assert rules.punch_request(relayed, wire.PunchRequest(ADDR_B), TARGET, 0.0) == failed
    assert (
        rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), peer(B, ADDR_B, "lb", relayed=True), 0.0)
        == failed
    )
    rules, limits = t.Traversal(), t.TraversalLimits()
    answered = sum(
        len(rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), TARGET, 1.0)) == 2 for _ in range(50)
    )
    assert answered == limits.requests_burst
    assert (
        len(rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), TARGET, 1.0 + limits.requests_interval))
        == 2
    )


def test_a_solicited_punch_opens_a_path_with_a_capped_delay() -> None:
    rules = t.Traversal()
    path = rules.punch(COORD, wire.Punch(ADDR_B, B, 2**32 - 1), solicited=True, now=10.0)
    assert path is not None
    assert (path.addr, path.peer_id) == (ADDR_B, B)
    assert path.at == 10.0 + rules.limits.max_delay and path.until == path.at + t.PUNCH_TIMEOUT
    assert rules.punches == 1 and rules.punching(B, path.until)
    rules.punch_over(path.punch, succeeded=False)
    assert rules.punches == 0
    assert rules.punching(B, path.until + t.LABEL_GRACE - 0.1) and not rules.punching(
        B, path.until + t.LABEL_GRACE
    )


def test_punches_are_counted_as_they_start_and_end() -> None:
    rules = t.Traversal()
    paths = [rules.punch(COORD, wire.Punch(ADDR_B, B, 0), solicited=True, now=0.0) for _ in range(3)]
    assert rules.punch(COORD, wire.Punch(ADDR_B, wire.ANY_PEER, 0), True, 0.0) is None  # refused: not started
    first, second, _ = (path.punch for path in paths if path is not None)
    rules.punch_over(first, succeeded=True)
    rules.punch_over(second, succeeded=False)
    assert (rules.punches_started, rules.punches_succeeded, rules.punches_failed, rules.punches) == (
        3,
        1,
        1,
        1,
    )


def test_a_punch_must_name_another_peer() -> None:
    rules = t.Traversal()
    assert rules.punch(COORD, wire.Punch(ADDR_B, wire.ANY_PEER, 0), True, 0.0) is None
    assert rules.punch(COORD, wire.Punch(ADDR_B, R, 0), True, 0.0) is None
    assert rules.refusals["punch names no other peer"] == 2


def test_unsolicited_punches_one_at_a_time_per_coordinator_within_a_budget() -> None:
    rules = t.Traversal(t.TraversalLimits(unsolicited_per_coordinator=1))
    limits = rules.limits
    first = rules.punch(COORD, wire.Punch(ADDR_B, B, 0), solicited=False, now=0.0)
    assert first is not None
    assert rules.punch(COORD, wire.Punch(ADDR_A, A, 0), solicited=False, now=0.0) is None  # one at a time
    other = peer("d" * 64, ("198.51.100.4", 4), "ld")
    assert rules.punch(other, wire.Punch(ADDR_A, A, 0), solicited=False, now=0.0) is not None
    rules.punch_over(first.punch, succeeded=False)
    taken = 1
    for _ in range(50):  # back to back: the burst, then nothing until the bucket refills
        path = rules.punch(COORD, wire.Punch(ADDR_B, B, 0), solicited=False, now=0.0)
        if path is not None:
            taken += 1
            rules.punch_over(path.punch, succeeded=False)
    assert taken == limits.unsolicited_burst
    later = rules.punch(COORD, wire.Punch(ADDR_B, B, 0), solicited=False, now=limits.unsolicited_interval)
    assert later is not None


def test_punches_in_flight_are_capped_and_expire() -> None:
    rules = t.Traversal()
    limits = rules.limits
    coordinators = [
        peer(f"{n:064x}", ("198.51.100.9", n + 1), f"l{n}") for n in range(limits.punches_in_flight + 4)
    ]
    paths = [rules.punch(c, wire.Punch(ADDR_B, B, 0), solicited=False, now=0.0) for c in coordinators]
    assert sum(p is not None for p in paths) == limits.punches_in_flight
    assert rules.refusals["too many punches at once"] == 4
    rules.expire(t.PUNCH_TIMEOUT)  # over, but an answered dial may still get its extra time
    assert rules.punches == limits.punches_in_flight
    rules.expire(2 * t.PUNCH_TIMEOUT)  # that too is over: the table empties by itself
    assert rules.punches == 0


def test_relay_opens_a_circuit_and_forwards_both_ways() -> None:
    rules = t.Traversal()
    sends = rules.relay_open(
        ASKER, wire.RelayOpen(("203.0.113.9", 9), wire.ANY_PEER, 7), TARGET, 0.0, serving=True
    )
    assert len(sends) == 1 and sends[0].link == "lb"
    incoming = sends[0].message
    assert isinstance(incoming, wire.RelayIncoming)
    assert (incoming.peer, incoming.peer_id) == (ADDR_A, A)  # observed, proven: never claimed
    assert rules.circuits == 1
    assert rules.relay("la", wire.RelayData(7, b"x"), 0.0) == [
        Send("lb", wire.RelayData(incoming.circuit, b"x"))
    ]
    assert rules.relay("lb", wire.RelayData(incoming.circuit, b"y"), 0.0) == [
        Send("la", wire.RelayData(7, b"y"))
    ]
    assert rules.relay("la", wire.RelayData(8, b"x"), 0.0) is None  # not a circuit of ours
    assert rules.relay("lb", wire.RelayClose(incoming.circuit), 0.0) == [Send("la", wire.RelayClose(7))]
    assert rules.circuits == 0
    assert (rules.circuits_opened, rules.relayed_bytes) == (1, 2)  # totals: they outlive the circuit


def test_relay_limits_circuits_per_peer_and_bytes_per_circuit() -> None:
    rules = t.Traversal(t.TraversalLimits(relay_circuits_per_peer=2, relay_bytes=10, requests_burst=100))
    opened = [
        rules.relay_open(ASKER, wire.RelayOpen(ADDR_B, B, n), TARGET, 0.0, serving=True) for n in range(4)
    ]
    assert [type(sends[0].message) for sends in opened] == [wire.RelayIncoming] * 2 + [wire.RelayClose] * 2
    assert rules.relay("la", wire.RelayData(0, b"12345"), 0.0) is not None
    closed = rules.relay("la", wire.RelayData(0, b"123456"), 0.0)
    assert closed is not None and all(isinstance(send.message, wire.RelayClose) for send in closed)
    assert rules.circuits == 1
    assert (rules.circuits_opened, rules.relayed_bytes) == (2, 5)  # the one past the budget was not carried


def open_circuit(rules: t.Traversal, number: int, now: float = 0.0) -> int:
    """Open circuit ``number`` from ASKER to TARGET; the number TARGET knows it by."""
    (incoming,) = rules.relay_open(ASKER, wire.RelayOpen(ADDR_B, B, number), TARGET, now, serving=True)
    assert isinstance(incoming.message, wire.RelayIncoming)
    return incoming.message.circuit


def test_a_relay_that_does_not_serve_refuses_every_circuit() -> None:
    rules = t.Traversal()
    sends = rules.relay_open(ASKER, wire.RelayOpen(ADDR_B, B, 7), TARGET, 0.0, serving=False)
    assert sends == [Send("la", wire.RelayClose(7))] and rules.circuits == 0
    assert rules.refusals["relay_off"] == 1


def test_one_peer_holds_at_most_its_share_of_circuits() -> None:
    rules = t.Traversal(t.TraversalLimits(relay_circuits=4, relay_circuits_per_peer=2, requests_burst=100))
    for number in range(2):
        open_circuit(rules, number)
    refused = rules.relay_open(ASKER, wire.RelayOpen(ADDR_B, B, 2), TARGET, 0.0, serving=True)
    assert refused == [Send("la", wire.RelayClose(2))] and rules.refusals["relay_circuits_per_peer"] == 1
    other = peer(B, ADDR_B, "lb")  # another peer still gets a circuit, to ASKER
    (incoming,) = rules.relay_open(other, wire.RelayOpen(ADDR_A, A, 9), ASKER, 0.0, serving=True)
    assert isinstance(incoming.message, wire.RelayIncoming) and rules.circuits == 3


def test_successive_circuits_share_the_openers_byte_budget() -> None:
    limits = t.TraversalLimits(relay_bytes_per_peer=1000, relay_window=10.0, requests_burst=100)
    rules = t.Traversal(limits)
    carried = 0
    for number in range(10):  # each circuit carries up to 400 bytes, then a new one is opened
        open_circuit(rules, number)
        for _ in range(2):
            sends = rules.relay("la", wire.RelayData(number, bytes(200)), 0.0) or []
            carried += sum(200 for send in sends if isinstance(send.message, wire.RelayData))
        rules.relay("la", wire.RelayClose(number), 0.0)
    assert carried == 1000 and rules.refusals["relay_bytes_per_peer"] >= 1
    theirs = open_circuit(rules, 99, now=5.0)  # half a window later, half the budget is back
    assert rules.relay("lb", wire.RelayData(theirs, bytes(500)), 5.0) == [
        Send("la", wire.RelayData(99, bytes(500)))
    ]
    closed = rules.relay("lb", wire.RelayData(theirs, bytes(1)), 5.0)  # the opener pays both ways
    assert closed == [Send("la", wire.RelayClose(99)), Send("lb", wire.RelayClose(theirs))]


def test_an_idle_circuit_is_closed_on_both_sides() -> None:
    rules = t.Traversal(t.TraversalLimits(relay_idle=30.0, requests_burst=100))
    quiet = open_circuit(rules, 1)
    busy = open_circuit(rules, 2)
    assert rules.next_idle_check() == 30.0 and rules.idle_circuits(29.0) == []
    rules.relay("la", wire.RelayData(2, b"x"), 20.0)
    assert rules.idle_circuits(30.0) == [Send("la", wire.RelayClose(1)), Send("lb", wire.RelayClose(quiet))]
    assert rules.circuits == 1 and rules.next_idle_check() == 50.0
    assert rules.idle_circuits(50.0) == [Send("la", wire.RelayClose(2)), Send("lb", wire.RelayClose(busy))]
    assert rules.circuits == 0 and rules.next_idle_check() is None and rules.refusals["relay_idle"] == 2


def test_a_relayed_peer_takes_circuits_naming_a_peer_within_bounds() -> None:
    rules = t.Traversal(t.TraversalLimits(relayed_paths_per_relay=2))
    assert not rules.relay_incoming(COORD, wire.RelayIncoming(ADDR_A, wire.ANY_PEER, 1))
    assert not rules.relay_incoming(COORD, wire.RelayIncoming(ADDR_A, R, 1))  # the relay itself
    assert rules.relay_incoming(COORD, wire.RelayIncoming(ADDR_A, A, 1))
    assert not rules.relay_incoming(COORD, wire.RelayIncoming(ADDR_A, A, 1))  # a number in use
    assert rules.relay_incoming(COORD, wire.RelayIncoming(ADDR_A, A, 2))
    assert not rules.relay_incoming(COORD, wire.RelayIncoming(ADDR_A, A, 3))  # the relay's share
    assert rules.path_peer("lr", 1) == A
    sends, ours = rules.link_closed("lr")
    assert sends == [] and sorted(ours) == [1, 2] and rules.path_peer("lr", 1) is None


def test_a_closed_link_ends_the_circuits_through_it() -> None:
    rules = t.Traversal()
    (incoming,) = rules.relay_open(ASKER, wire.RelayOpen(ADDR_B, B, 7), TARGET, 0.0, serving=True)
    assert isinstance(incoming.message, wire.RelayIncoming)
    sends, ours = rules.link_closed("la")
    assert sends == [Send("lb", wire.RelayClose(incoming.message.circuit))] and ours == []
    assert rules.circuits == 0


def test_an_unsolicited_punch_costs_at_most_three_times_what_the_coordinator_sent() -> None:
    rules = t.Traversal(t.TraversalLimits(unsolicited_burst=100))
    # A handshake's worth of bytes pays for no punch; each padded Punch pays for one.
    received = 2000
    coordinator = peer(R, ADDR_R, "lr", received=received)
    assert rules.punch(coordinator, wire.Punch(ADDR_B, B, 0), solicited=False, now=0.0) is None
    assert rules.refusals["punch beyond three times the coordinator's bytes"] == 1
    allowed = 0
    for n in range(20):
        received += t.PUNCH_PADDING + 100  # the padded Punch, its frame and packet
        path = rules.punch(
            peer(R, ADDR_R, "lr", received=received), wire.Punch(ADDR_B, B, 0), False, float(n)
        )
        if path is not None:
            allowed += 1
            rules.punch_over(path.punch, succeeded=False)
        assert allowed * t.UNSOLICITED_COST <= 3 * received
    assert allowed >= 19  # the first padded Punch tops up what the handshake left
    assert (
        rules.punch(coordinator, wire.Punch(ADDR_B, B, 0), solicited=True, now=99.0) is not None
    )  # asked for
    rules.link_closed("lr")  # what a link paid ends with it
    assert (
        rules.punch(peer(R, ADDR_R, "lr", received=received), wire.Punch(ADDR_B, B, 0), False, 100.0)
        is not None
    )


# ---- port prediction and fresh ports -----------------------------------------------------------

HARD = NatBehaviour(Mapping.DEPENDENT)
EASY = NatBehaviour(Mapping.INDEPENDENT, port_kept=True)
OPEN = NatBehaviour(Mapping.INDEPENDENT, open=True, port_kept=True)


def reported(rules: t.Traversal, asker: NatBehaviour, target: NatBehaviour) -> t.Traversal:
    rules.nat_report(ASKER, wire.NatReport(asker.flags()))
    rules.nat_report(TARGET, wire.NatReport(target.flags()))
    return rules


def modes(sends: list[Send]) -> list[int]:
    return [send.message.mode for send in sends if isinstance(send.message, wire.Punch)]


def test_a_hard_nat_facing_an_easy_one_fans_out_while_the_easy_side_probes() -> None:
    for asker, target, expected in (
        (HARD, EASY, [wire.PUNCH_FAN_OUT, wire.PUNCH_PROBE]),
        (EASY, HARD, [wire.PUNCH_PROBE, wire.PUNCH_FAN_OUT]),
    ):
        rules = reported(t.Traversal(), asker, target)
        sends = rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), TARGET, 0.0)
        assert modes(sends) == expected
        # The target did not ask: the coordinator pays for its part of the birthday punch too.
        punch = sends[1].message
        assert isinstance(punch, wire.Punch)
        assert len(punch.padding) == t.MODE_COST[expected[1]] // 3 + 100 > t.PUNCH_PADDING


def test_every_other_pair_and_anything_unreported_punches_plainly() -> None:
    unknown = NatBehaviour()
    for asker, target in (
        (HARD, HARD),
        (EASY, EASY),
        (HARD, OPEN),
        (OPEN, HARD),
        (unknown, HARD),
        (EASY, unknown),
    ):
        rules = reported(t.Traversal(), asker, target)
        sends = rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), TARGET, 0.0)
        assert modes(sends) == [wire.PUNCH_PLAIN] * 2, (asker, target)
        assert sends[1].message == wire.Punch(ADDR_A, A, 0, padding=bytes(t.PUNCH_PADDING))


def test_a_report_lasts_as_long_as_its_link_and_never_over_a_relay() -> None:
    rules = reported(t.Traversal(), HARD, EASY)
    rules.link_closed("lb")  # the target's link ended: what it reported is forgotten
    assert modes(rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), TARGET, 0.0)) == [wire.PUNCH_PLAIN] * 2
    relayed = peer(B, ADDR_B, "lb", relayed=True)
    rules.nat_report(relayed, wire.NatReport(EASY.flags()))
    assert rules.refusals["nat report over a relayed link"] == 1
    assert modes(rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), TARGET, 0.0)) == [wire.PUNCH_PLAIN] * 2


def test_a_fresh_port_is_named_on_the_askers_observed_address_only() -> None:
    rules = t.Traversal()
    sends = rules.punch_request(ASKER, wire.PunchRequest(ADDR_B, B, 40000), TARGET, 0.0)
    punch = sends[1].message
    assert isinstance(punch, wire.Punch) and punch.peer == (ADDR_A[0], 40000)
    assert sends[0].message == wire.Punch(ADDR_B, B, 40)  # the asker is told the target as seen


def test_a_birthday_mode_is_carried_out_only_by_the_side_it_fits_and_one_at_a_time() -> None:
    rules = t.Traversal()
    asked = wire.Punch(ADDR_B, B, 0, wire.PUNCH_PROBE)
    path = rules.punch(COORD, asked, solicited=True, now=0.0)
    assert path is not None and path.mode == wire.PUNCH_PLAIN  # we know nothing of our NAT: plain
    assert path.until == t.PUNCH_TIMEOUT
    rules.behaviour = EASY
    path = rules.punch(COORD, asked, solicited=True, now=0.0)
    assert path is not None and path.mode == wire.PUNCH_PROBE and path.until == t.BIRTHDAY_TIMEOUT
    assert len(path.ports) == t.PROBES
    assert (
        rules.punch(COORD, wire.Punch(ADDR_A, A, 0, wire.PUNCH_FAN_OUT), True, 0.0).mode == wire.PUNCH_PLAIN
    )  # type: ignore[union-attr]
    again = rules.punch(COORD, wire.Punch(ADDR_A, A, 0, wire.PUNCH_PROBE), True, 0.0)
    assert again is not None and again.mode == wire.PUNCH_PLAIN  # one birthday at a time
    assert rules.refusals["a birthday punch is under way"] == 1
    rules.punch_over(path.punch, succeeded=False)
    rules.behaviour = HARD
    fan = rules.punch(COORD, wire.Punch(ADDR_A, A, 0, wire.PUNCH_FAN_OUT), True, 0.0)
    assert fan is not None and fan.mode == wire.PUNCH_FAN_OUT and fan.ports == ()
    unknown = rules.punch(COORD, wire.Punch(ADDR_A, A, 0, 7), True, 0.0)
    assert unknown is not None and unknown.mode == wire.PUNCH_PLAIN


def test_an_unsolicited_birthday_costs_the_coordinator_its_probes() -> None:
    rules = t.Traversal()
    rules.behaviour = EASY
    probe = wire.Punch(ADDR_B, B, 0, wire.PUNCH_PROBE)
    # Enough bytes for a plain punch, not for a probing one: refused, not downgraded.
    poor = peer(R, ADDR_R, "lr", received=t.UNSOLICITED_COST)
    assert rules.punch(poor, probe, solicited=False, now=0.0) is None
    assert rules.refusals["punch beyond three times the coordinator's bytes"] == 1
    rich = peer(R, ADDR_R, "lr2", received=t.MODE_COST[wire.PUNCH_PROBE] // 3 + 1)
    path = rules.punch(rich, probe, solicited=False, now=0.0)
    assert path is not None and path.mode == wire.PUNCH_PROBE


@settings(max_examples=200, deadline=None)
@given(observed=st.integers(0, 65535), seed=st.integers(0, 2**32))
def test_probe_ports_are_bounded_distinct_in_range_and_start_after_the_observed_port(
    observed: int, seed: int
) -> None:
    ports = t.probe_ports(observed, random.Random(seed))
    low, high = t.PORTS
    assert len(ports) == t.PROBES == len(set(ports))
    assert all(low <= port <= high and port != observed for port in ports)
    following = [
        port for port in range(observed + 1, observed + 1 + t.SEQUENTIAL_PROBES) if low <= port <= high
    ]
    # Every other probe, from the first, is the next port after the observed one, in order.
    assert list(ports[: 2 * len(following) : 2]) == following


def test_a_punch_holds_its_place_through_the_extra_time_an_answered_dial_gets() -> None:
    rules = t.Traversal()
    rules.behaviour = EASY
    path = rules.punch(COORD, wire.Punch(ADDR_B, B, 0, wire.PUNCH_PROBE), True, 0.0)
    assert path is not None and path.mode == wire.PUNCH_PROBE
    # Past its end, the endpoint may still wait for an answered dial: no second birthday yet.
    during = rules.punch(COORD, wire.Punch(ADDR_A, A, 0, wire.PUNCH_PROBE), True, path.until + 1.0)
    assert during is not None and during.mode == wire.PUNCH_PLAIN
    after = rules.punch(COORD, wire.Punch(ADDR_A, A, 0, wire.PUNCH_PROBE), True, path.until + t.PUNCH_TIMEOUT)
    assert after is not None and after.mode == wire.PUNCH_PROBE


def test_a_birthday_we_asked_for_goes_only_to_the_host_we_asked_for() -> None:
    rules = t.Traversal()
    rules.behaviour = EASY
    elsewhere = wire.Punch(("203.0.113.7", 4000), B, 0, wire.PUNCH_PROBE)
    path = rules.punch(COORD, elsewhere, True, 0.0, asked=ADDR_B)
    assert path is not None and path.mode == wire.PUNCH_PLAIN and path.ports == ()
    assert rules.refusals["birthday punch towards another host than asked"] == 1
    # Another port of the host we asked for is what a symmetric NAT looks like: allowed.
    same_host = wire.Punch((ADDR_B[0], 4000), B, 0, wire.PUNCH_PROBE)
    path = rules.punch(COORD, same_host, True, 0.0, asked=ADDR_B)
    assert path is not None and path.mode == wire.PUNCH_PROBE


def test_an_asker_gets_few_birthday_punches_and_plain_ones_after() -> None:
    rules, limits = reported(t.Traversal(), HARD, EASY), t.TraversalLimits()
    got = [modes(rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), TARGET, 0.0)) for _ in range(4)]
    birthday = [wire.PUNCH_FAN_OUT, wire.PUNCH_PROBE]
    assert got == [birthday] * limits.birthdays_burst + [[wire.PUNCH_PLAIN] * 2] * (
        4 - limits.birthdays_burst
    )
    assert rules.refusals["birthday punch rate"] == 4 - limits.birthdays_burst
    later = rules.punch_request(ASKER, wire.PunchRequest(ADDR_B), TARGET, limits.birthdays_interval)
    assert modes(later) == birthday
