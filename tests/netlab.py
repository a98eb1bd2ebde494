"""Network namespaces for tests that need a network of their own (root only; not a test module).

Two levels:

* ``Namespace``, ``wire`` and ``NatRouter``: single namespaces, veth pairs and a NAT router, for
  small setups built by hand.
* ``Network``: "the internet" (a bridge in a namespace of its own, 198.18.0.0/16, with a STUN
  server) and sites attached to it: public hosts, and hosts behind a home router of one of the
  ``NAT_KINDS``, each site with optional packet loss and delay on its link. From a shell,
  ``python tests/netlab.py up|down|list`` builds and removes the same networks.

Every namespace is named ``qp2p-...`` and deleted on exit together with whatever still runs in it;
every rule lives inside a namespace, so a failing test leaves nothing behind. docs/netlab.md
describes the topology and how each NAT kind is made.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

__all__ = (
    "IGD",
    "LanHost",
    "NAT",
    "NAT_KINDS",
    "STUN_ADDRESSES",
    "STUN_PORTS",
    "TOPOLOGIES",
    "Namespace",
    "NatRouter",
    "Network",
    "Site",
    "down",
    "missing",
    "requires",
    "unavailable",
    "wire",
)

_counter = itertools.count()

HERE = Path(__file__).resolve().parent
DELAY_LINE = HERE / "delay_line.py"
STUN_SERVER = HERE / "stun_server.py"
RUN_DIR = Path("/run/qp2p-netlab")  # one <network>.json state file and one <network>/ folder per network
NAT_KINDS = ("full_cone", "address_restricted", "port_restricted", "symmetric", "igd")
SITE_KINDS = ("public", *NAT_KINDS)
INTERNET_PREFIX_LENGTH = 16  # every WAN and public address is in 198.18.0.0/16, on one bridge
STUN_ADDRESSES = ("198.18.0.1", "198.18.0.2")  # the internet namespace's own addresses
STUN_PORTS = (3478, 3479)
MAX_SITES = 250
START_TIMEOUT = 15.0  # seconds for a helper process to say it is ready
STOP_TIMEOUT = 3.0  # seconds for helper processes to exit after SIGTERM, before SIGKILL
IGD_HTTP_PORT = 5555
ROUTER_KINDS = ("full_cone", "address_restricted", "port_restricted", "symmetric")  # iptables-made
CONTACTED_FOR = 180  # seconds an address-restricted router lets in an address the host sent to
MAX_HOSTS = 4  # hosts behind one router
HOST_PORTS = (20000, 59999)  # split among the hosts of a router with several (ip_local_port_range)
_NAME = re.compile(r"[a-z][a-z0-9]{0,11}")  # a site name; "s-" + name must fit in 15 characters
_NETWORK_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")

# Named topologies for ``Network.build`` and the command line: site name -> kind, in order.
TOPOLOGIES: dict[str, tuple[tuple[str, str], ...]] = {
    "all": (
        ("cone", "full_cone"),
        ("restricted", "port_restricted"),
        ("symmetric", "symmetric"),
        ("igd", "igd"),
        ("p1", "public"),
        ("p2", "public"),
    ),
    "public": (("p1", "public"), ("p2", "public")),
    # Two hosts behind the same kind of NAT and a public contact: the hole-punching case.
    **{kind: (("a", kind), ("b", kind), ("p", "public")) for kind in NAT_KINDS},
}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


# What each part of a network runs besides ``ip``, named as ``unavailable`` and ``requires`` take it:
# NAT routers and impaired links (iptables-restore), an igd router and its UPnP client.
NAT = ("sysctl", "iptables-restore")
IGD = ("sysctl", "nft", "miniupnpd", "miniupnpc")
PYTHON_MODULES = ("miniupnpc",)  # needs that are Python modules, not programs


def missing(*needs: str) -> list[str]:
    """Those of ``needs`` (programs on PATH, or ``PYTHON_MODULES``) that are not installed."""
    absent = []
    for need in dict.fromkeys(needs):
        found = importlib.util.find_spec(need) if need in PYTHON_MODULES else shutil.which(need)
        if found is None:
            absent.append(need)
    return absent


def unavailable(*needs: str) -> str | None:
    """Why namespaces, or any of ``needs`` besides ``ip``, cannot be used here, or None when all can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    absent = missing("ip", *needs)
    if absent:
        return f"not installed: {', '.join(absent)}"
    return _namespaces_refused()


def requires(*needs: str) -> pytest.MarkDecorator:
    """A mark that skips a test, giving ``unavailable``'s reason, unless all it needs is here."""
    import pytest  # here, so that the command line runs without pytest installed

    reason = unavailable(*needs)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


