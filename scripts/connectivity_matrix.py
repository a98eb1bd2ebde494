"""The connectivity matrix: how every pair of NAT kinds connects, through real NATs.

    sudo .venv/bin/python scripts/connectivity_matrix.py [--trials 20] [--loss-trials 20]
                                                         [--delay-ms 40] [--write docs/connectivity.md]

Needs root (network namespaces), iptables, nftables, miniupnpd and the miniupnpc package
(``pip install '.[test]'``). It builds netlab's test network (tests/netlab.py), with a public
coordinator and one site of each kind {public, full cone, port-restricted, symmetric, igd} on
each side of the pairs, and prints for each pair how the connection stands (direct, punched,
relayed or failed) and how long ``connect_to`` took: without loss, then with 5% loss on every
link. Then, for every pair that should punch (and two port-restricted NATs behind bare
routers), it makes ``--trials`` fresh connections with ``--delay-ms`` on every link and counts
how many punched, and how many at the first attempt; then ``--loss-trials`` more with 5% loss
on every link as well.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import matrix  # noqa: E402  (tests/ holds the harness)

LOSS = 0.05
BEGIN, END = "<!-- results: begin -->", "<!-- results: end -->"


def matrix_table(outcomes: dict[tuple[str, str], matrix.Outcome]) -> list[str]:
    """Markdown: one row per dialling kind, one column per dialled kind, "path (seconds)"."""
    header = ["from \\ to", *(matrix.short(kind) for kind in matrix.KINDS)]
    rows = [header, ["---"] * len(header)]
    for a in matrix.KINDS:
        cells = [matrix.short(a)]
        for b in matrix.KINDS:
            outcome = outcomes[a, b]
            mark = (
                "" if outcome.path == matrix.expected(a, b) else " (expected " + matrix.expected(a, b) + ")"
            )
            cells.append(f"{outcome.path} {outcome.seconds:.2f} s{mark}")
        rows.append(cells)
    return ["| " + " | ".join(row) + " |" for row in rows]


def run_matrix(loss: float) -> dict[tuple[str, str], matrix.Outcome]:
    with tempfile.TemporaryDirectory() as folder:
        with matrix.matrix_network(Path(folder), loss=loss) as (coordinator, a_nodes, b_nodes):
            return matrix.connect_all(coordinator, a_nodes, b_nodes)


PAIRS = [(a, b) for a in matrix.KINDS for b in matrix.KINDS if matrix.expected(a, b) == "punched"]
BARE_PAIR = ("port_restricted" + matrix.BARE, "port_restricted" + matrix.BARE)


def trials_table(trials: int, delay_ms: float, loss: float) -> list[str]:
    """Markdown: for each pair that should punch, the share that punched, and at the first try."""
    rows = [
        f"With {delay_ms:g} ms of delay each way on every link"
        + (f" and {100 * loss:g}% loss each way." if loss else "."),
        "",
        "| pair | punched | first attempt | median time | slowest |",
        "| --- | --- | --- | --- | --- |",
    ]
    for a, b in [*PAIRS, BARE_PAIR]:
        with tempfile.TemporaryDirectory() as folder:
            outcomes = matrix.punch_trials(Path(folder), a, b, trials, delay_ms=delay_ms, loss=loss)
        punched = [o for o in outcomes if o.path == "punched"]
        first = [o for o in punched if o.punch_attempts == 1]
        times = [o.seconds for o in punched] or [0.0]
        rows.append(
            f"| {matrix.short(a)} -> {matrix.short(b)} | {len(punched)}/{trials} | {len(first)}/{trials} "
            f"({100 * len(first) / trials:.0f}%) | {statistics.median(times):.2f} s | {max(times):.2f} s |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--trials", type=int, default=20, help="fresh connections per punchable pair (0: none)"
    )
    parser.add_argument(
        "--loss-trials", type=int, default=20, help="the same with 5%% loss on every link (0: none)"
    )
    parser.add_argument("--skip-matrix", action="store_true", help="only the trials")
    parser.add_argument("--delay-ms", type=float, default=40.0, help="delay on every link during the trials")
    parser.add_argument(
        "--write", type=Path, help=f"also put the results in this markdown file, between {BEGIN} and {END}"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that the networks are torn down
    started = time.monotonic()
    command = (
        f"python scripts/connectivity_matrix.py --trials {args.trials} --loss-trials {args.loss_trials} "
        f"--delay-ms {args.delay_ms:g}"
    )
    report = [f"Measured with `{command}` on {time.strftime('%Y-%m-%d')}."]
    for title, loss in (("No loss", 0.0), (f"{100 * LOSS:g}% loss on every link", LOSS)):
        if args.skip_matrix:
            break
        report += ["", f"### {title}", "", *matrix_table(run_matrix(loss))]
        print("\n".join(report[-len(matrix.KINDS) - 2 :]), flush=True)
    for trials, loss, title in (
        (args.trials, 0.0, "Punching"),
        (args.loss_trials, LOSS, f"Punching at {100 * LOSS:g}% loss"),
    ):
        if trials:
            report += ["", f"### {title}: {trials} fresh connections per pair", ""]
            report += trials_table(trials, args.delay_ms, loss)
    report += ["", f"The whole run took {time.monotonic() - started:.0f} s."]
    if args.write:
        text = args.write.read_text()
        before, _, rest = text.partition(BEGIN)
        _, _, after = rest.partition(END)
        args.write.write_text("\n".join([before + BEGIN, *report, END + after]))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
