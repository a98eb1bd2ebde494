"""Hole punching and relaying, in all three roles: the side that dials, the side dialled, and
the node both are connected to (the coordinator, and the relay when punching fails).

Punching (DCUtR-like). A asks the coordinator R for ``target``. R knows both peers' smoothed
round-trip times, and sends each a ``Punch`` timed so that both arrive at the same moment. On
it, each side sprays a few datagrams at the other's address (to open its own NAT's mapping) and
dials it from its one socket; whichever connection completes first is kept. A connection may
come from another address than the one R gave (a symmetric NAT picks a new port per
destination): it is matched to the dial by the peer's endpoint id, as ICE learns a
peer-reflexive candidate.

Relaying. A opens a circuit through R to B; the two run an ordinary qp2p QUIC connection
inside it, whose datagrams R carries as ``RelayData`` without being able to read them. Every
relay counts circuits and bytes against its limits. A relayed connection keeps trying to punch
and moves to the direct path when that succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qp2p import errors, wire
from qp2p._aioquic_hooks import smoothed_rtt
from qp2p._speedups import packet
from qp2p.transport import CID_LENGTH, Address, Receiver

if TYPE_CHECKING:
    from qp2p._link import Link
    from qp2p.connection import Connection
    from qp2p.endpoint import Endpoint

__all__ = ("RelayPath", "Traversal")

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


@dataclass(eq=False)
class _Circuit:
    """A relay's circuit: two connections and the circuit number each side knows it by."""

    a: Link
    a_circuit: int
    b: Link
    b_circuit: int
    bytes: int = 0


@dataclass(eq=False)
class RelayPath:
    """A relayed connection's way out: its datagrams become ``RelayData`` on the relay link."""

    relay: Link
    circuit: int
    peer: Address
    link: Link | None = None
    sent: int = field(default=0)

    def sendto(self, data: bytes, addr: Address) -> None:
        if not self.relay.closed:
            self.relay.session.send_control(wire.RelayData(self.circuit, data))
            self.relay.transmit_soon()
            self.sent += len(data)

    def add_route(self, cid: bytes, receiver: Receiver) -> None:
        """Nothing to route: the circuit number already says which connection it is."""

    def remove_route(self, cid: bytes) -> None:
        """Nothing to route: see add_route."""


