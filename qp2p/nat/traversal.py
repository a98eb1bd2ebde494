"""Hole punching and relaying, decided without I/O, in all three roles: the side that asks, the
side asked for, and the node both are connected to (the coordinator, and the relay when
punching fails).

Like ``Session``, ``Traversal`` never touches a socket or a clock: its inputs are control
messages together with what the link they came on proved and observed (``Peer``: the peer id
TLS authenticated, the address packets come from, the smoothed RTT) and the time; its outputs
are actions (``Send`` this control message on that link, ``OpenPath`` towards a peer at a
moment). The endpoint carries them out. Every claim a peer makes is bounded here: who may make
us punch, how often, how soon, how many at once, and how many circuits anyone may hold.

Punching (DCUtR-like). A asks the coordinator R for a peer (by the address R sees it at, or
by peer id). R answers both sides with a ``Punch`` naming the other by its peer id and by the
address R observed for it, never one the asker chose, each held back so both act at the same
moment. Each side sprays a few datagrams at the other's address (to open its own NAT) and
dials it, refusing any certificate but the named peer's. A ``Punch`` we did not ask for is a
coordinator asking us to send packets to an address: it is rate-limited per coordinator, its
delay capped, and at most a few are in flight at once.

Port prediction (the "birthday" punch). A symmetric NAT gives the peer a port the coordinator
never saw, and a port-restricted NAT facing it lets in only ports it sent to: neither plain
punch opens that pair. When one side reports an endpoint-dependent mapping (hard) and the other
an endpoint-independent one (easy), the coordinator tells the hard side to send from
``FAN_OUT_PORTS`` fresh sockets towards the easy side (opening as many mappings) and the easy
side to probe ``PROBES`` ports of the hard side's address, the next ones after the port the
coordinator saw first (a NAT that allocates in order) and random ones after; one probe that
lands opens the path. Both are bounded in sockets, datagrams, rate and time.

A fresh port. A router that answers unsolicited datagrams itself (a "bare" router) keeps the
5-tuple of the dialler's direct attempt for itself, and no punch through that pair of ports
works for 30 s after. So an asker whose NAT keeps ports punches from a fresh socket, whose
public port it can predict: the coordinator names the asker to the target at that port of
the address it sees the asker at, never another address.

Relaying. A opens a circuit through R to B; the two run an ordinary qp2p QUIC connection
inside it, whose datagrams R carries as ``RelayData`` without being able to read them. B takes
the peer id R names as the only certificate it accepts on that circuit, and the address R names
as a hint only: the relayed connection's address is R's.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

from qp2p import wire
from qp2p._budget import Budgets
from qp2p._decisions import Peer, Send
from qp2p.nat.behaviour import NatBehaviour
from qp2p.wire import Address

__all__ = (
    "Circuit",
    "OpenPath",
    "Traversal",
    "TraversalLimits",
)

log = logging.getLogger(__name__)

# Datagrams sprayed at the peer when a punch starts, and the pause between them: they open
# our NAT's mapping towards the peer before the peer's own packets arrive.
SPRAY = 5
SPRAY_GAP = 0.02
# How long one punch attempt may take, and how many are made before relaying.
PUNCH_TIMEOUT = 2.0
PUNCH_ATTEMPTS = 2
# When a relayed connection tries again to punch through (seconds after it was relayed).
UPGRADE_AFTER = (2.0, 10.0, 30.0)
# How long the direct attempt gets when a coordinator is at hand to fall back on.
DIRECT_FIRST = 1.0
# What a punch we did not ask for may cost us at most, in bytes sent: the spray and six full
# Initials (one more than a dial sends before its punch ends). Like QUIC's anti-amplification
# limit, we spend on a coordinator's behalf at most three times the bytes it sent us, so a
# coordinator pays its part with padding in the Punch it sends the side that did not ask.
UNSOLICITED_COST = SPRAY + 6 * 1200
PUNCH_PADDING = UNSOLICITED_COST // 3 + 100
# The birthday punch: fresh sockets on the hard side, probes from the easy side (at most this
# many, this many per second, the first ones the ports after the one the coordinator saw),
# and how long it may take in all. With 256 mappings among 64,512 ports, 1,024 random probes
# land with probability 1 - (1 - 256/64512)^1024 = 98%; half land within 175.
FAN_OUT_PORTS = 256
PROBES = 1024
PROBE_RATE = 200.0
SEQUENTIAL_PROBES = 256
BIRTHDAY_TIMEOUT = 8.0
PORTS = (1024, 65535)  # where NATs allocate ports, and probes look
# A probe or a fan-out datagram on the wire: one byte of UDP payload, and the IPv4 and UDP
# headers, so that a coordinator pays for the datagrams' count, not only their payload.
PROBE_COST = 29
MODE_COST = {
    wire.PUNCH_PLAIN: UNSOLICITED_COST,
    wire.PUNCH_FAN_OUT: UNSOLICITED_COST + FAN_OUT_PORTS * PROBE_COST,
    wire.PUNCH_PROBE: UNSOLICITED_COST + PROBES * PROBE_COST,
}
# A link from a peer we punched towards is "punched" if it arrives up to this long after the
# punch ended (the other side's dial may complete last); peers remembered so, at most.
LABEL_GRACE = 2 * PUNCH_TIMEOUT
LABELS = 64


@dataclass(frozen=True, slots=True)
class TraversalLimits:
    """What any one peer can make us do, and what all of them together can."""

    max_delay: float = 2.0  # a Punch's delay is cut to this (seconds)
    punches_in_flight: int = 8  # punches of ours at once, asked for or not
    birthdays_in_flight: int = 1  # ... of which fan out or probe (the rest are plain)
    unsolicited_per_coordinator: int = 4  # punches we did not ask for, at once per coordinator
    unsolicited_burst: int = 8  # and at most this many in a row ...
    unsolicited_interval: float = 5.0  # ... then one more per this many seconds
    requests_burst: int = 10  # as a coordinator: PunchRequests and RelayOpens per asker
    requests_interval: float = 6.0  # ... then one more per this many seconds
    birthdays_burst: int = 2  # ... of which birthday punches (their padding costs us 12 KB each)
    birthdays_interval: float = 30.0  # ... then one more per this many seconds
    relay_circuits: int = 64  # as a relay: circuits at once
    relay_circuits_per_peer: int = 4  # ... of which one peer may hold
    relay_bytes: int = 256 << 20  # ... and bytes carried per circuit
    relay_bytes_per_peer: int = 64 << 20  # ... and by all circuits one peer opened ...
    relay_window: float = 60.0  # ... per this many seconds (refilled evenly)
    relay_idle: float = 30.0  # ... and a circuit without a datagram for this long is closed
    relayed_paths: int = 16  # as a relayed peer: circuits opened to us at once
    relayed_paths_per_relay: int = 4  # ... of which through one relay


@dataclass(frozen=True, slots=True)
class OpenPath:
    """At time ``at``: spray ``SPRAY`` datagrams at ``addr``, then dial it, accepting only the
    certificate of ``peer_id``; give up at ``until``. ``mode`` adds the birthday punch: fan out
    from ``FAN_OUT_PORTS`` fresh sockets towards ``addr``, or probe ``ports`` of its host at
    ``PROBE_RATE``, until a link to the peer stands."""

    punch: int  # the punch this belongs to, for ``punch_over``
    at: float
    addr: Address
    peer_id: str
    until: float
    mode: int = wire.PUNCH_PLAIN
    ports: tuple[int, ...] = ()  # PUNCH_PROBE: the ports to probe, in order


@dataclass(eq=False, slots=True)
class Circuit:
    """A relay's circuit: two links and the circuit number each side knows it by."""

    a: Hashable
    a_circuit: int
    a_id: str
    b: Hashable
    b_circuit: int
    last: float  # when it last carried a datagram (or opened)
    bytes: int = 0


