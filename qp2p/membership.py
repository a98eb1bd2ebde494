"""What an endpoint answers when peers ask about the network, decided without I/O: the echo of
their public address, reachability checks, and peer exchange from the bootstrap cache.

Every answer is about what the link observed, never what the asker claims: the echo is the
address its packets come from, a check dials only that same IP (never over a relayed link, whose
address is the relay's), and the cache only takes in nodes we reached ourselves. Each request
kind has a budget per peer, so no peer makes us do it more often than the rules allow.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass

from qp2p import wire
from qp2p._budget import Budgets
from qp2p._decisions import Peer, Send
from qp2p._peer_log import peer_log
from qp2p.bootstrap_cache import BootstrapCache
from qp2p.config import Config, Role
from qp2p.wire import Address

__all__ = ("Membership", "Probe")

log = logging.getLogger(__name__)

# Peers handed out in one PeersResponse, at most.
PEERS_WANTED = 32
# Reachability checks run at once (at most); each costs a fresh socket and a handshake.
CHECKS_AT_ONCE = 4
# Checks waiting for one of those places, at most; past it a check is refused. Two rounds of
# checks (each at most control_timeout) fit in the 3 control_timeouts a joining node waits, so a
# node joining with many others is checked, not told it is unreachable because we were busy.
CHECKS_QUEUED = 2 * CHECKS_AT_ONCE
# Budgets per peer: so many requests of a kind at once, then one more per so many seconds.
ECHO_BUDGET = (8, 1.0)
PEERS_BUDGET = (4, 5.0)
VERIFY_BUDGET = (2, 10.0)


@dataclass(frozen=True, slots=True)
class Probe:
    """Check that ``addr`` answers a dial from a fresh socket, then call ``probe_done``."""

    peer: Peer
    addr: Address


class Membership:
    """One endpoint's view of the network it joined, and its answers to peers. No I/O."""

    def __init__(self, config: Config) -> None:
        self.role = config.role
        self.active = False  # bootstrap() ran: the cache is read, written and handed out
        self.echoed: Address | None = None  # our address as the node we joined through sees it
        self.contact: Address | None = None  # the node we bootstrapped through
        self.cache = BootstrapCache(config.bootstrap_cache_size, config.bootstrap_cache_per_prefix)
        self._budgets = Budgets()
        self._checking: set[Hashable] = set()  # links with a check under way: one at a time each
        self._queued: deque[Probe] = deque()  # checks waiting for a place (their links in _checking)
        self.refusals: Counter[str] = Counter()  # why we declined what a peer asked

    def _refuse(self, reason: str) -> None:
        self.refusals[reason] += 1

    def _within(self, kind: str, peer: Peer, now: float, budget: tuple[int, float]) -> bool:
        if self._budgets.take(kind, peer.peer_id, now, *budget):
            return True
        self._refuse(f"{kind} rate")
        return False

    def request(self, peer: Peer, message: wire.ControlMessage, now: float) -> Send | Probe | None:
        """A peer's request: the answer, a check to run first, or None (ignored)."""
        if isinstance(message, wire.EchoRequest):
            if peer.relayed:  # we see the relay's address, not the peer's
                self._refuse("echo over a relayed link")
                return None
            if not self._within("echo", peer, now, ECHO_BUDGET):
                return None
            return Send(peer.link, wire.EchoResponse(peer.addr))
        if isinstance(message, wire.VerificationRequest):
            refused = Send(peer.link, wire.VerificationResponse(False))
            if peer.relayed or message.addr[0] != peer.addr[0]:
                self._refuse("verification of another address")
                return refused
            if peer.link in self._checking:
                self._refuse("verification already under way")
                return refused
            running = len(self._checking) - len(self._queued)
            if running >= CHECKS_AT_ONCE and len(self._queued) >= CHECKS_QUEUED:
                self._refuse("verifications at once")
                return refused
            if not self._within("verify", peer, now, VERIFY_BUDGET):
                return refused
            self._checking.add(peer.link)
            if running >= CHECKS_AT_ONCE:
                self._queued.append(Probe(peer, message.addr))
                return None  # answered once it has run (next_probe)
            return Probe(peer, message.addr)
        if isinstance(message, wire.PeersRequest):
            if not self._within("peers", peer, now, PEERS_BUDGET):
                return None
            known = [
                (entry.addr, entry.fingerprint)
                for entry in self.cache.entries()
                if entry.fingerprint is not None and entry.addr != peer.addr
            ]
            return Send(peer.link, wire.PeersResponse(tuple(known[: min(message.limit, PEERS_WANTED)])))
        peer_log(log, peer.peer_id, peer.addr).debug("ignored control message %r", message)
        return None

    def probe_done(self, probe: Probe, fingerprint: str | None, wall_time: float) -> tuple[Send, bool]:
        """A check ended (``fingerprint`` of who answered, or None): the answer to send, and
        whether the cache changed."""
        self._checking.discard(probe.peer.link)
        reachable = fingerprint is not None
        changed = False
        if reachable and self.active and probe.peer.node and fingerprint == probe.peer.peer_id:
            self.cache.reachable(probe.addr, wall_time, fingerprint, None)
            changed = True
        return Send(probe.peer.link, wire.VerificationResponse(reachable)), changed

    def next_probe(self) -> Probe | None:
        """A queued check to run now that a place is free (after ``probe_done``), if any."""
        if self._queued and len(self._checking) - len(self._queued) < CHECKS_AT_ONCE:
            return self._queued.popleft()
        return None

    def connected(self, peer: Peer, dialled: bool, seconds: float, wall_time: float) -> bool:
        """A connection was established; True if the cache changed. A node we dialled directly
        is reachable from here: into the cache. A node that dialled us enters only once it
        asked us to check it (``probe_done``)."""
        if self.active and dialled and peer.node and not peer.relayed:
            self.cache.reachable(peer.addr, wall_time, peer.peer_id, seconds)
            return True
        return False

    def become_client(self) -> None:
        """From now on we are a client: peers will not cache us or hand us out."""
        self.role = Role.CLIENT
