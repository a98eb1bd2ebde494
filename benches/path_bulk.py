"""Bulk transfer over real paths, with path MTU discovery (the default) against 1200-byte datagrams.

python benches/path_bulk.py [--size-mib 32] [--trials 3] [--links loopback,1500,9000] [--loop asyncio]

Each link is a pair of network namespaces joined through a router by veth pairs of that MTU
(``loopback``: both ends in one namespace, on 127.0.0.1). Each end is a process of its own
(tests/mtu_process.py); the sender times one request of ``--size-mib`` MiB until its short
reply. Each configuration runs ``--trials`` times, alternating, and the table gives medians and
the ratio of the default configuration to ``max_datagram_size=1200`` (the size every datagram
had before discovery), all from one run. Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # netlab and the path helpers live with the tests
import netlab  # noqa: E402
from mtu_route import Process, dial, loopback, route, server  # noqa: E402

from qp2p import _loops  # noqa: E402

MiB = 1 << 20
CEILINGS: dict[str, list[str]] = {"1200": ["--ceiling", "1200"], "default": []}


def transfer(link: str, options: list[str], size: int) -> dict[str, Any]:
    """One bulk request over ``link``: the sender's last line (seconds, datagram size, ...)."""
    path = loopback() if link == "loopback" else route(int(link), int(link))
    with path as r, server(r, *options):
        return _dial(dial(r, size, *options))


def _dial(process: Process) -> dict[str, Any]:
    try:
        process.line()  # the path once searched
        done = process.line()
    finally:
        process.stop()
    assert done["reply"]["received"] > 0, done
    return done


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--links", default="loopback,1500,9000")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="asyncio")
    args = parser.parse_args()
    reason = netlab.unavailable("sysctl")
    if reason is not None:
        print(f"path_bulk.py: {reason}", file=sys.stderr)
        return 2
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    for name in loops:
        _loops.chosen(name)  # fails here, clearly, when uvloop is asked for and missing
    size = args.size_mib * MiB
    rows = []
    for loop in loops:
        for link in args.links.split(","):
            rates: dict[str, list[float]] = {name: [] for name in CEILINGS}
            sizes: dict[str, int] = {}
            for _ in range(args.trials):
                for name, options in CEILINGS.items():
                    done = transfer(link, [*options, "--loop", loop], size)
                    assert done["reply"]["received"] == size, done
                    rates[name].append(size / MiB / done["seconds"])
                    sizes[name] = done["datagram_size"]
            base, found = (statistics.median(rates[name]) for name in CEILINGS)
            rows.append((loop, link, base, found, sizes["default"], found / base))
    print(f"\nbulk {args.size_mib} MiB, medians of {args.trials}\n")
    print("| loop | link MTU | 1200-byte datagrams | path MTU discovery | datagram size found | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for loop, link, base, found, datagram, ratio in rows:
        print(f"| {loop} | {link} | {base:.1f} MiB/s | {found:.1f} MiB/s | {datagram} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
