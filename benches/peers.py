"""Every peer implementation on the end-to-end workloads in one run, and how many times better qp2p is.

    python benches/peers.py [--loop asyncio|uvloop|both] [--quick] [--peers qp2p,aioquic] [--json F]

The peers are those of _peers.py: qp2p, raw aioquic and qh3 (one code, aioquic_baseline.py),
aiortc data channels (aiortc_peer.py), TLS 1.3 over TCP (tls_peer.py) and py-libp2p
(libp2p_peer.py). The workloads are those of _workloads.py, on 127.0.0.1 with both ends in one
event loop. Each runs ``ROUNDS`` rounds per peer and loop, a fresh pair each, every round
bounded in time and checked after it (every message, every byte, every reply); a peer that
fails or times out shows "failed" and makes the exit status 1. A peer whose package is missing
shows "not installed", one that does not load here "unsupported". py-libp2p runs on trio only:
it is measured once per workload on trio, and that figure, marked "(trio)", stands in every
loop's row. ``--quick`` runs one round at small sizes.

Prints the figures, then qp2p's figure over each other peer's ("how many times better qp2p is",
as ratios.py words it) with the targets of ``TARGETS``, then each peer's figure on uvloop over
its figure on asyncio when both loops ran, then why any cell is empty. ``--json`` also writes
every figure, with the package versions it was measured with.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from _inputs import KiB, MiB
from _pairs import LOOP_CHOICES, Pair, loops_for
from _peers import Impl, Missing, OwnLoop, load
from _workloads import Bulk, Messages, Requests, Workload
from aioquic_baseline import DATAGRAM_SIZE
from ratios import E2E_FIGURES, Target

import qp2p

__all__ = ("main",)

ROUNDS = 3
# A datagram size near QUIC's largest on loopback; qp2p takes at most 16383.
LARGE_DATAGRAM = 16383
# Peers in table order.
ORDER = ("qp2p", "aioquic", "qh3", "aiortc", "tls", "libp2p")
DISTRIBUTIONS = ("qp2p", "aioquic", "qh3", "aiortc", "libp2p", "uvloop")
# Issue 13's targets for qp2p at full size; "today" is qp2p's figure when they were set.
TARGETS = {
    "e2e.bulk.32MiB": Target("ahead of qh3", min_ratio=1.0, versus="qh3"),
    "e2e.bulk.32MiB.default-config": Target(">= 5x today on loopback (>= 37 MiB/s)", min_figure=37.0),
    "e2e.messages.64B": Target(">= 2x today (>= 135,000 msgs/s)", min_figure=135_000),
    "e2e.messages.1KiB": Target(">= 1.3x today (>= 7,650 msgs/s)", min_figure=7_650),
    "e2e.request.64B": Target("median <= 0.8x aioquic's", min_ratio=1.25, versus="aioquic"),
}
UVLOOP_TARGETS = {"e2e.bulk.32MiB": Target("qp2p >= 1.3x", min_ratio=1.3, versus="qp2p")}


@dataclass
class Cell:
    """One peer on one workload and loop: its figures, or why there are none."""

    group: str
    loop: str
    peer: str
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # "not installed: ...", "unsupported ...", "failed: ...", "n/a: ..."
    ran_on: str = ""  # the loop the peer ran on instead of ``loop`` (py-libp2p: trio)


def workloads(quick: bool) -> list[Workload]:
    """The workloads of issue 13's table, at full size or (``quick``) at smoke size."""
    count, bulk, requests = (500, MiB, 50) if quick else (20_000, 32 * MiB, 1_000)
    return [
        Bulk(bulk),
        Bulk(bulk, datagram_size=LARGE_DATAGRAM),
        Bulk(bulk, datagram_size=None),
        Messages(KiB, count),
        Messages(64, count),
        Requests(64, requests),
    ]


def measure(peer: str, impl: Impl, loop: str, workload: Workload, rounds: int) -> dict[str, Any]:
    """The workload's figures over ``rounds`` rounds, each on a fresh pair, checked after it."""
    results = []
    for _ in range(rounds):
        pair = Pair(peer, impl, loop, workload.datagram_size)
        try:
            results.append(pair.run(workload.work(pair), workload.what))
            workload.check(pair)
        finally:
            pair.close()
    return workload.figures(results)


def run_cell(peer: str, loop: str, workload: Workload, rounds: int) -> Cell:
    """``measure``, or the reason it cannot or did not give figures."""
    cell = Cell(workload.group, loop, peer)
    try:
        impl = load(peer)
        sized = not isinstance(impl, OwnLoop) and impl.sized_datagrams
        if workload.datagram_size != DATAGRAM_SIZE and not sized:
            cell.note = "n/a: no datagram size to set"
        elif isinstance(impl, OwnLoop):
            cell.ran_on = impl.loop
            cell.figures = impl.measure(workload, rounds)
        else:
            cell.figures = measure(peer, impl, loop, workload, rounds)
    except Missing as missing:
        cell.note = str(missing)
    except Exception as error:  # a failed or timed-out round: reported, never a figure
        first_line = next(iter(str(error).splitlines()), "")
        cell.note = f"failed: {type(error).__name__}: {first_line}"
    return cell


def cells_for(peer: str, workload: Workload, loops: list[str], rounds: int) -> list[Cell]:
    """The peer's cell on each loop; a peer on a loop of its own is measured once, for every row."""
    first = run_cell(peer, loops[0], workload, rounds)
    if first.ran_on:
        return [replace(first, loop=loop) for loop in loops]
    return [first, *(run_cell(peer, loop, workload, rounds) for loop in loops[1:])]


