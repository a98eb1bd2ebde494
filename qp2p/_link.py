"""One QUIC connection on the event loop: a ``Session`` with its deadlines, transmits and waiters.

aioquic's four steps, as in its ``QuicConnectionProtocol``: feed the session, handle its events,
send what it wants sent, re-arm its deadline. The deadlines (QUIC's timer, the keep-alive, the
linger before a close) are alarms of the endpoint's one ``Scheduler``, and transmits after local
writes wait for its one transmit pass at the end of the loop turn, so a link costs no asyncio
handle of its own. What the events mean for the application is the owner's business (a
``Connection``); this module only turns them into futures and callbacks.

Keep-alive. A PING goes out only on a link that sent no datagram for ``keep_alive_interval``.
Every datagram counts, acknowledgements alone too: any outbound packet refreshes a NAT's
mapping, and the peer restarts its idle timer on every packet it processes (RFC 9000 section
10.1). Our own idle timer needs packets from the peer: a link that sent only acknowledgements
sent them because the peer's packets arrived, and a link that sent ack-eliciting packets gets
the peer's acknowledgements back. The deadline is "last send + interval", checked when it
comes: sending only records the time.

Of two peers with the same interval, the one that dialled pings, a tenth of an interval
earlier (``DIALLED_SHARE``), and the other's acknowledgement is its send: one exchange per
interval. With equal deadlines both would ping, each before the other's PING was acknowledged
(an acknowledgement waits for aioquic's ack delay), and a node would carry two exchanges per
client and interval instead of one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol

from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder

from qp2p import errors, wire
from qp2p import session as s
from qp2p._peer_log import peer_log
from qp2p._scheduler import Scheduler
from qp2p._speedups import packet
from qp2p.transport import MIN_INITIAL_SIZE, Address, PacketPath, Transport

__all__ = ("Link", "LinkOwner", "LinkPath", "Refusal")

LinkPath = Literal["direct", "punched", "relayed"]

log = logging.getLogger(__name__)

_ping_ids = itertools.count(1)
# A link we dialled pings after this share of ``keep_alive_interval`` without a send (see above).
DIALLED_SHARE = 0.9

# What the transmit pass owes a link this turn: nothing, a transmit if frames were queued since
# the last one (after ``transmit_first``), or a transmit whatever happens (after ``transmit_soon``).
_NOTHING, _IF_QUEUED, _FORCED = 0, 1, 2


class LinkOwner(Protocol):
    """Whoever a link reports to: the endpoint until the link is established, then the
    ``Connection`` of the peer TLS proved. Read at every event, so a hand-over in the middle
    of a batch sends the rest of the batch to the new owner."""

    def link_established(self, link: Link) -> None: ...
    def frames_received(self, link: Link, frames: list[s.FrameReceived]) -> None: ...
    def control_received(self, link: Link, message: wire.ControlMessage) -> None: ...
    def link_closed(self, link: Link, event: s.Closing) -> None: ...


class Link:
    """Drives one session; reports its events to its owner (``LinkOwner``)."""

    def __init__(
        self,
        session: s.Session,
        transport: PacketPath,
        remote_addr: Address,
        owner: LinkOwner,
        scheduler: Scheduler,
        keep_alive_interval: float | None,
        forgotten: Callable[[Link], None],
        path: LinkPath = "direct",
        send_timeout: float | None = None,
    ) -> None:
        self.session = session
        self.packet_path = transport
        self.path = path  # how the datagrams travel: straight, through a punched hole, or relayed
        # The address packets come from (for a relayed link: the relay's), never a claimed one.
        self._forgotten = forgotten
        self.remote_addr = remote_addr
        # The address we dialled, for links we opened ourselves: how connect_to finds them again.
        self.target: Address | None = None
        self.owner = owner
        self.retired = False
        self.heard = False  # a datagram came for this link: someone answers at the other end
        self.received = 0  # bytes of the datagrams that came for it
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._cids: set[bytes] = set()
        self._scheduler = scheduler
        self._timer = scheduler.alarm(self._on_timer)
        self.timer_wakeups = 0  # times the QUIC timer fired
        self._keep_alive = scheduler.alarm(self._on_keep_alive)
        self._linger = scheduler.alarm(lambda _: self.close())
        self._owed = _NOTHING  # what the transmit pass owes this link
        if keep_alive_interval is not None and session.is_client:
            keep_alive_interval *= DIALLED_SHARE
        self._keep_alive_interval = keep_alive_interval
        self._sent_at = self._loop.time()  # when the last datagram went out
        self._idle_since = self._sent_at  # the last send the keep-alive deadline was set from
        self.keep_alives = 0  # PINGs sent because the link was idle for a whole interval
        self._send_timeout = send_timeout  # how long a send may wait for the peer's credit
        self._credit_at = self._loop.time()  # when the peer last granted credit
        self._credit_waiters: list[asyncio.Future[None]] = []
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._large_waiters: dict[int, asyncio.Future[None]] = {}
        self._large_gate: asyncio.Semaphore | None = None
        self.established: asyncio.Future[None] = self._loop.create_future()
        self.terminated: asyncio.Future[None] = self._loop.create_future()
        self.end: s.Closing | None = None
        self.add_cid(session.quic.host_cid)

    # ---- routing and the four steps --------------------------------------------------------

    def add_cid(self, cid: bytes) -> None:
        self._cids.add(cid)
        self._transport.add_route(cid, self)

    def _remove_cid(self, cid: bytes) -> None:
        self._cids.discard(cid)
        self._transport.remove_route(cid)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.heard = True
        self.received += len(data)
        self.session.receive_datagram(data, addr, self._loop.time())
        self._handle_events()
        # Not at once: a task woken by this datagram (a reader about to reply, a sender given
        # credit) runs first, so its frames leave in the same transmit as our acknowledgement.
        self.transmit_soon()
        if self._drain_waiters and self.session.unacked == 0:
            self._wake(self._drain_waiters)

    def transmit(self, now: float | None = None) -> None:
        """Send what the session has queued, handle what that raised, re-arm the deadline."""
        self._owed = _NOTHING
        session = self.session
        if now is None:
            now = self._loop.time()
        datagrams = session.datagrams_to_send(now)
        if datagrams:
            self._sent_at = now
            for data, addr in datagrams:
                self._transport.sendto(data, addr)
        self._handle_events()
        timer_at = session.get_timer()
        if timer_at is None or self.terminated.done():
            self._timer.cancel()
        else:
            self._timer.set(timer_at)

    def transmit_soon(self) -> None:
        """Transmit once this turn of the event loop is over, together with whatever else it queues."""
        if self.terminated.done():
            return
        if self._owed == _NOTHING:
            self._scheduler.transmit_soon(self)
        self._owed = _FORCED

    def transmit_first(self) -> None:
        """After queueing frames: send at once if nothing else was sent this turn (one lone
        request goes out without waiting), else leave them for the transmit at the turn's end."""
        if self._owed == _NOTHING and not self.terminated.done():
            self.transmit()
            self._scheduler.transmit_soon(self)
            self._owed = _IF_QUEUED

    def transmit_pass(self) -> None:
        """The scheduler's pass at the end of the turn: transmit if this link is still owed one."""
        owed, self._owed = self._owed, _NOTHING
        if owed == _FORCED or (owed == _IF_QUEUED and self.session.queued):
            self.transmit()

    def _on_timer(self, now: float) -> None:
        """QUIC's deadline came: ``now`` is at least the deadline (the scheduler's clock tick)."""
        self.timer_wakeups += 1
        self.session.handle_timer(now)
        self._handle_events()
        self.transmit(now)

    def _on_keep_alive(self, now: float) -> None:
        """Ping if nothing was sent since the deadline was set, else wait for "last send + interval"."""
        if self.terminated.done() or self.retired:
            return
        if self._sent_at == self._idle_since:
            self.session.send_ping(next(_ping_ids))
            self.keep_alives += 1
            self.transmit(now)
        self._schedule_keep_alive(now)

    def _schedule_keep_alive(self, now: float) -> None:
        interval = self._keep_alive_interval
        if interval is None or self.terminated.done():
            return
        # A ping that could not leave (nothing was sent) is retried an interval later, not at once.
        self._idle_since = self._sent_at
        self._keep_alive.set(max(self._sent_at, now - interval) + interval)

    # ---- events ----------------------------------------------------------------------------

    @property
    def peer_id(self) -> str | None:
        """The peer's identity as TLS proved it on this link (None before the handshake)."""
        return self.session.peer_id

    def _handle_events(self) -> None:
        session = self.session
        while (event := session.next_event()) is not None:
            kind = type(event)
            if kind is s.FramesReceived:
                self.owner.frames_received(self, event.frames)  # type: ignore[union-attr]
            elif kind is s.CreditGranted:
                self._credit_at = self._loop.time()
                self._wake_credit_waiters()
            elif kind is s.LargeSendDone:
                self._settle_large(event.stream_id, None)  # type: ignore[union-attr]
            elif kind is s.LargeSendFailed:
                self._settle_large(event.stream_id, errors.SendError(event.reason))  # type: ignore[union-attr]
            elif kind is s.CidIssued:
                self.add_cid(event.cid)  # type: ignore[union-attr]
            elif kind is s.CidRetired:
                self._remove_cid(event.cid)  # type: ignore[union-attr]
            elif kind is s.Established:
                self._large_gate = asyncio.Semaphore(event.peer.large_message_slots)  # type: ignore[union-attr]
                self._schedule_keep_alive(self._loop.time())
                if not self.established.done():
                    self.established.set_result(None)
                self.owner.link_established(self)
            elif kind is s.ControlReceived:
                self.owner.control_received(self, event.message)  # type: ignore[union-attr]
            elif kind is s.StreamRefused:
                peer_log(log, self.peer_id, self.remote_addr).info(
                    "refused stream %d: %s",
                    event.stream_id,  # type: ignore[union-attr]
                    event.error,  # type: ignore[union-attr]
                )
            elif kind is s.Closing:
                self._closing(event)  # type: ignore[arg-type]
            elif kind is s.Terminated:
                self._forget()

    def _closing(self, event: s.Closing) -> None:
        """Nothing more can be sent: fail every waiter, tell the owner. The QUIC connection
        lives on through its closing or draining period, to answer the peer's stray packets."""
        self.end = event
        self._keep_alive.cancel()
        self._wake_credit_waiters()
        self._wake(self._drain_waiters)
        for stream_id in list(self._large_waiters):
            self._settle_large(stream_id, self.closed_error())
        if not self.established.done():
            self.established.set_exception(self.closed_error())
            self.established.exception()  # retrieved: a failed handshake may have no waiter
        self.owner.link_closed(self, event)

    def _forget(self) -> None:
        """The QUIC connection is over: release its routes and timers."""
        for cid in list(self._cids):
            self._remove_cid(cid)
        for alarm in (self._timer, self._keep_alive, self._linger):
            alarm.cancel()
        self._owed = _NOTHING
        if not self.terminated.done():
            self.terminated.set_result(None)
            self._forgotten(self)

    # ---- waiting on the session ------------------------------------------------------------

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        waiters.clear()

    def _wake_credit_waiters(self) -> None:
        self._wake(self._credit_waiters)

    async def wait_credit(self) -> None:
        """Until the peer grants more credit, the link ends, or its owner is closing;
        ``SendTimeout`` after ``send_timeout`` seconds without credit."""
        waiter = self._loop.create_future()
        self._credit_waiters.append(waiter)
        try:
            async with asyncio.timeout(self._send_timeout):
                await waiter
        except TimeoutError:
            raise self._stalled() from None

    def _stalled(self) -> errors.SendTimeout:
        return errors.SendTimeout(f"no credit from the peer for {self._send_timeout} s")

    async def _until_done(self, waiter: asyncio.Future[None]) -> None:
        """Until a large send's ``waiter`` is settled; ``SendTimeout`` once the peer granted no
        credit for ``send_timeout`` seconds (a large send moves only as credit comes)."""
        while True:
            try:
                async with asyncio.timeout(self._send_timeout):
                    await asyncio.shield(waiter)
                return
            except TimeoutError:
                assert self._send_timeout is not None
                if self._loop.time() - self._credit_at >= self._send_timeout:
                    raise self._stalled() from None

    async def drain(self) -> None:
        """Until the peer acknowledged every byte written so far, or the link ended."""
        self.transmit()
        while self.end is None and self.session.unacked:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def interrupt(self, error: Exception) -> None:
        """The owner is closing: large sends fail with ``error`` (their streams reset), and
        senders waiting for credit wake up to find out."""
        for stream_id in list(self._large_waiters):
            self.session.cancel_large(stream_id)
            self._settle_large(stream_id, error)
        self._wake_credit_waiters()
        self.transmit_soon()

    def _settle_large(self, stream_id: int, error: Exception | None) -> None:
        waiter = self._large_waiters.pop(stream_id, None)
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)

    async def send_large(self, flag: int, payload: Any, prefix: bytes) -> None:
        """Send one frame on a stream of its own, as credit allows; cancelling resets the stream."""
        assert self._large_gate is not None
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._large_gate.acquire()
        except TimeoutError:
            raise errors.SendTimeout(
                f"no large-message slot of the peer's for {self._send_timeout} s"
            ) from None
        try:
            self.check_open()
            stream_id = self.session.start_large(flag, payload, prefix)
            waiter = self._loop.create_future()
            self._large_waiters[stream_id] = waiter
            self.transmit_soon()
            try:
                await self._until_done(waiter)
            except (asyncio.CancelledError, errors.SendTimeout):
                self._large_waiters.pop(stream_id, None)
                self.session.cancel_large(stream_id)
                self.transmit_soon()
                raise
        finally:
            self._large_gate.release()

    @property
    def closed(self) -> bool:
        """True once the connection began closing: it can no longer carry anything."""
        return self.end is not None or self.session.closing

    def closed_error(self) -> Exception:
        """What an operation on this link raises once it ended: ours to close, or lost."""
        event = self.end
        if event is None or not event.by_peer:
            return errors.ClosedError("the connection was closed")
        return errors.ConnectionLost(event.reason or f"closed with error code {event.error_code:#x}")

    def check_open(self) -> None:
        if self.end is not None:
            raise self.closed_error()

    # ---- closing ---------------------------------------------------------------------------

    def close(self, error_code: int = s.CLOSE_NORMAL, reason: str = "") -> None:
        """Start a graceful close: the peer gets a CONNECTION_CLOSE; ``terminated`` follows."""
        if not self.terminated.done():
            self.session.close(error_code, reason)
            self.transmit()

    def close_later(self, delay: float) -> None:
        """Close gracefully after ``delay`` seconds (unless over by then)."""
        if not self._linger.armed and not self.terminated.done():
            self._linger.set(self._loop.time() + delay)

    def abort(self, reason: str = "") -> None:
        """Send one CONNECTION_CLOSE (giving ``reason``), then forget the connection without
        waiting for the closing period: used when the connection or the endpoint is closed."""
        self.close(reason=reason)
        if self.end is None:
            self._closing(s.Closing(s.CLOSE_NORMAL, "closed", by_peer=False))
        self._forget()


