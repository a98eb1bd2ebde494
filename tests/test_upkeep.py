"""The upkeep decider: whom a member redials, tops up with and forgets, on a clock of the test's."""

from __future__ import annotations

import random

from qp2p import _upkeep as u
from qp2p._upkeep import Plan, Upkeep, View

A, B, C, D = (("198.18.1.1", 4000), ("198.18.2.1", 4000), ("198.18.3.1", 4000), ("198.18.4.1", 4000))
CANDIDATES = [(A, "a"), (B, "b"), (C, "c"), (D, "d")]


Address = tuple[str, int]


def view(
    now: float,
    connected: set[Address] | None = None,
    isolated: bool | None = None,
    candidates: list[tuple[Address, str | None]] | None = None,
) -> View:
    """What the shell would see: the cache's candidates best first (CANDIDATES unless given)."""
    live = frozenset(connected or ())
    alone = not live if isolated is None else isolated
    return View(now, live, alone, CANDIDATES if candidates is None else candidates)


def dialled(plan: Plan) -> list[tuple[str, int]]:
    return [addr for addr, _ in plan.dial]


def test_off_plans_nothing() -> None:
    upkeep = Upkeep(0, random.Random(1))
    upkeep.lost(A, "a", 0.0)
    assert upkeep.plan(view(100.0)) == Plan([], [], float("inf"))
    assert upkeep.lost_nodes == 0


def test_a_lost_node_is_redialled_with_a_capped_doubling_delay() -> None:
    upkeep = Upkeep(1, random.Random(2))
    connected = {B}
    only = CANDIDATES[:2]  # no other entry to check meanwhile
    upkeep.lost(A, "a", 0.0)
    plan = upkeep.plan(view(0.0, connected, True, only))  # isolated: never forgotten
    assert A not in dialled(plan)
    assert u.REDIAL_FIRST * (1 - u.JITTER) <= plan.wake_at <= u.REDIAL_FIRST * (1 + u.JITTER)
    now, times = plan.wake_at, []
    for _ in range(40):  # wakes, bounded: some are the cache check's, with nothing to do
        plan = upkeep.plan(view(now, connected, True, only))
        if dialled(plan):
            assert dialled(plan) == [A] and plan.dial[0][1] == "a"  # by the peer id it had
            assert A not in dialled(upkeep.plan(view(now, connected, True, only)))  # one at a time
            times.append(now)
            upkeep.dialled(A, False, now)
            if len(times) == 8:
                break
        now = upkeep.plan(view(now, connected, True, only)).wake_at
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(gaps) == 7
    assert gaps[0] < gaps[1] < gaps[2]  # doubling
    assert all(gap <= u.REDIAL_CAP * (1 + u.JITTER) for gap in gaps)  # capped: a healed link is back soon


def test_not_isolated_a_dead_node_is_forgotten_isolated_never() -> None:
    for isolated in (False, True):
        upkeep = Upkeep(1, random.Random(3))
        upkeep.lost(A, "a", 0.0)
        now, forgotten = 0.0, []
        cache = CANDIDATES[:2]
        for _ in range(400):  # ten minutes and more of failing redials
            plan = upkeep.plan(view(now, {B}, isolated, cache))
            forgotten += plan.forget
            cache = [entry for entry in cache if entry[0] not in plan.forget]  # as the cache drops it
            for addr in dialled(plan):
                upkeep.dialled(addr, False, now)
            now = max(plan.wake_at, now + 1.0)
        if isolated:
            assert forgotten == [] and upkeep.lost_nodes == 1
        else:
            assert forgotten == [A] and upkeep.lost_nodes == 0


def test_a_lost_node_is_forgotten_only_after_the_time_and_the_failures() -> None:
    upkeep = Upkeep(1, random.Random(4))
    upkeep.lost(A, "a", 0.0)
    assert upkeep.plan(view(u.GIVE_UP + 1, {B})).forget == []  # no failed redial yet
    for _ in range(u.GIVE_UP_FAILURES):
        upkeep.dialled(A, False, 1.0)
    assert upkeep.plan(view(u.GIVE_UP - 1, {B})).forget == []  # not long enough
    assert upkeep.plan(view(u.GIVE_UP, {B})).forget == [A]


