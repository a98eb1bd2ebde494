"""Runs the benches and prints, per group, the fast and pure medians and how many times faster fast is.

    python benches/ratios.py [--loop asyncio|uvloop|both] [extra pytest arguments, e.g. -k framing]
    python benches/ratios.py --json results.json    # tabulate a pytest-benchmark JSON file instead

The memory figures recorded by bench_memory.py follow in a second table, and the end-to-end
benches (bench_e2e.py: qp2p against raw aioquic, on whichever backend qp2p loaded) in a third,
one row per workload and event loop (``--loop``, default both: asyncio, and uvloop when it is
installed). Exits with pytest's status when pytest fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
BACKENDS = ("fast", "pure")
MEMORY_KEYS = ("split_extra_mib", "reassemble_peak_mib")
IMPLS = ("qp2p", "aioquic")
# Read by bench_e2e.py: the event loops its benches run on.
LOOP_ENV = "QP2P_BENCH_LOOP"
LOOP_CHOICES = ("asyncio", "uvloop", "both")


@dataclass(frozen=True)
class Figure:
    """How an end-to-end workload's ``extra_info`` is shown and which key its ratio compares."""

    key: str
    higher_is_better: bool
    show: str  # a format string over extra_info

    def better_by(self, ours: float, theirs: float) -> float | None:
        """How many times better ``ours`` is: a rate over a rate, or a time or size inverted."""
        if ours <= 0 or theirs <= 0:
            return None
        return ours / theirs if self.higher_is_better else theirs / ours


@dataclass(frozen=True)
class Target:
    """A goal for qp2p: a least ratio over another peer, or a least or most for qp2p's own figure."""

    text: str
    min_ratio: float | None = None
    min_figure: float | None = None
    max_figure: float | None = None
    versus: str = "aioquic"  # the peer ``min_ratio`` is over

    def met(self, ratio: float | None, figure: float) -> bool:
        if self.min_ratio is not None:
            return ratio is not None and ratio >= self.min_ratio
        if self.min_figure is not None:
            return figure >= self.min_figure
        return self.max_figure is not None and figure < self.max_figure

    def verdict(self, ratio: float | None, figure: float) -> str:
        return f"{self.text}: {'met' if self.met(ratio, figure) else 'MISSED'}"


# Keyed by the group's second part: e2e.<workload>.<size>.
E2E_FIGURES = {
    "messages": Figure("msgs_per_s", True, "{msgs_per_s:,} msgs/s"),
    "bulk": Figure("mib_per_s", True, "{mib_per_s:.1f} MiB/s"),
    "request": Figure("rtt_median_us", False, "{rtt_median_us:.0f} / {rtt_p99_us:.0f} µs"),
    "memory": Figure("peak_mib", False, "{peak_mib:.1f} MiB"),
}
# Keyed by group prefix; the first that matches applies.
E2E_TARGETS = {
    "e2e.messages.64B": Target(">= 10x", min_ratio=10),
    "e2e.messages.1KiB": Target(">= 1.5x", min_ratio=1.5),
    "e2e.bulk.": Target(">= 0.95x", min_ratio=0.95),
    "e2e.request.": Target("median <= 0.8x aioquic's", min_ratio=1.25),  # issue 13
    "e2e.memory.256MiB": Target("qp2p < 100 MiB", max_figure=100),
}


def run_pytest(extra: list[str], json_path: Path, loop: str) -> int:
    """``pytest benches`` on ``loop`` with the JSON report written to ``json_path``; returns its status."""
    command = [
        sys.executable,
        "-P",  # keep the checkout off sys.path: test the installed package, not the source tree
        "-m",
        "pytest",
        str(BENCHES),
        "-q",
        f"--benchmark-json={json_path}",
        "--benchmark-group-by=group",
        *extra,
    ]
    environment = os.environ | {LOOP_ENV: loop}
    return subprocess.run(command, cwd=BENCHES.parent, env=environment, check=False).returncode


def format_time(seconds: float) -> str:
    """Seconds as ns, µs, ms or s, whichever keeps the number readable."""
    for unit, scale in (("ns", 1e9), ("µs", 1e6), ("ms", 1e3)):
        if seconds * scale < 999.5:
            return f"{seconds * scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def _backend(bench: dict[str, Any]) -> str:
    """The backend part of the test id: ``fast`` in ``[fast]`` and in ``[fast-64B]``."""
    param = str(bench.get("param") or bench["name"].rpartition("[")[2].rstrip("]"))
    return next((part for part in param.split("-") if part in BACKENDS), param)


