"""Input builders shared by the bench files; everything here runs outside the timed code."""

from __future__ import annotations

__all__ = ("KiB", "MiB", "payload")

KiB = 1 << 10
MiB = 1 << 20

_PATTERN = bytes(range(1, 256))


def payload(size: int) -> bytes:
    """``size`` bytes of a non-zero pattern: every page of the result is really written."""
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]