def test_a_node_that_came_back_is_not_redialled() -> None:
    upkeep = Upkeep(1, random.Random(5))
    upkeep.lost(A, "a", 0.0)
    assert A not in dialled(upkeep.plan(view(10.0, {A})))  # it dialled us meanwhile
    assert upkeep.lost_nodes == 0
    upkeep.lost(B, "b", 0.0)
    upkeep.dialled(B, True, 1.0)  # a redial made it
    assert upkeep.lost_nodes == 0


def test_top_up_to_the_minimum_a_few_at_a_time() -> None:
    upkeep = Upkeep(3, random.Random(6))
    plan = upkeep.plan(view(0.0, {A}))
    assert dialled(plan) == [B, C] and plan.check is None  # best first, never one we are connected to
    again = upkeep.plan(view(0.1, {A}))
    assert dialled(again) == []  # those two are still being dialled
    upkeep.dialled(B, False, 0.2)
    upkeep.dialled(C, True, 0.2)
    assert dialled(upkeep.plan(view(0.3, {A, C}))) == []  # the next top-up waits its turn
    # Next turn: the best not connected, B again (the cache ranks a failed entry lower itself).
    assert dialled(upkeep.plan(view(u.REDIAL_CAP * (1 + u.JITTER), {A, C}))) == [B]

    many = Upkeep(100, random.Random(7))
    candidates = [((f"198.18.{i}.1", 1), None) for i in range(50)]
    assert len(many.plan(View(0.0, frozenset(), True, candidates)).dial) == u.TOP_UP_AT_ONCE


def test_below_the_minimum_a_connected_node_is_asked_and_half_of_each_round_is_its_names() -> None:
    upkeep = Upkeep(5, random.Random(10))
    E, F, G = ("198.18.5.1", 4000), ("198.18.6.1", 4000), ("198.18.7.1", 4000)
    plan = upkeep.plan(view(0.0, {A}))
    assert plan.ask == A  # the only node we are connected to
    assert upkeep.plan(view(0.1, {A})).ask is None  # once per ASK_INTERVAL at most
    for addr in dialled(plan):
        upkeep.dialled(addr, False, 0.2)
    upkeep.told([(E, "e"), (B, "b"), (F, "f"), (G, "g")])  # B: a cache entry already, not a new name
    later = u.REDIAL_CAP * (1 + u.JITTER)
    plan = upkeep.plan(view(later, {A}))
    named = [(addr, peer) for addr, peer in plan.dial if addr in (E, F, G)]
    assert (
        named == [(E, "e"), (F, "f")] and len(plan.dial) == u.TOP_UP_AT_ONCE
    )  # half: the cache keeps its turn
    for addr in dialled(plan):
        upkeep.dialled(addr, False, later)
    upkeep.told([(E, "e"), (F, "f"), (G, "g")])  # E and F named again: dialled already, not again
    afterwards = upkeep.plan(view(2 * later, {A}))
    assert G in dialled(afterwards) and {E, F}.isdisjoint(dialled(afterwards))
    assert E not in upkeep.plan(view(4 * later, {A})).forget  # not ours to forget: never cached
    assert upkeep.plan(view(u.ASK_INTERVAL * 4, {A, B, C, D, E})).ask is None  # enough connections
    assert upkeep.plan(view(u.ASK_INTERVAL * 5, set())).ask is None  # nobody to ask

    flood = Upkeep(3, random.Random(11))
    flood.told([((f"198.19.{i // 250}.{i % 250}", 1), "x") for i in range(1000)])
    names = set()
    for step in range(50):  # bounded: every name kept is dialled by then
        plan = flood.plan(view(step * 10.0, {A}, candidates=[]))  # no cache to give: all names
        names |= set(dialled(plan))
        for addr in dialled(plan):
            flood.dialled(addr, False, step * 10.0)
    assert len(names) == u.TOLD_KEPT  # a peer naming a thousand gets 32 dials out of us