class Traversal:
    """NAT traversal for one endpoint."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._circuits: dict[tuple[Link, int], _Circuit] = {}  # as a relay: both ends of each
        self._paths: dict[tuple[Link, int], RelayPath] = {}  # as a relayed peer: our circuits
        self._tasks: set[asyncio.Task[Any]] = set()
        self.punch_attempts = 0  # punch attempts the last connect() made (for the connectivity matrix)

    # ---- dialling through a coordinator ----------------------------------------------------

    async def connect(self, addr: Address, via: Address) -> Connection:
        """Direct, else punched, else relayed through ``via``; ``ConnectionError`` if none works."""
        endpoint = self._endpoint
        handle = endpoint._pooled(addr)
        if not handle._ready.done() and not handle._links:
            endpoint._dial(handle, endpoint._check_open())
        self.punch_attempts = 0
        try:
            async with asyncio.timeout(min(DIRECT_FIRST, endpoint.config.connect_timeout)):
                await handle.wait_ready()
            return handle
        except (TimeoutError, errors.Error):
            pass
        self.punch_attempts = 0
        coordinator = await endpoint.connect_to(via)
        handle = endpoint._pooled(addr)
        for _ in range(PUNCH_ATTEMPTS):
            self.punch_attempts += 1
            if await self._punch(handle, coordinator):
                return handle
        await self._relay(handle, coordinator)
        self._spawn(self._upgrade(handle, coordinator))
        return handle

    async def _punch(self, handle: Connection, coordinator: Connection) -> bool:
        """One punch attempt through ``coordinator``; True once ``handle`` has a connection."""
        endpoint = self._endpoint
        config = endpoint.config
        try:
            answer = await coordinator._control_request(
                wire.PunchRequest(handle.remote_addr), wire.Punch, config.control_timeout, wire.PunchFailed
            )
        except errors.Error as exc:
            log.info("no punch towards %s:%d: %s", *handle.remote_addr, exc)
            return False
        endpoint._expect(answer.peer_id, handle)
        await self._go(answer.peer, answer.delay_ms, handle)
        return await handle._wait_for(
            lambda: handle._current is not None and handle.path != "relayed", PUNCH_TIMEOUT
        )

    async def _go(self, peer: Address, delay_ms: int, handle: Connection) -> None:
        """At the agreed moment: spray a few datagrams at the peer, then dial it."""
        endpoint = self._endpoint
        await asyncio.sleep(delay_ms / 1000)
        transport = endpoint._check_open()
        handle._punching = True
        for _ in range(SPRAY):
            transport.sendto(b"\x00", peer)  # not a QUIC packet: the peer drops it, its NAT opens
            await asyncio.sleep(SPRAY_GAP)
        if not any(link.path != "relayed" and not link.closed for link in handle._links):
            endpoint._dial(handle, transport, peer, path="punched")

    async def _upgrade(self, handle: Connection, coordinator: Connection) -> None:
        """While relayed, try again now and then to punch through to a direct path."""
        for pause in UPGRADE_AFTER:
            await asyncio.sleep(pause)
            if handle.is_closed or handle.path != "relayed" or coordinator.is_closed:
                return
            if await self._punch(handle, coordinator):
                return

    # ---- relaying: the peers' side ---------------------------------------------------------

    async def _relay(self, handle: Connection, relay: Connection) -> None:
        """A circuit through ``relay`` to the peer, and a QUIC connection inside it."""
        endpoint = self._endpoint
        link = relay._usable_link()
        circuit = self._new_circuit(link)
        path = RelayPath(link, circuit, handle.remote_addr)
        self._paths[(link, circuit)] = path
        link.session.send_control(wire.RelayOpen(handle.remote_addr, circuit))
        link.transmit_soon()
        path.link = endpoint._relayed_link(handle, path, client=True)
        try:
            async with asyncio.timeout(endpoint.config.connect_timeout):
                await handle.wait_ready()
        except TimeoutError:
            host, port = handle.remote_addr
            raise errors.ConnectionError(f"no connection to {host}:{port}, even relayed") from None

    def _new_circuit(self, link: Link) -> int:
        while True:
            circuit = secrets.randbits(32)
            if (link, circuit) not in self._paths and (link, circuit) not in self._circuits:
                return circuit

    def _relay_incoming(self, link: Link, message: wire.RelayIncoming) -> None:
        path = RelayPath(link, message.circuit, message.peer)
        self._paths[(link, message.circuit)] = path
        self._endpoint._expect(message.peer_id, self._endpoint._pooled(message.peer))

    def _relay_data_to_us(self, path: RelayPath, datagram: bytes) -> None:
        if path.link is None:  # the first datagram of a circuit opened to us: an Initial
            try:
                header = packet.peek(datagram, CID_LENGTH)
            except errors.MalformedPacket:
                return
            if header.packet_type != packet.INITIAL:
                return
            handle = self._endpoint._pooled(path.peer)
            path.link = self._endpoint._relayed_link(
                handle, path, client=False, original_dcid=header.destination_cid
            )
        path.link.datagram_received(datagram, path.peer)

    def _close_path(self, path: RelayPath, tell_relay: bool) -> None:
        self._paths.pop((path.relay, path.circuit), None)
        if tell_relay and not path.relay.closed:
            path.relay.session.send_control(wire.RelayClose(path.circuit))
            path.relay.transmit_soon()
        if path.link is not None:
            path.link.abort()

    def relayed_link_gone(self, path: RelayPath) -> None:
        """A relayed connection ended: release its circuit."""
        if (path.relay, path.circuit) in self._paths:
            self._close_path(path, tell_relay=True)

    # ---- relaying and coordinating: the node in between ------------------------------------

    def _coordinate(self, asker: Connection, link: Link, target: Address) -> None:
        endpoint = self._endpoint
        other = endpoint._pool.get(target)
        other_link = other._current if other is not None else None
        if (
            other_link is None
            or other_link.closed
            or other_link.session.peer is None
            or link.session.peer is None
        ):
            _send(link, wire.PunchFailed(target))  # the asker's request times out: no Punch comes
            return
        # Both Punches should land at the same moment: the nearer peer's is held back.
        rtt_asker, rtt_other = smoothed_rtt(link.session.quic), smoothed_rtt(other_link.session.quic)
        later = max(rtt_asker, rtt_other)
        _send(link, wire.Punch(target, other_link.session.peer.endpoint_id, int((later - rtt_asker) * 500)))
        _send(
            other_link,
            wire.Punch(asker.remote_addr, link.session.peer.endpoint_id, int((later - rtt_other) * 500)),
        )

    def _open_circuit(self, asker: Connection, link: Link, message: wire.RelayOpen) -> None:
        endpoint = self._endpoint
        config = endpoint.config
        other = endpoint._pool.get(message.target)
        other_link = other._current if other is not None else None
        busy = len(self._circuits) // 2 >= config.relay_max_circuits
        if other_link is None or other_link.closed or link.session.peer is None or busy:
            _send(link, wire.RelayClose(message.circuit))
            return
        theirs = self._new_circuit(other_link)
        circuit = _Circuit(link, message.circuit, other_link, theirs)
        self._circuits[(link, message.circuit)] = circuit
        self._circuits[(other_link, theirs)] = circuit
        _send(other_link, wire.RelayIncoming(asker.remote_addr, link.session.peer.endpoint_id, theirs))

    def _forward(self, link: Link, message: wire.RelayData | wire.RelayClose) -> bool:
        """Carry a circuit's datagram (or its end) to the other side; False if not ours to relay."""
        circuit = self._circuits.get((link, message.circuit))
        if circuit is None:
            return False
        to, number = (circuit.b, circuit.b_circuit) if link is circuit.a else (circuit.a, circuit.a_circuit)
        if isinstance(message, wire.RelayClose):
            self._drop_circuit(circuit)
            _send(to, wire.RelayClose(number))
            return True
        circuit.bytes += len(message.datagram)
        if circuit.bytes > self._endpoint.config.relay_max_bytes:
            log.info(
                "a relay circuit used up its %d bytes: closing it", self._endpoint.config.relay_max_bytes
            )
            self._drop_circuit(circuit)
            _send(link, wire.RelayClose(message.circuit))
            _send(to, wire.RelayClose(number))
            return True
        _send(to, wire.RelayData(number, message.datagram))
        return True

    def _drop_circuit(self, circuit: _Circuit) -> None:
        self._circuits.pop((circuit.a, circuit.a_circuit), None)
        self._circuits.pop((circuit.b, circuit.b_circuit), None)

    def link_closed(self, link: Link) -> None:
        """A connection ended: the circuits through it end too, on both sides."""
        for (end, _), circuit in list(self._circuits.items()):
            if end is link:
                self._drop_circuit(circuit)
                other, other_number = (
                    (circuit.b, circuit.b_circuit) if end is circuit.a else (circuit.a, circuit.a_circuit)
                )
                _send(other, wire.RelayClose(other_number))
        for (relay, _), path in list(self._paths.items()):
            if relay is link:
                self._close_path(path, tell_relay=False)

    # ---- messages --------------------------------------------------------------------------

    def control(self, connection: Connection, link: Link, message: wire.ControlMessage) -> bool:
        """Handle a traversal message; False when it is not one."""
        if isinstance(message, wire.PunchRequest):
            self._coordinate(connection, link, message.target)
        elif isinstance(message, wire.Punch):
            handle = self._endpoint._pooled(message.peer)
            self._endpoint._expect(message.peer_id, handle)
            self._spawn(self._go(message.peer, message.delay_ms, handle))
        elif isinstance(message, wire.RelayOpen):
            self._open_circuit(connection, link, message)
        elif isinstance(message, wire.RelayIncoming):
            self._relay_incoming(link, message)
        elif isinstance(message, wire.RelayData | wire.RelayClose):
            path = self._paths.get((link, message.circuit))
            if path is not None:
                if isinstance(message, wire.RelayData):
                    self._relay_data_to_us(path, message.datagram)
                else:
                    self._close_path(path, tell_relay=False)
            elif not self._forward(link, message):
                log.debug("a relay message for an unknown circuit from %s:%d", *connection.remote_addr)
        elif not isinstance(message, wire.PunchFailed):
            return False
        return True

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for path in list(self._paths.values()):
            self._close_path(path, tell_relay=True)
        self._circuits.clear()


def _send(link: Link, message: wire.ControlMessage) -> None:
    if not link.closed:
        link.session.send_control(message)
        link.transmit_soon()
