"""Path MTU discovery: the sans-IO search, then real aioquic connections over a path that drops
what is too large, then endpoints on loopback. The netns tests (real veth MTUs, a black-hole
router) are in test_path_mtu_netns.py."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aioquic import tls as aioquic_tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicNetworkPath
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicTransportParameters,
    pull_quic_header,
    pull_quic_transport_parameters,
    push_quic_transport_parameters,
)
from hypothesis import given
from hypothesis import strategies as st

import qp2p
from qp2p import Trust, tls
from qp2p._aioquic_hooks import CheckedQuicConnection
from qp2p._pmtud import BASE_SIZE, BLACK_HOLE_LOSSES, MAX_PROBES, MIN_STEP, RAISE_INTERVAL, PathMtu

# ---- the search, without I/O --------------------------------------------------------------------


def search(path: PathMtu, passes: int, now: float = 0.0, rounds: int = 200) -> int:
    """Answer every probe as a path carrying ``passes`` bytes would; returns the probes sent."""
    for _ in range(rounds):
        size = path.probe_size(now)
        if size is None:
            return path.probes_sent
        if size <= passes:
            path.probe_acked(size)
        else:
            path.probe_lost(size)
    raise AssertionError("the search never ended")


def test_the_ceiling_is_tried_first_and_one_probe_confirms_it() -> None:
    path = PathMtu(1472)
    assert path.size == BASE_SIZE and path.state == "searching"
    assert search(path, 1472) == 1
    assert path.size == 1472 and path.state == "complete"


def test_a_ceiling_at_the_base_size_sends_no_probe() -> None:
    path = PathMtu(BASE_SIZE)
    assert path.state == "complete"
    assert path.probe_size(0.0) is None and path.probe_size(RAISE_INTERVAL * 2) is None


def test_one_probe_at_a_time() -> None:
    path = PathMtu(9000)
    assert path.probe_size(0.0) == 9000
    assert path.state == "probing" and path.probe_size(0.0) is None


def test_a_size_fails_only_after_max_probes_losses() -> None:
    path = PathMtu(9000)
    for _ in range(MAX_PROBES):
        assert path.probe_size(0.0) == 9000
        path.probe_lost(9000)
    assert path.probe_size(0.0) == (BASE_SIZE + 9000) // 2


def test_a_stale_answer_is_ignored() -> None:
    path = PathMtu(9000)
    assert path.probe_size(0.0) == 9000
    path.probe_acked(5000)  # no probe of that size is in flight
    assert path.size == BASE_SIZE and path.state == "probing"


@given(ceiling=st.integers(BASE_SIZE, 16383), data=st.data())
def test_the_search_ends_just_below_what_the_path_carries(ceiling: int, data: st.DataObject) -> None:
    passes = data.draw(st.integers(BASE_SIZE, ceiling))
    path = PathMtu(ceiling)
    probes = search(path, passes)
    assert passes - MIN_STEP < path.size <= passes
    assert probes <= MAX_PROBES * 11  # the ceiling, then at most 10 halvings of 15183 bytes down to 20


def test_a_complete_search_below_the_ceiling_looks_again_after_the_raise_interval() -> None:
    path = PathMtu(9000)
    search(path, 1500, now=100.0)  # its last look starts the interval
    assert path.probe_size(100.0 + RAISE_INTERVAL - 1) is None
    assert path.probe_size(100.0 + RAISE_INTERVAL) == 9000  # the path may have grown
    path.probe_acked(9000)
    assert path.size == 9000 and path.state == "complete"


def test_a_black_hole_falls_back_to_the_base_size_and_searches_below_the_size_that_failed() -> None:
    path = PathMtu(1472)
    search(path, 1472)
    for _ in range(BLACK_HOLE_LOSSES - 1):
        assert not path.large_lost()
    assert path.size == 1472
    assert path.large_lost()
    assert path.size == BASE_SIZE and path.black_holes == 1
    search(path, 1400)
    assert 1400 - MIN_STEP < path.size <= 1400


def test_an_acknowledged_large_packet_means_no_black_hole() -> None:
    path = PathMtu(1472)
    search(path, 1472)
    for _ in range(5 * BLACK_HOLE_LOSSES):
        assert not path.large_lost()
        assert not path.large_lost()
        path.large_acked()  # ordinary loss: large packets keep getting through
    assert path.size == 1472 and path.black_holes == 0


def test_losses_at_the_base_size_are_never_a_black_hole() -> None:
    path = PathMtu(BASE_SIZE + 100)
    assert not any(path.large_lost() for _ in range(10))
    assert path.black_holes == 0


def test_the_peer_limit_lowers_the_ceiling_and_the_size() -> None:
    path = PathMtu(9000)
    search(path, 9000)
    path.limit(1300)
    assert path.size == 1300 and path.ceiling == 1300
    path.limit(5000)  # a limit never raises the ceiling
    assert path.ceiling == 1300


# ---- real aioquic connections over a path that drops large datagrams ------------------------------

IDENTITIES = (tls.self_signed_identity(), tls.self_signed_identity())
CHECK = tls.peer_check(Trust.encrypt_only())
CLIENT, SERVER = ("10.0.0.1", 4000), ("10.0.0.2", 5000)
# A second path between other addresses of both (another interface each), carrying less.
SECOND_CLIENT, SECOND_SERVER, SECOND_CARRIES = ("10.0.1.1", 4000), ("10.0.1.2", 5000), 1500


def quic_config(is_client: bool) -> QuicConfiguration:
    config = QuicConfiguration(is_client=is_client, alpn_protocols=["qp2p-test"], verify_mode=ssl.CERT_NONE)
    identity = IDENTITIES[0 if is_client else 1]
    config.certificate, config.private_key = identity.certificate, identity.private_key
    return config


class LimitingServer(CheckedQuicConnection):
    """A peer that names its own max_udp_payload_size in its transport parameters."""

    advertise = 1300

    def _serialize_transport_parameters(self) -> bytes:
        buf = Buffer(data=super()._serialize_transport_parameters())
        params: QuicTransportParameters = pull_quic_transport_parameters(buf)
        params.max_udp_payload_size = self.advertise
        out = Buffer(capacity=4096)
        push_quic_transport_parameters(out, params)
        return out.data


class Path:
    """Two connections and the path between them: datagrams above ``carries`` bytes are lost."""

    def __init__(
        self, ceiling: int, carries: int, server_class: type[CheckedQuicConnection] = CheckedQuicConnection
    ) -> None:
        self.carries = carries
        self.now = 0.0
        self.client = CheckedQuicConnection(
            peer_check=CHECK, configuration=quic_config(True), datagram_ceiling=ceiling
        )
        self.client.connect(SERVER, now=self.now)
        first = self.client.datagrams_to_send(now=self.now)
        odcid = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8).destination_cid
        self.server = server_class(
            peer_check=CHECK,
            configuration=quic_config(False),
            original_destination_connection_id=odcid,
            datagram_ceiling=ceiling,
        )
        self.dropped = 0
        self.largest_from_client = 0
        self.client_addr = CLIENT  # where the server sees the client's datagrams come from
        self.delay = 0.0  # one way, for datagrams sent from now on
        self.to_unvalidated: list[int] = []  # sizes the server sent toward an address not validated
        self.victim: tuple[str, int] | None = None  # an address that is not the client's
        self.on_second_path: list[int] = []  # sizes sent either way on the second path
        self.optimistic = False  # the server acknowledges every packet number up to its largest
        self.to_victim: list[int] = []  # sizes the server sent there (they reach nobody)
        self._queue: list[tuple[float, CheckedQuicConnection, bytes, tuple[str, int]]] = []
        for datagram, _ in first:
            self.server.receive_datagram(datagram, CLIENT, now=self.now)
        self.received = 0

    def run(self, seconds: float, until: object = None) -> None:
        """Carry datagrams and fire timers in 1 ms steps (at most ``seconds`` of simulated time)."""
        end = self.now + seconds
        while self.now < end:
            self.now += 0.001
            for quic in (self.client, self.server):
                timer = quic.get_timer()
                if timer is not None and timer <= self.now:
                    quic.handle_timer(now=self.now)
            if self.optimistic:
                ranges = self.server._spaces[aioquic_tls.Epoch.ONE_RTT].ack_queue
                if len(ranges) > 1:  # a gap: it says it got what it never did
                    ranges.add(ranges.bounds().start, ranges.bounds().stop)
            for sender, receiver, src in (
                (self.client, self.server, self.client_addr),
                (self.server, self.client, SERVER),
            ):
                for datagram, addr in sender.datagrams_to_send(now=self.now):
                    if sender is self.server and not self._validated(addr):
                        self.to_unvalidated.append(len(datagram))
                    if sender is self.server and addr == self.victim:
                        self.to_victim.append(len(datagram))
                        continue
                    if addr in (SECOND_SERVER, SECOND_CLIENT):  # the second path, between the other addresses
                        self.on_second_path.append(len(datagram))
                        if len(datagram) <= SECOND_CARRIES:
                            other = SECOND_CLIENT if sender is self.client else SECOND_SERVER
                            self._queue.append((self.now, receiver, datagram, other))
                        continue
                    if sender is self.client:
                        self.largest_from_client = max(self.largest_from_client, len(datagram))
                    if len(datagram) > self.carries:
                        self.dropped += 1
                    else:
                        self._queue.append((self.now + self.delay, receiver, datagram, src))
            due = [item for item in self._queue if item[0] <= self.now]
            self._queue = [item for item in self._queue if item[0] > self.now]
            for _, receiver, datagram, src in due:
                receiver.receive_datagram(datagram, src, now=self.now)
            self._drain()
            if callable(until) and until():
                return

    def _validated(self, addr: tuple[str, int]) -> bool:
        """Whether the server has validated the client's address ``addr``."""
        return any(path.addr == addr and path.is_validated for path in self.server._network_paths)

    def _drain(self) -> None:
        while (event := self.server.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                self.received += len(event.data)
        while self.client.next_event() is not None:
            pass

    def send(self, size: int) -> None:
        stream = self.client.get_next_available_stream_id(is_unidirectional=True)
        self.client.send_stream_data(stream, bytes(size), end_stream=True)


def test_both_ends_find_the_size_the_path_carries() -> None:
    path = Path(ceiling=9000, carries=1500)
    path.run(5.0, until=lambda: path.client.path_mtu.state == path.server.path_mtu.state == "complete")
    for quic in (path.client, path.server):
        assert 1500 - MIN_STEP < quic.path_mtu.size <= 1500
        assert quic._max_datagram_size == quic.path_mtu.size


def test_data_flows_at_the_size_found_and_probe_losses_cost_no_congestion_window() -> None:
    path = Path(ceiling=9000, carries=4000)
    path.run(5.0, until=lambda: path.client.path_mtu.state == "complete")
    assert path.dropped >= MAX_PROBES  # probes above 4000 were lost...
    assert path.client._loss._cc.ssthresh is None  # ...and congestion control never noticed
    path.send(1 << 20)
    path.run(30.0, until=lambda: path.received == 1 << 20)
    assert path.received == 1 << 20


def test_a_black_hole_is_detected_and_the_transfer_completes() -> None:
    path = Path(ceiling=9000, carries=9000)
    path.run(5.0, until=lambda: path.client.path_mtu.size == 9000)
    path.carries = 1400  # the path now drops what it used to carry, and says nothing
    path.send(1 << 20)
    path.run(60.0, until=lambda: path.received == 1 << 20)
    assert path.received == 1 << 20
    mtu = path.client.path_mtu
    assert mtu.black_holes == 1
    path.run(10.0, until=lambda: mtu.state == "complete")
    assert 1400 - MIN_STEP < mtu.size <= 1400


def test_the_peer_max_udp_payload_size_is_a_ceiling() -> None:
    path = Path(ceiling=9000, carries=9000, server_class=LimitingServer)
    path.run(5.0, until=lambda: path.client.path_mtu.state == "complete")
    assert path.client.path_mtu.size == LimitingServer.advertise
    path.send(100_000)
    path.run(10.0, until=lambda: path.received == 100_000)
    assert path.largest_from_client == LimitingServer.advertise  # never a probe above it


# ---- endpoints on loopback --------------------------------------------------------------------------


async def settled_size(connection: qp2p.Connection) -> int:
    """The connection's datagram size once its search is over (bounded wait)."""
    for _ in range(500):
        link = connection.current_link
        assert link is not None
        if link.session.quic.path_mtu.state == "complete":
            return connection.datagram_size
        await asyncio.sleep(0.01)
    raise AssertionError("the path MTU search never ended")


@pytest.mark.parametrize(("ceiling", "expected"), [(None, 16383), (4000, 4000), (1200, 1200)])
async def test_loopback_reaches_the_configured_ceiling(ceiling: int | None, expected: int) -> None:
    config = qp2p.Config() if ceiling is None else qp2p.Config(max_datagram_size=ceiling)
    async with qp2p.Endpoint(config) as server, qp2p.Endpoint(config) as client:
        connection = await client.connect_to(server.local_addr)
        assert await settled_size(connection) == expected
        await connection.send(b"x" * 100_000)
        async for message in server.incoming_messages():
            assert len(message.data) == 100_000
            assert await settled_size(message.connection) == expected
            break


def test_a_restart_goes_back_to_the_base_size_and_searches_again() -> None:
    path = PathMtu(9000)
    search(path, 9000)
    path.restart()
    assert path.size == BASE_SIZE and path.state == "searching"
    search(path, 1500)
    assert 1500 - MIN_STEP < path.size <= 1500


def test_a_peer_that_moves_starts_again_at_the_base_size() -> None:
    path = Path(ceiling=9000, carries=9000)
    path.run(5.0, until=lambda: path.server.path_mtu.size == 9000)
    path.client_addr = ("10.0.0.3", 4001)  # the client's NAT gave it a new address: a new path
    path.carries = 1500
    path.send(100_000)
    path.run(30.0, until=lambda: path.received == 100_000 and path.server.path_mtu.state == "complete")
    assert path.received == 100_000
    assert 1500 - MIN_STEP < path.server.path_mtu.size <= 1500
    assert path.server.path_mtu.black_holes == 0  # it restarted; it did not have to detect a black hole


def test_a_new_address_gets_nothing_above_the_base_size_until_it_is_validated() -> None:
    path = Path(ceiling=9000, carries=9000)
    server = path.server
    path.run(5.0, until=lambda: server.path_mtu.size == 9000)
    path.client_addr = moved = ("10.0.0.3", 4001)  # a new address, which may be a spoofed one
    path.carries = 1500
    path.send(1000)
    path.run(5.0, until=lambda: path._validated(moved))
    assert path._validated(moved)
    assert path.to_unvalidated and max(path.to_unvalidated) <= BASE_SIZE


def test_a_probe_acknowledged_after_the_peer_moved_says_nothing_of_its_new_path() -> None:
    path = Path(ceiling=9000, carries=9000)
    path.delay = 0.05  # the old path is slow: its first probe is still on its way...
    server = path.server
    path.run(5.0, until=lambda: server.path_mtu.state == "probing")
    path.client_addr = moved = ("10.0.0.3", 4001)  # ...when the client moves to a fast path carrying 1500
    path.delay = 0.0
    path.carries = 1500
    path.send(1000)
    path.run(5.0, until=lambda: path._validated(moved) and server.path_mtu.state == "complete")
    assert server.get_peer_address() == moved
    assert 1500 - MIN_STEP < server.path_mtu.size <= 1500  # the old path's answer proves nothing here


def test_a_peer_that_keeps_moving_gets_one_probe_per_move_at_most() -> None:
    path = Path(ceiling=9000, carries=9000)
    server = path.server
    path.run(5.0, until=lambda: server.path_mtu.size == 9000)
    addresses = (("10.0.0.3", 4001), CLIENT)
    for address in addresses:  # both of the client's addresses are validated first
        path.client_addr = address
        path.send(10)
        path.run(2.0, until=lambda a=address: path._validated(a) and server.path_mtu.state == "complete")
    before, moves = server.path_mtu.probes_sent, 40
    for move in range(moves):  # each datagram of the client comes from the other address
        path.client_addr = addresses[move % 2]
        path.send(10)
        path.run(0.002)
    path.run(2.0, until=lambda: server.path_mtu.state == "complete")
    assert 0 < server.path_mtu.probes_sent - before <= moves + 1
    assert server.path_mtu.size == 9000 and server.path_mtu.black_holes == 0


def limiting_path(advertise: int) -> Path:
    """A path whose server names ``advertise`` as its max_udp_payload_size."""

    class Server(LimitingServer):
        pass

    Server.advertise = advertise
    return Path(ceiling=9000, carries=9000, server_class=Server)


def test_a_peer_limit_below_the_base_size_is_refused() -> None:
    """Below 1200 is invalid (RFC 9000 section 18.2): the handshake fails, nothing large is sent."""
    path = limiting_path(1000)
    path.run(2.0, until=lambda: path.client._close_event is not None)
    event = path.client._close_event
    assert event is not None and event.error_code == QuicErrorCode.TRANSPORT_PARAMETER_ERROR
    assert path.largest_from_client <= BASE_SIZE and path.client.path_mtu.probes_sent == 0


def test_an_absurdly_large_peer_limit_leaves_our_own_ceiling() -> None:
    path = limiting_path(2**62 - 1)
    path.send(50_000)
    path.run(5.0, until=lambda: path.received == 50_000 and path.client.path_mtu.state == "complete")
    assert path.received == 50_000
    assert path.client.path_mtu.size == 9000 and path.largest_from_client <= 9000


def test_a_spoofed_source_gets_no_probe_and_only_what_the_amplification_limit_allows() -> None:
    """An attacker on the path rewrites the source of one of the client's datagrams to a
    victim's address: the server moves there, but sends it no probe and nothing above 1200
    bytes, and at most three times what came from there; the client's next datagram brings
    it back, and the search starts again there."""
    path = Path(ceiling=9000, carries=9000)
    server = path.server
    path.run(5.0, until=lambda: server.path_mtu.size == 9000)
    path.victim = path.client_addr = ("192.0.2.7", 9)
    path.send(1000)
    path.run(0.001)
    assert server.get_peer_address() == path.victim
    path.client_addr = CLIENT
    path.run(0.05)  # the client is silent a while: the server tries the victim, within its limit
    path.send(1000)
    path.run(5.0, until=lambda: server.get_peer_address() == CLIENT and server.path_mtu.size == 9000)
    assert server.get_peer_address() == CLIENT and server.path_mtu.size == 9000
    assert path.to_victim and max(path.to_victim) <= BASE_SIZE
    assert sum(path.to_victim) <= 3 * (1000 + 100)


def test_a_peer_acknowledging_what_it_never_got_fools_only_itself_and_boundedly() -> None:
    """Optimistic acknowledgements (every packet number up to the largest) make the client use
    sizes the path drops, and lose the data the peer says it got, which is the peer's loss; the
    black-hole rule keeps bringing the size back, no datagram exceeds our ceiling and every
    search stays within its probe bound."""
    path = Path(ceiling=9000, carries=1500)
    path.optimistic = True
    path.send(3_000_000)
    path.run(60.0)
    mtu = path.client.path_mtu
    assert mtu.black_holes >= 1  # it was fooled, and found out
    assert path.largest_from_client <= 9000
    assert mtu.probes_sent <= MAX_PROBES * 11 * (mtu.black_holes + 1)


def test_a_path_being_probed_gets_nothing_above_the_base_size() -> None:
    """The client probes a second path to the server (RFC 9000 section 9.1) while the first
    carries 9000 bytes: its challenge, and the server's response and own challenge, go at
    1200 bytes, which every path carries, not at the first path's size, so the second path
    validates though it carries only 1500."""
    path = Path(ceiling=9000, carries=9000)
    client, server = path.client, path.server
    path.run(5.0, until=lambda: client.path_mtu.size == server.path_mtu.size == 9000)
    second = QuicNetworkPath(SECOND_SERVER)
    client._network_paths.append(second)  # what a client does to probe a path: a challenge on it
    path.run(5.0, until=lambda: second.is_validated)
    assert second.is_validated
    assert path.on_second_path and max(path.on_second_path) <= BASE_SIZE
    # aioquic's client then moves to the server address it validated: it searches that path anew.
    path.run(
        10.0, until=lambda: client.get_peer_address() == SECOND_SERVER and client.path_mtu.state == "complete"
    )
    assert client.get_peer_address() == SECOND_SERVER
    assert SECOND_CARRIES - MIN_STEP < client.path_mtu.size <= SECOND_CARRIES
