"""``Connection``: the application's handle on one peer, and the ``Message`` records it receives.

A peer is its certificate: a ``Connection`` stands for one peer id (the SHA-256 fingerprint TLS
proved), and every QUIC connection (a *link*) whose handshake proved that same certificate
belongs to it, whatever address it came from: direct, punched or relayed. Addresses are what the
links observed, never the key of trust.

When two peers dial each other at the same moment there are two links; both sides keep the same
one (the link dialled by the side with the lower peer id) and stop using the other, without
closing it: whatever was already in flight on it still arrives, and it ends by idle timeout (no
keep-alives once retired). Requests are matched to responses here, by an id unique per handle,
so a response may come back on any of the peer's links.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from qp2p import errors
from qp2p import session as s
from qp2p._link import Link, LinkPath
from qp2p._peer_log import peer_log
from qp2p._pmtud import BASE_SIZE
from qp2p._speedups import framing
from qp2p.transport import Address
from qp2p.wire import ControlMessage

__all__ = ("BytesLike", "Connection", "ConnectionEvents", "Message", "Traffic", "message_taken")

log = logging.getLogger(__name__)

BytesLike = bytes | bytearray | memoryview
# A relayed link that a direct one replaced stays this long for what is in flight on it.
RELAY_LINGER = 2.0
T = TypeVar("T")
_FLAG_USER = framing.FLAG_USER
_FLAG_RESPONSE = framing.FLAG_RESPONSE
# A sender that never waits for credit still yields to the event loop once this many bytes
# are queued, so packets leave while it goes on and other tasks get their turn.
YIELD_AFTER = 64 * 1024


class ConnectionEvents(Protocol):
    """What a connection reports upwards, to the endpoint that made it."""

    def messages_received(self, messages: list[Message]) -> None: ...
    def control_received(self, connection: Connection, link: Link, message: ControlMessage) -> None: ...
    def link_closed(self, link: Link) -> None: ...
    def connection_closed(self, connection: Connection) -> None: ...


@dataclass(slots=True)
class Traffic:
    """What a connection carried, as totals since it opened (they only grow). Messages,
    requests and replies count as one message each; bytes are their payloads'."""

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0

    def add(self, other: Traffic) -> None:
        """Add ``other``'s totals to these."""
        self.messages_sent += other.messages_sent
        self.bytes_sent += other.bytes_sent
        self.messages_received += other.messages_received
        self.bytes_received += other.bytes_received


def _preference(link: Link) -> int:
    """Lower is better: a direct or punched path before a relayed one."""
    return 1 if link.path == "relayed" else 0


def _size(data: BytesLike) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


class Message:
    """One user message or request from a peer.

    ``peer_id`` is the sender's identity, proven by TLS on the link the message came on;
    ``src`` is the address that link's packets come from (for a relayed link, the relay's).
    ``data`` is ``bytes``, or a ``bytearray`` for a message that came on a stream of its own
    (larger than the lane threshold), which saves a copy of up to ``max_message_size`` bytes.
    ``lane`` is the peer's lane it came on (numbered in the order the peer opened them; order
    is kept within a lane) or -1 for such a large message.
    """

    __slots__ = ("_connection", "_event", "_link", "_replied", "data", "lane", "peer_id", "src")

    def __init__(self, connection: Connection, link: Link, event: s.FrameReceived) -> None:
        self.src: Address = link.remote_addr
        self.peer_id: str = connection.peer_id
        self.data = event.data
        self.lane = event.lane
        self._connection = connection
        self._link = link
        self._event = event
        self._replied = False

    def __repr__(self) -> str:
        kind = "request" if self.is_request else "message"
        return f"<{kind} of {len(self.data)} bytes from {self.peer_id[:16]} at {self.src[0]}:{self.src[1]}>"

    @property
    def is_request(self) -> bool:
        """True for a request, which expects exactly one ``reply()``."""
        return self._event.flag == framing.FLAG_REQUEST

    @property
    def connection(self) -> Connection:
        """The connection the message came on: reply, or send more, through it."""
        return self._connection

    def _consumed(self) -> None:
        """The application took the message: its units go back to the sender as credit."""
        link = self._link
        link.session.consumed(self._event)
        link.transmit_soon()

    async def reply(self, data: BytesLike) -> None:
        """Answer a request (empty ``data`` is allowed). Raises ``SendError`` if this is not a
        request or was already answered, and what ``Connection.send`` raises."""
        if not self.is_request:
            raise errors.SendError("only a request can be replied to")
        if self._replied:
            raise errors.SendError("this request was already answered")
        self._replied = True
        prefix = self._event.request_id.to_bytes(4, "big")
        await self._connection._send_frame(framing.FLAG_RESPONSE, prefix, data, None)


