"""A network of many qp2p nodes in netlab's namespaces, each node its own process, and what
happens to it over restarts, churn, partitions and address changes (not a test module).

Used by scripts/network_sim.py (every scenario, a table and a plot) and
tests/test_network_sim.py (a small network, scenarios 1 and 4, its targets asserted).

The network: public sites, each host running several nodes on fixed ports (so that a restart
keeps a node's address), and NAT sites of up to four hosts with a node each. Three nodes on
public sites are the hard-coded contacts; every other node is given one of them (in turn), joins
through it with ``client_fallback`` and learns the others by peer exchange. Nodes behind
port-restricted and symmetric NATs cannot be verified and end up clients. Every node keeps its
certificate (``--identity``) and its cache folder across restarts.

The orchestrator is one asyncio loop: each node is spoken to over its pipes in JSON lines
(tests/node_process.py), with a deadline on every answer and every wait, and a sampler asks
every live node for its status at intervals. Every scenario returns an ``Outcome``: rows for a
table, targets met or missed, and the samples and events to plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netlab

__all__ = (
    "DEFAULT_MIX",
    "NODE_KINDS",
    "Options",
    "Outcome",
    "Sim",
    "Target",
    "allocate",
    "parse_mix",
    "run_scenario",
)

NODE_PROCESS = Path(__file__).with_name("node_process.py")
KINDS = ("public", "full_cone", "address_restricted", "port_restricted", "symmetric", "igd")
# Shares of the nodes by the kind of site they are on; about one in four cannot be verified.
DEFAULT_MIX = {"public": 60, "full_cone": 15, "port_restricted": 12, "symmetric": 12, "igd": 1}
NODE_KINDS = ("public", "full_cone", "igd")  # reachable unsolicited: verified as nodes
# Site names: p1, p2, ... for public sites, then these and a number.
SITE_PREFIX = {
    "full_cone": "fc",
    "address_restricted": "ar",
    "port_restricted": "pr",
    "symmetric": "sy",
    "igd": "ig",
}
CONTACTS = 3
PUBLIC_PORT = 4000  # the first node's port on each public host; the next ones count up
PROBER_PORT = 3999  # the prober's, on the first public host
NAT_PORT_OFFSET = 1000  # a NATed host's nodes bind from this far into its own port range
IDLE_TIMEOUT = 30.0  # qp2p's default idle_timeout, which the nodes keep
KEEP_ALIVE = 10.0  # and its keep_alive_interval
# A link cut just after a packet came in ends IDLE_TIMEOUT after the first ack-eliciting packet
# sent since then (RFC 9000 section 10.1, as aioquic does): the next keep-alive at the latest.
# POLL is how often the partitioned nodes are looked at, and how late that makes a reading.
POLL = 1.0
ENDED_WITHIN = IDLE_TIMEOUT + KEEP_ALIVE + 2 * POLL
ANSWER_TIMEOUT = 20.0  # the longest a quick command (status, peers) may take to be answered
BOOTSTRAP_TIMEOUT = 90.0  # the longest a bootstrap may take, for the orchestrator
START_TIMEOUT = 60.0  # for a node process to bind and say it is ready
QUIT_TIMEOUT = 30.0  # for a node to close its endpoint (writing its cache) and exit
REJOIN_WITHIN = 30.0  # scenarios 1 and 2: re-joined within this long counts
BACK_WITHIN = 10.0  # scenarios 4 and 5: connections back within this long counts
ASKED = b"are you there?"


# ---- the mix of sites --------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, int]:
    """``public=60,full_cone=15,...``: relative shares of the nodes by kind of site."""
    mix: dict[str, int] = {}
    for item in text.split(","):
        kind, _, share = item.partition("=")
        if kind not in KINDS or not share.isdigit():
            raise ValueError(f"{item!r}: expected kind=share with a kind in {KINDS}")
        mix[kind] = int(share)
    if not mix.get("public"):
        raise ValueError("the mix needs public nodes: the contacts are public")
    return mix


def allocate(nodes: int, mix: dict[str, int]) -> dict[str, int]:
    """``nodes`` split by the shares of ``mix`` (largest remainder), each kind with a share
    getting at least one node, and at least ``CONTACTS`` public ones."""
    kinds = [kind for kind, share in mix.items() if share > 0]
    if nodes < CONTACTS + len(kinds) - 1:
        raise ValueError(f"{nodes} nodes cannot hold {CONTACTS} contacts and a node of every kind")
    total = sum(mix[kind] for kind in kinds)
    exact = {kind: nodes * mix[kind] / total for kind in kinds}
    counts = {kind: max(1, math.floor(exact[kind])) for kind in kinds}
    counts["public"] = max(counts["public"], CONTACTS)
    by_remainder = sorted(kinds, key=lambda kind: exact[kind] - math.floor(exact[kind]), reverse=True)
    for kind in itertools.islice(itertools.cycle(by_remainder), 10 * len(kinds)):  # bounded
        if sum(counts.values()) >= nodes:
            break
        counts[kind] += 1
    while sum(counts.values()) > nodes:  # the minimums overshot: take from the largest
        largest = max((k for k in kinds if counts[k] > (CONTACTS if k == "public" else 1)), key=counts.get)
        counts[largest] -= 1
    return counts


# ---- nodes -------------------------------------------------------------------------------------


@dataclass
class Slot:
    """A host a node runs on: its namespace, the address it binds, and fixed ports to use."""

    site: netlab.Site
    ns: netlab.Namespace
    ip: str
    ports: Iterator[int]


class SimNode:
    """A tests/node_process.py process in a host namespace, spoken to in JSON lines, each command
    with an id and a deadline."""

    def __init__(
        self, name: str, kind: str, slot: Slot, folder: Path, contacts: list[tuple[str, int]]
    ) -> None:
        self.name = name
        self.kind = kind
        self.slot = slot
        self.port = next(slot.ports)
        self.folder = folder
        self.contacts = contacts
        self.contact = False  # one of the hard-coded contacts
        self.process: asyncio.subprocess.Process | None = None
        self.peer_id = ""
        self.addr: tuple[str, int] = (slot.ip, self.port)
        self.public: tuple[str, int] | None = None  # once joined: the address its contact saw
        self.role: str | None = None
        self.joined = False
        self.gone = False  # killed or stopped for good
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None

    def argv(self, prober: bool = False) -> list[str]:
        argv = [sys.executable, "-P", str(NODE_PROCESS), "--ip", self.slot.ip, "--port", str(self.port)]
        argv += ["--cache", str(self.folder / "cache"), "--identity", str(self.folder / "identity")]
        argv += ["--client-fallback"] if not prober else ["--role", "client"]
        for host, port in self.contacts:
            argv += ["--contact", f"{host}:{port}"]
        if self.kind == "igd":
            argv.append("--forward-port")
        return argv

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self, prober: bool = False) -> None:
        """Starts the process (again: same port, certificate and cache) and waits until it is ready."""
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "node.log").open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.slot.ns.command(self.argv(prober)),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        self.joined, self.public, self.role = False, None, None
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(self.process))
        async with asyncio.timeout(START_TIMEOUT):
            ready = await asyncio.shield(self._ready)
        self.peer_id = ready["peer_id"]
        self.addr = (ready["ready"][0], ready["ready"][1])

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """Hands each answer to whoever waits for its id; the first line is the ready line."""
        assert process.stdout is not None
        try:
            while line := await process.stdout.readline():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # not an answer (no library writes to stdout, but be safe)
                if "ready" in record and self._ready is not None and not self._ready.done():
                    self._ready.set_result(record)
                    continue
                waiter = self._waiting.pop(record.get("id", -1), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(record)
        finally:
            ended = {"error": "Exited", "message": f"{self.name} exited"}
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_result(ended)
            self._waiting.clear()
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(RuntimeError(f"{self.name} exited before it was ready"))

    async def ask(self, command: object, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        """The node's answer to ``command``, or ``{"error": "Timeout" | "Exited", ...}``."""
        if not self.alive:
            return {"error": "Exited", "message": f"{self.name} is not running"}
        key = next(self._ids)
        waiter = self._waiting[key] = asyncio.get_running_loop().create_future()
        try:
            self._write({"id": key, "do": command})
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            return {"error": "Timeout", "message": f"{self.name} did not answer {command!r} in {timeout} s"}
        except (BrokenPipeError, ConnectionResetError):
            return {"error": "Exited", "message": f"{self.name} exited"}
        finally:
            self._waiting.pop(key, None)

    def _write(self, command: object) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")

    async def bootstrap(self) -> dict[str, Any]:
        answer = await self.ask("bootstrap", BOOTSTRAP_TIMEOUT)
        if "bootstrapped" in answer:
            self.joined, self.role = True, answer["role"]
            self.public = (answer["public"][0], answer["public"][1])
        return answer

    async def quit(self) -> None:
        """Closes the endpoint (which writes the cache) and waits for the exit; kills it when late."""
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._write("quit")
            try:
                async with asyncio.timeout(QUIT_TIMEOUT):
                    await self.process.wait()
            except TimeoutError:
                self.kill()
        await self.reap()

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)

    async def reap(self) -> None:
        """Waits (boundedly) for the process and its reader to end, and closes its stdin (so that
        its transport closes too)."""
        if self.process is not None:
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
                    if self._reader is not None:
                        await self._reader
            except TimeoutError:
                pass
            if self.process.stdin is not None:
                self.process.stdin.close()

    def cpu_seconds(self) -> float | None:
        """User and system CPU time used so far (/proc/<pid>/stat), or None once exited."""
        return cpu_seconds(self.pid) if self.alive else None

    def rss_kib(self) -> int | None:
        if not self.alive:
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