class Refusal:
    """Answers the Initial of a dial we will not take (too many connections or handshakes)
    with a CONNECTION_CLOSE carrying CONNECTION_REFUSED and ``reason``, then forgets it: no
    route, no timer, and no TLS: the close goes out in an Initial packet under the keys the
    client's connection id gives (RFC 9001 section 5.2), so a refusal costs no signature."""

    def __init__(self, transport: Transport, header: packet.PacketHeader, reason: str) -> None:
        self._transport = transport
        self._header = header
        self._reason = reason.encode()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        header = self._header
        assert header.version is not None
        crypto = CryptoPair()
        crypto.setup_initial(header.destination_cid, is_client=False, version=header.version)
        builder = QuicPacketBuilder(
            host_cid=header.destination_cid,
            peer_cid=header.source_cid,
            version=header.version,
            is_client=False,
            max_datagram_size=MIN_INITIAL_SIZE,
        )
        builder.start_packet(QuicPacketType.INITIAL, crypto)
        # A transport-level close (with a frame type): before the handshake an application
        # close would reach the client as a bare APPLICATION_ERROR, without its reason.
        frame = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=32 + len(self._reason))
        frame.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
        frame.push_uint_var(0)  # the frame type that caused it: none
        frame.push_uint_var(len(self._reason))
        frame.push_bytes(self._reason)
        datagrams, _ = builder.flush()
        for datagram in datagrams:
            self._transport.sendto(datagram, addr)


class RelayPath:
    """A relayed link's way out: its datagrams travel as ``RelayData`` on the relay link.
    ``link`` is the end-to-end link inside the circuit, once made."""

    def __init__(self, relay: Link, circuit: int) -> None:
        self.relay = relay
        self.circuit = circuit
        self.link: Link | None = None
        self.expiry: asyncio.TimerHandle | None = None  # closes a circuit opened to us but unused

    def cancel_expiry(self) -> None:
        """The circuit got its link, or ended: its expiry timer goes."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None

    def sendto(self, data: bytes, addr: Address) -> None:
        # A relay that does not take what we send loses the datagram, as a full link would.
        if not self.relay.closed and self.relay.session.send_control(wire.RelayData(self.circuit, data)):
            self.relay.transmit_soon()

    def add_route(self, cid: bytes, receiver: Any) -> None:
        """Nothing to route: the circuit number already says which connection it is."""

    def remove_route(self, cid: bytes) -> None:
        """Nothing to route: see add_route."""
