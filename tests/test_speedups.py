"""Backend selection, checked in fresh isolated interpreters (``python -I -W error``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

MODULES = [
    "qp2p",
    "qp2p.wire",
    "qp2p.errors",
    "qp2p._speedups",
    "qp2p.cli",
    "qp2p.endpoint",
    "qp2p.session",
    "qp2p.connection",
    "qp2p.nat.traversal",
] + [f"qp2p._pure.{m}" for m in ("framing", "chunking", "retry", "packet")]


def run_python(code: str, no_extensions: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "QP2P_NO_EXTENSIONS"}
    if no_extensions is not None:
        env["QP2P_NO_EXTENSIONS"] = no_extensions
    done = subprocess.run(
        [sys.executable, "-I", "-W", "error", "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


REPORT = "import qp2p, qp2p._speedups as s; print(qp2p.BACKEND, qp2p.USING_EXTENSIONS, s.framing.__name__)"


@pytest.mark.fast_ext
@pytest.mark.parametrize("value", [None, "", "0"])
def test_compiled_backend_wins_by_default(value: str | None) -> None:
    assert run_python(REPORT, value) == "fast True _qp2p_fast.framing"


@pytest.mark.parametrize("value", ["1", "yes", "Y"])
def test_no_extensions_forces_pure(value: str) -> None:
    assert run_python(REPORT, value) == "pure False qp2p._pure.framing"


@pytest.mark.fast_ext
def test_all_four_modules_come_from_one_backend() -> None:
    code = (
        "import qp2p._speedups as s; "
        "print(sorted({m.__name__.split('.')[0] for m in (s.framing, s.chunking, s.retry, s.packet)}))"
    )
    assert run_python(code, None) == "['_qp2p_fast']"


# Each import below is followed by printing the backend, so that no import order can quietly
# leave the pure one in place of the compiled one.
BACKEND_AFTER = "; import qp2p; print(qp2p.BACKEND)"
COMPILED = ["framing", "chunking", "retry", "packet"]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(
    ("no_extensions", "expected"),
    [pytest.param(None, "fast", marks=pytest.mark.fast_ext, id="fast"), pytest.param("1", "pure", id="pure")],
)
def test_each_module_imports_alone(module: str, no_extensions: str | None, expected: str) -> None:
    assert run_python(f"import {module}" + BACKEND_AFTER, no_extensions) == expected


def compiled_built(module: str) -> bool:
    """Whether the compiled module exists in this tree (``setup.py build_ext`` made it)."""
    return importlib.util.find_spec(f"_qp2p_fast.{module}") is not None


@pytest.mark.fast_ext
@pytest.mark.parametrize("module", COMPILED)
def test_importing_a_compiled_module_first_still_gives_the_compiled_backend(module: str) -> None:
    # It imports qp2p.errors, hence qp2p, whose backend choice imports the compiled modules:
    # none of them may be found half-initialised.
    if not compiled_built(module):
        pytest.skip(f"_qp2p_fast.{module} is not built (setup.py build_ext --inplace)")
    code = f"import _qp2p_fast.{module}" + BACKEND_AFTER + "; print(qp2p.Endpoint.__name__)"
    assert run_python(code, None) == "fast\nEndpoint"


@pytest.mark.parametrize("module", COMPILED)
def test_importing_a_compiled_module_first_keeps_the_pure_backend_when_forced(module: str) -> None:
    if not compiled_built(module):
        pytest.skip(f"_qp2p_fast.{module} is not built (setup.py build_ext --inplace)")
    assert run_python(f"import _qp2p_fast.{module}" + BACKEND_AFTER, "1") == "pure"


def test_info_command_reports_the_backend() -> None:
    out = run_python("from qp2p.cli import main; main(['info'])", "1")
    assert "backend: pure" in out and "QP2P_NO_EXTENSIONS" in out
