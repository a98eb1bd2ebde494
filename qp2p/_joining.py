"""Joining a network: bootstrap, the public address, reachability checks, and the cache of nodes.

``Membership`` is the endpoint's part that deals with other nodes as a network rather than as
single connections. It becomes active with ``bootstrap()``; before that an endpoint neither
reads nor writes a bootstrap cache. docs/joining.md shows the sequence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import platformdirs

from qp2p import errors, wire
from qp2p.bootstrap_cache import BootstrapCache, CacheFile
from qp2p.config import Role

if TYPE_CHECKING:
    from qp2p._link import Link
    from qp2p.connection import Connection
    from qp2p.endpoint import Endpoint
    from qp2p.transport import Address

__all__ = ("Membership",)

log = logging.getLogger(__name__)

# Peers asked for from the node we bootstrap through, and dialled at once (at most).
PEERS_WANTED = 32
PEERS_DIALLED_AT_ONCE = 4
# Reachability checks run at once (at most); each costs a fresh socket and a handshake.
CHECKS_AT_ONCE = 4
# A change to the cache is written after this long, so a burst of changes costs one write.
SAVE_DELAY = 2.0


class Membership:
    """One endpoint's view of the network it joined."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        config = endpoint.config
        self.role = config.role
        self.active = False
        self.echoed: Address | None = None
        self.contact: Address | None = None  # the node we bootstrapped through
        self.cache = BootstrapCache(config.bootstrap_cache_size, config.bootstrap_cache_per_prefix)
        folder = config.bootstrap_cache_dir or platformdirs.user_cache_dir("qp2p")
        self.file = CacheFile(folder)
        self._rng = random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._checks = asyncio.Semaphore(CHECKS_AT_ONCE)
        self._save: asyncio.TimerHandle | None = None
        self._verifying: set[Link] = set()  # one check at a time per connection that asks

    # ---- bootstrap -------------------------------------------------------------------------

    async def bootstrap(self) -> Connection:
        endpoint = self._endpoint
        config = endpoint.config
        await asyncio.to_thread(self.file.load, self.cache)
        self.active = True
        own = {endpoint.local_addr, endpoint.public_addr}
        candidates = list(dict.fromkeys(config.hard_coded_contacts))
        candidates += [e.addr for e in self.cache.order(time.time(), self._rng) if e.addr not in candidates]
        candidates = [addr for addr in candidates if addr not in own]
        if not candidates:
            raise errors.BootstrapError("no hard-coded contacts, and the bootstrap cache is empty")
        connection, attempts = await self._first_of(candidates)
        if connection is None:
            summary = "; ".join(f"{host}:{port}: {outcome}" for (host, port), outcome in attempts.items())
            raise errors.BootstrapError(f"no peer answered ({summary})", attempts)
        self.contact = connection.remote_addr
        await self._join(connection)
        return connection

    async def _first_of(self, candidates: list[Address]) -> tuple[Connection | None, dict[Address, str]]:
        """Dials candidates in order, a few at once; the first connection wins and the other
        attempts are cancelled, their half-made connections closed."""
        endpoint = self._endpoint
        loop = asyncio.get_running_loop()
        attempts: dict[Address, str] = {addr: "not tried" for addr in candidates}
        winner: asyncio.Future[Any] = loop.create_future()
        gate = asyncio.Semaphore(endpoint.config.bootstrap_concurrency)

        async def attempt(addr: Address) -> None:
            async with gate:
                if winner.done():
                    return
                attempts[addr] = "trying"
                try:
                    connection = await endpoint.connect_to(addr)
                except errors.Error as exc:
                    attempts[addr] = f"{type(exc).__name__}: {exc}"
                    self.cache.unreachable(addr)
                    return
                except asyncio.CancelledError:
                    attempts[addr] = "cancelled: another peer answered first"
                    endpoint._abandon_dial(addr)
                    raise
                attempts[addr] = "connected"
                if not winner.done():
                    winner.set_result(connection)

        tasks = [asyncio.create_task(attempt(addr)) for addr in candidates]
        everything: asyncio.Future[Any] = asyncio.gather(*tasks)
        try:
            async with asyncio.timeout(endpoint.config.bootstrap_timeout):
                await asyncio.wait([winner, everything], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(everything, return_exceptions=True)
        for addr, outcome in attempts.items():
            if outcome == "trying":
                attempts[addr] = "no answer within bootstrap_timeout"
        return (winner.result() if winner.done() else None), attempts

    async def _join(self, connection: Connection) -> None:
        """Learn our public address; as a node, have the contact check it can reach us there;
        then learn of other nodes."""
        config = self._endpoint.config
        echo = await connection._control_request(
            wire.EchoRequest(), wire.EchoResponse, config.control_timeout
        )
        self.echoed = echo.addr
        if self.role is Role.NODE:
            public = self._endpoint.public_addr
            verdict = await connection._control_request(  # the verifier gives up after its control_timeout
                wire.VerificationRequest(public), wire.VerificationResponse, 3 * config.control_timeout
            )
            if not verdict.reachable:
                host, port = connection.remote_addr
                problem = f"{host}:{port} could not connect back to us at {public[0]}:{public[1]}"
                if not config.client_fallback:
                    raise errors.ReachabilityError(
                        f"{problem}: we cannot run as a node here (forward a port, set external_ip and "
                        "external_port, or allow client_fallback)"
                    )
                log.warning("%s; running as a client", problem)
                self.become_client()
        peers = await connection._control_request(
            wire.PeersRequest(PEERS_WANTED), wire.PeersResponse, config.control_timeout
        )
        self._spawn(self._discover([addr for addr, _ in peers.peers]))

    def become_client(self) -> None:
        """From now on, tell peers we are a client: they will not cache us or hand us out."""
        self.role = Role.CLIENT
        endpoint = self._endpoint
        endpoint._hello = dataclasses.replace(endpoint._hello, node=False)

    async def _discover(self, addrs: list[Address]) -> None:
        """Dials nodes we were told about; those that answer enter the cache (``connected``).
        A node also asks each to check it, which is how they learn of us."""
        endpoint = self._endpoint
        gate = asyncio.Semaphore(PEERS_DIALLED_AT_ONCE)
        own = {endpoint.local_addr, endpoint.public_addr}
        timeout = 3 * endpoint.config.control_timeout

        async def dial(addr: Address) -> None:
            async with gate:
                try:
                    connection = await endpoint.connect_to(addr)
                    if self.role is Role.NODE:
                        request = wire.VerificationRequest(endpoint.public_addr)
                        await connection._control_request(request, wire.VerificationResponse, timeout)
                except errors.Error as exc:
                    log.info("a node we were told about, %s:%d, did not answer: %s", *addr, exc)

        await asyncio.gather(*(dial(addr) for addr in addrs if addr not in own))

    # ---- what connections tell us ----------------------------------------------------------

    def connected(self, connection: Connection, link: Link, dialled: bool, seconds: float) -> None:
        """A connection was established. A node we dialled is reachable from here: into the
        cache. A node that dialled us enters only once it asked us to check it (``_verify``)."""
        peer = link.session.peer
        if self.active and dialled and peer is not None and peer.node:
            self._reachable(connection.remote_addr, connection.fingerprint, seconds)

    def _reachable(self, addr: Address, fingerprint: str | None, seconds: float | None) -> None:
        self.cache.reachable(addr, time.time(), fingerprint, seconds)
        self._schedule_save()

    def control(self, connection: Connection, link: Link, message: wire.ControlMessage) -> None:
        """Requests a peer makes of us: what it looks like from here, whether we can reach it,
        which nodes we know."""
        if isinstance(message, wire.EchoRequest):
            _reply(link, wire.EchoResponse(link.remote_addr))
        elif isinstance(message, wire.VerificationRequest):
            if link in self._verifying:
                _reply(link, wire.VerificationResponse(False))
            else:
                self._verifying.add(link)
                self._spawn(self._verify(link, message.addr))
        elif isinstance(message, wire.PeersRequest):
            known = [
                (entry.addr, entry.fingerprint)
                for entry in self.cache.entries()
                if entry.fingerprint is not None and entry.addr != link.remote_addr
            ]
            _reply(link, wire.PeersResponse(tuple(known[: min(message.limit, PEERS_WANTED)])))
        else:
            log.debug("ignored control message %r from %s", message, connection.remote_addr)

    async def _verify(self, link: Link, addr: Address) -> None:
        """Connect to ``addr`` from a fresh socket, so that no NAT mapping the peer opened to
        us helps; only the peer's own IP address is checked, so we cannot be made to dial others."""
        reachable = False
        try:
            if addr[0] == link.remote_addr[0]:
                async with self._checks:
                    fingerprint = await self._endpoint._probe(addr, self._endpoint.config.control_timeout)
                reachable = fingerprint is not None
                peer = link.session.peer
                if reachable and self.active and peer is not None and peer.node:
                    self._reachable(addr, fingerprint, None)
        finally:
            self._verifying.discard(link)
        _reply(link, wire.VerificationResponse(reachable))

    # ---- tasks and saving ------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("network upkeep failed: %r", task.exception())

    def _schedule_save(self) -> None:
        if self._save is None:
            self._save = asyncio.get_running_loop().call_later(SAVE_DELAY, self._save_soon)

    def _save_soon(self) -> None:
        self._save = None
        self._spawn(asyncio.to_thread(self.file.save, self.cache))

    async def close(self) -> None:
        """Stop every task; write the cache one last time if it changed."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._save is not None:
            self._save.cancel()
            self._save = None
            await asyncio.to_thread(self.file.save, self.cache)


def _reply(link: Link, message: wire.ControlMessage) -> None:
    if not link.closed:
        link.session.send_control(message)
        link.transmit_soon()