@dataclass(slots=True)
class _Punch:
    peer_id: str
    coordinator: str
    until: float
    solicited: bool
    mode: int


class Traversal:
    """The rules of punching and relaying for one endpoint. Not thread-safe; no I/O."""

    def __init__(self, limits: TraversalLimits | None = None, rng: random.Random | None = None) -> None:
        self.limits = limits or TraversalLimits()
        self.behaviour = NatBehaviour()  # our own NAT's, as the endpoint learned it
        self._rng = rng or random.SystemRandom()
        self._nat: dict[Hashable, NatBehaviour] = {}  # as a coordinator: what each link's peer reported
        self._punches: dict[int, _Punch] = {}
        self._next_punch = 1
        self._labels: dict[str, float] = {}  # peer id -> until when its links count as punched
        self._budgets = Budgets()
        self._spent: dict[Hashable, int] = {}  # coordinator link -> bytes we spent on its punches
        self._circuits: dict[tuple[Hashable, int], Circuit] = {}  # as a relay: both ends of each
        self._paths: dict[tuple[Hashable, int], str] = {}  # as a relayed peer: circuit -> peer id
        self.refusals: Counter[str] = Counter()  # why we declined what a peer asked
        # Totals since made (they only grow): punches of ours started and how they ended (the
        # endpoint says, ``punch_over``), circuits we relayed and the bytes they carried.
        self.punches_started = 0
        self.punches_succeeded = 0
        self.punches_failed = 0
        self.circuits_opened = 0
        self.relayed_bytes = 0

    # ---- bookkeeping -----------------------------------------------------------------------

    def _refuse(self, reason: str) -> None:
        self.refusals[reason] += 1

    def expire(self, now: float) -> None:
        """Forget punches whose time is over."""
        for number, punch in list(self._punches.items()):
            if punch.until <= now:
                del self._punches[number]

    @property
    def punches(self) -> int:
        """Punches in flight now."""
        return len(self._punches)

    def punching(self, peer_id: str, now: float) -> bool:
        """Whether a punch towards ``peer_id`` is under way or just ended: a link from it now
        came through the punched hole."""
        return self._labels.get(peer_id, 0.0) > now

    def punch_over(self, number: int, *, succeeded: bool) -> None:
        """The punch ``number`` brought a link to its peer (``succeeded``) or was given up."""
        self._punches.pop(number, None)
        if succeeded:
            self.punches_succeeded += 1
        else:
            self.punches_failed += 1

    # ---- the side that asks, and the side asked for ----------------------------------------

    def punch(
        self,
        coordinator: Peer,
        message: wire.Punch,
        solicited: bool,
        now: float,
        asked: Address | None = None,
    ) -> OpenPath | None:
        """A ``Punch`` from ``coordinator``: the path to open, or None when refused.

        ``solicited`` means we asked this coordinator for this punch (towards ``asked``);
        otherwise the coordinator asks us to send packets to an address, which only a budget
        per coordinator allows. A birthday mode is carried out only by the side it fits (a hard
        NAT fans out, an easy one probes), one at a time, and for a punch we asked for only
        towards the host we asked for; otherwise the punch is plain.
        """
        limits = self.limits
        self.expire(now)
        if message.peer_id == wire.ANY_PEER or message.peer_id == coordinator.peer_id:
            self._refuse("punch names no other peer")
            return None
        if len(self._punches) >= limits.punches_in_flight:
            self._refuse("too many punches at once")
            return None
        mode = self._mode(message.mode)
        if mode != wire.PUNCH_PLAIN and asked is not None and message.peer[0] != asked[0]:
            self._refuse("birthday punch towards another host than asked")
            mode = wire.PUNCH_PLAIN
        if not solicited:
            mine = sum(1 for p in self._punches.values() if p.coordinator == coordinator.peer_id)
            if mine >= limits.unsolicited_per_coordinator:
                self._refuse("a punch from this coordinator is under way")
                return None
            spent = self._spent.get(coordinator.link, 0) + MODE_COST[mode]
            if spent > 3 * coordinator.received:
                self._refuse("punch beyond three times the coordinator's bytes")
                return None
            if not self._budgets.take(
                "punch", coordinator.peer_id, now, limits.unsolicited_burst, limits.unsolicited_interval
            ):
                self._refuse("punch rate per coordinator")
                return None
            self._spent[coordinator.link] = spent
        at = now + min(message.delay_ms / 1000, limits.max_delay)
        until = at + (PUNCH_TIMEOUT if mode == wire.PUNCH_PLAIN else BIRTHDAY_TIMEOUT)
        number = self._next_punch
        self._next_punch += 1
        # Held until the end of the extra time an answered dial may get, so that no bound
        # (punches at once, birthdays at once) frees its place before the endpoint does.
        held = until + PUNCH_TIMEOUT
        self._punches[number] = _Punch(message.peer_id, coordinator.peer_id, held, solicited, mode)
        self._labels.pop(message.peer_id, None)
        self._labels[message.peer_id] = until + LABEL_GRACE
        while len(self._labels) > LABELS:  # the oldest go first
            del self._labels[next(iter(self._labels))]
        ports = probe_ports(message.peer[1], self._rng) if mode == wire.PUNCH_PROBE else ()
        self.punches_started += 1
        return OpenPath(number, at, message.peer, message.peer_id, until, mode, ports)

    def _mode(self, asked: int) -> int:
        """The mode we carry out when a coordinator asks for ``asked``: a birthday mode only if
        our own NAT fits it and no other is under way, else plain."""
        fits = (asked == wire.PUNCH_FAN_OUT and self.behaviour.hard) or (
            asked == wire.PUNCH_PROBE and self.behaviour.easy
        )
        if not fits:
            return wire.PUNCH_PLAIN
        birthdays = sum(1 for p in self._punches.values() if p.mode != wire.PUNCH_PLAIN)
        if birthdays >= self.limits.birthdays_in_flight:
            self._refuse("a birthday punch is under way")
            return wire.PUNCH_PLAIN
        return asked

    # ---- the coordinator -------------------------------------------------------------------

    def nat_report(self, peer: Peer, message: wire.NatReport) -> None:
        """A peer tells us its NAT's behaviour: kept while its link lasts (one per link)."""
        if peer.relayed:  # the address we see is the relay's: nothing to punch with
            self._refuse("nat report over a relayed link")
            return
        self._nat[peer.link] = NatBehaviour.from_flags(message.nat)

    def punch_request(
        self, asker: Peer, message: wire.PunchRequest, target: Peer | None, now: float
    ) -> list[Send]:
        """A peer asks us to coordinate a punch to ``target`` (the peer we found for its
        request, None if none): a ``Punch`` to each, or ``PunchFailed`` to the asker. With a
        ``port``, the target is told to punch the asker at that port of the asker's address."""
        if not self._may_coordinate(asker, target, now, "punch request"):
            return [Send(asker.link, wire.PunchFailed(message.target))]
        assert target is not None
        asker_addr = asker.addr if message.port == 0 else (asker.addr[0], message.port)
        asker_mode, target_mode = self._modes(asker, target)
        if asker_mode != wire.PUNCH_PLAIN and not self._budgets.take(
            "birthday", asker.peer_id, now, self.limits.birthdays_burst, self.limits.birthdays_interval
        ):
            self._refuse("birthday punch rate")  # its padding is costly: the asker gets a plain one
            asker_mode, target_mode = wire.PUNCH_PLAIN, wire.PUNCH_PLAIN
        # Both should act at the same moment: the nearer peer's Punch is held back.
        later = max(asker.rtt, target.rtt)
        padding = bytes(MODE_COST[target_mode] // 3 + 100)  # the target did not ask: we pay
        return [
            Send(
                asker.link,
                wire.Punch(target.addr, target.peer_id, int((later - asker.rtt) * 500), asker_mode),
            ),
            Send(
                target.link,
                wire.Punch(asker_addr, asker.peer_id, int((later - target.rtt) * 500), target_mode, padding),
            ),
        ]

    def _modes(self, asker: Peer, target: Peer) -> tuple[int, int]:
        """How each side punches: a hard NAT facing an easy one fans out while the easy side
        probes; any other pair (or one we know nothing of) punches plainly."""
        mine = self._nat.get(asker.link, NatBehaviour())
        theirs = self._nat.get(target.link, NatBehaviour())
        if mine.hard and theirs.easy:
            return wire.PUNCH_FAN_OUT, wire.PUNCH_PROBE
        if mine.easy and theirs.hard:
            return wire.PUNCH_PROBE, wire.PUNCH_FAN_OUT
        return wire.PUNCH_PLAIN, wire.PUNCH_PLAIN

    def _may_coordinate(self, asker: Peer, target: Peer | None, now: float, what: str) -> bool:
        """Whether to act on ``asker``'s request (a punch or a relay) towards ``target``: not
        over a relayed link, within the asker's budget (spent even when there is no target, so
        that requests for nobody cost their replies a budget too), and only towards another
        peer we reach without a relay."""
        limits = self.limits
        if asker.relayed:
            self._refuse(f"{what} over a relayed link")
            return False
        if not self._budgets.take(
            "coordinate", asker.peer_id, now, limits.requests_burst, limits.requests_interval
        ):
            self._refuse(f"{what} rate")
            return False
        return target is not None and not target.relayed and target.peer_id != asker.peer_id

    # ---- the relay -------------------------------------------------------------------------

    def relay_open(
        self, asker: Peer, message: wire.RelayOpen, target: Peer | None, now: float, *, serving: bool
    ) -> list[Send]:
        """A peer asks us to relay a circuit to ``target``: ``RelayIncoming`` to the target,
        or ``RelayClose`` to the asker when we will not (``serving`` False: we relay for
        nobody)."""
        refused = [Send(asker.link, wire.RelayClose(message.circuit))]
        if (asker.link, message.circuit) in self._circuits:
            self._refuse("circuit number in use")
            return []
        if not serving:
            self._refuse("relay_off")
            return refused
        if not self._may_coordinate(asker, target, now, "relay request") or not self._may_open(asker):
            return refused
        assert target is not None
        theirs = self.new_circuit_number(target.link)
        circuit = Circuit(asker.link, message.circuit, asker.peer_id, target.link, theirs, now)
        self._circuits[(asker.link, message.circuit)] = circuit
        self._circuits[(target.link, theirs)] = circuit
        self.circuits_opened += 1
        return [Send(target.link, wire.RelayIncoming(asker.addr, asker.peer_id, theirs))]

    def _may_open(self, asker: Peer) -> bool:
        """Whether a circuit more fits in the total and in what one peer may hold."""
        limits = self.limits
        if len(self._circuits) // 2 >= limits.relay_circuits:
            self._refuse("relay circuits")
            return False
        held = sum(1 for c in self._circuits.values() if c.a_id == asker.peer_id) // 2
        if held >= limits.relay_circuits_per_peer:
            self._refuse("relay_circuits_per_peer")
            return False
        return True

    def new_circuit_number(self, link: Hashable) -> int:
        """A circuit number unused on ``link``, by our circuits and those we relay alike."""
        while True:
            number = secrets.randbits(32)
            if (link, number) not in self._circuits and (link, number) not in self._paths:
                return number

    def relay(
        self, link: Hashable, message: wire.RelayData | wire.RelayClose, now: float
    ) -> list[Send] | None:
        """Carry a circuit's datagram (or its end) to the other side; None if not ours to relay.
        A datagram is charged to the circuit and to the peer that opened it (both directions:
        the opener chose the other end); past either budget the circuit closes on both sides."""
        circuit = self._circuits.get((link, message.circuit))
        if circuit is None:
            return None
        to, number = (circuit.b, circuit.b_circuit) if link is circuit.a else (circuit.a, circuit.a_circuit)
        if isinstance(message, wire.RelayClose):
            self._drop(circuit)
            return [Send(to, wire.RelayClose(number))]
        limits = self.limits
        size = len(message.datagram)
        circuit.bytes += size
        circuit.last = now
        if circuit.bytes > limits.relay_bytes:
            log.info("a relay circuit used up its %d bytes: closing it", limits.relay_bytes)
            return self._close(circuit, "relay bytes")
        rate = limits.relay_window / max(1, limits.relay_bytes_per_peer)  # seconds per byte
        if not self._budgets.take("relay bytes", circuit.a_id, now, limits.relay_bytes_per_peer, rate, size):
            log.info(
                "a peer used up its %d relayed bytes per window: closing its circuit",
                limits.relay_bytes_per_peer,
            )
            return self._close(circuit, "relay_bytes_per_peer")
        self.relayed_bytes += size
        return [Send(to, wire.RelayData(number, message.datagram))]

    def _close(self, circuit: Circuit, reason: str) -> list[Send]:
        """End ``circuit`` for ``reason``: a ``RelayClose`` to each side."""
        self._refuse(reason)
        self._drop(circuit)
        return [
            Send(circuit.a, wire.RelayClose(circuit.a_circuit)),
            Send(circuit.b, wire.RelayClose(circuit.b_circuit)),
        ]

    def idle_circuits(self, now: float) -> list[Send]:
        """Close the circuits that carried nothing for ``relay_idle`` seconds, on both sides."""
        idle = {id(c): c for c in self._circuits.values() if now - c.last >= self.limits.relay_idle}
        return [send for circuit in idle.values() for send in self._close(circuit, "relay_idle")]

    def next_idle_check(self) -> float | None:
        """When the first circuit falls idle unless it carries a datagram before (None: no circuit)."""
        lasts = [c.last for c in self._circuits.values()]
        return min(lasts) + self.limits.relay_idle if lasts else None

    def _drop(self, circuit: Circuit) -> None:
        self._circuits.pop((circuit.a, circuit.a_circuit), None)
        self._circuits.pop((circuit.b, circuit.b_circuit), None)

    @property
    def circuits(self) -> int:
        """Circuits we relay now."""
        return len(self._circuits) // 2

    # ---- the relayed peer ------------------------------------------------------------------

    def relay_incoming(self, relay: Peer, message: wire.RelayIncoming) -> bool:
        """A relay announces a circuit to us from ``message.peer_id``: whether we take it
        (otherwise the caller answers ``RelayClose``)."""
        limits = self.limits
        key = (relay.link, message.circuit)
        mine = sum(1 for (link, _) in self._paths if link == relay.link)
        if (
            relay.relayed
            or key in self._paths
            or message.peer_id in (wire.ANY_PEER, relay.peer_id)
            or len(self._paths) >= limits.relayed_paths
            or mine >= limits.relayed_paths_per_relay
        ):
            self._refuse("relayed circuit")
            return False
        self._paths[key] = message.peer_id
        return True

    def path_opened(self, relay: Hashable, circuit: int, peer_id: str) -> None:
        """We opened a circuit of our own through ``relay`` towards ``peer_id``."""
        self._paths[(relay, circuit)] = peer_id

    def path_peer(self, relay: Hashable, circuit: int) -> str | None:
        """The only peer id a circuit of ours may carry, or None if it is not ours."""
        return self._paths.get((relay, circuit))

    def path_closed(self, relay: Hashable, circuit: int) -> None:
        self._paths.pop((relay, circuit), None)

    # ---- links ending ----------------------------------------------------------------------

    def link_closed(self, link: Hashable) -> tuple[list[Send], list[int]]:
        """A link ended: the circuits relayed through it end on their other side too (the
        messages to send), and ours through it (their circuit numbers)."""
        self._spent.pop(link, None)
        self._nat.pop(link, None)
        sends: list[Send] = []
        for (end, _), circuit in list(self._circuits.items()):
            if end is link:
                self._drop(circuit)
                other, number = (
                    (circuit.b, circuit.b_circuit) if end is circuit.a else (circuit.a, circuit.a_circuit)
                )
                sends.append(Send(other, wire.RelayClose(number)))
        ours = [number for (relay, number) in self._paths if relay is link]
        for number in ours:
            del self._paths[(link, number)]
        return sends, ours


def probe_ports(observed: int, rng: random.Random, count: int = PROBES) -> tuple[int, ...]:
    """The ports to probe on a hard peer's address, ``count`` of them, none twice: the ones
    after ``observed`` (where a NAT that allocates in order put the peer's new mappings),
    every other probe, and random ones in ``PORTS`` between and after."""
    low, high = PORTS
    after = [port for port in range(observed + 1, observed + 1 + SEQUENTIAL_PROBES) if low <= port <= high]
    skipped = {*after, observed}
    randoms = iter(
        [port for port in rng.sample(range(low, high + 1), count + len(skipped)) if port not in skipped]
    )
    sequential = iter(after)
    ports: list[int] = []
    while len(ports) < count:
        port = next(sequential, None) if len(ports) % 2 == 0 else None
        ports.append(next(randoms) if port is None else port)
    return tuple(ports)
