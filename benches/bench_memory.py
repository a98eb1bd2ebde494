"""Peak memory of chunking a 64 MiB message, per backend, measured by memory_chunking.py in a child."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))  # benches/ is not a package
from memory_chunking import PACKAGES  # noqa: E402

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

SCRIPT = Path(__file__).with_name("memory_chunking.py")
SIZE_MIB = 64
# Splitting must not copy the payload; reassembling holds one body buffer plus a little slack.
SPLIT_LIMIT_MIB = 8
REASSEMBLE_LIMIT_MIB = SIZE_MIB * 1.25


@pytest.mark.benchmark(group="chunking.memory.64MiB")
def test_chunking_memory_64MiB(benchmark: BenchmarkFixture, chunking: ModuleType) -> None:
    """Runs the script once (timed as a single round) and records its figures in ``extra_info``."""
    backend = next(name for name, package in PACKAGES.items() if chunking.__name__ == f"{package}.chunking")
    command = [sys.executable, str(SCRIPT), "--backend", backend, "--size-mib", str(SIZE_MIB)]
    figures: dict[str, Any] = {}

    def run() -> None:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        figures.update(json.loads(done.stdout))
        assert figures["size_mib"] == SIZE_MIB

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    assert figures["split_extra_mib"] < SPLIT_LIMIT_MIB, figures
    assert figures["reassemble_peak_mib"] < REASSEMBLE_LIMIT_MIB, figures
