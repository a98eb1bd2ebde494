"""Input builders shared by the bench files; everything here runs outside the timed code."""

from __future__ import annotations

__all__ = ("KiB", "MiB", "payload", "size_label")

KiB = 1 << 10
MiB = 1 << 20

_PATTERN = bytes(range(1, 256))


def payload(size: int) -> bytes:
    """``size`` bytes of a non-zero pattern: every page of the result is really written."""
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]


def size_label(size: int) -> str:
    """64 -> "64B", 1024 -> "1KiB", 33554432 -> "32MiB": the size part of group names and test ids."""
    for unit, scale in (("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"
