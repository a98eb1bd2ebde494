"""The ``qp2p`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import qp2p
from qp2p import _speedups


def _info(_args: argparse.Namespace) -> int:
    import aioquic

    print(f"qp2p {qp2p.__version__}")
    print(f"backend: {_speedups.BACKEND}")
    if _speedups.NO_EXTENSIONS:
        print("reason: QP2P_NO_EXTENSIONS is set (or the interpreter is not CPython)")
    elif _speedups.IMPORT_ERROR is not None:
        print(f"reason: the compiled modules did not import: {_speedups.IMPORT_ERROR}")
    for module in (_speedups.framing, _speedups.chunking, _speedups.retry, _speedups.packet):
        print(f"  {module.__name__}: {module.__file__}")
    print(f"aioquic {aioquic.__version__}, Python {sys.version.split()[0]}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qp2p", description="Peer-to-peer messaging over QUIC.")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print the version, the active backend and its modules")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    status: int = args.run(args)
    return status
