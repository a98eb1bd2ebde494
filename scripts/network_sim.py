"""A network of N qp2p nodes in namespaces, each its own process: restarts, churn, partitions
and address changes, measured.

    sudo .venv/bin/python scripts/network_sim.py [--nodes 100] [--scenario 1,2,3,4,5] [--seed 1]
        [--mix public=60,full_cone=15,port_restricted=12,symmetric=12,igd=1] [--public-sites 4]
        [--delay-ms 20] [--churn-seconds 300] [--partition-seconds 60] [--plot network_sim.png]

Needs root (network namespaces), iptables, and for an igd site nftables, miniupnpd and the
miniupnpc package (``pip install '.[test]'``); scenario 5 needs conntrack. The plot needs
matplotlib (``pip install '.[sim]'``); without it the plot is skipped, saying so.

It builds netlab's test network (tests/netlab.py): public sites whose hosts each run several
nodes on fixed ports, and NAT sites of up to four hosts, a node each, in the shares ``--mix``
gives, with ``--delay-ms`` on every site's link. Three public nodes are the hard-coded
contacts; the others join through one of them each and learn the rest by peer exchange
(tests/network_sim.py says how). It measures each node's memory and idle CPU once the network
has formed, then runs each scenario on a network formed for it alone (``--shared``: all on one):

1. cold restart: every node stops, the contacts are gone for good, the rest restart at once on
   the same addresses and rejoin from their caches alone;
2. restart after loss: the same, but first half of the cached nodes are killed for good;
3. churn: every ``--churn-interval`` s for ``--churn-seconds``, 10% of the nodes are killed and
   as many new ones join through a random live node;
4. partition: one site's link drops everything for ``--partition-seconds``, then heals;
5. address change: a NATed node's mappings are flushed at its router.

It prints a table per scenario with its targets met or missed, and plots joined nodes and
live connections over time (``--plot``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import netlab  # noqa: E402  (tests/ holds the harness)
import network_sim as sim  # noqa: E402


def table(rows: list[tuple[str, str]]) -> list[str]:
    lines = ["| | |", "| --- | --- |"]
    return lines + [f"| {what} | {value} |" for what, value in rows]


def report(outcome: sim.Outcome) -> list[str]:
    lines = [f"### Scenario {outcome.scenario}: {outcome.title}", "", *table(outcome.rows), ""]
    lines += ["| target | met | measured |", "| --- | --- | --- |"]
    lines += [f"| {t.what} | {'yes' if t.met else '**no**'} | {t.detail} |" for t in outcome.targets]
    return lines


def plot(outcomes: list[sim.Outcome], path: Path) -> str:
    """One panel per network: nodes joined, and live connections per node (mean and min)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install '.[sim]')"
    panels: list[sim.Outcome] = []
    for outcome in outcomes:  # scenarios run on one network share its samples: one panel
        if not any(outcome.samples is other.samples for other in panels):
            panels.append(outcome)
    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for ax, outcome in zip(axes[:, 0], panels, strict=True):
        samples = sorted(outcome.samples, key=lambda s: s.t)
        t = [s.t for s in samples]
        ax.plot(t, [s.joined for s in samples], color="tab:blue", label="nodes joined")
        ax.set_ylabel("nodes joined", color="tab:blue")
        ax.set_ylim(bottom=0)
        other = ax.twinx()
        mean = [sum(s.connections.values()) / len(s.connections) if s.connections else 0 for s in samples]
        least = [min(s.connections.values(), default=0) for s in samples]
        other.plot(t, mean, color="tab:orange", label="live connections per node, mean")
        other.plot(t, least, color="tab:red", linestyle="--", label="live connections per node, min")
        other.set_ylabel("live connections per node")
        other.set_ylim(bottom=0)
        span = max((s.t for s in samples), default=1.0) or 1.0
        labelled = math.inf
        for when, label in reversed(outcome.events):
            ax.axvline(when, color="grey", linewidth=0.6, alpha=0.6)
            if labelled - when >= 0.025 * span:  # of labels closer than that, the last one
                labelled = when
                ax.annotate(
                    label[:34],
                    (when, 0.98),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    fontsize=6,
                    va="top",
                    ha="right",
                    color="dimgrey",
                )
        names = ", ".join(o.scenario for o in outcomes if o.samples is outcome.samples)
        ax.set_title(f"scenario {names}: {outcome.title}" if "," not in names else f"scenarios {names}")
        ax.set_xlabel("seconds")
        handles = ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
        ax.legend(handles, [str(h.get_label()) for h in handles], loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"plot written to {path}"


def options_from(args: argparse.Namespace) -> sim.Options:
    return sim.Options(
        nodes=args.nodes,
        mix=sim.parse_mix(args.mix),
        public_sites=args.public_sites,
        delay_ms=args.delay_ms,
        loss=args.loss,
        seed=args.seed,
        start_batch=args.start_batch,
        join_batch=args.join_batch,
        sample_interval=args.sample_interval or (2.0 if args.nodes <= 40 else 5.0),
        idle_window=args.idle_window,
        churn_seconds=args.churn_seconds,
        churn_interval=args.churn_interval,
        partition_seconds=args.partition_seconds,
        partition_site=args.partition_site,
        log=lambda line: print(line, flush=True),
    )


async def run(args: argparse.Namespace, folder: Path) -> list[sim.Outcome]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # tear down on kill
    options = options_from(args)
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in sim.SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}: choose from {', '.join(sim.SCENARIOS)}")
    if args.shared:
        return await sim.run_scenarios(folder, options, scenarios)
    outcomes = []
    for k, scenario in enumerate(scenarios):
        # The cost is measured once, on the first network.
        each = dataclasses.replace(options, idle_window=options.idle_window if k == 0 else 0.0)
        outcomes.append(await sim.run_scenario(folder / f"scenario{scenario}", each, scenario))
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_mix = ",".join(f"{kind}={share}" for kind, share in sim.DEFAULT_MIX.items())
    parser.add_argument("--nodes", type=int, default=100, help="nodes in the network (default 100)")
    parser.add_argument("--mix", default=default_mix, help=f"shares of nodes by kind of site ({default_mix})")
    parser.add_argument("--public-sites", type=int, default=4, help="public hosts the public nodes share")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="delay on every site's link, each way")
    parser.add_argument("--loss", type=float, default=0.0, help="loss on every site's link, each way")
    parser.add_argument("--seed", type=int, default=1, help="for every random choice (order, victims)")
    parser.add_argument("--scenario", default="1,2,3,4,5", help="which to run, in order (default all)")
    parser.add_argument(
        "--shared", action="store_true", help="run the scenarios one after another on one network"
    )
    parser.add_argument("--start-batch", type=int, default=10, help="node processes started at once")
    parser.add_argument("--join-batch", type=int, default=10, help="nodes bootstrapping at once as it forms")
    parser.add_argument(
        "--sample-interval",
        type=float,
        help="seconds between status samples (default 2, or 5 above 40 nodes)",
    )
    parser.add_argument("--idle-window", type=float, default=30.0, help="idle CPU measured over it (0: not)")
    parser.add_argument("--churn-seconds", type=float, default=300.0, help="how long scenario 3 churns")
    parser.add_argument("--churn-interval", type=float, default=20.0, help="seconds between churn rounds")
    parser.add_argument("--partition-seconds", type=float, default=60.0, help="how long scenario 4 cuts")
    parser.add_argument("--partition-site", help="the site scenario 4 cuts (default: the first full cone)")
    parser.add_argument("--plot", type=Path, default=Path("network_sim.png"), help="where to write the plot")
    parser.add_argument("--no-plot", action="store_true", help="do not plot")
    parser.add_argument("--json", type=Path, help="also write every measurement there")
    parser.add_argument("--keep", type=Path, help="keep the nodes' folders (caches, logs) there")
    args = parser.parse_args()
    reason = netlab.unavailable(*netlab.NAT)
    if reason is not None:
        parser.error(reason)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        outcomes = asyncio.run(run(args, folder))
    command = " ".join(["python scripts/network_sim.py", *sys.argv[1:]])
    lines = [f"Measured with `{command}` on {time.strftime('%Y-%m-%d')}.", ""]
    first = outcomes[0] if outcomes else None
    if first is not None:
        lines += ["### The network", "", *table(first.setup), ""]
        if first.cost:
            lines += ["### What a node costs", "", *table(first.cost), ""]
    for outcome in outcomes:
        lines += [*report(outcome), ""]
    lines.append(f"The whole run took {time.monotonic() - started:.0f} s.")
    print("\n".join(lines))
    if not args.no_plot and outcomes:
        print(plot(outcomes, args.plot))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
