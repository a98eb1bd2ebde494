"""benches/peers.py in smoke mode: qp2p and raw aioquic (always installed) give a figure on every workload."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PEERS_SCRIPT = Path(__file__).resolve().parent.parent / "benches" / "peers.py"
# Two loops x six workloads x two peers, one small round each: seconds on an idle machine.
RUN_TIMEOUT = 240.0
GROUPS = (
    "e2e.bulk.1MiB",
    "e2e.bulk.1MiB.16383B-datagrams",
    "e2e.bulk.1MiB.default-config",
    "e2e.messages.1KiB",
    "e2e.messages.64B",
    "e2e.request.64B",
)
LOOPS = ("asyncio", "uvloop") if importlib.util.find_spec("uvloop") else ("asyncio",)
FIGURE = re.compile(r"^[\d,.]+ (MiB/s|msgs/s)$|^[\d.]+ / [\d.]+ µs$")
RATIO = re.compile(r"^\d+\.\d\dx$")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, object]]:
    """The printed tables and the JSON report of one quick run of qp2p and aioquic on both loops."""
    report = tmp_path_factory.mktemp("peers") / "peers.json"
    command = [sys.executable, str(PEERS_SCRIPT), "--quick", "--peers", "qp2p,aioquic", "--json", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(report.read_text())


def _rows(table: str, first: str) -> dict[tuple[str, str], list[str]]:
    """The rows of the table whose heading starts with ``first``, by (workload, loop)."""
    lines = table.split("\n\n")
    section = next(part for part in lines if part.startswith(f"| {first} |"))
    rows = {}
    for line in section.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_every_workload_has_figures_for_both_peers(quick_run: tuple[str, dict[str, object]]) -> None:
    figures = _rows(quick_run[0], "workload")
    assert set(figures) == {(group, loop) for group in GROUPS for loop in LOOPS}
    for key, cells in figures.items():
        assert len(cells) == 2 and all(FIGURE.match(cell) for cell in cells), (key, cells)


def test_every_workload_has_a_ratio_over_aioquic(quick_run: tuple[str, dict[str, object]]) -> None:
    ratios = _rows(quick_run[0], "qp2p better by")
    assert set(ratios) == {(group, loop) for group in GROUPS for loop in LOOPS}
    for key, (over_aioquic, target) in ratios.items():
        assert RATIO.match(over_aioquic), (key, over_aioquic)
        assert target == "–", "a smoke run shows no targets"


def test_the_json_report_has_every_cell_measured(quick_run: tuple[str, dict[str, object]]) -> None:
    report = quick_run[1]
    assert report["quick"] is True and report["rounds"] == 1
    cells = report["cells"]
    assert isinstance(cells, list) and len(cells) == len(GROUPS) * len(LOOPS) * 2
    for cell in cells:
        assert cell["figures"] and not cell["note"], cell


@pytest.mark.skipif(len(LOOPS) < 2, reason="uvloop is not installed")
def test_uvloop_over_asyncio_for_every_workload(quick_run: tuple[str, dict[str, object]]) -> None:
    gains = quick_run[0].split("| uvloop over asyncio |")[1].split("\n\n")[0].splitlines()[2:]
    assert [line.split("|")[1].strip() for line in gains] == list(GROUPS)
    for line in gains:
        assert all(RATIO.match(cell.strip()) for cell in line.split("|")[2:4]), line


@pytest.mark.parametrize("kind", ["messages", "bulk"])
def test_a_peer_that_garbles_data_fails_instead_of_getting_a_figure(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.syspath_prepend(str(PEERS_SCRIPT.parent))  # benches/ is not a package
    peers: Any = importlib.import_module("peers")
    qp2p_peer: Any = importlib.import_module("qp2p_peer")

    class Garbling(qp2p_peer.Qp2pSender):  # type: ignore[misc]
        async def send(self, data: bytes | bytearray) -> None:
            await super().send(bytes(reversed(data)))  # the right count and sizes, the wrong bytes

    garbling = qp2p_peer.QP2P._replace(sender=Garbling)
    monkeypatch.setattr(peers, "load", lambda name: garbling)
    workload = next(workload for workload in peers.workloads(quick=True) if workload.kind == kind)
    cell = peers.run_cell("qp2p", "asyncio", workload, rounds=1)
    assert cell.note.startswith("failed: AssertionError: qp2p: the ") and not cell.figures, cell


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"package": "no_such_package_for_qp2p"}, "not installed"),
        ({"package": "json", "module": "no_such_bench_module"}, "unsupported here"),
    ],
    ids=["missing", "not-loading"],
)
def test_a_peer_that_cannot_run_is_named_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, change: dict[str, str], shown: str
) -> None:
    monkeypatch.syspath_prepend(str(PEERS_SCRIPT.parent))
    peers: Any = importlib.import_module("peers")
    registry: Any = importlib.import_module("_peers")
    monkeypatch.setitem(registry.PEERS, "qh3", registry.PEERS["qh3"]._replace(**change))
    cell = peers.run_cell("qh3", "asyncio", peers.workloads(quick=True)[0], rounds=1)
    assert not cell.figures and peers.tables([cell], ["qh3"], ["asyncio"], targeted=False).count(shown) == 2
