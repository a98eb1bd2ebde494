"""The endpoint's one timer and transmit pass: on a real event loop, then with real connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from waiting import wait_until

import qp2p
from qp2p._scheduler import CLOCK_TICK, Scheduler

pytestmark = pytest.mark.usefixtures("no_leaks")

MakeEndpoint = Callable[..., Awaitable[qp2p.Endpoint]]
LINKS = 24


def live_timers() -> list[asyncio.TimerHandle]:
    """The timers armed on the running loop (asyncio keeps them in ``_scheduled``)."""
    loop = asyncio.get_running_loop()
    return [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]


class Passes:
    """A stand-in link for the transmit pass: counts the passes it was served."""

    def __init__(self) -> None:
        self.served = 0

    def transmit_pass(self) -> None:
        self.served += 1


async def test_alarms_fire_in_order_behind_one_timer() -> None:
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(loop)
    fired: list[int] = []
    done = asyncio.Event()
    now = loop.time()
    alarms = [scheduler.alarm(lambda _, i=i: fired.append(i)) for i in range(50)]
    for i, alarm in enumerate(alarms):
        alarm.set(now + 0.05 + 0.001 * (49 - i))  # the last one set is due first
    alarms[10].cancel()
    alarms[20].set(now + 10.0)  # moved later: not due in this test
    scheduler.alarm(lambda _: done.set()).set(now + 0.1)
    assert len(live_timers()) == 1 and scheduler.deadlines == 50
    async with asyncio.timeout(5):
        await done.wait()
    assert fired == [i for i in reversed(range(50)) if i not in (10, 20)]
    assert alarms[20].armed and not alarms[0].armed
    scheduler.close()
    assert scheduler.deadlines == 0 and not live_timers()


async def test_a_failing_alarm_does_not_stop_the_others() -> None:
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(loop)
    errors: list[BaseException | None] = []
    loop.set_exception_handler(lambda _, context: errors.append(context.get("exception")))
    fired: list[str] = []

    def broken(now: float) -> None:
        raise ValueError("broken")

    at = loop.time() + 0.01
    scheduler.alarm(broken).set(at)
    scheduler.alarm(lambda _: fired.append("next")).set(at)
    try:
        await wait_until(lambda: fired)
    finally:
        loop.set_exception_handler(None)
        scheduler.close()
    assert fired == ["next"] and isinstance(errors[0], ValueError)


async def test_an_alarm_cancelled_by_an_earlier_one_of_its_batch_is_not_called() -> None:
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(loop)
    fired: list[str] = []
    at = loop.time() + 0.01
    second = scheduler.alarm(lambda _: fired.append("second"))
    moved = scheduler.alarm(lambda _: fired.append("moved"))

    def first(now: float) -> None:
        fired.append("first")
        second.cancel()  # as a link's end cancels its other deadlines
        moved.set(loop.time() + 0.05)

    scheduler.alarm(first).set(at)  # set first: first of the batch at the same deadline
    second.set(at)
    moved.set(at)
    await wait_until(lambda: len(fired) == 2)
    assert fired == ["first", "moved"] and not second.armed
    scheduler.close()


async def test_an_alarm_is_told_its_deadline_came_even_a_tick_early() -> None:
    """A deadline inside the loop clock's current tick counts as come (uvloop's clock moves in
    milliseconds): the alarm runs once, told the deadline, instead of re-arming in a spin."""
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(loop)
    told: list[float] = []
    at = loop.time() + CLOCK_TICK / 2
    scheduler.alarm(told.append).set(at)
    await wait_until(lambda: told)
    assert told[0] >= at and scheduler.timer_fired == 1
    scheduler.close()


async def test_one_transmit_pass_per_turn_serves_every_marked_link() -> None:
    scheduler = Scheduler(asyncio.get_running_loop())
    links = [Passes() for _ in range(100)]
    for link in links:
        scheduler.transmit_soon(link)
        scheduler.transmit_soon(link)  # marked twice, served once
    await asyncio.sleep(0)
    assert [link.served for link in links] == [1] * 100
    await asyncio.sleep(0)
    assert [link.served for link in links] == [1] * 100
    scheduler.close()


async def crowd(make_endpoint: MakeEndpoint, count: int, **settings: object) -> qp2p.Endpoint:
    """A server with ``count`` client endpoints connected to it, all in this process."""
    # Every client is on 127.0.0.1: that address may hold all of the server's memory.
    limits = {"max_half_open_per_address": count, "address_memory_limit": qp2p.Config().memory_limit}
    server = await make_endpoint(**settings, **limits, receive_window=256 * 1024)
    clients = [await make_endpoint(**settings) for _ in range(count)]
    await asyncio.gather(*(client.connect_to(server.local_addr) for client in clients))
    await wait_until(lambda: server.stats().connections == count)
    return server


async def test_the_endpoint_arms_one_timer_not_one_per_link(make_endpoint: MakeEndpoint) -> None:
    server = await crowd(make_endpoint, LINKS)
    # Each link has its QUIC timer and its keep-alive registered...
    assert server.stats().deadlines >= 2 * LINKS
    # ...and each endpoint (the server and every client) arms one timer for all of them.
    assert len(live_timers()) <= LINKS + 1


async def test_closing_many_links_leaves_the_scheduler_empty(make_endpoint: MakeEndpoint) -> None:
    server = await crowd(make_endpoint, LINKS)
    await asyncio.gather(*(connection.close() for connection in server.connections()))
    await wait_until(lambda: server.stats().links == 0 and server.stats().deadlines == 0, timeout=10)
    assert server.stats().connections == 0


async def test_a_link_that_keeps_sending_sends_no_keep_alive(make_endpoint: MakeEndpoint) -> None:
    settings = {"idle_timeout": 3.0, "keep_alive_interval": 0.5}
    a, b = await make_endpoint(**settings), await make_endpoint(**settings)
    quiet_a, quiet_b = await make_endpoint(**settings), await make_endpoint(**settings)
    connection = await a.connect_to(b.local_addr)
    await quiet_a.connect_to(quiet_b.local_addr)
    received = 0

    async def read() -> None:
        nonlocal received
        async for _ in b.incoming_messages():
            received += 1

    reader = asyncio.create_task(read())
    try:
        # 2 s of one message every 50 ms: four keep-alive intervals with traffic in every one.
        for _ in range(40):
            await connection.send(b"busy")
            await asyncio.sleep(0.05)
        await wait_until(lambda: received == 40)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    # The pair that sent nothing over the same time did ping: the counter counts.
    await wait_until(lambda: quiet_a.stats().keep_alives + quiet_b.stats().keep_alives >= 2)
    # Neither the sender nor the receiver (whose acknowledgements are sends too) pinged.
    assert (a.stats().keep_alives, b.stats().keep_alives) == (0, 0)
