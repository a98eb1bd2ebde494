"""Builds the optional ``_qp2p_fast`` extensions; all metadata lives in pyproject.toml.

Environment switches (set at build time):
  QP2P_NO_EXTENSIONS=1       build nothing compiled: a pure-Python install.
  QP2P_REQUIRE_EXTENSIONS=1  a failed extension build is an error (CI and wheel builds), not a fallback.
  QP2P_CYTHON_TRACING=1      compile with line tracing, for coverage runs only.
Without a C compiler or the Python headers the build prints one warning and
installs the pure-Python backend, which behaves the same, only slower.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ("framing", "chunking", "retry", "packet")
LIBRARIES = {"retry": ["ws2_32"]} if sys.platform == "win32" else {}


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


NO_EXTENSIONS = _flag("QP2P_NO_EXTENSIONS")
STRICT = _flag("QP2P_REQUIRE_EXTENSIONS")
TRACING = _flag("QP2P_CYTHON_TRACING")


def _warn(text: str) -> None:
    line = "*" * 78
    print(f"\n{line}\nWARNING: qp2p: {text}\n{line}\n", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Builds every extension, or none: on the first failure it warns once and leaves pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if STRICT:
                raise
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            self.extensions = []
            _warn(
                f"the compiled backend could not be built ({type(exc).__name__}: {exc}); "
                "installing the pure-Python backend, which works the same but slower. "
                "A C compiler and the Python headers enable it."
            )


def _extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        _warn("QP2P_NO_EXTENSIONS is set: building the pure-Python backend only.")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if STRICT:
            raise
        _warn("Cython is not available: building the pure-Python backend only.")
        return []
    macros = [("CYTHON_TRACE_NOGIL", "1")] if TRACING else []
    extensions = [
        Extension(
            f"_qp2p_fast.{name}",
            [f"_qp2p_fast/{name}.pyx"],
            libraries=LIBRARIES.get(name, []),
            define_macros=macros,
        )
        for name in MODULES
    ]
    directives = {"language_level": "3", "embedsignature": True, "auto_pickle": False, "linetrace": TRACING}
    return cythonize(extensions, compiler_directives=directives, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
