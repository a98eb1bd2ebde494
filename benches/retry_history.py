"""Times retry tokens (a mint and a validate for 1,000 IPv4 clients) from another revision's
``_qp2p_fast/retry.pyx`` against this tree's compiled and pure modules, in one process.

    python benches/retry_history.py REV [--link crypto] [--repeat 300]

REV is any git revision; its ``retry.pyx`` is compiled into a temporary folder (``--link``
names libraries it linked, e.g. ``crypto`` before 0.1's hashlib change) and loaded under another
name. Prints the best of ``--repeat`` rounds for each and the ratios. Needs Cython and a C
compiler, as a source build does.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from types import ModuleType

import qp2p
from qp2p._pure import retry as pure_retry
from qp2p._speedups import retry as compiled_retry

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))
NOW = 1_700_000_000.0
BUILD = """
from setuptools import Extension, setup
from Cython.Build import cythonize
setup(script_args=["build_ext", "--inplace", "-q"], ext_modules=cythonize(
    [Extension("retry_then", ["retry_then.pyx"], libraries={libraries!r})],
    compiler_directives={{"language_level": "3"}}, quiet=True))
"""


def compiled(revision: str, libraries: list[str], folder: Path) -> ModuleType:
    """``retry.pyx`` as it was at ``revision``, built and imported as ``retry_then``."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:_qp2p_fast/retry.pyx"],
        check=True,
        capture_output=True,
    ).stdout
    (folder / "retry_then.pyx").write_bytes(source)
    subprocess.run(
        [sys.executable, "-c", BUILD.format(libraries=libraries)], cwd=folder, check=True, capture_output=True
    )
    built = next(folder.glob("retry_then*.so"))
    spec = importlib.util.spec_from_file_location("retry_then", built)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best_ms(module: ModuleType, repeat: int) -> float:
    """The fastest of ``repeat`` rounds of 1,000 mints and validates, in milliseconds."""
    rng = random.Random(9000)
    clients = [
        ((f"198.51.100.{i % 254 + 1}", 1024 + i), rng.randbytes(8), rng.randbytes(8)) for i in range(1000)
    ]
    tokens = module.RetryTokens(KEY)
    mint, validate = tokens.mint, tokens.validate
    reference = pure_retry.RetryTokens(KEY)
    assert all(mint(a, o, NOW, s) == reference.mint(a, o, NOW, s) for a, o, s in clients), module.__name__

    def run() -> None:
        for addr, odcid, scid in clients:
            validate(mint(addr, odcid, NOW, scid), addr, NOW, scid)

    return min(timeit.repeat(run, number=1, repeat=repeat)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("revision")
    parser.add_argument("--link", action="append", default=[], help="a library the old module linked")
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    if qp2p.BACKEND != "fast":
        sys.exit("this tree's compiled backend is not loaded (build it, and unset QP2P_NO_EXTENSIONS)")
    with tempfile.TemporaryDirectory() as folder:
        then = best_ms(compiled(args.revision, args.link, Path(folder)), args.repeat)
    now = best_ms(compiled_retry, args.repeat)
    pure = best_ms(pure_retry, args.repeat)
    print("| retry tokens, 1,000 mints and validates | best ms |\n|---|---:|")
    print(f"| {args.revision}, compiled | {then:.3f} |\n| this tree, compiled | {now:.3f} |")
    print(f"| this tree, pure | {pure:.3f} |")
    print(f"\nthis tree: {then / now:.2f}x the speed of {args.revision}, {pure / now:.2f}x its pure twin's")


if __name__ == "__main__":
    main()