def _fast_pure_table(medians: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| group | fast median | pure median | pure/fast |", "|---|---:|---:|---:|"]
    for group, row in medians.items():
        fast, pure = row.get("fast"), row.get("pure")
        ratio = f"{pure / fast:.2f}x" if fast and pure else "–"
        cells = [format_time(t) if t is not None else "–" for t in (fast, pure)]
        lines.append(f"| {group} | {cells[0]} | {cells[1]} | {ratio} |")
    return lines


def _chunking_memory_table(memory: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| chunking memory | size | split: peak beyond payload | reassemble: peak above baseline |",
        "|---|---:|---:|---:|",
    ]
    for info in sorted(memory, key=lambda info: BACKENDS.index(info["backend"])):
        lines.append(
            f"| {info['backend']} | {info['size_mib']} MiB | {info['split_extra_mib']:.1f} MiB"
            f" | {info['reassemble_peak_mib']:.1f} MiB |"
        )
    return lines


def target_for(group: str, targets: dict[str, Target]) -> Target | None:
    """The first target whose key ``group`` starts with."""
    return next((target for prefix, target in targets.items() if group.startswith(prefix)), None)


def _e2e_table(e2e: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> list[str]:
    """qp2p and aioquic side by side, a row per workload and loop; "qp2p better by" as ``better_by``."""
    backends = sorted({bench["extra_info"]["backend"] for row in e2e.values() for bench in row.values()})
    lines = [
        f"| e2e (qp2p backend: {', '.join(backends)}) | loop | qp2p median | aioquic median | qp2p | aioquic"
        " | qp2p better by | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    groups = list(dict.fromkeys(group for group, _ in e2e))  # in collection order, each loop under it
    for (group, loop), row in sorted(e2e.items(), key=lambda item: (groups.index(item[0][0]), item[0][1])):
        figure = E2E_FIGURES[group.split(".")[1]]
        infos = [row[impl]["extra_info"] if impl in row else None for impl in IMPLS]
        cells = [format_time(row[impl]["stats"]["median"]) if impl in row else "–" for impl in IMPLS]
        cells += [figure.show.format(**info) if info else "–" for info in infos]
        ratio = None
        if infos[0] and infos[1]:
            ratio = figure.better_by(infos[0][figure.key], infos[1][figure.key])
        cells.append(f"{ratio:.2f}x" if ratio is not None else "–")
        target = target_for(group, E2E_TARGETS)
        cells.append(
            "–" if target is None or infos[0] is None else target.verdict(ratio, infos[0][figure.key])
        )
        lines.append(f"| {group} | {loop} | {' | '.join(cells)} |")
    return lines


def tables(report: dict[str, Any]) -> str:
    """The Markdown timing table (groups in collection order), then the memory and e2e tables if any."""
    medians: dict[str, dict[str, float]] = {}
    memory: list[dict[str, Any]] = []
    e2e: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for bench in report.get("benchmarks", []):
        group = bench["group"] or bench["name"]
        impl = (bench.get("params") or {}).get("impl")
        if impl is not None:
            loop = bench["extra_info"].get("loop", "asyncio")
            e2e.setdefault((group, loop), {})[impl] = bench
        elif all(key in bench["extra_info"] for key in MEMORY_KEYS):
            memory.append(bench["extra_info"] | {"backend": _backend(bench)})
        else:
            medians.setdefault(group, {})[_backend(bench)] = bench["stats"]["median"]
    sections = [_fast_pure_table(medians)] if medians or not (memory or e2e) else []
    if memory:
        sections.append(_chunking_memory_table(memory))
    if e2e:
        sections.append(_e2e_table(e2e))
    return "\n\n".join("\n".join(lines) for lines in sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--json", type=Path, help="read this pytest-benchmark JSON file instead of running")
    parser.add_argument(
        "--loop",
        choices=LOOP_CHOICES,
        default="both",
        help="the event loops of the e2e benches (default both: asyncio, and uvloop when installed)",
    )
    args, extra = parser.parse_known_args(argv)
    if args.json is not None:
        if extra:
            parser.error(f"--json takes no pytest arguments, got {' '.join(extra)}")
        print(tables(json.loads(args.json.read_text())))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        json_path = Path(scratch) / "benchmarks.json"
        status = run_pytest(extra, json_path, args.loop)
        if json_path.exists():
            print()
            print(tables(json.loads(json_path.read_text())))
    return status


if __name__ == "__main__":
    sys.exit(main())
