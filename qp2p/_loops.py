"""The event loop the command line runs on: uvloop when it is installed (the
``uvloop`` extra) unless told otherwise, else asyncio's own. A library user's loop is theirs:
nothing here is used by ``Endpoint``."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from qp2p.errors import ConfigError

__all__ = ("LOOPS", "chosen", "run")

LOOPS = ("auto", "asyncio", "uvloop")

T = TypeVar("T")


def chosen(name: str = "auto") -> str:
    """The loop ``name`` stands for here: "uvloop" or "asyncio"; "auto" is uvloop if installed."""
    if name not in LOOPS:
        raise ConfigError(f"unknown event loop {name!r}: one of {', '.join(LOOPS)}")
    installed = importlib.util.find_spec("uvloop") is not None
    if name == "uvloop" and not installed:
        raise ConfigError("uvloop is not installed: pip install 'qp2p[uvloop]'")
    return "uvloop" if name == "uvloop" or (name == "auto" and installed) else "asyncio"


def _factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if chosen(name) == "asyncio":
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = importlib.import_module("uvloop").new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], name: str = "auto") -> T:
    """Run ``main`` to its end in a fresh event loop of the kind ``name`` chooses."""
    try:
        factory = _factory(name)
    except BaseException:
        main.close()  # never awaited: say so to no one
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
