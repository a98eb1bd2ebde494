"""Joining a network, on the event loop: bootstrap through contacts and cached nodes, the echo
of our public address, the reachability check, peer exchange, staying joined, saving the cache.

The rules (what to answer, what enters the cache, whom to redial) are ``Membership``'s and
``Upkeep``'s, without I/O; this module runs the sequence of docs/joining.md through the
endpoint's public calls only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from qp2p import errors, wire
from qp2p._peer_log import peer_log
from qp2p._tasks import BackgroundTasks
from qp2p._upkeep import Upkeep, View
from qp2p.bootstrap_cache import CacheFile
from qp2p.config import Config, Role
from qp2p.connection import Connection
from qp2p.membership import PEERS_WANTED, Membership
from qp2p.transport import Address

__all__ = ("Joining", "Network")

log = logging.getLogger(__name__)

# Told of the echoes of our address so far (the contact's first), and whether more will come.
Echoed = Callable[[list[Address], bool], None]
# Contacts and cached nodes asked in turn for the second echo when no node we were told of gave it.
SECOND_ECHO_TRIES = 3
# Contacts and cached nodes asked in turn for a second check when the first said unreachable.
SECOND_CHECK_TRIES = 2
# What a bootstrap attempt got that leaves the peer to be joined through in the next round (a
# connection that lost the race is still open: the next round has it at once).
RETRIED = ("not tried", "cancelled: another peer answered first", "connected")
# A bootstrap dial starts this long after the one before it, unless that one failed first (as
# Happy Eyeballs does, RFC 8305): a network restarting at once makes one handshake per node,
# not bootstrap_concurrency of them, while a dead favourite still costs only this long.
STAGGER = 0.25
# Nodes we were told about, dialled at once (at most).
PEERS_DIALLED_AT_ONCE = 4
# A change to the cache is written after this long, so a burst of changes costs one write.
SAVE_DELAY = 2.0
# A dial of the upkeep gives up after this long (at most connect_timeout), so that the next one,
# once a broken link has healed, starts from a fresh handshake instead of a backed-off one.
UPKEEP_DIAL_TIMEOUT = 3.0


class Network(Protocol):
    """What joining needs of the endpoint: its settings, its addresses, and dialling."""

    @property
    def config(self) -> Config: ...
    @property
    def local_addr(self) -> Address: ...
    @property
    def public_addr(self) -> Address: ...
    def connections(self) -> list[Connection]: ...
    async def is_reachable(self, addr: tuple[str, int]) -> bool: ...
    async def connect_to(
        self,
        addr: tuple[str, int],
        via: tuple[str, int] | None = None,
        *,
        peer_id: str | None = None,
        direct: bool = False,
    ) -> Connection: ...


class Joining:
    """Bootstrap, staying joined, and the upkeep of the cache for one endpoint."""

    def __init__(
        self,
        network: Network,
        membership: Membership,
        folder: str,
        become_client: Callable[[], None],
        echoed: Echoed,
    ) -> None:
        self._network = network
        self._membership = membership
        self.file = CacheFile(folder)
        self._become_client = become_client
        self._echoed = echoed
        self._echoes: list[Address] = []  # our address as the contact, then a second node, saw it
        self._rng = random.Random()
        self._tasks = BackgroundTasks(log, "network upkeep failed")
        self._save: asyncio.TimerHandle | None = None
        config = network.config
        self._upkeep = Upkeep(min(config.min_connections, config.max_connections), self._rng)
        self._wake: asyncio.Handle | None = None  # set once staying joined: the next look
        self.upkeep_dials = 0  # dials the upkeep made, for stats()

    @property
    def lost_nodes(self) -> int:
        """Nodes whose connection was lost and that the upkeep still redials."""
        return self._upkeep.lost_nodes

    async def bootstrap(self) -> Connection:
        """Dial contacts, then cached nodes by quality; join through the first that answers.
        Then, or when none answered, stay joined (``Upkeep``); not after a failed check."""
        try:
            connection = await self._bootstrap()
        except errors.ReachabilityError:
            raise
        except errors.Error:
            self._keep_joined()
            raise
        self._keep_joined()
        return connection

    async def _bootstrap(self) -> Connection:
        network, membership = self._network, self._membership
        config = network.config
        await asyncio.to_thread(self.file.load, membership.cache)
        membership.active = True
        own = {network.local_addr, network.public_addr}
        candidates = list(dict.fromkeys(config.hard_coded_contacts))
        ranked = membership.cache.order(time.time(), self._rng)
        candidates += [e.addr for e in ranked if e.addr not in candidates]
        candidates = [addr for addr in candidates if addr not in own]
        if not candidates:
            raise errors.BootstrapError("no hard-coded contacts, and the bootstrap cache is empty")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.bootstrap_timeout
        attempts: dict[Address, str] = dict.fromkeys(candidates, "not tried")
        passed_over: set[str] = set()  # peer ids that connected but did not see us through
        while True:  # each round takes one candidate out of RETRIED: bounded by the list
            untried = [addr for addr in candidates if attempts[addr] in RETRIED]
            won = None
            if untried and loop.time() < deadline:
                won = await self._first_of(untried, attempts, deadline)
            if won is None:
                summary = "; ".join(f"{host}:{port}: {outcome}" for (host, port), outcome in attempts.items())
                raise errors.BootstrapError(f"no peer answered ({summary})", attempts)
            addr, connection = won
            if connection.peer_id in passed_over:  # the same peer, at another of its addresses
                attempts[addr] = "connected, to a peer passed over already"
                continue
            membership.contact = connection.remote_addr
            try:
                await self._join(connection, candidates, attempts)
            except errors.ReachabilityError:
                raise
            except errors.Error as exc:
                # Connected, but too busy to answer, misbehaving or gone since: the next one.
                attempts[addr] = f"connected, then {type(exc).__name__}: {exc}"
                passed_over.add(connection.peer_id)
                membership.contact = membership.echoed = None
                peer_log(log, connection.peer_id, connection.remote_addr).info("not joined through: %s", exc)
                continue
            return connection

    async def _first_of(
        self, candidates: list[Address], attempts: dict[Address, str], deadline: float
    ) -> tuple[Address, Connection] | None:
        """Dials candidates in order until ``deadline``, each one ``STAGGER`` after the one
        before (at once when that one failed), a few at once at most; the first connection
        wins and the other attempts are cancelled, their half-made connections closed. What
        each attempt got goes into ``attempts``; the winner comes with the address dialled."""
        network = self._network
        loop = asyncio.get_running_loop()
        winner: asyncio.Future[tuple[Address, Connection]] = loop.create_future()
        gate = asyncio.Semaphore(network.config.bootstrap_concurrency)
        turns = [asyncio.Event() for _ in candidates]  # set: that attempt may start
        timers: list[asyncio.TimerHandle] = []
        turns[0].set()

        async def attempt(index: int, addr: Address) -> None:
            await turns[index].wait()
            async with gate:
                if winner.done():
                    return
                after = turns[index + 1] if index + 1 < len(turns) else asyncio.Event()
                timers.append(loop.call_later(STAGGER, after.set))
                attempts[addr] = "trying"
                try:
                    connection = await network.connect_to(addr, direct=True)
                except errors.Error as exc:
                    attempts[addr] = f"{type(exc).__name__}: {exc}"
                    self._membership.cache.unreachable(addr)
                    after.set()
                    return
                except asyncio.CancelledError:
                    attempts[addr] = "cancelled: another peer answered first"
                    raise
                attempts[addr] = "connected"
                if not winner.done():
                    winner.set_result((addr, connection))

        tasks = [asyncio.create_task(attempt(index, addr)) for index, addr in enumerate(candidates)]
        everything: asyncio.Future[Any] = asyncio.gather(*tasks)
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.wait([winner, everything], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            for timer in timers:
                timer.cancel()
            await asyncio.gather(everything, return_exceptions=True)
        for addr in candidates:
            if attempts[addr] == "trying":
                attempts[addr] = "no answer within bootstrap_timeout"
        return winner.result() if winner.done() else None

    async def _join(
        self, connection: Connection, candidates: list[Address], attempts: dict[Address, str]
    ) -> None:
        """Learn our public address; as a node, have the contact check it can reach us there;
        then learn of other nodes (and from one of them, or else another of the ``candidates``
        we bootstrapped from, our address a second time)."""
        network, membership = self._network, self._membership
        config = network.config
        membership.echoed = await self._echo(connection)
        self._echoes = [membership.echoed]
        if membership.role is Role.NODE:
            public = network.public_addr
            reachable = await self._check(connection, public)
            if not reachable:  # a busy verifier's check may fail too: a second one decides
                reachable = await self._second_check(connection, public, candidates, attempts)
            if not reachable:
                host, port = connection.remote_addr
                problem = f"{host}:{port} could not connect back to us at {public[0]}:{public[1]}"
                if not config.client_fallback:
                    raise errors.ReachabilityError(
                        f"{problem}: we cannot run as a node here (forward a port, set external_ip and "
                        "external_port, or allow client_fallback)"
                    )
                log.warning("%s; running as a client", problem)
                self._become_client()
        self._echoed(self._echoes, False)
        try:
            # Not the ones we cached already (a restart): they know us, and we have their entries.
            nodes = [(addr, fp) for addr, fp in await self._peers(connection) if not self._known(addr, fp)]
        except errors.Error as exc:  # joined all the same: the upkeep dials the cache, if any
            peer_log(log, connection.peer_id, connection.remote_addr).info("no peers from it: %s", exc)
            nodes = []
        others = [addr for addr in candidates if addr != connection.remote_addr]
        self._tasks.spawn(self._discover(nodes, others, connection.peer_id))

    async def _check(self, connection: Connection, public: Address) -> bool:
        """Whether the node at the other end of ``connection`` reached us at ``public``."""
        timeout = 3 * self._network.config.control_timeout  # the verifier gives up after its own
        verdict = await connection.control_request(
            wire.VerificationRequest(public), wire.VerificationResponse, timeout
        )
        return verdict.reachable

    async def _second_check(
        self, first: Connection, public: Address, candidates: list[Address], attempts: dict[Address, str]
    ) -> bool:
        """The verdict of another peer (the first that answers, of a few: those bootstrap
        connected to first, then those it did not try), or False: a node is not made a client
        by one verifier alone, busy or lying."""
        connected = [addr for addr in candidates if attempts[addr] == "connected"]
        untried = [addr for addr in candidates if attempts[addr] in RETRIED and addr not in connected]
        others = [addr for addr in [*connected, *untried] if addr != first.remote_addr]
        for addr in others[:SECOND_CHECK_TRIES]:
            try:
                connection = await self._network.connect_to(addr, direct=True)
                if connection.peer_id != first.peer_id:
                    return await self._check(connection, public)
            except errors.Error as exc:
                peer_log(log, None, addr).info("no second check: %r", exc)
        return False

    def _known(self, addr: Address, fingerprint: str) -> bool:
        entry = self._membership.cache.get(addr)
        return entry is not None and entry.fingerprint == fingerprint

    async def _discover(
        self, nodes: list[tuple[Address, str]], others: list[Address], contact_id: str
    ) -> None:
        """Dials nodes we were told about, each by the peer id we were told (those that answer
        enter the cache as they connect). A node also asks each to check it, which is how they
        learn of us. The first one at another address than the contact's also echoes our
        address: two echoes tell how our NAT maps (docs/nat.md). Without one, ``others`` (the
        rest of the contacts and cached nodes) are asked for it, a few at most, in turn."""
        network, membership = self._network, self._membership
        gate = asyncio.Semaphore(PEERS_DIALLED_AT_ONCE)
        own = {network.local_addr, network.public_addr}
        contact = membership.contact
        echoing: list[Address] = []  # the node asked for the second echo, once one is

        def elsewhere(connection: Connection) -> bool:
            """Whether ``connection`` sees us from another place than the contact: another
            node, at another IP, not through a relay (whose echo would be its own view)."""
            return (
                contact is not None
                and connection.peer_id != contact_id
                and connection.path != "relayed"
                and connection.remote_addr[0] != contact[0]
            )

        async def dial(addr: Address, peer_id: str) -> None:
            async with gate:
                try:
                    connection = await network.connect_to(addr, peer_id=peer_id, direct=True)
                    if not echoing and elsewhere(connection):
                        echoing.append(addr)
                        self._echoes.append(await self._echo(connection))
                        self._echoed(self._echoes, True)
                    if membership.role is Role.NODE:
                        await self._check(connection, network.public_addr)
                except errors.Error as exc:
                    if addr in echoing:
                        echoing.clear()  # another node may echo instead
                    peer_log(log, peer_id, addr).info("a node we were told about did not answer: %r", exc)

        try:
            await asyncio.gather(*(dial(addr, peer_id) for addr, peer_id in nodes if addr not in own))
            candidates = [addr for addr in others if contact is not None and addr[0] != contact[0]]
            for addr in candidates[:SECOND_ECHO_TRIES]:
                if len(self._echoes) > 1:
                    break
                try:
                    connection = await network.connect_to(addr, direct=True)
                    if not elsewhere(connection):
                        continue
                    echo = await self._echo(connection)
                except errors.Error as exc:
                    peer_log(log, None, addr).info("no second echo: %r", exc)
                    continue
                self._echoes.append(echo)
        finally:
            self._echoed(self._echoes, True)

    async def _peers(self, connection: Connection) -> tuple[tuple[Address, str], ...]:
        """The nodes the node at the other end of ``connection`` hands out (claims)."""
        timeout = self._network.config.control_timeout
        answer = await connection.control_request(
            wire.PeersRequest(PEERS_WANTED), wire.PeersResponse, timeout
        )
        return answer.peers

    async def _echo(self, connection: Connection) -> Address:
        """Our address as the node at the other end of ``connection`` sees it."""
        timeout = self._network.config.control_timeout
        echo = await connection.control_request(wire.EchoRequest(), wire.EchoResponse, timeout)
        return echo.addr

    # ---- staying joined --------------------------------------------------------------------

    def _keep_joined(self) -> None:
        if self._wake is None:
            self._wake = asyncio.get_running_loop().call_soon(self._look)

    def lost(self, connection: Connection) -> None:
        """A connection ended by the peer's or the network's doing: a node's is redialled (not
        one that was relayed: its address is the relay's)."""
        addr = connection.remote_addr
        if (
            self._wake is not None
            and connection.path != "relayed"
            and (addr in self._membership.cache or addr in self._network.config.hard_coded_contacts)
        ):
            self._upkeep.lost(addr, connection.peer_id, asyncio.get_running_loop().time())
            self._look()

    def _view(self) -> View:
        membership, network = self._membership, self._network
        contacts = [(addr, None) for addr in network.config.hard_coded_contacts]
        ranked = membership.cache.order(time.time(), self._rng)
        candidates: list[tuple[Address, str | None]] = [*contacts, *((e.addr, e.fingerprint) for e in ranked)]
        known = {addr for addr, _ in candidates}
        live = {c.remote_addr for c in network.connections() if not c.is_closed and c.path != "relayed"}
        connected = frozenset(live & known)
        public_ip = network.public_addr[0]
        isolated = all(host == public_ip for host, _ in connected)
        return View(asyncio.get_running_loop().time(), connected, isolated, candidates)

    def _look(self) -> None:
        """Carry out the upkeep's plan now, and look again when it says."""
        loop = asyncio.get_running_loop()
        if self._wake is not None:
            self._wake.cancel()
        plan = self._upkeep.plan(self._view())
        for addr in plan.forget:
            if addr in self._membership.cache:  # not a hard-coded contact: those stay
                peer_log(log, None, addr).info("forgotten: a node that stayed unreachable")
                self._membership.cache.remove(addr)
                self.schedule_save()
        for addr, peer_id in plan.dial:
            self.upkeep_dials += 1
            self._tasks.spawn(self._upkeep_dial(addr, peer_id, keep=addr != plan.check))
        if plan.ask is not None:
            self._tasks.spawn(self._ask_for_nodes(plan.ask))
        delay = max(0.0, plan.wake_at - loop.time()) if plan.wake_at != float("inf") else 3600.0
        self._wake = loop.call_later(delay, self._look)

    async def _upkeep_dial(self, addr: Address, peer_id: str | None, keep: bool) -> None:
        """One dial the upkeep asked for; a node then asks to be checked, so that the peer
        (which may have forgotten us while we were away) caches us again. A check of a cache
        entry (not ``keep``) dials from a throwaway socket instead, which leaves no connection
        behind and none the peer would redial (a network of a hundred does not become a mesh)."""
        network, cache = self._network, self._membership.cache
        timeout = min(UPKEEP_DIAL_TIMEOUT, network.config.connect_timeout)
        if not keep:
            try:
                answered = await asyncio.wait_for(network.is_reachable(addr), timeout)
            except (errors.Error, TimeoutError):
                answered = False
            if answered and peer_id is not None and addr in cache:
                cache.reachable(addr, time.time(), peer_id)
            elif not answered:
                cache.unreachable(addr)
            self._dialled(addr, answered)
            return
        try:
            dialled = network.connect_to(addr, peer_id=peer_id, direct=True)
            connection = await asyncio.wait_for(dialled, timeout)
        except (errors.Error, TimeoutError) as exc:
            cache.unreachable(addr)
            peer_log(log, peer_id, addr).debug("upkeep dial failed: %s", exc or type(exc).__name__)
            self._dialled(addr, False)
            return
        self._dialled(addr, True)
        if self._membership.role is Role.NODE:
            try:
                await self._check(connection, network.public_addr)
            except errors.Error as exc:
                peer_log(log, peer_id, addr).debug("no check after the upkeep dial: %s", exc)

    async def _ask_for_nodes(self, addr: Address) -> None:
        """Ask the node at ``addr`` (connected) for the nodes it knows: the upkeep dials them
        before its cache's entries, which may all be dead by now (a network churning)."""
        network = self._network
        asked = next((c for c in network.connections() if c.remote_addr == addr and not c.is_closed), None)
        if asked is None:
            return
        try:
            peers = await self._peers(asked)
        except errors.Error as exc:
            peer_log(log, asked.peer_id, addr).debug("no nodes from it: %s", exc)
            return
        own = {network.local_addr, network.public_addr}
        self._upkeep.told([(node, peer_id) for node, peer_id in peers if node not in own])
        if self._wake is not None:
            self._look()

    def _dialled(self, addr: Address, connected: bool) -> None:
        self._upkeep.dialled(addr, connected, asyncio.get_running_loop().time())
        if self._wake is not None:
            self._look()

    # ---- tasks and saving ------------------------------------------------------------------

    def schedule_save(self) -> None:
        """The cache changed: write it soon, once for a burst of changes."""
        if self._save is None:
            self._save = asyncio.get_running_loop().call_later(SAVE_DELAY, self._save_soon)

    def _save_soon(self) -> None:
        self._save = None
        self._tasks.spawn(asyncio.to_thread(self.file.save, self._membership.cache))

    async def close(self) -> None:
        """Stop every task; write the cache one last time if it changed."""
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        await self._tasks.close()
        if self._save is not None:
            self._save.cancel()
            self._save = None
            await asyncio.to_thread(self.file.save, self._membership.cache)