def test_a_peer_naming_nodes_without_end_never_crowds_out_the_cache() -> None:
    upkeep = Upkeep(5, random.Random(13))
    now, from_cache, names = 0.0, set(), 0
    for step in range(60):  # bounded: 60 rounds, each answer naming 32 new addresses
        upkeep.told([((f"192.0.2.{step}", port), "m") for port in range(32)])
        plan = upkeep.plan(view(now, {A}))
        names += sum(addr[0].startswith("192.0.2.") for addr in dialled(plan))
        from_cache |= {addr for addr in dialled(plan) if not addr[0].startswith("192.0.2.")}
        for addr in dialled(plan):
            upkeep.dialled(addr, False, now)
        now = plan.wake_at
    assert {B, C, D} <= from_cache  # every cache entry kept its turns (failing, until forgotten)
    assert names <= 60 * u.TOP_UP_AT_ONCE // 2 + u.TOP_UP_AT_ONCE


def test_an_isolated_member_does_not_hurry_its_checks() -> None:
    upkeep = Upkeep(1, random.Random(14))
    plan = upkeep.plan(view(0.0, {A}, isolated=True))
    assert plan.check == D
    upkeep.dialled(D, False, 3.0)
    assert upkeep.plan(view(3.0, {A}, isolated=True)).wake_at >= u.CHECK_INTERVAL * (1 - u.JITTER)
    contacts_only = upkeep.plan(view(20.0, {A}, candidates=[(B, None)]))
    assert contacts_only.check is None  # a hard-coded contact is not a cache entry to check


def test_failing_entries_are_forgotten_unless_isolated() -> None:
    upkeep = Upkeep(5, random.Random(8))
    for _ in range(u.FAILURES_TO_FORGET):
        upkeep.dialled(D, False, 0.0)
    assert upkeep.plan(view(1.0, set(), isolated=True)).forget == []
    assert upkeep.plan(view(2.0, {A})).forget == [D]


def test_with_enough_connections_one_other_entry_is_checked_now_and_then() -> None:
    upkeep = Upkeep(2, random.Random(9))
    checks = []
    now = 0.0
    for _ in range(20):
        plan = upkeep.plan(view(now, {A, B}))
        assert dialled(plan) == ([plan.check] if plan.check else [])  # a check, its connection not kept
        checks += dialled(plan)
        for addr in dialled(plan):
            upkeep.dialled(addr, True, now)
        now += 1.0
    assert set(checks) <= {C, D}
    assert 1 <= len(checks) <= 20 / (u.CHECK_INTERVAL * (1 - u.JITTER)) + 1


def test_the_worst_entry_is_checked_and_a_failed_check_brings_the_next_sooner() -> None:
    upkeep = Upkeep(2, random.Random(12))
    now, checks = 0.0, []
    for _ in range(40):  # bounded: D fails every check, until it is forgotten
        plan = upkeep.plan(view(now, {A, B}))
        if plan.forget:
            break
        if plan.check is not None:
            checks.append((now, plan.check))
            now += 3.0  # D is dead: a 3 s timeout
            upkeep.dialled(plan.check, False, now)
            plan = upkeep.plan(view(now, {A, B}))  # the shell looks again after each outcome
            if plan.forget:
                break
        now = max(now, plan.wake_at)
    assert plan.forget == [D]
    assert [addr for _, addr in checks] == [D] * u.FAILURES_TO_FORGET  # ranked last: the likeliest dead
    gaps = [later - earlier for (earlier, _), (later, _) in zip(checks, checks[1:], strict=False)]
    assert all(gap <= 3.0 + u.CHECK_AFTER_FAILURE * (1 + u.JITTER) for gap in gaps)  # not CHECK_INTERVAL
    now = plan.wake_at
    plan = upkeep.plan(view(now, {A, B}, candidates=CANDIDATES[:3]))
    assert plan.check == C and now <= checks[-1][0] + 3.0 + u.CHECK_AFTER_FAILURE * (1 + u.JITTER)
    upkeep.dialled(C, True, now)
    after = upkeep.plan(view(now + 0.1, {A, B}, candidates=CANDIDATES[:3]))
    assert after.wake_at >= now + u.CHECK_INTERVAL * (1 - u.JITTER)  # it answered: the whole interval


def test_nodes_that_lost_the_same_node_redial_it_at_different_times() -> None:
    """No herd: a hundred members that lost A at the same instant spread their redials."""
    times = set()
    for seed in range(100):
        upkeep = Upkeep(1, random.Random(seed))
        upkeep.lost(A, "a", 0.0)
        times.add(round(upkeep.plan(view(0.0, {B})).wake_at, 3))
    assert len(times) > 50
