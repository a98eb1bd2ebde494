"""What every fuzz target shares: instrumented imports, the two backends, outcomes, the entry point.

Import this module before anything else that imports qp2p: it imports qp2p under atheris's
instrumentation, so the pure-Python modules report coverage. The compiled modules are not
instrumented (that would need the extensions built with the fuzzer's compiler instrumentation);
coverage feedback for them comes from the pure twin, which every target runs on the same input.

A target defines ``check(backend, data)``, which runs one input against one backend, raises on
any exception other than the documented ones or on a broken property, and returns a trace.
``main(check)`` runs the chosen backend and, when the other one is importable, demands that it
returns the same trace (same results, or the same exception class and message).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import atheris

with atheris.instrument_imports(include=["qp2p"]):
    from qp2p import errors, wire
    from qp2p._pure import chunking, framing, packet, retry

__all__ = (
    "CUTS",
    "HEADER_SIZE",
    "MAX_SIZES",
    "PURE",
    "Backend",
    "attempt",
    "errors",
    "framing_for_wire",
    "main",
    "pieces",
    "split",
    "wire",
    "zero_reserved",
)

MODULES = ("framing", "chunking", "packet", "retry")
HEADER_FIELDS = ("is_long_header", "version", "packet_type", "destination_cid", "source_cid", "token")
HEADER_SIZE = framing.HEADER_SIZE
CUTS = 4  # parameter bytes that say where a stream is cut into pieces
# Decoder size limits a target picks from: none, tiny, one header, small, a lane, everything.
MAX_SIZES = (0, 1, 8, 9, 64, 1024, 65536, framing.MAX_DATA_LEN)
USAGE = "usage: python fuzz/<target>.py [--backend=fast|pure] [libFuzzer flags and corpus dirs]"


@dataclass(frozen=True)
class Backend:
    """The four hot-path modules of one implementation."""

    name: str
    framing: ModuleType
    chunking: ModuleType
    packet: ModuleType
    retry: ModuleType


PURE = Backend("pure", framing, chunking, packet, retry)


def compiled() -> Backend | None:
    """The compiled backend, or None when it is not built."""
    try:
        modules = {name: importlib.import_module(f"_qp2p_fast.{name}") for name in MODULES}
    except ImportError:
        return None
    return Backend("fast", **modules)


# ---- inputs --------------------------------------------------------------------------------


def split(data: bytes, size: int) -> tuple[bytes, bytes]:
    """``size`` parameter bytes (zero-padded when the input is shorter), then the payload."""
    return data[:size].ljust(size, b"\0"), data[size:]


def pieces(data: bytes, cuts: bytes) -> list[bytes]:
    """``data`` cut where ``cuts`` say, each byte a position in 255ths of its length: the
    pieces a peer's packets would deliver. ``CUTS`` bytes make at most ``CUTS + 1`` pieces."""
    points = sorted({0, len(data), *(cut * len(data) // 255 for cut in cuts)})
    return [data[start:end] for start, end in zip(points, points[1:], strict=False)]


def zero_reserved(stream: bytes, frames: list[tuple[int, bytes]]) -> bytes:
    """The first frames of ``stream`` as an encoder writes them: reserved header bytes zeroed."""
    out = bytearray()
    at = 0
    for _, body in frames:
        body_at = at + HEADER_SIZE
        out += stream[at : body_at - 2] + b"\0\0" + stream[body_at : body_at + len(body)]
        at = body_at + len(body)
    return bytes(out)


@contextmanager
def framing_for_wire(module: ModuleType) -> Iterator[None]:
    """``qp2p.wire`` on top of the framing ``module`` for a while (it imports the one the process loaded)."""
    loaded = wire.framing
    wire.framing = module
    try:
        yield
    finally:
        wire.framing = loaded


# ---- outcomes ------------------------------------------------------------------------------


def attempt(call: Callable[[], Any], allowed: type[Exception]) -> tuple[Any, ...]:
    """``("ok", result)`` or ``("error", class, message)`` for an ``allowed`` exception; any
    other exception propagates, which is what the fuzzer reports as a crash."""
    try:
        return ("ok", call())
    except allowed as exc:
        return ("error", type(exc), str(exc))


def normalise(value: Any) -> Any:
    """A value comparable across backends: buffers as bytes, compiled records as tuples."""
    if isinstance(value, list | tuple):
        return tuple(normalise(item) for item in value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if hasattr(
        value, "destination_cid"
    ):  # a PacketHeader: a dataclass in one twin, a cdef class in the other
        return ("PacketHeader", *(getattr(value, name) for name in HEADER_FIELDS))
    return value


class Mismatch(AssertionError):
    """The two backends disagree on one input."""


# ---- entry point ---------------------------------------------------------------------------


def choose(argv: list[str]) -> tuple[Backend, Backend | None, list[str]]:
    """The backend under test, its reference twin (None if not importable), and libFuzzer's argv."""
    name, rest = "fast", argv[1:]
    if rest and rest[0].startswith("--backend="):
        name, rest = rest[0].split("=", 1)[1], rest[1:]
    if name not in ("fast", "pure"):
        sys.exit(USAGE)
    fast = compiled()
    if name == "pure":
        return PURE, fast, [argv[0], *rest]
    if fast is None:
        sys.exit("the compiled backend is not built: run setup.py build_ext --inplace, or use --backend=pure")
    return fast, PURE, [argv[0], *rest]


def main(check: Callable[[Backend, bytes], Any]) -> None:
    """Fuzz ``check`` on the backend chosen on the command line, cross-checked against the other."""
    subject, twin, argv = choose(sys.argv)
    reference = f", checked against {twin.name}" if twin is not None else ", no twin to check against"
    print(f"backend {subject.name}{reference}", file=sys.stderr)

    def one_input(data: bytes) -> None:
        got = normalise(check(subject, data))
        if twin is not None:
            expected = normalise(check(twin, data))
            if got != expected:
                raise Mismatch(f"{subject.name}: {got!r}\n{twin.name}: {expected!r}")

    atheris.Setup(argv, one_input)
    atheris.Fuzz()