def message_taken(message: Message) -> None:
    """The application took ``message`` from the mailbox: its units go back to the sender."""
    message._consumed()


class Connection:
    """A peer we can send to and receive from: one per peer id in an endpoint's pool.

    ``send`` and ``request`` wait for credit, so a peer that does not keep up slows its
    senders down. Everything raises ``ClosedError`` once we closed the connection and
    ``ConnectionLost`` (a ``ConnectionError``) once the peer or the network ended it.
    """

    def __init__(self, peer_id: str, local_id: str, events: ConnectionEvents, close_timeout: float) -> None:
        self.peer_id = peer_id
        self._local_id = local_id
        self._events = events
        self._close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self._links: list[Link] = []
        self._current: Link | None = None
        self._last_addr: Address = ("", 0)
        self._last_path: LinkPath = "direct"
        self._requests: dict[int, asyncio.Future[bytes | bytearray]] = {}
        self._control_waiters: dict[type, list[asyncio.Future[ControlMessage]]] = {}
        self._request_ids = itertools.count(1)
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._close_error: Exception | None = None
        self.traffic = Traffic()  # counted as messages are queued to QUIC and handed up

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        host, port = self.remote_addr
        return f"<Connection {self.peer_id[:16]} at {host}:{port} {self.path} {state}>"

    # ---- public ----------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """The same as ``peer_id``: SHA-256 fingerprint (hex) of the peer's certificate."""
        return self.peer_id

    @property
    def remote_addr(self) -> Address:
        """Where the current link's packets come from (for a relayed link, the relay's address);
        the last such address once closed."""
        link = self._current
        if link is not None:
            self._last_addr = link.remote_addr
        return self._last_addr

    @property
    def path(self) -> LinkPath:
        """How packets reach the peer now: ``"direct"``, through a ``"punched"`` hole in NATs,
        or ``"relayed"`` by a node (still end-to-end encrypted); it may change while connected."""
        link = self._current
        return self._last_path if link is None else link.path

    @property
    def datagram_size(self) -> int:
        """The UDP payload size packets to the peer are built at now: 1200 until path MTU
        discovery confirms a larger one (at most ``Config.max_datagram_size``), 1200 once closed."""
        link = self._current
        return BASE_SIZE if link is None else link.session.datagram_size

    @property
    def is_closed(self) -> bool:
        """Whether the connection has ended, by either side."""
        return self._closed.done()

    @property
    def close_error(self) -> Exception | None:
        """What ended it: ``ClosedError`` when we closed it, ``ConnectionLost`` when the peer
        or the network did (an idle timeout too); None while it is open."""
        return self._close_error if self._closed.done() else None

    @property
    def links(self) -> tuple[Link, ...]:
        """The QUIC connections under this handle, the current one among them."""
        return tuple(self._links)

    @property
    def current_link(self) -> Link | None:
        """The link sends go out on; None once closed."""
        return self._current

    async def send(self, data: BytesLike, *, lane: int | None = None) -> None:
        """Send one message; returns once QUIC has it, not when the peer read it.

        ``lane`` pins the message to one of the lanes (order is kept per lane); by default
        messages take the lanes in turn. Raises ``MessageTooLarge`` above the peer's
        ``max_message_size``, ``SendError`` for an empty message.
        """
        link = self._current
        # The common case costs one call: an open connection with credit and a small message.
        if link is not None and self._close_error is None and type(data) is bytes:
            session = link.session
            if session.try_send(_FLAG_USER, data, lane):
                traffic = self.traffic
                traffic.messages_sent += 1
                traffic.bytes_sent += len(data)
                link.transmit_first()
                if session.queued >= YIELD_AFTER:
                    await asyncio.sleep(0)  # let the transmit run before queueing more
                return
        await self._send_frame(_FLAG_USER, b"", data, lane)

    async def request(self, data: BytesLike, *, timeout: float | None = None) -> bytes | bytearray:
        """Send a request and wait for the peer's ``reply``; ``RequestTimeout`` after ``timeout`` s."""
        request_id = next(self._request_ids) & 0xFFFFFFFF
        waiter: asyncio.Future[bytes | bytearray] = self._loop.create_future()
        self._requests[request_id] = waiter
        try:
            async with asyncio.timeout(timeout):
                await self._send_frame(framing.FLAG_REQUEST, request_id.to_bytes(4, "big"), data, None)
                return await waiter
        except TimeoutError:
            raise errors.RequestTimeout(f"no response from {self} within {timeout} s") from None
        finally:
            self._requests.pop(request_id, None)

    async def close(self) -> None:
        """Close gracefully; idempotent. Waits, at most ``close_timeout`` seconds, until the peer
        has acknowledged everything already sent; operations still waiting (a send held back
        by credit, a large send, a request) fail with ``ClosedError``."""
        await self.shutdown(errors.ClosedError("the connection was closed"))

    async def wait_closed(self) -> None:
        """Returns once the connection has ended; cancelling the wait leaves the connection be."""
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- for the endpoint ------------------------------------------------------------------

    async def shutdown(self, error: Exception) -> None:
        """Close gracefully, failing what still waits with ``error``."""
        self._finish(error)
        links = list(self._links)
        try:
            async with asyncio.timeout(self._close_timeout):
                await asyncio.gather(*(link.drain() for link in links))
        except TimeoutError:
            peer_log(log, self.peer_id, self.remote_addr).info(
                "closing before all sent data was acknowledged"
            )
        finally:
            for link in links:
                link.abort()

    def abort(self, error: Exception) -> None:
        """Close at once, without waiting for anything in flight."""
        self._finish(error)
        for link in list(self._links):
            link.abort()

    async def control_request(
        self, request: ControlMessage, answer: type[T], timeout: float, refusal: type | None = None
    ) -> T:
        """Send a control request and wait for the first control message of type ``answer``
        (these requests carry no ids: one of each kind at a time per connection). A message of
        type ``refusal`` instead raises ``ConnectionError``."""
        link = self._usable_link()
        waiter: asyncio.Future[ControlMessage] = self._loop.create_future()
        kinds = (answer,) if refusal is None else (answer, refusal)
        for kind in kinds:
            self._control_waiters.setdefault(kind, []).append(waiter)
        link.session.send_control(request)  # dropped for a backlogged peer: then it times out
        link.transmit_soon()
        try:
            async with asyncio.timeout(timeout):
                reply = await waiter
        except TimeoutError:
            raise errors.RequestTimeout(f"no {answer.__name__} from {self} in {timeout} s") from None
        finally:
            for kind in kinds:
                waiters = self._control_waiters.get(kind, [])
                if waiter in waiters:
                    waiters.remove(waiter)
        if not isinstance(reply, answer):
            raise errors.ConnectionError(f"{self} refused: {reply!r}")
        return reply

    def send_control(self, message: ControlMessage) -> bool:
        """Queue a control message on the current link; False if there is none open, or the
        peer leaves what we send unacknowledged (the message is dropped)."""
        link = self._current
        if link is None or link.closed or not link.session.send_control(message):
            return False
        link.transmit_soon()
        return True

    # ---- events from links (``LinkOwner``) -------------------------------------------------

    def link_established(self, link: Link) -> None:
        """A link whose handshake proved this peer's certificate joins the handle."""
        if self._close_error is not None:
            link.abort()
            return
        self._links.append(link)
        current = self._current
        if current is None or current.closed:
            self._current = link
        elif _preference(link) < _preference(current) or (
            _preference(link) == _preference(current) and self._dialler(link) < self._dialler(current)
        ):
            self._retire(current)
            self._current = link
        else:
            self._retire(link)

    def frames_received(self, link: Link, frames: list[s.FrameReceived]) -> None:
        """From the endpoint: frames one of our links decoded (replies resolve requests)."""
        messages = []
        size = 0
        for event in frames:
            size += len(event.data)
            if event.flag == _FLAG_RESPONSE:
                waiter = self._requests.get(event.request_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.data)
                link.session.consumed(event)  # delivered (or nobody waits any more): credit goes back
                link.transmit_soon()
            else:
                messages.append(Message(self, link, event))
        traffic = self.traffic
        traffic.messages_received += len(frames)
        traffic.bytes_received += size
        if messages:
            self._events.messages_received(messages)

    def control_received(self, link: Link, message: ControlMessage) -> None:
        """From the endpoint: a control message on one of our links, for whoever awaits its type."""
        waiters = self._control_waiters.get(type(message))
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(message)
                return
        self._events.control_received(self, link, message)

    def link_closed(self, link: Link, event: s.Closing) -> None:
        """From the endpoint: one of our links ended; the connection ends with its last link."""
        if link in self._links:
            self._links.remove(link)
        self._events.link_closed(link)
        if link is self._current:
            self._last_path = link.path
            self._last_addr = link.remote_addr
            alive = [other for other in self._links if not other.closed]
            self._current = alive[0] if alive else None
        if self._current is None:
            self._finish(link.closed_error())

    # ---- inside ----------------------------------------------------------------------------

    def _usable_link(self) -> Link:
        if self._close_error is not None:
            raise self._close_error
        link = self._current
        if link is None or link.closed:
            raise errors.SendError("the connection has no open link")
        return link

    async def _send_frame(self, flag: int, prefix: bytes, data: BytesLike, lane: int | None) -> None:
        size = len(prefix) + _size(data)
        if size == 0 and flag == _FLAG_USER:
            raise errors.SendError("a message cannot be empty")
        link = self._usable_link()
        peer = link.session.peer
        assert peer is not None
        if size > peer.max_message_size:
            raise errors.MessageTooLarge(peer.max_message_size, size)
        if size > link.session.inline_limit:  # the peer's lane threshold, held to ours
            await link.send_large(flag, data, prefix)
        else:
            body = prefix + data if prefix else bytes(data)
            # Only credit can hold a small frame back now; a closing connection wakes the
            # waiter and ``_usable_link`` raises.
            while not link.session.try_send(flag, body, lane):
                await link.wait_credit()
                link = self._usable_link()
            link.transmit_first()
        self.traffic.messages_sent += 1
        self.traffic.bytes_sent += size - len(prefix)

    def _dialler(self, link: Link) -> str:
        """The peer id of whoever dialled ``link``: both peers agree on it."""
        return self._local_id if link.session.is_client else self.peer_id

    def _retire(self, link: Link) -> None:
        link.retired = True
        if link.path == "relayed":  # its replacement is direct: close it, freeing the relay
            link.close_later(RELAY_LINGER)

    def _finish(self, error: Exception) -> None:
        """The handle is over: fail its waiters, leave the pool, report the disconnection once."""
        if self._closed.done():
            return
        self._close_error = error
        if self._current is not None:
            self._last_path = self._current.path
            self._last_addr = self._current.remote_addr
        for link in self._links:
            link.interrupt(error)
        waiters: list[asyncio.Future[Any]] = [*self._requests.values()]
        for pending in self._control_waiters.values():
            waiters += pending
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._closed.set_result(None)
        peer_log(log, self.peer_id, self._last_addr).info("closed: %r", error)  # quoted: peers' words
        self._events.connection_closed(self)
