"""Waiting on conditions, never on the clock: what tests use instead of sleep-then-assert."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ("wait_until",)


async def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll ``condition`` every 10 ms until it holds; ``TimeoutError`` after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
