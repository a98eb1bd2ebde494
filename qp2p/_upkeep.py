"""Which node a member of a network dials next, and which cache entries it forgets (sans-IO).

After ``bootstrap()`` a member keeps ``min_connections`` connections to nodes, wins back the
nodes whose connection was lost, and forgets the cache entries that stay dead. The clock and
every outcome are passed in; ``Joining`` dials what ``plan`` says and reports back
(docs/joining.md, "Staying joined").
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from qp2p.transport import Address

__all__ = ("Plan", "Upkeep", "View")

# A lost node is redialled after this long, then twice as long after each failure, up to the cap:
# once a broken link heals, the node is back within the cap and a handshake.
REDIAL_FIRST = 0.5
REDIAL_CAP = 4.0
# Every delay is spread by this share either way, so nodes that lost the same node (or all
# restarted together) do not dial it in step.
JITTER = 0.25
# A lost node still not back after this long, and after this many failed redials, is forgotten:
# dropped from the cache, no longer redialled. Never while we are isolated (below).
GIVE_UP = 20.0
GIVE_UP_FAILURES = 3
# A cache entry we chose to dial that fails this many times in a row is forgotten (not isolated).
FAILURES_TO_FORGET = 3
# Nodes dialled at once to get back up to min_connections, at most.
TOP_UP_AT_ONCE = 4
# With enough connections, the worst cache entry nobody is connected to is checked this often;
# after a check that failed, the next comes sooner (a failed one costs us a few packets only),
# so a dead entry is forgotten within its few failures and the ones behind it follow.
CHECK_INTERVAL = 10.0
CHECK_AFTER_FAILURE = 1.0
# Below min_connections, one connected node is asked for the nodes it knows this often at most;
# of those it names (at most TOLD_KEPT, each dialled once), half of each top-up round is
# dialled, the rest from the cache (all of it when the cache has none left to give). The last
# NAMED_REMEMBERED names dialled are not dialled again, whoever names them next.
ASK_INTERVAL = 10.0
TOLD_KEPT = 32
NAMED_REMEMBERED = 256


@dataclass(frozen=True, slots=True)
class View:
    """What the shell sees now.

    ``connected``: the cached nodes (and contacts) we have a live direct connection to.
    ``isolated``: none of them is at another IP than our own public one: the fault is likely
    ours (a cut link, a partition), so nothing is forgotten, however long it lasts.
    ``candidates``: the contacts, then the cache's entries best first, with their peer ids.
    """

    now: float
    connected: frozenset[Address]
    isolated: bool
    candidates: Sequence[tuple[Address, str | None]]


@dataclass(frozen=True, slots=True)
class Plan:
    """Dial these (address, expected peer id); forget these; call ``plan`` again at ``wake_at``.
    ``check``, one of ``dial`` or None, only has to show it answers: its connection is not kept.
    ``ask``, a node we are connected to or None: ask it for the nodes it knows (``told``)."""

    dial: list[tuple[Address, str | None]]
    forget: list[Address]
    wake_at: float
    check: Address | None = None
    ask: Address | None = None


@dataclass(slots=True)
class _Lost:
    peer_id: str | None
    since: float
    due: float
    failures: int = 0


class Upkeep:
    """The dialling decisions of one member; ``min_connections`` 0 turns them all off."""

    def __init__(self, min_connections: int, rng: random.Random) -> None:
        self._min = min_connections
        self._rng = rng
        self._lost: dict[Address, _Lost] = {}
        self._failures: dict[Address, int] = {}  # failed dials of entries we chose, in a row
        self._dialling: set[Address] = set()
        self._told: dict[Address, str] = {}  # nodes a peer named, not dialled yet
        self._trying_told: set[Address] = set()  # of those, the ones being dialled
        self._named_before: dict[Address, None] = {}  # names dialled, oldest first (bounded)
        self._isolated = False  # as the last view said
        self._next_top_up = 0.0
        self._next_check = 0.0
        self._next_ask = 0.0
        self._checking: Address | None = None

    @property
    def lost_nodes(self) -> int:
        """Nodes lost and not given up on yet."""
        return len(self._lost)

    def _spread(self, delay: float) -> float:
        return delay * (1.0 + self._rng.uniform(-JITTER, JITTER))

    def lost(self, addr: Address, peer_id: str, now: float) -> None:
        """The connection to the node at ``addr`` ended by the peer's or the network's doing."""
        if self._min:
            self._lost[addr] = _Lost(peer_id, now, now + self._spread(REDIAL_FIRST))

    def told(self, nodes: Sequence[tuple[Address, str]]) -> None:
        """A node we asked named these: claims, each dialled once at most (by its peer id) and
        cached only if it answers; the first ``TOLD_KEPT`` are kept, replacing earlier ones."""
        self._told = {addr: peer for addr, peer in list(nodes)[:TOLD_KEPT] if addr not in self._named_before}

    def dialled(self, addr: Address, connected: bool, now: float) -> None:
        """A dial ``plan`` asked for is over."""
        self._dialling.discard(addr)
        if addr in self._trying_told:  # a named node: in the cache if it answered, else gone
            self._trying_told.discard(addr)
            return
        if addr == self._checking:
            self._checking = None
            if not connected and not self._isolated:  # isolated, nothing is forgotten: no hurry
                self._next_check = min(self._next_check, now + self._spread(CHECK_AFTER_FAILURE))
        lost = self._lost.get(addr)
        if connected:
            self._lost.pop(addr, None)
            self._failures.pop(addr, None)
        elif lost is not None:
            lost.failures += 1
            lost.due = now + self._spread(min(REDIAL_CAP, REDIAL_FIRST * 2**lost.failures))
        else:
            self._failures[addr] = self._failures.get(addr, 0) + 1

    def plan(self, view: View) -> Plan:
        """What to dial and forget now, and when to look again."""
        now = view.now
        self._isolated = view.isolated
        dial: list[tuple[Address, str | None]] = []
        forget: list[Address] = []
        if not self._min:
            return Plan(dial, forget, math.inf)
        for addr, lost in list(self._lost.items()):
            if addr in view.connected:  # it came back by itself (it dialled us)
                del self._lost[addr]
            elif not view.isolated and now - lost.since >= GIVE_UP and lost.failures >= GIVE_UP_FAILURES:
                del self._lost[addr]
                forget.append(addr)
            elif lost.due <= now and addr not in self._dialling:
                dial.append((addr, lost.peer_id))
        if not view.isolated:
            for addr, failures in list(self._failures.items()):
                if failures >= FAILURES_TO_FORGET:
                    del self._failures[addr]
                    forget.append(addr)
        busy = self._dialling | {addr for addr, _ in dial} | set(forget) | set(self._lost)
        fresh = [
            (addr, peer) for addr, peer in view.candidates if addr not in view.connected and addr not in busy
        ]
        known = {addr for addr, _ in view.candidates} | view.connected | busy
        named: list[tuple[Address, str | None]] = [
            (addr, peer) for addr, peer in self._told.items() if addr not in known
        ]
        missing = self._min - len(view.connected) - len(self._dialling) - len(dial)
        check = ask = None
        if missing > 0 and view.connected and now >= self._next_ask:
            ask = sorted(view.connected)[self._rng.randrange(len(view.connected))]
            self._next_ask = now + self._spread(ASK_INTERVAL)
        if missing > 0 and now >= self._next_top_up:
            room = min(missing, TOP_UP_AT_ONCE)
            chosen = named[: room // 2 if fresh else room]  # a peer's names never crowd out the cache
            for addr, _ in chosen:
                del self._told[addr]
                self._trying_told.add(addr)
                self._named_before[addr] = None
                if len(self._named_before) > NAMED_REMEMBERED:
                    del self._named_before[next(iter(self._named_before))]
            dial += chosen + fresh[: room - len(chosen)]
            self._next_top_up = now + self._spread(REDIAL_CAP)
        elif len(view.connected) >= self._min and now >= self._next_check:
            cached = [(addr, peer) for addr, peer in fresh if peer is not None]  # not the contacts
            if cached:
                dial.append(cached[-1])  # ranked last: the likeliest dead
                check = self._checking = dial[-1][0]
            self._next_check = now + self._spread(CHECK_INTERVAL)
        self._dialling.update(addr for addr, _ in dial)
        wakes = [lost.due for addr, lost in self._lost.items() if addr not in self._dialling]
        wakes.append(self._next_top_up if len(view.connected) < self._min else self._next_check)
        if len(view.connected) < self._min and view.connected:
            wakes.append(self._next_ask)
        return Plan(dial, forget, max(min(wakes), now + 0.05), check, ask)
