"""The endpoint's mailboxes: order, wake-ups, the drop-oldest bound and closing."""

from __future__ import annotations

import asyncio

from qp2p._mailbox import Mailbox


async def test_put_many_keeps_order_and_wakes_one_reader_per_item() -> None:
    box: Mailbox[int] = Mailbox()
    readers = [asyncio.create_task(box.get()) for _ in range(3)]
    await asyncio.sleep(0)  # all three wait
    box.put_many([1, 2])
    async with asyncio.timeout(5):
        while len([r for r in readers if r.done()]) < 2:
            await asyncio.sleep(0)
    assert sorted(r.result() for r in readers if r.done()) == [1, 2]
    (waiting,) = [r for r in readers if not r.done()]  # two items wake two readers, not three
    box.put_many([3])
    assert await asyncio.wait_for(waiting, 5) == 3


async def test_put_many_drops_the_oldest_past_maxlen_and_counts_them() -> None:
    box: Mailbox[int] = Mailbox(maxlen=3)
    box.put_many([1, 2])
    box.put_many([3, 4, 5])
    assert [await box.get() for _ in range(len(box))] == [3, 4, 5]
    assert box.dropped == 2


async def test_put_many_after_close_is_ignored() -> None:
    box: Mailbox[int] = Mailbox()
    box.put_many([1])
    box.close()
    box.put_many([2])
    assert await box.get() == 1
    try:
        await box.get()
    except StopAsyncIteration:
        pass
    else:
        raise AssertionError("a closed, drained mailbox must stop")