# ---- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    what: str
    met: bool
    detail: str


@dataclass
class Sample:
    t: float
    alive: int
    joined: int
    connections: dict[str, int]  # by node name, joined nodes that answered


@dataclass
class Outcome:
    """What one scenario measured."""

    scenario: str
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    setup: list[tuple[str, str]] = field(default_factory=list)
    cost: list[tuple[str, str]] = field(default_factory=list)

    def row(self, what: str, value: object) -> None:
        self.rows.append((what, str(value)))

    def target(self, what: str, met: bool, detail: str) -> None:
        self.targets.append(Target(what, met, detail))


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def quantile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of ``values``, None for none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.1f}%)" if whole else "0/0"


# ---- the simulation ----------------------------------------------------------------------------


@dataclass
class Options:
    nodes: int = 100
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    public_sites: int = 4
    delay_ms: float = 20.0  # on every site's link, each way: 40 ms between two sites
    loss: float = 0.0
    seed: int = 1
    start_batch: int = 10  # node processes started at once
    join_batch: int = 10  # nodes bootstrapping at once while the network forms
    sample_interval: float = 5.0
    idle_window: float = 30.0  # 0: no idle measurement
    churn_seconds: float = 300.0
    churn_interval: float = 20.0
    churn_share: float = 0.10
    partition_seconds: float = 60.0
    partition_site: str | None = None
    address_kinds: tuple[str, ...] = ("symmetric", "port_restricted")
    log: Callable[[str], None] = print


