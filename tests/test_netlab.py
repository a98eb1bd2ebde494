"""The test network harness (netlab.Network) measured from inside: each NAT kind maps and filters
UDP as it should, unsolicited traffic is dropped silently, an igd site's host can map a port with
UPnP IGD, loss and delay are what was asked for, and nothing is left behind afterwards.

Every measurement is made with plain UDP sockets by small helper processes ("agents") that run
in the sites' host namespaces, each command bounded by a timeout.
"""

from __future__ import annotations

import inspect
import json
import os
import select
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import netlab
import pytest

pytestmark = netlab.requires(*netlab.NAT)
IGD_REASON = netlab.unavailable(*netlab.IGD)
needs_igd = netlab.requires(*netlab.NAT, *netlab.IGD)
LOSS = 0.05
DATAGRAMS = 2000
SLOW_DELAY_MS = 40.0
LOSSY_DELAY_MS = 10.0
TWIN_LAN = 200  # the twin sites' LANs are both 10.200.0.0/24
DELAY_TOLERANCE_MS = 8.0  # above the configured delay: scheduling, and a few hundred microseconds per pass


def _agent() -> None:
    """A UDP helper for one namespace: one JSON command per stdin line, one JSON answer per command.

    Sockets are named by their local port. Every operation ends within the timeout it is given;
    the agent ends when stdin closes. It is started with ``python -c`` from this function's source.
    """
    import json
    import socket
    import sys
    import time

    sockets: dict[int, socket.socket] = {}
    upnp = None

    def receive(sock: socket.socket, deadline: float) -> tuple[bytes, tuple[str, int]] | None:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            return sock.recvfrom(2048)
        except TimeoutError:
            return None

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "open":  # a new socket, bound to the given port (0: any) on every address
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", command.get("bind", 0)))
            sockets[sock.getsockname()[1]] = sock
            answer = {"port": sock.getsockname()[1]}
        elif op == "send":  # count datagrams "tag:i", paced at rate per second (0: at once)
            sock = sockets[command["port"]]
            to, count, rate = tuple(command["to"]), command.get("count", 1), command.get("rate", 0)
            start = time.monotonic()
            for i in range(count):
                if rate and i % 10 == 0:
                    time.sleep(max(0.0, start + i / rate - time.monotonic()))
                sock.sendto(f"{command.get('tag', '')}:{i}".encode(), to)
            answer = {"sent": count}
        elif op == "recv":  # until count datagrams, the timeout, or idle seconds without one
            sock = sockets[command["port"]]
            deadline = time.monotonic() + command["timeout"]
            got: list[list[object]] = []
            while len(got) < command.get("count", 1):
                wait_until = deadline
                if got and command.get("idle"):
                    wait_until = min(deadline, time.monotonic() + command["idle"])
                received = receive(sock, wait_until)
                if received is None:
                    break
                got.append([*received[1], received[0].decode(errors="replace")])
            answer = {"got": got}
        elif op == "echo":  # sends back each datagram, until count of them, the timeout, or idle seconds
            sock = sockets[command["port"]]
            deadline = time.monotonic() + command["timeout"]
            echoed = 0
            while echoed < command["count"]:
                received = receive(sock, min(deadline, time.monotonic() + command["idle"]))
                if received is None:
                    break
                sock.sendto(*received)
                echoed += 1
            answer = {"echoed": echoed}
        elif op == "rtt":  # count round trips to an echo, one after the other; None when lost
            sock = sockets[command["port"]]
            to, rtts = tuple(command["to"]), []
            for i in range(command["count"]):
                sent = time.monotonic()
                sock.sendto(f"rtt:{i}".encode(), to)
                deadline = sent + command["timeout"]
                rtt = None
                while rtt is None:
                    received = receive(sock, deadline)
                    if received is None:
                        break
                    if received[0] == f"rtt:{i}".encode():
                        rtt = (time.monotonic() - sent) * 1000
                rtts.append(rtt)
                time.sleep(max(0.0, sent + command["interval"] - time.monotonic()))
            answer = {"rtts": rtts}
        elif op == "probe":  # from a fresh socket: what comes back from "to", if anything
            kind = socket.SOCK_STREAM if command.get("tcp") else socket.SOCK_DGRAM
            with socket.socket(socket.AF_INET, kind) as fresh:
                fresh.settimeout(command["timeout"])
                try:
                    fresh.connect(tuple(command["to"]))  # for TCP, the SYN and its answer
                    fresh.send(bytes.fromhex(command.get("hex", "")) or b"probe")
                    answer = {"result": "reply", "hex": fresh.recv(2048).hex()}
                except ConnectionRefusedError:
                    answer = {"result": "refused"}
                except TimeoutError:
                    answer = {"result": "silent"}
        elif op == "upnp":  # UPnP IGD through the PyPI miniupnpc binding
            import miniupnpc

            if upnp is None:
                upnp = miniupnpc.UPnP()
                upnp.discoverdelay = 1000
                upnp.discover()
                upnp.selectigd()
            action = command["action"]
            if action == "external":
                answer = {"ip": upnp.externalipaddress(), "lan": upnp.lanaddr}
            elif action == "add":
                args = (command["eport"], "UDP", upnp.lanaddr, command["iport"], "netlab test", "", 120)
                answer = {"ok": bool(upnp.addportmapping(*args))}
            elif action == "get":
                mapping = upnp.getspecificportmapping(command["eport"], "UDP")
                answer = {"mapping": list(mapping) if mapping else None}
            else:
                answer = {"ok": bool(upnp.deleteportmapping(command["eport"], "UDP"))}
        else:
            answer = {"error": f"unknown op {op}"}
        print(json.dumps(answer), flush=True)


