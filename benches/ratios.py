"""Runs the benches and prints, per group, the fast and pure medians and how many times faster fast is.

    python benches/ratios.py [extra pytest arguments, e.g. -k framing]
    python benches/ratios.py --json results.json    # tabulate a pytest-benchmark JSON file instead

The memory figures recorded by bench_memory.py follow in a second table. Exits with pytest's
status when pytest fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
BACKENDS = ("fast", "pure")
MEMORY_KEYS = ("split_extra_mib", "reassemble_peak_mib")


def run_pytest(extra: list[str], json_path: Path) -> int:
    """``pytest benches`` with the JSON report written to ``json_path``; returns pytest's status."""
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
    return subprocess.run(command, cwd=BENCHES.parent, check=False).returncode


def format_time(seconds: float) -> str:
    """Seconds as ns, µs, ms or s, whichever keeps the number readable."""
    for unit, scale in (("ns", 1e9), ("µs", 1e6), ("ms", 1e3)):
        if seconds * scale < 999.5:
            return f"{seconds * scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def _backend(bench: dict[str, Any]) -> str:
    param = bench.get("param") or bench["name"].rpartition("[")[2].rstrip("]")
    return str(param)


def tables(report: dict[str, Any]) -> str:
    """The Markdown timing table (groups in collection order), then the memory figures if any."""
    medians: dict[str, dict[str, float]] = {}
    memory: list[dict[str, Any]] = []
    for bench in report.get("benchmarks", []):
        if all(key in bench["extra_info"] for key in MEMORY_KEYS):
            memory.append(bench["extra_info"] | {"backend": _backend(bench)})
            continue
        group = bench["group"] or bench["name"]
        medians.setdefault(group, {})[_backend(bench)] = bench["stats"]["median"]
    lines = ["| group | fast median | pure median | pure/fast |", "|---|---:|---:|---:|"]
    for group, row in medians.items():
        fast, pure = row.get("fast"), row.get("pure")
        ratio = f"{pure / fast:.2f}x" if fast and pure else "–"
        cells = [format_time(t) if t is not None else "–" for t in (fast, pure)]
        lines.append(f"| {group} | {cells[0]} | {cells[1]} | {ratio} |")
    if memory:
        lines += [
            "",
            "| chunking memory | size | split: peak beyond payload | reassemble: peak above baseline |",
            "|---|---:|---:|---:|",
        ]
        for info in sorted(memory, key=lambda info: BACKENDS.index(info["backend"])):
            lines.append(
                f"| {info['backend']} | {info['size_mib']} MiB | {info['split_extra_mib']:.1f} MiB"
                f" | {info['reassemble_peak_mib']:.1f} MiB |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--json", type=Path, help="read this pytest-benchmark JSON file instead of running")
    args, extra = parser.parse_known_args(argv)
    if args.json is not None:
        if extra:
            parser.error(f"--json takes no pytest arguments, got {' '.join(extra)}")
        print(tables(json.loads(args.json.read_text())))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        json_path = Path(scratch) / "benchmarks.json"
        status = run_pytest(extra, json_path)
        if json_path.exists():
            print()
            print(tables(json.loads(json_path.read_text())))
    return status


if __name__ == "__main__":
    sys.exit(main())