class Sim:
    """One network of nodes in ``net`` and the scenarios run on it."""

    def __init__(self, net: netlab.Network, folder: Path, options: Options) -> None:
        self.net = net
        self.folder = folder
        self.options = options
        self.rng = random.Random(options.seed)
        self.nodes: list[SimNode] = []
        self.prober: SimNode | None = None
        self.slots: dict[str, list[Slot]] = {}  # by kind
        self.t0 = time.monotonic()
        self.samples: list[Sample] = []
        self.events: list[tuple[float, str]] = []
        self._sampler: asyncio.Task[None] | None = None
        self._sampling = asyncio.Event()
        self._names = itertools.count(1)
        self.setup_rows: list[tuple[str, str]] = []
        self.cost_rows: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}

    # ---- building --------------------------------------------------------------------------

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def event(self, label: str) -> None:
        self.events.append((self.now(), label))
        self.options.log(f"[{self.now():7.1f} s] {label}")

    def build(self) -> None:
        """The sites and their hosts; a kind without enough sites gets more (4 hosts each)."""
        options, net = self.options, self.net
        mix = dict(options.mix)
        if mix.get("igd") and netlab.unavailable(*netlab.NAT, *netlab.IGD) is not None:
            options.log(
                f"no igd site: {netlab.unavailable(*netlab.NAT, *netlab.IGD)}; its nodes go full cone"
            )
            mix["full_cone"] = mix.get("full_cone", 0) + mix.pop("igd")
        self.counts = allocate(options.nodes, mix)
        delay, loss = options.delay_ms, options.loss
        for k in range(max(1, options.public_sites)):
            site = net.public_site(f"p{k + 1}", delay_ms=delay, loss=loss)
            self.slots.setdefault("public", []).append(
                Slot(site, site.host, site.ip, itertools.count(PUBLIC_PORT))
            )
        for kind, count in self.counts.items():
            if kind == "public":
                continue
            per_site = 1 if kind == "igd" else netlab.MAX_HOSTS
            sites = math.ceil(count / per_site)
            hosts = [count // sites + (k < count % sites) for k in range(sites)]
            for k, size in enumerate(hosts):
                site = net.nat_site(
                    f"{SITE_PREFIX[kind]}{k + 1}", kind, delay_ms=delay, loss=loss, hosts=size
                )
                low, high = netlab.HOST_PORTS
                width = (high - low + 1) // size
                for h, (ns, ip) in enumerate(site.hosts):
                    first = (low + h * width if size > 1 else low) + NAT_PORT_OFFSET
                    self.slots.setdefault(kind, []).append(Slot(site, ns, ip, itertools.count(first)))
        sites = len(net.sites)
        self.setup_rows += [
            ("nodes by kind of site", ", ".join(f"{kind} {count}" for kind, count in self.counts.items())),
            ("sites", f"{sites} ({len(self.slots['public'])} public, each host running several nodes)"),
            (
                "delay",
                f"{delay:g} ms each way on every site's link ({2 * delay:g} ms between sites), "
                f"{sum(1 for p in net.processes if p[0].startswith('delay-'))} delay lines",
            ),
        ]

    def place(self) -> None:
        """The nodes: contacts first, one on each of the first public hosts."""
        public = self.slots["public"]
        contacts: list[SimNode] = []
        for kind, count in self.counts.items():
            slots = self.slots[kind]
            for k in range(count):
                slot = slots[k % len(slots)]
                node = SimNode(f"{kind}-{k + 1}", kind, slot, self.folder / f"{kind}-{k + 1}", [])
                self.nodes.append(node)
                if kind == "public" and k < CONTACTS:
                    node.contact = True
                    contacts.append(node)
        # Contacts know one another: the first joins through the second, the others through the first.
        for k, contact in enumerate(contacts):
            contact.contacts = [contacts[1 if k == 0 else 0].addr] if len(contacts) > 1 else []
        others = [node for node in self.nodes if not node.contact]
        for k, node in enumerate(others):
            node.contacts = [contacts[k % len(contacts)].addr]
        site = public[0].site
        prober_slot = Slot(site, site.host, site.ip, iter([PROBER_PORT]))
        self.prober = SimNode("prober", "public", prober_slot, self.folder / "prober", [])

    async def start(self, nodes: list[SimNode]) -> None:
        """Starts ``nodes`` a batch at a time, each batch until every one of it is ready."""
        batch = max(1, self.options.start_batch)
        for k in range(0, len(nodes), batch):
            await asyncio.gather(*(node.start() for node in nodes[k : k + batch]))

    async def form(self) -> None:
        """Builds the network, starts every node, joins them: contacts first, then the rest in
        batches, in an order the seed shuffles; then waits until peer exchange settles."""
        self.build()
        self.place()
        assert self.prober is not None
        self.event(f"starting {len(self.nodes)} nodes")
        await self.prober.start(prober=True)
        await self.start(self.nodes)
        self.start_sampler()
        self.event("joining")
        contacts = [node for node in self.nodes if node.contact]
        for contact in contacts:
            answer = await contact.bootstrap()
            if "bootstrapped" not in answer:
                raise RuntimeError(f"contact {contact.name} could not join: {answer}")
        others = [node for node in self.nodes if not node.contact]
        self.rng.shuffle(others)
        joins: list[dict[str, Any]] = []
        batch = max(1, self.options.join_batch)
        for k in range(0, len(others), batch):
            joins += await asyncio.gather(*(node.bootstrap() for node in others[k : k + batch]))
        self.event("joined")
        await self.settle()
        joined = [node for node in self.nodes if node.joined]
        wrong = [n.name for n in joined if (n.role == "node") != (n.kind in NODE_KINDS)]
        took = [answer["seconds"] for answer in joins if "bootstrapped" in answer]
        self.setup_rows += [
            ("joined while forming", share(len(joined), len(self.nodes))),
            (
                "bootstrap while forming (median, p95)",
                f"{seconds(median(took))}, {seconds(quantile(took, 0.95))}",
            ),
            (
                "roles",
                f"{sum(n.role == 'node' for n in joined)} nodes, {sum(n.role == 'client' for n in joined)} "
                f"clients; not the role their site gives: {', '.join(wrong) or 'none'}",
            ),
        ]
        statuses = await self.statuses(joined)
        connections = [s["connections"] for s in statuses.values()]
        caches = [s["cache"] for s in statuses.values()]
        self.setup_rows += [
            ("live connections per node once formed (min, median, max)", spread(connections)),
            ("cache entries per node once formed (min, median, max)", spread(caches)),
            ("what nodes declined to do for peers (stats().refusals, all nodes)", refusals(statuses)),
        ]

    async def settle(self, quiet: float = 6.0, longest: float = 90.0) -> None:
        """Waits until no node's connection count moved for ``quiet`` seconds (at most ``longest``)
        and the caches had time to be written (2 s after a change)."""
        deadline = time.monotonic() + longest
        last: dict[str, int] | None = None
        steady_since = time.monotonic()
        while time.monotonic() < deadline:
            counts = {name: s["connections"] for name, s in (await self.statuses(self.live())).items()}
            if counts != last:
                last, steady_since = counts, time.monotonic()
            elif time.monotonic() - steady_since >= quiet:
                break
            await asyncio.sleep(1.0)
        self.event("settled")

    def live(self) -> list[SimNode]:
        return [node for node in self.nodes if node.alive and not node.gone]

    def joined(self) -> list[SimNode]:
        return [node for node in self.live() if node.joined]

    async def statuses(self, nodes: list[SimNode]) -> dict[str, dict[str, Any]]:
        """Each node's status (those that answered in time), by name."""
        answers = await asyncio.gather(*(node.ask("status") for node in nodes))
        return {node.name: a["status"] for node, a in zip(nodes, answers, strict=True) if "status" in a}

    # ---- sampling --------------------------------------------------------------------------

    def start_sampler(self) -> None:
        self._sampling.set()
        self._sampler = asyncio.create_task(self._sample_forever())

    async def _sample_forever(self) -> None:
        while True:  # until cancelled by close()
            await self._sampling.wait()
            await self.sample()
            await asyncio.sleep(self.options.sample_interval)

    async def sample(self) -> Sample:
        live = self.live()
        statuses = await self.statuses(live)
        joined = {name: s["connections"] for name, s in statuses.items() if s["joined"]}
        sample = Sample(self.now(), len(live), len(joined), joined)
        self.samples.append(sample)
        return sample

    @contextlib.contextmanager
    def sampler_paused(self) -> Iterator[None]:
        self._sampling.clear()
        try:
            yield
        finally:
            self._sampling.set()

    def cpu_snapshot(self) -> tuple[float, float, float, tuple[float, float]]:
        """(wall clock, CPU seconds of the live nodes, of the delay lines, the machine's (busy, total))."""
        lines = [p.pid for label, _ns, p in self.net.processes if label.startswith("delay-")]
        nodes = sum(node.cpu_seconds() or 0.0 for node in self.live())
        return time.monotonic(), nodes, sum(cpu_seconds(pid) or 0.0 for pid in lines), machine_busy()

    def cpu_used(self, since: tuple[float, float, float, tuple[float, float]]) -> str:
        """What the nodes, the delay lines and the machine used since the snapshot ``since``."""
        now = self.cpu_snapshot()
        wall = now[0] - since[0]
        busy, total = now[3][0] - since[3][0], now[3][1] - since[3][1]
        machine = 100 * busy / total if total else 0.0
        return (
            f"{wall:.1f} s: nodes {now[1] - since[1]:.1f} CPU-s, delay lines {now[2] - since[2]:.1f} CPU-s; "
            f"machine {machine:.0f}% busy ({os.cpu_count()} cores, other work included)"
        )

    async def measure_idle(self) -> None:
        """Per-node memory and CPU over ``idle_window`` seconds with nothing asked of the nodes."""
        window = self.options.idle_window
        if window <= 0:
            return
        with self.sampler_paused():
            await asyncio.sleep(1.0)  # a sample under way ends
            nodes = self.joined()
            delay_lines = [p.pid for label, _ns, p in self.net.processes if label.startswith("delay-")]
            before = {node.name: node.cpu_seconds() for node in nodes}
            lines_before = [cpu_seconds(pid) for pid in delay_lines]
            machine_before = machine_busy()
            self.event(f"idle window ({window:g} s)")
            await asyncio.sleep(window)  # the measurement itself: a window of time, nothing to wait for
            after = {node.name: node.cpu_seconds() for node in nodes}
            lines_after = [cpu_seconds(pid) for pid in delay_lines]
            machine_after = machine_busy()
        await self.sample()
        cpu = [
            100 * (after[n] - before[n]) / window
            for n in before
            if after[n] is not None and before[n] is not None
        ]
        rss = [kib / 1024 for kib in (node.rss_kib() for node in nodes) if kib is not None]
        lines = [100 * (a - b) / window for a, b in zip(lines_after, lines_before, strict=True) if a and b]
        busy = machine_after[0] - machine_before[0]
        total = machine_after[1] - machine_before[1]
        self.cost_rows += [
            ("nodes measured", str(len(nodes))),
            (
                "RSS per node (median, max)",
                f"{median(rss):.1f} MiB, {max(rss):.1f} MiB; {sum(rss):.0f} MiB in all",
            ),
            (
                f"idle CPU per node over {window:g} s (median, max)",
                f"{median(cpu):.2f}%, {max(cpu):.2f}% of one core; {sum(cpu):.1f}% in all",
            ),
            ("delay lines' CPU (all of them)", f"{sum(lines):.1f}% of one core ({len(lines)} processes)"),
            (
                "machine busy meanwhile",
                f"{100 * busy / total:.1f}% of {os.cpu_count()} cores (other work included)",
            ),
        ]
        self.options.log("\n".join(f"  {what}: {value}" for what, value in self.cost_rows))

    # ---- tearing down ----------------------------------------------------------------------

    async def close(self) -> None:
        """Every node process killed and reaped, the sampler stopped."""
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        everyone = [*self.nodes, *([self.prober] if self.prober else [])]
        for node in everyone:
            node.kill()
        await asyncio.gather(*(node.reap() for node in everyone))

    def outcome(self, scenario: str, title: str) -> Outcome:
        return Outcome(
            scenario,
            title,
            setup=list(self.setup_rows),
            cost=list(self.cost_rows),
            samples=self.samples,
            events=self.events,
        )

    # ---- scenarios 1 and 2: restarts -------------------------------------------------------

    async def restart(self, kill_share: float = 0.0) -> Outcome:
        """Every node stops (closing writes its cache); the contacts are gone for good, and with
        ``kill_share`` so are that share of the other (cached) nodes, killed first; the rest
        restart at once on the same addresses and rejoin from their caches alone."""
        number = "2" if kill_share else "1"
        title = "Restart after loss" if kill_share else "Cold restart"
        outcome = self.outcome(number, title)
        others = [node for node in self.live() if not node.contact]
        killed: list[SimNode] = []
        if kill_share:
            cached = [node for node in others if node.role == "node"]
            killed = self.rng.sample(cached, round(kill_share * len(cached)))
            for node in killed:
                node.kill()
                node.gone = True
            await asyncio.gather(*(node.reap() for node in killed))
            self.event(f"killed {len(killed)} of {len(cached)} cached nodes for good")
        await self.sample()
        self.event("every node stops")
        await asyncio.gather(*(node.quit() for node in self.live()))
        for node in self.nodes:
            if node.contact:
                node.gone = True
        coming_back = [node for node in others if not node.gone]
        dead = {node.addr for node in self.nodes if node.gone} | {
            n.public for n in self.nodes if n.gone and n.public
        }
        dead_shares = [dead_share(node, dead) for node in coming_back]
        for node in coming_back:
            node.contacts = []  # from the cache alone
        self.event(f"restarting {len(coming_back)} nodes on the same addresses")
        await self.start(coming_back)
        self.event("all bootstrap at once")
        herd = self.cpu_snapshot()
        answers = await asyncio.gather(*(node.bootstrap() for node in coming_back))
        herd_cpu = self.cpu_used(herd)
        self.event("bootstraps done")
        await self.settle()
        rejoined = [a for a in answers if "bootstrapped" in a and a["seconds"] <= REJOIN_WITHIN]
        took = [a["seconds"] for a in answers if "bootstrapped" in a]
        failures = [a for a in answers if "bootstrapped" not in a]
        by_role: dict[str, list[float]] = {}
        for a in answers:
            if "bootstrapped" in a:
                by_role.setdefault(a["role"], []).append(a["seconds"])
        wrong = [n.name for n in coming_back if n.joined and (n.role == "node") != (n.kind in NODE_KINDS)]
        dialled = [a["dialled"] for a in answers if "dialled" in a]
        failed = [a["failed"] for a in answers if "failed" in a and "bootstrapped" in a]
        outcome.row(
            "restarted (contacts gone" + (f", {len(killed)} cached nodes killed)" if killed else ")"),
            len(coming_back),
        )
        outcome.row(
            "dead entries in the caches (median, max)",
            f"{pct(median(dead_shares))}, {pct(max(dead_shares, default=None))}",
        )
        outcome.row(f"re-joined within {REJOIN_WITHIN:g} s", share(len(rejoined), len(coming_back)))
        outcome.row(
            "bootstrap() took (median, p95, max)",
            f"{seconds(median(took))}, {seconds(quantile(took, 0.95))}, {seconds(max(took, default=None))}",
        )
        connected = [
            a["connected"] for a in answers if "bootstrapped" in a and a.get("connected") is not None
        ]
        outcome.row(
            "  of which until the first dial was answered (median, p95)",
            f"{seconds(median(connected))}, {seconds(quantile(connected, 0.95))}",
        )
        for role, values in sorted(by_role.items()):
            outcome.row(
                f"  as {role}s: {len(values)} (median, p95)",
                f"{seconds(median(values))}, {seconds(quantile(values, 0.95))}",
            )
        outcome.row("not the role their site gives", ", ".join(wrong) or "none")
        outcome.row("CPU while they bootstrapped", herd_cpu)
        outcome.row("dials bootstrap() started per node (median, max)", spread(dialled, "median"))
        outcome.row("of them failed before one answered (median, max; the joined)", spread(failed, "median"))
        if failures:
            reasons = sorted({f"{a.get('error')}: {a.get('message', '')[:120]}" for a in failures})
            failed_names = [
                n.name for n, a in zip(coming_back, answers, strict=True) if "bootstrapped" not in a
            ]
            outcome.row(
                "failures", f"{len(failures)} ({', '.join(failed_names)}): " + " | ".join(reasons[:3])
            )
            attempts: dict[str, int] = {}
            for a in failures:
                for what, count in a.get("attempts", {}).items():
                    attempts[what] = attempts.get(what, 0) + count
            if attempts:
                outcome.row(
                    "their attempts (BootstrapError.attempts)",
                    ", ".join(f"{k}: {v}" for k, v in attempts.items()),
                )
        statuses = await self.statuses(self.joined())
        outcome.row("what nodes declined to do for peers since the restart", refusals(statuses))
        outcome.row(
            "live connections per node afterwards (min, median, max)",
            spread([s["connections"] for s in statuses.values()]),
        )
        wanted = 0.97 if kill_share else 0.99
        fraction = len(rejoined) / len(coming_back) if coming_back else 0.0
        outcome.target(
            f"at least {100 * wanted:g}% re-joined within {REJOIN_WITHIN:g} s",
            fraction >= wanted,
            f"{100 * fraction:.1f}%",
        )
        if not kill_share:
            mid = median(took)
            outcome.target("median bootstrap under 2 s", mid is not None and mid < 2.0, seconds(mid))
        outcome.details = {
            "answers": answers,
            "rejoined": len(rejoined),
            "restarted": len(coming_back),
            "dialled": dialled,
            "failed": failed,
            "wrong_role": wrong,
        }
        return outcome

    # ---- scenario 3: churn -----------------------------------------------------------------

    async def churn(self) -> Outcome:
        """Every ``churn_interval`` seconds for ``churn_seconds``, ``churn_share`` of the nodes are
        killed and as many new ones join, each through a random live node it is told of."""
        options = self.options
        outcome = self.outcome("3", "Churn")
        rounds = max(1, round(options.churn_seconds / options.churn_interval))
        per_round: list[dict[str, Any]] = []
        newcomers_in_all = 0
        join_failures: list[str] = []
        for number in range(1, rounds + 1):  # bounded: one pass per round
            started = time.monotonic()
            live = self.joined()
            victims = self.rng.sample(live, max(1, round(options.churn_share * len(live))))
            for node in victims:
                node.kill()
                node.gone = True
            await asyncio.gather(*(node.reap() for node in victims))
            newcomers = [self.newcomer(victim) for victim in victims]
            self.event(f"round {number}: {len(victims)} killed, {len(newcomers)} join")
            self.nodes += newcomers
            newcomers_in_all += len(newcomers)
            await self.start(newcomers)
            joins = await asyncio.gather(*(node.bootstrap() for node in newcomers))
            join_failures += [
                f"{a.get('error')}: {a.get('message', '')[:100]}" for a in joins if "error" in a
            ]
            await asyncio.sleep(max(0.0, options.churn_interval - (time.monotonic() - started)))
            view = await self.cache_view()
            per_round.append({"round": number, "joined": sum("bootstrapped" in a for a in joins), **view})
            self.options.log(
                f"  round {number}: min connections {view['min_connections']}, answering "
                f"entries min {pct(view['min_answering'])}, mean {pct(view['mean_answering'])}"
            )
        probed = await self.probe_caches()
        mins = [r["min_connections"] for r in per_round]
        below = [
            r["round"] for r in per_round if r["min_connections"] is not None and r["min_connections"] < 3
        ]
        outcome.row(
            "rounds",
            f"{rounds}, every {options.churn_interval:g} s: {100 * options.churn_share:g}% killed "
            "and as many joined through a random live node",
        )
        outcome.row("newcomers joined", share(sum(r["joined"] for r in per_round), newcomers_in_all))
        if join_failures:
            outcome.row("newcomers' failures", " | ".join(sorted(set(join_failures))[:3]))
        outcome.row("min live connections per sample", " ".join(str(m) for m in mins))
        outcome.row(
            "nodes under 3 connections per sample", " ".join(str(len(r["under_three"])) for r in per_round)
        )
        under: dict[str, int] = {}
        for r in per_round:
            for name in r["under_three"]:
                under[name] = under.get(name, 0) + 1
        roles = {node.name: node.role for node in self.nodes}
        outcome.row(
            "those nodes (role; samples under 3)",
            ", ".join(f"{name} ({roles[name]}; {count})" for name, count in sorted(under.items())) or "none",
        )
        outcome.row(
            "answering cache entries per sample (orchestrator's view, mean)",
            " ".join(pct(r["mean_answering"], 0) for r in per_round),
        )
        outcome.row(
            "answering cache entries at the end, probed (min, median)",
            f"{pct(probed['min'])}, {pct(probed['median'])}; nodes at 80% or more: "
            f"{share(probed['at_80'], probed['nodes'])}",
        )
        outcome.target(
            "every surviving node has at least 3 live connections at every sample",
            not below,
            f"under 3 in rounds {below}" if below else f"min {min(m for m in mins if m is not None)}",
        )
        outcome.target(
            "at least 80% of each node's cache entries answer at the end",
            probed["nodes"] > 0 and probed["at_80"] == probed["nodes"],
            f"{share(probed['at_80'], probed['nodes'])} nodes; min {pct(probed['min'])}",
        )
        outcome.details = {"rounds": per_round, "probed": probed}
        return outcome

    def newcomer(self, victim: SimNode) -> SimNode:
        """A new node on ``victim``'s host (a new port, certificate and cache), told of a random
        live node to join through: one on another site, since no router here hairpins (a host
        cannot reach a neighbour behind its own NAT at their public address)."""
        name = f"{victim.kind}-new{next(self._names)}"
        members = [
            n
            for n in self.joined()
            if n.role == "node" and n.public is not None and n.slot.site is not victim.slot.site
        ]
        through = self.rng.choice(members)
        assert through.public is not None
        return SimNode(name, victim.kind, victim.slot, self.folder / name, [through.public])

    async def cache_view(self) -> dict[str, Any]:
        """Each joined node's live connections, and the share of its cache entries that are live
        nodes (address and certificate), as the orchestrator knows them."""
        nodes = self.joined()
        alive = {(n.public, n.peer_id) for n in nodes if n.role == "node" and n.public is not None}
        alive |= {(n.addr, n.peer_id) for n in nodes if n.role == "node"}
        answers = await asyncio.gather(*(node.ask("peers") for node in nodes))
        connections, answering, under = [], [], []
        for node, a in zip(nodes, answers, strict=True):
            if "peers" not in a:
                continue
            connections.append(len(a["peers"]))
            if len(a["peers"]) < 3:
                under.append(node.name)
            entries = [((h, p), fp) for h, p, fp in a["cache"]]
            if entries:
                answering.append(sum(entry in alive for entry in entries) / len(entries))
        self.samples.append(
            Sample(
                self.now(),
                len(self.live()),
                len(nodes),
                {n.name: len(a["peers"]) for n, a in zip(nodes, answers, strict=True) if "peers" in a},
            )
        )
        return {
            "min_connections": min(connections, default=None),
            "under_three": under,
            "mean_answering": statistics.fmean(answering) if answering else None,
            "min_answering": min(answering, default=None),
        }

    async def probe_caches(self) -> dict[str, Any]:
        """Every entry of every joined node's cache, dialled once by the prober (a process on a
        public host that never joined): the share of each node's entries that answered."""
        assert self.prober is not None
        nodes = self.joined()
        answers = await asyncio.gather(*(node.ask("peers") for node in nodes))
        caches = [[(h, p, fp) for h, p, fp in a["cache"]] for a in answers if "cache" in a]
        unique = sorted({entry for cache in caches for entry in cache}, key=str)
        self.event(f"probing {len(unique)} distinct cache entries")
        probed = await self.prober.ask(
            {"probe": [list(e) for e in unique], "timeout": 3.0, "at_once": 16}, timeout=60 + 3 * len(unique)
        )
        answered = {e for e, ok in zip(unique, probed.get("probed", []), strict=False) if ok}
        shares = [sum(e in answered for e in cache) / len(cache) for cache in caches if cache]
        return {
            "entries": len(unique),
            "answered": len(answered),
            "nodes": len(shares),
            "min": min(shares, default=None),
            "median": median(shares),
            "at_80": sum(s >= 0.8 for s in shares),
        }

    # ---- scenario 4: a partition -----------------------------------------------------------

    def partition_site(self) -> str:
        """The site to cut: the option, else the first full-cone site, else a NAT site, else the
        last public one (the contacts are on the first)."""
        if self.options.partition_site:
            return self.options.partition_site
        for kind in ("full_cone", "igd", "port_restricted", "symmetric", "address_restricted"):
            if self.slots.get(kind):
                return self.slots[kind][0].site.name
        return self.slots["public"][-1].site.name

    async def partition(self) -> Outcome:
        """One site's link drops every packet for ``partition_seconds``, then heals: when its
        nodes' connections end, whether ``disconnections()`` reports them, and how soon after the
        heal each has its connections back (as many as before, or at least 3)."""
        options = self.options
        name = self.partition_site()
        outcome = self.outcome("4", "Partition")
        inside = [node for node in self.joined() if node.slot.site.name == name]
        before = await self.statuses(inside)
        # Back means as many connections as before, or at least 3 (and at least one).
        wanted = {n: max(1, min(s["connections"], 3)) for n, s in before.items()}
        outside = [node for node in self.joined() if node.slot.site.name != name]
        outside_before = await self.statuses(outside)
        self.net.cut(name)
        cut_at = time.monotonic()
        self.event(f"cut {name} ({len(inside)} nodes)")
        ended: dict[str, float] = {}
        try:
            while time.monotonic() - cut_at < options.partition_seconds:  # bounded by the partition
                for n, s in (await self.statuses(inside)).items():
                    if s["connections"] == 0 and n not in ended:
                        ended[n] = time.monotonic() - cut_at
                await asyncio.sleep(POLL)
            during = await self.statuses(inside)
        finally:
            self.net.heal(name)
        healed_at = time.monotonic()
        self.event(f"healed {name}")
        back: dict[str, float] = {}
        while time.monotonic() - healed_at < 3 * BACK_WITHIN and len(back) < len(inside):  # bounded
            for n, s in (await self.statuses(inside)).items():
                if s["connections"] >= wanted.get(n, 3) and n not in back:
                    back[n] = time.monotonic() - healed_at
            await asyncio.sleep(0.5)
        after = await self.statuses(inside)
        outside_after = await self.statuses(outside)
        reported = {
            n: during[n]["disconnections"] - before[n]["disconnections"] for n in during if n in before
        }
        outcome.row(
            "site cut",
            f"{name} ({self.net.sites[name].kind}), {len(inside)} nodes, for {options.partition_seconds:g} s",
        )
        outcome.row("its nodes' connections before", " ".join(str(before[n]["connections"]) for n in before))
        outcome.row("all ended after (per node)", " ".join(seconds(ended.get(n)) for n in before))
        outcome.row(
            "disconnections() reported while cut (per node)", " ".join(str(reported.get(n)) for n in before)
        )
        outcome.row(
            "connections back after the heal (per node; wanted)",
            " ".join(f"{seconds(back.get(n))} ({wanted[n]})" for n in before),
        )
        outcome.row(
            "its nodes' connections once back, or when the wait ended",
            " ".join(str(after[n]["connections"]) if n in after else "-" for n in before),
        )
        both = [n for n in outside_after if n in outside_before]
        lost_outside = sum(
            outside_after[n]["disconnections"] - outside_before[n]["disconnections"] for n in both
        )
        outcome.row("disconnections the other nodes reported meanwhile", lost_outside)
        strict = sum(ended.get(n, math.inf) <= IDLE_TIMEOUT + POLL for n in before)
        outcome.row(
            f"nodes whose connections all ended within {IDLE_TIMEOUT:g} s of the cut",
            share(strict, len(before)),
        )
        late = [n for n in before if ended.get(n, math.inf) > ENDED_WITHIN]
        outcome.target(
            f"connections end within the idle timeout (of the last packet: {ENDED_WITHIN:g} s after the cut)",
            not late,
            f"late or never: {late}" if late else f"latest {seconds(max(ended.values(), default=None))}",
        )
        unreported = [n for n in before if reported.get(n, 0) < before[n]["connections"]]
        outcome.target(
            "disconnections() reports each of them",
            not unreported,
            f"fewer reported: {unreported}" if unreported else "all",
        )
        slow = [n for n in before if back.get(n, math.inf) > BACK_WITHIN]
        outcome.target(
            f"re-established within {BACK_WITHIN:g} s of healing",
            not slow,
            f"not back in time: {len(slow)} of {len(before)}"
            if slow
            else f"latest {seconds(max(back.values(), default=None))}",
        )
        outcome.details = {
            "before": before,
            "ended": ended,
            "reported": reported,
            "back": back,
            "after": after,
        }
        return outcome

    # ---- scenario 5: an address change -----------------------------------------------------

    async def address_change(self) -> Outcome:
        """A NATed node's mappings are flushed at its router (behind a symmetric NAT its public
        port then changes): how soon each of its peers reaches it again with a request."""
        outcome = self.outcome("5", "Address change")
        by_id = {node.peer_id: node for node in self.joined()}
        results: dict[str, Any] = {}
        for kind in self.options.address_kinds:
            candidates = [n for n in self.joined() if n.kind == kind]
            if not candidates:
                outcome.row(f"{kind}", "no joined node of this kind")
                continue
            node = candidates[0]
            site = node.slot.site
            listed = await node.ask("peers")
            peers = [by_id[pid] for _h, _p, pid, _path in listed.get("peers", []) if pid in by_id]
            mapped_before = {m[3] for m in site.mappings(node.slot.ip) if m[0] == node.port}
            deleted = site.flush_mappings(node.slot.ip)
            self.event(f"flushed {node.name}'s mappings ({deleted} entries)")
            assert node.public is not None
            command = {
                "reach": node.peer_id,
                "addr": list(node.public),
                "within": 3 * BACK_WITHIN,
                "timeout": 1.0,
            }
            answers = await asyncio.gather(
                *(peer.ask(command, timeout=3 * BACK_WITHIN + 15) for peer in peers)
            )
            mapped_after = {m[3] for m in site.mappings(node.slot.ip) if m[0] == node.port}
            times = [a["reached"] for a in answers if a.get("reached") is not None]
            slow = [
                p.name
                for p, a in zip(peers, answers, strict=True)
                if (a.get("reached") or math.inf) > BACK_WITHIN
            ]
            outcome.row(
                f"{kind}: {node.name} ({node.role}), {len(peers)} peers; its public ports",
                f"{len(mapped_before)} before, {len(mapped_after)} after, "
                f"{len(mapped_before & mapped_after)} of them the same",
            )
            outcome.row(f"{kind}: its peers that reached it again", share(len(times), len(peers)))
            outcome.row(
                f"{kind}: time to a request answered (median, max)",
                f"{seconds(median(times))}, {seconds(max(times, default=None))}",
            )
            outcome.target(
                f"{kind}: every peer reaches it again within {BACK_WITHIN:g} s",
                bool(peers) and not slow,
                f"{len(slow)} of {len(peers)} late or never" if slow else f"all {len(peers)}",
            )
            results[kind] = {
                "node": node.name,
                "answers": answers,
                "before": sorted(mapped_before),
                "after": sorted(mapped_after),
            }
            await self.settle(longest=30.0)
        outcome.details = results
        return outcome


def spread(values: list[int] | list[float], middle: str = "") -> str:
    """min, median, max (or median, max with ``middle``)."""
    if not values:
        return "-"
    if middle:
        return f"{median(values):g}, {max(values):g}"
    return f"{min(values):g}, {median(values):g}, {max(values):g}"


def refusals(statuses: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]] | None = None) -> str:
    """The refusals of every node summed by reason (since ``before``, when given)."""
    total: dict[str, int] = {}
    for name, status in statuses.items():
        for reason, count in status.get("refusals", {}).items():
            earlier = (before or {}).get(name, {}).get("refusals", {}).get(reason, 0)
            total[reason] = total.get(reason, 0) + count - earlier
    return ", ".join(f"{reason}: {count}" for reason, count in sorted(total.items()) if count) or "none"


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def dead_share(node: SimNode, dead: set[tuple[str, int] | None]) -> float:
    """The share of ``node``'s cache file's entries that point at a node gone for good."""
    try:
        data = json.loads((node.folder / "cache" / "bootstrap_cache.json").read_text())
    except (OSError, ValueError):
        return 0.0
    addrs = [tuple(entry["addr"]) for entry in data.get("peers", [])]
    return sum(addr in dead for addr in addrs) / len(addrs) if addrs else 0.0


SCENARIOS = {
    "1": ("Cold restart", lambda sim: sim.restart()),
    "2": ("Restart after loss", lambda sim: sim.restart(kill_share=0.5)),
    "3": ("Churn", lambda sim: sim.churn()),
    "4": ("Partition", lambda sim: sim.partition()),
    "5": ("Address change", lambda sim: sim.address_change()),
}


async def run_scenarios(folder: Path, options: Options, scenarios: Iterable[str]) -> list[Outcome]:
    """A network formed in a fresh netlab network, then ``scenarios`` one after the other on it."""
    outcomes = []
    with netlab.Network() as net:
        sim = Sim(net, folder, options)
        try:
            await sim.form()
            await sim.measure_idle()
            for scenario in scenarios:
                sim.event(f"scenario {scenario}: {SCENARIOS[scenario][0]}")
                outcomes.append(await SCENARIOS[scenario][1](sim))
        finally:
            await sim.close()
    return outcomes


async def run_scenario(folder: Path, options: Options, scenario: str) -> Outcome:
    """One scenario on a network formed for it alone."""
    (outcome,) = await run_scenarios(folder, options, [scenario])
    return outcome