def _kind(group: str) -> str:
    return group.split(".")[1]


def _show(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    if cell.figures:
        shown = E2E_FIGURES[_kind(cell.group)].show.format(**cell.figures)
        return f"{shown} ({cell.ran_on})" if cell.ran_on else shown
    return "—" if cell.note.startswith("n/a") else cell.note.split(":")[0]


def _ratio(ours: Cell | None, theirs: Cell | None) -> float | None:
    if ours is None or theirs is None or not ours.figures or not theirs.figures:
        return None
    figure = E2E_FIGURES[_kind(ours.group)]
    return figure.better_by(ours.figures[figure.key], theirs.figures[figure.key])


def _gain(uvloop: Cell | None, asyncio: Cell | None) -> float | None:
    """uvloop's figure over asyncio's, for a peer that ran on each."""
    return None if uvloop is None or uvloop.ran_on else _ratio(uvloop, asyncio)


def _times(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}x"


def _verdict(target: Target | None, ratios: dict[str, float | None], ours: Cell | None) -> str:
    if target is None or ours is None or not ours.figures:
        return "–"
    figure = E2E_FIGURES[_kind(ours.group)]
    return target.verdict(ratios.get(target.versus), ours.figures[figure.key])


def tables(cells: list[Cell], peers: list[str], loops: list[str], targeted: bool) -> str:
    """The figures table, the ratio table, the uvloop table (both loops only) and the notes.

    The targets are shown only when ``targeted`` (at full size: a smoke run's figures say nothing).
    """
    targets, uvloop_targets = (TARGETS, UVLOOP_TARGETS) if targeted else ({}, {})
    at = {(cell.group, cell.loop, cell.peer): cell for cell in cells}
    groups = list(dict.fromkeys(cell.group for cell in cells))
    others = [peer for peer in peers if peer != "qp2p"]
    figures = [
        f"| workload | loop | {' | '.join(peers)} |",
        f"|---|---|{'---:|' * len(peers)}",
    ]
    ratios = [
        f"| qp2p better by | loop | {' | '.join(f'over {peer}' for peer in others)} | target |",
        f"|---|---|{'---:|' * len(others)}---|",
    ]
    for group in groups:
        for loop in loops:
            row = {peer: at.get((group, loop, peer)) for peer in peers}
            figures.append(f"| {group} | {loop} | {' | '.join(_show(row[peer]) for peer in peers)} |")
            over = {peer: _ratio(row.get("qp2p"), row[peer]) for peer in others}
            verdict = _verdict(targets.get(group), over, row.get("qp2p"))
            ratios.append(
                f"| {group} | {loop} | {' | '.join(_times(over[peer]) for peer in others)} | {verdict} |"
            )
    sections = [figures, ratios]
    if set(loops) == {"asyncio", "uvloop"}:
        gains = [
            f"| uvloop over asyncio | {' | '.join(peers)} | target |",
            f"|---|{'---:|' * len(peers)}---|",
        ]
        for group in groups:
            on = {loop: {peer: at.get((group, loop, peer)) for peer in peers} for loop in loops}
            gain = {peer: _gain(on["uvloop"][peer], on["asyncio"][peer]) for peer in peers}
            verdict = _verdict(uvloop_targets.get(group), gain, on["uvloop"].get("qp2p"))
            gains.append(f"| {group} | {' | '.join(_times(gain[peer]) for peer in peers)} | {verdict} |")
        sections.append(gains)
    notes = dict.fromkeys(
        f"- {cell.peer}: {cell.note}"
        if not cell.note.startswith("failed")
        else f"- {cell.peer}, {cell.group} on {cell.loop}: {cell.note}"
        for cell in cells
        if cell.note and not cell.note.startswith("n/a")
    )
    if notes:
        sections.append(list(notes))
    return "\n\n".join("\n".join(lines) for lines in sections)


def versions() -> dict[str, str]:
    """The Python, qp2p backend and peer package versions the figures were measured with."""
    found = {"python": platform.python_version(), "qp2p_backend": qp2p.BACKEND}
    for distribution in DISTRIBUTIONS:
        try:
            found[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found[distribution] = "not installed"
    return found


def _peer_list(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ORDER]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"peers are some of {', '.join(ORDER)}, got {text!r}")
    return [name for name in ORDER if name in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "--loop", choices=LOOP_CHOICES, default="both", help="default both (uvloop where installed)"
    )
    parser.add_argument("--quick", action="store_true", help="one round at small sizes (a smoke run)")
    parser.add_argument("--peers", type=_peer_list, default=list(ORDER), help="comma-separated; default all")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if "qp2p" not in args.peers:
        parser.error("--peers must include qp2p: the ratios are qp2p's")
    loops = list(loops_for(args.loop))
    rounds = 1 if args.quick else ROUNDS
    cells: list[Cell] = []
    for workload in workloads(args.quick):
        for peer in args.peers:
            for cell in cells_for(peer, workload, loops, rounds):
                print(f"{cell.group} {cell.loop} {peer}: {_show(cell)}", file=sys.stderr, flush=True)
                cells.append(cell)
    print(tables(cells, args.peers, loops, targeted=not args.quick))
    if args.json is not None:
        report = {
            "versions": versions(),
            "quick": args.quick,
            "rounds": rounds,
            "cells": [asdict(c) for c in cells],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(cell.note.startswith("failed") for cell in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
