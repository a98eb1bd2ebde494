"""``Connection``: the application's handle on one peer, and the ``Message`` records it receives.

A handle outlives the QUIC connections under it. When two peers dial each other at the same
moment there are two; both sides keep the same one (the connection opened by the side with the
lower endpoint id) and stop using the other, without closing it: whatever was already in flight
on it still arrives, and it ends by idle timeout (no keep-alives once retired). Closing it
actively could cut off data the peer had not finished sending on it. Requests are matched to
responses here, by an id unique per handle, so a response may come back on any of the peer's
connections.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from qp2p import errors, tls
from qp2p import session as s
from qp2p._speedups import framing

if TYPE_CHECKING:
    from qp2p._link import Link
    from qp2p.endpoint import Endpoint
    from qp2p.transport import Address
    from qp2p.wire import ControlMessage

__all__ = ("Connection", "Message")

log = logging.getLogger(__name__)

BytesLike = bytes | bytearray | memoryview
# A relayed connection that a direct one replaced stays this long for what is in flight on it.
RELAY_LINGER = 2.0
T = TypeVar("T")
# QUIC carries a TLS alert as this plus the alert's number (RFC 9001 section 4.8).
CRYPTO_ERROR = 0x100
_FLAG_USER = framing.FLAG_USER
# A sender that never waits for credit still yields to the event loop once this many bytes
# are queued, so packets leave while it goes on and other tasks get their turn.
YIELD_AFTER = 64 * 1024


def _preference(link: Link) -> int:
    """Lower is better: a direct or punched path before a relayed one."""
    return 1 if link.path == "relayed" else 0


def _size(data: BytesLike) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


class Message:
    """One user message or request from a peer.

    ``data`` is ``bytes``, or a ``bytearray`` for a message that came on a stream of its own
    (larger than the lane threshold), which saves a copy of up to ``max_message_size`` bytes.
    ``lane`` is the peer's lane it came on (numbered in the order the peer opened them; order
    is kept within a lane) or -1 for such a large message.
    """

    __slots__ = ("_connection", "_event", "_link", "_replied", "data", "lane", "src")

    def __init__(self, connection: Connection, link: Link, event: s.FrameReceived) -> None:
        self.src: Address = connection.remote_addr
        self.data = event.data
        self.lane = event.lane
        self._connection = connection
        self._link = link
        self._event = event
        self._replied = False

    def __repr__(self) -> str:
        kind = "request" if self.is_request else "message"
        return f"<{kind} of {len(self.data)} bytes from {self.src[0]}:{self.src[1]}>"

    @property
    def is_request(self) -> bool:
        """True for a request, which expects exactly one ``reply()``."""
        return self._event.flag == framing.FLAG_REQUEST

    @property
    def connection(self) -> Connection:
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


class Connection:
    """A peer we can send to and receive from; one per peer address in an endpoint's pool.

    ``send`` and ``request`` wait for credit, so a peer that does not keep up slows its
    senders down. Everything raises ``ClosedError`` once we closed the connection and
    ``ConnectionLost`` (a ``ConnectionError``) once the peer or the network ended it.
    """

    def __init__(self, endpoint: Endpoint, remote_addr: Address) -> None:
        self._endpoint = endpoint
        self._loop = asyncio.get_running_loop()
        self.remote_addr = remote_addr
        self._links: list[Link] = []
        self._current: Link | None = None
        self._announced = False
        self._requests: dict[int, asyncio.Future[bytes | bytearray]] = {}
        self._control_waiters: dict[type, list[asyncio.Future[ControlMessage]]] = {}
        self._change: asyncio.Future[None] = self._loop.create_future()
        self._punching = False  # a hole punch towards this peer is under way
        self._dialled_at = self._loop.time()
        self._request_ids = itertools.count(1)
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._close_error: Exception | None = None

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open" if self._current is not None else "connecting"
        return f"<Connection {self.remote_addr[0]}:{self.remote_addr[1]} {state}>"

    # ---- public ----------------------------------------------------------------------------

    @property
    def path(self) -> Literal["direct", "punched", "relayed"]:
        """How packets reach the peer: ``"direct"``, through a ``"punched"`` hole in NATs, or
        ``"relayed"`` by a node (still end-to-end encrypted); it may change while connected."""
        link = self._current
        return "direct" if link is None else link.path

    @property
    def is_closed(self) -> bool:
        return self._closed.done()

    @property
    def fingerprint(self) -> str | None:
        """SHA-256 fingerprint (hex) of the certificate the peer presented, once connected."""
        link = self._current
        return None if link is None else link.session.peer_fingerprint

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
            if timeout is None:
                await self._send_frame(framing.FLAG_REQUEST, request_id.to_bytes(4, "big"), data, None)
                return await waiter
            async with asyncio.timeout(timeout):
                await self._send_frame(framing.FLAG_REQUEST, request_id.to_bytes(4, "big"), data, None)
                return await waiter
        except TimeoutError:
            host, port = self.remote_addr
            raise errors.RequestTimeout(f"no response from {host}:{port} within {timeout} s") from None
        finally:
            self._requests.pop(request_id, None)

    async def close(self) -> None:
        """Close gracefully; idempotent. Waits, at most ``close_timeout`` seconds, until the peer
        has acknowledged everything already sent; operations still waiting (a send held back
        by credit, a large send, a request) fail with ``ClosedError``."""
        await self._shutdown(errors.ClosedError("the connection was closed"))

    async def _shutdown(self, error: Exception) -> None:
        self._finish(error)
        links = list(self._links)
        try:
            async with asyncio.timeout(self._endpoint.config.close_timeout):
                await asyncio.gather(*(link.drain() for link in links))
        except TimeoutError:
            log.info("closing %s before all sent data was acknowledged", self)
        finally:
            for link in links:
                link.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- sending ---------------------------------------------------------------------------

    async def wait_ready(self) -> None:
        """Until a QUIC connection to the peer is established (or all failed)."""
        await asyncio.shield(self._ready)

    def _usable_link(self) -> Link:
        if self._close_error is not None:
            raise self._close_error
        link = self._current
        if link is None or link.closed:
            raise errors.SendError("the connection is not established yet")
        return link

    async def _send_frame(self, flag: int, prefix: bytes, data: BytesLike, lane: int | None) -> None:
        size = len(prefix) + _size(data)
        if size == 0 and flag == _FLAG_USER:
            raise errors.SendError("a message cannot be empty")
        if not self._ready.done():
            await self.wait_ready()
        link = self._usable_link()
        peer = link.session.peer
        assert peer is not None
        if size > peer.max_message_size:
            raise errors.MessageTooLarge(peer.max_message_size, size)
        if size > peer.lane_threshold:
            await link.send_large(flag, data, prefix)
            return
        body = prefix + data if prefix else bytes(data)
        # Only credit can hold a small frame back now; a closing connection wakes the waiter
        # and ``_usable_link`` raises.
        while not link.session.try_send(flag, body, lane):
            await link.wait_credit()
            link = self._usable_link()
        link.transmit_first()

    # ---- events from links -----------------------------------------------------------------

    def _add_link(self, link: Link) -> None:
        self._links.append(link)

    def _link_established(self, link: Link) -> None:
        adopter = self._endpoint._adopter(self, link)
        if adopter is not None:  # a punched or relayed connection from an address we did not dial
            self._links.remove(link)
            link.owner = adopter
            adopter._add_link(link)
            adopter._link_established(link)
            if not self._links:
                self._endpoint._forget_handle(self)
            return
        if self._punching and link.path == "direct":
            link.path = "punched"
        current = self._current
        if current is None or current.closed:
            self._current = link
        elif _preference(link) < _preference(current) or (
            _preference(link) == _preference(current) and self._client_id(link) < self._client_id(current)
        ):
            self._retire(current)
            self._current = link
        else:
            self._retire(link)
        self._changed()
        if not self._ready.done():
            self._ready.set_result(None)
        if not self._announced:
            self._announced = True
            self._endpoint._connection_ready(self, link, self._loop.time() - self._dialled_at)

    def _client_id(self, link: Link) -> int:
        """The endpoint id of whoever dialled ``link``: both peers agree on it."""
        peer = link.session.peer
        assert peer is not None
        return self._endpoint.endpoint_id if link.session.is_client else peer.endpoint_id

    def _retire(self, link: Link) -> None:
        link.retired = True
        if link.path == "relayed":  # its replacement is direct: close it, freeing the relay
            link.close_later(RELAY_LINGER)

    def _changed(self) -> None:
        """Wake whoever waits for the connection's links to change (``_wait_for``)."""
        waiter, self._change = self._change, self._loop.create_future()
        waiter.set_result(None)

    async def _wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Until ``condition()`` holds after some change of links (True), or ``timeout`` passes."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    if self.is_closed:
                        return False
                    await asyncio.shield(self._change)
        except TimeoutError:
            return False
        return True

    def _link_closed(self, link: Link, event: s.Closing) -> None:
        self._links.remove(link)
        self._endpoint._link_closed(link)
        if not link.session.established:
            self._endpoint._handshake_failed(self, event)
        if link is self._current:
            alive = [other for other in self._links if other.established.done() and not other.closed]
            self._current = alive[0] if alive else None
        self._changed()
        if self._current is None and all(other.closed for other in self._links):
            error = link.closed_error()
            if not self._ready.done():
                error = self._dial_error(event)
            self._finish(error)

    def _dial_error(self, event: s.Closing) -> Exception:
        """Why no connection could be made: a refused certificate (either side's refusal) or
        anything else."""
        host, port = self.remote_addr
        reason = event.reason or f"error code {event.error_code:#x}"
        alert = event.error_code - CRYPTO_ERROR
        if 0 <= alert < 0x100 and alert in tls.CERTIFICATE_ALERTS:
            return errors.CertificateError(f"{host}:{port}: certificate refused: {reason}")
        return errors.ConnectionError(f"could not connect to {host}:{port}: {reason}")

    def _finish(self, error: Exception) -> None:
        """The handle is over: fail its waiters, leave the pool, report the disconnection once."""
        if self._closed.done():
            return
        self._close_error = error
        for link in self._links:
            link.interrupt(error)
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # retrieved: nobody may be waiting
        waiters: list[asyncio.Future[Any]] = [*self._requests.values()]
        for pending in self._control_waiters.values():
            waiters += pending
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._closed.set_result(None)
        self._endpoint._connection_closed(self, announced=self._announced)

    def _frame_received(self, link: Link, event: s.FrameReceived) -> None:
        if event.flag == framing.FLAG_RESPONSE:
            waiter = self._requests.get(event.request_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(event.data)
            link.session.consumed(event)  # delivered (or nobody waits any more): credit goes back
            link.transmit_soon()
            return
        self._endpoint._message_received(Message(self, link, event))

    async def _control_request(
        self, request: ControlMessage, answer: type[T], timeout: float, refusal: type | None = None
    ) -> T:
        """Send a control request and wait for the first control message of type ``answer``
        (these requests carry no ids: one of each kind at a time per connection). A message of
        type ``refusal`` instead raises ``ConnectionError``."""
        if not self._ready.done():
            await self.wait_ready()
        link = self._usable_link()
        waiter: asyncio.Future[ControlMessage] = self._loop.create_future()
        kinds = (answer,) if refusal is None else (answer, refusal)
        for kind in kinds:
            self._control_waiters.setdefault(kind, []).append(waiter)
        link.session.send_control(request)
        link.transmit_soon()
        host, port = self.remote_addr
        try:
            async with asyncio.timeout(timeout):
                reply = await waiter
        except TimeoutError:
            raise errors.RequestTimeout(f"no {answer.__name__} from {host}:{port} in {timeout} s") from None
        finally:
            for kind in kinds:
                waiters = self._control_waiters.get(kind, [])
                if waiter in waiters:
                    waiters.remove(waiter)
        if not isinstance(reply, answer):
            raise errors.ConnectionError(f"{host}:{port} refused: {reply!r}")
        return reply

    def _control_received(self, link: Link, message: ControlMessage) -> None:
        waiters = self._control_waiters.get(type(message))
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(message)
                return
        self._endpoint._control_received(self, link, message)

    def _abort(self, error: Exception) -> None:
        """Close at once, without waiting for anything in flight."""
        self._finish(error)
        for link in list(self._links):
            link.abort()
