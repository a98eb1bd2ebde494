"""Staying joined, with real endpoints on 127.0.0.1: a lost node is won back, a dead one
forgotten, a member below ``min_connections`` dials more (docs/joining.md, "Staying joined")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from waiting import wait_until

import qp2p
from qp2p import _upkeep, tls

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]

pytestmark = pytest.mark.timeout(120)


def keeping(tmp_path: Path, name: str) -> qp2p.Trust:
    """An identity kept in files, so that a node restarted from them is the same peer."""
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    tls.write_identity(tls.self_signed_identity(), cert, key)
    return qp2p.Trust.encrypt_only(str(cert), str(key))


def connected(a: qp2p.Endpoint, b: qp2p.Endpoint) -> bool:
    connection = a.connection(b.peer_id)
    return connection is not None and not connection.is_closed


async def network(
    make_endpoint: MakeEndpoint, last: qp2p.Trust | None = None, **settings: object
) -> list[qp2p.Endpoint]:
    """A contact and two nodes that joined through it (the last with the ``last`` identity, if
    given): every node connected to every other. Each at an IP of its own (127.0.0.1 to 3), as
    on a network, where nodes at our own IP alone mean that we are the one cut off."""
    contact = await make_endpoint(local_ip="127.0.0.1", **settings)
    with pytest.raises(qp2p.BootstrapError):
        await contact.bootstrap()  # the first node: nobody to join, but now a member
    nodes = [contact]
    for ip, trust in (("127.0.0.2", None), ("127.0.0.3", last)):
        more = {} if trust is None else {"trust": trust}
        node = await make_endpoint(local_ip=ip, hard_coded_contacts=[contact.local_addr], **more, **settings)
        await node.bootstrap()
        nodes.append(node)
    pairs = [(a, b) for a in nodes for b in nodes if a is not b]
    await wait_until(lambda: all(connected(a, b) and b.local_addr in a.bootstrap_cache for a, b in pairs), 10)
    return nodes


async def test_a_lost_node_is_redialled_when_it_comes_back(
    make_endpoint: MakeEndpoint, tmp_path: Path
) -> None:
    trust = keeping(tmp_path, "b")
    contact, a, b = await network(make_endpoint, trust)
    # b restarts: same identity, same port, same cache folder.
    port, folder = b.local_addr[1], b.config.bootstrap_cache_dir
    await b.close()
    await wait_until(lambda: not connected(a, b), 10)
    dials = a.stats().upkeep_dials
    back = await make_endpoint(local_ip="127.0.0.3", local_port=port, trust=trust, bootstrap_cache_dir=folder)
    # Without bootstrap() of its own: a dials it again, as the upkeep does for a lost node.
    await wait_until(lambda: connected(a, back), 2 * _upkeep.REDIAL_CAP + 5)
    await wait_until(lambda: a.stats().lost_nodes == 0, 5)  # the dial's outcome follows its connection
    assert a.stats().upkeep_dials > dials


async def test_a_dead_node_is_forgotten(make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_upkeep, "GIVE_UP", 1.0)  # the time; the failed redials still count
    contact, a, b = await network(make_endpoint)
    gone = b.local_addr
    await b.close()
    await wait_until(lambda: a.stats().lost_nodes == 1, 10)
    await wait_until(lambda: gone not in a.bootstrap_cache, 40)
    assert a.stats().lost_nodes == 0
    assert contact.local_addr in a.bootstrap_cache  # the live ones stay
    assert connected(a, contact)


async def test_an_isolated_node_forgets_nothing(
    make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All its nodes gone at once, a node keeps them: it is the one cut off, as far as it knows."""
    monkeypatch.setattr(_upkeep, "GIVE_UP", 1.0)
    contact, a, b = await network(make_endpoint)
    gone = {contact.local_addr, b.local_addr}
    await contact.close()
    await b.close()
    await wait_until(lambda: a.stats().lost_nodes == 2, 10)
    dials = a.stats().upkeep_dials
    await wait_until(lambda: a.stats().upkeep_dials >= dials + 2 * (_upkeep.GIVE_UP_FAILURES + 1), 40)
    assert gone <= {entry.addr for entry in a.bootstrap_cache.entries()}
    assert a.stats().lost_nodes == 2


async def test_below_min_connections_a_member_dials_more(make_endpoint: MakeEndpoint) -> None:
    contact, a, b = await network(make_endpoint)
    await a.disconnect_from(b.local_addr)  # by us: not lost, but a now holds one node of two
    await wait_until(lambda: connected(a, b), 2 * _upkeep.REDIAL_CAP + 5)


async def test_with_min_connections_0_nothing_is_redialled(make_endpoint: MakeEndpoint) -> None:
    contact, a, b = await network(make_endpoint, min_connections=0)
    await b.close()
    await wait_until(lambda: not connected(a, b), 10)  # a saw it end: the upkeep was told, and passed
    assert a.stats().lost_nodes == 0 and a.stats().upkeep_dials == 0


async def test_an_idle_cache_entry_is_checked_and_not_kept(
    make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_upkeep, "CHECK_INTERVAL", 0.5)
    contact, a, b = await network(make_endpoint, min_connections=1)
    b.bootstrap_cache.remove(a.local_addr)  # so b does not redial a
    await a.disconnect_from(b.local_addr)  # a keeps one node, its minimum; b stays in its cache
    await wait_until(lambda: not connected(a, b) and not connected(b, a), 10)
    dials, handshakes = a.stats().upkeep_dials, b.stats().handshakes_ok
    await wait_until(lambda: a.stats().upkeep_dials > dials and b.stats().handshakes_ok > handshakes, 10)
    # From a throwaway socket: its connection goes with it, and b does not take it for a lost node.
    await wait_until(lambda: not connected(b, a), 10)
    assert not connected(a, b) and b.stats().lost_nodes == 0
    assert b.local_addr in a.bootstrap_cache


async def test_below_min_connections_a_member_asks_its_nodes_for_more(
    make_endpoint: MakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_upkeep, "ASK_INTERVAL", 0.5)
    contact = await make_endpoint(local_ip="127.0.0.1")
    with pytest.raises(qp2p.BootstrapError):
        await contact.bootstrap()
    # A client (nobody caches it or names it) that joined while the contact knew nobody else.
    client = await make_endpoint(
        local_ip="127.0.0.4",
        role=qp2p.Role.CLIENT,
        hard_coded_contacts=[contact.local_addr],
        min_connections=3,
    )
    await client.bootstrap()
    nodes = []
    for ip in ("127.0.0.2", "127.0.0.3"):
        node = await make_endpoint(local_ip=ip, hard_coded_contacts=[contact.local_addr])
        await node.bootstrap()
        nodes.append(node)
    # Its cache holds the contact alone: only the contact's answer names the other two.
    await wait_until(lambda: all(connected(client, node) for node in nodes), 10)
    assert all(node.local_addr in client.bootstrap_cache for node in nodes)
