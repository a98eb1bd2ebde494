"""The event loop of the command line and the demo: uvloop when installed, asyncio's own on
request; an unknown or missing loop is a clear error."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from qp2p import _loops
from qp2p.errors import ConfigError

INSTALLED = importlib.util.find_spec("uvloop") is not None
UVLOOP = pytest.mark.skipif(not INSTALLED, reason="uvloop is not installed")


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_means_uvloop_when_it_is_installed() -> None:
    assert _loops.chosen("auto") == ("uvloop" if INSTALLED else "asyncio")
    assert _loops.chosen("asyncio") == "asyncio"


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    assert _loops.run(loop_module(), "asyncio").startswith("asyncio")


@UVLOOP
def test_uvloop_runs_on_uvloop() -> None:
    assert _loops.run(loop_module(), "uvloop").startswith("uvloop")


def test_an_unknown_loop_is_refused_and_nothing_is_left_unawaited() -> None:
    main = loop_module()
    with pytest.raises(ConfigError, match="unknown event loop"):
        _loops.run(main, "trio")
    assert main.cr_frame is None  # closed, so no "never awaited" warning


def test_uvloop_asked_for_but_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "uvloop" else real(name))
    with pytest.raises(ConfigError, match=r"qp2p\[uvloop\]"):
        _loops.chosen("uvloop")
    assert _loops.chosen("auto") == "asyncio"