AGENT = inspect.getsource(_agent) + "\n_agent()\n"


class Agent:
    """An ``_agent`` process in a namespace, driven one command at a time."""

    def __init__(self, ns: netlab.Namespace) -> None:
        self.process = subprocess.Popen(
            ns.command([sys.executable, "-c", AGENT]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, op: str, **arguments: object) -> None:
        """Sends a command without waiting for its answer (to run it alongside another agent's)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()

    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        """The answer to the command sent last."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"no answer from the agent within {timeout} s"
        line = self.process.stdout.readline()
        assert line, f"the agent exited with {self.process.wait(timeout=5)}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **arguments: object) -> dict[str, Any]:
        self.start(op, **arguments)
        return self.result()

    def open(self, bind: int = 0) -> int:
        """A new UDP socket; returns its local port."""
        port: int = self.call("open", bind=bind)["port"]
        return port

    def recv(self, port: int, timeout: float = 2.0, **arguments: object) -> list[tuple[str, int, str]]:
        """(source address, source port, text) of what arrives on ``port``."""
        got = self.call("recv", port=port, timeout=timeout, **arguments)["got"]
        return [(address, source_port, text) for address, source_port, text in got]

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process.stdout.close()


@dataclass
class Lab:
    net: netlab.Network
    agents: dict[str, Agent]

    def site(self, name: str) -> netlab.Site:
        return self.net.sites[name]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """One network with a site of each kind, three clean public hosts and three impaired sites."""
    with netlab.Network() as net:
        net.nat_site("cone", "full_cone")
        net.nat_site("addr", "address_restricted")
        net.nat_site("restricted", "port_restricted")
        net.nat_site("bare", "port_restricted", bare=True)
        for twin in ("twin1", "twin2"):  # two home networks on the same private range
            net.nat_site(twin, "port_restricted", lan=TWIN_LAN)
        net.nat_site("hairpin", "port_restricted", hosts=2, hairpin=True)
        net.nat_site("flat", "port_restricted", hosts=2)
        net.nat_site("symmetric", "symmetric")
        if IGD_REASON is None:
            net.nat_site("igd", "igd")
        for name in ("p1", "p2", "p3"):
            net.public_site(name)
        net.nat_site("slow", "port_restricted", delay_ms=SLOW_DELAY_MS)
        net.nat_site("lossnat", "port_restricted", loss=LOSS)
        net.public_site("lossy", loss=LOSS, delay_ms=LOSSY_DELAY_MS)
        agents = {name: Agent(site.host) for name, site in net.sites.items()}
        for name, site in net.sites.items():  # the second host of a shared router: "<site>2"
            agents.update({f"{name}{k}": Agent(ns) for k, (ns, _ip) in enumerate(site.others, 2)})
        try:
            yield Lab(net, agents)
        finally:
            for agent in agents.values():
                agent.close()


def send_and_see(lab: Lab, site: str, port: int, peer: str) -> tuple[int, int]:
    """``site``'s socket ``port`` sends to a new socket on ``peer``: (that socket's port, the source
    port it saw, that is the mapping the router made)."""
    peer_port = lab.agents[peer].open()
    lab.agents[site].call("send", port=port, to=[lab.site(peer).ip, peer_port], tag="hello")
    ((address, seen, _text),) = lab.agents[peer].recv(peer_port)
    assert address == lab.site(site).ip  # the router's WAN address, never the host's own
    return peer_port, seen


def test_full_cone_keeps_one_mapping_and_lets_anyone_in(lab: Lab) -> None:
    port = lab.agents["cone"].open()
    seen = [send_and_see(lab, "cone", port, peer)[1] for peer in ("p1", "p2")]
    assert seen == [port, port]  # endpoint-independent mapping, and the port is kept
    # p3 never heard from the host, yet reaches it (endpoint-independent filtering).
    p3 = lab.agents["p3"]
    stranger = p3.open()
    p3.call("send", port=stranger, to=[lab.site("cone").ip, port], tag="stranger")
    assert lab.agents["cone"].recv(port) == [(lab.site("p3").ip, stranger, "stranger:0")]


def test_port_restricted_keeps_one_mapping_and_lets_in_only_whom_the_host_sent_to(lab: Lab) -> None:
    port = lab.agents["restricted"].open()
    p1_port, seen_by_p1 = send_and_see(lab, "restricted", port, "p1")
    _p2_port, seen_by_p2 = send_and_see(lab, "restricted", port, "p2")
    assert seen_by_p1 == seen_by_p2 == port  # endpoint-independent mapping while the port is free
    ip = lab.site("restricted").ip
    p1, p3 = lab.agents["p1"], lab.agents["p3"]
    # A stranger, and p1 from a port the host did not send to, are dropped ...
    p3.call("send", port=p3.open(), to=[ip, port], tag="stranger")
    p1.call("send", port=p1.open(), to=[ip, port], tag="other-port")
    assert lab.agents["restricted"].recv(port, timeout=0.5) == []
    # ... but the address:port the host sent to gets in (address- and port-dependent filtering).
    p1.call("send", port=p1_port, to=[ip, port], tag="answer")
    assert lab.agents["restricted"].recv(port) == [(lab.site("p1").ip, p1_port, "answer:0")]


def test_symmetric_maps_each_destination_to_another_port(lab: Lab) -> None:
    port = lab.agents["symmetric"].open()
    p1_port, seen_by_p1 = send_and_see(lab, "symmetric", port, "p1")
    _p2_port, seen_by_p2 = send_and_see(lab, "symmetric", port, "p2")
    assert seen_by_p1 != seen_by_p2
    # A mapping answers only its own peer: p1 gets in through p1's, a stranger does not.
    ip = lab.site("symmetric").ip
    lab.agents["p3"].call("send", port=lab.agents["p3"].open(), to=[ip, seen_by_p1], tag="stranger")
    lab.agents["p1"].call("send", port=p1_port, to=[ip, seen_by_p1], tag="answer")
    got = lab.agents["symmetric"].recv(port, count=2, timeout=1.0)
    assert got == [(lab.site("p1").ip, p1_port, "answer:0")]


@pytest.mark.parametrize(
    "site", ["cone", "addr", "restricted", "symmetric", pytest.param("igd", marks=needs_igd)]
)
def test_unsolicited_traffic_is_dropped_without_icmp(lab: Lab, site: str) -> None:
    ip, p3 = lab.site(site).ip, lab.agents["p3"]
    # The probe sees ICMP when there is some: a closed port on a public host is "refused".
    assert p3.call("probe", to=[lab.site("p1").ip, 9], timeout=1.0)["result"] == "refused"
    assert p3.call("probe", to=[lab.site("p1").ip, 9], timeout=1.0, tcp=True)["result"] == "refused"
    # TCP is never forwarded unsolicited, and the router does not answer for itself.
    assert p3.call("probe", to=[ip, 24681], timeout=0.5, tcp=True)["result"] == "silent"
    if site == "cone":
        return  # every UDP datagram is forwarded to the host: it answers for itself
    assert p3.call("probe", to=[ip, 24680], timeout=0.5)["result"] == "silent"
    # That early datagram left no conntrack entry behind: the host still gets port 24680 mapped.
    port = lab.agents[site].open(bind=24680)
    _p3_port, seen = send_and_see(lab, site, port, "p3")
    if site != "symmetric":
        assert seen == port


def test_address_restricted_keeps_one_mapping_and_lets_in_any_port_of_whom_the_host_sent_to(
    lab: Lab,
) -> None:
    port = lab.agents["addr"].open()
    _p1_port, seen_by_p1 = send_and_see(lab, "addr", port, "p1")
    _p2_port, seen_by_p2 = send_and_see(lab, "addr", port, "p2")
    assert seen_by_p1 == seen_by_p2 == port
    ip = lab.site("addr").ip
    p1, stranger = lab.agents["p1"], lab.agents["cone"]  # the host never sends to the cone site
    # A stranger is dropped; p1 gets in from a port the host never sent to (address-dependent
    # filtering only), unlike a port-restricted router.
    stranger.call("send", port=stranger.open(), to=[ip, port], tag="stranger")
    other = p1.open()
    p1.call("send", port=other, to=[ip, port], tag="other-port")
    assert lab.agents["addr"].recv(port, count=2, timeout=1.0) == [(lab.site("p1").ip, other, "other-port:0")]


def test_a_bare_router_answers_with_icmp_and_its_claim_moves_the_hosts_next_mapping(lab: Lab) -> None:
    ip, p3 = lab.site("bare").ip, lab.agents["p3"]
    prober = p3.open()
    # The router's own stack answers an unsolicited datagram: the sender sees the port refused ...
    assert p3.call("probe", to=[ip, 24682], timeout=1.0)["result"] == "refused"
    p3.call("send", port=prober, to=[ip, 24683], tag="early")
    # ... and conntrack keeps the 5-tuple for the router: the host's datagram from that port to
    # that sender leaves from another port, as the dialled side of a punch would.
    port = lab.agents["bare"].open(bind=24683)
    lab.agents["bare"].call("send", port=port, to=[lab.site("p3").ip, prober], tag="late")
    ((_address, seen, text),) = p3.recv(prober)
    assert text == "late:0" and seen != port
    # Towards anyone else the port is kept.
    _p1_port, seen_by_p1 = send_and_see(lab, "bare", lab.agents["bare"].open(bind=24684), "p1")
    assert seen_by_p1 == 24684


def test_two_sites_on_the_same_private_range_stay_apart(lab: Lab) -> None:
    twins = [lab.site(name) for name in ("twin1", "twin2")]
    assert twins[0].host_ip == twins[1].host_ip == f"10.{TWIN_LAN}.0.2" and twins[0].ip != twins[1].ip
    ports = [lab.agents[twin.name].open() for twin in twins]
    p1_ports = [send_and_see(lab, twin.name, port, "p1")[0] for twin, port in zip(twins, ports, strict=True)]
    # p1's answer to each reaches that twin alone, although both hosts have the same address.
    for twin, port, p1_port in zip(twins, ports, p1_ports, strict=True):
        lab.agents["p1"].call("send", port=p1_port, to=[twin.ip, port], tag=twin.name)
    for twin, port in zip(twins, ports, strict=True):
        assert lab.agents[twin.name].recv(port, count=2, timeout=1.0) == [
            (lab.site("p1").ip, p1_ports[twins.index(twin)], f"{twin.name}:0")
        ]


def test_hosts_sharing_a_router_keep_their_ports_apart_and_a_hairpin_loops_them_together(lab: Lab) -> None:
    for name in ("hairpin", "flat"):
        site = lab.site(name)
        first, second = lab.agents[name], lab.agents[f"{name}2"]
        assert [ip for _ns, ip in site.hosts] == [site.host_ip, site.host_ip[:-1] + "3"]
        port, other = first.open(), second.open()
        low, high = netlab.HOST_PORTS
        assert low <= port < other <= high  # each host binds from its own range
        _p1_port, seen = send_and_see(lab, name, port, "p1")
        assert seen == port  # so the public port tells the router whose mapping it is
        second.call("send", port=other, to=[site.ip, seen], tag="looped")
        if name == "hairpin":  # from the WAN address and the sender's own port, as from outside
            assert first.recv(port) == [(site.ip, other, "looped:0")]
        else:  # the datagram ends at the router
            assert first.recv(port, timeout=0.5) == []


@needs_igd
def test_igd_host_maps_a_port_with_upnp_that_the_internet_reaches(lab: Lab) -> None:
    igd, p1, site = lab.agents["igd"], lab.agents["p1"], lab.site("igd")
    port = igd.open()
    external = 41000
    assert igd.call("upnp", action="external") == {"ip": site.ip, "lan": site.host_ip}
    assert p1.call("probe", to=[site.ip, external], timeout=0.5)["result"] == "silent"
    assert igd.call("upnp", action="add", eport=external, iport=port) == {"ok": True}
    mapping = igd.call("upnp", action="get", eport=external)["mapping"]
    assert mapping[:2] == [site.host_ip, port], mapping
    # From the internet, a fresh socket reaches the host; the host sees the true sender, and its
    # answer comes back from the mapped port.
    p1.start("probe", to=[site.ip, external], timeout=2.0)
    ((address, source_port, text),) = igd.recv(port)
    assert (address, text) == (lab.site("p1").ip, "probe")
    igd.call("send", port=port, to=[address, source_port], tag="mapped")
    assert p1.result() == {"result": "reply", "hex": b"mapped:0".hex()}
    # NAT-PMP answers on the router's LAN address too: op 0 gives the external address.
    natpmp = igd.call("probe", to=[site.router_lan_ip, 5351], hex="0000", timeout=2.0)
    reply = bytes.fromhex(natpmp["hex"])
    assert reply[:4] == bytes([0, 128, 0, 0]) and ".".join(map(str, reply[8:12])) == site.ip, reply
    assert igd.call("upnp", action="delete", eport=external) == {"ok": True}
    assert igd.call("upnp", action="get", eport=external) == {"mapping": None}
    assert p1.call("probe", to=[site.ip, external], timeout=0.5)["result"] == "silent"
    assert igd.recv(port, timeout=0.3) == []


STUN_BINDING = "000100002112a442" + "00" * 12  # an RFC 5389 Binding request, no attributes


def test_a_cut_link_drops_everything_both_ways_until_it_heals(lab: Lab) -> None:
    p1, p1_ip = lab.agents["p1"], lab.site("p1").ip
    stun = [netlab.STUN_ADDRESSES[0], netlab.STUN_PORTS[0]]
    for name in ("p2", "restricted"):  # a public site and a NAT site
        agent, site = lab.agents[name], lab.site(name)
        port = agent.open()
        p1_port, seen = send_and_see(lab, name, port, "p1")
        assert agent.call("probe", to=stun, hex=STUN_BINDING, timeout=2.0)["result"] == "reply"
        lab.net.cut(name)
        try:
            assert lab.net.describe()["cut"] == [name]
            agent.call("send", port=port, to=[p1_ip, p1_port], tag="out")
            p1.call("send", port=p1_port, to=[site.ip, seen], tag="in")
            assert p1.recv(p1_port, timeout=0.5) == [] and agent.recv(port, timeout=0.5) == []
            # What the internet namespace sends itself (a STUN answer) is cut too.
            assert agent.call("probe", to=stun, hex=STUN_BINDING, timeout=1.0)["result"] == "silent"
        finally:
            lab.net.heal(name)
        assert lab.net.describe()["cut"] == []
        agent.call("send", port=port, to=[p1_ip, p1_port], tag="healed")
        assert p1.recv(p1_port) == [(site.ip, seen, "healed:0")]
        p1.call("send", port=p1_port, to=[site.ip, seen], tag="back")
        assert agent.recv(port) == [(p1_ip, p1_port, "back:0")]
        assert agent.call("probe", to=stun, hex=STUN_BINDING, timeout=2.0)["result"] == "reply"


@netlab.requires(*netlab.NAT, "conntrack")
def test_flushed_mappings_move_a_symmetric_port_and_close_every_filter_until_the_host_sends(
    lab: Lab,
) -> None:
    p1, p1_ip = lab.agents["p1"], lab.site("p1").ip
    for name in ("symmetric", "restricted"):
        agent, site = lab.agents[name], lab.site(name)
        port = agent.open()
        p1_port, seen = send_and_see(lab, name, port, "p1")
        assert (port, p1_ip, p1_port, seen) in site.mappings()
        assert site.flush_mappings() >= 1
        assert [m for m in site.mappings() if m[0] == port] == []
        # The old mapping is gone: p1's answer through it is dropped as unsolicited ...
        p1.call("send", port=p1_port, to=[site.ip, seen], tag="stale")
        assert agent.recv(port, timeout=0.5) == []
        # ... until the host sends again, from the same socket to the same peer: a new mapping,
        # on a new random port behind the symmetric NAT, on the same one behind the other.
        agent.call("send", port=port, to=[p1_ip, p1_port], tag="again")
        ((_address, moved, _text),) = p1.recv(p1_port)
        assert (moved != seen) if name == "symmetric" else (moved == seen), (name, seen, moved)
        p1.call("send", port=p1_port, to=[site.ip, moved], tag="fresh")
        assert agent.recv(port) == [(p1_ip, p1_port, "fresh:0")]
    with pytest.raises(ValueError, match="public"):
        lab.site("p1").flush_mappings()


def lost_fraction(
    lab: Lab, sender: str, receiver: str, receiver_port: int, to: tuple[str, int], sending: int = 0
) -> float:
    """DATAGRAMS datagrams at 4000/s from ``sender``'s socket ``sending`` (0: a new one) to ``to``;
    the fraction of them that did not arrive on ``receiver``'s socket ``receiver_port``."""
    sending = sending or lab.agents[sender].open()
    lab.agents[receiver].start("recv", port=receiver_port, count=DATAGRAMS, timeout=10.0, idle=0.5)
    lab.agents[sender].call("send", port=sending, to=list(to), count=DATAGRAMS, rate=4000, tag="loss")
    got = lab.agents[receiver].result()["got"]
    numbers = [int(text.split(":")[1]) for _, _, text in got]
    assert len(set(numbers)) == len(numbers)  # nothing duplicated
    return 1 - len(numbers) / DATAGRAMS


@pytest.mark.parametrize("lossy", ["lossy", "lossnat"])
def test_loss_drops_about_the_configured_fraction_each_way(lab: Lab, lossy: str) -> None:
    p1, p1_ip = lab.agents["p1"], lab.site("p1").ip
    p1_port = p1.open()
    outbound = lost_fraction(lab, lossy, "p1", p1_port, (p1_ip, p1_port))
    # Inbound needs the host to have sent to p1 first (through a NAT): a few, so that one passes.
    inside = lab.agents[lossy].open()
    lab.agents[lossy].call("send", port=inside, to=[p1_ip, p1_port], count=5, tag="open")
    ((_address, mapped, _text), *_more) = p1.recv(p1_port, count=5, idle=0.3)
    inbound = lost_fraction(lab, "p1", lossy, inside, (lab.site(lossy).ip, mapped), sending=p1_port)
    print(f"{lossy}: lost {outbound:.3f} out, {inbound:.3f} in (configured {LOSS})")
    # 2000 datagrams at p = 0.05: 100 lost on average, standard deviation 9.7; the bounds are 4 and 5 of them.
    for fraction in (outbound, inbound):
        assert 0.03 <= fraction <= 0.075, (outbound, inbound)


def round_trips(lab: Lab, site: str, peer: str, count: int = 15) -> list[float]:
    """Round-trip times in ms from ``site`` to an echo on ``peer``, lost ones left out."""
    echo_port = lab.agents[peer].open()
    lab.agents[peer].start("echo", port=echo_port, count=count, timeout=15.0, idle=1.5)
    port = lab.agents[site].open()
    to = [lab.site(peer).ip, echo_port]
    rtts = lab.agents[site].call("rtt", port=port, to=to, count=count, interval=0.02, timeout=0.5)["rtts"]
    lab.agents[peer].result()
    return [rtt for rtt in rtts if rtt is not None]


def test_delay_line_adds_the_configured_delay_each_way(lab: Lab) -> None:
    baseline = statistics.median(round_trips(lab, "restricted", "p1"))
    slow = round_trips(lab, "slow", "p1")
    lossy = round_trips(lab, "lossy", "p2")
    both = round_trips(lab, "slow", "lossy")
    print(f"median RTT ms: none {baseline:.2f}, slow {statistics.median(slow):.2f}, "
          f"lossy {statistics.median(lossy):.2f}, slow to lossy {statistics.median(both):.2f}")  # fmt: skip
    assert baseline < 5
    assert len(slow) == 15  # no loss configured: every probe came back
    for rtts, expected in ((slow, 2 * SLOW_DELAY_MS), (both, 2 * (SLOW_DELAY_MS + LOSSY_DELAY_MS))):
        assert expected <= min(rtts) and statistics.median(rtts) <= expected + DELAY_TOLERANCE_MS, rtts
    assert 2 * LOSSY_DELAY_MS <= statistics.median(lossy) <= 2 * LOSSY_DELAY_MS + DELAY_TOLERANCE_MS, lossy


def test_delay_line_loses_nothing_and_keeps_order_at_a_moderate_rate(lab: Lab) -> None:
    p1 = lab.agents["p1"]
    p1_port = p1.open()
    slow = lab.agents["slow"]
    p1.start("recv", port=p1_port, count=1000, timeout=10.0, idle=1.0)
    slow.call("send", port=slow.open(), to=[lab.site("p1").ip, p1_port], count=1000, rate=2000, tag="order")
    numbers = [int(text.split(":")[1]) for _, _, text in p1.result()["got"]]
    assert numbers == list(range(1000))


def test_nothing_is_left_behind_even_when_the_test_fails() -> None:
    links_before = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    kind = "igd" if IGD_REASON is None else "port_restricted"
    with pytest.raises(RuntimeError, match="the test failed"):
        with netlab.Network() as net:
            net.nat_site("a", kind, loss=0.01, delay_ms=5)
            net.public_site("b", loss=0.01, delay_ms=5)
            names = [ns.name for ns in net.namespaces]
            processes: list[tuple[str, subprocess.Popen[Any]]] = [
                (label, p) for label, _ns, p in net.processes
            ]
            assert all(ns.exists for ns in net.namespaces) and net.state_file.exists()
            state_file, run_dir = net.state_file, net.run_dir
            lab_agent = Agent(net.sites["a"].host)  # a process the network did not start itself
            processes.append(("agent", lab_agent.process))
            raise RuntimeError("the test failed")
    assert len(processes) == 4 + (kind == "igd")  # stun, 2 delay lines, agent (+ miniupnpd)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [name for name in names if name in listed.split()]
    links_after = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert _link_names(links_after) == _link_names(links_before)
    assert not state_file.exists() and not run_dir.exists()
    for label, process in processes:
        if label == "agent":
            lab_agent.close()  # killed with its namespace
        assert process.poll() is not None, label
        assert not os.path.exists(f"/proc/{process.pid}"), label
        if label.startswith("delay-"):
            assert process.returncode == 0, label  # SIGTERM: held packets accepted, queue unbound


def _link_names(ip_link: str) -> set[str]:
    return {line.split(":")[1].strip() for line in ip_link.splitlines() if ":" in line}
