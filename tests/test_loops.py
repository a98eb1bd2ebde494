"""The event loop of the command line: uvloop when installed, asyncio's own on request; an
unknown or missing loop is a clear error."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

import qp2p
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


async def paced_transfer(size: int) -> tuple[int, int]:
    """One message of ``size`` bytes at 1200-byte datagrams: (sender's timer wake-ups, datagrams)."""
    config = qp2p.Config(max_datagram_size=1200, max_message_size=size)
    async with qp2p.Endpoint(config) as receiver, qp2p.Endpoint(config) as sender:
        connection = await sender.connect_to(receiver.local_addr)
        send = asyncio.create_task(connection.send(bytes(size)))
        async with asyncio.timeout(60):
            async for message in receiver.incoming_messages():
                assert len(message.data) == size
                break
            await send
        link = connection.current_link
        assert link is not None
        return link.timer_wakeups, receiver.stats().datagrams.received


@UVLOOP
def test_a_pacing_deadline_inside_uvloops_millisecond_does_not_spin_the_timer() -> None:
    # uvloop's clock moves in milliseconds; aioquic paces in microseconds. A timer that fired
    # without the session seeing its deadline come re-armed at once, hundreds of thousands of
    # times for 32 MiB. Each wake-up now moves the session on.
    wakeups, datagrams = _loops.run(paced_transfer(4 << 20), "uvloop")
    assert datagrams > 3000
    assert wakeups < datagrams
