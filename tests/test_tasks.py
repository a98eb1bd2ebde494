"""Background tasks: a failure is logged, never lost; closing cancels what still runs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from qp2p._tasks import BackgroundTasks

log = logging.getLogger("qp2p.test_tasks")


async def test_a_failing_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks(log, "upkeep failed")

    async def fail() -> None:
        raise RuntimeError("the punch went wrong")

    with caplog.at_level(logging.WARNING, logger=log.name):
        tasks.spawn(fail())
        async with asyncio.timeout(5):
            while len(tasks):
                await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records] == ["upkeep failed: RuntimeError('the punch went wrong')"]


async def test_close_cancels_what_still_runs() -> None:
    tasks = BackgroundTasks(log, "upkeep failed")
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    tasks.spawn(forever())
    await started.wait()
    await tasks.close()
    assert len(tasks) == 0