@functools.cache
def _namespaces_refused() -> str | None:
    """Why the kernel refuses to make a network namespace, or None (tried once per process)."""
    probe = f"qp2p-{os.getpid()}-probe"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"the kernel refuses network namespaces: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Namespace:
    """One network namespace with its loopback up; ``with Namespace() as ns: ns.run([...])``."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"qp2p-{os.getpid()}-{next(_counter)}"

    def __enter__(self) -> Namespace:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def create(self) -> None:
        """Adds the namespace and brings its loopback up (deleting it again if that fails)."""
        _ip("netns", "add", self.name)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    def ip(self, *args: str) -> None:
        """``ip -n NAME ...``; raises on failure."""
        _ip("-n", self.name, *args)

    def sysctl(self, setting: str) -> None:
        self.run(["sysctl", "-qw", setting], check=True)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], timeout: float = 120, check: bool = False, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, check=check, input=input
        )

    def iptables_restore(self, rules: str) -> None:
        """Adds ``rules`` (iptables-restore syntax) to the tables they name, keeping what is there."""
        done = self.run(["iptables-restore", "--noflush"], input=rules, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"iptables-restore in {self.name}: {done.stderr.strip()}\n{rules}")

    def delete(self) -> None:
        """Kill every process still in the namespace, then delete it (idempotent)."""
        pids = _ip("netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _ip("netns", "del", self.name, check=False)

    @property
    def exists(self) -> bool:
        return Path("/run/netns", self.name).exists()


def wire(a: Namespace, a_name: str, a_cidr: str, b: Namespace, b_name: str, b_cidr: str) -> None:
    """A veth pair between two namespaces, addressed and up (never in the root namespace)."""
    a.ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name)
    for ns, name, cidr in ((a, a_name, a_cidr), (b, b_name, b_cidr)):
        ns.ip("addr", "add", cidr, "dev", name)
        ns.ip("link", "set", name, "up")


def _home_router_filter(
    lan_if: str, wan_if: str, extra_forward: Sequence[str] = (), bare: bool = False
) -> str:
    """The filter table every iptables router shares: what the LAN opened comes back, nothing else.

    Unsolicited traffic to the router itself is dropped, never answered with ICMP: an ICMP error to
    an early peer packet leaves a conntrack entry that moves the LAN's next mapping to another
    port. A ``bare`` router has no such firewall on its own stack: it answers with ICMP, and keeps
    the entry, as many cheap routers and carrier NATs do.
    """
    own_stack = [] if bare else [
        f"-A INPUT -i {wan_if} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A INPUT -i {wan_if} -j DROP",
    ]  # fmt: skip
    return "\n".join(
        [
            "*filter",
            ":FORWARD DROP [0:0]",
            "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            f"-A FORWARD -i {lan_if} -o {wan_if} -j ACCEPT",
            *extra_forward,
            *own_stack,
            "COMMIT",
            "",
        ]
    )


class NatRouter:
    """A home router in ``router``: LAN behind ``lan_if``, WAN out of ``wan_if``.

    ``kind`` is how it maps and filters UDP (see docs/netlab.md):

    * ``port_restricted``: MASQUERADE, which keeps a LAN port whenever it is free, so one mapping
      serves every destination; only an address:port the LAN host sent to may answer.
    * ``symmetric``: MASQUERADE --random-fully, a new random port for every destination.
    * ``full_cone``: a static 1:1 NAT for ``host_ip`` behind ``wan_ip``: SNAT keeping ports, and
      every UDP datagram to ``wan_ip`` DNATed to the host, from anyone.
    * ``address_restricted``: the same 1:1 NAT, but only an address the host sent to (from any of
      its ports) may answer: xt_recent notes each destination address on the way out.

    Like a home router it drops what comes from the WAN unsolicited: to the router itself, and
    forwarded traffic that belongs to no connection the LAN opened (the cones' DNAT aside), with
    no ICMP answer, so no conntrack entry is left behind; a ``bare`` router answers for itself
    with ICMP instead. (The ``igd`` kind is not made here: its rules are an nftables ruleset that
    miniupnpd edits, see ``Network``.)
    """

    def __init__(
        self,
        router: Namespace,
        lan_if: str,
        wan_if: str,
        kind: str = "port_restricted",
        *,
        host_ip: str | None = None,
        wan_ip: str | None = None,
        bare: bool = False,
        hosts: Sequence[LanHost] = (),
        hairpin: bool = False,
    ) -> None:
        router.sysctl("net.ipv4.ip_forward=1")
        hosts = hosts or ([LanHost(host_ip)] if host_ip is not None else [])
        forward: list[str] = []
        if (kind in ("full_cone", "address_restricted") or hairpin) and (not hosts or wan_ip is None):
            raise ValueError(
                f"a {kind} NAT{' with hairpinning' if hairpin else ''} needs its hosts and wan_ip"
            )
        if hairpin and kind == "symmetric":
            raise ValueError("a symmetric NAT's ports are random: netlab cannot hairpin them")
        if kind == "port_restricted":
            nat = [f"-A POSTROUTING -o {wan_if} -j MASQUERADE"]
        elif kind == "symmetric":
            nat = [f"-A POSTROUTING -o {wan_if} -j MASQUERADE --random-fully"]
        elif kind in ("full_cone", "address_restricted"):
            nat = [f"-A POSTROUTING -o {wan_if} -s {host.ip} -j SNAT --to-source {wan_ip}" for host in hosts]
            nat += [
                f"-A PREROUTING -i {wan_if} -d {wan_ip} {host.udp()} -j DNAT --to-destination {host.ip}"
                for host in hosts
            ]
            inbound = f"-A FORWARD -i {wan_if} -o {lan_if} -m conntrack --ctstate DNAT"
            if kind == "address_restricted":
                contacted = f"-m recent --name contacted --rsource --rcheck --seconds {CONTACTED_FOR}"
                inbound = f"{inbound} {contacted}"
                noted = f"-A FORWARD -i {lan_if} -o {wan_if} -m recent --name contacted --rdest --set"
                router.iptables_restore(f"*mangle\n{noted}\nCOMMIT\n")
            forward = [f"{inbound} -j ACCEPT"]
        else:
            raise ValueError(f"NatRouter makes {', '.join(ROUTER_KINDS)}, not {kind!r}")
        if hairpin:
            # A LAN host's datagram to the WAN address goes to the host whose ports those are,
            # from the WAN address, as if it had crossed the internet and come back.
            nat += [
                f"-A PREROUTING -i {lan_if} -d {wan_ip} {host.udp()} -j DNAT --to-destination {host.ip}"
                for host in hosts
            ]
            looped = f"-o {lan_if} -m conntrack --ctstate DNAT -s {_prefix(hosts[0].ip)}"
            nat.append(f"-A POSTROUTING {looped} -j SNAT --to-source {wan_ip}")
            forward.append(f"-A FORWARD -i {lan_if} -o {lan_if} -m conntrack --ctstate DNAT -j ACCEPT")
        router.iptables_restore("\n".join(["*nat", *nat, "COMMIT", ""]))
        router.iptables_restore(_home_router_filter(lan_if, wan_if, forward, bare))


@dataclass(frozen=True)
class LanHost:
    """A host behind a router: its LAN address and, when it shares the router, the ephemeral
    ports it binds (its own range, so that a port tells the router whose it is)."""

    ip: str
    ports: tuple[int, int] | None = None

    def udp(self) -> str:
        """The iptables match for UDP to this host's ports."""
        return "-p udp" if self.ports is None else f"-p udp --dport {self.ports[0]}:{self.ports[1]}"


def _prefix(ip: str) -> str:
    """The /24 a LAN address is in."""
    return ip.rsplit(".", 1)[0] + ".0/24"


def _igd_ruleset(lan_if: str, wan_if: str) -> str:
    """The igd router's nftables ruleset, in the table and chains miniupnpd's config names.

    It is a port-restricted home router; miniupnpd adds a DNAT rule to ``prerouting_miniupnpd``
    and an accept rule to ``miniupnpd`` for each mapping. The input chain lets in the STUN
    server's answers (miniupnpd's startup check, from addresses and ports it did not send to).
    """
    stun_from = ", ".join(STUN_ADDRESSES)
    stun_ports = ", ".join(str(port) for port in STUN_PORTS)
    return f"""table inet filter {{
    chain input {{
        type filter hook input priority 0; policy accept;
        ct state established,related accept
        iifname "{wan_if}" ip saddr {{ {stun_from} }} udp sport {{ {stun_ports} }} accept
        iifname "{wan_if}" drop
    }}
    chain forward {{
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "{lan_if}" oifname "{wan_if}" accept
        jump miniupnpd
    }}
    chain miniupnpd {{ }}
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "{wan_if}" masquerade
    }}
    chain prerouting_miniupnpd {{ }}
    chain postrouting_miniupnpd {{ }}
}}
"""


def _miniupnpd_config(run_dir: Path, site: str, lan_if: str, wan_if: str, lan_prefix: str) -> str:
    """miniupnpd's configuration: UPnP IGD and NAT-PMP on the LAN, STUN for the external address.

    198.18.0.0/15 is on miniupnpd's list of reserved addresses, so it only enables port forwarding
    after a STUN check against the internet's server shows the WAN address is unfiltered.
    """
    return "\n".join(
        [
            f"ext_ifname={wan_if}",
            f"listening_ip={lan_if}",
            f"http_port={IGD_HTTP_PORT}",
            "enable_upnp=yes",
            "enable_natpmp=yes",
            "secure_mode=yes",
            "system_uptime=yes",
            "notify_interval=60",
            f"uuid={uuid.uuid4()}",
            f"friendly_name=netlab igd {site}",
            f"lease_file={run_dir / f'{site}-upnp.leases'}",
            f"minissdpdsocket={run_dir / f'{site}-minissdpd.sock'}",
            "ext_perform_stun=yes",
            f"ext_stun_host={STUN_ADDRESSES[0]}",
            f"ext_stun_port={STUN_PORTS[0]}",
            "upnp_table_name=filter",
            "upnp_nat_table_name=filter",
            "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            f"allow 1024-65535 {lan_prefix} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "",
        ]
    )


@dataclass
class Site:
    """One place on the internet: a public host, or a host behind a router.

    ``host`` is the namespace to run programs in (``site.host.command(argv)``); ``ip`` is the
    site's address on the internet (the router's WAN address behind a NAT); ``host_ip`` is the
    host's own address (a 10.n.0.2 LAN address behind a NAT); ``router_lan_ip`` is the router's
    LAN address (where an igd router's miniupnpd answers), None for a public site.
    """

    name: str
    kind: str
    host: Namespace
    ip: str
    host_ip: str
    router: Namespace | None = None
    router_lan_ip: str | None = None
    loss: float = 0.0
    delay_ms: float = 0.0
    bare: bool = False  # a router that answers unsolicited datagrams with ICMP (see NatRouter)
    others: tuple[tuple[Namespace, str], ...] = ()  # more hosts behind the router: (namespace, ip)
    hairpin: bool = False  # the router loops LAN datagrams to its WAN address back in

    @property
    def hosts(self) -> list[tuple[Namespace, str]]:
        """Every host of the site, ``host`` first: (namespace, LAN address)."""
        return [(self.host, self.host_ip), *self.others]

    @property
    def wan_ip(self) -> str:
        """The address the internet sees (the same as ``ip``)."""
        return self.ip

    def forget_contacts(self) -> None:
        """An address-restricted router forgets every address its host sent to, as after a
        long silence, so that a new trial starts from a closed filter (nothing for other kinds)."""
        if self.router is not None and self.kind == "address_restricted":
            self.router.run(["sh", "-c", "echo / > /proc/net/xt_recent/contacted"], check=True, timeout=10)

    def flush_mappings(self, host_ip: str | None = None) -> int:
        """The router forgets its NAT mappings (every conntrack entry) of ``host_ip``, or of all
        its hosts, as a router that reboots or times them out does: the host's next datagram gets
        a new mapping (a new random port behind ``symmetric``; the same port, when it is free,
        behind the kinds that keep ports), and until then what peers send to the old one is
        dropped as unsolicited. Needs ``conntrack`` (conntrack-tools). The entries deleted."""
        if self.router is None:
            raise ValueError(f"site {self.name} is public: it has no router, so no mappings")
        deleted = 0
        for ip in [host_ip] if host_ip is not None else [ip for _ns, ip in self.hosts]:
            done = self.router.run(["conntrack", "-D", "-s", ip], timeout=30)
            # Status 1 with "0 flow entries" when there was nothing to delete.
            found = re.search(r"(\d+) flow entries have been deleted", done.stderr)
            if found is None:
                raise RuntimeError(f"conntrack -D in {self.router.name}: {done.stderr.strip()}")
            deleted += int(found.group(1))
        return deleted

    def mappings(self, host_ip: str | None = None) -> list[tuple[int, str, int, int]]:
        """The router's UDP mappings of ``host_ip`` (default: the first host), from conntrack:
        (the host's port, the peer's address, the peer's port, the public port it maps to)."""
        if self.router is None:
            raise ValueError(f"site {self.name} is public: it has no router, so no mappings")
        ip = host_ip or self.host_ip
        done = self.router.run(["conntrack", "-L", "-p", "udp", "-s", ip], timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"conntrack -L in {self.router.name}: {done.stderr.strip()}")
        found = []
        for line in done.stdout.splitlines():
            # "src=H dst=P sport=h dport=p ... src=P dst=WAN sport=p dport=MAPPED ...": the
            # original direction, then the reply's, whose destination port is the mapping.
            fields = re.findall(r"(src|dst|sport|dport)=(\S+)", line)
            if len(fields) >= 8:
                original, reply = dict(fields[:4]), dict(fields[4:8])
                ports = int(original["sport"]), int(original["dport"]), int(reply["dport"])
                found.append((ports[0], original["dst"], ports[1], ports[2]))
        return found

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {
            "kind": self.kind,
            "ip": self.ip,
            "host": {"namespace": self.host.name, "interface": "eth0", "ip": self.host_ip},
            "link": {"internet_interface": f"s-{self.name}", "loss": self.loss, "delay_ms": self.delay_ms},
        }
        if self.router is not None:
            described["router"] = {
                "namespace": self.router.name,
                "wan": {"interface": "wan0", "ip": self.ip},
                "lan": {"interface": "lan0", "ip": self.router_lan_ip},
                "bare": self.bare,
                "hairpin": self.hairpin,
            }
            described["other_hosts"] = [{"namespace": ns.name, "ip": ip} for ns, ip in self.others]
        return described


class Network:
    """The internet namespace and the sites attached to it; removed whole on ``close``.

    ``with Network() as net: a = net.nat_site("a", "port_restricted", delay_ms=40)`` and
    ``b = net.public_site("b")``; then ``a.host.command([...])`` reaches ``b.ip``. A STUN server
    answers on ``STUN_ADDRESSES`` x ``STUN_PORTS``. While the network is up, its state is kept in
    ``/run/qp2p-netlab/<name>.json`` so that ``down`` finds it even if this process dies.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{os.getpid()}-net{next(_counter)}"
        if not _NETWORK_NAME.fullmatch(self.name):
            raise ValueError(f"network name {self.name!r} is not {_NETWORK_NAME.pattern}")
        self.run_dir = RUN_DIR / self.name
        self.state_file = RUN_DIR / f"{self.name}.json"
        self.internet = Namespace(f"qp2p-{self.name}-internet")
        self.namespaces: list[Namespace] = []
        self.sites: dict[str, Site] = {}
        self.processes: list[tuple[str, Namespace, subprocess.Popen[bytes]]] = []
        self.cut_sites: set[str] = set()  # sites whose link drops every packet (``cut``)

    def __enter__(self) -> Network:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Creates the internet namespace, its bridge and its STUN server."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        if self.state_file.exists():
            raise FileExistsError(f"network {self.name} is already up; `netlab.py down --name {self.name}`")
        self.run_dir.mkdir()
        try:
            self._add_namespace(self.internet)
            self.internet.ip("link", "add", "br0", "type", "bridge")
            for address in STUN_ADDRESSES:
                self.internet.ip("addr", "add", f"{address}/{INTERNET_PREFIX_LENGTH}", "dev", "br0")
            self.internet.ip("link", "set", "br0", "up")
            stun = [sys.executable, str(STUN_SERVER)]
            stun += [arg for address in STUN_ADDRESSES for arg in ("--address", address)]
            stun += [arg for port in STUN_PORTS for arg in ("--port", str(port))]
            self._spawn("stun", self.internet, stun, ready=("ready",))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stops the helper processes, deletes every namespace (and so every veth and rule)."""
        for _label, _ns, process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for _label, _ns, process in self.processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        self.processes.clear()
        for ns in reversed(self.namespaces):
            ns.delete()
        self.namespaces.clear()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)

    def public_site(self, name: str, *, loss: float = 0.0, delay_ms: float = 0.0) -> Site:
        """A host directly on the internet at 198.18.<n>.1, its link impaired at the bridge port."""
        index = self._next_index(name, loss, delay_ms)
        host = self._add_namespace(Namespace(f"qp2p-{self.name}-{name}"))
        address = f"198.18.{index}.1"
        port = f"s-{name}"
        host.ip("link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.internet.name)
        self.internet.ip("link", "set", port, "master", "br0", "up")
        host.ip("addr", "add", f"{address}/{INTERNET_PREFIX_LENGTH}", "dev", "eth0")
        host.ip("link", "set", "eth0", "up")
        site = Site(name, "public", host, address, address, loss=loss, delay_ms=delay_ms)
        self._add_site(site)
        if loss or delay_ms:
            # Not in the host's namespace: a DROP in its own OUTPUT chain would fail sendto() with
            # EPERM, which no lossy link does. Bridged packets pass iptables in the internet
            # namespace, where physdev names the host's port in either direction.
            self.internet.sysctl("net.bridge.bridge-nf-call-iptables=1")
            self._impair(
                self.internet,
                f"public-{name}",
                index,
                (("raw", "PREROUTING", f"-m physdev --physdev-in {port}"),
                 ("mangle", "FORWARD", f"-m physdev --physdev-out {port}")),
                loss,
                delay_ms,
            )  # fmt: skip
        return site

    def nat_site(
        self,
        name: str,
        kind: str,
        *,
        loss: float = 0.0,
        delay_ms: float = 0.0,
        bare: bool = False,
        lan: int | None = None,
        hosts: int = 1,
        hairpin: bool = False,
    ) -> Site:
        """A host at 10.<lan>.0.2 behind a home router of ``kind`` whose WAN address is
        198.18.<n>.1; ``lan`` is the site's number n unless given, so that two sites can share a
        private range. A ``bare`` router answers unsolicited datagrams with ICMP. With ``hosts``
        above 1, more hosts (10.<lan>.0.3, ...) share the router on a LAN bridge, each binding
        its own range of ephemeral ports; a ``hairpin`` router loops what a LAN host sends to
        its WAN address back to the host whose port it is."""
        if kind not in NAT_KINDS:
            raise ValueError(f"kind must be one of {NAT_KINDS}, not {kind!r}")
        if (bare or hairpin) and kind == "igd":
            raise ValueError("an igd router has its own firewall (nftables), it cannot be bare or hairpin")
        if lan is not None and not 1 <= lan <= 254:
            raise ValueError(f"lan must be in 1..254, not {lan}")
        if not 1 <= hosts <= MAX_HOSTS or (hosts > 1 and kind == "igd"):
            raise ValueError(f"hosts must be in 1..{MAX_HOSTS} (1 for igd), not {hosts}")
        index = self._next_index(name, loss, delay_ms)
        lan = index if lan is None else lan
        router = self._add_namespace(Namespace(f"qp2p-{self.name}-{name}-router"))
        namespaces = [
            self._add_namespace(Namespace(f"qp2p-{self.name}-{name}" + (str(k + 1) if k else "")))
            for k in range(hosts)
        ]
        wan_ip, lan_ip = f"198.18.{index}.1", f"10.{lan}.0.1"
        ips = [f"10.{lan}.0.{k + 2}" for k in range(hosts)]
        port = f"s-{name}"
        router.ip("link", "add", "wan0", "type", "veth", "peer", "name", port, "netns", self.internet.name)
        self.internet.ip("link", "set", port, "master", "br0", "up")
        router.ip("addr", "add", f"{wan_ip}/{INTERNET_PREFIX_LENGTH}", "dev", "wan0")
        router.ip("link", "set", "wan0", "up")
        lan_hosts = self._lan(router, lan_ip, namespaces, ips, shared=hosts > 1 or hairpin)
        site = Site(name, kind, namespaces[0], wan_ip, ips[0], router, lan_ip, loss, delay_ms, bare,
                    tuple(zip(namespaces[1:], ips[1:], strict=True)), hairpin)  # fmt: skip
        self._add_site(site)
        if kind == "igd":
            self._igd(site, f"10.{lan}.0.0/24")
        else:
            NatRouter(
                router, "lan0", "wan0", kind, wan_ip=wan_ip, bare=bare, hosts=lan_hosts, hairpin=hairpin
            )
        if loss or delay_ms:
            # Raw PREROUTING comes before conntrack and NAT: a dropped packet never makes a mapping,
            # and delayed packets reach the NAT one by one in their order.
            self._impair(
                router,
                f"router-{name}",
                0,
                (("raw", "PREROUTING", "-i lan0"), ("raw", "PREROUTING", "-i wan0")),
                loss,
                delay_ms,
            )
        return site

    def _lan(
        self, router: Namespace, lan_ip: str, namespaces: list[Namespace], ips: list[str], shared: bool
    ) -> list[LanHost]:
        """The LAN behind ``router``: one veth to a lone host, else a bridge with a port per
        host, each host then binding ports of its own (so its mappings tell whose they are)."""
        if not shared:
            wire(router, "lan0", f"{lan_ip}/24", namespaces[0], "eth0", f"{ips[0]}/24")
            namespaces[0].ip("route", "add", "default", "via", lan_ip)
            return [LanHost(ips[0])]
        # Frames between two LAN hosts are bridged, not routed: iptables must not see them.
        router.run(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"])
        router.ip("link", "add", "lan0", "type", "bridge")
        router.ip("addr", "add", f"{lan_ip}/24", "dev", "lan0")
        router.ip("link", "set", "lan0", "up")
        low, high = HOST_PORTS
        size = (high - low + 1) // len(namespaces)
        hosts = []
        for k, (ns, ip) in enumerate(zip(namespaces, ips, strict=True)):
            ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", f"lan0p{k}", "netns", router.name)
            router.ip("link", "set", f"lan0p{k}", "master", "lan0", "up")
            ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
            ns.ip("link", "set", "eth0", "up")
            ns.ip("route", "add", "default", "via", lan_ip)
            ports = (low + k * size, low + (k + 1) * size - 1)
            ns.sysctl(f"net.ipv4.ip_local_port_range={ports[0]} {ports[1]}")
            hosts.append(LanHost(ip, ports))
        return hosts

    def cut(self, name: str) -> None:
        """Site ``name``'s link drops every packet, both ways, until ``heal(name)``: a partition.

        What the site sends is dropped in the internet namespace as it arrives on the site's
        bridge port (``raw PREROUTING -m physdev --physdev-in s-<site>``, before any delay
        line); what comes for it is dropped as it reaches the site, in the public host's or the
        router's own ``raw PREROUTING`` on its link, so that packets the internet namespace
        sends itself (STUN answers) are cut too. No ICMP, no ``sendto`` error: the packets
        vanish, as on a dead link. The rules go first in their chains; idempotent."""
        if name in self.cut_sites:
            return
        self._cut_rules(name, "-I")
        self.cut_sites.add(name)

    def heal(self, name: str) -> None:
        """Removes ``cut``'s rules: the link carries packets again (with its loss and delay)."""
        if name not in self.cut_sites:
            return
        self._cut_rules(name, "-D")
        self.cut_sites.discard(name)

    def _cut_rules(self, name: str, op: str) -> None:
        site = self.sites[name]
        self.internet.sysctl("net.bridge.bridge-nf-call-iptables=1")
        leaving = f"{op} PREROUTING -m physdev --physdev-in s-{name} -j DROP"
        self.internet.iptables_restore(f"*raw\n{leaving}\nCOMMIT\n")
        inside, link = (site.host, "eth0") if site.router is None else (site.router, "wan0")
        inside.iptables_restore(f"*raw\n{op} PREROUTING -i {link} -j DROP\nCOMMIT\n")

    def build(self, topology: str, *, loss: float = 0.0, delay_ms: float = 0.0) -> None:
        """Adds the sites of ``topology``: a name in ``TOPOLOGIES`` or ``name=kind,name=kind,...``
        (``name=kind+bare`` for a bare router)."""
        for name, kind in parse_topology(topology):
            if kind == "public":
                self.public_site(name, loss=loss, delay_ms=delay_ms)
            else:
                kind, _, bare = kind.partition("+")
                self.nat_site(name, kind, loss=loss, delay_ms=delay_ms, bare=bare == "bare")

    def describe(self) -> dict[str, object]:
        """Namespaces, interfaces, addresses and helper processes, as plain JSON-ready data."""
        return {
            "name": self.name,
            "internet": {
                "namespace": self.internet.name,
                "bridge": "br0",
                "prefix": f"198.18.0.0/{INTERNET_PREFIX_LENGTH}",
                "stun": [f"{address}:{port}" for address in STUN_ADDRESSES for port in STUN_PORTS],
            },
            "sites": {name: site.describe() for name, site in self.sites.items()},
            "cut": sorted(self.cut_sites),
            "processes": [
                {"name": label, "namespace": ns.name, "pid": process.pid}
                for label, ns, process in self.processes
            ],
            "run_dir": str(self.run_dir),
        }

    def _next_index(self, name: str, loss: float, delay_ms: float) -> int:
        """The number of a new site (its addresses derive from it), once its settings are checked."""
        if not 0.0 <= loss < 1.0 or delay_ms < 0:
            raise ValueError(f"loss must be in [0, 1) and delay_ms >= 0, not {loss} and {delay_ms}")
        if not _NAME.fullmatch(name):
            raise ValueError(f"site name {name!r} is not {_NAME.pattern}")
        if name in self.sites or name == "internet":
            raise ValueError(f"site {name!r} exists already")
        if len(self.sites) >= MAX_SITES:
            raise ValueError(f"at most {MAX_SITES} sites")
        return len(self.sites) + 1

    def _add_namespace(self, ns: Namespace) -> Namespace:
        self.namespaces.append(ns)  # before it exists, so that close() deletes a half-made one too
        self._save()
        ns.create()
        return ns

    def _add_site(self, site: Site) -> None:
        self.sites[site.name] = site
        self._save()

    def _save(self) -> None:
        namespaces = [ns.name for ns in self.namespaces]
        state = {"creator": os.getpid(), "namespaces": namespaces, **self.describe()}
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(self.state_file)

    def _spawn(
        self, label: str, ns: Namespace, argv: Sequence[str], ready: Sequence[str]
    ) -> subprocess.Popen[bytes]:
        """Starts ``argv`` in ``ns`` (its own session, output in the run folder) and waits until its
        output contains every string in ``ready``; raises with the output if it exits or is late."""
        log = self.run_dir / f"{label}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ns.command(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.processes.append((label, ns, process))
        self._save()
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # polls at most START_TIMEOUT seconds
            output = log.read_text(errors="replace")
            if all(text in output for text in ready):
                return process
            if process.poll() is not None or time.monotonic() > deadline:
                state = "exited" if process.poll() is not None else "was not ready in time"
                raise RuntimeError(f"{label} {state}: {' '.join(argv)}\n{output[-3000:]}")
            time.sleep(0.02)

    def _igd(self, site: Site, lan_prefix: str) -> None:
        """The igd router: its nftables ruleset, then miniupnpd in the foreground."""
        assert site.router is not None
        site.router.sysctl("net.ipv4.ip_forward=1")
        done = site.router.run(["nft", "-f", "-"], input=_igd_ruleset("lan0", "wan0"), timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"nft in {site.router.name}: {done.stderr.strip()}")
        config = self.run_dir / f"{site.name}-miniupnpd.conf"
        config.write_text(_miniupnpd_config(self.run_dir, site.name, "lan0", "wan0", lan_prefix))
        pid_file = self.run_dir / f"{site.name}-miniupnpd.pid"
        argv = ["miniupnpd", "-d", "-f", str(config), "-P", str(pid_file)]
        self._spawn(f"miniupnpd-{site.name}", site.router, argv, ready=("Port forwarding is now enabled",))

    def _impair(
        self,
        ns: Namespace,
        label: str,
        queue: int,
        directions: Sequence[tuple[str, str, str]],
        loss: float,
        delay_ms: float,
    ) -> None:
        """Random loss and a delay line on each of ``directions`` (table, chain, match), in ``ns``.

        Loss comes first, so a dropped packet is not delayed. The delay line is bound before its
        rules exist; ``--queue-bypass`` lets packets through should it ever be gone.
        """
        if delay_ms:
            argv = [sys.executable, str(DELAY_LINE), "--queue", str(queue), "--delay-ms", str(delay_ms)]
            self._spawn(f"delay-{label}", ns, argv, ready=("ready",))
        rules: dict[str, list[str]] = {}
        for table, chain, match in directions:
            if loss:
                statistic = f"-m statistic --mode random --probability {loss}"
                rules.setdefault(table, []).append(f"-A {chain} {match} {statistic} -j DROP")
            if delay_ms:
                target = f"-j NFQUEUE --queue-num {queue} --queue-bypass"
                rules.setdefault(table, []).append(f"-A {chain} {match} {target}")
        tables = [f"*{table}\n" + "\n".join(lines) + "\nCOMMIT\n" for table, lines in rules.items()]
        ns.iptables_restore("".join(tables))


def parse_topology(topology: str) -> list[tuple[str, str]]:
    """(site name, kind) pairs of a named topology or of ``name=kind,name=kind,...``."""
    if topology in TOPOLOGIES:
        return list(TOPOLOGIES[topology])
    sites = []
    for item in topology.split(","):
        name, _, kind = item.partition("=")
        if kind.removesuffix("+bare") not in SITE_KINDS or kind in ("public+bare", "igd+bare"):
            raise ValueError(f"{item!r}: expected name=kind or name=kind+bare with a kind in {SITE_KINDS}")
        sites.append((name, kind))
    return sites


def down(name: str | None = None) -> list[str]:
    """Removes the network ``name`` from its state file under /run/qp2p-netlab: kills what runs in
    its namespaces and deletes them. Without a name, removes every recorded network whose creator
    has exited (so not one a running test still uses). Returns the names removed."""
    removed = []
    for state_file in sorted(RUN_DIR.glob("*.json")):
        state = json.loads(state_file.read_text())
        if state["name"] != name and (name is not None or _alive(state["creator"])):
            continue
        for ns_name in reversed(state["namespaces"]):
            Namespace(ns_name).delete()
        shutil.rmtree(RUN_DIR / state["name"], ignore_errors=True)
        state_file.unlink(missing_ok=True)
        removed.append(state["name"])
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Test networks in namespaces (see docs/netlab.md).")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build a network, print it as JSON and leave it running")
    up.add_argument("topology", help=f"one of {', '.join(TOPOLOGIES)}, or name=kind,name=kind,...")
    up.add_argument("--name", default="netlab", help="network name (default netlab)")
    up.add_argument("--loss", type=float, default=0.0, help="random loss on every site's link, each way")
    up.add_argument("--delay-ms", type=float, default=0.0, help="delay on every site's link, each way")
    remove = commands.add_parser("down", help="remove a network (default: all whose creator has exited)")
    remove.add_argument("--name", help="only this network")
    commands.add_parser("list", help="print the named topologies and the networks that are up")
    args = parser.parse_args(argv)
    reason = unavailable()
    if reason is not None:
        parser.error(reason)
    if args.command == "up":
        network = Network(args.name)
        network.start()
        try:
            network.build(args.topology, loss=args.loss, delay_ms=args.delay_ms)
        except BaseException:
            network.close()
            raise
        print(json.dumps(network.describe(), indent=2))
    elif args.command == "down":
        for name in down(args.name):
            print(f"removed {name}")
    else:
        running = [json.loads(path.read_text())["name"] for path in sorted(RUN_DIR.glob("*.json"))]
        topologies = {name: dict(sites) for name, sites in TOPOLOGIES.items()}
        print(json.dumps({"topologies": topologies, "up": running}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
