"""Chooses, once at import, the compiled ``_qp2p_fast`` modules or their pure-Python twins.

``QP2P_NO_EXTENSIONS`` set to anything but empty or ``0`` forces the pure modules, as does any
interpreter other than CPython. Otherwise the compiled modules are used when they import;
if the build skipped them (no compiler, no Python headers) all four fall back together:
fast and pure modules are never mixed. The build already warned, so the fallback is silent.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Literal

__all__ = ("BACKEND", "IMPORT_ERROR", "NO_EXTENSIONS", "chunking", "framing", "packet", "retry")

NO_EXTENSIONS: bool = (
    os.environ.get("QP2P_NO_EXTENSIONS", "") not in ("", "0") or platform.python_implementation() != "CPython"
)
IMPORT_ERROR: ImportError | None = None
BACKEND: Literal["fast", "pure"]

if TYPE_CHECKING or NO_EXTENSIONS:
    from qp2p._pure import chunking, framing, packet, retry

    BACKEND = "pure"
else:
    try:
        from _qp2p_fast import chunking, framing, packet, retry

        BACKEND = "fast"
    except ImportError as exc:  # pragma: no cover - depends on how the package was built
        from qp2p._pure import chunking, framing, packet, retry

        BACKEND, IMPORT_ERROR = "pure", exc
